//! QueueEvents with real Node BullMQ 6.7.0 peers (tests/interop). Skips, saying why, when
//! Node or its packages are missing.

use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::events::Event;
use bullpen_events::{
    EventItem, Finished, QueueEvents, QueueEventsOptions, QueueEventsProducer, StartAt,
};
use bullpen_testkit::node::{node_ready, run_node, spawn_node, wait_node};
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

async fn node(script: &str, input: Value) -> Value {
    run_node(script, &input, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

async fn listener(url: &str, queue: &str) -> QueueEvents {
    let mut o = QueueEventsOptions::default().start(StartAt::Beginning);
    o.block = Duration::from_millis(500);
    QueueEvents::new(
        RedisOptions::from_url(url).expect("url").blocking(),
        queue,
        o,
    )
    .await
    .expect("listener")
}

#[tokio::test(flavor = "multi_thread")]
async fn we_see_every_event_node_writes() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let jobs = json!([
        {"name": "ok", "data": {"n": 1}},
        {"name": "flaky", "data": {"n": 2}, "opts": {"attempts": 2}},
        {"name": "later", "data": {"n": 3}, "opts": {"delay": 300}},
        {"name": "prio", "data": {"n": 4}, "opts": {"priority": 3}}
    ]);
    node(
        "produce.mjs",
        json!({"url": url, "queue": "nq", "jobs": jobs}),
    )
    .await;
    let out = node(
        "consume.mjs",
        json!({"url": url, "queue": "nq", "expect": 4, "failPlan": {"flaky": 1}, "returnValue": {"r": "v/1"}}),
    )
    .await;
    assert_eq!(out["timedOut"], false, "{out}");
    let conn = Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect("connect");
    let all: Vec<(String, Vec<String>)> = conn
        .query(
            bullpen_conn::redis::cmd("XRANGE")
                .arg("bull:nq:events")
                .arg("-")
                .arg("+"),
        )
        .await
        .expect("XRANGE");
    let mut ev = listener(&url, "nq").await;
    let mut got = Vec::new();
    while got.len() < all.len() {
        match tokio::time::timeout(Duration::from_secs(5), ev.next()).await {
            Ok(Some(Ok(EventItem::Event { id, event }))) => got.push((id, event)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected, "count and order match XRANGE");
    let events: Vec<&Event> = got.iter().map(|(_, e)| e).collect();
    assert!(
        events.iter().all(|e| !matches!(e, Event::Other { .. })),
        "every event is typed: {events:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::Completed { returnvalue, .. } if *returnvalue == json!({"r": "v/1"}))
    ));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Delayed { delay, .. } if *delay > 1_700_000_000_000)));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Waiting { prev: Some(p), .. } if p == "active")),
        "the retry"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Active { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Drained)));
}

#[tokio::test(flavor = "multi_thread")]
async fn node_receives_our_custom_event() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let conn = Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect("connect");
    let publisher = QueueEventsProducer::new(conn, "bull", "ce").expect("producer");
    publisher
        .publish("deployed", &[("version", "1.2.3"), ("by", "bullpen")])
        .await
        .expect("publish");
    let out = node(
        "events.mjs",
        json!({"url": url, "queue": "ce", "expect": 1}),
    )
    .await;
    assert_eq!(out["timedOut"], false, "{out}");
    let e = &out["events"][0];
    assert_eq!(e["event"], "deployed");
    assert_eq!(e["args"]["version"], "1.2.3");
    assert_eq!(e["args"]["by"], "bullpen");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_finished_on_a_job_a_node_worker_completes() {
    require_node!();
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let ids = node(
        "produce.mjs",
        json!({"url": url, "queue": "wq", "jobs": [{"name": "j", "data": {}}]}),
    )
    .await;
    let id = ids["ids"][0].as_str().expect("id").to_owned();
    let mut o = QueueEventsOptions::default();
    o.block = Duration::from_millis(500);
    let mut ev = QueueEvents::new(
        RedisOptions::from_url(&url).expect("url").blocking(),
        "wq",
        o,
    )
    .await
    .expect("listener");
    // Start the Node worker only now, so the finish happens while we wait.
    let child = spawn_node(
        "consume.mjs",
        &json!({"url": url, "queue": "wq", "expect": 1, "returnValue": {"from": "node"}}),
    )
    .expect("spawn");
    let done = ev
        .wait_until_finished(&id, Duration::from_secs(30))
        .await
        .expect("finished");
    assert_eq!(done, Finished::Completed(json!({"from": "node"})));
    let out = wait_node("consume.mjs", child, Duration::from_secs(30))
        .await
        .expect("node");
    assert_eq!(out["completed"][0], id.as_str());
}
