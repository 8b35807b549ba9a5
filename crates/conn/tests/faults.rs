//! Faults injected for real: kill -9, restart, CLIENT KILL, a fault proxy, ACL changes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bullpen_conn::{
    redis, BlockingConnection, ConnEvent, ConnState, Connection, EndReason, Error, RetryStrategy,
};
use bullpen_testkit::{eventually, FaultProxy, ProxyMode, RedisServer};
use common::{get, opts, wait_event};
use tokio::sync::broadcast::error::RecvError;

/// The promise under test is "within 2 s"; the slack covers scheduling on a loaded 2-core box.
const PRODUCER_BOUND: Duration = Duration::from_millis(2_500);

fn upstream(server: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

async fn assert_fails_fast(conn: &Connection, what: &str) -> Error {
    let t = Instant::now();
    let err = conn
        .query::<()>(redis::cmd("SET").arg("k").arg("v"))
        .await
        .expect_err(what);
    let took = t.elapsed();
    println!("producer fail-fast ({what}): {took:?}");
    assert!(took <= PRODUCER_BOUND, "{what}: took {took:?}: {err}");
    assert!(
        matches!(
            err,
            Error::Unavailable { .. }
                | Error::CommandTimeout { .. }
                | Error::ConnectionLost { .. }
                | Error::MaxRetriesPerRequest { .. }
        ),
        "{what}: {err}"
    );
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_fails_fast_when_redis_is_killed() {
    let mut server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(opts(&server.url()).producer())
        .await
        .expect("connect");
    conn.ping().await.expect("PING");
    server.kill9().expect("kill -9");
    for i in 0..3 {
        assert_fails_fast(&conn, &format!("killed, call {i}")).await;
    }
    // A new producer against the dead port fails fast too, naming the refused connect.
    let t = Instant::now();
    let err = Connection::connect(opts(&server.url()).producer())
        .await
        .expect_err("nothing listens");
    assert!(t.elapsed() <= PRODUCER_BOUND, "{:?}", t.elapsed());
    assert!(
        matches!(err.last_connect_error(), Some(Error::Connect { .. })),
        "{err}"
    );
    // And it recovers once the server is back.
    server.restart().expect("restart");
    eventually(
        || async { conn.ping().await.is_ok() },
        Duration::from_secs(5),
    )
    .await
    .expect("producer connection recovers");
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_fails_fast_when_refused_or_black_holed() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(upstream(&server)).await.expect("proxy");
    let conn = Connection::connect(opts(&proxy.url()).producer())
        .await
        .expect("connect");
    conn.ping().await.expect("PING");

    proxy.set_mode(ProxyMode::Refuse);
    proxy.cut_all();
    for i in 0..3 {
        assert_fails_fast(&conn, &format!("refused, call {i}")).await;
    }

    proxy.set_mode(ProxyMode::BlackHole);
    for i in 0..3 {
        assert_fails_fast(&conn, &format!("black hole, call {i}")).await;
    }

    proxy.set_mode(ProxyMode::Pass);
    eventually(
        || async { conn.ping().await.is_ok() },
        Duration::from_secs(10),
    )
    .await
    .expect("recovers after the black hole heals");
    // Reset mode: the live connection is cut at its next byte and new ones are reset.
    proxy.set_mode(ProxyMode::Reset);
    for i in 0..3 {
        assert_fails_fast(&conn, &format!("reset, call {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_resumes_by_itself_after_kill9_and_restart() {
    let mut server = RedisServer::builder().aof().start().expect("redis-server");
    let conn = Connection::connect(opts(&server.url()).worker().with_retry_strategy(
        RetryStrategy::exponential(
            Duration::from_millis(50),
            Duration::from_millis(50),
            Duration::from_millis(500),
        ),
    ))
    .await
    .expect("connect");
    let _: i64 = conn.query(redis::cmd("INCR").arg("n")).await.expect("INCR");
    // Let everysec fsync the first write (the plan's A2 window is not under test here).
    eventually(
        || async {
            std::fs::read_dir(server.dir().join("appendonlydir"))
                .map(|d| {
                    d.flatten()
                        .any(|f| f.metadata().map(|m| m.len() > 0).unwrap_or(false))
                })
                .unwrap_or(false)
        },
        Duration::from_secs(5),
    )
    .await
    .expect("AOF written");
    let mut events = conn.events();
    server.kill9().expect("kill -9");
    wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, ConnEvent::Close)
    })
    .await;

    // Callers issue commands while Redis is down; nobody retries them by hand.
    let pending: Vec<_> = (0..10)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move { c.query::<i64>(redis::cmd("INCR").arg("n")).await })
        })
        .collect();
    // The scenario: the server stays down for 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pending.iter().all(|p| !p.is_finished()),
        "calls wait while down"
    );
    server.restart().expect("restart");
    let back = Instant::now();
    for p in pending {
        p.await
            .expect("task")
            .expect("INCR resumes without caller action");
    }
    let resumed = back.elapsed();
    println!("worker resumed {resumed:?} after the server was back");
    assert!(
        resumed < Duration::from_secs(5),
        "P5: resumed after {resumed:?}"
    );
    assert_eq!(get(&conn, "n").await.as_deref(), Some("11"));
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_connection_is_reestablished_and_never_resends() {
    let mut server = RedisServer::start().expect("redis-server");
    let b = BlockingConnection::connect(opts(&server.url()).blocking())
        .await
        .expect("connect");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.block::<Option<(String, String, f64)>>(
                redis::cmd("BZPOPMIN").arg("z").arg(10),
                Duration::from_secs(10),
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
    .expect("blocked");
    server.kill9().expect("kill -9");
    let err = waiter
        .await
        .expect("task")
        .expect_err("the blocking call fails, not resent");
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    server.restart().expect("restart");
    let c = Connection::connect(opts(&server.url()))
        .await
        .expect("connect");
    let _: i64 = c
        .query(redis::cmd("ZADD").arg("z").arg(1).arg("m"))
        .await
        .expect("ZADD");
    let got: Option<(String, String, f64)> = b
        .block(
            redis::cmd("BZPOPMIN").arg("z").arg(5),
            Duration::from_secs(5),
        )
        .await
        .expect("blocking works again on a new connection");
    assert_eq!(got.map(|g| g.1), Some("m".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_kill_of_everything_reconnects_without_leaks() {
    let server = RedisServer::start().expect("redis-server");
    let conns = futures_join((0..3).map(|i| {
        Connection::connect(
            opts(&server.url())
                .worker()
                .with_client_name(format!("c{i}")),
        )
    }))
    .await;
    let b = BlockingConnection::connect(opts(&server.url()).blocking())
        .await
        .expect("blocking");
    let before = server.connected_clients().expect("clients");
    assert_eq!(before, 4);
    for round in 0..3 {
        server
            .admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .expect("CLIENT KILL");
        for c in &conns {
            eventually(|| async { c.ping().await.is_ok() }, Duration::from_secs(5))
                .await
                .expect("reconnected");
        }
        eventually(
            || async { b.connection().ping().await.is_ok() },
            Duration::from_secs(5),
        )
        .await
        .expect("blocking reconnected");
        eventually(
            || async { server.connected_clients().ok() == Some(before) },
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}: {} clients, expected {before}",
                server.connected_clients().unwrap_or(0)
            )
        });
    }
}

async fn futures_join<F: std::future::Future<Output = bullpen_conn::Result<Connection>>>(
    it: impl Iterator<Item = F>,
) -> Vec<Connection> {
    let mut out = Vec::new();
    for f in it {
        out.push(f.await.expect("connect"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn black_hole_fires_command_timeout_and_blocking_watchdog() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(upstream(&server)).await.expect("proxy");
    let mut o = opts(&proxy.url()).worker();
    o.command_timeout = Some(Duration::from_millis(300));
    o.connect_timeout = Duration::from_millis(500);
    let conn = Connection::connect(o.clone()).await.expect("connect");
    let b = BlockingConnection::connect(o.blocking())
        .await
        .expect("blocking");
    conn.ping().await.expect("PING");

    proxy.set_mode(ProxyMode::BlackHole);
    let err = conn.ping().await.expect_err("black hole");
    assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");

    let t = Instant::now();
    let err = b
        .block::<Option<(String, String, f64)>>(
            redis::cmd("BZPOPMIN").arg("z").arg("0.2"),
            Duration::from_millis(200),
        )
        .await
        .expect_err("watchdog");
    assert!(matches!(err, Error::Watchdog { .. }), "{err}");
    // P7: no blocking call outstanding longer than block timeout + 1 s (+ scheduling slack).
    assert!(
        t.elapsed() < Duration::from_millis(1_700),
        "{:?}",
        t.elapsed()
    );

    proxy.set_mode(ProxyMode::Pass);
    eventually(
        || async { conn.ping().await.is_ok() },
        Duration::from_secs(10),
    )
    .await
    .expect("recovers");
    let got: Option<(String, String, f64)> = b
        .block(
            redis::cmd("BZPOPMIN").arg("z").arg("0.2"),
            Duration::from_millis(200),
        )
        .await
        .expect("blocking works again");
    assert_eq!(got, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_rotation_then_restore_recovers() {
    let server = RedisServer::builder()
        .acl_user("app", "old-pw", "~* &* +@all")
        .start()
        .expect("redis-server");
    let conn = Connection::connect(
        opts(&server.url())
            .worker()
            .with_auth(Some("app"), Some("old-pw")),
    )
    .await
    .expect("connect");
    let mut events = conn.events();
    server
        .admin(&["ACL", "SETUSER", "app", "resetpass", ">new-pw"])
        .expect("rotate");
    server
        .admin(&["CLIENT", "KILL", "USER", "app"])
        .expect("kill app's connections");
    // Every retry reports an authentication error, not a generic I/O error.
    for _ in 0..3 {
        let e = wait_event(&mut events, Duration::from_secs(5), |e| {
            matches!(e, ConnEvent::Error { .. })
        })
        .await;
        assert!(
            matches!(&e, ConnEvent::Error { error: Error::Auth { user, .. } } if user == "app"),
            "{e:?}"
        );
    }
    let pending = {
        let c = conn.clone();
        tokio::spawn(async move { c.query::<i64>(redis::cmd("INCR").arg("x")).await })
    };
    server
        .admin(&["ACL", "SETUSER", "app", "resetpass", ">old-pw"])
        .expect("restore");
    let n = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("not wedged")
        .expect("task")
        .expect("INCR after the password is restored");
    assert_eq!(n, 1);
    assert_eq!(conn.state(), ConnState::Ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_strategy_that_gives_up_emits_end() {
    let mut server = RedisServer::start().expect("redis-server");
    let o = opts(&server.url()).with_retry_strategy(RetryStrategy::limited(
        3,
        Duration::from_millis(20),
        Duration::from_millis(20),
        Duration::from_millis(50),
    ));
    let conn = Connection::connect(o).await.expect("connect");
    let mut events = conn.events();
    server.kill9().expect("kill -9");
    let mut reconnecting = 0;
    let end = wait_event(&mut events, Duration::from_secs(5), |e| {
        if matches!(e, ConnEvent::Reconnecting { .. }) {
            reconnecting += 1;
        }
        matches!(e, ConnEvent::End { .. })
    })
    .await;
    assert!(matches!(
        end,
        ConnEvent::End {
            reason: EndReason::RetryStrategyGaveUp
        }
    ));
    assert_eq!(reconnecting, 3);
    assert_eq!(conn.state(), ConnState::Ended);
    let err = conn.ping().await.expect_err("ended");
    assert!(
        matches!(
            err,
            Error::Ended {
                reason: EndReason::RetryStrategyGaveUp,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("gave up"), "{err}");
    // Even with the server back, an ended connection stays ended: the caller was told.
    server.restart().expect("restart");
    assert!(conn.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_subscriber_lags_instead_of_growing_memory() {
    let mut server = RedisServer::start().expect("redis-server");
    let mut o = opts(&server.url()).with_retry_strategy(RetryStrategy::exponential(
        Duration::from_millis(5),
        Duration::from_millis(5),
        Duration::from_millis(5),
    ));
    o.event_capacity = 4;
    let conn = Connection::connect(o).await.expect("connect");
    let mut slow = conn.events();
    let mut fast = conn.events();
    server.kill9().expect("kill -9");
    // Each failed attempt emits Error and Reconnecting; wait for far more than the bound.
    let mut seen = 0;
    wait_event(&mut fast, Duration::from_secs(10), |e| {
        if matches!(e, ConnEvent::Reconnecting { .. }) {
            seen += 1;
        }
        seen >= 20
    })
    .await;
    match slow.recv().await {
        Err(RecvError::Lagged(n)) => assert!(n >= 20, "lost {n}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    // After the lag report it reads on from the newest retained events.
    assert!(slow.recv().await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_after_a_restart_is_waited_out_not_surfaced() {
    // key-load-delay (µs per key) stretches loading so that the window is certain, and a
    // small event interval lets the server answer (LOADING, INFO) while it loads.
    let mut server = RedisServer::builder()
        .aof()
        .config("key-load-delay", "200")
        .config("loading-process-events-interval-bytes", "1024")
        .start()
        .expect("redis-server");
    server
        .admin(&["DEBUG", "POPULATE", "10000"])
        .expect("populate");
    server.admin(&["BGREWRITEAOF"]).expect("rewrite");
    eventually(
        || async {
            server
                .info_field("aof_rewrite_in_progress")
                .ok()
                .flatten()
                .as_deref()
                == Some("0")
        },
        Duration::from_secs(10),
    )
    .await
    .expect("rewrite done");
    let existing = Connection::connect(opts(&server.url()).worker())
        .await
        .expect("connect");
    let mut events = existing.events();
    server.kill9().expect("kill -9");
    wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, ConnEvent::Close)
    })
    .await;
    server.restart_no_wait().expect("restart");
    assert_eq!(
        server.info_field("loading").expect("INFO").as_deref(),
        Some("1"),
        "precondition: the server is still loading"
    );
    // A connection made during loading, and one that reconnects during loading, both wait
    // for the dataset instead of handing LOADING to the caller.
    let fresh = Connection::connect(opts(&server.url()).producer().with_request_deadline(None))
        .await
        .expect("connect during loading");
    assert_eq!(get(&fresh, "key:1").await.as_deref(), Some("value:1"));
    assert_eq!(
        get(&existing, "key:9999").await.as_deref(),
        Some("value:9999")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readonly_reconnects_and_resends_until_the_master_is_back() {
    let server = RedisServer::start().expect("redis-server");
    let master = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(opts(&server.url()).worker())
        .await
        .expect("connect");
    let bounded = Connection::connect(opts(&server.url()).with_max_retries_per_request(Some(2)))
        .await
        .expect("connect");
    // Demote the server, as a failover does.
    server
        .admin(&["REPLICAOF", "127.0.0.1", &master.port().to_string()])
        .expect("REPLICAOF");
    let err = bounded
        .query::<()>(redis::cmd("SET").arg("k").arg("v"))
        .await
        .expect_err("a replica refuses writes");
    match &err {
        Error::MaxRetriesPerRequest { last, retries, .. } => {
            assert_eq!(*retries, 2);
            assert_eq!(last.server_code(), Some("READONLY"), "{err}");
        }
        other => panic!("expected MaxRetriesPerRequest, got {other}"),
    }
    let mut events = conn.events();
    let write = {
        let c = conn.clone();
        tokio::spawn(async move { c.query::<()>(redis::cmd("SET").arg("k").arg("v")).await })
    };
    // The worker keeps reconnecting and resending while the endpoint is a replica.
    for _ in 0..2 {
        wait_event(&mut events, Duration::from_secs(5), |e| {
            matches!(e, ConnEvent::Ready { .. })
        })
        .await;
    }
    assert!(!write.is_finished());
    server.admin(&["REPLICAOF", "NO", "ONE"]).expect("promote");
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("write finishes once the endpoint is a master again")
        .expect("task")
        .expect("SET");
    assert_eq!(get(&conn, "k").await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstop_times_commands_out_and_sigcont_recovers() {
    let server = RedisServer::start().expect("redis-server");
    let mut o = opts(&server.url()).worker();
    o.command_timeout = Some(Duration::from_millis(300));
    o.connect_timeout = Duration::from_millis(500);
    let conn = Connection::connect(o).await.expect("connect");
    conn.ping().await.expect("PING");
    server.pause().expect("SIGSTOP");
    let err = conn
        .ping()
        .await
        .expect_err("a stopped server does not answer");
    assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");
    assert_eq!(err.applied(), bullpen_conn::Applied::Unknown);
    server.resume().expect("SIGCONT");
    eventually(
        || async { conn.ping().await.is_ok() },
        Duration::from_secs(10),
    )
    .await
    .expect("recovers after SIGCONT");
}

#[tokio::test(flavor = "multi_thread")]
async fn added_latency_is_felt_and_bounded_by_the_command_timeout() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = FaultProxy::start(upstream(&server)).await.expect("proxy");
    let conn = Connection::connect(opts(&proxy.url()).worker())
        .await
        .expect("connect");
    let strict = Connection::connect(
        opts(&proxy.url())
            .worker()
            .with_command_timeout(Some(Duration::from_millis(150))),
    )
    .await
    .expect("connect");
    proxy.set_mode(ProxyMode::Latency(Duration::from_millis(120)));
    let t = Instant::now();
    conn.ping().await.expect("slow but fine");
    // 120 ms each way.
    assert!(
        t.elapsed() >= Duration::from_millis(240),
        "{:?}",
        t.elapsed()
    );
    let err = strict.ping().await.expect_err("slower than its timeout");
    assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");
    proxy.set_mode(ProxyMode::Pass);
    eventually(
        || async { strict.ping().await.is_ok() },
        Duration::from_secs(5),
    )
    .await
    .expect("fast again");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_queue_is_bounded() {
    let mut server = RedisServer::start().expect("redis-server");
    let mut o = opts(&server.url()).worker();
    o.offline_queue_limit = 2;
    let conn = Connection::connect(o).await.expect("connect");
    let mut events = conn.events();
    server.kill9().expect("kill -9");
    wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, ConnEvent::Close)
    })
    .await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move { c.ping().await })
        })
        .collect();
    // Both waiters hold their place before the third call arrives.
    eventually(
        || async { conn.waiting_calls() == 2 },
        Duration::from_secs(5),
    )
    .await
    .expect("two calls wait for the connection");
    let err = conn.ping().await.expect_err("the queue is full");
    assert!(
        matches!(err, Error::OfflineQueueFull { limit: 2, .. }),
        "{err}"
    );
    assert_eq!(err.applied(), bullpen_conn::Applied::No);
    server.restart().expect("restart");
    for w in waiting {
        w.await
            .expect("task")
            .expect("queued calls complete after the restart");
    }
}

/// A script that counts its runs, loaded on the server so that calls go as `EVALSHA`.
async fn counting_script(server: &RedisServer) -> String {
    let direct = Connection::connect(opts(&server.url()).producer())
        .await
        .expect("connect");
    let sha: String = direct
        .query(
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg("return redis.call('INCR', KEYS[1])"),
        )
        .await
        .expect("SCRIPT LOAD");
    direct.close();
    sha
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_whose_reply_was_lost_is_resent_by_query_but_not_by_query_at_most_once() {
    let server = RedisServer::start().expect("redis-server");
    let sha = counting_script(&server).await;
    let proxy = FaultProxy::start(upstream(&server)).await.expect("proxy");
    let conn = Connection::connect(opts(&proxy.url()).producer())
        .await
        .expect("connect");
    let call = |key: &str| {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&sha).arg(1).arg(key);
        c
    };

    // At most once: the script ran, the reply was lost, the caller hears "unknown".
    proxy.set_mode(ProxyMode::drop_reply_to(&sha, 1).expect("mode"));
    let err = conn
        .query_at_most_once::<i64>(&call("once"))
        .await
        .expect_err("the reply was lost");
    assert!(
        matches!(err, Error::ConnectionLost { .. }),
        "expected ConnectionLost, got {err:?}"
    );
    assert_eq!(err.applied(), bullpen_conn::Applied::Unknown);
    assert_eq!(
        get(&conn, "once").await.as_deref(),
        Some("1"),
        "ran exactly once"
    );

    // The default: sent again after the reconnect, so it runs twice.
    proxy.set_mode(ProxyMode::drop_reply_to(&sha, 1).expect("mode"));
    let n: i64 = conn
        .query(&call("twice"))
        .await
        .expect("resent and answered");
    assert_eq!(n, 2);
    assert_eq!(get(&conn, "twice").await.as_deref(), Some("2"));
    conn.close();
}
