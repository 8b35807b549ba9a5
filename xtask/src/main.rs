//! `cargo xtask`: the project's automation.
//!
//! * `cargo xtask test`: exactly what CI runs (fmt, clippy with `-D warnings`, the layering
//!   check, every workspace test). Ends with an `N passed, N failed` line.
//! * `cargo xtask demo`: a private redis-server, a supervised connection, a kill -9 and a
//!   restart, shown live with the measured times.
//! * `cargo xtask integration`: the topology matrix and the fault scenarios, ledger-checked.

mod bench;
mod cluster_failover;
mod dashboard;
mod demo;
mod integration;
mod interop;
mod redis_install;
mod scenarios;
mod suites;
mod test;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("integration") => integration::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("bench-worker-peer") => bench::worker_peer(&args[1..]),
        Some(scenarios::worker_proc::COMMAND) => scenarios::worker_proc::main(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("usage: cargo xtask <command>\n\ncommands:\n  test   everything CI runs (fmt, clippy, layering, tests)\n  demo   a live job system with a kill -9 of Redis (--jobs N, --no-fault, --url URL)\n  integration  every topology (standalone, password, ACL, TLS, mTLS, unix, AOF+kill -9, Sentinel, Cluster, eviction) and the reliability plan's fault scenarios, each with a ledger (--full, --only e1,b6, --soak-minutes N)\n  bench  add throughput and memory per job, bullpen vs Node BullMQ (release build; --quick, --reps N)");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`; try `cargo xtask help`"),
    }
}
