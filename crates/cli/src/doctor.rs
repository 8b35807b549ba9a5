//! `bullpen doctor`: checks a server the way a production guide would.

use std::collections::HashMap;
use std::time::Duration;

use bullpen_conn::{parse_version, ServerInfo, ServerKind, MIN_REDIS_VERSION};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but not as a production guide advises.
    Warn,
    /// Jobs can be lost or bullpen will refuse the server.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub value: String,
    /// How to fix it (empty when it passes).
    pub fix: String,
}

fn check(name: &'static str, status: Status, value: String, fix: &str) -> Check {
    Check {
        name,
        status,
        value,
        fix: if status == Status::Pass {
            String::new()
        } else {
            fix.to_owned()
        },
    }
}

/// Facts gathered from the server. `config` holds what `CONFIG GET` returned, which is
/// empty when CONFIG is disabled (managed services).
pub struct Facts {
    /// Parsed `INFO`.
    pub info: ServerInfo,
    /// `CONFIG GET` results for `appendfsync` and `maxclients`.
    pub config: HashMap<String, String>,
    /// Round trips of a few `PING`s.
    pub pings: Vec<Duration>,
}

/// Evaluates every check.
pub fn evaluate(f: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    let info = &f.info;
    let (a, b, c) = MIN_REDIS_VERSION;
    let version_ok = info.kind != ServerKind::Redis
        || parse_version(&info.version).is_some_and(|v| v >= MIN_REDIS_VERSION);
    out.push(check(
        "version",
        if version_ok {
            Status::Pass
        } else {
            Status::Fail
        },
        format!("{} {}", info.kind, info.version),
        &format!("upgrade to redis {a}.{b}.{c} or newer"),
    ));

    let policy = info
        .maxmemory_policy
        .clone()
        .unwrap_or_else(|| "unknown".into());
    out.push(check(
        "maxmemory-policy",
        match policy.as_str() {
            "noeviction" => Status::Pass,
            "unknown" => Status::Warn,
            _ => Status::Fail,
        },
        policy,
        "set `maxmemory-policy noeviction` (CONFIG SET and redis.conf): any other policy can evict jobs and locks",
    ));

    let role = info.role.clone().unwrap_or_else(|| "unknown".into());
    out.push(check(
        "role",
        match role.as_str() {
            "master" => Status::Pass,
            "unknown" => Status::Warn,
            _ => Status::Fail,
        },
        role,
        "point bullpen at the master (or use Sentinel); a replica refuses writes",
    ));

    let aof = info.fields.get("aof_enabled").map(String::as_str) == Some("1");
    let fsync = f.config.get("appendfsync").cloned();
    let (status, value) = match (aof, fsync.as_deref()) {
        (false, _) => (Status::Warn, "aof off".to_owned()),
        (true, Some("everysec" | "always")) => (
            Status::Pass,
            format!("aof on, appendfsync {}", fsync.as_deref().unwrap_or("")),
        ),
        (true, Some(other)) => (Status::Warn, format!("aof on, appendfsync {other}")),
        (true, None) => (
            Status::Warn,
            "aof on, appendfsync unreadable (CONFIG disabled)".to_owned(),
        ),
    };
    out.push(check(
        "persistence",
        status,
        value,
        "set `appendonly yes` and `appendfsync everysec`: without AOF a restart loses every job since the last snapshot",
    ));

    let maxclients = f
        .config
        .get("maxclients")
        .or_else(|| info.fields.get("maxclients"))
        .and_then(|v| v.parse::<u64>().ok());
    let connected = info
        .fields
        .get("connected_clients")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (status, value) = match maxclients {
        None => (Status::Warn, "unknown".to_owned()),
        Some(m) if m < 1_000 || connected * 10 > m * 8 => {
            (Status::Warn, format!("{m} (connected {connected})"))
        }
        Some(m) => (Status::Pass, format!("{m} (connected {connected})")),
    };
    out.push(check(
        "maxclients",
        status,
        value,
        "raise `maxclients`: every worker holds 2 connections and every QueueEvents 1",
    ));

    let mut pings = f.pings.clone();
    pings.sort();
    let (status, value) = match (pings.get(pings.len() / 2), pings.last()) {
        (Some(p50), Some(max)) => (
            if *p50 > Duration::from_millis(50) {
                Status::Fail
            } else if *p50 > Duration::from_millis(5) {
                Status::Warn
            } else {
                Status::Pass
            },
            format!("p50 {:.2} ms, max {:.2} ms", ms(*p50), ms(*max)),
        ),
        _ => (Status::Fail, "no PING answered".to_owned()),
    };
    out.push(check(
        "latency",
        status,
        value,
        "run workers near redis (same zone); every job costs several round trips",
    ));
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Renders the table.
pub fn render(checks: &[Check]) -> String {
    let w_name = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let w_value = checks
        .iter()
        .map(|c| c.value.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!(
        "{:<w_name$}  {:<6}  {:<w_value$}  FIX\n",
        "CHECK", "STATUS", "VALUE"
    );
    for c in checks {
        s.push_str(&format!(
            "{:<w_name$}  {:<6}  {:<w_value$}  {}\n",
            c.name,
            c.status.label(),
            c.value,
            c.fix
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(info: &str, config: &[(&str, &str)]) -> Facts {
        Facts {
            info: ServerInfo::parse(info),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pings: vec![Duration::from_micros(200); 5],
        }
    }

    fn status(checks: &[Check], name: &str) -> Status {
        checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status)
            .expect(name)
    }

    #[test]
    fn a_production_server_passes_everything() {
        let c = evaluate(&facts(
            "redis_version:7.0.15\nrole:master\nmaxmemory_policy:noeviction\naof_enabled:1\nconnected_clients:3\n",
            &[("appendfsync", "everysec"), ("maxclients", "10000")],
        ));
        assert!(c.iter().all(|c| c.status == Status::Pass), "{}", render(&c));
        assert!(c.iter().all(|c| c.fix.is_empty()));
    }

    #[test]
    fn eviction_old_version_and_replica_fail_with_fixes() {
        let c = evaluate(&facts(
            "redis_version:6.0.9\nrole:slave\nmaxmemory_policy:allkeys-lru\naof_enabled:0\n",
            &[("maxclients", "100")],
        ));
        assert_eq!(status(&c, "version"), Status::Fail);
        assert_eq!(status(&c, "maxmemory-policy"), Status::Fail);
        assert_eq!(status(&c, "role"), Status::Fail);
        assert_eq!(status(&c, "persistence"), Status::Warn);
        assert_eq!(status(&c, "maxclients"), Status::Warn);
        let table = render(&c);
        assert!(
            table.contains("noeviction") && table.contains("appendonly yes"),
            "{table}"
        );
    }

    #[test]
    fn valkey_is_not_held_to_redis_versions_and_unknown_config_warns() {
        let c = evaluate(&facts(
            "redis_version:7.2.4\nserver_name:valkey\nvalkey_version:8.0.1\nrole:master\nmaxmemory_policy:noeviction\naof_enabled:1\n",
            &[],
        ));
        assert_eq!(status(&c, "version"), Status::Pass);
        assert_eq!(status(&c, "persistence"), Status::Warn);
        assert_eq!(status(&c, "maxclients"), Status::Warn);
    }
}
