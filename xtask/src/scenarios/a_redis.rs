//! Group A: the Redis process fails. A1 `kill -9` and restart on the same AOF; A2 restart
//! with no persistence (ids reused); A4 SIGSTOP; A6 `SCRIPT FLUSH` while jobs run.

use std::time::Duration;

use anyhow::Result;
use bullpen_testkit::RedisServer;
use serde_json::json;

use super::ledger::{first_fresh_ack_ok_after, AddResult, ProducerLedger, WorkerLedger};
use super::{blocking, since, Ctx, ProducerSpec, Scene, Verdict, PRODUCER_BOUND, RESUME_BOUND, TP};
use crate::integration::Outcome;

/// Quiet load after the heal: lock + 3 × stalled interval in the full tier (the plan's run
/// shape), 1 s in the fast tier (the drain still waits for every stalled job).
pub fn quiet(ctx: &Ctx) -> Duration {
    ctx.pick(Duration::from_secs(1), TP.lock + TP.stalled * 3)
}

/// Adds made during `[from, to]` that did not succeed, and the slowest of their answers.
pub fn failed_adds_between(p: &ProducerLedger, from: u64, to: u64) -> (usize, Option<u64>) {
    let failed: Vec<u64> = p
        .adds
        .iter()
        .filter(|a| a.t_inv >= from && a.t_inv <= to)
        .filter(|a| !matches!(a.result, Some((AddResult::Ok { .. }, _))))
        .filter_map(|a| a.latency_ms())
        .collect();
    (failed.len(), failed.iter().copied().max())
}

/// Requires every failed add in the window to have answered within 2 s (P6/P8).
pub fn require_fast_failures(v: &mut Verdict, p: &ProducerLedger, from: u64, to: u64) {
    let (n, slowest) = failed_adds_between(p, from, to);
    if let Some(ms) = slowest {
        v.require(
            Duration::from_millis(ms) <= PRODUCER_BOUND,
            format!("a failed add took {ms} ms (bound 2000 ms)"),
        );
    }
    v.note(format!(
        "{n} adds failed during the fault, slowest answer {}",
        slowest.map_or("-".to_owned(), |ms| format!("{ms} ms"))
    ));
}

/// Worker errors and producer failures that show `code` to the user.
pub fn surfaced(workers: &[WorkerLedger], p: &ProducerLedger, code: &str) -> usize {
    let lower = code.to_ascii_lowercase();
    let w: usize = workers
        .iter()
        .map(|w| w.errors.iter().filter(|(_, m)| m.contains(code)).count())
        .sum();
    let a = p
        .adds
        .iter()
        .filter(|a| match &a.result {
            Some((AddResult::Fail(k) | AddResult::Info(k), _)) => *k == lower,
            _ => false,
        })
        .count();
    w + a
}

/// Finishes that the fault interrupted and that were retried after the heal: runs started
/// before `fault_start` and acknowledged after `healed`, by outcome.
fn retried_finishes(workers: &[WorkerLedger], fault_start: u64, healed: u64) -> (usize, usize) {
    let runs: Vec<_> = workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.t_start < fault_start)
        .filter(|r| r.ack.as_ref().is_some_and(|(_, t)| *t >= healed))
        .collect();
    (runs.len(), runs.iter().filter(|r| r.acked_ok()).count())
}

async fn load_and_warm(
    sc: &mut Scene,
    ctx: &Ctx,
    url: &str,
    custom_ids: bool,
) -> Result<super::Producer> {
    sc.start_workers(url, 2, 8).await?;
    let mut spec = ProducerSpec::new(url, ctx.pick(150.0, 300.0));
    spec.custom_ids = custom_ids;
    let producer = sc.producer(spec)?;
    sc.wait_acks(ctx.pick(150, 1_000), Duration::from_secs(30))
        .await?;
    Ok(producer)
}

/// A1: `kill -9` of Redis, an outage of `outage`, a restart on the same AOF
/// (`appendfsync fsync`). 0 acknowledged jobs lost, adds in the outage answer within 2 s,
/// workers resume within 5 s of Redis being ready, `LOADING` and `NOSCRIPT` never surface.
pub async fn a1(ctx: &Ctx, name: &str, outage: Duration, fsync: &str) -> Result<Outcome> {
    let fsync_owned = fsync.to_owned();
    let mut server = blocking(|| {
        RedisServer::builder()
            .aof()
            .config("appendfsync", &fsync_owned)
            .start()
    })?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let producer = load_and_warm(&mut sc, ctx, &url, true).await?;
    let f = sc.begin("kill-9-redis");
    let t_kill = sc.faults[f].start;
    blocking(|| server.kill9())?;
    tokio::time::sleep(outage).await;
    blocking(|| server.restart())?;
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    let mut v = Verdict::default();
    v.note(format!(
        "outage {:.1}s, appendfsync {fsync}",
        outage.as_secs_f64()
    ));
    v.standard(&s.metrics, false);
    v.resume(
        "first completion after Redis was ready",
        resume,
        RESUME_BOUND,
    );
    require_fast_failures(&mut v, &s.producer, t_kill, healed);
    let loading = surfaced(&s.workers, &s.producer, "LOADING");
    let noscript = surfaced(&s.workers, &s.producer, "NOSCRIPT");
    v.require(
        loading + noscript == 0,
        format!("LOADING surfaced {loading} times, NOSCRIPT {noscript} times"),
    );
    let (retried, ok) = retried_finishes(&s.workers, t_kill, healed);
    v.note(format!(
        "{retried} finishes of runs started before the kill answered after the restart ({ok} accepted)"
    ));
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"outage_ms": outage.as_millis() as u64, "appendfsync": fsync}),
    ))
}

/// A2: `kill -9` and a restart with no persistence: everything pending is lost (measured,
/// not asserted), ids restart at 1, and an old run's finish must never complete the new job
/// that reuses its id (0 cross-completions). Workers resume within 5 s, none crash-loops.
pub async fn a2(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let mut server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let producer = load_and_warm(&mut sc, ctx, &url, false).await?;
    let f = sc.begin("kill-9-redis-no-persistence");
    let t_kill = sc.faults[f].start;
    blocking(|| server.kill9())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocking(|| server.restart())?;
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let alive = sc
        .workers
        .iter_mut()
        .map(|w| w.exited().is_none())
        .filter(|alive| *alive)
        .count();
    let mut opts = sc.check_opts();
    opts.measured_loss = true;
    opts.ledger_done = true;
    opts.events_complete = false;
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    // An old run (started before the kill) whose finish was accepted after the restart
    // completed whatever job now has its id.
    let cross = s
        .workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.t_start < t_kill)
        .filter(|r| r.acked_ok() && r.ack.as_ref().is_some_and(|(_, t)| *t >= t_kill))
        .count();
    let reused = s
        .producer
        .adds
        .iter()
        .filter(|a| a.t_inv >= healed)
        .filter_map(|a| match &a.result {
            Some((AddResult::Ok { job_id, .. }, _)) => Some(job_id.clone()),
            _ => None,
        })
        .filter(|id| {
            s.producer.adds.iter().any(|b| {
                b.t_inv < t_kill
                    && matches!(&b.result, Some((AddResult::Ok { job_id, .. }, _)) if job_id == id)
            })
        })
        .count();
    let mut v = Verdict::default();
    v.standard(&s.metrics, true);
    v.require(
        cross == 0,
        format!("{cross} cross-completions of reused ids"),
    );
    v.require(
        alive == 2,
        format!("only {alive} of 2 worker processes alive after the restart"),
    );
    v.resume(
        "first completion after the empty restart",
        resume,
        RESUME_BOUND,
    );
    v.note(format!(
        "{reused} job ids reused after the restart, 0 cross-completions required"
    ));
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"reused_ids": reused, "cross_completions": cross}),
    ))
}

/// A4: Redis SIGSTOPped for `pause`. Shorter than the lock: no lock lost and no extra run.
/// Longer: lost locks are reported, every extra run is explained, the stale finish is
/// refused; adds fail within 2 s; workers resume within 5 s of SIGCONT.
pub async fn a4(ctx: &Ctx, name: &str, pause: Duration) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let producer = load_and_warm(&mut sc, ctx, &url, true).await?;
    let f = sc.begin("sigstop-redis");
    let t_stop = sc.faults[f].start;
    server.pause()?;
    tokio::time::sleep(pause).await;
    server.resume()?;
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    let m = &s.metrics;
    let mut v = Verdict::default();
    v.note(format!("SIGSTOP {:.1}s", pause.as_secs_f64()));
    v.standard(m, false);
    if pause < TP.lock {
        v.require(
            m.lock_lost == 0,
            format!(
                "{} locks lost in a pause shorter than the lock",
                m.lock_lost
            ),
        );
        v.require(
            m.extra == 0,
            format!(
                "{} extra executions in a pause shorter than the lock",
                m.extra
            ),
        );
    }
    let refused = s
        .workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.ack.as_ref().is_some_and(|(st, _)| st == "lock_lost"))
        .count();
    let errors: usize = s
        .workers
        .iter()
        .map(|w| w.errors.iter().filter(|(t, _)| *t >= t_stop).count())
        .sum();
    v.note(format!(
        "{} locks lost, {refused} stale finishes refused, {errors} worker errors from the stop on",
        m.lock_lost
    ));
    v.resume("first completion after SIGCONT", resume, RESUME_BOUND);
    require_fast_failures(&mut v, &s.producer, t_stop, healed);
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"pause_ms": pause.as_millis() as u64}),
    ))
}

/// A6: `SCRIPT FLUSH` again and again while jobs run: no `NOSCRIPT` ever reaches the user.
pub async fn a6(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let producer = load_and_warm(&mut sc, ctx, &url, true).await?;
    let (flushes, every) = ctx.pick((5, Duration::from_secs(1)), (10, Duration::from_secs(3)));
    for _ in 0..flushes {
        tokio::time::sleep(every).await;
        let f = sc.begin("script-flush");
        blocking(|| server.admin(&["SCRIPT", "FLUSH"]))?;
        sc.heal(f);
    }
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let noscript = surfaced(&s.workers, &s.producer, "NOSCRIPT");
    let mut v = Verdict::default();
    v.note(format!(
        "{flushes} SCRIPT FLUSH, one every {:.0}s",
        every.as_secs_f64()
    ));
    v.standard(&s.metrics, false);
    v.require(noscript == 0, format!("NOSCRIPT surfaced {noscript} times"));
    let errors: usize = s.workers.iter().map(|w| w.errors.len()).sum();
    v.note(format!(
        "NOSCRIPT surfaced 0 times; {errors} worker errors in all"
    ));
    Ok(sc.finish(Some(&s), None, v, json!({"flushes": flushes})))
}
