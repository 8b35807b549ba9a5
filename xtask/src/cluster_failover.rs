//! Reliability plan D2, Redis Cluster failover under load, as a reusable scenario for
//! `cargo xtask integration`: a real cluster of 3 masters and 3 replicas, a `Queue` (producer
//! preset), a `Worker` at concurrency 16 with the test timing profile (lock 4 s, stalled
//! interval 1 s) and a `QueueEvents` listener on a `{bull}` queue, with the fault injected
//! once a quarter of the jobs have completed:
//!
//! * `'a'`: `CLUSTER FAILOVER` on the replica of the queue's slot owner (coordinated);
//! * `'b'`: `kill -9` of the slot owner (the replica is promoted after about 4 s).
//!
//! The same scenario as `crates/events/tests/cluster_failover.rs`, returning errors instead
//! of panicking. The ledger: ids acknowledged by `add_bulk` against `ZRANGE completed`, and
//! completions per id counted from `WorkerEvent::Completed`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_conn::{redis, Connection, RedisOptions, RetryStrategy};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{AddStatus, BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::ClusterTopology;
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent, WorkerOptions};
use serde_json::{json, Value};

/// The plan's bound: processing resumes within 10 s after the failover.
pub const RESUME_BOUND: Duration = Duration::from_secs(10);
const QUEUE: &str = "d2";
const PREFIX: &str = "{bull}";

/// The test profile's reconnect backoff: from 50 ms, capped at 500 ms.
fn quick_retry() -> RetryStrategy {
    RetryStrategy::exponential(
        Duration::from_millis(50),
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// What the worker reported, with times since the run's origin.
#[derive(Default)]
struct WorkerLedger {
    /// Completions per job id.
    completions: HashMap<String, u32>,
    /// (time, id) of every completion.
    completed_at: Vec<(Duration, String)>,
    /// The last time each job was started.
    started_at: HashMap<String, Duration>,
    /// Worker error events (handled problems), for the report.
    errors: usize,
    /// Worker events the ledger could not read (its channel overflowed).
    lagged: u64,
}

/// Runs a blocking cluster operation (they poll with sleeps) off the async threads and
/// hands the cluster back with its result.
async fn with_cluster<T: Send + 'static>(
    mut cluster: ClusterTopology,
    op: impl FnOnce(&mut ClusterTopology) -> T + Send + 'static,
) -> Result<(ClusterTopology, T)> {
    tokio::task::spawn_blocking(move || {
        let r = op(&mut cluster);
        (cluster, r)
    })
    .await
    .context("cluster operation")
}

/// Runs D2 variant `'a'` (`CLUSTER FAILOVER` on the slot owner's replica) or `'b'` (`kill -9`
/// of the slot owner) with `jobs` jobs on a fresh cluster. Returns the acknowledged jobs
/// lost, the jobs completed more than once, the resume time (from the new master being in
/// place to the later of the first completion of a job fetched after that and the
/// listener's next `completed` event; `Duration::MAX` if either never came) and a one-line
/// report.
///
/// The caller judges: the plan promises resume ≤ [`RESUME_BOUND`] and 0 completed twice for
/// both variants, and 0 lost for `'a'`; loss after `'b'` is bounded only by the replication
/// lag at the kill and is reported, not promised.
pub async fn run_d2(variant: char, jobs: usize) -> Result<(usize, usize, Duration, String)> {
    if !matches!(variant, 'a' | 'b') {
        bail!("unknown D2 variant `{variant}`: use 'a' (CLUSTER FAILOVER) or 'b' (kill -9)");
    }
    if jobs < 4 {
        bail!("D2 needs at least 4 jobs");
    }
    let cluster = tokio::task::spawn_blocking(ClusterTopology::start)
        .await
        .context("starting the cluster")?
        .context("starting the cluster")?;
    let base = RedisOptions::from_url(&cluster.url())?;
    let origin = Instant::now();

    // Producer: the fail-fast preset, as a request handler would use it.
    let pconn =
        Connection::connect(base.clone().producer().with_retry_strategy(quick_retry())).await?;
    let q = Queue::new(
        pconn,
        QUEUE,
        QueueOptions::default()
            .with_prefix(PREFIX)
            .keep_everything(),
    )
    .await?;
    let owner = cluster
        .master_of(&q.keys().key("wait"))
        .context("finding the queue's slot owner")?;
    let replica = cluster
        .replica_of(owner)
        .context("finding the owner's replica")?;

    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, JobError>(json!({ "n": job.data["n"] }))
    });
    let worker = Worker::start(
        base.clone().worker().with_retry_strategy(quick_retry()),
        QUEUE,
        processor,
        WorkerOptions::builder()
            .prefix(PREFIX)
            .concurrency(16)
            .lock_duration(Duration::from_secs(4))
            .stalled_interval(Duration::from_secs(1))
            .event_capacity(1 << 16)
            .build()?,
    )
    .await?;
    let ledger: Arc<Mutex<WorkerLedger>> = Arc::default();
    let mut rx = worker.events();
    let recorder = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            loop {
                let e = rx.recv().await;
                let t = origin.elapsed();
                let Ok(mut l) = ledger.lock() else { return };
                match e {
                    Ok(WorkerEvent::Completed { job_id, .. }) => {
                        *l.completions.entry(job_id.clone()).or_default() += 1;
                        l.completed_at.push((t, job_id));
                    }
                    Ok(WorkerEvent::Active { job_id }) => {
                        l.started_at.insert(job_id, t);
                    }
                    Ok(WorkerEvent::Error { .. }) => l.errors += 1,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => l.lagged += n,
                    Err(_) => return,
                }
            }
        })
    };

    // Events listener: counts `completed` events; it must keep delivering after the failover.
    let mut eo = QueueEventsOptions::default()
        .prefix(PREFIX)
        .start(StartAt::Beginning);
    eo.block = Duration::from_millis(500);
    let mut events = QueueEvents::new(
        base.blocking().with_retry_strategy(quick_retry()),
        QUEUE,
        eo,
    )
    .await?;
    // When each `completed` event arrived, and the errors the listener reported (it resumes
    // by itself after each): how many, and the last one.
    let event_times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let listener_errors: Arc<Mutex<(usize, String)>> = Arc::default();
    let listener = {
        let (times, errors) = (event_times.clone(), listener_errors.clone());
        tokio::spawn(async move {
            while let Some(item) = events.next().await {
                match item {
                    Ok(EventItem::Event { event, .. }) if event.name() == "completed" => {
                        if let Ok(mut t) = times.lock() {
                            t.push(origin.elapsed());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Ok(mut l) = errors.lock() {
                            l.0 += 1;
                            l.1 = format!("{:.3} s: {e}", origin.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        })
    };

    // Producer loop: chunks of 50 every 30 ms; a refused chunk is retried after 100 ms. Each
    // job has its own id (`d2-N`): a failover that loses the last writes also rolls the
    // queue's id counter back, and auto ids would then be handed out again to new jobs,
    // hiding the lost ones from an id ledger. A retried chunk whose first try was applied
    // after all finds its jobs there (`Duplicated`), which is counted.
    let added: Arc<Mutex<HashSet<String>>> = Arc::default();
    let add_failures = Arc::new(AtomicUsize::new(0));
    let duplicated = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (q, added, failures, duplicated) = (
            q.clone(),
            added.clone(),
            add_failures.clone(),
            duplicated.clone(),
        );
        tokio::spawn(async move {
            let all: Vec<BulkJob<Value>> = (0..jobs)
                .map(|i| {
                    let mut o = JobOptions::default();
                    o.job_id = Some(format!("d2-{i}"));
                    BulkJob::new("d2", json!({ "n": i }), o)
                })
                .collect();
            for chunk in all.chunks(50) {
                loop {
                    match q.add_bulk(chunk).await {
                        Ok(out) => {
                            duplicated.fetch_add(
                                out.iter()
                                    .filter(|o| o.status == AddStatus::Duplicated)
                                    .count(),
                                Ordering::Relaxed,
                            );
                            if let Ok(mut a) = added.lock() {
                                a.extend(out.into_iter().map(|o| o.id));
                            }
                            break;
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    // Inject the fault mid-load: once a quarter of the jobs have completed.
    let completed_count = || ledger.lock().map(|l| l.completed_at.len()).unwrap_or(0);
    bullpen_testkit::eventually(
        || async { completed_count() >= jobs / 4 },
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| anyhow!("a quarter of the jobs did not complete before the fault: {e}"))?;
    let before_fault = completed_count();
    let fault_at = origin.elapsed();
    let (cluster, fault_name) = if variant == 'a' {
        let (cluster, took) = with_cluster(cluster, move |c| {
            c.failover(replica, Duration::from_secs(10))
        })
        .await?;
        let took = took.context("CLUSTER FAILOVER")?;
        let (cluster, m) = with_cluster(cluster, move |c| {
            c.wait_slot_master(PREFIX, Some(owner), Duration::from_secs(10))
        })
        .await?;
        m.context("waiting for the replica to master the slot")?;
        (
            cluster,
            format!(
                "CLUSTER FAILOVER on node {replica} ({} to switch)",
                secs(took)
            ),
        )
    } else {
        let (cluster, killed) = with_cluster(cluster, move |c| c.kill9(owner)).await?;
        killed.context("kill -9 of the slot owner")?;
        let (cluster, m) = with_cluster(cluster, move |c| {
            c.wait_slot_master(PREFIX, Some(owner), Duration::from_secs(30))
        })
        .await?;
        let (m, waited) = m.context("waiting for a replica to be promoted")?;
        (
            cluster,
            format!(
                "kill -9 of node {owner}; node {m} masters the slot {} later",
                secs(waited)
            ),
        )
    };
    let elected_at = origin.elapsed();

    // Resume: the first job started after the new master was in place that completes.
    let resumed_at = || {
        let l = ledger.lock().ok()?;
        l.completed_at
            .iter()
            .filter(|(t, id)| {
                *t >= elected_at && l.started_at.get(id).is_some_and(|s| *s >= elected_at)
            })
            .map(|(t, _)| *t)
            .min()
    };
    let _ = bullpen_testkit::eventually(
        || async { resumed_at().is_some() },
        RESUME_BOUND + Duration::from_secs(5),
    )
    .await;
    let resume = resumed_at()
        .map(|t| t - elected_at)
        .unwrap_or(Duration::MAX);

    // Drain: every acknowledged job completed, or (after kill -9, which may lose some) no
    // progress for 8 s with nothing left to run.
    tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .context("the producer did not finish adding within 60 s")?
        .context("producer task")?;
    let done_ids = || async {
        q.connection()
            .query::<Vec<String>>(
                redis::cmd("ZRANGE")
                    .arg(q.keys().key("completed"))
                    .arg(0)
                    .arg(-1),
            )
            .await
            .map(|v| v.into_iter().collect::<HashSet<String>>())
    };
    let drain_start = Instant::now();
    let mut last_progress = (0usize, Instant::now());
    loop {
        let all_done = match done_ids().await {
            Ok(done) => added
                .lock()
                .map(|a| a.iter().all(|id| done.contains(id)))
                .unwrap_or(false),
            Err(_) => false,
        };
        if all_done {
            break;
        }
        let n = completed_count();
        if n != last_progress.0 {
            last_progress = (n, Instant::now());
        }
        let idle = q.get_job_counts().await.is_ok_and(|c| {
            [
                JobState::Waiting,
                JobState::Active,
                JobState::Delayed,
                JobState::Prioritized,
            ]
            .iter()
            .all(|s| c.get(s).copied().unwrap_or(0) == 0)
        });
        if (idle && last_progress.1.elapsed() > Duration::from_secs(8))
            || drain_start.elapsed() > Duration::from_secs(40)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran = origin.elapsed();
    // Let the listener catch up: it must deliver (at least) every completion in Redis.
    let seen = || event_times.lock().map(|t| t.len()).unwrap_or(0);
    let _ = bullpen_testkit::eventually(
        || async {
            match done_ids().await {
                Ok(done) => seen() >= done.len(),
                Err(_) => false,
            }
        },
        Duration::from_secs(10),
    )
    .await;
    worker.close(Duration::from_secs(2)).await;
    listener.abort();
    recorder.abort();

    let done = done_ids().await.context("ZRANGE completed")?;
    let failed: HashSet<String> = q
        .connection()
        .query::<Vec<String>>(
            redis::cmd("ZRANGE")
                .arg(q.keys().key("failed"))
                .arg(0)
                .arg(-1),
        )
        .await
        .context("ZRANGE failed")?
        .into_iter()
        .collect();
    let added = added
        .lock()
        .map_err(|_| anyhow!("ledger poisoned"))?
        .clone();
    let lost_ids: Vec<&String> = added.iter().filter(|id| !done.contains(*id)).collect();
    let lost_failed = lost_ids.iter().filter(|id| failed.contains(**id)).count();
    let l = ledger.lock().map_err(|_| anyhow!("ledger poisoned"))?;
    if l.lagged > 0 {
        bail!(
            "the ledger missed {} worker events: completions cannot be counted",
            l.lagged
        );
    }
    let twice = l.completions.values().filter(|&&n| n > 1).count();
    let events_seen = seen();
    // The listener's resume: its first `completed` event after the new master was in place.
    let listener_resume = event_times
        .lock()
        .ok()
        .and_then(|t| t.iter().find(|&&t| t >= elected_at).copied())
        .map(|t| t - elected_at)
        .unwrap_or(Duration::MAX);
    let (listener_error_count, last_listener_error) = listener_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let after_fault = l.completed_at.len().saturating_sub(before_fault);
    let detail = format!(
        "{fault_name}; {} jobs acknowledged ({} add calls refused and retried, {} jobs found already added on a retry), {} completed in redis, {} lost ({} of them in failed), {} completed twice; {} completions before the fault, {} after; resume {} after the new master was in place ({} after the fault); {} completed events seen by QueueEvents, which resumed {} after the new master was in place ({} errors, last: {:?}); {} worker error events; {} in all",
        added.len(),
        add_failures.load(Ordering::Relaxed),
        duplicated.load(Ordering::Relaxed),
        done.len(),
        lost_ids.len(),
        lost_failed,
        twice,
        before_fault,
        after_fault,
        secs(resume),
        secs((elected_at - fault_at).saturating_add(resume)),
        events_seen,
        secs(listener_resume),
        listener_error_count,
        last_listener_error,
        l.errors,
        secs(ran),
    );
    drop(cluster);
    // Resumed means processing and event delivery both came back.
    Ok((lost_ids.len(), twice, resume.max(listener_resume), detail))
}
