//! In-process fault tests of the worker against a real redis-server: Redis frozen with
//! SIGSTOP for longer than the lock, and a stale run that outlives its lock next to a fresh
//! run of the same job in the same worker.

mod common;

use common::{queue, redis_opts, test_opts};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullpen_conn::redis;
use bullpen_core::job::Job;
use bullpen_producer::{JobOptions, JobState, Queue};
use bullpen_testkit::{eventually, RedisServer};
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Every local event, recorded with the time it arrived, by a task that runs until the
/// worker's channel closes or the test ends.
fn record_events(worker: &Worker) -> Arc<Mutex<Vec<(Instant, WorkerEvent)>>> {
    let log: Arc<Mutex<Vec<(Instant, WorkerEvent)>>> = Arc::default();
    let sink = log.clone();
    let mut rx = worker.events();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => sink.lock().expect("log").push((Instant::now(), e)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    log
}

fn events_of(log: &Mutex<Vec<(Instant, WorkerEvent)>>) -> Vec<(Instant, WorkerEvent)> {
    log.lock().expect("log").clone()
}

/// How many `event` entries of the stream name job `id`.
async fn stream_count(q: &Queue, event: &str, id: &str) -> usize {
    let entries: Vec<(String, Vec<String>)> = q
        .connection()
        .query(
            redis::cmd("XRANGE")
                .arg(q.keys().key("events"))
                .arg("-")
                .arg("+"),
        )
        .await
        .expect("XRANGE");
    entries
        .iter()
        .filter(|(_, f)| f.get(1).map(String::as_str) == Some(event))
        .filter(|(_, f)| f.get(3).map(String::as_str) == Some(id))
        .count()
}

async fn until_state(q: &Queue, id: &str, state: JobState, deadline: Duration) {
    eventually(
        || async { q.get_job_state(id).await.ok().flatten() == Some(state) },
        deadline,
    )
    .await
    .unwrap_or_else(|e| panic!("job {id} not {state}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_freeze_longer_than_the_lock_loses_it_and_the_stale_finish_is_refused() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "freeze").await;
    let id = q
        .add("j", &json!({}), JobOptions::default())
        .await
        .expect("add")
        .id;
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let processor = from_fn(move |_job: Job<Value>, ctx| {
        let runs = r2.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first run lasts until it is told its lock is gone, then still tries to
                // finish: that finish must be refused.
                let _ =
                    tokio::time::timeout(Duration::from_secs(60), ctx.cancellation().cancelled())
                        .await;
                Ok::<_, JobError>(json!("stale"))
            } else {
                Ok(json!("fresh"))
            }
        }
    });
    let lock = Duration::from_secs(4);
    let worker = Worker::start(
        redis_opts(&server.url()),
        "freeze",
        processor,
        test_opts().lock_duration(lock).build().expect("opts"),
    )
    .await
    .expect("worker");
    let log = record_events(&worker);
    until_state(&q, &id, JobState::Active, Duration::from_secs(10)).await;

    server.pause().expect("SIGSTOP redis");
    let frozen = lock + Duration::from_secs(2);
    // The fault lasts this long by design: this sleep is the freeze, not a synchronisation.
    tokio::time::sleep(frozen).await;
    server.resume().expect("SIGCONT redis");
    let thawed = Instant::now();

    until_state(&q, &id, JobState::Completed, Duration::from_secs(15)).await;
    let done_after = thawed.elapsed();
    let j = q.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(
        j.returnvalue,
        Some(json!("fresh")),
        "the run that held the lock decides"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(j.stalled_counter, 1);
    assert_eq!(j.attempts_started, 2);
    assert_eq!(stream_count(&q, "completed", &id).await, 1);
    assert_eq!(stream_count(&q, "stalled", &id).await, 1);

    // The worker reported the lost lock and the refused stale finish.
    eventually(
        || async {
            events_of(&log).iter().any(|(_, e)| {
                matches!(e, WorkerEvent::Error { message } if message.contains(&id) && message.contains("discarded"))
            })
        },
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("refusal not reported: {e}: {:?}", events_of(&log)));
    let events = events_of(&log);
    let lost: Vec<&Instant> = events
        .iter()
        .filter(|(_, e)| matches!(e, WorkerEvent::LockLost { job_id } if *job_id == id))
        .map(|(t, _)| t)
        .collect();
    assert_eq!(lost.len(), 1, "{events:?}");
    let completed: Vec<&WorkerEvent> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, WorkerEvent::Completed { .. }))
        .collect();
    assert_eq!(
        completed,
        vec![&WorkerEvent::Completed {
            job_id: id.clone(),
            return_value: json!("fresh")
        }]
    );
    println!(
        "A4: Redis frozen {frozen:?} (lock {lock:?}); lock loss reported {:?} and the job completed {done_after:?} after SIGCONT",
        lost[0].saturating_duration_since(thawed)
    );
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_run_ending_does_not_untrack_a_fresh_run_of_the_same_job() {
    // A processor that ignores cancellation (CPU-bound or blocking work does) keeps running
    // after its lock is lost; the job is recovered and the same worker, having a free slot,
    // starts it again. When the stale run ends, the fresh run must stay tracked: its lock
    // renewed, so that it is not declared stalled again while it runs.
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "overlap").await;
    let id = q
        .add("j", &json!({}), JobOptions::default())
        .await
        .expect("add")
        .id;
    let lock = Duration::from_millis(1_000);
    let release_stale = Arc::new(tokio::sync::Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (r2, rel2) = (runs.clone(), release_stale.clone());
    let processor = from_fn(move |_job: Job<Value>, ctx| {
        let (runs, release) = (r2.clone(), rel2.clone());
        async move {
            match runs.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    // Ignores its cancellation; ends when the test says so.
                    let _ = tokio::time::timeout(Duration::from_secs(30), release.notified()).await;
                    Ok::<_, JobError>(json!("stale"))
                }
                1 => {
                    // Outlives several lock durations, honouring cancellation.
                    tokio::select! {
                        _ = tokio::time::sleep(lock * 4) => Ok(json!("fresh")),
                        _ = ctx.cancellation().cancelled() => Err(JobError::failed("fresh run cancelled")),
                    }
                }
                _ => Ok(json!("third run")),
            }
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "overlap",
        processor,
        test_opts()
            .concurrency(2)
            .lock_duration(lock)
            .stalled_interval(Duration::from_millis(300))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let log = record_events(&worker);
    until_state(&q, &id, JobState::Active, Duration::from_secs(10)).await;
    // Someone else takes the lock (as an expiry during a freeze would allow), then lets it go:
    // the shared stall check returns the job to wait and this worker starts it again.
    let lock_key = q.keys().job_sub(&id, "lock");
    let _: () = q
        .connection()
        .query(redis::cmd("SET").arg(&lock_key).arg("someone-else"))
        .await
        .expect("steal the lock");
    eventually(
        || async {
            events_of(&log)
                .iter()
                .any(|(_, e)| matches!(e, WorkerEvent::LockLost { .. }))
        },
        Duration::from_secs(5),
    )
    .await
    .expect("lock loss reported");
    let _: () = q
        .connection()
        .query(redis::cmd("DEL").arg(&lock_key))
        .await
        .expect("release the lock");
    eventually(
        || async { runs.load(Ordering::SeqCst) >= 2 },
        Duration::from_secs(10),
    )
    .await
    .expect("the fresh run started");
    // The stale run ends now, while the fresh one runs; its finish is refused.
    release_stale.notify_one();
    eventually(
        || async {
            events_of(&log).iter().any(|(_, e)| {
                matches!(e, WorkerEvent::Error { message } if message.contains("discarded"))
            })
        },
        Duration::from_secs(5),
    )
    .await
    .expect("the stale finish was refused");

    eventually(
        || async {
            matches!(
                q.get_job_state(&id).await.ok().flatten(),
                Some(JobState::Completed | JobState::Failed)
            )
        },
        Duration::from_secs(15),
    )
    .await
    .expect("the job finished");
    let j = q.get_job(&id).await.expect("get").expect("exists");
    let events = events_of(&log);
    let lost = events
        .iter()
        .filter(|(_, e)| matches!(e, WorkerEvent::LockLost { .. }))
        .count();
    assert_eq!(
        q.get_job_state(&id).await.expect("state"),
        Some(JobState::Completed),
        "{j:?}; events {events:?}"
    );
    assert_eq!(j.returnvalue, Some(json!("fresh")), "{j:?}");
    assert_eq!(j.stalled_counter, 1, "only the stolen lock caused a stall");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "no third run");
    assert_eq!(lost, 1, "the fresh run kept its lock: {events:?}");
    assert_eq!(stream_count(&q, "completed", &id).await, 1);
    worker.close(Duration::from_secs(1)).await;
}
