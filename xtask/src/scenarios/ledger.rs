//! The ledgers of the reliability plan (§2.3) and the checker that holds them against Redis'
//! own truth.
//!
//! Every record is one line written with one `write(2)` to a file opened with `O_APPEND`, so
//! a `kill -9` of the writer loses no completed record. The producer writes
//! `INV <seq> <payload> <custom_id|-> <t>` before each add and then one of
//! `OK <seq> <job_id> <added|duplicated|deduplicated> <t>`, `FAIL <seq> <kind> <t>` (certainly
//! not applied) or `INFO <seq> <kind> <t>` (outcome unknown). A worker process writes
//! `START <job_id> <payload> <attempt> <token> <pid> <t>` on entry to the processor,
//! `EFFECT <job_id> <payload> <token> <t>` at its end (the side effect at-least-once exposes),
//! `ACK <job_id> <token> <ok|failed|retry|lock_lost|error:<kind>> <t>` once the finish script
//! answered, `LOCKLOST <job_id> <token> <t>` when renewal failed, and `BOOT`, `READY`,
//! `CANCEL`, `STALLED`, `ERROR`, `LAGGED` and `EXIT` lines. Times are wall-clock
//! milliseconds since the epoch, shared by every process of the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bullpen_conn::{redis, Connection};
use bullpen_core::QueueKeys;
use serde_json::{json, Value};

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An append-only ledger file.
#[derive(Debug)]
pub struct Ledger {
    file: std::fs::File,
}

impl Ledger {
    /// Opens (creating) `path` with `O_APPEND`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening ledger {}", path.display()))?;
        Ok(Self { file })
    }

    /// Appends one record: a single `write(2)` of the line and its newline. Newlines inside
    /// `text` are replaced, so one record is always one line.
    pub fn line(&self, text: &str) {
        let mut bytes = text.replace(['\n', '\r'], " ").into_bytes();
        bytes.push(b'\n');
        // A short write to a regular file does not happen short of a full disk.
        let _ = (&self.file).write(&bytes);
    }
}

/// What an add returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddResult {
    /// Acknowledged: the job id and whether it was new.
    Ok { job_id: String, status: String },
    /// Certainly not applied.
    Fail(String),
    /// The outcome is unknown.
    Info(String),
}

/// One add of the producer ledger.
#[derive(Clone, Debug)]
pub struct AddRecord {
    pub seq: u64,
    pub payload: String,
    pub t_inv: u64,
    pub result: Option<(AddResult, u64)>,
}

impl AddRecord {
    /// Milliseconds from `INV` to the outcome.
    pub fn latency_ms(&self) -> Option<u64> {
        self.result
            .as_ref()
            .map(|(_, t)| t.saturating_sub(self.t_inv))
    }
}

/// The producer ledger.
#[derive(Clone, Debug, Default)]
pub struct ProducerLedger {
    pub adds: Vec<AddRecord>,
    /// `ERROR <t> <message>` lines (construction failures and the like).
    pub errors: Vec<(u64, String)>,
}

/// Reads `producer*.ledger` files.
pub fn read_producer(path: &Path) -> ProducerLedger {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = ProducerLedger::default();
    let mut by_seq: HashMap<u64, usize> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match f.first().copied() {
            Some("INV") if f.len() >= 5 => {
                let (Some(seq), Some(t)) = (num(1), num(4)) else {
                    continue;
                };
                by_seq.insert(seq, out.adds.len());
                out.adds.push(AddRecord {
                    seq,
                    payload: f[2].to_owned(),
                    t_inv: t,
                    result: None,
                });
            }
            Some(kind @ ("OK" | "FAIL" | "INFO")) => {
                let Some(seq) = num(1) else { continue };
                let Some(&i) = by_seq.get(&seq) else { continue };
                let (result, t) = match kind {
                    "OK" if f.len() >= 5 => (
                        AddResult::Ok {
                            job_id: f[2].to_owned(),
                            status: f[3].to_owned(),
                        },
                        num(4),
                    ),
                    "FAIL" if f.len() >= 4 => (AddResult::Fail(f[2].to_owned()), num(3)),
                    "INFO" if f.len() >= 4 => (AddResult::Info(f[2].to_owned()), num(3)),
                    _ => continue,
                };
                if let Some(t) = t {
                    out.adds[i].result = Some((result, t));
                }
            }
            Some("ERROR") if f.len() >= 2 => {
                if let Some(t) = num(1) {
                    out.errors.push((t, f[2..].join(" ")));
                }
            }
            _ => {}
        }
    }
    out
}

/// One processor run, from a worker ledger.
#[derive(Clone, Debug)]
pub struct Run {
    pub job_id: String,
    pub payload: String,
    pub token: String,
    /// Index of the worker ledger it came from.
    pub worker: usize,
    pub t_start: u64,
    pub t_effect: Option<u64>,
    pub t_cancel: Option<u64>,
    pub t_lock_lost: Option<u64>,
    /// The finish outcome and its time.
    pub ack: Option<(String, u64)>,
}

impl Run {
    /// When the run was over, as far as the ledger knows (`None`: never heard of again,
    /// for instance because its process was killed).
    pub fn t_end(&self) -> Option<u64> {
        self.ack.as_ref().map(|(_, t)| *t).or(self.t_cancel)
    }

    /// Whether the finish was accepted as a completion.
    pub fn acked_ok(&self) -> bool {
        self.ack.as_ref().is_some_and(|(s, _)| s == "ok")
    }
}

/// One worker process ledger.
#[derive(Clone, Debug, Default)]
pub struct WorkerLedger {
    pub pid: Option<u32>,
    pub t_boot: Option<u64>,
    pub t_ready: Option<u64>,
    pub t_exit: Option<u64>,
    pub runs: Vec<Run>,
    /// ACKs for which no run was recorded (failures decided without the processor, such as
    /// the deferred failure of a job stalled too often): `(job_id, status, t)`.
    pub orphan_acks: Vec<(String, String, u64)>,
    pub errors: Vec<(u64, String)>,
    pub stalled: Vec<(String, u64)>,
    pub lagged: u64,
}

/// Reads one worker ledger.
pub fn read_worker(path: &Path, index: usize) -> WorkerLedger {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut w = WorkerLedger::default();
    let mut by_token: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match f.first().copied() {
            Some("BOOT") => {
                w.pid = num(1).and_then(|p| u32::try_from(p).ok());
                w.t_boot = num(2);
            }
            Some("READY") => w.t_ready = num(2),
            Some("EXIT") => w.t_exit = num(2),
            Some("START") if f.len() >= 7 => {
                let Some(t) = num(6) else { continue };
                by_token.insert(f[4].to_owned(), w.runs.len());
                w.runs.push(Run {
                    job_id: f[1].to_owned(),
                    payload: f[2].to_owned(),
                    token: f[4].to_owned(),
                    worker: index,
                    t_start: t,
                    t_effect: None,
                    t_cancel: None,
                    t_lock_lost: None,
                    ack: None,
                });
            }
            Some("EFFECT") if f.len() >= 5 => {
                if let (Some(&i), Some(t)) = (by_token.get(f[3]), num(4)) {
                    w.runs[i].t_effect = Some(t);
                }
            }
            Some("CANCEL") if f.len() >= 4 => {
                if let (Some(&i), Some(t)) = (by_token.get(f[2]), num(3)) {
                    w.runs[i].t_cancel = Some(t);
                }
            }
            Some("LOCKLOST") if f.len() >= 4 => {
                if let (Some(&i), Some(t)) = (by_token.get(f[2]), num(3)) {
                    w.runs[i].t_lock_lost = Some(t);
                }
            }
            Some("ACK") if f.len() >= 5 => {
                let Some(t) = num(4) else { continue };
                match by_token.get(f[2]) {
                    Some(&i) => w.runs[i].ack = Some((f[3].to_owned(), t)),
                    None => w.orphan_acks.push((f[1].to_owned(), f[3].to_owned(), t)),
                }
            }
            Some("STALLED") if f.len() >= 3 => {
                if let Some(t) = num(2) {
                    w.stalled.push((f[1].to_owned(), t));
                }
            }
            Some("ERROR") if f.len() >= 2 => {
                if let Some(t) = num(1) {
                    w.errors.push((t, f[2..].join(" ")));
                }
            }
            Some("LAGGED") => w.lagged += num(1).unwrap_or(0),
            _ => {}
        }
    }
    w
}

/// Every run of every worker ledger, oldest first.
pub fn all_runs(workers: &[WorkerLedger]) -> Vec<&Run> {
    let mut runs: Vec<&Run> = workers.iter().flat_map(|w| w.runs.iter()).collect();
    runs.sort_by_key(|r| r.t_start);
    runs
}

/// The first accepted completion of a run that started at or after `t`.
pub fn first_fresh_ack_ok_after(workers: &[WorkerLedger], t: u64) -> Option<u64> {
    workers
        .iter()
        .flat_map(|w| w.runs.iter())
        .filter(|r| r.t_start >= t && r.acked_ok())
        .filter_map(|r| r.ack.as_ref().map(|(_, at)| *at))
        .min()
}

/// An injected fault, from its start to its heal (wall-clock ms).
#[derive(Clone, Debug)]
pub struct FaultWindow {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

/// Per-job counts of events on the queue's stream, by event name.
pub type EventCounts = HashMap<String, BTreeMap<String, u32>>;

/// One job as Redis holds it after the drain.
#[derive(Clone, Debug, Default)]
pub struct TruthJob {
    pub payload: Option<String>,
    pub state: &'static str,
    pub stc: u32,
    pub atm: u32,
    pub failed_reason: Option<String>,
}

/// Redis' own truth, read after the drain.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    pub jobs: HashMap<String, TruthJob>,
    /// Jobs still waiting, active, delayed, prioritized or paused.
    pub pending: usize,
    pub events: EventCounts,
    pub events_len: u64,
    /// Job hashes in no state at all.
    pub orphans: Vec<String>,
}

const STATES: [(&str, &str, bool); 8] = [
    ("wait", "wait", true),
    ("paused", "paused", true),
    ("active", "active", true),
    ("delayed", "delayed", false),
    ("prioritized", "prioritized", false),
    ("waiting-children", "waiting-children", false),
    ("completed", "completed", false),
    ("failed", "failed", false),
];

/// The keys of a queue that are not job hashes.
const QUEUE_KEYS: [&str; 18] = [
    "wait",
    "paused",
    "active",
    "delayed",
    "prioritized",
    "waiting-children",
    "completed",
    "failed",
    "meta",
    "id",
    "events",
    "stalled",
    "stalled-check",
    "marker",
    "pc",
    "limiter",
    "repeat",
    "metrics",
];

/// Reads every state set, every job's payload and counters, the events stream and (with
/// `scan_orphans`) the job hashes that sit in no state.
pub async fn read_truth(conn: &Connection, keys: &QueueKeys, scan_orphans: bool) -> Result<Truth> {
    let mut truth = Truth::default();
    for (suffix, state, is_list) in STATES {
        let key = keys.key(suffix);
        let ids: Vec<String> = if is_list {
            conn.query(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                .await?
        } else {
            conn.query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
                .await?
        };
        if !matches!(state, "completed" | "failed") {
            truth.pending += ids.len();
        }
        for id in ids {
            truth.jobs.entry(id).or_default().state = state;
        }
    }
    let ids: Vec<String> = truth.jobs.keys().cloned().collect();
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET")
                .arg(keys.job(id))
                .arg("data")
                .arg("stc")
                .arg("atm")
                .arg("failedReason");
        }
        let rows: Vec<Vec<Option<String>>> = conn.query_pipeline(&pipe).await?;
        for (id, row) in chunk.iter().zip(rows) {
            let Some(job) = truth.jobs.get_mut(id) else {
                continue;
            };
            let get = |i: usize| row.get(i).cloned().flatten();
            job.payload = get(0)
                .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                .and_then(|v| v["p"].as_str().map(str::to_owned));
            job.stc = get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            job.atm = get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            job.failed_reason = get(3);
        }
    }
    let events_key = keys.key("events");
    truth.events_len = conn.query(redis::cmd("XLEN").arg(&events_key)).await?;
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply = conn
            .query(
                redis::cmd("XRANGE")
                    .arg(&events_key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(5000),
            )
            .await?;
        let n = reply.ids.len();
        for entry in &reply.ids {
            let field = |name: &str| -> Option<String> {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            };
            if let (Some(event), Some(job)) = (field("event"), field("jobId")) {
                *truth
                    .events
                    .entry(job)
                    .or_default()
                    .entry(event)
                    .or_default() += 1;
            }
        }
        match reply.ids.last() {
            Some(last) if n == 5000 => start = format!("({}", last.id),
            _ => break,
        }
    }
    if scan_orphans {
        let known: HashSet<&str> = QUEUE_KEYS.into_iter().collect();
        let base = keys.base().to_owned();
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = conn
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{base}*"))
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            for key in found {
                let Some(rest) = key.strip_prefix(&base) else {
                    continue;
                };
                if rest.contains(':') || known.contains(rest) || truth.jobs.contains_key(rest) {
                    continue;
                }
                let kind: String = conn.query(redis::cmd("TYPE").arg(&key)).await?;
                if kind == "hash" {
                    truth.orphans.push(rest.to_owned());
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(truth)
}

/// How to judge a run.
#[derive(Clone, Debug)]
pub struct CheckOpts {
    /// Loss is measured and reported, not required to be 0 (A2, D1a).
    pub measured_loss: bool,
    /// The queue's `maxStalledCount`.
    pub max_stalled: u32,
    /// How long after a fault healed its effects may still show (lock loss, stall recovery).
    pub explain_slack_ms: u64,
    /// The events counts cover the whole run (no trimming, no data loss), so they can be
    /// held against the ledgers (stalled accounting, completions).
    pub events_complete: bool,
    /// A job also counts as done when a worker's `ACK ok` says so, because retention or a
    /// data loss removed it from Redis afterwards. Without it only Redis' state sets count.
    pub ledger_done: bool,
    /// A job also counts as done when a `completed`/`failed` event names it (only where job
    /// ids are never reused).
    pub events_done: bool,
    /// A failover may have lost a completion: a payload acknowledged twice while the
    /// server's stream holds one completion is counted apart (`twice_after_loss`).
    pub failover: bool,
}

/// The checker's numbers (reliability plan §2.3).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub attempted: usize,
    pub acked: usize,
    pub failed_adds: usize,
    pub unknown_adds: usize,
    pub done: usize,
    pub lost: usize,
    pub lost_examples: Vec<String>,
    pub pending: usize,
    pub unexpected: usize,
    /// Jobs completed more than once: by the worker ledgers (`ACK ok` per payload) or by the
    /// server (`completed` events per job).
    pub twice: usize,
    pub twice_examples: Vec<String>,
    /// Of `twice`: payloads acknowledged twice by workers while the server remembers one
    /// completion only (the first was lost with a failover's unreplicated writes).
    pub twice_after_loss: usize,
    /// Payloads stored as more than one job.
    pub duplicated_adds: usize,
    /// Σ max(0, EFFECT(p) − 1).
    pub extra: usize,
    pub unexplained: usize,
    pub unexplained_examples: Vec<String>,
    /// Jobs with more extra executions than 1 + maxStalledCount.
    pub over_bound: usize,
    /// Jobs whose `stc` differs from the `stalled` events seen for them.
    pub stalled_mismatch: usize,
    pub orphans: usize,
    /// Unknown adds that turned out to be applied.
    pub recovered: usize,
    pub lock_lost: usize,
    pub lagged: u64,
    pub runs: usize,
}

impl Metrics {
    /// The numbers as JSON, for the report.
    pub fn to_json(&self) -> Value {
        json!({
            "attempted": self.attempted, "acked": self.acked, "failed_adds": self.failed_adds,
            "unknown_adds": self.unknown_adds, "done": self.done, "lost": self.lost,
            "lost_examples": self.lost_examples, "pending": self.pending,
            "unexpected": self.unexpected, "completed_twice": self.twice,
            "twice_examples": self.twice_examples, "twice_after_loss": self.twice_after_loss,
            "duplicated_adds": self.duplicated_adds, "extra_executions": self.extra,
            "unexplained": self.unexplained, "unexplained_examples": self.unexplained_examples,
            "over_bound": self.over_bound, "stalled_mismatch": self.stalled_mismatch,
            "orphans": self.orphans, "recovered": self.recovered, "lock_lost": self.lock_lost,
            "lagged": self.lagged, "runs": self.runs,
        })
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Holds the ledgers against the truth. `events` are the per-job event counts (from the
/// stream after the drain, or from an events ledger when retention trims the stream).
pub fn check(
    producer: &ProducerLedger,
    workers: &[WorkerLedger],
    truth: &Truth,
    events: &EventCounts,
    faults: &[FaultWindow],
    o: &CheckOpts,
) -> Metrics {
    let mut m = Metrics {
        attempted: producer.adds.len(),
        pending: truth.pending,
        orphans: truth.orphans.len(),
        lagged: workers.iter().map(|w| w.lagged).sum(),
        ..Metrics::default()
    };
    let attempted: HashSet<&str> = producer.adds.iter().map(|a| a.payload.as_str()).collect();
    // The server's jobs by payload, and every job id ever associated with a payload.
    let mut server: HashMap<&str, Vec<(&str, &TruthJob)>> = HashMap::new();
    for (id, job) in &truth.jobs {
        if let Some(p) = &job.payload {
            server
                .entry(p.as_str())
                .or_default()
                .push((id.as_str(), job));
        }
    }
    let runs = all_runs(workers);
    m.runs = runs.len();
    let mut runs_of: HashMap<&str, Vec<&Run>> = HashMap::new();
    for r in &runs {
        runs_of.entry(r.payload.as_str()).or_default().push(r);
    }
    let mut ids_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for a in &producer.adds {
        if let Some((AddResult::Ok { job_id, .. }, _)) = &a.result {
            ids_of
                .entry(a.payload.as_str())
                .or_default()
                .insert(job_id.as_str());
        }
    }
    for r in &runs {
        ids_of
            .entry(r.payload.as_str())
            .or_default()
            .insert(r.job_id.as_str());
    }
    let finished_by_events = |p: &str| {
        ids_of.get(p).is_some_and(|ids| {
            ids.iter().any(|id| {
                events.get(*id).is_some_and(|e| {
                    e.get("completed").copied().unwrap_or(0) + e.get("failed").copied().unwrap_or(0)
                        > 0
                })
            })
        })
    };
    let done = |p: &str| {
        server.get(p).is_some_and(|jobs| {
            jobs.iter()
                .any(|(_, j)| matches!(j.state, "completed" | "failed"))
        }) || (o.ledger_done
            && runs_of
                .get(p)
                .is_some_and(|rs| rs.iter().any(|r| r.acked_ok())))
            || (o.events_done && finished_by_events(p))
    };
    for a in &producer.adds {
        match &a.result {
            Some((AddResult::Ok { .. }, _)) => {
                m.acked += 1;
                let p = a.payload.as_str();
                if done(p) {
                    m.done += 1;
                } else if !server.contains_key(p) {
                    m.lost += 1;
                    if m.lost_examples.len() < 20 {
                        m.lost_examples.push(format!("seq {} payload {p}", a.seq));
                    }
                }
            }
            Some((AddResult::Fail(_), _)) => m.failed_adds += 1,
            Some((AddResult::Info(_), _)) | None => {
                m.unknown_adds += 1;
                if server.contains_key(a.payload.as_str()) {
                    m.recovered += 1;
                }
            }
        }
    }
    m.unexpected = runs_of.keys().filter(|p| !attempted.contains(*p)).count();
    m.duplicated_adds = server.values().filter(|jobs| jobs.len() > 1).count();
    // Double completions: one job (id and payload: ids are reused after a data loss)
    // acknowledged twice by the workers, or completed twice by the server's stream.
    let mut twice: BTreeMap<String, String> = BTreeMap::new();
    let mut oks: HashMap<(&str, &str), usize> = HashMap::new();
    for r in runs.iter().filter(|r| r.acked_ok()) {
        *oks.entry((r.job_id.as_str(), r.payload.as_str()))
            .or_default() += 1;
    }
    for ((id, p), n) in oks {
        if n < 2 {
            continue;
        }
        let server_completions = events
            .get(id)
            .and_then(|e| e.get("completed").copied())
            .unwrap_or(0);
        if o.failover && server_completions <= 1 {
            m.twice_after_loss += 1;
        } else {
            twice.insert(id.to_owned(), format!("job {id} (payload {p}): {n} ACK ok"));
        }
    }
    for (id, e) in events {
        let n = e.get("completed").copied().unwrap_or(0);
        if n > 1 {
            twice
                .entry(id.clone())
                .or_insert_with(|| format!("job {id}: {n} completed events"));
        }
    }
    m.twice = twice.len();
    m.twice_examples = twice.into_values().take(20).collect();
    // Extra executions, each explained by a fault overlapping the run before it.
    let slack = o.explain_slack_ms;
    for (p, rs) in &runs_of {
        let effects = rs.iter().filter(|r| r.t_effect.is_some()).count();
        if effects <= 1 {
            continue;
        }
        let extra = effects - 1;
        m.extra += extra;
        if extra > 1 + o.max_stalled as usize {
            m.over_bound += 1;
        }
        let mut seen_effect = false;
        for (i, r) in rs.iter().enumerate() {
            if r.t_effect.is_none() {
                continue;
            }
            if !seen_effect {
                seen_effect = true;
                continue;
            }
            let Some(prev) = i.checked_sub(1).map(|j| rs[j]) else {
                continue;
            };
            let span = (prev.t_start, prev.t_end().unwrap_or(u64::MAX));
            let explained = faults
                .iter()
                .any(|f| overlaps(span, (f.start, f.end.saturating_add(slack))));
            if !explained {
                m.unexplained += 1;
                if m.unexplained_examples.len() < 20 {
                    m.unexplained_examples.push(format!(
                        "payload {p}: run {} (worker {}, started {}) re-run as {} at {}",
                        prev.token, prev.worker, prev.t_start, r.token, r.t_start
                    ));
                }
            }
        }
    }
    m.lock_lost = runs.iter().filter(|r| r.t_lock_lost.is_some()).count();
    if o.events_complete {
        for (id, job) in &truth.jobs {
            let stalled = events
                .get(id)
                .and_then(|e| e.get("stalled").copied())
                .unwrap_or(0);
            if stalled != job.stc {
                m.stalled_mismatch += 1;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
        let path = dir.join(name);
        let l = Ledger::open(&path).expect("open");
        for line in lines {
            l.line(line);
        }
        path
    }

    #[test]
    fn ledgers_round_trip_and_the_checker_counts() {
        let dir = std::env::temp_dir().join(format!("bp-ledger-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = ledger(
            &dir,
            "producer.ledger",
            &[
                "INV 1 a - 10",
                "OK 1 1 added 11",
                "INV 2 b - 12",
                "OK 2 2 added 13",
                "INV 3 c - 14",
                "INFO 3 timeout 2014",
                "INV 4 d - 15",
                "FAIL 4 oom 16",
            ],
        );
        let w = ledger(
            &dir,
            "worker-0.ledger",
            &[
                "BOOT 7 1",
                "START 1 a 0 t1 7 20",
                "EFFECT 1 a t1 25",
                "ACK 1 t1 lock_lost 26",
                "START 1 a 0 t2 7 30",
                "EFFECT 1 a t2 35",
                "ACK 1 t2 ok 36",
                "START 2 b 0 t3 7 40",
                "EFFECT 2 b t3 45",
                "ACK 2 t3 ok 46",
                "START 3 c 0 t4 7 50",
                "EFFECT 3 c t4 55",
                "ACK 3 t4 ok 56",
            ],
        );
        let producer = read_producer(&p);
        let workers = vec![read_worker(&w, 0)];
        assert_eq!(producer.adds.len(), 4);
        assert_eq!(producer.adds[2].latency_ms(), Some(2000));
        assert_eq!(workers[0].runs.len(), 4);
        let mut truth = Truth::default();
        for (id, p) in [("1", "a"), ("2", "b"), ("3", "c")] {
            truth.jobs.insert(
                id.into(),
                TruthJob {
                    payload: Some(p.into()),
                    state: "completed",
                    ..TruthJob::default()
                },
            );
        }
        let opts = CheckOpts {
            measured_loss: false,
            max_stalled: 1,
            explain_slack_ms: 5,
            events_complete: false,
            ledger_done: true,
            events_done: false,
            failover: false,
        };
        let m = check(&producer, &workers, &truth, &EventCounts::new(), &[], &opts);
        assert_eq!((m.acked, m.done, m.lost, m.twice), (2, 2, 0, 0));
        assert_eq!((m.unknown_adds, m.recovered, m.failed_adds), (1, 1, 1));
        assert_eq!((m.extra, m.unexplained), (1, 1));
        let fault = FaultWindow {
            name: "x".into(),
            start: 22,
            end: 23,
        };
        let m = check(
            &producer,
            &workers,
            &truth,
            &EventCounts::new(),
            &[fault],
            &opts,
        );
        assert_eq!((m.extra, m.unexplained), (1, 0));
        truth.jobs.remove("2");
        let m = check(&producer, &workers, &truth, &EventCounts::new(), &[], &opts);
        // b was acknowledged by a worker, so it is done even though retention removed it.
        assert_eq!(m.lost, 0);
        assert_eq!(first_fresh_ack_ok_after(&workers, 37), Some(46));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
