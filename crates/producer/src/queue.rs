//! The `Queue`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bullpen_conn::redis;
use bullpen_conn::Connection;
use bullpen_core::job::{CorruptJob, Job};
use bullpen_core::opts::{JobOptions, KeepJobs};
use bullpen_core::script::{
    ADD_JOB, CHANGE_DELAY, CHANGE_PRIORITY, CLEAN, DRAIN, JOB_STATE, MOVE_JOBS_TO_WAIT, OBLITERATE,
    PAUSE, PROMOTE, REMOVE_JOB, REPROCESS_JOB,
};
use bullpen_core::{job_ops, score, JobState, QueueKeys, RefusalCode, DEFAULT_PREFIX};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::instrument;

use crate::coalesce::{self, AddCoalescer};
use crate::error::{Error, Result};
use bullpen_core::coalesce::{Route, Waited};

/// Completed jobs a worker keeps by default (newest first): `removeOnComplete: 1000`.
pub const DEFAULT_KEEP_COMPLETED: u64 = 1_000;
/// Failed jobs a worker keeps by default: `removeOnFail: 10000`. Failures are kept longer
/// because they are what an operator looks at.
pub const DEFAULT_KEEP_FAILED: u64 = 10_000;
/// Approximate length of the events stream, as BullMQ's default `maxLenEvents`.
pub const DEFAULT_MAX_LEN_EVENTS: u64 = 10_000;
/// Largest job data accepted by default (512 KiB of JSON).
pub const DEFAULT_SIZE_LIMIT: u64 = 512 * 1024;

/// The value written to `meta.version`, so that `Queue.getVersion()` in Node names us.
const META_VERSION: &str = concat!("bullpen:", env!("CARGO_PKG_VERSION"));

/// Options of a [`Queue`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Key prefix (`bull` by default). Use a hash tag (`{bull}`) on Redis Cluster.
    pub prefix: String,
    /// `meta.opts.maxLenEvents` written when the queue is opened.
    pub max_len_events: u64,
    /// Largest serialised data accepted, in bytes.
    pub size_limit: u64,
    /// Options merged under every job's own: retention defaults live here.
    pub default_job_options: JobOptions,
}

impl Default for QueueOptions {
    fn default() -> Self {
        let mut defaults = JobOptions::default();
        defaults.remove_on_complete = Some(KeepJobs::Count(DEFAULT_KEEP_COMPLETED));
        defaults.remove_on_fail = Some(KeepJobs::Count(DEFAULT_KEEP_FAILED));
        Self {
            prefix: DEFAULT_PREFIX.into(),
            max_len_events: DEFAULT_MAX_LEN_EVENTS,
            size_limit: DEFAULT_SIZE_LIMIT,
            default_job_options: defaults,
        }
    }
}

impl QueueOptions {
    /// Sets the prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keeps every completed and failed job (no retention defaults).
    pub fn keep_everything(mut self) -> Self {
        self.default_job_options.remove_on_complete = None;
        self.default_job_options.remove_on_fail = None;
        self
    }
}

/// What happened to one added job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddStatus {
    /// A new job was stored.
    Added,
    /// A job with this custom id already existed; nothing changed (`duplicated` event).
    Duplicated,
    /// A job with the same deduplication id owns it; `id` is that job (`deduplicated` event).
    Deduplicated,
}

/// The result of an add.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddOutcome {
    /// The job id: the new job's, or the existing one's.
    pub id: String,
    /// What happened.
    pub status: AddStatus,
}

/// One job of [`Queue::add_bulk`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BulkJob<T> {
    /// Job name.
    pub name: String,
    /// Job data.
    pub data: T,
    /// Job options.
    pub opts: JobOptions,
}

impl<T> BulkJob<T> {
    /// A job for `add_bulk`.
    pub fn new(name: impl Into<String>, data: T, opts: JobOptions) -> Self {
        Self {
            name: name.into(),
            data,
            opts,
        }
    }
}

/// Job counts by state.
pub type JobCounts = BTreeMap<JobState, u64>;

/// A BullMQ queue, from the producer side.
#[derive(Clone, Debug)]
pub struct Queue {
    conn: Connection,
    keys: QueueKeys,
    opts: QueueOptions,
    coalescer: Arc<AddCoalescer>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Fields prepared for one job of the add script.
pub(crate) struct Prepared {
    args: [String; 11],
}

impl Prepared {
    /// Bytes of serialised data.
    pub(crate) fn data_len(&self) -> usize {
        self.args[2].len()
    }
}

fn merge_defaults(defaults: &JobOptions, mut opts: JobOptions) -> JobOptions {
    if opts.remove_on_complete.is_none() {
        opts.remove_on_complete = defaults.remove_on_complete.clone();
    }
    if opts.remove_on_fail.is_none() {
        opts.remove_on_fail = defaults.remove_on_fail.clone();
    }
    if opts.attempts.is_none() {
        opts.attempts = defaults.attempts;
    }
    if opts.backoff.is_none() {
        opts.backoff = defaults.backoff.clone();
    }
    if opts.stack_trace_limit.is_none() {
        opts.stack_trace_limit = defaults.stack_trace_limit;
    }
    if opts.keep_logs.is_none() {
        opts.keep_logs = defaults.keep_logs;
    }
    opts
}

impl Queue {
    /// Opens queue `name`: validates the names and writes `meta` (`opts.maxLenEvents` and
    /// `version`) as a Node `Queue` does. Share one producer-preset connection between queues.
    #[instrument(skip_all, fields(queue = %name))]
    pub async fn new(conn: Connection, name: &str, opts: QueueOptions) -> Result<Self> {
        let keys = QueueKeys::new(&opts.prefix, name)?;
        keys.check_cluster(conn.options())?;
        if opts.size_limit == 0 {
            return Err(bullpen_core::Error::Validation {
                field: "size_limit",
                reason: "must be greater than zero".into(),
            }
            .into());
        }
        opts.default_job_options.validate()?;
        let _: () = conn
            .query(
                redis::cmd("HSET")
                    .arg(keys.key("meta"))
                    .arg("opts.maxLenEvents")
                    .arg(opts.max_len_events)
                    .arg("version")
                    .arg(META_VERSION),
            )
            .await?;
        Ok(Self {
            conn,
            keys,
            opts,
            coalescer: coalesce::new_coalescer(),
        })
    }

    /// The queue's keys.
    pub fn keys(&self) -> &QueueKeys {
        &self.keys
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.keys.name()
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn prepare<T: Serialize>(
        &self,
        name: &str,
        data: &T,
        opts: JobOptions,
        now: u64,
    ) -> Result<Prepared> {
        let mut opts = merge_defaults(&self.opts.default_job_options, opts);
        opts.validate()?;
        if opts.parent.is_some() {
            return Err(Error::Unsupported {
                option: "parent",
                reason: "flows (parent/child jobs) are not supported by this version",
            });
        }
        let data = serde_json::to_string(data).map_err(|source| Error::Serialize {
            job_name: name.into(),
            source,
        })?;
        // A job may lower the queue's limit, never raise it.
        let limit = opts
            .size_limit
            .map_or(self.opts.size_limit, |l| l.min(self.opts.size_limit));
        let actual = data.len() as u64;
        if actual > limit {
            return Err(Error::PayloadTooLarge {
                job_name: name.into(),
                limit,
                actual,
            });
        }
        let timestamp = opts.timestamp_ms.unwrap_or(now);
        score::check_delay(timestamp, opts.delay_ms)?;
        // Node's Job constructor always stores `attempts` (0 = one attempt).
        if opts.attempts.is_none() {
            opts.attempts = Some(0);
        }
        let stored = serde_json::Value::Object(opts.to_stored()).to_string();
        let (dedup_id, dedup_ttl, flags) = match &opts.deduplication {
            Some(d) => (
                d.id.clone(),
                d.ttl_ms.map(|t| t.to_string()).unwrap_or_default(),
                [d.extend, d.replace, d.reschedule, d.keep_last_if_active]
                    .iter()
                    .map(|b| if *b { '1' } else { '0' })
                    .collect::<String>(),
            ),
            None => (String::new(), String::new(), "0000".to_owned()),
        };
        Ok(Prepared {
            args: [
                opts.job_id.clone().unwrap_or_default(),
                name.to_owned(),
                data,
                stored,
                timestamp.to_string(),
                opts.delay_ms.to_string(),
                opts.priority.to_string(),
                if opts.lifo { "1" } else { "0" }.to_owned(),
                dedup_id,
                dedup_ttl,
                flags,
            ],
        })
    }

    fn add_keys(&self) -> Vec<String> {
        [
            "wait",
            "meta",
            "id",
            "delayed",
            "prioritized",
            "pc",
            "marker",
            "events",
            "active",
        ]
        .iter()
        .map(|s| self.keys.key(s))
        .collect()
    }

    pub(crate) async fn run_add(&self, prepared: Vec<Prepared>) -> Result<Vec<AddOutcome>> {
        let n = prepared.len();
        let mut args: Vec<String> = Vec::with_capacity(3 + n * 11);
        args.push(self.keys.base().to_owned());
        args.push(self.opts.max_len_events.to_string());
        args.push(n.to_string());
        for p in prepared {
            args.extend(p.args);
        }
        // An add must not run twice: after a reply lost to a broken connection the outcome is
        // reported as unknown rather than the add sent again (which, with an automatic id,
        // would store a second job).
        let reply: Vec<String> = ADD_JOB
            .run_at_most_once(&self.conn, &self.add_keys(), &args)
            .await?;
        if reply.len() != n * 2 {
            return Err(bullpen_core::Error::ScriptReply {
                script: ADD_JOB.name(),
                reason: format!("expected {} entries, got {}", n * 2, reply.len()),
            }
            .into());
        }
        reply
            .chunks(2)
            .map(|pair| {
                let status = match pair[1].as_str() {
                    "added" => AddStatus::Added,
                    "duplicated" => AddStatus::Duplicated,
                    "deduplicated" => AddStatus::Deduplicated,
                    other => {
                        return Err(bullpen_core::Error::ScriptReply {
                            script: ADD_JOB.name(),
                            reason: format!("unknown status `{other}`"),
                        }
                        .into())
                    }
                };
                Ok(AddOutcome {
                    id: pair[0].clone(),
                    status,
                })
            })
            .collect()
    }

    /// Adds one job: standard, LIFO, delayed or prioritized as its options say. A custom job
    /// id that already exists adds nothing and returns the existing id with
    /// [`AddStatus::Duplicated`]; a deduplication hit returns the owner's id with
    /// [`AddStatus::Deduplicated`]. Invalid input is refused before anything is written.
    ///
    /// Adds made concurrently on one queue (from clones of it, or from many tasks) share
    /// script calls when they would otherwise queue behind each other: each keeps its own
    /// options, events and outcome, and a lone add goes out at once. See the crate docs.
    #[instrument(skip_all, fields(queue = %self.keys.name(), job.name = %name))]
    pub async fn add<T: Serialize>(
        &self,
        name: &str,
        data: &T,
        opts: JobOptions,
    ) -> Result<AddOutcome> {
        let called = Instant::now();
        let now = now_ms();
        let p = self.prepare(name, data, opts, now)?;
        let weight = p.data_len();
        match self.coalescer.route(p, weight, &coalesce::runner(self)) {
            Route::Now(slot, p) => {
                let out = self.run_add(vec![p]).await;
                drop(slot);
                out?.pop().ok_or_else(|| {
                    bullpen_core::Error::ScriptReply {
                        script: ADD_JOB.name(),
                        reason: "empty reply".into(),
                    }
                    .into()
                })
            }
            Route::Later(waiter) => {
                let budget = self.conn.options().request_deadline;
                let waited = match budget {
                    Some(d) => waiter.wait_until((called + d).into()).await,
                    None => waiter.wait().await.map_or(Waited::Abandoned, Waited::Done),
                };
                let source = match waited {
                    Waited::Done(out) => return out,
                    // Never sent: definitely not applied.
                    Waited::NotSent => bullpen_conn::Error::Unavailable {
                        target: self.conn.options().redacted_target(),
                        waited: budget.unwrap_or_default(),
                        last_error: None,
                    },
                    Waited::SentNoAnswer => bullpen_conn::Error::CommandTimeout {
                        command: "EVALSHA".into(),
                        after: budget.unwrap_or_default(),
                    },
                    Waited::Abandoned => {
                        return Err(bullpen_core::Error::ScriptReply {
                            script: ADD_JOB.name(),
                            reason: "the shared add call was abandoned (its runtime shut down); the job may or may not have been added".into(),
                        }
                        .into())
                    }
                };
                Err(bullpen_core::Error::Redis {
                    script: ADD_JOB.name(),
                    source,
                }
                .into())
            }
        }
    }

    /// Adds many jobs in one script call: all of them or none (atomic per call), in one round
    /// trip. Every job is validated before anything is sent.
    #[instrument(skip_all, fields(queue = %self.keys.name(), jobs = jobs.len()))]
    pub async fn add_bulk<T: Serialize>(&self, jobs: &[BulkJob<T>]) -> Result<Vec<AddOutcome>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let prepared = jobs
            .iter()
            .map(|j| self.prepare(&j.name, &j.data, j.opts.clone(), now))
            .collect::<Result<Vec<_>>>()?;
        self.run_add(prepared).await
    }

    /// Reads job `id` with its data as JSON; `None` if it does not exist. A job hash written
    /// by someone else with broken JSON is an error naming the job, never a panic.
    pub async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        self.get_job_as(id).await
    }

    /// Reads job `id` with its data decoded as `T`.
    pub async fn get_job_as<T: DeserializeOwned>(&self, id: &str) -> Result<Option<Job<T>>> {
        let fields: HashMap<String, String> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.keys.job(id)))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(Job::from_hash(id, &fields)?))
    }

    /// Ids in `state`, in BullMQ's order: newest first by default, oldest first with `asc`.
    /// `start`/`end` are inclusive ranks as in `LRANGE`/`ZRANGE` (`-1` = the last).
    pub async fn get_job_ids(
        &self,
        state: JobState,
        start: i64,
        end: i64,
        asc: bool,
    ) -> Result<Vec<String>> {
        let key = self.keys.key(state.key_suffix());
        let ids: Vec<String> = if state.is_list() {
            if asc {
                // Lists grow on the left: the oldest job is the rightmost.
                let mut ids: Vec<String> = self
                    .conn
                    .query(
                        redis::cmd("LRANGE")
                            .arg(&key)
                            .arg(-(end + 1))
                            .arg(-(start + 1)),
                    )
                    .await?;
                ids.reverse();
                ids
            } else {
                self.conn
                    .query(redis::cmd("LRANGE").arg(&key).arg(start).arg(end))
                    .await?
            }
        } else {
            let cmd = if asc { "ZRANGE" } else { "ZREVRANGE" };
            self.conn
                .query(redis::cmd(cmd).arg(&key).arg(start).arg(end))
                .await?
        };
        Ok(ids)
    }

    /// Jobs in the given states (in the order given), each state ranged as in
    /// [`Queue::get_job_ids`]. A job hash that cannot be decoded (written by someone else
    /// with broken JSON) comes back as its own `Err(CorruptJob)` entry naming the job, so one
    /// bad job never hides the others. Jobs that vanish between the two reads are skipped.
    pub async fn get_jobs(
        &self,
        states: &[JobState],
        start: i64,
        end: i64,
        asc: bool,
    ) -> Result<Vec<std::result::Result<Job, CorruptJob>>> {
        let mut out = Vec::new();
        for state in states {
            for id in self.get_job_ids(*state, start, end, asc).await? {
                let fields: HashMap<String, String> = self
                    .conn
                    .query(redis::cmd("HGETALL").arg(self.keys.job(&id)))
                    .await?;
                if !fields.is_empty() {
                    out.push(Job::from_hash(&id, &fields));
                }
            }
        }
        Ok(out)
    }

    /// Counts of every state, read in one pipeline (as Node's `getJobCounts`, plus `paused`,
    /// which is always 0 for v6 data).
    pub async fn get_job_counts(&self) -> Result<JobCounts> {
        let mut pipe = redis::pipe();
        for s in JobState::ALL {
            let key = self.keys.key(s.key_suffix());
            if s.is_list() {
                pipe.cmd("LLEN").arg(key);
            } else {
                pipe.cmd("ZCARD").arg(key);
            }
        }
        let counts: Vec<u64> = self.conn.query_pipeline(&pipe).await?;
        Ok(JobState::ALL.into_iter().zip(counts).collect())
    }

    /// The state of job `id`, or `None` if it is in none.
    pub async fn get_job_state(&self, id: &str) -> Result<Option<JobState>> {
        let keys: Vec<String> = [
            "completed",
            "failed",
            "delayed",
            "prioritized",
            "active",
            "wait",
            "paused",
            "waiting-children",
        ]
        .iter()
        .map(|s| self.keys.key(s))
        .collect();
        let state: String = JOB_STATE.run(&self.conn, &keys, &[id]).await?;
        Ok(JobState::parse(&state))
    }

    /// Whether the queue is paused (`meta.paused` exists).
    pub async fn is_paused(&self) -> Result<bool> {
        let paused: bool = self
            .conn
            .query(
                redis::cmd("HEXISTS")
                    .arg(self.keys.key("meta"))
                    .arg("paused"),
            )
            .await?;
        Ok(paused)
    }

    async fn pause_or_resume(&self, what: &str) -> Result<()> {
        let keys: Vec<String> = [
            "meta",
            "marker",
            "events",
            "wait",
            "prioritized",
            "delayed",
            "paused",
        ]
        .iter()
        .map(|s| self.keys.key(s))
        .collect();
        let _: i64 = PAUSE.run(&self.conn, &keys, &[what]).await?;
        Ok(())
    }

    /// Pauses the queue: workers stop taking jobs; adds still land in `wait`.
    #[instrument(skip_all, fields(queue = %self.keys.name()))]
    pub async fn pause(&self) -> Result<()> {
        self.pause_or_resume("paused").await
    }

    /// Resumes the queue and wakes blocked workers.
    #[instrument(skip_all, fields(queue = %self.keys.name()))]
    pub async fn resume(&self) -> Result<()> {
        self.pause_or_resume("resumed").await
    }

    /// Removes job `id` from whatever state holds it, with its logs. Refused with
    /// [`Error::JobLocked`] while a worker holds the job's lock.
    #[instrument(skip_all, fields(queue = %self.keys.name(), job.id = %id))]
    pub async fn remove(&self, id: &str) -> Result<()> {
        let mut keys = vec![
            self.keys.job(id),
            self.keys.job_sub(id, "lock"),
            self.keys.key("events"),
            self.keys.key("meta"),
        ];
        for s in [
            "completed",
            "waiting-children",
            "delayed",
            "failed",
            "prioritized",
            "wait",
            "paused",
            "active",
        ] {
            keys.push(self.keys.key(s));
        }
        let args = [
            id.to_owned(),
            self.keys.base().to_owned(),
            self.opts.max_len_events.to_string(),
        ];
        let r: i64 = REMOVE_JOB.run(&self.conn, &keys, &args).await?;
        match r {
            1 => Ok(()),
            0 => Err(Error::JobLocked { job_id: id.into() }),
            _ => Err(self.not_found(id)),
        }
    }

    fn not_found(&self, id: &str) -> Error {
        Error::JobNotFound {
            queue: self.keys.name().into(),
            job_id: id.into(),
        }
    }

    fn refused(&self, script: &'static str, id: &str, code: i64) -> Error {
        if code == -1 {
            return self.not_found(id);
        }
        bullpen_core::Error::Refused {
            script,
            job_id: id.into(),
            code: RefusalCode::from_code(code),
        }
        .into()
    }

    /// Replaces job `id`'s data (no event, as in BullMQ).
    pub async fn update_data<T: Serialize>(&self, id: &str, data: &T) -> Result<()> {
        let json = self.to_json(id, data)?;
        job_ops::update_data(&self.conn, &self.keys, id, &json)
            .await
            .map_err(|e| self.map_refusal(e, id))
    }

    /// Stores job `id`'s progress (any JSON: a number or an object) and emits `progress`.
    pub async fn update_progress<T: Serialize>(&self, id: &str, progress: &T) -> Result<()> {
        let json = self.to_json(id, progress)?;
        job_ops::update_progress(&self.conn, &self.keys, id, &json, self.opts.max_len_events)
            .await
            .map_err(|e| self.map_refusal(e, id))
    }

    /// Appends a log line to job `id`, honouring its `keepLogs` option. Returns the number
    /// of lines kept.
    pub async fn log(&self, id: &str, line: &str) -> Result<u64> {
        let keep_logs = match self.get_job(id).await? {
            Some(job) => job.opts.keep_logs,
            None => return Err(self.not_found(id)),
        };
        job_ops::add_log(&self.conn, &self.keys, id, line, keep_logs)
            .await
            .map_err(|e| self.map_refusal(e, id))
    }

    fn to_json<T: Serialize>(&self, id: &str, value: &T) -> Result<String> {
        serde_json::to_string(value).map_err(|source| Error::Serialize {
            job_name: id.into(),
            source,
        })
    }

    /// A missing job is `JobNotFound`; other refusals stay as they are.
    fn map_refusal(&self, e: bullpen_core::Error, id: &str) -> Error {
        match e {
            bullpen_core::Error::Refused {
                code: RefusalCode::JobNotExist,
                ..
            } => self.not_found(id),
            e => e.into(),
        }
    }

    /// Log lines of job `id` in `start..=end` (oldest first, or newest first with
    /// `asc = false`), and the total number of lines.
    pub async fn get_job_logs(
        &self,
        id: &str,
        start: i64,
        end: i64,
        asc: bool,
    ) -> Result<(Vec<String>, u64)> {
        let key = self.keys.job_sub(id, "logs");
        let mut pipe = redis::pipe();
        pipe.atomic();
        if asc {
            pipe.cmd("LRANGE").arg(&key).arg(start).arg(end);
        } else {
            pipe.cmd("LRANGE")
                .arg(&key)
                .arg(-(end + 1))
                .arg(-(start + 1));
        }
        pipe.cmd("LLEN").arg(&key);
        let (mut lines, total): (Vec<String>, u64) = self.conn.query_pipeline(&pipe).await?;
        if !asc {
            lines.reverse();
        }
        Ok((lines, total))
    }

    /// Waiting jobs per priority: priority 0 counts `wait`, others count their band of
    /// `prioritized`.
    pub async fn get_counts_per_priority(&self, priorities: &[u32]) -> Result<BTreeMap<u32, u64>> {
        let mut pipe = redis::pipe();
        for p in priorities {
            if *p == 0 {
                pipe.cmd("LLEN").arg(self.keys.key("wait"));
            } else {
                let low = u64::from(*p) << 32;
                pipe.cmd("ZCOUNT")
                    .arg(self.keys.key("prioritized"))
                    .arg(low)
                    .arg(low + (1 << 32) - 1);
            }
        }
        let counts: Vec<u64> = self.conn.query_pipeline(&pipe).await?;
        Ok(priorities.iter().copied().zip(counts).collect())
    }

    /// Trims the events stream to about `max_len` entries (`XTRIM MAXLEN ~`).
    pub async fn trim_events(&self, max_len: u64) -> Result<u64> {
        let removed: u64 = self
            .conn
            .query(
                redis::cmd("XTRIM")
                    .arg(self.keys.key("events"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len),
            )
            .await?;
        Ok(removed)
    }

    /// Sets `meta.opts.maxLenEvents`, which every script uses to trim the stream.
    pub async fn set_max_len_events(&self, max_len: u64) -> Result<()> {
        let _: () = self
            .conn
            .query(
                redis::cmd("HSET")
                    .arg(self.keys.key("meta"))
                    .arg("opts.maxLenEvents")
                    .arg(max_len),
            )
            .await?;
        Ok(())
    }

    fn keys_of(&self, suffixes: &[&str]) -> Vec<String> {
        suffixes.iter().map(|s| self.keys.key(s)).collect()
    }

    /// Deletes every waiting job (wait and prioritized, and delayed ones when
    /// `include_delayed`), except job-scheduler iterations. Returns how many were deleted.
    #[instrument(skip_all, fields(queue = %self.keys.name()))]
    pub async fn drain(&self, include_delayed: bool) -> Result<u64> {
        let keys = self.keys_of(&["wait", "paused", "prioritized", "delayed", "repeat", "pc"]);
        let args = [self.keys.base(), if include_delayed { "1" } else { "0" }];
        Ok(DRAIN.run(&self.conn, &keys, &args).await?)
    }

    /// Deletes up to `limit` jobs (0 = all) of `state` older than `grace`, and emits one
    /// `cleaned` event. Returns the ids deleted. Active jobs held by a worker are kept.
    #[instrument(skip_all, fields(queue = %self.keys.name(), state = %state))]
    pub async fn clean(
        &self,
        grace: std::time::Duration,
        limit: u64,
        state: JobState,
    ) -> Result<Vec<String>> {
        if matches!(state, JobState::WaitingChildren) {
            return Err(Error::Unsupported {
                option: "state",
                reason:
                    "cleaning waiting-children needs flows, which this version does not support",
            });
        }
        let cutoff = now_ms().saturating_sub(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let keys = vec![
            self.keys.key(state.key_suffix()),
            self.keys.key("events"),
            self.keys.key("repeat"),
        ];
        let args = [
            self.keys.base().to_owned(),
            cutoff.to_string(),
            limit.to_string(),
            state.key_suffix().to_owned(),
        ];
        Ok(CLEAN.run(&self.conn, &keys, &args).await?)
    }

    /// Deletes the queue and all its jobs. Pauses it first; refuses with
    /// [`Error::ActiveJobs`] while jobs are active unless `force`.
    #[instrument(skip_all, fields(queue = %self.keys.name()))]
    pub async fn obliterate(&self, force: bool) -> Result<()> {
        if !force {
            let active: u64 = self
                .conn
                .query(redis::cmd("LLEN").arg(self.keys.key("active")))
                .await?;
            if active > 0 {
                return Err(Error::ActiveJobs {
                    queue: self.keys.name().into(),
                });
            }
        }
        self.pause().await?;
        let keys = self.keys_of(&[
            "meta",
            "active",
            "wait",
            "paused",
            "prioritized",
            "delayed",
            "completed",
            "failed",
            "waiting-children",
            "repeat",
        ]);
        let args = [self.keys.base(), "1000", if force { "force" } else { "" }];
        loop {
            let r: i64 = OBLITERATE.run(&self.conn, &keys, &args).await?;
            match r {
                0 => return Ok(()),
                1 => continue,
                -2 => {
                    return Err(Error::ActiveJobs {
                        queue: self.keys.name().into(),
                    })
                }
                // -1: someone resumed the queue meanwhile; pause again.
                _ => self.pause().await?,
            }
        }
    }

    async fn move_to_wait(&self, state: JobState, max_score: &str) -> Result<u64> {
        let keys = vec![
            self.keys.key(state.key_suffix()),
            self.keys.key("wait"),
            self.keys.key("events"),
            self.keys.key("meta"),
            self.keys.key("active"),
            self.keys.key("marker"),
            self.keys.key("pc"),
        ];
        let args = [
            self.keys.base().to_owned(),
            "1000".to_owned(),
            max_score.to_owned(),
            state.key_suffix().to_owned(),
            self.opts.max_len_events.to_string(),
        ];
        let mut rounds = 0;
        loop {
            rounds += 1;
            let more: i64 = MOVE_JOBS_TO_WAIT.run(&self.conn, &keys, &args).await?;
            if more == 0 {
                return Ok(rounds);
            }
        }
    }

    /// Moves failed or completed jobs that finished before `finished_before_ms` (default: now)
    /// back to wait, in batches of 1,000 (Node's `Queue.retryJobs`).
    #[instrument(skip_all, fields(queue = %self.keys.name(), state = %state))]
    pub async fn retry_jobs(&self, state: JobState, finished_before_ms: Option<u64>) -> Result<()> {
        if !matches!(state, JobState::Failed | JobState::Completed) {
            return Err(Error::WrongState {
                job_id: "*".into(),
                state: state.as_str().into(),
                operation: "retry_jobs",
                expected: "failed or completed",
            });
        }
        let max = finished_before_ms.unwrap_or_else(now_ms).to_string();
        self.move_to_wait(state, &max).await.map(|_| ())
    }

    /// Moves every delayed job to wait now (Node's `Queue.promoteJobs`).
    #[instrument(skip_all, fields(queue = %self.keys.name()))]
    pub async fn promote_jobs(&self) -> Result<()> {
        self.move_to_wait(JobState::Delayed, "+inf")
            .await
            .map(|_| ())
    }

    /// Changes job `id`'s priority (0 = none); a waiting job moves to its new place.
    pub async fn change_priority(&self, id: &str, priority: u32, lifo: bool) -> Result<()> {
        if priority > bullpen_core::opts::MAX_PRIORITY {
            return Err(bullpen_core::Error::Validation {
                field: "priority",
                reason: format!("{priority} is above {}", bullpen_core::opts::MAX_PRIORITY),
            }
            .into());
        }
        let mut keys = vec![self.keys.job(id)];
        keys.extend(self.keys_of(&["wait", "meta", "prioritized", "active", "pc", "marker"]));
        let args = [
            id.to_owned(),
            priority.to_string(),
            if lifo { "1" } else { "0" }.to_owned(),
        ];
        let r: i64 = CHANGE_PRIORITY.run(&self.conn, &keys, &args).await?;
        if r < 0 {
            return Err(self.refused(CHANGE_PRIORITY.name(), id, r));
        }
        Ok(())
    }

    /// Gives delayed job `id` a new delay counted from now.
    pub async fn change_delay(&self, id: &str, delay: std::time::Duration) -> Result<()> {
        let now = now_ms();
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        score::check_delay(now, delay_ms)?;
        let mut keys = vec![self.keys.job(id)];
        keys.extend(self.keys_of(&["delayed", "meta", "marker", "events"]));
        let args = [
            id.to_owned(),
            delay_ms.to_string(),
            now.to_string(),
            self.opts.max_len_events.to_string(),
        ];
        let r: i64 = CHANGE_DELAY.run(&self.conn, &keys, &args).await?;
        if r == -3 {
            return Err(self.wrong_state(id, "change_delay", "delayed").await);
        }
        if r < 0 {
            return Err(self.refused(CHANGE_DELAY.name(), id, r));
        }
        Ok(())
    }

    /// Runs delayed job `id` now.
    pub async fn promote(&self, id: &str) -> Result<()> {
        let mut keys = vec![self.keys.job(id)];
        keys.extend(self.keys_of(&[
            "delayed",
            "wait",
            "meta",
            "prioritized",
            "active",
            "pc",
            "events",
            "marker",
        ]));
        let r: i64 = PROMOTE.run(&self.conn, &keys, &[id]).await?;
        if r == -3 {
            return Err(self.wrong_state(id, "promote", "delayed").await);
        }
        if r < 0 {
            return Err(self.refused(PROMOTE.name(), id, r));
        }
        Ok(())
    }

    /// Retries finished job `id` (completed or failed): back to wait, or to prioritized if it
    /// has a priority. Attempt counters are kept unless `reset_attempts`.
    pub async fn retry(&self, id: &str, reset_attempts: bool) -> Result<()> {
        let state = match self.get_job_state(id).await? {
            Some(s @ (JobState::Completed | JobState::Failed)) => s,
            _ => return Err(self.wrong_state(id, "retry", "completed or failed").await),
        };
        let lifo = self.get_job(id).await?.is_some_and(|j| j.opts.lifo);
        let keys = vec![
            self.keys.job(id),
            self.keys.key("events"),
            self.keys.key(state.key_suffix()),
            self.keys.key("wait"),
            self.keys.key("meta"),
            self.keys.key("active"),
            self.keys.key("marker"),
            self.keys.key("prioritized"),
            self.keys.key("pc"),
        ];
        let reset = if reset_attempts { "1" } else { "0" };
        let args = [
            id.to_owned(),
            if lifo { "1" } else { "0" }.to_owned(),
            state.key_suffix().to_owned(),
            reset.to_owned(),
            reset.to_owned(),
            self.opts.max_len_events.to_string(),
        ];
        let r: i64 = REPROCESS_JOB.run(&self.conn, &keys, &args).await?;
        if r == -3 {
            return Err(self.wrong_state(id, "retry", "completed or failed").await);
        }
        if r < 0 {
            return Err(self.refused(REPROCESS_JOB.name(), id, r));
        }
        Ok(())
    }

    async fn wrong_state(
        &self,
        id: &str,
        operation: &'static str,
        expected: &'static str,
    ) -> Error {
        match self.get_job_state(id).await {
            Ok(Some(s)) => Error::WrongState {
                job_id: id.into(),
                state: s.as_str().into(),
                operation,
                expected,
            },
            Ok(None) => match self.get_job(id).await {
                Ok(None) => self.not_found(id),
                _ => Error::WrongState {
                    job_id: id.into(),
                    state: "unknown".into(),
                    operation,
                    expected,
                },
            },
            Err(e) => e,
        }
    }

    /// The `meta` hash as Node's `getMeta()` sees it.
    pub async fn get_meta(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .conn
            .query(redis::cmd("HGETALL").arg(self.keys.key("meta")))
            .await?)
    }
}
