//! `cargo xtask bench`: producer (add) and worker workloads, bullpen and Node BullMQ side by
//! side.
//!
//! One private redis-server (no AOF, no RDB saves, latency tracking and slow log off: see
//! [`quiet_server`]) serves both sides in one run. Every
//! workload runs `--reps` times per side, alternating bullpen, Node, bullpen, Node, … with a
//! `FLUSHALL` and a fresh queue name before each run, so that both sides see the same server
//! in the same state. Both add jobs named `bench` with the same data and the same job options
//! (bullpen's retention defaults, passed explicitly to Node).
//!
//! Workloads (quick sizes in brackets):
//!
//! * `add_sequential`: 3,000 [300] adds, each awaited before the next: jobs/s.
//! * `add_concurrent`: 20,000 [2,000] adds, 64 in flight on one connection: jobs/s.
//! * `add_bulk`: 50,000 [5,000] jobs in bulk calls of 1,000: jobs/s.
//! * `memory_per_waiting_job`: growth of `used_memory` over 20,000 [2,000] jobs added in
//!   bulk calls of 1,000, read with no client of either side connected: bytes per job.
//!
//! The throughput workloads first add a tenth of `n` the same way, untimed (warm-up: script
//! cached on the server, JIT-compiled code in Node); only the `n` timed adds count. Node runs
//! `tests/interop/bench_add.mjs`, which times only its adds.
//!
//! Then the worker workloads ([`worker`]): jobs/s of a no-op worker at concurrency 1, 16 and
//! 128 on a queue pre-filled with 150,000 [5,000] jobs, keeping completed jobs and with
//! `removeOnComplete: true`, with redis-server CPU per job and the worker process's peak RSS;
//! and add-to-completed latency at 200 adds/s for 10 s [3 s]. `--only add|worker|latency`
//! (repeatable) runs a part only.
//!
//! Results: medians and min–max per side, ratios bullpen/Node of the medians, a Markdown
//! table for `docs/benchmarks.md`, and `target/bench.json` with every raw run. The bench
//! always measures a release build: a debug build re-runs itself with `cargo run --release`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_conn::{Connection, RedisOptions};
use bullpen_producer::{
    BulkJob, JobOptions, KeepJobs, Queue, QueueOptions, DEFAULT_KEEP_COMPLETED, DEFAULT_KEEP_FAILED,
};
use bullpen_testkit::node::{node_ready, run_node, BULLMQ_VERSION};
use bullpen_testkit::RedisServer;
use serde::Serialize;
use serde_json::{json, Value};

use crate::interop::ensure_node_deps;
use crate::redis_install::ensure_redis;

mod worker;
mod worker_report;

pub use worker::worker_peer;

/// Set in the environment of the release re-run, so that it never re-runs itself again.
const CHILD_ENV: &str = "BULLPEN_BENCH_RELEASE_CHILD";
/// Adds kept in flight by `add_concurrent`.
const CONCURRENCY: u64 = 64;
/// Jobs per bulk call.
const BATCH: u64 = 1_000;
/// Default and bounds of `--reps`.
const DEFAULT_REPS: u32 = 3;
const MIN_REPS: u32 = 3;
const MAX_REPS: u32 = 50;
/// Upper bound of one run (either side).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for the clients of a run to be gone from the server.
const CLIENTS_GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// The job name both sides use.
const JOB_NAME: &str = "bench";
/// The label of the peer in the output.
const NODE_LABEL: &str = "Node BullMQ";

/// A part of the bench that `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Add,
    Worker,
    Latency,
}

impl Part {
    fn key(self) -> &'static str {
        match self {
            Part::Add => "add",
            Part::Worker => "worker",
            Part::Latency => "latency",
        }
    }

    fn parse(text: &str) -> Result<Part> {
        match text {
            "add" => Ok(Part::Add),
            "worker" => Ok(Part::Worker),
            "latency" => Ok(Part::Latency),
            other => bail!("--only takes add, worker or latency, got `{other}`"),
        }
    }
}

/// Parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Config {
    quick: bool,
    reps: u32,
    /// The parts to run; empty runs all of them.
    only: Vec<Part>,
}

impl Config {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--reps N] [--only add|worker|latency]...";

fn parse_args(args: &[String]) -> Result<Config> {
    let mut cfg = Config {
        quick: false,
        reps: DEFAULT_REPS,
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let only = match arg.as_str() {
            "--only" => Some(
                it.next()
                    .ok_or_else(|| anyhow!("--only needs add, worker or latency"))?
                    .as_str(),
            ),
            other => other.strip_prefix("--only="),
        };
        if let Some(part) = only {
            let part = Part::parse(part)?;
            if !cfg.only.contains(&part) {
                cfg.only.push(part);
            }
            continue;
        }
        let reps_text = match arg.as_str() {
            "--quick" => {
                cfg.quick = true;
                continue;
            }
            "--reps" => it
                .next()
                .ok_or_else(|| anyhow!("--reps needs a number"))?
                .as_str(),
            other => match other.strip_prefix("--reps=") {
                Some(v) => v,
                None => bail!("unknown argument `{other}`; {USAGE}"),
            },
        };
        let reps: u32 = reps_text
            .parse()
            .map_err(|_| anyhow!("--reps wants a whole number, got `{reps_text}`"))?;
        if !(MIN_REPS..=MAX_REPS).contains(&reps) {
            bail!("--reps must be between {MIN_REPS} and {MAX_REPS}, got {reps}");
        }
        cfg.reps = reps;
    }
    Ok(cfg)
}

/// The workloads, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    AddSequential,
    AddConcurrent,
    AddBulk,
    MemoryPerWaitingJob,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::AddSequential,
        Workload::AddConcurrent,
        Workload::AddBulk,
        Workload::MemoryPerWaitingJob,
    ];

    fn key(self) -> &'static str {
        match self {
            Workload::AddSequential => "add_sequential",
            Workload::AddConcurrent => "add_concurrent",
            Workload::AddBulk => "add_bulk",
            Workload::MemoryPerWaitingJob => "memory_per_waiting_job",
        }
    }

    /// The `workload` of `bench_add.mjs`.
    fn node_mode(self) -> &'static str {
        match self {
            Workload::AddSequential => "sequential",
            Workload::AddConcurrent => "concurrent",
            Workload::AddBulk | Workload::MemoryPerWaitingJob => "bulk",
        }
    }

    fn n(self, quick: bool) -> u64 {
        let full = match self {
            Workload::AddSequential => 3_000,
            Workload::AddConcurrent => 20_000,
            Workload::AddBulk => 50_000,
            Workload::MemoryPerWaitingJob => 20_000,
        };
        if quick {
            full / 10
        } else {
            full
        }
    }

    /// Untimed adds before the timed ones (none where memory is measured).
    fn warmup(self, quick: bool) -> u64 {
        match self {
            Workload::MemoryPerWaitingJob => 0,
            _ => self.n(quick) / 10,
        }
    }

    fn is_memory(self) -> bool {
        self == Workload::MemoryPerWaitingJob
    }

    fn unit(self) -> &'static str {
        if self.is_memory() {
            "bytes/job"
        } else {
            "jobs/s"
        }
    }

    fn better(self) -> &'static str {
        if self.is_memory() {
            "lower is better"
        } else {
            "higher is better"
        }
    }

    fn format(self, v: f64) -> String {
        if self.is_memory() {
            format!("{v:.1}")
        } else {
            group_thousands(v)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Bullpen,
    Node,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Bullpen => "bullpen",
            Side::Node => "node",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug)]
struct RunRecord {
    workload: Workload,
    side: Side,
    rep: u32,
    queue: String,
    n: u64,
    warmup: u64,
    /// Time of the `n` timed adds (throughput workloads), or of all adds (memory).
    elapsed_ms: f64,
    /// jobs/s, or bytes per job for the memory workload.
    value: f64,
    /// `used_memory` before and after (memory workload only).
    used_memory: Option<(u64, u64)>,
    /// `INFO commandstats` of the run (warm-up included): command -> (calls, usec).
    commandstats: BTreeMap<String, (u64, u64)>,
    /// CPU time redis-server used during the run (user + system, warm-up included), ms.
    redis_cpu_ms: f64,
    /// CPU time the client process used during the `n` timed adds (user + system, all its
    /// threads), ms; for Node as `process.cpuUsage()` reports it.
    client_cpu_ms: Option<f64>,
}

impl RunRecord {
    /// Server time spent in scripts (`EVALSHA` + `EVAL`) per job added, warm-up included.
    fn script_usec_per_job(&self) -> f64 {
        let usec: u64 = ["evalsha", "eval"]
            .iter()
            .filter_map(|c| self.commandstats.get(*c))
            .map(|(_, usec)| *usec)
            .sum();
        usec as f64 / (self.n + self.warmup).max(1) as f64
    }

    /// redis-server CPU time per job added, warm-up included.
    fn redis_cpu_usec_per_job(&self) -> f64 {
        self.redis_cpu_ms * 1e3 / (self.n + self.warmup).max(1) as f64
    }

    /// Client CPU time per timed job.
    fn client_cpu_usec_per_job(&self) -> Option<f64> {
        self.client_cpu_ms.map(|ms| ms * 1e3 / self.n.max(1) as f64)
    }

    fn to_json(&self) -> Value {
        let stats: serde_json::Map<String, Value> = self
            .commandstats
            .iter()
            .map(|(k, (calls, usec))| (k.clone(), json!({"calls": calls, "usec": usec})))
            .collect();
        json!({
            "workload": self.workload.key(),
            "side": self.side.key(),
            "rep": self.rep,
            "queue": self.queue,
            "n": self.n,
            "warmup": self.warmup,
            "elapsed_ms": self.elapsed_ms,
            "value": self.value,
            "unit": self.workload.unit(),
            "used_memory_before": self.used_memory.map(|m| m.0),
            "used_memory_after": self.used_memory.map(|m| m.1),
            "script_usec_per_job": self.script_usec_per_job(),
            "redis_cpu_ms": self.redis_cpu_ms,
            "redis_cpu_usec_per_job": self.redis_cpu_usec_per_job(),
            "client_cpu_ms": self.client_cpu_ms,
            "client_cpu_usec_per_job": self.client_cpu_usec_per_job(),
            "commandstats": stats,
        })
    }
}

/// The data of job `i`, the same on both sides.
#[derive(Serialize)]
struct BenchData {
    user: u64,
    email: &'static str,
    n: u64,
}

fn data_for(i: u64) -> BenchData {
    BenchData {
        user: 12345,
        email: "user@example.com",
        n: i,
    }
}

/// The queue of run number `counter` (1, 2, …). Every run of a bench has a name of the
/// same length, whichever side it is for: key length is part of the memory per job.
/// ([`MAX_REPS`] keeps `counter` under 10,000.)
fn queue_name(counter: u64) -> String {
    format!("bench{counter:04}")
}

/// The job options of every bench job: bullpen's retention defaults, set explicitly.
fn job_opts() -> JobOptions {
    let mut opts = JobOptions::default();
    opts.remove_on_complete = Some(KeepJobs::Count(DEFAULT_KEEP_COMPLETED));
    opts.remove_on_fail = Some(KeepJobs::Count(DEFAULT_KEEP_FAILED));
    opts
}

/// The same options as Node `JobsOptions`.
fn node_job_opts() -> Value {
    json!({"removeOnComplete": DEFAULT_KEEP_COMPLETED, "removeOnFail": DEFAULT_KEEP_FAILED})
}

// ---- statistics (pure) ----

/// The median of `values` (the mean of the middle two for an even count); `None` when empty
/// or when a value is not finite.
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The `p`-th percentile (0 < `p` ≤ 100) of `values` by the nearest-rank method: the
/// smallest value with at least `p`% of the values at or below it (`p` = 100 is the
/// maximum). `None` when empty, when a value is not finite, or when `p` is out of range.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `(min, max)` of `values`; `None` when empty or when a value is not finite.
fn spread(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((min, max))
}

/// `bullpen / node`, when both exist and the quotient is a finite number (`node` > 0).
fn ratio(bullpen: Option<f64>, node: Option<f64>) -> Option<f64> {
    let (b, n) = (bullpen?, node?);
    if !(b.is_finite() && n.is_finite()) || n <= 0.0 {
        return None;
    }
    Some(b / n)
}

/// `INFO commandstats` text -> command -> (calls, usec).
fn parse_commandstats(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let mut calls = None;
        let mut usec = None;
        for field in fields.split(',') {
            match field.split_once('=') {
                Some(("calls", v)) => calls = v.parse().ok(),
                Some(("usec", v)) => usec = v.parse().ok(),
                _ => {}
            }
        }
        if let (Some(c), Some(u)) = (calls, usec) {
            out.insert(name.to_owned(), (c, u));
        }
    }
    out
}

/// `used_cpu_user + used_cpu_sys` of an `INFO cpu` text, in ms.
fn parse_cpu_ms(text: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    };
    Some((field("used_cpu_user")? + field("used_cpu_sys")?) * 1e3)
}

/// `1234567.8` -> `"1,234,568"`.
fn group_thousands(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let rounded = v.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

// ---- entry point ----

pub fn run(args: &[String]) -> Result<()> {
    let cfg = parse_args(args)?;
    if cfg!(debug_assertions) {
        if std::env::var_os(CHILD_ENV).is_none() {
            return rerun_in_release(args);
        }
        println!("==> warning: this build has debug assertions on; numbers are not representative");
    }
    ensure_redis()?;
    if let Err(e) = ensure_node_deps() {
        println!("==> warning: {e:#}");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(cfg, args))
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Runs `cargo run --release --quiet --package xtask -- bench <args>` and exits with its
/// status: the bench measures optimised code only.
fn rerun_in_release(args: &[String]) -> Result<()> {
    println!("==> cargo xtask bench measures a release build: cargo run --release --package xtask -- bench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
        ])
        .args(args)
        .env(CHILD_ENV, "1")
        .current_dir(workspace_root())
        .status()
        .context("running cargo run --release")?;
    std::process::exit(status.code().unwrap_or(1));
}

// ---- the run ----

struct Bench {
    server: RedisServer,
    url: String,
    quick: bool,
    node: bool,
    /// Distinguishes queue names across runs.
    counter: u64,
}

async fn bench(cfg: Config, args: &[String]) -> Result<()> {
    let started = Instant::now();
    let server = RedisServer::start().context("starting a private redis-server")?;
    let url = server.url();
    let node_skip = node_ready().err();
    match &node_skip {
        Some(why) => println!(
            "==> {NODE_LABEL} cannot run here: {why}\n==> measuring bullpen only; no ratios in this run"
        ),
        None => println!(
            "==> {NODE_LABEL} {BULLMQ_VERSION} ready (tests/interop/bench_add.mjs, bench_worker.mjs)"
        ),
    }
    let server_config = quiet_server(&server);
    let mut machine = machine_info(&server);
    machine["redis_config"] = server_config;
    machine["calibration"] = calibrate(&server, cfg.quick);
    println!(
        "==> calibration: redis-benchmark, 20 clients, an add-like script: {} ops/s (the server's ceiling here, for comparing tables across machines)",
        machine["calibration"]["add_like_script_ops_per_sec"]
    );
    println!(
        "==> redis-server {} at {url} (pid {}), {} CPUs, {}",
        machine["redis_version"].as_str().unwrap_or("?"),
        server.pid().unwrap_or(0),
        machine["nproc"],
        if cfg.quick {
            "quick sizes"
        } else {
            "full sizes"
        },
    );

    let mut b = Bench {
        server,
        url,
        quick: cfg.quick,
        node: node_skip.is_none(),
        counter: 0,
    };
    let mut runs: Vec<RunRecord> = Vec::new();
    let add_workloads: &[Workload] = if cfg.runs(Part::Add) {
        &Workload::ALL
    } else {
        &[]
    };
    for &w in add_workloads {
        println!(
            "==> {} (n = {}, {} reps per side)",
            w.key(),
            w.n(cfg.quick),
            cfg.reps
        );
        for rep in 1..=cfg.reps {
            let mut sides = vec![Side::Bullpen];
            if b.node {
                sides.push(Side::Node);
            }
            for side in sides {
                let r = b
                    .run_one(w, side, rep)
                    .await
                    .with_context(|| format!("{} rep {rep} ({})", w.key(), side.key()))?;
                println!(
                    "    rep {rep} {:<7} {:>12} {}  ({:.1} ms; per job: scripts {:.1} µs, redis CPU {:.1} µs, client CPU {})",
                    side.key(),
                    w.format(r.value),
                    w.unit(),
                    r.elapsed_ms,
                    r.script_usec_per_job(),
                    r.redis_cpu_usec_per_job(),
                    r.client_cpu_usec_per_job().map_or("-".to_owned(), |v| format!("{v:.1} µs"))
                );
                runs.push(r);
            }
        }
    }

    let worker_runs = if cfg.runs(Part::Worker) {
        worker::run_throughput(&mut b, cfg.reps).await?
    } else {
        Vec::new()
    };
    let latency_runs = if cfg.runs(Part::Latency) {
        worker::run_latency(&mut b, cfg.reps).await?
    } else {
        Vec::new()
    };

    let summary = summarise(&runs);
    if !summary.is_empty() {
        print_summary(&summary, node_skip.as_deref());
    }
    let worker_summary = worker_report::summarise_workers(&worker_runs);
    let latency_summary = worker_report::summarise_latency(&latency_runs);
    if !summary.is_empty() {
        let table = markdown_table(&summary, b.node);
        println!("\nMarkdown table for docs/benchmarks.md:\n\n{table}");
    }
    if !worker_summary.is_empty() {
        println!(
            "\nWorker tables for docs/benchmarks.md:\n\n{}",
            worker_report::worker_tables(&worker_summary, b.node)
        );
        println!("Where redis-server's time went (medians per job):\n");
        for s in &worker_summary {
            print!("{}", worker_report::server_lines(s));
        }
        println!("\nINFO commandstats per job (all reps of a side summed):\n");
        for s in &worker_summary {
            println!(
                "{}",
                worker_report::commandstats_table(
                    &format!("`{}`", s.workload.key()),
                    &s.bullpen.commands_per_job,
                    &s.node.commands_per_job
                )
            );
        }
    }
    if let Some(l) = &latency_summary {
        println!(
            "Latency table for docs/benchmarks.md:\n\n{}",
            worker_report::latency_table(l, b.node)
        );
        println!(
            "{}",
            worker_report::commandstats_table(
                "latency (the adds included)",
                &l.bullpen.commands_per_job,
                &l.node.commands_per_job
            )
        );
    }
    let targets = worker_report::targets(&worker_summary, latency_summary.as_ref());
    if !targets.is_empty() {
        println!("==> targets (medians; bullpen / Node unless a unit is given)");
        for (what, value, met) in &targets {
            println!(
                "    {:<14} {what}: {}",
                match met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not measured",
                },
                value.map_or("-".to_owned(), |v| format!("{v:.2}"))
            );
        }
    }

    let command = std::iter::once("cargo xtask bench".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut report = report_json(
        &summary,
        &runs,
        machine,
        &command,
        &cfg,
        node_skip.as_deref(),
    );
    let parts = worker_report::report_parts(&worker_summary, latency_summary.as_ref());
    for (field, extra) in [
        ("ratios", parts.ratios),
        ("bullpen", parts.bullpen),
        ("node", parts.node),
        ("workloads", parts.details),
    ] {
        if let Some(obj) = report[field].as_object_mut() {
            obj.extend(extra);
        }
    }
    report["worker"] = worker::config_json(cfg.quick);
    report["only"] = cfg.only.iter().map(|p| p.key()).collect();
    report["targets"] = targets
        .iter()
        .map(|(what, value, met)| json!({"target": what, "value": value, "met": met}))
        .collect();
    if let Some(all) = report["runs"].as_array_mut() {
        all.extend(worker_report::runs_json(&worker_runs, &latency_runs));
    }
    let path = workspace_root().join("target").join("bench.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "==> wrote {} ({} runs in {:.1} s)",
        path.display(),
        runs.len() + worker_runs.len() + latency_runs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Bench {
    fn admin(&self, args: &[&str]) -> Result<String> {
        self.server
            .admin(args)
            .with_context(|| format!("redis {}", args.join(" ")))
    }

    fn used_memory(&self) -> Result<u64> {
        self.server
            .info_field("used_memory")?
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no used_memory in INFO"))
    }

    fn redis_cpu_ms(&self) -> Result<f64> {
        parse_cpu_ms(&self.admin(&["INFO", "cpu"])?)
            .ok_or_else(|| anyhow!("no used_cpu_* in INFO cpu"))
    }

    /// Waits until no client but the asking admin connection is connected.
    async fn clients_gone(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            let n = self.server.connected_clients()?;
            if n == 0 {
                return Ok(());
            }
            if start.elapsed() > CLIENTS_GONE_TIMEOUT {
                bail!("{n} client(s) still connected after {CLIENTS_GONE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn run_one(&mut self, w: Workload, side: Side, rep: u32) -> Result<RunRecord> {
        self.counter += 1;
        let queue = queue_name(self.counter);
        let (n, warmup) = (w.n(self.quick), w.warmup(self.quick));

        self.clients_gone().await?;
        self.admin(&["FLUSHALL", "SYNC"])?;
        self.admin(&["CONFIG", "RESETSTAT"])?;
        let cpu_before = self.redis_cpu_ms()?;
        let before = if w.is_memory() {
            Some(self.used_memory()?)
        } else {
            None
        };

        let (elapsed, client_cpu_ms) = match side {
            Side::Bullpen => {
                tokio::time::timeout(RUN_TIMEOUT, self.bullpen_adds(w, &queue, n, warmup))
                    .await
                    .map_err(|_| anyhow!("bullpen did not finish within {RUN_TIMEOUT:?}"))??
            }
            Side::Node => self.node_adds(w, &queue, n, warmup).await?,
        };

        self.clients_gone().await?;
        let used_memory = match before {
            Some(b) => Some((b, self.used_memory()?)),
            None => None,
        };
        let commandstats = parse_commandstats(&self.admin(&["INFO", "commandstats"])?);
        let redis_cpu_ms = self.redis_cpu_ms()? - cpu_before;

        // Both sides must have stored every job they were asked to.
        let waiting: u64 = self
            .admin(&["LLEN", &format!("bull:{queue}:wait")])?
            .trim()
            .parse()
            .context("LLEN reply")?;
        if waiting != n + warmup {
            bail!("{waiting} jobs waiting in {queue}, expected {}", n + warmup);
        }

        let value = match used_memory {
            Some((b, a)) => (a as f64 - b as f64) / n.max(1) as f64,
            None => n as f64 / (elapsed.as_secs_f64().max(1e-9)),
        };
        Ok(RunRecord {
            workload: w,
            side,
            rep,
            queue,
            n,
            warmup,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            value,
            used_memory,
            commandstats,
            redis_cpu_ms,
            client_cpu_ms,
        })
    }

    /// bullpen: one connection, one `Queue`; returns the time of the `n` timed adds and the
    /// CPU time this process used meanwhile. The connection is closed before returning.
    async fn bullpen_adds(
        &self,
        w: Workload,
        queue: &str,
        n: u64,
        warmup: u64,
    ) -> Result<(Duration, Option<f64>)> {
        let conn = Connection::connect(RedisOptions::from_url(&self.url)?.producer()).await?;
        let q = Queue::new(conn.clone(), queue, QueueOptions::default()).await?;
        let result = async {
            if warmup > 0 {
                add_with(w, &q, n, warmup).await?;
            }
            let cpu = process_cpu_ms();
            let t = Instant::now();
            add_with(w, &q, 0, n).await?;
            let elapsed = t.elapsed();
            let cpu = match (cpu, process_cpu_ms()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            Ok::<_, anyhow::Error>((elapsed, cpu))
        }
        .await;
        drop(q);
        conn.close();
        result
    }

    /// Node: one `bench_add.mjs` process; returns the time and CPU time it reports for its
    /// timed adds.
    async fn node_adds(
        &self,
        w: Workload,
        queue: &str,
        n: u64,
        warmup: u64,
    ) -> Result<(Duration, Option<f64>)> {
        let input = json!({
            "url": self.url,
            "queue": queue,
            "workload": w.node_mode(),
            "n": n,
            "warmup": warmup,
            "concurrency": CONCURRENCY,
            "batch": BATCH,
            "opts": node_job_opts(),
            "timeoutMs": RUN_TIMEOUT.as_millis() as u64,
        });
        let out = run_node(
            "bench_add.mjs",
            &input,
            RUN_TIMEOUT + Duration::from_secs(10),
        )
        .await
        .map_err(|e| anyhow!(e))?;
        let ms = out["elapsedMs"]
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| anyhow!("bench_add.mjs printed no elapsedMs: {out}"))?;
        if out["n"].as_u64() != Some(n) {
            bail!("bench_add.mjs reports n = {}, expected {n}", out["n"]);
        }
        let cpu = out["cpuMs"].as_f64().filter(|v| v.is_finite() && *v >= 0.0);
        Ok((Duration::from_secs_f64(ms / 1e3), cpu))
    }
}

/// CPU time of this process so far (user + system, all threads), ms.
fn process_cpu_ms() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
    Some(ms(u.user_time()) + ms(u.system_time()))
}

/// Adds jobs `first..first + count` to `q` the way workload `w` does.
async fn add_with(w: Workload, q: &Queue, first: u64, count: u64) -> Result<()> {
    let end = first + count;
    match w {
        Workload::AddSequential => {
            let opts = job_opts();
            for i in first..end {
                q.add(JOB_NAME, &data_for(i), opts.clone()).await?;
            }
        }
        Workload::AddConcurrent => {
            // CONCURRENCY tasks, each taking the next index until all are taken: at most
            // CONCURRENCY adds in flight, all on the queue's one connection.
            let next = Arc::new(AtomicU64::new(first));
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY.min(count) {
                let (q, next) = (q.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let opts = job_opts();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok::<_, bullpen_producer::Error>(());
                        }
                        q.add(JOB_NAME, &data_for(i), opts.clone()).await?;
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
        }
        Workload::AddBulk | Workload::MemoryPerWaitingJob => {
            let opts = job_opts();
            let mut start = first;
            while start < end {
                let stop = (start + BATCH).min(end);
                let jobs: Vec<BulkJob<BenchData>> = (start..stop)
                    .map(|i| BulkJob::new(JOB_NAME, data_for(i), opts.clone()))
                    .collect();
                let added = q.add_bulk(&jobs).await?;
                if added.len() != jobs.len() {
                    bail!(
                        "add_bulk returned {} outcomes for {} jobs",
                        added.len(),
                        jobs.len()
                    );
                }
                start = stop;
            }
        }
    }
    Ok(())
}

// ---- results ----

/// Per workload and side: median and (min, max) of the values, and the median server
/// script time per job.
struct SideStats {
    median: Option<f64>,
    spread: Option<(f64, f64)>,
    script_usec_per_job: Option<f64>,
    redis_cpu_usec_per_job: Option<f64>,
    client_cpu_usec_per_job: Option<f64>,
}

struct WorkloadSummary {
    workload: Workload,
    n: u64,
    bullpen: SideStats,
    node: SideStats,
    ratio: Option<f64>,
}

fn side_stats(runs: &[RunRecord], w: Workload, side: Side) -> SideStats {
    let mine: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.workload == w && r.side == side)
        .collect();
    let values: Vec<f64> = mine.iter().map(|r| r.value).collect();
    let script: Vec<f64> = mine.iter().map(|r| r.script_usec_per_job()).collect();
    let cpu: Vec<f64> = mine.iter().map(|r| r.redis_cpu_usec_per_job()).collect();
    let client: Vec<f64> = mine
        .iter()
        .filter_map(|r| r.client_cpu_usec_per_job())
        .collect();
    SideStats {
        median: median(&values),
        spread: spread(&values),
        script_usec_per_job: median(&script),
        redis_cpu_usec_per_job: median(&cpu),
        client_cpu_usec_per_job: median(&client),
    }
}

fn summarise(runs: &[RunRecord]) -> Vec<WorkloadSummary> {
    Workload::ALL
        .iter()
        .filter_map(|&w| {
            let n = runs.iter().find(|r| r.workload == w)?.n;
            let bullpen = side_stats(runs, w, Side::Bullpen);
            let node = side_stats(runs, w, Side::Node);
            let ratio = ratio(bullpen.median, node.median);
            Some(WorkloadSummary {
                workload: w,
                n,
                bullpen,
                node,
                ratio,
            })
        })
        .collect()
}

fn describe(w: Workload, s: &SideStats) -> String {
    match (s.median, s.spread) {
        (Some(m), Some((lo, hi))) => format!("{} ({}–{})", w.format(m), w.format(lo), w.format(hi)),
        _ => "not measured".to_owned(),
    }
}

fn print_summary(summary: &[WorkloadSummary], node_skip: Option<&str>) {
    println!("\n==> results: median (min–max)");
    for s in summary {
        let w = s.workload;
        println!("{} (n = {}, {}, {})", w.key(), s.n, w.unit(), w.better());
        println!("    bullpen      {}", describe(w, &s.bullpen));
        println!("    {NODE_LABEL:<12} {}", describe(w, &s.node));
        match s.ratio {
            Some(r) => println!("    bullpen / Node: {r:.2}"),
            None => println!(
                "    bullpen / Node: none ({})",
                node_skip.unwrap_or("no Node result")
            ),
        }
        let us = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1} µs"));
        println!(
            "    server time in scripts per job: bullpen {}, Node {}",
            us(s.bullpen.script_usec_per_job),
            us(s.node.script_usec_per_job)
        );
        println!(
            "    redis-server CPU per job: bullpen {}, Node {}",
            us(s.bullpen.redis_cpu_usec_per_job),
            us(s.node.redis_cpu_usec_per_job)
        );
        println!(
            "    client CPU per job: bullpen {}, Node {}",
            us(s.bullpen.client_cpu_usec_per_job),
            us(s.node.client_cpu_usec_per_job)
        );
    }
}

fn markdown_table(summary: &[WorkloadSummary], node: bool) -> String {
    let mut t = format!(
        "| Workload | n | bullpen, median (min–max) | {NODE_LABEL} {BULLMQ_VERSION}, median (min–max) | bullpen / Node |\n|---|---:|---:|---:|---:|\n"
    );
    for s in summary {
        let w = s.workload;
        let ratio = match s.ratio {
            Some(r) => format!("**{r:.2}**"),
            None if node => "–".to_owned(),
            None => "not measured".to_owned(),
        };
        t.push_str(&format!(
            "| `{}` ({}, {}) | {} | {} | {} | {} |\n",
            w.key(),
            w.unit(),
            w.better(),
            group_thousands(s.n as f64),
            describe(w, &s.bullpen),
            describe(w, &s.node),
            ratio
        ));
    }
    t
}

fn medians_json(summary: &[WorkloadSummary], pick: fn(&WorkloadSummary) -> &SideStats) -> Value {
    let map: serde_json::Map<String, Value> = summary
        .iter()
        .filter_map(|s| Some((s.workload.key().to_owned(), json!(pick(s).median?))))
        .collect();
    Value::Object(map)
}

fn report_json(
    summary: &[WorkloadSummary],
    runs: &[RunRecord],
    machine: Value,
    command: &str,
    cfg: &Config,
    node_skip: Option<&str>,
) -> Value {
    let ratios: serde_json::Map<String, Value> = summary
        .iter()
        .map(|s| (s.workload.key().to_owned(), json!(s.ratio)))
        .collect();
    let workloads: serde_json::Map<String, Value> = summary
        .iter()
        .map(|s| {
            let w = s.workload;
            (
                w.key().to_owned(),
                json!({
                    "n": s.n,
                    "warmup": w.warmup(cfg.quick),
                    "unit": w.unit(),
                    "better": w.better(),
                    "bullpen_min_max": s.bullpen.spread.map(|(a, b)| [a, b]),
                    "node_min_max": s.node.spread.map(|(a, b)| [a, b]),
                    "bullpen_script_usec_per_job": s.bullpen.script_usec_per_job,
                    "node_script_usec_per_job": s.node.script_usec_per_job,
                    "bullpen_redis_cpu_usec_per_job": s.bullpen.redis_cpu_usec_per_job,
                    "node_redis_cpu_usec_per_job": s.node.redis_cpu_usec_per_job,
                    "bullpen_client_cpu_usec_per_job": s.bullpen.client_cpu_usec_per_job,
                    "node_client_cpu_usec_per_job": s.node.client_cpu_usec_per_job,
                }),
            )
        })
        .collect();
    json!({
        "machine": machine,
        "command": command,
        "quick": cfg.quick,
        "reps": cfg.reps,
        "node": if node_skip.is_some() { json!(null) } else { medians_json(summary, |s| &s.node) },
        "node_skipped": node_skip,
        "job_options": node_job_opts(),
        "concurrency": CONCURRENCY,
        "batch": BATCH,
        "workloads": workloads,
        "bullpen": medians_json(summary, |s| &s.bullpen),
        "ratios": if node_skip.is_some() { json!(null) } else { Value::Object(ratios) },
        "runs": runs.iter().map(RunRecord::to_json).collect::<Vec<_>>(),
    })
}

/// Turns off what allocates server memory during a run without being job data: the
/// per-command latency histograms (created on a command's first call after `CONFIG
/// RESETSTAT`) and the slow log (an entry per call over 10 ms, which big bulk calls are).
/// Both are the same for both sides; off, `used_memory` grows by the jobs alone. Returns
/// what was set, or why not (`latency-tracking` exists from Redis 7.0).
fn quiet_server(server: &RedisServer) -> Value {
    let mut set = serde_json::Map::new();
    for (key, value) in [
        ("latency-tracking", "no"),
        ("slowlog-log-slower-than", "-1"),
    ] {
        let outcome = match server.admin(&["CONFIG", "SET", key, value]) {
            Ok(_) => json!(value),
            Err(e) => {
                println!("==> note: CONFIG SET {key} {value} failed: {e}");
                json!(format!("not set: {e}"))
            }
        };
        set.insert(key.to_owned(), outcome);
    }
    set.insert("appendonly".into(), json!("no"));
    set.insert("save".into(), json!(""));
    Value::Object(set)
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(prefix).map(|v| {
            v.trim()
                .trim_start_matches(':')
                .trim()
                .trim_matches('"')
                .to_owned()
        })
    })
}

/// A Lua script shaped like an add (counter, job hash, wait list, event), run by
/// `redis-benchmark` to record what this server can do at most, so that a table made on
/// another machine can be compared. It never fails the bench.
const CALIBRATION_SCRIPT: &str = "local id = redis.call('INCR', KEYS[1]) \
    redis.call('HSET', KEYS[1] .. '-' .. id, 'name', 'bench', 'data', ARGV[1], 'opts', '{}', 'timestamp', '0', 'delay', '0', 'priority', '0') \
    redis.call('LPUSH', KEYS[1] .. '-wait', id) \
    redis.call('XADD', KEYS[1] .. '-events', 'MAXLEN', '~', '10000', '*', 'event', 'added', 'jobId', id) \
    return id";

/// Parses the ops/s out of `redis-benchmark -q` output (the last line that has them).
fn parse_benchmark_ops(text: &str) -> Option<f64> {
    text.split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))?
        .split("requests per second")
        .next()?
        .rsplit(':')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn calibrate(server: &RedisServer, quick: bool) -> Value {
    let n = if quick { 20_000 } else { 100_000 };
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-n",
            &n.to_string(),
            "-c",
            "20",
            "-q",
        ])
        .args(["EVAL", CALIBRATION_SCRIPT, "1", "calibration", r#"{"n":1}"#])
        .output();
    match out {
        Ok(o) if o.status.success() => json!({
            "tool": "redis-benchmark",
            "clients": 20,
            "requests": n,
            "add_like_script_ops_per_sec": parse_benchmark_ops(&String::from_utf8_lossy(&o.stdout)),
        }),
        Ok(o) => json!({"unavailable": String::from_utf8_lossy(&o.stderr).trim().to_owned()}),
        Err(e) => json!({"unavailable": format!("redis-benchmark: {e}")}),
    }
}

fn machine_info(server: &RedisServer) -> Value {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let node_version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({
        "nproc": nproc,
        "cpu": first_line_with("/proc/cpuinfo", "model name"),
        "os": first_line_with("/etc/os-release", "PRETTY_NAME="),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "redis_version": server.info_field("redis_version").ok().flatten(),
        "node_version": node_version,
        "bullmq_version": BULLMQ_VERSION,
        "bullpen_version": env!("CARGO_PKG_VERSION"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod calibration_tests {
    use super::parse_benchmark_ops;

    #[test]
    fn reads_the_final_rate_line() {
        let out = "EVAL local id: rps=0.0 (overall: 0.0) avg_msec=nan\rEVAL local id = redis.call('INCR'): 31182.79 requests per second, p50=0.551 msec\n";
        assert_eq!(parse_benchmark_ops(out), Some(31182.79));
        assert_eq!(parse_benchmark_ops("nothing"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN, 2.0]), None);
        // Order of input does not matter and the input is not changed.
        let v = [10.0, -1.0, 5.0, 5.0, 100.0];
        assert_eq!(median(&v), Some(5.0));
        assert_eq!(v, [10.0, -1.0, 5.0, 5.0, 100.0]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ramp: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&ramp, 50.0), Some(50.0));
        assert_eq!(percentile(&ramp, 99.0), Some(99.0));
        assert_eq!(percentile(&ramp, 100.0), Some(100.0));
        assert_eq!(percentile(&ramp, 0.5), Some(1.0));
        // 2,000 samples: p99 is the 1,980th smallest, so the 20 largest are above it.
        let mut big: Vec<f64> = (1..=2_000).map(f64::from).collect();
        big.reverse();
        assert_eq!(percentile(&big, 99.0), Some(1_980.0));
        assert_eq!(percentile(&big, 50.0), Some(1_000.0));
        // Small samples and ties.
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[3.0, 1.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0], 51.0), Some(3.0));
        assert_eq!(percentile(&[2.0, 2.0, 2.0, 9.0], 75.0), Some(2.0));
        // Nothing to rank, or a nonsense p.
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, f64::NAN], 50.0), None);
        assert_eq!(percentile(&ramp, 0.0), None);
        assert_eq!(percentile(&ramp, 100.5), None);
        assert_eq!(percentile(&ramp, f64::NAN), None);
    }

    #[test]
    fn spread_is_min_and_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
        assert_eq!(spread(&[-2.0]), Some((-2.0, -2.0)));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[1.0, f64::INFINITY]), None);
    }

    #[test]
    fn ratio_needs_both_sides_and_a_positive_denominator() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(2.0), None), None);
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(Some(2.0), Some(-1.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
    }

    #[test]
    fn commandstats_are_parsed() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=3300,usec=123456,usec_per_call=37.41,rejected_calls=0,failed_calls=0\r\ncmdstat_flushall:calls=1,usec=10,usec_per_call=10.00\r\nnoise\r\ncmdstat_bad:calls=x,usec=1\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(stats.get("evalsha"), Some(&(3300, 123456)));
        assert_eq!(stats.get("flushall"), Some(&(1, 10)));
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn script_time_per_job_counts_the_warmup() {
        let mut stats = BTreeMap::new();
        stats.insert("evalsha".to_owned(), (100, 900));
        stats.insert("eval".to_owned(), (1, 100));
        stats.insert("hset".to_owned(), (100, 5000));
        let r = RunRecord {
            workload: Workload::AddSequential,
            side: Side::Bullpen,
            rep: 1,
            queue: "q".into(),
            n: 90,
            warmup: 10,
            elapsed_ms: 1.0,
            value: 1.0,
            used_memory: None,
            commandstats: stats,
            redis_cpu_ms: 2.0,
            client_cpu_ms: Some(4.5),
        };
        assert_eq!(r.script_usec_per_job(), 10.0);
        assert_eq!(r.redis_cpu_usec_per_job(), 20.0);
        // Client CPU is measured over the timed adds only.
        assert_eq!(r.client_cpu_usec_per_job(), Some(50.0));
    }

    #[test]
    fn summary_takes_medians_per_side_and_their_ratio() {
        let run = |side, rep, value| RunRecord {
            workload: Workload::AddBulk,
            side,
            rep,
            queue: String::new(),
            n: 10,
            warmup: 0,
            elapsed_ms: 1.0,
            value,
            used_memory: None,
            commandstats: BTreeMap::new(),
            redis_cpu_ms: 0.0,
            client_cpu_ms: None,
        };
        let runs = vec![
            run(Side::Bullpen, 1, 300.0),
            run(Side::Node, 1, 100.0),
            run(Side::Bullpen, 2, 200.0),
            run(Side::Node, 2, 150.0),
            run(Side::Bullpen, 3, 400.0),
            run(Side::Node, 3, 50.0),
        ];
        let s = summarise(&runs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].bullpen.median, Some(300.0));
        assert_eq!(s[0].bullpen.spread, Some((200.0, 400.0)));
        assert_eq!(s[0].node.median, Some(100.0));
        assert_eq!(s[0].ratio, Some(3.0));
        let table = markdown_table(&s, true);
        assert!(table.contains("| `add_bulk` (jobs/s, higher is better) | 10 | 300 (200–400) | 100 (50–150) | **3.00** |"), "{table}");
    }

    #[test]
    fn queue_names_have_one_length() {
        // Add, worker and latency runs, both sides.
        let most = u64::from(MAX_REPS)
            * 2
            * (Workload::ALL.len() + worker::WorkerWorkload::all().len() + 1) as u64;
        assert_eq!(queue_name(1), "bench0001");
        assert_eq!(queue_name(most).len(), queue_name(1).len());
    }

    #[test]
    fn cpu_time_is_parsed() {
        let text = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(parse_cpu_ms(text), Some(3750.0));
        assert_eq!(parse_cpu_ms("used_cpu_sys:1.0\r\n"), None);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0.4), "0");
        assert_eq!(group_thousands(999.0), "999");
        assert_eq!(group_thousands(1000.0), "1,000");
        assert_eq!(group_thousands(1234567.8), "1,234,568");
        assert_eq!(group_thousands(-12345.0), "-12,345");
    }

    #[test]
    fn args_are_parsed() {
        assert_eq!(
            parse_args(&[]).expect("no args"),
            Config {
                quick: false,
                reps: 3,
                only: vec![]
            }
        );
        assert_eq!(
            parse_args(&args(&["--quick", "--reps", "5"])).expect("quick, 5"),
            Config {
                quick: true,
                reps: 5,
                only: vec![]
            }
        );
        assert_eq!(parse_args(&args(&["--reps=7"])).expect("7").reps, 7);
        assert!(parse_args(&args(&["--reps"])).is_err());
        assert!(parse_args(&args(&["--reps", "2"])).is_err());
        assert!(parse_args(&args(&["--reps", "x"])).is_err());
        assert!(parse_args(&args(&["--fast"])).is_err());
        let cfg = parse_args(&args(&[
            "--only",
            "worker",
            "--only=latency",
            "--only",
            "worker",
        ]))
        .expect("only");
        assert_eq!(cfg.only, vec![Part::Worker, Part::Latency]);
        assert!(cfg.runs(Part::Worker) && cfg.runs(Part::Latency) && !cfg.runs(Part::Add));
        assert!(parse_args(&[]).expect("all").runs(Part::Add));
        assert!(parse_args(&args(&["--only"])).is_err());
        assert!(parse_args(&args(&["--only", "adds"])).is_err());
    }

    #[test]
    fn both_sides_get_the_same_job_options() {
        let stored = Value::Object(job_opts().to_stored());
        assert_eq!(
            stored["removeOnComplete"],
            node_job_opts()["removeOnComplete"]
        );
        assert_eq!(stored["removeOnFail"], node_job_opts()["removeOnFail"]);
        assert_eq!(
            serde_json::to_string(&data_for(7)).expect("json"),
            r#"{"user":12345,"email":"user@example.com","n":7}"#
        );
    }
}
