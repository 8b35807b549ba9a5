//! Sentinel: ask the sentinels where the master is, then check that what answers is a
//! master. Runs on every (re)connect, so a failover is followed.

use std::sync::Arc;

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

async fn ask_one(
    opts: &RedisOptions,
    host: &str,
    port: u16,
    master: &str,
) -> std::result::Result<Option<(String, u16)>, String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let info = RedisConnectionInfo::default().set_skip_set_lib_name();
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(None);
    let (mut conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(driver);
    let result = async {
        if let Some(pw) = &opts.sentinel_password {
            redis::cmd("AUTH")
                .arg(pw)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| {
                    format!(
                        "sentinel authentication failed: {}",
                        e.detail().unwrap_or(e.category())
                    )
                })?;
        }
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(&mut conn)
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
    .await;
    driver.abort();
    result
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
