//! The crate's error type.

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `bullpen-producer`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Format-level errors: invalid names or options, corrupt jobs, scripts, Redis.
    #[error(transparent)]
    Core(#[from] bullpen_core::Error),
    /// The job data could not be serialised to JSON.
    #[error("cannot serialise the data of job `{job_name}`: {source}")]
    Serialize {
        /// The job's name.
        job_name: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The job data is larger than the queue's (or the job's) size limit.
    #[error("the data of job `{job_name}` is {actual} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The job's name.
        job_name: String,
        /// The limit.
        limit: u64,
        /// The serialised size.
        actual: u64,
    },
    /// A job that cannot be found.
    #[error("job {job_id} does not exist in queue `{queue}`")]
    JobNotFound {
        /// The queue.
        queue: String,
        /// The job.
        job_id: String,
    },
    /// The job is locked by a worker, so it cannot be removed now.
    #[error("job {job_id} is locked by a worker and cannot be removed now")]
    JobLocked {
        /// The job.
        job_id: String,
    },
    /// Obliterating a queue with active jobs needs `force`.
    #[error("queue `{queue}` has active jobs; obliterate it with force, or wait for them")]
    ActiveJobs {
        /// The queue.
        queue: String,
    },
    /// The job is not in a state the operation applies to.
    #[error("job {job_id} is {state}, but {operation} needs it {expected}")]
    WrongState {
        /// The job.
        job_id: String,
        /// Its state (`unknown` when in none).
        state: String,
        /// The operation.
        operation: &'static str,
        /// The states it accepts.
        expected: &'static str,
    },
    /// An option this version does not support yet.
    #[error("unsupported option `{option}`: {reason}")]
    Unsupported {
        /// The option.
        option: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl From<bullpen_conn::Error> for Error {
    fn from(source: bullpen_conn::Error) -> Self {
        Error::Core(bullpen_core::Error::Redis {
            script: "command",
            source,
        })
    }
}

impl From<bullpen_core::opts::OptionsError> for Error {
    fn from(e: bullpen_core::opts::OptionsError) -> Self {
        Error::Core(e.into())
    }
}

impl From<bullpen_core::job::CorruptJob> for Error {
    fn from(e: bullpen_core::job::CorruptJob) -> Self {
        Error::Core(e.into())
    }
}

impl Error {
    /// Whether the failed call may still have changed Redis. [`Applied::No`]: nothing was
    /// written, so sending it again is safe. [`Applied::Unknown`]: the call reached Redis (or
    /// may have) and its reply was lost; an add with an automatic id must then not be blindly
    /// repeated (it could store a second job), while an add with a custom job id can be (a
    /// second add of the same id answers `Duplicated`).
    ///
    /// [`Applied::No`]: bullpen_conn::Applied::No
    /// [`Applied::Unknown`]: bullpen_conn::Applied::Unknown
    pub fn applied(&self) -> bullpen_conn::Applied {
        match self {
            Error::Core(bullpen_core::Error::Redis { source, .. }) => source.applied(),
            Error::Core(bullpen_core::Error::ScriptReply { .. }) => bullpen_conn::Applied::Unknown,
            _ => bullpen_conn::Applied::No,
        }
    }
}
