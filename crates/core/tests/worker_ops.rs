//! The worker scripts (fetch, finish, retry, hand back, lock renewal, stall check) against a
//! real redis-server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bullpen_conn::redis::{self, FromRedisValue};
use bullpen_conn::{Connection, RedisOptions};
use bullpen_core::script::ADD_JOB;
use bullpen_core::worker_ops::{
    self, FetchOptions, Fetched, Finish, KeepJobs, DEFAULT_MAX_LEN_EVENTS,
};
use bullpen_core::{Error, QueueKeys, RefusalCode};
use bullpen_testkit::RedisServer;
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;
const LOCK_MS: u64 = 30_000;

struct Ctx {
    _server: RedisServer,
    conn: Connection,
    keys: QueueKeys,
}

async fn setup() -> Ctx {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(RedisOptions::from_url(&server.url()).expect("url").worker())
        .await
        .expect("connect");
    Ctx {
        _server: server,
        conn,
        keys: QueueKeys::new("bull", "q").expect("keys"),
    }
}

/// One add through the real ADD_JOB script.
#[derive(Clone, Debug, Default)]
struct Add {
    id: Option<String>,
    ts: Option<u64>,
    delay: u64,
    priority: u32,
    lifo: bool,
    attempts: u32,
    /// Dedup id, ttl ms, and the 4 flags "extend replace reschedule keepLastIfActive".
    dedup: Option<(String, Option<u64>, &'static str)>,
}

impl Ctx {
    fn k(&self, suffix: &str) -> String {
        self.keys.key(suffix)
    }

    async fn q<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        self.conn.query(&cmd).await.expect("redis command")
    }

    async fn add_with(&self, name: &str, a: Add) -> String {
        let mut opts = serde_json::Map::new();
        opts.insert("attempts".into(), json!(a.attempts));
        if a.delay > 0 {
            opts.insert("delay".into(), json!(a.delay));
        }
        if a.priority > 0 {
            opts.insert("priority".into(), json!(a.priority));
        }
        if a.lifo {
            opts.insert("lifo".into(), json!(true));
        }
        let (dedup_id, dedup_ttl, flags) = match &a.dedup {
            Some((id, ttl, flags)) => {
                let mut de = serde_json::Map::new();
                de.insert("id".into(), json!(id));
                if let Some(t) = ttl {
                    de.insert("ttl".into(), json!(t));
                }
                if flags.ends_with('1') {
                    de.insert("keepLastIfActive".into(), json!(true));
                }
                opts.insert("de".into(), serde_json::Value::Object(de));
                (
                    id.clone(),
                    ttl.map(|t| t.to_string()).unwrap_or_default(),
                    (*flags).to_owned(),
                )
            }
            None => (String::new(), String::new(), "0000".to_owned()),
        };
        let keys: Vec<String> = [
            "wait",
            "meta",
            "id",
            "delayed",
            "prioritized",
            "pc",
            "marker",
            "events",
            "active",
        ]
        .iter()
        .map(|s| self.k(s))
        .collect();
        let args = vec![
            self.keys.base().to_owned(),
            DEFAULT_MAX_LEN_EVENTS.to_string(),
            "1".to_owned(),
            a.id.clone().unwrap_or_default(),
            name.to_owned(),
            json!({ "n": name }).to_string(),
            serde_json::Value::Object(opts).to_string(),
            a.ts.unwrap_or(NOW).to_string(),
            a.delay.to_string(),
            a.priority.to_string(),
            if a.lifo { "1" } else { "0" }.to_owned(),
            dedup_id,
            dedup_ttl,
            flags,
        ];
        let reply: Vec<String> = ADD_JOB.run(&self.conn, &keys, &args).await.expect("add");
        reply[0].clone()
    }

    async fn add(&self, name: &str) -> String {
        self.add_with(name, Add::default()).await
    }

    async fn fetch(&self, tokens: &[&str], opts: &FetchOptions, now: u64) -> Fetched {
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        worker_ops::move_to_active(&self.conn, &self.keys, now, &tokens, opts)
            .await
            .expect("fetch")
    }

    async fn fetch_one(&self, token: &str) -> worker_ops::ActiveJob {
        let mut f = self.fetch(&[token], &FetchOptions::new(LOCK_MS), NOW).await;
        assert_eq!(f.jobs.len(), 1, "expected one job, got {f:?}");
        f.jobs.remove(0)
    }

    async fn complete(&self, id: &str, token: &str, at: u64, keep: KeepJobs) -> Fetched {
        worker_ops::move_to_finished(
            &self.conn,
            &self.keys,
            id,
            token,
            at,
            &completed("42"),
            keep,
            None,
        )
        .await
        .expect("complete")
    }

    async fn hash(&self, id: &str) -> HashMap<String, String> {
        self.q(&["HGETALL", &self.keys.job(id)]).await
    }

    async fn field(&self, id: &str, f: &str) -> Option<String> {
        self.q(&["HGET", &self.keys.job(id), f]).await
    }

    async fn list(&self, suffix: &str) -> Vec<String> {
        self.q(&["LRANGE", &self.k(suffix), "0", "-1"]).await
    }

    async fn zscore(&self, suffix: &str, member: &str) -> Option<f64> {
        self.q(&["ZSCORE", &self.k(suffix), member]).await
    }

    async fn exists(&self, key: &str) -> bool {
        let n: i64 = self.q(&["EXISTS", key]).await;
        n == 1
    }

    async fn pttl(&self, key: &str) -> i64 {
        self.q(&["PTTL", key]).await
    }

    /// Every event as its flat field list.
    async fn events(&self) -> Vec<Vec<String>> {
        let entries: Vec<(String, Vec<String>)> =
            self.q(&["XRANGE", &self.k("events"), "-", "+"]).await;
        entries.into_iter().map(|(_, fields)| fields).collect()
    }

    async fn event_names(&self) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .map(|e| e[1].clone())
            .collect()
    }
}

fn completed(v: &str) -> Finish {
    Finish::Completed {
        return_value_json: v.to_owned(),
    }
}

fn failed(reason: &str, attempts: u32) -> Finish {
    Finish::Failed {
        reason: reason.to_owned(),
        stacktrace_json: r#"["Error: boom\n    at x"]"#.to_owned(),
        attempts,
    }
}

fn ev(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|s| (*s).to_owned()).collect()
}

fn refusal(e: Error) -> RefusalCode {
    match e {
        Error::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// move_to_active

#[tokio::test]
async fn fetch_order_lifo_then_fifo_then_priority() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let p5 = c
        .add_with(
            "p5",
            Add {
                priority: 5,
                ..Add::default()
            },
        )
        .await;
    let p1 = c
        .add_with(
            "p1",
            Add {
                priority: 1,
                ..Add::default()
            },
        )
        .await;
    let l = c
        .add_with(
            "l",
            Add {
                lifo: true,
                ..Add::default()
            },
        )
        .await;
    let mut order = Vec::new();
    for i in 0..5 {
        order.push(c.fetch_one(&format!("t:{i}")).await.id);
    }
    assert_eq!(order, vec![l, a, b, p1, p5]);
    // Nothing left, prioritized empty: pc is deleted, the fetch answers nothing.
    assert!(c.exists(&c.k("pc")).await);
    let f = c.fetch(&["t:9"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert!(f.is_empty(), "{f:?}");
    assert!(!c.exists(&c.k("pc")).await);
}

#[tokio::test]
async fn fetch_batch_takes_one_job_per_token() {
    let c = setup().await;
    let ids = [c.add("a").await, c.add("b").await, c.add("c").await];
    let f = c
        .fetch(&["t:1", "t:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    let got: Vec<(&str, &str)> = f
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.token.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(ids[0].as_str(), "t:1"), (ids[1].as_str(), "t:2")]
    );
    assert_eq!(c.list("wait").await, vec![ids[2].clone()]);
    // Ran out of jobs after one: the rest of the batch is simply not filled.
    let f = c
        .fetch(&["t:3", "t:4"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 1);
    assert_eq!(f.next_due_ms, None);
    assert_eq!(c.list("active").await.len(), 3);
}

#[tokio::test]
async fn fetch_activates_lock_fields_event_and_marker() {
    let c = setup().await;
    let id = c.add("a").await;
    let _: i64 = c.q(&["DEL", &c.k("marker")]).await;
    let opts = FetchOptions::new(LOCK_MS).with_worker_name("rustw");
    let f = c.fetch(&["w1:0"], &opts, NOW + 7).await;
    let job = &f.jobs[0];
    assert_eq!(job.id, id);
    assert_eq!(job.token, "w1:0");
    assert_eq!(job.fields["ats"], "1");
    assert_eq!(job.fields["processedOn"], (NOW + 7).to_string());
    assert_eq!(job.fields["pb"], "rustw");
    assert_eq!(job.fields["name"], "a");
    assert_eq!(job.fields, c.hash(&id).await);
    let lock = c.keys.job_sub(&id, "lock");
    let holder: Option<String> = c.q(&["GET", &lock]).await;
    assert_eq!(holder.as_deref(), Some("w1:0"));
    let ttl = c.pttl(&lock).await;
    assert!(ttl > 29_000 && ttl <= 30_000, "lock pttl {ttl}");
    assert_eq!(c.list("active").await, vec![id.clone()]);
    assert_eq!(
        c.events().await.last().cloned(),
        Some(ev(&["event", "active", "jobId", &id, "prev", "waiting"]))
    );
    assert_eq!(c.zscore("marker", "0").await, Some(0.0));

    // An unnamed worker leaves pb alone; ats counts every activation.
    let _: i64 = c.q(&["LREM", &c.k("active"), "0", &id]).await;
    let _: i64 = c.q(&["RPUSH", &c.k("wait"), &id]).await;
    let f = c.fetch(&["w2:0"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert_eq!(f.jobs[0].fields["ats"], "2");
    assert_eq!(f.jobs[0].fields["pb"], "rustw");
}

#[tokio::test]
async fn fetch_promotes_due_delayed_jobs() {
    let c = setup().await;
    let id = c
        .add_with(
            "d",
            Add {
                delay: 1_000,
                ..Add::default()
            },
        )
        .await;
    // Not due yet: nothing, and the due time is reported.
    let f = c.fetch(&["t:0"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert!(f.jobs.is_empty());
    assert_eq!(f.next_due_ms, Some(NOW + 1_000));
    assert!(!f.paused_or_maxed);
    assert_eq!(f.rate_limit_ttl_ms, 0);
    // Due: promoted (waiting prev=delayed, delay 0) and fetched.
    let f = c
        .fetch(&["t:1"], &FetchOptions::new(LOCK_MS), NOW + 1_000)
        .await;
    assert_eq!(f.jobs.len(), 1);
    assert_eq!(f.jobs[0].id, id);
    assert_eq!(f.jobs[0].fields["delay"], "0");
    assert_eq!(f.next_due_ms, None);
    let events = c.events().await;
    let n = events.len();
    assert_eq!(
        events[n - 2],
        ev(&["event", "waiting", "jobId", &id, "prev", "delayed"])
    );
    assert_eq!(
        events[n - 1],
        ev(&["event", "active", "jobId", &id, "prev", "waiting"])
    );
    let delayed: i64 = c.q(&["ZCARD", &c.k("delayed")]).await;
    assert_eq!(delayed, 0);
}

#[tokio::test]
async fn fetch_promotes_a_delayed_prioritized_job_into_prioritized() {
    let c = setup().await;
    let id = c
        .add_with(
            "dp",
            Add {
                delay: 10,
                priority: 3,
                ..Add::default()
            },
        )
        .await;
    let other = c
        .add_with(
            "p1",
            Add {
                priority: 1,
                ..Add::default()
            },
        )
        .await;
    // Promotion at fetch time: the delayed job joins prioritized behind the priority-1 job.
    let f = c
        .fetch(&["t:0"], &FetchOptions::new(LOCK_MS), NOW + 10)
        .await;
    assert_eq!(f.jobs[0].id, other);
    assert!(c.zscore("prioritized", &id).await.is_some());
}

#[tokio::test]
async fn fetch_honours_pause_and_global_concurrency() {
    let c = setup().await;
    let a = c.add("a").await;
    c.add("b").await;
    let _: i64 = c.q(&["HSET", &c.k("meta"), "paused", "1"]).await;
    let f = c.fetch(&["t:0"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert!(f.jobs.is_empty());
    assert!(f.paused_or_maxed);
    assert_eq!(c.list("wait").await.len(), 2);

    let _: i64 = c.q(&["HDEL", &c.k("meta"), "paused"]).await;
    let _: i64 = c.q(&["HSET", &c.k("meta"), "concurrency", "1"]).await;
    let f = c
        .fetch(&["t:1", "t:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 1, "the batch stops at the global concurrency");
    assert_eq!(f.jobs[0].id, a);
    assert!(f.paused_or_maxed);
    let f = c.fetch(&["t:3"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert!(f.jobs.is_empty());
    assert!(f.paused_or_maxed);
    assert_eq!(c.list("wait").await.len(), 1);
}

#[tokio::test]
async fn fetch_rate_limiter_counts_activations() {
    let c = setup().await;
    for n in ["a", "b", "c", "d"] {
        c.add(n).await;
    }
    let opts = FetchOptions::new(LOCK_MS).with_limiter(2, 5_000);
    assert_eq!(c.fetch(&["t:0"], &opts, NOW).await.jobs.len(), 1);
    let ttl = c.pttl(&c.k("limiter")).await;
    assert!(ttl > 4_000 && ttl <= 5_000, "limiter pttl {ttl}");
    assert_eq!(c.fetch(&["t:1"], &opts, NOW).await.jobs.len(), 1);
    let f = c.fetch(&["t:2"], &opts, NOW).await;
    assert!(f.jobs.is_empty());
    assert!(
        f.rate_limit_ttl_ms > 0 && f.rate_limit_ttl_ms <= 5_000,
        "{f:?}"
    );
    let used: String = c.q(&["GET", &c.k("limiter")]).await;
    assert_eq!(used, "2");

    // A batch stops when the limiter is reached mid-way.
    let _: i64 = c.q(&["DEL", &c.k("limiter")]).await;
    let f = c.fetch(&["t:3", "t:4", "t:5"], &opts, NOW).await;
    assert_eq!(f.jobs.len(), 2);
    assert!(f.rate_limit_ttl_ms > 0);

    // meta.max wins over the worker's max.
    let _: i64 = c.q(&["DEL", &c.k("limiter")]).await;
    let _: i64 = c.q(&["HSET", &c.k("meta"), "max", "1"]).await;
    c.add("e").await;
    c.add("f").await;
    let f = c.fetch(&["t:6", "t:7"], &opts, NOW).await;
    assert_eq!(f.jobs.len(), 1);
    assert!(f.rate_limit_ttl_ms > 0);
}

#[tokio::test]
async fn fetch_does_not_count_deferred_failures_against_the_limiter() {
    let c = setup().await;
    let doomed = c.add("doomed").await;
    let next = c.add("next").await;
    let _: i64 = c
        .q(&[
            "HSET",
            &c.keys.job(&doomed),
            "defa",
            "job stalled more than allowable limit",
        ])
        .await;
    let opts = FetchOptions::new(LOCK_MS).with_limiter(1, 5_000);
    let f = c.fetch(&["t:0"], &opts, NOW).await;
    assert_eq!(f.jobs[0].id, doomed);
    assert!(!c.exists(&c.k("limiter")).await);
    let f = c.fetch(&["t:1"], &opts, NOW).await;
    assert_eq!(f.jobs[0].id, next);
    let used: String = c.q(&["GET", &c.k("limiter")]).await;
    assert_eq!(used, "1");
}

#[tokio::test]
async fn fetch_drops_ids_without_a_job_hash() {
    let c = setup().await;
    let a = c.add("a").await;
    let _: i64 = c.q(&["RPUSH", &c.k("wait"), "ghost"]).await;
    let f = c.fetch(&["t:0"], &FetchOptions::new(LOCK_MS), NOW).await;
    assert_eq!(f.jobs[0].id, a);
    assert_eq!(c.list("active").await, vec![a]);
    assert!(!c.exists(&c.keys.job_sub("ghost", "lock")).await);
}

#[tokio::test]
async fn fetch_refuses_a_zero_lock_duration() {
    let c = setup().await;
    c.add("a").await;
    let tokens = strings(&["t:0"]);
    let e = worker_ops::move_to_active(&c.conn, &c.keys, NOW, &tokens, &FetchOptions::new(0))
        .await
        .expect_err("refused");
    assert!(matches!(e, Error::Validation { .. }), "{e:?}");
    assert_eq!(c.list("wait").await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// move_to_finished

#[tokio::test]
async fn finish_completed_writes_result_and_events() {
    let c = setup().await;
    let id = c.add("a").await;
    let job = c.fetch_one("w:1").await;
    let f = c
        .complete(&id, &job.token, NOW + 5, KeepJobs::KEEP_ALL)
        .await;
    assert!(f.is_empty());
    let h = c.hash(&id).await;
    assert_eq!(h["returnvalue"], "42");
    assert_eq!(h["finishedOn"], (NOW + 5).to_string());
    assert_eq!(h["atm"], "1");
    assert_eq!(c.zscore("completed", &id).await, Some((NOW + 5) as f64));
    assert!(!c.exists(&c.keys.job_sub(&id, "lock")).await);
    assert!(c.list("active").await.is_empty());
    let events = c.events().await;
    assert_eq!(
        events,
        vec![
            ev(&["event", "added", "jobId", &id, "name", "a"]),
            ev(&["event", "waiting", "jobId", &id]),
            ev(&["event", "active", "jobId", &id, "prev", "waiting"]),
            ev(&[
                "event",
                "completed",
                "jobId",
                &id,
                "returnvalue",
                "42",
                "prev",
                "active"
            ]),
            ev(&["event", "drained"]),
        ]
    );
}

#[tokio::test]
async fn finish_releases_the_stalled_mark() {
    let c = setup().await;
    let id = c.add("a").await;
    let job = c.fetch_one("w:1").await;
    let _: i64 = c.q(&["SADD", &c.k("stalled"), &id]).await;
    c.complete(&id, &job.token, NOW, KeepJobs::KEEP_ALL).await;
    let member: i64 = c.q(&["SISMEMBER", &c.k("stalled"), &id]).await;
    assert_eq!(member, 0);
}

#[tokio::test]
async fn finish_retention_by_count_keeps_the_newest() {
    let c = setup().await;
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let id = c.add(&format!("j{i}")).await;
        let job = c.fetch_one("w:1").await;
        assert_eq!(job.id, id);
        c.complete(&id, "w:1", NOW + i, KeepJobs::newest(2)).await;
        ids.push(id);
    }
    let kept: Vec<String> = c.q(&["ZRANGE", &c.k("completed"), "0", "-1"]).await;
    assert_eq!(kept, vec![ids[2].clone(), ids[3].clone()]);
    assert!(!c.exists(&c.keys.job(&ids[0])).await);
    assert!(!c.exists(&c.keys.job(&ids[1])).await);
    assert!(c.exists(&c.keys.job(&ids[3])).await);
}

#[tokio::test]
async fn finish_retention_count_zero_deletes_the_job() {
    let c = setup().await;
    let id = c.add("a").await;
    let _: i64 = c.q(&["RPUSH", &c.keys.job_sub(&id, "logs"), "line"]).await;
    c.fetch_one("w:1").await;
    c.complete(&id, "w:1", NOW, KeepJobs::REMOVE_AT_ONCE).await;
    assert!(!c.exists(&c.keys.job(&id)).await);
    assert!(!c.exists(&c.keys.job_sub(&id, "logs")).await);
    assert_eq!(c.zscore("completed", &id).await, None);
    assert!(c.event_names().await.contains(&"completed".to_owned()));
}

#[tokio::test]
async fn finish_retention_by_age_prunes_old_jobs() {
    let c = setup().await;
    let old = c.add("old").await;
    c.fetch_one("w:1").await;
    c.complete(&old, "w:1", NOW, KeepJobs::KEEP_ALL).await;
    let young = c.add("young").await;
    c.fetch_one("w:2").await;
    let keep = KeepJobs {
        count: -1,
        age_secs: Some(5),
        limit: None,
    };
    c.complete(&young, "w:2", NOW + 10_000, keep).await;
    assert!(!c.exists(&c.keys.job(&old)).await);
    let kept: Vec<String> = c.q(&["ZRANGE", &c.k("completed"), "0", "-1"]).await;
    assert_eq!(kept, vec![young]);
}

#[tokio::test]
async fn finish_failed_emits_failed_then_retries_exhausted() {
    let c = setup().await;
    let id = c.add("a").await;
    c.fetch_one("w:1").await;
    let _: i64 = c.q(&["HSET", &c.keys.job(&id), "defa", "x"]).await;
    worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &id,
        "w:1",
        NOW + 1,
        &failed("boom", 1),
        KeepJobs::KEEP_ALL,
        None,
    )
    .await
    .expect("fail");
    let h = c.hash(&id).await;
    assert_eq!(h["failedReason"], "boom");
    assert_eq!(h["stacktrace"], r#"["Error: boom\n    at x"]"#);
    assert_eq!(h["atm"], "1");
    assert_eq!(h["finishedOn"], (NOW + 1).to_string());
    assert!(!h.contains_key("defa"));
    assert_eq!(c.zscore("failed", &id).await, Some((NOW + 1) as f64));
    let events = c.events().await;
    let n = events.len();
    assert_eq!(
        events[n - 3..].to_vec(),
        vec![
            ev(&[
                "event",
                "failed",
                "jobId",
                &id,
                "failedReason",
                "boom",
                "prev",
                "active"
            ]),
            ev(&[
                "event",
                "retries-exhausted",
                "jobId",
                &id,
                "attemptsMade",
                "1"
            ]),
            ev(&["event", "drained"]),
        ]
    );
}

#[tokio::test]
async fn finish_failed_early_has_no_retries_exhausted() {
    let c = setup().await;
    let id = c.add("a").await;
    c.fetch_one("w:1").await;
    worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &id,
        "w:1",
        NOW,
        &failed("stalled", 3),
        KeepJobs::KEEP_ALL,
        None,
    )
    .await
    .expect("fail");
    let names = c.event_names().await;
    assert!(names.contains(&"failed".to_owned()));
    assert!(!names.contains(&"retries-exhausted".to_owned()));
}

#[tokio::test]
async fn finish_with_fetch_next_returns_the_next_job_and_skips_drained() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let delayed = c
        .add_with(
            "later",
            Add {
                delay: 60_000,
                ..Add::default()
            },
        )
        .await;
    c.fetch_one("w:1").await;
    let tokens = strings(&["w:2"]);
    let opts = FetchOptions::new(LOCK_MS);
    let f = worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &a,
        "w:1",
        NOW,
        &completed("1"),
        KeepJobs::KEEP_ALL,
        Some((&tokens, &opts)),
    )
    .await
    .expect("finish");
    assert_eq!(f.jobs.len(), 1);
    assert_eq!(f.jobs[0].id, b);
    let holder: Option<String> = c.q(&["GET", &c.keys.job_sub(&b, "lock")]).await;
    assert_eq!(holder.as_deref(), Some("w:2"));
    assert!(!c.event_names().await.contains(&"drained".to_owned()));

    // Finishing the last ready job while a delayed one remains: next_due, no drained.
    let tokens = strings(&["w:3"]);
    let f = worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &b,
        "w:2",
        NOW,
        &completed("2"),
        KeepJobs::KEEP_ALL,
        Some((&tokens, &opts)),
    )
    .await
    .expect("finish");
    assert!(f.jobs.is_empty());
    assert_eq!(f.next_due_ms, Some(NOW + 60_000));
    assert!(!c.event_names().await.contains(&"drained".to_owned()));
    assert!(c.zscore("delayed", &delayed).await.is_some());
}

#[tokio::test]
async fn finish_with_fetch_next_emits_drained_when_nothing_is_left() {
    let c = setup().await;
    let a = c.add("a").await;
    c.fetch_one("w:1").await;
    let tokens = strings(&["w:2"]);
    let opts = FetchOptions::new(LOCK_MS);
    let f = worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &a,
        "w:1",
        NOW,
        &completed("null"),
        KeepJobs::KEEP_ALL,
        Some((&tokens, &opts)),
    )
    .await
    .expect("finish");
    assert!(f.is_empty());
    assert_eq!(
        c.event_names().await.last().map(String::as_str),
        Some("drained")
    );
}

#[tokio::test]
async fn finish_without_drained_while_other_jobs_are_active() {
    let c = setup().await;
    let a = c.add("a").await;
    c.add("b").await;
    let f = c
        .fetch(&["w:1", "w:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 2);
    c.complete(&a, "w:1", NOW, KeepJobs::KEEP_ALL).await;
    assert!(!c.event_names().await.contains(&"drained".to_owned()));
}

#[tokio::test]
async fn finish_with_a_stale_token_writes_nothing() {
    let c = setup().await;
    let id = c.add("a").await;
    c.fetch_one("w:new").await;
    let before_hash = c.hash(&id).await;
    let before_events = c.events().await;
    let e = worker_ops::move_to_finished(
        &c.conn,
        &c.keys,
        &id,
        "w:old",
        NOW,
        &completed("1"),
        KeepJobs::KEEP_ALL,
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal(e), RefusalCode::LockMismatch);
    assert_eq!(c.hash(&id).await, before_hash);
    assert_eq!(c.events().await, before_events);
    assert_eq!(c.list("active").await, vec![id.clone()]);
    let holder: Option<String> = c.q(&["GET", &c.keys.job_sub(&id, "lock")]).await;
    assert_eq!(holder.as_deref(), Some("w:new"));
}

#[tokio::test]
async fn finish_refusals() {
    let c = setup().await;
    let id = c.add("a").await;
    c.fetch_one("w:1").await;
    let finish = |job: String, token: &'static str| {
        let c = &c;
        async move {
            worker_ops::move_to_finished(
                &c.conn,
                &c.keys,
                &job,
                token,
                NOW,
                &completed("1"),
                KeepJobs::KEEP_ALL,
                None,
            )
            .await
            .expect_err("refused")
        }
    };
    // Missing lock.
    let _: i64 = c.q(&["DEL", &c.keys.job_sub(&id, "lock")]).await;
    assert_eq!(
        refusal(finish(id.clone(), "w:1").await),
        RefusalCode::LockNotExist
    );
    assert_eq!(c.list("active").await, vec![id.clone()]);
    // Not in active (lock present).
    let _: () = c
        .q(&["SET", &c.keys.job_sub(&id, "lock"), "w:1", "PX", "30000"])
        .await;
    let _: i64 = c.q(&["LREM", &c.k("active"), "0", &id]).await;
    assert_eq!(
        refusal(finish(id.clone(), "w:1").await),
        RefusalCode::NotInState
    );
    assert!(c.exists(&c.keys.job_sub(&id, "lock")).await);
    // Job gone.
    assert_eq!(
        refusal(finish("nope".into(), "w:1").await),
        RefusalCode::JobNotExist
    );
    // Pending children.
    let _: i64 = c.q(&["LPUSH", &c.k("active"), &id]).await;
    let _: i64 = c
        .q(&["SADD", &c.keys.job_sub(&id, "dependencies"), "bull:q:child"])
        .await;
    assert_eq!(
        refusal(finish(id.clone(), "w:1").await),
        RefusalCode::PendingChildren
    );
    assert!(!c.event_names().await.contains(&"completed".to_owned()));
}

#[tokio::test]
async fn finish_releases_a_dedup_key_without_ttl_only() {
    let c = setup().await;
    let simple = c
        .add_with(
            "s",
            Add {
                dedup: Some(("d-simple".into(), None, "0000")),
                ..Add::default()
            },
        )
        .await;
    let throttled = c
        .add_with(
            "t",
            Add {
                dedup: Some(("d-ttl".into(), Some(60_000), "0000")),
                ..Add::default()
            },
        )
        .await;
    let f = c
        .fetch(&["w:1", "w:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 2);
    c.complete(&simple, "w:1", NOW, KeepJobs::KEEP_ALL).await;
    c.complete(&throttled, "w:2", NOW, KeepJobs::KEEP_ALL).await;
    assert!(!c.exists(&c.keys.dedup("d-simple")).await);
    let owner: Option<String> = c.q(&["GET", &c.keys.dedup("d-ttl")]).await;
    assert_eq!(owner, Some(throttled));
}

#[tokio::test]
async fn finish_hands_over_to_the_stored_keep_last_job() {
    let c = setup().await;
    let de = || Add {
        dedup: Some(("k1".into(), None, "0001")),
        ..Add::default()
    };
    let first = c.add_with("first", de()).await;
    c.fetch_one("w:1").await;
    // A second add while the first is active is stored in dn:k1.
    let absorbed = c.add_with("second", de()).await;
    assert_eq!(absorbed, first);
    let dn = c.keys.key("dn:k1");
    let jid: String = c.q(&["HGET", &dn, "jid"]).await;
    let counter: i64 = c.q(&["GET", &c.k("id")]).await;

    c.complete(&first, "w:1", NOW + 3, KeepJobs::KEEP_ALL).await;

    assert!(!c.exists(&dn).await);
    let owner: Option<String> = c.q(&["GET", &c.keys.dedup("k1")]).await;
    assert_eq!(owner.as_deref(), Some(jid.as_str()));
    assert_eq!(c.pttl(&c.keys.dedup("k1")).await, -1);
    let after: i64 = c.q(&["GET", &c.k("id")]).await;
    assert_eq!(after, counter + 1);
    let h = c.hash(&jid).await;
    assert_eq!(h["name"], "second");
    assert_eq!(h["data"], r#"{"n":"second"}"#);
    assert_eq!(h["timestamp"], (NOW + 3).to_string());
    assert_eq!(h["delay"], "0");
    assert_eq!(h["priority"], "0");
    assert_eq!(h["deid"], "k1");
    let opts: serde_json::Value = serde_json::from_str(&h["opts"]).expect("opts json");
    assert_eq!(opts["de"]["keepLastIfActive"], json!(true));
    assert_eq!(c.list("wait").await, vec![jid.clone()]);
    assert_eq!(c.zscore("marker", "0").await, Some(0.0));

    // The new job's events come before the finishing job's; it waits, so no drained.
    let events = c.events().await;
    let n = events.len();
    assert_eq!(
        events[n - 3..].to_vec(),
        vec![
            ev(&["event", "added", "jobId", &jid, "name", "second"]),
            ev(&["event", "waiting", "jobId", &jid]),
            ev(&[
                "event",
                "completed",
                "jobId",
                &first,
                "returnvalue",
                "42",
                "prev",
                "active"
            ]),
        ]
    );
    assert!(!c.event_names().await.contains(&"drained".to_owned()));

    // The new job owns the key: finishing it releases it.
    c.fetch_one("w:2").await;
    c.complete(&jid, "w:2", NOW + 4, KeepJobs::KEEP_ALL).await;
    assert!(!c.exists(&c.keys.dedup("k1")).await);
}

#[tokio::test]
async fn finish_hands_over_a_delayed_stored_job() {
    let c = setup().await;
    let de = |delay| Add {
        delay,
        dedup: Some(("k2".into(), None, "0001")),
        ..Add::default()
    };
    let first = c.add_with("first", de(0)).await;
    c.fetch_one("w:1").await;
    c.add_with("later", de(5_000)).await;
    let jid: String = c.q(&["HGET", &c.keys.key("dn:k2"), "jid"]).await;
    c.complete(&first, "w:1", NOW + 1, KeepJobs::KEEP_ALL).await;
    let due = NOW + 1 + 5_000;
    assert_eq!(c.zscore("delayed", &jid).await, Some((due * 4096) as f64));
    assert_eq!(c.field(&jid, "delay").await.as_deref(), Some("5000"));
    assert_eq!(c.zscore("marker", "1").await, Some(due as f64));
    let events = c.events().await;
    let n = events.len();
    assert_eq!(
        events[n - 4..n - 1].to_vec(),
        vec![
            ev(&["event", "added", "jobId", &jid, "name", "later"]),
            ev(&["event", "delayed", "jobId", &jid, "delay", &due.to_string()]),
            ev(&[
                "event",
                "completed",
                "jobId",
                &first,
                "returnvalue",
                "42",
                "prev",
                "active"
            ]),
        ]
    );
    // Nothing waits or runs any more: drained closes the finish.
    assert_eq!(events[n - 1], ev(&["event", "drained"]));
}

// ---------------------------------------------------------------------------------------
// retry_job

#[tokio::test]
async fn retry_immediately_goes_behind_waiting_jobs() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    c.fetch_one("w:1").await;
    worker_ops::retry_job(
        &c.conn,
        &c.keys,
        &a,
        "w:1",
        NOW,
        0,
        false,
        true,
        Some("boom"),
        Some(r#"["trace"]"#),
    )
    .await
    .expect("retry");
    assert_eq!(c.list("wait").await, vec![a.clone(), b.clone()]);
    assert!(c.list("active").await.is_empty());
    assert!(!c.exists(&c.keys.job_sub(&a, "lock")).await);
    let h = c.hash(&a).await;
    assert_eq!(h["atm"], "1");
    assert_eq!(h["failedReason"], "boom");
    assert_eq!(h["stacktrace"], r#"["trace"]"#);
    assert_eq!(
        c.events().await.last().cloned(),
        Some(ev(&["event", "waiting", "jobId", &a, "prev", "active"]))
    );
    assert!(!c.event_names().await.contains(&"failed".to_owned()));
    assert_eq!(c.zscore("marker", "0").await, Some(0.0));
}

#[tokio::test]
async fn retry_lifo_and_prioritized() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    c.fetch_one("w:1").await;
    worker_ops::retry_job(&c.conn, &c.keys, &a, "w:1", NOW, 0, true, true, None, None)
        .await
        .expect("retry");
    assert_eq!(c.list("wait").await, vec![b, a.clone()]);
    // No reason given: the failure fields are left alone.
    let h = c.hash(&a).await;
    assert!(!h.contains_key("failedReason"));
    assert_eq!(h["atm"], "1");

    let c = setup().await;
    let p = c
        .add_with(
            "p",
            Add {
                priority: 4,
                ..Add::default()
            },
        )
        .await;
    c.fetch_one("w:1").await;
    worker_ops::retry_job(&c.conn, &c.keys, &p, "w:1", NOW, 0, false, true, None, None)
        .await
        .expect("retry");
    let score = c.zscore("prioritized", &p).await.expect("prioritized");
    assert_eq!((score as u64) >> 32, 4);
    assert!(c.list("wait").await.is_empty());
}

#[tokio::test]
async fn retry_with_backoff_goes_to_delayed() {
    let c = setup().await;
    let a = c.add("a").await;
    c.fetch_one("w:1").await;
    worker_ops::retry_job(
        &c.conn,
        &c.keys,
        &a,
        "w:1",
        NOW,
        2_000,
        false,
        true,
        Some("boom"),
        Some("[]"),
    )
    .await
    .expect("retry");
    let due = NOW + 2_000;
    assert_eq!(c.zscore("delayed", &a).await, Some((due * 4096) as f64));
    let h = c.hash(&a).await;
    assert_eq!(h["delay"], "2000");
    assert_eq!(h["atm"], "1");
    assert_eq!(
        c.events().await.last().cloned(),
        Some(ev(&[
            "event",
            "delayed",
            "jobId",
            &a,
            "delay",
            &due.to_string()
        ]))
    );
    assert_eq!(c.zscore("marker", "1").await, Some(due as f64));
    assert!(c.list("active").await.is_empty());
    assert!(c.list("wait").await.is_empty());
}

#[tokio::test]
async fn retry_without_counting_keeps_atm() {
    let c = setup().await;
    let a = c.add("a").await;
    c.fetch_one("w:1").await;
    worker_ops::retry_job(
        &c.conn, &c.keys, &a, "w:1", NOW, 5_000, false, false, None, None,
    )
    .await
    .expect("delay");
    let h = c.hash(&a).await;
    assert!(!h.contains_key("atm"));
    assert!(!h.contains_key("failedReason"));
    assert!(!h.contains_key("stacktrace"));
    assert_eq!(h["delay"], "5000");
}

#[tokio::test]
async fn retry_refusals_write_nothing() {
    let c = setup().await;
    let a = c.add("a").await;
    c.fetch_one("w:1").await;
    let e = worker_ops::retry_job(
        &c.conn,
        &c.keys,
        &a,
        "w:other",
        NOW,
        0,
        false,
        true,
        Some("x"),
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal(e), RefusalCode::LockMismatch);
    assert!(!c.hash(&a).await.contains_key("failedReason"));
    assert_eq!(c.list("active").await, vec![a]);
}

// ---------------------------------------------------------------------------------------
// move_to_wait_front

#[tokio::test]
async fn wait_front_puts_the_job_next_in_line() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let cc = c.add("c").await;
    c.fetch_one("w:1").await;
    let ttl = worker_ops::move_to_wait_front(&c.conn, &c.keys, &a, "w:1")
        .await
        .expect("front");
    assert_eq!(ttl, 0);
    assert_eq!(c.list("wait").await, vec![cc, b, a.clone()]);
    assert!(!c.hash(&a).await.contains_key("atm"));
    assert!(!c.exists(&c.keys.job_sub(&a, "lock")).await);
    assert_eq!(
        c.events().await.last().cloned(),
        Some(ev(&["event", "waiting", "jobId", &a, "prev", "active"]))
    );
    // The same job runs next.
    assert_eq!(c.fetch_one("w:2").await.id, a);

    // Rate limited: the limiter's PTTL comes back.
    let _: () = c
        .q(&["SET", &c.k("limiter"), "9007199254740991", "PX", "5000"])
        .await;
    let ttl = worker_ops::move_to_wait_front(&c.conn, &c.keys, &a, "w:2")
        .await
        .expect("front");
    assert!(ttl > 0 && ttl <= 5_000, "ttl {ttl}");
}

#[tokio::test]
async fn wait_front_of_a_prioritized_job() {
    let c = setup().await;
    let p = c
        .add_with(
            "p",
            Add {
                priority: 3,
                ..Add::default()
            },
        )
        .await;
    c.fetch_one("w:1").await;
    worker_ops::move_to_wait_front(&c.conn, &c.keys, &p, "w:1")
        .await
        .expect("front");
    assert_eq!(c.zscore("prioritized", &p).await, Some(12_884_901_888.0));
    let e = worker_ops::move_to_wait_front(&c.conn, &c.keys, &p, "w:1")
        .await
        .expect_err("no lock now");
    assert_eq!(refusal(e), RefusalCode::LockNotExist);
}

// ---------------------------------------------------------------------------------------
// extend_locks

#[tokio::test]
async fn extend_locks_renews_own_tokens_only() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let opts = FetchOptions::new(5_000);
    let f = c.fetch(&["w:1", "w:2"], &opts, NOW).await;
    assert_eq!(f.jobs.len(), 2);
    let _: () = c
        .q(&[
            "SET",
            &c.keys.job_sub(&b, "lock"),
            "someone-else",
            "PX",
            "5000",
        ])
        .await;
    let _: i64 = c.q(&["SADD", &c.k("stalled"), &a, &b]).await;
    let locks = vec![
        (a.clone(), "w:1".to_owned()),
        (b.clone(), "w:2".to_owned()),
        ("missing".to_owned(), "w:3".to_owned()),
    ];
    let failed = worker_ops::extend_locks(&c.conn, &c.keys, &locks, 60_000)
        .await
        .expect("extend");
    assert_eq!(failed, vec![b.clone(), "missing".to_owned()]);
    let ttl = c.pttl(&c.keys.job_sub(&a, "lock")).await;
    assert!(ttl > 59_000, "renewed pttl {ttl}");
    let ttl = c.pttl(&c.keys.job_sub(&b, "lock")).await;
    assert!(ttl <= 5_000, "foreign lock untouched: {ttl}");
    let stalled: Vec<String> = c.q(&["SMEMBERS", &c.k("stalled")]).await;
    assert_eq!(stalled, vec![b]);
    assert!(worker_ops::extend_locks(&c.conn, &c.keys, &[], 1_000)
        .await
        .expect("empty")
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// move_stalled_jobs_to_wait

/// Runs the stall check until it recovers something, within 5 s.
async fn recover(c: &Ctx, max_stalled: u32, interval_ms: u64) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids =
            worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, max_stalled, NOW, interval_ms)
                .await
                .expect("stall check");
        if !ids.is_empty() {
            return ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing recovered within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stalled_job_is_recovered_after_the_interval() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let waiting = c.add("c").await;
    let f = c
        .fetch(&["w:1", "w:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 2);
    let first = worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 1, NOW, 200)
        .await
        .expect("check");
    assert!(first.is_empty());
    let mut marked: Vec<String> = c.q(&["SMEMBERS", &c.k("stalled")]).await;
    marked.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(marked, expected);
    let holder: String = c.q(&["GET", &c.k("stalled-check")]).await;
    assert_eq!(holder, NOW.to_string());

    // Job a loses its lock; b keeps it.
    let _: i64 = c.q(&["DEL", &c.keys.job_sub(&a, "lock")]).await;
    let _: i64 = c.q(&["DEL", &c.k("marker")]).await;
    let recovered = recover(&c, 1, 200).await;
    assert_eq!(recovered, vec![a.clone()]);
    assert_eq!(c.field(&a, "stc").await.as_deref(), Some("1"));
    assert_eq!(c.field(&a, "defa").await, None);
    assert_eq!(c.list("wait").await, vec![waiting, a.clone()]);
    assert_eq!(c.list("active").await, vec![b.clone()]);
    assert_eq!(c.zscore("marker", "0").await, Some(0.0));
    let events = c.events().await;
    let n = events.len();
    assert_eq!(
        events[n - 2..].to_vec(),
        vec![
            ev(&["event", "waiting", "jobId", &a, "prev", "active"]),
            ev(&["event", "stalled", "jobId", &a]),
        ]
    );
    // Every active id is marked again for the next check.
    let marked: Vec<String> = c.q(&["SMEMBERS", &c.k("stalled")]).await;
    assert_eq!(marked, vec![b.clone()]);

    // A job whose lock exists is never recovered.
    let _: i64 = c.q(&["DEL", &c.k("stalled-check")]).await;
    let again = worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 1, NOW, 200)
        .await
        .expect("check");
    assert!(again.is_empty());
    assert_eq!(c.list("active").await, vec![b]);
}

#[tokio::test]
async fn stalled_over_the_limit_gets_a_deferred_failure() {
    let c = setup().await;
    let a = c.add("a").await;
    let sched = c
        .add_with(
            "s",
            Add {
                id: Some("repeat:every-1:1700000000000".into()),
                ..Add::default()
            },
        )
        .await;
    let _: i64 = c.q(&["HSET", &c.keys.job(&sched), "rjk", "every-1"]).await;
    let _: i64 = c
        .q(&["HSET", &c.keys.key("repeat:every-1"), "name", "s"])
        .await;
    let f = c
        .fetch(&["w:1", "w:2"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 2);
    worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 0, NOW, 200)
        .await
        .expect("mark");
    let _: i64 = c
        .q(&[
            "DEL",
            &c.keys.job_sub(&a, "lock"),
            &c.keys.job_sub(&sched, "lock"),
        ])
        .await;
    let mut recovered = Vec::new();
    let start = Instant::now();
    while recovered.len() < 2 {
        recovered.extend(recover(&c, 0, 200).await);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(
        c.field(&a, "defa").await.as_deref(),
        Some("job stalled more than allowable limit")
    );
    assert_eq!(c.field(&sched, "defa").await, None);
    assert_eq!(c.field(&sched, "stc").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn stall_check_mutex_holds_for_the_interval() {
    let c = setup().await;
    let a = c.add("a").await;
    c.fetch_one("w:1").await;
    let first = worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 1, NOW, 60_000)
        .await
        .expect("check");
    assert!(first.is_empty());
    let _: i64 = c.q(&["DEL", &c.keys.job_sub(&a, "lock")]).await;
    let second = worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 1, NOW, 60_000)
        .await
        .expect("check");
    assert!(second.is_empty(), "the mutex is held");
    assert_eq!(c.list("active").await, vec![a.clone()]);
    let ttl = c.pttl(&c.k("stalled-check")).await;
    assert!(ttl > 59_000 && ttl <= 60_000, "mutex pttl {ttl}");
    // Once the mutex is gone, the next check recovers the job.
    let _: i64 = c.q(&["DEL", &c.k("stalled-check")]).await;
    let third = worker_ops::move_stalled_jobs_to_wait(&c.conn, &c.keys, 1, NOW, 60_000)
        .await
        .expect("check");
    assert_eq!(third, vec![a]);
}

// ---------------------------------------------------------------------------------------
// complete_many

fn completion(id: &str, token: &str, value: &str, keep: KeepJobs) -> worker_ops::Completion {
    worker_ops::Completion {
        job_id: id.to_owned(),
        token: token.to_owned(),
        return_value_json: value.to_owned(),
        keep,
        attempts_made: 0,
        dedup_id: None,
    }
}

/// Job hash, completed score and the job's events, for comparing two queues' histories.
async fn trace(c: &Ctx, id: &str) -> (HashMap<String, String>, Option<f64>, Vec<Vec<String>>) {
    let mut h = c.hash(id).await;
    h.remove("processedOn");
    let events = c
        .events()
        .await
        .into_iter()
        .filter(|e| e.get(3).map(String::as_str) == Some(id))
        .collect();
    (h, c.zscore("completed", id).await, events)
}

#[tokio::test]
async fn complete_many_writes_what_one_completion_at_a_time_writes() {
    let one = setup().await;
    let many = setup().await;
    let mut ids = Vec::new();
    for c in [&one, &many] {
        ids.clear();
        for i in 0..5 {
            ids.push(c.add(&format!("j{i}")).await);
        }
        let tokens: Vec<String> = (0..5).map(|i| format!("w:{i}")).collect();
        let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let f = c.fetch(&t, &FetchOptions::new(LOCK_MS), NOW).await;
        assert_eq!(f.jobs.len(), 5);
    }
    for (i, id) in ids.iter().enumerate() {
        let f = worker_ops::move_to_finished(
            &one.conn,
            &one.keys,
            id,
            &format!("w:{i}"),
            NOW + 7,
            &completed(&format!("{{\"r\":{i}}}")),
            KeepJobs::KEEP_ALL,
            None,
        )
        .await
        .expect("complete");
        assert!(f.is_empty() || f.jobs.is_empty());
    }
    let jobs: Vec<worker_ops::Completion> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            completion(
                id,
                &format!("w:{i}"),
                &format!("{{\"r\":{i}}}"),
                KeepJobs::KEEP_ALL,
            )
        })
        .collect();
    let done = worker_ops::complete_many(&many.conn, &many.keys, &jobs, NOW + 7, None)
        .await
        .expect("complete_many");
    assert_eq!(done.outcomes, vec![Ok(()); 5]);
    assert!(done.fetched.jobs.is_empty());
    for id in &ids {
        assert_eq!(trace(&one, id).await, trace(&many, id).await, "job {id}");
        assert!(!many.exists(&many.keys.job_sub(id, "lock")).await);
    }
    assert!(many.list("active").await.is_empty());
    // Both end with one `drained`, after the last completion.
    assert_eq!(
        one.event_names().await.last().map(String::as_str),
        Some("drained")
    );
    assert_eq!(
        many.event_names().await.last().map(String::as_str),
        Some("drained")
    );
    let drained = |names: Vec<String>| names.iter().filter(|n| *n == "drained").count();
    assert_eq!(drained(many.event_names().await), 1);
}

#[tokio::test]
async fn complete_many_refuses_jobs_one_by_one_and_fetches_next() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    let d = c.add("d").await;
    let next1 = c.add("n1").await;
    let next2 = c.add("n2").await;
    let f = c
        .fetch(&["w:a", "w:b", "w:d"], &FetchOptions::new(LOCK_MS), NOW)
        .await;
    assert_eq!(f.jobs.len(), 3);
    let before_b = c.hash(&b).await;
    let jobs = vec![
        completion(&a, "w:a", "1", KeepJobs::KEEP_ALL),
        completion(&b, "w:stale", "2", KeepJobs::KEEP_ALL),
        completion("missing", "w:x", "3", KeepJobs::KEEP_ALL),
        completion(&d, "w:d", "4", KeepJobs::REMOVE_AT_ONCE),
    ];
    let tokens = strings(&["w:n1", "w:n2", "w:n3"]);
    let done = worker_ops::complete_many(
        &c.conn,
        &c.keys,
        &jobs,
        NOW + 1,
        Some((&tokens, &FetchOptions::new(LOCK_MS))),
    )
    .await
    .expect("complete_many");
    assert_eq!(
        done.outcomes,
        vec![
            Ok(()),
            Err(RefusalCode::LockMismatch),
            Err(RefusalCode::JobNotExist),
            Ok(())
        ]
    );
    // The refused job is untouched: same hash, still active, lock still the other token's.
    assert_eq!(c.hash(&b).await, before_b);
    assert!(c.list("active").await.contains(&b));
    let holder: Option<String> = c.q(&["GET", &c.keys.job_sub(&b, "lock")]).await;
    assert_eq!(holder.as_deref(), Some("w:b"));
    // a completed and kept, d completed and deleted (its completed event is still emitted).
    assert_eq!(c.field(&a, "returnvalue").await.as_deref(), Some("1"));
    assert!(!c.exists(&c.keys.job(&d)).await);
    let completed_ids: Vec<String> = c
        .events()
        .await
        .into_iter()
        .filter(|e| e[1] == "completed")
        .map(|e| e[3].clone())
        .collect();
    assert_eq!(completed_ids, vec![a.clone(), d.clone()]);
    // Two jobs were waiting, so two of the three tokens got one, in order.
    let fetched: Vec<(&str, &str)> = done
        .fetched
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.token.as_str()))
        .collect();
    assert_eq!(
        fetched,
        vec![(next1.as_str(), "w:n1"), (next2.as_str(), "w:n2")]
    );
    assert!(!c.event_names().await.contains(&"drained".to_owned()));
}

#[tokio::test]
async fn complete_many_retention_by_count_keeps_the_newest() {
    let c = setup().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(c.add(&format!("j{i}")).await);
    }
    let tokens: Vec<String> = (0..6).map(|i| format!("w:{i}")).collect();
    let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
    c.fetch(&t, &FetchOptions::new(LOCK_MS), NOW).await;
    // Two calls of three, a millisecond apart: only the newest two remain.
    for (part, at) in [(0..3, NOW + 1), (3..6, NOW + 2)] {
        let jobs: Vec<worker_ops::Completion> = part
            .map(|i| completion(&ids[i], &tokens[i], "0", KeepJobs::newest(2)))
            .collect();
        let done = worker_ops::complete_many(&c.conn, &c.keys, &jobs, at, None)
            .await
            .expect("complete_many");
        assert!(done.outcomes.iter().all(Result::is_ok));
    }
    let kept: Vec<String> = c.q(&["ZRANGE", &c.k("completed"), "0", "-1"]).await;
    assert_eq!(kept.len(), 2);
    for id in &kept {
        assert!(ids[3..].contains(id), "{id} is one of the newest");
    }
    for id in ids.iter().filter(|id| !kept.contains(id)) {
        assert!(!c.exists(&c.keys.job(id)).await, "{id} was pruned");
    }
}

#[tokio::test]
async fn a_batch_fetch_skips_ghosts_and_legacy_markers_then_falls_back_to_prioritized() {
    let c = setup().await;
    let a = c.add("a").await;
    let b = c.add("b").await;
    // Oldest on the right: ghost and a legacy marker are popped between a and b.
    let _: i64 = c.q(&["LINSERT", &c.k("wait"), "BEFORE", &a, "ghost"]).await;
    let _: i64 = c
        .q(&["LINSERT", &c.k("wait"), "BEFORE", "ghost", "0:123"])
        .await;
    let p = c
        .add_with(
            "p",
            Add {
                priority: 3,
                ..Add::default()
            },
        )
        .await;
    let f = c
        .fetch(
            &["t:1", "t:2", "t:3", "t:4"],
            &FetchOptions::new(LOCK_MS),
            NOW,
        )
        .await;
    let got: Vec<(&str, &str)> = f
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.token.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (a.as_str(), "t:1"),
            (b.as_str(), "t:2"),
            (p.as_str(), "t:3")
        ]
    );
    // As one RPOPLPUSH per job would leave it: newest activation on the left.
    assert_eq!(
        c.list("active").await,
        vec![p.clone(), b.clone(), a.clone()]
    );
    assert!(c.list("wait").await.is_empty());
    assert!(!c.exists(&c.keys.job_sub("ghost", "lock")).await);
    for j in &f.jobs {
        assert_eq!(j.fields["ats"], "1");
        assert_eq!(j.fields["processedOn"], NOW.to_string());
        assert_eq!(
            c.hash(&j.id).await,
            j.fields,
            "the reply shows the hash as stored"
        );
    }
    let actives = c
        .events()
        .await
        .into_iter()
        .filter(|e| e[1] == "active")
        .count();
    assert_eq!(actives, 3);
}

#[tokio::test]
async fn complete_many_releases_the_dedup_key_and_counts_from_the_fetched_atm() {
    let c = setup().await;
    let id = c
        .add_with(
            "d",
            Add {
                dedup: Some(("dd".into(), None, "0000")),
                ..Add::default()
            },
        )
        .await;
    let job = c.fetch_one("w:1").await;
    assert_eq!(job.fields["deid"], "dd");
    assert!(c.exists(&format!("{}de:dd", c.keys.base())).await);
    // A job on its third attempt: two finished attempts before this one.
    let _: () = c.q(&["HSET", &c.keys.job(&id), "atm", "2"]).await;
    let mut one = completion(&id, "w:1", "7", KeepJobs::KEEP_ALL);
    one.attempts_made = 2;
    one.dedup_id = Some("dd".into());
    let done = worker_ops::complete_many(&c.conn, &c.keys, &[one], NOW, None)
        .await
        .expect("complete_many");
    assert_eq!(done.outcomes, vec![Ok(())]);
    assert!(!c.exists(&format!("{}de:dd", c.keys.base())).await);
    assert_eq!(c.field(&id, "atm").await.as_deref(), Some("3"));
}

#[tokio::test]
async fn complete_many_refuses_a_missing_job_and_a_parent_with_pending_children() {
    let c = setup().await;
    let parent = c.add("p").await;
    c.fetch_one("w:p").await;
    let _: i64 = c
        .q(&[
            "SADD",
            &c.keys.job_sub(&parent, "dependencies"),
            "bull:q:child",
        ])
        .await;
    let before = c.hash(&parent).await;
    let done = worker_ops::complete_many(
        &c.conn,
        &c.keys,
        &[
            completion(&parent, "w:p", "1", KeepJobs::KEEP_ALL),
            completion("gone", "w:g", "1", KeepJobs::KEEP_ALL),
        ],
        NOW,
        None,
    )
    .await
    .expect("complete_many");
    assert_eq!(
        done.outcomes,
        vec![
            Err(RefusalCode::PendingChildren),
            Err(RefusalCode::JobNotExist)
        ]
    );
    assert_eq!(c.hash(&parent).await, before);
    assert_eq!(c.list("active").await, vec![parent]);
    assert!(
        !c.exists(&c.keys.job("gone")).await,
        "nothing written for a missing job"
    );
}
