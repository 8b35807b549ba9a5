//! `bullpen-core`: BullMQ 6.x's data format, owned in one place.
//!
//! **Status: being built** (issue "bullpen-core and bullpen-producer").
#![warn(missing_docs)]

pub mod acl;
pub mod coalesce;
pub mod error;
pub mod events;
pub mod job;
pub mod job_ops;
pub mod keys;
pub mod opts;
pub mod score;
pub mod script;
pub mod worker_ops;

pub use error::{Error, RefusalCode, Result};
pub use keys::{JobState, QueueKeys, DEFAULT_PREFIX};
