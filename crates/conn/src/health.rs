//! Health reports for health endpoints and `bullpen doctor`.

use std::time::Duration;

use crate::events::ConnState;
use crate::info::{ServerInfo, ServerKind};

/// A point-in-time health report of a connection and its server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Health {
    /// Connection state when the report was made.
    pub state: ConnState,
    /// Round trip of one `PING`.
    pub ping_latency: Duration,
    /// Server kind.
    pub kind: ServerKind,
    /// Server version.
    pub version: String,
    /// `master` or `slave`.
    pub role: Option<String>,
    /// `maxmemory_policy`.
    pub maxmemory_policy: Option<String>,
    /// Everything `INFO` said.
    pub info: ServerInfo,
}

impl Health {
    pub(crate) fn new(state: ConnState, ping_latency: Duration, info: ServerInfo) -> Self {
        Self {
            state,
            ping_latency,
            kind: info.kind,
            version: info.version.clone(),
            role: info.role.clone(),
            maxmemory_policy: info.maxmemory_policy.clone(),
            info,
        }
    }

    /// Whether a job queue can safely use this server right now.
    pub fn is_healthy(&self) -> bool {
        self.state == ConnState::Ready
            && self.maxmemory_policy.as_deref().unwrap_or("noeviction") == "noeviction"
            && self.role.as_deref().unwrap_or("master") == "master"
    }

    /// The report as a small JSON object, for health endpoints (no serde needed).
    pub fn to_json(&self) -> String {
        fn s(v: &str) -> String {
            let mut out = String::with_capacity(v.len() + 2);
            out.push('"');
            for c in v.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        let opt = |v: &Option<String>| v.as_deref().map_or("null".to_owned(), s);
        format!(
            "{{\"healthy\":{},\"state\":{},\"ping_latency_us\":{},\"kind\":{},\"version\":{},\"role\":{},\"maxmemory_policy\":{}}}",
            self.is_healthy(),
            s(&self.state.to_string()),
            self.ping_latency.as_micros(),
            s(&self.kind.to_string()),
            s(&self.version),
            opt(&self.role),
            opt(&self.maxmemory_policy),
        )
    }
}
