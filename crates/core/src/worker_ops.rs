//! What a worker does to jobs, one Lua script per transition: fetch (`move_to_active`),
//! finish (`move_to_finished`), retry (`retry_job`), hand back (`move_to_wait_front`), lock
//! renewal (`extend_locks`) and the shared stall check (`move_stalled_jobs_to_wait`).
//!
//! Every script checks the job, its lock token and its state before it writes anything, so
//! a refusal ([`Error::Refused`]) leaves Redis untouched. The behaviour mirrors BullMQ 6.x
//! (protocol §6, §7.5–§7.11, §7.27), so Node workers and ours can share a queue.

use std::collections::HashMap;

use bullpen_conn::redis::Value;
use bullpen_conn::Connection;
use tracing::instrument;

use crate::error::{Error, RefusalCode};
use crate::script::{
    Script, COMPLETE_MANY, EXTEND_LOCKS, MOVE_STALLED_JOBS_TO_WAIT, MOVE_TO_ACTIVE,
    MOVE_TO_FINISHED, MOVE_TO_WAIT_FRONT, RETRY_JOB,
};
use crate::{score, QueueKeys, Result};

/// `meta.opts.maxLenEvents` assumed when the queue's meta has none, as BullMQ's default.
pub const DEFAULT_MAX_LEN_EVENTS: u64 = 10_000;

/// Finished jobs removed per retention pass by age when no limit is given, as BullMQ.
pub const DEFAULT_KEEP_LIMIT: u64 = 1_000;

/// How a worker fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Lock time to live of each fetched job, in milliseconds (> 0).
    pub lock_duration_ms: u64,
    /// Worker rate limiter `(max, duration_ms)`; `meta.max`/`meta.duration` rules of §11.3 apply.
    pub limiter: Option<(u64, u64)>,
    /// Written to `pb` on activation when set.
    pub worker_name: Option<String>,
}

impl FetchOptions {
    /// Options with this lock duration, no limiter and no worker name.
    pub fn new(lock_duration_ms: u64) -> Self {
        Self {
            lock_duration_ms,
            limiter: None,
            worker_name: None,
        }
    }

    /// Sets the worker rate limiter: at most `max` activations per `duration_ms`.
    pub fn with_limiter(mut self, max: u64, duration_ms: u64) -> Self {
        self.limiter = Some((max, duration_ms));
        self
    }

    /// Sets the worker name written to `pb`.
    pub fn with_worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker_name = Some(name.into());
        self
    }

    fn validate(&self) -> Result<()> {
        if self.lock_duration_ms == 0 {
            return Err(Error::Validation {
                field: "lock_duration_ms",
                reason: "must be greater than 0".into(),
            });
        }
        if let Some((max, duration)) = self.limiter {
            if max == 0 || duration == 0 {
                return Err(Error::Validation {
                    field: "limiter",
                    reason: format!("max {max} and duration {duration} ms must both be > 0"),
                });
            }
        }
        Ok(())
    }

    /// The fetch arguments shared by `move_to_active` and `move_to_finished`.
    fn push_args(&self, args: &mut Vec<String>, now_ms: u64, tokens: &[String]) {
        args.push(now_ms.to_string());
        args.push(self.lock_duration_ms.to_string());
        match self.limiter {
            Some((max, duration)) => {
                args.push(max.to_string());
                args.push(duration.to_string());
            }
            None => {
                args.push(String::new());
                args.push(String::new());
            }
        }
        args.push(self.worker_name.clone().unwrap_or_default());
        args.extend(tokens.iter().cloned());
    }
}

/// One job for [`complete_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The job id.
    pub job_id: String,
    /// The run's lock token.
    pub token: String,
    /// The return value as JSON text.
    pub return_value_json: String,
    /// The job's retention.
    pub keep: KeepJobs,
    /// The job's `atm` as fetched (it cannot change while the run holds the lock).
    pub attempts_made: u32,
    /// The job's `deid` as fetched, if any.
    pub dedup_id: Option<String>,
}

/// What [`complete_many`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompletedMany {
    /// Per job, in the order given: `Ok(())` when completed, else why it was refused (the
    /// job was left untouched).
    pub outcomes: Vec<std::result::Result<(), RefusalCode>>,
    /// The jobs fetched next (empty when no fetch was asked).
    pub fetched: Fetched,
}

/// One activated job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveJob {
    /// The job id.
    pub id: String,
    /// The lock token it was activated with.
    pub token: String,
    /// The job hash after activation (`HGETALL`).
    pub fields: HashMap<String, String>,
}

/// What a fetch returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fetched {
    /// The activated jobs, in activation order.
    pub jobs: Vec<ActiveJob>,
    /// > 0 when rate limited: milliseconds until the limiter's window ends.
    pub rate_limit_ttl_ms: u64,
    /// When nothing is ready but delayed jobs exist: the earliest due time (ms since epoch).
    pub next_due_ms: Option<u64>,
    /// True when the queue is paused or at its global concurrency (nothing fetched for that reason).
    pub paused_or_maxed: bool,
}

impl Fetched {
    /// Whether the fetch answered nothing at all: no job, no rate limit, no pause, no delayed job.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.rate_limit_ttl_ms == 0
            && self.next_due_ms.is_none()
            && !self.paused_or_maxed
    }
}

/// Retention as sent to the finish script (§7.6 mapping): count -1 keep all, 0 delete at once, n keep newest n; age in seconds; limit per call (default 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepJobs {
    /// -1 keeps every finished job, 0 deletes the job at once, `n > 0` keeps the newest `n`.
    pub count: i64,
    /// Finished jobs older than this many seconds are deleted.
    pub age_secs: Option<u64>,
    /// At most this many jobs deleted by age per call (default [`DEFAULT_KEEP_LIMIT`]).
    pub limit: Option<u64>,
}

impl KeepJobs {
    /// Keep every finished job (`removeOnX: false`, or nothing set).
    pub const KEEP_ALL: KeepJobs = KeepJobs {
        count: -1,
        age_secs: None,
        limit: None,
    };

    /// Delete the job as soon as it finishes (`removeOnX: true`).
    pub const REMOVE_AT_ONCE: KeepJobs = KeepJobs {
        count: 0,
        age_secs: None,
        limit: None,
    };

    /// Keep the newest `n` finished jobs.
    pub fn newest(n: u64) -> Self {
        KeepJobs {
            count: i64::try_from(n).unwrap_or(i64::MAX),
            age_secs: None,
            limit: None,
        }
    }
}

impl From<&crate::opts::KeepJobs> for KeepJobs {
    /// Node's mapping of `removeOnComplete`/`removeOnFail` to what the finish script gets.
    fn from(k: &crate::opts::KeepJobs) -> Self {
        use crate::opts::KeepJobs as Opt;
        match k {
            Opt::All => KeepJobs::REMOVE_AT_ONCE,
            Opt::None => KeepJobs::KEEP_ALL,
            Opt::Count(n) => KeepJobs::newest(*n),
            Opt::Window {
                age_secs,
                count,
                limit,
            } => KeepJobs {
                count: count.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                age_secs: *age_secs,
                limit: *limit,
            },
        }
    }
}

/// How a job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// `return_value_json` must be valid JSON text (Node QueueEvents parses it).
    Completed {
        /// The processor's result as JSON text (`null` for none).
        return_value_json: String,
    },
    /// Final failure. `stacktrace_json` is the full JSON array text to store; `attempts` is the job's `opts.attempts` (for `retries-exhausted`).
    Failed {
        /// The error message (plain text).
        reason: String,
        /// The whole `stacktrace` field: a JSON array of strings.
        stacktrace_json: String,
        /// The job's `opts.attempts` (0 when absent).
        attempts: u32,
    },
}

fn refused(script: &Script, job_id: &str, code: i64) -> Error {
    Error::Refused {
        script: script.name(),
        job_id: job_id.into(),
        code: RefusalCode::from_code(code),
    }
}

fn bad_reply(script: &Script, reason: impl Into<String>) -> Error {
    Error::ScriptReply {
        script: script.name(),
        reason: reason.into(),
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// What a fetch was asked with: the tokens (the i-th activated job holds the i-th), the
/// time and the worker name, from which the activation's own writes are known.
#[derive(Clone, Copy)]
struct FetchAsked<'a> {
    tokens: &'a [String],
    now_ms: u64,
    worker_name: Option<&'a str>,
}

/// Reads the flat fetch reply `ttl, nextDelayedScore, pausedOrMaxed, (id, n, k1, v1, ...)...`.
/// The fields are the job hash as read before activation; the activation's writes
/// (`processedOn`, `pb` when named, `ats` + 1) are applied here as the script applied them
/// to the hash, so each job's fields are its hash after activation.
fn parse_fetched(script: &Script, items: &[Value], asked: FetchAsked<'_>) -> Result<Fetched> {
    if items.len() < 3 {
        return Err(bad_reply(
            script,
            format!("expected at least 3 entries, got {}", items.len()),
        ));
    }
    let ttl = as_int(&items[0]).ok_or_else(|| bad_reply(script, "rate limit ttl"))?;
    let next = as_text(&items[1]).ok_or_else(|| bad_reply(script, "next delayed score"))?;
    let next_due_ms = if next.is_empty() {
        None
    } else {
        let s: f64 = next
            .parse()
            .map_err(|_| bad_reply(script, format!("delayed score `{next}`")))?;
        Some(score::due_of_delayed(s))
    };
    let paused = as_int(&items[2]).ok_or_else(|| bad_reply(script, "paused flag"))?;
    let mut jobs = Vec::new();
    let mut rest = &items[3..];
    while let [id, count, tail @ ..] = rest {
        let id = as_text(id).ok_or_else(|| bad_reply(script, "job id"))?;
        let count = as_int(count)
            .and_then(|c| usize::try_from(c).ok())
            .filter(|c| c % 2 == 0 && *c <= tail.len())
            .ok_or_else(|| bad_reply(script, format!("field count of job {id}")))?;
        let token = asked
            .tokens
            .get(jobs.len())
            .ok_or_else(|| bad_reply(script, "more jobs than tokens"))?
            .clone();
        let mut fields = HashMap::with_capacity(count / 2 + 3);
        for pair in tail[..count].chunks_exact(2) {
            let k = as_text(&pair[0]).ok_or_else(|| bad_reply(script, "field name"))?;
            let v = as_text(&pair[1]).ok_or_else(|| bad_reply(script, "field value"))?;
            fields.insert(k, v);
        }
        apply_activation(&mut fields, asked);
        jobs.push(ActiveJob { id, token, fields });
        rest = &tail[count..];
    }
    if !rest.is_empty() {
        return Err(bad_reply(script, "a job entry is cut short"));
    }
    Ok(Fetched {
        jobs,
        rate_limit_ttl_ms: u64::try_from(ttl).unwrap_or(0),
        next_due_ms,
        paused_or_maxed: paused != 0,
    })
}

/// The activation's writes, as `bp_activate_fields` makes them: `processedOn` = now, `pb` =
/// the worker name when there is one, `ats` = the stored number + 1 (1 when absent or not a
/// number; Lua's `tostring` of a whole number has no fraction).
fn apply_activation(fields: &mut HashMap<String, String>, asked: FetchAsked<'_>) {
    let ats = match fields.get("ats").and_then(|t| t.trim().parse::<f64>().ok()) {
        Some(n) if n.is_finite() => {
            let next = n + 1.0;
            if next.fract() == 0.0 && next.abs() < 1e15 {
                format!("{}", next as i64)
            } else {
                next.to_string()
            }
        }
        _ => "1".to_owned(),
    };
    fields.insert("ats".to_owned(), ats);
    fields.insert("processedOn".to_owned(), asked.now_ms.to_string());
    if let Some(name) = asked.worker_name {
        fields.insert("pb".to_owned(), name.to_owned());
    }
}

/// Completes several active jobs in one script call, then fetches up to `tokens.len()` next
/// jobs when `fetch_next` is given: per job exactly what [`move_to_finished`] does for a
/// completion, with the per-call work (meta, the events trim, retention passes, the fetch)
/// done once. A refused job is reported in [`CompletedMany::outcomes`] and left untouched;
/// it does not stop the others.
#[instrument(skip_all, fields(queue = %keys.name(), jobs = jobs.len()))]
pub async fn complete_many(
    conn: &Connection,
    keys: &QueueKeys,
    jobs: &[Completion],
    now_ms: u64,
    fetch_next: Option<(&[String], &FetchOptions)>,
) -> Result<CompletedMany> {
    if let Some((_, opts)) = fetch_next {
        opts.validate()?;
    }
    if jobs.is_empty() && fetch_next.is_none() {
        return Ok(CompletedMany::default());
    }
    let mut k = fetch_keys(keys);
    k.extend([keys.key("stalled"), keys.key("completed"), keys.key("id")]);
    let mut args = Vec::with_capacity(10 + jobs.len() * 8 + fetch_next.map_or(0, |f| f.0.len()));
    args.push(keys.base().to_owned());
    args.push(DEFAULT_MAX_LEN_EVENTS.to_string());
    args.push(jobs.len().to_string());
    for j in jobs {
        args.push(j.job_id.clone());
        args.push(j.token.clone());
        args.push(j.return_value_json.clone());
        args.push(j.keep.count.max(-1).to_string());
        args.push(j.keep.age_secs.map(|a| a.to_string()).unwrap_or_default());
        args.push(j.keep.limit.unwrap_or(DEFAULT_KEEP_LIMIT).to_string());
        args.push((u64::from(j.attempts_made) + 1).to_string());
        args.push(j.dedup_id.clone().unwrap_or_default());
    }
    match fetch_next {
        Some((tokens, opts)) => {
            args.push("1".into());
            opts.push_args(&mut args, now_ms, tokens);
        }
        None => {
            args.push("0".into());
            FetchOptions::new(1).push_args(&mut args, now_ms, &[]);
        }
    }
    let reply: Value = COMPLETE_MANY.run(conn, &k, &args).await?;
    let Value::Array(items) = reply else {
        return Err(bad_reply(&COMPLETE_MANY, "expected an array"));
    };
    if items.len() < jobs.len() {
        return Err(bad_reply(
            &COMPLETE_MANY,
            format!("expected {} codes, got {} entries", jobs.len(), items.len()),
        ));
    }
    let (codes, fetch) = items.split_at(jobs.len());
    let outcomes = codes
        .iter()
        .map(|c| match as_int(c) {
            Some(0) => Ok(Ok(())),
            Some(code) => Ok(Err(RefusalCode::from_code(code))),
            None => Err(bad_reply(&COMPLETE_MANY, "a code is not an integer")),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CompletedMany {
        outcomes,
        fetched: parse_fetched(&COMPLETE_MANY, fetch, asked(fetch_next, now_ms))?,
    })
}

/// What a fetch-next was asked with (no tokens when none was asked).
fn asked<'a>(fetch_next: Option<(&'a [String], &'a FetchOptions)>, now_ms: u64) -> FetchAsked<'a> {
    FetchAsked {
        tokens: fetch_next.map_or(&[], |(tokens, _)| tokens),
        now_ms,
        // The script treats an empty name as none.
        worker_name: fetch_next
            .and_then(|(_, opts)| opts.worker_name.as_deref())
            .filter(|name| !name.is_empty()),
    }
}

/// The keys every fetch uses, in the order of `move_to_active.lua`.
fn fetch_keys(keys: &QueueKeys) -> Vec<String> {
    [
        "wait",
        "active",
        "prioritized",
        "events",
        "limiter",
        "delayed",
        "meta",
        "pc",
        "marker",
    ]
    .iter()
    .map(|s| keys.key(s))
    .collect()
}

/// Fetch up to `tokens.len()` jobs at `now_ms` (one token per job, used as the lock value, each `SET <job>:lock token PX lock_duration_ms`). Promotes due delayed jobs first (≤1000), honours paused/maxed, the rate limiter (counting activations, not of `defa` jobs), takes from `wait` (RPOPLPUSH semantics: rightmost first) then `prioritized` (ZPOPMIN; DEL pc when empty), sets `processedOn`, `pb`, `HINCRBY ats 1`, emits `active(jobId, prev=waiting)` per job, and re-adds marker "0" after taking a job. Stops early when the limiter is reached mid-batch. Returns the jobs' HGETALL fields.
///
/// `next_due_ms` is reported whenever the fetch ran out of ready jobs while delayed jobs
/// exist (also after taking some); `paused_or_maxed` whenever the batch stopped because of a
/// pause or the global concurrency. Ids found in `wait`/`prioritized` without a job hash are
/// dropped instead of activated.
#[instrument(skip_all, fields(queue = %keys.name(), jobs = tokens.len()))]
pub async fn move_to_active(
    conn: &Connection,
    keys: &QueueKeys,
    now_ms: u64,
    tokens: &[String],
    opts: &FetchOptions,
) -> Result<Fetched> {
    opts.validate()?;
    let mut args = vec![keys.base().to_owned()];
    opts.push_args(&mut args, now_ms, tokens);
    let reply: Value = MOVE_TO_ACTIVE.run(conn, &fetch_keys(keys), &args).await?;
    match reply {
        Value::Array(items) => {
            parse_fetched(&MOVE_TO_ACTIVE, &items, asked(Some((tokens, opts)), now_ms))
        }
        other => Err(bad_reply(
            &MOVE_TO_ACTIVE,
            format!("expected an array, got {other:?}"),
        )),
    }
}

/// Completes or fails an active job held with `token`, applying `keep` (the job's own retention, resolved by the caller), releasing the lock (token-checked: missing lock → Refused(LockNotExist), other token → Refused(LockMismatch); not in active → Refused(NotInState); job gone → Refused(JobNotExist)), `HINCRBY atm 1`, dedup-key release and the keepLastIfActive hand-over (§11.5, its `added`/`waiting` events before this job's completed/failed), events (`completed(jobId, returnvalue, prev=active)` or `failed(jobId, failedReason, prev=active)` then `retries-exhausted(jobId, attemptsMade)` when the new atm >= attempts), `HDEL defa` when failed, events pre-trimmed with XTRIM MAXLEN ~ meta.opts.maxLenEvents (default 10000), and then:
/// - if `fetch_next` is `Some((tokens, opts))`: fetch like `move_to_active` and return what it fetched (possibly empty, with ttl/next_due/paused flags);
/// - else, or if the fetch found nothing at all: emit `drained` when wait, active and prioritized are all empty (per §7.6 step 15/16: NOT when the fetch-next answered rate-limited, paused/maxed or next-delayed).
///
/// Flows (parent keys) are out of scope: `parentKey` is ignored. Like BullMQ, completing a
/// job that still has pending children (`:dependencies`) or failed ones (`:unsuccessful`) is
/// refused with [`RefusalCode::PendingChildren`] or `Other(-9)`. Every refusal is decided
/// before anything is written.
#[allow(clippy::too_many_arguments)]
#[instrument(skip_all, fields(queue = %keys.name(), job.id = %job_id))]
pub async fn move_to_finished(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    token: &str,
    now_ms: u64,
    finish: &Finish,
    keep: KeepJobs,
    fetch_next: Option<(&[String], &FetchOptions)>,
) -> Result<Fetched> {
    if let Some((_, opts)) = fetch_next {
        opts.validate()?;
    }
    let (target, value, stacktrace, attempts) = match finish {
        Finish::Completed { return_value_json } => ("completed", return_value_json.as_str(), "", 0),
        Finish::Failed {
            reason,
            stacktrace_json,
            attempts,
        } => (
            "failed",
            reason.as_str(),
            stacktrace_json.as_str(),
            *attempts,
        ),
    };
    let mut k = fetch_keys(keys);
    k.extend([
        keys.key("stalled"),
        keys.key(target),
        keys.job(job_id),
        keys.job_sub(job_id, "lock"),
        keys.key("id"),
    ]);
    let mut args = vec![
        keys.base().to_owned(),
        job_id.to_owned(),
        token.to_owned(),
        target.to_owned(),
        value.to_owned(),
        stacktrace.to_owned(),
        attempts.to_string(),
        keep.count.max(-1).to_string(),
        keep.age_secs.map(|a| a.to_string()).unwrap_or_default(),
        keep.limit.unwrap_or(DEFAULT_KEEP_LIMIT).to_string(),
        DEFAULT_MAX_LEN_EVENTS.to_string(),
    ];
    match fetch_next {
        Some((tokens, opts)) => {
            args.push("1".into());
            opts.push_args(&mut args, now_ms, tokens);
        }
        None => {
            args.push("0".into());
            FetchOptions::new(1).push_args(&mut args, now_ms, &[]);
        }
    }
    let reply: Value = MOVE_TO_FINISHED.run(conn, &k, &args).await?;
    match reply {
        Value::Int(code) if code < 0 => Err(refused(&MOVE_TO_FINISHED, job_id, code)),
        Value::Array(items) => parse_fetched(&MOVE_TO_FINISHED, &items, asked(fetch_next, now_ms)),
        other => Err(bad_reply(
            &MOVE_TO_FINISHED,
            format!("expected an array or a negative code, got {other:?}"),
        )),
    }
}

/// A failed attempt that will be retried: token-checked lock release, `failedReason` and `stacktrace` fields set, `LREM active`, `HINCRBY atm 1` unless `count_attempt` is false. With `delay_ms > 0`: into `delayed` at now+delay (delayed score per §3.1), `HSET delay`, event `delayed(jobId, delay=due)`, marker "1" for the earliest due. With `delay_ms == 0`: LPUSH (RPUSH if `lifo`) into wait, or prioritized when the job has a priority, marker "0" unless paused/maxed, event `waiting(jobId, prev=active)`. `reason`/`stacktrace_json` may be None (processor-requested delay: skip the fields, count_attempt false).
///
/// The fields are written only when `reason` is given (`stacktrace` then defaults to `[]`).
/// An immediate retry first promotes due delayed jobs, as BullMQ's retry does. A due time
/// beyond the delayed score's exact range is refused with [`Error::Validation`].
#[allow(clippy::too_many_arguments)]
#[instrument(skip_all, fields(queue = %keys.name(), job.id = %job_id))]
pub async fn retry_job(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    token: &str,
    now_ms: u64,
    delay_ms: u64,
    lifo: bool,
    count_attempt: bool,
    reason: Option<&str>,
    stacktrace_json: Option<&str>,
) -> Result<()> {
    if delay_ms > 0 {
        score::check_delay(now_ms, delay_ms)?;
    }
    let k = [
        keys.key("active"),
        keys.key("wait"),
        keys.key("prioritized"),
        keys.key("delayed"),
        keys.key("pc"),
        keys.key("marker"),
        keys.key("meta"),
        keys.key("events"),
        keys.key("stalled"),
        keys.job(job_id),
        keys.job_sub(job_id, "lock"),
    ];
    let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
    let args = [
        keys.base().to_owned(),
        job_id.to_owned(),
        token.to_owned(),
        now_ms.to_string(),
        delay_ms.to_string(),
        flag(lifo),
        flag(count_attempt),
        flag(reason.is_some()),
        reason.unwrap_or_default().to_owned(),
        stacktrace_json.unwrap_or("[]").to_owned(),
        DEFAULT_MAX_LEN_EVENTS.to_string(),
    ];
    let code: i64 = RETRY_JOB.run(conn, &k, &args).await?;
    if code < 0 {
        return Err(refused(&RETRY_JOB, job_id, code));
    }
    Ok(())
}

/// Puts an active job back at the front of the line without counting an attempt (rate-limited by its processor, or handed back at shutdown): token-checked lock release, LREM active, priority > 0 → ZADD prioritized p*2^32 (front of its priority, no marker) else RPUSH wait + marker "0" unless paused/maxed, event `waiting(jobId, prev=active)`. Returns the limiter's PTTL if > 0 else 0.
///
/// A job that is no longer in `active` is refused with [`RefusalCode::NotInState`] (nothing
/// written), like the other transitions.
#[instrument(skip_all, fields(queue = %keys.name(), job.id = %job_id))]
pub async fn move_to_wait_front(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    token: &str,
) -> Result<u64> {
    let k = [
        keys.key("active"),
        keys.key("wait"),
        keys.key("prioritized"),
        keys.key("stalled"),
        keys.key("meta"),
        keys.key("limiter"),
        keys.key("marker"),
        keys.key("events"),
        keys.job(job_id),
        keys.job_sub(job_id, "lock"),
    ];
    let args = [
        job_id.to_owned(),
        token.to_owned(),
        DEFAULT_MAX_LEN_EVENTS.to_string(),
    ];
    let r: i64 = MOVE_TO_WAIT_FRONT.run(conn, &k, &args).await?;
    u64::try_from(r).map_err(|_| refused(&MOVE_TO_WAIT_FRONT, job_id, r))
}

/// Renews locks: for each (job_id, token), if `<job>:lock` holds token → `SET PX duration_ms` and `SREM stalled id`; returns the ids whose lock could not be renewed.
#[instrument(skip_all, fields(queue = %keys.name(), jobs = locks.len()))]
pub async fn extend_locks(
    conn: &Connection,
    keys: &QueueKeys,
    locks: &[(String, String)],
    duration_ms: u64,
) -> Result<Vec<String>> {
    if duration_ms == 0 {
        return Err(Error::Validation {
            field: "duration_ms",
            reason: "must be greater than 0".into(),
        });
    }
    if locks.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = Vec::with_capacity(2 + locks.len() * 2);
    args.push(keys.base().to_owned());
    args.push(duration_ms.to_string());
    for (id, token) in locks {
        args.push(id.clone());
        args.push(token.clone());
    }
    EXTEND_LOCKS.run(conn, &[keys.key("stalled")], &args).await
}

/// The shared stall check (§6.4) with the `stalled-check` mutex (`SET … PX stalled_interval_ms NX`-style; return empty if held): requeue (RPUSH wait, marker unless paused/maxed) every job that was in `stalled` and has no lock and is still in active, HINCRBY stc, set `defa` = "job stalled more than allowable limit" when stc > max_stalled_count (unless a scheduler job, see §6.4), emit `waiting(prev=active)` then `stalled` per job (events pre-trimmed), then SADD every current active id into `stalled`. Returns the recovered ids.
///
/// An id in `active` whose job hash is gone is removed from `active` and not reported.
#[instrument(skip_all, fields(queue = %keys.name()))]
pub async fn move_stalled_jobs_to_wait(
    conn: &Connection,
    keys: &QueueKeys,
    max_stalled_count: u32,
    now_ms: u64,
    stalled_interval_ms: u64,
) -> Result<Vec<String>> {
    if stalled_interval_ms == 0 {
        return Err(Error::Validation {
            field: "stalled_interval_ms",
            reason: "must be greater than 0".into(),
        });
    }
    let k = [
        keys.key("stalled"),
        keys.key("wait"),
        keys.key("active"),
        keys.key("stalled-check"),
        keys.key("meta"),
        keys.key("marker"),
        keys.key("events"),
        keys.key("repeat"),
    ];
    let args = [
        keys.base().to_owned(),
        max_stalled_count.to_string(),
        now_ms.to_string(),
        stalled_interval_ms.to_string(),
        DEFAULT_MAX_LEN_EVENTS.to_string(),
    ];
    MOVE_STALLED_JOBS_TO_WAIT.run(conn, &k, &args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_fetch_replies() {
        let tokens = ["w:1".to_owned(), "w:2".to_owned()];
        let asked = FetchAsked {
            tokens: &tokens,
            now_ms: 1_000,
            worker_name: Some("rw"),
        };
        let empty = parse_fetched(
            &MOVE_TO_ACTIVE,
            &[Value::Int(0), bulk(""), Value::Int(0)],
            asked,
        )
        .expect("parses");
        assert!(empty.is_empty());

        let due = parse_fetched(
            &MOVE_TO_ACTIVE,
            &[Value::Int(0), bulk("7353654436179969"), Value::Int(0)],
            asked,
        )
        .expect("parses");
        assert_eq!(due.next_due_ms, Some(1_795_325_790_083));

        let two = parse_fetched(
            &MOVE_TO_ACTIVE,
            &[
                Value::Int(250),
                bulk(""),
                Value::Int(1),
                bulk("7"),
                Value::Int(4),
                bulk("name"),
                bulk("n"),
                bulk("ats"),
                bulk("2"),
                bulk("8"),
                Value::Int(2),
                bulk("name"),
                bulk("m"),
            ],
            asked,
        )
        .expect("parses");
        assert_eq!(two.rate_limit_ttl_ms, 250);
        assert!(two.paused_or_maxed);
        let ids: Vec<_> = two
            .jobs
            .iter()
            .map(|j| (j.id.as_str(), j.token.as_str()))
            .collect();
        assert_eq!(ids, [("7", "w:1"), ("8", "w:2")]);
        // The activation's writes are applied: ats + 1, processedOn, pb.
        assert_eq!(two.jobs[0].fields["ats"], "3");
        assert_eq!(two.jobs[1].fields["ats"], "1");
        assert_eq!(two.jobs[1].fields["processedOn"], "1000");
        assert_eq!(two.jobs[1].fields["pb"], "rw");
        assert_eq!(two.jobs[1].fields["name"], "m");

        // Too short, an odd or overlong field count, more jobs than tokens.
        let after_header = |tail: &[Value]| {
            let mut v = vec![Value::Int(0), bulk(""), Value::Int(0)];
            v.extend_from_slice(tail);
            v
        };
        let (a, b, c) = (bulk("a"), bulk("b"), bulk("c"));
        for bad in [
            vec![Value::Int(0)],
            after_header(&[bulk("7"), Value::Int(3), a.clone(), b.clone(), c]),
            after_header(&[bulk("7"), Value::Int(4), a, b]),
            after_header(&[bulk("7")]),
        ] {
            assert!(
                parse_fetched(&MOVE_TO_ACTIVE, &bad, asked).is_err(),
                "{bad:?}"
            );
        }
        let one_token = FetchAsked {
            tokens: &tokens[..1],
            ..asked
        };
        let two_jobs = after_header(&[bulk("7"), Value::Int(0), bulk("8"), Value::Int(0)]);
        assert!(parse_fetched(&MOVE_TO_ACTIVE, &two_jobs, one_token).is_err());
    }

    #[test]
    fn maps_stored_retention() {
        use crate::opts::KeepJobs as Opt;
        assert_eq!(KeepJobs::from(&Opt::All), KeepJobs::REMOVE_AT_ONCE);
        assert_eq!(KeepJobs::from(&Opt::None), KeepJobs::KEEP_ALL);
        assert_eq!(KeepJobs::from(&Opt::Count(3)).count, 3);
        let w = KeepJobs::from(&Opt::Window {
            age_secs: Some(60),
            count: None,
            limit: Some(10),
        });
        assert_eq!(
            w,
            KeepJobs {
                count: -1,
                age_secs: Some(60),
                limit: Some(10)
            }
        );
    }

    #[test]
    fn validates_fetch_options() {
        assert!(FetchOptions::new(0).validate().is_err());
        assert!(FetchOptions::new(1000)
            .with_limiter(2, 0)
            .validate()
            .is_err());
        assert!(FetchOptions::new(1000)
            .with_limiter(2, 1000)
            .with_worker_name("w")
            .validate()
            .is_ok());
    }
}
