//! Group E: worker processes fail. E1 `kill -9` mid-job; E2 a poison job that aborts its
//! worker every time, under a supervisor; E3 SIGTERM with a short and a long job; E5 the
//! worker SIGSTOPped for longer than the lock.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bullpen_conn::redis;
use bullpen_testkit::RedisServer;
use nix::sys::signal::Signal;
use serde_json::json;

use super::a_redis::quiet;
use super::ledger::Run;
use super::{blocking, check_connection, event_count, Ctx, ProducerSpec, Scene, Verdict, TP};
use crate::integration::Outcome;

/// The runs of `payload`, oldest first.
fn runs_of<'a>(s: &'a super::Settled, payload: &str) -> Vec<&'a Run> {
    let mut runs: Vec<&Run> = s
        .workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.payload == payload)
        .collect();
    runs.sort_by_key(|r| r.t_start);
    runs
}

/// E1: a worker process is killed with `kill -9` while it runs a 3 s job; another worker
/// stays alive. The job runs again within lock + 2 × stalled interval + 1 s (7 s), its
/// `stalledCounter` is 1 with one `stalled` event, and it is completed exactly once.
pub async fn e1(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 1, 4).await?;
    let producer = sc.producer(ProducerSpec::new(&url, ctx.pick(30.0, 100.0)))?;
    let (x, job) = producer.add_one("long", 3_000).await?;
    let job = job.ok_or_else(|| anyhow!("the long job was not added"))?;
    sc.wait_start(&x, 0, Duration::from_secs(10)).await?;
    sc.start_workers(&url, 1, 4).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f = sc.begin("kill-9-worker");
    sc.workers[0].kill9()?;
    let t_kill = sc.heal(f);
    let rerun = sc.wait_start(&x, t_kill, Duration::from_secs(20)).await?;
    let recovery = Duration::from_millis(rerun.t_start.saturating_sub(t_kill));
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let runs = runs_of(&s, &x);
    let oks = runs.iter().filter(|r| r.acked_ok()).count();
    let stc = s.truth.jobs.get(&job).map(|j| j.stc).unwrap_or(0);
    let stalled = event_count(&s.truth.events, &job, "stalled");
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    v.resume("re-run after kill -9", Some(recovery), TP.rerun_bound());
    v.require(
        stc == 1 && stalled == 1,
        format!("job {job}: stalledCounter {stc}, {stalled} stalled events"),
    );
    v.require(oks == 1, format!("job {job} acknowledged ok {oks} times"));
    v.require(
        rerun.worker != 0,
        "the job re-ran in the killed worker's ledger",
    );
    v.note(format!(
        "job {job} re-ran {:.2}s after kill -9 (bound {:.0}s); stalledCounter 1; one ACK ok",
        recovery.as_secs_f64(),
        TP.rerun_bound().as_secs_f64()
    ));
    Ok(sc.finish(
        Some(&s),
        Some(recovery),
        v,
        json!({"job": job, "recovery_ms": recovery.as_millis() as u64}),
    ))
}

/// E2: a poison job aborts its worker process every time it runs; a supervisor restarts the
/// worker. The job is failed after exactly maxStalledCount + 1 starts, with "job stalled
/// more than allowable limit", and stays failed; other jobs are unaffected.
pub async fn e2(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 1, 4).await?;
    let producer = sc.producer(ProducerSpec::new(&url, ctx.pick(20.0, 50.0)))?;
    sc.wait_acks(10, Duration::from_secs(20)).await?;
    let (poison, job) = producer.add_one("abort", 0).await?;
    let job = job.ok_or_else(|| anyhow!("the poison job was not added"))?;
    let conn = check_connection(&url).await?;
    let failed_key = sc.keys()?.key("failed");
    let start = Instant::now();
    let mut restarts = 0;
    let mut handled = HashSet::new();
    loop {
        let score: Option<f64> = conn
            .query(redis::cmd("ZSCORE").arg(&failed_key).arg(&job))
            .await?;
        if score.is_some() {
            break;
        }
        for i in 0..sc.workers.len() {
            if !handled.contains(&i) && sc.workers[i].exited().is_some() {
                handled.insert(i);
                let f = sc.begin("poison-abort");
                sc.heal(f);
                restarts += 1;
                let n = sc.spawn_worker(&url, |c| c.concurrency = 4)?;
                sc.wait_ready(n, Duration::from_secs(10)).await?;
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the poison job was not failed within 60 s ({restarts} restarts)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It stays failed (not deleted, not retried).
    tokio::time::sleep(Duration::from_secs(2) + TP.stalled * 2).await;
    let still: Option<f64> = conn
        .query(redis::cmd("ZSCORE").arg(&failed_key).arg(&job))
        .await?;
    conn.close();
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let starts = runs_of(&s, &poison).len();
    let reason = s
        .truth
        .jobs
        .get(&job)
        .and_then(|j| j.failed_reason.clone())
        .unwrap_or_default();
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    let want = TP.max_stalled as usize + 1;
    v.require(
        starts == want,
        format!("the poison job started {starts} times, not {want}"),
    );
    v.require(
        reason.contains("stalled more than allowable limit"),
        format!("failed with `{reason}`"),
    );
    v.require(still.is_some(), "the poison job left the failed set");
    v.note(format!(
        "poison job {job} started {starts} times ({restarts} worker restarts), failed with `{reason}`, still failed after {:.0}s",
        (Duration::from_secs(2) + TP.stalled * 2).as_secs_f64()
    ));
    Ok(sc.finish(
        Some(&s),
        None,
        v,
        json!({"job": job, "starts": starts, "restarts": restarts}),
    ))
}

/// E3: SIGTERM to a worker running a short (1 s) and a long job, grace 5 s. No job starts
/// after the signal; the short job completes once; the process exits within grace + 2 s;
/// the long job is handed back and runs once more (elsewhere), completing once.
pub async fn e3(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 1, 2).await?;
    let producer = sc.producer(ProducerSpec::new(&url, 0.0))?;
    let long_ms = ctx.pick(8_000, 20_000);
    let (short, _) = producer.add_one("n", 1_000).await?;
    let (long, long_job) = producer.add_one("long", long_ms).await?;
    let long_job = long_job.ok_or_else(|| anyhow!("the long job was not added"))?;
    sc.wait_start(&short, 0, Duration::from_secs(10)).await?;
    sc.wait_start(&long, 0, Duration::from_secs(10)).await?;
    let f = sc.begin("sigterm-worker");
    let t_sig = sc.faults[f].start;
    let signalled = Instant::now();
    sc.workers[0].signal(Signal::SIGTERM)?;
    for _ in 0..5 {
        producer.add_one("n", 5).await?;
    }
    let exited = sc.workers[0]
        .wait_exit(TP.grace + Duration::from_secs(5))
        .await
        .map(|at| at.duration_since(signalled));
    sc.heal(f);
    sc.start_workers(&url, 1, 2).await?;
    sc.wait_start(&long, t_sig, Duration::from_secs(15)).await?;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let w0 = &s.workers[0];
    let started_after = w0.runs.iter().filter(|r| r.t_start > t_sig).count();
    let short_runs = runs_of(&s, &short);
    let long_runs = runs_of(&s, &long);
    let short_ok = short_runs.iter().filter(|r| r.acked_ok()).count();
    let long_ok = long_runs.iter().filter(|r| r.acked_ok()).count();
    let long_effects = long_runs.iter().filter(|r| r.t_effect.is_some()).count();
    let stc = s.truth.jobs.get(&long_job).map(|j| j.stc).unwrap_or(0);
    let hand_back = w0
        .errors
        .iter()
        .find(|(_, m)| m.contains("back at close"))
        .map(|(_, m)| m.clone());
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    v.require(
        started_after == 0,
        format!("{started_after} jobs started in the worker after SIGTERM"),
    );
    v.require(
        short_runs.len() == 1 && short_ok == 1 && short_runs[0].worker == 0,
        format!("short job: {} runs, {short_ok} ACK ok", short_runs.len()),
    );
    v.resume(
        "exit after SIGTERM",
        exited,
        TP.grace + Duration::from_secs(2),
    );
    v.require(
        long_runs.len() == 2 && long_ok == 1 && long_effects == 1,
        format!(
            "long job: {} runs, {long_ok} ACK ok, {long_effects} effects",
            long_runs.len()
        ),
    );
    // Renewal must go on until the last job ends (bull #1615): with grace 5 s > lock 4 s, a
    // worker that stops renewing when the signal arrives loses the long job's lock before
    // the hand-back.
    v.require(
        hand_back.is_none() && stc == 0,
        format!(
            "the lock of the long job was not renewed during the grace period: {}",
            hand_back.as_deref().unwrap_or("stalledCounter > 0")
        ),
    );
    v.note(format!(
        "exit {:.2}s after SIGTERM (grace {:.0}s); short job once; long job handed back ({}) and run once more",
        exited.map_or(f64::NAN, |d| d.as_secs_f64()),
        TP.grace.as_secs_f64(),
        if stc == 0 { "at close, stc 0" } else { "by the stall check" }
    ));
    Ok(sc.finish(
        Some(&s),
        exited,
        v,
        json!({"long_ms": long_ms, "long_stc": stc}),
    ))
}

/// E5: the worker holding a 3 s job is SIGSTOPped for lock + 2 s, then continued. The job
/// runs again in the other worker (explained) within 7 s of the stop; when the stopped one
/// resumes, its finish is refused; the job is completed once.
pub async fn e5(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 1, 4).await?;
    let producer = sc.producer(ProducerSpec::new(&url, ctx.pick(30.0, 100.0)))?;
    let (x, job) = producer.add_one("long", 3_000).await?;
    let job = job.ok_or_else(|| anyhow!("the long job was not added"))?;
    sc.wait_start(&x, 0, Duration::from_secs(10)).await?;
    sc.start_workers(&url, 1, 4).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let f = sc.begin("sigstop-worker");
    let t_stop = sc.faults[f].start;
    sc.workers[0].signal(Signal::SIGSTOP)?;
    tokio::time::sleep(TP.lock + Duration::from_secs(2)).await;
    sc.workers[0].signal(Signal::SIGCONT)?;
    let t_cont = sc.heal(f);
    let rerun = sc.wait_start(&x, t_stop, Duration::from_secs(10)).await?;
    let recovery = Duration::from_millis(rerun.t_start.saturating_sub(t_stop));
    tokio::time::sleep(quiet(ctx) + Duration::from_secs(1)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let runs = runs_of(&s, &x);
    let oks = runs.iter().filter(|r| r.acked_ok()).count();
    let stale = runs.iter().find(|r| r.worker == 0);
    let stale_outcome = stale
        .and_then(|r| {
            r.ack
                .as_ref()
                .map(|(st, t)| (st.clone(), t.saturating_sub(t_cont)))
        })
        .map_or("none".to_owned(), |(st, after)| {
            format!("{st} {after} ms after SIGCONT")
        });
    let stale_refused = stale.is_some_and(|r| !r.acked_ok() && r.ack.is_some());
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    v.require(
        rerun.worker != 0,
        "the job did not run again in the other worker",
    );
    v.resume(
        "re-run elsewhere after SIGSTOP",
        Some(recovery),
        TP.rerun_bound(),
    );
    v.require(oks == 1, format!("job {job} acknowledged ok {oks} times"));
    v.require(
        stale_refused,
        format!("the resumed holder's finish was not refused: {stale_outcome}"),
    );
    v.note(format!(
        "job {job} re-ran in worker {} {:.2}s after SIGSTOP; the resumed holder's finish: {stale_outcome}",
        rerun.worker,
        recovery.as_secs_f64()
    ));
    Ok(sc.finish(
        Some(&s),
        Some(recovery),
        v,
        json!({"job": job, "recovery_ms": recovery.as_millis() as u64}),
    ))
}
