//! `bullpen events` against a real redis-server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bullpen_testkit::RedisServer;
use serde_json::Value;

#[test]
fn tails_events_as_json_lines_and_exits_on_sigint() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let add = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bullpen"))
            .args(["add", "ev", name, r#"{"x":1}"#])
            .env("BULLPEN_URL", &url)
            .output()
            .expect("add");
        assert!(out.status.success());
    };
    add("before");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bullpen"))
        .args(["events", "ev", "--from", "0", "--json"])
        .env("BULLPEN_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("events");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        let l = lines.next().expect("a line").expect("utf-8");
        serde_json::from_str(&l).expect("JSON line")
    };
    let a = next();
    assert_eq!(a["event"], "added");
    assert_eq!(a["fields"]["name"], "before");
    assert_eq!(next()["event"], "waiting");
    add("live");
    let b = next();
    assert_eq!(
        (b["event"].as_str(), b["fields"]["name"].as_str()),
        (Some("added"), Some("live"))
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
