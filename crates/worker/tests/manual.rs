//! The manual API: fetch, renew, complete and fail by hand.

use std::time::Duration;

use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{Backoff, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use bullpen_worker::ManualWorker;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn get_next_job_then_complete_or_fail_by_hand() {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(RedisOptions::from_url(&server.url()).expect("url").worker())
        .await
        .expect("connect");
    let q = Queue::new(conn.clone(), "m", QueueOptions::default().keep_everything())
        .await
        .expect("queue");
    let a = q
        .add("a", &json!(1), JobOptions::default())
        .await
        .expect("add")
        .id;
    let mut retry = JobOptions::default();
    retry.attempts = Some(2);
    retry.backoff = Some(Backoff::fixed(60_000));
    let b = q.add("b", &json!(2), retry).await.expect("add").id;
    let m = ManualWorker::new(conn, "bull", "m", Duration::from_secs(5)).expect("manual");
    let first = m.get_next_job().await.expect("fetch").expect("a job");
    assert_eq!(first.job.id, a);
    assert_eq!(
        q.get_job_state(&a).await.expect("state"),
        Some(JobState::Active)
    );
    assert!(m.extend_lock(&first).await.expect("extend"));
    m.move_to_completed(&first, &json!({"ok": true}))
        .await
        .expect("complete");
    assert_eq!(
        q.get_job(&a).await.expect("get").expect("job").returnvalue,
        Some(json!({"ok": true}))
    );
    // Completing twice with the same token is refused: the lock is gone.
    assert!(m.move_to_completed(&first, &json!(0)).await.is_err());

    let second = m.get_next_job().await.expect("fetch").expect("a job");
    assert_eq!(second.job.id, b);
    assert!(
        m.move_to_failed(&second, "first try").await.expect("fail"),
        "a retry is planned"
    );
    assert_eq!(
        q.get_job_state(&b).await.expect("state"),
        Some(JobState::Delayed)
    );
    assert!(
        m.get_next_job().await.expect("fetch").is_none(),
        "nothing ready"
    );
    q.promote(&b).await.expect("promote");
    let again = m.get_next_job().await.expect("fetch").expect("the retry");
    assert!(
        !m.move_to_failed(&again, "second try").await.expect("fail"),
        "no attempts left"
    );
    let j = q.get_job(&b).await.expect("get").expect("job");
    assert_eq!(
        (j.failed_reason.as_deref(), j.attempts_made),
        (Some("second try"), 2)
    );
}
