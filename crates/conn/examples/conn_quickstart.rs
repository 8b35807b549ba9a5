//! The README quick start: a producer-preset connection (fails fast) and a worker-preset
//! connection (waits forever), watching lifecycle events.
//!
//! ```sh
//! cargo run -p bullpen-conn --example conn_quickstart -- redis://127.0.0.1:6379
//! ```

use std::time::Duration;

use bullpen_conn::{redis, BlockingConnection, ConnEvent, Connection, RedisOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());

    // For request handlers: every call answers within 2 s, even with Redis down.
    let producer = Connection::connect(RedisOptions::from_url(&url)?.producer()).await?;
    let _: () = producer
        .query(redis::cmd("SET").arg("greeting").arg("hello"))
        .await?;

    // For background loops: commands wait through outages and resume by themselves.
    let worker = Connection::connect(RedisOptions::from_url(&url)?.worker()).await?;
    let mut events = worker.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let ConnEvent::Reconnecting { attempt, delay } = event {
                eprintln!("reconnecting: attempt {attempt} in {delay:?}");
            }
        }
    });
    let greeting: String = worker.query(redis::cmd("GET").arg("greeting")).await?;

    // Blocking commands get their own connection, guarded by a watchdog.
    let blocking = BlockingConnection::connect(RedisOptions::from_url(&url)?.blocking()).await?;
    let popped: Option<(String, String, f64)> = blocking
        .block(
            redis::cmd("BZPOPMIN").arg("nothing-here").arg(1),
            Duration::from_secs(1),
        )
        .await?;

    let health = worker.health().await?;
    println!(
        "{greeting}; popped {popped:?}; {} {} answered PING in {:?}",
        health.kind, health.version, health.ping_latency
    );
    Ok(())
}
