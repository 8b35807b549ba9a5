//! Local worker events, on a bounded broadcast channel: a worker whose events nobody reads
//! does not grow memory (a slow reader gets `Lagged(n)`).

use tokio::sync::broadcast;

/// Default capacity of the worker's event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Something that happened in this worker.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A job started.
    Active {
        /// The job.
        job_id: String,
    },
    /// A job completed.
    Completed {
        /// The job.
        job_id: String,
        /// Its return value.
        return_value: serde_json::Value,
    },
    /// An attempt failed.
    Failed {
        /// The job.
        job_id: String,
        /// The failure reason.
        reason: String,
        /// Whether another attempt is planned.
        will_retry: bool,
    },
    /// A job reported progress.
    Progress {
        /// The job.
        job_id: String,
        /// The progress value.
        progress: serde_json::Value,
    },
    /// This worker's stall check returned a job to wait.
    Stalled {
        /// The job.
        job_id: String,
    },
    /// This worker lost a job's lock; the run was cancelled and its result will be refused.
    LockLost {
        /// The job.
        job_id: String,
    },
    /// Nothing left to fetch.
    Drained,
    /// A problem the worker handled (logged once, here).
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The sending side, cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSender(broadcast::Sender<WorkerEvent>);

impl EventSender {
    pub(crate) fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity.max(1)).0)
    }

    pub(crate) fn send(&self, e: WorkerEvent) {
        let _ = self.0.send(e);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.0.subscribe()
    }
}
