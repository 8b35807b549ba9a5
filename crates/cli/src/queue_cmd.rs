//! Queue commands: add, stats, job, jobs, pause, resume.

use std::io::BufRead;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{
    Backoff, BulkJob, Dedup, Job, JobOptions, JobState, KeepJobs, Queue, QueueOptions,
};
use serde_json::{json, Value};

/// Errors of the queue commands, printed as `bullpen <cmd>: <error>`.
pub type CmdResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Connection and queue options shared by every queue command.
pub struct Target {
    /// Server URL.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
}

impl Target {
    /// Opens the queue with a fail-fast connection.
    pub async fn open(&self, queue: &str) -> CmdResult<Queue> {
        let conn = Connection::connect(RedisOptions::from_url(&self.url)?.producer()).await?;
        Ok(Queue::new(
            conn,
            queue,
            QueueOptions::default().with_prefix(self.prefix.clone()),
        )
        .await?)
    }
}

/// Options of `bullpen add`.
#[derive(Default)]
pub struct AddArgs {
    /// `--delay-ms`.
    pub delay_ms: Option<u64>,
    /// `--priority`.
    pub priority: Option<u32>,
    /// `--lifo`.
    pub lifo: bool,
    /// `--attempts`.
    pub attempts: Option<u32>,
    /// `--backoff fixed:MS|exponential:MS`.
    pub backoff: Option<String>,
    /// `--job-id`.
    pub job_id: Option<String>,
    /// `--dedup-id`.
    pub dedup_id: Option<String>,
    /// `--dedup-ttl-ms`.
    pub dedup_ttl_ms: Option<u64>,
    /// `--remove-on-complete N|all`.
    pub remove_on_complete: Option<String>,
    /// `--count N`.
    pub count: u64,
}

/// Parses `fixed:1000` or `exponential:500`.
pub fn parse_backoff(s: &str) -> CmdResult<Backoff> {
    let (kind, ms) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid --backoff `{s}`: use fixed:MS or exponential:MS"))?;
    let delay: u64 = ms
        .parse()
        .map_err(|_| format!("invalid --backoff delay `{ms}`: milliseconds expected"))?;
    match kind {
        "fixed" => Ok(Backoff::fixed(delay)),
        "exponential" => Ok(Backoff::exponential(delay)),
        other => Err(format!("invalid --backoff type `{other}`: use fixed or exponential").into()),
    }
}

/// Parses `--remove-on-complete`: a count or `all`.
pub fn parse_keep(s: &str) -> CmdResult<KeepJobs> {
    if s == "all" {
        return Ok(KeepJobs::All);
    }
    Ok(KeepJobs::Count(s.parse().map_err(|_| {
        format!("invalid --remove-on-complete `{s}`: a count or `all`")
    })?))
}

fn job_options(a: &AddArgs) -> CmdResult<JobOptions> {
    let mut o = JobOptions::default();
    o.delay_ms = a.delay_ms.unwrap_or(0);
    o.priority = a.priority.unwrap_or(0);
    o.lifo = a.lifo;
    o.attempts = a.attempts;
    o.backoff = a.backoff.as_deref().map(parse_backoff).transpose()?;
    o.job_id = a.job_id.clone();
    if let Some(id) = &a.dedup_id {
        let mut d = Dedup::new(id.clone());
        d.ttl_ms = a.dedup_ttl_ms;
        o.deduplication = Some(d);
    } else if a.dedup_ttl_ms.is_some() {
        return Err("--dedup-ttl-ms needs --dedup-id".into());
    }
    o.remove_on_complete = a
        .remove_on_complete
        .as_deref()
        .map(parse_keep)
        .transpose()?;
    Ok(o)
}

/// `bullpen add`: prints one job id per line.
pub async fn add(t: &Target, queue: &str, name: &str, data: &str, a: &AddArgs) -> CmdResult<()> {
    let opts = job_options(a)?;
    let payloads: Vec<Value> = if data == "-" {
        let mut out = Vec::new();
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(&line)
                    .map_err(|e| format!("stdin line {}: invalid JSON: {e}", n + 1))?,
            );
        }
        out
    } else {
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("DATA_JSON is not valid JSON: {e}"))?;
        vec![v; usize::try_from(a.count.max(1)).unwrap_or(1)]
    };
    if payloads.len() > 1 && opts.job_id.is_some() {
        return Err("--job-id names one job; it cannot be used with --count or stdin".into());
    }
    let q = t.open(queue).await?;
    for chunk in payloads.chunks(1000) {
        let jobs: Vec<BulkJob<Value>> = chunk
            .iter()
            .map(|d| BulkJob::new(name, d.clone(), opts.clone()))
            .collect();
        for out in q.add_bulk(&jobs).await? {
            println!("{}", out.id);
        }
    }
    Ok(())
}

/// `bullpen stats`.
pub async fn stats(t: &Target, queue: &str, as_json: bool) -> CmdResult<()> {
    let q = t.open(queue).await?;
    let counts = q.get_job_counts().await?;
    let paused = q.is_paused().await?;
    if as_json {
        let mut m = serde_json::Map::new();
        for (s, n) in &counts {
            m.insert(s.as_str().into(), json!(n));
        }
        println!("{}", json!({"queue": queue, "paused": paused, "counts": m}));
    } else {
        println!("queue {queue}{}", if paused { " (paused)" } else { "" });
        println!("{:<18} {:>10}", "STATE", "JOBS");
        for (s, n) in &counts {
            println!("{:<18} {:>10}", s.as_str(), n);
        }
    }
    Ok(())
}

/// A job as JSON, with Node's field names (`Job.toJSON()`).
pub fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "name": j.name,
        "data": j.data,
        "opts": Value::Object(j.opts.to_stored()),
        "timestamp": j.timestamp,
        "delay": j.delay,
        "priority": j.priority,
        "processedOn": j.processed_on,
        "finishedOn": j.finished_on,
        "returnvalue": j.returnvalue,
        "failedReason": j.failed_reason,
        "stacktrace": j.stacktrace,
        "attemptsMade": j.attempts_made,
        "attemptsStarted": j.attempts_started,
        "stalledCounter": j.stalled_counter,
        "progress": j.progress,
        "parentKey": j.parent_key,
        "repeatJobKey": j.repeat_job_key,
        "deduplicationId": j.deduplication_id,
        "deferredFailure": j.deferred_failure,
        "processedBy": j.processed_by,
    })
}

/// `bullpen job`.
pub async fn job(t: &Target, queue: &str, id: &str) -> CmdResult<bool> {
    let q = t.open(queue).await?;
    match q.get_job(id).await? {
        Some(j) => {
            let mut v = job_json(&j);
            if let Some(state) = q.get_job_state(id).await? {
                v["state"] = json!(state.as_str());
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(true)
        }
        None => {
            eprintln!("bullpen job: job {id} does not exist in queue `{queue}`");
            Ok(false)
        }
    }
}

/// `bullpen jobs`: one JSON object per line; corrupt jobs go to stderr.
pub async fn jobs(t: &Target, queue: &str, state: &str, start: i64, end: i64) -> CmdResult<()> {
    let s = JobState::parse(state).ok_or_else(|| {
        format!("unknown state `{state}`: use waiting, active, delayed, prioritized, completed, failed, waiting-children")
    })?;
    let q = t.open(queue).await?;
    for r in q.get_jobs(&[s], start, end, false).await? {
        match r {
            Ok(j) => println!("{}", job_json(&j)),
            Err(e) => eprintln!("{e}"),
        }
    }
    Ok(())
}

/// `bullpen pause` / `bullpen resume`.
pub async fn pause(t: &Target, queue: &str, pause: bool) -> CmdResult<()> {
    let q = t.open(queue).await?;
    if pause {
        q.pause().await?;
        println!("queue {queue} paused");
    } else {
        q.resume().await?;
        println!("queue {queue} resumed");
    }
    Ok(())
}

/// `bullpen drain`.
pub async fn drain(t: &Target, queue: &str, delayed: bool) -> CmdResult<()> {
    let n = t.open(queue).await?.drain(delayed).await?;
    println!("drained {n} jobs from {queue}");
    Ok(())
}

/// `bullpen clean`: prints the ids removed, one per line.
pub async fn clean(
    t: &Target,
    queue: &str,
    state: &str,
    grace_ms: u64,
    limit: u64,
) -> CmdResult<()> {
    let s = JobState::parse(state).ok_or_else(|| format!("unknown state `{state}`"))?;
    let q = t.open(queue).await?;
    for id in q
        .clean(std::time::Duration::from_millis(grace_ms), limit, s)
        .await?
    {
        println!("{id}");
    }
    Ok(())
}

/// `bullpen obliterate`.
pub async fn obliterate(t: &Target, queue: &str, force: bool) -> CmdResult<()> {
    t.open(queue).await?.obliterate(force).await?;
    println!("queue {queue} obliterated");
    Ok(())
}

/// `bullpen retry`: one job by id, or every job of a finished state.
pub async fn retry(t: &Target, queue: &str, id: Option<&str>, state: &str) -> CmdResult<()> {
    let q = t.open(queue).await?;
    match id {
        Some(id) => {
            q.retry(id, false).await?;
            println!("job {id} retried");
        }
        None => {
            let s = JobState::parse(state).ok_or_else(|| format!("unknown state `{state}`"))?;
            q.retry_jobs(s, None).await?;
            println!("{state} jobs of {queue} retried");
        }
    }
    Ok(())
}

/// `bullpen promote`: one delayed job by id, or all of them.
pub async fn promote(t: &Target, queue: &str, id: Option<&str>) -> CmdResult<()> {
    let q = t.open(queue).await?;
    match id {
        Some(id) => {
            q.promote(id).await?;
            println!("job {id} promoted");
        }
        None => {
            q.promote_jobs().await?;
            println!("delayed jobs of {queue} promoted");
        }
    }
    Ok(())
}
