//! `bullpen-producer`: the `Queue`, which adds BullMQ 6.x jobs from Rust and reads and
//! manages a queue, whoever wrote its jobs.
//!
//! Jobs added here are stored exactly as Node BullMQ stores them (hash fields, option short
//! names, scores, marker and events), so Node workers, getters and `QueueEvents` treat them as
//! their own; jobs added by Node decode into [`Job`] with every field.
//!
//! Production defaults, following the auto-removal advice of BullMQ's going-to-production
//! guide: unless told otherwise, every job asks workers to keep only the newest 1,000
//! completed and 10,000 failed jobs ([`DEFAULT_KEEP_COMPLETED`], [`DEFAULT_KEEP_FAILED`]).
//! Without it, `completed` and `failed` grow until Redis runs out of memory.
//!
//! Concurrent adds on one queue share script calls when they would otherwise queue behind
//! each other on the connection (at most two add calls of a queue are in flight; adds that
//! arrive meanwhile go together in the next one, each with its own options, events and
//! outcome). A lone add is sent at once, never held back on a timer. An add whose caller gives
//! up before it was sent is never added, and with a producer-preset connection no add waits
//! longer than the connection's request deadline.
//!
//! ```no_run
//! use bullpen_conn::{Connection, RedisOptions};
//! use bullpen_producer::{JobOptions, Queue, QueueOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = Connection::connect(RedisOptions::from_url("redis://127.0.0.1:6379")?.producer()).await?;
//! let queue = Queue::new(conn, "emails", QueueOptions::default()).await?;
//! let added = queue.add("welcome", &serde_json::json!({"to": "a@example.com"}), JobOptions::default()).await?;
//! println!("job {}", added.id);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod coalesce;
mod error;
mod queue;

pub use bullpen_core::job::{CorruptJob, Job};
pub use bullpen_core::opts::{Backoff, BackoffKind, Dedup, JobOptions, KeepJobs};
pub use bullpen_core::JobState;
pub use error::{Error, Result};
pub use queue::{
    AddOutcome, AddStatus, BulkJob, JobCounts, Queue, QueueOptions, DEFAULT_KEEP_COMPLETED,
    DEFAULT_KEEP_FAILED, DEFAULT_MAX_LEN_EVENTS, DEFAULT_SIZE_LIMIT,
};
