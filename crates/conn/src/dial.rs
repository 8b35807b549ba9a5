//! One connect attempt: socket, handshake (AUTH, SELECT, CLIENT SETNAME), ready check and
//! server checks. The supervisor calls this for the first connect and after every loss, so
//! everything a connection needs is replayed each time.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisConnectionInfo, RedisError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::info::ServerInfo;
use crate::options::{Endpoint, EvictionCheck, RedisOptions, MIN_REDIS_VERSION};

/// A freshly made, checked connection.
pub(crate) struct Dialed {
    pub conn: crate::raw::RawConn,
    /// Ends when the socket closes.
    pub driver: JoinHandle<()>,
    /// `None` when `INFO` is not permitted for this user.
    pub server: Option<ServerInfo>,
    /// Sentinel endpoints: the master address the sentinels gave and `ROLE` confirmed.
    pub master: Option<(String, u16)>,
}

/// The handshake step a reply belongs to, which decides how its error is classified.
#[derive(Clone, Copy)]
enum Step {
    Auth,
    Select,
    SetName,
    Info,
}

impl Step {
    fn command(self) -> &'static str {
        match self {
            Step::Auth => "AUTH",
            Step::Select => "SELECT",
            Step::SetName => "CLIENT SETNAME",
            Step::Info => "INFO",
        }
    }
}

/// Turns a handshake failure into a typed error, by error kind and step (never by text).
fn classify(opts: &RedisOptions, step: Step, e: RedisError) -> Error {
    let target = opts.redacted_target();
    let user = || opts.username.clone().unwrap_or_else(|| "default".into());
    let detail = || e.detail().unwrap_or_else(|| e.category()).to_owned();
    if e.kind() == ErrorKind::Parse {
        return Error::Protocol {
            target,
            detail: format!("unparsable reply to {}: {e}", step.command()),
        };
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return Error::Connect {
            target,
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "connection closed during the handshake ({e}); if this persists, check whether the server requires TLS"
                ),
            )),
        };
    }
    match (e.code(), step) {
        (Some("NOAUTH"), _) => Error::Auth {
            target,
            user: user(),
            detail: "the server requires a password and none was given (NOAUTH)".into(),
        },
        (Some("WRONGPASS"), _) | (_, Step::Auth) => Error::Auth {
            target,
            user: user(),
            detail: detail(),
        },
        (Some("NOPERM"), s) => Error::Permission {
            target,
            command: s.command().into(),
            detail: detail(),
        },
        (_, Step::Select) => Error::InvalidOptions {
            field: "db",
            reason: format!("the server refused SELECT {}: {}", opts.db, detail()),
        },
        _ => Error::Server {
            command: step.command().into(),
            source: e,
        },
    }
}

pub(crate) fn socket_error(opts: &RedisOptions, e: std::io::Error) -> Error {
    Error::Connect {
        target: opts.redacted_target(),
        source: Arc::new(e),
    }
}

/// What a supervisor keeps between its dials.
#[derive(Default)]
pub(crate) struct DialContext {
    /// Cluster nodes learnt on the last successful dial: the next one seeds from them.
    pub known: crate::cluster::KnownNodes,
    /// A connection for blocking commands, which must never be sent again by the cluster
    /// client on its own.
    pub blocking: bool,
}

/// Opens the socket and runs the handshake, all within `connect_timeout`; then waits out
/// `LOADING` (ready check) and applies the server checks.
pub(crate) async fn dial(
    opts: &RedisOptions,
    ctx: &DialContext,
    on_socket: impl FnOnce(),
) -> Result<Dialed> {
    let attempt = async {
        match &opts.endpoint {
            Endpoint::Tcp { host, port } => dial_tcp(opts, host, *port, on_socket).await,
            Endpoint::Unix { path } => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| socket_error(opts, e))?;
                on_socket();
                handshake(opts, stream).await
            }
            Endpoint::Cluster { seeds } => {
                crate::cluster::dial_cluster(opts, seeds, &ctx.known, ctx.blocking, on_socket).await
            }
            Endpoint::Sentinel {
                sentinels,
                master_name,
            } => {
                let (host, port) =
                    crate::sentinel::master_address(opts, sentinels, master_name).await?;
                let mut dialed = dial_tcp(opts, &host, port, on_socket).await?;
                crate::sentinel::check_role(opts, &mut dialed.conn, &host, port).await?;
                dialed.master = Some((host, port));
                Ok(dialed)
            }
        }
    };
    let mut dialed = match tokio::time::timeout(opts.connect_timeout, attempt).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::ConnectTimeout {
                target: opts.redacted_target(),
                after: opts.connect_timeout,
                hint: if opts.tls.is_some() {
                    "a TLS client against a plain redis port waits like this; check the port"
                } else {
                    "is something listening that is not redis, or is the network dropping packets?"
                },
            })
        }
    };
    // A cluster node that is loading answers `LOADING`, which redis-rs waits out and retries.
    if opts.enable_ready_check && !opts.is_cluster() {
        wait_until_loaded(opts, &mut dialed).await?;
    }
    if let Some(info) = &dialed.server {
        check_server(opts, info)?;
    }
    Ok(dialed)
}

pub(crate) async fn dial_tcp(
    opts: &RedisOptions,
    host: &str,
    port: u16,
    on_socket: impl FnOnce(),
) -> Result<Dialed> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| socket_error(opts, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| socket_error(opts, e))?;
    if let Some(idle) = opts.keep_alive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(5))
            .with_retries(3);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&ka)
            .map_err(|e| socket_error(opts, e))?;
    }
    on_socket();
    match &opts.tls {
        Some(tls) => {
            let stream = crate::tls::wrap(opts, tls, host, stream).await?;
            handshake(opts, stream).await
        }
        None => handshake(opts, stream).await,
    }
}

async fn handshake<S>(opts: &RedisOptions, stream: S) -> Result<Dialed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // We send AUTH/SELECT/SETNAME ourselves, so that each reply is classified by its step.
    let info = RedisConnectionInfo::default().set_skip_set_lib_name();
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(None);
    let (mut conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
        .await
        .map_err(|e| classify(opts, Step::Auth, e))?;
    let driver = tokio::spawn(driver);
    let result = async {
        if let Some(password) = &opts.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &opts.username {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query_async::<()>(&mut conn)
                .await
                .map_err(|e| classify(opts, Step::Auth, e))?;
        }
        if opts.db != 0 {
            redis::cmd("SELECT")
                .arg(opts.db)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| classify(opts, Step::Select, e))?;
        }
        if let Some(name) = &opts.client_name {
            let r = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .query_async::<()>(&mut conn)
                .await;
            if let Err(e) = r {
                // Managed services without CLIENT (e.g. GCP Memorystore) answer "unknown
                // command"; BullMQ tolerates that, and so do we.
                if e.code() == Some("ERR") {
                    tracing::warn!(target_addr = %opts.redacted_target(), "CLIENT SETNAME refused; the connection stays unnamed");
                } else {
                    return Err(classify(opts, Step::SetName, e));
                }
            }
        }
        let server = read_info(opts, &mut conn).await?;
        Ok(server)
    }
    .await;
    match result {
        Ok(server) => Ok(Dialed {
            conn: crate::raw::RawConn::Single(conn),
            driver,
            server,
            master: None,
        }),
        Err(e) => {
            driver.abort();
            Err(e)
        }
    }
}

async fn read_info(
    opts: &RedisOptions,
    conn: &mut (impl redis::aio::ConnectionLike + Send),
) -> Result<Option<ServerInfo>> {
    match redis::cmd("INFO").query_async::<redis::Value>(conn).await {
        Ok(v) => {
            let infos: Vec<ServerInfo> = crate::info::info_texts(&v)
                .iter()
                .map(|t| ServerInfo::parse(t))
                .collect();
            // Every node must pass the checks: report the first that would fail, else the first.
            for info in &infos {
                check_server(opts, info)?;
            }
            let first = infos.into_iter().next().ok_or_else(|| Error::Protocol {
                target: opts.redacted_target(),
                detail: "INFO answered no text".into(),
            })?;
            Ok(Some(first))
        }
        Err(e) if e.code() == Some("NOPERM") => {
            tracing::warn!(target_addr = %opts.redacted_target(), "INFO is not permitted for this user: cannot verify the server version or eviction policy");
            Ok(None)
        }
        Err(e) => Err(classify(opts, Step::Info, e)),
    }
}

async fn wait_until_loaded(opts: &RedisOptions, d: &mut Dialed) -> Result<()> {
    let mut waited = Duration::ZERO;
    while d.server.as_ref().is_some_and(|s| s.loading) {
        if waited.is_zero() {
            tracing::info!(target_addr = %opts.redacted_target(), "server is loading its dataset; waiting");
        }
        let step = Duration::from_millis(100);
        tokio::time::sleep(step).await;
        waited += step;
        d.server = read_info(opts, &mut d.conn).await?;
    }
    Ok(())
}

/// Refuses servers older than [`MIN_REDIS_VERSION`] and, unless told otherwise, any
/// `maxmemory-policy` other than `noeviction`.
pub(crate) fn check_server(opts: &RedisOptions, info: &ServerInfo) -> Result<()> {
    let target = opts.redacted_target();
    if !opts.skip_version_check && info.kind == crate::ServerKind::Redis {
        let (a, b, c) = MIN_REDIS_VERSION;
        match info.version_tuple() {
            Some(v) if v >= MIN_REDIS_VERSION => {}
            _ => {
                return Err(Error::UnsupportedServer {
                    target,
                    kind: info.kind,
                    found: info.version.clone(),
                    min: format!("{a}.{b}.{c}"),
                })
            }
        }
    }
    if let Some(policy) = &info.maxmemory_policy {
        if policy != "noeviction" {
            match opts.eviction_check {
                EvictionCheck::Deny => {
                    return Err(Error::EvictionPolicy {
                        target,
                        policy: policy.clone(),
                    })
                }
                EvictionCheck::Warn => tracing::warn!(
                    target_addr = %target,
                    policy = %policy,
                    "maxmemory-policy is not noeviction: redis may evict jobs and locks under memory pressure"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}
