//! What a processor is, what it gets, and what it may answer.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use bullpen_conn::Connection;
use bullpen_core::job::Job;
use bullpen_core::{job_ops, QueueKeys};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// What a processor asks for instead of a result. This is a worker type of its own, not
/// one of the library's errors.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// A failure worth retrying (if the job has attempts left), with its message.
    Failed(String),
    /// A failure that must not be retried.
    Unrecoverable(String),
    /// Move the job back to delayed for this long without counting an attempt.
    Delay(Duration),
    /// The processor hit a rate limit: put the job back at the front and pause fetching
    /// for this long (it also sets the queue's limiter, as BullMQ's `rateLimit` does).
    RateLimited(Duration),
}

impl JobError {
    /// A retryable failure from anything displayable.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        JobError::Failed(e.to_string())
    }

    /// A failure that is not retried.
    pub fn unrecoverable(e: impl std::fmt::Display) -> Self {
        JobError::Unrecoverable(e.to_string())
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Failed(m) | JobError::Unrecoverable(m) => f.write_str(m),
            JobError::Delay(d) => write!(f, "delayed by the processor for {d:?}"),
            JobError::RateLimited(d) => write!(f, "rate limited by the processor for {d:?}"),
        }
    }
}

/// Handed to every processor call: the job's lock token, a cancellation token that fires
/// when the lock is lost or the worker's grace period ends, and job operations.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) conn: Connection,
    pub(crate) keys: QueueKeys,
    pub(crate) keep_logs: Option<u64>,
    pub(crate) max_len_events: u64,
    pub(crate) events: crate::events::EventSender,
}

impl JobContext {
    /// The job id.
    pub fn job_id(&self) -> &str {
        &self.id
    }

    /// This run's lock token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Fires when this run should stop: the lock was lost (another worker may run the job
    /// now, and this run's result will be refused) or the worker is closing past its grace.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stores progress (any JSON value) and emits `progress` (stream and local event).
    pub async fn progress<T: Serialize>(&self, value: &T) -> Result<()> {
        let json = serde_json::to_string(value).map_err(Error::Serialize)?;
        job_ops::update_progress(&self.conn, &self.keys, &self.id, &json, self.max_len_events)
            .await?;
        let v = serde_json::from_str(&json).unwrap_or(serde_json::Value::Null);
        self.events.send(crate::events::WorkerEvent::Progress {
            job_id: self.id.clone(),
            progress: v,
        });
        Ok(())
    }

    /// Appends a log line to the job (honouring its `keepLogs`).
    pub async fn log(&self, line: &str) -> Result<u64> {
        Ok(job_ops::add_log(&self.conn, &self.keys, &self.id, line, self.keep_logs).await?)
    }

    /// Replaces the job's data.
    pub async fn update_data<T: Serialize>(&self, data: &T) -> Result<()> {
        let json = serde_json::to_string(data).map_err(Error::Serialize)?;
        Ok(job_ops::update_data(&self.conn, &self.keys, &self.id, &json).await?)
    }
}

/// Runs jobs. Implement it for a type, or use [`from_fn`] with a closure.
pub trait Processor: Send + Sync + 'static {
    /// The job data type (decoded from the job's JSON).
    type Data: DeserializeOwned + Send + 'static;
    /// The return value (stored as JSON).
    type Output: Serialize + Send + 'static;

    /// Processes one job.
    fn process(
        &self,
        job: Job<Self::Data>,
        ctx: JobContext,
    ) -> impl Future<Output = std::result::Result<Self::Output, JobError>> + Send;
}

/// A processor made from a closure; see [`from_fn`].
pub struct FnProcessor<F, D, O> {
    f: F,
    _types: PhantomData<fn(D) -> O>,
}

/// Makes a processor from `async |job, ctx| -> Result<Output, JobError>`.
pub fn from_fn<D, O, F, Fut>(f: F) -> FnProcessor<F, D, O>
where
    F: Fn(Job<D>, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, JobError>> + Send + 'static,
    D: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    FnProcessor {
        f,
        _types: PhantomData,
    }
}

impl<D, O, F, Fut> Processor for FnProcessor<F, D, O>
where
    F: Fn(Job<D>, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, JobError>> + Send + 'static,
    D: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    type Data = D;
    type Output = O;

    fn process(
        &self,
        job: Job<D>,
        ctx: JobContext,
    ) -> impl Future<Output = std::result::Result<O, JobError>> + Send {
        (self.f)(job, ctx)
    }
}
