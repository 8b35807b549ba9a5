//! The Node peers of the interop tests (`tests/interop`): their npm packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn interop_dir() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .unwrap_or(xtask)
        .join("tests")
        .join("interop")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Installs the interop tests' npm packages (`npm ci`) when any of them is missing. Without `npm` it only warns: the Node tests then skip and say why.
pub fn ensure_node_deps() -> Result<()> {
    let dir = interop_dir();
    let nm = dir.join("node_modules");
    let installed = [
        "bullmq",
        "ioredis",
        "@bull-board/express",
        "playwright-core",
    ]
    .iter()
    .all(|p| nm.join(p).is_dir());
    if installed {
        return Ok(());
    }
    if !on_path("npm") {
        println!(
            "==> warning: npm not found on PATH; the Node interop tests will skip (install Node.js and run `npm ci` in {})",
            dir.display()
        );
        return Ok(());
    }
    println!(
        "==> npm ci --no-audit --no-fund (in {}): installing the interop tests' Node packages",
        dir.display()
    );
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("running npm ci")?;
    if !status.success() {
        bail!("`npm ci` in {} failed with {status}", dir.display());
    }
    Ok(())
}
