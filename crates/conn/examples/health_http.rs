//! Serves `Connection::health()` as an HTTP health endpoint.
//!
//! ```sh
//! cargo run -p bullpen-conn --example health_http -- redis://127.0.0.1:6379 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/health
//! ```
//! Answers `200` with a JSON body when the server is usable for job queues, `503` otherwise
//! (Redis down, a replica, or an eviction policy other than `noeviction`).

use bullpen_conn::{Connection, EvictionCheck, RedisOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    // Fail fast: a health check must answer quickly even when Redis is down. Report a bad
    // eviction policy as unhealthy instead of refusing to start.
    let opts = RedisOptions::from_url(&url)?
        .producer()
        .with_eviction_check(EvictionCheck::Warn)
        .with_lazy_connect(true);
    let conn = Connection::connect(opts).await?;
    let listener = TcpListener::bind(&addr).await?;
    println!("health endpoint on http://{addr}/health for {url}");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if !req.starts_with("GET /health ") {
                (
                    "404 Not Found",
                    "{\"error\":\"try GET /health\"}".to_owned(),
                )
            } else {
                match conn.health().await {
                    Ok(h) if h.is_healthy() => ("200 OK", h.to_json()),
                    Ok(h) => ("503 Service Unavailable", h.to_json()),
                    Err(e) => (
                        "503 Service Unavailable",
                        format!("{{\"healthy\":false,\"error\":{:?}}}", e.to_string()),
                    ),
                }
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
