//! `bullpen work --exec CMD` against a real redis-server.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bullpen_testkit::RedisServer;
use serde_json::Value;

fn bullpen(url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bullpen"));
    c.args(args).env("BULLPEN_URL", url).stdin(Stdio::null());
    c
}

fn add(url: &str, queue: &str, name: &str, data: &str, extra: &[&str]) -> String {
    let mut args = vec!["add", queue, name, data];
    args.extend_from_slice(extra);
    let out = bullpen(url, &args).output().expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn job(url: &str, queue: &str, id: &str) -> Value {
    let out = bullpen(url, &["job", queue, id]).output().expect("job");
    serde_json::from_slice(&out.stdout).expect("job JSON")
}

#[test]
fn runs_a_command_per_job_with_the_job_on_stdin() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let json_id = add(&url, "q", "double", r#"{"n":21}"#, &[]);
    let text_id = add(&url, "q", "text", r#"{"n":1}"#, &[]);
    let fail_id = add(&url, "q", "fail", r#"{"n":2}"#, &[]);
    let script = r#"python3 -c '
import json, sys
j = json.load(sys.stdin)
if j["name"] == "double":
    print(json.dumps({"id": j["id"], "n": j["data"]["n"] * 2}))
elif j["name"] == "text":
    print("plain words")
else:
    print("about to fail", file=sys.stderr)
    print("the real reason", file=sys.stderr)
    sys.exit(3)
'"#;
    let out = bullpen(
        &url,
        &[
            "work",
            "q",
            "--exec",
            script,
            "--exit-when-drained",
            "--concurrency",
            "2",
        ],
    )
    .output()
    .expect("work");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = job(&url, "q", &json_id);
    assert_eq!(j["state"], "completed");
    assert_eq!(j["returnvalue"]["n"], 42);
    assert_eq!(j["returnvalue"]["id"], json_id);
    let t = job(&url, "q", &text_id);
    assert_eq!(t["returnvalue"], "plain words");
    let f = job(&url, "q", &fail_id);
    assert_eq!(f["state"], "failed");
    assert_eq!(f["failedReason"], "the real reason");
}

#[test]
fn a_timeout_fails_the_job_and_max_jobs_stops_the_worker() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let id = add(&url, "q", "slow", "{}", &[]);
    add(&url, "q", "never-run", "{}", &[]);
    let out = bullpen(
        &url,
        &[
            "work",
            "q",
            "--exec",
            "sleep 5",
            "--timeout-ms",
            "200",
            "--max-jobs",
            "1",
        ],
    )
    .output()
    .expect("work");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = job(&url, "q", &id);
    assert_eq!(j["state"], "failed");
    assert!(
        j["failedReason"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "{j}"
    );
}

#[test]
fn sigterm_hands_the_running_job_back_within_grace() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let id = add(&url, "q", "long", "{}", &[]);
    let mut child = bullpen(
        &url,
        &["work", "q", "--exec", "sleep 30", "--grace-ms", "500"],
    )
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()
    .expect("work");
    let deadline = Instant::now() + Duration::from_secs(10);
    while job(&url, "q", &id)["state"] != "active" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_millis(2_500),
        "exited {took:?} after SIGTERM (grace 0.5 s + 2 s)"
    );
    let j = job(&url, "q", &id);
    assert_eq!(j["state"], "waiting", "handed back: {j}");
    assert_eq!(j["attemptsMade"], 0);
}
