//! Runs the real `bullpen` queue commands against a real redis-server.

use std::io::Write;
use std::process::{Command, Stdio};

use bullpen_testkit::RedisServer;
use serde_json::Value;

fn bullpen(url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bullpen"))
        .args(args)
        .env("BULLPEN_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bullpen");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(url: &str, args: &[&str]) -> String {
    let (code, out, err) = bullpen(url, args, None);
    assert_eq!(code, 0, "bullpen {args:?}: {out}{err}");
    out
}

#[test]
fn add_stats_job_jobs_and_admin_commands() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let ids = ok(
        &url,
        &[
            "add",
            "emails",
            "welcome",
            r#"{"to":"a@example.com"}"#,
            "--count",
            "3",
        ],
    );
    assert_eq!(ids.lines().collect::<Vec<_>>(), vec!["1", "2", "3"]);
    let ids = ok(
        &url,
        &[
            "add",
            "emails",
            "later",
            "{}",
            "--delay-ms",
            "60000",
            "--attempts",
            "3",
            "--backoff",
            "exponential:500",
            "--job-id",
            "later-1",
            "--remove-on-complete",
            "all",
        ],
    );
    assert_eq!(ids.trim(), "later-1");
    let (code, out, err) = bullpen(
        &url,
        &["add", "emails", "lines", "-"],
        Some("{\"n\":1}\n\n{\"n\":2}\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2);
    let ids = ok(
        &url,
        &[
            "add",
            "emails",
            "p",
            "{}",
            "--priority",
            "5",
            "--dedup-id",
            "d1",
            "--dedup-ttl-ms",
            "60000",
        ],
    );
    let again = ok(
        &url,
        &[
            "add",
            "emails",
            "p",
            "{}",
            "--priority",
            "5",
            "--dedup-id",
            "d1",
            "--dedup-ttl-ms",
            "60000",
        ],
    );
    assert_eq!(ids, again, "deduplicated: the owner's id is printed");

    let stats: Value =
        serde_json::from_str(&ok(&url, &["stats", "emails", "--json"])).expect("json");
    assert_eq!(stats["counts"]["waiting"], 5);
    assert_eq!(stats["counts"]["delayed"], 1);
    assert_eq!(stats["counts"]["prioritized"], 1);
    let table = ok(&url, &["stats", "emails"]);
    assert!(table.contains("waiting") && table.contains("5"), "{table}");

    let job: Value = serde_json::from_str(&ok(&url, &["job", "emails", "later-1"])).expect("json");
    assert_eq!(job["name"], "later");
    assert_eq!(job["state"], "delayed");
    assert_eq!(job["opts"]["attempts"], 3);
    assert_eq!(job["opts"]["backoff"]["type"], "exponential");
    assert_eq!(job["opts"]["removeOnComplete"], true);
    let (code, _, err) = bullpen(&url, &["job", "emails", "missing"], None);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    let lines = ok(&url, &["jobs", "emails", "--state", "waiting"]);
    let first: Value = serde_json::from_str(lines.lines().next().expect("a job")).expect("json");
    assert!(first["id"].is_string());
    assert_eq!(lines.lines().count(), 5);

    ok(&url, &["pause", "emails"]);
    let stats: Value =
        serde_json::from_str(&ok(&url, &["stats", "emails", "--json"])).expect("json");
    assert_eq!(stats["paused"], true);
    ok(&url, &["resume", "emails"]);

    ok(&url, &["promote", "emails", "later-1"]);
    let stats: Value =
        serde_json::from_str(&ok(&url, &["stats", "emails", "--json"])).expect("json");
    assert_eq!(stats["counts"]["delayed"], 0);
    assert_eq!(stats["counts"]["waiting"], 6);
    let cleaned = ok(
        &url,
        &["clean", "emails", "--state", "waiting", "--limit", "2"],
    );
    assert_eq!(cleaned.lines().count(), 2);
    ok(&url, &["drain", "emails", "--delayed"]);
    let stats: Value =
        serde_json::from_str(&ok(&url, &["stats", "emails", "--json"])).expect("json");
    assert_eq!(stats["counts"]["waiting"], 0);
    assert_eq!(stats["counts"]["prioritized"], 0);
    let (code, _, err) = bullpen(&url, &["retry", "emails", "nope"], None);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");
    ok(&url, &["retry", "emails", "--state", "failed"]);
    ok(&url, &["obliterate", "emails"]);
    let stats: Value =
        serde_json::from_str(&ok(&url, &["stats", "emails", "--json"])).expect("json");
    assert_eq!(stats["counts"]["waiting"], 0);
}

#[test]
fn bad_input_gets_clear_errors_and_writes_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    for (args, needle) in [
        (vec!["add", "q", "n", "{not json"], "not valid JSON"),
        (vec!["add", "q:x", "n", "{}"], "queue name"),
        (
            vec!["add", "q", "n", "{}", "--priority", "3000000"],
            "priority",
        ),
        (vec!["add", "q", "n", "{}", "--attempts", "0"], "attempts"),
        (vec!["add", "q", "n", "{}", "--job-id", "12"], "12"),
        (
            vec!["add", "q", "n", "{}", "--backoff", "linear:5"],
            "backoff",
        ),
        (
            vec!["add", "q", "n", "{}", "--dedup-ttl-ms", "5"],
            "--dedup-id",
        ),
        (vec!["jobs", "q", "--state", "bogus"], "unknown state"),
    ] {
        let (code, out, err) = bullpen(&url, &args, None);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let keys = server.admin(&["KEYS", "bull:q:*"]).expect("KEYS");
    assert!(
        !keys.contains("bull:q:1") && !keys.contains("bull:q:wait"),
        "{keys}"
    );
}

#[test]
fn tls_flags_reach_the_connection() {
    let server = RedisServer::builder()
        .tls(true)
        .start()
        .expect("redis-server with mutual TLS");
    let (ca, cert, key) = server.tls_files();
    let url = format!(
        "rediss://127.0.0.1:{}",
        server.tls_port().expect("tls port")
    );
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let tls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
    ];
    let mut add = vec!["add", "secure", "hello", "{}"];
    add.extend(tls);
    assert_eq!(ok(&url, &add).trim(), "1");
    let mut stats = vec!["stats", "secure", "--json"];
    stats.extend(tls);
    let counts: Value = serde_json::from_str(&ok(&url, &stats)).expect("stats JSON");
    assert_eq!(counts["counts"]["waiting"], 1, "{counts}");
    let mut doctor = vec!["doctor"];
    doctor.extend(tls);
    let (code, out, err) = bullpen(&url, &doctor, None);
    assert!(
        out.contains("maxmemory-policy"),
        "doctor reached the server over TLS (exit {code}): {out}{err}"
    );
    // Without the client certificate the server refuses the handshake: a clear error.
    let (code, _, err) = bullpen(&url, &["stats", "secure", "--tls-ca", ca.as_str()], None);
    assert_ne!(code, 0);
    assert!(!err.is_empty(), "an error is printed");
    // TLS files on a plain URL are refused before connecting.
    let (code, _, err) = bullpen(
        &format!("redis://127.0.0.1:{}", server.port()),
        &["stats", "secure", "--tls-ca", ca.as_str()],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("rediss://"), "{err}");
}
