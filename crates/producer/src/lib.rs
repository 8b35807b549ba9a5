//! `bullpen-producer`: the `Queue` (add, bulk add, getters, admin).
//!
//! **Status: not built yet.** A documented skeleton that exports nothing; the issue
//! "bullpen-core and bullpen-producer" fills it. It will build on `bullpen-conn`'s
//! `producer()` preset (fail fast) and on `bullpen-core`, and never depend on the worker or
//! events crates.
