//! `bullpen-events`: typed, cross-process queue events.
//!
//! **Status: not built yet.** A documented skeleton that exports nothing; the issue
//! "bullpen-events" fills it (an `XREAD BLOCK` reader on a `BlockingConnection` that resumes
//! from its last id). It will never depend on the producer or worker crates.
