//! `bullpen-worker`: runs BullMQ jobs from Rust.
//!
//! **Status: not built yet.** A documented skeleton that exports nothing; the issue
//! "bullpen-worker" fills it (processor, locks, stalled checks, backoff, graceful shutdown).
//! It will build on `bullpen-conn`'s `worker()` and `blocking()` presets and on
//! `bullpen-core`, and never depend on the producer or events crates.
