//! Results of the worker workloads: medians and spreads per side, ratios, the Markdown tables
//! for `docs/benchmarks.md`, `INFO commandstats` per job, the targets, and the entries
//! of `target/bench.json`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::worker::{
    LatencyRun, WorkerRun, WorkerWorkload, LATENCY_CONCURRENCY, LATENCY_RATE_PER_S,
};
use super::{group_thousands, median, ratio, spread, Side, BULLMQ_VERSION, NODE_LABEL};

/// Median and (min, max) of one side of a throughput workload.
pub(super) struct WorkerSideStats {
    pub jobs_per_s: Option<f64>,
    pub jobs_per_s_spread: Option<(f64, f64)>,
    pub redis_cpu_usec_per_job: Option<f64>,
    pub redis_cpu_spread: Option<(f64, f64)>,
    pub client_cpu_usec_per_job: Option<f64>,
    pub rss_peak_kb: Option<f64>,
    pub rss_spread: Option<(f64, f64)>,
    /// Summed over the side's runs: command -> (calls per job, µs per job).
    pub commands_per_job: BTreeMap<String, (f64, f64)>,
    /// Medians per job: redis-server user and system CPU (µs), bytes in and out.
    pub server_per_job: Option<[f64; 4]>,
}

pub(super) struct WorkerSummary {
    pub workload: WorkerWorkload,
    /// Completions timed, of `prefill` jobs queued.
    pub n: u64,
    pub prefill: u64,
    pub bullpen: WorkerSideStats,
    pub node: WorkerSideStats,
}

impl WorkerSummary {
    pub fn throughput_ratio(&self) -> Option<f64> {
        ratio(self.bullpen.jobs_per_s, self.node.jobs_per_s)
    }

    pub fn redis_cpu_ratio(&self) -> Option<f64> {
        ratio(
            self.bullpen.redis_cpu_usec_per_job,
            self.node.redis_cpu_usec_per_job,
        )
    }

    pub fn rss_ratio(&self) -> Option<f64> {
        ratio(self.bullpen.rss_peak_kb, self.node.rss_peak_kb)
    }
}

/// Per command, calls and µs per job summed over `runs` (each run's stats over its `n`).
fn commands_per_job<'a>(
    runs: impl Iterator<Item = (&'a BTreeMap<String, (u64, u64)>, u64)>,
) -> BTreeMap<String, (f64, f64)> {
    let mut total: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut jobs = 0u64;
    for (stats, n) in runs {
        jobs += n;
        for (cmd, (calls, usec)) in stats {
            let e = total.entry(cmd.clone()).or_insert((0, 0));
            e.0 += calls;
            e.1 += usec;
        }
    }
    total
        .into_iter()
        .map(|(cmd, (calls, usec))| {
            let per = |v: u64| v as f64 / jobs.max(1) as f64;
            (cmd, (per(calls), per(usec)))
        })
        .collect()
}

fn worker_side_stats(runs: &[WorkerRun], w: WorkerWorkload, side: Side) -> WorkerSideStats {
    let mine: Vec<&WorkerRun> = runs
        .iter()
        .filter(|r| r.workload == w && r.side == side)
        .collect();
    let tput: Vec<f64> = mine.iter().map(|r| r.jobs_per_s()).collect();
    let cpu: Vec<f64> = mine.iter().map(|r| r.redis_cpu_usec_per_job()).collect();
    let client: Vec<f64> = mine
        .iter()
        .filter_map(|r| r.client_cpu_usec_per_job())
        .collect();
    let rss: Vec<f64> = mine
        .iter()
        .filter_map(|r| r.rss_peak_kb.map(|k| k as f64))
        .collect();
    WorkerSideStats {
        jobs_per_s: median(&tput),
        jobs_per_s_spread: spread(&tput),
        redis_cpu_usec_per_job: median(&cpu),
        redis_cpu_spread: spread(&cpu),
        client_cpu_usec_per_job: median(&client),
        rss_peak_kb: median(&rss),
        rss_spread: spread(&rss),
        commands_per_job: commands_per_job(mine.iter().map(|r| (&r.commandstats, r.finished))),
        server_per_job: server_per_job(&mine),
    }
}

/// Medians over `runs` of redis-server user and system CPU µs, bytes in and out, per job.
fn server_per_job(runs: &[&WorkerRun]) -> Option<[f64; 4]> {
    let pick = |f: fn(&WorkerRun) -> f64| -> Option<f64> {
        let v: Vec<f64> = runs
            .iter()
            .map(|r| f(r) / r.finished.max(1) as f64)
            .collect();
        median(&v)
    };
    Some([
        pick(|r| r.server.cpu_user_ms * 1e3)?,
        pick(|r| r.server.cpu_sys_ms * 1e3)?,
        pick(|r| r.server.net_in_bytes)?,
        pick(|r| r.server.net_out_bytes)?,
    ])
}

/// One line per side: where redis-server's CPU per job went, and the bytes per job.
pub(super) fn server_lines(s: &WorkerSummary) -> String {
    let line = |side: &str, v: Option<[f64; 4]>| {
        match v {
        Some([user, sys, inb, outb]) => format!(
            "    {side:<12} redis-server CPU per job {:.1} µs = user {user:.1} + system {sys:.1}; network per job {inb:.0} B in, {outb:.0} B out\n",
            user + sys
        ),
        None => format!("    {side:<12} not measured\n"),
    }
    };
    format!(
        "{}:\n{}{}",
        s.workload.key(),
        line("bullpen", s.bullpen.server_per_job),
        line(NODE_LABEL, s.node.server_per_job)
    )
}

pub(super) fn summarise_workers(runs: &[WorkerRun]) -> Vec<WorkerSummary> {
    WorkerWorkload::all()
        .into_iter()
        .filter_map(|w| {
            let first = runs.iter().find(|r| r.workload == w)?;
            Some(WorkerSummary {
                workload: w,
                n: first.n,
                prefill: first.prefill,
                bullpen: worker_side_stats(runs, w, Side::Bullpen),
                node: worker_side_stats(runs, w, Side::Node),
            })
        })
        .collect()
}

/// Medians per side of the latency runs.
pub(super) struct LatencySideStats {
    pub p50: Option<f64>,
    pub p50_spread: Option<(f64, f64)>,
    pub p99: Option<f64>,
    pub p99_spread: Option<(f64, f64)>,
    pub mean: Option<f64>,
    pub mean_spread: Option<(f64, f64)>,
    pub max: Option<f64>,
    pub rss_peak_kb: Option<f64>,
    pub commands_per_job: BTreeMap<String, (f64, f64)>,
}

pub(super) struct LatencySummary {
    pub n: u64,
    pub bullpen: LatencySideStats,
    pub node: LatencySideStats,
}

fn latency_side_stats(runs: &[LatencyRun], side: Side) -> LatencySideStats {
    let mine: Vec<&LatencyRun> = runs.iter().filter(|r| r.side == side).collect();
    let pick = |f: fn(&LatencyRun) -> Option<f64>| -> Vec<f64> {
        mine.iter().filter_map(|r| f(r)).collect()
    };
    let (p50, p99, mean, max) = (
        pick(LatencyRun::p50),
        pick(LatencyRun::p99),
        pick(LatencyRun::mean),
        pick(LatencyRun::max),
    );
    let rss: Vec<f64> = mine
        .iter()
        .filter_map(|r| r.rss_peak_kb.map(|k| k as f64))
        .collect();
    LatencySideStats {
        p50: median(&p50),
        p50_spread: spread(&p50),
        p99: median(&p99),
        p99_spread: spread(&p99),
        mean: median(&mean),
        mean_spread: spread(&mean),
        max: median(&max),
        rss_peak_kb: median(&rss),
        commands_per_job: commands_per_job(mine.iter().map(|r| (&r.commandstats, r.n))),
    }
}

pub(super) fn summarise_latency(runs: &[LatencyRun]) -> Option<LatencySummary> {
    let n = runs.first()?.n;
    Some(LatencySummary {
        n,
        bullpen: latency_side_stats(runs, Side::Bullpen),
        node: latency_side_stats(runs, Side::Node),
    })
}

// ---- output ----

fn with_spread(m: Option<f64>, s: Option<(f64, f64)>, fmt: impl Fn(f64) -> String) -> String {
    match (m, s) {
        (Some(m), Some((lo, hi))) => format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi)),
        _ => "not measured".to_owned(),
    }
}

fn ratio_cell(r: Option<f64>, node: bool) -> String {
    match r {
        Some(r) => format!("**{r:.2}**"),
        None if node => "–".to_owned(),
        None => "not measured".to_owned(),
    }
}

fn us1(v: f64) -> String {
    format!("{v:.1}")
}

fn mb1(kb: f64) -> String {
    format!("{:.1}", kb / 1024.0)
}

fn ms0(v: f64) -> String {
    format!("{v:.0}")
}

fn ms2(v: f64) -> String {
    format!("{v:.2}")
}

/// The throughput table, and a second one with Redis CPU, RSS and worker CPU per job.
pub(super) fn worker_tables(summary: &[WorkerSummary], node: bool) -> String {
    let mut t = format!(
        "| Workload | n | bullpen jobs/s, median (min–max) | {NODE_LABEL} {BULLMQ_VERSION} jobs/s, median (min–max) | bullpen / Node |\n|---|---:|---:|---:|---:|\n"
    );
    for s in summary {
        t.push_str(&format!(
            "| `{}` (c = {}, {}) | {} | {} | {} | {} |\n",
            s.workload.key(),
            s.workload.concurrency,
            s.workload.retention(),
            if s.n == s.prefill {
                group_thousands(s.n as f64)
            } else {
                format!(
                    "{} of {}",
                    group_thousands(s.n as f64),
                    group_thousands(s.prefill as f64)
                )
            },
            with_spread(
                s.bullpen.jobs_per_s,
                s.bullpen.jobs_per_s_spread,
                group_thousands
            ),
            with_spread(s.node.jobs_per_s, s.node.jobs_per_s_spread, group_thousands),
            ratio_cell(s.throughput_ratio(), node),
        ));
    }
    t.push_str(
        "\n| Workload | redis-server CPU µs/job, bullpen | Node | bullpen / Node | worker peak RSS MB, bullpen | Node | worker CPU µs/job, bullpen / Node |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("–".to_owned(), f);
    for s in summary {
        t.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} / {} |\n",
            s.workload.key(),
            with_spread(
                s.bullpen.redis_cpu_usec_per_job,
                s.bullpen.redis_cpu_spread,
                us1
            ),
            with_spread(s.node.redis_cpu_usec_per_job, s.node.redis_cpu_spread, us1),
            ratio_cell(s.redis_cpu_ratio(), node),
            with_spread(s.bullpen.rss_peak_kb, s.bullpen.rss_spread, mb1),
            with_spread(s.node.rss_peak_kb, s.node.rss_spread, mb1),
            opt(s.bullpen.client_cpu_usec_per_job, us1),
            opt(s.node.client_cpu_usec_per_job, us1),
        ));
    }
    t
}

/// A statistic of one side: median and (min, max).
type Stat = (Option<f64>, Option<(f64, f64)>);

pub(super) fn latency_table(s: &LatencySummary, node: bool) -> String {
    let mut t = format!(
        "| Add-to-completed latency ({} jobs at {LATENCY_RATE_PER_S}/s, c = {LATENCY_CONCURRENCY}) | bullpen, median (min–max) | {NODE_LABEL} {BULLMQ_VERSION}, median (min–max) | bullpen / Node |\n|---|---:|---:|---:|\n",
        group_thousands(s.n as f64)
    );
    let (b, n) = (&s.bullpen, &s.node);
    let row = |label: &str, b: Stat, n: Stat, fmt: fn(f64) -> String| {
        format!(
            "| {label} | {} | {} | {} |\n",
            with_spread(b.0, b.1, fmt),
            with_spread(n.0, n.1, fmt),
            ratio_cell(ratio(b.0, n.0), node),
        )
    };
    t.push_str(&row(
        "p50, ms",
        (b.p50, b.p50_spread),
        (n.p50, n.p50_spread),
        ms0,
    ));
    t.push_str(&row(
        "p99, ms",
        (b.p99, b.p99_spread),
        (n.p99, n.p99_spread),
        ms0,
    ));
    t.push_str(&row(
        "mean, ms",
        (b.mean, b.mean_spread),
        (n.mean, n.mean_spread),
        ms2,
    ));
    t
}

/// Per command: calls and µs per job, both sides, for the commands that ran at least once
/// per 1,000 jobs on either side, most server time first. Redis counts a command called by a
/// script both in its own row and in the time of `EVALSHA`, so the rows do not add up.
pub(super) fn commandstats_table(
    label: &str,
    b: &BTreeMap<String, (f64, f64)>,
    n: &BTreeMap<String, (f64, f64)>,
) -> String {
    let mut cmds: Vec<&String> = b.keys().chain(n.keys()).collect();
    cmds.sort();
    cmds.dedup();
    let get = |m: &BTreeMap<String, (f64, f64)>, c: &str| m.get(c).copied().unwrap_or((0.0, 0.0));
    cmds.retain(|c| get(b, c).0 >= 0.001 || get(n, c).0 >= 0.001);
    cmds.sort_by(|x, y| {
        let key = |c: &str| get(b, c).1 + get(n, c).1;
        key(y).total_cmp(&key(x))
    });
    let mut t = format!(
        "| {label}: command | bullpen calls/job | bullpen µs/job | Node calls/job | Node µs/job |\n|---|---:|---:|---:|---:|\n"
    );
    for c in cmds {
        let (bc, bu) = get(b, c);
        let (nc, nu) = get(n, c);
        t.push_str(&format!(
            "| `{}` | {bc:.3} | {bu:.1} | {nc:.3} | {nu:.1} |\n",
            c.to_uppercase()
        ));
    }
    t
}

type JsonMap = serde_json::Map<String, Value>;

fn server_json(v: Option<[f64; 4]>) -> Value {
    v.map_or(Value::Null, |[user, sys, inb, outb]| {
        json!({"cpu_user_usec": user, "cpu_sys_usec": sys, "net_in_bytes": inb, "net_out_bytes": outb})
    })
}

/// The worker part of `bench.json`, to merge into its objects of the same names.
#[derive(Default)]
pub(super) struct ReportParts {
    pub ratios: JsonMap,
    pub bullpen: JsonMap,
    pub node: JsonMap,
    /// Into `workloads`.
    pub details: JsonMap,
}

/// The entries of `bench.json` for the worker and latency workloads.
pub(super) fn report_parts(
    workers: &[WorkerSummary],
    latency: Option<&LatencySummary>,
) -> ReportParts {
    let ReportParts {
        mut ratios,
        mut bullpen,
        mut node,
        mut details,
    } = ReportParts::default();
    let side_medians =
        |m: &mut serde_json::Map<String, Value>, w: WorkerWorkload, s: &WorkerSideStats| {
            let sfx = w.suffix();
            m.insert(w.key(), json!(s.jobs_per_s));
            m.insert(
                format!("redis_cpu_usec_per_job_{sfx}"),
                json!(s.redis_cpu_usec_per_job),
            );
            m.insert(
                format!("worker_rss_{sfx}_kb"),
                json!(s.rss_peak_kb.map(|v| v.round() as u64)),
            );
            m.insert(
                format!("worker_cpu_usec_per_job_{sfx}"),
                json!(s.client_cpu_usec_per_job),
            );
        };
    let commands = |m: &BTreeMap<String, (f64, f64)>| -> Value {
        m.iter()
            .map(|(c, (calls, usec))| {
                (
                    c.clone(),
                    json!({"calls_per_job": calls, "usec_per_job": usec}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    for s in workers {
        let w = s.workload;
        ratios.insert(w.key(), json!(s.throughput_ratio()));
        ratios.insert(
            format!("redis_cpu_per_job_{}", w.suffix()),
            json!(s.redis_cpu_ratio()),
        );
        ratios.insert(format!("worker_rss_{}", w.suffix()), json!(s.rss_ratio()));
        side_medians(&mut bullpen, w, &s.bullpen);
        side_medians(&mut node, w, &s.node);
        details.insert(
            w.key(),
            json!({
                "n": s.n,
                "prefill": s.prefill,
                "concurrency": w.concurrency,
                "remove_on_complete": w.remove,
                "unit": "jobs/s",
                "better": "higher is better",
                "bullpen_min_max": s.bullpen.jobs_per_s_spread.map(|(a, b)| [a, b]),
                "node_min_max": s.node.jobs_per_s_spread.map(|(a, b)| [a, b]),
                "bullpen_redis_cpu_usec_per_job": s.bullpen.redis_cpu_usec_per_job,
                "node_redis_cpu_usec_per_job": s.node.redis_cpu_usec_per_job,
                "bullpen_worker_cpu_usec_per_job": s.bullpen.client_cpu_usec_per_job,
                "node_worker_cpu_usec_per_job": s.node.client_cpu_usec_per_job,
                "bullpen_rss_peak_kb": s.bullpen.rss_peak_kb,
                "node_rss_peak_kb": s.node.rss_peak_kb,
                "bullpen_commands_per_job": commands(&s.bullpen.commands_per_job),
                "node_commands_per_job": commands(&s.node.commands_per_job),
                "bullpen_server_per_job": server_json(s.bullpen.server_per_job),
                "node_server_per_job": server_json(s.node.server_per_job),
            }),
        );
    }
    if let Some(l) = latency {
        ratios.insert(
            "latency_p50".into(),
            json!(ratio(l.bullpen.p50, l.node.p50)),
        );
        ratios.insert(
            "latency_p99".into(),
            json!(ratio(l.bullpen.p99, l.node.p99)),
        );
        ratios.insert(
            "latency_mean".into(),
            json!(ratio(l.bullpen.mean, l.node.mean)),
        );
        for (m, s) in [(&mut bullpen, &l.bullpen), (&mut node, &l.node)] {
            m.insert("latency_p50_ms".into(), json!(s.p50));
            m.insert("latency_p99_ms".into(), json!(s.p99));
            m.insert("latency_mean_ms".into(), json!(s.mean));
        }
        details.insert(
            "latency".into(),
            json!({
                "n": l.n,
                "rate_per_s": LATENCY_RATE_PER_S,
                "concurrency": LATENCY_CONCURRENCY,
                "unit": "ms",
                "better": "lower is better",
                "bullpen_p50_min_max": l.bullpen.p50_spread.map(|(a, b)| [a, b]),
                "node_p50_min_max": l.node.p50_spread.map(|(a, b)| [a, b]),
                "bullpen_p99_min_max": l.bullpen.p99_spread.map(|(a, b)| [a, b]),
                "node_p99_min_max": l.node.p99_spread.map(|(a, b)| [a, b]),
                "bullpen_max_ms": l.bullpen.max,
                "node_max_ms": l.node.max,
                "bullpen_rss_peak_kb": l.bullpen.rss_peak_kb,
                "node_rss_peak_kb": l.node.rss_peak_kb,
                "bullpen_commands_per_job": commands(&l.bullpen.commands_per_job),
                "node_commands_per_job": commands(&l.node.commands_per_job),
            }),
        );
    }
    ReportParts {
        ratios,
        bullpen,
        node,
        details,
    }
}

/// The targets, checked against the medians: `(target, value, met)`.
pub(super) fn targets(
    workers: &[WorkerSummary],
    latency: Option<&LatencySummary>,
) -> Vec<(String, Option<f64>, Option<bool>)> {
    let mut out = Vec::new();
    let find = |c: usize, remove: bool| {
        workers
            .iter()
            .find(|s| s.workload.concurrency == c && s.workload.remove == remove)
    };
    for remove in [false, true] {
        let tag = if remove { " (removeOnComplete)" } else { "" };
        if let Some(s) = find(128, remove) {
            let r = s.throughput_ratio();
            out.push((
                format!("c=128 jobs/s ≥ 2× Node{tag}"),
                r,
                r.map(|r| r >= 2.0),
            ));
            let r = s.redis_cpu_ratio();
            out.push((
                format!("c=128 Redis CPU per job ≤ 0.5× Node{tag}"),
                r,
                r.map(|r| r <= 0.5),
            ));
            // VmHWM is in KiB: 16 MB here is 16 MiB, 16,384 KiB.
            let mb = s.bullpen.rss_peak_kb.map(|kb| kb / 1024.0);
            out.push((
                format!("c=128 bullpen worker peak RSS ≤ 16 MB (value in MB){tag}"),
                mb,
                mb.map(|m| m <= 16.0),
            ));
        }
        if let Some(s) = find(1, remove) {
            let r = s.throughput_ratio();
            out.push((
                format!("c=1 jobs/s ≥ 1.3× Node{tag}"),
                r,
                r.map(|r| r >= 1.3),
            ));
        }
    }
    if let Some(l) = latency {
        let r = ratio(l.bullpen.p99, l.node.p99);
        out.push(("latency p99 ≤ 0.5× Node".into(), r, r.map(|r| r <= 0.5)));
    }
    out
}

pub(super) fn runs_json(workers: &[WorkerRun], latency: &[LatencyRun]) -> Vec<Value> {
    workers
        .iter()
        .map(WorkerRun::to_json)
        .chain(latency.iter().map(LatencyRun::to_json))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(side: Side, rep: u32, elapsed_ms: f64, cpu_ms: f64, rss: u64) -> WorkerRun {
        let mut stats = BTreeMap::new();
        stats.insert("evalsha".to_owned(), (2_000, 40_000));
        WorkerRun {
            workload: WorkerWorkload {
                concurrency: 128,
                remove: false,
            },
            side,
            rep,
            queue: String::new(),
            prefill: 1_000,
            n: 1_000,
            finished: 1_000,
            elapsed_ms,
            redis_cpu_ms: cpu_ms,
            server: Default::default(),
            client_cpu_ms: Some(10.0),
            rss_peak_kb: Some(rss),
            commandstats: stats,
            counted_by: None,
        }
    }

    #[test]
    fn worker_summary_ratios_and_targets() {
        let runs = vec![
            run(Side::Bullpen, 1, 100.0, 20.0, 8_000),
            run(Side::Node, 1, 300.0, 60.0, 60_000),
            run(Side::Bullpen, 2, 125.0, 25.0, 9_000),
            run(Side::Node, 2, 250.0, 50.0, 70_000),
            run(Side::Bullpen, 3, 200.0, 30.0, 10_000),
            run(Side::Node, 3, 500.0, 40.0, 80_000),
        ];
        let s = summarise_workers(&runs);
        assert_eq!(s.len(), 1);
        // 1,000 jobs in 125 ms against 300 ms.
        assert_eq!(s[0].bullpen.jobs_per_s, Some(8_000.0));
        assert_eq!(s[0].node.jobs_per_s, Some(1_000.0 / 0.3));
        let r = s[0].throughput_ratio().expect("ratio");
        assert!((r - 2.4).abs() < 1e-9, "{r}");
        assert_eq!(s[0].bullpen.redis_cpu_usec_per_job, Some(25.0));
        assert_eq!(s[0].node.redis_cpu_usec_per_job, Some(50.0));
        assert_eq!(s[0].redis_cpu_ratio(), Some(0.5));
        assert_eq!(s[0].bullpen.rss_peak_kb, Some(9_000.0));
        assert_eq!(
            s[0].bullpen.commands_per_job.get("evalsha"),
            Some(&(2.0, 40.0))
        );
        let t = targets(&s, None);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|(_, _, met)| *met == Some(true)), "{t:?}");
        let parts = report_parts(&s, None);
        let r = parts.ratios["worker_c128"].as_f64().expect("ratio");
        assert!((r - 2.4).abs() < 1e-9, "{r}");
        assert_eq!(parts.ratios["redis_cpu_per_job_c128"], json!(0.5));
        assert_eq!(parts.bullpen["worker_rss_c128_kb"], json!(9_000));
        assert_eq!(parts.node["worker_rss_c128_kb"], json!(70_000));
        let tables = worker_tables(&s, true);
        assert!(
            tables.contains("| `worker_c128` (c = 128, completed jobs kept) | 1,000 | 8,000 (5,000–10,000) | 3,333 (2,000–4,000) | **2.40** |"),
            "{tables}"
        );
    }

    #[test]
    fn latency_summary_takes_medians_of_percentiles() {
        let run = |side, rep, lat: Vec<f64>| LatencyRun {
            side,
            rep,
            queue: String::new(),
            n: lat.len() as u64,
            latencies: lat,
            redis_cpu_ms: 0.0,
            commandstats: BTreeMap::new(),
            rss_peak_kb: None,
            adding_ms: 0.0,
        };
        let ramp = |k: f64| (1..=100).map(|i| f64::from(i) * k).collect::<Vec<f64>>();
        let runs = vec![
            run(Side::Bullpen, 1, ramp(1.0)),
            run(Side::Node, 1, ramp(2.0)),
            run(Side::Bullpen, 2, ramp(3.0)),
            run(Side::Node, 2, ramp(4.0)),
        ];
        let s = summarise_latency(&runs).expect("summary");
        // p99 of 1..=100 is 99; medians of two reps are means.
        assert_eq!(s.bullpen.p99, Some(198.0));
        assert_eq!(s.node.p99, Some(297.0));
        assert_eq!(s.bullpen.p50, Some(100.0));
        let parts = report_parts(&[], Some(&s));
        assert_eq!(parts.ratios["latency_p99"], json!(198.0 / 297.0));
        assert_eq!(parts.node["latency_p50_ms"], json!(150.0));
        let t = latency_table(&s, true);
        assert!(
            t.contains("| p99, ms | 198 (99–297) | 297 (198–396) | **0.67** |"),
            "{t}"
        );
    }

    #[test]
    fn commandstats_per_job_are_summed_over_runs() {
        let mut a = BTreeMap::new();
        a.insert("evalsha".to_owned(), (200u64, 4_000u64));
        a.insert("bzpopmin".to_owned(), (1, 10));
        let mut b = BTreeMap::new();
        b.insert("evalsha".to_owned(), (100u64, 2_000u64));
        let per = commands_per_job([(&a, 100u64), (&b, 100u64)].into_iter());
        assert_eq!(per.get("evalsha"), Some(&(1.5, 30.0)));
        assert_eq!(per.get("bzpopmin"), Some(&(0.005, 0.05)));
        let t = commandstats_table("c=1", &per, &BTreeMap::new());
        assert!(
            t.contains("| `EVALSHA` | 1.500 | 30.0 | 0.000 | 0.0 |"),
            "{t}"
        );
        assert!(
            t.contains("| `BZPOPMIN` | 0.005 | 0.1 | 0.000 | 0.0 |"),
            "{t}"
        );
    }
}
