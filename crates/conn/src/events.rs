//! Lifecycle events and connection states.

use std::time::Duration;

use crate::error::{EndReason, Error};
use crate::info::ServerInfo;

/// A lifecycle event, named after ioredis' events.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ConnEvent {
    /// The socket is open; the handshake starts.
    Connect,
    /// Handshake, ready check and server checks passed; commands flow.
    Ready {
        /// What `INFO` said, when the user may read it.
        server: Option<ServerInfo>,
    },
    /// A connect attempt failed (the error says why: I/O, authentication, checks...).
    Error {
        /// The failure.
        error: Error,
    },
    /// An established connection was lost.
    Close,
    /// The supervisor will try again after `delay`.
    Reconnecting {
        /// Attempt number, 1 for the first retry after a loss or failure.
        attempt: u32,
        /// Delay chosen by the retry strategy.
        delay: Duration,
    },
    /// The connection is over for good.
    End {
        /// Why.
        reason: EndReason,
    },
}

/// The state of a supervised connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnState {
    /// Lazy connect: waiting for the first command.
    Idle,
    /// Not connected; the supervisor is trying.
    Connecting,
    /// Connected and checked.
    Ready,
    /// Closed, or the retry strategy gave up.
    Ended,
}

impl std::fmt::Display for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnState::Idle => "idle",
            ConnState::Connecting => "connecting",
            ConnState::Ready => "ready",
            ConnState::Ended => "ended",
        })
    }
}
