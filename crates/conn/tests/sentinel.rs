//! Sentinel against a real topology: one master, one replica, three sentinels.

mod common;

use std::time::{Duration, Instant};

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_testkit::{free_port, SentinelTopology};
use common::{fast_retry, get};

#[tokio::test(flavor = "multi_thread")]
async fn finds_the_master_and_follows_a_failover() {
    let mut topo = SentinelTopology::start().expect("sentinel topology");
    let opts = RedisOptions::from_url(&topo.url())
        .expect("sentinel url")
        .worker()
        .with_retry_strategy(fast_retry());
    let conn = Connection::connect(opts)
        .await
        .expect("connect through the sentinels");
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
