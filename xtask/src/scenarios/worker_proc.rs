//! The worker process of the fault scenarios: `cargo xtask scenario-worker '<json>'`, a
//! bullpen [`Worker`] with the test profile that writes the worker ledger, and
//! [`WorkerProc`], the handle the harness keeps on each one it spawned (signalled only by
//! its own PID).
//!
//! The processor does what the job's data asks: `{"p": payload, "ms": sleep, "k": kind}`
//! with kind `n` (sleep `ms`), `throw` (fail the first attempt, then as `n`), `abort` (abort
//! the process: a poison job) or `long` (as `n`, for long sleeps). Every kind stops early
//! when the run is cancelled (lock lost, or the grace period ended) and then fails the run.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bullpen_conn::RedisOptions;
use bullpen_core::job::Job;
use bullpen_worker::{from_fn, JobContext, JobError, Worker, WorkerEvent, WorkerOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::ledger::{now_ms, Ledger};
use super::Profile;

/// The hidden xtask subcommand.
pub const COMMAND: &str = "scenario-worker";

/// What one worker process runs with (its JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub url: String,
    pub queue: String,
    pub prefix: String,
    pub ledger: PathBuf,
    pub concurrency: usize,
    pub lock_ms: u64,
    pub stalled_ms: u64,
    pub max_stalled: u32,
    pub block_ms: u64,
    pub grace_ms: u64,
    pub max_len_events: u64,
    pub backoff_floor_ms: u64,
    pub backoff_cap_ms: u64,
}

impl WorkerConfig {
    /// A worker on `url` with the profile `p`.
    pub fn new(url: &str, queue: &str, prefix: &str, ledger: PathBuf, p: &Profile) -> Self {
        Self {
            url: url.to_owned(),
            queue: queue.to_owned(),
            prefix: prefix.to_owned(),
            ledger,
            concurrency: 8,
            lock_ms: ms(p.lock),
            stalled_ms: ms(p.stalled),
            max_stalled: p.max_stalled,
            block_ms: ms(p.block),
            grace_ms: ms(p.grace),
            max_len_events: p.max_len_events,
            backoff_floor_ms: ms(p.backoff_floor),
            backoff_cap_ms: ms(p.backoff_cap),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the process shares between its processor and its event recorder.
struct State {
    ledger: Ledger,
    pid: u32,
    /// Runs whose processor returned, by job id, oldest first, waiting for their finish's
    /// outcome (worker events carry the job id, not the token).
    awaiting: Mutex<HashMap<String, VecDeque<String>>>,
    /// Opened once the event recorder is subscribed, so that no outcome is missed.
    ready: watch::Receiver<bool>,
}

impl State {
    fn finished_run(&self, job_id: &str, token: &str) {
        if let Ok(mut a) = self.awaiting.lock() {
            a.entry(job_id.to_owned())
                .or_default()
                .push_back(token.to_owned());
        }
    }

    fn take_run(&self, job_id: &str) -> String {
        self.awaiting
            .lock()
            .ok()
            .and_then(|mut a| {
                let q = a.get_mut(job_id)?;
                let t = q.pop_front();
                if q.is_empty() {
                    a.remove(job_id);
                }
                t
            })
            .unwrap_or_else(|| "-".to_owned())
    }

    /// The token of the run of `job_id` that is still running here (for `LOCKLOST`).
    fn running_token(&self, running: &Mutex<HashMap<String, String>>, job_id: &str) -> String {
        running
            .lock()
            .ok()
            .and_then(|r| r.get(job_id).cloned())
            .unwrap_or_else(|| "-".to_owned())
    }
}

/// `cargo xtask scenario-worker '<json>'`.
pub fn main(args: &[String]) -> Result<()> {
    let raw = args
        .first()
        .ok_or_else(|| anyhow!("usage: cargo xtask {COMMAND} '<json>'"))?;
    let cfg: WorkerConfig = serde_json::from_str(raw).context("worker config")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

async fn run(cfg: WorkerConfig) -> Result<()> {
    let ledger = Ledger::open(&cfg.ledger)?;
    let pid = std::process::id();
    ledger.line(&format!("BOOT {pid} {}", now_ms()));
    let (open, ready) = watch::channel(false);
    let st = Arc::new(State {
        ledger,
        pid,
        awaiting: Mutex::default(),
        ready,
    });
    let running: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (p_st, p_running) = (st.clone(), running.clone());
    let processor = from_fn(move |job: Job<Value>, ctx: JobContext| {
        let st = p_st.clone();
        let running = p_running.clone();
        async move { process(&st, &running, job, ctx).await }
    });
    let mut opts = WorkerOptions::builder()
        .prefix(cfg.prefix.clone())
        .concurrency(cfg.concurrency)
        .lock_duration(Duration::from_millis(cfg.lock_ms))
        .stalled_interval(Duration::from_millis(cfg.stalled_ms))
        .max_stalled_count(cfg.max_stalled)
        .drain_delay(Duration::from_millis(cfg.block_ms))
        .event_capacity(1 << 16)
        .build()?;
    opts.max_len_events = cfg.max_len_events;
    let redis = RedisOptions::from_url(&cfg.url)?
        .worker()
        .with_retry_strategy(super::retry_strategy(
            Duration::from_millis(cfg.backoff_floor_ms),
            Duration::from_millis(cfg.backoff_cap_ms),
        ));
    let worker = match Worker::start(redis, &cfg.queue, processor, opts).await {
        Ok(w) => w,
        Err(e) => {
            st.ledger
                .line(&format!("ERROR {} worker did not start: {e}", now_ms()));
            return Err(e.into());
        }
    };
    let events = worker.events();
    let _ = open.send(true);
    st.ledger.line(&format!("READY {pid} {}", now_ms()));
    let recorder = tokio::spawn(record(st.clone(), running, events));
    let grace = Duration::from_millis(cfg.grace_ms);
    let outcome = worker.run_until_signal(grace).await;
    // Let the recorder write what `close` reported.
    tokio::time::sleep(Duration::from_millis(100)).await;
    recorder.abort();
    st.ledger.line(&format!("EXIT {pid} {}", now_ms()));
    outcome.map_err(Into::into)
}

async fn process(
    st: &State,
    running: &Mutex<HashMap<String, String>>,
    job: Job<Value>,
    ctx: JobContext,
) -> std::result::Result<Value, JobError> {
    let mut ready = st.ready.clone();
    let _ = ready.wait_for(|r| *r).await;
    let payload = job.data["p"].as_str().unwrap_or("-").to_owned();
    let sleep = Duration::from_millis(job.data["ms"].as_u64().unwrap_or(10));
    let kind = job.data["k"].as_str().unwrap_or("n").to_owned();
    let token = ctx.token().to_owned();
    st.ledger.line(&format!(
        "START {} {payload} {} {token} {} {}",
        job.id,
        job.attempts_made,
        st.pid,
        now_ms()
    ));
    if let Ok(mut r) = running.lock() {
        r.insert(job.id.clone(), token.clone());
    }
    if kind == "abort" {
        std::process::abort();
    }
    let cancelled = tokio::select! {
        _ = tokio::time::sleep(sleep) => false,
        _ = ctx.cancellation().cancelled() => true,
    };
    if let Ok(mut r) = running.lock() {
        if r.get(&job.id) == Some(&token) {
            r.remove(&job.id);
        }
    }
    let result = if cancelled {
        st.ledger
            .line(&format!("CANCEL {} {token} {}", job.id, now_ms()));
        Err(JobError::failed("the run was cancelled"))
    } else if kind == "throw" && job.attempts_made == 0 {
        Err(JobError::failed("a planned failure of the first attempt"))
    } else {
        st.ledger
            .line(&format!("EFFECT {} {payload} {token} {}", job.id, now_ms()));
        Ok(json!({ "p": payload }))
    };
    st.finished_run(&job.id, &token);
    result
}

/// The job id in a worker error such as `could not complete job 12: ...`, with the step.
fn refused_finish(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("could not ")?;
    let (what, after) = rest.split_once(" job ")?;
    if !matches!(
        what,
        "complete" | "fail" | "move to delayed" | "put back after a rate limit"
    ) {
        return None;
    }
    let id = after.split(':').next()?;
    Some((what, id))
}

async fn record(
    st: Arc<State>,
    running: Arc<Mutex<HashMap<String, String>>>,
    mut events: broadcast::Receiver<WorkerEvent>,
) {
    use broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                st.ledger.line(&format!("LAGGED {n} {}", now_ms()));
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let t = now_ms();
        match event {
            WorkerEvent::Completed { job_id, .. } => {
                let token = st.take_run(&job_id);
                st.ledger.line(&format!("ACK {job_id} {token} ok {t}"));
            }
            WorkerEvent::Failed {
                job_id, will_retry, ..
            } => {
                let token = st.take_run(&job_id);
                let status = if will_retry { "retry" } else { "failed" };
                st.ledger
                    .line(&format!("ACK {job_id} {token} {status} {t}"));
            }
            WorkerEvent::LockLost { job_id } => {
                let token = st.running_token(&running, &job_id);
                st.ledger.line(&format!("LOCKLOST {job_id} {token} {t}"));
            }
            WorkerEvent::Stalled { job_id } => {
                st.ledger.line(&format!("STALLED {job_id} {t}"));
            }
            WorkerEvent::Error { message } => {
                if let Some((_, id)) = refused_finish(&message) {
                    let token = st.take_run(id);
                    let status = if message.contains("result is discarded") {
                        "lock_lost".to_owned()
                    } else if message.contains("OOM") {
                        "error:oom".to_owned()
                    } else {
                        "error:other".to_owned()
                    };
                    st.ledger.line(&format!("ACK {id} {token} {status} {t}"));
                }
                st.ledger.line(&format!("ERROR {t} {message}"));
            }
            _ => {}
        }
    }
}

/// A worker process this harness spawned. Killed (by its own PID) on drop.
#[derive(Debug)]
pub struct WorkerProc {
    pub index: usize,
    pub ledger: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl WorkerProc {
    /// Starts `exe scenario-worker <cfg>`, with its output in `<dir>/worker-<index>.out`.
    pub fn spawn(exe: &Path, dir: &Path, index: usize, cfg: WorkerConfig) -> Result<Self> {
        let out = std::fs::File::create(dir.join(format!("worker-{index}.out")))?;
        let child = Command::new(exe)
            .arg(COMMAND)
            .arg(serde_json::to_string(&cfg)?)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning a scenario worker")?;
        Ok(Self {
            index,
            ledger: cfg.ledger.clone(),
            child,
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to this process (never to anything else).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid())?;
        kill(Pid::from_raw(pid), sig).map_err(|e| anyhow!("signalling worker {pid}: {e}"))
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if self.status.is_none() {
            self.child.kill()?;
            self.status = Some(self.child.wait()?);
        }
        Ok(())
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits until the process exits, at most `timeout`; returns when it was seen gone.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited().is_some() {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.signal(Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refused_finish;

    #[test]
    fn finish_refusals_name_their_job() {
        assert_eq!(
            refused_finish("could not complete job 12: the job's lock does not exist; this run's result is discarded"),
            Some(("complete", "12"))
        );
        assert_eq!(
            refused_finish("could not fail job a-1: script `move_to_finished`: OOM"),
            Some(("fail", "a-1"))
        );
        assert_eq!(
            refused_finish("could not hand job 3 back at close: x"),
            None
        );
        assert_eq!(refused_finish("fetch failed: x"), None);
    }
}
