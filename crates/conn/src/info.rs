//! Facts read from `INFO`: server kind, version, role, eviction policy, loading state.

use std::collections::HashMap;
use std::fmt;

/// Which server implementation answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerKind {
    /// Redis.
    Redis,
    /// Valkey.
    Valkey,
    /// Dragonfly.
    Dragonfly,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Redis => "redis",
            ServerKind::Valkey => "valkey",
            ServerKind::Dragonfly => "dragonfly",
        })
    }
}

/// What `INFO` told us about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Server kind.
    pub kind: ServerKind,
    /// Version text as reported (`7.0.15`).
    pub version: String,
    /// `master` or `slave` (Redis' word for a replica).
    pub role: Option<String>,
    /// `maxmemory_policy`, when the memory section was readable.
    pub maxmemory_policy: Option<String>,
    /// Whether the server is still loading its dataset.
    pub loading: bool,
    /// Every `key:value` line, for checks that need more.
    pub fields: HashMap<String, String>,
}

impl ServerInfo {
    /// Parses the text of an `INFO` reply. Follows BullMQ's rules: `dragonfly_version` or
    /// `server:Dragonfly` means Dragonfly, `valkey_version` or `server_name:valkey` means
    /// Valkey, otherwise `redis_version`.
    pub fn parse(text: &str) -> Self {
        let fields: HashMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| fields.get(k).cloned();
        let server_name = get("server_name")
            .or_else(|| get("server"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (kind, version) = if let Some(v) = get("dragonfly_version") {
            (ServerKind::Dragonfly, v)
        } else if server_name == "dragonfly" {
            (
                ServerKind::Dragonfly,
                get("redis_version").unwrap_or_default(),
            )
        } else if let Some(v) = get("valkey_version") {
            (ServerKind::Valkey, v)
        } else if server_name == "valkey" {
            (ServerKind::Valkey, get("redis_version").unwrap_or_default())
        } else {
            let v = get("redis_version")
                .or_else(|| {
                    fields
                        .iter()
                        .find(|(k, _)| k.ends_with("version"))
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_default();
            (ServerKind::Redis, v)
        };
        Self {
            kind,
            version,
            role: get("role"),
            maxmemory_policy: get("maxmemory_policy"),
            loading: get("loading").as_deref() == Some("1"),
            fields,
        }
    }

    /// The version as `(major, minor, patch)`, if it parses.
    pub fn version_tuple(&self) -> Option<(u32, u32, u32)> {
        parse_version(&self.version)
    }
}

/// The `INFO` text(s) in a reply: one text from a single server, or one per node from a
/// cluster connection (which sends `INFO` to every node and answers a map).
pub(crate) fn info_texts(v: &redis::Value) -> Vec<String> {
    fn text(v: &redis::Value) -> Option<String> {
        match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => {
                Some(s.clone())
            }
            _ => None,
        }
    }
    match v {
        redis::Value::Map(pairs) => pairs.iter().filter_map(|(_, t)| text(t)).collect(),
        other => text(other).into_iter().collect(),
    }
}

/// Parses `7.0.15` (or `7.2`) into a tuple.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim().split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = it.next()?.ok()?;
    let minor = it.next().and_then(|r| r.ok()).unwrap_or(0);
    let patch = it.next().and_then(|r| r.ok()).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_info() {
        let i = ServerInfo::parse(
            "# Server\r\nredis_version:7.0.15\r\n# Replication\r\nrole:master\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\nloading:0\r\n",
        );
        assert_eq!(i.kind, ServerKind::Redis);
        assert_eq!(i.version_tuple(), Some((7, 0, 15)));
        assert_eq!(i.role.as_deref(), Some("master"));
        assert_eq!(i.maxmemory_policy.as_deref(), Some("noeviction"));
        assert!(!i.loading);
    }

    #[test]
    fn detects_valkey_and_dragonfly() {
        let v =
            ServerInfo::parse("redis_version:7.2.4\nserver_name:valkey\nvalkey_version:8.0.1\n");
        assert_eq!((v.kind, v.version.as_str()), (ServerKind::Valkey, "8.0.1"));
        let d = ServerInfo::parse("redis_version:6.2.11\ndragonfly_version:df-v1.14.0\n");
        assert_eq!(d.kind, ServerKind::Dragonfly);
        let l = ServerInfo::parse("redis_version:7.0.15\nloading:1\n");
        assert!(l.loading);
    }

    #[test]
    fn version_parsing_tolerates_suffixes() {
        assert_eq!(parse_version("6.2"), Some((6, 2, 0)));
        assert_eq!(parse_version("7.4.0-rc1"), Some((7, 4, 0)));
        assert_eq!(parse_version("garbage"), None);
    }
}
