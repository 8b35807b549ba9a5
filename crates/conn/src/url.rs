//! URL parsing for [`RedisOptions::from_url`](crate::RedisOptions::from_url).

use std::path::PathBuf;

use url::Url;

use crate::error::{Error, Result};
use crate::options::{Endpoint, RedisOptions, TlsOptions};

/// Removes credentials from a URL for use in messages.
pub(crate) fn redact(raw: &str) -> String {
    let raw = &redact_query_password(raw);
    match Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("<redacted>"));
            }
            u.to_string()
        }
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}<redacted>{}", &raw[..s + 3], &raw[at..]),
            _ => raw.to_owned(),
        },
    }
}

/// Hides the value of a `sentinel_password` query parameter.
fn redact_query_password(raw: &str) -> String {
    const KEY: &str = "sentinel_password=";
    match raw.find(KEY) {
        Some(i) => {
            let start = i + KEY.len();
            let end = raw[start..].find('&').map_or(raw.len(), |e| start + e);
            format!("{}<redacted>{}", &raw[..start], &raw[end..])
        }
        None => raw.to_owned(),
    }
}

fn invalid(raw: &str, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: redact(raw),
        reason: reason.into(),
    }
}

fn decode(raw: &str, s: &str) -> Result<String> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| invalid(raw, "cannot decode percent-encoding"))
        .map(|v| {
            // form decoding turns '+' into ' '; undo that for credentials
            if s.contains('+') {
                v.replace(' ', "+")
            } else {
                v
            }
        })
}

/// `redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db]
/// [?sentinel_password=..&client_name=..&db=..]`: the user and password are the master's.
fn parse_sentinel(raw: &str, rest: &str) -> Result<RedisOptions> {
    let mut opts = RedisOptions::default();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (auth, hosts_and_path) = match main.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, main),
    };
    if let Some(a) = auth {
        let (user, pass) = a.split_once(':').unwrap_or((a, ""));
        if !user.is_empty() {
            opts.username = Some(decode(raw, user)?);
        }
        if !pass.is_empty() {
            opts.password = Some(decode(raw, pass)?);
        }
    }
    let (hosts, path) = hosts_and_path
        .split_once('/')
        .ok_or_else(|| invalid(raw, "a sentinel URL needs the master name: redis+sentinel://host:port,host:port/master-name"))?;
    let mut sentinels = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>()
                    .map_err(|_| invalid(raw, format!("invalid port in sentinel `{h}`")))?,
            ),
            None => (h, 26379),
        };
        if port == 0 || host.is_empty() {
            return Err(invalid(raw, format!("invalid sentinel `{h}`")));
        }
        sentinels.push((host.to_owned(), port));
    }
    if sentinels.is_empty() {
        return Err(invalid(raw, "no sentinels given"));
    }
    let mut parts = path.split('/');
    let master_name = parts.next().unwrap_or_default().to_owned();
    if master_name.is_empty() {
        return Err(invalid(raw, "missing master name"));
    }
    if let Some(db) = parts.next().filter(|d| !d.is_empty()) {
        opts.db = db
            .parse()
            .map_err(|_| invalid(raw, format!("database `{db}` is not a number")))?;
    }
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "sentinel_password" => opts.sentinel_password = Some(v.into_owned()),
            "client_name" | "name" => opts.client_name = Some(v.into_owned()),
            "db" => {
                opts.db = v
                    .parse()
                    .map_err(|_| invalid(raw, format!("database `{v}` is not a number")))?
            }
            other => return Err(invalid(raw, format!("unknown parameter `{other}`"))),
        }
    }
    opts.endpoint = Endpoint::Sentinel {
        sentinels,
        master_name,
    };
    opts.validate()?;
    Ok(opts)
}

/// `redis+cluster://[[user]:password@]host:port[,host:port...]` (seed nodes).
fn parse_cluster(raw: &str, rest: &str) -> Result<RedisOptions> {
    let mut opts = RedisOptions::default();
    let main = rest
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let (auth, hosts) = match main.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, main),
    };
    if let Some(a) = auth {
        let (user, pass) = a.split_once(':').unwrap_or((a, ""));
        if !user.is_empty() {
            opts.username = Some(decode(raw, user)?);
        }
        if !pass.is_empty() {
            opts.password = Some(decode(raw, pass)?);
        }
    }
    let mut seeds = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = h
            .rsplit_once(':')
            .ok_or_else(|| invalid(raw, format!("seed `{h}` needs a port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(raw, format!("invalid port in seed `{h}`")))?;
        seeds.push((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        ));
    }
    if seeds.is_empty() {
        return Err(invalid(raw, "no seed nodes given"));
    }
    opts.endpoint = Endpoint::Cluster { seeds };
    opts.validate()?;
    Ok(opts)
}

pub(crate) fn parse(raw: &str) -> Result<RedisOptions> {
    if let Some(rest) = raw.strip_prefix("redis+sentinel://") {
        return parse_sentinel(raw, rest);
    }
    if let Some(rest) = raw.strip_prefix("redis+cluster://") {
        return parse_cluster(raw, rest);
    }
    let url = Url::parse(raw).map_err(|e| invalid(raw, e.to_string()))?;
    let mut opts = RedisOptions::default();
    let unix = match url.scheme() {
        "redis" => false,
        "rediss" => {
            opts.tls = Some(TlsOptions::default());
            false
        }
        "redis+unix" | "unix" => true,
        other => {
            return Err(invalid(
                raw,
                format!("unknown scheme `{other}`; use redis://, rediss://, redis+unix://, redis+sentinel:// or redis+cluster://"),
            ))
        }
    };
    if !url.username().is_empty() {
        opts.username = Some(decode(raw, url.username())?);
    }
    if let Some(p) = url.password() {
        opts.password = Some(decode(raw, p)?);
    }
    if unix {
        let path = url.path();
        if path.is_empty() || path == "/" {
            return Err(invalid(raw, "a unix socket URL needs a path"));
        }
        opts.endpoint = Endpoint::Unix {
            path: PathBuf::from(path),
        };
    } else {
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(invalid(raw, "missing host")),
        };
        if host.is_empty() {
            return Err(invalid(raw, "missing host"));
        }
        let port = url.port().unwrap_or(6379);
        if port == 0 {
            return Err(invalid(raw, "port must be between 1 and 65535"));
        }
        opts.endpoint = Endpoint::Tcp { host, port };
        let db_path = url.path().trim_start_matches('/');
        if !db_path.is_empty() {
            opts.db = db_path
                .parse()
                .map_err(|_| invalid(raw, format!("database `{db_path}` is not a number")))?;
        }
    }
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "db" => {
                opts.db = v
                    .parse()
                    .map_err(|_| invalid(raw, format!("database `{v}` is not a number")))?
            }
            "client_name" | "name" => opts.client_name = Some(v.into_owned()),
            "tls_ca" | "tls_cert" | "tls_key" | "tls_server_name" => {
                let Some(tls) = opts.tls.as_mut() else {
                    return Err(invalid(raw, format!("`{k}` needs a rediss:// URL")));
                };
                match k.as_ref() {
                    "tls_ca" => tls.ca_file = Some(PathBuf::from(v.as_ref())),
                    "tls_cert" => tls.cert_file = Some(PathBuf::from(v.as_ref())),
                    "tls_key" => tls.key_file = Some(PathBuf::from(v.as_ref())),
                    _ => tls.server_name = Some(v.into_owned()),
                }
            }
            other => return Err(invalid(raw, format!("unknown parameter `{other}`"))),
        }
    }
    opts.validate()?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_with_credentials_and_db() {
        let o = parse("redis://app:p%40ss@10.1.2.3:6380/4?client_name=svc").expect("valid");
        assert_eq!(
            o.endpoint,
            Endpoint::Tcp {
                host: "10.1.2.3".into(),
                port: 6380
            }
        );
        assert_eq!(o.username.as_deref(), Some("app"));
        assert_eq!(o.password.as_deref(), Some("p@ss"));
        assert_eq!(o.db, 4);
        assert_eq!(o.client_name.as_deref(), Some("svc"));
        assert!(o.tls.is_none());
    }

    #[test]
    fn parses_password_only_and_defaults() {
        let o = parse("redis://:secret@localhost").expect("valid");
        assert_eq!(o.username, None);
        assert_eq!(o.password.as_deref(), Some("secret"));
        assert_eq!(
            o.endpoint,
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 6379
            }
        );
    }

    #[test]
    fn parses_ipv6_tls_and_unix() {
        let o = parse("rediss://[::1]:7000?tls_ca=/tmp/ca.pem").expect("valid");
        assert_eq!(
            o.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 7000
            }
        );
        assert_eq!(
            o.tls.and_then(|t| t.ca_file),
            Some(PathBuf::from("/tmp/ca.pem"))
        );
        let o = parse("redis+unix:///run/redis.sock?db=2").expect("valid");
        assert_eq!(
            o.endpoint,
            Endpoint::Unix {
                path: "/run/redis.sock".into()
            }
        );
        assert_eq!(o.db, 2);
    }

    #[test]
    fn parses_sentinel_urls() {
        let o = parse(
            "redis+sentinel://:mpw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2?sentinel_password=spw",
        )
        .expect("valid");
        assert_eq!(
            o.endpoint,
            Endpoint::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)],
                master_name: "mymaster".into()
            }
        );
        assert_eq!(o.password.as_deref(), Some("mpw"));
        assert_eq!(o.sentinel_password.as_deref(), Some("spw"));
        assert_eq!(o.db, 2);
        let o = parse("redis+sentinel://s1/m").expect("default port");
        assert!(
            matches!(o.endpoint, Endpoint::Sentinel { ref sentinels, .. } if sentinels[0].1 == 26379)
        );
        for bad in [
            "redis+sentinel://s1:1",
            "redis+sentinel:///m",
            "redis+sentinel://s1:99999/m",
            "redis+sentinel://s1:1/",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("redis+sentinel://u:secret@s1:1")
            .expect_err("no master")
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        let err = parse("redis+sentinel://s1:1/m?sentinel_password=hush&bogus=1")
            .expect_err("unknown parameter")
            .to_string();
        assert!(!err.contains("hush"), "{err}");
    }

    #[test]
    fn rejects_bad_urls_with_clear_errors() {
        for (url, needle) in [
            ("http://localhost", "unknown scheme `http`"),
            ("redis://localhost:70000", "invalid port"),
            ("redis://localhost:0", "port must be between"),
            ("redis://localhost/abc", "not a number"),
            ("not a url", "relative URL"),
            ("redis+unix://", "needs a path"),
            ("redis://h?tls_ca=/x", "needs a rediss"),
            ("redis://h?bogus=1", "unknown parameter"),
        ] {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        let err = parse("redis://u:topsecret@h:99999")
            .expect_err("bad port")
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
