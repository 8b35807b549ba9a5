//! `cargo xtask demo`: a live job system in one terminal.
//!
//! A private redis-server (AOF on) unless `--url` is given; a producer adds `--jobs` (20,000)
//! jobs of mixed kinds (plain, delayed, prioritized, and some that fail and retry with
//! backoff); two workers at concurrency 16 and a `QueueEvents` listener run them, with a live
//! status line. Partway through, unless `--no-fault`, the redis-server is killed with
//! `kill -9`, the reconnect attempts are shown with their backoff, the server is restarted and
//! the workers resume by themselves. The summary is checked against a ledger: lost and
//! completed-twice must both be 0.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bullpen_conn::{redis, ConnEvent, Connection, RedisOptions, RetryStrategy};
use bullpen_core::job::Job;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_producer::{Backoff, BulkJob, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use bullpen_worker::{from_fn, JobError, Worker, WorkerEvent, WorkerOptions};
use serde_json::{json, Value};

use crate::redis_install::ensure_redis;

struct Args {
    jobs: usize,
    fault: bool,
    url: Option<String>,
    dashboard: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        jobs: 20_000,
        fault: true,
        url: None,
        dashboard: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--no-fault" => a.fault = false,
            "--dashboard" => a.dashboard = true,
            "--jobs" => {
                a.jobs = it
                    .next()
                    .context("--jobs needs a number")?
                    .parse()
                    .context("--jobs needs a number")?;
                if a.jobs == 0 {
                    bail!("--jobs must be at least 1");
                }
            }
            "--url" => a.url = Some(it.next().context("--url needs a URL")?.clone()),
            other => bail!(
                "unknown demo option `{other}` (use --no-fault, --jobs N, --url URL, --dashboard)"
            ),
        }
    }
    Ok(a)
}

pub fn run(args: &[String]) -> Result<()> {
    let a = parse(args)?;
    if a.url.is_none() {
        ensure_redis()?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(a))
}

fn stamp(t0: Instant) -> String {
    format!("[{:>7.2}s]", t0.elapsed().as_secs_f64())
}

/// The demo's reconnect policy: quick, so the fault act is short to watch.
fn demo_retry() -> RetryStrategy {
    RetryStrategy::exponential(
        Duration::from_millis(100),
        Duration::from_millis(100),
        Duration::from_secs(1),
    )
}

/// What the processors saw, for the ledger.
#[derive(Default)]
struct Ledger {
    runs: HashMap<String, u32>,
}

fn mixed_jobs(n: usize) -> Vec<BulkJob<Value>> {
    (0..n)
        .map(|i| {
            let mut o = JobOptions::default();
            let name = match i % 20 {
                0 | 1 => {
                    o.delay_ms = 500 + (i as u64 % 2_500);
                    "delayed"
                }
                2 | 3 => {
                    o.priority = 1 + (i as u32 % 10);
                    "prioritized"
                }
                4 => {
                    o.attempts = Some(3);
                    o.backoff = Some(Backoff::exponential(200));
                    "flaky"
                }
                5 if i % 100 == 5 => {
                    o.attempts = Some(2);
                    o.backoff = Some(Backoff::fixed(100));
                    "doomed"
                }
                _ => "plain",
            };
            BulkJob::new(name, json!({ "n": i }), o)
        })
        .collect()
}

async fn demo(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let mut server = None;
    let url = match &a.url {
        Some(u) => u.clone(),
        None => {
            let s = RedisServer::builder()
                .aof()
                .start()
                .context("starting a private redis-server")?;
            println!(
                "{} private redis-server pid {} at {} (AOF everysec)",
                stamp(t0),
                s.pid().unwrap_or(0),
                s.url()
            );
            let u = s.url();
            server = Some(s);
            u
        }
    };
    let fault = a.fault && server.is_some();
    if a.fault && server.is_none() {
        println!(
            "{} --url given: the kill -9 act needs a private server, so it is skipped",
            stamp(t0)
        );
    }
    // Presets first, then the demo's quick reconnect policy (a preset sets its own).
    let base = RedisOptions::from_url(&url)?;
    let worker_opts = base.clone().worker().with_retry_strategy(demo_retry());
    let blocking_opts = base.blocking().with_retry_strategy(demo_retry());
    let conn = Connection::connect(worker_opts.clone()).await?;
    // A fresh queue per run, so that a shared server's data is never touched.
    let queue = format!(
        "demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let queue = queue.as_str();
    println!("{} queue `{queue}`", stamp(t0));
    let q = Queue::new(
        conn.clone(),
        queue,
        QueueOptions::default().keep_everything(),
    )
    .await?;
    // bull-board, the dashboard BullMQ users run, showing our Rust-processed jobs.
    let dashboard = if a.dashboard {
        let d = crate::dashboard::start(&url, &[queue])?;
        println!(
            "{} bull-board dashboard: {} (open it in a browser)",
            stamp(t0),
            d.url()
        );
        Some(d)
    } else {
        None
    };

    // Connection lifecycle, printed during the fault act.
    let mut lifecycle = conn.events();
    tokio::spawn(async move {
        while let Ok(ev) = lifecycle.recv().await {
            let line = match ev {
                ConnEvent::Close => "connection lost".to_owned(),
                ConnEvent::Reconnecting { attempt, delay } => {
                    format!("reconnect attempt {attempt}, backoff {delay:?}")
                }
                ConnEvent::Error { error } => format!("connect failed: {error}"),
                ConnEvent::Ready { .. } => "connection ready again".to_owned(),
                _ => continue,
            };
            println!("{} {line}", stamp(t0));
        }
    });

    // The events listener counts what happened, from the stream.
    let mut events = QueueEvents::new(
        blocking_opts,
        queue,
        QueueEventsOptions::default().start(StartAt::Beginning),
    )
    .await?;
    let seen = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let last_item = Arc::new(Mutex::new(Instant::now()));
    let (seen2, last2) = (seen.clone(), last_item.clone());
    let listener = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            let key = match item {
                Ok(EventItem::Event { event, .. }) => event.name().to_owned(),
                // The stream keeps about 10,000 entries: a reader that falls further behind
                // is told what it missed.
                Ok(EventItem::Gap { .. }) => "(gaps)".to_owned(),
                _ => continue,
            };
            if let Ok(mut s) = seen2.lock() {
                *s.entry(key).or_default() += 1;
            }
            if let Ok(mut l) = last2.lock() {
                *l = Instant::now();
            }
        }
    });

    // Two workers at concurrency 16; processors record every run.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut workers = Vec::new();
    for w in 0..2 {
        let l = ledger.clone();
        let processor = from_fn(move |job: Job<Value>, _ctx| {
            let l = l.clone();
            async move {
                if let Ok(mut led) = l.lock() {
                    *led.runs.entry(job.id.clone()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                match job.name.as_str() {
                    "flaky" if job.attempts_made == 0 => {
                        Err(JobError::failed("flaky first attempt"))
                    }
                    "doomed" => Err(JobError::failed("this one always fails")),
                    _ => Ok(json!({ "n": job.data["n"] })),
                }
            }
        });
        let opts = WorkerOptions::builder()
            .concurrency(16)
            .name(format!("demo-{w}"))
            .lock_duration(Duration::from_secs(10))
            .stalled_interval(Duration::from_secs(5))
            .build()?;
        workers.push(Worker::start(worker_opts.clone(), queue, processor, opts).await?);
    }
    let completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    for w in &workers {
        let mut rx = w.events();
        let c = completions.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(WorkerEvent::Completed { job_id, .. }) => {
                        if let Ok(mut m) = c.lock() {
                            *m.entry(job_id).or_default() += 1;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }

    // The producer adds in batches of 1,000 while the workers run.
    println!(
        "{} adding {} jobs: plain, delayed, prioritized, flaky (retried), doomed (fail for good)",
        stamp(t0),
        a.jobs
    );
    let jobs = mixed_jobs(a.jobs);
    let mut added: HashSet<String> = HashSet::new();
    let add_started = Instant::now();
    for chunk in jobs.chunks(1000) {
        for out in q.add_bulk(chunk).await? {
            added.insert(out.id);
        }
    }
    println!(
        "{} added {} jobs in {:.2}s",
        stamp(t0),
        added.len(),
        add_started.elapsed().as_secs_f64()
    );

    let tty = std::io::stdout().is_terminal();
    let mut fault_done = !fault;
    let mut resume = None::<Duration>;
    let mut last_report = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_done = 0u64;
    let mut rate_at = Instant::now();
    let mut rate = 0.0;
    loop {
        let counts = match q.get_job_counts().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let done = counts[&JobState::Completed] + counts[&JobState::Failed];
        if rate_at.elapsed() >= Duration::from_secs(1) {
            rate = (done.saturating_sub(last_done)) as f64 / rate_at.elapsed().as_secs_f64();
            last_done = done;
            rate_at = Instant::now();
        }
        let line = format!(
            "waiting {:>6} | prioritized {:>5} | delayed {:>5} | active {:>3} | completed {:>6} | failed {:>4} | {:>6.0} jobs/s",
            counts[&JobState::Waiting],
            counts[&JobState::Prioritized],
            counts[&JobState::Delayed],
            counts[&JobState::Active],
            counts[&JobState::Completed],
            counts[&JobState::Failed],
            rate
        );
        if tty {
            print!("\r{line}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        } else if last_report.elapsed() >= Duration::from_secs(2) {
            println!("{} {line}", stamp(t0));
            last_report = Instant::now();
        }
        if done >= added.len() as u64 {
            if tty {
                println!();
            }
            break;
        }
        if !fault_done && done >= added.len() as u64 / 3 {
            fault_done = true;
            if tty {
                println!();
            }
            if let Some(s) = server.as_mut() {
                println!(
                    "{} FAULT: kill -9 redis-server (pid {})",
                    stamp(t0),
                    s.pid().unwrap_or(0)
                );
                s.kill9()?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                s.restart()?;
                let back = Instant::now();
                println!(
                    "{} restarted redis-server (pid {}) on the same port and AOF",
                    stamp(t0),
                    s.pid().unwrap_or(0)
                );
                let before = done;
                loop {
                    let now_done = q
                        .get_job_counts()
                        .await
                        .map(|c| c[&JobState::Completed] + c[&JobState::Failed])
                        .unwrap_or(before);
                    if now_done > before {
                        break;
                    }
                    if back.elapsed() > Duration::from_secs(60) {
                        bail!("the workers did not resume within 60 s");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                resume = Some(back.elapsed());
                println!(
                    "{} workers resumed by themselves {:.2}s after the restart",
                    stamp(t0),
                    back.elapsed().as_secs_f64()
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the demo did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = add_started.elapsed();
    for w in &workers {
        w.close(Duration::from_secs(2)).await;
    }

    // The ledger against Redis' own truth.
    let completed_ids: Vec<String> = conn
        .query(
            redis::cmd("ZRANGE")
                .arg(q.keys().key("completed"))
                .arg(0)
                .arg(-1),
        )
        .await?;
    let failed_ids: Vec<String> = conn
        .query(
            redis::cmd("ZRANGE")
                .arg(q.keys().key("failed"))
                .arg(0)
                .arg(-1),
        )
        .await?;
    let finished: HashSet<&String> = completed_ids.iter().chain(failed_ids.iter()).collect();
    let lost = added.iter().filter(|id| !finished.contains(id)).count();
    let twice = completions
        .lock()
        .map(|m| m.values().filter(|n| **n > 1).count())
        .unwrap_or(0);
    let runs: u32 = ledger.lock().map(|l| l.runs.values().sum()).unwrap_or(0);
    let mut latencies = Vec::with_capacity(completed_ids.len());
    for chunk in completed_ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET")
                .arg(q.keys().job(id))
                .arg("timestamp")
                .arg("finishedOn")
                .arg("delay");
        }
        let rows: Vec<(Option<u64>, Option<u64>, Option<u64>)> = conn.query_pipeline(&pipe).await?;
        for (ts, fin, delay) in rows {
            if let (Some(ts), Some(fin)) = (ts, fin) {
                // Latency from when the job was due (its delay counted out).
                latencies.push(fin.saturating_sub(ts + delay.unwrap_or(0)));
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    // Let the listener catch up with the stream (idle for 700 ms) before reporting.
    let caught_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < caught_up {
        let idle = last_item.lock().map(|l| l.elapsed()).unwrap_or_default();
        if idle > Duration::from_millis(700) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listener.abort();
    conn.close();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();

    println!();
    println!("summary (measured in this run)");
    println!("  jobs added                     {:>10}", added.len());
    println!(
        "  completed                      {:>10}",
        completed_ids.len()
    );
    println!("  failed after retries           {:>10}", failed_ids.len());
    println!("  processor runs (incl. retries) {:>10}", runs);
    println!("  lost                           {lost:>10}");
    println!("  completed twice                {twice:>10}");
    match resume {
        Some(r) => println!("  resume after restart           {:>9.2}s", r.as_secs_f64()),
        None => println!("  resume after restart           {:>10}", "no fault"),
    }
    println!(
        "  throughput (add to last done)  {:>7.0} jobs/s",
        added.len() as f64 / elapsed.as_secs_f64()
    );
    // All jobs are added up front, so this latency is mostly queueing behind the backlog;
    // `cargo xtask bench` measures latency at a steady 200 jobs/s instead.
    println!(
        "  latency due -> completed p50   {:>8} ms  (includes waiting behind the {}-job backlog)",
        pct(0.50),
        added.len()
    );
    println!("  latency due -> completed p99   {:>8} ms", pct(0.99));
    println!(
        "  events seen by QueueEvents     completed {}, failed {}, retries-exhausted {}, gaps reported {}",
        seen.get("completed").unwrap_or(&0),
        seen.get("failed").unwrap_or(&0),
        seen.get("retries-exhausted").unwrap_or(&0),
        seen.get("(gaps)").unwrap_or(&0)
    );
    println!("  (the events stream keeps about 10,000 entries; a listener that falls behind is told, never left guessing)");
    if lost > 0 || twice > 0 {
        bail!("the ledger found {lost} lost and {twice} completed twice");
    }
    if let Some(d) = &dashboard {
        println!("dashboard still up at {}; press Ctrl-C to stop", d.url());
        tokio::signal::ctrl_c().await?;
    }
    drop(dashboard);
    drop(server);
    Ok(())
}
