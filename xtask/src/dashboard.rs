//! `cargo xtask demo --dashboard`: the demo's queues in bull-board, the web dashboard BullMQ
//! users already run, served by `tests/interop/dashboard.mjs` (Node, express, bull-board's
//! BullMQ adapter) on 127.0.0.1.
//!
//! [`start`] runs the script with plain `std::process`, so it works inside or outside a tokio
//! runtime, waits for the line with its URL and returns a [`DashboardHandle`]; dropping the
//! handle stops the server. The script also exits when its stdin closes, so it does not
//! outlive an xtask that was killed.

// Until demo.rs calls `start` for `--dashboard`, only this module's tests use it.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_testkit::node::{interop_dir, node_ready};
use serde_json::{json, Value};

/// How long the script may take to reach Redis and listen (its own bound is 20 s).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped server gets to close its connections before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Lines of the script's stderr kept for error messages.
const STDERR_LINES: usize = 40;

/// The npm packages `dashboard.mjs` imports besides BullMQ.
const PACKAGES: [&str; 3] = ["@bull-board/api", "@bull-board/express", "express"];

/// A running bull-board server; dropping it stops the server.
#[derive(Debug)]
pub struct DashboardHandle {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
}

impl DashboardHandle {
    /// The dashboard's address, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SIGTERM lets the script close its Redis connections; closing stdin does too.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DashboardHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts bull-board on a free port of 127.0.0.1 for the BullMQ `queues` (default `bull`
/// prefix) of the Redis at `url`, read-only, and returns once it listens. Fails, with the
/// script's stderr, when Node or the npm packages are missing (`npm ci` in
/// `tests/interop`), Redis cannot be reached, or the server does not start within 30 s.
pub fn start(url: &str, queues: &[&str]) -> Result<DashboardHandle> {
    if queues.is_empty() {
        bail!("the dashboard needs at least one queue");
    }
    node_ready().map_err(|why| anyhow!("cannot start the dashboard: {why}"))?;
    let dir = interop_dir();
    for package in PACKAGES {
        if !dir.join("node_modules").join(package).is_dir() {
            bail!(
                "cannot start the dashboard: npm package {package} missing: run `npm ci` in {}",
                dir.display()
            );
        }
    }
    let input = json!({"url": url, "queues": queues, "port": 0, "watchStdin": true});
    let mut child = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(input.to_string())
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting node tests/interop/dashboard.mjs")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("dashboard stdout")?;
    let stderr = child.stderr.take().context("dashboard stderr")?;
    // From here on the handle owns the child: an early return stops it.
    let mut handle = DashboardHandle {
        child,
        stdin,
        url: String::new(),
    };

    let tail = Arc::new(Mutex::new(VecDeque::new()));
    spawn_stderr_reader(stderr, tail.clone());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Nothing more is printed; read on so the pipe never fills.
        for _ in lines {}
    });

    let stderr_tail = || {
        // Give the reader a moment to catch the script's last words.
        thread::sleep(Duration::from_millis(100));
        let lines = tail.lock().map(|t| t.clone()).unwrap_or_default();
        Vec::from(lines).join("\n")
    };
    let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(line) => line,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            bail!(
                "dashboard.mjs did not report its URL within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                stderr_tail()
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = handle
                .child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_default();
            bail!(
                "dashboard.mjs exited ({status}) before listening; stderr:\n{}",
                stderr_tail()
            )
        }
    };
    let parsed: Value = serde_json::from_str(&line)
        .with_context(|| format!("dashboard.mjs printed `{line}`, not JSON"))?;
    handle.url = parsed["url"]
        .as_str()
        .with_context(|| format!("dashboard.mjs printed `{line}`, which has no url"))?
        .to_owned();
    Ok(handle)
}

/// Keeps the last [`STDERR_LINES`] lines of `stderr` in `tail`; the script reports lost
/// Redis connections there, which must not scroll through the demo's output.
fn spawn_stderr_reader(stderr: impl Read + Send + 'static, tail: Arc<Mutex<VecDeque<String>>>) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut t) = tail.lock() {
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;

    use bullpen_testkit::RedisServer;

    fn get(url: &str, path: &str) -> String {
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let mut s = TcpStream::connect(&addr).expect("connect to the dashboard");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    }

    #[test]
    fn serves_the_queues_and_stops_on_drop() {
        if let Err(why) = node_ready() {
            println!("skipped: {why}");
            return;
        }
        let server = RedisServer::start().expect("redis-server");
        let handle = start(&server.url(), &["demo-q"]).expect("dashboard");
        let url = handle.url().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let page = get(&url, "/");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        let api = get(&url, "/api/queues");
        assert!(api.contains("\"name\":\"demo-q\""), "{api}");
        let pid = handle.child.id();
        drop(handle);
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(gone, "node {pid} still runs after the handle was dropped");
        assert!(
            TcpStream::connect(url.trim_start_matches("http://").trim_end_matches('/')).is_err()
        );
    }

    #[test]
    fn reports_an_unreachable_redis() {
        if let Err(why) = node_ready() {
            println!("skipped: {why}");
            return;
        }
        let port = bullpen_testkit::free_port().expect("port");
        let err = start(&format!("redis://127.0.0.1:{port}"), &["q"])
            .expect_err("no redis there")
            .to_string();
        assert!(err.contains("cannot reach"), "{err}");
    }
}
