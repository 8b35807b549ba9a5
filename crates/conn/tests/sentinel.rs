//! Sentinel against a real topology: one master, one replica, three sentinels.

mod common;

use std::time::{Duration, Instant};

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_testkit::{free_port, SentinelTopology};
use common::{fast_retry, get};

/// A worker-preset connection through `url` that reconnects quickly.
async fn worker_conn(url: &str) -> Connection {
    Connection::connect(
        RedisOptions::from_url(url)
            .expect("url")
            .worker()
            .with_retry_strategy(fast_retry()),
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_the_master_and_follows_a_failover() {
    let mut topo = SentinelTopology::start().expect("sentinel topology");
    let conn = worker_conn(&topo.url()).await;
    let _: () = conn
        .query(redis::cmd("SET").arg("k").arg("before"))
        .await
        .expect("SET");
    let role: Vec<redis::Value> = conn.query(&redis::cmd("ROLE")).await.expect("ROLE");
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
    // Wait until the replica has the write, so the failover keeps it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while topo.replica.admin(&["GET", "k"]).ok().as_deref() != Some("before") {
        assert!(Instant::now() < deadline, "replication");
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_master = topo.master.port();
    let killed = Instant::now();
    topo.master.kill9().expect("kill -9 the master");
    // A write issued during the failover waits, then lands on the new master.
    let _: () = tokio::time::timeout(
        Duration::from_secs(20),
        conn.query::<()>(redis::cmd("SET").arg("k").arg("after")),
    )
    .await
    .expect("the write completes after the failover")
    .expect("SET");
    let took = killed.elapsed();
    println!("write resumed {took:?} after the master was killed");
    // down-after 1 s + failover (~1.5 s) + reconnect: the plan's bound is 10 s after the failover ends.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let new_master = topo
        .current_master_port()
        .expect("sentinels agree on a master");
    assert_ne!(new_master, old_master);
    assert_eq!(new_master, topo.replica.port());
    assert_eq!(get(&conn, "k").await.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_master_names_and_dead_sentinels_are_clear_errors() {
    let topo = SentinelTopology::start().expect("sentinel topology");
    let ports = topo.sentinel_ports();
    let url = format!("redis+sentinel://127.0.0.1:{}/nosuchmaster", ports[0]);
    let err = Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect_err("unknown master");
    assert!(
        err.to_string()
            .contains("does not know master `nosuchmaster`"),
        "{err}"
    );
    let dead = free_port().expect("port");
    let url = format!("redis+sentinel://127.0.0.1:{dead}/mymaster");
    let err = Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect_err("no sentinel");
    assert!(
        err.to_string().contains("no sentinel gave the address"),
        "{err}"
    );
    // A dead first sentinel is skipped in favour of a live one.
    let url = format!(
        "redis+sentinel://127.0.0.1:{dead},127.0.0.1:{}/mymaster",
        ports[1]
    );
    Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect("the second sentinel answers");
}

/// `SENTINEL FAILOVER` leaves the old master running as a master for seconds after its
/// replica was promoted (until the sentinels turn it into a replica). A connection made
/// before the failover must leave it as soon as the sentinels name the new master, not when
/// the old one is demoted: writes it acknowledges meanwhile are discarded at the demotion.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_moves_ready_connections_before_the_old_master_is_demoted() {
    let topo = SentinelTopology::start().expect("sentinel topology");
    let conn = worker_conn(&topo.url()).await;
    let port_of = |conn: Connection| async move {
        let v: Vec<String> = conn
            .query(redis::cmd("CONFIG").arg("GET").arg("port"))
            .await
            .expect("CONFIG GET port");
        v[1].parse::<u16>().expect("port")
    };
    let old = topo.master.port();
    assert_eq!(port_of(conn.clone()).await, old);
    let reply = topo
        .ask_sentinel(&["SENTINEL", "FAILOVER", "mymaster"])
        .expect("SENTINEL FAILOVER");
    assert!(reply.contains("OK"), "SENTINEL FAILOVER answered {reply}");
    let new = topo.replica.port();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = port_of(conn.clone()).await;
        if at == new {
            break;
        }
        assert_eq!(at, old, "the connection is on an unknown server");
        assert!(
            Instant::now() < deadline,
            "the connection never left the old master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection moved because the sentinels said so: the old master has not been turned
    // into a replica yet (which would also have closed the connection).
    let role = topo
        .master
        .admin(&["ROLE"])
        .expect("ROLE of the old master");
    println!("moved to {new}; the old master's ROLE is now: {role}");
    assert!(
        role.starts_with("master"),
        "the connection only moved once the old master was demoted: {role}"
    );
}

/// A master with `min-replicas-to-write` and no replica refuses writes before running them
/// (`NOREPLICAS`), as an old master does once a failover took its replica: the worker preset
/// sends the write again with backoff until it is accepted, the producer preset fails within
/// its deadline with an error that says the write was refused.
#[tokio::test(flavor = "multi_thread")]
async fn writes_refused_with_noreplicas_are_sent_again_by_waiting_callers() {
    let server = bullpen_testkit::RedisServer::start().expect("redis-server");
    server
        .admin(&["CONFIG", "SET", "min-replicas-to-write", "1"])
        .expect("CONFIG SET");
    let producer = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("producer");
    let err = producer
        .query::<()>(redis::cmd("SET").arg("k").arg("p"))
        .await
        .expect_err("refused while there is no replica");
    assert_eq!(err.server_code(), Some("NOREPLICAS"), "{err}");
    let worker = worker_conn(&server.url()).await;
    let write = tokio::spawn(async move {
        worker
            .query::<()>(redis::cmd("SET").arg("k").arg("w"))
            .await
            .map(|()| worker)
    });
    // The write keeps being refused (and retried) until the server accepts writes again.
    let refusals = || {
        server
            .info_field("errorstat_NOREPLICAS")
            .expect("INFO")
            .and_then(|v| v.strip_prefix("count=").and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let before = refusals();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the waiting write was not retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!write.is_finished(), "the waiting write gave up");
    server
        .admin(&["CONFIG", "SET", "min-replicas-to-write", "0"])
        .expect("CONFIG SET");
    let worker = write.await.expect("task").expect("the write went through");
    assert_eq!(get(&worker, "k").await.as_deref(), Some("w"));
}

/// The watch asks the sentinels where the master is every couple of seconds; it must do so on
/// a connection it keeps, not on a new connection per question: one client of the first
/// sentinel asks `GET-MASTER-ADDR-BY-NAME` again and again over more than two poll periods.
#[tokio::test(flavor = "multi_thread")]
async fn the_sentinel_watch_polls_on_one_kept_connection() {
    let topo = SentinelTopology::start().expect("sentinel topology");
    let conn = worker_conn(&topo.url()).await;
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let clients = topo.ask_sentinel(&["CLIENT", "LIST"]).expect("CLIENT LIST");
        let poller = clients.lines().find(|l| {
            l.contains("get-master-addr-by-name")
                && field(l, "age").is_some_and(|age| age >= 5)
                && field(l, "idle").is_some_and(|idle| idle <= 3)
        });
        if let Some(line) = poller {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no sentinel client kept asking for the master for 5 s: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("the watch's poll connection: {kept}");
    conn.ping().await.expect("the connection is still up");
}
