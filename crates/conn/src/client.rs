//! Supervised connections: one supervisor task per connection owns the socket, reconnects
//! with the retry strategy and publishes the current link; callers only ever borrow it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, ServerErrorKind, Value};
use tokio::sync::{broadcast, mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::dial::{dial, DialContext};
use crate::error::{EndReason, Error, Result};
use crate::events::{ConnEvent, ConnState};
use crate::health::Health;
use crate::info::ServerInfo;
use crate::options::{Endpoint, RedisOptions};

/// The connection the supervisor currently offers.
#[derive(Clone)]
pub(crate) struct Link {
    generation: u64,
    conn: crate::raw::RawConn,
    server: Option<Arc<ServerInfo>>,
}

#[derive(Clone)]
enum LinkState {
    /// Lazy connect: nothing tried yet.
    Idle,
    /// Not connected. `failures` counts every failed attempt since the supervisor started.
    Connecting {
        failures: u64,
        last_error: Option<Error>,
    },
    Ready(Link),
    Ended {
        reason: EndReason,
        last_error: Option<Error>,
    },
}

enum Kick {
    /// An I/O error or a reconnect-on-error reply was seen on this generation.
    Broken(u64),
    /// Cluster only: a node of this generation's client is gone or the cluster is failing
    /// over. Build a new client from every known node and swap it in while the old one keeps
    /// serving; if no node can be used, treat the link as broken.
    Refresh(u64),
    /// A command timed out on this generation: probe it, replace it if the probe fails.
    Suspect(u64),
    /// `close()`.
    Close,
}

/// The shortest time between two cluster client rebuilds, so that a burst of failing
/// commands (one per caller) costs one rebuild. It doubles for each rebuild that follows
/// within [`REFRESH_STREAK_RESET`] of the previous one, up to [`MAX_REFRESH_INTERVAL`]: a
/// dead master keeps failing its slot's commands for seconds until its replica is promoted,
/// and every client of the cluster must not rebuild at full rate meanwhile.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const REFRESH_STREAK_RESET: Duration = Duration::from_secs(5);

struct Shared {
    opts: RedisOptions,
    ctx: DialContext,
    target: String,
    state: watch::Sender<LinkState>,
    events: broadcast::Sender<ConnEvent>,
    offline: Semaphore,
    start: Notify,
}

impl Shared {
    fn emit(&self, event: ConnEvent) {
        // No receivers is fine; a lagging receiver loses the oldest events, bounded.
        let _ = self.events.send(event);
    }
}

/// A supervised, multiplexed Redis connection. Cheap to clone; all clones share one socket.
/// When the last clone is dropped the supervisor stops.
///
/// Non-blocking commands only: blocking commands belong on a [`BlockingConnection`].
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    kick: mpsc::Sender<Kick>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.shared.target)
            .field("state", &self.state())
            .finish()
    }
}

fn command_name(args: Option<redis::Arg<&[u8]>>) -> String {
    match args {
        Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).to_ascii_uppercase(),
        _ => "?".into(),
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // A cluster client that lost every node it knew.
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

/// Replies by which a cluster refuses a command without running it (a slot moved or moving,
/// the cluster or the slot's master down): sending it again is always safe. Redirections
/// count only on a cluster link: a plain connection to a cluster node cannot follow them,
/// and must report them instead of sending the command again forever.
fn is_refused(e: &RedisError, cluster: bool) -> bool {
    // A master configured with `min-replicas-to-write` refuses writes before running them
    // while it has too few replicas, as an old master does once a failover has taken its
    // replica (the Sentinel watch then moves the link to the new master).
    if e.code() == Some("NOREPLICAS") {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown,
        ) => true,
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => cluster,
        _ => false,
    }
}

/// Refusals that mean the cluster's topology is changing (a node failed, a failover), so a
/// cluster client should be rebuilt from the nodes' current view. (`MOVED` makes redis-rs
/// rebuild its slot map by itself.)
fn topology_changed(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ClusterDown)
            | ErrorKind::Server(ServerErrorKind::MasterDown)
    ) || e.code() == Some("UNBLOCKED")
}

/// Backoff between sends of a refused command: 50 ms doubling to 800 ms.
fn refused_backoff(retries: u32) -> Duration {
    Duration::from_millis(50u64 << retries.min(4))
}

impl Connection {
    /// Starts the supervisor. Unless `lazy_connect` is set, waits for the first connection:
    /// returns it when ready, fails at once on a configuration error (bad password, wrong
    /// eviction policy, not a Redis server...), and otherwise keeps trying within the
    /// options' `request_deadline` (forever when there is none, as in the worker preset).
    pub async fn connect(opts: RedisOptions) -> Result<Self> {
        Self::connect_with(opts, false).await
    }

    async fn connect_with(opts: RedisOptions, blocking: bool) -> Result<Self> {
        opts.validate()?;
        let lazy = opts.lazy_connect;
        let deadline = opts.request_deadline.map(|d| Instant::now() + d);
        let conn = Self::spawn(opts, blocking);
        if lazy {
            return Ok(conn);
        }
        let mut rx = conn.shared.state.subscribe();
        let started = Instant::now();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                LinkState::Ready(_) => return Ok(conn),
                LinkState::Ended { reason, last_error } => {
                    return Err(conn.ended_error(reason, last_error))
                }
                LinkState::Connecting {
                    last_error: Some(e),
                    ..
                } if e.is_configuration() => {
                    conn.close();
                    return Err(e);
                }
                _ => {}
            }
            let changed = rx.changed();
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d, changed).await.ok(),
                None => Some(changed.await),
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(conn.ended_error(EndReason::Closed, None)),
                None => {
                    let last = conn.last_error();
                    conn.close();
                    return Err(Error::Unavailable {
                        target: conn.shared.target.clone(),
                        waited: started.elapsed(),
                        last_error: last.map(Box::new),
                    });
                }
            }
        }
    }

    fn spawn(opts: RedisOptions, blocking: bool) -> Self {
        let (events, _) = broadcast::channel(opts.event_capacity);
        let initial = if opts.lazy_connect {
            LinkState::Idle
        } else {
            LinkState::Connecting {
                failures: 0,
                last_error: None,
            }
        };
        let (state, _) = watch::channel(initial);
        let (kick, kicks) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            target: opts.redacted_target(),
            offline: Semaphore::new(opts.offline_queue_limit.max(1)),
            opts,
            ctx: DialContext {
                blocking,
                ..DialContext::default()
            },
            state,
            events,
            start: Notify::new(),
        });
        tokio::spawn(supervise(shared.clone(), kicks));
        Self { shared, kick }
    }

    /// Subscribes to lifecycle events. The channel is bounded: a subscriber that falls behind
    /// by more than `event_capacity` events gets `RecvError::Lagged(n)` and loses the oldest
    /// ones, so a slow subscriber never grows memory.
    pub fn events(&self) -> broadcast::Receiver<ConnEvent> {
        self.shared.events.subscribe()
    }

    /// The connection's current state.
    pub fn state(&self) -> ConnState {
        match &*self.shared.state.borrow() {
            LinkState::Idle => ConnState::Idle,
            LinkState::Connecting { .. } => ConnState::Connecting,
            LinkState::Ready(_) => ConnState::Ready,
            LinkState::Ended { .. } => ConnState::Ended,
        }
    }

    /// How many calls are waiting for a connection right now (the offline queue's length;
    /// its bound is `offline_queue_limit`). Useful as a metric during outages.
    pub fn waiting_calls(&self) -> usize {
        self.shared
            .opts
            .offline_queue_limit
            .max(1)
            .saturating_sub(self.shared.offline.available_permits())
    }

    /// The options this connection was made with.
    pub fn options(&self) -> &RedisOptions {
        &self.shared.opts
    }

    /// What `INFO` said when the current connection became ready.
    pub fn server_info(&self) -> Option<Arc<ServerInfo>> {
        match &*self.shared.state.borrow() {
            LinkState::Ready(l) => l.server.clone(),
            _ => None,
        }
    }

    /// Waits until the connection is ready, within `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.link(
            "(wait_ready)",
            Some(Instant::now() + timeout),
            Instant::now(),
        )
        .await
        .map(|_| ())
    }

    /// Ends the connection: the supervisor closes the socket and emits `End`; later calls
    /// fail with [`Error::Ended`].
    pub fn close(&self) {
        let _ = self.kick.try_send(Kick::Close);
    }

    fn last_error(&self) -> Option<Error> {
        match &*self.shared.state.borrow() {
            LinkState::Connecting { last_error, .. } | LinkState::Ended { last_error, .. } => {
                last_error.clone()
            }
            _ => None,
        }
    }

    fn ended_error(&self, reason: EndReason, last_error: Option<Error>) -> Error {
        Error::Ended {
            target: self.shared.target.clone(),
            reason,
            last_error: last_error.map(Box::new),
        }
    }

    /// Waits for a ready link, honouring the offline queue, its bound, the deadline and
    /// `max_retries_per_request` (failed connect attempts seen while waiting count as retries).
    async fn link(
        &self,
        command: &str,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Link> {
        let opts = &self.shared.opts;
        let mut rx = self.shared.state.subscribe();
        let mut permit = None;
        let mut first_failures = None;
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                LinkState::Ready(link) => return Ok(link),
                LinkState::Ended { reason, last_error } => {
                    return Err(self.ended_error(reason, last_error))
                }
                LinkState::Idle => self.shared.start.notify_one(),
                LinkState::Connecting {
                    failures,
                    last_error,
                } => {
                    if !opts.enable_offline_queue {
                        return Err(Error::Offline {
                            target: self.shared.target.clone(),
                            last_error: last_error.map(Box::new),
                        });
                    }
                    let first = *first_failures.get_or_insert(failures);
                    if let (Some(max), Some(e)) = (opts.max_retries_per_request, &last_error) {
                        let seen = failures - first;
                        if seen > u64::from(max) {
                            return Err(Error::MaxRetriesPerRequest {
                                command: command.to_owned(),
                                retries: u32::try_from(seen).unwrap_or(u32::MAX),
                                last: Box::new(e.clone()),
                            });
                        }
                    }
                    if let Some(e) = &last_error {
                        if e.is_configuration() && deadline.is_some() {
                            // Fail fast callers at once on errors that waiting will not fix.
                            return Err(Error::Unavailable {
                                target: self.shared.target.clone(),
                                waited: started.elapsed(),
                                last_error: Some(Box::new(e.clone())),
                            });
                        }
                    }
                }
            }
            if permit.is_none() {
                permit = Some(self.shared.offline.try_acquire().map_err(|_| {
                    Error::OfflineQueueFull {
                        target: self.shared.target.clone(),
                        limit: opts.offline_queue_limit,
                    }
                })?);
            }
            let changed = rx.changed();
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d, changed).await.ok(),
                None => Some(changed.await),
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(self.ended_error(EndReason::Closed, None)),
                None => {
                    return Err(Error::Unavailable {
                        target: self.shared.target.clone(),
                        waited: started.elapsed(),
                        last_error: self.last_error().map(Box::new),
                    })
                }
            }
        }
    }

    /// Runs one command. On a lost connection the command is sent again once a new
    /// connection is ready, up to `max_retries_per_request` times (as ioredis does); the
    /// error then says whether the command may have been applied ([`Error::applied`]).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.query_with(cmd, true).await
    }

    /// Like [`Connection::query`], but a command that may have reached the server before the
    /// connection broke is not sent again: the call fails with [`Error::ConnectionLost`]
    /// (applied: unknown). For commands that must not run twice, such as an add with an
    /// automatic id. A command that surely did not run (no connection yet, or refused by a
    /// cluster in transition) is still sent again within the usual limits.
    pub async fn query_at_most_once<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.query_with(cmd, false).await
    }

    async fn query_with<T: FromRedisValue>(&self, cmd: &Cmd, resend: bool) -> Result<T> {
        let name = command_name(cmd.args_iter().next());
        let value = self
            .run(&name, resend, |mut c| async move {
                cmd.query_async::<Value>(&mut c).await
            })
            .await?;
        T::from_redis_value(value).map_err(|source| Error::Response {
            command: name,
            source: source.into(),
        })
    }

    /// Runs a pipeline (atomic when built with `.atomic()`), with the same retry rules as
    /// [`Connection::query`].
    pub async fn query_pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let name = format!("pipeline of {}", pipe.cmd_iter().map(|_| 1).sum::<usize>());
        let value = self
            .run(&name, true, |mut c| async move {
                pipe.query_async::<Value>(&mut c).await
            })
            .await?;
        T::from_redis_value(value).map_err(|source| Error::Response {
            command: name,
            source: source.into(),
        })
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::Protocol {
                target: self.shared.target.clone(),
                detail: format!("PING answered `{pong}`"),
            })
        }
    }

    /// Ping latency, server facts and connection state, for health endpoints.
    pub async fn health(&self) -> Result<Health> {
        let t = Instant::now();
        self.ping().await?;
        let latency = t.elapsed();
        let v: Value = self.query(&redis::cmd("INFO")).await?;
        let text = crate::info::info_texts(&v)
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(Health::new(self.state(), latency, ServerInfo::parse(&text)))
    }

    async fn run<'a, F, Fut>(&self, name: &str, resend: bool, send: F) -> Result<Value>
    where
        F: Fn(crate::raw::RawConn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<Value>> + 'a,
    {
        let opts = &self.shared.opts;
        let started = Instant::now();
        let deadline = opts.request_deadline.map(|d| started + d);
        let mut retries: u32 = 0;
        loop {
            let link = self.link(name, deadline, started).await?;
            let mut per_try = opts.command_timeout;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                per_try = Some(per_try.map_or(left, |t| t.min(left)));
            }
            let fut = send(link.conn.clone());
            let result = match per_try {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        let _ = self.kick.try_send(Kick::Suspect(link.generation));
                        return Err(Error::CommandTimeout {
                            command: name.to_owned(),
                            after: t,
                        });
                    }
                },
                None => fut.await,
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // A cluster in transition (slot migration, failover) refused the command without
            // running it: send it again with backoff, within the retry budget and the
            // deadline, on whatever link is current by then. When the cluster is failing
            // over, first have the client rebuilt from the nodes' current view.
            let cluster = link.conn.is_cluster();
            if is_refused(&err, cluster) {
                if opts.max_retries_per_request.is_some_and(|m| retries >= m) {
                    return Err(Error::MaxRetriesPerRequest {
                        command: name.to_owned(),
                        retries,
                        last: Box::new(Error::Server {
                            command: name.to_owned(),
                            source: err,
                        }),
                    });
                }
                let wait = refused_backoff(retries);
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
                    return Err(Error::Server {
                        command: name.to_owned(),
                        source: err,
                    });
                }
                if cluster && topology_changed(&err) {
                    let _ = self.kick.try_send(Kick::Refresh(link.generation));
                }
                retries += 1;
                tracing::debug!(command = name, retries, error = %err, "cluster busy; sending again");
                tokio::time::sleep(wait).await;
                continue;
            }
            let reconnect = is_connection_error(&err)
                || (opts.reconnect_on_error.readonly
                    && err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly))
                || (opts.reconnect_on_error.loading
                    && err.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading));
            if !reconnect {
                return Err(Error::Server {
                    command: name.to_owned(),
                    source: err,
                });
            }
            let _ = self.kick.try_send(if cluster {
                Kick::Refresh(link.generation)
            } else {
                Kick::Broken(link.generation)
            });
            let this = if is_connection_error(&err) {
                if !resend {
                    return Err(Error::ConnectionLost {
                        command: name.to_owned(),
                        source: err,
                    });
                }
                Error::ConnectionLost {
                    command: name.to_owned(),
                    source: err,
                }
            } else {
                Error::Server {
                    command: name.to_owned(),
                    source: err,
                }
            };
            if opts.max_retries_per_request.is_some_and(|m| retries >= m) {
                return Err(Error::MaxRetriesPerRequest {
                    command: name.to_owned(),
                    retries,
                    last: Box::new(this),
                });
            }
            retries += 1;
            tracing::debug!(command = name, retries, error = %this, "sending the command again after a reconnect");
            // Wait for a *new* link before sending again.
            self.wait_generation_after(link.generation, deadline, started)
                .await?;
        }
    }

    async fn wait_generation_after(
        &self,
        generation: u64,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<()> {
        let mut rx = self.shared.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LinkState::Ready(l) if l.generation == generation => {}
                _ => return Ok(()),
            }
            let changed = rx.changed();
            let outcome = match deadline {
                Some(d) => tokio::time::timeout_at(d, changed).await.ok(),
                None => Some(changed.await),
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(self.ended_error(EndReason::Closed, None)),
                None => {
                    return Err(Error::Unavailable {
                        target: self.shared.target.clone(),
                        waited: started.elapsed(),
                        last_error: self.last_error().map(Box::new),
                    })
                }
            }
        }
    }
}

/// A dedicated connection for blocking commands (`BZPOPMIN`, `XREAD BLOCK`, ...).
///
/// It has no command timeout, because a blocking command legitimately waits; instead a
/// watchdog fires at block timeout + `watchdog_margin` and replaces the connection, so no
/// blocking call stays outstanding longer than that even on a black-holed socket. A blocking
/// command is **never sent again by itself** once it may have run: after a failure the caller
/// decides. The one exception is a Redis Cluster reply that proves it did not run (`MOVED`
/// or `TRYAGAIN`, `CLUSTERDOWN` during a failover, `UNBLOCKED` from a master demoted while
/// the command waited): it is sent again, with backoff, for at most half the watchdog margin.
#[derive(Clone, Debug)]
pub struct BlockingConnection {
    inner: Connection,
}

impl BlockingConnection {
    /// Connects with `opts` (normally `RedisOptions::blocking()`); the command timeout is
    /// ignored for blocking calls.
    pub async fn connect(opts: RedisOptions) -> Result<Self> {
        Ok(Self {
            inner: Connection::connect_with(opts, true).await?,
        })
    }

    /// Runs a blocking command whose server-side timeout is `block_timeout` (which must be
    /// greater than zero, so that the watchdog can bound it). Waits for a connection as the
    /// options say (forever in the blocking preset).
    pub async fn block<T: FromRedisValue>(&self, cmd: &Cmd, block_timeout: Duration) -> Result<T> {
        if block_timeout.is_zero() {
            return Err(Error::InvalidOptions {
                field: "block_timeout",
                reason: "must be greater than zero; an endless block cannot be watched".into(),
            });
        }
        let c = &self.inner;
        let name = command_name(cmd.args_iter().next());
        let started = Instant::now();
        let deadline = c.shared.opts.request_deadline.map(|d| started + d);
        let link = c.link(&name, deadline, started).await?;
        let margin = c.shared.opts.watchdog_margin;
        let watchdog = block_timeout + margin;
        let cluster = link.conn.is_cluster();
        // The generation of the link the command was last sent on, for the kicks below.
        let generation = AtomicU64::new(link.generation);
        let attempt = async {
            let sent = Instant::now();
            let mut link = link;
            let mut tries: u32 = 0;
            loop {
                let mut conn = link.conn.clone();
                let r = cmd.query_async::<Value>(&mut conn).await;
                // On a cluster, a refusal (`MOVED` after a failover, `CLUSTERDOWN` during one,
                // `UNBLOCKED` from a master demoted while we waited) proves the command did
                // not run, so it is sent again, briefly enough to stay within the watchdog.
                let wait = refused_backoff(tries);
                match r {
                    Err(e)
                        if cluster
                            && (is_refused(&e, true) || e.code() == Some("UNBLOCKED"))
                            && sent.elapsed() + wait <= margin / 2 =>
                    {
                        if topology_changed(&e) {
                            let _ = c.kick.try_send(Kick::Refresh(link.generation));
                        }
                        tries += 1;
                        tracing::debug!(command = %name, tries, error = %e, "cluster refused a blocking command; sending it again");
                        tokio::time::sleep(wait).await;
                        link = c.link(&name, deadline, started).await?;
                        generation.store(link.generation, Ordering::Relaxed);
                    }
                    other => return Ok(other),
                }
            }
        };
        let gen = || generation.load(Ordering::Relaxed);
        let replace = |g: u64| {
            if cluster {
                Kick::Refresh(g)
            } else {
                Kick::Broken(g)
            }
        };
        let result = tokio::time::timeout(watchdog, attempt).await;
        let err = match result {
            Ok(Ok(Ok(v))) => {
                return T::from_redis_value(v).map_err(|source| Error::Response {
                    command: name,
                    source: source.into(),
                })
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::warn!(command = %name, ?watchdog, "blocking command outlived its watchdog; replacing the connection");
                let _ = c.kick.try_send(replace(gen()));
                return Err(Error::Watchdog {
                    command: name,
                    after: watchdog,
                });
            }
        };
        let broken = is_connection_error(&err)
            || matches!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly)
                    | ErrorKind::Server(ServerErrorKind::BusyLoading)
            )
            || err.code() == Some("UNBLOCKED")
            || (cluster && topology_changed(&err));
        if broken {
            let _ = c.kick.try_send(replace(gen()));
        }
        Err(if is_connection_error(&err) {
            Error::ConnectionLost {
                command: name,
                source: err,
            }
        } else {
            Error::Server {
                command: name,
                source: err,
            }
        })
    }

    /// The underlying connection, for non-blocking commands on the same socket.
    pub fn connection(&self) -> &Connection {
        &self.inner
    }
}

async fn supervise(shared: Arc<Shared>, mut kicks: mpsc::Receiver<Kick>) {
    let opts = &shared.opts;
    let target = shared.target.clone();
    if opts.lazy_connect {
        tokio::select! {
            _ = shared.start.notified() => {}
            _ = wait_close(&mut kicks) => return end(&shared, EndReason::Closed, None),
        }
        shared.state.send_replace(LinkState::Connecting {
            failures: 0,
            last_error: None,
        });
    }
    let mut generation: u64 = 0;
    let mut failures: u64 = 0;
    let mut attempt: u32 = 0;
    let mut last_error: Option<Error> = None;
    loop {
        let dialed = tokio::select! {
            r = dial(opts, &shared.ctx, || shared.emit(ConnEvent::Connect)) => r,
            _ = wait_close(&mut kicks) => return end(&shared, EndReason::Closed, last_error),
        };
        match dialed {
            Ok(d) => {
                attempt = 0;
                last_error = None;
                let mut current = d.conn;
                let mut driver = d.driver;
                let master = d.master;
                generation += 1;
                publish(&shared, generation, &current, d.server);
                // Sentinel: resolves when the sentinels name another master, so that a link
                // to a master that a failover left behind is dropped at once.
                let moved = async {
                    match (&opts.endpoint, &master) {
                        (
                            Endpoint::Sentinel {
                                sentinels,
                                master_name,
                            },
                            Some(at),
                        ) => crate::sentinel::master_moved(opts, sentinels, master_name, at).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::pin!(moved);
                let mut last_refresh: Option<Instant> = None;
                let mut refresh_interval = MIN_REFRESH_INTERVAL;
                // Why a cluster client could not be rebuilt, when that ended the link.
                let mut refresh_error: Option<Error> = None;
                let closed = loop {
                    tokio::select! {
                        _ = &mut driver => break false,
                        why = &mut moved => {
                            tracing::warn!(target_addr = %target, reason = %why, "master moved; reconnecting");
                            break false;
                        }
                        kick = kicks.recv() => match kick {
                            None | Some(Kick::Close) => break true,
                            Some(Kick::Broken(g)) if g == generation => break false,
                            Some(Kick::Suspect(g)) if g == generation => {
                                let ok = tokio::time::timeout(opts.connect_timeout, current.probe()).await;
                                if !matches!(ok, Ok(Ok(()))) {
                                    tracing::warn!(target_addr = %target, "connection failed its probe after a command timeout; replacing it");
                                    break false;
                                }
                            }
                            Some(Kick::Refresh(g)) if g == generation => {
                                if let Some(t) = last_refresh {
                                    if t.elapsed() > REFRESH_STREAK_RESET {
                                        refresh_interval = MIN_REFRESH_INTERVAL;
                                    }
                                    let wait = (t + refresh_interval).saturating_duration_since(Instant::now());
                                    refresh_interval = (refresh_interval * 2).min(MAX_REFRESH_INTERVAL);
                                    if !wait.is_zero() && !sleep_unless_closed(wait, &mut kicks).await {
                                        break true;
                                    }
                                }
                                last_refresh = Some(Instant::now());
                                tracing::info!(target_addr = %target, generation, "cluster topology changed; rebuilding the cluster client from every known node");
                                let rebuilt = tokio::select! {
                                    r = dial(opts, &shared.ctx, || shared.emit(ConnEvent::Connect)) => r,
                                    _ = wait_close(&mut kicks) => break true,
                                };
                                match rebuilt {
                                    Ok(d) => {
                                        driver.abort();
                                        driver = d.driver;
                                        current = d.conn;
                                        generation += 1;
                                        publish(&shared, generation, &current, d.server);
                                    }
                                    Err(e) => {
                                        tracing::warn!(target_addr = %target, error = %e, "cluster client could not be rebuilt; reconnecting");
                                        shared.emit(ConnEvent::Error { error: e.clone() });
                                        refresh_error = Some(e);
                                        break false;
                                    }
                                }
                            }
                            Some(_) => {}
                        },
                    }
                };
                driver.abort();
                if closed {
                    return end(&shared, EndReason::Closed, None);
                }
                tracing::info!(target_addr = %target, "redis connection lost");
                if let Some(e) = refresh_error {
                    failures += 1;
                    last_error = Some(e);
                }
                shared.state.send_replace(LinkState::Connecting {
                    failures,
                    last_error: last_error.clone(),
                });
                shared.emit(ConnEvent::Close);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(target_addr = %target, error = %e, "redis connect attempt failed");
                shared.emit(ConnEvent::Error { error: e.clone() });
                shared.state.send_replace(LinkState::Connecting {
                    failures,
                    last_error: Some(e.clone()),
                });
                last_error = Some(e);
            }
        }
        attempt = attempt.saturating_add(1);
        let Some(delay) = opts.retry_strategy.delay(attempt) else {
            tracing::warn!(target_addr = %target, attempt, "retry strategy gave up; connection ended");
            return end(&shared, EndReason::RetryStrategyGaveUp, last_error);
        };
        tracing::info!(target_addr = %target, attempt, ?delay, "reconnecting");
        shared.emit(ConnEvent::Reconnecting { attempt, delay });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_close(&mut kicks) => return end(&shared, EndReason::Closed, last_error),
        }
    }
}

/// Publishes a new ready link and says so.
fn publish(
    shared: &Shared,
    generation: u64,
    conn: &crate::raw::RawConn,
    server: Option<ServerInfo>,
) {
    let server = server.map(Arc::new);
    tracing::info!(target_addr = %shared.target, generation, "redis connection ready");
    shared.state.send_replace(LinkState::Ready(Link {
        generation,
        conn: conn.clone(),
        server: server.clone(),
    }));
    shared.emit(ConnEvent::Ready {
        server: server.as_deref().cloned(),
    });
}

/// Sleeps for `d`; `false` if `close()` was called (or every handle dropped) meanwhile.
async fn sleep_unless_closed(d: Duration, kicks: &mut mpsc::Receiver<Kick>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = wait_close(kicks) => false,
    }
}

/// Resolves when `close()` was called or every handle is gone; ignores stale kicks.
async fn wait_close(kicks: &mut mpsc::Receiver<Kick>) {
    loop {
        match kicks.recv().await {
            None | Some(Kick::Close) => return,
            Some(_) => {}
        }
    }
}

fn end(shared: &Shared, reason: EndReason, last_error: Option<Error>) {
    shared
        .state
        .send_replace(LinkState::Ended { reason, last_error });
    shared.emit(ConnEvent::End { reason });
    tracing::info!(target_addr = %shared.target, %reason, "redis connection ended");
}
