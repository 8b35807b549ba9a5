//! Group D: topologies. D1 Sentinel failover, (a) `kill -9` of the master and (b)
//! `SENTINEL FAILOVER`; D4 a queue without a hash tag on a Redis Cluster.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::job::Job;
use bullpen_producer::{Queue, QueueOptions};
use bullpen_testkit::{ClusterTopology, SentinelTopology, MASTER_NAME};
use bullpen_worker::{from_fn, JobContext, JobError, Worker, WorkerOptions};
use serde_json::{json, Value};

use super::a_redis::quiet;
use super::ledger::first_fresh_ack_ok_after;
use super::{blocking, since, Ctx, ProducerSpec, Scene, Verdict, FAILOVER_RESUME_BOUND, TP};
use crate::integration::Outcome;

/// D1: Sentinel (1 master, 1 replica, 3 sentinels) failover under load, by `kill -9` of
/// the master (`kill`) or by `SENTINEL FAILOVER`. Work resumes within 10 s after the
/// sentinels name the new master; nothing is completed twice by the server. Loss is
/// measured after a kill (asynchronous replication). After `SENTINEL FAILOVER` (with
/// `min-replicas-to-write 1` on the master, as docs/production.md advises) it is measured
/// and must stay within the adds in flight at the promotion (before the Sentinel watch, the
/// old master silently took about 10 s of writes).
pub async fn d1(ctx: &Ctx, name: &str, kill: bool) -> Result<Outcome> {
    let mut topo = blocking(SentinelTopology::start)?;
    // The topology is up once the sentinels know it, which is before the replica's first
    // full sync (diskless, delayed 5 s by default): a failover before it would promote an
    // empty replica.
    let start = Instant::now();
    while blocking(|| topo.replica.info_field("master_link_status"))?.as_deref() != Some("up") {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the replica did not finish its first sync within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced_in = start.elapsed();
    if !kill {
        // What docs/production.md advises for Sentinel: a master that has lost its replica
        // refuses writes (NOREPLICAS, not applied) instead of acknowledging writes that the
        // failover will discard. With it, the writes sent to the old master between the
        // promotion of its replica and the moment the clients follow the sentinels are
        // refused and sent again to the new master; only Redis's replication window remains.
        blocking(|| {
            topo.master
                .admin(&["CONFIG", "SET", "min-replicas-to-write", "1"])
                .map(drop)
        })?;
    }
    let url = topo.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let (workers, concurrency) = (2, 8);
    sc.start_workers(&url, workers, concurrency).await?;
    let spec = ProducerSpec::new(&url, ctx.pick(100.0, 250.0));
    let in_flight = spec.in_flight;
    let producer = sc.producer(spec)?;
    sc.wait_acks(ctx.pick(150, 1_000), Duration::from_secs(30))
        .await?;
    let old = blocking(|| topo.current_master_port())?;
    let f = sc.begin(if kill {
        "kill-9-master"
    } else {
        "sentinel-failover"
    });
    let t0 = sc.faults[f].start;
    if kill {
        blocking(|| topo.master.kill9())?;
    } else {
        blocking(|| topo.ask_sentinel(&["SENTINEL", "FAILOVER", MASTER_NAME]))?;
    }
    let start = Instant::now();
    let new = loop {
        if let Ok(p) = blocking(|| topo.current_master_port()) {
            if p != old {
                break p;
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the sentinels named no new master within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let switched = sc.heal(f);
    // Without a kill the old master stays up; the sentinels demote it to a replica of the
    // new master some seconds later. Until then it still accepts writes as a master.
    let mut demoted = None;
    if !kill {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if blocking(|| topo.master.info_field("role"))?.as_deref() == Some("slave") {
                demoted = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(quiet(ctx)).await;
    let mut opts = sc.check_opts();
    // `SENTINEL FAILOVER` does not pause writers: an add acknowledged by the old master just
    // before its replica was promoted, and not yet replicated, is lost (asynchronous
    // replication). So the loss is measured here too, and bounded by the adds in flight.
    opts.measured_loss = true;
    opts.failover = true;
    opts.events_complete = !kill;
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let resume = since(switched, first_fresh_ack_ok_after(&s.workers, switched));
    let m = &s.metrics;
    let mut v = Verdict::default();
    v.note(format!(
        "master {old} -> {new} in {} ms (replica synced {:.1}s after start-up)",
        switched.saturating_sub(t0),
        synced_in.as_secs_f64()
    ));
    v.standard(m, true);
    v.resume(
        "first completion after the failover",
        resume,
        FAILOVER_RESUME_BOUND,
    );
    if !kill {
        v.require(
            m.lost <= in_flight,
            format!(
                "{} acknowledged jobs lost, more than the {in_flight} adds that can be in flight at the promotion (e.g. {:?})",
                m.lost, m.lost_examples
            ),
        );
        // The same window for completions: one acknowledged by the old master just before
        // the promotion and not yet replicated is lost, and its job runs again (an extra run,
        // never a second completion). At most the jobs that were running.
        let running = workers * concurrency;
        v.require(
            m.twice_after_loss <= running,
            format!(
                "{} completions acknowledged by the old master were lost and the jobs ran again, more than the {running} jobs that can be running",
                m.twice_after_loss
            ),
        );
        v.note(format!(
            "the old master was demoted {} after the sentinels named the new one (connections follow the sentinels' announcement instead of waiting for it)",
            demoted.map_or("not within 20 s".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
        ));
    }
    v.note(format!(
        "{} jobs completed on the old master, lost with it and run again",
        m.twice_after_loss
    ));
    drop(topo);
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"old_master": old, "new_master": new, "kill": kill}),
    ))
}

/// D4: on a Redis Cluster, a queue whose prefix has no hash tag is refused at construction
/// (producer and worker), with an error that suggests `{…}`.
/// D2: Redis Cluster failover under load (3+3 nodes, 3,000 jobs at concurrency 16): `a` is a
/// `CLUSTER FAILOVER` on the replica of the queue's slot owner (0 lost), `b` a `kill -9` of
/// the owner (loss measured). Both: 0 completed twice, resume ≤ 10 s after the new master.
pub async fn d2(name: &str, variant: char) -> Result<Outcome> {
    let t = Instant::now();
    let jobs = 3_000;
    let (lost, twice, resume, detail) = crate::cluster_failover::run_d2(variant, jobs).await?;
    let ok = twice == 0 && (variant == 'b' || lost == 0) && resume <= FAILOVER_RESUME_BOUND;
    let detail = if variant == 'b' {
        format!("measured loss {lost} of {jobs}; {detail}")
    } else {
        detail
    };
    Ok(Outcome {
        cell: name.to_owned(),
        ok,
        skipped: false,
        detail,
        jobs,
        lost,
        twice,
        resume: Some(resume),
        took: t.elapsed(),
        report: None,
    })
}

pub async fn d4(ctx: &Ctx, name: &str, cluster_url: Option<&str>) -> Result<Outcome> {
    let sc = Scene::new(ctx, name, TP)?;
    let own = match cluster_url {
        Some(_) => None,
        None => Some(blocking(ClusterTopology::start)?),
    };
    let url = cluster_url
        .map(str::to_owned)
        .or_else(|| own.as_ref().map(ClusterTopology::url))
        .ok_or_else(|| anyhow!("no cluster"))?;
    let mut v = Verdict::default();
    let conn = Connection::connect(RedisOptions::from_url(&url)?.producer()).await?;
    let queue = match Queue::new(conn.clone(), "d4", QueueOptions::default()).await {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.to_string(),
    };
    conn.close();
    v.require(
        queue.contains("{bull}"),
        format!("Queue::new said `{queue}`"),
    );
    let processor =
        from_fn(|_job: Job<Value>, _ctx: JobContext| async move { Ok::<_, JobError>(Value::Null) });
    let worker = match Worker::start(
        RedisOptions::from_url(&url)?.worker(),
        "d4",
        processor,
        WorkerOptions::builder().build()?,
    )
    .await
    {
        Ok(w) => {
            w.close(Duration::from_secs(1)).await;
            "accepted".to_owned()
        }
        Err(e) => e.to_string(),
    };
    v.require(
        worker.contains("{bull}"),
        format!("Worker::start said `{worker}`"),
    );
    v.note(format!("refused at construction: `{queue}`"));
    Ok(sc.finish(
        None,
        None,
        v,
        json!({"queue_error": queue, "worker_error": worker}),
    ))
}
