//! The crate's one error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::info::ServerKind;

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a failed call could have changed the server's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The command was never sent, or the server refused it before running it: retrying is safe.
    No,
    /// The command was sent and no answer came back: it may have run.
    Unknown,
}

/// Everything that can go wrong in `bullpen-conn`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option has a value that cannot work.
    #[error("invalid option `{field}`: {reason}")]
    InvalidOptions {
        /// The option.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A connection URL could not be used (credentials are redacted).
    #[error("invalid redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with its password redacted.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The socket could not be opened.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Redacted target.
        target: String,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Connect plus handshake took longer than `connect_timeout`.
    #[error("connecting to {target} timed out after {after:?} ({hint})")]
    ConnectTimeout {
        /// Redacted target.
        target: String,
        /// The timeout.
        after: Duration,
        /// What usually causes it.
        hint: &'static str,
    },
    /// `AUTH` was refused, or the server needs a password that was not given.
    #[error("authentication failed at {target} for user `{user}`: {detail}")]
    Auth {
        /// Redacted target.
        target: String,
        /// The user name (`default` when none was given).
        user: String,
        /// The server's reply, which never contains the password.
        detail: String,
    },
    /// The ACL user may not run a command.
    #[error("permission denied for `{command}` at {target}: {detail}")]
    Permission {
        /// Redacted target.
        target: String,
        /// The command refused.
        command: String,
        /// The server's reply.
        detail: String,
    },
    /// The peer answered, but not as Redis does.
    #[error("{target} did not answer like a redis server ({detail}); check the port, and whether the server needs TLS")]
    Protocol {
        /// Redacted target.
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// TLS could not be set up.
    #[error("tls error for {target}: {detail}")]
    Tls {
        /// Redacted target.
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// The server is older than the minimum version.
    #[error("unsupported server at {target}: {kind} {found} is older than the minimum {min}")]
    UnsupportedServer {
        /// Redacted target.
        target: String,
        /// Server kind.
        kind: ServerKind,
        /// Version found.
        found: String,
        /// Minimum version.
        min: String,
    },
    /// `maxmemory-policy` is not `noeviction` and the check is `Deny`.
    #[error("maxmemory-policy is `{policy}` at {target}, but job queues need `noeviction` (other policies let redis evict jobs and locks): run `CONFIG SET maxmemory-policy noeviction` and set it in redis.conf, or opt out with `eviction_check = EvictionCheck::Warn` or `EvictionCheck::Skip`")]
    EvictionPolicy {
        /// Redacted target.
        target: String,
        /// The policy found.
        policy: String,
    },
    /// The connection is down and the offline queue is disabled.
    #[error("not connected to {target} and the offline queue is disabled{}", last(.last_error))]
    Offline {
        /// Redacted target.
        target: String,
        /// Why the last connect attempt failed, if one did.
        last_error: Option<Box<Error>>,
    },
    /// Too many calls are already waiting for a connection.
    #[error("offline queue full: {limit} calls are already waiting for {target}")]
    OfflineQueueFull {
        /// Redacted target.
        target: String,
        /// The bound.
        limit: usize,
    },
    /// No connection became ready within the call's deadline.
    #[error("redis at {target} unavailable: no connection within {waited:?}{}", last(.last_error))]
    Unavailable {
        /// Redacted target.
        target: String,
        /// How long the call waited.
        waited: Duration,
        /// Why the last connect attempt failed, if one did.
        last_error: Option<Box<Error>>,
    },
    /// A command got no reply within `command_timeout` or the call's deadline.
    #[error("`{command}` got no reply within {after:?}; it may or may not have been applied")]
    CommandTimeout {
        /// The command name.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection broke while a command was in flight, and it was not sent again.
    #[error("connection lost during `{command}`; it may or may not have been applied: {source}")]
    ConnectionLost {
        /// The command name.
        command: String,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },
    /// A command was retried `max_retries_per_request` times across reconnects.
    #[error("`{command}` failed after {retries} retries (max_retries_per_request): {last}")]
    MaxRetriesPerRequest {
        /// The command name.
        command: String,
        /// Retries made.
        retries: u32,
        /// The last failure.
        last: Box<Error>,
    },
    /// A blocking command ran past block timeout + margin; the connection was replaced.
    #[error("blocking `{command}` got no reply within {after:?} (block timeout plus watchdog margin); the connection was replaced")]
    Watchdog {
        /// The command name.
        command: String,
        /// Block timeout plus margin.
        after: Duration,
    },
    /// The connection was closed, or its retry strategy gave up.
    #[error("connection to {target} ended ({reason}){}", last(.last_error))]
    Ended {
        /// Redacted target.
        target: String,
        /// Why it ended.
        reason: EndReason,
        /// The failure that preceded the end, if any.
        last_error: Option<Box<Error>>,
    },
    /// The server answered with an error reply.
    #[error("`{command}` failed: {source}")]
    Server {
        /// The command name.
        command: String,
        /// The server's error.
        #[source]
        source: redis::RedisError,
    },
    /// The reply could not be converted to the type asked for.
    #[error("unexpected reply to `{command}`: {source}")]
    Response {
        /// The command name.
        command: String,
        /// The conversion error.
        #[source]
        source: redis::RedisError,
    },
}

fn last(e: &Option<Box<Error>>) -> String {
    match e {
        Some(e) => format!("; last error: {e}"),
        None => String::new(),
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// `close()` was called or every handle was dropped.
    Closed,
    /// The retry strategy returned `None`.
    RetryStrategyGaveUp,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Closed => "closed",
            EndReason::RetryStrategyGaveUp => "the retry strategy gave up",
        })
    }
}

impl Error {
    /// Whether the failed call may have changed the server's data.
    pub fn applied(&self) -> Applied {
        match self {
            Error::CommandTimeout { .. }
            | Error::ConnectionLost { .. }
            | Error::Watchdog { .. }
            | Error::Server { .. }
            | Error::Response { .. } => Applied::Unknown,
            Error::MaxRetriesPerRequest { last, .. } => last.applied(),
            _ => Applied::No,
        }
    }

    /// A configuration problem that retrying cannot fix by itself: bad options, credentials,
    /// permissions, TLS, a peer that is not Redis, an old server or a wrong eviction policy.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Error::InvalidOptions { .. }
                | Error::InvalidUrl { .. }
                | Error::Auth { .. }
                | Error::Permission { .. }
                | Error::Protocol { .. }
                | Error::Tls { .. }
                | Error::UnsupportedServer { .. }
                | Error::EvictionPolicy { .. }
        )
    }

    /// The innermost connect failure behind an availability error, if any.
    pub fn last_connect_error(&self) -> Option<&Error> {
        match self {
            Error::Offline { last_error, .. }
            | Error::Unavailable { last_error, .. }
            | Error::Ended { last_error, .. } => last_error.as_deref(),
            _ => None,
        }
    }

    /// The Redis error code of a server error reply (`ERR`, `WRONGTYPE`, `NOSCRIPT`, ...).
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Server { source, .. } => source.code(),
            Error::MaxRetriesPerRequest { last, .. } => last.server_code(),
            _ => None,
        }
    }
}
