//! Connections, options and server checks against a real redis-server.

mod common;

use std::time::Duration;

use bullpen_conn::{
    redis, BlockingConnection, ConnEvent, ConnState, Connection, Error, EvictionCheck, PoolManager,
    ServerKind,
};
use bullpen_testkit::{eventually, FakeBehaviour, FakeServer, RedisServer};
use common::{get, opts, wait_event};

#[tokio::test(flavor = "multi_thread")]
async fn commands_events_and_health() {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(opts(&server.url()).with_lazy_connect(true))
        .await
        .expect("connect");
    assert_eq!(conn.state(), ConnState::Idle);
    let mut events = conn.events();
    let _: () = conn
        .query(redis::cmd("SET").arg("k").arg("v"))
        .await
        .expect("SET");
    assert_eq!(get(&conn, "k").await.as_deref(), Some("v"));
    assert!(matches!(events.recv().await, Ok(ConnEvent::Connect)));
    assert!(matches!(
        events.recv().await,
        Ok(ConnEvent::Ready { server: Some(_) })
    ));

    let h = conn.health().await.expect("health");
    assert_eq!(h.kind, ServerKind::Redis);
    assert!(
        h.version.starts_with('7') || h.version.starts_with('6'),
        "{}",
        h.version
    );
    assert_eq!(h.role.as_deref(), Some("master"));
    assert_eq!(h.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(h.state, ConnState::Ready);
    assert!(h.ping_latency > Duration::ZERO);
    assert!(h.is_healthy());
    assert!(h.to_json().contains("\"healthy\":true"), "{}", h.to_json());

    conn.close();
    wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, ConnEvent::End { .. })
    })
    .await;
    let err = conn
        .query::<String>(&redis::cmd("PING"))
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::Ended { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_is_replayed_after_every_reconnect() {
    let server = RedisServer::builder()
        .password("s3cret")
        .start()
        .expect("redis-server");
    let mut o = opts(&format!("redis://:s3cret@127.0.0.1:{}/3", server.port()))
        .with_client_name("bullpen-test");
    o.max_retries_per_request = None;
    let conn = Connection::connect(o).await.expect("connect");
    let _: () = conn
        .query(redis::cmd("SET").arg("in-db-3").arg("yes"))
        .await
        .expect("SET");
    let mut events = conn.events();
    for round in 0..3 {
        server
            .admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .expect("CLIENT KILL");
        wait_event(&mut events, Duration::from_secs(5), |e| {
            matches!(e, ConnEvent::Ready { .. })
        })
        .await;
        let name: Option<String> = conn
            .query(redis::cmd("CLIENT").arg("GETNAME"))
            .await
            .expect("GETNAME");
        assert_eq!(name.as_deref(), Some("bullpen-test"), "round {round}");
        assert_eq!(
            get(&conn, "in-db-3").await.as_deref(),
            Some("yes"),
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_and_acl_user() {
    let server = RedisServer::builder()
        .unix_socket()
        .acl_user("app", "apppw", "~app:* &* +@all")
        .start()
        .expect("redis-server");
    let url = format!("redis+unix://{}", server.socket_path().display());
    let conn = Connection::connect(opts(&url).with_auth(Some("app"), Some("apppw")))
        .await
        .expect("connect over unix socket as ACL user");
    let _: () = conn
        .query(redis::cmd("SET").arg("app:k").arg("1"))
        .await
        .expect("SET in allowed keyspace");
    let who: String = conn
        .query(redis::cmd("ACL").arg("WHOAMI"))
        .await
        .expect("WHOAMI");
    assert_eq!(who, "app");
    let err = conn
        .query::<()>(redis::cmd("SET").arg("other:k").arg("1"))
        .await
        .expect_err("key outside the ACL");
    assert_eq!(err.server_code(), Some("NOPERM"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_hands_out_supervised_connections() {
    let server = RedisServer::start().expect("redis-server");
    let pool = bullpen_conn::Pool::builder()
        .max_size(4)
        .build(PoolManager::new(opts(&server.url())))
        .await
        .expect("pool");
    let mut handles = Vec::new();
    for i in 0..8 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let c = pool.get().await.expect("pooled connection");
            let n: i64 = c
                .query(redis::cmd("INCR").arg("counter"))
                .await
                .expect("INCR");
            assert!(n >= 1, "task {i}");
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let c = pool.get().await.expect("pooled connection");
    assert_eq!(get(&c, "counter").await.as_deref(), Some("8"));
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_connection_blocks_and_answers() {
    let server = RedisServer::start().expect("redis-server");
    let b = BlockingConnection::connect(opts(&server.url()).blocking())
        .await
        .expect("blocking connect");
    let c = Connection::connect(opts(&server.url()).worker())
        .await
        .expect("connect");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.block::<Option<(String, String, f64)>>(
                redis::cmd("BZPOPMIN").arg("z").arg(5),
                Duration::from_secs(5),
            )
            .await
        })
    };
    eventually(
        || async {
            server
                .info_field("blocked_clients")
                .ok()
                .flatten()
                .as_deref()
                == Some("1")
        },
        Duration::from_secs(5),
    )
    .await
    .expect("BZPOPMIN is blocked");
    let _: i64 = c
        .query(redis::cmd("ZADD").arg("z").arg(1).arg("m"))
        .await
        .expect("ZADD");
    let got = waiter.await.expect("task").expect("BZPOPMIN");
    assert_eq!(got.map(|(k, m, _)| (k, m)), Some(("z".into(), "m".into())));
    let err = b
        .block::<()>(redis::cmd("BZPOPMIN").arg("z").arg(0), Duration::ZERO)
        .await
        .expect_err("zero block timeout");
    assert!(matches!(
        err,
        Error::InvalidOptions {
            field: "block_timeout",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_policy_deny_refuses_with_the_fix() {
    let server = RedisServer::builder()
        .maxmemory_policy("allkeys-lru")
        .start()
        .expect("redis-server");
    let err = Connection::connect(opts(&server.url()))
        .await
        .expect_err("allkeys-lru must be refused by default");
    assert!(matches!(err, Error::EvictionPolicy { ref policy, .. } if policy == "allkeys-lru"));
    let msg = err.to_string();
    assert!(
        msg.contains("noeviction") && msg.contains("EvictionCheck::Warn"),
        "{msg}"
    );
}

/// Captures log lines on the current thread (the runtime is current-thread, so the
/// supervisor's logs land here too).
fn capture_logs() -> (
    tracing::subscriber::DefaultGuard,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = Buf(buf.clone());
    let sub = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    (tracing::subscriber::set_default(sub), buf)
}

#[tokio::test(flavor = "current_thread")]
async fn eviction_policy_warn_warns_and_skip_is_silent() {
    let server = RedisServer::builder()
        .maxmemory_policy("allkeys-lru")
        .start()
        .expect("redis-server");
    for (check, expect_warning) in [(EvictionCheck::Warn, true), (EvictionCheck::Skip, false)] {
        let (guard, logs) = capture_logs();
        let conn = Connection::connect(opts(&server.url()).with_eviction_check(check))
            .await
            .expect("opted out, so it connects");
        conn.ping().await.expect("PING");
        drop(guard);
        let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
        assert_eq!(
            text.contains("maxmemory-policy is not noeviction"),
            expect_warning,
            "{check:?}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_older_than_6_2_are_refused() {
    let old = FakeServer::start(FakeBehaviour::RedisWithInfo(
        "# Server\r\nredis_version:6.0.9\r\n# Memory\r\nmaxmemory_policy:noeviction\r\nloading:0\r\n".into(),
    ))
    .await
    .expect("fake server");
    let err = Connection::connect(opts(&old.url()).producer())
        .await
        .expect_err("6.0.9 must be refused");
    assert!(
        matches!(err, Error::UnsupportedServer { ref found, .. } if found == "6.0.9"),
        "{err}"
    );
    assert!(err.to_string().contains("6.2.0"), "{err}");

    let ok = FakeServer::start(FakeBehaviour::RedisWithInfo(
        "redis_version:6.2.0\r\nmaxmemory_policy:noeviction\r\nloading:0\r\n".into(),
    ))
    .await
    .expect("fake server");
    Connection::connect(opts(&ok.url()).producer())
        .await
        .expect("6.2.0 is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_queue_off_fails_at_once_and_max_retries_bounds_waiting() {
    let mut server = RedisServer::start().expect("redis-server");
    let off = Connection::connect(opts(&server.url()).with_offline_queue(false))
        .await
        .expect("connect");
    let bounded = Connection::connect(opts(&server.url()).with_max_retries_per_request(Some(2)))
        .await
        .expect("connect");
    let mut ev = off.events();
    server.kill9().expect("kill -9");
    wait_event(&mut ev, Duration::from_secs(5), |e| {
        matches!(e, ConnEvent::Close)
    })
    .await;
    let err = off.ping().await.expect_err("offline");
    assert!(matches!(err, Error::Offline { .. }), "{err}");
    let err = bounded.ping().await.expect_err("server stays down");
    assert!(matches!(err, Error::MaxRetriesPerRequest { .. }), "{err}");
    assert!(
        matches!(&err, Error::MaxRetriesPerRequest { last, .. } if matches!(**last, Error::Connect { .. })),
        "the last failure is the refused connect: {err}"
    );
}
