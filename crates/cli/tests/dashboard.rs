//! A job completed by `bullpen work` as bull-board shows it: the dashboard BullMQ users run
//! (`tests/interop/dashboard.mjs`), looked at in headless Chromium
//! (`tests/interop/dashboard_check.mjs`).
//!
//! Skips when Node or the npm packages are missing, or when `/usr/bin/chromium` is missing
//! outside CI. On CI (`CI` set) a missing Chromium or bull-board package fails the test, so it
//! cannot pass by skipping there.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bullpen_testkit::node::{interop_dir, node_ready, run_node, spawn_node};
use bullpen_testkit::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";
const QUEUE: &str = "dashboard-q";

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Why the test cannot run here, or `None`. Panics on CI when what is missing is something
/// CI installs (Chromium, the npm packages).
fn missing() -> Option<String> {
    if let Err(why) = node_ready() {
        return Some(why);
    }
    let modules = interop_dir().join("node_modules");
    let mut gaps = Vec::new();
    for package in [
        "@bull-board/api",
        "@bull-board/express",
        "express",
        "playwright-core",
    ] {
        if !modules.join(package).join("package.json").is_file() {
            gaps.push(format!(
                "npm package {package} missing: run `npm ci` in {}",
                interop_dir().display()
            ));
        }
    }
    if !Path::new(CHROMIUM).is_file() {
        gaps.push(format!(
            "{CHROMIUM} missing: install it with `apt-get install -y chromium`"
        ));
    }
    if gaps.is_empty() {
        return None;
    }
    let why = gaps.join("; ");
    assert!(
        !on_ci(),
        "CI is set, so the dashboard test must run, but: {why}"
    );
    Some(why)
}

fn bullpen(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bullpen"))
        .args(args)
        .env("BULLPEN_URL", url)
        .stdin(Stdio::null())
        .output()
        .expect("run bullpen");
    assert!(
        out.status.success(),
        "bullpen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bull_board_shows_a_job_completed_by_bullpen() {
    if let Some(why) = missing() {
        println!("skipped: {why}");
        return;
    }
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();

    let id = bullpen(&url, &["add", QUEUE, "hello", r#"{"x":1}"#]);
    bullpen(
        &url,
        &[
            "work",
            QUEUE,
            "--exec",
            r#"echo {\"answer\":42}"#,
            "--max-jobs",
            "1",
        ],
    );
    let job: Value = serde_json::from_str(&bullpen(&url, &["job", QUEUE, &id])).expect("job");
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["returnvalue"], json!({"answer": 42}), "{job}");
    // One more job, left waiting, so the counts tell the states apart.
    bullpen(&url, &["add", QUEUE, "later", "{}"]);

    let mut dashboard =
        spawn_node("dashboard.mjs", &json!({"url": url, "queues": [QUEUE]})).expect("node");
    let stdout = dashboard.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = dashboard.start_kill();
            let mut err = String::new();
            if let Some(mut e) = dashboard.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err)).await;
            }
            panic!("dashboard.mjs printed no URL line ({other:?}); stderr: {err}");
        }
    };
    let started: Value = serde_json::from_str(&line).expect("dashboard.mjs JSON line");
    let dashboard_url = started["url"].as_str().expect("url").to_owned();
    assert!(
        dashboard_url.starts_with("http://127.0.0.1:"),
        "{dashboard_url}"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let input = json!({
        "dashboardUrl": dashboard_url,
        "queue": QUEUE,
        "jobId": id,
        "expectReturnValue": {"answer": 42},
        "screenshot": screenshot,
    });
    let out = run_node("dashboard_check.mjs", &input, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\nscreenshot: {}", screenshot.display()));
    println!("dashboard_check: {out}");
    println!("screenshot: {}", screenshot.display());
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["sawQueue"], true, "{out}");
    assert_eq!(out["completedCount"], 1, "{out}");
    assert_eq!(out["counts"]["waiting"], 1, "{out}");
    assert_eq!(out["counts"]["failed"], 0, "{out}");
    assert_eq!(out["sawReturnValue"], true, "{out}");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );

    // SIGTERM: the dashboard closes and exits 0.
    let pid = dashboard.id().expect("dashboard pid");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(10), dashboard.wait())
        .await
        .expect("dashboard.mjs did not exit after SIGTERM")
        .expect("wait");
    assert!(
        status.success(),
        "dashboard.mjs exited with {status} after SIGTERM"
    );
}
