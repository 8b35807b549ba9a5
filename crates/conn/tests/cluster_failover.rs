//! Redis Cluster failover (reliability plan D2) at the connection level: a plain
//! `Connection` (worker and producer presets) and a `BlockingConnection` keep working across
//! `kill -9` of the master that owns their keys' slot, and across a coordinated
//! `CLUSTER FAILOVER`, on a real cluster of 3 masters and 3 replicas.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullpen_conn::{redis, BlockingConnection, Connection, RedisOptions};
use bullpen_testkit::ClusterTopology;

/// The plan's promise: processing resumes within 10 s after the failover.
const RESUME_BOUND: Duration = Duration::from_secs(10);
/// The producer preset's promise: every call answers within 2 s (plus scheduling slack).
const PRODUCER_BOUND: Duration = Duration::from_millis(2_500);
/// No blocking call outlives its block timeout (1 s) plus the watchdog margin (1 s), plus
/// scheduling slack: the link it waits on is never down for long, because a cluster client
/// is rebuilt before the old one is dropped.
const BLOCKING_BOUND: Duration = Duration::from_millis(2_500);

const KEY: &str = "{d2}:k";
const ZSET: &str = "{d2}:marker";

/// The URL's options; each connection then takes its role's production preset, backoff
/// included.
fn opts(url: &str) -> RedisOptions {
    RedisOptions::from_url(url).expect("cluster url")
}

/// One call made by a probe: when it started and ended (since the test's origin), and
/// whether it succeeded.
#[derive(Clone, Copy, Debug)]
struct Call {
    start: Duration,
    end: Duration,
    ok: bool,
}

#[derive(Default)]
struct Log {
    calls: Mutex<Vec<Call>>,
}

impl Log {
    fn push(&self, c: Call) {
        self.calls.lock().expect("log").push(c);
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("log").clone()
    }
    /// The end of the first successful call that started at or after `t`.
    fn first_ok_from(&self, t: Duration) -> Option<Duration> {
        self.calls()
            .iter()
            .filter(|c| c.ok && c.start >= t)
            .map(|c| c.end)
            .min()
    }
}

struct Probes {
    origin: Instant,
    stop: Arc<AtomicBool>,
    worker: Arc<Log>,
    producer: Arc<Log>,
    /// Pops of members that the feeder added (each a success).
    pops: Arc<Log>,
    blocking: Arc<Log>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    /// A worker-preset writer, a producer-preset writer, a feeder adding a member to the
    /// marker set every 20 ms, and a `BZPOPMIN` loop (block timeout 1 s) popping them.
    fn start(worker: Connection, producer: Connection, blocking: BlockingConnection) -> Self {
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let (w, p, pops, b) = (
            Arc::new(Log::default()),
            Arc::new(Log::default()),
            Arc::new(Log::default()),
            Arc::new(Log::default()),
        );
        let mut tasks = Vec::new();
        for (conn, log) in [(worker.clone(), w.clone()), (producer, p.clone())] {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let start = origin.elapsed();
                    let r = conn.query::<()>(redis::cmd("SET").arg(KEY).arg(i)).await;
                    log.push(Call {
                        start,
                        end: origin.elapsed(),
                        ok: r.is_ok(),
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        let fed = Arc::new(AtomicU64::new(0));
        {
            let stop = stop.clone();
            let fed = fed.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = fed.load(Ordering::Relaxed) + 1;
                    let r = worker
                        .query::<i64>(redis::cmd("ZADD").arg(ZSET).arg(n).arg(n))
                        .await;
                    if r.is_ok() {
                        fed.store(n, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        {
            let stop = stop.clone();
            let (pops, b) = (pops.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = origin.elapsed();
                    let r = blocking
                        .block::<Option<(String, String, f64)>>(
                            redis::cmd("BZPOPMIN").arg(ZSET).arg(1),
                            Duration::from_secs(1),
                        )
                        .await;
                    let end = origin.elapsed();
                    b.push(Call {
                        start,
                        end,
                        ok: r.is_ok(),
                    });
                    match r {
                        Ok(Some(_)) => pops.push(Call {
                            start,
                            end,
                            ok: true,
                        }),
                        Ok(None) => {}
                        // The caller decides after a failed blocking call; a short pause as a
                        // worker's fetch loop makes.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        Self {
            origin,
            stop,
            worker: w,
            producer: p,
            pops,
            blocking: b,
            tasks,
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops the probes; one still stuck in a call after 15 s is reported and aborted.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .is_err()
            {
                println!("a probe was still inside a call 15 s after being told to stop");
                abort.abort();
            }
        }
    }
}

async fn connections(url: &str) -> (Connection, Connection, BlockingConnection) {
    let worker = Connection::connect(opts(url).worker())
        .await
        .expect("worker connection");
    let producer = Connection::connect(opts(url).producer())
        .await
        .expect("producer connection");
    let blocking = BlockingConnection::connect(opts(url).blocking())
        .await
        .expect("blocking connection");
    (worker, producer, blocking)
}

/// Checks the promises after a fault at `fault` whose new master was in place at `elected`
/// (both since the probes' origin), and prints what was measured.
fn check(what: &str, p: &Probes, fault: Duration, elected: Duration) {
    let resume = |name: &str, log: &Log| {
        let t = log
            .first_ok_from(elected)
            .unwrap_or_else(|| panic!("{what}: {name} never succeeded after the failover"));
        let after = t.saturating_sub(elected);
        println!(
            "{what}: {name} resumed {:.3} s after the new master was in place ({:.3} s after the fault)",
            after.as_secs_f64(),
            t.saturating_sub(fault).as_secs_f64()
        );
        assert!(
            after <= RESUME_BOUND,
            "{what}: {name} resumed after {after:?}"
        );
        after
    };
    resume("worker-preset connection", &p.worker);
    resume("producer-preset connection", &p.producer);
    resume("blocking connection (BZPOPMIN)", &p.pops);
    let slowest = p
        .producer
        .calls()
        .iter()
        .map(|c| c.end - c.start)
        .max()
        .unwrap_or_default();
    println!(
        "{what}: slowest producer-preset call {:.3} s",
        slowest.as_secs_f64()
    );
    assert!(
        slowest <= PRODUCER_BOUND,
        "{what}: producer call took {slowest:?}"
    );
    let failed = p.producer.calls().iter().filter(|c| !c.ok).count();
    println!("{what}: {failed} producer-preset calls failed during the fault");
    // No blocking call hangs on the dead node: it ends with a reply, an error or the
    // watchdog.
    let longest = p
        .blocking
        .calls()
        .iter()
        .map(|c| c.end - c.start)
        .max()
        .unwrap_or_default();
    println!(
        "{what}: longest blocking call {:.3} s",
        longest.as_secs_f64()
    );
    assert!(
        longest <= BLOCKING_BOUND,
        "{what}: a blocking call lasted {longest:?}"
    );
}

/// Normal client connections on node `i` (`CLIENT LIST` with `flags=N`), not counting the
/// admin connection that asks nor replication links.
fn client_sockets(cluster: &ClusterTopology, i: usize) -> usize {
    cluster.nodes[i]
        .admin(&["CLIENT", "LIST"])
        .map(|list| {
            list.lines()
                .filter(|l| l.contains(" flags=N ") && !l.contains(" cmd=client|list "))
                .count()
        })
        .unwrap_or(usize::MAX)
}

/// Waits until every live node serves at most `max` client connections (a rebuilt cluster
/// client must close the old one's sockets), and returns the counts.
async fn assert_no_leaked_sockets(cluster: &ClusterTopology, max: usize) -> Vec<usize> {
    let counts = || -> Vec<usize> { cluster.live().map(|i| client_sockets(cluster, i)).collect() };
    let ok = bullpen_testkit::eventually(
        || async { counts().iter().all(|&n| n <= max) },
        Duration::from_secs(10),
    )
    .await;
    let now = counts();
    assert!(
        ok.is_ok(),
        "client connections per live node: {now:?} (at most {max} expected)"
    );
    now
}

/// `kill -9` of the master owning the probes' slot, with the cluster URL seeding from
/// `seeds` (node indices; `None`: only the node about to be killed).
async fn kill9_scenario(what: &str, seeds: Option<&[usize]>) {
    let mut cluster = ClusterTopology::start().expect("cluster");
    let owner = cluster.master_of(KEY).expect("slot owner");
    let replica = cluster.replica_of(owner).expect("its replica");
    let url = match seeds {
        Some(s) => cluster.url_with_seeds(s),
        None => cluster.url_with_seeds(&[owner]),
    };
    let (worker, producer, blocking) = connections(&url).await;
    let mut probes = Probes::start(worker.clone(), producer.clone(), blocking.clone());
    // Let every probe succeed before the fault.
    bullpen_testkit::eventually(
        || async {
            probes.worker.first_ok_from(Duration::ZERO).is_some()
                && probes.pops.first_ok_from(Duration::ZERO).is_some()
        },
        Duration::from_secs(10),
    )
    .await
    .expect("probes running");
    let fault = probes.now();
    tokio::task::block_in_place(|| cluster.kill9(owner)).expect("kill -9 the slot owner");
    let (new_master, waited) = tokio::task::block_in_place(|| {
        cluster.wait_slot_master(KEY, Some(owner), Duration::from_secs(30))
    })
    .expect("a replica is promoted");
    let elected = probes.now();
    println!(
        "{what}: node {owner} (port {}) killed; node {new_master} (its replica was {replica}) masters the slot {:.3} s later",
        cluster.port(owner),
        waited.as_secs_f64()
    );
    // Give the probes the promised window, then stop them.
    bullpen_testkit::eventually(
        || async {
            [&probes.worker, &probes.producer, &probes.pops]
                .iter()
                .all(|l| l.first_ok_from(elected).is_some())
        },
        RESUME_BOUND + Duration::from_secs(2),
    )
    .await
    .ok();
    probes.stop().await;
    check(what, &probes, fault, elected);
    // Three cluster clients, one socket each per node.
    let counts = assert_no_leaked_sockets(&cluster, 3).await;
    println!("{what}: client connections per live node afterwards: {counts:?}");
    drop((worker, producer, blocking));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_recover_after_kill9_of_the_slot_owner() {
    kill9_scenario("kill -9", Some(&[0, 1, 2])).await;
}

/// The earlier failure: every rebuild seeded from the configured seeds only, so with the
/// killed node as the only seed the connections never came back. They now seed from every
/// node learnt from the topology.
#[tokio::test(flavor = "multi_thread")]
async fn connections_recover_when_the_only_seed_is_the_killed_owner() {
    kill9_scenario("kill -9 of the only seed", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_recover_after_cluster_failover() {
    let cluster = ClusterTopology::start().expect("cluster");
    let (worker, producer, blocking) = connections(&cluster.url()).await;
    let owner = cluster.master_of(KEY).expect("slot owner");
    let replica = cluster.replica_of(owner).expect("its replica");
    let mut probes = Probes::start(worker.clone(), producer.clone(), blocking.clone());
    bullpen_testkit::eventually(
        || async {
            probes.worker.first_ok_from(Duration::ZERO).is_some()
                && probes.pops.first_ok_from(Duration::ZERO).is_some()
        },
        Duration::from_secs(10),
    )
    .await
    .expect("probes running");
    let fault = probes.now();
    let took = tokio::task::block_in_place(|| cluster.failover(replica, Duration::from_secs(10)))
        .expect("CLUSTER FAILOVER");
    let (new_master, _) = tokio::task::block_in_place(|| {
        cluster.wait_slot_master(KEY, Some(owner), Duration::from_secs(10))
    })
    .expect("the replica masters the slot");
    assert_eq!(new_master, replica);
    let elected = probes.now();
    println!(
        "CLUSTER FAILOVER: node {replica} replaced node {owner} in {:.3} s",
        took.as_secs_f64()
    );
    bullpen_testkit::eventually(
        || async {
            [&probes.worker, &probes.producer, &probes.pops]
                .iter()
                .all(|l| l.first_ok_from(elected).is_some())
        },
        RESUME_BOUND + Duration::from_secs(2),
    )
    .await
    .ok();
    probes.stop().await;
    check("CLUSTER FAILOVER", &probes, fault, elected);
    let counts = assert_no_leaked_sockets(&cluster, 3).await;
    println!("CLUSTER FAILOVER: client connections per live node afterwards: {counts:?}");
    drop((worker, producer, blocking));
}
