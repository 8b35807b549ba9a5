//! Sentinel: ask the sentinels where the master is, then check that what answers is a
//! master. Runs on every (re)connect, so a failover is followed.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::options::RedisOptions;

fn lost(opts: &RedisOptions, detail: String) -> Error {
    Error::Connect {
        target: opts.redacted_target(),
        source: Arc::new(std::io::Error::new(std::io::ErrorKind::NotFound, detail)),
    }
}

/// An open, authenticated connection to one sentinel; its driver stops when it is dropped.
struct SentinelLink {
    conn: MultiplexedConnection,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for SentinelLink {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a TCP connection to a sentinel within `connect_timeout`.
async fn connect(
    opts: &RedisOptions,
    host: &str,
    port: u16,
) -> std::result::Result<TcpStream, String> {
    tokio::time::timeout(opts.connect_timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())
}

impl SentinelLink {
    async fn open(opts: &RedisOptions, host: &str, port: u16) -> std::result::Result<Self, String> {
        let stream = connect(opts, host, port).await?;
        let info = RedisConnectionInfo::default().set_skip_set_lib_name();
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        let (conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
            .await
            .map_err(|e| e.to_string())?;
        let mut link = Self {
            conn,
            driver: tokio::spawn(driver),
        };
        if let Some(pw) = &opts.sentinel_password {
            redis::cmd("AUTH")
                .arg(pw)
                .query_async::<()>(&mut link.conn)
                .await
                .map_err(|e| {
                    format!(
                        "sentinel authentication failed: {}",
                        e.detail().unwrap_or(e.category())
                    )
                })?;
        }
        Ok(link)
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME master`: `None` when this sentinel does not know it.
    async fn master_of(
        &mut self,
        master: &str,
    ) -> std::result::Result<Option<(String, u16)>, String> {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        match addr {
            Some((h, p)) => p
                .parse::<u16>()
                .map(|p| Some((h, p)))
                .map_err(|_| format!("the sentinel answered an invalid port `{p}`")),
            None => Ok(None),
        }
    }
}

async fn ask_one(
    opts: &RedisOptions,
    host: &str,
    port: u16,
    master: &str,
) -> std::result::Result<Option<(String, u16)>, String> {
    SentinelLink::open(opts, host, port)
        .await?
        .master_of(master)
        .await
}

/// Asks the sentinels, in order, for the address of `master`.
pub(crate) async fn master_address(
    opts: &RedisOptions,
    sentinels: &[(String, u16)],
    master: &str,
) -> Result<(String, u16)> {
    let mut why = Vec::new();
    for (host, port) in sentinels {
        match ask_one(opts, host, *port, master).await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => why.push(format!("{host}:{port} does not know master `{master}`")),
            Err(e) => why.push(format!("{host}:{port}: {e}")),
        }
    }
    Err(lost(
        opts,
        format!(
            "no sentinel gave the address of master `{master}` ({})",
            why.join("; ")
        ),
    ))
}

/// Checks that the server the sentinels named is a master (`ROLE`), as a failover can leave a
/// stale answer for a moment.
pub(crate) async fn check_role(
    opts: &RedisOptions,
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    host: &str,
    port: u16,
) -> Result<()> {
    let role: redis::Value = redis::cmd("ROLE")
        .query_async(conn)
        .await
        .map_err(|e| lost(opts, format!("ROLE failed at {host}:{port}: {e}")))?;
    let first = match &role {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if first == "master" {
        Ok(())
    } else {
        Err(lost(opts, format!("the sentinels named {host}:{port}, but it is a `{first}`, not a master (a failover is in progress?)")))
    }
}

/// How often a ready connection asks the sentinels where the master is, besides listening for
/// their failover announcements: the safety net for a missed announcement (the announcing
/// connection broke, or the sentinel that ran the failover is not the one listened to).
const MASTER_POLL: Duration = Duration::from_secs(2);

/// Sentinel failover announcements after which the master address may have changed:
/// `+promoted-slave` and `+failover-state-reconf-slaves` come as soon as the replica has been
/// promoted, `+switch-master` at the end of the failover.
const FAILOVER_CHANNELS: [&str; 3] = [
    "+promoted-slave",
    "+failover-state-reconf-slaves",
    "+switch-master",
];

/// Resolves, with a description, once the sentinels name a master other than `current`.
///
/// A failover started with `SENTINEL FAILOVER` (or one after which the old master stays
/// reachable) leaves the old master running as a master for seconds after the sentinels have
/// promoted its replica; connections made before the failover would go on writing to it, and
/// those writes are discarded when it is turned into a replica. So a ready connection listens
/// to the sentinels' failover announcements and checks the address again whenever one comes
/// (and every [`MASTER_POLL`] in any case); the supervisor drops the link when this resolves,
/// and the next dial follows the sentinels to the new master.
pub(crate) async fn master_moved(
    opts: &RedisOptions,
    sentinels: &[(String, u16)],
    master: &str,
    current: &(String, u16),
) -> String {
    let mut announcements = None;
    let mut poller: Option<SentinelLink> = None;
    let mut next_sentinel = 0usize;
    let mut poll = tokio::time::interval(MASTER_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if announcements.is_none() && !sentinels.is_empty() {
            let (host, port) = &sentinels[next_sentinel % sentinels.len()];
            next_sentinel += 1;
            match subscribe(opts, host, *port).await {
                Ok(stream) => announcements = Some(stream),
                Err(e) => {
                    tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "cannot listen to sentinel announcements; polling");
                }
            }
        }
        let announced = async {
            match announcements.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = announced => match msg {
                Some(m) => {
                    let text: String = m.get_payload().unwrap_or_default();
                    if !text.split_whitespace().any(|w| w == master) {
                        continue;
                    }
                    tracing::debug!(channel = m.get_channel_name(), %text, "sentinel announcement");
                }
                // The sentinel went away: listen to the next one (and check the address now).
                None => announcements = None,
            },
            _ = poll.tick() => {}
        }
        // Asked on one kept connection to a sentinel (opened again, on the first sentinel
        // that answers, when it fails or does not answer in time), so that the poll costs
        // no connection churn.
        let asked = tokio::time::timeout(opts.connect_timeout, async {
            if poller.is_none() {
                for (host, port) in sentinels {
                    if let Ok(link) = SentinelLink::open(opts, host, *port).await {
                        poller = Some(link);
                        break;
                    }
                }
            }
            let link = poller.as_mut()?;
            match link.master_of(master).await {
                Ok(addr) => addr,
                Err(_) => {
                    poller = None;
                    None
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            // A sentinel that stopped answering keeps its socket open: do not wait on it again.
            poller = None;
            None
        });
        if let Some((host, port)) = asked {
            if (host.as_str(), port) != (current.0.as_str(), current.1) {
                return format!(
                    "the sentinels moved master `{master}` from {}:{} to {host}:{port}",
                    current.0, current.1
                );
            }
        }
    }
}

/// A subscription to a sentinel's failover announcements.
struct Announcements {
    /// Kept so that the subscription stays as it is while the stream is read.
    _sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
}

impl Announcements {
    async fn next(&mut self) -> Option<redis::Msg> {
        futures_util::StreamExt::next(&mut self.stream).await
    }
}

async fn subscribe(
    opts: &RedisOptions,
    host: &str,
    port: u16,
) -> std::result::Result<Announcements, String> {
    let stream = connect(opts, host, port).await?;
    let mut info = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(pw) = &opts.sentinel_password {
        info = info.set_password(pw);
    }
    let pubsub = tokio::time::timeout(opts.connect_timeout, async {
        let mut p = redis::aio::PubSub::new(&info, stream).await?;
        p.subscribe(&FAILOVER_CHANNELS[..]).await?;
        Ok::<_, redis::RedisError>(p)
    })
    .await
    .map_err(|_| "subscribe timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let (sink, stream) = pubsub.split();
    Ok(Announcements {
        _sink: sink,
        stream,
    })
}
