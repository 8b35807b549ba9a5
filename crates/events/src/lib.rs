//! `bullpen-events`: a queue's events, from any process, whoever wrote them (Node BullMQ or
//! bullpen).
//!
//! [`QueueEvents`] reads the `events` stream on a dedicated blocking connection. It never
//! skips silently: `XREAD BLOCK` only wakes it up, and every batch it delivers comes from one
//! atomic script that reads the entries after the last delivered id *and* checks whether any
//! entry after that id was trimmed away (reported as [`EventItem::Gap`]). After a reconnect or
//! a Redis restart it resumes from the last id it delivered. A malformed entry is delivered as
//! [`EventItem::Malformed`] and the stream goes on.
//!
//! Reading is on demand ([`QueueEvents::next`]), so a slow consumer only reads later and
//! memory stays bounded; [`QueueEvents::into_broadcast`] fans out with a bound and a
//! documented lag policy.
//!
//! ```no_run
//! use bullpen_conn::RedisOptions;
//! use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisOptions::from_url("redis://127.0.0.1:6379")?.blocking();
//! let mut events = QueueEvents::new(redis, "emails", QueueEventsOptions::default()).await?;
//! while let Some(item) = events.next().await {
//!     match item? {
//!         EventItem::Event { id, event } => println!("{id} {}", event.name()),
//!         EventItem::Malformed { id, error } => eprintln!("{id}: {error}"),
//!         EventItem::Gap { after, .. } => eprintln!("events after {after} were trimmed"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bullpen_conn::redis::{self, Value};
use bullpen_conn::{BlockingConnection, Connection, RedisOptions};
use bullpen_core::events::{Event, EventDecodeError};
use bullpen_core::script::READ_EVENTS;
use bullpen_core::QueueKeys;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How long one `XREAD BLOCK` waits (BullMQ's `blockingTimeout`, 10 s).
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(10);
/// Entries read per batch.
pub const BATCH: usize = 100;
/// BullMQ's trim length for custom events (`QueueEventsProducer`).
pub const DEFAULT_CUSTOM_MAX_LEN: u64 = 1_000;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Format or script errors.
    #[error(transparent)]
    Core(#[from] bullpen_core::Error),
    /// Connection errors.
    #[error(transparent)]
    Conn(#[from] bullpen_conn::Error),
    /// The stream answered something unexpected.
    #[error("unexpected reply from the events stream: {0}")]
    Reply(String),
    /// `wait_until_finished` ran out of time.
    #[error("job {job_id} did not finish within {after:?}")]
    Timeout {
        /// The job.
        job_id: String,
        /// The timeout.
        after: Duration,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a listener starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartAt {
    /// After the newest entry at start-up (BullMQ's `$`), resolved to a concrete id so that
    /// a reconnect cannot lose what came in between.
    #[default]
    Now,
    /// From the beginning of the stream.
    Beginning,
    /// After this stream id.
    After(String),
}

/// Options of [`QueueEvents`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueueEventsOptions {
    /// Key prefix.
    pub prefix: String,
    /// Where to start.
    pub start: StartAt,
    /// How long one blocking read waits.
    pub block: Duration,
}

impl Default for QueueEventsOptions {
    fn default() -> Self {
        Self {
            prefix: bullpen_core::DEFAULT_PREFIX.into(),
            start: StartAt::Now,
            block: DEFAULT_BLOCK,
        }
    }
}

impl QueueEventsOptions {
    /// Starts at `start`.
    pub fn start(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Sets the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// One item of the stream.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EventItem {
    /// An event, decoded.
    Event {
        /// Stream id.
        id: String,
        /// The event.
        event: Event,
    },
    /// An entry that could not be decoded (the listener goes on).
    Malformed {
        /// Stream id.
        id: String,
        /// Why.
        error: EventDecodeError,
    },
    /// Entries after `after` were trimmed before they could be read; reading resumes at
    /// `resumed_at` (the oldest entry still there, or empty if the stream was emptied).
    Gap {
        /// The last id delivered before the gap.
        after: String,
        /// The oldest id still in the stream.
        resumed_at: String,
    },
}

/// How a job ended, as [`QueueEvents::wait_until_finished`] reports it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Finished {
    /// Completed with this return value.
    Completed(serde_json::Value),
    /// Failed for good with this reason.
    Failed(String),
}

/// A listener on one queue's events.
pub struct QueueEvents {
    conn: BlockingConnection,
    keys: QueueKeys,
    last_id: String,
    /// Number of the last delivered entry among all entries ever added, when known.
    number: Option<u64>,
    buffer: VecDeque<EventItem>,
    block: Duration,
    closed: CancellationToken,
}

impl std::fmt::Debug for QueueEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEvents")
            .field("queue", &self.keys.name())
            .field("last_id", &self.last_id)
            .finish()
    }
}

/// Closes a [`QueueEvents`] from another task, even while it is blocked.
#[derive(Clone, Debug)]
pub struct CloseHandle(CancellationToken);

impl CloseHandle {
    /// Closes the listener: a blocked `next()` returns `None` at once.
    pub fn close(&self) {
        self.0.cancel();
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// One stream entry: its id and field pairs.
type Entry = (String, Vec<(String, String)>);

fn parse_entries(v: &Value) -> Result<Vec<Entry>> {
    let Value::Array(items) = v else {
        return Err(Error::Reply("entries are not an array".into()));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(Error::Reply("an entry is not an array".into()));
        };
        let id = pair
            .first()
            .and_then(text)
            .ok_or_else(|| Error::Reply("entry without id".into()))?;
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = pair.get(1) {
            for c in kv.chunks(2) {
                if let [k, v] = c {
                    fields.push((text(k).unwrap_or_default(), text(v).unwrap_or_default()));
                }
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

impl QueueEvents {
    /// Listens to `queue` on a dedicated connection made from `redis` (normally the
    /// `blocking()` preset: it waits through outages and resumes by itself).
    pub async fn new(redis: RedisOptions, queue: &str, opts: QueueEventsOptions) -> Result<Self> {
        let keys = QueueKeys::new(&opts.prefix, queue)?;
        keys.check_cluster(&redis)?;
        let name = keys.queue_events_connection_name();
        let conn =
            BlockingConnection::connect(redis.with_command_timeout(None).with_client_name(name))
                .await?;
        let (last_id, number) = match opts.start {
            // Entries trimmed before we started are not a gap: unknown position.
            StartAt::Beginning => ("0-0".to_owned(), None),
            StartAt::After(id) => (id, None),
            StartAt::Now => {
                let r = read_events(conn.connection(), &keys, "0-0", 0).await?;
                (r.last_generated, Some(r.added))
            }
        };
        Ok(Self {
            conn,
            keys,
            last_id,
            number,
            buffer: VecDeque::new(),
            block: opts.block.max(Duration::from_millis(1)),
            closed: CancellationToken::new(),
        })
    }

    /// The last stream id delivered (or the start position).
    pub fn last_id(&self) -> &str {
        &self.last_id
    }

    /// A handle that closes this listener from elsewhere.
    pub fn close_handle(&self) -> CloseHandle {
        CloseHandle(self.closed.clone())
    }

    /// Closes the listener and its connection.
    pub fn close(&self) {
        self.closed.cancel();
        self.conn.connection().close();
    }

    /// The next item, waiting as long as needed; `None` once closed. Connection errors are
    /// returned as `Some(Err(..))` and the next call resumes from the last delivered id.
    pub async fn next(&mut self) -> Option<Result<EventItem>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(Ok(item));
            }
            if self.closed.is_cancelled() {
                return None;
            }
            match self.read_batch().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Some(Err(e)),
            }
            // Nothing new: block until something arrives (a wake-up only; the batch is then
            // read atomically with its gap check).
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX))
                .arg("STREAMS")
                .arg(self.keys.key("events"))
                .arg(&self.last_id);
            let closed = self.closed.clone();
            tokio::select! {
                r = self.conn.block::<Value>(&cmd, self.block) => {
                    if let Err(e) = r {
                        return Some(Err(e.into()));
                    }
                }
                _ = closed.cancelled() => {
                    self.conn.connection().close();
                    return None;
                }
            }
        }
    }

    /// Reads one batch into the buffer; `true` if it delivered something.
    async fn read_batch(&mut self) -> Result<bool> {
        let r = read_events(self.conn.connection(), &self.keys, &self.last_id, BATCH).await?;
        let oldest_is_past_us = !r.first.is_empty() && id_after(&r.first, &self.last_id);
        // Number (1-based, of all entries ever added) of the oldest retained entry.
        let oldest_number = (r.added + 1).saturating_sub(r.length);
        let gap = match self.number {
            Some(k) if r.length == 0 => r.added > k,
            Some(k) => oldest_is_past_us && oldest_number > k + 1,
            // Unknown position (started after a given id): the oldest entry being past us is
            // the best evidence there is.
            None => self.last_id != "0-0" && oldest_is_past_us,
        };
        if gap {
            self.buffer.push_back(EventItem::Gap {
                after: self.last_id.clone(),
                resumed_at: r.first.clone(),
            });
        }
        let base = if oldest_is_past_us {
            Some(oldest_number)
        } else {
            self.number.map(|k| k + 1)
        };
        let n = r.entries.len() as u64;
        let delivered = gap || n > 0;
        if n > 0 {
            self.number = base.map(|b| b + n - 1);
        } else if gap {
            // Everything after us was trimmed: stand at the end, or the same gap would be
            // reported again.
            self.last_id = r.last_generated.clone();
            self.number = Some(r.added);
        }
        for (id, fields) in r.entries {
            self.last_id = id.clone();
            self.buffer.push_back(match Event::from_fields(&fields) {
                Ok(event) => EventItem::Event { id, event },
                Err(error) => EventItem::Malformed { id, error },
            });
        }
        Ok(delivered)
    }

    /// Waits until job `job_id` completes or fails for good, within `timeout`. Never races: a
    /// job that finished before the call is answered from its hash, and the stream position
    /// is taken before that check, so a finish right after it is seen in the stream.
    pub async fn wait_until_finished(
        &mut self,
        job_id: &str,
        timeout: Duration,
    ) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let conn = self.conn.connection().clone();
        let mut cursor = newest_id(&conn, &self.keys).await?;
        if let Some(done) = finished_from_hash(&conn, &self.keys, job_id).await? {
            return Ok(done);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    job_id: job_id.into(),
                    after: timeout,
                });
            }
            let block = left.min(self.block).max(Duration::from_millis(1));
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg("STREAMS")
                .arg(self.keys.key("events"))
                .arg(&cursor);
            let reply: Value = self.conn.block(&cmd, block).await?;
            // A gap (trim) or a reconnect may hide the event: the hash is the truth.
            let Value::Array(streams) = reply else {
                if let Some(done) = finished_from_hash(&conn, &self.keys, job_id).await? {
                    return Ok(done);
                }
                continue;
            };
            for s in &streams {
                let Value::Array(kv) = s else { continue };
                let Some(entries) = kv.get(1) else { continue };
                for (id, fields) in parse_entries(entries)? {
                    cursor = id;
                    match Event::from_fields(&fields) {
                        Ok(Event::Completed {
                            job_id: j,
                            returnvalue,
                            ..
                        }) if j == job_id => {
                            return Ok(Finished::Completed(returnvalue));
                        }
                        Ok(Event::Failed {
                            job_id: j,
                            failed_reason,
                            ..
                        }) if j == job_id => {
                            // A failed event is only emitted for a final failure.
                            return Ok(Finished::Failed(failed_reason));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The listener as a `Stream`: each poll reads on demand, so a slow consumer only reads
    /// later and nothing piles up in memory. Ends when the listener is closed.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<EventItem>> + Send {
        futures_util::stream::unfold(self, |mut ev| async move {
            let item = ev.next().await?;
            Some((item, ev))
        })
    }

    /// Moves the listener to a task that fans events out on a broadcast channel of
    /// `capacity`. Lag policy: a receiver that falls more than `capacity` items behind gets
    /// `RecvError::Lagged(n)` and loses the oldest items; memory stays bounded. The task ends
    /// when the listener is closed (through the returned handle) or every receiver is gone.
    pub fn into_broadcast(
        mut self,
        capacity: usize,
    ) -> (broadcast::Sender<EventItem>, CloseHandle) {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let handle = self.close_handle();
        let sender = tx.clone();
        tokio::spawn(async move {
            while let Some(item) = self.next().await {
                match item {
                    Ok(item) => {
                        if sender.send(item).is_err() && sender.receiver_count() == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "queue events: read failed; resuming");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            self.close();
        });
        (tx, handle)
    }
}

/// What `read_events.lua` answered.
struct ReadReply {
    first: String,
    added: u64,
    length: u64,
    last_generated: String,
    entries: Vec<Entry>,
}

async fn read_events(
    conn: &Connection,
    keys: &QueueKeys,
    after: &str,
    count: usize,
) -> Result<ReadReply> {
    let reply: Value = READ_EVENTS
        .run(
            conn,
            &[keys.key("events")],
            &[after.to_owned(), count.to_string()],
        )
        .await?;
    let Value::Array(p) = reply else {
        return Err(Error::Reply("read_events did not answer an array".into()));
    };
    let num = |v: Option<&Value>| match v {
        Some(Value::Int(i)) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    };
    Ok(ReadReply {
        first: p.first().and_then(text).unwrap_or_default(),
        added: num(p.get(1)),
        length: num(p.get(2)),
        last_generated: p.get(3).and_then(text).unwrap_or_else(|| "0-0".into()),
        entries: p.get(4).map(parse_entries).transpose()?.unwrap_or_default(),
    })
}

/// Whether stream id `a` is after `b`.
fn id_after(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) > parse(b)
}

async fn newest_id(conn: &Connection, keys: &QueueKeys) -> Result<String> {
    let last: Vec<Entry> = conn
        .query(
            redis::cmd("XREVRANGE")
                .arg(keys.key("events"))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
    Ok(last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

async fn finished_from_hash(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
) -> Result<Option<Finished>> {
    let (completed, failed, rv, reason): (
        Option<f64>,
        Option<f64>,
        Option<String>,
        Option<String>,
    ) = conn
        .query_pipeline(
            redis::pipe()
                .atomic()
                .cmd("ZSCORE")
                .arg(keys.key("completed"))
                .arg(job_id)
                .cmd("ZSCORE")
                .arg(keys.key("failed"))
                .arg(job_id)
                .cmd("HGET")
                .arg(keys.job(job_id))
                .arg("returnvalue")
                .cmd("HGET")
                .arg(keys.job(job_id))
                .arg("failedReason"),
        )
        .await?;
    if completed.is_some() {
        let v = rv
            .as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.to_owned())))
            .unwrap_or(serde_json::Value::Null);
        return Ok(Some(Finished::Completed(v)));
    }
    if failed.is_some() {
        return Ok(Some(Finished::Failed(reason.unwrap_or_default())));
    }
    Ok(None)
}

/// Publishes custom events on a queue's stream, trimmed like BullMQ's
/// `QueueEventsProducer` (about 1,000 entries by default).
#[derive(Clone, Debug)]
pub struct QueueEventsProducer {
    conn: Connection,
    keys: QueueKeys,
    max_len: u64,
}

impl QueueEventsProducer {
    /// A publisher on `queue` sharing `conn`.
    pub fn new(conn: Connection, prefix: &str, queue: &str) -> Result<Self> {
        let keys = QueueKeys::new(prefix, queue)?;
        keys.check_cluster(conn.options())?;
        Ok(Self {
            conn,
            keys,
            max_len: DEFAULT_CUSTOM_MAX_LEN,
        })
    }

    /// Sets the approximate maximum length of the stream after a publish.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// Publishes event `name` with these fields; returns the stream id.
    pub async fn publish(&self, name: &str, fields: &[(&str, &str)]) -> Result<String> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.key("events"))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("event")
            .arg(name);
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        Ok(self.conn.query(&cmd).await?)
    }
}
