//! Makes sure `redis-server` is there, installing it only as root on Debian.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const INSTALL: &str = "apt-get update && apt-get install -y redis-server redis-sentinel";

/// Finds redis-server; installs it with apt-get when running as root on Debian.
pub fn ensure_redis() -> Result<()> {
    if bullpen_testkit::redis_server_binary().is_ok() {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    let debian = Path::new("/etc/debian_version").exists();
    if !(root && debian) {
        bail!(
            "redis-server is missing. Install it with:\n    sudo sh -c '{INSTALL}'\n(Debian/Ubuntu; elsewhere install Redis >= 6.2 and put redis-server on PATH, or set BULLPEN_REDIS_SERVER)"
        );
    }
    println!("redis-server is missing; installing it: {INSTALL}");
    let ok = Command::new("sh")
        .args(["-c", &format!("DEBIAN_FRONTEND=noninteractive {INSTALL}")])
        .status()
        .context("running apt-get")?
        .success();
    if !ok || bullpen_testkit::redis_server_binary().is_err() {
        bail!("installing redis-server with apt-get failed");
    }
    Ok(())
}
