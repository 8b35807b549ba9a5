//! `bullpen-core`: BullMQ's data format, owned in one place.
//!
//! **Status: not built yet.** This crate is a documented skeleton; it exports nothing and
//! nothing may rely on it. The issue "bullpen-core and bullpen-producer" fills it with:
//! the key layout and prefix (hash-tag aware), the job model and hash codec with the option
//! short names, score encodings, the event codec, and one Lua script per state transition
//! with a typed wrapper.
//!
//! Invariants it will hold: it spawns no tasks and owns no pool; it depends on
//! `bullpen-conn` and nothing above it.
