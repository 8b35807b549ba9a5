//! Concurrent single adds share script calls, through [`bullpen_core::coalesce`].
//!
//! `Queue::add` sends its job at once when fewer than [`MAX_IN_FLIGHT`] add calls of this
//! queue are waiting for Redis. Past that, the job waits, and the next call to end takes
//! every waiting job (up to [`MAX_BATCH`] and [`MAX_BATCH_BYTES`] of data) and sends them
//! together through the bulk-capable add script, each job with its own options, events and
//! outcome. The add script has no per-job failure, so one job cannot make another fail.

use std::sync::Arc;

use bullpen_core::coalesce::{BatchFuture, Coalescer, Runner};
use bullpen_core::script::ADD_JOB;

use crate::error::{Error, Result};
use crate::queue::{AddOutcome, Prepared, Queue};

/// Add calls of one queue in flight at once before adds start to travel together.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most jobs sent in one shared call.
pub(crate) const MAX_BATCH: usize = 256;
/// Most bytes of job data in one shared call (a single larger job still goes alone).
pub(crate) const MAX_BATCH_BYTES: usize = 1 << 20;

/// The per-queue coalescer shared by every clone of a `Queue`.
pub(crate) type AddCoalescer = Coalescer<Prepared, Result<AddOutcome>>;

/// A new coalescer for a queue.
pub(crate) fn new_coalescer() -> Arc<AddCoalescer> {
    Coalescer::new(MAX_IN_FLIGHT, MAX_BATCH, MAX_BATCH_BYTES)
}

/// The runner that sends waiting adds of `queue` as one call.
pub(crate) fn runner(queue: &Queue) -> Runner<Prepared, Result<AddOutcome>> {
    let queue = queue.clone();
    Arc::new(
        move |jobs: Vec<Prepared>| -> BatchFuture<Result<AddOutcome>> {
            let queue = queue.clone();
            Box::pin(async move {
                let n = jobs.len();
                match queue.run_add(jobs).await {
                    Ok(outcomes) if outcomes.len() == n => outcomes.into_iter().map(Ok).collect(),
                    Ok(outcomes) => {
                        let e = Error::Core(bullpen_core::Error::ScriptReply {
                            script: ADD_JOB.name(),
                            reason: format!("expected {n} outcomes, got {}", outcomes.len()),
                        });
                        (0..n).map(|_| Err(share(&e))).collect()
                    }
                    Err(e) => (0..n).map(|_| Err(share(&e))).collect(),
                }
            })
        },
    )
}

/// The same failure for every job of a shared call.
fn share(e: &Error) -> Error {
    match e {
        Error::Core(bullpen_core::Error::Redis { script, source }) => {
            Error::Core(bullpen_core::Error::Redis {
                script,
                source: source.clone(),
            })
        }
        Error::Core(bullpen_core::Error::ScriptReply { script, reason }) => {
            Error::Core(bullpen_core::Error::ScriptReply {
                script,
                reason: reason.clone(),
            })
        }
        other => Error::Core(bullpen_core::Error::ScriptReply {
            script: ADD_JOB.name(),
            reason: other.to_string(),
        }),
    }
}
