//! The worker workloads of `cargo xtask bench`: throughput of a no-op worker on a pre-filled
//! queue, and add-to-completed latency at a steady add rate, bullpen and Node BullMQ side by
//! side against the same redis-server.
//!
//! Each worker runs in a process of its own, so that its peak RSS is its own: bullpen's is
//! this binary run as `cargo xtask bench-worker-peer '<json>'` ([`worker_peer`]), Node's is
//! `tests/interop/bench_worker.mjs`. Both take the same JSON input, run one worker with a
//! no-op processor (returning `null`) until `n` jobs have completed, and print one JSON line:
//! `{elapsedMs, n, rssPeakKb, cpuMs}`.
//!
//! * Throughput (`worker_c{1,16,128}`, and `…_remove`): the queue is filled with 150,000
//!   [5,000] jobs by bullpen's `add_bulk` (untimed; the same jobs whichever side then
//!   processes them), then the peer runs. Its clock starts just before the worker is created
//!   and stops at the `n`-th completion (`n` = all of them, but 30,000 at concurrency 1 with
//!   full sizes), counted in the peer from the worker's own completion events
//!   (`WorkerEvent::Completed` / the `completed` event), which both libraries emit once the
//!   completion is stored. (Should bullpen's bounded event channel lag, its peer counts in
//!   Redis instead, polling every 2 ms, and says so.) Jobs keep everything (`{}` options,
//!   BullMQ's default: every completed job stays), or, in the `_remove` workloads, have
//!   `removeOnComplete: true`. Redis CPU per job is `used_cpu_user + used_cpu_sys`
//!   (`INFO`) after the peer exited minus before it started, divided by the jobs completed;
//!   `INFO commandstats` and the network byte counters cover the same span.
//! * Latency: the peer (concurrency 16) starts on an empty queue; once it is blocked waiting
//!   for jobs, this process adds jobs at a fixed rate (one `add` every 5 ms, 200 jobs/s,
//!   bullpen's producer for both sides, so only the worker differs). Latency of a job is
//!   `finishedOn - timestamp` from its hash (ms; both clocks are this machine's).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_producer::{BulkJob, Job, JobOptions, KeepJobs, Queue, QueueOptions};
use bullpen_testkit::node::{spawn_node, wait_node};
use bullpen_worker::{from_fn, JobContext, JobError, Worker, WorkerEvent, WorkerOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use super::{
    data_for, group_thousands, parse_commandstats, percentile, process_cpu_ms, queue_name, Bench,
    BenchData, Side, BATCH, JOB_NAME,
};

/// The hidden xtask subcommand that runs bullpen's worker peer.
pub const PEER_COMMAND: &str = "bench-worker-peer";
/// The Node peer.
const NODE_SCRIPT: &str = "bench_worker.mjs";
/// Worker concurrencies measured.
const CONCURRENCIES: [usize; 3] = [1, 16, 128];
/// Jobs in the queue before a throughput run starts, full sizes and `--quick`.
const FULL_PREFILL: u64 = 150_000;
const QUICK_PREFILL: u64 = 5_000;
/// Completions timed at concurrency 1 (full sizes). At 1,500 to 2,500 jobs/s, all 150,000
/// would take 60 to 100 s per run, about 16 minutes for the 12 runs of the two c = 1
/// workloads; so these runs stop after the first 30,000 of the 150,000 queued. Every other
/// run times all the jobs in the queue.
const FULL_C1_JOBS: u64 = 30_000;
/// The latency workload: add rate, how long it adds, the worker's concurrency.
pub(super) const LATENCY_RATE_PER_S: u64 = 200;
const LATENCY_SECS_FULL: u64 = 10;
const LATENCY_SECS_QUICK: u64 = 3;
pub(super) const LATENCY_CONCURRENCY: usize = 16;
/// How long the latency peer may take to be ready (blocked on the marker).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time the orchestrator gives a peer past its own `timeoutMs`.
const PEER_GRACE: Duration = Duration::from_secs(15);
/// How often bullpen's peer checks Redis when it had to stop counting events.
const POLL_EVERY: Duration = Duration::from_millis(2);
/// Grace of the peer's `Worker::close` once its `n` jobs are done.
const PEER_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// HMGETs per pipeline when reading the latency jobs back.
const READ_CHUNK: usize = 500;

// ---- workloads ----

/// One throughput workload: a concurrency, and whether jobs are removed on completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WorkerWorkload {
    pub concurrency: usize,
    pub remove: bool,
}

impl WorkerWorkload {
    /// The workloads, in the order they run.
    pub fn all() -> Vec<WorkerWorkload> {
        CONCURRENCIES
            .iter()
            .flat_map(|&c| {
                [false, true].map(|remove| WorkerWorkload {
                    concurrency: c,
                    remove,
                })
            })
            .collect()
    }

    /// `worker_c16`, `worker_c16_remove`.
    pub(super) fn key(self) -> String {
        format!(
            "worker_c{}{}",
            self.concurrency,
            if self.remove { "_remove" } else { "" }
        )
    }

    /// `c16`, `c16_remove`: the suffix of the per-workload keys in `bench.json`.
    pub(super) fn suffix(self) -> String {
        self.key().trim_start_matches("worker_").to_owned()
    }

    pub(super) fn retention(self) -> &'static str {
        if self.remove {
            "removeOnComplete: true"
        } else {
            "completed jobs kept"
        }
    }

    /// Jobs in the queue when the worker starts.
    pub fn prefill(self, quick: bool) -> u64 {
        if quick {
            QUICK_PREFILL
        } else {
            FULL_PREFILL
        }
    }

    /// Completions timed.
    pub fn n(self, quick: bool) -> u64 {
        if !quick && self.concurrency == 1 {
            FULL_C1_JOBS
        } else {
            self.prefill(quick)
        }
    }

    /// The job options of the pre-filled jobs.
    fn job_opts(self) -> JobOptions {
        let mut opts = JobOptions::default();
        if self.remove {
            opts.remove_on_complete = Some(KeepJobs::All);
        }
        opts
    }
}

/// Jobs the latency workload adds.
fn latency_jobs(quick: bool) -> u64 {
    LATENCY_RATE_PER_S
        * if quick {
            LATENCY_SECS_QUICK
        } else {
            LATENCY_SECS_FULL
        }
}

/// The time between two adds of the latency workload.
fn latency_period() -> Duration {
    Duration::from_secs(1) / u32::try_from(LATENCY_RATE_PER_S).unwrap_or(u32::MAX)
}

/// A generous bound on one throughput run: 60 s plus 4 ms per job (250 jobs/s).
fn run_timeout(n: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(4).saturating_mul(n.min(1 << 30) as u32)
}

/// The description of the worker part for `bench.json`.
pub(super) fn config_json(quick: bool) -> Value {
    json!({
        "concurrencies": CONCURRENCIES,
        "prefill": WorkerWorkload::all().iter().map(|w| (w.key(), w.prefill(quick))).collect::<BTreeMap<_, _>>(),
        "timed_completions": WorkerWorkload::all().iter().map(|w| (w.key(), w.n(quick))).collect::<BTreeMap<_, _>>(),
        "job_options": {"keep": {}, "remove": {"removeOnComplete": true}},
        "processor": "no-op, returns null",
        "prefilled_by": format!("bullpen add_bulk, {BATCH} jobs per call, untimed"),
        "timed": "worker start to the n-th completion event, counted in the worker process",
        "latency": {
            "rate_per_s": LATENCY_RATE_PER_S,
            "jobs": latency_jobs(quick),
            "concurrency": LATENCY_CONCURRENCY,
            "producer": "bullpen Queue::add, one every 5 ms, in the bench process",
            "latency": "finishedOn - timestamp of each job hash, ms",
        },
    })
}

// ---- pure helpers ----

/// `VmHWM` (peak RSS) of a `/proc/<pid>/status` text, in kB.
pub(super) fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Latencies in ms from `(timestamp, finishedOn)` field pairs; a job without both (not
/// finished, or gone) is an error.
fn latencies_ms(pairs: &[(Option<String>, Option<String>)]) -> Result<Vec<f64>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (ts, fin))| {
            let parse = |v: &Option<String>, what: &str| -> Result<i64> {
                v.as_deref()
                    .ok_or_else(|| anyhow!("job #{} has no {what}", i + 1))?
                    .parse::<i64>()
                    .with_context(|| format!("job #{}: {what} is not an integer", i + 1))
            };
            Ok((parse(fin, "finishedOn")? - parse(ts, "timestamp")?) as f64)
        })
        .collect()
}

/// `value -> count` of whole-ms latencies, for `bench.json`.
fn histogram(latencies: &[f64]) -> BTreeMap<i64, u64> {
    let mut h = BTreeMap::new();
    for &l in latencies {
        *h.entry(l.round() as i64).or_insert(0) += 1;
    }
    h
}

// ---- records ----

/// One throughput run.
#[derive(Clone, Debug)]
pub(super) struct WorkerRun {
    pub workload: WorkerWorkload,
    pub side: Side,
    pub rep: u32,
    pub queue: String,
    /// Jobs in the queue when the worker started.
    pub prefill: u64,
    /// Completions timed.
    pub n: u64,
    /// Jobs completed by the time the peer exited: `n`, or a few more at concurrency 1 with
    /// full sizes, where the run stops before the queue is empty. The per-job server figures
    /// divide by this.
    pub finished: u64,
    /// Worker start to the n-th completion, as the peer measured it.
    pub elapsed_ms: f64,
    /// redis-server CPU (user + system) from before the peer started to after it exited.
    pub redis_cpu_ms: f64,
    /// The server counters over the same span.
    pub server: ServerCounters,
    /// The peer process's CPU time over `elapsed_ms`.
    pub client_cpu_ms: Option<f64>,
    /// The peer process's peak RSS.
    pub rss_peak_kb: Option<u64>,
    /// `INFO commandstats` over the same span as `redis_cpu_ms`.
    pub commandstats: BTreeMap<String, (u64, u64)>,
    /// How bullpen's peer counted completions (`events`, or `redis` after a lag).
    pub counted_by: Option<String>,
}

impl WorkerRun {
    pub fn jobs_per_s(&self) -> f64 {
        self.n as f64 / (self.elapsed_ms / 1e3).max(1e-9)
    }

    pub fn redis_cpu_usec_per_job(&self) -> f64 {
        self.redis_cpu_ms * 1e3 / self.finished.max(1) as f64
    }

    pub fn client_cpu_usec_per_job(&self) -> Option<f64> {
        self.client_cpu_ms.map(|ms| ms * 1e3 / self.n.max(1) as f64)
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "workload": self.workload.key(),
            "side": self.side.key(),
            "rep": self.rep,
            "queue": self.queue,
            "prefill": self.prefill,
            "n": self.n,
            "concurrency": self.workload.concurrency,
            "remove_on_complete": self.workload.remove,
            "elapsed_ms": self.elapsed_ms,
            "value": self.jobs_per_s(),
            "unit": "jobs/s",
            "finished": self.finished,
            "redis_cpu_ms": self.redis_cpu_ms,
            "redis_cpu_usec_per_job": self.redis_cpu_usec_per_job(),
            "redis_cpu_user_usec_per_job": self.server.cpu_user_ms * 1e3 / self.finished.max(1) as f64,
            "redis_cpu_sys_usec_per_job": self.server.cpu_sys_ms * 1e3 / self.finished.max(1) as f64,
            "net_in_bytes_per_job": self.server.net_in_bytes / self.finished.max(1) as f64,
            "net_out_bytes_per_job": self.server.net_out_bytes / self.finished.max(1) as f64,
            "client_cpu_ms": self.client_cpu_ms,
            "client_cpu_usec_per_job": self.client_cpu_usec_per_job(),
            "rss_peak_kb": self.rss_peak_kb,
            "counted_by": self.counted_by,
            "commandstats": stats_json(&self.commandstats),
        })
    }
}

/// redis-server counters from `INFO`: CPU time (user and system, ms) and network bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct ServerCounters {
    pub cpu_user_ms: f64,
    pub cpu_sys_ms: f64,
    pub net_in_bytes: f64,
    pub net_out_bytes: f64,
}

impl ServerCounters {
    /// Parses an `INFO` text (its `cpu` and `stats` sections).
    pub fn parse(info: &str) -> Option<ServerCounters> {
        let field = |name: &str| -> Option<f64> {
            info.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse()
                    .ok()
            })
        };
        Some(ServerCounters {
            cpu_user_ms: field("used_cpu_user")? * 1e3,
            cpu_sys_ms: field("used_cpu_sys")? * 1e3,
            net_in_bytes: field("total_net_input_bytes")?,
            net_out_bytes: field("total_net_output_bytes")?,
        })
    }

    fn read(b: &Bench) -> Result<ServerCounters> {
        let info = b.admin(&["INFO"])?;
        ServerCounters::parse(&info).ok_or_else(|| anyhow!("INFO lacks CPU or network counters"))
    }

    pub fn minus(&self, earlier: &ServerCounters) -> ServerCounters {
        ServerCounters {
            cpu_user_ms: self.cpu_user_ms - earlier.cpu_user_ms,
            cpu_sys_ms: self.cpu_sys_ms - earlier.cpu_sys_ms,
            net_in_bytes: self.net_in_bytes - earlier.net_in_bytes,
            net_out_bytes: self.net_out_bytes - earlier.net_out_bytes,
        }
    }
}

/// One latency run.
#[derive(Clone, Debug)]
pub(super) struct LatencyRun {
    pub side: Side,
    pub rep: u32,
    pub queue: String,
    pub n: u64,
    /// Whole ms, one per job, in add order.
    pub latencies: Vec<f64>,
    pub redis_cpu_ms: f64,
    pub commandstats: BTreeMap<String, (u64, u64)>,
    pub rss_peak_kb: Option<u64>,
    /// From the first add to the last.
    pub adding_ms: f64,
}

impl LatencyRun {
    pub fn p50(&self) -> Option<f64> {
        percentile(&self.latencies, 50.0)
    }

    pub fn p99(&self) -> Option<f64> {
        percentile(&self.latencies, 99.0)
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.latencies.is_empty())
            .then(|| self.latencies.iter().sum::<f64>() / self.latencies.len() as f64)
    }

    pub fn max(&self) -> Option<f64> {
        percentile(&self.latencies, 100.0)
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "workload": "latency",
            "side": self.side.key(),
            "rep": self.rep,
            "queue": self.queue,
            "n": self.n,
            "adding_ms": self.adding_ms,
            "p50_ms": self.p50(),
            "p99_ms": self.p99(),
            "mean_ms": self.mean(),
            "max_ms": self.max(),
            "histogram_ms": histogram(&self.latencies),
            "redis_cpu_ms": self.redis_cpu_ms,
            "rss_peak_kb": self.rss_peak_kb,
            "commandstats": stats_json(&self.commandstats),
        })
    }
}

fn stats_json(stats: &BTreeMap<String, (u64, u64)>) -> Value {
    stats
        .iter()
        .map(|(k, (calls, usec))| (k.clone(), json!({"calls": calls, "usec": usec})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

// ---- running ----

/// Runs every throughput workload, `reps` times per side, alternating sides.
pub(super) async fn run_throughput(b: &mut Bench, reps: u32) -> Result<Vec<WorkerRun>> {
    let mut runs = Vec::new();
    for w in WorkerWorkload::all() {
        println!(
            "==> {} (n = {} of {} queued, concurrency {}, {}, {reps} reps per side)",
            w.key(),
            w.n(b.quick),
            w.prefill(b.quick),
            w.concurrency,
            w.retention()
        );
        for rep in 1..=reps {
            for side in b.sides() {
                let r = b
                    .run_worker_one(w, side, rep)
                    .await
                    .with_context(|| format!("{} rep {rep} ({})", w.key(), side.key()))?;
                println!(
                    "    rep {rep} {:<7} {:>9} jobs/s  ({:.2} s; per job: redis CPU {:.1} µs, worker CPU {}; worker peak RSS {}{})",
                    side.key(),
                    group_thousands(r.jobs_per_s()),
                    r.elapsed_ms / 1e3,
                    r.redis_cpu_usec_per_job(),
                    r.client_cpu_usec_per_job()
                        .map_or("-".to_owned(), |v| format!("{v:.1} µs")),
                    r.rss_peak_kb.map_or("-".to_owned(), mb),
                    match r.counted_by.as_deref() {
                        Some("redis") => "; events lagged, counted in Redis",
                        _ => "",
                    }
                );
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

/// Runs the latency workload, `reps` times per side, alternating sides.
pub(super) async fn run_latency(b: &mut Bench, reps: u32) -> Result<Vec<LatencyRun>> {
    let n = latency_jobs(b.quick);
    println!(
        "==> latency ({n} jobs added at {LATENCY_RATE_PER_S}/s, worker concurrency {LATENCY_CONCURRENCY}, {reps} reps per side)"
    );
    let mut runs = Vec::new();
    for rep in 1..=reps {
        for side in b.sides() {
            let r = b
                .run_latency_one(side, rep)
                .await
                .with_context(|| format!("latency rep {rep} ({})", side.key()))?;
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
            println!(
                "    rep {rep} {:<7} p50 {} ms, p99 {} ms, max {} ms, mean {:.2} ms  (adds took {:.2} s; worker peak RSS {})",
                side.key(),
                ms(r.p50()),
                ms(r.p99()),
                ms(r.max()),
                r.mean().unwrap_or(f64::NAN),
                r.adding_ms / 1e3,
                r.rss_peak_kb.map_or("-".to_owned(), mb),
            );
            runs.push(r);
        }
    }
    Ok(runs)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

impl Bench {
    fn sides(&self) -> Vec<Side> {
        if self.node {
            vec![Side::Bullpen, Side::Node]
        } else {
            vec![Side::Bullpen]
        }
    }

    fn count(&self, args: &[&str]) -> Result<u64> {
        self.admin(args)?
            .trim()
            .parse()
            .with_context(|| format!("reply to {}", args.join(" ")))
    }

    /// Adds `n` jobs to `queue` in bulk calls of [`BATCH`] (retention as the job options
    /// say, no queue defaults), and closes the connection.
    async fn fill_queue(&self, queue: &str, n: u64, opts: &JobOptions) -> Result<()> {
        let conn = Connection::connect(RedisOptions::from_url(&self.url)?.producer()).await?;
        let result = async {
            let q = Queue::new(
                conn.clone(),
                queue,
                QueueOptions::default().keep_everything(),
            )
            .await?;
            let mut start = 0;
            while start < n {
                let stop = (start + BATCH).min(n);
                let jobs: Vec<BulkJob<BenchData>> = (start..stop)
                    .map(|i| BulkJob::new(JOB_NAME, data_for(i), opts.clone()))
                    .collect();
                let added = q.add_bulk(&jobs).await?;
                if added.len() != jobs.len() {
                    bail!("add_bulk added {} of {} jobs", added.len(), jobs.len());
                }
                start = stop;
            }
            Ok(())
        }
        .await;
        conn.close();
        result
    }

    async fn run_worker_one(
        &mut self,
        w: WorkerWorkload,
        side: Side,
        rep: u32,
    ) -> Result<WorkerRun> {
        self.counter += 1;
        let queue = queue_name(self.counter);
        let (n, prefill) = (w.n(self.quick), w.prefill(self.quick));

        self.clients_gone().await?;
        self.admin(&["FLUSHALL", "SYNC"])?;
        tokio::time::timeout(
            super::RUN_TIMEOUT,
            self.fill_queue(&queue, prefill, &w.job_opts()),
        )
        .await
        .map_err(|_| anyhow!("pre-filling did not finish within {:?}", super::RUN_TIMEOUT))??;
        self.clients_gone().await?;
        let waiting = self.count(&["LLEN", &format!("bull:{queue}:wait")])?;
        if waiting != prefill {
            bail!("{waiting} jobs waiting after pre-filling {queue}, expected {prefill}");
        }

        self.admin(&["CONFIG", "RESETSTAT"])?;
        let before = ServerCounters::read(self)?;
        let timeout = run_timeout(n);
        let input = json!({
            "url": self.url,
            "queue": queue,
            "concurrency": w.concurrency,
            "n": n,
            "prefilled": prefill,
            "timeoutMs": timeout.as_millis() as u64,
        });
        let child = spawn_peer(side, &input)?;
        let out = wait_peer(side, child, timeout + PEER_GRACE).await?;
        self.clients_gone().await?;
        let commandstats = parse_commandstats(&self.admin(&["INFO", "commandstats"])?);
        let server = ServerCounters::read(self)?.minus(&before);

        // At least n jobs completed (a few more may have finished while the worker closed),
        // none failed, none left active, and retention did what it says.
        let key = |k: &str| format!("bull:{queue}:{k}");
        let waiting = self.count(&["LLEN", &key("wait")])?;
        let active = self.count(&["LLEN", &key("active")])?;
        let failed = self.count(&["ZCARD", &key("failed")])?;
        let completed = self.count(&["ZCARD", &key("completed")])?;
        let finished = prefill.saturating_sub(waiting);
        let retention_ok = if w.remove {
            completed == 0
        } else {
            completed == finished
        };
        if active != 0 || failed != 0 || finished < n || !retention_ok {
            bail!("after the run: {waiting} waiting, {active} active, {failed} failed, {completed} in completed, of {prefill} jobs ({n} to complete, {})", w.retention());
        }
        let (elapsed_ms, rss_peak_kb, client_cpu_ms) = peer_result(&out, n)?;
        Ok(WorkerRun {
            workload: w,
            side,
            rep,
            queue,
            prefill,
            n,
            finished,
            elapsed_ms,
            redis_cpu_ms: server.cpu_user_ms + server.cpu_sys_ms,
            server,
            client_cpu_ms,
            rss_peak_kb,
            commandstats,
            counted_by: out["countedBy"].as_str().map(str::to_owned),
        })
    }

    /// Waits until some client is blocked (the peer's worker waiting for the marker).
    async fn worker_waiting(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            let blocked: u64 = self
                .server
                .info_field("blocked_clients")?
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no blocked_clients in INFO"))?;
            if blocked > 0 {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("the worker was not waiting for jobs after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run_latency_one(&mut self, side: Side, rep: u32) -> Result<LatencyRun> {
        self.counter += 1;
        let queue = queue_name(self.counter);
        let n = latency_jobs(self.quick);

        self.clients_gone().await?;
        self.admin(&["FLUSHALL", "SYNC"])?;
        let conn = Connection::connect(RedisOptions::from_url(&self.url)?.producer()).await?;
        let result = async {
            let q = Queue::new(
                conn.clone(),
                &queue,
                QueueOptions::default().keep_everything(),
            )
            .await?;
            self.admin(&["CONFIG", "RESETSTAT"])?;
            let cpu_before = self.redis_cpu_ms()?;
            let timeout = Duration::from_secs(60) + latency_period() * u32::try_from(n)?;
            let input = json!({
                "url": self.url,
                "queue": queue,
                "concurrency": LATENCY_CONCURRENCY,
                "n": n,
                "prefilled": 0,
                "timeoutMs": timeout.as_millis() as u64,
            });
            let child = spawn_peer(side, &input)?;
            let produce = async {
                self.worker_waiting().await?;
                let opts = JobOptions::default();
                let period = latency_period();
                let start = tokio::time::Instant::now();
                let mut ids = Vec::new();
                for i in 0..n {
                    tokio::time::sleep_until(start + period * u32::try_from(i)?).await;
                    ids.push(q.add(JOB_NAME, &data_for(i), opts.clone()).await?.id);
                }
                Ok::<_, anyhow::Error>((ids, start.elapsed()))
            };
            let ((ids, adding), out) =
                tokio::try_join!(produce, wait_peer(side, child, timeout + PEER_GRACE))?;
            let (_, rss_peak_kb, _) = peer_result(&out, n)?;

            let mut pairs = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(READ_CHUNK) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HMGET")
                        .arg(format!("bull:{queue}:{id}"))
                        .arg("timestamp")
                        .arg("finishedOn");
                }
                let got: Vec<(Option<String>, Option<String>)> = conn.query_pipeline(&pipe).await?;
                pairs.extend(got);
            }
            let latencies = latencies_ms(&pairs)?;
            Ok::<_, anyhow::Error>((latencies, cpu_before, rss_peak_kb, adding))
        }
        .await;
        conn.close();
        let (latencies, cpu_before, rss_peak_kb, adding) = result?;
        self.clients_gone().await?;
        let commandstats = parse_commandstats(&self.admin(&["INFO", "commandstats"])?);
        let redis_cpu_ms = self.redis_cpu_ms()? - cpu_before;
        Ok(LatencyRun {
            side,
            rep,
            queue,
            n,
            latencies,
            redis_cpu_ms,
            commandstats,
            rss_peak_kb,
            adding_ms: adding.as_secs_f64() * 1e3,
        })
    }
}

/// `(elapsedMs, rssPeakKb, cpuMs)` of a peer's output, checked.
fn peer_result(out: &Value, n: u64) -> Result<(f64, Option<u64>, Option<f64>)> {
    let elapsed = out["elapsedMs"]
        .as_f64()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| anyhow!("the peer printed no elapsedMs: {out}"))?;
    if out["n"].as_u64() != Some(n) {
        bail!("the peer reports n = {}, expected {n}", out["n"]);
    }
    let rss = out["rssPeakKb"].as_u64().filter(|v| *v > 0);
    let cpu = out["cpuMs"].as_f64().filter(|v| v.is_finite() && *v >= 0.0);
    Ok((elapsed, rss, cpu))
}

fn spawn_peer(side: Side, input: &Value) -> Result<Child> {
    match side {
        Side::Bullpen => {
            let exe = std::env::current_exe().context("finding this executable")?;
            tokio::process::Command::new(exe)
                .arg(PEER_COMMAND)
                .arg(input.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting bullpen's worker peer")
        }
        Side::Node => spawn_node(NODE_SCRIPT, input).context("starting node"),
    }
}

/// Waits up to `timeout` for a peer to exit and returns the JSON object of its last stdout
/// line. The peer is killed on timeout or error (kill on drop).
async fn wait_peer(side: Side, child: Child, timeout: Duration) -> Result<Value> {
    match side {
        Side::Node => wait_node(NODE_SCRIPT, child, timeout)
            .await
            .map_err(|e| anyhow!(e)),
        Side::Bullpen => {
            let mut child = child;
            let collect = async {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let mut stdout = child.stdout.take().context("peer stdout")?;
                let mut stderr = child.stderr.take().context("peer stderr")?;
                let (r1, r2) =
                    tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
                r1.and(r2).context("reading the peer's output")?;
                let status = child.wait().await.context("waiting for the peer")?;
                Ok::<_, anyhow::Error>((status, out, err))
            };
            let (status, out, err) = tokio::time::timeout(timeout, collect)
                .await
                .map_err(|_| anyhow!("{PEER_COMMAND} did not finish within {timeout:?}"))??;
            let err = String::from_utf8_lossy(&err);
            if !status.success() {
                bail!("{PEER_COMMAND} exited with {status}: {}", err.trim());
            }
            let text = String::from_utf8_lossy(&out);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .ok_or_else(|| anyhow!("{PEER_COMMAND} printed nothing; stderr: {}", err.trim()))?;
            serde_json::from_str(last)
                .with_context(|| format!("{PEER_COMMAND} printed `{last}`, not JSON"))
        }
    }
}

// ---- bullpen's peer process ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerInput {
    url: String,
    queue: String,
    concurrency: usize,
    n: u64,
    timeout_ms: u64,
    /// How many jobs were in the queue before the worker started (0: none, jobs are added
    /// while it runs).
    #[serde(default)]
    prefilled: u64,
}

/// `cargo xtask bench-worker-peer '<json>'`: runs one bullpen worker with a no-op processor
/// until `n` jobs have completed and prints `{elapsedMs, n, rssPeakKb, cpuMs, countedBy}`.
pub fn worker_peer(args: &[String]) -> Result<()> {
    let raw = args
        .first()
        .ok_or_else(|| anyhow!("usage: cargo xtask {PEER_COMMAND} '<json>'"))?;
    let input: PeerInput = serde_json::from_str(raw).context("peer input")?;
    if input.n == 0 || input.concurrency == 0 {
        bail!("n and concurrency must be at least 1");
    }
    // The runtime an application gets from `#[tokio::main]`: one thread per CPU. The peer
    // (the worker and the task counting its events) runs as a task on the runtime's threads,
    // as an application's event consumer would: from the thread that blocks on the runtime,
    // every event would wake that thread separately (a futex wake and a thread switch per
    // job: about a tenth of the process's CPU at concurrency 128 in a perf profile), a cost
    // of the bench rather than of the worker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        tokio::spawn(async move { peer_main(&input).await })
            .await
            .map_err(|e| anyhow!("the peer task failed: {e}"))?
    })?;
    drop(rt);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out = out;
    out["rssPeakKb"] = json!(parse_vm_hwm_kb(&status));
    println!("{out}");
    Ok(())
}

async fn peer_main(input: &PeerInput) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_millis(input.timeout_ms);
    let redis = RedisOptions::from_url(&input.url)?;
    let opts = WorkerOptions::builder()
        .concurrency(input.concurrency)
        .build()?;
    let processor =
        from_fn(|_job: Job<Value>, _ctx: JobContext| async move { Ok::<_, JobError>(Value::Null) });
    let cpu_start = process_cpu_ms();
    let started = Instant::now();
    let worker = Worker::start(redis.clone().worker(), &input.queue, processor, opts).await?;
    // Subscribed before the first job can have finished: that takes two round trips to
    // Redis after `start` returns, this is the next statement.
    let mut events = worker.events();
    let counted = count_completions(&mut events, input, &redis, deadline).await;
    let cpu_end = process_cpu_ms();
    worker.close(PEER_CLOSE_GRACE).await;
    let (done_at, counted_by) = counted?;
    Ok(json!({
        "elapsedMs": done_at.duration_since(started).as_secs_f64() * 1e3,
        "n": input.n,
        "cpuMs": match (cpu_start, cpu_end) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        "countedBy": counted_by,
    }))
}

/// Counts `Completed` events until `n`; returns when the n-th was seen. If the event channel
/// lagged (events dropped), counting continues in Redis instead: until `n` of the pre-filled
/// jobs have left `wait` and `active`, or (no pre-filled jobs) `completed` holds `n` jobs.
async fn count_completions(
    events: &mut tokio::sync::broadcast::Receiver<WorkerEvent>,
    input: &PeerInput,
    redis: &RedisOptions,
    deadline: Instant,
) -> Result<(Instant, &'static str)> {
    use tokio::sync::broadcast::error::RecvError;
    let mut seen = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) => bail!(
                "{seen} of {} completions within {} ms",
                input.n,
                input.timeout_ms
            ),
            Ok(Ok(WorkerEvent::Completed { .. })) => {
                seen += 1;
                if seen >= input.n {
                    return Ok((Instant::now(), "events"));
                }
            }
            Ok(Ok(WorkerEvent::Failed { job_id, reason, .. })) => {
                bail!("job {job_id} failed: {reason}")
            }
            Ok(Ok(WorkerEvent::Error { message })) => eprintln!("worker error: {message}"),
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                return Ok((poll_done(input, redis, deadline).await?, "redis"))
            }
            Ok(Err(RecvError::Closed)) => bail!("the worker's event channel closed"),
        }
    }
}

async fn poll_done(input: &PeerInput, redis: &RedisOptions, deadline: Instant) -> Result<Instant> {
    let conn = Connection::connect(redis.clone().producer()).await?;
    let key = |k: &str| format!("bull:{}:{k}", input.queue);
    let result = async {
        while Instant::now() < deadline {
            let done = if input.prefilled > 0 {
                let mut pipe = redis::pipe();
                pipe.cmd("LLEN")
                    .arg(key("wait"))
                    .cmd("LLEN")
                    .arg(key("active"));
                let (wait, active): (u64, u64) = conn.query_pipeline(&pipe).await?;
                input.prefilled.saturating_sub(wait + active) >= input.n
            } else {
                let completed: u64 = conn
                    .query(redis::cmd("ZCARD").arg(key("completed")))
                    .await?;
                completed >= input.n
            };
            if done {
                return Ok(Instant::now());
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        bail!(
            "not all {} jobs completed within {} ms",
            input.n,
            input.timeout_ms
        )
    }
    .await;
    conn.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_and_keys() {
        let all = WorkerWorkload::all();
        let keys: Vec<String> = all.iter().map(|w| w.key()).collect();
        assert_eq!(
            keys,
            [
                "worker_c1",
                "worker_c1_remove",
                "worker_c16",
                "worker_c16_remove",
                "worker_c128",
                "worker_c128_remove"
            ]
        );
        assert_eq!(all[5].suffix(), "c128_remove");
        // Always 150,000 queued (5,000 quick); all of them timed but at concurrency 1.
        for w in &all {
            assert_eq!(w.prefill(false), 150_000);
            assert_eq!(w.prefill(true), 5_000);
            assert_eq!(w.n(true), 5_000);
            let n = if w.concurrency == 1 { 30_000 } else { 150_000 };
            assert_eq!(w.n(false), n, "{}", w.key());
        }
        // Keep-all jobs carry no options (BullMQ's default); the others removeOnComplete: true.
        assert!(all[0].job_opts().to_stored().is_empty());
        assert_eq!(
            Value::Object(all[1].job_opts().to_stored()),
            json!({"removeOnComplete": true})
        );
    }

    #[test]
    fn latency_sizes() {
        assert_eq!(latency_jobs(false), 2_000);
        assert_eq!(latency_jobs(true), 600);
        assert_eq!(latency_period(), Duration::from_millis(5));
    }

    #[test]
    fn server_counters_are_parsed_and_subtracted() {
        let info = "# Stats\r\ntotal_net_input_bytes:1000\r\ntotal_net_output_bytes:5000\r\ntotal_net_repl_input_bytes:7\r\n# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        let c = ServerCounters::parse(info).expect("counters");
        assert_eq!(c.cpu_user_ms, 2250.0);
        assert_eq!(c.cpu_sys_ms, 1500.0);
        assert_eq!(c.net_in_bytes, 1000.0);
        assert_eq!(c.net_out_bytes, 5000.0);
        let d = c.minus(&ServerCounters {
            cpu_user_ms: 250.0,
            cpu_sys_ms: 500.0,
            net_in_bytes: 400.0,
            net_out_bytes: 1000.0,
        });
        assert_eq!((d.cpu_user_ms, d.cpu_sys_ms), (2000.0, 1000.0));
        assert_eq!((d.net_in_bytes, d.net_out_bytes), (600.0, 4000.0));
        assert_eq!(ServerCounters::parse("used_cpu_user:1\r\n"), None);
    }

    #[test]
    fn vm_hwm_is_parsed() {
        let status =
            "Name:\txtask\nVmPeak:\t  100000 kB\nVmHWM:\t    8123 kB\nVmRSS:\t    7000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(8123));
        assert_eq!(parse_vm_hwm_kb("VmRSS: 1 kB\n"), None);
        assert_eq!(parse_vm_hwm_kb("VmHWM: x kB\n"), None);
    }

    #[test]
    fn latencies_from_job_fields() {
        let s = |v: &str| Some(v.to_owned());
        let pairs = vec![(s("1000"), s("1003")), (s("2000"), s("2000"))];
        assert_eq!(latencies_ms(&pairs).expect("ok"), vec![3.0, 0.0]);
        assert!(latencies_ms(&[(s("1000"), None)]).is_err());
        assert!(latencies_ms(&[(s("x"), s("1"))]).is_err());
        let h = histogram(&[3.0, 0.0, 3.0]);
        assert_eq!(h.get(&3), Some(&2));
        assert_eq!(h.get(&0), Some(&1));
    }

    #[test]
    fn timeouts_are_generous_and_bounded() {
        assert_eq!(run_timeout(0), Duration::from_secs(60));
        assert_eq!(run_timeout(150_000), Duration::from_secs(660));
        assert!(run_timeout(u64::MAX) < Duration::from_secs(10_000_000));
    }
}
