//! Our worker next to real Node BullMQ 6.7.0 peers (tests/interop): Node produces jobs of
//! every kind and reads back what we did (getters and `QueueEvents`), a Node worker and a
//! Rust worker share one queue under a ledger, and each recovers the other's stalled jobs.
//! Each test skips, saying why, when Node or the npm packages are missing; CI installs them.

mod common;

use common::{redis_opts, test_opts};

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_core::job::Job;
use bullpen_producer::{BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::node::{node_ready, run_node, spawn_node, wait_node};
use bullpen_testkit::{eventually, RedisServer};
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast;

macro_rules! require_node {
    () => {
        if let Err(why) = node_ready() {
            println!("skipped: {why}");
            return;
        }
    };
}

async fn queue(server: &RedisServer, name: &str) -> Queue {
    let conn = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("connect");
    let mut opts = QueueOptions::default().keep_everything();
    opts.max_len_events = 100_000;
    Queue::new(conn, name, opts).await.expect("queue")
}

async fn node(script: &str, input: Value, timeout: Duration) -> Value {
    run_node(script, &input, timeout)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Standard base64 with padding, as connection names of BullMQ workers use it.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

async fn until_count(q: &Queue, state: JobState, n: u64, deadline: Duration) {
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&state] >= n)
                .unwrap_or(false)
        },
        deadline,
    )
    .await
    .unwrap_or_else(|e| panic!("{state} did not reach {n}: {e}"));
}

/// The events stream as (entry id, fields).
async fn stream(q: &Queue) -> Vec<(String, Vec<String>)> {
    q.connection()
        .query(
            redis::cmd("XRANGE")
                .arg(q.keys().key("events"))
                .arg("-")
                .arg("+"),
        )
        .await
        .expect("XRANGE")
}

/// The value of a field of a stream entry.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

async fn lock_of(q: &Queue, id: &str) -> Option<String> {
    q.connection()
        .query(redis::cmd("GET").arg(q.keys().job_sub(id, "lock")))
        .await
        .expect("GET lock")
}

/// Waits until job `id` is active and locked; returns the lock's token.
async fn until_active_and_locked(q: &Queue, id: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        if q.get_job_state(id).await.expect("state") == Some(JobState::Active) {
            if let Some(token) = lock_of(q, id).await {
                return token;
            }
        }
        assert!(
            start.elapsed() < deadline,
            "job {id} not active and locked within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `invariant` for `window` and fails as soon as it does not hold: for "nothing
/// happens meanwhile" checks, which need a window by nature.
async fn holds_for<F, Fut>(window: Duration, what: &str, mut invariant: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(
            invariant().await,
            "{what} stopped holding after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One call of our processor, as it saw the job.
#[derive(Clone, Debug)]
struct Run {
    id: String,
    name: String,
    data: Value,
    attempts_made: u32,
    processed_on: Option<u64>,
    timestamp: u64,
    delay: u64,
    opts_delay: u64,
    at: u64,
}

#[tokio::test(flavor = "multi_thread")]
async fn node_jobs_of_every_kind_run_on_our_worker_and_node_sees_it_all() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "kinds").await;
    // Added while paused, so that the order our worker sees is decided by the data alone.
    q.pause().await.expect("pause");
    let specs = json!([
        {"name": "fifo-1", "data": {"n": 1}},
        {"name": "fifo-2", "data": {"n": 2, "s": "héllo/✓"}},
        {"name": "lifo", "data": {"n": 3}, "opts": {"lifo": true}},
        {"name": "prio-3", "data": {"p": 3}, "opts": {"priority": 3}},
        {"name": "prio-1", "data": {"p": 1}, "opts": {"priority": 1}},
        {"name": "prio-2", "data": {"p": 2}, "opts": {"priority": 2}},
        {"name": "delayed", "data": {"d": 600}, "opts": {"delay": 600}},
        {"name": "retry", "data": {"r": true},
         "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 100}}},
        {"name": "doomed", "data": {"x": null},
         "opts": {"attempts": 2, "backoff": {"type": "fixed", "delay": 100}}},
    ]);
    let out = node(
        "produce.mjs",
        json!({"url": server.url(), "queue": "kinds", "jobs": specs}),
        Duration::from_secs(30),
    )
    .await;
    let ids: Vec<String> = out["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    let names: Vec<String> = specs
        .as_array()
        .expect("specs")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    let id_of: BTreeMap<String, String> = names.iter().cloned().zip(ids.clone()).collect();

    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let r2 = runs.clone();
    let processor = from_fn(move |job: Job<Value>, ctx| {
        let runs = r2.clone();
        async move {
            runs.lock().expect("runs").push(Run {
                id: job.id.clone(),
                name: job.name.clone(),
                data: job.data.clone(),
                attempts_made: job.attempts_made,
                processed_on: job.processed_on,
                timestamp: job.timestamp,
                delay: job.delay,
                opts_delay: job.opts.delay_ms,
                at: now_ms(),
            });
            ctx.progress(&json!({"pct": 50, "name": job.name}))
                .await
                .map_err(JobError::failed)?;
            match job.name.as_str() {
                "retry" if job.attempts_made < 2 => Err(JobError::failed(format!(
                    "retry failure {}",
                    job.attempts_made + 1
                ))),
                "doomed" => Err(JobError::failed("doomed always fails")),
                _ => Ok(json!({"by": "rust", "name": job.name, "data": job.data})),
            }
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "kinds",
        processor,
        test_opts().concurrency(1).build().expect("opts"),
    )
    .await
    .expect("worker");
    q.resume().await.expect("resume");
    until_count(&q, JobState::Completed, 8, Duration::from_secs(20)).await;
    until_count(&q, JobState::Failed, 1, Duration::from_secs(20)).await;
    // Let the last finish write its events (drained) before reading the stream.
    eventually(
        || async {
            q.get_job_counts().await.is_ok_and(|c| {
                c[&JobState::Active] == 0
                    && c[&JobState::Waiting] == 0
                    && c[&JobState::Delayed] == 0
                    && c[&JobState::Prioritized] == 0
            })
        },
        Duration::from_secs(10),
    )
    .await
    .expect("queue idle");
    worker.close(Duration::from_secs(1)).await;

    let runs = runs.lock().expect("runs").clone();
    let order: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let first = |n: &str| {
        order
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} never ran: {order:?}"))
    };
    // LIFO before FIFO, plain jobs before prioritized ones, priorities ascending.
    assert!(first("lifo") < first("fifo-1"), "{order:?}");
    assert!(first("fifo-1") < first("fifo-2"), "{order:?}");
    assert!(first("fifo-2") < first("retry"), "{order:?}");
    assert!(first("retry") < first("doomed"), "{order:?}");
    assert!(first("doomed") < first("prio-1"), "{order:?}");
    assert!(first("prio-1") < first("prio-2"), "{order:?}");
    assert!(first("prio-2") < first("prio-3"), "{order:?}");
    // Data and ids as Node wrote them.
    for (spec, id) in specs.as_array().expect("specs").iter().zip(&ids) {
        let name = spec["name"].as_str().expect("name");
        for r in runs.iter().filter(|r| r.name == name) {
            assert_eq!(&r.id, id, "{name}");
            assert_eq!(r.data, spec["data"], "{name}");
        }
    }
    // The delay was honoured.
    let d = runs.iter().find(|r| r.name == "delayed").expect("delayed");
    assert_eq!(d.opts_delay, 600);
    // As in BullMQ, the `delay` field is reset to 0 when the job is promoted.
    assert_eq!(d.delay, 0);
    let waited = d.processed_on.expect("processedOn") - d.timestamp;
    assert!(waited >= 600, "delayed job started after {waited} ms");
    // Retries with a fixed backoff of 100 ms.
    let attempts = |n: &str| -> Vec<u32> {
        runs.iter()
            .filter(|r| r.name == n)
            .map(|r| r.attempts_made)
            .collect()
    };
    assert_eq!(attempts("retry"), vec![0, 1, 2]);
    assert_eq!(attempts("doomed"), vec![0, 1]);
    for n in ["retry", "doomed"] {
        let at: Vec<u64> = runs.iter().filter(|r| r.name == n).map(|r| r.at).collect();
        for w in at.windows(2) {
            assert!(
                w[1] - w[0] >= 100,
                "{n}: backoff of 100 ms honoured: {at:?}"
            );
        }
    }
    for n in [
        "fifo-1", "fifo-2", "lifo", "prio-1", "prio-2", "prio-3", "delayed",
    ] {
        assert_eq!(attempts(n), vec![0], "{n} ran once");
    }
    let total_runs = runs.len();
    assert_eq!(total_runs, 12);

    // Node's getters see the outcome.
    let out = node(
        "inspect.mjs",
        json!({"url": server.url(), "queue": "kinds", "ids": ids}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out["counts"]["completed"], 8, "{}", out["counts"]);
    assert_eq!(out["counts"]["failed"], 1, "{}", out["counts"]);
    for s in ["active", "waiting", "delayed", "prioritized", "paused"] {
        assert_eq!(out["counts"][s], 0, "{s}: {}", out["counts"]);
    }
    for (spec, id) in specs.as_array().expect("specs").iter().zip(&ids) {
        let name = spec["name"].as_str().expect("name");
        let j = &out["jobs"][id];
        let json = &j["json"];
        if name == "doomed" {
            assert_eq!(j["state"], "failed", "{name}: {j}");
            assert_eq!(json["failedReason"], "doomed always fails", "{j}");
            assert_eq!(json["attemptsMade"], 2, "{j}");
            assert_eq!(json["stacktrace"].as_array().map(Vec::len), Some(2), "{j}");
            continue;
        }
        assert_eq!(j["state"], "completed", "{name}: {j}");
        assert_eq!(
            json["returnvalue"],
            json!({"by": "rust", "name": name, "data": spec["data"]}),
            "{name}: {j}"
        );
        let expected_attempts = if name == "retry" { 3 } else { 1 };
        assert_eq!(json["attemptsMade"], expected_attempts, "{name}: {j}");
        assert_eq!(json["attemptsStarted"], expected_attempts, "{name}: {j}");
        assert_eq!(json["progress"], json!({"pct": 50, "name": name}), "{j}");
        assert!(
            json["finishedOn"].as_u64() >= json["processedOn"].as_u64(),
            "{j}"
        );
    }

    // Node's QueueEvents sees every entry of the stream, with the fields it expects.
    let raw = stream(&q).await;
    let out = node(
        "events.mjs",
        json!({"url": server.url(), "queue": "kinds", "expect": raw.len(), "timeoutMs": 15000}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out["timedOut"], false, "{out}");
    let events = out["events"].as_array().expect("events");
    assert_eq!(events.len(), raw.len());
    let mut node_counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        *node_counts
            .entry(e["event"].as_str().expect("event").to_owned())
            .or_default() += 1;
    }
    let mut raw_counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, f) in &raw {
        *raw_counts
            .entry(field(f, "event").expect("event field").to_owned())
            .or_default() += 1;
    }
    assert_eq!(node_counts, raw_counts, "Node sees every stream entry");
    let count = |n: &str| node_counts.get(n).copied().unwrap_or(0);
    assert_eq!(count("active"), total_runs, "{node_counts:?}");
    assert_eq!(count("progress"), total_runs, "{node_counts:?}");
    assert_eq!(count("completed"), 8, "{node_counts:?}");
    assert_eq!(count("failed"), 1, "{node_counts:?}");
    assert_eq!(count("retries-exhausted"), 1, "{node_counts:?}");
    assert_eq!(count("stalled"), 0, "{node_counts:?}");
    // The delayed job once, then one backoff per retry (two for `retry`, one for `doomed`).
    assert_eq!(count("delayed"), 4, "{node_counts:?}");
    assert!(count("drained") >= 1, "{node_counts:?}");
    let of = |n: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == n)
            .map(|e| &e["args"])
            .collect()
    };
    for a in of("active") {
        assert_eq!(a["prev"], "waiting", "{a}");
        assert!(ids.iter().any(|i| a["jobId"] == i.as_str()), "{a}");
    }
    for a in of("completed") {
        assert_eq!(a["prev"], "active", "{a}");
        let id = a["jobId"].as_str().expect("jobId");
        let name = names[ids.iter().position(|i| i == id).expect("known id")].as_str();
        let spec = &specs[ids.iter().position(|i| i == id).expect("known id")];
        assert_eq!(
            a["returnvalue"],
            json!({"by": "rust", "name": name, "data": spec["data"]}),
            "Node parses our return value: {a}"
        );
    }
    let failed = of("failed");
    assert_eq!(failed[0]["jobId"], id_of["doomed"].as_str());
    assert_eq!(failed[0]["failedReason"], "doomed always fails");
    assert_eq!(failed[0]["prev"], "active");
    let exhausted = of("retries-exhausted");
    assert_eq!(exhausted[0]["jobId"], id_of["doomed"].as_str());
    assert_eq!(exhausted[0]["attemptsMade"], "2", "{}", exhausted[0]);
    for p in of("progress") {
        let id = p["jobId"].as_str().expect("jobId");
        let name = names[ids.iter().position(|i| i == id).expect("known id")].as_str();
        assert_eq!(p["data"], json!({"pct": 50, "name": name}), "{p}");
    }
    for e in events.iter().filter(|e| e["event"] == "drained") {
        assert_eq!(e["args"], json!({}), "{e}");
        assert!(e["id"].as_str().is_some_and(|s| s.contains('-')), "{e}");
    }
}

/// How many jobs the mixed fleet runs: the full 20,000. Measured on a 2-core box: added in
/// 2-3.5 s, all completed 9-13 s after the start, about 20 s for the whole test (bounded by
/// the Node worker's fixed 15 s run), well under a minute.
const FLEET_JOBS: usize = 20_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_worker_and_our_worker_share_a_queue_without_loss_or_double_completion() {
    require_node!();
    let t0 = Instant::now();
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "fleet").await;
    // The Node worker runs for a fixed time (consume.mjs cannot know its share in advance);
    // whatever is left when it stops, our worker finishes.
    let node_run = spawn_node(
        "consume.mjs",
        &json!({
            "url": server.url(), "queue": "fleet", "expect": 0, "concurrency": 8,
            "failPlan": {"flaky": 1}, "returnValue": {"by": "node"}, "timeoutMs": 15000,
            "workerOpts": {"lockDuration": 4000, "stalledInterval": 1000, "drainDelay": 1}
        }),
    )
    .expect("spawn node");

    let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
    let m2 = mismatches.clone();
    let processor = from_fn(move |job: Job<Value>, _ctx| {
        let mismatches = m2.clone();
        async move {
            // Ids are given in add order from 1, and each job carries its index.
            let i = job.data["i"].as_u64();
            if i.map(|i| (i + 1).to_string()) != Some(job.id.clone()) {
                mismatches
                    .lock()
                    .expect("mismatches")
                    .push(format!("{} {}", job.id, job.data));
            }
            if job.name == "flaky" && job.attempts_made == 0 {
                return Err(JobError::failed("flaky first attempt"));
            }
            Ok(json!({"by": "rust"}))
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "fleet",
        processor,
        test_opts()
            .concurrency(8)
            .event_capacity(4 * FLEET_JOBS)
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    // Our ledger: completions as the worker acknowledged them.
    let mut events = worker.events();
    let (stop_ledger, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let rust_ledger = tokio::spawn(async move {
        let mut completed = Vec::new();
        let mut lagged = 0u64;
        let mut retried = 0u64;
        let mut note = |e: Result<WorkerEvent, broadcast::error::RecvError>| match e {
            Ok(WorkerEvent::Completed { job_id, .. }) => completed.push(job_id),
            Ok(WorkerEvent::Failed {
                will_retry: true, ..
            }) => retried += 1,
            Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
            Ok(_) | Err(broadcast::error::RecvError::Closed) => {}
        };
        loop {
            tokio::select! {
                e = events.recv() => note(e),
                _ = &mut stopped => break,
            }
        }
        // What is still buffered (bounded by the channel's capacity).
        loop {
            match events.try_recv() {
                Ok(e) => note(Ok(e)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    note(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => break,
            }
        }
        (completed, lagged, retried)
    });

    let mut flaky_ids = Vec::new();
    let mut all_ids = Vec::with_capacity(FLEET_JOBS);
    let add_start = Instant::now();
    for batch in 0..FLEET_JOBS / 1000 {
        let jobs: Vec<BulkJob<Value>> = (batch * 1000..(batch + 1) * 1000)
            .map(|i| {
                if i % 20 == 7 {
                    let mut o = JobOptions::default();
                    o.attempts = Some(2);
                    BulkJob::new("flaky", json!({ "i": i }), o)
                } else {
                    BulkJob::new("plain", json!({ "i": i }), JobOptions::default())
                }
            })
            .collect();
        let added = q.add_bulk(&jobs).await.expect("add_bulk");
        for (j, a) in jobs.iter().zip(added) {
            if j.name == "flaky" {
                flaky_ids.push(a.id.clone());
            }
            all_ids.push(a.id);
        }
    }
    let add_took = add_start.elapsed();
    until_count(
        &q,
        JobState::Completed,
        FLEET_JOBS as u64,
        Duration::from_secs(45),
    )
    .await;
    let all_done = t0.elapsed();
    let node_out = wait_node("consume.mjs", node_run, Duration::from_secs(40))
        .await
        .expect("node consumer");
    // Closing waits for running jobs, so every acknowledged completion is in the channel.
    worker.close(Duration::from_secs(1)).await;
    stop_ledger.send(()).expect("stop the ledger");
    let (rust_completed, lagged, rust_retried) =
        tokio::time::timeout(Duration::from_secs(10), rust_ledger)
            .await
            .expect("ledger done")
            .expect("ledger task");

    assert_eq!(lagged, 0, "the ledger missed worker events");
    assert!(
        mismatches.lock().expect("m").is_empty(),
        "{:?}",
        mismatches.lock().expect("m")
    );
    let node_completed: Vec<String> = node_out["completed"]
        .as_array()
        .expect("completed")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    for p in node_out["processed"].as_array().expect("processed") {
        let i = p["data"]["i"].as_u64().expect("i");
        assert_eq!(p["id"], (i + 1).to_string(), "Node got the right data: {p}");
    }
    let node_set: HashSet<&String> = node_completed.iter().collect();
    let rust_set: HashSet<&String> = rust_completed.iter().collect();
    assert_eq!(
        node_set.len(),
        node_completed.len(),
        "Node completed a job twice"
    );
    assert_eq!(
        rust_set.len(),
        rust_completed.len(),
        "we completed a job twice"
    );
    let both: Vec<&&String> = node_set.intersection(&rust_set).take(10).collect();
    assert!(both.is_empty(), "completed by both: {both:?}");
    let union: HashSet<&String> = node_set.union(&rust_set).copied().collect();
    let lost: Vec<&String> = all_ids
        .iter()
        .filter(|i| !union.contains(i))
        .take(10)
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(union.len(), FLEET_JOBS);
    let zcard: u64 = q
        .connection()
        .query(redis::cmd("ZCARD").arg(q.keys().key("completed")))
        .await
        .expect("ZCARD");
    assert_eq!(zcard, FLEET_JOBS as u64);
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(counts[&JobState::Failed], 0, "{counts:?}");
    assert_eq!(counts[&JobState::Active], 0, "{counts:?}");
    // Every flaky job failed once (on either side) and completed on its second attempt.
    let mut pipe = redis::pipe();
    for id in &flaky_ids {
        pipe.cmd("HMGET")
            .arg(q.keys().job(id))
            .arg("atm")
            .arg("failedReason");
    }
    let flaky: Vec<(Option<u32>, Option<String>)> =
        q.connection().query_pipeline(&pipe).await.expect("HMGET");
    for (id, (atm, reason)) in flaky_ids.iter().zip(&flaky) {
        assert_eq!(*atm, Some(2), "flaky job {id}");
        let reason = reason.as_deref().unwrap_or("");
        assert!(
            reason == "flaky first attempt" || reason == "planned failure 1",
            "flaky job {id}: {reason}"
        );
    }
    let node_retried = node_out["processed"]
        .as_array()
        .expect("processed")
        .iter()
        .filter(|p| p["name"] == "flaky" && p["attemptsMade"] == 0)
        .count() as u64;
    assert_eq!(
        node_retried + rust_retried,
        flaky_ids.len() as u64,
        "one failed first attempt per flaky job"
    );
    let (n, r) = (node_completed.len(), rust_completed.len());
    println!(
        "fleet: {FLEET_JOBS} jobs, added in {add_took:?}, all completed {all_done:?} after start; node {n} ({:.1} %), rust {r} ({:.1} %)",
        n as f64 * 100.0 / FLEET_JOBS as f64,
        r as f64 * 100.0 / FLEET_JOBS as f64
    );
    assert!(n * 20 > FLEET_JOBS, "Node's share: {n}");
    assert!(r * 20 > FLEET_JOBS, "our share: {r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_workers_job_is_recovered_by_our_worker() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "stall-a").await;
    let node_lock = 1500u64;
    let mut hang = spawn_node(
        "hang.mjs",
        &json!({"url": server.url(), "queue": "stall-a", "lockDuration": node_lock,
                "stalledInterval": 1000, "timeoutMs": 30000}),
    )
    .expect("spawn node");
    let id = q
        .add("victim", &json!({"v": 1}), JobOptions::default())
        .await
        .expect("add")
        .id;
    let node_token = until_active_and_locked(&q, &id, Duration::from_secs(15)).await;

    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        Ok::<_, JobError>(json!({"rescued_by": "rust", "data": job.data}))
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "stall-a",
        processor,
        test_opts()
            .lock_duration(Duration::from_secs(2))
            .stalled_interval(Duration::from_secs(1))
            .name("rescuer")
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    // Our worker leaves a job whose lock is alive alone (over more than one stall check).
    holds_for(
        Duration::from_millis(2200),
        "the Node worker's lock",
        || async { lock_of(&q, &id).await.as_deref() == Some(node_token.as_str()) },
    )
    .await;

    hang.kill().await.expect("SIGKILL node");
    let killed_at = now_ms();
    until_count(&q, JobState::Completed, 1, Duration::from_secs(15)).await;
    let j = q.get_job(&id).await.expect("get").expect("exists");
    let rerun_after = j
        .processed_on
        .expect("processedOn")
        .saturating_sub(killed_at);
    let bound = node_lock + 2 * 1000 + 1000;
    println!("stall-a: our worker restarted the job {rerun_after} ms after the Node worker was killed (bound {bound} ms)");
    assert!(
        rerun_after <= bound,
        "re-run {rerun_after} ms after the kill"
    );
    assert_eq!(j.stalled_counter, 1);
    assert_eq!(j.attempts_started, 2);
    assert_eq!(j.attempts_made, 1);
    assert_eq!(j.processed_by.as_deref(), Some("rescuer"));
    assert_eq!(
        j.returnvalue,
        Some(json!({"rescued_by": "rust", "data": {"v": 1}}))
    );
    let raw = stream(&q).await;
    let of = |e: &str| {
        raw.iter()
            .filter(|(_, f)| field(f, "event") == Some(e) && field(f, "jobId") == Some(&id))
            .count()
    };
    assert_eq!(of("stalled"), 1);
    assert_eq!(of("completed"), 1);
    assert_eq!(of("active"), 2);
    let stalled_local = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.recv().await {
                Ok(WorkerEvent::Stalled { job_id }) => return Some(job_id),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    assert_eq!(
        stalled_local,
        Ok(Some(id.clone())),
        "our stall check found it"
    );
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_rust_workers_job_is_recovered_by_a_node_worker() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "stall-b").await;
    let id = q
        .add("orphan", &json!({"o": 1}), JobOptions::default())
        .await
        .expect("add")
        .id;
    let our_lock = Duration::from_secs(2);

    // A worker in a runtime of its own, on its own thread: shutting that runtime down in the
    // background kills its tasks where they stand, with no close and no hand-back, as if the
    // process had died.
    let url = server.url();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let processor = from_fn(|_job: Job<Value>, _ctx| async move {
            std::future::pending::<Result<Value, JobError>>().await
        });
        let started = rt.block_on(Worker::start(
            redis_opts(&url),
            "stall-b",
            processor,
            test_opts()
                .lock_duration(our_lock)
                .stalled_interval(Duration::from_secs(1))
                .name("doomed")
                .build()
                .expect("opts"),
        ));
        match started {
            Ok(worker) => {
                let _ = ready_tx.send(Ok(()));
                // Bounded: the test sends the stop long before this.
                let _ = stop_rx.recv_timeout(Duration::from_secs(60));
                rt.shutdown_background();
                drop(worker);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    });
    ready_rx
        .await
        .expect("worker thread")
        .expect("worker started");
    let our_token = until_active_and_locked(&q, &id, Duration::from_secs(10)).await;

    let node_run = spawn_node(
        "consume.mjs",
        &json!({"url": server.url(), "queue": "stall-b", "expect": 1, "stalledInterval": 1000,
                "returnValue": {"by": "node"}, "timeoutMs": 20000}),
    )
    .expect("spawn node");
    // The Node worker is up (its blocking connection is named `bull:<base64 queue>`), and
    // it leaves the job alone while our worker lives.
    let node_name = format!("name=bull:{} ", base64(b"stall-b"));
    eventually(
        || async {
            server
                .admin(&["CLIENT", "LIST"])
                .is_ok_and(|l| l.contains(&node_name))
        },
        Duration::from_secs(15),
    )
    .await
    .expect("node worker connected");
    holds_for(Duration::from_millis(2200), "our worker's lock", || async {
        lock_of(&q, &id).await.as_deref() == Some(our_token.as_str())
            && q.get_job_state(&id).await.ok().flatten() == Some(JobState::Active)
    })
    .await;

    stop_tx.send(()).expect("stop the worker thread");
    tokio::task::spawn_blocking(move || doomed.join())
        .await
        .expect("join")
        .expect("worker thread");
    let killed_at = now_ms();

    let out = wait_node("consume.mjs", node_run, Duration::from_secs(30))
        .await
        .expect("node consumer");
    assert_eq!(out["timedOut"], false, "{out}");
    assert_eq!(out["completed"], json!([id]), "{out}");
    let processed = out["processed"].as_array().expect("processed");
    assert_eq!(processed.len(), 1, "{out}");
    assert_eq!(processed[0]["attemptsStarted"], 2, "{out}");
    assert_eq!(processed[0]["data"], json!({"o": 1}));
    let rerun_after = processed[0]["at"]
        .as_u64()
        .expect("at")
        .saturating_sub(killed_at);
    let bound = u64::try_from(our_lock.as_millis()).expect("ms") + 2 * 1000 + 1000;
    println!("stall-b: the Node worker restarted the job {rerun_after} ms after ours died (bound {bound} ms)");
    assert!(
        rerun_after <= bound,
        "re-run {rerun_after} ms after the kill"
    );
    let j = q.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(
        q.get_job_state(&id).await.expect("state"),
        Some(JobState::Completed)
    );
    assert_eq!(j.stalled_counter, 1);
    assert_eq!(j.attempts_made, 1);
    assert_eq!(j.returnvalue, Some(json!({"by": "node"})));
    let raw = stream(&q).await;
    let stalled = raw
        .iter()
        .filter(|(_, f)| field(f, "event") == Some("stalled") && field(f, "jobId") == Some(&id))
        .count();
    assert_eq!(stalled, 1);
}
