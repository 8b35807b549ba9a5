//! Shared helpers for the conn integration tests.
#![allow(dead_code)]

use std::time::Duration;

use bullpen_conn::{ConnEvent, Connection, RedisOptions, RetryStrategy};
use tokio::sync::broadcast;

/// The reliability plan's test profile: reconnect from 50 ms, capped at 500 ms.
pub fn fast_retry() -> RetryStrategy {
    RetryStrategy::exponential(
        Duration::from_millis(50),
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
}

pub fn opts(url: &str) -> RedisOptions {
    RedisOptions::from_url(url)
        .expect("valid url")
        .with_retry_strategy(fast_retry())
}

pub async fn get(conn: &Connection, key: &str) -> Option<String> {
    conn.query(redis::cmd("GET").arg(key)).await.expect("GET")
}

/// Waits for the first event matching `pred`, within `deadline`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<ConnEvent>,
    deadline: Duration,
    mut pred: impl FnMut(&ConnEvent) -> bool,
) -> ConnEvent {
    tokio::time::timeout(deadline, async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}
