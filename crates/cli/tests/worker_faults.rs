//! Fault tests of the worker as a real process: `bullpen work` is killed with `kill -9`,
//! poisoned, cut off from Redis, and stopped with SIGTERM, against a real redis-server.
//!
//! Every worker runs with the reliability plan's test timing profile (lock 4 s, stalled
//! check every 1 s). Each job's command appends a record of the run (the job as the worker
//! handed it over, and the worker's PID) to a ledger directory, so runs are counted from
//! what actually started, not from what the worker says.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_producer::{Job, JobOptions, JobState, Queue, QueueOptions};
use bullpen_testkit::{eventually, RedisServer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The test profile: lock duration and stalled-check interval, in ms.
const LOCK_MS: u64 = 4_000;
const STALLED_MS: u64 = 1_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Standard base64 with padding, as BullMQ names a worker's blocking connection.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// A `bullpen work` process with the test profile. Its stderr is read line by line, each
/// line stamped with the time it arrived. Killed (by its own PID) on drop.
struct Work {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Work {
    fn start(url: &str, queue: &str, exec: &str, extra: &[&str]) -> Self {
        let (lock, stalled) = (LOCK_MS.to_string(), STALLED_MS.to_string());
        let mut args = vec![
            "work",
            queue,
            "--exec",
            exec,
            "--lock-duration-ms",
            &lock,
            "--stalled-interval-ms",
            &stalled,
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_bullpen"))
            .args(&args)
            .env("BULLPEN_URL", url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bullpen work");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = lines.clone();
        // Ends at EOF, when the process exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push((Instant::now(), line));
            }
        });
        Self { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        kill(pid, sig).expect("signal the worker");
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "bullpen work did not exit within {deadline:?}; stderr: {:?}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Ids from the worker's `completed <id>` lines, with the time each arrived.
    fn completions(&self) -> Vec<(Instant, String)> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|(t, l)| l.strip_prefix("completed ").map(|id| (*t, id.to_owned())))
            .collect()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn queue(url: &str, name: &str) -> Queue {
    let conn = Connection::connect(RedisOptions::from_url(url).expect("url").producer())
        .await
        .expect("connect");
    let mut opts = QueueOptions::default().keep_everything();
    opts.max_len_events = 100_000;
    Queue::new(conn, name, opts).await.expect("queue")
}

fn o() -> JobOptions {
    JobOptions::default()
}

/// A ledger directory inside the server's temporary directory (removed with it).
fn ledger_dir(server: &RedisServer) -> PathBuf {
    let d = server.dir().join("ledger");
    std::fs::create_dir_all(&d).expect("ledger dir");
    d
}

/// The start of every job command: records the job JSON and the worker's PID as one file
/// per run, written under a temporary name and renamed, so a reader never sees half of it.
/// `$f` then names the record, for the rest of the command to inspect.
fn record_run(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"t=$(mktemp "{d}/.w.XXXXXX"); {{ cat; printf '\n%s\n' "$PPID"; }} > "$t"; f="{d}/run.${{t##*.w.}}"; mv "$t" "$f"; "#
    )
}

/// A loop that lasts while the worker (`$PPID`) lives, at most 30 s: a job that runs "for
/// ever" without outliving a killed worker by more than 100 ms.
const WHILE_WORKER_LIVES: &str =
    r#"i=0; while [ $i -lt 300 ] && kill -0 $PPID 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "#;

/// One recorded run: the job as handed to the command, and the worker's PID.
#[derive(Clone, Debug)]
struct RunRecord {
    job: Value,
    worker_pid: u32,
}

fn runs(dir: &Path) -> Vec<RunRecord> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("ledger dir") {
        let path = entry.expect("entry").path();
        let named_run = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("run."));
        if !named_run {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("run record");
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let job: Value = serde_json::from_str(lines.next().expect("job line")).expect("job JSON");
        let worker_pid = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("worker pid line");
        out.push(RunRecord { job, worker_pid });
    }
    out
}

fn runs_of(dir: &Path, id: &str) -> Vec<RunRecord> {
    runs(dir)
        .into_iter()
        .filter(|r| r.job["id"] == id)
        .collect()
}

async fn job(q: &Queue, id: &str) -> Job {
    q.get_job(id).await.expect("get").expect("job exists")
}

async fn state(q: &Queue, id: &str) -> Option<JobState> {
    q.get_job_state(id).await.expect("state")
}

/// Entries of the events stream as field lists.
async fn stream(q: &Queue) -> Vec<Vec<String>> {
    let entries: Vec<(String, Vec<String>)> = q
        .connection()
        .query(
            redis::cmd("XRANGE")
                .arg(q.keys().key("events"))
                .arg("-")
                .arg("+"),
        )
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(_, f)| f).collect()
}

fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

/// How many `event` entries the stream holds for each job id.
async fn events_per_job(q: &Queue, event: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in stream(q).await {
        if field(&e, "event") == Some(event) {
            if let Some(id) = field(&e, "jobId") {
                *out.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    out
}

/// Lines of `CLIENT LIST` for a worker's blocking connection on `queue`.
fn blocking_clients(server: &RedisServer, queue: &str) -> Vec<String> {
    let name = format!("name=bull:{} ", base64(queue.as_bytes()));
    server
        .admin(&["CLIENT", "LIST"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&name))
        .map(str::to_owned)
        .collect()
}

async fn until_blocking_clients(server: &RedisServer, queue: &str, n: usize) {
    eventually(
        || async { blocking_clients(server, queue).len() >= n },
        Duration::from_secs(15),
    )
    .await
    .unwrap_or_else(|e| panic!("{n} workers on {queue}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_job_is_rerun_by_another_worker_within_the_bound() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let dir = ledger_dir(&server);
    let q = queue(&url, "e1").await;
    // First run: runs while its worker lives. Any later run: done at once.
    let exec = format!(
        r#"{}if [ -f "{d}/marker" ]; then echo done; exit 0; fi; touch "{d}/marker"; {WHILE_WORKER_LIVES}echo too-late"#,
        record_run(&dir),
        d = dir.display()
    );
    let mut first = Work::start(&url, "e1", &exec, &[]);
    let id = q
        .add("victim", &json!({"v": 1}), o())
        .await
        .expect("add")
        .id;
    eventually(
        || async { runs_of(&dir, &id).len() == 1 },
        Duration::from_secs(15),
    )
    .await
    .expect("the first run started");
    // The survivor is up before the kill (and leaves the locked job alone).
    let second = Work::start(&url, "e1", &exec, &[]);
    until_blocking_clients(&server, "e1", 2).await;

    first.kill9();
    let killed_at = now_ms();
    assert_eq!(first.exited().map(|s| s.signal()), Some(Some(9)));
    eventually(
        || async { job(&q, &id).await.attempts_started >= 2 },
        Duration::from_secs(20),
    )
    .await
    .expect("the job was started again");
    let j = job(&q, &id).await;
    let rerun_after = j
        .processed_on
        .expect("processedOn")
        .saturating_sub(killed_at);
    let bound = LOCK_MS + 2 * STALLED_MS + 1_000;
    println!("E1: re-run {rerun_after} ms after kill -9 (bound {bound} ms)");
    assert!(
        rerun_after <= bound,
        "re-run {rerun_after} ms after the kill"
    );
    eventually(
        || async { state(&q, &id).await == Some(JobState::Completed) },
        Duration::from_secs(10),
    )
    .await
    .expect("completed");
    let j = job(&q, &id).await;
    assert_eq!(j.stalled_counter, 1);
    assert_eq!(j.attempts_started, 2);
    assert_eq!(j.attempts_made, 1);
    assert_eq!(j.returnvalue, Some(json!("done")));
    let r = runs_of(&dir, &id);
    assert_eq!(r.len(), 2, "{r:?}");
    let pids: HashSet<u32> = r.iter().map(|r| r.worker_pid).collect();
    assert_eq!(
        pids,
        HashSet::from([first.pid(), second.pid()]),
        "one run in each worker"
    );
    assert_eq!(events_per_job(&q, "stalled").await.get(&id), Some(&1));
    assert_eq!(events_per_job(&q, "completed").await.get(&id), Some(&1));
    assert_eq!(
        second
            .completions()
            .iter()
            .filter(|(_, c)| *c == id)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_fails_after_max_stalled_count_plus_one_starts() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let dir = ledger_dir(&server);
    let q = queue(&url, "e2").await;
    // The poison job kills its worker (`$PPID` of the job's shell is `bullpen work`).
    let exec = format!(
        r#"{}if grep -q '"name":"poison"' "$f"; then kill -9 $PPID; exit 1; fi; echo fine"#,
        record_run(&dir)
    );
    let poison = q.add("poison", &json!({}), o()).await.expect("add").id;
    let mut fine = Vec::new();
    for i in 0..3 {
        fine.push(
            q.add("fine", &json!({ "i": i }), o())
                .await
                .expect("add")
                .id,
        );
    }
    // A supervisor: a fresh worker each time the previous one died, at most 6.
    let mut workers = vec![Work::start(&url, "e2", &exec, &[])];
    let mut deaths = Vec::new();
    let start = Instant::now();
    while state(&q, &poison).await != Some(JobState::Failed) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "poison job not failed after {:?}: {:?}",
            start.elapsed(),
            job(&q, &poison).await
        );
        let current = workers.last_mut().expect("a worker");
        if let Some(status) = current.exited() {
            deaths.push(status);
            assert!(workers.len() < 6, "too many worker deaths: {deaths:?}");
            workers.push(Work::start(&url, "e2", &exec, &[]));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    let j = job(&q, &poison).await;
    println!(
        "E2: poison job failed after {took:?}, {} worker deaths",
        deaths.len()
    );
    assert_eq!(
        j.failed_reason.as_deref(),
        Some("job stalled more than allowable limit")
    );
    let starts = runs_of(&dir, &poison);
    // max_stalled_count (1) + 1 runs of the command, each one killing its worker.
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(deaths.len(), 2, "{deaths:?}");
    assert!(deaths.iter().all(|s| s.signal() == Some(9)), "{deaths:?}");
    assert_eq!(j.stalled_counter, 2);
    // Two runs plus the fetch that failed it without running it (BullMQ counts that fetch
    // as a start too).
    assert_eq!(j.attempts_started, 3);
    let started: Vec<u64> = starts
        .iter()
        .map(|r| r.job["attemptsStarted"].as_u64().expect("ats"))
        .collect();
    assert_eq!(
        started.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([1, 2])
    );
    // It stays in failed (not deleted), and the other jobs were not affected.
    let failed = q
        .get_job_ids(JobState::Failed, 0, -1, false)
        .await
        .expect("failed ids");
    assert_eq!(failed, vec![poison.clone()]);
    for id in &fine {
        eventually(
            || async { state(&q, id).await == Some(JobState::Completed) },
            Duration::from_secs(10),
        )
        .await
        .expect("fine job completed");
        assert_eq!(runs_of(&dir, id).len(), 1, "fine job {id} ran once");
        assert_eq!(job(&q, id).await.returnvalue, Some(json!("fine")));
    }
    // The last worker is alive: stop it gracefully.
    let last = workers.last_mut().expect("a worker");
    assert!(last.exited().is_none(), "the last worker survived");
    last.signal(Signal::SIGTERM);
    assert!(last.wait_exit(Duration::from_secs(5)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_kill_9_and_restart_with_aof_loses_no_acknowledged_job_and_completes_none_twice() {
    let mut server = RedisServer::builder().aof().start().expect("redis-server");
    let url = server.url();
    let q = queue(&url, "a1").await;
    let mut worker = Work::start(
        &url,
        "a1",
        "cat > /dev/null; sleep 0.05; echo ok",
        &["--concurrency", "4"],
    );
    // A producer that keeps adding, one job every 25 ms, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let (qp, stop2) = (q.clone(), stop.clone());
    let producer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut not_acked = 0u64;
        for seq in 0..4_000u64 {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            match qp
                .add("job", &json!({ "seq": seq }), JobOptions::default())
                .await
            {
                Ok(a) => acked.push(a.id),
                Err(_) => not_acked += 1,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (acked, not_acked)
    });
    eventually(
        || async { worker.completions().len() >= 20 },
        Duration::from_secs(15),
    )
    .await
    .expect("jobs flowing");

    server.kill9().expect("kill -9 redis");
    let outage = Duration::from_secs(3);
    // The fault lasts this long by design: this sleep is the outage, not a synchronisation.
    tokio::time::sleep(outage).await;
    tokio::task::block_in_place(|| server.restart()).expect("restart redis");
    let back = Instant::now();
    eventually(
        || async { worker.completions().iter().any(|(t, _)| *t > back) },
        Duration::from_secs(15),
    )
    .await
    .expect("processing resumed");
    let resumed = worker
        .completions()
        .iter()
        .filter(|(t, _)| *t > back)
        .map(|(t, _)| t.duration_since(back))
        .min()
        .expect("a completion after the restart");
    // Keep jobs flowing a little after the restart, then stop adding.
    eventually(
        || async {
            worker
                .completions()
                .iter()
                .filter(|(t, _)| *t > back)
                .count()
                >= 20
        },
        Duration::from_secs(15),
    )
    .await
    .expect("jobs flowing after the restart");
    stop.store(true, Ordering::SeqCst);
    let (acked, not_acked) = tokio::time::timeout(Duration::from_secs(10), producer)
        .await
        .expect("producer stops")
        .expect("producer");

    // Every acknowledged add ends completed.
    let acked_set: HashSet<String> = acked.iter().cloned().collect();
    let completed_ids = || async {
        let ids: Vec<String> = q
            .connection()
            .query(
                redis::cmd("ZRANGE")
                    .arg(q.keys().key("completed"))
                    .arg(0)
                    .arg(-1),
            )
            .await
            .unwrap_or_default();
        ids.into_iter().collect::<HashSet<String>>()
    };
    eventually(
        || async { acked_set.is_subset(&completed_ids().await) },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "acknowledged jobs not completed: {e}; worker stderr: {:?}",
            worker.stderr()
        )
    });
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait_exit(Duration::from_secs(15)).await.success());

    let completed = completed_ids().await;
    let lost: Vec<&String> = acked.iter().filter(|i| !completed.contains(*i)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    // No double completion: one `completed` event per job, one `completed` line per job.
    let per_job = events_per_job(&q, "completed").await;
    let twice: Vec<(&String, &usize)> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "completed twice: {twice:?}");
    assert_eq!(per_job.len(), completed.len());
    let lines = worker.completions();
    let distinct: HashSet<&String> = lines.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), lines.len(), "a completion reported twice");
    assert!(distinct.iter().all(|id| completed.contains(*id)));
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(counts[&JobState::Failed], 0, "{counts:?}");
    println!(
        "A1: outage {outage:?}; first completion {resumed:?} after Redis was back; {} adds acknowledged, {not_acked} not, {} completed",
        acked.len(),
        completed.len()
    );
    assert!(
        resumed <= Duration::from_secs(5),
        "processing resumed {resumed:?} after Redis was back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_blocking_connection_delays_the_next_job_by_under_a_second() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let q = queue(&url, "b1").await;
    let mut worker = Work::start(&url, "b1", "cat > /dev/null; echo ok", &[]);
    let warm = q.add("warm-up", &json!({}), o()).await.expect("add").id;
    eventually(
        || async { state(&q, &warm).await == Some(JobState::Completed) },
        Duration::from_secs(15),
    )
    .await
    .expect("warm-up job completed");
    let baseline = server.connected_clients().expect("clients");

    let mut latencies = Vec::new();
    for round in 0..3 {
        // The worker is blocked on the marker.
        let mut line = String::new();
        eventually(
            || {
                line = blocking_clients(&server, "b1")
                    .into_iter()
                    .find(|l| l.contains("cmd=bzpopmin"))
                    .unwrap_or_default();
                let found = !line.is_empty();
                async move { found }
            },
            Duration::from_secs(15),
        )
        .await
        .expect("the blocking connection is waiting");
        let client_id = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("id="))
            .expect("client id")
            .to_owned();
        server
            .admin(&["CLIENT", "KILL", "ID", &client_id])
            .expect("CLIENT KILL");
        let id = q
            .add("next", &json!({ "round": round }), o())
            .await
            .expect("add")
            .id;
        eventually(
            || async { state(&q, &id).await == Some(JobState::Completed) },
            Duration::from_secs(10),
        )
        .await
        .expect("the next job ran");
        let j = job(&q, &id).await;
        let latency = j
            .processed_on
            .expect("processedOn")
            .saturating_sub(j.timestamp);
        latencies.push(latency);
        // The blocking connection came back as a new client.
        eventually(
            || async {
                blocking_clients(&server, "b1")
                    .iter()
                    .any(|l| !l.contains(&format!("id={client_id} ")))
            },
            Duration::from_secs(10),
        )
        .await
        .expect("the blocking connection reconnected");
    }
    println!(
        "B1: add -> processedOn after CLIENT KILL of the blocking connection: {latencies:?} ms"
    );
    for l in &latencies {
        assert!(*l <= 1_000, "a job waited {l} ms: {latencies:?}");
    }
    // No leaked connections.
    eventually(
        || async { server.connected_clients().is_ok_and(|n| n <= baseline) },
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "connections grew from {baseline} to {:?}: {e}",
            server.connected_clients()
        )
    });
    assert!(
        worker.exited().is_none(),
        "the worker lives: {:?}",
        worker.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_short_jobs_once_and_hands_long_ones_to_the_next_worker() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let dir = ledger_dir(&server);
    let q = queue(&url, "e3").await;
    // short: 1 s. long: runs while its worker lives on its first start, done at once after.
    // Anything else: done at once.
    let exec = format!(
        r#"{}if grep -q '"name":"short"' "$f"; then sleep 1; echo short-done; exit 0; fi; if grep -q '"name":"long"' "$f" && grep -q '"attemptsStarted":1[,}}]' "$f"; then {WHILE_WORKER_LIVES}echo too-late; exit 0; fi; echo done"#,
        record_run(&dir)
    );
    let shorts = [
        q.add("short", &json!({"i": 1}), o()).await.expect("add").id,
        q.add("short", &json!({"i": 2}), o()).await.expect("add").id,
    ];
    let longs = [
        q.add("long", &json!({"i": 3}), o()).await.expect("add").id,
        q.add("long", &json!({"i": 4}), o()).await.expect("add").id,
    ];
    let later = q.add("later", &json!({"i": 5}), o()).await.expect("add").id;
    let grace = Duration::from_millis(1_500);
    let grace_ms = grace.as_millis().to_string();
    let mut first = Work::start(
        &url,
        "e3",
        &exec,
        &["--concurrency", "4", "--grace-ms", &grace_ms],
    );
    eventually(|| async { runs(&dir).len() >= 4 }, Duration::from_secs(15))
        .await
        .expect("four jobs in flight");
    first.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = first.wait_exit(Duration::from_secs(15)).await;
    let exit_after = signalled.elapsed();
    println!("E3: exited {exit_after:?} after SIGTERM (grace {grace:?})");
    assert!(status.success(), "{status}; {:?}", first.stderr());
    assert!(
        exit_after <= grace + Duration::from_secs(2),
        "exited {exit_after:?} after SIGTERM"
    );
    for id in &shorts {
        assert_eq!(state(&q, id).await, Some(JobState::Completed), "short {id}");
        assert_eq!(job(&q, id).await.returnvalue, Some(json!("short-done")));
    }
    for id in &longs {
        assert_eq!(
            state(&q, id).await,
            Some(JobState::Waiting),
            "long {id} handed back"
        );
        assert_eq!(
            job(&q, id).await.attempts_made,
            0,
            "a hand-back is no attempt"
        );
    }
    assert_eq!(
        state(&q, &later).await,
        Some(JobState::Waiting),
        "no new job after SIGTERM"
    );
    assert!(runs_of(&dir, &later).is_empty());

    let mut second = Work::start(
        &url,
        "e3",
        &exec,
        &["--concurrency", "4", "--exit-when-drained"],
    );
    let status = second.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}; {:?}", second.stderr());
    for id in &shorts {
        let r = runs_of(&dir, id);
        assert_eq!(r.len(), 1, "short {id} ran once: {r:?}");
        assert_eq!(r[0].worker_pid, first.pid());
    }
    for id in &longs {
        assert_eq!(state(&q, id).await, Some(JobState::Completed), "long {id}");
        assert_eq!(job(&q, id).await.returnvalue, Some(json!("done")));
        let pids: Vec<u32> = runs_of(&dir, id).iter().map(|r| r.worker_pid).collect();
        assert_eq!(pids.len(), 2, "long {id} ran again once: {pids:?}");
        assert!(pids.contains(&first.pid()) && pids.contains(&second.pid()));
    }
    let r = runs_of(&dir, &later);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].worker_pid, second.pid());
    let per_job = events_per_job(&q, "completed").await;
    for id in shorts.iter().chain(&longs).chain([&later]) {
        assert_eq!(per_job.get(id), Some(&1), "{id} completed once");
    }
    // The second worker reports what it completed, and no completion is reported twice.
    let second_reported: HashSet<String> =
        second.completions().into_iter().map(|(_, id)| id).collect();
    let expected: HashSet<String> = longs.iter().chain([&later]).cloned().collect();
    assert_eq!(second_reported, expected);
    let first_reported: HashSet<String> =
        first.completions().into_iter().map(|(_, id)| id).collect();
    assert!(first_reported.is_disjoint(&second_reported));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_finished_during_the_grace_period_is_reported_like_any_other() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let dir = ledger_dir(&server);
    let q = queue(&url, "e3b").await;
    let exec = format!("{}sleep 0.5; echo ok", record_run(&dir));
    let id = q.add("short", &json!({}), o()).await.expect("add").id;
    let mut worker = Work::start(&url, "e3b", &exec, &["--grace-ms", "3000"]);
    eventually(
        || async { runs_of(&dir, &id).len() == 1 },
        Duration::from_secs(15),
    )
    .await
    .expect("the job started");
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert_eq!(state(&q, &id).await, Some(JobState::Completed));
    // `bullpen work` logs `completed <id>` for every job it completes, including one that
    // finishes while it shuts down.
    assert!(
        worker.stderr().contains(&format!("completed {id}")),
        "stderr: {:?}",
        worker.stderr()
    );
}
