//! Group C: the server's state. C1 `maxmemory` reached under `noeviction` during load; C2 a
//! wrong eviction policy, at start-up and changed at run time.

use std::time::{Duration, Instant};

use anyhow::Result;
use bullpen_conn::{Connection, RedisOptions};
use bullpen_testkit::RedisServer;
use serde_json::json;

use super::a_redis::quiet;
use super::ledger::{now_ms, AddResult};
use super::{blocking, Ctx, JobSpec, ProducerSpec, Scene, Verdict, TP};
use crate::integration::Outcome;

/// C1: during load, `CONFIG SET maxmemory` just above `used_memory`, back to 0 after the
/// hold. Adds fail at once with OOM, reported as not applied; nothing is lost and nothing is
/// completed twice; extra runs (finishes refused with OOM, then stalled) are explained.
pub async fn c1(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 2, 8).await?;
    let mut spec = ProducerSpec::new(&url, ctx.pick(150.0, 300.0));
    // Some jobs run for 1.5 s, so that finishes meet the limit too.
    spec.job = JobSpec {
        pad: 2_048,
        long_share: 0.05,
        long_ms: 1_500,
        ..JobSpec::default()
    };
    let producer = sc.producer(spec)?;
    sc.wait_acks(ctx.pick(150, 1_000), Duration::from_secs(30))
        .await?;
    let hold = ctx.pick(Duration::from_secs(6), Duration::from_secs(10));
    let used: u64 = blocking(|| server.info_field("used_memory"))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit = used + 1024 * 1024;
    let f = sc.begin("maxmemory");
    let t0 = sc.faults[f].start;
    blocking(|| server.admin(&["CONFIG", "SET", "maxmemory", &limit.to_string()]))?;
    tokio::time::sleep(hold).await;
    blocking(|| server.admin(&["CONFIG", "SET", "maxmemory", "0"]))?;
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let oom: Vec<u64> = s
        .producer
        .adds
        .iter()
        .filter(|a| matches!(&a.result, Some((AddResult::Fail(k), _)) if k == "oom"))
        .filter_map(|a| a.latency_ms())
        .collect();
    let oom_unknown = s
        .producer
        .adds
        .iter()
        .filter(|a| matches!(&a.result, Some((AddResult::Info(k), _)) if k == "oom"))
        .count();
    let finish_oom = s
        .workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.ack.as_ref().is_some_and(|(st, _)| st == "error:oom"))
        .count();
    let other_failures = s
        .producer
        .adds
        .iter()
        .filter(|a| a.t_inv >= t0 && a.t_inv <= healed)
        .filter(|a| matches!(&a.result, Some((AddResult::Fail(k) | AddResult::Info(k), _)) if k != "oom"))
        .count();
    let slowest = oom.iter().max().copied();
    let mut v = Verdict::default();
    v.note(format!(
        "maxmemory used+1MB ({limit} bytes) for {:.0}s",
        hold.as_secs_f64()
    ));
    v.standard(&s.metrics, false);
    v.require(
        !oom.is_empty(),
        "no add met the memory limit: the fault did not bite",
    );
    v.require(
        oom_unknown == 0,
        format!("{oom_unknown} OOM adds reported as unknown"),
    );
    if let Some(ms) = slowest {
        v.require(
            ms <= 1_000,
            format!("an OOM add took {ms} ms to fail (no retry storm: ≤ 1 s)"),
        );
    }
    v.note(format!(
        "{} adds refused with OOM (not applied, slowest {} ms), {other_failures} other add failures",
        oom.len(),
        slowest.unwrap_or(0)
    ));
    v.note(if finish_oom == 0 {
        "no finish was refused: Redis refuses a script without flags only at its first deny-oom write, and the finish scripts write a DEL first; fetches, renewals and stall checks were refused and retried".to_owned()
    } else {
        format!("{finish_oom} finishes refused with OOM (their jobs ran again after the stall check, explained)")
    });
    Ok(sc.finish(
        Some(&s),
        None,
        v,
        json!({"limit": limit, "oom_adds": oom.len(), "finish_oom": finish_oom}),
    ))
}

async fn probe(sc: &Scene, payload: &str, within: Duration) -> Result<u64> {
    sc.wait_start(payload, 0, within).await.map(|r| r.t_start)
}

/// C2: a server with `maxmemory-policy allkeys-lru` is refused by the worker and the
/// producer at construction, with a message naming `noeviction`. Run-time variant (reported,
/// not asserted): `CONFIG SET maxmemory-policy allkeys-lru` after connecting, then a
/// reconnect, then the policy restored.
pub async fn c2(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let mut sc = Scene::new(ctx, name, TP)?;
    let mut v = Verdict::default();
    // At start-up.
    let lru = blocking(|| {
        RedisServer::builder()
            .maxmemory_policy("allkeys-lru")
            .start()
    })?;
    let i = sc.spawn_worker(&lru.url(), |_| {})?;
    let exited = sc.workers[i]
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some();
    let w = &sc.read_workers()[i];
    let worker_msg = w.errors.last().map(|e| e.1.clone()).unwrap_or_default();
    v.require(
        exited && worker_msg.contains("noeviction"),
        format!("worker at start-up: exited {exited}, said `{worker_msg}`"),
    );
    let producer_msg =
        match Connection::connect(RedisOptions::from_url(&lru.url())?.producer()).await {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
    v.require(
        producer_msg.contains("noeviction"),
        format!("producer at start-up said `{producer_msg}`"),
    );
    v.note(format!(
        "refused at start-up: `{}`",
        worker_msg.chars().take(110).collect::<String>()
    ));
    drop(lru);
    // At run time.
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let w = sc.spawn_worker(&url, |c| c.concurrency = 2)?;
    sc.wait_ready(w, Duration::from_secs(10)).await?;
    let producer = sc.producer(ProducerSpec::new(&url, 0.0))?;
    let (p1, _) = producer.add_one("n", 5).await?;
    probe(&sc, &p1, Duration::from_secs(10)).await?;
    blocking(|| server.admin(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]))?;
    let f = sc.begin("policy-allkeys-lru");
    let (p2, _) = producer.add_one("n", 5).await?;
    let while_connected = probe(&sc, &p2, Duration::from_secs(5)).await.is_ok();
    blocking(|| server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]))?;
    // The producer's reconnect meets the same check: its add is refused at once.
    let (p3, id3) = producer.add_one("n", 5).await?;
    let after_reconnect = match id3 {
        Some(_) => probe(&sc, &p3, Duration::from_secs(3)).await.is_ok(),
        None => false,
    };
    let add_refused = id3.is_none();
    let errors_seen = sc.read_workers()[w].errors.len();
    blocking(|| server.admin(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]))?;
    let fixed_at = now_ms();
    sc.heal(f);
    // A new job, added once the producer is accepted again, must run.
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while resumed.is_none() && Instant::now() < deadline {
        let (p4, id4) = producer.add_one("n", 5).await?;
        if id4.is_some() {
            resumed = probe(&sc, &p4, Duration::from_secs(10)).await.ok();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    v.standard(&s.metrics, false);
    v.note(format!(
        "run time (reported): a job {} while connected after CONFIG SET allkeys-lru (the policy is checked only when a connection is made); after CLIENT KILL the producer's add {} and the worker {}; a job ran {} after the policy was restored; {errors_seen} worker error events meanwhile",
        if while_connected { "still ran" } else { "did not run" },
        if add_refused { "was refused at once with the policy message" } else { "was accepted" },
        if after_reconnect { "went on" } else { "stopped fetching (its reconnect refused)" },
        resumed.map_or("never".to_owned(), |t| format!("{} ms", t.saturating_sub(fixed_at)))
    ));
    v.require(
        resumed.is_some(),
        "the worker did not resume after the policy was restored",
    );
    Ok(sc.finish(
        Some(&s),
        None,
        v,
        json!({"runtime_detected_while_connected": !while_connected, "refused_on_reconnect": !after_reconnect}),
    ))
}
