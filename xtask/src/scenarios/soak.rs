//! S1, the soak of the reliability plan (§4.3): two worker processes at concurrency 16, an
//! offered load of about 400 jobs/s (processors sleep 5–50 ms, 1 % throw once, 0.1 % outlive
//! the lock to exercise renewal), and a fault every 90 ± 30 s (scaled down for short soaks)
//! cycling A1, B1, B3, A4, E1, E3, C1, A6. Retention is on (`removeOnComplete: 1000`,
//! `maxLenEvents` 10,000), so the worker ledgers and an events ledger written by a
//! `QueueEvents` listener are the record of what completed.
//!
//! Checked: 0 lost, 0 completed twice, every extra run explained; resume and backlog after
//! every fault; worker RSS growth (from a sixth of the run, minute 5 of 30, to the end)
//! < 10 %; `XLEN events` ≤ 1.1 × maxLenEvents; `ZCARD completed` ≤ retention + 1 %; the
//! connection count and the stable worker's open descriptors constant when no fault is near.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use bullpen_testkit::{FaultProxy, ProxyMode, RedisServer};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::watch;

use super::ledger::{
    check, first_fresh_ack_ok_after, now_ms, read_producer, read_truth, EventCounts, Ledger,
};
use super::{
    blocking, check_connection, drain, fresh_seed, retry_strategy, Ctx, JobSpec, ProducerSpec,
    Profile, Rng, Scene, Verdict, RESUME_BOUND, TP,
};
use crate::integration::Outcome;

/// The soak's profile: the test profile with three stalls tolerated and BullMQ's default
/// events length.
const SOAK: Profile = Profile {
    max_stalled: 3,
    max_len_events: 10_000,
    ..TP
};
const RETENTION: u64 = 1_000;
const FAULTS: [&str; 8] = ["a1", "b1", "b3", "a4", "e1", "e3", "c1", "a6"];

/// One sample of the slow sampler (every 10 s).
#[derive(Clone, Debug, Default)]
struct Sample {
    t: u64,
    rss_kb: Vec<Option<u64>>,
    fds: Vec<Option<usize>>,
    clients: Option<u64>,
    xlen: Option<u64>,
    completed: Option<u64>,
}

fn proc_stats(pid: u32) -> (Option<u64>, Option<usize>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count());
    (rss, fds)
}

async fn q<T: redis::FromRedisValue>(conn: &Connection, cmd: &redis::Cmd) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(1), conn.query(cmd))
        .await
        .ok()
        .and_then(|r| r.ok())
}

/// Every 10 s: worker RSS and descriptors, clients, events length, completed count.
async fn slow_sampler(
    conn: Connection,
    keys: bullpen_core::QueueKeys,
    pids: Arc<Mutex<Vec<u32>>>,
    out: Arc<Mutex<Vec<Sample>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let pids_now = pids.lock().map(|p| p.clone()).unwrap_or_default();
        let stats: Vec<_> = pids_now.iter().map(|p| proc_stats(*p)).collect();
        let info: Option<String> = q(&conn, redis::cmd("INFO").arg("clients")).await;
        let clients = info.and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let s = Sample {
            t: now_ms(),
            rss_kb: stats.iter().map(|s| s.0).collect(),
            fds: stats.iter().map(|s| s.1).collect(),
            // Without the sampler's own connection.
            clients: clients.map(|c| c.saturating_sub(1)),
            xlen: q(&conn, redis::cmd("XLEN").arg(keys.key("events"))).await,
            completed: q(&conn, redis::cmd("ZCARD").arg(keys.key("completed"))).await,
        };
        if let Ok(mut o) = out.lock() {
            o.push(s);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Every second: the length of `wait` (the backlog).
async fn backlog_sampler(
    conn: Connection,
    keys: bullpen_core::QueueKeys,
    out: Arc<Mutex<Vec<(u64, u64)>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Some(n) = q::<u64>(&conn, redis::cmd("LLEN").arg(keys.key("wait"))).await {
            if let Ok(mut o) = out.lock() {
                o.push((now_ms(), n));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The events ledger: every event of the queue's stream, as `EV <id> <event> <job>`, and the
/// gaps, as `GAP <after> <resumed_at>`.
async fn events_recorder(
    url: String,
    sc_dir: std::path::PathBuf,
    queue: String,
    prefix: String,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let ledger = Ledger::open(&sc_dir.join("events.ledger"))?;
    let opts = RedisOptions::from_url(&url)?
        .blocking()
        .with_retry_strategy(retry_strategy(TP.backoff_floor, TP.backoff_cap));
    let mut events = QueueEvents::new(
        opts,
        &queue,
        QueueEventsOptions::default()
            .start(StartAt::Beginning)
            .prefix(prefix),
    )
    .await?;
    let close = events.close_handle();
    tokio::spawn(async move {
        let _ = stop.changed().await;
        close.close();
    });
    while let Some(item) = events.next().await {
        match item {
            Ok(EventItem::Event { id, event }) => {
                ledger.line(&format!(
                    "EV {id} {} {}",
                    event.name(),
                    event.job_id().unwrap_or("-")
                ));
            }
            Ok(EventItem::Gap { after, resumed_at }) => {
                ledger.line(&format!("GAP {after} {resumed_at}"));
            }
            Ok(_) => {}
            Err(e) => ledger.line(&format!("ERROR {} {e}", now_ms())),
        }
    }
    Ok(())
}

fn read_events(path: &std::path::Path) -> (EventCounts, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = EventCounts::new();
    let mut gaps = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.first().copied() {
            Some("EV") if f.len() >= 4 => {
                *counts
                    .entry(f[3].to_owned())
                    .or_default()
                    .entry(f[2].to_owned())
                    .or_default() += 1;
            }
            Some("GAP") => gaps += 1,
            _ => {}
        }
    }
    (counts, gaps)
}

/// Least-squares slope of `(t_ms, kb)`, in MB per 10 minutes.
fn slope_mb_per_10min(points: &[(u64, u64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| p.0 as f64 / 60_000.0).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1 as f64 / 1024.0).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx * 10.0)
}

/// One fault of the cycle, as it happened.
#[derive(Clone, Debug)]
struct Injected {
    kind: &'static str,
    start: u64,
    healed: u64,
}

/// S1.
pub async fn s1(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let duration = Duration::from_secs_f64((ctx.soak_minutes * 60.0).max(60.0));
    let seed = fresh_seed();
    let mut rng = Rng::new(seed);
    let mut server = blocking(|| RedisServer::builder().aof().start())?;
    let direct = server.url();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))).await?;
    let url = proxy.url();
    let mut sc = Scene::new(ctx, name, SOAK)?;
    sc.start_workers(&url, 2, 16).await?;
    let mut victim = 1usize;
    let pids = Arc::new(Mutex::new(vec![sc.workers[0].pid(), sc.workers[1].pid()]));
    let (stop_tx, stop_rx) = watch::channel(false);
    let events_task = tokio::spawn(events_recorder(
        direct.clone(),
        sc.dir.clone(),
        sc.queue.clone(),
        sc.prefix.clone(),
        stop_rx.clone(),
    ));
    let mut spec = ProducerSpec::new(&url, 400.0);
    spec.in_flight = 64;
    spec.retention = Some(RETENTION);
    spec.job = JobSpec {
        ms_min: 5,
        ms_max: 50,
        throw_share: 0.01,
        long_share: 0.001,
        long_ms: SOAK.lock.as_millis() as u64 + 1_000,
        pad: 0,
    };
    let producer = sc.producer(spec)?;
    let keys = sc.keys()?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let backlog: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let slow = tokio::spawn(slow_sampler(
        check_connection(&direct).await?,
        keys.clone(),
        pids.clone(),
        samples.clone(),
        stop_rx.clone(),
    ));
    let fast = tokio::spawn(backlog_sampler(
        check_connection(&direct).await?,
        keys.clone(),
        backlog.clone(),
        stop_rx.clone(),
    ));
    let started = Instant::now();
    let t_start = now_ms();
    let base = (duration.as_secs_f64() / 20.0).clamp(15.0, 90.0);
    let mut injected: Vec<Injected> = Vec::new();
    let mut k = 0usize;
    loop {
        let wait = Duration::from_secs_f64(base * (2.0 / 3.0 + rng.unit() * 2.0 / 3.0));
        // Leave at least 40 s of quiet load at the end.
        if started.elapsed() + wait + Duration::from_secs(55) > duration {
            break;
        }
        tokio::time::sleep(wait).await;
        let kind = FAULTS[k % FAULTS.len()];
        k += 1;
        let f = sc.begin(kind);
        let start = sc.faults[f].start;
        match kind {
            "a1" => {
                blocking(|| server.kill9())?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                blocking(|| server.restart())?;
            }
            "b1" => {
                for i in 0..3 {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    blocking(|| {
                        server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                    })?;
                }
            }
            "b3" => {
                proxy.set_mode(ProxyMode::BlackHole);
                tokio::time::sleep(Duration::from_secs(10)).await;
                proxy.set_mode(ProxyMode::Pass);
            }
            "a4" => {
                server.pause()?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                server.resume()?;
            }
            "e1" | "e3" => {
                if kind == "e1" {
                    sc.workers[victim].kill9()?;
                } else {
                    sc.workers[victim].signal(Signal::SIGTERM)?;
                    if sc.workers[victim]
                        .wait_exit(SOAK.grace + Duration::from_secs(3))
                        .await
                        .is_none()
                    {
                        sc.workers[victim].kill9()?;
                    }
                }
                victim = sc.spawn_worker(&url, |c| c.concurrency = 16)?;
                sc.wait_ready(victim, Duration::from_secs(20)).await?;
                if let Ok(mut p) = pids.lock() {
                    p[1] = sc.workers[victim].pid();
                }
            }
            "c1" => {
                let used: u64 = blocking(|| server.info_field("used_memory"))?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let limit = (used + 1024 * 1024).to_string();
                blocking(|| server.admin(&["CONFIG", "SET", "maxmemory", &limit]))?;
                tokio::time::sleep(Duration::from_secs(10)).await;
                blocking(|| server.admin(&["CONFIG", "SET", "maxmemory", "0"]))?;
            }
            _ => {
                for i in 0..3 {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    blocking(|| server.admin(&["SCRIPT", "FLUSH"]))?;
                }
            }
        }
        let healed = sc.heal(f);
        println!(
            "  s1 +{:>4.0}s  {kind} injected and healed in {:.1}s",
            started.elapsed().as_secs_f64(),
            (healed - start) as f64 / 1e3
        );
        injected.push(Injected {
            kind,
            start,
            healed,
        });
    }
    tokio::time::sleep(duration.saturating_sub(started.elapsed())).await;
    // End of load: the backlog must drain within 60 s of the last fault.
    let skipped_adds = producer.skipped();
    producer.stop().await;
    let conn = check_connection(&direct).await?;
    let drained = drain(&conn, &keys, SOAK.stalled * 2, Duration::from_secs(60)).await;
    // Let the events ledger catch up, then stop everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let _ = slow.await;
    let _ = fast.await;
    let events_result = events_task.await;
    sc.stop_workers().await;
    let truth = read_truth(&conn, &keys, true).await?;
    conn.close();
    let producer_ledger = read_producer(&sc.dir.join("producer.ledger"));
    let workers = sc.read_workers();
    let (events, gaps) = read_events(&sc.dir.join("events.ledger"));
    let mut opts = sc.check_opts();
    opts.events_complete = false;
    opts.ledger_done = true;
    opts.events_done = true;
    let metrics = check(
        &producer_ledger,
        &workers,
        &truth,
        &events,
        &sc.faults,
        &opts,
    );
    let mut v = Verdict::default();
    v.note(format!(
        "{:.1} min, seed {seed:#x}, {} faults: {}",
        duration.as_secs_f64() / 60.0,
        injected.len(),
        injected
            .iter()
            .map(|i| i.kind)
            .collect::<Vec<_>>()
            .join(",")
    ));
    match &drained {
        Ok(d) => v.note(format!(
            "backlog drained {:.1}s after the load stopped",
            d.as_secs_f64()
        )),
        Err(e) => v.problems.push(format!("{e:#}")),
    }
    if let Ok(Err(e)) = &events_result {
        v.problems.push(format!("events listener: {e:#}"));
    }
    v.standard(&metrics, false);
    // Liveness and backlog after every fault.
    let backlog = backlog.lock().map(|b| b.clone()).unwrap_or_default();
    let first_fault = injected.first().map_or(u64::MAX, |i| i.start);
    let mut before: Vec<u64> = backlog
        .iter()
        .filter(|(t, _)| *t < first_fault && *t > t_start + 5_000)
        .map(|(_, n)| *n)
        .collect();
    before.sort_unstable();
    let steady = before.get(before.len() / 2).copied().unwrap_or(0);
    let threshold = steady * 2 + 100;
    let mut worst_resume = Duration::ZERO;
    let mut per_fault = Vec::new();
    for i in &injected {
        let resume =
            first_fresh_ack_ok_after(&workers, i.healed).map(|t| t.saturating_sub(i.healed));
        let recovered = backlog
            .iter()
            .find(|(t, n)| *t >= i.healed && *n <= threshold)
            .map(|(t, _)| t.saturating_sub(i.healed));
        if let Some(r) = resume {
            worst_resume = worst_resume.max(Duration::from_millis(r));
        }
        v.require(
            resume.is_some_and(|r| Duration::from_millis(r) <= RESUME_BOUND),
            format!("after {} the first completion took {resume:?} ms", i.kind),
        );
        v.require(
            recovered.is_some_and(|r| r <= 60_000),
            format!(
                "after {} the backlog took {recovered:?} ms to return under {threshold}",
                i.kind
            ),
        );
        per_fault.push(json!({"fault": i.kind, "start_ms": i.start, "healed_ms": i.healed, "resume_ms": resume, "backlog_ms": recovered}));
    }
    // Memory, stream and connections.
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let from = t_start + (duration.as_millis() as u64) / 6;
    let rss0: Vec<(u64, u64)> = samples
        .iter()
        .filter_map(|s| s.rss_kb.first().copied().flatten().map(|r| (s.t, r)))
        .collect();
    let at_from = rss0.iter().find(|(t, _)| *t >= from).map(|p| p.1);
    let at_end = rss0.last().map(|p| p.1);
    let growth = match (at_from, at_end) {
        (Some(a), Some(b)) if a > 0 => Some((b as f64 - a as f64) / a as f64 * 100.0),
        _ => None,
    };
    let tail: Vec<(u64, u64)> = rss0
        .iter()
        .copied()
        .filter(|(t, _)| *t >= t_start + (duration.as_millis() as u64) / 3)
        .collect();
    let slope = slope_mb_per_10min(&tail);
    v.require(
        growth.is_some_and(|g| g < 10.0),
        format!("worker RSS grew {growth:?} % from a sixth of the run to its end"),
    );
    if duration >= Duration::from_secs(30 * 60) {
        v.require(
            slope.is_some_and(|s| s < 1.0),
            format!("worker RSS slope {slope:?} MB per 10 min over the last 20 min"),
        );
    }
    let max_xlen = samples.iter().filter_map(|s| s.xlen).max().unwrap_or(0);
    let max_completed = samples
        .iter()
        .filter_map(|s| s.completed)
        .max()
        .unwrap_or(0);
    v.require(
        max_xlen as f64 <= 1.1 * SOAK.max_len_events as f64,
        format!(
            "XLEN events reached {max_xlen} (bound {})",
            SOAK.max_len_events * 11 / 10
        ),
    );
    v.require(
        max_completed as f64 <= RETENTION as f64 * 1.01,
        format!(
            "ZCARD completed reached {max_completed} (bound {})",
            RETENTION * 101 / 100
        ),
    );
    let near_fault = |t: u64| {
        injected
            .iter()
            .any(|i| t + 5_000 >= i.start && t <= i.healed + 20_000)
    };
    let quiet: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t > t_start + 15_000 && !near_fault(s.t))
        .collect();
    let span = |xs: Vec<u64>| xs.iter().max().zip(xs.iter().min()).map(|(a, b)| a - b);
    let clients_span = span(quiet.iter().filter_map(|s| s.clients).collect());
    let fds_span = span(
        quiet
            .iter()
            .filter_map(|s| s.fds.first().copied().flatten().map(|f| f as u64))
            .collect(),
    );
    v.require(
        clients_span.is_none_or(|d| d <= 2),
        format!("connected_clients varied by {clients_span:?} in quiet samples"),
    );
    v.require(
        fds_span.is_none_or(|d| d <= 5),
        format!("the stable worker's descriptors varied by {fds_span:?} in quiet samples"),
    );
    v.note(format!(
        "worker RSS {} -> {} KB ({}), slope {} MB/10 min; XLEN max {max_xlen}; ZCARD completed max {max_completed}; clients span {} and fds span {} over {} quiet samples; {gaps} event gaps; {} adds skipped (in flight bound)",
        at_from.unwrap_or(0),
        at_end.unwrap_or(0),
        growth.map_or("-".to_owned(), |g| format!("{g:+.1} %")),
        slope.map_or("-".to_owned(), |s| format!("{s:.2}")),
        clients_span.map_or("-".to_owned(), |d| d.to_string()),
        fds_span.map_or("-".to_owned(), |d| d.to_string()),
        quiet.len(),
        skipped_adds
    ));
    drop(proxy);
    let settled = super::Settled {
        producer: producer_ledger,
        workers,
        truth,
        metrics,
        drained_in: drained.unwrap_or_default(),
    };
    let extra = json!({
        "seed": seed, "faults": per_fault,
        "rss_kb": rss0, "growth_pct": growth, "slope_mb_per_10min": slope,
        "max_xlen": max_xlen, "max_completed": max_completed,
        "clients_span": clients_span, "fds_span": fds_span, "event_gaps": gaps,
    });
    Ok(sc.finish(Some(&settled), Some(worst_resume), v, extra))
}
