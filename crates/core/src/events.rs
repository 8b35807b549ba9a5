//! Entries of the events stream `PFX:Q:events`: the typed [`Event`] and its codec.
//!
//! Every entry is a list of field/value pairs whose first pair is `event`, `<name>`; the other
//! fields depend on the event and are written in a fixed order, which [`Event::to_fields`]
//! reproduces exactly (`completed`: `jobId`, `returnvalue`, `prev`).
//!
//! Node's `QueueEvents` parses `completed.returnvalue` and `progress.data` as JSON and stops
//! consuming for good when that fails, so these are always valid JSON here: the values are
//! [`serde_json::Value`]s, and decoding rejects text that is not JSON.
//!
//! ```
//! use bullpen_core::events::Event;
//!
//! let event = Event::Completed {
//!     job_id: "1".into(),
//!     returnvalue: serde_json::json!({"done": true}),
//!     prev: Some("active".into()),
//! };
//! let fields = event.to_fields();
//! assert_eq!(fields[0], ("event".to_owned(), "completed".to_owned()));
//! assert_eq!(fields[2].1, r#"{"done":true}"#);
//! assert_eq!(Event::from_fields(&fields).expect("decodes"), event);
//! ```

use serde_json::Value;

use crate::opts::parse_u64_text;

/// Names of the events BullMQ itself emits (each has its own [`Event`] variant).
pub const STANDARD_EVENT_NAMES: &[&str] = &[
    "added",
    "waiting",
    "delayed",
    "waiting-children",
    "active",
    "progress",
    "completed",
    "failed",
    "retries-exhausted",
    "drained",
    "stalled",
    "removed",
    "duplicated",
    "deduplicated",
    "paused",
    "resumed",
    "cleaned",
];

const EVENT: &str = "event";
const JOB_ID: &str = "jobId";
const PREV: &str = "prev";

/// One entry of the events stream.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `added`: `jobId`, `name`. A job was created.
    Added {
        /// The job.
        job_id: String,
        /// Its name.
        name: String,
    },
    /// `waiting`: `jobId`, `prev`?. The job entered `wait` (or `prioritized`).
    Waiting {
        /// The job.
        job_id: String,
        /// The state it came from (`delayed`, `active`, `waiting-children`, …), if given.
        prev: Option<String>,
    },
    /// `delayed`: `jobId`, `delay`. The job was scheduled.
    Delayed {
        /// The job.
        job_id: String,
        /// The absolute due time in ms since the epoch (not the relative delay).
        delay: u64,
    },
    /// `waiting-children`: `jobId`, `prev`?. A parent waits for its children.
    WaitingChildren {
        /// The job.
        job_id: String,
        /// The state it came from (`active`), if given.
        prev: Option<String>,
    },
    /// `active`: `jobId`, `prev`?. A worker started the job.
    Active {
        /// The job.
        job_id: String,
        /// The state it came from (`waiting`), if given.
        prev: Option<String>,
    },
    /// `progress`: `jobId`, `data`. The job reported progress.
    Progress {
        /// The job.
        job_id: String,
        /// The progress value (JSON text in the stream).
        data: Value,
    },
    /// `completed`: `jobId`, `returnvalue`, `prev`?. The job completed.
    Completed {
        /// The job.
        job_id: String,
        /// What the processor returned (JSON text in the stream; `null` for nothing).
        returnvalue: Value,
        /// The state it came from (`active`), if given.
        prev: Option<String>,
    },
    /// `failed`: `jobId`, `failedReason`, `prev`?. The job failed for good.
    Failed {
        /// The job.
        job_id: String,
        /// The error message, plain text.
        failed_reason: String,
        /// The state it came from (`active`), if given.
        prev: Option<String>,
    },
    /// `retries-exhausted`: `jobId`, `attemptsMade`. Follows a final `failed`.
    RetriesExhausted {
        /// The job.
        job_id: String,
        /// Attempts made so far.
        attempts_made: u64,
    },
    /// `drained`: no fields. `wait`, `active` and `prioritized` are empty.
    Drained,
    /// `stalled`: `jobId`. The job's lock expired and it was moved back to `wait`.
    Stalled {
        /// The job.
        job_id: String,
    },
    /// `removed`: `jobId`, `prev`. The job was removed.
    Removed {
        /// The job.
        job_id: String,
        /// The state key suffix it was removed from.
        prev: Option<String>,
    },
    /// `duplicated`: `jobId`. An add named an existing custom id.
    Duplicated {
        /// The existing job.
        job_id: String,
    },
    /// `deduplicated`: `jobId`, `deduplicationId`, `deduplicatedJobId`. A deduplication hit.
    Deduplicated {
        /// The job that holds the deduplication id (the new one after a `replace`).
        job_id: String,
        /// The deduplication id.
        deduplication_id: String,
        /// The job that was not added (the removed one after a `replace`).
        deduplicated_job_id: String,
    },
    /// `paused`: no fields.
    Paused,
    /// `resumed`: no fields.
    Resumed,
    /// `cleaned`: `count`. One clean call finished.
    Cleaned {
        /// How many jobs it removed.
        count: u64,
    },
    /// Any other event (custom events published by applications), with its fields in order
    /// (the `event` pair excluded). A name of [`STANDARD_EVENT_NAMES`] here decodes as the
    /// standard variant.
    Other {
        /// The event name.
        name: String,
        /// Its other fields, in stream order.
        fields: Vec<(String, String)>,
    },
}

/// A stream entry that is not a well-formed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// The entry has no `event` field.
    #[error("event entry has no `event` field")]
    MissingEventName,
    /// A field the event requires is missing.
    #[error("`{event}` event has no `{field}` field")]
    MissingField {
        /// The event name.
        event: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field cannot be read.
    #[error("`{event}` event has a bad `{field}` field: {reason}")]
    BadField {
        /// The event name.
        event: String,
        /// The field.
        field: &'static str,
        /// What is wrong (without the field's content).
        reason: String,
    },
}

impl Event {
    /// The stream name of the event (`waiting-children`, `retries-exhausted`, …).
    pub fn name(&self) -> &str {
        match self {
            Self::Added { .. } => "added",
            Self::Waiting { .. } => "waiting",
            Self::Delayed { .. } => "delayed",
            Self::WaitingChildren { .. } => "waiting-children",
            Self::Active { .. } => "active",
            Self::Progress { .. } => "progress",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::RetriesExhausted { .. } => "retries-exhausted",
            Self::Drained => "drained",
            Self::Stalled { .. } => "stalled",
            Self::Removed { .. } => "removed",
            Self::Duplicated { .. } => "duplicated",
            Self::Deduplicated { .. } => "deduplicated",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Cleaned { .. } => "cleaned",
            Self::Other { name, .. } => name,
        }
    }

    /// The job the event is about, if any.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Self::Added { job_id, .. }
            | Self::Waiting { job_id, .. }
            | Self::Delayed { job_id, .. }
            | Self::WaitingChildren { job_id, .. }
            | Self::Active { job_id, .. }
            | Self::Progress { job_id, .. }
            | Self::Completed { job_id, .. }
            | Self::Failed { job_id, .. }
            | Self::RetriesExhausted { job_id, .. }
            | Self::Stalled { job_id }
            | Self::Removed { job_id, .. }
            | Self::Duplicated { job_id }
            | Self::Deduplicated { job_id, .. } => Some(job_id),
            Self::Other { fields, .. } => fields
                .iter()
                .find(|(k, _)| k == JOB_ID)
                .map(|(_, v)| v.as_str()),
            Self::Drained | Self::Paused | Self::Resumed | Self::Cleaned { .. } => None,
        }
    }

    /// The field/value pairs for `XADD`, in BullMQ's order; the first pair is
    /// `("event", name)`.
    pub fn to_fields(&self) -> Vec<(String, String)> {
        let mut out = vec![(EVENT.to_owned(), self.name().to_owned())];
        let mut put = |field: &str, value: &str| out.push((field.to_owned(), value.to_owned()));
        match self {
            Self::Added { job_id, name } => {
                put(JOB_ID, job_id);
                put("name", name);
            }
            Self::Waiting { job_id, prev }
            | Self::WaitingChildren { job_id, prev }
            | Self::Active { job_id, prev }
            | Self::Removed { job_id, prev } => {
                put(JOB_ID, job_id);
                if let Some(prev) = prev {
                    put(PREV, prev);
                }
            }
            Self::Delayed { job_id, delay } => {
                put(JOB_ID, job_id);
                put("delay", &delay.to_string());
            }
            Self::Progress { job_id, data } => {
                put(JOB_ID, job_id);
                put("data", &data.to_string());
            }
            Self::Completed {
                job_id,
                returnvalue,
                prev,
            } => {
                put(JOB_ID, job_id);
                put("returnvalue", &returnvalue.to_string());
                if let Some(prev) = prev {
                    put(PREV, prev);
                }
            }
            Self::Failed {
                job_id,
                failed_reason,
                prev,
            } => {
                put(JOB_ID, job_id);
                put("failedReason", failed_reason);
                if let Some(prev) = prev {
                    put(PREV, prev);
                }
            }
            Self::RetriesExhausted {
                job_id,
                attempts_made,
            } => {
                put(JOB_ID, job_id);
                put("attemptsMade", &attempts_made.to_string());
            }
            Self::Stalled { job_id } | Self::Duplicated { job_id } => put(JOB_ID, job_id),
            Self::Deduplicated {
                job_id,
                deduplication_id,
                deduplicated_job_id,
            } => {
                put(JOB_ID, job_id);
                put("deduplicationId", deduplication_id);
                put("deduplicatedJobId", deduplicated_job_id);
            }
            Self::Cleaned { count } => put("count", &count.to_string()),
            Self::Drained | Self::Paused | Self::Resumed => {}
            Self::Other { fields, .. } => {
                for (field, value) in fields {
                    put(field, value);
                }
            }
        }
        out
    }

    /// Decodes a stream entry's pairs. The `event` pair may be anywhere (normally first);
    /// unknown event names give [`Event::Other`]; unknown extra fields of a standard event are
    /// ignored; when a field repeats, the first one counts.
    pub fn from_fields(fields: &[(String, String)]) -> Result<Event, EventDecodeError> {
        let at = fields
            .iter()
            .position(|(k, _)| k == EVENT)
            .ok_or(EventDecodeError::MissingEventName)?;
        let name = fields[at].1.as_str();
        let reader = Reader {
            event: name,
            fields,
        };
        let event = match name {
            "added" => Self::Added {
                job_id: reader.text(JOB_ID)?,
                name: reader.text("name")?,
            },
            "waiting" => Self::Waiting {
                job_id: reader.text(JOB_ID)?,
                prev: reader.optional(PREV),
            },
            "delayed" => Self::Delayed {
                job_id: reader.text(JOB_ID)?,
                delay: reader.integer("delay")?,
            },
            "waiting-children" => Self::WaitingChildren {
                job_id: reader.text(JOB_ID)?,
                prev: reader.optional(PREV),
            },
            "active" => Self::Active {
                job_id: reader.text(JOB_ID)?,
                prev: reader.optional(PREV),
            },
            "progress" => Self::Progress {
                job_id: reader.text(JOB_ID)?,
                data: reader.json("data")?,
            },
            "completed" => Self::Completed {
                job_id: reader.text(JOB_ID)?,
                returnvalue: reader.json("returnvalue")?,
                prev: reader.optional(PREV),
            },
            "failed" => Self::Failed {
                job_id: reader.text(JOB_ID)?,
                failed_reason: reader.text("failedReason")?,
                prev: reader.optional(PREV),
            },
            "retries-exhausted" => Self::RetriesExhausted {
                job_id: reader.text(JOB_ID)?,
                attempts_made: reader.integer("attemptsMade")?,
            },
            "drained" => Self::Drained,
            "stalled" => Self::Stalled {
                job_id: reader.text(JOB_ID)?,
            },
            "removed" => Self::Removed {
                job_id: reader.text(JOB_ID)?,
                prev: reader.optional(PREV),
            },
            "duplicated" => Self::Duplicated {
                job_id: reader.text(JOB_ID)?,
            },
            "deduplicated" => Self::Deduplicated {
                job_id: reader.text(JOB_ID)?,
                deduplication_id: reader.text("deduplicationId")?,
                deduplicated_job_id: reader.text("deduplicatedJobId")?,
            },
            "paused" => Self::Paused,
            "resumed" => Self::Resumed,
            "cleaned" => Self::Cleaned {
                count: reader.integer("count")?,
            },
            other => Self::Other {
                name: other.to_owned(),
                fields: fields
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != at)
                    .map(|(_, pair)| pair.clone())
                    .collect(),
            },
        };
        Ok(event)
    }
}

/// Field access for one entry being decoded.
struct Reader<'a> {
    event: &'a str,
    fields: &'a [(String, String)],
}

impl Reader<'_> {
    fn optional(&self, field: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.clone())
    }

    fn text(&self, field: &'static str) -> Result<String, EventDecodeError> {
        self.optional(field)
            .ok_or_else(|| EventDecodeError::MissingField {
                event: self.event.to_owned(),
                field,
            })
    }

    fn bad(&self, field: &'static str, reason: String) -> EventDecodeError {
        EventDecodeError::BadField {
            event: self.event.to_owned(),
            field,
            reason,
        }
    }

    fn integer(&self, field: &'static str) -> Result<u64, EventDecodeError> {
        let text = self.text(field)?;
        parse_u64_text(&text)
            .ok_or_else(|| self.bad(field, "expected a non-negative integer".into()))
    }

    fn json(&self, field: &'static str) -> Result<Value, EventDecodeError> {
        let text = self.text(field)?;
        serde_json::from_str(&text).map_err(|e| self.bad(field, format!("not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::tests::arb_json;
    use proptest::prelude::*;
    use serde_json::json;

    fn pairs(flat: &[&str]) -> Vec<(String, String)> {
        flat.chunks(2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let id = || "[a-zA-Z0-9:-]{0,12}";
        let text = || ".{0,16}";
        let prev = || proptest::option::of(text());
        prop_oneof![
            (id(), text()).prop_map(|(job_id, name)| Event::Added { job_id, name }),
            (id(), prev()).prop_map(|(job_id, prev)| Event::Waiting { job_id, prev }),
            (id(), any::<u64>()).prop_map(|(job_id, delay)| Event::Delayed { job_id, delay }),
            (id(), prev()).prop_map(|(job_id, prev)| Event::WaitingChildren { job_id, prev }),
            (id(), prev()).prop_map(|(job_id, prev)| Event::Active { job_id, prev }),
            (id(), arb_json()).prop_map(|(job_id, data)| Event::Progress { job_id, data }),
            (id(), arb_json(), prev()).prop_map(|(job_id, returnvalue, prev)| {
                Event::Completed {
                    job_id,
                    returnvalue,
                    prev,
                }
            }),
            (id(), text(), prev()).prop_map(|(job_id, failed_reason, prev)| Event::Failed {
                job_id,
                failed_reason,
                prev
            }),
            (id(), any::<u64>()).prop_map(|(job_id, attempts_made)| {
                Event::RetriesExhausted {
                    job_id,
                    attempts_made,
                }
            }),
            Just(Event::Drained),
            id().prop_map(|job_id| Event::Stalled { job_id }),
            (id(), prev()).prop_map(|(job_id, prev)| Event::Removed { job_id, prev }),
            id().prop_map(|job_id| Event::Duplicated { job_id }),
            (id(), text(), id()).prop_map(|(job_id, deduplication_id, deduplicated_job_id)| {
                Event::Deduplicated {
                    job_id,
                    deduplication_id,
                    deduplicated_job_id,
                }
            }),
            Just(Event::Paused),
            Just(Event::Resumed),
            any::<u64>().prop_map(|count| Event::Cleaned { count }),
            (
                "[a-z:-]{0,12}"
                    .prop_filter("custom", |n| !STANDARD_EVENT_NAMES.contains(&n.as_str())),
                prop::collection::vec((text(), text()), 0..4),
            )
                .prop_map(|(name, fields)| Event::Other { name, fields }),
        ]
    }

    proptest! {
        #[test]
        fn fields_round_trip(event in arb_event()) {
            let fields = event.to_fields();
            prop_assert_eq!(&fields[0].0, "event");
            prop_assert_eq!(fields[0].1.as_str(), event.name());
            prop_assert_eq!(Event::from_fields(&fields).expect("decodes"), event);
        }

        #[test]
        fn event_pair_may_move(event in arb_event(), to in 0usize..8) {
            prop_assume!(!matches!(event, Event::Other { .. }));
            let mut fields = event.to_fields();
            let first = fields.remove(0);
            let to = to.min(fields.len());
            fields.insert(to, first);
            prop_assert_eq!(Event::from_fields(&fields).expect("decodes"), event);
        }

        #[test]
        fn garbage_never_panics(fields in prop::collection::vec((
            prop_oneof![Just("event".to_owned()), Just("jobId".to_owned()),
                        Just("delay".to_owned()), Just("returnvalue".to_owned()), ".{0,6}"],
            prop_oneof![
                prop::sample::select(STANDARD_EVENT_NAMES).prop_map(str::to_owned),
                ".{0,8}",
            ],
        ), 0..6)) {
            let _ = Event::from_fields(&fields);
        }
    }

    #[test]
    fn every_standard_name_has_a_variant() {
        for name in STANDARD_EVENT_NAMES {
            let fields = pairs(&[
                "event",
                name,
                "jobId",
                "1",
                "name",
                "n",
                "delay",
                "5",
                "data",
                "1",
                "returnvalue",
                "null",
                "failedReason",
                "x",
                "attemptsMade",
                "1",
                "deduplicationId",
                "d",
                "deduplicatedJobId",
                "2",
                "count",
                "0",
            ]);
            let event = Event::from_fields(&fields).expect(name);
            assert!(!matches!(event, Event::Other { .. }), "{name}");
            assert_eq!(event.name(), *name);
        }
    }

    #[test]
    fn exact_order() {
        let event = Event::Completed {
            job_id: "1".into(),
            returnvalue: json!({"done": "1"}),
            prev: Some("active".into()),
        };
        assert_eq!(
            event.to_fields(),
            pairs(&[
                "event",
                "completed",
                "jobId",
                "1",
                "returnvalue",
                r#"{"done":"1"}"#,
                "prev",
                "active"
            ])
        );
        let event = Event::Deduplicated {
            job_id: "8".into(),
            deduplication_id: "dd-1".into(),
            deduplicated_job_id: "9".into(),
        };
        assert_eq!(
            event.to_fields(),
            pairs(&[
                "event",
                "deduplicated",
                "jobId",
                "8",
                "deduplicationId",
                "dd-1",
                "deduplicatedJobId",
                "9"
            ])
        );
        assert_eq!(Event::Drained.to_fields(), pairs(&["event", "drained"]));
        assert_eq!(
            Event::Cleaned { count: 0 }.to_fields(),
            pairs(&["event", "cleaned", "count", "0"])
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            Event::from_fields(&pairs(&["jobId", "1"])),
            Err(EventDecodeError::MissingEventName)
        );
        assert_eq!(
            Event::from_fields(&[]),
            Err(EventDecodeError::MissingEventName)
        );
        let err = Event::from_fields(&pairs(&["event", "completed", "jobId", "1"]))
            .expect_err("missing returnvalue");
        assert_eq!(
            err,
            EventDecodeError::MissingField {
                event: "completed".into(),
                field: "returnvalue"
            }
        );
        assert_eq!(
            err.to_string(),
            "`completed` event has no `returnvalue` field"
        );
        let err = Event::from_fields(&pairs(&[
            "event",
            "completed",
            "jobId",
            "1",
            "returnvalue",
            "{oops",
        ]))
        .expect_err("bad json");
        assert!(matches!(
            err,
            EventDecodeError::BadField {
                field: "returnvalue",
                ..
            }
        ));
        let err = Event::from_fields(&pairs(&["event", "progress", "jobId", "1", "data", ""]))
            .expect_err("empty json");
        assert!(matches!(
            err,
            EventDecodeError::BadField { field: "data", .. }
        ));
        let err = Event::from_fields(&pairs(&["event", "delayed", "jobId", "1", "delay", "soon"]))
            .expect_err("bad delay");
        assert_eq!(
            err.to_string(),
            "`delayed` event has a bad `delay` field: expected a non-negative integer"
        );
        let err =
            Event::from_fields(&pairs(&["event", "added", "name", "x"])).expect_err("no job id");
        assert!(matches!(
            err,
            EventDecodeError::MissingField { field: "jobId", .. }
        ));
    }

    #[test]
    fn tolerated_input() {
        // integral floats, extra fields, event pair not first
        let event = Event::from_fields(&pairs(&[
            "jobId",
            "4",
            "event",
            "delayed",
            "delay",
            "1795325790083.0",
            "extra",
            "x",
        ]))
        .expect("decodes");
        assert_eq!(
            event,
            Event::Delayed {
                job_id: "4".into(),
                delay: 1_795_325_790_083
            }
        );
        let event =
            Event::from_fields(&pairs(&["event", "cleaned", "count", "1e1"])).expect("decodes");
        assert_eq!(event, Event::Cleaned { count: 10 });
    }

    #[test]
    fn custom_events() {
        let fields = pairs(&["event", "my-event", "jobId", "3", "a", "b"]);
        let event = Event::from_fields(&fields).expect("decodes");
        assert_eq!(
            event,
            Event::Other {
                name: "my-event".into(),
                fields: pairs(&["jobId", "3", "a", "b"])
            }
        );
        assert_eq!(event.job_id(), Some("3"));
        assert_eq!(event.to_fields(), fields);
    }

    #[test]
    fn job_ids() {
        assert_eq!(Event::Drained.job_id(), None);
        assert_eq!(Event::Stalled { job_id: "s".into() }.job_id(), Some("s"));
    }
}
