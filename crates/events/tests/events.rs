//! QueueEvents against a real redis-server.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bullpen_conn::{redis, Connection, RedisOptions, RetryStrategy};
use bullpen_core::events::Event;
use bullpen_core::job::Job;
use bullpen_events::{
    Error, EventItem, Finished, QueueEvents, QueueEventsOptions, QueueEventsProducer, StartAt,
};
use bullpen_producer::{JobOptions, Queue, QueueOptions};
use bullpen_testkit::RedisServer;
use bullpen_worker::{from_fn, JobError, Worker, WorkerOptions};
use serde_json::{json, Value};

fn fast(url: &str) -> RedisOptions {
    RedisOptions::from_url(url)
        .expect("url")
        .with_retry_strategy(RetryStrategy::exponential(
            Duration::from_millis(50),
            Duration::from_millis(50),
            Duration::from_millis(300),
        ))
}

async fn listener(url: &str, queue: &str, start: StartAt) -> QueueEvents {
    let mut o = QueueEventsOptions::default().start(start);
    o.block = Duration::from_millis(500);
    QueueEvents::new(fast(url).blocking(), queue, o)
        .await
        .expect("listener")
}

async fn queue(url: &str, name: &str) -> Queue {
    let conn = Connection::connect(fast(url).worker())
        .await
        .expect("connect");
    Queue::new(conn, name, QueueOptions::default())
        .await
        .expect("queue")
}

async fn next_item(ev: &mut QueueEvents) -> EventItem {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.next()).await {
            Ok(Some(Ok(item))) => return item,
            Ok(Some(Err(_))) => continue, // connection trouble: it resumes by itself
            Ok(None) => panic!("listener closed"),
            Err(_) => panic!("no event within 10 s"),
        }
    }
}

async fn stream_ids(conn: &Connection, queue: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = conn
        .query(
            redis::cmd("XRANGE")
                .arg(format!("bull:{queue}:events"))
                .arg("-")
                .arg("+"),
        )
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_events_of_a_whole_lifecycle() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server.url(), "life").await;
    let mut ev = listener(&server.url(), "life", StartAt::Beginning).await;
    q.add("ok", &json!({"a": 1}), JobOptions::default())
        .await
        .expect("add");
    q.add("bad", &json!({}), JobOptions::default())
        .await
        .expect("add");
    let processor = from_fn(|job: Job<Value>, ctx| async move {
        ctx.progress(&7).await.map_err(JobError::failed)?;
        if job.name == "bad" {
            return Err(JobError::failed("nope"));
        }
        Ok(json!({"done": true}))
    });
    let worker = Worker::start(
        fast(&server.url()).worker(),
        "life",
        processor,
        WorkerOptions::builder()
            .drain_delay(Duration::from_millis(200))
            .build()
            .expect("opts"),
    )
    .await
    .expect("worker");
    let mut seen = Vec::new();
    let mut names = HashSet::new();
    while !(names.contains("completed") && names.contains("retries-exhausted")) {
        match next_item(&mut ev).await {
            EventItem::Event { id, event } => {
                names.insert(event.name().to_owned());
                seen.push((id, event));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    worker.close(Duration::from_secs(1)).await;
    assert!(seen
        .iter()
        .any(|(_, e)| matches!(e, Event::Added { name, .. } if name == "ok")));
    assert!(seen
        .iter()
        .any(|(_, e)| matches!(e, Event::Progress { data, .. } if *data == json!(7))));
    assert!(seen.iter().any(
        |(_, e)| matches!(e, Event::Completed { returnvalue, .. } if *returnvalue == json!({"done": true}))
    ));
    assert!(seen
        .iter()
        .any(|(_, e)| matches!(e, Event::Failed { failed_reason, .. } if failed_reason == "nope")));
    // Delivered in stream order, each once, matching XRANGE.
    let ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
    let all = stream_ids(q.connection(), "life").await;
    assert_eq!(ids[..], all[..ids.len()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_entries_and_custom_events_do_not_stop_the_listener() {
    let server = RedisServer::start().expect("redis-server");
    let conn = Connection::connect(fast(&server.url()).producer())
        .await
        .expect("connect");
    let mut ev = listener(&server.url(), "m", StartAt::Now).await;
    let _: String = conn
        .query(
            redis::cmd("XADD")
                .arg("bull:m:events")
                .arg("*")
                .arg("event")
                .arg("completed")
                .arg("jobId")
                .arg("1")
                .arg("returnvalue")
                .arg("{not json"),
        )
        .await
        .expect("XADD");
    let publisher = QueueEventsProducer::new(conn.clone(), "bull", "m").expect("producer");
    publisher
        .publish("deploy", &[("version", "1.2.3")])
        .await
        .expect("publish");
    match next_item(&mut ev).await {
        EventItem::Malformed { error, .. } => {
            assert!(error.to_string().contains("returnvalue"), "{error}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    match next_item(&mut ev).await {
        EventItem::Event {
            event: Event::Other { name, fields },
            ..
        } => {
            assert_eq!(name, "deploy");
            assert_eq!(fields, vec![("version".to_owned(), "1.2.3".to_owned())]);
        }
        other => panic!("expected the custom event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trim_past_the_position_is_reported_as_a_gap() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server.url(), "t").await;
    let mut ev = listener(&server.url(), "t", StartAt::Beginning).await;
    q.add("a", &json!(1), JobOptions::default())
        .await
        .expect("add");
    let first = next_item(&mut ev).await; // added
    let EventItem::Event { id: seen_id, .. } = first else {
        panic!("{first:?}")
    };
    let _ = next_item(&mut ev).await; // waiting
    for i in 0..20 {
        q.add("b", &json!(i), JobOptions::default())
            .await
            .expect("add");
    }
    // Keep only the newest 5 entries: 35 unread entries are gone.
    let _: u64 = q
        .connection()
        .query(
            redis::cmd("XTRIM")
                .arg("bull:t:events")
                .arg("MAXLEN")
                .arg("=")
                .arg(5),
        )
        .await
        .expect("XTRIM");
    match next_item(&mut ev).await {
        EventItem::Gap { after, resumed_at } => {
            assert_ne!(after, seen_id);
            assert_eq!(resumed_at, stream_ids(q.connection(), "t").await[0]);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    for _ in 0..5 {
        assert!(matches!(next_item(&mut ev).await, EventItem::Event { .. }));
    }
    // Trimming everything: one gap, then silence (not the same gap again and again).
    q.add("c", &json!(1), JobOptions::default())
        .await
        .expect("add");
    let _: u64 = q
        .connection()
        .query(
            redis::cmd("XTRIM")
                .arg("bull:t:events")
                .arg("MAXLEN")
                .arg("=")
                .arg(0),
        )
        .await
        .expect("XTRIM");
    assert!(matches!(next_item(&mut ev).await, EventItem::Gap { .. }));
    let quiet = tokio::time::timeout(Duration::from_millis(1_500), ev.next()).await;
    assert!(quiet.is_err(), "nothing more: {quiet:?}");
}

enum Fault {
    ClientKillEverything,
    Kill9AndRestart,
}

/// Adds `n` jobs while `fault` happens, then checks the listener saw exactly the stream.
async fn no_event_missed_or_repeated(server: &mut RedisServer, n: usize, fault: Fault) {
    let url = server.url();
    let mut ev = listener(&url, "f", StartAt::Beginning).await;
    let q = queue(&url, "f").await;
    // An add waits through the fault, except the one whose reply the fault cut off: that one
    // is reported with an unknown outcome (never sent twice), so it may or may not be stored.
    let adder = tokio::spawn(async move {
        let (mut acked, mut unknown) = (0usize, 0usize);
        for i in 0..n {
            match q.add("x", &json!(i), JobOptions::default()).await {
                Ok(_) => acked += 1,
                Err(e) if e.applied() == bullpen_conn::Applied::Unknown => unknown += 1,
                Err(e) => panic!("add {i} failed although nothing was applied: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (q, acked, unknown)
    });
    match fault {
        Fault::ClientKillEverything => {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
            }
        }
        Fault::Kill9AndRestart => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.kill9().expect("kill -9");
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart().expect("restart");
        }
    }
    let (q, acked, unknown) = adder.await.expect("adder");
    assert!(
        unknown <= 3,
        "{unknown} adds with an unknown outcome, one per fault at most"
    );
    let stored: usize = q
        .connection()
        .query(redis::cmd("LLEN").arg("bull:f:wait"))
        .await
        .expect("LLEN");
    assert!(
        (acked..=acked + unknown).contains(&stored),
        "{stored} jobs stored for {acked} acknowledged and {unknown} unknown adds"
    );
    let expected = stream_ids(q.connection(), "f").await;
    assert_eq!(expected.len(), stored * 2, "added + waiting per stored job");
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match next_item(&mut ev).await {
            EventItem::Event { id, .. } => got.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, expected, "0 missed, 0 repeated, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_kill_of_the_listener_misses_nothing() {
    let mut server = RedisServer::start().expect("redis-server");
    no_event_missed_or_repeated(&mut server, 150, Fault::ClientKillEverything).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_with_aof_misses_nothing() {
    let mut server = RedisServer::builder().aof().start().expect("redis-server");
    no_event_missed_or_repeated(&mut server, 150, Fault::Kill9AndRestart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_finished_does_not_race() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server.url(), "w").await;
    let mut ev = listener(&server.url(), "w", StartAt::Now).await;
    let early = q
        .add("early", &json!(1), JobOptions::default())
        .await
        .expect("add")
        .id;
    let processor = from_fn(|job: Job<Value>, _ctx| async move {
        if job.name == "fails" {
            return Err(JobError::unrecoverable("broken"));
        }
        Ok(json!({"name": job.name}))
    });
    let worker = Worker::start(
        fast(&server.url()).worker(),
        "w",
        processor,
        WorkerOptions::builder().build().expect("opts"),
    )
    .await
    .expect("worker");
    // Wait until `early` is done, then ask: the answer comes from the hash.
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.get_job_state(&early).await.expect("state")
        != Some(bullpen_producer::JobState::Completed)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = ev
        .wait_until_finished(&early, Duration::from_secs(5))
        .await
        .expect("finished");
    assert_eq!(done, Finished::Completed(json!({"name": "early"})));
    worker.close(Duration::from_secs(1)).await;
    // Jobs that finish after the call are seen in the stream.
    let later = q
        .add("later", &json!(1), JobOptions::default())
        .await
        .expect("add")
        .id;
    let fails = q
        .add("fails", &json!(1), JobOptions::default())
        .await
        .expect("add")
        .id;
    let url = server.url();
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let processor = from_fn(|job: Job<Value>, _ctx| async move {
            if job.name == "fails" {
                return Err(JobError::unrecoverable("broken"));
            }
            Ok(json!({"name": job.name}))
        });
        Worker::start(
            fast(&url).worker(),
            "w",
            processor,
            WorkerOptions::builder().build().expect("opts"),
        )
        .await
        .expect("worker")
    });
    let done = ev
        .wait_until_finished(&later, Duration::from_secs(10))
        .await
        .expect("later");
    assert_eq!(done, Finished::Completed(json!({"name": "later"})));
    let done = ev
        .wait_until_finished(&fails, Duration::from_secs(10))
        .await
        .expect("fails");
    assert_eq!(done, Finished::Failed("broken".into()));
    let err = ev
        .wait_until_finished("nope", Duration::from_millis(300))
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    starter
        .await
        .expect("worker")
        .close(Duration::from_secs(1))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_returns_promptly_while_blocked() {
    let server = RedisServer::start().expect("redis-server");
    let mut o = QueueEventsOptions::default();
    o.block = Duration::from_secs(10);
    let mut ev = QueueEvents::new(fast(&server.url()).blocking(), "c", o)
        .await
        .expect("listener");
    let handle = ev.close_handle();
    let task = tokio::spawn(async move { ev.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    handle.close();
    let ended = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("returns")
        .expect("task");
    assert!(ended, "next() answers None once closed");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_form_reads_on_demand() {
    use futures_util::StreamExt;
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server.url(), "s").await;
    for i in 0..3 {
        q.add("x", &json!(i), JobOptions::default())
            .await
            .expect("add");
    }
    let ev = listener(&server.url(), "s", StartAt::Beginning).await;
    let items: Vec<_> = ev.into_stream().take(6).collect().await;
    assert_eq!(items.len(), 6);
    assert!(items
        .iter()
        .all(|i| matches!(i, Ok(EventItem::Event { .. }))));
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_fan_out_is_bounded() {
    let server = RedisServer::start().expect("redis-server");
    let q = queue(&server.url(), "b").await;
    let ev = listener(&server.url(), "b", StartAt::Beginning).await;
    let (tx, handle) = ev.into_broadcast(4);
    let mut slow = tx.subscribe();
    let mut fast_rx = tx.subscribe();
    for i in 0..10 {
        q.add("x", &json!(i), JobOptions::default())
            .await
            .expect("add");
    }
    // The fast receiver sees all 20 events.
    let mut n = 0;
    while n < 20 {
        match tokio::time::timeout(Duration::from_secs(5), fast_rx.recv())
            .await
            .expect("in time")
        {
            Ok(_) => n += 1,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => n += k as usize,
            Err(e) => panic!("{e}"),
        }
    }
    // The slow one lagged and is told how much it lost.
    match slow.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => assert!(k >= 16, "{k}"),
        other => panic!("expected Lagged, got {other:?}"),
    }
    handle.close();
}
