//! `cargo xtask demo`: the connection lifecycle, live, with measured times.
//!
//! It starts a private redis-server (AOF on), opens a worker-preset connection and a
//! producer-preset connection, runs a steady stream of `INCR`s, then `kill -9`s the server,
//! keeps it down for 3 s, restarts it, and prints what happened and how long each step took.
//! Later issues grow this into the full job demo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bullpen_conn::{redis, ConnEvent, Connection, RedisOptions, RetryStrategy};
use bullpen_testkit::RedisServer;

use crate::redis_install::ensure_redis;

const OUTAGE: Duration = Duration::from_secs(3);

pub fn run(_args: &[String]) -> Result<()> {
    ensure_redis()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo())
}

fn stamp(t0: Instant) -> String {
    format!("[{:>7.3}s]", t0.elapsed().as_secs_f64())
}

async fn demo() -> Result<()> {
    let t0 = Instant::now();
    let mut server = RedisServer::builder()
        .aof()
        .start()
        .context("starting a private redis-server")?;
    println!(
        "{} started a private redis-server (pid {}, AOF everysec) at {}",
        stamp(t0),
        server.pid().unwrap_or(0),
        server.url()
    );

    // The worker preset with a demo-sized backoff (100 ms doubling to 1 s); production
    // defaults are 1 s to 5 s for workers and 1 s to 20 s for the plain default.
    let worker_opts = RedisOptions::from_url(&server.url())?
        .worker()
        .with_client_name("bullpen-demo-worker")
        .with_retry_strategy(RetryStrategy::exponential(
            Duration::from_millis(100),
            Duration::from_millis(100),
            Duration::from_secs(1),
        ));
    let worker = Connection::connect(worker_opts).await?;
    let producer = Connection::connect(RedisOptions::from_url(&server.url())?.producer()).await?;
    let h = worker.health().await?;
    println!(
        "{} worker connection ready: {} {} ({}), maxmemory-policy {}, ping {:?}",
        stamp(t0),
        h.kind,
        h.version,
        h.role.as_deref().unwrap_or("?"),
        h.maxmemory_policy.as_deref().unwrap_or("?"),
        h.ping_latency
    );

    // Print lifecycle events as they happen.
    let mut events = worker.events();
    let ready_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let printer = {
        let ready_at = ready_at.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                let line = match &ev {
                    ConnEvent::Connect => "event Connect (socket open, handshake next)".to_owned(),
                    ConnEvent::Ready { server } => {
                        if let Ok(mut r) = ready_at.lock() {
                            *r = Some(Instant::now());
                        }
                        format!(
                            "event Ready ({})",
                            server
                                .as_ref()
                                .map_or("?".into(), |s| format!("{} {}", s.kind, s.version))
                        )
                    }
                    ConnEvent::Error { error } => format!("event Error: {error}"),
                    ConnEvent::Close => "event Close (connection lost)".to_owned(),
                    ConnEvent::Reconnecting { attempt, delay } => {
                        format!("event Reconnecting attempt {attempt}, backoff {delay:?}")
                    }
                    ConnEvent::End { reason } => format!("event End ({reason})"),
                    other => format!("event {other:?}"),
                };
                println!("{} {line}", stamp(t0));
            }
        })
    };

    // Steady traffic: one INCR every 50 ms, each awaited; the worker preset never gives up.
    let acked = Arc::new(AtomicU64::new(0));
    let last_ok = Arc::new(std::sync::Mutex::new(Instant::now()));
    let traffic = {
        let (worker, acked, last_ok) = (worker.clone(), acked.clone(), last_ok.clone());
        tokio::spawn(async move {
            loop {
                if worker
                    .query::<i64>(redis::cmd("INCR").arg("demo:counter"))
                    .await
                    .is_ok()
                {
                    acked.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut l) = last_ok.lock() {
                        *l = Instant::now();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.load(Ordering::SeqCst);
    println!(
        "{} {before} INCRs acknowledged; now kill -9 redis-server",
        stamp(t0)
    );

    // Let everysec fsync what was acknowledged so far (Redis' own A2 window is not the point).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    server.kill9()?;
    let killed = Instant::now();
    println!("{} killed redis-server with SIGKILL", stamp(t0));

    let t = Instant::now();
    let err = producer
        .query::<i64>(redis::cmd("INCR").arg("demo:producer"))
        .await
        .err();
    let fail_fast = t.elapsed();
    println!(
        "{} producer call failed fast in {:?}: {}",
        stamp(t0),
        fail_fast,
        err.map_or("(it did not fail?)".into(), |e| e.to_string())
    );

    tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
    let acked_at_restart = acked.load(Ordering::SeqCst);
    server.restart()?;
    let restarted = Instant::now();
    println!(
        "{} restarted redis-server (pid {}) on the same port and AOF, {:?} after the kill",
        stamp(t0),
        server.pid().unwrap_or(0),
        restarted - killed
    );

    // Wait for the first acknowledged command after the restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) == acked_at_restart {
        anyhow::ensure!(
            Instant::now() < deadline,
            "worker did not resume within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_ok = last_ok
        .lock()
        .map(|l| *l)
        .unwrap_or_else(|_| Instant::now());
    let ready = ready_at.lock().ok().and_then(|r| *r).unwrap_or(first_ok);
    tokio::time::sleep(Duration::from_secs(1)).await;
    traffic.abort();
    let _ = traffic.await;
    let total_acked = acked.load(Ordering::SeqCst);
    let stored: i64 = worker.query(redis::cmd("GET").arg("demo:counter")).await?;
    let producer_back = producer.ping().await.is_ok();
    worker.close();
    producer.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.abort();

    let restart_to_ready = ready.saturating_duration_since(restarted);
    let restart_to_first = first_ok.saturating_duration_since(restarted);
    println!();
    println!("summary (measured in this run)");
    println!(
        "  outage (kill -9 to restart)            {:>10.3} s",
        (restarted - killed).as_secs_f64()
    );
    println!(
        "  producer fail-fast while down          {:>10.3} s  (promise: <= 2 s)",
        fail_fast.as_secs_f64()
    );
    println!(
        "  restart -> worker connection ready     {:>10.3} s",
        restart_to_ready.as_secs_f64()
    );
    println!(
        "  restart -> first command acknowledged  {:>10.3} s  (promise: <= 5 s)",
        restart_to_first.as_secs_f64()
    );
    println!(
        "  producer connection back after restart {:>10}",
        if producer_back { "yes" } else { "no" }
    );
    println!("  INCRs acknowledged                     {total_acked:>10}");
    println!("  counter stored in redis after restart  {stored:>10}");
    let lost = i64::try_from(total_acked).unwrap_or(i64::MAX) - stored;
    println!(
        "  acknowledged writes lost               {:>10}",
        lost.max(0)
    );
    anyhow::ensure!(lost <= 0, "acknowledged writes were lost");
    anyhow::ensure!(
        fail_fast <= Duration::from_millis(2_500),
        "producer did not fail fast"
    );
    Ok(())
}
