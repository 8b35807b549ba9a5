//! The Queue against a real redis-server: what it writes is what Node BullMQ writes.

use std::collections::HashMap;

use bullpen_conn::{redis, Connection, RedisOptions};
use bullpen_producer::{
    AddStatus, Backoff, BulkJob, Dedup, Error, JobOptions, JobState, KeepJobs, Queue, QueueOptions,
};
use bullpen_testkit::RedisServer;
use serde_json::json;

async fn setup() -> (RedisServer, Connection, Queue) {
    let server = RedisServer::start().expect("redis-server");
    let (conn, q) = queue_at(&server.url()).await;
    (server, conn, q)
}

/// A producer-preset connection to `url` and queue `q` on it.
async fn queue_at(url: &str) -> (Connection, Queue) {
    let conn = Connection::connect(RedisOptions::from_url(url).expect("url").producer())
        .await
        .expect("connect");
    let q = Queue::new(conn.clone(), "q", QueueOptions::default())
        .await
        .expect("queue");
    (conn, q)
}

async fn hash(conn: &Connection, key: &str) -> HashMap<String, String> {
    conn.query(redis::cmd("HGETALL").arg(key))
        .await
        .expect("HGETALL")
}

async fn list(conn: &Connection, key: &str) -> Vec<String> {
    conn.query(redis::cmd("LRANGE").arg(key).arg(0).arg(-1))
        .await
        .expect("LRANGE")
}

async fn zset(conn: &Connection, key: &str) -> Vec<(String, f64)> {
    conn.query(
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )
    .await
    .expect("ZRANGE")
}

/// Every stream entry as (event name, the other field pairs flattened).
async fn events(conn: &Connection) -> Vec<Vec<String>> {
    let entries: Vec<(String, Vec<String>)> = conn
        .query(redis::cmd("XRANGE").arg("bull:q:events").arg("-").arg("+"))
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(_, f)| f).collect()
}

fn opts() -> JobOptions {
    JobOptions::default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standard_add_writes_what_node_writes() {
    let (_s, conn, q) = setup().await;
    let out = q
        .add("plain", &json!({"a": 1, "s": "héllo ✓"}), opts())
        .await
        .expect("add");
    assert_eq!((out.id.as_str(), out.status), ("1", AddStatus::Added));
    let h = hash(&conn, "bull:q:1").await;
    assert_eq!(h["name"], "plain");
    assert_eq!(h["data"], r#"{"a":1,"s":"héllo ✓"}"#);
    assert_eq!(h["delay"], "0");
    assert_eq!(h["priority"], "0");
    assert!(h["timestamp"].parse::<u64>().expect("ms") > 1_700_000_000_000);
    let stored: serde_json::Value = serde_json::from_str(&h["opts"]).expect("opts JSON");
    assert_eq!(stored["attempts"], 0);
    assert_eq!(stored["removeOnComplete"], 1000, "retention default");
    assert_eq!(stored["removeOnFail"], 10000, "retention default");
    assert_eq!(list(&conn, "bull:q:wait").await, vec!["1"]);
    assert_eq!(zset(&conn, "bull:q:marker").await, vec![("0".into(), 0.0)]);
    assert_eq!(
        events(&conn).await,
        vec![
            vec!["event", "added", "jobId", "1", "name", "plain"],
            vec!["event", "waiting", "jobId", "1"],
        ]
    );
    let meta = hash(&conn, "bull:q:meta").await;
    assert_eq!(meta["opts.maxLenEvents"], "10000");
    assert!(meta["version"].starts_with("bullpen:"));
    // Read back through the codec.
    let job = q.get_job("1").await.expect("get").expect("exists");
    assert_eq!(job.name, "plain");
    assert_eq!(job.data, json!({"a": 1, "s": "héllo ✓"}));
    assert_eq!(
        q.get_job_state("1").await.expect("state"),
        Some(JobState::Waiting)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_prioritized_and_lifo_use_bullmq_scores_and_sides() {
    let (_s, conn, q) = setup().await;
    let mut d = opts();
    d.delay_ms = 60_000;
    d.timestamp_ms = Some(1_795_325_730_083);
    q.add("later", &json!({}), d).await.expect("delayed");
    assert_eq!(
        zset(&conn, "bull:q:delayed").await,
        vec![("1".into(), 7_353_654_436_179_968.0)]
    );
    let marker = zset(&conn, "bull:q:marker").await;
    assert_eq!(marker, vec![("1".into(), 1_795_325_790_083.0)]);
    assert!(events(&conn).await.contains(&vec![
        "event".into(),
        "delayed".into(),
        "jobId".into(),
        "1".into(),
        "delay".into(),
        "1795325790083".into()
    ]));

    for p in [7, 2] {
        let mut o = opts();
        o.priority = p;
        q.add("prio", &json!({}), o).await.expect("prioritized");
    }
    assert_eq!(
        zset(&conn, "bull:q:prioritized").await,
        vec![
            ("3".into(), 8_589_934_594.0),
            ("2".into(), 30_064_771_073.0)
        ]
    );
    let counts = q
        .get_counts_per_priority(&[0, 2, 7, 9])
        .await
        .expect("per priority");
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![(0, 0), (2, 1), (7, 1), (9, 0)]
    );

    q.add("fifo-a", &json!({}), opts()).await.expect("a");
    q.add("fifo-b", &json!({}), opts()).await.expect("b");
    let mut l = opts();
    l.lifo = true;
    q.add("lifo", &json!({}), l).await.expect("lifo");
    // Workers take from the right: the LIFO job (6) first, then 4, then 5.
    assert_eq!(list(&conn, "bull:q:wait").await, vec!["5", "4", "6"]);
    let oldest_first = q
        .get_job_ids(JobState::Waiting, 0, -1, true)
        .await
        .expect("ids");
    assert_eq!(oldest_first, vec!["6", "4", "5"]);

    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(counts[&JobState::Waiting], 3);
    assert_eq!(counts[&JobState::Prioritized], 2);
    assert_eq!(counts[&JobState::Delayed], 1);
    assert_eq!(counts[&JobState::Completed], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_id_that_exists_adds_nothing() {
    let (_s, conn, q) = setup().await;
    let mut o = opts();
    o.job_id = Some("custom-1".into());
    o.attempts = Some(3);
    o.backoff = Some(Backoff::exponential(1000));
    o.keep_logs = Some(5);
    let first = q
        .add("with-opts", &json!({"v": 1}), o.clone())
        .await
        .expect("add");
    assert_eq!(
        (first.id.as_str(), first.status),
        ("custom-1", AddStatus::Added)
    );
    let again = q
        .add("with-opts", &json!({"v": 2}), o)
        .await
        .expect("add again");
    assert_eq!(
        (again.id.as_str(), again.status),
        ("custom-1", AddStatus::Duplicated)
    );
    let h = hash(&conn, "bull:q:custom-1").await;
    assert_eq!(h["data"], r#"{"v":1}"#, "the existing job is untouched");
    let stored: serde_json::Value = serde_json::from_str(&h["opts"]).expect("opts");
    assert_eq!(stored["kl"], 5, "short name");
    assert_eq!(
        stored["backoff"],
        json!({"type": "exponential", "delay": 1000})
    );
    assert_eq!(stored["jobId"], "custom-1");
    let id: String = conn
        .query(redis::cmd("GET").arg("bull:q:id"))
        .await
        .expect("GET");
    assert_eq!(id, "2", "the id counter advances even for a duplicate");
    assert_eq!(
        events(&conn).await.last().expect("event"),
        &vec!["event", "duplicated", "jobId", "custom-1"]
    );
    assert_eq!(list(&conn, "bull:q:wait").await, vec!["custom-1"]);
}

fn dedup(id: &str) -> Dedup {
    Dedup::new(id)
}

fn with_dedup(d: Dedup) -> JobOptions {
    let mut o = opts();
    o.deduplication = Some(d);
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn deduplication_modes() {
    let (_s, conn, q) = setup().await;
    // Simple: the second add returns the first job.
    let a = q
        .add("d", &json!(1), with_dedup(dedup("s")))
        .await
        .expect("add");
    let b = q
        .add("d", &json!(2), with_dedup(dedup("s")))
        .await
        .expect("add");
    assert_eq!(
        (b.id.as_str(), b.status),
        (a.id.as_str(), AddStatus::Deduplicated)
    );
    let owner: String = conn
        .query(redis::cmd("GET").arg("bull:q:de:s"))
        .await
        .expect("GET");
    assert_eq!(owner, a.id);
    assert_eq!(hash(&conn, &format!("bull:q:{}", a.id)).await["deid"], "s");
    assert_eq!(
        events(&conn).await.last().expect("event"),
        &vec![
            "event",
            "deduplicated",
            "jobId",
            "1",
            "deduplicationId",
            "s",
            "deduplicatedJobId",
            "2"
        ]
    );

    // Throttle: the key carries the TTL.
    let mut t = dedup("t");
    t.ttl_ms = Some(60_000);
    q.add("d", &json!(1), with_dedup(t.clone()))
        .await
        .expect("add");
    let pttl: i64 = conn
        .query(redis::cmd("PTTL").arg("bull:q:de:t"))
        .await
        .expect("PTTL");
    assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");
    let hit = q.add("d", &json!(2), with_dedup(t)).await.expect("add");
    assert_eq!(hit.status, AddStatus::Deduplicated);

    // Extend: a hit refreshes the TTL.
    let mut e = dedup("e");
    e.ttl_ms = Some(1_000);
    e.extend = true;
    q.add("d", &json!(1), with_dedup(e.clone()))
        .await
        .expect("add");
    e.ttl_ms = Some(90_000);
    q.add("d", &json!(2), with_dedup(e)).await.expect("hit");
    let pttl: i64 = conn
        .query(redis::cmd("PTTL").arg("bull:q:de:e"))
        .await
        .expect("PTTL");
    assert!(pttl > 80_000, "extended: {pttl}");

    // Replace: a delayed owner is dropped and the new job takes its place.
    let mut r = dedup("r");
    r.replace = true;
    let mut o = with_dedup(r.clone());
    o.delay_ms = 60_000;
    let old = q.add("d", &json!("old"), o.clone()).await.expect("add");
    let new = q.add("d", &json!("new"), o).await.expect("replace");
    assert_eq!(new.status, AddStatus::Added);
    assert_ne!(new.id, old.id);
    assert!(
        q.get_job(&old.id).await.expect("get").is_none(),
        "old delayed job removed"
    );
    let owner: String = conn
        .query(redis::cmd("GET").arg("bull:q:de:r"))
        .await
        .expect("GET");
    assert_eq!(owner, new.id);

    // Keep-last-if-active: while the owner is active, the newest attempt is stored.
    let mut k = dedup("k");
    k.keep_last_if_active = true;
    let owner = q
        .add("d", &json!("first"), with_dedup(k.clone()))
        .await
        .expect("add");
    let moved: Option<String> = conn
        .query(
            redis::cmd("LMOVE")
                .arg("bull:q:wait")
                .arg("bull:q:active")
                .arg("RIGHT")
                .arg("LEFT"),
        )
        .await
        .expect("simulate a worker taking the oldest job");
    assert!(moved.is_some());
    // Move every waiting job to active until the owner is there, as workers would.
    while !list(&conn, "bull:q:active").await.contains(&owner.id) {
        let _: Option<String> = conn
            .query(
                redis::cmd("LMOVE")
                    .arg("bull:q:wait")
                    .arg("bull:q:active")
                    .arg("RIGHT")
                    .arg("LEFT"),
            )
            .await
            .expect("LMOVE");
    }
    let hit = q
        .add("d", &json!("latest"), with_dedup(k))
        .await
        .expect("hit");
    assert_eq!(
        (hit.id.as_str(), hit.status),
        (owner.id.as_str(), AddStatus::Deduplicated)
    );
    let next = hash(&conn, "bull:q:dn:k").await;
    assert_eq!(next["data"], r#""latest""#);
    let pttl: i64 = conn
        .query(redis::cmd("PTTL").arg("bull:q:de:k"))
        .await
        .expect("PTTL");
    assert_eq!(pttl, -1, "no TTL while a next job waits");

    // Reschedule: a hit on a delayed owner moves it to the new add's due time.
    let mut rs = dedup("rs");
    rs.reschedule = true;
    let mut first = with_dedup(rs.clone());
    first.delay_ms = 60_000;
    first.timestamp_ms = Some(1_795_000_000_000);
    let owner = q.add("d", &json!(1), first).await.expect("add");
    let mut second = with_dedup(rs);
    second.delay_ms = 5_000;
    second.timestamp_ms = Some(1_795_000_100_000);
    let hit = q.add("d", &json!(2), second).await.expect("hit");
    assert_eq!(
        (hit.id.as_str(), hit.status),
        (owner.id.as_str(), AddStatus::Deduplicated)
    );
    let score: f64 = conn
        .query(redis::cmd("ZSCORE").arg("bull:q:delayed").arg(&owner.id))
        .await
        .expect("ZSCORE");
    assert_eq!(
        score,
        1_795_000_105_000.0 * 4096.0,
        "due = incoming timestamp + incoming delay"
    );
    assert_eq!(
        hash(&conn, &format!("bull:q:{}", owner.id)).await["delay"],
        "5000"
    );
    let last = events(&conn).await;
    assert_eq!(
        last[last.len() - 1],
        vec![
            "event",
            "delayed",
            "jobId",
            owner.id.as_str(),
            "delay",
            "1795000105000"
        ]
    );
    assert_eq!(last[last.len() - 2][1], "deduplicated");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_writes_nothing() {
    let (_s, conn, q) = setup().await;
    let before: u64 = conn.query(&redis::cmd("DBSIZE")).await.expect("DBSIZE");
    let mut cases: Vec<(&str, JobOptions)> = Vec::new();
    let mut o = opts();
    o.priority = 2_097_152;
    cases.push(("priority", o));
    let mut o = opts();
    o.attempts = Some(0);
    cases.push(("attempts", o));
    for id in ["a:b", "123", "", "wait", "0"] {
        let mut o = opts();
        o.job_id = Some(id.into());
        cases.push(("job id", o));
    }
    let mut o = opts();
    o.delay_ms = u64::MAX / 2;
    cases.push(("delay", o));
    for (what, o) in cases {
        let err = q.add("bad", &json!({}), o).await.expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}");
    }
    // Data that cannot be serialised (a map with non-string keys).
    let mut m = HashMap::new();
    m.insert((1, 2), 3);
    let err = q.add("bad", &m, opts()).await.expect_err("serialise");
    assert!(matches!(err, Error::Serialize { .. }), "{err}");
    // Data over the size limit.
    let big = "x".repeat(600 * 1024);
    let err = q.add("big", &big, opts()).await.expect_err("too large");
    assert!(
        matches!(err, Error::PayloadTooLarge { limit: 524_288, .. }),
        "{err}"
    );
    // One bad job in a bulk: nothing is written.
    let jobs = vec![
        BulkJob::new("ok", json!(1), opts()),
        BulkJob::new("bad", json!(2), {
            let mut o = opts();
            o.priority = 9_999_999;
            o
        }),
    ];
    q.add_bulk(&jobs).await.expect_err("bulk with a bad job");
    let after: u64 = conn.query(&redis::cmd("DBSIZE")).await.expect("DBSIZE");
    assert_eq!(before, after, "nothing written");
    // Invalid queue names.
    for name in ["", "a:b"] {
        let err = Queue::new(conn.clone(), name, QueueOptions::default())
            .await
            .expect_err(name);
        assert!(err.to_string().contains("queue name"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_add_is_one_atomic_call() {
    let (_s, conn, q) = setup().await;
    let jobs: Vec<_> = (0..1000)
        .map(|i| BulkJob::new("bulk", json!({ "i": i }), opts()))
        .collect();
    let out = q.add_bulk(&jobs).await.expect("bulk");
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|o| o.status == AddStatus::Added));
    assert_eq!(out[0].id, "1");
    assert_eq!(out[999].id, "1000");
    let n: u64 = conn
        .query(redis::cmd("LLEN").arg("bull:q:wait"))
        .await
        .expect("LLEN");
    assert_eq!(n, 1000);
    // FIFO: the first added is the rightmost.
    let oldest: Vec<String> = conn
        .query(redis::cmd("LRANGE").arg("bull:q:wait").arg(-1).arg(-1))
        .await
        .expect("LRANGE");
    assert_eq!(oldest, vec!["1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_remove_progress_logs_and_data() {
    let (_s, conn, q) = setup().await;
    let mut o = opts();
    o.keep_logs = Some(2);
    let id = q.add("j", &json!({"v": 1}), o).await.expect("add").id;
    q.pause().await.expect("pause");
    assert!(q.is_paused().await.expect("paused?"));
    assert!(
        zset(&conn, "bull:q:marker").await.is_empty(),
        "pause deletes the marker"
    );
    q.add("while-paused", &json!({}), opts())
        .await
        .expect("add while paused");
    assert!(
        zset(&conn, "bull:q:marker").await.is_empty(),
        "no marker while paused"
    );
    q.resume().await.expect("resume");
    assert!(!q.is_paused().await.expect("paused?"));
    assert_eq!(zset(&conn, "bull:q:marker").await, vec![("0".into(), 0.0)]);

    q.update_progress(&id, &json!({"pct": 10, "s": "a/b"}))
        .await
        .expect("progress");
    for line in ["one", "two", "three"] {
        q.log(&id, line).await.expect("log");
    }
    let (lines, total) = q.get_job_logs(&id, 0, -1, true).await.expect("logs");
    assert_eq!(
        (lines, total),
        (vec!["two".to_owned(), "three".to_owned()], 2)
    );
    q.update_data(&id, &json!({"v": 2}))
        .await
        .expect("update data");
    let job = q.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(job.data, json!({"v": 2}));
    assert_eq!(job.progress, Some(json!({"pct": 10, "s": "a/b"})));

    // A locked job is not removed.
    let _: () = conn
        .query(
            redis::cmd("SET")
                .arg(format!("bull:q:{id}:lock"))
                .arg("token"),
        )
        .await
        .expect("SET lock");
    let err = q.remove(&id).await.expect_err("locked");
    assert!(matches!(err, Error::JobLocked { .. }), "{err}");
    let _: () = conn
        .query(redis::cmd("DEL").arg(format!("bull:q:{id}:lock")))
        .await
        .expect("DEL lock");
    q.remove(&id).await.expect("remove");
    assert!(q.get_job(&id).await.expect("get").is_none());
    assert!(!list(&conn, "bull:q:wait").await.contains(&id));
    let err = q.remove(&id).await.expect_err("already gone");
    assert!(matches!(err, Error::JobNotFound { .. }), "{err}");
    let names: Vec<String> = events(&conn).await.iter().map(|e| e[1].clone()).collect();
    for expected in ["paused", "resumed", "progress", "removed"] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} in {names:?}"
        );
    }
    assert!(events(&conn).await.contains(&vec![
        "event".into(),
        "removed".into(),
        "jobId".into(),
        id.clone(),
        "prev".into(),
        "wait".into()
    ]));
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_survive_a_script_flush() {
    let (_s, conn, q) = setup().await;
    q.add("a", &json!(1), opts()).await.expect("add");
    let _: () = conn
        .query(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .expect("FLUSH");
    q.add("b", &json!(2), opts())
        .await
        .expect("add after SCRIPT FLUSH");
    assert_eq!(
        q.get_job_counts().await.expect("counts")[&JobState::Waiting],
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_job_is_reported_by_id_and_does_not_hide_others() {
    let (_s, conn, q) = setup().await;
    q.add("good", &json!(1), opts()).await.expect("add");
    let _: () = conn
        .query(
            redis::cmd("HSET")
                .arg("bull:q:bad")
                .arg("name")
                .arg("x")
                .arg("data")
                .arg("{not json")
                .arg("timestamp")
                .arg("1"),
        )
        .await
        .expect("HSET");
    let _: () = conn
        .query(redis::cmd("LPUSH").arg("bull:q:wait").arg("bad"))
        .await
        .expect("LPUSH");
    let err = q.get_job("bad").await.expect_err("corrupt");
    assert!(err.to_string().contains("bad"), "names the job: {err}");
    let page = q
        .get_jobs(&[JobState::Waiting], 0, -1, false)
        .await
        .expect("page");
    assert_eq!(page.len(), 2);
    assert!(page
        .iter()
        .any(|r| r.as_ref().is_ok_and(|j| j.name == "good")));
    assert!(page
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| e.job_id == "bad")));
    // Retention can be switched off per queue.
    let keep = Queue::new(
        conn.clone(),
        "keep",
        QueueOptions::default().keep_everything(),
    )
    .await
    .expect("queue");
    let id = keep.add("k", &json!(1), opts()).await.expect("add").id;
    let job = keep.get_job(&id).await.expect("get").expect("exists");
    assert_eq!(job.opts.remove_on_complete, None);
    let mut custom = opts();
    custom.remove_on_complete = Some(KeepJobs::Window {
        age_secs: Some(3600),
        count: Some(10),
        limit: None,
    });
    let id = q.add("c", &json!(1), custom).await.expect("add").id;
    let stored: serde_json::Value =
        serde_json::from_str(&hash(&conn, &format!("bull:q:{id}")).await["opts"]).expect("opts");
    assert_eq!(
        stored["removeOnComplete"],
        json!({"age": 3600, "count": 10})
    );
}

/// `Error::applied` against a real server: an add whose reply a fault proxy drops after
/// Redis ran it is `Unknown` (and stored once: never sent again), a refused add is `No`.
#[tokio::test(flavor = "multi_thread")]
async fn applied_tells_a_lost_reply_from_a_refusal() {
    use bullpen_conn::Applied;
    use bullpen_testkit::{FaultProxy, ProxyMode};
    let server = RedisServer::start().expect("redis-server");
    let upstream = format!("127.0.0.1:{}", server.port())
        .parse()
        .expect("address");
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let (_conn, q) = queue_at(&proxy.url()).await;
    // The first add loads the script, so that the next one is an EVALSHA the proxy matches.
    q.add("first", &json!(1), JobOptions::default())
        .await
        .expect("add");
    proxy.set_mode(ProxyMode::drop_reply_to(bullpen_core::script::ADD_JOB.sha(), 1).expect("mode"));
    let err = q
        .add("second", &json!(2), JobOptions::default())
        .await
        .expect_err("the reply was dropped");
    assert_eq!(err.applied(), Applied::Unknown, "{err}");
    proxy.set_mode(ProxyMode::Pass);
    let counts = q.get_job_counts().await.expect("counts");
    assert_eq!(
        counts[&JobState::Waiting],
        2,
        "the add ran once: {counts:?}"
    );

    let mut bad = JobOptions::default();
    bad.attempts = Some(0);
    let err = q
        .add("refused", &json!(3), bad)
        .await
        .expect_err("attempts 0 is refused");
    assert_eq!(err.applied(), Applied::No, "{err}");
}
