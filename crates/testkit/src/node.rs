//! Runs the Node interop peers in `tests/interop` (BullMQ driven from Node).
//!
//! Each script takes one JSON object as its argument and prints one JSON object as the
//! last line of stdout; `tests/interop/README.md` lists the fields. [`node_ready`] says
//! whether they can run here, and why not; [`run_node`] runs one to its end;
//! [`spawn_node`] and [`wait_node`] keep one running next to the test.
//!
//! ```no_run
//! # async fn t(url: &str) -> Result<(), String> {
//! use std::time::Duration;
//! if let Err(why) = bullpen_testkit::node::node_ready() {
//!     println!("skipped: {why}");
//!     return Ok(());
//! }
//! let input = serde_json::json!({"url": url, "queue": "q", "jobs": [{"name": "a"}]});
//! let out = bullpen_testkit::node::run_node("produce.mjs", &input, Duration::from_secs(30)).await?;
//! assert_eq!(out["ids"][0], "1");
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// The BullMQ version the scripts are written against (pinned in `package.json`).
pub const BULLMQ_VERSION: &str = "6.7.0";

/// How much of a script's stderr or stdout goes into an error message.
const TAIL_CHARS: usize = 4000;

/// `<workspace root>/tests/interop`: where the scripts, `package.json` and
/// `node_modules` are.
pub fn interop_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join("tests")
        .join("interop")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn installed_version(package_json: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(package_json)
        .map_err(|e| format!("cannot read {}: {e}", package_json.display()))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", package_json.display()))?;
    json.get("version")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no version", package_json.display()))
}

/// Whether the Node peers can run: `node` is on the `PATH` and `tests/interop/node_modules`
/// holds `bullmq` [`BULLMQ_VERSION`] and `ioredis`. The error says what is missing and how
/// to fix it; tests print it and skip.
pub fn node_ready() -> Result<(), String> {
    if on_path("node").is_none() {
        return Err("`node` not found on PATH: install Node.js 18 or newer".into());
    }
    let dir = interop_dir();
    let modules = dir.join("node_modules");
    let bullmq = modules.join("bullmq").join("package.json");
    if !bullmq.is_file() {
        return Err(format!(
            "node_modules missing ({} not found): run `npm ci` in {}",
            bullmq.display(),
            dir.display()
        ));
    }
    let version = installed_version(&bullmq)?;
    if version != BULLMQ_VERSION {
        return Err(format!(
            "bullmq {version} installed, the scripts need {BULLMQ_VERSION}: run `npm ci` in {}",
            dir.display()
        ));
    }
    if !modules.join("ioredis").join("package.json").is_file() {
        return Err(format!(
            "ioredis missing from node_modules: run `npm ci` in {}",
            dir.display()
        ));
    }
    Ok(())
}

/// Starts `node tests/interop/<script> '<input as JSON>'` and returns at once, for a peer
/// that runs next to the test (a worker, an events listener). Its stdout and stderr are
/// piped (collect them with [`wait_node`]) and it is killed when the [`Child`] is dropped.
/// The script still bounds its own run time with the input's `timeoutMs`.
pub fn spawn_node(script: &str, input: &Value) -> std::io::Result<Child> {
    let dir = interop_dir();
    Command::new("node")
        .arg(dir.join(script))
        .arg(input.to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Waits up to `timeout` for a child from [`spawn_node`] to exit, and returns the JSON
/// object on the last line of its stdout. The error names the script and includes its exit
/// status, its stderr and, when the output was not JSON, the end of its stdout. On timeout
/// the child is killed.
pub async fn wait_node(script: &str, child: Child, timeout: Duration) -> Result<Value, String> {
    let mut child = child;
    let collect = async {
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            match stdout.as_mut() {
                Some(s) => s.read_to_end(&mut out).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let read_err = async {
            match stderr.as_mut() {
                Some(s) => s.read_to_end(&mut err).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let (r1, r2) = tokio::join!(read_out, read_err);
        r1.and(r2)
            .map_err(|e| format!("{script}: reading its output: {e}"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("{script}: waiting for node: {e}"))?;
        Ok::<_, String>((status, out, err))
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok((status, out, err))) => parse_output(script, status, &out, &err),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "{script}: node did not finish within {timeout:?} (killed)"
        )),
    }
}

/// Runs `node tests/interop/<script> '<input as JSON>'` to its end and returns the JSON
/// object on the last line of its stdout. Fails, with the exit status and stderr, when node
/// cannot start, exits non-zero, prints no JSON, or takes longer than `timeout` (it is then
/// killed). Give `timeout` a few seconds more than the input's `timeoutMs`.
pub async fn run_node(script: &str, input: &Value, timeout: Duration) -> Result<Value, String> {
    let child = spawn_node(script, input).map_err(|e| {
        format!(
            "{script}: cannot start node ({e}); {}",
            node_ready()
                .err()
                .unwrap_or_else(|| "node_ready() is Ok".into())
        )
    })?;
    wait_node(script, child, timeout).await
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(TAIL_CHARS);
    if skip == 0 {
        text.to_owned()
    } else {
        format!("...{}", text.chars().skip(skip).collect::<String>())
    }
}

fn parse_output(
    script: &str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Value, String> {
    if !status.success() {
        return Err(format!(
            "{script}: node exited with {status}; stderr: {}",
            tail(stderr)
        ));
    }
    let text = String::from_utf8_lossy(stdout);
    let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Err(format!(
            "{script}: node exited with {status} but printed nothing; stderr: {}",
            tail(stderr)
        ));
    };
    match serde_json::from_str::<Value>(last) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(format!(
            "{script}: last stdout line is JSON but not an object: {}",
            tail(last.as_bytes())
        )),
        Err(e) => Err(format!(
            "{script}: last stdout line is not JSON ({e}): {}; stderr: {}",
            tail(last.as_bytes()),
            tail(stderr)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn interop_dir_is_under_the_workspace_root() {
        let dir = interop_dir();
        assert!(dir.ends_with("tests/interop"), "{}", dir.display());
        assert!(
            dir.join("package.json").is_file(),
            "{} has no package.json",
            dir.display()
        );
    }

    #[test]
    fn parses_the_last_line_only() {
        let ok = ExitStatus::from_raw(0);
        let v = parse_output("x.mjs", ok, b"noise\n{\"a\":1}\n\n", b"").expect("json");
        assert_eq!(v["a"], 1);
        let e = parse_output("x.mjs", ok, b"{\"a\":1}\nnot json\n", b"warn").expect_err("bad");
        assert!(e.contains("not JSON") && e.contains("warn"), "{e}");
        let e = parse_output("x.mjs", ok, b"", b"").expect_err("empty");
        assert!(e.contains("printed nothing"), "{e}");
        let failed = ExitStatus::from_raw(1 << 8);
        let e = parse_output("x.mjs", failed, b"{}", b"boom").expect_err("exit 1");
        assert!(e.contains("exit status: 1") && e.contains("boom"), "{e}");
    }
}
