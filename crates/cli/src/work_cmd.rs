//! `bullpen work`: runs a command per job, so that any language can process BullMQ jobs,
//! each job isolated in its own process.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bullpen_conn::RedisOptions;
use bullpen_core::job::Job;
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent, WorkerOptions};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::queue_cmd::{job_json, CmdResult, Target};

/// Options of `bullpen work`.
pub struct WorkArgs {
    /// Shell command run per job.
    pub exec: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Kill a job's command after this long.
    pub timeout_ms: Option<u64>,
    /// Stop after this many jobs finished (completed or failed for good).
    pub max_jobs: Option<u64>,
    /// Stop once nothing is left to do.
    pub exit_when_drained: bool,
    /// Grace period at shutdown.
    pub grace_ms: u64,
    /// Lock duration.
    pub lock_duration_ms: u64,
    /// Stalled-check interval.
    pub stalled_interval_ms: u64,
    /// Stalls tolerated.
    pub max_stalled_count: u32,
}

/// The last non-empty line of `text`.
fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

async fn run_command(
    exec: &str,
    job: &Job<Value>,
    timeout: Option<Duration>,
    cancel: bullpen_worker::CancellationToken,
) -> Result<Value, JobError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(exec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| JobError::failed(format!("cannot start `{exec}`: {e}")))?;
    let input = job_json(job).to_string();
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(input.as_bytes()).await;
    }
    let wait = child.wait_with_output();
    let out = tokio::select! {
        r = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| JobError::failed(format!("timed out after {} ms", t.as_millis()))),
                None => Ok(wait.await),
            }
        } => r?,
        _ = cancel.cancelled() => return Err(JobError::failed("cancelled: the lock was lost or the worker is closing")),
    }
    .map_err(|e| JobError::failed(format!("waiting for `{exec}`: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason =
            last_line(&stderr).unwrap_or_else(|| format!("`{exec}` exited with {}", out.status));
        return Err(JobError::Failed(reason));
    }
    let text = stdout.trim();
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| json!(text))
    })
}

/// `bullpen work`.
pub async fn work(t: &Target, queue: &str, a: WorkArgs) -> CmdResult<()> {
    let exec = Arc::new(a.exec.clone());
    let timeout = a.timeout_ms.map(Duration::from_millis);
    let processor = from_fn(move |job: Job<Value>, ctx| {
        let exec = exec.clone();
        async move {
            let cancel = ctx.cancellation().clone();
            run_command(&exec, &job, timeout, cancel).await
        }
    });
    let opts = WorkerOptions::builder()
        .prefix(t.prefix.clone())
        .concurrency(a.concurrency)
        .lock_duration(Duration::from_millis(a.lock_duration_ms))
        .stalled_interval(Duration::from_millis(a.stalled_interval_ms))
        .max_stalled_count(a.max_stalled_count)
        .build()?;
    let worker = Worker::start(
        RedisOptions::from_url(&t.url)?.worker(),
        queue,
        processor,
        opts,
    )
    .await?;
    let mut events = worker.events();
    let finished = AtomicU64::new(0);
    let grace = Duration::from_millis(a.grace_ms);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut drained = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if a.exit_when_drained && drained && worker.running_count() == 0 { break; }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if report(&ev) {
                        let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
                        if a.max_jobs.is_some_and(|m| n >= m) { break; }
                    }
                    match ev {
                        WorkerEvent::Drained => drained = true,
                        WorkerEvent::Active { .. } => drained = false,
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
        }
    }
    // Jobs that finish during the grace period are reported like any other.
    let close = worker.close(grace);
    tokio::pin!(close);
    loop {
        tokio::select! {
            _ = &mut close => break,
            ev = events.recv() => match ev {
                Ok(ev) => { report(&ev); }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => {
                    (&mut close).await;
                    break;
                }
            },
        }
    }
    while let Ok(ev) = events.try_recv() {
        report(&ev);
    }
    Ok(())
}

/// Prints one worker event; `true` when it ends a job for good.
fn report(ev: &WorkerEvent) -> bool {
    match ev {
        WorkerEvent::Completed { job_id, .. } => {
            eprintln!("completed {job_id}");
            true
        }
        WorkerEvent::Failed {
            job_id,
            reason,
            will_retry,
        } => {
            eprintln!(
                "failed {job_id}: {reason}{}",
                if *will_retry { " (will retry)" } else { "" }
            );
            !will_retry
        }
        WorkerEvent::Error { message } => {
            eprintln!("error: {message}");
            false
        }
        _ => false,
    }
}
