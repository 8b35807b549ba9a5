//! The README's worker quick start: runs jobs from queue `emails` (added by Node or by
//! bullpen) until SIGINT or SIGTERM.
//!
//! ```sh
//! cargo run -p bullpen-worker --example worker_quickstart -- redis://127.0.0.1:6379
//! ```

use std::time::Duration;

use bullpen_conn::RedisOptions;
use bullpen_core::job::Job;
use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let processor = from_fn(|job: Job<serde_json::Value>, ctx| async move {
        ctx.progress(&50).await.map_err(JobError::failed)?;
        Ok::<_, JobError>(serde_json::json!({"sent": job.data["to"]}))
    });
    let opts = WorkerOptions::builder().concurrency(8).build()?;
    let worker = Worker::start(
        RedisOptions::from_url(&url)?.worker(),
        "emails",
        processor,
        opts,
    )
    .await?;
    worker.run_until_signal(Duration::from_secs(10)).await?;
    Ok(())
}
