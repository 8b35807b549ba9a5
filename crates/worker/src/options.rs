//! Worker options, with BullMQ's defaults.

use std::time::Duration;

use bullpen_core::opts::KeepJobs;

use crate::backoff::CustomBackoff;
use crate::error::{Error, Result};

/// BullMQ's default lock duration.
pub const DEFAULT_LOCK_DURATION: Duration = Duration::from_secs(30);
/// BullMQ's default stalled-check interval.
pub const DEFAULT_STALLED_INTERVAL: Duration = Duration::from_secs(30);
/// BullMQ's default number of stalls before a job is failed.
pub const DEFAULT_MAX_STALLED_COUNT: u32 = 1;
/// BullMQ's default `drainDelay`: how long an idle worker blocks on the marker.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Most jobs fetched in one script call.
pub const MAX_FETCH_BATCH: usize = 32;

/// A rate limit: at most `max` jobs started per `duration`, across every worker of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Jobs per window.
    pub max: u64,
    /// The window.
    pub duration: Duration,
}

/// Options of a worker. Build them with [`WorkerOptions::builder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Key prefix (`bull`).
    pub prefix: String,
    /// Jobs processed at once (1). Changeable at run time with `Worker::set_concurrency`.
    pub concurrency: usize,
    /// Lock time-to-live (30 s); renewed every `lock_renew_time`.
    pub lock_duration: Duration,
    /// How often locks are renewed (half the lock duration).
    pub lock_renew_time: Duration,
    /// Stalled-check interval (30 s); the check is shared with every worker of the queue.
    pub stalled_interval: Duration,
    /// Stalls tolerated before a job is failed (1).
    pub max_stalled_count: u32,
    /// How long an idle worker blocks waiting for the marker (5 s).
    pub drain_delay: Duration,
    /// A rate limit for the whole queue.
    pub limiter: Option<RateLimit>,
    /// The worker's name: written to `processedBy` and to the blocking connection's name.
    pub name: Option<String>,
    /// Retention for completed jobs whose options set none.
    pub remove_on_complete: Option<KeepJobs>,
    /// Retention for failed jobs whose options set none.
    pub remove_on_fail: Option<KeepJobs>,
    /// Fail a job for good once it has started this many times.
    pub max_started_attempts: Option<u32>,
    /// Strategy for backoff types other than fixed and exponential.
    pub custom_backoff: Option<CustomBackoff>,
    /// Capacity of the local event channel.
    pub event_capacity: usize,
    /// Default `maxLenEvents` used when the queue's meta has none.
    pub max_len_events: u64,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("lock_duration", &self.lock_duration)
            .field("lock_renew_time", &self.lock_renew_time)
            .field("stalled_interval", &self.stalled_interval)
            .field("max_stalled_count", &self.max_stalled_count)
            .field("drain_delay", &self.drain_delay)
            .field("limiter", &self.limiter)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            prefix: bullpen_core::DEFAULT_PREFIX.into(),
            concurrency: 1,
            lock_duration: DEFAULT_LOCK_DURATION,
            lock_renew_time: DEFAULT_LOCK_DURATION / 2,
            stalled_interval: DEFAULT_STALLED_INTERVAL,
            max_stalled_count: DEFAULT_MAX_STALLED_COUNT,
            drain_delay: DEFAULT_DRAIN_DELAY,
            limiter: None,
            name: None,
            remove_on_complete: None,
            remove_on_fail: None,
            max_started_attempts: None,
            custom_backoff: None,
            event_capacity: crate::events::DEFAULT_EVENT_CAPACITY,
            max_len_events: 10_000,
        }
    }
}

impl WorkerOptions {
    /// A builder starting from the defaults.
    pub fn builder() -> WorkerOptionsBuilder {
        WorkerOptionsBuilder {
            opts: WorkerOptions::default(),
            renew_set: false,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::InvalidOptions {
                field,
                reason: reason.into(),
            })
        };
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if self.lock_duration < Duration::from_millis(100) {
            return bad("lock_duration", "must be at least 100 ms");
        }
        if self.lock_renew_time.is_zero() || self.lock_renew_time >= self.lock_duration {
            return bad(
                "lock_renew_time",
                "must be greater than zero and shorter than lock_duration",
            );
        }
        if self.stalled_interval < Duration::from_millis(10) {
            return bad("stalled_interval", "must be at least 10 ms");
        }
        if self.drain_delay < Duration::from_millis(1) {
            return bad("drain_delay", "must be at least 1 ms");
        }
        if let Some(l) = self.limiter {
            if l.max == 0 || l.duration.is_zero() {
                return bad("limiter", "max and duration must be greater than zero");
            }
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.contains(' ') {
                return bad("name", "must be non-empty and contain no spaces");
            }
        }
        bullpen_core::QueueKeys::new(&self.prefix, "x").map_err(|e| Error::InvalidOptions {
            field: "prefix",
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// Builds [`WorkerOptions`], validated once by [`WorkerOptionsBuilder::build`].
#[must_use]
pub struct WorkerOptionsBuilder {
    opts: WorkerOptions,
    renew_set: bool,
}

impl WorkerOptionsBuilder {
    /// Key prefix.
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.opts.prefix = p.into();
        self
    }
    /// Jobs at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.opts.concurrency = n;
        self
    }
    /// Lock duration (the renew time follows at half unless set).
    pub fn lock_duration(mut self, d: Duration) -> Self {
        self.opts.lock_duration = d;
        self
    }
    /// Lock renew time.
    pub fn lock_renew_time(mut self, d: Duration) -> Self {
        self.opts.lock_renew_time = d;
        self.renew_set = true;
        self
    }
    /// Stalled-check interval.
    pub fn stalled_interval(mut self, d: Duration) -> Self {
        self.opts.stalled_interval = d;
        self
    }
    /// Stalls tolerated.
    pub fn max_stalled_count(mut self, n: u32) -> Self {
        self.opts.max_stalled_count = n;
        self
    }
    /// Idle block time.
    pub fn drain_delay(mut self, d: Duration) -> Self {
        self.opts.drain_delay = d;
        self
    }
    /// Rate limit.
    pub fn limiter(mut self, max: u64, duration: Duration) -> Self {
        self.opts.limiter = Some(RateLimit { max, duration });
        self
    }
    /// Worker name.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.opts.name = Some(n.into());
        self
    }
    /// Retention fallback for completed jobs.
    pub fn remove_on_complete(mut self, k: KeepJobs) -> Self {
        self.opts.remove_on_complete = Some(k);
        self
    }
    /// Retention fallback for failed jobs.
    pub fn remove_on_fail(mut self, k: KeepJobs) -> Self {
        self.opts.remove_on_fail = Some(k);
        self
    }
    /// Stop after this many starts.
    pub fn max_started_attempts(mut self, n: u32) -> Self {
        self.opts.max_started_attempts = Some(n);
        self
    }
    /// Custom backoff strategy.
    pub fn custom_backoff(
        mut self,
        f: impl Fn(u32, &str, &str) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.opts.custom_backoff = Some(std::sync::Arc::new(f));
        self
    }
    /// Event channel capacity.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.opts.event_capacity = n;
        self
    }
    /// Validates and returns the options.
    pub fn build(mut self) -> Result<WorkerOptions> {
        if !self.renew_set {
            self.opts.lock_renew_time = self.opts.lock_duration / 2;
        }
        self.opts.validate()?;
        Ok(self.opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bullmqs() {
        let o = WorkerOptions::builder().build().expect("valid");
        assert_eq!(o.lock_duration, Duration::from_secs(30));
        assert_eq!(o.lock_renew_time, Duration::from_secs(15));
        assert_eq!(o.stalled_interval, Duration::from_secs(30));
        assert_eq!(o.max_stalled_count, 1);
        let o = WorkerOptions::builder()
            .lock_duration(Duration::from_secs(4))
            .build()
            .expect("valid");
        assert_eq!(o.lock_renew_time, Duration::from_secs(2));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(WorkerOptions::builder().concurrency(0).build().is_err());
        assert!(WorkerOptions::builder()
            .lock_duration(Duration::from_secs(1))
            .lock_renew_time(Duration::from_secs(2))
            .build()
            .is_err());
        assert!(WorkerOptions::builder()
            .limiter(0, Duration::from_secs(1))
            .build()
            .is_err());
        assert!(WorkerOptions::builder().name("has space").build().is_err());
        assert!(WorkerOptions::builder().prefix("").build().is_err());
    }
}
