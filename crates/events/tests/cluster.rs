//! The whole stack on a real Redis Cluster (3 masters, 3 replicas).

use std::collections::HashSet;
use std::time::Duration;

use bullpen_conn::{redis, Connection, RedisOptions, RetryStrategy};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::{eventually, ClusterTopology};
use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};
use serde_json::{json, Value};

fn quick(o: RedisOptions) -> RedisOptions {
    o.with_retry_strategy(RetryStrategy::exponential(
        Duration::from_millis(100),
        Duration::from_millis(100),
        Duration::from_millis(500),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_worker_and_events_on_a_cluster() {
    let cluster = ClusterTopology::start().expect("cluster");
    let url = cluster.url();
    let conn = Connection::connect(quick(RedisOptions::from_url(&url).expect("url").worker()))
        .await
        .expect("cluster connection");
    // Without a hash tag the queue's keys would span slots: refused, with the fix.
    let err = Queue::new(conn.clone(), "jobs", QueueOptions::default())
        .await
        .expect_err("no hash tag");
    assert!(err.to_string().contains("`{bull}`"), "{err}");
    let q = Queue::new(
        conn.clone(),
        "jobs",
        QueueOptions::default()
            .with_prefix("{bull}")
            .keep_everything(),
    )
    .await
    .expect("queue with a hash tag");
    let mut events = QueueEvents::new(
        quick(RedisOptions::from_url(&url).expect("url").blocking()),
        "jobs",
        QueueEventsOptions::default()
            .prefix("{bull}")
            .start(StartAt::Beginning),
    )
    .await
    .expect("events");
    let worker = Worker::start(
        quick(RedisOptions::from_url(&url).expect("url").worker()),
        "jobs",
        from_fn(
            |job: Job<Value>, _ctx| async move { Ok::<_, JobError>(json!({ "n": job.data["n"] })) },
        ),
        WorkerOptions::builder()
            .prefix("{bull}")
            .concurrency(8)
            .lock_duration(Duration::from_secs(4))
            .stalled_interval(Duration::from_secs(1))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let jobs: Vec<BulkJob<Value>> = (0..300)
        .map(|i| BulkJob::new("j", json!({ "n": i }), JobOptions::default()))
        .collect();
    let mut added: HashSet<String> = HashSet::new();
    for out in q.add_bulk(&jobs[..150]).await.expect("bulk") {
        added.insert(out.id);
    }
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&JobState::Completed] >= 150)
                .unwrap_or(false)
        },
        Duration::from_secs(20),
    )
    .await
    .expect("first half completed");
    // Failover under load (CLUSTER FAILOVER, kill -9 of the slot owner) is covered by
    // `cluster_failover.rs`.
    for out in q.add_bulk(&jobs[150..]).await.expect("second bulk") {
        added.insert(out.id);
    }
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&JobState::Completed] >= 300)
                .unwrap_or(false)
        },
        Duration::from_secs(30),
    )
    .await
    .expect("every job completed");
    worker.close(Duration::from_secs(2)).await;
    let completed: Vec<String> = conn
        .query(
            redis::cmd("ZRANGE")
                .arg("{bull}:jobs:completed")
                .arg(0)
                .arg(-1),
        )
        .await
        .expect("ZRANGE");
    let done: HashSet<String> = completed.into_iter().collect();
    assert!(added.iter().all(|id| done.contains(id)), "nothing lost");
    assert_eq!(done.len(), 300);
    let mut seen = 0;
    while seen < 300 {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(EventItem::Event { event, .. }))) if event.name() == "completed" => {
                seen += 1
            }
            Ok(Some(_)) => {}
            other => panic!("events after {seen} completions: {other:?}"),
        }
    }
}
