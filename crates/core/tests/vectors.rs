//! The job hash, options and event codecs against what Node BullMQ 6.7.0 really wrote
//! (`shared/vectors/bullmq-6.7.0-vectors.json`, queue `vec`, prefix `bull`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use bullpen_core::events::{Event, STANDARD_EVENT_NAMES};
use bullpen_core::job::Job;
use bullpen_core::opts::{Backoff, Dedup, KeepJobs};
use serde_json::{json, Value};

const JOB_PREFIX: &str = "bull:vec:";
const EVENTS_KEY: &str = "bull:vec:events";

/// Hash fields holding JSON text: compared as parsed JSON, since key order and number
/// spelling may differ.
const JSON_FIELDS: &[&str] = &[
    "data",
    "opts",
    "returnvalue",
    "progress",
    "parent",
    "stacktrace",
];

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/bullmq-6.7.0-vectors.json")
}

fn load() -> Option<Value> {
    let path = vectors_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("skipped: {} not found", path.display());
        return None;
    };
    Some(serde_json::from_str(&text).expect("vectors are JSON"))
}

fn steps(vectors: &Value) -> &Vec<Value> {
    vectors["steps"].as_array().expect("steps array")
}

fn step_name(step: &Value) -> &str {
    step["name"].as_str().expect("step name")
}

/// Every job hash of a step: (job id, fields).
fn job_hashes(step: &Value) -> Vec<(String, HashMap<String, String>)> {
    let keys = step["keys"].as_object().expect("keys object");
    keys.iter()
        .filter(|(_, entry)| entry["type"] == "hash")
        .filter_map(|(key, entry)| {
            let id = key.strip_prefix(JOB_PREFIX)?;
            let value = entry["value"].as_object().expect("hash object");
            if !value.contains_key("name") {
                return None;
            }
            let fields = value
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string field").to_owned()))
                .collect();
            Some((id.to_owned(), fields))
        })
        .collect()
}

/// Every stream entry of a step, as field/value pairs in stream order.
fn stream_entries(step: &Value) -> Vec<Vec<(String, String)>> {
    let keys = step["keys"].as_object().expect("keys object");
    keys.iter()
        .filter(|(_, entry)| entry["type"] == "stream")
        .inspect(|(key, _)| assert_eq!(key.as_str(), EVENTS_KEY, "unexpected stream"))
        .flat_map(|(_, entry)| entry["value"].as_array().expect("entries").iter())
        .map(|entry| {
            let flat: Vec<String> = entry["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .map(|v| v.as_str().expect("string").to_owned())
                .collect();
            assert_eq!(flat.len() % 2, 0, "odd field list");
            flat.chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect()
        })
        .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("json field")
}

/// Facts that hold for a job in every step where it exists.
fn check_facts(step: &str, job: &Job) {
    let ctx = format!("job {} in step {step}", job.id);
    match job.id.as_str() {
        "1" => {
            assert_eq!(job.name, "plain", "{ctx}");
            assert_eq!(job.data, json!({"a": 1, "s": "héllo ✓"}), "{ctx}");
            assert_eq!(job.opts.attempts, Some(0), "{ctx}");
            assert_eq!(job.timestamp, 1_795_325_730_070, "{ctx}");
            assert_eq!((job.delay, job.priority), (0, 0), "{ctx}");
        }
        "custom-1" => {
            assert_eq!(job.name, "opts", "{ctx}");
            let o = &job.opts;
            assert_eq!(o.job_id.as_deref(), Some("custom-1"), "{ctx}");
            assert_eq!(o.attempts, Some(3), "{ctx}");
            assert_eq!(o.backoff, Some(Backoff::exponential(1000)), "{ctx}");
            assert_eq!(o.remove_on_complete, Some(KeepJobs::Count(10)), "{ctx}");
            assert_eq!(
                o.remove_on_fail,
                Some(KeepJobs::Window {
                    age_secs: Some(3600),
                    count: Some(100),
                    limit: None
                }),
                "{ctx}"
            );
            assert_eq!(o.keep_logs, Some(5), "{ctx}");
            assert_eq!(o.stack_trace_limit, Some(3), "{ctx}");
            assert!(o.extra.is_empty(), "{ctx}");
        }
        "4" => {
            assert_eq!(job.opts.delay_ms, 60_000, "{ctx}");
            assert_eq!(job.delay, 60_000, "{ctx}");
        }
        "5" => {
            assert_eq!(job.opts.priority, 7, "{ctx}");
            assert_eq!(job.priority, 7, "{ctx}");
        }
        "6" => {
            assert_eq!(job.opts.priority, 2, "{ctx}");
            assert_eq!(job.priority, 2, "{ctx}");
        }
        "7" => assert!(job.opts.lifo, "{ctx}"),
        "8" => {
            assert_eq!(
                job.opts.deduplication,
                Some(Dedup::new("dd-1").with_ttl(60_000)),
                "{ctx}"
            );
            assert_eq!(job.deduplication_id.as_deref(), Some("dd-1"), "{ctx}");
        }
        _ => {}
    }
    if job.name == "child" {
        let parent_id = job.parent.as_ref().expect("child has parent")["id"]
            .as_str()
            .expect("parent id")
            .to_owned();
        assert_eq!(
            job.parent,
            Some(json!({"id": parent_id, "queueKey": "bull:vec"})),
            "{ctx}"
        );
        assert_eq!(
            job.parent_key.as_deref(),
            Some(format!("bull:vec:{parent_id}").as_str()),
            "{ctx}"
        );
        assert_eq!(
            job.opts.parent,
            Some(json!({"id": parent_id, "queue": "bull:vec"})),
            "{ctx}"
        );
    }
    if job.name == "parent" {
        assert_eq!((&job.parent, &job.parent_key), (&None, &None), "{ctx}");
    }
}

/// Facts about the state after the worker ran.
fn check_after_worker(job: &Job) {
    let ctx = format!("job {} after the worker", job.id);
    match job.id.as_str() {
        "custom-1" => {
            // first attempt failed, retried with backoff into delayed
            assert_eq!(job.attempts_made, 1, "{ctx}");
            assert_eq!(job.attempts_started, 1, "{ctx}");
            assert_eq!(job.delay, 1000, "{ctx}");
            assert_eq!(
                job.failed_reason.as_deref(),
                Some("first attempt fails"),
                "{ctx}"
            );
            assert_eq!(job.stacktrace.len(), 1, "{ctx}");
            assert!(
                job.stacktrace[0].starts_with("Error: first attempt fails\n"),
                "{ctx}"
            );
            assert_eq!(job.finished_on, None, "{ctx}");
            assert_eq!(job.progress, Some(json!(50)), "{ctx}");
        }
        "7" => {
            assert_eq!(
                job.failed_reason.as_deref(),
                Some("fails for good"),
                "{ctx}"
            );
            assert_eq!(job.attempts_made, 1, "{ctx}");
            assert!(job.finished_on.is_some(), "{ctx}");
            assert_eq!(job.returnvalue, None, "{ctx}");
        }
        "4" => {
            assert_eq!(job.processed_on, None, "{ctx}");
            assert_eq!(job.attempts_started, 0, "{ctx}");
        }
        id => {
            assert_eq!(job.returnvalue, Some(json!({"done": id})), "{ctx}");
            assert_eq!(job.progress, Some(json!(50)), "{ctx}");
            assert_eq!((job.attempts_made, job.attempts_started), (1, 1), "{ctx}");
            assert!(
                job.processed_on.is_some() && job.finished_on.is_some(),
                "{ctx}"
            );
            assert!(job.stacktrace.is_empty(), "{ctx}");
        }
    }
    assert_eq!(job.stalled_counter, 0, "{ctx}");
    assert_eq!(job.processed_by, None, "unnamed worker: {ctx}");
}

#[test]
fn job_hashes_decode_and_reencode() {
    let Some(vectors) = load() else { return };
    let mut decoded = 0;
    for step in steps(&vectors) {
        let name = step_name(step);
        for (id, fields) in job_hashes(step) {
            let job: Job = Job::from_hash(&id, &fields)
                .unwrap_or_else(|e| panic!("step {name}: job {id}: {e}"));
            decoded += 1;
            assert!(job.extra_fields.is_empty(), "step {name}: job {id}");
            check_facts(name, &job);
            if name == "after-worker" {
                check_after_worker(&job);
            }

            // opts: the stored form re-encodes to the same JSON object
            let stored = Value::Object(job.opts.to_stored());
            assert_eq!(stored, parse(&fields["opts"]), "step {name}: job {id} opts");

            // the whole hash re-encodes to the same fields
            let pairs = job.to_hash().expect("encodes");
            let ours: HashMap<String, String> = pairs.iter().cloned().collect();
            assert_eq!(
                ours.len(),
                pairs.len(),
                "step {name}: job {id}: repeated field"
            );
            let our_names: BTreeSet<&String> = ours.keys().collect();
            let their_names: BTreeSet<&String> = fields.keys().collect();
            assert_eq!(our_names, their_names, "step {name}: job {id}: field names");
            for (field, theirs) in &fields {
                if JSON_FIELDS.contains(&field.as_str()) {
                    assert_eq!(
                        parse(&ours[field]),
                        parse(theirs),
                        "step {name}: job {id}: {field}"
                    );
                } else {
                    assert_eq!(&ours[field], theirs, "step {name}: job {id}: {field}");
                }
            }

            // and decodes back to the same job
            let again: Job = Job::from_hash(&id, &ours).expect("decodes again");
            assert_eq!(again, job, "step {name}: job {id}");
        }
    }
    assert!(decoded >= 40, "only {decoded} job hashes found");
}

#[test]
fn stream_entries_decode_and_reencode_in_order() {
    let Some(vectors) = load() else { return };
    let mut seen = BTreeSet::new();
    let mut checked = 0;
    for step in steps(&vectors) {
        let name = step_name(step);
        for fields in stream_entries(step) {
            let event = Event::from_fields(&fields)
                .unwrap_or_else(|e| panic!("step {name}: {fields:?}: {e}"));
            let event_name = event.name().to_owned();
            assert!(
                STANDARD_EVENT_NAMES.contains(&event_name.as_str()),
                "step {name}: unexpected event {event_name}"
            );
            assert!(
                !matches!(event, Event::Other { .. }),
                "step {name}: {event_name} decoded as Other"
            );
            assert_eq!(event.to_fields(), fields, "step {name}: {event:?}");
            seen.insert(event_name);
            checked += 1;
        }
    }
    assert!(checked > 0, "no stream entries found");
    let expected: BTreeSet<String> = [
        "added",
        "waiting",
        "delayed",
        "waiting-children",
        "active",
        "progress",
        "completed",
        "failed",
        "retries-exhausted",
        "duplicated",
        "deduplicated",
        "paused",
        "resumed",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(seen, expected, "event names in the vectors");
}

#[test]
fn stream_entries_carry_the_documented_values() {
    let Some(vectors) = load() else { return };
    let after = steps(&vectors)
        .iter()
        .find(|s| step_name(s) == "after-worker")
        .expect("after-worker step");
    let events: Vec<Event> = stream_entries(after)
        .iter()
        .map(|f| Event::from_fields(f).expect("decodes"))
        .collect();
    assert!(events.contains(&Event::Delayed {
        job_id: "custom-1".into(),
        delay: 1_795_325_731_134,
    }));
    assert!(events.contains(&Event::Failed {
        job_id: "7".into(),
        failed_reason: "fails for good".into(),
        prev: Some("active".into()),
    }));
    assert!(events.contains(&Event::RetriesExhausted {
        job_id: "7".into(),
        attempts_made: 1,
    }));
    assert!(events.contains(&Event::Completed {
        job_id: "1".into(),
        returnvalue: json!({"done": "1"}),
        prev: Some("active".into()),
    }));
    assert!(events.contains(&Event::Progress {
        job_id: "8".into(),
        data: json!(50),
    }));
    assert!(events.contains(&Event::Deduplicated {
        job_id: "8".into(),
        deduplication_id: "dd-1".into(),
        deduplicated_job_id: "9".into(),
    }));
    // the reference run ends without `drained` (a delayed job remained)
    assert!(!events.contains(&Event::Drained));
}
