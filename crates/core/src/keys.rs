//! Key layout of a queue: `PREFIX:QUEUE:<suffix>` and job keys `PREFIX:QUEUE:<id>`.

use crate::error::{Error, Result};

/// Default key prefix, as BullMQ's.
pub const DEFAULT_PREFIX: &str = "bull";

/// The keys of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    prefix: String,
    name: String,
    /// `PREFIX:QUEUE:` (with the trailing colon): job keys are this plus the id.
    base: String,
}

impl QueueKeys {
    /// Validates the names and builds the keys. The queue name must be non-empty and contain
    /// no `:`; the prefix must be non-empty. A hash tag (`{bull}`) in the prefix keeps every key
    /// of the queue in one Cluster slot; braces must be balanced and come first.
    pub fn new(prefix: &str, name: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::InvalidQueueName {
                name: name.into(),
                reason: "must not be empty",
            });
        }
        if name.contains(':') {
            return Err(Error::InvalidQueueName {
                name: name.into(),
                reason: "must not contain `:`",
            });
        }
        if prefix.is_empty() {
            return Err(Error::InvalidPrefix {
                prefix: prefix.into(),
                reason: "must not be empty",
            });
        }
        let opens = prefix.matches('{').count();
        let closes = prefix.matches('}').count();
        if opens != closes || prefix.find('}') < prefix.find('{') {
            return Err(Error::InvalidPrefix {
                prefix: prefix.into(),
                reason: "unbalanced braces; a hash tag looks like `{bull}`",
            });
        }
        Ok(Self {
            prefix: prefix.into(),
            name: name.into(),
            base: format!("{prefix}:{name}:"),
        })
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PREFIX:QUEUE:` (trailing colon).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `PREFIX:QUEUE` (what Node calls the qualified name).
    pub fn qualified_name(&self) -> &str {
        &self.base[..self.base.len() - 1]
    }

    /// A queue-level key, e.g. `wait`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    /// The hash of job `id`.
    pub fn job(&self, id: &str) -> String {
        format!("{}{id}", self.base)
    }

    /// `PREFIX:QUEUE:<id>:<sub>` (`logs`, `lock`, ...).
    pub fn job_sub(&self, id: &str, sub: &str) -> String {
        format!("{}{id}:{sub}", self.base)
    }

    /// `PREFIX:QUEUE:de:<dedup id>`.
    pub fn dedup(&self, dedup_id: &str) -> String {
        format!("{}de:{dedup_id}", self.base)
    }

    /// The name of a worker's blocking connection as BullMQ forms it
    /// (`PREFIX:base64(QUEUE)`, plus `:w:NAME` for a named worker), so that Node's
    /// `Queue.getWorkers()` lists it.
    pub fn worker_connection_name(&self, worker_name: Option<&str>) -> String {
        let mut n = format!("{}:{}", self.prefix, base64(self.name.as_bytes()));
        if let Some(w) = worker_name {
            n.push_str(":w:");
            n.push_str(w);
        }
        n
    }

    /// The name BullMQ gives a `QueueEvents` connection (`PREFIX:base64(QUEUE):qe`).
    pub fn queue_events_connection_name(&self) -> String {
        format!("{}:{}:qe", self.prefix, base64(self.name.as_bytes()))
    }

    /// Refuses a queue whose keys would span Cluster slots (no hash tag) when `opts` points
    /// at a Redis Cluster. Our scripts build job keys inside Lua, so all of a queue's keys
    /// must share one slot.
    pub fn check_cluster(&self, opts: &bullpen_conn::RedisOptions) -> Result<()> {
        if opts.is_cluster() && self.hash_tag().is_none() {
            return Err(Error::CrossSlot {
                queue: self.name.clone(),
                prefix: self.prefix.clone(),
            });
        }
        Ok(())
    }

    /// The hash tag Redis Cluster would hash for these keys, if any (the text in the first
    /// `{...}`).
    pub fn hash_tag(&self) -> Option<&str> {
        let start = self.base.find('{')?;
        let end = self.base[start + 1..].find('}')? + start + 1;
        (end > start + 1).then(|| &self.base[start + 1..end])
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Job states and the key that holds each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum JobState {
    /// In `wait`.
    Waiting,
    /// In `prioritized`.
    Prioritized,
    /// In `delayed`.
    Delayed,
    /// In `active`.
    Active,
    /// In `completed`.
    Completed,
    /// In `failed`.
    Failed,
    /// In `waiting-children`.
    WaitingChildren,
    /// In the legacy `paused` list (v5 data only).
    Paused,
}

impl JobState {
    /// Every state, in BullMQ's `getJobCounts` order.
    pub const ALL: [JobState; 8] = [
        JobState::Active,
        JobState::Completed,
        JobState::Delayed,
        JobState::Failed,
        JobState::Paused,
        JobState::Prioritized,
        JobState::Waiting,
        JobState::WaitingChildren,
    ];

    /// The key suffix (`wait` for waiting).
    pub fn key_suffix(self) -> &'static str {
        match self {
            JobState::Waiting => "wait",
            JobState::Prioritized => "prioritized",
            JobState::Delayed => "delayed",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::WaitingChildren => "waiting-children",
            JobState::Paused => "paused",
        }
    }

    /// The name Node uses (`waiting` for wait).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            s => s.key_suffix(),
        }
    }

    /// Whether the key is a LIST (else a ZSET).
    pub fn is_list(self) -> bool {
        matches!(
            self,
            JobState::Waiting | JobState::Active | JobState::Paused
        )
    }

    /// Parses Node's names (`waiting`, `wait`, `completed`, ...).
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "waiting" | "wait" => JobState::Waiting,
            "prioritized" => JobState::Prioritized,
            "delayed" => JobState::Delayed,
            "active" => JobState::Active,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "waiting-children" => JobState::WaitingChildren,
            "paused" => JobState::Paused,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_bullmq_keys() {
        let k = QueueKeys::new("bull", "vec").expect("valid");
        assert_eq!(k.key("wait"), "bull:vec:wait");
        assert_eq!(k.job("42"), "bull:vec:42");
        assert_eq!(k.job_sub("42", "logs"), "bull:vec:42:logs");
        assert_eq!(k.dedup("dd-1"), "bull:vec:de:dd-1");
        assert_eq!(k.qualified_name(), "bull:vec");
        assert_eq!(k.hash_tag(), None);
        let t = QueueKeys::new("{bull}", "q").expect("valid");
        assert_eq!(t.hash_tag(), Some("bull"));
        assert_eq!(t.key("events"), "{bull}:q:events");
    }

    #[test]
    fn connection_names_follow_bullmq() {
        let k = QueueKeys::new("bull", "st1").expect("valid");
        assert_eq!(k.worker_connection_name(Some("wA")), "bull:c3Qx:w:wA");
        assert_eq!(k.worker_connection_name(None), "bull:c3Qx");
        assert_eq!(k.queue_events_connection_name(), "bull:c3Qx:qe");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64("é".as_bytes()), "w6k=");
    }

    #[test]
    fn validates_names() {
        assert!(QueueKeys::new("bull", "").is_err());
        assert!(QueueKeys::new("bull", "a:b").is_err());
        assert!(QueueKeys::new("", "q").is_err());
        assert!(QueueKeys::new("{bull", "q").is_err());
        assert!(QueueKeys::new("}bull{", "q").is_err());
        assert!(QueueKeys::new("my:prefix", "q").is_ok());
    }

    #[test]
    fn state_names() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("wait"), Some(JobState::Waiting));
    }
}
