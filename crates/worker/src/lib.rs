//! `bullpen-worker`: runs BullMQ 6.x jobs from Rust, side by side with Node workers.
//!
//! A [`Worker`] fetches jobs with our own scripts (promoting due delayed jobs, honouring
//! pause, global concurrency and the rate limiter), runs a [`Processor`] per job on its own
//! task, renews locks in batches, takes part in the queue's shared stall check, and finishes
//! jobs exactly as Node workers do (retention, retries with backoff, `failedReason`,
//! `stacktrace`, attempt counters, events), so Node getters, dashboards and `QueueEvents` see
//! our work as their own.
//!
//! Invariants: every run holds a unique lock token; a finish is token-checked, so a run whose
//! lock was lost can never complete its job (its result is discarded and reported); a panic
//! in a processor fails that job, never the worker; `close` always returns.
//!
//! ```no_run
//! use std::time::Duration;
//! use bullpen_conn::RedisOptions;
//! use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = from_fn(|job: bullpen_core::job::Job<serde_json::Value>, ctx| async move {
//!     ctx.progress(&50).await.map_err(JobError::failed)?;
//!     Ok::<_, JobError>(serde_json::json!({"sent": job.data["to"]}))
//! });
//! let opts = WorkerOptions::builder().concurrency(8).build()?;
//! let worker = Worker::start(RedisOptions::from_url("redis://127.0.0.1:6379")?.worker(), "emails", processor, opts).await?;
//! worker.run_until_signal(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod backoff;
mod error;
mod events;
mod finish;
mod manual;
mod options;
mod processor;
mod worker;

pub use backoff::{plan as backoff_plan, CustomBackoff, RetryPlan};
pub use error::{Error, Result};
pub use events::{WorkerEvent, DEFAULT_EVENT_CAPACITY};
pub use manual::{LockedJob, ManualWorker};
pub use options::{
    RateLimit, WorkerOptions, WorkerOptionsBuilder, DEFAULT_DRAIN_DELAY, DEFAULT_LOCK_DURATION,
    DEFAULT_MAX_STALLED_COUNT, DEFAULT_STALLED_INTERVAL, MAX_FETCH_BATCH,
};
pub use processor::{from_fn, FnProcessor, JobContext, JobError, Processor};
pub use tokio_util::sync::CancellationToken;
pub use worker::Worker;
