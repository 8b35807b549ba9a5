//! Job options: the typed [`JobOptions`] and the `opts` JSON object stored in a job hash.
//!
//! BullMQ keeps most options under their public (camelCase) names but stores a few under short
//! names: `de` (deduplication), `kl` (keepLogs), `fpof`, `cpof`, `idof`, `rdof` (parent/child
//! failure flags), `tm` (telemetry metadata) and `omc` (telemetry omitContext). The Lua scripts
//! read the short names, so [`JobOptions::to_stored`] always writes them.
//!
//! Reading ([`JobOptions::from_stored`]) is tolerant of what Node's scripts produce: key order is
//! arbitrary, whole numbers may come back as floats (`1000.0`, `1.2345678901235e+17`), a `null`
//! member counts as absent, and both short and long names are understood. Keys this crate does
//! not know are kept in [`JobOptions::extra`] and written back unchanged.
//!
//! ```
//! use bullpen_core::opts::{Backoff, JobOptions, KeepJobs};
//!
//! let mut opts = JobOptions::default();
//! opts.attempts = Some(3);
//! opts.backoff = Some(Backoff::exponential(1000));
//! opts.remove_on_complete = Some(KeepJobs::Count(10));
//! opts.keep_logs = Some(5);
//! opts.validate().expect("valid options");
//!
//! let stored = opts.to_stored();
//! assert_eq!(stored["kl"], 5);
//! assert_eq!(JobOptions::from_stored(&stored).expect("decodes"), opts);
//! ```

use serde_json::{Map, Number, Value};

/// Highest priority BullMQ accepts (2²¹ − 1); `0` means "no priority".
///
/// The prioritized ZSET packs `priority · 2³² + sequence` into a double, which leaves 21 bits
/// for the priority.
pub const MAX_PRIORITY: u32 = 2_097_151;

/// Longest custom job id, in bytes, that [`validate_job_id`] accepts.
pub const MAX_JOB_ID_LEN: usize = 1024;

/// Queue key suffixes. A custom job id equal to one of them would name the same Redis key as a
/// queue structure (`PFX:Q:wait` is both "the wait list" and "the hash of job `wait`").
pub const RESERVED_JOB_IDS: &[&str] = &[
    "active",
    "wait",
    "waiting-children",
    "paused",
    "id",
    "delayed",
    "prioritized",
    "stalled-check",
    "completed",
    "failed",
    "stalled",
    "repeat",
    "limiter",
    "meta",
    "events",
    "pc",
    "marker",
    "de",
];

/// Every key of the stored `opts` object that [`JobOptions`] maps to a typed field (short and
/// long spellings). Any other key lands in [`JobOptions::extra`].
pub const KNOWN_OPTION_KEYS: &[&str] = &[
    "jobId",
    "attempts",
    "backoff",
    "delay",
    "priority",
    "lifo",
    "timestamp",
    "removeOnComplete",
    "removeOnFail",
    "stackTraceLimit",
    "sizeLimit",
    "parent",
    KEY_KEEP_LOGS,
    "keepLogs",
    KEY_DEDUP,
    "deduplication",
    KEY_FAIL_PARENT,
    "failParentOnFailure",
    KEY_CONTINUE_PARENT,
    "continueParentOnFailure",
    KEY_IGNORE_DEPENDENCY,
    "ignoreDependencyOnFailure",
    KEY_REMOVE_DEPENDENCY,
    "removeDependencyOnFailure",
    KEY_TELEMETRY_METADATA,
    KEY_OMIT_CONTEXT,
    "telemetry",
    "telemetry.metadata",
    "telemetry.omitContext",
];

const KEY_DEDUP: &str = "de";
const KEY_KEEP_LOGS: &str = "kl";
const KEY_FAIL_PARENT: &str = "fpof";
const KEY_CONTINUE_PARENT: &str = "cpof";
const KEY_IGNORE_DEPENDENCY: &str = "idof";
const KEY_REMOVE_DEPENDENCY: &str = "rdof";
const KEY_TELEMETRY_METADATA: &str = "tm";
const KEY_OMIT_CONTEXT: &str = "omc";

/// What can be wrong with job options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// A typed option has a value a producer must not send (found by [`JobOptions::validate`]).
    #[error("invalid job option `{field}`: {reason}")]
    Invalid {
        /// The option, by its public name.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// A stored `opts` member has a shape this crate cannot read.
    #[error("cannot decode job option `{key}`: {reason}")]
    Decode {
        /// The stored key, with a dotted path for nested members (`removeOnFail.age`).
        key: String,
        /// What was expected and what was found (never the value itself).
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn decode_error(key: impl Into<String>, reason: impl Into<String>) -> OptionsError {
    OptionsError::Decode {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The backoff strategy named by `backoff.type`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackoffKind {
    /// `"fixed"`: every retry waits `delay`.
    Fixed,
    /// `"exponential"`: retry `n` waits `2^(n−1) · delay`.
    Exponential,
    /// Any other name; the worker must have a strategy registered under it.
    Custom(String),
}

impl BackoffKind {
    /// Maps a stored `type` name to a kind (`"fixed"` and `"exponential"` are built in).
    pub fn from_name(name: &str) -> Self {
        match name {
            "fixed" => Self::Fixed,
            "exponential" => Self::Exponential,
            other => Self::Custom(other.to_owned()),
        }
    }

    /// The name stored in `backoff.type`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Fixed => "fixed",
            Self::Exponential => "exponential",
            Self::Custom(name) => name,
        }
    }
}

/// Retry backoff, stored as `{"type": …, "delay"?: ms, "jitter"?: 0..=1}`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The strategy.
    pub kind: BackoffKind,
    /// Base delay in milliseconds.
    pub delay_ms: Option<u64>,
    /// Fraction of the delay that may be taken off at random, in `0.0..=1.0`.
    pub jitter: Option<f64>,
}

impl Backoff {
    /// A backoff of `kind` with no delay and no jitter.
    pub fn new(kind: BackoffKind) -> Self {
        Self {
            kind,
            delay_ms: None,
            jitter: None,
        }
    }

    /// `{"type": "fixed", "delay": delay_ms}`.
    pub fn fixed(delay_ms: u64) -> Self {
        Self {
            delay_ms: Some(delay_ms),
            ..Self::new(BackoffKind::Fixed)
        }
    }

    /// `{"type": "exponential", "delay": delay_ms}`.
    pub fn exponential(delay_ms: u64) -> Self {
        Self {
            delay_ms: Some(delay_ms),
            ..Self::new(BackoffKind::Exponential)
        }
    }

    /// The same backoff with a jitter fraction.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// The stored JSON form. A jitter that JSON cannot hold (NaN, infinite) is left out;
    /// [`JobOptions::validate`] rejects it anyway.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("type".into(), Value::from(self.kind.as_str()));
        if let Some(delay) = self.delay_ms {
            obj.insert("delay".into(), Value::from(delay));
        }
        if let Some(number) = self.jitter.and_then(Number::from_f64) {
            obj.insert("jitter".into(), Value::Number(number));
        }
        Value::Object(obj)
    }

    /// Reads the stored form; a bare number `n` means a fixed backoff of `n` ms, as Node
    /// normalises it.
    pub fn from_json(value: &Value) -> Result<Self, OptionsError> {
        Self::decode("backoff", value)
    }

    fn decode(key: &str, value: &Value) -> Result<Self, OptionsError> {
        match value {
            Value::Number(_) => Ok(Self::fixed(read_u64(key, value)?)),
            Value::Object(obj) => {
                let kind = match present(obj.get("type")) {
                    Some(Value::String(name)) => BackoffKind::from_name(name),
                    Some(other) => {
                        return Err(decode_error(
                            format!("{key}.type"),
                            format!("expected a string, found {}", describe(other)),
                        ))
                    }
                    None => return Err(decode_error(key, "missing `type`")),
                };
                let delay_ms = present(obj.get("delay"))
                    .map(|v| read_u64(&format!("{key}.delay"), v))
                    .transpose()?;
                let jitter = present(obj.get("jitter"))
                    .map(|v| {
                        v.as_f64().ok_or_else(|| {
                            decode_error(
                                format!("{key}.jitter"),
                                format!("expected a number, found {}", describe(v)),
                            )
                        })
                    })
                    .transpose()?;
                Ok(Self {
                    kind,
                    delay_ms,
                    jitter,
                })
            }
            other => Err(decode_error(
                key,
                format!("expected an object or a number, found {}", describe(other)),
            )),
        }
    }
}

/// Retention of finished jobs (`removeOnComplete` / `removeOnFail`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepJobs {
    /// Stored as `true`: remove the job as soon as it finishes.
    All,
    /// Stored as `false`: keep every finished job.
    None,
    /// Stored as an integer `n`: keep the newest `n` finished jobs.
    Count(u64),
    /// Stored as `{"age"?, "count"?, "limit"?}`.
    Window {
        /// Remove finished jobs older than this many seconds.
        age_secs: Option<u64>,
        /// Keep at most this many finished jobs.
        count: Option<u64>,
        /// Remove at most this many jobs per clean-up pass.
        limit: Option<u64>,
    },
}

impl KeepJobs {
    /// The stored JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Self::All => Value::Bool(true),
            Self::None => Value::Bool(false),
            Self::Count(n) => Value::from(*n),
            Self::Window {
                age_secs,
                count,
                limit,
            } => {
                let mut obj = Map::new();
                for (name, value) in [("age", age_secs), ("count", count), ("limit", limit)] {
                    if let Some(v) = value {
                        obj.insert(name.into(), Value::from(*v));
                    }
                }
                Value::Object(obj)
            }
        }
    }

    /// Reads `true`, `false`, an integer or `{"age"?, "count"?, "limit"?}` (errors name the
    /// key `keepJobs`; [`JobOptions::from_stored`] names the real one).
    pub fn from_json(value: &Value) -> Result<Self, OptionsError> {
        Self::decode("keepJobs", value)
    }

    fn decode(key: &str, value: &Value) -> Result<Self, OptionsError> {
        match value {
            Value::Bool(true) => Ok(Self::All),
            Value::Bool(false) => Ok(Self::None),
            Value::Number(_) => Ok(Self::Count(read_u64(key, value)?)),
            Value::Object(obj) => {
                let member = |name: &str| {
                    present(obj.get(name))
                        .map(|v| read_u64(&format!("{key}.{name}"), v))
                        .transpose()
                };
                Ok(Self::Window {
                    age_secs: member("age")?,
                    count: member("count")?,
                    limit: member("limit")?,
                })
            }
            other => Err(decode_error(
                key,
                format!(
                    "expected a boolean, an integer or an object, found {}",
                    describe(other)
                ),
            )),
        }
    }
}

/// Deduplication settings, stored under `de`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dedup {
    /// The deduplication id (key `PFX:Q:de:<id>`).
    pub id: String,
    /// How long the id stays taken, in milliseconds (`None`: until the job finishes).
    pub ttl_ms: Option<u64>,
    /// A hit refreshes the TTL.
    pub extend: bool,
    /// A hit on a still-delayed job replaces that job.
    pub replace: bool,
    /// A hit on a still-delayed job moves its due time (BullMQ 6.7+).
    pub reschedule: bool,
    /// A hit on an active job stores the new job to run once the active one finishes.
    pub keep_last_if_active: bool,
}

impl Dedup {
    /// Simple deduplication on `id`, with no TTL and no flags.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ttl_ms: None,
            extend: false,
            replace: false,
            reschedule: false,
            keep_last_if_active: false,
        }
    }

    /// The same settings with a TTL (throttle mode).
    pub fn with_ttl(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = Some(ttl_ms);
        self
    }

    /// The stored JSON form; each flag is written only when true, as a JSON boolean (the Lua
    /// scripts treat any present value, even `0`, as true).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("id".into(), Value::from(self.id.as_str()));
        if let Some(ttl) = self.ttl_ms {
            obj.insert("ttl".into(), Value::from(ttl));
        }
        for (name, on) in [
            ("extend", self.extend),
            ("replace", self.replace),
            ("reschedule", self.reschedule),
            ("keepLastIfActive", self.keep_last_if_active),
        ] {
            if on {
                obj.insert(name.into(), Value::Bool(true));
            }
        }
        Value::Object(obj)
    }

    /// Reads `{"id", "ttl"?, "extend"?, "replace"?, "reschedule"?, "keepLastIfActive"?}`.
    pub fn from_json(value: &Value) -> Result<Self, OptionsError> {
        Self::decode(KEY_DEDUP, value)
    }

    fn decode(key: &str, value: &Value) -> Result<Self, OptionsError> {
        let Value::Object(obj) = value else {
            return Err(decode_error(
                key,
                format!("expected an object, found {}", describe(value)),
            ));
        };
        let id = match present(obj.get("id")) {
            Some(Value::String(id)) => id.clone(),
            Some(other) => {
                return Err(decode_error(
                    format!("{key}.id"),
                    format!("expected a string, found {}", describe(other)),
                ))
            }
            None => return Err(decode_error(key, "missing `id`")),
        };
        let flag = |name: &str| {
            present(obj.get(name))
                .map(|v| read_bool(&format!("{key}.{name}"), v))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        Ok(Self {
            id,
            ttl_ms: present(obj.get("ttl"))
                .map(|v| read_u64(&format!("{key}.ttl"), v))
                .transpose()?,
            extend: flag("extend")?,
            replace: flag("replace")?,
            reschedule: flag("reschedule")?,
            keep_last_if_active: flag("keepLastIfActive")?,
        })
    }
}

/// Options of one job, as stored in the `opts` field of its hash.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Custom job id (`jobId`); checked by [`validate_job_id`].
    pub job_id: Option<String>,
    /// Total attempts (`attempts`); Node workers treat a missing value as 0.
    pub attempts: Option<u32>,
    /// Retry backoff (`backoff`).
    pub backoff: Option<Backoff>,
    /// Delay before the job may run, in ms (`delay`); 0 means none.
    pub delay_ms: u64,
    /// Priority (`priority`), 1 (highest) to [`MAX_PRIORITY`]; 0 means none.
    pub priority: u32,
    /// Push to the "next to run" end of `wait` (`lifo`).
    pub lifo: bool,
    /// Creation time override, ms since the epoch (`timestamp`).
    pub timestamp_ms: Option<u64>,
    /// Retention after completion (`removeOnComplete`).
    pub remove_on_complete: Option<KeepJobs>,
    /// Retention after final failure (`removeOnFail`).
    pub remove_on_fail: Option<KeepJobs>,
    /// How many stack traces to keep (`stackTraceLimit`).
    pub stack_trace_limit: Option<u32>,
    /// Largest accepted `data`, in bytes (`sizeLimit`); checked by the producer.
    pub size_limit: Option<u64>,
    /// How many log lines to keep (`kl`, long name `keepLogs`).
    pub keep_logs: Option<u64>,
    /// Deduplication (`de`, long name `deduplication`).
    pub deduplication: Option<Dedup>,
    /// Fail the parent when this child fails (`fpof`).
    pub fail_parent_on_failure: bool,
    /// Let the parent continue when this child fails (`cpof`).
    pub continue_parent_on_failure: bool,
    /// Ignore this child's failure in the parent (`idof`).
    pub ignore_dependency_on_failure: bool,
    /// Remove this child from the parent's dependencies when it fails (`rdof`).
    pub remove_dependency_on_failure: bool,
    /// Telemetry propagation context (`tm`).
    pub telemetry_metadata: Option<String>,
    /// Do not propagate telemetry context (`omc`).
    pub omit_context: bool,
    /// Flow parent reference (`parent`, `{"id", "queue"}`), kept as JSON. A JSON `null` here is
    /// not written.
    pub parent: Option<Value>,
    /// Every stored key without a typed field (`repeat`, `repeatJobKey`, `prevMillis`, custom
    /// keys …), kept verbatim. Keys listed in [`KNOWN_OPTION_KEYS`] are ignored here when
    /// writing: set the typed field instead.
    pub extra: Map<String, Value>,
}

impl JobOptions {
    /// The storage form: short names for `de`, `kl`, `fpof`, `cpof`, `idof`, `rdof`, `tm`,
    /// `omc`, long names for the rest. Zero `delay`/`priority`, false flags and `None`s are
    /// left out; then every [`extra`](Self::extra) key that does not name a known option is
    /// added.
    pub fn to_stored(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(id) = &self.job_id {
            out.insert("jobId".into(), Value::from(id.as_str()));
        }
        if let Some(attempts) = self.attempts {
            out.insert("attempts".into(), Value::from(attempts));
        }
        if let Some(backoff) = &self.backoff {
            out.insert("backoff".into(), backoff.to_json());
        }
        if self.delay_ms != 0 {
            out.insert("delay".into(), Value::from(self.delay_ms));
        }
        if self.priority != 0 {
            out.insert("priority".into(), Value::from(self.priority));
        }
        if self.lifo {
            out.insert("lifo".into(), Value::Bool(true));
        }
        if let Some(ts) = self.timestamp_ms {
            out.insert("timestamp".into(), Value::from(ts));
        }
        if let Some(keep) = &self.remove_on_complete {
            out.insert("removeOnComplete".into(), keep.to_json());
        }
        if let Some(keep) = &self.remove_on_fail {
            out.insert("removeOnFail".into(), keep.to_json());
        }
        if let Some(limit) = self.stack_trace_limit {
            out.insert("stackTraceLimit".into(), Value::from(limit));
        }
        if let Some(limit) = self.size_limit {
            out.insert("sizeLimit".into(), Value::from(limit));
        }
        if let Some(parent) = self.parent.as_ref().filter(|p| !p.is_null()) {
            out.insert("parent".into(), parent.clone());
        }
        if let Some(kl) = self.keep_logs {
            out.insert(KEY_KEEP_LOGS.into(), Value::from(kl));
        }
        if let Some(dedup) = &self.deduplication {
            out.insert(KEY_DEDUP.into(), dedup.to_json());
        }
        for (key, on) in [
            (KEY_FAIL_PARENT, self.fail_parent_on_failure),
            (KEY_CONTINUE_PARENT, self.continue_parent_on_failure),
            (KEY_IGNORE_DEPENDENCY, self.ignore_dependency_on_failure),
            (KEY_REMOVE_DEPENDENCY, self.remove_dependency_on_failure),
            (KEY_OMIT_CONTEXT, self.omit_context),
        ] {
            if on {
                out.insert(key.into(), Value::Bool(true));
            }
        }
        if let Some(tm) = &self.telemetry_metadata {
            out.insert(KEY_TELEMETRY_METADATA.into(), Value::from(tm.as_str()));
        }
        for (key, value) in &self.extra {
            if !KNOWN_OPTION_KEYS.contains(&key.as_str()) {
                out.insert(key.clone(), value.clone());
            }
        }
        out
    }

    /// Reads a stored `opts` object (short or long names; short wins when both are present).
    ///
    /// A `null` member of a known option counts as absent; whole numbers written as floats are
    /// accepted; unknown keys go to [`extra`](Self::extra) unchanged. A known option of the
    /// wrong type is an [`OptionsError::Decode`].
    pub fn from_stored(map: &Map<String, Value>) -> Result<Self, OptionsError> {
        let telemetry = match present(map.get("telemetry")) {
            Some(Value::Object(obj)) => Some(obj),
            Some(other) => {
                return Err(decode_error(
                    "telemetry",
                    format!("expected an object, found {}", describe(other)),
                ))
            }
            None => None,
        };
        let nested = |name: &str| telemetry.and_then(|obj| present(obj.get(name)));

        let mut opts = Self {
            job_id: pick(map, &["jobId"])
                .map(|(k, v)| read_string(k, v))
                .transpose()?,
            attempts: pick(map, &["attempts"])
                .map(|(k, v)| read_u32(k, v))
                .transpose()?,
            backoff: pick(map, &["backoff"])
                .map(|(k, v)| Backoff::decode(k, v))
                .transpose()?,
            delay_ms: pick(map, &["delay"])
                .map(|(k, v)| read_u64(k, v))
                .transpose()?
                .unwrap_or(0),
            priority: pick(map, &["priority"])
                .map(|(k, v)| read_u32(k, v))
                .transpose()?
                .unwrap_or(0),
            lifo: read_flag(map, &["lifo"])?,
            timestamp_ms: pick(map, &["timestamp"])
                .map(|(k, v)| read_u64(k, v))
                .transpose()?,
            remove_on_complete: pick(map, &["removeOnComplete"])
                .map(|(k, v)| KeepJobs::decode(k, v))
                .transpose()?,
            remove_on_fail: pick(map, &["removeOnFail"])
                .map(|(k, v)| KeepJobs::decode(k, v))
                .transpose()?,
            stack_trace_limit: pick(map, &["stackTraceLimit"])
                .map(|(k, v)| read_u32(k, v))
                .transpose()?,
            size_limit: pick(map, &["sizeLimit"])
                .map(|(k, v)| read_u64(k, v))
                .transpose()?,
            keep_logs: pick(map, &[KEY_KEEP_LOGS, "keepLogs"])
                .map(|(k, v)| read_u64(k, v))
                .transpose()?,
            deduplication: pick(map, &[KEY_DEDUP, "deduplication"])
                .map(|(k, v)| Dedup::decode(k, v))
                .transpose()?,
            fail_parent_on_failure: read_flag(map, &[KEY_FAIL_PARENT, "failParentOnFailure"])?,
            continue_parent_on_failure: read_flag(
                map,
                &[KEY_CONTINUE_PARENT, "continueParentOnFailure"],
            )?,
            ignore_dependency_on_failure: read_flag(
                map,
                &[KEY_IGNORE_DEPENDENCY, "ignoreDependencyOnFailure"],
            )?,
            remove_dependency_on_failure: read_flag(
                map,
                &[KEY_REMOVE_DEPENDENCY, "removeDependencyOnFailure"],
            )?,
            telemetry_metadata: match pick(map, &[KEY_TELEMETRY_METADATA, "telemetry.metadata"]) {
                Some((k, v)) => Some(read_string(k, v)?),
                None => nested("metadata")
                    .map(|v| read_string("telemetry.metadata", v))
                    .transpose()?,
            },
            omit_context: match pick(map, &[KEY_OMIT_CONTEXT, "telemetry.omitContext"]) {
                Some((k, v)) => read_bool(k, v)?,
                None => nested("omitContext")
                    .map(|v| read_bool("telemetry.omitContext", v))
                    .transpose()?
                    .unwrap_or(false),
            },
            parent: pick(map, &["parent"]).map(|(_, v)| v.clone()),
            extra: Map::new(),
        };
        for (key, value) in map {
            if !KNOWN_OPTION_KEYS.contains(&key.as_str()) {
                opts.extra.insert(key.clone(), value.clone());
            }
        }
        Ok(opts)
    }

    /// Producer-side checks, to run before any I/O: priority range, `attempts ≥ 1`, backoff
    /// jitter and custom name, the custom job id, a non-empty deduplication id, a non-zero
    /// `sizeLimit`, and no typed option hidden in [`extra`](Self::extra).
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.priority > MAX_PRIORITY {
            return Err(invalid(
                "priority",
                format!("{} is above the maximum {MAX_PRIORITY}", self.priority),
            ));
        }
        if self.attempts == Some(0) {
            return Err(invalid("attempts", "attempts must be at least 1"));
        }
        if let Some(backoff) = &self.backoff {
            if let Some(jitter) = backoff.jitter {
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(invalid(
                        "backoff",
                        format!("jitter {jitter} is outside 0..=1"),
                    ));
                }
            }
            if let BackoffKind::Custom(name) = &backoff.kind {
                if name.is_empty() {
                    return Err(invalid("backoff", "a custom backoff type needs a name"));
                }
                if name == "fixed" || name == "exponential" {
                    return Err(invalid(
                        "backoff",
                        format!("`{name}` is a built-in backoff type, not a custom one"),
                    ));
                }
            }
        }
        if let Some(id) = &self.job_id {
            validate_job_id(id)?;
        }
        if let Some(dedup) = &self.deduplication {
            if dedup.id.is_empty() {
                return Err(invalid(
                    "deduplication",
                    "the deduplication id must not be empty",
                ));
            }
        }
        if self.size_limit == Some(0) {
            return Err(invalid("sizeLimit", "the size limit must be above 0 bytes"));
        }
        if let Some(key) = self
            .extra
            .keys()
            .find(|k| KNOWN_OPTION_KEYS.contains(&k.as_str()))
        {
            return Err(invalid(
                "extra",
                format!("`{key}` is a typed option; set its field instead"),
            ));
        }
        Ok(())
    }
}

/// Checks a custom job id: not empty, at most [`MAX_JOB_ID_LEN`] bytes, no `:`, not an integer
/// (auto ids are decimal integers, and Node rejects integer-looking custom ids), and not a queue
/// key suffix ([`RESERVED_JOB_IDS`]).
///
/// Job Scheduler ids (`repeat:<scheduler>:<millis>`) are made by the scripts, not by this check.
pub fn validate_job_id(id: &str) -> Result<(), OptionsError> {
    let reason = if id.is_empty() {
        "a job id must not be empty".to_owned()
    } else if id.len() > MAX_JOB_ID_LEN {
        format!(
            "a job id of {} bytes is longer than the maximum {MAX_JOB_ID_LEN}",
            id.len()
        )
    } else if id.contains(':') {
        format!("{id:?} contains `:`, which separates key segments")
    } else if is_integer_text(id) {
        format!("{id:?} is an integer and could collide with automatic job ids")
    } else if RESERVED_JOB_IDS.contains(&id) {
        format!("{id:?} is the name of a queue key")
    } else {
        return Ok(());
    };
    Err(invalid("jobId", reason))
}

/// `true` for an optional `-` followed by ASCII digits only.
fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a non-negative whole number written as text: decimal digits, or a float with no
/// fractional part (`"1000.0"`, `"1.2e3"`), surrounded by optional whitespace.
pub(crate) fn parse_u64_text(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    text.parse::<f64>().ok().and_then(integral_f64)
}

fn integral_f64(f: f64) -> Option<u64> {
    // 2^64 is exactly representable; anything at or above it does not fit.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if (0.0..LIMIT).contains(&f) && f.fract() == 0.0 {
        // The checks above make the conversion exact.
        Some(f as u64)
    } else {
        None
    }
}

/// A JSON number that is a non-negative whole number, integral floats included.
fn json_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().and_then(integral_f64))
}

/// A short description of a JSON value's shape, without its content.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// The first non-null member among `names`, with the name it was found under.
fn pick<'m>(
    map: &'m Map<String, Value>,
    names: &[&'static str],
) -> Option<(&'static str, &'m Value)> {
    names
        .iter()
        .find_map(|name| present(map.get(*name)).map(|v| (*name, v)))
}

fn read_u64(key: &str, value: &Value) -> Result<u64, OptionsError> {
    json_u64(value).ok_or_else(|| {
        let found = if value.is_number() {
            "a negative, fractional or too large number"
        } else {
            describe(value)
        };
        decode_error(
            key,
            format!("expected a non-negative integer, found {found}"),
        )
    })
}

fn read_u32(key: &str, value: &Value) -> Result<u32, OptionsError> {
    let n = read_u64(key, value)?;
    u32::try_from(n)
        .map_err(|_| decode_error(key, format!("{n} is above the maximum {}", u32::MAX)))
}

fn read_bool(key: &str, value: &Value) -> Result<bool, OptionsError> {
    value.as_bool().ok_or_else(|| {
        decode_error(
            key,
            format!("expected a boolean, found {}", describe(value)),
        )
    })
}

fn read_string(key: &str, value: &Value) -> Result<String, OptionsError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| decode_error(key, format!("expected a string, found {}", describe(value))))
}

fn read_flag(map: &Map<String, Value>, names: &[&'static str]) -> Result<bool, OptionsError> {
    pick(map, names)
        .map(|(k, v)| read_bool(k, v))
        .transpose()
        .map(|b| b.unwrap_or(false))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// Arbitrary JSON without floats that could lose precision.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            ".{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_keep() -> impl Strategy<Value = KeepJobs> {
        let opt = || proptest::option::of(any::<u64>());
        prop_oneof![
            Just(KeepJobs::All),
            Just(KeepJobs::None),
            any::<u64>().prop_map(KeepJobs::Count),
            (opt(), opt(), opt()).prop_map(|(age_secs, count, limit)| KeepJobs::Window {
                age_secs,
                count,
                limit
            }),
        ]
    }

    fn arb_backoff() -> impl Strategy<Value = Backoff> {
        let kind = prop_oneof![
            Just(BackoffKind::Fixed),
            Just(BackoffKind::Exponential),
            "[a-zA-Z-]{1,12}"
                .prop_filter("not built in", |s| s != "fixed" && s != "exponential")
                .prop_map(BackoffKind::Custom),
        ];
        (
            kind,
            proptest::option::of(any::<u64>()),
            proptest::option::of((0u32..=1000).prop_map(|n| f64::from(n) / 1000.0)),
        )
            .prop_map(|(kind, delay_ms, jitter)| Backoff {
                kind,
                delay_ms,
                jitter,
            })
    }

    fn arb_dedup() -> impl Strategy<Value = Dedup> {
        (
            ".{0,12}",
            proptest::option::of(any::<u64>()),
            any::<[bool; 4]>(),
        )
            .prop_map(|(id, ttl_ms, [extend, replace, reschedule, keep])| Dedup {
                id,
                ttl_ms,
                extend,
                replace,
                reschedule,
                keep_last_if_active: keep,
            })
    }

    fn arb_extra() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(
            "[a-zA-Z.]{1,12}".prop_filter("not a known option", |k| {
                !KNOWN_OPTION_KEYS.contains(&k.as_str())
            }),
            arb_json(),
            0..4,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    pub(crate) fn arb_options() -> impl Strategy<Value = JobOptions> {
        let part1 = (
            proptest::option::of(".{0,16}"),
            proptest::option::of(any::<u32>()),
            proptest::option::of(arb_backoff()),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(arb_keep()),
            proptest::option::of(arb_keep()),
            proptest::option::of(any::<u32>()),
        );
        let part2 = (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(arb_dedup()),
            any::<[bool; 5]>(),
            proptest::option::of(".{0,16}"),
            proptest::option::of(arb_json().prop_filter("not null", |v| !v.is_null())),
            arb_extra(),
        );
        (part1, part2).prop_map(
            |(
                (
                    job_id,
                    attempts,
                    backoff,
                    delay_ms,
                    priority,
                    lifo,
                    timestamp_ms,
                    remove_on_complete,
                    remove_on_fail,
                    stack_trace_limit,
                ),
                (size_limit, keep_logs, deduplication, flags, telemetry_metadata, parent, extra),
            )| {
                let [fpof, cpof, idof, rdof, omc] = flags;
                JobOptions {
                    job_id,
                    attempts,
                    backoff,
                    delay_ms,
                    priority,
                    lifo,
                    timestamp_ms,
                    remove_on_complete,
                    remove_on_fail,
                    stack_trace_limit,
                    size_limit,
                    keep_logs,
                    deduplication,
                    fail_parent_on_failure: fpof,
                    continue_parent_on_failure: cpof,
                    ignore_dependency_on_failure: idof,
                    remove_dependency_on_failure: rdof,
                    telemetry_metadata,
                    omit_context: omc,
                    parent,
                    extra,
                }
            },
        )
    }

    /// Rewrites the short names of a stored object into their long spellings.
    fn to_long_names(mut stored: Map<String, Value>) -> Map<String, Value> {
        for (short, long) in [
            ("de", "deduplication"),
            ("kl", "keepLogs"),
            ("fpof", "failParentOnFailure"),
            ("cpof", "continueParentOnFailure"),
            ("idof", "ignoreDependencyOnFailure"),
            ("rdof", "removeDependencyOnFailure"),
        ] {
            if let Some(v) = stored.remove(short) {
                stored.insert(long.into(), v);
            }
        }
        let mut telemetry = Map::new();
        if let Some(v) = stored.remove("tm") {
            telemetry.insert("metadata".into(), v);
        }
        if let Some(v) = stored.remove("omc") {
            telemetry.insert("omitContext".into(), v);
        }
        if !telemetry.is_empty() {
            stored.insert("telemetry".into(), Value::Object(telemetry));
        }
        stored
    }

    proptest! {
        #[test]
        fn stored_round_trip(opts in arb_options()) {
            let stored = opts.to_stored();
            let back = JobOptions::from_stored(&stored).expect("decodes");
            prop_assert_eq!(&back, &opts);
            // and through JSON text, as it travels in the hash
            let text = Value::Object(stored).to_string();
            let reparsed: Map<String, Value> = serde_json::from_str(&text).expect("json");
            prop_assert_eq!(JobOptions::from_stored(&reparsed).expect("decodes"), opts);
        }

        #[test]
        fn long_names_are_understood(opts in arb_options()) {
            let long = to_long_names(opts.to_stored());
            let back = JobOptions::from_stored(&long).expect("decodes");
            prop_assert_eq!(back, opts);
        }

        #[test]
        fn stored_uses_short_names_only(opts in arb_options()) {
            let stored = opts.to_stored();
            for long in [
                "deduplication", "keepLogs", "failParentOnFailure", "continueParentOnFailure",
                "ignoreDependencyOnFailure", "removeDependencyOnFailure", "telemetry",
            ] {
                prop_assert!(!stored.contains_key(long), "{long} written");
            }
            // flags are real booleans, only when true
            for key in ["lifo", "fpof", "cpof", "idof", "rdof", "omc"] {
                if let Some(v) = stored.get(key) {
                    prop_assert_eq!(v, &Value::Bool(true));
                }
            }
        }

        #[test]
        fn integer_text_parses(n in any::<u64>()) {
            prop_assert_eq!(parse_u64_text(&n.to_string()), Some(n));
        }

        #[test]
        fn valid_generated_ids_pass(id in "[a-z][a-z0-9_-]{0,20}") {
            prop_assume!(!RESERVED_JOB_IDS.contains(&id.as_str()));
            prop_assert!(validate_job_id(&id).is_ok());
        }
    }

    #[test]
    fn default_writes_nothing() {
        assert!(JobOptions::default().to_stored().is_empty());
        assert_eq!(
            JobOptions::from_stored(&Map::new()).expect("decodes"),
            JobOptions::default()
        );
    }

    #[test]
    fn node_custom_options_decode() {
        let stored = obj(json!({
            "kl": 5,
            "removeOnFail": {"age": 3600, "count": 100},
            "stackTraceLimit": 3,
            "jobId": "custom-1",
            "removeOnComplete": 10,
            "backoff": {"delay": 1000, "type": "exponential"},
            "attempts": 3
        }));
        let opts = JobOptions::from_stored(&stored).expect("decodes");
        assert_eq!(opts.attempts, Some(3));
        assert_eq!(opts.backoff, Some(Backoff::exponential(1000)));
        assert_eq!(opts.remove_on_complete, Some(KeepJobs::Count(10)));
        assert_eq!(
            opts.remove_on_fail,
            Some(KeepJobs::Window {
                age_secs: Some(3600),
                count: Some(100),
                limit: None
            })
        );
        assert_eq!(opts.keep_logs, Some(5));
        assert_eq!(opts.stack_trace_limit, Some(3));
        assert_eq!(opts.job_id.as_deref(), Some("custom-1"));
        assert!(opts.extra.is_empty());
        assert_eq!(Value::Object(opts.to_stored()), Value::Object(stored));
    }

    #[test]
    fn cjson_quirks_are_tolerated() {
        let stored: Map<String, Value> = serde_json::from_str(
            r#"{"delay":1000.0,"timestamp":1.2345678901235e+17,"attempts":0,
                "priority":null,"url":"http:\/\/x\/y","tags":{},"backoff":2000,
                "de":{"id":"d","ttl":5000.0,"extend":true,"replace":null}}"#,
        )
        .expect("json");
        let opts = JobOptions::from_stored(&stored).expect("decodes");
        assert_eq!(opts.delay_ms, 1000);
        assert_eq!(opts.timestamp_ms, Some(123_456_789_012_350_000));
        assert_eq!(opts.attempts, Some(0));
        assert_eq!(opts.priority, 0);
        assert_eq!(opts.backoff, Some(Backoff::fixed(2000)));
        let mut dedup = Dedup::new("d").with_ttl(5000);
        dedup.extend = true;
        assert_eq!(opts.deduplication, Some(dedup));
        assert_eq!(opts.extra.get("url"), Some(&json!("http://x/y")));
        assert_eq!(opts.extra.get("tags"), Some(&json!({})));
        // the bare-number backoff is written back in its normal form
        assert_eq!(
            opts.to_stored()["backoff"],
            json!({"type": "fixed", "delay": 2000})
        );
    }

    #[test]
    fn scheduler_keys_pass_through() {
        let stored = obj(json!({
            "repeat": {"every": 1000, "count": 1},
            "repeatJobKey": "sched-1",
            "prevMillis": 1_700_000_000_000u64,
            "jobId": "repeat:sched-1:1700000000000",
            "delay": 999
        }));
        let opts = JobOptions::from_stored(&stored).expect("decodes");
        assert_eq!(opts.extra.len(), 3);
        assert_eq!(opts.attempts, None);
        assert_eq!(Value::Object(opts.to_stored()), Value::Object(stored));
    }

    #[test]
    fn short_name_wins_over_long() {
        let stored =
            obj(json!({"kl": 1, "keepLogs": 2, "fpof": true, "failParentOnFailure": false}));
        let opts = JobOptions::from_stored(&stored).expect("decodes");
        assert_eq!(opts.keep_logs, Some(1));
        assert!(opts.fail_parent_on_failure);
        assert!(opts.extra.is_empty());
    }

    #[test]
    fn wrong_types_are_decode_errors() {
        for (stored, key) in [
            (json!({"attempts": "3"}), "attempts"),
            (json!({"attempts": 1.5}), "attempts"),
            (json!({"priority": -1}), "priority"),
            (json!({"priority": 5_000_000_000u64}), "priority"),
            (json!({"lifo": 1}), "lifo"),
            (json!({"de": {"id": "x", "extend": 0}}), "de.extend"),
            (json!({"de": {"ttl": 5}}), "de"),
            (json!({"de": "x"}), "de"),
            (json!({"backoff": {"delay": 5}}), "backoff"),
            (json!({"backoff": "fixed"}), "backoff"),
            (json!({"removeOnFail": {"age": "1h"}}), "removeOnFail.age"),
            (json!({"removeOnComplete": "yes"}), "removeOnComplete"),
            (json!({"tm": 5}), "tm"),
            (json!({"jobId": 7}), "jobId"),
        ] {
            let err = JobOptions::from_stored(&obj(stored.clone())).expect_err("must fail");
            match &err {
                OptionsError::Decode { key: k, .. } => assert_eq!(k, key, "{stored}"),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().starts_with("cannot decode job option"));
        }
    }

    #[test]
    fn dedup_flags_written_only_when_true() {
        let mut dedup = Dedup::new("a");
        assert_eq!(dedup.to_json(), json!({"id": "a"}));
        dedup.keep_last_if_active = true;
        dedup.reschedule = true;
        assert_eq!(
            dedup.to_json(),
            json!({"id": "a", "keepLastIfActive": true, "reschedule": true})
        );
    }

    #[test]
    fn keep_jobs_forms() {
        for (keep, value) in [
            (KeepJobs::All, json!(true)),
            (KeepJobs::None, json!(false)),
            (KeepJobs::Count(7), json!(7)),
            (
                KeepJobs::Window {
                    age_secs: Some(60),
                    count: None,
                    limit: Some(2),
                },
                json!({"age": 60, "limit": 2}),
            ),
        ] {
            assert_eq!(keep.to_json(), value);
            assert_eq!(KeepJobs::from_json(&value).expect("decodes"), keep);
        }
    }

    #[test]
    fn validate_rejects_bad_values() {
        let with = |f: fn(&mut JobOptions)| {
            let mut opts = JobOptions::default();
            f(&mut opts);
            opts.validate()
        };
        assert_eq!(
            with(|o| o.priority = 3_000_000)
                .expect_err("priority")
                .to_string(),
            "invalid job option `priority`: 3000000 is above the maximum 2097151"
        );
        assert!(with(|o| {
            o.priority = MAX_PRIORITY;
            o.attempts = Some(1);
        })
        .is_ok());
        assert_eq!(
            with(|o| o.attempts = Some(0))
                .expect_err("attempts")
                .to_string(),
            "invalid job option `attempts`: attempts must be at least 1"
        );
        for bad in [
            |o: &mut JobOptions| o.backoff = Some(Backoff::fixed(10).with_jitter(1.5)),
            |o: &mut JobOptions| o.backoff = Some(Backoff::fixed(10).with_jitter(f64::NAN)),
            |o: &mut JobOptions| o.backoff = Some(Backoff::new(BackoffKind::Custom(String::new()))),
            |o: &mut JobOptions| {
                o.backoff = Some(Backoff::new(BackoffKind::Custom("fixed".into())))
            },
            |o: &mut JobOptions| o.deduplication = Some(Dedup::new("")),
            |o: &mut JobOptions| o.size_limit = Some(0),
            |o: &mut JobOptions| o.job_id = Some("wait".into()),
            |o: &mut JobOptions| {
                o.extra.insert("priority".into(), json!(3));
            },
        ] {
            assert!(matches!(with(bad), Err(OptionsError::Invalid { .. })));
        }
        assert!(with(|o| {
            o.backoff = Some(Backoff::new(BackoffKind::Custom("linear".into())).with_jitter(1.0));
            o.job_id = Some("custom-1".into());
            o.deduplication = Some(Dedup::new("d"));
            o.size_limit = Some(1);
            o.extra.insert("repeatJobKey".into(), json!("s"));
        })
        .is_ok());

        // a typed key in extra never reaches the stored form
        let mut opts = JobOptions::default();
        opts.extra.insert("priority".into(), json!(3));
        assert!(opts.to_stored().is_empty());
    }

    #[test]
    fn job_id_rules() {
        for ok in [
            "custom-1",
            "a",
            "job_7",
            "007x",
            "-",
            "waiting",
            &"x".repeat(1024),
        ] {
            assert!(validate_job_id(ok).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            ("", "must not be empty"),
            ("123", "\"123\" is an integer"),
            ("0", "\"0\" is an integer"),
            ("-5", "\"-5\" is an integer"),
            ("a:b", "\"a:b\" contains `:`"),
            ("0:1", "contains `:`"),
            ("wait", "\"wait\" is the name of a queue key"),
            ("de", "queue key"),
            ("stalled-check", "queue key"),
        ] {
            let msg = validate_job_id(bad).expect_err(bad).to_string();
            assert!(msg.starts_with("invalid job option `jobId`: "), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
        for reserved in RESERVED_JOB_IDS {
            assert!(validate_job_id(reserved).is_err(), "{reserved}");
        }
        let long = "x".repeat(1025);
        let msg = validate_job_id(&long).expect_err("too long").to_string();
        assert!(msg.contains("1025 bytes"), "{msg}");
    }

    #[test]
    fn integer_text_forms() {
        assert_eq!(parse_u64_text("1000.0"), Some(1000));
        assert_eq!(parse_u64_text(" 42 "), Some(42));
        assert_eq!(
            parse_u64_text("1.2345678901235e+17"),
            Some(123_456_789_012_350_000)
        );
        assert_eq!(parse_u64_text("1.5"), None);
        assert_eq!(parse_u64_text("-1"), None);
        assert_eq!(parse_u64_text("NaN"), None);
        assert_eq!(parse_u64_text("inf"), None);
        assert_eq!(parse_u64_text(""), None);
        assert_eq!(parse_u64_text("12abc"), None);
        assert_eq!(parse_u64_text("1e30"), None);
    }
}
