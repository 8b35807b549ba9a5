//! `bullpen events`: tails a queue's events live.

use bullpen_conn::RedisOptions;
use bullpen_core::events::Event;
use bullpen_events::{EventItem, QueueEvents, QueueEventsOptions, StartAt};
use serde_json::{json, Value};

use crate::queue_cmd::{CmdResult, Target};

fn fields_json(e: &Event) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in e.to_fields().into_iter().skip(1) {
        // JSON-carrying fields stay JSON; the rest are text.
        let parsed = if k == "returnvalue" || k == "data" {
            serde_json::from_str(&v).unwrap_or(Value::String(v))
        } else {
            Value::String(v)
        };
        m.insert(k, parsed);
    }
    Value::Object(m)
}

/// One line per item: JSON with `--json`, else readable columns.
fn line(item: &EventItem, as_json: bool) -> String {
    match (item, as_json) {
        (EventItem::Event { id, event }, true) => {
            json!({"id": id, "event": event.name(), "fields": fields_json(event)}).to_string()
        }
        (EventItem::Event { id, event }, false) => {
            let rest: Vec<String> = event
                .to_fields()
                .into_iter()
                .skip(1)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{id:<18} {:<18} {}", event.name(), rest.join(" "))
        }
        (EventItem::Malformed { id, error }, true) => {
            json!({"id": id, "malformed": error.to_string()}).to_string()
        }
        (EventItem::Malformed { id, error }, false) => {
            format!("{id:<18} {:<18} {error}", "(malformed)")
        }
        (EventItem::Gap { after, resumed_at }, true) => {
            json!({"gap": {"after": after, "resumedAt": resumed_at}}).to_string()
        }
        (EventItem::Gap { after, resumed_at }, false) => {
            format!(
                "{:<18} {:<18} events after {after} were trimmed; resuming at {resumed_at}",
                "-", "(gap)"
            )
        }
        (other, _) => format!("{other:?}"),
    }
}

/// `bullpen events`.
pub async fn events(t: &Target, queue: &str, from: Option<String>, as_json: bool) -> CmdResult<()> {
    let start = match from.as_deref() {
        None | Some("$") => StartAt::Now,
        Some("0") | Some("0-0") => StartAt::Beginning,
        Some(id) => StartAt::After(id.to_owned()),
    };
    let opts = QueueEventsOptions::default()
        .prefix(t.prefix.clone())
        .start(start);
    let mut ev = QueueEvents::new(RedisOptions::from_url(&t.url)?.blocking(), queue, opts).await?;
    let handle = ev.close_handle();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.close();
    });
    while let Some(item) = ev.next().await {
        match item {
            Ok(item) => println!("{}", line(&item, as_json)),
            Err(e) => eprintln!("bullpen events: {e} (resuming)"),
        }
    }
    Ok(())
}
