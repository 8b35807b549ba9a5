//! Connection options in the ioredis vocabulary, with role presets.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default connect timeout (ioredis `connectTimeout` is 10 s; we use the same).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default capacity of the offline queue: how many calls may wait for a connection at once.
/// ioredis' offline queue is unbounded; ours is bounded so that an outage cannot grow memory.
pub const DEFAULT_OFFLINE_QUEUE_LIMIT: usize = 10_000;
/// Default capacity of the lifecycle event channel. A subscriber that falls further behind
/// than this loses the oldest events (and is told how many) instead of growing memory.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;
/// Default idle time before TCP keep-alive probes start (ioredis `keepAlive` is 0 = system
/// default; we set an explicit value so that a dead peer is noticed in minutes, not hours).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a caller of the `producer()` preset may wait in all, outage included. The
/// promise is "fails within 2 s"; the deadline sits 200 ms below it so that scheduling on a
/// busy machine does not push the error past the promise.
pub const DEFAULT_PRODUCER_DEADLINE: Duration = Duration::from_millis(1_800);
/// How far past its own block timeout a blocking command may run before the watchdog
/// declares the connection dead (the reliability plan's P7 bound).
pub const DEFAULT_WATCHDOG_MARGIN: Duration = Duration::from_secs(1);
/// Minimum Redis version accepted. BullMQ only warns below 6.2.0; we refuse, because the
/// scripts rely on 6.2 commands and semantics.
pub const MIN_REDIS_VERSION: (u32, u32, u32) = (6, 2, 0);

/// Where the server is.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// TCP, optionally with TLS.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket.
    Unix {
        /// Path of the socket file.
        path: PathBuf,
    },
    /// A Redis Cluster, found from these seed nodes; commands go to their slot's node.
    Cluster {
        /// Seed nodes.
        seeds: Vec<(String, u16)>,
    },
    /// The master that these sentinels monitor under `master_name`, found again after every
    /// reconnect (so a failover is followed).
    Sentinel {
        /// The sentinels, tried in order.
        sentinels: Vec<(String, u16)>,
        /// The monitored master's name.
        master_name: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix { path } => write!(f, "unix:{}", path.display()),
            Endpoint::Sentinel {
                sentinels,
                master_name,
            } => {
                let hosts: Vec<String> =
                    sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                write!(f, "{}/{master_name}", hosts.join(","))
            }
            Endpoint::Cluster { seeds } => {
                let hosts: Vec<String> = seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                f.write_str(&hosts.join(","))
            }
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// TLS settings (used with `rediss://`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM file with the CA certificates to trust; the system roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Name to verify in the server's certificate; the host name when `None`.
    pub server_name: Option<String>,
}

/// What to do when the server's `maxmemory-policy` is not `noeviction`.
///
/// Any other policy lets Redis delete job hashes and locks under memory pressure, which
/// silently loses jobs. BullMQ only prints a warning; we refuse by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionCheck {
    /// Refuse to use the server (the default).
    #[default]
    Deny,
    /// Log a warning and go on.
    Warn,
    /// Do not check.
    Skip,
}

/// Server error replies after which the connection is dropped, re-established and the
/// command sent again (ioredis `reconnectOnError` returning 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectOnError {
    /// `READONLY`: the endpoint was demoted to a replica (failover); reconnecting finds the
    /// master again.
    pub readonly: bool,
    /// `LOADING`: the server restarted and is loading its dataset; the ready check of the new
    /// connection waits until loading is done.
    pub loading: bool,
}

impl Default for ReconnectOnError {
    fn default() -> Self {
        Self {
            readonly: true,
            loading: true,
        }
    }
}

type RetryFn = dyn Fn(u32) -> Option<Duration> + Send + Sync;

/// Reconnect policy: attempt number (1 for the first retry) to `Some(delay)`, or `None` to
/// give up, which ends the connection (`ConnEvent::End`).
#[derive(Clone)]
pub struct RetryStrategy {
    f: Arc<RetryFn>,
    label: &'static str,
}

impl RetryStrategy {
    /// A custom strategy.
    pub fn custom(f: impl Fn(u32) -> Option<Duration> + Send + Sync + 'static) -> Self {
        Self {
            f: Arc::new(f),
            label: "custom",
        }
    }

    /// Exponential backoff `base * 2^(attempt-1)`, clamped to `min..=max`, never giving up.
    /// The delay never decreases as the attempt number grows.
    pub fn exponential(base: Duration, min: Duration, max: Duration) -> Self {
        Self {
            f: Arc::new(move |attempt| Some(exponential_delay(attempt, base, min, max))),
            label: "exponential",
        }
    }

    /// Give up after `max_attempts` reconnect attempts, using exponential delays meanwhile.
    pub fn limited(max_attempts: u32, base: Duration, min: Duration, max: Duration) -> Self {
        Self {
            f: Arc::new(move |attempt| {
                (attempt <= max_attempts).then(|| exponential_delay(attempt, base, min, max))
            }),
            label: "limited",
        }
    }

    /// The delay before reconnect attempt `attempt`, or `None` to give up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        (self.f)(attempt)
    }
}

impl Default for RetryStrategy {
    /// Exponential from 500 ms, clamped to 1 s..20 s: ioredis' default `retryStrategy`
    /// (`min(times * 50, 2000)`) is too eager against a server that is down for long, and
    /// BullMQ recommends an exponential strategy with a 1 s floor and a 20 s cap.
    fn default() -> Self {
        Self::exponential(
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(20),
        )
    }
}

impl fmt::Debug for RetryStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryStrategy({})", self.label)
    }
}

fn exponential_delay(attempt: u32, base: Duration, min: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let raw = base.saturating_mul(1u32 << exp.min(31));
    raw.clamp(min, max.max(min))
}

/// Options of a supervised connection, in the ioredis vocabulary.
///
/// Build them with [`RedisOptions::from_url`] or one of the role presets
/// ([`RedisOptions::producer`], [`RedisOptions::worker`], [`RedisOptions::blocking`]) and
/// adjust fields with the `with_*` methods. [`RedisOptions::validate`] runs when a connection
/// is made.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Where the server is.
    pub endpoint: Endpoint,
    /// TLS settings; `Some` means TLS is used.
    pub tls: Option<TlsOptions>,
    /// Database index (`SELECT`).
    pub db: u32,
    /// ACL user name (`AUTH user password`); `None` means the default user.
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<String>,
    /// Password of the sentinels themselves (Sentinel endpoints only).
    pub sentinel_password: Option<String>,
    /// Client name (`CLIENT SETNAME`), replayed after every reconnect.
    pub client_name: Option<String>,
    /// Timeout of one connect attempt: TCP connect plus handshake (ioredis `connectTimeout`).
    pub connect_timeout: Duration,
    /// Timeout of one non-blocking command (ioredis `commandTimeout`). Never applied to
    /// blocking commands, which use their own watchdog. A timeout makes the supervisor probe
    /// the connection and replace it if the probe fails too.
    pub command_timeout: Option<Duration>,
    /// Overall deadline of one call, including waiting for a connection and retries. This is
    /// what makes the producer preset fail fast. `None`: no overall deadline.
    pub request_deadline: Option<Duration>,
    /// TCP keep-alive idle time; `None` disables keep-alive.
    pub keep_alive: Option<Duration>,
    /// Do not connect until the first command (ioredis `lazyConnect`).
    pub lazy_connect: bool,
    /// Wait until the server reports `loading:0` before declaring the connection ready
    /// (ioredis `enableReadyCheck`).
    pub enable_ready_check: bool,
    /// Reconnect policy (ioredis `retryStrategy`).
    pub retry_strategy: RetryStrategy,
    /// How many times one command is sent again after its connection was lost
    /// (ioredis `maxRetriesPerRequest`). `None`: retry forever.
    pub max_retries_per_request: Option<u32>,
    /// Let commands wait for a connection while disconnected (ioredis `enableOfflineQueue`).
    /// When off, a command issued while disconnected fails at once.
    pub enable_offline_queue: bool,
    /// Bound of the offline queue; calls beyond it fail at once.
    pub offline_queue_limit: usize,
    /// Error replies that trigger a reconnect and a resend (ioredis `reconnectOnError`).
    pub reconnect_on_error: ReconnectOnError,
    /// What to do with a `maxmemory-policy` other than `noeviction`.
    pub eviction_check: EvictionCheck,
    /// Skip the minimum-version check (not recommended).
    pub skip_version_check: bool,
    /// Capacity of the lifecycle event channel.
    pub event_capacity: usize,
    /// Blocking connections only: how long past its block timeout a blocking command may run.
    pub watchdog_margin: Duration,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("request_deadline", &self.request_deadline)
            .field("keep_alive", &self.keep_alive)
            .field("lazy_connect", &self.lazy_connect)
            .field("enable_ready_check", &self.enable_ready_check)
            .field("retry_strategy", &self.retry_strategy)
            .field("max_retries_per_request", &self.max_retries_per_request)
            .field("enable_offline_queue", &self.enable_offline_queue)
            .field("offline_queue_limit", &self.offline_queue_limit)
            .field("reconnect_on_error", &self.reconnect_on_error)
            .field("eviction_check", &self.eviction_check)
            .field("skip_version_check", &self.skip_version_check)
            .finish_non_exhaustive()
    }
}

impl Default for RedisOptions {
    /// ioredis-like defaults against `127.0.0.1:6379`: offline queue on, 20 retries per
    /// request (ioredis' `maxRetriesPerRequest` default), no command timeout.
    fn default() -> Self {
        Self {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 6379,
            },
            tls: None,
            db: 0,
            username: None,
            password: None,
            sentinel_password: None,
            client_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: None,
            request_deadline: None,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            lazy_connect: false,
            enable_ready_check: true,
            retry_strategy: RetryStrategy::default(),
            max_retries_per_request: Some(20),
            enable_offline_queue: true,
            offline_queue_limit: DEFAULT_OFFLINE_QUEUE_LIMIT,
            reconnect_on_error: ReconnectOnError::default(),
            eviction_check: EvictionCheck::Deny,
            skip_version_check: false,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            watchdog_margin: DEFAULT_WATCHDOG_MARGIN,
        }
    }
}

impl RedisOptions {
    /// Parses `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS) and
    /// `redis+unix:///path/to/socket[?db=N]` (also `unix://`). Query parameters:
    /// `db`, `client_name`, and for TLS `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name`.
    pub fn from_url(url: &str) -> Result<Self> {
        crate::url::parse(url)
    }

    /// Producer preset: **fail fast**. With Redis down, every call returns a typed error
    /// within 2 s (`request_deadline` is 1.8 s) and never hangs, so that an HTTP handler can answer
    /// its own caller at once. Reconnects quickly (100 ms..2 s) so that it is ready again
    /// soon after Redis returns.
    pub fn producer(self) -> Self {
        Self {
            connect_timeout: DEFAULT_PRODUCER_DEADLINE,
            command_timeout: Some(DEFAULT_PRODUCER_DEADLINE),
            request_deadline: Some(DEFAULT_PRODUCER_DEADLINE),
            // The deadline bounds the call; within it, ride out a short blip.
            max_retries_per_request: None,
            enable_offline_queue: true,
            retry_strategy: RetryStrategy::exponential(
                Duration::from_millis(100),
                Duration::from_millis(100),
                Duration::from_secs(2),
            ),
            ..self
        }
    }

    /// Worker preset: **wait forever, resume by itself**. Commands wait through any outage
    /// (`max_retries_per_request = None`, no overall deadline) and reconnects back off
    /// exponentially from 1 s up to 5 s, so that a worker resumes within seconds after Redis
    /// returns (the reliability plan recommends a 5 s cap rather than BullMQ's 20 s). A command
    /// timeout of 30 s still catches black-holed connections.
    pub fn worker(self) -> Self {
        Self {
            command_timeout: Some(Duration::from_secs(30)),
            request_deadline: None,
            max_retries_per_request: None,
            enable_offline_queue: true,
            retry_strategy: RetryStrategy::exponential(
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(5),
            ),
            ..self
        }
    }

    /// Blocking preset, for a dedicated [`crate::BlockingConnection`]: the worker preset
    /// without a command timeout (a blocking command legitimately waits), guarded instead by
    /// a watchdog at block timeout + 1 s.
    pub fn blocking(self) -> Self {
        Self {
            command_timeout: None,
            watchdog_margin: DEFAULT_WATCHDOG_MARGIN,
            ..self.worker()
        }
    }

    /// Whether this is a Redis Cluster endpoint (every key of one queue must then share a
    /// hash tag).
    pub fn is_cluster(&self) -> bool {
        matches!(self.endpoint, Endpoint::Cluster { .. })
    }

    /// Sets the client name.
    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Sets user name and password.
    pub fn with_auth(mut self, username: Option<&str>, password: Option<&str>) -> Self {
        self.username = username.map(str::to_owned);
        self.password = password.map(str::to_owned);
        self
    }

    /// Sets the retry strategy.
    pub fn with_retry_strategy(mut self, strategy: RetryStrategy) -> Self {
        self.retry_strategy = strategy;
        self
    }

    /// Sets the eviction-policy check.
    pub fn with_eviction_check(mut self, check: EvictionCheck) -> Self {
        self.eviction_check = check;
        self
    }

    /// Sets the command timeout.
    pub fn with_command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the overall per-call deadline.
    pub fn with_request_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.request_deadline = deadline;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Turns the offline queue on or off.
    pub fn with_offline_queue(mut self, enabled: bool) -> Self {
        self.enable_offline_queue = enabled;
        self
    }

    /// Sets `max_retries_per_request`.
    pub fn with_max_retries_per_request(mut self, retries: Option<u32>) -> Self {
        self.max_retries_per_request = retries;
        self
    }

    /// Sets lazy connect.
    pub fn with_lazy_connect(mut self, lazy: bool) -> Self {
        self.lazy_connect = lazy;
        self
    }

    /// Checks the options for values that cannot work.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::InvalidOptions {
                field,
                reason: reason.to_owned(),
            })
        };
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                if host.is_empty() {
                    return bad("host", "must not be empty");
                }
                if *port == 0 {
                    return bad("port", "must be between 1 and 65535");
                }
            }
            Endpoint::Unix { path } => {
                if path.as_os_str().is_empty() {
                    return bad("path", "unix socket path must not be empty");
                }
                if self.tls.is_some() {
                    return bad("tls", "TLS over a unix socket is not supported");
                }
            }
            Endpoint::Sentinel {
                sentinels,
                master_name,
            } => {
                if sentinels.is_empty() {
                    return bad("sentinels", "at least one sentinel is needed");
                }
                if sentinels.iter().any(|(h, p)| h.is_empty() || *p == 0) {
                    return bad(
                        "sentinels",
                        "every sentinel needs a host and a port between 1 and 65535",
                    );
                }
                if master_name.is_empty() {
                    return bad("master_name", "must not be empty");
                }
            }
            Endpoint::Cluster { seeds } => {
                if seeds.is_empty() || seeds.iter().any(|(h, p)| h.is_empty() || *p == 0) {
                    return bad(
                        "seeds",
                        "at least one seed node with a host and a port is needed",
                    );
                }
                if self.db != 0 {
                    return bad("db", "Redis Cluster has only database 0");
                }
                if self.tls.is_some() {
                    return bad("tls", "TLS to a cluster is not supported yet");
                }
            }
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be greater than zero");
        }
        if self.command_timeout.is_some_and(|t| t.is_zero()) {
            return bad("command_timeout", "must be greater than zero when set");
        }
        if self.request_deadline.is_some_and(|t| t.is_zero()) {
            return bad("request_deadline", "must be greater than zero when set");
        }
        if self.offline_queue_limit == 0 && self.enable_offline_queue {
            return bad(
                "offline_queue_limit",
                "must be at least 1 when the offline queue is enabled",
            );
        }
        if self.event_capacity == 0 {
            return bad("event_capacity", "must be at least 1");
        }
        if let Some(name) = &self.client_name {
            if name.is_empty() || name.bytes().any(|b| b == b' ' || b == b'\n' || b == b'\r') {
                return bad("client_name", "must be non-empty and contain no spaces");
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return bad(
                    "tls",
                    "a client certificate and its key must be given together",
                );
            }
        }
        if self.username.is_some() && self.password.is_none() {
            return bad("password", "an ACL user name needs a password");
        }
        Ok(())
    }

    /// The endpoint with credentials removed, for logs and errors.
    pub fn redacted_target(&self) -> String {
        let scheme = match (&self.endpoint, &self.tls) {
            (Endpoint::Unix { .. }, _) => "redis+unix",
            (Endpoint::Sentinel { .. }, _) => "redis+sentinel",
            (Endpoint::Cluster { .. }, _) => "redis+cluster",
            (_, Some(_)) => "rediss",
            _ => "redis",
        };
        match &self.endpoint {
            Endpoint::Unix { path } => format!("{scheme}://{}", path.display()),
            ep => format!("{scheme}://{ep}/{}", self.db),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_strategy_starts_at_one_second_and_caps_at_twenty() {
        let s = RetryStrategy::default();
        assert_eq!(s.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(s.delay(2), Some(Duration::from_secs(1)));
        assert_eq!(s.delay(3), Some(Duration::from_secs(2)));
        assert_eq!(s.delay(100), Some(Duration::from_secs(20)));
        assert_eq!(s.delay(u32::MAX), Some(Duration::from_secs(20)));
    }

    #[test]
    fn limited_strategy_gives_up() {
        let s = RetryStrategy::limited(
            2,
            Duration::from_millis(10),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        assert!(s.delay(2).is_some());
        assert_eq!(s.delay(3), None);
    }

    #[test]
    fn debug_redacts_password() {
        let o = RedisOptions::default().with_auth(Some("u"), Some("s3cret"));
        let d = format!("{o:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn validation_rejects_nonsense() {
        let o = RedisOptions {
            endpoint: Endpoint::Tcp {
                host: "h".into(),
                port: 0,
            },
            ..RedisOptions::default()
        };
        assert!(matches!(
            o.validate(),
            Err(Error::InvalidOptions { field: "port", .. })
        ));
        let o = RedisOptions::default().with_command_timeout(Some(Duration::ZERO));
        assert!(o.validate().is_err());
        let o = RedisOptions::default().with_auth(Some("user"), None);
        assert!(o.validate().is_err());
        let o = RedisOptions::default().with_client_name("has space");
        assert!(o.validate().is_err());
        assert!(RedisOptions::default().validate().is_ok());
        assert!(RedisOptions::default().producer().validate().is_ok());
        assert!(RedisOptions::default().blocking().validate().is_ok());
    }

    #[test]
    fn presets_follow_their_roles() {
        let p = RedisOptions::default().producer();
        assert_eq!(p.request_deadline, Some(DEFAULT_PRODUCER_DEADLINE));
        let w = RedisOptions::default().worker();
        assert_eq!(w.max_retries_per_request, None);
        assert_eq!(w.request_deadline, None);
        let b = RedisOptions::default().blocking();
        assert_eq!(b.command_timeout, None);
        assert_eq!(b.max_retries_per_request, None);
    }

    proptest! {
        #[test]
        fn default_strategy_is_bounded_and_monotonic(a in 1u32..u32::MAX) {
            let s = RetryStrategy::default();
            let d1 = s.delay(a).expect("default never gives up");
            let d2 = s.delay(a + 1).expect("default never gives up");
            prop_assert!(d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(20));
            prop_assert!(d2 >= d1, "delay decreased: {:?} -> {:?}", d1, d2);
        }

        #[test]
        fn exponential_respects_any_bounds(a in 0u32..10_000, base in 0u64..10_000, lo in 0u64..5_000, span in 0u64..60_000) {
            let (min, max) = (Duration::from_millis(lo), Duration::from_millis(lo + span));
            let s = RetryStrategy::exponential(Duration::from_millis(base), min, max);
            let d = s.delay(a).expect("never gives up");
            prop_assert!(d >= min && d <= max);
            prop_assert!(s.delay(a + 1).expect("never gives up") >= d);
        }
    }
}
