//! The whole stack (producer, worker, events listener) as an ACL user that may run only
//! `bullpen_core::acl::REQUIRED_COMMANDS` on `bull:*` keys.

use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{Backoff, BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::{eventually, RedisServer};
use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn producer_worker_and_events_need_nothing_beyond_the_documented_list() {
    let rules = bullpen_core::acl::acl_rules("bull");
    let server = RedisServer::builder()
        .acl_user("bp", "bp-secret", &rules)
        .start()
        .expect("redis-server");
    let url = format!("redis://bp:bp-secret@127.0.0.1:{}", server.port());
    let conn = Connection::connect(RedisOptions::from_url(&url).expect("url").producer())
        .await
        .expect("connect as the ACL user");
    let q = Queue::new(
        conn.clone(),
        "acl",
        QueueOptions::default().keep_everything(),
    )
    .await
    .expect("queue");
    let mut retry = JobOptions::default();
    retry.attempts = Some(2);
    retry.backoff = Some(Backoff::fixed(50));
    let jobs: Vec<BulkJob<Value>> = (0..20)
        .map(|i| {
            BulkJob::new(
                if i % 5 == 0 { "flaky" } else { "ok" },
                json!(i),
                retry.clone(),
            )
        })
        .collect();
    q.add_bulk(&jobs).await.expect("bulk add");
    let mut delayed = JobOptions::default();
    delayed.delay_ms = 100;
    q.add("later", &json!({}), delayed)
        .await
        .expect("delayed add");
    q.pause().await.expect("pause");
    q.resume().await.expect("resume");
    let mut events = QueueEvents::new(
        RedisOptions::from_url(&url).expect("url").blocking(),
        "acl",
        QueueEventsOptions::default().start(StartAt::Beginning),
    )
    .await
    .expect("events listener as the ACL user");
    let processor = from_fn(|job: Job<Value>, ctx| async move {
        ctx.progress(&1).await.map_err(JobError::failed)?;
        ctx.log("line").await.map_err(JobError::failed)?;
        if job.name == "flaky" && job.attempts_made == 0 {
            return Err(JobError::failed("first try"));
        }
        Ok(json!("ok"))
    });
    let worker = Worker::start(
        RedisOptions::from_url(&url).expect("url").worker(),
        "acl",
        processor,
        WorkerOptions::builder()
            .stalled_interval(Duration::from_millis(500))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker as the ACL user");
    let mut worker_events = worker.events();
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&JobState::Completed] == 21)
                .unwrap_or(false)
        },
        Duration::from_secs(15),
    )
    .await
    .expect("every job completed");
    // No permission error anywhere in the worker.
    while let Ok(e) = worker_events.try_recv() {
        if let bullpen_worker::WorkerEvent::Error { message } = e {
            panic!("worker error as the ACL user: {message}");
        }
    }
    let mut completed = 0;
    while completed < 21 {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Ok(EventItem::Event { event, .. }))) => {
                if event.name() == "completed" {
                    completed += 1;
                }
            }
            other => panic!("events as the ACL user: {other:?}"),
        }
    }
    q.clean(Duration::ZERO, 5, JobState::Completed)
        .await
        .expect("clean");
    q.get_jobs(&[JobState::Completed], 0, 2, true)
        .await
        .expect("getters");
    q.get_job_logs("2", 0, -1, true).await.expect("logs");
    worker.close(Duration::from_secs(1)).await;
    // And the user really is limited: anything else is refused.
    let err = conn
        .query::<Vec<String>>(bullpen_conn::redis::cmd("KEYS").arg("*"))
        .await
        .expect_err("KEYS is not on the list");
    assert_eq!(err.server_code(), Some("NOPERM"), "{err}");
}
