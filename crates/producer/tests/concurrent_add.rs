//! Concurrent single adds share script calls, and each keeps its own options and outcome.

use std::collections::HashMap;
use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{AddStatus, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use serde_json::json;

async fn setup() -> (RedisServer, Queue) {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("connect");
    let q = Queue::new(conn, "q", QueueOptions::default())
        .await
        .expect("queue");
    (server, q)
}

/// `EVALSHA` plus `EVAL` calls since the last `CONFIG RESETSTAT`.
fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.admin(&["INFO", "commandstats"]).expect("INFO");
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Polls `fut` once, so that it has started (and taken its place) before the caller goes on.
async fn start<F: std::future::Future + Unpin>(fut: &mut F) {
    tokio::select! {
        biased;
        _ = fut => panic!("finished while Redis was paused"),
        _ = std::future::ready(()) => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn adds_that_queue_up_share_calls_and_keep_their_own_options_and_outcomes() {
    let (server, q) = setup().await;
    // Load the script first, so that the count below holds no NOSCRIPT round trip.
    q.add("warm", &json!({}), JobOptions::default())
        .await
        .expect("warm-up add");
    server.admin(&["CONFIG", "RESETSTAT"]).expect("RESETSTAT");
    // Hold every write for a moment so that the 64 adds are all waiting at once.
    server
        .admin(&["CLIENT", "PAUSE", "300", "WRITE"])
        .expect("CLIENT PAUSE");
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = JobOptions::default();
            match i % 4 {
                0 => o.delay_ms = 60_000,
                1 => o.priority = 5,
                2 => o.job_id = Some(format!("custom-{i}")),
                _ => {}
            }
            if i >= 62 {
                o.job_id = Some("twice".into());
            }
            let out = q.add("job", &json!({ "i": i }), o).await;
            (i, out)
        }));
    }
    let mut outcomes = HashMap::new();
    for t in tasks {
        let (i, out) = t.await.expect("task");
        outcomes.insert(i, out.expect("add"));
    }
    let calls = script_calls(&server);
    assert!(
        calls < 16,
        "64 concurrent adds took {calls} script calls; they should have shared calls"
    );

    let twice: Vec<AddStatus> = [62, 63].iter().map(|i| outcomes[i].status).collect();
    assert!(
        twice.contains(&AddStatus::Added) && twice.contains(&AddStatus::Duplicated),
        "one of the two adds with the same custom id adds, the other is a duplicate: {twice:?}"
    );
    assert_eq!(outcomes[&62].id, "twice");
    assert_eq!(outcomes[&63].id, "twice");
    let mut ids: Vec<&String> = outcomes
        .iter()
        .filter(|(i, _)| **i < 62)
        .map(|(_, o)| &o.id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 62, "every add got its own job");

    for (i, out) in outcomes.iter().filter(|(i, _)| **i < 62) {
        assert_eq!(out.status, AddStatus::Added);
        let job = q.get_job(&out.id).await.expect("get").expect("exists");
        assert_eq!(
            job.data,
            json!({ "i": i }),
            "job {} has its own data",
            out.id
        );
        let state = q.get_job_state(&out.id).await.expect("state");
        match i % 4 {
            0 => {
                assert_eq!(job.delay, 60_000);
                assert_eq!(state, Some(JobState::Delayed));
            }
            1 => {
                assert_eq!(job.priority, 5);
                assert_eq!(state, Some(JobState::Prioritized));
            }
            2 => {
                assert_eq!(out.id, format!("custom-{i}"));
                assert_eq!(state, Some(JobState::Waiting));
            }
            _ => assert_eq!(state, Some(JobState::Waiting)),
        }
    }
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(counts[&JobState::Delayed], 16);
    assert_eq!(counts[&JobState::Prioritized], 16);
    // 15 plain, 15 custom ids (2 of the 64 are the shared custom id), "twice" and the warm-up.
    assert_eq!(counts[&JobState::Waiting], 15 + 15 + 1 + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_add_given_up_before_it_was_sent_is_never_added() {
    let (server, q) = setup().await;
    q.add("warm", &json!({}), JobOptions::default())
        .await
        .expect("warm-up add");
    server
        .admin(&["CLIENT", "PAUSE", "600", "WRITE"])
        .expect("CLIENT PAUSE");
    // Two adds in flight (held by the pause): the next one has to wait for a shared call.
    let empty = json!({});
    let mut a = Box::pin(q.add("a", &empty, JobOptions::default()));
    let mut b = Box::pin(q.add("b", &empty, JobOptions::default()));
    start(&mut a).await;
    start(&mut b).await;
    let mut o = JobOptions::default();
    o.job_id = Some("given-up".into());
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        q.add("c", &json!({ "c": 1 }), o),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the third add waits behind the paused two"
    );
    let (a, b) = tokio::join!(a, b);
    a.expect("a is added once Redis resumes");
    b.expect("b is added once Redis resumes");
    // Another add after them proves the queue keeps working and that the given-up job did not
    // ride along with it.
    let d = q
        .add("d", &json!({}), JobOptions::default())
        .await
        .expect("d");
    assert_eq!(d.status, AddStatus::Added);
    assert_eq!(
        q.get_job("given-up").await.expect("get"),
        None,
        "an add dropped before it was sent must not be added"
    );
    assert_eq!(
        q.get_job_counts().await.expect("counts")[&JobState::Waiting],
        4
    );
}
