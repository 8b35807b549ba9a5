//! `bullpen-conn`: Redis connections that survive.
//!
//! This crate knows nothing about jobs; any service can use it. It owns:
//!
//! * [`RedisOptions`]: the ioredis vocabulary (`retry_strategy`, `max_retries_per_request`,
//!   `enable_offline_queue`, `connect_timeout`, `command_timeout`, keep-alive,
//!   `lazy_connect`, `enable_ready_check`, `reconnect_on_error`), validated, with the role
//!   presets [`RedisOptions::producer`] (fail fast), [`RedisOptions::worker`] (wait forever)
//!   and [`RedisOptions::blocking`] (no response timeout, a watchdog instead);
//! * [`Connection`]: a multiplexed connection watched by a supervisor task that reconnects
//!   with the retry strategy and replays `AUTH`, `SELECT` and `CLIENT SETNAME` every time;
//! * [`BlockingConnection`]: a dedicated connection for blocking commands, never re-sent
//!   by itself;
//! * Redis Cluster (`redis+cluster://`): commands follow their slot; when a node dies or a
//!   failover moves a slot, the cluster client is rebuilt from every node known so far (not
//!   just the configured seeds) and swapped in while the old one still serves;
//! * lifecycle events ([`ConnEvent`]) on a bounded broadcast channel;
//! * server checks when a connection becomes ready (minimum version 6.2, `maxmemory-policy`
//!   must be `noeviction` unless opted out) and [`Connection::health`];
//! * a bb8 [`Pool`] of supervised connections.
//!
//! Invariants: a caller never holds the socket, only a clone of the current link, so a
//! reconnect never wedges a caller; every wait has a bound or is documented as unbounded
//! (the worker preset); errors say whether the command may have been applied
//! ([`Error::applied`]).
//!
//! ```no_run
//! use bullpen_conn::{Connection, RedisOptions};
//!
//! # async fn run() -> bullpen_conn::Result<()> {
//! let opts = RedisOptions::from_url("redis://127.0.0.1:6379/0")?.producer();
//! let conn = Connection::connect(opts).await?;
//! let _: () = conn.query(redis::cmd("SET").arg("greeting").arg("hello")).await?;
//! let health = conn.health().await?;
//! println!("{} {} in {:?}", health.kind, health.version, health.ping_latency);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod client;
mod cluster;
mod dial;
mod error;
mod events;
mod health;
mod info;
mod options;
mod pool;
mod raw;
mod sentinel;
mod tls;
mod url;

pub use client::{BlockingConnection, Connection};
pub use error::{Applied, EndReason, Error, Result};
pub use events::{ConnEvent, ConnState};
pub use health::Health;
pub use info::{parse_version, ServerInfo, ServerKind};
pub use options::{
    Endpoint, EvictionCheck, ReconnectOnError, RedisOptions, RetryStrategy, TlsOptions,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_KEEP_ALIVE,
    DEFAULT_OFFLINE_QUEUE_LIMIT, DEFAULT_PRODUCER_DEADLINE, DEFAULT_WATCHDOG_MARGIN,
    MIN_REDIS_VERSION,
};
pub use pool::{Pool, PoolManager};
/// The redis-rs crate this one builds on, for building commands (`redis::cmd`).
pub use redis;
