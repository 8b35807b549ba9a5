//! The crate's error type.

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `bullpen-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue name that BullMQ would refuse.
    #[error("invalid queue name `{name}`: {reason}")]
    InvalidQueueName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An unusable prefix.
    #[error("invalid prefix `{prefix}`: {reason}")]
    InvalidPrefix {
        /// The prefix.
        prefix: String,
        /// Why.
        reason: &'static str,
    },
    /// On Redis Cluster every key of a queue must hash to one slot.
    #[error("queue `{queue}` with prefix `{prefix}` would spread its keys over several Redis Cluster slots; put a hash tag in the prefix, e.g. `{{{prefix}}}`")]
    CrossSlot {
        /// The queue.
        queue: String,
        /// The prefix.
        prefix: String,
    },
    /// A value outside what the format can store.
    #[error("invalid `{field}`: {reason}")]
    Validation {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Job options that fail validation.
    #[error(transparent)]
    Options(#[from] crate::opts::OptionsError),
    /// A job hash that cannot be decoded.
    #[error(transparent)]
    CorruptJob(#[from] crate::job::CorruptJob),
    /// A script answered something its wrapper does not understand.
    #[error("script `{script}` answered unexpectedly: {reason}")]
    ScriptReply {
        /// The script.
        script: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A script returned one of BullMQ's negative codes.
    #[error("script `{script}` refused job {job_id}: {code}")]
    Refused {
        /// The script.
        script: &'static str,
        /// The job.
        job_id: String,
        /// The code.
        code: RefusalCode,
    },
    /// Connection-level failure (carries whether the command may have been applied).
    #[error("script `{script}`: {source}")]
    Redis {
        /// The script or command.
        script: &'static str,
        /// The connection error.
        #[source]
        source: bullpen_conn::Error,
    },
}

/// BullMQ's negative script return codes (protocol §7.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// −1: the job hash does not exist.
    JobNotExist,
    /// −2: the job's lock does not exist.
    LockNotExist,
    /// −3: the job is not in the expected state.
    NotInState,
    /// −4: the job has pending children.
    PendingChildren,
    /// −6: the lock is held by someone else.
    LockMismatch,
    /// The job is locked by a worker (removal refused).
    Locked,
    /// Any other negative code.
    Other(i64),
}

impl RefusalCode {
    /// Maps a negative code.
    pub fn from_code(code: i64) -> Self {
        match code {
            -1 => RefusalCode::JobNotExist,
            -2 => RefusalCode::LockNotExist,
            -3 => RefusalCode::NotInState,
            -4 => RefusalCode::PendingChildren,
            -6 => RefusalCode::LockMismatch,
            c => RefusalCode::Other(c),
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalCode::JobNotExist => f.write_str("the job does not exist"),
            RefusalCode::LockNotExist => f.write_str("the job's lock does not exist"),
            RefusalCode::NotInState => f.write_str("the job is not in the expected state"),
            RefusalCode::PendingChildren => f.write_str("the job has pending children"),
            RefusalCode::LockMismatch => f.write_str("the job's lock is held by another worker"),
            RefusalCode::Locked => f.write_str("the job is locked by a worker"),
            RefusalCode::Other(c) => write!(f, "code {c}"),
        }
    }
}
