//! Interop with real Node BullMQ 6.7.0 (tests/interop). Each test skips, saying why, when
//! Node or the npm packages are missing; CI installs them.

use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{Backoff, Dedup, JobOptions, JobState, KeepJobs, Queue, QueueOptions};
use bullpen_testkit::node::{node_ready, run_node};
use bullpen_testkit::RedisServer;
use serde_json::{json, Value};

macro_rules! require_node {
    () => {
        if let Err(why) = node_ready() {
            println!("skipped: {why}");
            return;
        }
    };
}

async fn setup(queue: &str) -> (RedisServer, Queue) {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("connect");
    let q = Queue::new(conn, queue, QueueOptions::default())
        .await
        .expect("queue");
    (server, q)
}

async fn node(script: &str, input: Value) -> Value {
    run_node(script, &input, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

fn o() -> JobOptions {
    JobOptions::default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_worker_runs_rust_jobs_of_every_kind() {
    require_node!();
    let (server, q) = setup("mixed").await;
    // Added while paused so that the order a worker sees is decided by the data alone.
    q.pause().await.expect("pause");
    q.add("fifo-1", &json!({"n": 1}), o()).await.expect("add");
    q.add("fifo-2", &json!({"n": 2}), o()).await.expect("add");
    let mut lifo = o();
    lifo.lifo = true;
    q.add("lifo", &json!({"n": 3}), lifo).await.expect("add");
    for p in [3, 1, 2] {
        let mut po = o();
        po.priority = p;
        q.add(&format!("prio-{p}"), &json!({"p": p}), po)
            .await
            .expect("add");
    }
    let mut custom = o();
    custom.job_id = Some("my-id".into());
    custom.keep_logs = Some(7);
    let mut d = Dedup::new("dd");
    d.ttl_ms = Some(60_000);
    custom.deduplication = Some(d);
    q.add("custom", &json!({"s": "héllo/✓"}), custom)
        .await
        .expect("add");
    let mut retry = o();
    retry.attempts = Some(3);
    retry.backoff = Some(Backoff::fixed(200));
    q.add("retry", &json!({}), retry).await.expect("add");
    let mut delayed = o();
    delayed.delay_ms = 800;
    let delayed_id = q.add("delayed", &json!({}), delayed).await.expect("add").id;
    q.resume().await.expect("resume");

    let out = node(
        "consume.mjs",
        json!({"url": server.url(), "queue": "mixed", "expect": 9, "failPlan": {"retry": 2}, "timeoutMs": 30000}),
    )
    .await;
    assert_eq!(out["timedOut"], false, "{out}");
    assert_eq!(out["completed"].as_array().map(Vec::len), Some(9), "{out}");
    let processed = out["processed"].as_array().expect("processed");
    let names: Vec<&str> = processed
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    // LIFO first, then FIFO (priority 0 runs before any priority), then priorities 1, 2, 3.
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or(usize::MAX);
    assert!(
        pos("lifo") < pos("fifo-1") && pos("fifo-1") < pos("fifo-2"),
        "{names:?}"
    );
    assert!(pos("fifo-2") < pos("custom"), "{names:?}");
    assert!(pos("custom") < pos("prio-1"), "{names:?}");
    assert!(
        pos("prio-1") < pos("prio-2") && pos("prio-2") < pos("prio-3"),
        "{names:?}"
    );

    let find = |n: &str| -> Vec<&Value> { processed.iter().filter(|p| p["name"] == n).collect() };
    let c = find("custom")[0];
    assert_eq!(c["id"], "my-id");
    assert_eq!(c["data"], json!({"s": "héllo/✓"}));
    assert_eq!(c["opts"]["keepLogs"], 7, "Node decodes the short name kl");
    assert_eq!(c["opts"]["deduplication"]["id"], "dd");
    assert_eq!(c["opts"]["removeOnComplete"], 1000);
    assert_eq!(c["opts"]["removeOnFail"], 10000);

    let r = find("retry");
    assert_eq!(r.len(), 3, "two planned failures, then success");
    let attempts: Vec<u64> = r
        .iter()
        .filter_map(|p| p["attemptsMade"].as_u64())
        .collect();
    assert_eq!(attempts, vec![0, 1, 2]);
    for w in r.windows(2) {
        let gap = w[1]["at"].as_u64().unwrap_or(0) - w[0]["at"].as_u64().unwrap_or(0);
        assert!(gap >= 200, "fixed backoff of 200 ms honoured: {gap}");
    }
    assert_eq!(
        r[0]["opts"]["backoff"],
        json!({"type": "fixed", "delay": 200})
    );

    let d = find("delayed")[0];
    let waited = d["processedOn"].as_u64().unwrap_or(0) - d["timestamp"].as_u64().unwrap_or(0);
    assert!(waited >= 800, "delay honoured: {waited} ms");
    assert_eq!(d["id"], delayed_id);
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(counts[&JobState::Completed], 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_getters_agree_with_rust_getters() {
    require_node!();
    let (server, q) = setup("getters").await;
    for i in 0..3 {
        q.add("w", &json!({ "i": i }), o()).await.expect("add");
    }
    let mut p = o();
    p.priority = 5;
    q.add("p", &json!({}), p).await.expect("add");
    let mut d = o();
    d.delay_ms = 60_000;
    q.add("d", &json!({}), d).await.expect("add");
    let out = node(
        "inspect.mjs",
        json!({"url": server.url(), "queue": "getters", "ids": ["1", "4", "5", "404"], "priorities": [0, 5]}),
    )
    .await;
    let counts = q.get_job_counts().await.expect("counts");
    for s in JobState::ALL {
        assert_eq!(
            out["counts"][s.as_str()].as_u64(),
            Some(counts[&s]),
            "{s}: node {} rust {}",
            out["counts"],
            counts[&s]
        );
    }
    for (id, state) in [
        ("1", "waiting"),
        ("4", "prioritized"),
        ("5", "delayed"),
        ("404", "unknown"),
    ] {
        assert_eq!(out["jobs"][id]["state"], state, "{id}");
        let rust = q
            .get_job_state(id)
            .await
            .expect("state")
            .map_or("unknown", |s| s.as_str());
        assert_eq!(rust, state, "{id}");
    }
    let j = &out["jobs"]["1"]["json"];
    let rj = q.get_job("1").await.expect("get").expect("exists");
    assert_eq!(j["name"], rj.name);
    assert_eq!(j["timestamp"].as_u64(), Some(rj.timestamp));
    let node_data: Value = match &j["data"] {
        Value::String(s) => serde_json::from_str(s).expect("data JSON"),
        v => v.clone(),
    };
    assert_eq!(node_data, rj.data);
    for s in ["waiting", "prioritized", "delayed"] {
        let rust = q
            .get_job_ids(JobState::parse(s).expect("state"), 0, -1, false)
            .await
            .expect("ids");
        let node_ids: Vec<String> = out["lists"][s]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert_eq!(node_ids, rust, "{s}");
    }
    assert_eq!(out["countsPerPriority"], json!({"0": 3, "5": 1}));
    assert_eq!(out["isPaused"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_added_by_node_decode_in_rust() {
    require_node!();
    let (server, q) = setup("fromnode").await;
    let jobs = json!([
        {"name": "plain", "data": {"a": 1, "url": "http://x/y"}},
        {"name": "full", "data": {"b": [1, 2]}, "opts": {
            "jobId": "full-1", "attempts": 4, "backoff": {"type": "exponential", "delay": 1000},
            "removeOnComplete": 10, "removeOnFail": {"age": 3600, "count": 100}, "keepLogs": 5,
            "stackTraceLimit": 3, "lifo": true, "myCustomOption": {"x": 1}
        }},
        {"name": "delayed", "data": {}, "opts": {"delay": 60000}},
        {"name": "prio", "data": {}, "opts": {"priority": 9}},
        {"name": "dedup", "data": {}, "opts": {"deduplication": {"id": "dd-1", "ttl": 60000}}}
    ]);
    let ids = node(
        "produce.mjs",
        json!({"url": server.url(), "queue": "fromnode", "jobs": jobs}),
    )
    .await;
    let ids: Vec<String> = ids["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 5);
    let plain = q.get_job(&ids[0]).await.expect("get").expect("exists");
    assert_eq!(plain.data, json!({"a": 1, "url": "http://x/y"}));
    assert_eq!(plain.opts.attempts, Some(0));
    let full = q.get_job("full-1").await.expect("get").expect("exists");
    assert_eq!(full.opts.job_id.as_deref(), Some("full-1"));
    assert_eq!(full.opts.attempts, Some(4));
    assert_eq!(full.opts.backoff, Some(Backoff::exponential(1000)));
    assert_eq!(full.opts.remove_on_complete, Some(KeepJobs::Count(10)));
    assert_eq!(
        full.opts.remove_on_fail,
        Some(KeepJobs::Window {
            age_secs: Some(3600),
            count: Some(100),
            limit: None
        })
    );
    assert_eq!(full.opts.keep_logs, Some(5));
    assert_eq!(full.opts.stack_trace_limit, Some(3));
    assert!(full.opts.lifo);
    assert_eq!(
        full.opts.extra.get("myCustomOption"),
        Some(&json!({"x": 1})),
        "unknown options kept"
    );
    let delayed = q.get_job(&ids[2]).await.expect("get").expect("exists");
    assert_eq!(delayed.delay, 60_000);
    assert_eq!(
        q.get_job_state(&ids[2]).await.expect("state"),
        Some(JobState::Delayed)
    );
    let prio = q.get_job(&ids[3]).await.expect("get").expect("exists");
    assert_eq!(prio.priority, 9);
    let dedup = q.get_job(&ids[4]).await.expect("get").expect("exists");
    assert_eq!(dedup.deduplication_id.as_deref(), Some("dd-1"));
    assert_eq!(
        dedup.opts.deduplication.as_ref().and_then(|d| d.ttl_ms),
        Some(60_000)
    );
    let out = node(
        "inspect.mjs",
        json!({"url": server.url(), "queue": "fromnode", "states": []}),
    )
    .await;
    let counts = q.get_job_counts().await.expect("counts");
    for s in JobState::ALL {
        assert_eq!(out["counts"][s.as_str()].as_u64(), Some(counts[&s]), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_queue_events_receive_rust_events() {
    require_node!();
    let (server, q) = setup("ev").await;
    let a = q.add("a", &json!({}), o()).await.expect("add").id;
    let mut d = o();
    d.delay_ms = 60_000;
    let delayed = q.add("d", &json!({}), d).await.expect("add").id;
    let mut c = o();
    c.job_id = Some("c1".into());
    q.add("c", &json!({}), c.clone()).await.expect("add");
    q.add("c", &json!({}), c).await.expect("duplicate");
    let mut dd = o();
    dd.deduplication = Some(Dedup::new("x"));
    let owner = q.add("dd", &json!({}), dd.clone()).await.expect("add").id;
    q.add("dd", &json!({}), dd).await.expect("dedup hit");
    q.remove(&a).await.expect("remove");
    q.pause().await.expect("pause");
    q.resume().await.expect("resume");
    let cleaned = q
        .clean(Duration::ZERO, 0, JobState::Waiting)
        .await
        .expect("clean");
    assert_eq!(cleaned.len(), 2, "c1 and the dedup owner were waiting");
    // added+waiting (a), added+delayed, added+waiting (c1), duplicated, added+waiting (owner),
    // deduplicated, removed, paused, resumed, cleaned = 14 events.
    let out = node(
        "events.mjs",
        json!({"url": server.url(), "queue": "ev", "expect": 14}),
    )
    .await;
    assert_eq!(out["timedOut"], false, "{out}");
    let events: Vec<(String, Value)> = out["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["args"].clone(),
            )
        })
        .collect();
    let find = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| a)
            .collect()
    };
    assert_eq!(find("added")[0]["jobId"], a);
    assert_eq!(find("added")[0]["name"], "a");
    assert!(find("waiting").iter().any(|w| w["jobId"] == a));
    let dl = find("delayed");
    assert_eq!(dl[0]["jobId"], delayed);
    assert!(
        dl[0]["delay"].as_u64().unwrap_or(0) > 1_700_000_000_000,
        "absolute due time: {}",
        dl[0]
    );
    assert_eq!(find("duplicated")[0]["jobId"], "c1");
    let dup = find("deduplicated");
    assert_eq!(dup[0]["jobId"], owner);
    assert_eq!(dup[0]["deduplicationId"], "x");
    let rm = find("removed");
    assert_eq!(rm[0]["jobId"], a);
    assert_eq!(rm[0]["prev"], "wait");
    assert_eq!(find("paused").len(), 1);
    assert_eq!(find("resumed").len(), 1);
    let cl = find("cleaned");
    assert_eq!(cl.len(), 1);
    assert_eq!(
        cl[0]["count"], "2",
        "stream fields arrive as text: {}",
        cl[0]
    );
}
