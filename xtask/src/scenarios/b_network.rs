//! Group B: connections and the network. B1 `CLIENT KILL` bursts (and only the blocking
//! connection); B3 a black hole (the fault proxy, and in `--full` a kernel one: Redis in a
//! network namespace behind an nftables drop rule); B4 unreachable at start-up; B6 a reply
//! lost after the command ran (the finish script and the add script).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::script::{ADD_JOB, COMPLETE_MANY, MOVE_TO_FINISHED};
use bullpen_producer::{AddStatus, JobOptions, Queue, QueueOptions};
use bullpen_testkit::{encode, read_reply, FaultProxy, ProxyMode, RedisServer};
use serde_json::json;

use super::a_redis::{quiet, require_fast_failures};
use super::ledger::{first_fresh_ack_ok_after, now_ms, AddResult};
use super::{blocking, since, skipped, Ctx, ProducerSpec, Scene, Verdict, RESUME_BOUND, TP};
use crate::integration::Outcome;

fn upstream(server: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

/// `connected_clients` without the asking admin connection, waiting up to `timeout` for it
/// to equal `want`; returns the last value seen and how long it took.
async fn clients_settle(server: &RedisServer, want: u64, timeout: Duration) -> (u64, Duration) {
    let start = Instant::now();
    loop {
        let n = blocking(|| server.connected_clients()).unwrap_or(0);
        if n == want || start.elapsed() >= timeout {
            return (n, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// B1: bursts of `CLIENT KILL TYPE normal SKIPME yes`. Every connection comes back
/// (`connected_clients` back to its value before), work resumes within 2 s of each kill,
/// nothing is lost or completed twice.
pub async fn b1(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 2, 8).await?;
    let producer = sc.producer(ProducerSpec::new(&url, ctx.pick(150.0, 300.0)))?;
    sc.wait_acks(ctx.pick(150, 1_000), Duration::from_secs(30))
        .await?;
    let baseline = blocking(|| server.connected_clients())?;
    let (bursts, every) = ctx.pick((3, Duration::from_secs(2)), (12, Duration::from_secs(5)));
    let mut kills = Vec::new();
    let mut worst_reconnect = Duration::ZERO;
    let mut mismatches = Vec::new();
    for _ in 0..bursts {
        let f = sc.begin("client-kill-normal");
        let killed =
            blocking(|| server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]))?;
        let t = sc.heal(f);
        kills.push((t, killed));
        let (n, took) = clients_settle(&server, baseline, Duration::from_secs(5)).await;
        worst_reconnect = worst_reconnect.max(took);
        if n != baseline {
            mismatches.push(n);
        }
        tokio::time::sleep(every.saturating_sub(took)).await;
    }
    let (end_clients, _) = clients_settle(&server, baseline, Duration::from_secs(5)).await;
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    let mut worst: Option<Duration> = Some(Duration::ZERO);
    for (t, _) in &kills {
        let back = since(*t, first_fresh_ack_ok_after(&s.workers, *t));
        worst = match (worst, back) {
            (Some(w), Some(b)) => Some(w.max(b)),
            _ => None,
        };
    }
    v.resume(
        "work after a kill (worst of the bursts)",
        worst,
        Duration::from_secs(2),
    );
    v.require(
        mismatches.is_empty() && end_clients == baseline,
        format!("connected_clients {baseline} before, {mismatches:?} after bursts, {end_clients} at the end"),
    );
    v.note(format!(
        "{bursts} bursts killed {} connections; connected_clients back to {baseline} within {:.2}s each time",
        kills.iter().map(|(_, k)| k.parse::<u64>().unwrap_or(0)).sum::<u64>(),
        worst_reconnect.as_secs_f64()
    ));
    Ok(sc.finish(
        Some(&s),
        worst,
        v,
        json!({"bursts": bursts, "baseline_clients": baseline}),
    ))
}

/// The id of a client blocked in `BZPOPMIN`, from `CLIENT LIST`.
fn blocked_client(server: &RedisServer) -> Option<String> {
    let list = server.admin(&["CLIENT", "LIST"]).ok()?;
    list.lines().find_map(|line| {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        (field("cmd") == Some("bzpopmin")).then(|| field("id").map(str::to_owned))?
    })
}

/// B1, blocking variant: only the worker's blocking connection is killed (`CLIENT KILL ID`
/// of the client in `BZPOPMIN`); a job added right after starts within block timeout + 1 s
/// (P9) and the connection count comes back.
pub async fn b1_blocking(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let url = server.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 1, 4).await?;
    let producer = sc.producer(ProducerSpec::new(&url, 0.0))?;
    let (probe, _) = producer.add_one("n", 5).await?;
    sc.wait_start(&probe, 0, Duration::from_secs(10)).await?;
    sc.wait_acks(1, Duration::from_secs(10)).await?;
    let baseline = blocking(|| server.connected_clients())?;
    let rounds = ctx.pick(3, 10);
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let id = loop {
            if let Some(id) = blocking(|| blocked_client(&server)) {
                break id;
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("no client blocked in BZPOPMIN within 5 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let f = sc.begin("client-kill-blocking");
        blocking(|| server.admin(&["CLIENT", "KILL", "ID", &id]))?;
        sc.heal(f);
        let t_add = now_ms();
        let (payload, _) = producer.add_one("n", 5).await?;
        let run = sc.wait_start(&payload, 0, Duration::from_secs(10)).await?;
        latencies.push(Duration::from_millis(run.t_start.saturating_sub(t_add)));
        clients_settle(&server, baseline, Duration::from_secs(5)).await;
    }
    let (end_clients, _) = clients_settle(&server, baseline, Duration::from_secs(5)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let worst = latencies.iter().max().copied();
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    v.resume(
        "a job added after the kill started (worst)",
        worst,
        TP.block + Duration::from_secs(1),
    );
    v.require(
        end_clients == baseline,
        format!("connected_clients {baseline} before, {end_clients} after"),
    );
    v.note(format!(
        "{rounds} kills of the blocking connection; next job started after {}",
        latencies
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(sc.finish(
        Some(&s),
        worst,
        v,
        json!({"latencies_ms": latencies.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>()}),
    ))
}

/// B3: every connection black-holed (the fault proxy forwards nothing and keeps the sockets
/// open) for `hole`, then healed. Nothing hangs, adds fail within 2 s, workers resume within
/// 5 s of the heal, nothing is lost.
pub async fn b3(ctx: &Ctx, name: &str, hole: Duration) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let direct = server.url();
    let proxy = FaultProxy::start(upstream(&server)).await?;
    let url = proxy.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&url, 2, 8).await?;
    let producer = sc.producer(ProducerSpec::new(&url, ctx.pick(150.0, 300.0)))?;
    sc.wait_acks(ctx.pick(150, 1_000), Duration::from_secs(30))
        .await?;
    let f = sc.begin("black-hole");
    let t0 = sc.faults[f].start;
    proxy.set_mode(ProxyMode::BlackHole);
    tokio::time::sleep(hole).await;
    proxy.set_mode(ProxyMode::Pass);
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &direct, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    let mut v = Verdict::default();
    v.note(format!("proxy black hole {:.0}s", hole.as_secs_f64()));
    v.standard(&s.metrics, false);
    v.resume("first completion after the heal", resume, RESUME_BOUND);
    require_fast_failures(&mut v, &s.producer, t0, healed);
    let watchdog: usize = s
        .workers
        .iter()
        .map(|w| {
            w.errors
                .iter()
                .filter(|(_, m)| m.contains("watchdog"))
                .count()
        })
        .sum();
    v.note(format!(
        "{watchdog} blocking calls abandoned by the watchdog"
    ));
    drop(proxy);
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"hole_ms": hole.as_millis() as u64}),
    ))
}

/// A network namespace with its own Redis, joined to this one by a veth pair, where an
/// nftables rule can drop every packet of the Redis port (a kernel black hole: the client's
/// TCP retransmits instead of being reset). Torn down on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_addr: String,
    port: u16,
    redis: Option<Child>,
    dir: std::path::PathBuf,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Why the kernel variant cannot run here, if it cannot: not root, no `ip netns`, or no
    /// `nft` (installed with apt-get when running as root on Debian).
    fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("needs root (network namespaces and nftables)".into());
        }
        let probe = format!("bpprobe{}", std::process::id());
        if let Err(e) = sh(&["ip", "netns", "add", &probe]) {
            return Some(format!("`ip netns` does not work here: {e:#}"));
        }
        let _ = sh(&["ip", "netns", "del", &probe]);
        let has_nft = || Command::new("nft").arg("--version").output().is_ok();
        if !has_nft() {
            if std::path::Path::new("/etc/debian_version").exists() {
                println!("nft is missing; installing it: apt-get install -y nftables");
                let _ = Command::new("sh")
                    .args([
                        "-c",
                        "DEBIAN_FRONTEND=noninteractive apt-get install -y nftables",
                    ])
                    .stdout(Stdio::null())
                    .status();
            }
            if !has_nft() {
                return Some(
                    "`nft` is not installed and could not be installed with apt-get".into(),
                );
            }
        }
        None
    }

    fn create(dir: &std::path::Path, tag: u32) -> Result<Self> {
        let octet = 16 + tag % 200;
        let name = format!("bpscen{}", std::process::id());
        let host_if = format!("bph{}", std::process::id() % 100_000);
        let peer_if = format!("bpn{}", std::process::id() % 100_000);
        let host_addr = format!("10.213.{octet}.1");
        let ns_addr = format!("10.213.{octet}.2");
        let mut me = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_addr: ns_addr.clone(),
            port: 6390,
            redis: None,
            dir: dir.to_owned(),
        };
        sh(&["ip", "netns", "add", &name])?;
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        sh(&["ip", "link", "set", &peer_if, "netns", &name])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &host_if,
        ])?;
        sh(&["ip", "link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &name];
            all.extend_from_slice(args);
            sh(&all)
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{ns_addr}/30"),
            "dev",
            &peer_if,
        ])?;
        inside(&["ip", "link", "set", &peer_if, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        let data = dir.join("netns-redis");
        std::fs::create_dir_all(&data)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &name, "redis-server", "--port"])
            .arg(me.port.to_string())
            .args([
                "--bind",
                &ns_addr,
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server in the namespace")?;
        me.redis = Some(child);
        let start = Instant::now();
        while me.admin(&["PING"]).ok().as_deref() != Some("PONG") {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server in the namespace did not answer PING");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn url(&self) -> String {
        format!("redis://{}:{}", self.ns_addr, self.port)
    }

    fn admin(&self, args: &[&str]) -> Result<String> {
        use std::io::{BufReader, Write};
        let addr: SocketAddr = format!("{}:{}", self.ns_addr, self.port).parse()?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut r = BufReader::new(s.try_clone()?);
        s.write_all(&encode(args))?;
        Ok(read_reply(&mut r)?)
    }

    fn nft(&self, script: &str) -> Result<()> {
        sh(&["ip", "netns", "exec", &self.name, "nft", script])
    }

    /// Drops every packet to and from the Redis port, in the namespace.
    fn block(&self) -> Result<()> {
        self.nft("add table inet bpbh")?;
        self.nft("add chain inet bpbh in { type filter hook input priority 0; policy accept; }")?;
        self.nft("add chain inet bpbh out { type filter hook output priority 0; policy accept; }")?;
        self.nft(&format!(
            "add rule inet bpbh in tcp dport {} drop",
            self.port
        ))?;
        self.nft(&format!(
            "add rule inet bpbh out tcp sport {} drop",
            self.port
        ))
    }

    fn unblock(&self) -> Result<()> {
        self.nft("delete table inet bpbh")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.redis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = std::fs::remove_dir_all(self.dir.join("netns-redis"));
    }
}

/// B3, kernel variant: Redis in its own network namespace, every packet of its port dropped
/// by nftables for 5 s (TCP retransmits; nothing is reset). Same promises as B3.
pub async fn b3_kernel(ctx: &Ctx, name: &str) -> Result<Outcome> {
    if let Some(why) = blocking(Netns::unavailable) {
        return Ok(skipped(name, format!("kernel black hole skipped: {why}")));
    }
    let mut sc = Scene::new(ctx, name, TP)?;
    let dir = sc.dir.clone();
    let tag = super::fresh_seed() as u32;
    let ns = blocking(|| Netns::create(&dir, tag))?;
    let url = ns.url();
    sc.start_workers(&url, 2, 8).await?;
    let producer = sc.producer(ProducerSpec::new(&url, 200.0))?;
    sc.wait_acks(500, Duration::from_secs(30)).await?;
    let hole = Duration::from_secs(5);
    let f = sc.begin("nft-drop");
    let t0 = sc.faults[f].start;
    blocking(|| ns.block())?;
    tokio::time::sleep(hole).await;
    blocking(|| ns.unblock())?;
    let healed = sc.heal(f);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &url, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    let mut v = Verdict::default();
    v.note(format!(
        "nftables drop in a network namespace for {:.0}s",
        hole.as_secs_f64()
    ));
    v.standard(&s.metrics, false);
    v.resume("first completion after the heal", resume, RESUME_BOUND);
    require_fast_failures(&mut v, &s.producer, t0, healed);
    drop(ns);
    Ok(sc.finish(
        Some(&s),
        resume,
        v,
        json!({"hole_ms": hole.as_millis() as u64}),
    ))
}

/// B4: workers and the producer start while Redis is unreachable (the proxy refuses, or
/// with `reset` accepts and resets); the producer reports a clear connection error meanwhile,
/// the workers' constructors wait, and the first job completes within 5 s of the heal.
pub async fn b4(ctx: &Ctx, name: &str, reset: bool) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let direct = server.url();
    let proxy = FaultProxy::start(upstream(&server)).await?;
    proxy.set_mode(if reset {
        ProxyMode::Reset
    } else {
        ProxyMode::Refuse
    });
    let url = proxy.url();
    let mut sc = Scene::new(ctx, name, TP)?;
    let f = sc.begin(if reset { "reset-new" } else { "refuse" });
    for _ in 0..2 {
        sc.spawn_worker(&url, |c| c.concurrency = 8)?;
    }
    let producer = sc.producer(ProducerSpec::new(&url, 100.0))?;
    tokio::time::sleep(ctx.pick(Duration::from_secs(3), Duration::from_secs(10))).await;
    let early_ready = sc
        .read_workers()
        .iter()
        .filter(|w| w.t_ready.is_some())
        .count();
    let alive = sc
        .workers
        .iter_mut()
        .map(|w| w.exited().is_none())
        .filter(|alive| *alive)
        .count();
    proxy.set_mode(ProxyMode::Pass);
    let healed = sc.heal(f);
    for i in 0..2 {
        sc.wait_ready(i, Duration::from_secs(15)).await?;
    }
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &direct, &opts).await?;
    let resume = since(healed, first_fresh_ack_ok_after(&s.workers, healed));
    let ready_after = s
        .workers
        .iter()
        .filter_map(|w| w.t_ready)
        .max()
        .map(|t| t.saturating_sub(healed));
    let errors = &s.producer.errors;
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    v.resume("first completion after the heal", resume, RESUME_BOUND);
    v.require(
        alive == 2,
        format!("{} worker constructors failed for good", 2 - alive),
    );
    v.require(
        early_ready == 0,
        "a worker was ready while Redis was unreachable",
    );
    v.require(
        !errors.is_empty(),
        "the producer reported no connection error while Redis was unreachable",
    );
    v.note(format!(
        "producer said while down: {}",
        errors
            .first()
            .map_or("-".to_owned(), |e| e.1.chars().take(140).collect())
    ));
    v.note(format!(
        "workers ready {} ms after the heal",
        ready_after.map_or("-".to_owned(), |ms| ms.to_string())
    ));
    drop(proxy);
    Ok(sc.finish(Some(&s), resume, v, json!({"reset": reset})))
}

/// The argument after the keys of an `EVALSHA` request (`i` = 1 for ARGV[1]).
fn argv(request: &[String], i: usize) -> Option<&str> {
    let numkeys: usize = request.get(2)?.parse().ok()?;
    request.get(2 + numkeys + i).map(String::as_str)
}

/// B6, finish: the proxy forwards one call of the worker's finish script (`complete_many`
/// when the worker batches completions, else `move_to_finished`) and cuts the connection
/// before its reply. The worker's connection sends the call again after reconnecting; each
/// job of the call is completed exactly once, its processor is not run again, nothing is
/// completed twice.
pub async fn b6_finish(ctx: &Ctx, name: &str) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let direct = server.url();
    let proxy = FaultProxy::start(upstream(&server)).await?;
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&proxy.url(), 1, 4).await?;
    let producer = sc.producer(ProducerSpec::new(&direct, 50.0))?;
    sc.wait_acks(20, Duration::from_secs(20)).await?;
    // Which finish script the worker uses: the one Redis has cached.
    let (many, one) = (COMPLETE_MANY.sha(), MOVE_TO_FINISHED.sha());
    let cached = blocking(|| server.admin(&["SCRIPT", "EXISTS", many, one]))?;
    let batched = cached.lines().next() == Some("1");
    let (script, sha) = if batched {
        ("complete_many", many)
    } else {
        ("move_to_finished", one)
    };
    let mode = ProxyMode::drop_reply_to(sha, 5).ok_or_else(|| anyhow!("bad sha"))?;
    let f = sc.begin("drop-finish-reply");
    proxy.set_mode(mode);
    let start = Instant::now();
    while proxy.dropped_replies().is_empty() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("no {script} call went through the proxy within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sc.heal(f);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_mode(ProxyMode::Pass);
    tokio::time::sleep(quiet(ctx)).await;
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &direct, &opts).await?;
    let dropped = &proxy.dropped_replies()[0];
    // complete_many: ARGV 4.. are groups of 6 starting with the job id; move_to_finished:
    // ARGV[2] is the job id.
    let jobs: Vec<String> = if batched {
        let n: usize = argv(dropped, 3).and_then(|n| n.parse().ok()).unwrap_or(0);
        (0..n)
            .filter_map(|i| argv(dropped, 4 + 6 * i))
            .map(str::to_owned)
            .collect()
    } else {
        argv(dropped, 2).map(str::to_owned).into_iter().collect()
    };
    if jobs.is_empty() {
        bail!("cannot read the job ids of {dropped:?}");
    }
    let mut v = Verdict::default();
    v.standard(&s.metrics, false);
    let mut acks = Vec::new();
    for job in &jobs {
        let runs: Vec<_> = s
            .workers
            .iter()
            .flat_map(|w| w.runs.iter())
            .filter(|r| &r.job_id == job)
            .collect();
        let state = s.truth.jobs.get(job).map(|j| j.state).unwrap_or("missing");
        let completed = super::event_count(&s.truth.events, job, "completed");
        v.require(
            runs.len() == 1,
            format!("job {job}'s processor ran {} times", runs.len()),
        );
        v.require(
            state == "completed",
            format!("job {job} is {state}, not completed"),
        );
        v.require(
            completed == 1,
            format!("job {job} has {completed} completed events"),
        );
        acks.extend(runs.iter().map(|r| {
            r.ack
                .as_ref()
                .map_or("none".to_owned(), |(st, _)| st.clone())
        }));
    }
    let recovered: Vec<&String> = s
        .truth
        .jobs
        .iter()
        .filter(|(_, j)| j.stc > 0)
        .map(|(id, _)| id)
        .collect();
    v.note(format!(
        "reply to a {script} call for jobs {jobs:?} lost after it ran: each completed once, processor ran once, the resent call answered {acks:?}"
    ));
    v.note(format!(
        "jobs recovered by the stall check (fetched by the lost reply): {recovered:?}"
    ));
    drop(proxy);
    Ok(sc.finish(
        Some(&s),
        None,
        v,
        json!({"script": script, "jobs": jobs, "acks": acks}),
    ))
}

/// B6, add: the proxy forwards one add script call and cuts the connection before its reply.
/// The add is not sent again by the connection: its outcome is reported as unknown. With a
/// custom job id (`custom`), the caller's retry finds the job and answers `duplicated` with
/// the same id: one job. With generated ids, the duplicates are counted against the adds
/// whose outcome was reported unknown.
pub async fn b6_add(ctx: &Ctx, name: &str, custom: bool) -> Result<Outcome> {
    let server = blocking(RedisServer::start)?;
    let direct = server.url();
    let proxy = FaultProxy::start(upstream(&server)).await?;
    let mut sc = Scene::new(ctx, name, TP)?;
    sc.start_workers(&direct, 1, 8).await?;
    let mut spec = ProducerSpec::new(&proxy.url(), 50.0);
    spec.custom_ids = custom;
    let producer = sc.producer(spec)?;
    sc.wait_acks(20, Duration::from_secs(20)).await?;
    let mode = ProxyMode::drop_reply_to(ADD_JOB.sha(), 5).ok_or_else(|| anyhow!("bad sha"))?;
    let f = sc.begin("drop-add-reply");
    proxy.set_mode(mode);
    let start = Instant::now();
    while proxy.dropped_replies().is_empty() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("no add went through the proxy within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sc.heal(f);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_mode(ProxyMode::Pass);
    let opts = sc.check_opts();
    let s = sc.settle(Some(producer), &direct, &opts).await?;
    let dropped = proxy.dropped_replies();
    // ARGV: prefix, maxLenEvents, count, then per job: id, name, data, ...
    let data = argv(&dropped[0], 6).unwrap_or_default();
    let payload = data
        .split("\"p\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_owned();
    let record = s.producer.adds.iter().find(|a| a.payload == payload);
    let outcome = record
        .and_then(|a| a.result.as_ref())
        .map_or("none".to_owned(), |(r, _)| format!("{r:?}"));
    let jobs_of_payload = s
        .truth
        .jobs
        .values()
        .filter(|j| j.payload.as_deref() == Some(payload.as_str()))
        .count();
    let m = &s.metrics;
    let mut v = Verdict::default();
    v.standard(m, false);
    let mut retried = String::new();
    if custom {
        // The add must not be sent twice by the connection: its outcome is unknown (P2), and
        // the caller's retry with the same custom id is idempotent: `duplicated`, one job.
        let unknown = matches!(
            record.and_then(|a| a.result.as_ref()),
            Some((AddResult::Info(_), _))
        );
        v.require(
            unknown,
            format!("the add whose reply was lost answered {outcome}, not an unknown outcome"),
        );
        let job_id = argv(&dropped[0], 4).unwrap_or_default().to_owned();
        let conn = Connection::connect(RedisOptions::from_url(&direct)?.producer()).await?;
        let q = Queue::new(
            conn,
            &sc.queue,
            QueueOptions::default()
                .with_prefix(sc.prefix.clone())
                .keep_everything(),
        )
        .await?;
        let mut o = JobOptions::default();
        o.job_id = Some(job_id.clone());
        let again = q.add("retry", &json!({ "p": payload }), o).await?;
        retried = format!(
            "; the caller's retry of job {job_id} answered {:?}",
            again.status
        );
        v.require(
            again.status == AddStatus::Duplicated && again.id == job_id,
            format!("retrying the custom-id add answered {again:?}, not `duplicated` {job_id}"),
        );
        v.require(
            jobs_of_payload == 1,
            format!("payload {payload} stored as {jobs_of_payload} jobs"),
        );
        v.require(
            m.duplicated_adds == 0,
            format!("{} payloads stored twice", m.duplicated_adds),
        );
    } else {
        v.require(
            m.duplicated_adds <= m.unknown_adds,
            format!(
                "{} payloads stored twice but only {} adds reported an unknown outcome (the lost reply's add answered {outcome} and became {jobs_of_payload} jobs)",
                m.duplicated_adds, m.unknown_adds
            ),
        );
    }
    v.note(format!(
        "reply to the add of payload {payload} lost after it ran: the add answered {outcome}; {jobs_of_payload} job(s) stored{retried}"
    ));
    drop(proxy);
    Ok(sc.finish(
        Some(&s),
        None,
        v,
        json!({"payload": payload, "outcome": outcome, "custom_ids": custom}),
    ))
}
