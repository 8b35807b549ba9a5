//! `cargo xtask integration [--full] [--only a,b] [--soak-minutes N]`: every Redis topology
//! we support, each a cell of the matrix, then the reliability plan's fault scenarios
//! ([`crate::scenarios`]), each a line of the same report.
//!
//! Per cell: add N jobs (5 % fail once and are retried), run a worker at concurrency 16 and a
//! `QueueEvents` listener, then check the ledger against Redis' own truth: lost = 0, completed
//! twice = 0, every completion seen by the listener (or reported as a trimmed gap). The AOF
//! cell also kills Redis with `kill -9` mid-load and restarts it (fault A1); the cluster cell
//! runs on 3 masters and 3 replicas with the hash-tagged prefix `{bull}`. The fast tier
//! (N = 2,000, the cheaper scenario variants) runs inside `cargo xtask test`; `--full` uses
//! N = 20,000, every variant and the S1 soak (`--soak-minutes`, 30 by default). `--only`
//! picks cells and scenarios by name (`e1`, `b6`, `a1-5s`, `cluster`, `s1`, ...).
//!
//! Everything writes to `target/integration/<scenario>/` and `target/integration-report.json`;
//! the last line is `N passed, N failed`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bullpen_conn::{redis, Connection, Error as ConnError, RedisOptions, RetryStrategy};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::{ClusterTopology, RedisServer, SentinelTopology};
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent, WorkerOptions};
use serde_json::{json, Value};

use crate::redis_install::ensure_redis;
use crate::scenarios::{self, Ctx, CATALOGUE};

/// One line of the report: a matrix cell or a fault scenario.
pub struct Outcome {
    pub cell: String,
    pub ok: bool,
    /// Could not run here (the detail says why); counted neither passed nor failed.
    pub skipped: bool,
    pub detail: String,
    pub jobs: usize,
    pub lost: usize,
    pub twice: usize,
    pub resume: Option<Duration>,
    pub took: Duration,
    /// A scenario's full report (metrics, faults), copied into the run's report.
    pub report: Option<Value>,
}

impl Outcome {
    /// A line that failed with `detail` before it produced numbers.
    pub fn failed(cell: &str, detail: String, took: Duration) -> Self {
        Self {
            cell: cell.to_owned(),
            ok: false,
            skipped: false,
            detail,
            jobs: 0,
            lost: 0,
            twice: 0,
            resume: None,
            took,
            report: None,
        }
    }

    fn print(&self) {
        println!(
            "{} {:<12} jobs {:>6}  lost {}  completed twice {}  resume {}  {:.1}s  {}",
            if self.skipped {
                "SKIP"
            } else if self.ok {
                "PASS"
            } else {
                "FAIL"
            },
            self.cell,
            self.jobs,
            self.lost,
            self.twice,
            self.resume
                .map_or("-".to_owned(), |r| format!("{:.2}s", r.as_secs_f64())),
            self.took.as_secs_f64(),
            self.detail
        );
    }
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
    prefix: &str,
) -> Result<(usize, usize, Option<Duration>, String)> {
    let base = RedisOptions::from_url(url)?;
    let worker_opts = base.clone().worker().with_retry_strategy(quick_retry());
    let conn = Connection::connect(worker_opts.clone()).await?;
    let queue = "matrix";
    let q = Queue::new(
        conn.clone(),
        queue,
        QueueOptions::default()
            .keep_everything()
            .with_prefix(prefix),
    )
    .await?;
    // Started before the first add, at a known position (`Now`), so that entries trimmed
    // before the listener reads them (the full tier adds more than maxLenEvents allows) are
    // reported as a gap. `Beginning` would take whatever is left as the start.
    let mut events = QueueEvents::new(
        base.clone().blocking().with_retry_strategy(quick_retry()),
        queue,
        QueueEventsOptions::default()
            .start(StartAt::Now)
            .prefix(prefix),
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
            .prefix(prefix)
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
                tokio::task::block_in_place(|| server.kill9())?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                tokio::task::block_in_place(|| server.restart())?;
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
    // The same topology, the functional suites (job kinds, getters, admin, worker order and
    // retries, the events a listener gets).
    let suites = crate::suites::run(&base, prefix, quick_retry()).await?;
    Ok((
        lost,
        twice,
        resume,
        format!("events: {seen} completions seen, {gaps} gaps reported; {suites}"),
    ))
}

async fn cell<F, Fut>(name: &'static str, n: usize, f: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(usize, usize, Option<Duration>, String)>>,
{
    let t = Instant::now();
    let o = match f().await {
        Ok((lost, twice, resume, detail)) => Outcome {
            cell: name.to_owned(),
            ok: lost == 0 && twice == 0,
            skipped: false,
            detail,
            jobs: n,
            lost,
            twice,
            resume,
            took: t.elapsed(),
            report: None,
        },
        Err(e) => Outcome {
            jobs: n,
            ..Outcome::failed(name, format!("{e:#}"), t.elapsed())
        },
    };
    o.print();
    o
}

/// The matrix's cells, in order.
const CELLS: [&str; 10] = [
    "standalone",
    "password",
    "acl-user",
    "tls",
    "mutual-tls",
    "unix-socket",
    "aof+kill-9",
    "sentinel",
    "cluster",
    "eviction",
];

/// What to run.
struct Plan {
    full: bool,
    only: Option<Vec<String>>,
    soak_minutes: f64,
}

impl Plan {
    fn parse(args: &[String]) -> Result<Self> {
        let mut plan = Plan {
            full: false,
            only: None,
            soak_minutes: 30.0,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--full" => plan.full = true,
                "--only" => {
                    let v = it.next().context("--only needs a list, e.g. --only e1,b6")?;
                    plan.only = Some(v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect());
                }
                "--soak-minutes" => {
                    let v = it.next().context("--soak-minutes needs a number")?;
                    plan.soak_minutes = v
                        .parse()
                        .ok()
                        .filter(|m: &f64| *m >= 1.0 && *m <= 240.0)
                        .context("--soak-minutes must be a number of minutes from 1 to 240")?;
                }
                bad => bail!("unknown integration option `{bad}` (use --full, --only LIST, --soak-minutes N)"),
            }
        }
        if let Some(only) = &plan.only {
            for t in only {
                let known = CELLS.contains(&t.as_str())
                    || CATALOGUE
                        .iter()
                        .any(|(n, _)| scenarios::token_matches(t, n));
                if !known {
                    bail!(
                        "--only: `{t}` names no cell or scenario (cells: {}; scenarios: {})",
                        CELLS.join(", "),
                        CATALOGUE
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        Ok(plan)
    }

    fn cell(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|t| t == name))
    }

    /// A scenario runs when named exactly, or when its id or group is named (or nothing is)
    /// and it belongs to the tier. The soak runs only with `--full` or when named.
    fn scenario(&self, name: &str, fast: bool) -> bool {
        let in_tier = fast || self.full;
        match &self.only {
            None => in_tier,
            Some(only) => only
                .iter()
                .any(|t| t == name || (in_tier && scenarios::token_matches(t, name))),
        }
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let plan = Plan::parse(args)?;
    ensure_redis()?;
    let n = if plan.full { 20_000 } else { 2_000 };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let ctx = Ctx {
        full: plan.full,
        root: root.join("integration"),
        exe: std::env::current_exe().context("locating xtask")?,
        soak_minutes: plan.soak_minutes,
    };
    std::fs::create_dir_all(&ctx.root)?;
    let outcomes = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(everything(&plan, &ctx, n))?;
    let mut json_cells = Vec::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for o in &outcomes {
        if o.skipped {
            skipped += 1;
        } else if o.ok {
            passed += 1;
        } else {
            failed += 1;
        }
        json_cells.push(json!({
            "cell": o.cell, "pass": o.ok, "skipped": o.skipped, "jobs": o.jobs, "lost": o.lost, "completed_twice": o.twice,
            "resume_ms": o.resume.map(|r| r.as_millis() as u64), "seconds": o.took.as_secs_f64(), "detail": o.detail,
            "report": o.report,
        }));
    }
    let report = json!({"tier": if plan.full { "full" } else { "fast" }, "only": plan.only, "cells": json_cells, "passed": passed, "failed": failed, "skipped": skipped});
    let path = root.join("integration-report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?).context("writing the report")?;
    println!("report: {}", path.display());
    let failures: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok && !o.skipped)
        .map(|o| o.cell.as_str())
        .collect();
    if !failures.is_empty() {
        println!("failed: {}", failures.join(", "));
    }
    if skipped > 0 {
        println!("{skipped} skipped (see the SKIP lines)");
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn everything(plan: &Plan, ctx: &Ctx, n: usize) -> Result<Vec<Outcome>> {
    let mut out = matrix(plan, ctx, n).await?;
    let d4_done = out.iter().any(|o| o.cell == "d4");
    for (name, fast) in CATALOGUE {
        if !plan.scenario(name, *fast) || (*name == "d4" && d4_done) {
            continue;
        }
        let o = scenarios::run_one(ctx, name, None).await;
        o.print();
        out.push(o);
    }
    Ok(out)
}

async fn matrix(plan: &Plan, ctx: &Ctx, n: usize) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();

    if plan.cell("standalone") {
        let s = RedisServer::start()?;
        let url = s.url();
        out.push(cell("standalone", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("password") {
        let s = RedisServer::builder().password("matrix-pw").start()?;
        let url = format!("redis://:matrix-pw@127.0.0.1:{}", s.port());
        out.push(cell("password", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("acl-user") {
        let s = RedisServer::builder()
            .acl_user("bp", "bp-pw", &bullpen_core::acl::acl_rules("bull"))
            .start()?;
        let url = format!("redis://bp:bp-pw@127.0.0.1:{}", s.port());
        out.push(cell("acl-user", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("tls") {
        let s = RedisServer::builder().tls(false).start()?;
        let (ca, _, _) = s.tls_files();
        let url = format!(
            "rediss://127.0.0.1:{}?tls_ca={}",
            s.tls_port().unwrap_or(0),
            ca.display()
        );
        out.push(cell("tls", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("mutual-tls") {
        let s = RedisServer::builder().tls(true).start()?;
        let (ca, cert, key) = s.tls_files();
        let url = format!(
            "rediss://127.0.0.1:{}?tls_ca={}&tls_cert={}&tls_key={}",
            s.tls_port().unwrap_or(0),
            ca.display(),
            cert.display(),
            key.display()
        );
        out.push(cell("mutual-tls", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("unix-socket") {
        let s = RedisServer::builder().unix_socket().start()?;
        let url = format!("redis+unix://{}", s.socket_path().display());
        out.push(cell("unix-socket", n, || load(&url, n, None, "bull")).await);
    }

    if plan.cell("aof+kill-9") {
        let mut s = RedisServer::builder().aof().start()?;
        let url = s.url();
        out.push(cell("aof+kill-9", n, || load(&url, n, Some(&mut s), "bull")).await);
    }

    if plan.cell("sentinel") {
        let topo = SentinelTopology::start()?;
        let url = topo.url();
        out.push(cell("sentinel", n, || load(&url, n, None, "bull")).await);
    }

    let d4 = plan.scenario("d4", true);
    if plan.cell("cluster") {
        match tokio::task::block_in_place(ClusterTopology::start) {
            Ok(topo) => {
                let url = topo.url();
                // Every key of a queue must hash to one slot: the prefix carries a hash tag.
                out.push(cell("cluster", n, || load(&url, n, None, "{bull}")).await);
                if d4 {
                    let o = scenarios::run_one(ctx, "d4", Some(&url)).await;
                    o.print();
                    out.push(o);
                }
            }
            Err(e) => {
                let o = Outcome::failed(
                    "cluster",
                    format!("starting the cluster: {e}"),
                    Duration::ZERO,
                );
                o.print();
                out.push(o);
            }
        }
    }

    if plan.cell("eviction") {
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
    }
    Ok(out)
}
