//! `cargo xtask integration [--full]`: every Redis topology we support, each a cell of the
//! matrix, running the producer, a worker and an events listener with a ledger.
//!
//! Per cell: add N jobs (5 % fail once and are retried), run a worker at concurrency 16 and a
//! `QueueEvents` listener, then check the ledger against Redis' own truth: lost = 0, completed
//! twice = 0, every completion seen by the listener (or reported as a trimmed gap). The AOF
//! cell also kills Redis with `kill -9` mid-load and restarts it (fault A1). The fast tier
//! (N = 2,000) runs inside `cargo xtask test`; `--full` uses N = 20,000.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bullpen_conn::{redis, Connection, Error as ConnError, RedisOptions, RetryStrategy};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::{RedisServer, SentinelTopology};
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent, WorkerOptions};
use serde_json::{json, Value};

use crate::redis_install::ensure_redis;

/// One cell's outcome.
struct Outcome {
    cell: &'static str,
    ok: bool,
    detail: String,
    jobs: usize,
    lost: usize,
    twice: usize,
    resume: Option<Duration>,
    took: Duration,
}

fn quick_retry() -> RetryStrategy {
    RetryStrategy::exponential(
        Duration::from_millis(50),
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
}

/// Runs the producer, a worker and an events listener against `url`, optionally killing and
/// restarting `server` mid-load.
async fn load(
    url: &str,
    n: usize,
    mut fault: Option<&mut RedisServer>,
) -> Result<(usize, usize, Option<Duration>, String)> {
    let base = RedisOptions::from_url(url)?;
    let worker_opts = base.clone().worker().with_retry_strategy(quick_retry());
    let conn = Connection::connect(worker_opts.clone()).await?;
    let queue = "matrix";
    let q = Queue::new(
        conn.clone(),
        queue,
        QueueOptions::default().keep_everything(),
    )
    .await?;
    let mut events = QueueEvents::new(
        base.blocking().with_retry_strategy(quick_retry()),
        queue,
        QueueEventsOptions::default().start(StartAt::Beginning),
    )
    .await?;
    let completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        if job.name == "flaky" && job.attempts_made == 0 {
            return Err(JobError::failed("first attempt fails"));
        }
        Ok::<_, JobError>(json!({ "n": job.data["n"] }))
    });
    let worker = Worker::start(
        worker_opts,
        queue,
        processor,
        WorkerOptions::builder()
            .concurrency(16)
            .lock_duration(Duration::from_secs(4))
            .stalled_interval(Duration::from_secs(1))
            .build()?,
    )
    .await?;
    let mut rx = worker.events();
    let c2 = completions.clone();
    let recorder = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(WorkerEvent::Completed { job_id, .. }) => {
                    if let Ok(mut m) = c2.lock() {
                        *m.entry(job_id).or_default() += 1;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let mut retry = JobOptions::default();
    retry.attempts = Some(2);
    let jobs: Vec<BulkJob<Value>> = (0..n)
        .map(|i| {
            BulkJob::new(
                if i % 20 == 0 { "flaky" } else { "plain" },
                json!({ "n": i }),
                retry.clone(),
            )
        })
        .collect();
    let mut added = HashSet::new();
    let mut resume = None;
    for (k, chunk) in jobs.chunks(500).enumerate() {
        for out in q.add_bulk(chunk).await? {
            added.insert(out.id);
        }
        if k == 1 {
            if let Some(server) = fault.take() {
                server.kill9()?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                server.restart()?;
                let back = Instant::now();
                let before = q.get_job_counts().await?[&JobState::Completed];
                loop {
                    if q.get_job_counts().await?[&JobState::Completed] > before {
                        break;
                    }
                    if back.elapsed() > Duration::from_secs(30) {
                        bail!("no job completed within 30 s of the restart");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                resume = Some(back.elapsed());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while q.get_job_counts().await?[&JobState::Completed] < n as u64 {
        if Instant::now() > deadline {
            bail!("not every job completed within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.close(Duration::from_secs(2)).await;
    recorder.abort();
    let completed: Vec<String> = conn
        .query(
            redis::cmd("ZRANGE")
                .arg(q.keys().key("completed"))
                .arg(0)
                .arg(-1),
        )
        .await?;
    let done: HashSet<&String> = completed.iter().collect();
    let lost = added.iter().filter(|id| !done.contains(id)).count();
    let twice = completions
        .lock()
        .map(|m| m.values().filter(|c| **c > 1).count())
        .unwrap_or(0);
    // The listener must account for every completion: seen, or inside a reported gap.
    let mut seen = 0usize;
    let mut gaps = 0usize;
    let listen_deadline = Instant::now() + Duration::from_secs(30);
    while seen < n && Instant::now() < listen_deadline {
        match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
            Ok(Some(Ok(EventItem::Event { event, .. }))) if event.name() == "completed" => {
                seen += 1
            }
            Ok(Some(Ok(EventItem::Gap { .. }))) => gaps += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    events.close();
    conn.close();
    if seen < n && gaps == 0 {
        bail!("the events listener saw {seen} of {n} completions and reported no gap");
    }
    Ok((
        lost,
        twice,
        resume,
        format!("events: {seen} completions seen, {gaps} gaps reported"),
    ))
}

async fn cell<F, Fut>(name: &'static str, n: usize, f: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(usize, usize, Option<Duration>, String)>>,
{
    let t = Instant::now();
    match f().await {
        Ok((lost, twice, resume, detail)) => Outcome {
            cell: name,
            ok: lost == 0 && twice == 0,
            detail,
            jobs: n,
            lost,
            twice,
            resume,
            took: t.elapsed(),
        },
        Err(e) => Outcome {
            cell: name,
            ok: false,
            detail: format!("{e:#}"),
            jobs: n,
            lost: 0,
            twice: 0,
            resume: None,
            took: t.elapsed(),
        },
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let full = args.iter().any(|a| a == "--full");
    if let Some(bad) = args.iter().find(|a| *a != "--full") {
        bail!("unknown integration option `{bad}` (use --full)");
    }
    ensure_redis()?;
    let n = if full { 20_000 } else { 2_000 };
    let outcomes = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(matrix(n))?;
    let mut json_cells = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for o in &outcomes {
        if o.ok {
            passed += 1;
        } else {
            failed += 1;
        }
        println!(
            "{} {:<12} jobs {:>6}  lost {}  completed twice {}  resume {}  {:.1}s  {}",
            if o.ok { "PASS" } else { "FAIL" },
            o.cell,
            o.jobs,
            o.lost,
            o.twice,
            o.resume
                .map_or("-".to_owned(), |r| format!("{:.2}s", r.as_secs_f64())),
            o.took.as_secs_f64(),
            o.detail
        );
        json_cells.push(json!({
            "cell": o.cell, "pass": o.ok, "jobs": o.jobs, "lost": o.lost, "completed_twice": o.twice,
            "resume_ms": o.resume.map(|r| r.as_millis() as u64), "seconds": o.took.as_secs_f64(), "detail": o.detail,
        }));
    }
    let report = json!({"tier": if full { "full" } else { "fast" }, "cells": json_cells, "passed": passed, "failed": failed});
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/integration-report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?).context("writing the report")?;
    println!("report: {}", path.display());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn matrix(n: usize) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();

    let s = RedisServer::start()?;
    let url = s.url();
    out.push(cell("standalone", n, || load(&url, n, None)).await);
    drop(s);

    let s = RedisServer::builder().password("matrix-pw").start()?;
    let url = format!("redis://:matrix-pw@127.0.0.1:{}", s.port());
    out.push(cell("password", n, || load(&url, n, None)).await);
    drop(s);

    let s = RedisServer::builder()
        .acl_user("bp", "bp-pw", &bullpen_core::acl::acl_rules("bull"))
        .start()?;
    let url = format!("redis://bp:bp-pw@127.0.0.1:{}", s.port());
    out.push(cell("acl-user", n, || load(&url, n, None)).await);
    drop(s);

    let s = RedisServer::builder().tls(false).start()?;
    let (ca, _, _) = s.tls_files();
    let url = format!(
        "rediss://127.0.0.1:{}?tls_ca={}",
        s.tls_port().unwrap_or(0),
        ca.display()
    );
    out.push(cell("tls", n, || load(&url, n, None)).await);
    drop(s);

    let s = RedisServer::builder().tls(true).start()?;
    let (ca, cert, key) = s.tls_files();
    let url = format!(
        "rediss://127.0.0.1:{}?tls_ca={}&tls_cert={}&tls_key={}",
        s.tls_port().unwrap_or(0),
        ca.display(),
        cert.display(),
        key.display()
    );
    out.push(cell("mutual-tls", n, || load(&url, n, None)).await);
    drop(s);

    let s = RedisServer::builder().unix_socket().start()?;
    let url = format!("redis+unix://{}", s.socket_path().display());
    out.push(cell("unix-socket", n, || load(&url, n, None)).await);
    drop(s);

    let mut s = RedisServer::builder().aof().start()?;
    let url = s.url();
    out.push(cell("aof+kill-9", n, || load(&url, n, Some(&mut s))).await);
    drop(s);

    let topo = SentinelTopology::start()?;
    let url = topo.url();
    out.push(cell("sentinel", n, || load(&url, n, None)).await);
    drop(topo);

    let s = RedisServer::builder()
        .maxmemory_policy("allkeys-lru")
        .start()?;
    let url = s.url();
    out.push(
        cell("eviction", 0, || async {
            match Connection::connect(RedisOptions::from_url(&url)?.producer()).await {
                Err(ConnError::EvictionPolicy { policy, .. }) => {
                    Ok((0, 0, None, format!("refused as expected (policy {policy})")))
                }
                Err(e) => bail!("refused, but with the wrong error: {e}"),
                Ok(_) => bail!("a server with allkeys-lru was accepted"),
            }
        })
        .await,
    );
    drop(s);
    Ok(out)
}
