//! The functional suites that every cell of the integration matrix runs on its own topology,
//! after its ledger-checked load: the producer's job kinds, getters and admin calls, the
//! worker's order, retries and failures, and the events a listener receives for all of it.
//! Each check compares what Redis holds (through our getters) with what the call promised,
//! so a topology that breaks a command path (an ACL rule missing, a cross-slot key, a TLS
//! stream cut short) fails here with the step that broke.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{AddStatus, Backoff, Dedup, JobOptions, JobState, Queue, QueueOptions};
use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};
use serde_json::{json, Value};

const QUEUE: &str = "suite";

/// Events the listener must see for the suite's queue, each caused by one step below.
const EXPECTED_EVENTS: [&str; 12] = [
    "added",
    "waiting",
    "delayed",
    "duplicated",
    "deduplicated",
    "paused",
    "resumed",
    "removed",
    "progress",
    "active",
    "completed",
    "failed",
];

fn opts() -> JobOptions {
    JobOptions::default()
}

/// Runs the producer, worker and events suites against `base` with `prefix`; returns a
/// one-line summary.
pub async fn run(
    base: &RedisOptions,
    prefix: &str,
    retry: bullpen_conn::RetryStrategy,
) -> Result<String> {
    let t = Instant::now();
    let conn = Connection::connect(base.clone().worker().with_retry_strategy(retry.clone()))
        .await
        .context("suite connection")?;
    let q = Queue::new(
        conn.clone(),
        QUEUE,
        QueueOptions::default()
            .keep_everything()
            .with_prefix(prefix),
    )
    .await
    .context("suite queue")?;
    let mut listener = QueueEvents::new(
        base.clone().blocking().with_retry_strategy(retry.clone()),
        QUEUE,
        QueueEventsOptions::default()
            .start(StartAt::Now)
            .prefix(prefix),
    )
    .await
    .context("suite listener")?;
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen2 = seen.clone();
    let collector = tokio::spawn(async move {
        while let Some(item) = listener.next().await {
            if let Ok(EventItem::Event { event, .. }) = item {
                if let Ok(mut s) = seen2.lock() {
                    s.insert(event.name().to_owned());
                }
            }
        }
    });
    let result = async {
        let ids = producer_suite(&q).await.context("producer suite")?;
        worker_suite(base, prefix, retry, &q, &ids)
            .await
            .context("worker suite")?;
        events_suite(&seen).await.context("events suite")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    collector.abort();
    // Best effort: the queue is named for the suite and the server is the cell's own, so a
    // failed clean-up (say, a command outside a restricted ACL user's list) hides nothing.
    let _ = q.obliterate(true).await;
    conn.close();
    result?;
    Ok(format!(
        "producer, worker and events suites passed in {:.1}s",
        t.elapsed().as_secs_f64()
    ))
}

/// The ids the worker suite looks at.
struct SuiteIds {
    lifo: String,
    p1: String,
    p3: String,
    flaky: String,
    bad: String,
    /// Every job the producer suite left waiting or prioritized.
    to_run: usize,
}

async fn state(q: &Queue, id: &str) -> Result<Option<JobState>> {
    Ok(q.get_job_state(id).await?)
}

/// Fails with `what` unless job `id` is in state `want`.
async fn expect_state(q: &Queue, id: &str, want: JobState, what: &str) -> Result<()> {
    let got = state(q, id).await?;
    ensure!(got == Some(want), "{what}: {got:?}");
    Ok(())
}

fn with_priority(priority: u32) -> JobOptions {
    let mut o = opts();
    o.priority = priority;
    o
}

async fn producer_suite(q: &Queue) -> Result<SuiteIds> {
    // Standard, custom id (and its duplicate), delayed then promoted, prioritized, LIFO.
    let std_job = q.add("std", &json!({"k": 1}), opts()).await?;
    ensure!(
        std_job.status == AddStatus::Added,
        "std: {:?}",
        std_job.status
    );
    expect_state(
        q,
        &std_job.id,
        JobState::Waiting,
        "a standard job is waiting",
    )
    .await?;
    let mut custom = opts();
    custom.job_id = Some("custom-1".into());
    let first = q.add("custom", &json!(1), custom.clone()).await?;
    ensure!(
        first.id == "custom-1" && first.status == AddStatus::Added,
        "custom id: {first:?}"
    );
    let again = q.add("custom", &json!(2), custom).await?;
    ensure!(
        again.id == "custom-1" && again.status == AddStatus::Duplicated,
        "a second add of a custom id is a duplicate: {again:?}"
    );
    let kept = q.get_job("custom-1").await?.context("custom-1 exists")?;
    ensure!(
        kept.data == json!(1),
        "the duplicate changed nothing: {}",
        kept.data
    );

    let mut delayed = opts();
    delayed.delay_ms = 60_000;
    let later = q.add("later", &json!({}), delayed).await?;
    expect_state(q, &later.id, JobState::Delayed, "a delayed job is delayed").await?;
    q.promote(&later.id).await?;
    expect_state(q, &later.id, JobState::Waiting, "a promoted job is waiting").await?;

    let p3 = q.add("p3", &json!({}), with_priority(3)).await?;
    let p1 = q.add("p1", &json!({}), with_priority(1)).await?;
    expect_state(
        q,
        &p1.id,
        JobState::Prioritized,
        "a job with a priority is prioritized",
    )
    .await?;
    let per_priority = q.get_counts_per_priority(&[1, 3, 7]).await?;
    ensure!(
        per_priority == BTreeMap::from([(1, 1), (3, 1), (7, 0)]),
        "counts per priority: {per_priority:?}"
    );
    let mut lifo = opts();
    lifo.lifo = true;
    let lifo = q.add("lifo", &json!({}), lifo).await?;

    // Deduplication (simple mode with a TTL): the second add points at the first job.
    let mut dedup = opts();
    dedup.deduplication = Some(Dedup::new("suite-dedup").with_ttl(60_000));
    let owner = q.add("dedup", &json!(1), dedup.clone()).await?;
    let hit = q.add("dedup", &json!(2), dedup).await?;
    ensure!(
        hit.id == owner.id && hit.status == AddStatus::Deduplicated,
        "deduplicated: {owner:?} then {hit:?}"
    );

    // A retried job and one that fails for good.
    let mut flaky = opts();
    flaky.attempts = Some(2);
    flaky.backoff = Some(Backoff::fixed(50));
    let flaky = q.add("flaky", &json!({}), flaky).await?;
    let bad = q.add("bad", &json!({}), opts()).await?;

    // Admin and job-level calls.
    q.pause().await?;
    ensure!(q.is_paused().await?, "paused");
    q.resume().await?;
    ensure!(!q.is_paused().await?, "resumed");
    let doomed = q.add("doomed", &json!({}), opts()).await?;
    q.remove(&doomed.id).await?;
    ensure!(
        q.get_job(&doomed.id).await?.is_none(),
        "a removed job is gone"
    );
    q.log(&std_job.id, "a log line").await?;
    let (lines, total) = q.get_job_logs(&std_job.id, 0, -1, true).await?;
    ensure!(
        lines == ["a log line"] && total == 1,
        "logs: {lines:?} of {total}"
    );
    q.update_progress(&std_job.id, &json!(42)).await?;
    let job = q.get_job(&std_job.id).await?.context("std exists")?;
    ensure!(
        job.progress == Some(json!(42)),
        "progress: {:?}",
        job.progress
    );

    let counts = q.get_job_counts().await?;
    let waiting = counts.get(&JobState::Waiting).copied().unwrap_or(0);
    let prioritized = counts.get(&JobState::Prioritized).copied().unwrap_or(0);
    // std, custom-1, later, lifo, dedup owner, flaky, bad.
    ensure!(
        waiting == 7 && prioritized == 2,
        "counts: {counts:?} (expected 7 waiting, 2 prioritized)"
    );
    let listed = q.get_jobs(&[JobState::Waiting], 0, -1, true).await?;
    ensure!(
        listed.len() == 7 && listed.iter().all(|j| j.is_ok()),
        "get_jobs(waiting): {} entries",
        listed.len()
    );
    Ok(SuiteIds {
        lifo: lifo.id,
        p1: p1.id,
        p3: p3.id,
        flaky: flaky.id,
        bad: bad.id,
        to_run: (waiting + prioritized) as usize,
    })
}

async fn worker_suite(
    base: &RedisOptions,
    prefix: &str,
    retry: bullpen_conn::RetryStrategy,
    q: &Queue,
    ids: &SuiteIds,
) -> Result<()> {
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let order2 = order.clone();
    let processor = from_fn(move |job: Job<Value>, ctx| {
        let order = order2.clone();
        async move {
            if let Ok(mut o) = order.lock() {
                o.push(job.id.clone());
            }
            match job.name.as_str() {
                "flaky" if job.attempts_made == 0 => Err(JobError::failed("first attempt fails")),
                "bad" => Err(JobError::unrecoverable("bad input")),
                _ => {
                    ctx.progress(&json!(100)).await.map_err(JobError::failed)?;
                    Ok(json!({"name": job.name}))
                }
            }
        }
    });
    // Concurrency 1, so that the order the jobs start in is the queue's order.
    let worker = Worker::start(
        base.clone().worker().with_retry_strategy(retry),
        QUEUE,
        processor,
        WorkerOptions::builder()
            .prefix(prefix)
            .concurrency(1)
            .lock_duration(Duration::from_secs(5))
            .build()?,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let counts = q.get_job_counts().await?;
        let completed = counts.get(&JobState::Completed).copied().unwrap_or(0);
        let failed = counts.get(&JobState::Failed).copied().unwrap_or(0);
        if completed as usize == ids.to_run - 1 && failed == 1 {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("not finished within 30 s: {counts:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    worker.close(Duration::from_secs(2)).await;
    outcome?;
    let order = order.lock().map(|o| o.clone()).unwrap_or_default();
    ensure!(
        order.first() == Some(&ids.lifo),
        "the LIFO job runs first: {order:?}"
    );
    let pos = |id: &str| order.iter().position(|o| o == id);
    match (pos(&ids.p1), pos(&ids.p3)) {
        (Some(a), Some(b)) if a < b => {}
        other => bail!("priority 1 runs before priority 3: {other:?} in {order:?}"),
    }
    let flaky = q.get_job(&ids.flaky).await?.context("flaky exists")?;
    ensure!(
        flaky.attempts_made == 2 && flaky.returnvalue == Some(json!({"name": "flaky"})),
        "the retried job completed on its second attempt: attemptsMade {}, returnvalue {:?}",
        flaky.attempts_made,
        flaky.returnvalue
    );
    let bad = q.get_job(&ids.bad).await?.context("bad exists")?;
    ensure!(
        state(q, &ids.bad).await? == Some(JobState::Failed)
            && bad.failed_reason.as_deref() == Some("bad input")
            && bad.attempts_made == 1,
        "the unrecoverable job failed once: {:?}, attemptsMade {}",
        bad.failed_reason,
        bad.attempts_made
    );
    Ok(())
}

async fn events_suite(seen: &Mutex<HashSet<String>>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<&str> = {
            let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            EXPECTED_EVENTS
                .iter()
                .copied()
                .filter(|e| !s.contains(*e))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the listener never saw {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
