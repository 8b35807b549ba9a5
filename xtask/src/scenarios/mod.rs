//! The reliability plan's fault scenarios (§2.4) and the S1 soak (§4.3), run by
//! `cargo xtask integration` after the topology matrix.
//!
//! Each scenario gets a fresh directory `target/integration/<scenario>/` holding the
//! producer ledger, one ledger per worker process, `faults.log` and `report.json`. Workers
//! are real processes (`cargo xtask scenario-worker`, [`worker_proc`]) with the plan's
//! timing profile ([`TP`]); the producer runs in this process. After the fault is healed the
//! producer stops, healthy workers drain the queue, and [`ledger::check`] holds the ledgers
//! against what Redis holds: lost, completed twice, extra executions each explained by an
//! injected fault, stalled accounting and orphans.
//!
//! Groups: [`a_redis`] (Redis process faults), [`b_network`] (connections and network),
//! [`c_server`] (server state), [`d_topology`] (Sentinel and Cluster), [`e_process`]
//! (worker processes) and [`soak`].

pub mod a_redis;
pub mod b_network;
pub mod c_server;
pub mod d_topology;
pub mod e_process;
pub mod ledger;
pub mod soak;
pub mod worker_proc;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_conn::{redis, Connection, RedisOptions, RetryStrategy};
use bullpen_core::QueueKeys;
use bullpen_producer::{AddStatus, Backoff, BackoffKind, JobOptions, Queue, QueueOptions};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::integration::Outcome;
use ledger::{
    check, now_ms, read_producer, read_truth, read_worker, CheckOpts, EventCounts, FaultWindow,
    Ledger, Metrics, ProducerLedger, Truth, WorkerLedger,
};
use worker_proc::{WorkerConfig, WorkerProc};

/// The timing profile of a run (reliability plan §2.2).
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub lock: Duration,
    pub stalled: Duration,
    pub max_stalled: u32,
    /// The blocking fetch's timeout (`drain_delay`); its watchdog fires 1 s later.
    pub block: Duration,
    pub backoff_floor: Duration,
    pub backoff_cap: Duration,
    /// Grace of a worker's graceful shutdown.
    pub grace: Duration,
    /// `maxLenEvents`: large enough to keep every event of a correctness run.
    pub max_len_events: u64,
}

/// The test profile: lock 4 s, stalled check every 1 s, one stall tolerated, blocking
/// fetch 2 s, reconnect backoff 50 ms to 2 s, grace 5 s.
pub const TP: Profile = Profile {
    lock: Duration::from_secs(4),
    stalled: Duration::from_secs(1),
    max_stalled: 1,
    block: Duration::from_secs(2),
    backoff_floor: Duration::from_millis(50),
    backoff_cap: Duration::from_secs(2),
    grace: Duration::from_secs(5),
    max_len_events: 1_000_000,
};

impl Profile {
    /// P5: a killed worker's job is re-run within lock + 2 × stalled interval + 1 s.
    pub fn rerun_bound(&self) -> Duration {
        self.lock + self.stalled * 2 + Duration::from_secs(1)
    }

    /// How long after a heal the effects of a fault may still show.
    pub fn explain_slack(&self) -> Duration {
        self.rerun_bound()
    }
}

/// P7: workers resume within 5 s after Redis is reachable again.
pub const RESUME_BOUND: Duration = Duration::from_secs(5);
/// P7: within 10 s after a Sentinel failover ends.
pub const FAILOVER_RESUME_BOUND: Duration = Duration::from_secs(10);
/// P6/P8: a producer call fails within 2 s.
pub const PRODUCER_BOUND: Duration = Duration::from_secs(2);

/// Exponential reconnect backoff with jitter between `floor` and `cap`.
pub fn retry_strategy(floor: Duration, cap: Duration) -> RetryStrategy {
    let state = AtomicU64::new(fresh_seed());
    RetryStrategy::custom(move |attempt| {
        let exp = attempt.saturating_sub(1).min(20);
        let raw = floor.saturating_mul(1u32 << exp).min(cap);
        let x = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let u = (mix(x) >> 11) as f64 / (1u64 << 53) as f64;
        Some(raw.mul_f64(1.0 - 0.25 * u).max(floor))
    })
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the clock and the process id.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(nanos ^ (u64::from(std::process::id()) << 32))
}

/// A small seeded generator (splitmix64), so that a run can be replayed from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }
}

/// What the whole run shares.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub full: bool,
    /// `target/integration`.
    pub root: PathBuf,
    /// This xtask binary, which runs the worker processes.
    pub exe: PathBuf,
    pub soak_minutes: f64,
}

impl Ctx {
    /// `fast` in the fast tier, `full` with `--full`.
    pub fn pick<T>(&self, fast: T, full: T) -> T {
        if self.full {
            full
        } else {
            fast
        }
    }
}

/// One scenario of the catalogue, and whether it is in the fast tier.
pub const CATALOGUE: &[(&str, bool)] = &[
    ("a1-0.5s", true),
    ("a1-5s", false),
    ("a1-30s", false),
    ("a1-5s-always", false),
    ("a1-5s-no", false),
    ("a2", true),
    ("a4-2s", true),
    ("a4-6s", false),
    ("a6", true),
    ("b1", true),
    ("b1-blocking", true),
    ("b3-5s", true),
    ("b3-35s", false),
    ("b3-kernel", false),
    ("b4-refuse", true),
    ("b4-reset", false),
    ("b6-finish", true),
    ("b6-add", true),
    ("b6-add-auto", false),
    ("c1", true),
    ("c2", true),
    ("d1a", true),
    // SENTINEL FAILOVER: connections follow the sentinels' announcement, and the old master
    // (min-replicas-to-write 1) refuses writes once its replica is promoted; loss measured,
    // bounded by the replication window.
    ("d1b", true),
    ("d2a", true),
    ("d2b", false),
    ("d4", true),
    ("e1", true),
    ("e2", true),
    ("e3", true),
    ("e5", true),
    ("s1", false),
];

/// Whether `--only` token `token` names scenario `name`: its full name, its id before the
/// variant (`a1` for `a1-5s`), or its group of letters (`d1` for `d1a`).
pub fn token_matches(token: &str, name: &str) -> bool {
    let base = name.split('-').next().unwrap_or(name);
    token == name
        || token == base
        || (base.len() == token.len() + 1
            && base.starts_with(token)
            && base.ends_with(|c: char| c.is_ascii_alphabetic()))
}

/// Runs one scenario by name.
pub async fn run_one(ctx: &Ctx, name: &str, cluster_url: Option<&str>) -> Outcome {
    let t = Instant::now();
    let result = match name {
        "a1-0.5s" => a_redis::a1(ctx, name, Duration::from_millis(500), "everysec").await,
        "a1-5s" => a_redis::a1(ctx, name, Duration::from_secs(5), "everysec").await,
        "a1-30s" => a_redis::a1(ctx, name, Duration::from_secs(30), "everysec").await,
        "a1-5s-always" => a_redis::a1(ctx, name, Duration::from_secs(5), "always").await,
        "a1-5s-no" => a_redis::a1(ctx, name, Duration::from_secs(5), "no").await,
        "a2" => a_redis::a2(ctx, name).await,
        "a4-2s" => a_redis::a4(ctx, name, Duration::from_secs(2)).await,
        "a4-6s" => a_redis::a4(ctx, name, TP.lock + Duration::from_secs(2)).await,
        "a6" => a_redis::a6(ctx, name).await,
        "b1" => b_network::b1(ctx, name).await,
        "b1-blocking" => b_network::b1_blocking(ctx, name).await,
        "b3-5s" => b_network::b3(ctx, name, Duration::from_secs(5)).await,
        "b3-35s" => b_network::b3(ctx, name, Duration::from_secs(35)).await,
        "b3-kernel" => b_network::b3_kernel(ctx, name).await,
        "b4-refuse" => b_network::b4(ctx, name, false).await,
        "b4-reset" => b_network::b4(ctx, name, true).await,
        "b6-finish" => b_network::b6_finish(ctx, name).await,
        "b6-add" => b_network::b6_add(ctx, name, true).await,
        "b6-add-auto" => b_network::b6_add(ctx, name, false).await,
        "c1" => c_server::c1(ctx, name).await,
        "c2" => c_server::c2(ctx, name).await,
        "d1a" => d_topology::d1(ctx, name, true).await,
        "d1b" => d_topology::d1(ctx, name, false).await,
        "d2a" => d_topology::d2(name, 'a').await,
        "d2b" => d_topology::d2(name, 'b').await,
        "d4" => d_topology::d4(ctx, name, cluster_url).await,
        "e1" => e_process::e1(ctx, name).await,
        "e2" => e_process::e2(ctx, name).await,
        "e3" => e_process::e3(ctx, name).await,
        "e5" => e_process::e5(ctx, name).await,
        "s1" => soak::s1(ctx, name).await,
        other => Err(anyhow!("unknown scenario `{other}`")),
    };
    match result {
        Ok(o) => o,
        Err(e) => Outcome::failed(name, format!("{e:#}"), t.elapsed()),
    }
}

/// The job mix a producer offers.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Processor sleep, uniform in `ms_min..=ms_max`.
    pub ms_min: u64,
    pub ms_max: u64,
    /// Share of jobs (0..1) whose first attempt throws.
    pub throw_share: f64,
    /// Share of jobs that sleep `long_ms` instead.
    pub long_share: f64,
    pub long_ms: u64,
    /// Bytes of padding in each job's data.
    pub pad: usize,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            ms_min: 5,
            ms_max: 50,
            throw_share: 0.0,
            long_share: 0.0,
            long_ms: 0,
            pad: 0,
        }
    }
}

/// How a producer runs.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub url: String,
    /// Jobs per second (0: only explicit [`Producer::add_one`] calls).
    pub rate: f64,
    /// Adds in flight at most; beyond it an add is skipped (and counted).
    pub in_flight: usize,
    /// Give every job a custom id (`<nonce>-<seq>`).
    pub custom_ids: bool,
    pub job: JobSpec,
    /// `removeOnComplete` count (the queue's default retention); `None` keeps everything.
    pub retention: Option<u64>,
    pub attempts: u32,
}

impl ProducerSpec {
    /// `rate` jobs/s on `url`, with the default job mix, custom ids and no retention.
    pub fn new(url: &str, rate: f64) -> Self {
        Self {
            url: url.to_owned(),
            rate,
            in_flight: 32,
            custom_ids: true,
            job: JobSpec::default(),
            retention: None,
            attempts: 3,
        }
    }
}

struct ProducerInner {
    ledger: Ledger,
    queue: watch::Sender<Option<Queue>>,
    seq: AtomicU64,
    nonce: String,
    spec: ProducerSpec,
    rng: Mutex<Rng>,
    skipped: AtomicU64,
    in_flight: Arc<Semaphore>,
}

/// Whether a failed add certainly did not apply (`FAIL`) or may have (`INFO`), and a short
/// kind for the ledger.
fn classify_add_error(e: &bullpen_producer::Error) -> (bool, String) {
    match e {
        bullpen_producer::Error::Core(bullpen_core::Error::Redis { source, .. }) => {
            classify_conn_error(source)
        }
        _ => (false, "invalid".to_owned()),
    }
}

fn classify_conn_error(e: &bullpen_conn::Error) -> (bool, String) {
    use bullpen_conn::{Applied, Error as E};
    if let Some(code) = e.server_code() {
        let kind = code.to_ascii_lowercase();
        // Refused before running: the server checks these before the first write.
        let refused = matches!(
            code,
            "OOM" | "READONLY" | "NOREPLICAS" | "LOADING" | "MASTERDOWN" | "NOSCRIPT"
        );
        return (!refused && e.applied() == Applied::Unknown, kind);
    }
    let kind = match e {
        E::MaxRetriesPerRequest { last, .. } => return classify_conn_error(last),
        E::Unavailable { .. } => "unavailable",
        E::CommandTimeout { .. } => "timeout",
        E::ConnectionLost { .. } => "conn_lost",
        E::Offline { .. } => "offline",
        E::OfflineQueueFull { .. } => "queue_full",
        E::Ended { .. } => "ended",
        _ => "other",
    };
    (e.applied() == Applied::Unknown, kind.to_owned())
}

/// The in-process producer: adds jobs at a rate and writes the producer ledger.
pub struct Producer {
    inner: Arc<ProducerInner>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Producer {
    /// Starts connecting at once (retrying until it can) and adding at the spec's rate.
    pub fn start(scene: &Scene, spec: ProducerSpec) -> Result<Self> {
        let inner = Arc::new(ProducerInner {
            ledger: Ledger::open(&scene.dir.join("producer.ledger"))?,
            queue: watch::channel(None).0,
            seq: AtomicU64::new(0),
            nonce: scene.nonce.clone(),
            rng: Mutex::new(Rng::new(fresh_seed())),
            skipped: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(spec.in_flight.max(1))),
            spec,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(produce(
            inner.clone(),
            scene.queue.clone(),
            scene.prefix.clone(),
            scene.profile.max_len_events,
            stop_rx,
        ));
        Ok(Self {
            inner,
            stop,
            task: Some(task),
        })
    }

    /// Adds one job of `kind` sleeping `ms`, once the queue is open (within 30 s); returns
    /// its payload and job id (when acknowledged).
    pub async fn add_one(&self, kind: &str, ms: u64) -> Result<(String, Option<String>)> {
        let mut rx = self.inner.queue.subscribe();
        let opened = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|q| q.is_some()))
            .await
            .map_err(|_| anyhow!("the producer could not open the queue within 30 s"))?
            .map_err(|_| anyhow!("the producer stopped"))?
            .clone();
        let queue = opened.ok_or_else(|| anyhow!("no queue"))?;
        Ok(add(&self.inner, &queue, kind, ms).await)
    }

    /// Adds skipped because too many were in flight.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Stops adding and waits (at most 5 s) for the adds in flight.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let n = u32::try_from(self.inner.spec.in_flight.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.in_flight.acquire_many(n))
            .await;
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn open_queue(
    spec: &ProducerSpec,
    queue: &str,
    prefix: &str,
    max_len_events: u64,
) -> Result<Queue> {
    let opts = RedisOptions::from_url(&spec.url)?
        .producer()
        .with_retry_strategy(retry_strategy(TP.backoff_floor, TP.backoff_cap));
    let conn = Connection::connect(opts).await?;
    let mut qo = QueueOptions::default().with_prefix(prefix);
    if spec.retention.is_none() {
        qo = qo.keep_everything();
    } else if let Some(n) = spec.retention {
        qo.default_job_options.remove_on_complete = Some(bullpen_producer::KeepJobs::Count(n));
    }
    qo.max_len_events = max_len_events;
    Ok(Queue::new(conn, queue, qo).await?)
}

async fn produce(
    inner: Arc<ProducerInner>,
    queue: String,
    prefix: String,
    max_len_events: u64,
    mut stop: watch::Receiver<bool>,
) {
    let q = loop {
        if *stop.borrow() {
            return;
        }
        match open_queue(&inner.spec, &queue, &prefix, max_len_events).await {
            Ok(q) => break q,
            Err(e) => {
                inner
                    .ledger
                    .line(&format!("ERROR {} opening the queue: {e:#}", now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    };
    inner.queue.send_replace(Some(q.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut budget = 0.0f64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        budget += inner.spec.rate * now.duration_since(last).as_secs_f64();
        last = now;
        while budget >= 1.0 {
            budget -= 1.0;
            let Ok(permit) = inner.in_flight.clone().try_acquire_owned() else {
                inner.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (inner, q) = (inner.clone(), q.clone());
            tokio::spawn(async move {
                let (kind, ms) = pick_job(&inner);
                add(&inner, &q, &kind, ms).await;
                drop(permit);
            });
        }
    }
}

fn pick_job(inner: &ProducerInner) -> (String, u64) {
    let j = &inner.spec.job;
    let Ok(mut rng) = inner.rng.lock() else {
        return ("n".into(), j.ms_min);
    };
    let u = rng.unit();
    if u < j.long_share {
        ("long".into(), j.long_ms)
    } else if u < j.long_share + j.throw_share {
        ("throw".into(), rng.range(j.ms_min, j.ms_max))
    } else {
        ("n".into(), rng.range(j.ms_min, j.ms_max))
    }
}

async fn add(inner: &ProducerInner, q: &Queue, kind: &str, ms: u64) -> (String, Option<String>) {
    let seq = inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let payload = format!("{}.{seq}", inner.nonce);
    let custom = inner
        .spec
        .custom_ids
        .then(|| format!("{}-{seq}", inner.nonce));
    let mut data = json!({ "p": payload, "ms": ms, "k": kind });
    if inner.spec.job.pad > 0 {
        data["pad"] = Value::String("x".repeat(inner.spec.job.pad));
    }
    let mut opts = JobOptions::default();
    opts.job_id = custom.clone();
    opts.attempts = Some(inner.spec.attempts);
    let mut backoff = Backoff::new(BackoffKind::Fixed);
    backoff.delay_ms = Some(200);
    opts.backoff = Some(backoff);
    inner.ledger.line(&format!(
        "INV {seq} {payload} {} {}",
        custom.as_deref().unwrap_or("-"),
        now_ms()
    ));
    match q.add("job", &data, opts).await {
        Ok(out) => {
            let status = match out.status {
                AddStatus::Added => "added",
                AddStatus::Duplicated => "duplicated",
                AddStatus::Deduplicated => "deduplicated",
                _ => "other",
            };
            inner
                .ledger
                .line(&format!("OK {seq} {} {status} {}", out.id, now_ms()));
            (payload, Some(out.id))
        }
        Err(e) => {
            let (unknown, kind) = classify_add_error(&e);
            let tag = if unknown { "INFO" } else { "FAIL" };
            inner
                .ledger
                .line(&format!("{tag} {seq} {kind} {} {e}", now_ms()));
            (payload, None)
        }
    }
}

/// What a finished scenario knows: ledgers, truth and the checker's numbers.
pub struct Settled {
    pub producer: ProducerLedger,
    pub workers: Vec<WorkerLedger>,
    pub truth: Truth,
    pub metrics: Metrics,
    pub drained_in: Duration,
}

/// One scenario's directory, processes, faults and checks.
pub struct Scene {
    pub name: String,
    pub dir: PathBuf,
    pub queue: String,
    pub prefix: String,
    pub nonce: String,
    pub profile: Profile,
    pub workers: Vec<WorkerProc>,
    pub faults: Vec<FaultWindow>,
    exe: PathBuf,
    fault_log: Ledger,
    started: Instant,
}

impl Scene {
    /// A fresh `target/integration/<name>/`.
    pub fn new(ctx: &Ctx, name: &str, profile: Profile) -> Result<Self> {
        let dir = ctx.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let nonce = format!("j{:08x}", fresh_seed() as u32);
        Ok(Self {
            name: name.to_owned(),
            fault_log: Ledger::open(&dir.join("faults.log"))?,
            dir,
            queue: "scenario".to_owned(),
            prefix: "bull".to_owned(),
            nonce,
            profile,
            workers: Vec::new(),
            faults: Vec::new(),
            exe: ctx.exe.clone(),
            started: Instant::now(),
        })
    }

    /// The queue's keys.
    pub fn keys(&self) -> Result<QueueKeys> {
        Ok(QueueKeys::new(&self.prefix, &self.queue)?)
    }

    /// Starts a worker process on `url`, with `tweak` applied to its configuration; returns
    /// its index.
    pub fn spawn_worker(
        &mut self,
        url: &str,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> Result<usize> {
        let index = self.workers.len();
        let ledger = self.dir.join(format!("worker-{index}.ledger"));
        let mut cfg = WorkerConfig::new(url, &self.queue, &self.prefix, ledger, &self.profile);
        tweak(&mut cfg);
        self.workers
            .push(WorkerProc::spawn(&self.exe, &self.dir, index, cfg)?);
        Ok(index)
    }

    /// Waits until worker `index` wrote `READY`; returns that time.
    pub async fn wait_ready(&mut self, index: usize, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = read_worker(&self.workers[index].ledger, index);
            if let Some(t) = w.t_ready {
                return Ok(t);
            }
            if let Some(status) = self.workers[index].exited() {
                bail!(
                    "worker {index} exited with {status} before it was ready: {}",
                    w.errors
                        .last()
                        .map(|e| e.1.clone())
                        .unwrap_or_else(|| self.worker_output(index))
                );
            }
            if Instant::now() >= deadline {
                bail!("worker {index} was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn worker_output(&self, index: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("worker-{index}.out")))
            .unwrap_or_default();
        text.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    }

    /// Starts `n` workers with `concurrency` each on `url` and waits until they are ready.
    pub async fn start_workers(&mut self, url: &str, n: usize, concurrency: usize) -> Result<()> {
        let first = self.workers.len();
        for _ in 0..n {
            self.spawn_worker(url, |c| c.concurrency = concurrency)?;
        }
        for i in first..first + n {
            self.wait_ready(i, Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// Starts the producer.
    pub fn producer(&self, spec: ProducerSpec) -> Result<Producer> {
        Producer::start(self, spec)
    }

    /// Records the start of a fault; returns its handle for [`Scene::heal`].
    pub fn begin(&mut self, name: &str) -> usize {
        let t = now_ms();
        self.fault_log.line(&format!(
            "BEGIN {name} {t} +{:.3}s",
            self.started.elapsed().as_secs_f64()
        ));
        self.faults.push(FaultWindow {
            name: name.to_owned(),
            start: t,
            end: u64::MAX,
        });
        self.faults.len() - 1
    }

    /// Records the heal of fault `id`; returns the time.
    pub fn heal(&mut self, id: usize) -> u64 {
        let t = now_ms();
        if let Some(f) = self.faults.get_mut(id) {
            f.end = t;
            self.fault_log.line(&format!(
                "HEAL {} {t} +{:.3}s",
                f.name,
                self.started.elapsed().as_secs_f64()
            ));
        }
        t
    }

    /// Every worker ledger as written so far.
    pub fn read_workers(&self) -> Vec<WorkerLedger> {
        self.workers
            .iter()
            .map(|w| read_worker(&w.ledger, w.index))
            .collect()
    }

    /// Waits until the workers acknowledged `n` completions in all.
    pub async fn wait_acks(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let oks: usize = self
                .read_workers()
                .iter()
                .map(|w| w.runs.iter().filter(|r| r.acked_ok()).count())
                .sum();
            if oks >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("only {oks} of {n} completions within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some run of `payload` started at or after `after` (ms); returns it.
    pub async fn wait_start(
        &self,
        payload: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<ledger::Run> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .read_workers()
                .into_iter()
                .flat_map(|w| w.runs)
                .filter(|r| r.payload == payload && r.t_start >= after)
                .min_by_key(|r| r.t_start);
            if let Some(r) = found {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!("job {payload} did not start within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every worker still running (SIGTERM, then `kill -9` past grace + 3 s).
    pub async fn stop_workers(&mut self) {
        let timeout = self.profile.grace + Duration::from_secs(3);
        for w in &mut self.workers {
            let _ = w.signal(nix::sys::signal::Signal::SIGCONT);
            let _ = w.signal(nix::sys::signal::Signal::SIGTERM);
        }
        for w in &mut self.workers {
            if w.wait_exit(timeout).await.is_none() {
                let _ = w.kill9();
            }
        }
    }

    /// The end of every scenario: stop the producer, let healthy workers drain the queue,
    /// stop them, read the ledgers and the truth, run the checker and write `report.json`.
    pub async fn settle(
        &mut self,
        producer: Option<Producer>,
        check_url: &str,
        o: &CheckOpts,
    ) -> Result<Settled> {
        if let Some(p) = producer {
            p.stop().await;
        }
        let conn = check_connection(check_url).await?;
        let keys = self.keys()?;
        let hold = self.profile.stalled * 2;
        let drained_in = drain(&conn, &keys, hold, Duration::from_secs(90)).await;
        self.stop_workers().await;
        let drained_in = drained_in?;
        let truth = read_truth(&conn, &keys, true).await?;
        conn.close();
        let producer = read_producer(&self.dir.join("producer.ledger"));
        let workers = self.read_workers();
        let metrics = check(&producer, &workers, &truth, &truth.events, &self.faults, o);
        Ok(Settled {
            producer,
            workers,
            truth,
            metrics,
            drained_in,
        })
    }

    /// Default checker options for this scene.
    pub fn check_opts(&self) -> CheckOpts {
        CheckOpts {
            measured_loss: false,
            max_stalled: self.profile.max_stalled,
            explain_slack_ms: u64::try_from(self.profile.explain_slack().as_millis())
                .unwrap_or(u64::MAX),
            events_complete: true,
            ledger_done: false,
            events_done: false,
            failover: false,
        }
    }

    /// Writes `report.json` and builds the outcome line.
    pub fn finish(
        &self,
        settled: Option<&Settled>,
        resume: Option<Duration>,
        verdict: Verdict,
        extra: Value,
    ) -> Outcome {
        let took = self.started.elapsed();
        let m = settled.map(|s| s.metrics.clone()).unwrap_or_default();
        let ok = verdict.problems.is_empty();
        let mut parts = Vec::new();
        if !ok {
            parts.push(format!("FAILED: {}", verdict.problems.join("; ")));
        }
        parts.extend(verdict.notes.iter().cloned());
        let faults: Vec<Value> = self
            .faults
            .iter()
            .map(|f| json!({"fault": f.name, "start_ms": f.start, "end_ms": f.end}))
            .collect();
        let report = json!({
            "scenario": self.name, "pass": ok, "problems": verdict.problems,
            "notes": verdict.notes, "metrics": m.to_json(), "faults": faults,
            "resume_ms": resume.map(|r| r.as_millis() as u64),
            "drained_in_ms": settled.map(|s| s.drained_in.as_millis() as u64),
            "seconds": took.as_secs_f64(), "extra": extra,
        });
        let _ = std::fs::write(
            self.dir.join("report.json"),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
        Outcome {
            cell: self.name.clone(),
            ok,
            skipped: false,
            detail: parts.join("; "),
            jobs: m.attempted,
            lost: m.lost,
            twice: m.twice,
            resume,
            took,
            report: Some(report),
        }
    }
}

/// The problems (which fail a scenario) and the notes (which describe it).
#[derive(Debug, Default)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Verdict {
    /// Records a problem unless `ok`.
    pub fn require(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.problems.push(what.into());
        }
    }

    /// Adds a note.
    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// The checks every scenario shares: nothing lost (unless measured), nothing completed
    /// twice, every extra execution explained, no unexpected payload, no orphan, the stalled
    /// accounting right, and no lagging ledger.
    pub fn standard(&mut self, m: &Metrics, measured_loss: bool) {
        if measured_loss {
            self.note(format!(
                "measured loss {} of {} acknowledged",
                m.lost, m.acked
            ));
        } else {
            self.require(
                m.lost == 0,
                format!(
                    "{} acknowledged jobs lost (e.g. {:?})",
                    m.lost, m.lost_examples
                ),
            );
        }
        self.require(
            m.twice == 0,
            format!("{} completed twice (e.g. {:?})", m.twice, m.twice_examples),
        );
        self.require(
            m.unexplained == 0,
            format!(
                "{} unexplained extra executions (e.g. {:?})",
                m.unexplained, m.unexplained_examples
            ),
        );
        self.require(
            m.over_bound == 0,
            format!(
                "{} jobs ran more than 1 + maxStalledCount extra times",
                m.over_bound
            ),
        );
        self.require(
            m.unexpected == 0,
            format!("{} unexpected payloads", m.unexpected),
        );
        self.require(m.orphans == 0, format!("{} orphan job hashes", m.orphans));
        self.require(
            m.stalled_mismatch == 0,
            format!(
                "{} jobs whose stc differs from their stalled events",
                m.stalled_mismatch
            ),
        );
        self.require(
            m.lagged == 0,
            format!("worker ledgers lagged by {} events", m.lagged),
        );
        self.require(
            m.pending == 0,
            format!("{} jobs still pending after the drain", m.pending),
        );
        self.note(format!(
            "{} acked, {} FAIL, {} INFO ({} recovered); {} runs, extra {} (explained {})",
            m.acked,
            m.failed_adds,
            m.unknown_adds,
            m.recovered,
            m.runs,
            m.extra,
            m.extra - m.unexplained
        ));
    }

    /// Requires `resume` within `bound`.
    pub fn resume(&mut self, what: &str, resume: Option<Duration>, bound: Duration) {
        match resume {
            Some(r) => self.require(
                r <= bound,
                format!(
                    "{what} took {:.2}s (bound {:.0}s)",
                    r.as_secs_f64(),
                    bound.as_secs_f64()
                ),
            ),
            None => self.problems.push(format!("{what}: never")),
        }
    }
}

/// Milliseconds between two ledger times, as a duration.
pub fn since(from: u64, to: Option<u64>) -> Option<Duration> {
    to.map(|t| Duration::from_millis(t.saturating_sub(from)))
}

/// A worker-preset connection for the harness' own reads (drain, truth).
pub async fn check_connection(url: &str) -> Result<Connection> {
    let opts = RedisOptions::from_url(url)?
        .worker()
        .with_retry_strategy(retry_strategy(TP.backoff_floor, TP.backoff_cap));
    Ok(
        tokio::time::timeout(Duration::from_secs(30), Connection::connect(opts))
            .await
            .map_err(|_| anyhow!("the harness could not connect to {url} within 30 s"))??,
    )
}

/// Jobs waiting, active, delayed, prioritized or paused.
pub async fn pending(conn: &Connection, keys: &QueueKeys) -> Result<u64> {
    let mut pipe = redis::pipe();
    pipe.cmd("LLEN").arg(keys.key("wait"));
    pipe.cmd("LLEN").arg(keys.key("active"));
    pipe.cmd("LLEN").arg(keys.key("paused"));
    pipe.cmd("ZCARD").arg(keys.key("delayed"));
    pipe.cmd("ZCARD").arg(keys.key("prioritized"));
    let counts: Vec<u64> = conn.query_pipeline(&pipe).await?;
    Ok(counts.iter().sum())
}

/// Waits until nothing is pending and that has held for `hold` (the plan's drain).
pub async fn drain(
    conn: &Connection,
    keys: &QueueKeys,
    hold: Duration,
    deadline: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), pending(conn, keys))
            .await
            .map_err(|_| anyhow!("reading the queue's counts timed out"))??;
        if n == 0 {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= hold {
                return Ok(start.elapsed());
            }
        } else {
            empty_since = None;
        }
        if start.elapsed() > deadline {
            bail!("the queue did not drain within {deadline:?} ({n} jobs pending)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a blocking closure (a testkit server operation) without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Outcome for a scenario that could not run here, with the reason.
pub fn skipped(name: &str, why: String) -> Outcome {
    Outcome {
        cell: name.to_owned(),
        ok: true,
        skipped: true,
        detail: why,
        jobs: 0,
        lost: 0,
        twice: 0,
        resume: None,
        took: Duration::ZERO,
        report: None,
    }
}

/// Events counts from a finished run, for scenarios that need them directly.
pub fn event_count(events: &EventCounts, job: &str, name: &str) -> u32 {
    events
        .get(job)
        .and_then(|e| e.get(name).copied())
        .unwrap_or(0)
}
