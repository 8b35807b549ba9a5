//! Setup shared by the worker's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions, RetryStrategy};
use bullpen_producer::{Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use bullpen_worker::{WorkerOptions, WorkerOptionsBuilder};

/// The worker preset with the reliability plan's quick reconnects (50 ms..500 ms).
pub fn redis_opts(url: &str) -> RedisOptions {
    RedisOptions::from_url(url)
        .expect("url")
        .worker()
        .with_retry_strategy(RetryStrategy::exponential(
            Duration::from_millis(50),
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
}

/// The reliability plan's test timing profile.
pub fn test_opts() -> WorkerOptionsBuilder {
    WorkerOptions::builder()
        .lock_duration(Duration::from_secs(4))
        .stalled_interval(Duration::from_secs(1))
        .drain_delay(Duration::from_millis(500))
}

/// A queue that keeps every finished job, on a producer-preset connection.
pub async fn queue(server: &RedisServer, name: &str) -> Queue {
    let conn = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("connect");
    Queue::new(conn, name, QueueOptions::default().keep_everything())
        .await
        .expect("queue")
}
