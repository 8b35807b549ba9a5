//! Admin operations against a real redis-server.

use std::collections::HashMap;
use std::time::Duration;

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_producer::{Dedup, Error, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use serde_json::json;

async fn setup() -> (RedisServer, Connection, Queue) {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(
        RedisOptions::from_url(&server.url())
            .expect("url")
            .producer(),
    )
    .await
    .expect("connect");
    let q = Queue::new(conn.clone(), "q", QueueOptions::default())
        .await
        .expect("queue");
    (server, conn, q)
}

fn o() -> JobOptions {
    JobOptions::default()
}

fn delayed(ms: u64) -> JobOptions {
    let mut x = o();
    x.delay_ms = ms;
    x
}

fn prio(p: u32) -> JobOptions {
    let mut x = o();
    x.priority = p;
    x
}

/// Leaves job `id` as a finishing worker would: out of wait, in `state` with score = `at`.
async fn finish(conn: &Connection, id: &str, state: &str, at: u64) {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("LREM")
        .arg("bull:q:wait")
        .arg(0)
        .arg(id)
        .ignore()
        .cmd("ZREM")
        .arg("bull:q:prioritized")
        .arg(id)
        .ignore()
        .cmd("ZADD")
        .arg(format!("bull:q:{state}"))
        .arg(at)
        .arg(id)
        .ignore()
        .cmd("HSET")
        .arg(format!("bull:q:{id}"))
        .arg("finishedOn")
        .arg(at)
        .arg("processedOn")
        .arg(at)
        .arg(if state == "failed" {
            "failedReason"
        } else {
            "returnvalue"
        })
        .arg(if state == "failed" { "boom" } else { "42" })
        .arg("atm")
        .arg(1)
        .ignore();
    let _: () = conn.query_pipeline(&pipe).await.expect("finish");
}

async fn events(conn: &Connection) -> Vec<Vec<String>> {
    let entries: Vec<(String, Vec<String>)> = conn
        .query(redis::cmd("XRANGE").arg("bull:q:events").arg("-").arg("+"))
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(_, f)| f).collect()
}

async fn counts(q: &Queue) -> HashMap<JobState, u64> {
    q.get_job_counts()
        .await
        .expect("counts")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_keeps_delayed_unless_asked_and_releases_dedup_keys() {
    let (_s, conn, q) = setup().await;
    let mut d = o();
    d.deduplication = Some(Dedup::new("x"));
    q.add("w", &json!(1), d).await.expect("add");
    q.add("w", &json!(2), o()).await.expect("add");
    q.add("p", &json!(3), prio(2)).await.expect("add");
    q.add("d", &json!(4), delayed(60_000)).await.expect("add");
    assert_eq!(q.drain(false).await.expect("drain"), 3);
    let c = counts(&q).await;
    assert_eq!(
        (
            c[&JobState::Waiting],
            c[&JobState::Prioritized],
            c[&JobState::Delayed]
        ),
        (0, 0, 1)
    );
    let dedup: Option<String> = conn
        .query(redis::cmd("GET").arg("bull:q:de:x"))
        .await
        .expect("GET");
    assert_eq!(dedup, None, "the dedup key of a drained job is released");
    assert!(q.get_job("1").await.expect("get").is_none());
    assert_eq!(q.drain(true).await.expect("drain"), 1);
    assert_eq!(counts(&q).await[&JobState::Delayed], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_deletes_old_finished_jobs_and_says_how_many() {
    let (_s, conn, q) = setup().await;
    for i in 0..5 {
        let id = q.add("j", &json!(i), o()).await.expect("add").id;
        finish(&conn, &id, "completed", 1_000 + i).await;
    }
    let young = q.add("young", &json!(9), o()).await.expect("add").id;
    finish(&conn, &young, "completed", q_now()).await;
    let removed = q
        .clean(Duration::from_secs(3600), 3, JobState::Completed)
        .await
        .expect("clean");
    assert_eq!(
        removed,
        vec!["1", "2", "3"],
        "oldest first, up to the limit"
    );
    let removed = q
        .clean(Duration::from_secs(3600), 0, JobState::Completed)
        .await
        .expect("clean");
    assert_eq!(removed, vec!["4", "5"]);
    assert_eq!(
        counts(&q).await[&JobState::Completed],
        1,
        "the young job stays"
    );
    let cleaned: Vec<_> = events(&conn)
        .await
        .into_iter()
        .filter(|e| e[1] == "cleaned")
        .collect();
    assert_eq!(
        cleaned,
        vec![
            vec!["event", "cleaned", "count", "3"],
            vec!["event", "cleaned", "count", "2"],
        ]
    );
    // Waiting jobs are aged by their timestamp.
    q.add("w", &json!(1), o()).await.expect("add");
    let removed = q
        .clean(Duration::ZERO, 0, JobState::Waiting)
        .await
        .expect("clean");
    assert_eq!(removed.len(), 1);
}

fn q_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn obliterate_refuses_active_jobs_unless_forced_and_leaves_nothing() {
    let (_s, conn, q) = setup().await;
    for i in 0..2500 {
        q.add(
            "j",
            &json!(i),
            if i % 3 == 0 { delayed(60_000) } else { o() },
        )
        .await
        .expect("add");
    }
    let _: () = conn
        .query(
            redis::cmd("LMOVE")
                .arg("bull:q:wait")
                .arg("bull:q:active")
                .arg("RIGHT")
                .arg("LEFT"),
        )
        .await
        .expect("simulate an active job");
    let err = q.obliterate(false).await.expect_err("active");
    assert!(matches!(err, Error::ActiveJobs { .. }), "{err}");
    q.obliterate(true).await.expect("forced");
    let keys: Vec<String> = conn
        .query(redis::cmd("KEYS").arg("bull:q:*"))
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_jobs_and_promote_jobs_move_jobs_to_wait() {
    let (_s, conn, q) = setup().await;
    for i in 0..3 {
        let id = q.add("f", &json!(i), o()).await.expect("add").id;
        finish(&conn, &id, "failed", 1_000 + i).await;
    }
    q.retry_jobs(JobState::Failed, None).await.expect("retry");
    let c = counts(&q).await;
    assert_eq!((c[&JobState::Failed], c[&JobState::Waiting]), (0, 3));
    let job = q.get_job("1").await.expect("get").expect("exists");
    assert_eq!(job.failed_reason, None);
    assert_eq!(job.finished_on, None);
    assert_eq!(job.attempts_made, 1, "attempt counters are kept");
    let waiting: Vec<_> = events(&conn)
        .await
        .into_iter()
        .filter(|e| e.len() == 6 && e[5] == "failed")
        .collect();
    assert_eq!(waiting.len(), 3);
    let err = q
        .retry_jobs(JobState::Waiting, None)
        .await
        .expect_err("wrong state");
    assert!(matches!(err, Error::WrongState { .. }), "{err}");

    for _ in 0..2 {
        q.add("d", &json!({}), delayed(60_000)).await.expect("add");
    }
    q.promote_jobs().await.expect("promote");
    let c = counts(&q).await;
    assert_eq!((c[&JobState::Delayed], c[&JobState::Waiting]), (0, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_level_priority_delay_promote_and_retry() {
    let (_s, conn, q) = setup().await;
    let w = q.add("w", &json!(1), o()).await.expect("add").id;
    q.change_priority(&w, 3, false).await.expect("priority");
    assert_eq!(
        q.get_job_state(&w).await.expect("state"),
        Some(JobState::Prioritized)
    );
    q.change_priority(&w, 5, true).await.expect("lifo priority");
    let score: f64 = conn
        .query(redis::cmd("ZSCORE").arg("bull:q:prioritized").arg(&w))
        .await
        .expect("ZSCORE");
    assert_eq!(score, 5.0 * 4_294_967_296.0, "front of its priority");
    q.change_priority(&w, 0, false).await.expect("no priority");
    assert_eq!(
        q.get_job_state(&w).await.expect("state"),
        Some(JobState::Waiting)
    );
    assert!(q.change_priority("nope", 1, false).await.is_err());

    let d = q
        .add("d", &json!(2), delayed(60_000))
        .await
        .expect("add")
        .id;
    q.change_delay(&d, Duration::from_secs(120))
        .await
        .expect("delay");
    let job = q.get_job(&d).await.expect("get").expect("exists");
    assert_eq!(job.delay, 120_000);
    let err = q
        .change_delay(&w, Duration::from_secs(1))
        .await
        .expect_err("not delayed");
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    q.promote(&d).await.expect("promote");
    assert_eq!(
        q.get_job_state(&d).await.expect("state"),
        Some(JobState::Waiting)
    );
    assert_eq!(q.get_job(&d).await.expect("get").expect("exists").delay, 0);
    assert!(events(&conn).await.contains(&vec![
        "event".into(),
        "waiting".into(),
        "jobId".into(),
        d.clone(),
        "prev".into(),
        "delayed".into()
    ]));

    let f = q.add("f", &json!(3), prio(4)).await.expect("add").id;
    finish(&conn, &f, "failed", 1_000).await;
    q.retry(&f, false).await.expect("retry");
    assert_eq!(
        q.get_job_state(&f).await.expect("state"),
        Some(JobState::Prioritized)
    );
    let job = q.get_job(&f).await.expect("get").expect("exists");
    assert_eq!(
        (job.failed_reason, job.finished_on, job.attempts_made),
        (None, None, 1)
    );
    let err = q.retry(&w, false).await.expect_err("not finished");
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    let err = q.retry("nope", false).await.expect_err("missing");
    assert!(matches!(err, Error::JobNotFound { .. }), "{err}");
}
