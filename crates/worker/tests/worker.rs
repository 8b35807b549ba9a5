//! The worker against a real redis-server, with jobs added by our Queue.

mod common;

use common::{queue, redis_opts, test_opts};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bullpen_conn::redis;
use bullpen_core::job::Job;
use bullpen_producer::{Backoff, JobOptions, JobState, KeepJobs, Queue};
use bullpen_testkit::{eventually, RedisServer};
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast;

fn o() -> JobOptions {
    JobOptions::default()
}

async fn until_count(q: &Queue, state: JobState, n: u64, secs: u64) {
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&state] >= n)
                .unwrap_or(false)
        },
        Duration::from_secs(secs),
    )
    .await
    .unwrap_or_else(|e| panic!("{state} did not reach {n}: {e}"));
}

async fn stream(q: &Queue) -> Vec<Vec<String>> {
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
    entries.into_iter().map(|(_, f)| f).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn completes_jobs_with_their_return_values_and_events() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "w").await;
    for i in 0..5 {
        q.add("double", &json!({ "n": i }), o()).await.expect("add");
    }
    let processor = from_fn(|job: Job<Value>, ctx| async move {
        ctx.progress(&json!({"half": true}))
            .await
            .map_err(JobError::failed)?;
        ctx.log("working").await.map_err(JobError::failed)?;
        let n = job.data["n"].as_i64().unwrap_or(0);
        Ok::<_, JobError>(json!({ "double": n * 2 }))
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "w",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    until_count(&q, JobState::Completed, 5, 10).await;
    let job = q.get_job("3").await.expect("get").expect("exists");
    assert_eq!(job.returnvalue, Some(json!({"double": 4})));
    assert_eq!(job.attempts_made, 1);
    assert_eq!(job.attempts_started, 1);
    assert!(job.finished_on.is_some() && job.processed_on.is_some());
    assert_eq!(job.progress, Some(json!({"half": true})));
    assert_eq!(
        q.get_job_logs("3", 0, -1, true).await.expect("logs").0,
        vec!["working"]
    );
    let names: Vec<String> = stream(&q).await.iter().map(|e| e[1].clone()).collect();
    for e in ["active", "progress", "completed"] {
        assert!(names.contains(&e.to_owned()), "{e} in {names:?}");
    }
    let completed: Vec<Vec<String>> = stream(&q)
        .await
        .into_iter()
        .filter(|e| e[1] == "completed")
        .collect();
    assert_eq!(
        completed[0][2..],
        [
            "jobId",
            "1",
            "returnvalue",
            r#"{"double":0}"#,
            "prev",
            "active"
        ]
    );
    // Local events arrive too.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(WorkerEvent::Drained) => return true,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true));
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_jobs_concurrently_and_concurrency_changes_at_run_time() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "c").await;
    for i in 0..24 {
        q.add("j", &json!(i), o()).await.expect("add");
    }
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    let processor = from_fn(move |_job: Job<Value>, _ctx| {
        let (now, peak) = (n2.clone(), p2.clone());
        async move {
            let c = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(c, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, JobError>(Value::Null)
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "c",
        processor,
        test_opts().concurrency(8).build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 8, 10).await;
    assert!(
        peak.load(Ordering::SeqCst) >= 4,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(peak.load(Ordering::SeqCst) <= 8);
    worker.set_concurrency(1).expect("concurrency");
    assert!(worker.set_concurrency(0).is_err());
    until_count(&q, JobState::Completed, 24, 20).await;
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_with_backoff_then_fails_for_good() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "r").await;
    let mut opts = o();
    opts.attempts = Some(3);
    opts.backoff = Some(Backoff::fixed(100));
    opts.stack_trace_limit = Some(2);
    let flaky = q
        .add("flaky", &json!({}), opts.clone())
        .await
        .expect("add")
        .id;
    let doomed = q.add("doomed", &json!({}), opts).await.expect("add").id;
    let mut once = o();
    once.attempts = Some(5);
    let fatal = q.add("fatal", &json!({}), once).await.expect("add").id;
    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        match job.name.as_str() {
            "flaky" if job.attempts_made < 2 => {
                Err(JobError::failed(format!("try {}", job.attempts_made + 1)))
            }
            "doomed" => Err(JobError::failed("always")),
            "fatal" => Err(JobError::unrecoverable("no point retrying")),
            _ => Ok(json!("ok")),
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "r",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Failed, 2, 15).await;
    until_count(&q, JobState::Completed, 1, 15).await;
    let f = q.get_job(&flaky).await.expect("get").expect("exists");
    assert_eq!(f.attempts_made, 3);
    assert_eq!(f.returnvalue, Some(json!("ok")));
    let d = q.get_job(&doomed).await.expect("get").expect("exists");
    assert_eq!(d.attempts_made, 3);
    assert_eq!(d.failed_reason.as_deref(), Some("always"));
    assert_eq!(d.stacktrace.len(), 2, "stackTraceLimit honoured");
    let x = q.get_job(&fatal).await.expect("get").expect("exists");
    assert_eq!(x.attempts_made, 1, "unrecoverable: no retry");
    assert_eq!(x.failed_reason.as_deref(), Some("no point retrying"));
    let events = stream(&q).await;
    let delayed_for_flaky = events
        .iter()
        .filter(|e| e[1] == "delayed" && e[3] == flaky)
        .count();
    assert_eq!(delayed_for_flaky, 2, "two backoff retries");
    assert!(events
        .iter()
        .any(|e| e[1] == "retries-exhausted" && e[3] == doomed && e[5] == "3"));
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_fails_the_job_and_the_worker_goes_on() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "p").await;
    let bad = q.add("bad", &json!({}), o()).await.expect("add").id;
    q.add("good", &json!({}), o()).await.expect("add");
    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        if job.name == "bad" {
            panic!("boom in processor");
        }
        Ok::<_, JobError>(json!(1))
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "p",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 1, 10).await;
    until_count(&q, JobState::Failed, 1, 10).await;
    let j = q.get_job(&bad).await.expect("get").expect("exists");
    assert!(
        j.failed_reason
            .as_deref()
            .unwrap_or("")
            .contains("boom in processor"),
        "{:?}",
        j.failed_reason
    );
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_can_delay_its_job_without_spending_an_attempt() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "d").await;
    let id = q.add("later", &json!({}), o()).await.expect("add").id;
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let processor = from_fn(move |_job: Job<Value>, _ctx| {
        let runs = r2.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(JobError::Delay(Duration::from_millis(300)))
            } else {
                Ok(json!("done"))
            }
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "d",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 1, 10).await;
    let j = q.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(j.attempts_made, 1, "the delay did not count as an attempt");
    assert_eq!(j.attempts_started, 2);
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_from_the_job_or_the_worker() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "k").await;
    let mut keep2 = o();
    keep2.remove_on_complete = Some(KeepJobs::Count(2));
    for i in 0..5 {
        q.add("j", &json!(i), keep2.clone()).await.expect("add");
    }
    let processor = from_fn(|_job: Job<Value>, _ctx| async move { Ok::<_, JobError>(json!(1)) });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "k",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&JobState::Waiting] == 0 && c[&JobState::Active] == 0)
                .unwrap_or(false)
        },
        Duration::from_secs(10),
    )
    .await
    .expect("all processed");
    eventually(
        || async {
            q.get_job_counts()
                .await
                .map(|c| c[&JobState::Completed] == 2)
                .unwrap_or(false)
        },
        Duration::from_secs(5),
    )
    .await
    .expect("only the newest two kept");
    assert!(
        q.get_job("1").await.expect("get").is_none(),
        "older jobs deleted"
    );
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_blocking_connection_is_named_for_node_get_workers() {
    let server = RedisServer::start().expect("redis-server");
    let processor = from_fn(|_job: Job<Value>, _ctx| async move { Ok::<_, JobError>(json!(1)) });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "st1",
        processor,
        test_opts().name("wA").build().expect("opts"),
    )
    .await
    .expect("worker");
    let list = server.admin(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    assert!(list.contains("name=bull:c3Qx:w:wA"), "{list}");
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_finishes_short_jobs_and_hands_long_ones_back() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "g").await;
    let short = q.add("short", &json!({}), o()).await.expect("add").id;
    let long = q.add("long", &json!({}), o()).await.expect("add").id;
    let processor = from_fn(|job: Job<Value>, ctx| async move {
        let d = if job.name == "short" { 200 } else { 60_000 };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(d)) => Ok::<_, JobError>(json!("finished")),
            _ = ctx.cancellation().cancelled() => Err(JobError::failed("cancelled")),
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "g",
        processor,
        test_opts().concurrency(2).build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Active, 2, 10).await;
    let t = std::time::Instant::now();
    worker.close(Duration::from_millis(1_000)).await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "close returned in {:?}",
        t.elapsed()
    );
    assert_eq!(
        q.get_job_state(&short).await.expect("state"),
        Some(JobState::Completed)
    );
    assert_eq!(
        q.get_job_state(&long).await.expect("state"),
        Some(JobState::Waiting),
        "handed back"
    );
    let j = q.get_job(&long).await.expect("get").expect("exists");
    assert_eq!(j.attempts_made, 0, "a hand-back is not an attempt");
    // The next worker runs it at once, without waiting for a stall check.
    let processor =
        from_fn(|_job: Job<Value>, _ctx| async move { Ok::<_, JobError>(json!("second run")) });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "g",
        processor,
        test_opts().build().expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 2, 5).await;
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_job_is_recovered_and_a_lost_lock_refuses_the_stale_finish() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "s").await;
    let id = q.add("j", &json!({}), o()).await.expect("add").id;
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let processor = from_fn(move |_job: Job<Value>, ctx| {
        let runs = r2.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first run outlives its lock (deleted below) and must be refused.
                ctx.cancellation().cancelled().await;
                Ok::<_, JobError>(json!("stale"))
            } else {
                Ok(json!("fresh"))
            }
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "s",
        processor,
        test_opts()
            .lock_duration(Duration::from_millis(800))
            .stalled_interval(Duration::from_millis(300))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    until_count(&q, JobState::Active, 1, 10).await;
    // Another party takes the lock away, as an expiry during a pause would.
    let _: () = q
        .connection()
        .query(
            redis::cmd("SET")
                .arg(q.keys().job_sub(&id, "lock"))
                .arg("someone-else"),
        )
        .await
        .expect("steal the lock");
    let lost = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(WorkerEvent::LockLost { job_id }) = events.recv().await {
                return job_id;
            }
        }
    })
    .await
    .expect("LockLost reported");
    assert_eq!(lost, id);
    // The stale run's finish is refused and reported; the job is not completed with "stale".
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(WorkerEvent::Error { message }) = events.recv().await {
                if message.contains("discarded") {
                    return message;
                }
            }
        }
    })
    .await
    .expect("the stale finish is reported");
    assert!(refused.contains(&id), "{refused}");
    let j = q.get_job(&id).await.expect("get").expect("exists");
    assert_ne!(j.returnvalue, Some(json!("stale")));
    // Release the foreign lock as its holder dying would; the shared stall check recovers it.
    let _: () = q
        .connection()
        .query(redis::cmd("DEL").arg(q.keys().job_sub(&id, "lock")))
        .await
        .expect("DEL");
    until_count(&q, JobState::Completed, 1, 10).await;
    let j = q.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(j.returnvalue, Some(json!("fresh")));
    assert_eq!(j.stalled_counter, 1);
    assert!(stream(&q)
        .await
        .iter()
        .any(|e| e[1] == "stalled" && e[3] == id));
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limiter_spaces_jobs_out() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "rl").await;
    for i in 0..6 {
        q.add("j", &json!(i), o()).await.expect("add");
    }
    let processor = from_fn(|_job: Job<Value>, _ctx| async move { Ok::<_, JobError>(json!(1)) });
    let t = std::time::Instant::now();
    let worker = Worker::start(
        redis_opts(&server.url()),
        "rl",
        processor,
        test_opts()
            .concurrency(4)
            .limiter(2, Duration::from_millis(700))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 6, 15).await;
    // 2 jobs per 700 ms window: the sixth starts in the third window.
    assert!(
        t.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        t.elapsed()
    );
    let started: Vec<u64> = {
        let mut v = Vec::new();
        for id in 1..=6 {
            let j = q.get_job(&id.to_string()).await.expect("get").expect("job");
            v.push(j.processed_on.expect("processedOn"));
        }
        v.sort_unstable();
        v
    };
    assert!(
        started[4] - started[0] >= 1_300,
        "windows honoured: {started:?}"
    );
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_hitting_a_rate_limit_puts_the_job_back_without_an_attempt() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "rp").await;
    let id = q.add("api-call", &json!({}), o()).await.expect("add").id;
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let processor = from_fn(move |_job: Job<Value>, _ctx| {
        let runs = r2.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(JobError::RateLimited(Duration::from_millis(500)))
            } else {
                Ok(json!("done"))
            }
        }
    });
    let t = std::time::Instant::now();
    let worker = Worker::start(
        redis_opts(&server.url()),
        "rp",
        processor,
        test_opts()
            .limiter(100, Duration::from_secs(1))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    until_count(&q, JobState::Completed, 1, 10).await;
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "waited for the limit: {:?}",
        t.elapsed()
    );
    let j = q.get_job(&id).await.expect("get").expect("job");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        j.attempts_made, 1,
        "the rate-limited run was not an attempt"
    );
    assert!(stream(&q)
        .await
        .iter()
        .any(|e| e[1] == "waiting" && e.get(5).map(String::as_str) == Some("active")));
    // The manual limit: set for the whole queue, honoured by workers with a limiter.
    worker
        .rate_limit(Duration::from_millis(600))
        .await
        .expect("rate limit");
    let pttl: i64 = q
        .connection()
        .query(redis::cmd("PTTL").arg(q.keys().key("limiter")))
        .await
        .expect("PTTL");
    assert!(pttl > 0 && pttl <= 600, "{pttl}");
    let t = std::time::Instant::now();
    q.add("after", &json!({}), o()).await.expect("add");
    until_count(&q, JobState::Completed, 2, 10).await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    worker.close(Duration::from_secs(1)).await;
}

/// Jobs completed per `complete_many` call, from the slow log (every command logged).
fn completions_per_call(server: &RedisServer) -> Vec<usize> {
    let sha = bullpen_core::script::COMPLETE_MANY.sha().to_owned();
    let log = server.admin(&["SLOWLOG", "GET", "-1"]).expect("SLOWLOG");
    // `admin` answers RESP as text lines; the arguments of each entry follow one another:
    // EVALSHA <sha> <numkeys=12> <12 keys> <prefix> <maxLenEvents> <n> ...
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.eq_ignore_ascii_case("EVALSHA") && lines.get(i + 1) == Some(&sha.as_str()) {
            if let Some(n) = lines.get(i + 2 + 1 + 12 + 2).and_then(|n| n.parse().ok()) {
                out.push(n);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_that_would_queue_share_script_calls() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "batch").await;
    for i in 0..16 {
        q.add("j", &json!(i), o()).await.expect("add");
    }
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (s2, g2) = (started.clone(), gate.clone());
    let processor = from_fn(move |job: Job<Value>, _ctx| {
        let (started, gate) = (s2.clone(), g2.clone());
        async move {
            let notified = gate.notified();
            started.fetch_add(1, Ordering::SeqCst);
            notified.await;
            Ok::<_, JobError>(json!({ "n": job.data }))
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "batch",
        processor,
        test_opts().concurrency(16).build().expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    eventually(
        || async { started.load(Ordering::SeqCst) == 16 },
        Duration::from_secs(10),
    )
    .await
    .expect("16 jobs running");
    server
        .admin(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .expect("slowlog on");
    server
        .admin(&["CONFIG", "SET", "slowlog-max-len", "10000"])
        .expect("slowlog len");
    server.admin(&["SLOWLOG", "RESET"]).expect("reset");
    // Hold writes so that the first two completions are in flight while the others end.
    server
        .admin(&["CLIENT", "PAUSE", "300", "WRITE"])
        .expect("CLIENT PAUSE");
    gate.notify_waiters();
    until_count(&q, JobState::Completed, 16, 10).await;
    let mut completed = std::collections::HashSet::new();
    while completed.len() < 16 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(WorkerEvent::Completed { job_id, .. })) => {
                assert!(completed.insert(job_id), "a job reported completed twice");
            }
            Ok(Ok(_)) => {}
            other => panic!("completion events stopped: {other:?}"),
        }
    }
    let calls = completions_per_call(&server);
    assert_eq!(calls.iter().sum::<usize>(), 16, "calls: {calls:?}");
    assert!(
        calls.len() < 16 && calls.iter().any(|n| *n > 1),
        "completions that waited should have shared calls: {calls:?}"
    );
    for id in completed {
        let job = q.get_job(&id).await.expect("get").expect("job");
        assert_eq!(job.returnvalue, Some(json!({ "n": job.data })));
        assert_eq!(job.attempts_made, 1);
    }
    worker.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_are_renewed_during_the_grace_period_of_close() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "grace").await;
    let id = q.add("slow", &json!({}), o()).await.expect("add").id;
    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    // The job outlives its lock duration (600 ms) twice over, but ends within the grace.
    let processor = from_fn(move |_job: Job<Value>, _ctx| {
        let started = s2.clone();
        async move {
            started.notify_one();
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            Ok::<_, JobError>(json!("done"))
        }
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "grace",
        processor,
        test_opts()
            .lock_duration(Duration::from_millis(600))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    started.notified().await;
    worker.close(Duration::from_secs(10)).await;
    assert_eq!(
        q.get_job_state(&id).await.expect("state"),
        Some(JobState::Completed),
        "the run that ended within the grace period kept its lock and completed"
    );
    let mut lost = false;
    while let Ok(e) = events.try_recv() {
        lost |= matches!(e, WorkerEvent::LockLost { .. });
    }
    assert!(!lost, "no lock may be lost while closing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_released_by_its_own_finish_is_not_reported_lost() {
    // Renewals every 5 ms race with hundreds of completions: a renewal that snapshots a run
    // just before its completion releases the lock finds the lock gone. That is the run's
    // own finish, not a lost lock, and must not be reported as one.
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server, "renewrace").await;
    let n = 400;
    for i in 0..n {
        q.add("j", &json!(i), o()).await.expect("add");
    }
    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        let ms = job.data.as_u64().unwrap_or(0) % 3;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, JobError>(json!(null))
    });
    let worker = Worker::start(
        redis_opts(&server.url()),
        "renewrace",
        processor,
        test_opts()
            .concurrency(16)
            .lock_duration(Duration::from_millis(2_000))
            .lock_renew_time(Duration::from_millis(5))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let mut events = worker.events();
    let (mut completed, mut lost) = (0, Vec::new());
    tokio::time::timeout(Duration::from_secs(60), async {
        while completed < n {
            match events.recv().await {
                Ok(WorkerEvent::Completed { .. }) => completed += 1,
                Ok(WorkerEvent::LockLost { job_id }) => lost.push(job_id),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => panic!("events lagged"),
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("all jobs completed within 60 s");
    worker.close(Duration::from_secs(1)).await;
    assert_eq!(completed, n);
    assert!(lost.is_empty(), "locks reported lost: {lost:?}");
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(
        counts.get(&JobState::Completed),
        Some(&(n as u64)),
        "{counts:?}"
    );
}
