//! The README's producer quick start: add a job that any BullMQ 6.x worker (Node or Rust)
//! runs, then read it back.
//!
//! ```sh
//! cargo run -p bullpen-producer --example producer_quickstart -- redis://127.0.0.1:6379
//! ```

use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{JobOptions, Queue, QueueOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let conn = Connection::connect(RedisOptions::from_url(&url)?.producer()).await?;
    let queue = Queue::new(conn, "emails", QueueOptions::default()).await?;
    let mut opts = JobOptions::default();
    opts.attempts = Some(3);
    opts.delay_ms = 5_000;
    let added = queue
        .add("welcome", &serde_json::json!({"to": "a@example.com"}), opts)
        .await?;
    println!(
        "job {} {:?}",
        added.id,
        queue.get_job_state(&added.id).await?
    );
    Ok(())
}
