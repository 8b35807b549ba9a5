//! The Node interop harness on its own: BullMQ produces, consumes, inspects, publishes
//! and listens through the scripts in `tests/interop`, against a real redis-server.
//! Skips (with the reason) when Node or `node_modules` are not there.

use std::collections::BTreeMap;
use std::time::Duration;

use bullpen_testkit::node::{node_ready, run_node, spawn_node, wait_node};
use bullpen_testkit::RedisServer;
use serde_json::{json, Value};

/// Outer bound for one script; the scripts get a smaller `timeoutMs`.
const RUN: Duration = Duration::from_secs(30);

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_str().expect("a string id").to_owned())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn bullmq_round_trip_through_the_node_scripts() {
    if let Err(why) = node_ready() {
        println!("skipped: {why}");
        return;
    }
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let q = "harness";

    // Three jobs, one at a time; `flaky` fails its first attempt and has two.
    let produced = run_node(
        "produce.mjs",
        &json!({
            "url": url, "queue": q,
            "jobs": [
                {"name": "plain", "data": {"n": 1}},
                {"name": "flaky", "data": {"n": 2}, "opts": {"attempts": 2}},
                {"name": "plain", "data": {"n": 3}, "opts": {"removeOnFail": false}},
            ],
        }),
        RUN,
    )
    .await
    .expect("produce.mjs");
    assert_eq!(ids(&produced["ids"]), ["1", "2", "3"]);

    // addBulk into another queue (and prefix), so both paths are covered.
    let bulk = run_node(
        "produce.mjs",
        &json!({
            "url": url, "queue": "bulk", "prefix": "other", "bulk": true,
            "jobs": [{"name": "x", "data": null}, {"name": "y", "opts": {"jobId": "custom-id"}}],
        }),
        RUN,
    )
    .await
    .expect("produce.mjs bulk");
    assert_eq!(ids(&bulk["ids"]), ["1", "custom-id"]);

    // The worker runs next to the test: spawn it, then collect its result.
    let worker = spawn_node(
        "consume.mjs",
        &json!({
            "url": url, "queue": q, "expect": 3, "timeoutMs": 15000,
            "failPlan": {"flaky": 1},
        }),
    )
    .expect("spawn consume.mjs");
    let consumed = wait_node("consume.mjs", worker, RUN)
        .await
        .expect("consume.mjs");
    assert_eq!(consumed["timedOut"], false, "{consumed}");
    assert_eq!(
        sorted(ids(&consumed["completed"])),
        ["1", "2", "3"],
        "{consumed}"
    );
    assert_eq!(consumed["failed"], json!([]), "{consumed}");
    let calls = consumed["processed"].as_array().expect("processed");
    assert_eq!(calls.len(), 4, "one retry: {consumed}");
    let flaky: Vec<&Value> = calls.iter().filter(|c| c["id"] == "2").collect();
    assert_eq!(flaky.len(), 2, "{consumed}");
    assert_eq!(flaky[0]["attemptsMade"], 0);
    assert_eq!(flaky[0]["attemptsStarted"], 1);
    assert_eq!(flaky[1]["attemptsMade"], 1);
    assert_eq!(flaky[1]["attemptsStarted"], 2);
    assert_eq!(flaky[0]["name"], "flaky");
    assert_eq!(flaky[0]["data"], json!({"n": 2}));
    assert_eq!(flaky[0]["opts"]["attempts"], 2);
    for c in calls {
        assert!(c["processedOn"].as_u64().is_some(), "{c}");
        assert!(c["timestamp"].as_u64() <= c["at"].as_u64(), "{c}");
    }

    let inspected = run_node(
        "inspect.mjs",
        &json!({"url": url, "queue": q, "ids": ["1", "2", "3", "404"], "priorities": [0]}),
        RUN,
    )
    .await
    .expect("inspect.mjs");
    let counts = &inspected["counts"];
    assert_eq!(counts["completed"], 3, "{inspected}");
    for state in [
        "failed",
        "active",
        "waiting",
        "delayed",
        "paused",
        "prioritized",
        "waiting-children",
    ] {
        assert_eq!(counts[state], 0, "{state}: {inspected}");
    }
    assert_eq!(inspected["isPaused"], false);
    assert!(
        inspected["meta"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("bullmq:")),
        "{inspected}"
    );
    let retried = &inspected["jobs"]["2"];
    assert_eq!(retried["state"], "completed");
    // attemptsMade counts the failed attempt and the one that completed.
    assert_eq!(retried["json"]["attemptsMade"], 2, "{retried}");
    assert_eq!(retried["json"]["attemptsStarted"], 2, "{retried}");
    assert_eq!(retried["json"]["failedReason"], "planned failure 1");
    assert_eq!(
        retried["json"]["returnvalue"],
        json!({"ok": true, "id": "2"})
    );
    assert_eq!(
        inspected["jobs"]["404"],
        json!({"json": null, "state": "unknown"})
    );
    assert_eq!(
        sorted(ids(&inspected["lists"]["completed"])),
        ["1", "2", "3"]
    );
    assert_eq!(ids(&inspected["lists"]["waiting"]), Vec::<String>::new());
    assert_eq!(inspected["countsPerPriority"]["0"], 0, "{inspected}");

    let published = run_node(
        "publish.mjs",
        &json!({"url": url, "queue": q, "name": "harness-done", "fields": {"n": 3}}),
        RUN,
    )
    .await
    .expect("publish.mjs");
    assert_eq!(published, json!({"ok": true}));

    // added 3 + waiting 3 + active 4 + waiting (the retry) 1 + completed 3 + drained 1
    // + the custom event = 16, all already in the stream: read from "0-0".
    let expected = 16;
    let heard = run_node(
        "events.mjs",
        &json!({"url": url, "queue": q, "expect": expected, "timeoutMs": 15000}),
        RUN,
    )
    .await
    .expect("events.mjs");
    assert_eq!(heard["timedOut"], false, "{heard}");
    let events = heard["events"].as_array().expect("events");
    assert_eq!(events.len(), expected, "{heard}");
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *by_name
            .entry(e["event"].as_str().expect("event name"))
            .or_default() += 1;
        assert!(e["id"].as_str().is_some_and(|id| id.contains('-')), "{e}");
    }
    let want: BTreeMap<&str, usize> = [
        ("added", 3),
        ("waiting", 4),
        ("active", 4),
        ("completed", 3),
        ("drained", 1),
        ("harness-done", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_name, want, "{heard}");
    let first = &events[0];
    assert_eq!(first["event"], "added");
    assert_eq!(first["args"], json!({"jobId": "1", "name": "plain"}));
    let last = &events[expected - 1];
    assert_eq!(last["event"], "harness-done");
    assert_eq!(last["args"], json!({"n": "3"}));
    let done2 = events
        .iter()
        .find(|e| e["event"] == "completed" && e["args"]["jobId"] == "2")
        .expect("completed event for job 2");
    assert_eq!(done2["args"]["returnvalue"], json!({"ok": true, "id": "2"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_report_errors_and_time_bounds() {
    if let Err(why) = node_ready() {
        println!("skipped: {why}");
        return;
    }
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();

    // Nothing to consume: the worker gives up at timeoutMs and says so.
    let out = run_node(
        "consume.mjs",
        &json!({"url": url, "queue": "empty", "expect": 1, "timeoutMs": 500}),
        RUN,
    )
    .await
    .expect("consume.mjs");
    assert_eq!(out["timedOut"], true, "{out}");
    assert_eq!(out["processed"], json!([]));

    // A bad input is an error with the script's message.
    let err = run_node("produce.mjs", &json!({"url": url, "queue": "q"}), RUN)
        .await
        .expect_err("jobs missing");
    assert!(err.contains("input.jobs"), "{err}");
}
