//! `cargo xtask test`: what CI runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::redis_install::ensure_redis;

/// Pairs (package, dependency) that must never appear in the normal dependency graph:
/// conn knows nothing about jobs or JSON, and producer, worker and events never depend on
/// each other.
const FORBIDDEN: &[(&str, &str)] = &[
    ("bullpen-conn", "serde_json"),
    ("bullpen-conn", "bullpen-core"),
    ("bullpen-core", "bullpen-producer"),
    ("bullpen-producer", "bullpen-worker"),
    ("bullpen-producer", "bullpen-events"),
    ("bullpen-worker", "bullpen-producer"),
    ("bullpen-worker", "bullpen-events"),
    ("bullpen-events", "bullpen-producer"),
    ("bullpen-events", "bullpen-worker"),
];

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn gate(&mut self, name: &str, ok: bool) {
        if ok {
            self.passed += 1;
            println!("==> {name}: ok");
        } else {
            self.failed += 1;
            self.failures.push(name.to_owned());
            println!("==> {name}: FAILED");
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(_args: &[String]) -> Result<()> {
    ensure_redis()?;
    crate::interop::ensure_node_deps()?;
    let mut t = Tally::default();

    println!("==> cargo fmt --all --check");
    let ok = cargo()
        .args(["fmt", "--all", "--check"])
        .status()?
        .success();
    t.gate("fmt", ok);

    println!("==> cargo clippy --workspace --all-targets -- -D warnings");
    let ok = cargo()
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .status()?
        .success();
    t.gate("clippy", ok);

    println!("==> layering");
    let mut layering_ok = true;
    for (pkg, dep) in FORBIDDEN {
        let out = cargo()
            .args(["tree", "-e", "normal", "-p", pkg, "-i", dep, "--quiet"])
            .output()?;
        // cargo tree exits non-zero when the dependency is not in the graph at all.
        if out.status.success() && !out.stdout.is_empty() {
            layering_ok = false;
            println!(
                "    {pkg} must not depend on {dep}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    t.gate("layering", layering_ok);

    println!("==> cargo test --workspace --no-fail-fast");
    let mut child = cargo()
        .args(["test", "--workspace", "--no-fail-fast", "--color", "never"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, " passed");
            failed += count(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A build failure or a crashed test binary: count it, so the run cannot look green.
        failed += 1;
        t.failures
            .push("cargo test (build or harness failure)".into());
    } else if failed > 0 {
        t.failures.push(format!("{failed} tests"));
    }
    t.passed += passed;
    t.failed += failed;

    // The fast tier of the integration matrix: every topology with a ledger, then the fast
    // variants of the reliability plan's fault scenarios (about 3 minutes here).
    println!("==> cargo xtask integration (fast tier)");
    let exe = std::env::current_exe().context("locating xtask")?;
    let ok = Command::new(&exe)
        .arg("integration")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    t.gate("integration (fast tier)", ok);

    // Keeps the benchmark harness working (bullpen and Node side by side); asserts no speed.
    println!("==> cargo xtask bench --quick (smoke run; no speed is asserted)");
    let exe = std::env::current_exe().context("locating xtask")?;
    let ok = Command::new(exe)
        .args(["bench", "--quick"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    t.gate("bench --quick", ok);

    println!();
    if !t.failures.is_empty() {
        println!("failed: {}", t.failures.join(", "));
    }
    println!("{} passed, {} failed", t.passed, t.failed);
    if t.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Reads `N passed` (or `N failed`) out of a `test result:` line.
fn count(line: &str, what: &str) -> u64 {
    line.split(';')
        .find(|p| p.trim_end().ends_with(what.trim()))
        .and_then(|p| p.split_whitespace().rev().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_test_summary_lines() {
        let l = "ok. 9 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.50s";
        assert_eq!(count(l, " passed"), 9);
        assert_eq!(count(l, " failed"), 2);
        let l = "FAILED. 0 passed; 1 failed; 0 ignored";
        assert_eq!(count(l, " failed"), 1);
    }
}
