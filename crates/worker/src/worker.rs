//! The worker: a fetch loop, one task per running job, lock renewal and the shared stall
//! check.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bullpen_conn::redis;
use bullpen_conn::{BlockingConnection, Connection, RedisOptions};
use bullpen_core::coalesce::{Coalescer, Route, Runner};
use bullpen_core::job::Job;
use bullpen_core::script::COMPLETE_MANY;
use bullpen_core::worker_ops::{self, ActiveJob, FetchOptions};
use bullpen_core::{QueueKeys, RefusalCode};
use futures_util::FutureExt;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::error::{Error, Result};
use crate::events::{EventSender, WorkerEvent};
use crate::finish::{self, FailureOutcome, FailurePolicy};
use crate::options::{WorkerOptions, MAX_FETCH_BATCH};
use crate::processor::{JobContext, JobError, Processor};

/// Largest `BZPOPMIN` block, as BullMQ's (10 s).
const MAX_BLOCK: Duration = Duration::from_secs(10);
/// Longest idle wait when rate limited, as BullMQ's `maximumRateLimitDelay`.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);
/// Bound on each hand-back command at close, so that `close` always returns.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The manual rate-limit counter value BullMQ uses (2^53 - 1).
const LIMITER_FULL: u64 = 9_007_199_254_740_991;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One run, keyed by its token in `Shared::running`: the same job can be run twice by one
/// worker (a stale run that ignored its cancellation, and the fresh run after recovery), and
/// the stale run ending must not untrack the fresh one.
struct Running {
    id: String,
    cancel: CancellationToken,
    /// A newer run of the same job started here: this run's lock is gone, so it is neither
    /// renewed nor handed back; it still occupies a slot until it ends.
    stale: bool,
    /// The processor has returned and the run's finish is on its way (its lock is still
    /// renewed until the run ends). A renewal that finds the lock gone now is not a lost
    /// lock: the finish may just have released it; a finish that really lost its lock is
    /// refused and reported on its own.
    finishing: bool,
}

/// The runs in progress: by token, and the live (newest) run of each job id, so that
/// tracking a run and finding a job's live run do not scan every run.
#[derive(Default)]
struct Runs {
    by_token: HashMap<String, Running>,
    live: HashMap<String, String>,
}

impl Runs {
    fn len(&self) -> usize {
        self.by_token.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Running)> {
        self.by_token.iter()
    }

    fn values(&self) -> impl Iterator<Item = &Running> {
        self.by_token.values()
    }

    /// Adds a run; the job's previous live run here, if any, becomes stale and is cancelled.
    fn add(&mut self, token: &str, id: &str, cancel: CancellationToken) {
        if let Some(older) = self.live.insert(id.to_owned(), token.to_owned()) {
            if let Some(run) = self.by_token.get_mut(&older) {
                run.stale = true;
                run.cancel.cancel();
            }
        }
        self.by_token.insert(
            token.to_owned(),
            Running {
                id: id.to_owned(),
                cancel,
                stale: false,
                finishing: false,
            },
        );
    }

    /// Marks the run holding `token` as finishing.
    fn finishing(&mut self, token: &str) {
        if let Some(run) = self.by_token.get_mut(token) {
            run.finishing = true;
        }
    }

    fn remove(&mut self, token: &str) {
        if let Some(run) = self.by_token.remove(token) {
            if self.live.get(&run.id).is_some_and(|t| t == token) {
                self.live.remove(&run.id);
            }
        }
    }

    /// The live run of job `id`.
    fn live_run(&self, id: &str) -> Option<&Running> {
        self.live.get(id).and_then(|t| self.by_token.get(t))
    }
}

struct Shared {
    keys: QueueKeys,
    conn: Connection,
    blocking: BlockingConnection,
    opts: WorkerOptions,
    events: EventSender,
    concurrency: watch::Sender<usize>,
    /// Runs in progress, by token.
    running: Mutex<Runs>,
    slot_freed: Notify,
    closing: CancellationToken,
    worker_id: String,
    token_seq: AtomicU64,
    limited_until: Mutex<Option<Instant>>,
    completions: Arc<CompletionCoalescer>,
}

/// A running worker. Dropping it does not stop it: call [`Worker::close`].
pub struct Worker {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.shared.keys.name())
            .field("running", &self.running_count())
            .finish()
    }
}

impl Shared {
    fn running_count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    fn next_token(&self) -> String {
        format!(
            "{}:{}",
            self.worker_id,
            self.token_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn fetch_options(&self) -> FetchOptions {
        let mut f = FetchOptions::new(
            u64::try_from(self.opts.lock_duration.as_millis()).unwrap_or(u64::MAX),
        );
        f.limiter = self.opts.limiter.map(|l| {
            (
                l.max,
                u64::try_from(l.duration.as_millis()).unwrap_or(u64::MAX),
            )
        });
        f.worker_name = self.opts.name.clone();
        f
    }

    fn error(&self, message: String) {
        warn!(queue = %self.keys.name(), "{message}");
        self.events.send(WorkerEvent::Error { message });
    }
}

impl Worker {
    /// Starts a worker on `queue`. `redis` should be the worker preset
    /// (`RedisOptions::from_url(url)?.worker()`); the worker opens one connection for its
    /// commands and a dedicated blocking connection named as BullMQ names a worker's, so
    /// that Node's `Queue.getWorkers()` lists it.
    pub async fn start<P: Processor>(
        redis: RedisOptions,
        queue: &str,
        processor: P,
        opts: WorkerOptions,
    ) -> Result<Self> {
        let keys = QueueKeys::new(&opts.prefix, queue)?;
        keys.check_cluster(&redis)?;
        let name = keys.worker_connection_name(opts.name.as_deref());
        let conn = Connection::connect(redis.clone()).await?;
        let blocking =
            BlockingConnection::connect(redis.with_command_timeout(None).with_client_name(name))
                .await?;
        let worker_id = format!(
            "{:016x}{:016x}",
            (backoff::unit_random() * u64::MAX as f64) as u64,
            (backoff::unit_random() * u64::MAX as f64) as u64
        );
        let shared = Arc::new(Shared {
            keys,
            conn,
            blocking,
            events: EventSender::new(opts.event_capacity),
            concurrency: watch::channel(opts.concurrency).0,
            running: Mutex::new(Runs::default()),
            slot_freed: Notify::new(),
            closing: CancellationToken::new(),
            worker_id,
            token_seq: AtomicU64::new(0),
            limited_until: Mutex::new(None),
            completions: completion_coalescer(),
            opts,
        });
        info!(queue = %queue, "worker started");
        let processor = Arc::new(processor);
        let tasks = vec![
            tokio::spawn(stall_loop(shared.clone())),
            tokio::spawn(renew_loop(shared.clone())),
            tokio::spawn(fetch_loop(shared.clone(), processor)),
        ];
        Ok(Self {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// Local events. The channel is bounded: unread events are dropped, oldest first.
    pub fn events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.shared.events.subscribe()
    }

    /// Changes the number of jobs processed at once.
    pub fn set_concurrency(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::InvalidOptions {
                field: "concurrency",
                reason: "must be at least 1".into(),
            });
        }
        self.shared.concurrency.send_replace(n);
        self.shared.slot_freed.notify_one();
        Ok(())
    }

    /// Jobs running now.
    pub fn running_count(&self) -> usize {
        self.shared.running_count()
    }

    /// Rate-limits the whole queue for `duration` (as BullMQ's `Queue.rateLimit`): workers
    /// with a limiter configured stop fetching until it ends.
    pub async fn rate_limit(&self, duration: Duration) -> Result<()> {
        rate_limit(&self.shared, duration).await
    }

    /// Stops fetching, lets running jobs finish within `grace`, then hands the rest back to
    /// the front of `wait` (releasing their locks, so they run again at once rather than
    /// after a stall check) and cancels their runs. Always returns.
    pub async fn close(&self, grace: Duration) {
        let sh = &self.shared;
        sh.closing.cancel();
        let deadline = Instant::now() + grace;
        while sh.running_count() > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(
                left.min(Duration::from_millis(50)),
                sh.slot_freed.notified(),
            )
            .await;
        }
        let remaining: Vec<(String, String, CancellationToken)> = sh
            .running
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(_, run)| !run.stale)
                    .map(|(token, run)| (run.id.clone(), token.clone(), run.cancel.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Stale runs only need stopping.
        if let Ok(r) = sh.running.lock() {
            for run in r.values().filter(|run| run.stale) {
                run.cancel.cancel();
            }
        }
        for (id, token, cancel) in remaining {
            // Hand back first: that releases the lock, so whatever the cancelled run does next
            // (fail, retry, complete) is refused instead of racing the hand-back.
            let back = tokio::time::timeout(
                HAND_BACK_TIMEOUT,
                worker_ops::move_to_wait_front(&sh.conn, &sh.keys, &id, &token),
            )
            .await;
            match back {
                Ok(Ok(_)) => info!(job.id = %id, "job handed back at close"),
                Ok(Err(e)) => sh.error(format!("could not hand job {id} back at close: {e}")),
                Err(_) => sh.error(format!(
                    "handing job {id} back timed out; the stall check will recover it"
                )),
            }
            cancel.cancel();
        }
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in &tasks {
            t.abort();
        }
        sh.blocking.connection().close();
        sh.conn.close();
        info!(queue = %sh.keys.name(), "worker closed");
    }

    /// Runs until SIGINT or SIGTERM, then closes with `grace`.
    pub async fn run_until_signal(&self, grace: Duration) -> Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::InvalidOptions {
                field: "signals",
                reason: e.to_string(),
            })?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("signal received; closing the worker");
        self.close(grace).await;
        Ok(())
    }
}

async fn rate_limit(sh: &Shared, duration: Duration) -> Result<()> {
    let ms = u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let _: () = sh
        .conn
        .query(
            redis::cmd("SET")
                .arg(sh.keys.key("limiter"))
                .arg(LIMITER_FULL)
                .arg("PX")
                .arg(ms),
        )
        .await?;
    if let Ok(mut l) = sh.limited_until.lock() {
        *l = Some(Instant::now() + duration);
    }
    Ok(())
}

/// Sleeps `d` unless the worker closes first; returns false when closing.
async fn nap(sh: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = sh.closing.cancelled() => false,
    }
}

async fn fetch_loop<P: Processor>(sh: Arc<Shared>, processor: Arc<P>) {
    let mut drained = false;
    let mut failures: u32 = 0;
    loop {
        if sh.closing.is_cancelled() {
            return;
        }
        let free = {
            let c = *sh.concurrency.borrow();
            c.saturating_sub(sh.running_count())
        };
        if free == 0 {
            tokio::select! {
                _ = sh.slot_freed.notified() => {}
                _ = sh.closing.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let limited = sh.limited_until.lock().ok().and_then(|l| *l);
        if let Some(until) = limited {
            let now = Instant::now();
            if until > now {
                if !nap(&sh, (until - now).min(MAX_RATE_LIMIT_WAIT)).await {
                    return;
                }
                continue;
            }
        }
        let tokens: Vec<String> = (0..free.min(MAX_FETCH_BATCH))
            .map(|_| sh.next_token())
            .collect();
        let fetched = match worker_ops::move_to_active(
            &sh.conn,
            &sh.keys,
            now_ms(),
            &tokens,
            &sh.fetch_options(),
        )
        .await
        {
            Ok(f) => {
                failures = 0;
                f
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                sh.error(format!("fetch failed: {e}"));
                let wait = Duration::from_millis(100u64.saturating_mul(1 << failures.min(4)));
                if !nap(&sh, wait).await {
                    return;
                }
                continue;
            }
        };
        if !fetched.jobs.is_empty() {
            drained = false;
            for job in fetched.jobs {
                start_job(&sh, processor.clone(), job);
            }
            continue;
        }
        if fetched.rate_limit_ttl_ms > 0 {
            if let Ok(mut l) = sh.limited_until.lock() {
                *l = Some(Instant::now() + Duration::from_millis(fetched.rate_limit_ttl_ms));
            }
            continue;
        }
        if !drained {
            drained = true;
            debug!(queue = %sh.keys.name(), "drained");
            sh.events.send(WorkerEvent::Drained);
        }
        let block = match fetched.next_due_ms {
            Some(due) => {
                let ms = due.saturating_sub(now_ms());
                if ms == 0 {
                    continue;
                }
                Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_BLOCK)
            }
            None => sh.opts.drain_delay.min(MAX_BLOCK),
        };
        let mut cmd = redis::cmd("BZPOPMIN");
        cmd.arg(sh.keys.key("marker"))
            .arg(format!("{:.3}", block.as_secs_f64().max(0.001)));
        tokio::select! {
            r = sh.blocking.block::<Option<(String, String, f64)>>(&cmd, block) => {
                if let Err(e) = r {
                    failures = failures.saturating_add(1);
                    sh.error(format!("waiting for jobs failed: {e}"));
                    let wait = Duration::from_millis(100u64.saturating_mul(1 << failures.min(4)));
                    if !nap(&sh, wait).await {
                        return;
                    }
                }
            }
            // Abandoning a blocking command leaves it pending on its socket, so only closing
            // (which closes the connection too) may interrupt it.
            _ = sh.closing.cancelled() => return,
        }
    }
}

/// Tracks a run of `job`, marking older runs of the same job here as stale; returns its
/// cancellation token.
fn track(sh: &Shared, job: &ActiveJob) -> CancellationToken {
    let cancel = CancellationToken::new();
    if let Ok(mut r) = sh.running.lock() {
        r.add(&job.token, &job.id, cancel.clone());
    }
    cancel
}

/// Runs `job` in a task of its own. When its completion fetched the next job, the same task
/// runs that one too (its slot stays taken), so a worker that keeps busy does not spawn a
/// task per job.
fn start_job<P: Processor>(sh: &Arc<Shared>, processor: Arc<P>, job: ActiveJob) {
    let mut cancel = track(sh, &job);
    let sh = sh.clone();
    tokio::spawn(async move {
        let mut job = job;
        loop {
            let token = job.token.clone();
            let next = run_job(&sh, processor.clone(), job, cancel).await;
            let next = next.map(|n| {
                let c = track(&sh, &n);
                (n, c)
            });
            if let Ok(mut r) = sh.running.lock() {
                r.remove(&token);
            }
            match next {
                Some((n, c)) => {
                    job = n;
                    cancel = c;
                }
                None => break,
            }
        }
        sh.slot_freed.notify_one();
    });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("processor panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("processor panicked: {s}")
    } else {
        "processor panicked".to_owned()
    }
}

/// Runs one job to its end; returns the job its completion fetched, if any.
async fn run_job<P: Processor>(
    sh: &Arc<Shared>,
    processor: Arc<P>,
    active: ActiveJob,
    cancel: CancellationToken,
) -> Option<ActiveJob> {
    let ActiveJob { id, token, fields } = active;
    // Decoded once, with the processor's data type. Only when that fails is the job decoded
    // again with JSON data, to fail it with what can still be read of it.
    let typed: Job<P::Data> = match Job::from_hash(&id, &fields) {
        Ok(j) => j,
        Err(corrupt) => {
            match Job::<serde_json::Value>::from_hash(&id, &fields) {
                Ok(meta) => {
                    let reason = meta
                        .deferred_failure
                        .clone()
                        .unwrap_or_else(|| corrupt.to_string());
                    fail_final(sh, &meta, &token, &reason).await;
                }
                Err(corrupt) => {
                    // Nothing of the job can be trusted: fail it with the reason, default
                    // options.
                    let shell = Job::new(id.clone(), String::new(), serde_json::Value::Null);
                    fail_final(sh, &shell, &token, &corrupt.to_string()).await;
                }
            }
            return None;
        }
    };
    drop(fields);
    // What the finish needs once the processor has taken the job (everything but the data).
    let meta: Job<()> = {
        let mut m = Job::new(id.clone(), typed.name.clone(), ());
        m.opts = typed.opts.clone();
        m.attempts_made = typed.attempts_made;
        m.attempts_started = typed.attempts_started;
        m.stalled_counter = typed.stalled_counter;
        m.stacktrace = typed.stacktrace.clone();
        m.deferred_failure = typed.deferred_failure.clone();
        m.deduplication_id = typed.deduplication_id.clone();
        m
    };
    if let Some(reason) = meta.deferred_failure.as_deref() {
        fail_final(sh, &meta, &token, reason).await;
        return None;
    }
    if let Some(max) = sh.opts.max_started_attempts {
        if meta.attempts_started > max {
            let reason = "job started more than allowable limit";
            fail_final(sh, &meta, &token, reason).await;
            return None;
        }
    }
    sh.events.send(WorkerEvent::Active { job_id: id.clone() });
    debug!(job.id = %id, "job started");
    let ctx = JobContext {
        id: id.clone(),
        token: token.clone(),
        cancel,
        conn: sh.conn.clone(),
        keys: sh.keys.clone(),
        keep_logs: meta.opts.keep_logs,
        max_len_events: sh.opts.max_len_events,
        events: sh.events.clone(),
    };
    // The processor runs in this job's task; a panic inside it fails the job, not the worker.
    let outcome = AssertUnwindSafe(processor.process(typed, ctx))
        .catch_unwind()
        .await;
    if let Ok(mut r) = sh.running.lock() {
        r.finishing(&token);
    }
    let result: std::result::Result<serde_json::Value, JobError> = match outcome {
        Ok(Ok(v)) => serde_json::to_value(v).map_err(|e| {
            JobError::Unrecoverable(format!("cannot serialise the return value: {e}"))
        }),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(JobError::Failed(panic_message(panic))),
    };
    match result {
        Ok(value) => {
            return complete(sh, &token, value, &meta).await;
        }
        Err(JobError::Failed(reason)) => fail_or_retry(sh, &meta, &token, &reason).await,
        Err(JobError::Unrecoverable(reason)) => fail_final(sh, &meta, &token, &reason).await,
        Err(JobError::Delay(d)) => {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let r = worker_ops::retry_job(
                &sh.conn,
                &sh.keys,
                &id,
                &token,
                now_ms(),
                ms.max(1),
                meta.opts.lifo,
                false,
                None,
                None,
            )
            .await;
            report_refusal(sh, &id, "move to delayed", r.map(|_| ()));
        }
        Err(JobError::RateLimited(d)) => {
            if let Err(e) = rate_limit(sh, d).await {
                sh.error(format!("could not set the rate limit: {e}"));
            }
            let r = worker_ops::move_to_wait_front(&sh.conn, &sh.keys, &id, &token).await;
            report_refusal(sh, &id, "put back after a rate limit", r.map(|_| ()));
        }
    }
    None
}

/// A finish refused because the lock is gone or held by another worker: the run's result is
/// discarded (the job's fate is the new owner's), reported once.
fn report_refusal(
    sh: &Shared,
    id: &str,
    what: &str,
    r: std::result::Result<(), bullpen_core::Error>,
) {
    match r {
        Ok(()) => {}
        Err(bullpen_core::Error::Refused { code, .. })
            if matches!(
                code,
                RefusalCode::LockNotExist | RefusalCode::LockMismatch | RefusalCode::NotInState
            ) =>
        {
            sh.error(format!(
                "could not {what} job {id}: {code}; this run's result is discarded"
            ));
        }
        Err(e) => sh.error(format!("could not {what} job {id}: {e}")),
    }
}

impl Shared {
    fn policy(&self) -> FailurePolicy<'_> {
        FailurePolicy {
            custom_backoff: self.opts.custom_backoff.as_ref(),
            max_started_attempts: self.opts.max_started_attempts,
            remove_on_fail: self.opts.remove_on_fail.as_ref(),
        }
    }
}

/// Completions in flight at once before completions start to travel together.
const COMPLETIONS_IN_FLIGHT: usize = 2;
/// Most completions in one script call.
const COMPLETIONS_PER_CALL: usize = 64;

/// What one completion came to: completed or refused, and the job fetched in its place (if
/// any), or the failure of the call that carried it.
type CompletionOutcome =
    std::result::Result<(std::result::Result<(), RefusalCode>, Option<ActiveJob>), String>;

/// Completions of one worker that share script calls.
pub(crate) type CompletionCoalescer = Coalescer<worker_ops::Completion, CompletionOutcome>;

fn completion_coalescer() -> Arc<CompletionCoalescer> {
    Coalescer::new(COMPLETIONS_IN_FLIGHT, COMPLETIONS_PER_CALL, usize::MAX)
}

/// Completes `jobs` in one script call and, unless the worker is closing or rate limited,
/// fetches up to one next job per completion within the concurrency (BullMQ's fetch-next).
async fn complete_batch(sh: &Shared, jobs: Vec<worker_ops::Completion>) -> Vec<CompletionOutcome> {
    let m = jobs.len();
    let limited = sh
        .limited_until
        .lock()
        .ok()
        .and_then(|l| *l)
        .is_some_and(|until| until > Instant::now());
    // The runs completing here still count as running, so each frees one slot.
    let slots = (*sh.concurrency.borrow() + m).saturating_sub(sh.running_count());
    let wanted = if sh.closing.is_cancelled() || limited {
        0
    } else {
        m.min(slots)
    };
    let tokens: Vec<String> = (0..wanted).map(|_| sh.next_token()).collect();
    let fetch_opts = sh.fetch_options();
    let fetch_next = (wanted > 0).then_some((&tokens[..], &fetch_opts));
    match worker_ops::complete_many(&sh.conn, &sh.keys, &jobs, now_ms(), fetch_next).await {
        Ok(done) => {
            if done.fetched.rate_limit_ttl_ms > 0 {
                if let Ok(mut l) = sh.limited_until.lock() {
                    *l = Some(
                        Instant::now() + Duration::from_millis(done.fetched.rate_limit_ttl_ms),
                    );
                }
            }
            // At most one fetched job per completion, since at most m tokens were sent.
            let mut next = done.fetched.jobs.into_iter();
            done.outcomes
                .into_iter()
                .map(|o| Ok((o, next.next())))
                .collect()
        }
        Err(e) => {
            let message = e.to_string();
            (0..m).map(|_| Err(message.clone())).collect()
        }
    }
}

/// Completes a job and takes the next one in the same script call. Completions that would
/// queue behind others share a call (see `bullpen_core::coalesce`). Returns the job fetched
/// in its place, if any.
async fn complete(
    sh: &Arc<Shared>,
    token: &str,
    value: serde_json::Value,
    job: &Job<()>,
) -> Option<ActiveJob> {
    let id = job.id.as_str();
    let completion = worker_ops::Completion {
        job_id: id.to_owned(),
        token: token.to_owned(),
        return_value_json: value.to_string(),
        keep: finish::keep_jobs(
            job.opts.remove_on_complete.as_ref(),
            sh.opts.remove_on_complete.as_ref(),
        ),
        attempts_made: job.attempts_made,
        dedup_id: job.deduplication_id.clone(),
    };
    let owner = sh.clone();
    let runner: Runner<worker_ops::Completion, CompletionOutcome> = Arc::new(move |jobs| {
        let sh = owner.clone();
        Box::pin(async move { complete_batch(&sh, jobs).await })
    });
    let outcome = match sh.completions.route(completion, 0, &runner) {
        Route::Now(slot, completion) => {
            let out = complete_batch(sh, vec![completion]).await.pop();
            drop(slot);
            out
        }
        Route::Later(waiter) => waiter.wait().await,
    };
    match outcome {
        Some(Ok((Ok(()), next))) => {
            debug!(job.id = %id, "job completed");
            sh.events.send(WorkerEvent::Completed {
                job_id: id.to_owned(),
                return_value: value,
            });
            next
        }
        Some(Ok((Err(code), next))) => {
            report_refusal(
                sh,
                id,
                "complete",
                Err(bullpen_core::Error::Refused {
                    script: COMPLETE_MANY.name(),
                    job_id: id.to_owned(),
                    code,
                }),
            );
            next
        }
        Some(Err(message)) => {
            sh.error(format!("could not complete job {id}: {message}"));
            None
        }
        None => {
            sh.error(format!(
                "could not complete job {id}: the call carrying it was abandoned"
            ));
            None
        }
    }
}

fn report_failure(
    sh: &Shared,
    id: &str,
    reason: &str,
    outcome: bullpen_core::Result<FailureOutcome>,
) {
    match outcome {
        Ok(FailureOutcome::Retried) => sh.events.send(WorkerEvent::Failed {
            job_id: id.to_owned(),
            reason: reason.to_owned(),
            will_retry: true,
        }),
        Ok(other) => {
            if let FailureOutcome::FailedUnknownBackoff(kind) = other {
                sh.error(format!("unknown backoff strategy `{kind}` for job {id}: configure custom_backoff; the job failed"));
            }
            info!(job.id = %id, reason, "job failed");
            sh.events.send(WorkerEvent::Failed {
                job_id: id.to_owned(),
                reason: reason.to_owned(),
                will_retry: false,
            });
        }
        Err(e) => report_refusal(sh, id, "fail", Err(e)),
    }
}

async fn fail_final<T>(sh: &Shared, job: &Job<T>, token: &str, reason: &str) {
    let r = finish::fail_final(&sh.conn, &sh.keys, job, token, reason, sh.policy()).await;
    report_failure(sh, &job.id, reason, r.map(|()| FailureOutcome::Failed));
}

async fn fail_or_retry<T>(sh: &Shared, job: &Job<T>, token: &str, reason: &str) {
    let r = finish::handle_failure(&sh.conn, &sh.keys, job, token, reason, sh.policy()).await;
    report_failure(sh, &job.id, reason, r);
}

/// Renews the locks of the runs in progress every `lock_renew_time`. It goes on while the
/// worker closes (the jobs finishing within the grace period still need their locks), until
/// `close` stops it after handing the rest back.
async fn renew_loop(sh: Arc<Shared>) {
    let duration = u64::try_from(sh.opts.lock_duration.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(sh.opts.lock_renew_time).await;
        let locks: Vec<(String, String)> = sh
            .running
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(_, run)| !run.stale)
                    .map(|(token, run)| (run.id.clone(), token.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if locks.is_empty() {
            continue;
        }
        match worker_ops::extend_locks(&sh.conn, &sh.keys, &locks, duration).await {
            Ok(lost) => {
                for id in lost {
                    // Only one live (non-stale) run per job is renewed, so the id names it.
                    // A run that has ended, or whose finish is on its way, may have released
                    // the lock itself between the renewal's snapshot and the renewal.
                    let running = sh.running.lock().ok().and_then(|r| {
                        r.live_run(&id)
                            .filter(|run| !run.finishing)
                            .map(|run| run.cancel.clone())
                    });
                    let Some(cancel) = running else {
                        debug!(job.id = %id, "lock gone after the run finished; not a lost lock");
                        continue;
                    };
                    cancel.cancel();
                    warn!(job.id = %id, "lock lost; the run is cancelled and its result will be refused");
                    sh.events.send(WorkerEvent::LockLost { job_id: id });
                }
            }
            Err(e) => sh.error(format!("lock renewal failed: {e}")),
        }
    }
}

async fn stall_loop(sh: Arc<Shared>) {
    let interval = u64::try_from(sh.opts.stalled_interval.as_millis()).unwrap_or(u64::MAX);
    loop {
        match worker_ops::move_stalled_jobs_to_wait(
            &sh.conn,
            &sh.keys,
            sh.opts.max_stalled_count,
            now_ms(),
            interval,
        )
        .await
        {
            Ok(ids) => {
                for id in ids {
                    info!(job.id = %id, "stalled job returned to wait");
                    sh.events.send(WorkerEvent::Stalled { job_id: id });
                }
            }
            Err(e) => sh.error(format!("stalled check failed: {e}")),
        }
        if !nap(&sh, sh.opts.stalled_interval).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_run_of_a_job_makes_the_older_stale_and_outlives_it() {
        let mut runs = Runs::default();
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        runs.add("t1", "job", first.clone());
        runs.add("t2", "other", CancellationToken::new());
        assert!(!first.is_cancelled());
        runs.add("t3", "job", second.clone());
        assert!(first.is_cancelled(), "the older run is cancelled");
        assert!(runs.by_token["t1"].stale);
        assert!(!runs.by_token["t3"].stale);
        assert_eq!(runs.len(), 3);
        // The stale run ending leaves the live one findable.
        runs.remove("t1");
        assert!(runs.live_run("job").is_some_and(|r| !r.stale));
        runs.finishing("t3");
        assert!(runs.live_run("job").is_some_and(|r| r.finishing));
        runs.remove("t3");
        assert!(runs.live_run("job").is_none());
        assert_eq!(runs.len(), 1);
        assert!(!second.is_cancelled());
    }
}
