//! For people who drive jobs themselves: fetch one job, then complete or fail it
//! (BullMQ's `Worker.getNextJob` with `moveToCompleted` / `moveToFailed`).
//!
//! The caller owns the lock: renew it with [`ManualWorker::extend_lock`] before
//! `lock_duration` passes, or the shared stall check will hand the job to someone else
//! (and this caller's finish will then be refused).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bullpen_conn::Connection;
use bullpen_core::job::Job;
use bullpen_core::worker_ops::{self, FetchOptions};
use bullpen_core::QueueKeys;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::finish::{self, FailureOutcome, FailurePolicy};

/// A job fetched by hand, with the token that holds its lock.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockedJob {
    /// The job.
    pub job: Job<serde_json::Value>,
    /// The lock token.
    pub token: String,
}

/// Fetches and finishes jobs one at a time, without a processing loop.
#[derive(Debug)]
pub struct ManualWorker {
    conn: Connection,
    keys: QueueKeys,
    fetch: FetchOptions,
    lock_duration: Duration,
    id: String,
    seq: AtomicU64,
}

impl ManualWorker {
    /// A manual worker on `queue` (prefix `prefix`) with this lock duration.
    pub fn new(
        conn: Connection,
        prefix: &str,
        queue: &str,
        lock_duration: Duration,
    ) -> Result<Self> {
        let keys = QueueKeys::new(prefix, queue)?;
        let ms = u64::try_from(lock_duration.as_millis()).unwrap_or(u64::MAX);
        Ok(Self {
            conn,
            keys,
            fetch: FetchOptions::new(ms),
            lock_duration,
            id: format!(
                "manual-{:016x}",
                (crate::backoff::unit_random() * u64::MAX as f64) as u64
            ),
            seq: AtomicU64::new(0),
        })
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Takes the next job (locked), or `None` when nothing is ready.
    pub async fn get_next_job(&self) -> Result<Option<LockedJob>> {
        let token = format!("{}:{}", self.id, self.seq.fetch_add(1, Ordering::Relaxed));
        let fetched = worker_ops::move_to_active(
            &self.conn,
            &self.keys,
            Self::now_ms(),
            &[token],
            &self.fetch,
        )
        .await?;
        let Some(active) = fetched.jobs.into_iter().next() else {
            return Ok(None);
        };
        let job = Job::from_hash(&active.id, &active.fields).map_err(bullpen_core::Error::from)?;
        Ok(Some(LockedJob {
            job,
            token: active.token,
        }))
    }

    /// Renews the job's lock; `false` if it was lost.
    pub async fn extend_lock(&self, job: &LockedJob) -> Result<bool> {
        let ms = u64::try_from(self.lock_duration.as_millis()).unwrap_or(u64::MAX);
        let lost = worker_ops::extend_locks(
            &self.conn,
            &self.keys,
            &[(job.job.id.clone(), job.token.clone())],
            ms,
        )
        .await?;
        Ok(lost.is_empty())
    }

    /// Completes the job with `value`, honouring its retention options.
    pub async fn move_to_completed<T: Serialize>(&self, job: &LockedJob, value: &T) -> Result<()> {
        let json = serde_json::to_string(value).map_err(Error::Serialize)?;
        let keep = finish::keep_jobs(job.job.opts.remove_on_complete.as_ref(), None);
        finish::complete(
            &self.conn,
            &self.keys,
            &job.job.id,
            &job.token,
            json,
            keep,
            None,
        )
        .await?;
        Ok(())
    }

    /// Fails the attempt with `reason`: retried (after its backoff) while attempts remain.
    /// Returns whether another attempt is planned.
    pub async fn move_to_failed(&self, job: &LockedJob, reason: &str) -> Result<bool> {
        let outcome = finish::handle_failure(
            &self.conn,
            &self.keys,
            &job.job,
            &job.token,
            reason,
            FailurePolicy::default(),
        )
        .await?;
        Ok(outcome == FailureOutcome::Retried)
    }
}
