//! Runs the real `bullpen doctor` binary against real redis-server processes.

use std::process::Command;

use bullpen_testkit::{free_port, RedisServer};

fn doctor(url: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bullpen"))
        .args(["doctor", "--url", url])
        .env_remove("BULLPEN_URL")
        .output()
        .expect("run bullpen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

#[test]
fn a_good_server_passes_with_aof_everysec() {
    let server = RedisServer::builder().aof().start().expect("redis-server");
    let (code, out, err) = doctor(&server.url());
    assert_eq!(code, 0, "{out}{err}");
    assert!(row(&out, "persistence").contains("pass"), "{out}");
    assert!(row(&out, "persistence").contains("everysec"), "{out}");
    assert!(row(&out, "maxmemory-policy").contains("pass"), "{out}");
    assert!(
        row(&out, "version").contains("redis 7") || row(&out, "version").contains("redis 6"),
        "{out}"
    );
    assert!(row(&out, "latency").contains("p50"), "{out}");
}

#[test]
fn eviction_policy_fails_and_aof_off_warns() {
    let server = RedisServer::builder()
        .maxmemory_policy("volatile-lru")
        .start()
        .expect("redis-server");
    let (code, out, _) = doctor(&server.url());
    assert_eq!(code, 1, "{out}");
    assert!(row(&out, "maxmemory-policy").contains("fail"), "{out}");
    assert!(
        row(&out, "maxmemory-policy").contains("noeviction"),
        "{out}"
    );
    assert!(row(&out, "persistence").contains("warn"), "{out}");
    assert!(out.contains("result: fail"));
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let port = free_port().expect("port");
    let (code, out, err) = doctor(&format!("redis://127.0.0.1:{port}"));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("refused"), "{err}");
    let (code, _, err) = doctor("http://nope");
    assert_eq!(code, 2);
    assert!(err.contains("unknown scheme"), "{err}");
}
