//! The job hash `PFX:Q:<id>`: the typed [`Job`] and its codec.
//!
//! Decoding follows what Node's job reader accepts, so a hash that Node can read is readable
//! here, and the fields Node would choke on (`data`, `opts`, `progress`, `parent` with broken
//! JSON) are reported as [`CorruptJob`] naming the job and the field instead of panicking:
//!
//! * `data` must be JSON (missing or empty: `{}`); `opts` must be a JSON object (missing: the
//!   defaults); `progress` and `parent` must be JSON when present.
//! * `returnvalue` and `stacktrace` are read tolerantly: unreadable text becomes `None` / an
//!   empty list, with a warning that names the job but not the content.
//! * Integers (`timestamp`, `delay`, `priority`, `processedOn`, `finishedOn`, `atm`, `ats`,
//!   `stc`) are decimal text; whole numbers written as floats (`"1000.0"`) are accepted, and a
//!   missing or empty counter is 0. `atm` falls back to the legacy `attemptsMade`.
//! * `failedReason`, `defa`, `pb`, `rjk`, `deid`, `parentKey` are raw strings.
//! * Any other field is kept in [`Job::extra_fields`] and written back by [`Job::to_hash`].
//!
//! ```
//! use std::collections::HashMap;
//! use bullpen_core::job::Job;
//!
//! let fields: HashMap<String, String> = [
//!     ("name", "email"),
//!     ("data", r#"{"to":"a@example.com"}"#),
//!     ("opts", r#"{"attempts":3}"#),
//!     ("timestamp", "1700000000000"),
//!     ("delay", "0"),
//!     ("priority", "0"),
//! ]
//! .into_iter()
//! .map(|(k, v)| (k.to_owned(), v.to_owned()))
//! .collect();
//! let job: Job = Job::from_hash("42", &fields).expect("a valid job");
//! assert_eq!(job.opts.attempts, Some(3));
//! assert_eq!(job.data["to"], "a@example.com");
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::opts::{parse_u64_text, JobOptions};

/// Names of the job hash fields that [`Job`] has typed fields for (`attemptsMade` is the
/// legacy spelling of `atm`). Every other field goes to [`Job::extra_fields`].
pub const JOB_HASH_FIELDS: &[&str] = &[
    "name",
    "data",
    "opts",
    "timestamp",
    "delay",
    "priority",
    "processedOn",
    "finishedOn",
    "returnvalue",
    "failedReason",
    "stacktrace",
    "atm",
    "attemptsMade",
    "ats",
    "stc",
    "progress",
    "parentKey",
    "parent",
    "rjk",
    "deid",
    "defa",
    "pb",
];

/// A job hash that cannot be decoded (or a job that cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt job {job_id}: field `{field}`: {reason}")]
#[non_exhaustive]
pub struct CorruptJob {
    /// The job's id.
    pub job_id: String,
    /// The hash field at fault (`hash` when the whole hash is missing).
    pub field: String,
    /// What is wrong, without the field's content.
    pub reason: String,
}

impl CorruptJob {
    /// A new error for `field` of job `job_id`.
    pub fn new(
        job_id: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            job_id: job_id.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One job, as stored in its hash. `T` is the type of `data` (JSON by default).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Job<T = Value> {
    /// The id (the key suffix; the hash has no `id` field).
    pub id: String,
    /// `name`.
    pub name: String,
    /// `data`, decoded from JSON.
    pub data: T,
    /// `opts`, decoded from the stored form.
    pub opts: JobOptions,
    /// `timestamp`: creation time, ms since the epoch.
    pub timestamp: u64,
    /// `delay`: the relative delay in ms (not the due time).
    pub delay: u64,
    /// `priority`: 0 = none.
    pub priority: u32,
    /// `processedOn`: when the latest attempt started, ms.
    pub processed_on: Option<u64>,
    /// `finishedOn`: when the job completed or failed for good, ms.
    pub finished_on: Option<u64>,
    /// `returnvalue`, decoded from JSON (`None` when absent or unreadable).
    pub returnvalue: Option<Value>,
    /// `failedReason`: the last error message, plain text.
    pub failed_reason: Option<String>,
    /// `stacktrace`: a JSON array of strings (empty when absent or unreadable).
    pub stacktrace: Vec<String>,
    /// `atm` (legacy `attemptsMade`): finished attempts.
    pub attempts_made: u32,
    /// `ats`: started attempts.
    pub attempts_started: u32,
    /// `stc`: how many times the job was found stalled.
    pub stalled_counter: u32,
    /// `progress`, decoded from JSON (absent until the first update).
    pub progress: Option<Value>,
    /// `parentKey`: the full key of the flow parent, `PFX:Q:<parentId>`.
    pub parent_key: Option<String>,
    /// `parent`: `{"id", "queueKey", …}`, decoded from JSON.
    pub parent: Option<Value>,
    /// `rjk`: the Job Scheduler that produced the job.
    pub repeat_job_key: Option<String>,
    /// `deid`: the deduplication id the job holds.
    pub deduplication_id: Option<String>,
    /// `defa`: a deferred failure; the job must be failed without running.
    pub deferred_failure: Option<String>,
    /// `pb`: the name of the worker that activated the job last.
    pub processed_by: Option<String>,
    /// Every other hash field, kept verbatim.
    pub extra_fields: BTreeMap<String, String>,
}

impl<T> Job<T> {
    /// A new job with default options, timestamp 0 and nothing else set.
    pub fn new(id: impl Into<String>, name: impl Into<String>, data: T) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            data,
            opts: JobOptions::default(),
            timestamp: 0,
            delay: 0,
            priority: 0,
            processed_on: None,
            finished_on: None,
            returnvalue: None,
            failed_reason: None,
            stacktrace: Vec::new(),
            attempts_made: 0,
            attempts_started: 0,
            stalled_counter: 0,
            progress: None,
            parent_key: None,
            parent: None,
            repeat_job_key: None,
            deduplication_id: None,
            deferred_failure: None,
            processed_by: None,
            extra_fields: BTreeMap::new(),
        }
    }
}

impl<T: DeserializeOwned> Job<T> {
    /// Decodes the hash of job `id` (the fields of `HGETALL`). See the module docs for the
    /// rules; an empty hash is an error with field `hash`.
    pub fn from_hash(id: &str, fields: &HashMap<String, String>) -> Result<Self, CorruptJob> {
        decode(id, fields)
    }
}

impl<T: Serialize> Job<T> {
    /// `data` as JSON text, as stored in the hash.
    pub fn data_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.data)
    }

    /// The hash fields, ready for `HSET`: `name`, `data`, `opts`, `timestamp`, `delay`,
    /// `priority` always; `atm`/`ats`/`stc` when non-zero; every `Option` when `Some`;
    /// `stacktrace` when non-empty; then [`extra_fields`](Self::extra_fields) (except those
    /// that name a typed field). Fails only if `data` cannot be serialised.
    pub fn to_hash(&self) -> Result<Vec<(String, String)>, CorruptJob> {
        let data = self
            .data_json()
            .map_err(|e| CorruptJob::new(&self.id, "data", json_reason(&e)))?;
        let mut out: Vec<(String, String)> = Vec::with_capacity(12 + self.extra_fields.len());
        let mut put = |field: &str, value: String| out.push((field.to_owned(), value));
        put("name", self.name.clone());
        put("data", data);
        put("opts", Value::Object(self.opts.to_stored()).to_string());
        put("timestamp", self.timestamp.to_string());
        put("delay", self.delay.to_string());
        put("priority", self.priority.to_string());
        if let Some(ms) = self.processed_on {
            put("processedOn", ms.to_string());
        }
        if let Some(ms) = self.finished_on {
            put("finishedOn", ms.to_string());
        }
        if let Some(value) = &self.returnvalue {
            put("returnvalue", value.to_string());
        }
        if let Some(reason) = &self.failed_reason {
            put("failedReason", reason.clone());
        }
        if !self.stacktrace.is_empty() {
            let list = Value::Array(self.stacktrace.iter().cloned().map(Value::from).collect());
            put("stacktrace", list.to_string());
        }
        for (field, n) in [
            ("atm", self.attempts_made),
            ("ats", self.attempts_started),
            ("stc", self.stalled_counter),
        ] {
            if n != 0 {
                put(field, n.to_string());
            }
        }
        if let Some(progress) = &self.progress {
            put("progress", progress.to_string());
        }
        if let Some(key) = &self.parent_key {
            put("parentKey", key.clone());
        }
        if let Some(parent) = &self.parent {
            put("parent", parent.to_string());
        }
        for (field, value) in [
            ("rjk", &self.repeat_job_key),
            ("deid", &self.deduplication_id),
            ("defa", &self.deferred_failure),
            ("pb", &self.processed_by),
        ] {
            if let Some(v) = value {
                put(field, v.clone());
            }
        }
        for (field, value) in &self.extra_fields {
            if !JOB_HASH_FIELDS.contains(&field.as_str()) {
                put(field, value.clone());
            }
        }
        Ok(out)
    }
}

/// Decodes the hash of job `id`; the same as [`Job::from_hash`].
pub fn decode<T: DeserializeOwned>(
    id: &str,
    fields: &HashMap<String, String>,
) -> Result<Job<T>, CorruptJob> {
    let corrupt = |field: &str, reason: String| CorruptJob::new(id, field, reason);
    // Empty text counts as missing (ioredis turns null/undefined arguments into "").
    let get = |field: &str| {
        fields
            .get(field)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    };

    if ["name", "data", "timestamp"]
        .iter()
        .all(|f| !fields.contains_key(*f))
    {
        return Err(corrupt("hash", "job hash is empty or missing".into()));
    }

    let data: T = serde_json::from_str(get("data").unwrap_or("{}"))
        .map_err(|e| corrupt("data", json_reason(&e)))?;

    let opts = match get("opts") {
        None => JobOptions::default(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                JobOptions::from_stored(&map).map_err(|e| corrupt("opts", e.to_string()))?
            }
            Ok(Value::Null) => JobOptions::default(),
            Ok(_) => return Err(corrupt("opts", "expected a JSON object".into())),
            Err(e) => return Err(corrupt("opts", json_reason(&e))),
        },
    };

    let int = |field: &'static str| -> Result<Option<u64>, CorruptJob> {
        get(field)
            .map(|text| {
                parse_u64_text(text)
                    .ok_or_else(|| corrupt(field, "expected a non-negative integer as text".into()))
            })
            .transpose()
    };
    let small = |field: &'static str, value: Option<u64>| -> Result<u32, CorruptJob> {
        let n = value.unwrap_or(0);
        u32::try_from(n).map_err(|_| corrupt(field, format!("{n} is above {}", u32::MAX)))
    };
    let json = |field: &'static str| -> Result<Option<Value>, CorruptJob> {
        get(field)
            .map(|text| serde_json::from_str(text).map_err(|e| corrupt(field, json_reason(&e))))
            .transpose()
    };
    let raw = |field: &str| fields.get(field).cloned();

    let attempts_made = match int("atm")? {
        Some(n) => small("atm", Some(n))?,
        None => small("attemptsMade", int("attemptsMade")?)?,
    };

    let returnvalue = get("returnvalue").and_then(|text| match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::warn!(job.id = %id, field = "returnvalue", "ignoring a returnvalue that is not JSON");
            None
        }
    });

    let stacktrace = match get("stacktrace").map(serde_json::from_str::<Value>) {
        None => Vec::new(),
        Some(Ok(Value::Array(items))) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        // An empty Lua table encodes as `{}`.
        Some(Ok(Value::Object(map))) if map.is_empty() => Vec::new(),
        Some(Ok(_) | Err(_)) => {
            tracing::warn!(job.id = %id, field = "stacktrace", "ignoring a stacktrace that is not a JSON array");
            Vec::new()
        }
    };

    let extra_fields = fields
        .iter()
        .filter(|(k, _)| !JOB_HASH_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    Ok(Job {
        id: id.to_owned(),
        name: raw("name").unwrap_or_default(),
        data,
        opts,
        timestamp: int("timestamp")?.unwrap_or(0),
        delay: int("delay")?.unwrap_or(0),
        priority: small("priority", int("priority")?)?,
        processed_on: int("processedOn")?,
        finished_on: int("finishedOn")?,
        returnvalue,
        failed_reason: raw("failedReason"),
        stacktrace,
        attempts_made,
        attempts_started: small("ats", int("ats")?)?,
        stalled_counter: small("stc", int("stc")?)?,
        progress: json("progress")?,
        parent_key: raw("parentKey"),
        parent: json("parent")?,
        repeat_job_key: raw("rjk"),
        deduplication_id: raw("deid"),
        deferred_failure: raw("defa"),
        processed_by: raw("pb"),
        extra_fields,
    })
}

/// The reason of a JSON error, without any piece of the payload: syntax errors are kept as
/// they are (they only give a position); type mismatches keep what was expected, not what was
/// found.
fn json_reason(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => {
            let msg = err.to_string();
            let mismatch = ["invalid type", "invalid value", "invalid length"]
                .iter()
                .find(|p| msg.starts_with(*p));
            match (mismatch, msg.rfind(", expected ")) {
                (Some(kind), Some(at)) => format!("{kind}{}", &msg[at..]),
                (Some(kind), None) => {
                    format!("{kind} at line {} column {}", err.line(), err.column())
                }
                _ => msg,
            }
        }
        Category::Io | Category::Syntax | Category::Eof => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::tests::{arb_json, arb_options};
    use crate::opts::{Backoff, KeepJobs};
    use proptest::prelude::*;
    use serde_json::json;

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn plain() -> HashMap<String, String> {
        hash(&[
            ("name", "plain"),
            ("data", r#"{"a":1,"s":"héllo ✓"}"#),
            ("opts", r#"{"attempts":0}"#),
            ("timestamp", "1795325730070"),
            ("delay", "0"),
            ("priority", "0"),
        ])
    }

    fn arb_job() -> impl Strategy<Value = Job<Value>> {
        let opt_text = || proptest::option::of(".{0,16}");
        let opt_ms = || proptest::option::of(any::<u64>());
        let part1 = (
            "[a-zA-Z0-9-]{1,12}",
            ".{0,12}",
            arb_json(),
            arb_options(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            opt_ms(),
            opt_ms(),
            proptest::option::of(arb_json()),
            opt_text(),
        );
        let part2 = (
            prop::collection::vec(".{0,20}", 0..3),
            any::<[u32; 3]>(),
            proptest::option::of(arb_json()),
            opt_text(),
            proptest::option::of(arb_json()),
            [opt_text(), opt_text(), opt_text(), opt_text()],
            prop::collection::btree_map(
                "[a-zA-Z]{1,10}"
                    .prop_filter("not typed", |k| !JOB_HASH_FIELDS.contains(&k.as_str())),
                ".{0,10}",
                0..3,
            ),
        );
        (part1, part2).prop_map(
            |(
                (id, name, data, opts, timestamp, delay, priority, pon, fon, rv, reason),
                (
                    stack,
                    [atm, ats, stc],
                    progress,
                    parent_key,
                    parent,
                    [rjk, deid, defa, pb],
                    extra,
                ),
            )| Job {
                id,
                name,
                data,
                opts,
                timestamp,
                delay,
                priority,
                processed_on: pon,
                finished_on: fon,
                returnvalue: rv,
                failed_reason: reason,
                stacktrace: stack,
                attempts_made: atm,
                attempts_started: ats,
                stalled_counter: stc,
                progress,
                parent_key,
                parent,
                repeat_job_key: rjk,
                deduplication_id: deid,
                deferred_failure: defa,
                processed_by: pb,
                extra_fields: extra,
            },
        )
    }

    proptest! {
        #[test]
        fn hash_round_trip(job in arb_job()) {
            let pairs = job.to_hash().expect("encodes");
            let fields: HashMap<String, String> = pairs.iter().cloned().collect();
            prop_assert_eq!(fields.len(), pairs.len(), "a field was written twice");
            let back: Job = Job::from_hash(&job.id, &fields).expect("decodes");
            prop_assert_eq!(back, job);
        }

        #[test]
        fn garbage_never_panics(data in ".{0,20}", opts in ".{0,20}", num in ".{0,8}") {
            let fields = hash(&[
                ("name", "x"), ("data", &data), ("opts", &opts), ("timestamp", &num),
                ("returnvalue", &data), ("stacktrace", &opts), ("progress", &num),
            ]);
            let _ = Job::<Value>::from_hash("g", &fields);
        }
    }

    #[test]
    fn decodes_a_node_job() {
        let job: Job = Job::from_hash("1", &plain()).expect("decodes");
        assert_eq!(job.id, "1");
        assert_eq!(job.name, "plain");
        assert_eq!(job.data, json!({"a": 1, "s": "héllo ✓"}));
        assert_eq!(job.opts.attempts, Some(0));
        assert_eq!(job.timestamp, 1_795_325_730_070);
        assert_eq!(job.processed_on, None);
        assert_eq!(job.attempts_made, 0);
        assert!(job.extra_fields.is_empty());
    }

    #[test]
    fn decodes_a_finished_job() {
        let mut fields = plain();
        for (k, v) in [
            ("processedOn", "1795325730127"),
            ("finishedOn", "1795325730130"),
            ("atm", "1"),
            ("ats", "1"),
            ("progress", "50"),
            ("failedReason", "fails for good"),
            ("stacktrace", r#"["Error: fails\n    at x"]"#),
            ("returnvalue", r#"{"done":"1"}"#),
            ("flowAttachmentFailed", "1"),
        ] {
            fields.insert(k.into(), v.into());
        }
        let job: Job = Job::from_hash("7", &fields).expect("decodes");
        assert_eq!(job.finished_on, Some(1_795_325_730_130));
        assert_eq!(job.attempts_made, 1);
        assert_eq!(job.attempts_started, 1);
        assert_eq!(job.progress, Some(json!(50)));
        assert_eq!(job.failed_reason.as_deref(), Some("fails for good"));
        assert_eq!(job.stacktrace, vec!["Error: fails\n    at x".to_owned()]);
        assert_eq!(job.returnvalue, Some(json!({"done": "1"})));
        assert_eq!(
            job.extra_fields
                .get("flowAttachmentFailed")
                .map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn typed_data() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct Payload {
            a: u32,
            s: String,
        }
        let job: Job<Payload> = Job::from_hash("1", &plain()).expect("decodes");
        assert_eq!(job.data.a, 1);

        let mut fields = plain();
        fields.insert("data".into(), r#"{"a":"secret-text","s":"x"}"#.into());
        let err = Job::<Payload>::from_hash("1", &fields).expect_err("wrong type");
        assert_eq!(err.field, "data");
        assert!(!err.to_string().contains("secret-text"), "{err}");
        assert!(err.reason.contains("expected u32"), "{err}");
    }

    #[test]
    fn bad_data_is_corrupt() {
        let mut fields = plain();
        fields.insert("data".into(), "{not json".into());
        let err = Job::<Value>::from_hash("42", &fields).expect_err("bad data");
        assert_eq!(err.job_id, "42");
        assert_eq!(err.field, "data");
        assert!(
            err.to_string()
                .starts_with("corrupt job 42: field `data`: "),
            "{err}"
        );

        fields.insert("data".into(), String::new());
        let job: Job = Job::from_hash("42", &fields).expect("empty data is {}");
        assert_eq!(job.data, json!({}));
        fields.remove("data");
        let job: Job = Job::from_hash("42", &fields).expect("missing data is {}");
        assert_eq!(job.data, json!({}));
    }

    #[test]
    fn exact_display() {
        let mut fields = plain();
        fields.insert("data".into(), String::from("x"));
        let err = Job::<Value>::from_hash("42", &fields).expect_err("bad data");
        assert_eq!(
            err.to_string(),
            "corrupt job 42: field `data`: expected value at line 1 column 1"
        );
    }

    #[test]
    fn strict_fields() {
        for (field, text) in [
            ("opts", "{"),
            ("opts", "[1]"),
            ("opts", r#"{"priority":"high"}"#),
            ("progress", "fifty"),
            ("parent", "{"),
            ("timestamp", "yesterday"),
            ("delay", "-5"),
            ("priority", "99999999999"),
            ("atm", "1.5"),
        ] {
            let mut fields = plain();
            fields.insert(field.into(), text.into());
            let err = Job::<Value>::from_hash("9", &fields).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert_eq!(err.job_id, "9");
        }
    }

    #[test]
    fn tolerant_fields() {
        let mut fields = plain();
        fields.insert("returnvalue".into(), "not json".into());
        fields.insert("stacktrace".into(), "oops".into());
        fields.insert("timestamp".into(), "1795325730070.0".into());
        fields.insert("processedOn".into(), String::new());
        fields.insert("opts".into(), "null".into());
        let job: Job = Job::from_hash("3", &fields).expect("decodes");
        assert_eq!(job.returnvalue, None);
        assert!(job.stacktrace.is_empty());
        assert_eq!(job.timestamp, 1_795_325_730_070);
        assert_eq!(job.processed_on, None);
        assert_eq!(job.opts, JobOptions::default());

        fields.insert("stacktrace".into(), "{}".into());
        fields.remove("opts");
        let job: Job = Job::from_hash("3", &fields).expect("decodes");
        assert!(job.stacktrace.is_empty());
        assert_eq!(job.opts, JobOptions::default());
    }

    #[test]
    fn legacy_attempts_made() {
        let mut fields = plain();
        fields.insert("attemptsMade".into(), "4".into());
        let job: Job = Job::from_hash("3", &fields).expect("decodes");
        assert_eq!(job.attempts_made, 4);
        fields.insert("atm".into(), "2".into());
        let job: Job = Job::from_hash("3", &fields).expect("decodes");
        assert_eq!(job.attempts_made, 2);
        assert!(job.extra_fields.is_empty());
    }

    #[test]
    fn empty_hash_is_corrupt() {
        let err = Job::<Value>::from_hash("5", &HashMap::new()).expect_err("empty");
        assert_eq!(err.field, "hash");
        assert_eq!(
            err.to_string(),
            "corrupt job 5: field `hash`: job hash is empty or missing"
        );
        // only counters left (e.g. a stray HINCRBY on a deleted job)
        let err = Job::<Value>::from_hash("5", &hash(&[("stc", "1")])).expect_err("stray");
        assert_eq!(err.field, "hash");
    }

    #[test]
    fn encodes_producer_fields() {
        let mut job = Job::new("custom-1", "opts", json!({"b": 2}));
        job.timestamp = 1_795_325_730_079;
        job.opts.attempts = Some(3);
        job.opts.backoff = Some(Backoff::exponential(1000));
        job.opts.remove_on_complete = Some(KeepJobs::Count(10));
        job.opts.keep_logs = Some(5);
        job.extra_fields.insert("name".into(), "ignored".into());
        let pairs = job.to_hash().expect("encodes");
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["name", "data", "opts", "timestamp", "delay", "priority"]
        );
        assert_eq!(pairs[0].1, "opts");
        assert_eq!(pairs[1].1, r#"{"b":2}"#);
        let opts: Value = serde_json::from_str(&pairs[2].1).expect("json");
        assert_eq!(
            opts,
            json!({"attempts": 3, "backoff": {"type": "exponential", "delay": 1000},
                   "removeOnComplete": 10, "kl": 5})
        );
        assert_eq!(pairs[3].1, "1795325730079");
        assert_eq!(job.data_json().expect("json"), r#"{"b":2}"#);
    }

    #[test]
    fn unserialisable_data_is_an_error() {
        let mut data = std::collections::BTreeMap::new();
        data.insert((1, 2), "tuple keys are not JSON");
        let job = Job::new("1", "bad", data);
        let err = job.to_hash().expect_err("cannot encode");
        assert_eq!(err.field, "data");
    }
}
