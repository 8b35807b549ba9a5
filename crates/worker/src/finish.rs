//! How a run ends, shared by the worker loop and the manual API: completion, and the retry
//! decision for failures (protocol §7.7).

use bullpen_conn::Connection;
use bullpen_core::job::Job;
use bullpen_core::opts::KeepJobs;
use bullpen_core::worker_ops::{self, Finish};
use bullpen_core::QueueKeys;

use crate::backoff::{self, CustomBackoff, RetryPlan};

/// What the worker falls back to when a job's options say nothing.
#[derive(Clone, Copy, Default)]
pub(crate) struct FailurePolicy<'a> {
    pub custom_backoff: Option<&'a CustomBackoff>,
    pub max_started_attempts: Option<u32>,
    pub remove_on_fail: Option<&'a KeepJobs>,
}

/// How a failure was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FailureOutcome {
    /// Another attempt is planned.
    Retried,
    /// Failed for good.
    Failed,
    /// Failed for good because the backoff type has no strategy (the kind is given).
    FailedUnknownBackoff(String),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The job's own retention, else the worker's, else keep everything (Node's mapping).
pub(crate) fn keep_jobs(
    job_opt: Option<&KeepJobs>,
    worker_opt: Option<&KeepJobs>,
) -> worker_ops::KeepJobs {
    job_opt
        .or(worker_opt)
        .map_or(worker_ops::KeepJobs::KEEP_ALL, worker_ops::KeepJobs::from)
}

fn stack_entry(reason: &str) -> String {
    format!("Error: {reason}\n    at bullpen-worker")
}

/// The stored stack traces plus this failure's, keeping the last `limit` when set.
pub(crate) fn stacktrace_json(previous: &[String], reason: &str, limit: Option<u32>) -> String {
    let mut all: Vec<String> = previous.to_vec();
    all.push(stack_entry(reason));
    if let Some(l) = limit {
        let l = usize::try_from(l).unwrap_or(usize::MAX);
        let skip = all.len().saturating_sub(l);
        all.drain(..skip);
    }
    serde_json::to_string(&all).unwrap_or_else(|_| "[]".to_owned())
}

/// Completes a job with its return value (JSON text), optionally fetching the next job in
/// the same call.
pub(crate) async fn complete(
    conn: &Connection,
    keys: &QueueKeys,
    id: &str,
    token: &str,
    value_json: String,
    keep: worker_ops::KeepJobs,
    fetch_next: Option<(&[String], &worker_ops::FetchOptions)>,
) -> bullpen_core::Result<worker_ops::Fetched> {
    worker_ops::move_to_finished(
        conn,
        keys,
        id,
        token,
        now_ms(),
        &Finish::Completed {
            return_value_json: value_json,
        },
        keep,
        fetch_next,
    )
    .await
}

/// Fails a job for good.
pub(crate) async fn fail_final<T>(
    conn: &Connection,
    keys: &QueueKeys,
    job: &Job<T>,
    token: &str,
    reason: &str,
    policy: FailurePolicy<'_>,
) -> bullpen_core::Result<()> {
    let keep = keep_jobs(job.opts.remove_on_fail.as_ref(), policy.remove_on_fail);
    worker_ops::move_to_finished(
        conn,
        keys,
        &job.id,
        token,
        now_ms(),
        &Finish::Failed {
            reason: reason.to_owned(),
            stacktrace_json: stacktrace_json(&job.stacktrace, reason, job.opts.stack_trace_limit),
            attempts: job.opts.attempts.unwrap_or(0),
        },
        keep,
        None,
    )
    .await
    .map(|_| ())
}

/// A retryable failure: retries (now or after the backoff) while attempts remain, else
/// fails for good.
pub(crate) async fn handle_failure<T>(
    conn: &Connection,
    keys: &QueueKeys,
    job: &Job<T>,
    token: &str,
    reason: &str,
    policy: FailurePolicy<'_>,
) -> bullpen_core::Result<FailureOutcome> {
    let attempts = job.opts.attempts.unwrap_or(0);
    let started_out = policy
        .max_started_attempts
        .is_some_and(|m| job.attempts_started >= m);
    let mut unknown = None;
    if job.attempts_made.saturating_add(1) < attempts && !started_out {
        match backoff::plan(
            job.opts.backoff.as_ref(),
            job.attempts_made,
            reason,
            policy.custom_backoff,
            backoff::unit_random(),
        ) {
            RetryPlan::After(d) => {
                let stack = stacktrace_json(&job.stacktrace, reason, job.opts.stack_trace_limit);
                worker_ops::retry_job(
                    conn,
                    keys,
                    &job.id,
                    token,
                    now_ms(),
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    job.opts.lifo,
                    true,
                    Some(reason),
                    Some(&stack),
                )
                .await?;
                return Ok(FailureOutcome::Retried);
            }
            RetryPlan::UnknownStrategy => {
                unknown = Some(
                    job.opts
                        .backoff
                        .as_ref()
                        .map(|b| b.kind.as_str().to_owned())
                        .unwrap_or_default(),
                );
            }
            RetryPlan::GiveUp => {}
        }
    }
    fail_final(conn, keys, job, token, reason, policy).await?;
    Ok(match unknown {
        Some(kind) => FailureOutcome::FailedUnknownBackoff(kind),
        None => FailureOutcome::Failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacktraces_accumulate_and_honour_the_limit() {
        let prev = vec!["one".to_owned(), "two".to_owned()];
        let all: Vec<String> =
            serde_json::from_str(&stacktrace_json(&prev, "three", None)).expect("json");
        assert_eq!(all.len(), 3);
        let two: Vec<String> =
            serde_json::from_str(&stacktrace_json(&prev, "three", Some(2))).expect("json");
        assert_eq!(two[0], "two");
        let none: Vec<String> =
            serde_json::from_str(&stacktrace_json(&prev, "three", Some(0))).expect("json");
        assert!(none.is_empty());
    }

    #[test]
    fn the_jobs_retention_wins_over_the_workers() {
        let job = KeepJobs::Count(3);
        let worker = KeepJobs::All;
        assert_eq!(keep_jobs(Some(&job), Some(&worker)).count, 3);
        assert_eq!(keep_jobs(None, Some(&worker)).count, 0);
        assert_eq!(keep_jobs(None, None).count, -1);
    }
}
