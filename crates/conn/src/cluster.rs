//! Redis Cluster: dialing a cluster client that survives the loss of any node.
//!
//! Every dial (the first connect and every rebuild after a node died or a failover) seeds
//! from *every node known so far* (the whole topology learnt on the last successful dial,
//! replicas included) and then from the configured seeds, so that a dead seed never stops
//! a reconnect while another node is alive. Each candidate gets a checked handshake of its
//! own (AUTH, `INFO`, the server checks) on a short-lived socket, all at once; the redis-rs
//! cluster client is then built over the candidates that answered, and the topology it sees
//! is remembered for the next dial. A silent node (a dead host) costs at most a share of
//! `connect_timeout`, never the whole dial.
//!
//! Inside a client, redis-rs routes each command to its slot's node, follows `MOVED` (which
//! rebuilds its slot map) and `ASK`, and retries `TRYAGAIN`/`CLUSTERDOWN` a few times with a
//! short backoff. What it cannot absorb comes back to the supervisor (`client.rs`), which
//! rebuilds the client from the known nodes and sends the command again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dial::Dialed;
use crate::error::{Error, Result};
use crate::info::ServerInfo;
use crate::options::RedisOptions;

/// How many times redis-rs itself retries a command (after `MOVED`, `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN` or a lost node) before handing the error to the supervisor.
const CLUSTER_RETRIES: u32 = 5;
/// redis-rs waits a random time in `[MIN, min(MAX, FACTOR × 2^retry)]` ms between its
/// retries: about 50, 100, 200, 400 and 500 ms at most, 1.25 s in all. Its own defaults
/// (at least 1.28 s per retry) would delay the resume after a failover by seconds.
const RETRY_WAIT_MIN_MS: u64 = 10;
const RETRY_WAIT_MAX_MS: u64 = 500;
const RETRY_WAIT_FACTOR_MS: u64 = 25;
/// Once one candidate answered, how long the others may still take: a dead node on another
/// host can hold a connect for the whole timeout, and must not hold the dial with it.
const PROBE_GRACE: Duration = Duration::from_millis(300);
/// redis-rs' per-response timeout. Our command timeouts and the blocking watchdog bound every
/// call; redis-rs must not cut a blocking command short on its own.
const NO_RESPONSE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A node's host and port.
type Node = (String, u16);

/// A node that passed the handshake, with what its `INFO` said.
type Answered = (Node, Option<ServerInfo>);
/// A node that could not be used, and why.
type Refused = (Node, Error);

/// The cluster's nodes as learnt on the last successful dial, masters first. Shared by the
/// supervisor's dials for one connection.
#[derive(Default)]
pub(crate) struct KnownNodes(Mutex<Vec<Node>>);

impl KnownNodes {
    fn get(&self) -> Vec<Node> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn set(&self, nodes: Vec<Node>) {
        if let Ok(mut v) = self.0.lock() {
            *v = nodes;
        }
    }
}

/// The nodes in `CLUSTER SLOTS`: (masters, every node with masters first), deduplicated. A
/// node that announces no address (an empty host) is reachable at `fallback_host`.
pub(crate) fn parse_slots(v: &Value, fallback_host: &str) -> (Vec<Node>, Vec<Node>) {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn node(v: &Value, fallback_host: &str) -> Option<Node> {
        let Value::Array(f) = v else { return None };
        let host = text(f.first()?)?;
        let port = match f.get(1)? {
            Value::Int(p) => u16::try_from(*p).ok()?,
            other => text(other)?.parse().ok()?,
        };
        let host = if host.is_empty() || host == "?" {
            fallback_host.to_owned()
        } else {
            host
        };
        (port != 0).then_some((host, port))
    }
    let mut masters = Vec::new();
    let mut replicas = Vec::new();
    if let Value::Array(ranges) = v {
        for r in ranges {
            let Value::Array(f) = r else { continue };
            if let Some(m) = f.get(2).and_then(|n| node(n, fallback_host)) {
                masters.push(m);
            }
            replicas.extend(f.iter().skip(3).filter_map(|n| node(n, fallback_host)));
        }
    }
    let mut seen = HashSet::new();
    masters.retain(|n| seen.insert(n.clone()));
    let mut all = masters.clone();
    all.extend(replicas.into_iter().filter(|n| seen.insert(n.clone())));
    (masters, all)
}

/// Known nodes first, then the configured seeds, each once.
fn candidates(known: &[Node], seeds: &[Node]) -> Vec<Node> {
    let mut seen = HashSet::new();
    known
        .iter()
        .chain(seeds)
        .filter(|n| seen.insert((*n).clone()))
        .cloned()
        .collect()
}

/// A checked handshake with one node on a socket of its own, closed afterwards.
async fn probe_one(opts: &RedisOptions, host: &str, port: u16) -> Result<Option<ServerInfo>> {
    let d = crate::dial::dial_tcp(opts, host, port, || {}).await?;
    d.driver.abort();
    Ok(d.server)
}

/// How long to wait for probes: until every one has ended, and in any case no longer than
/// `limit`, nor than [`PROBE_GRACE`] after the first answer when `grace` is set.
#[derive(Clone, Copy)]
struct ProbeWait {
    grace: bool,
    limit: Option<Duration>,
}

/// Probes `nodes` at once. Returns those that answered (in the order they did, with what
/// `INFO` said) and the failures; a probe still waiting when the wait ends counts as neither.
async fn probe_all(
    opts: &RedisOptions,
    nodes: &[Node],
    wait: ProbeWait,
) -> (Vec<Answered>, Vec<Refused>) {
    let mut set = JoinSet::new();
    for (host, port) in nodes.iter().cloned() {
        let opts = opts.clone();
        set.spawn(async move {
            let r = probe_one(&opts, &host, port).await;
            ((host, port), r)
        });
    }
    let mut live = Vec::new();
    let mut failed = Vec::new();
    let mut until: Option<Instant> = wait.limit.map(|l| Instant::now() + l);
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, set.join_next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => set.join_next().await,
        };
        let Some(joined) = next else { break };
        let Ok((node, r)) = joined else { continue };
        match r {
            Ok(info) => {
                live.push((node, info));
                if wait.grace {
                    let t = Instant::now() + PROBE_GRACE;
                    until = Some(until.map_or(t, |u| u.min(t)));
                }
            }
            Err(e) => failed.push((node, e)),
        }
    }
    // Dropping the set aborts the probes still waiting.
    (live, failed)
}

fn unreachable(opts: &RedisOptions, tried: &[Refused], extra: Option<String>) -> Error {
    let mut detail: Vec<String> = tried
        .iter()
        .map(|((h, p), e)| format!("{h}:{p}: {e}"))
        .collect();
    detail.extend(extra);
    Error::Connect {
        target: opts.redacted_target(),
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("no cluster node could be used ({})", detail.join("; ")),
        )),
    }
}

/// Builds a cluster client from every node known so far plus the configured `seeds`.
/// `blocking` clients never let redis-rs send a command again by itself (a blocking
/// command that may have run must not run twice); their callers handle redirections.
pub(crate) async fn dial_cluster(
    opts: &RedisOptions,
    seeds: &[Node],
    known: &KnownNodes,
    blocking: bool,
    on_socket: impl FnOnce(),
) -> Result<Dialed> {
    let tried = candidates(&known.get(), seeds);
    // Every step below gets a share of `connect_timeout`, the bound on the whole dial: a
    // node on a dead host (no reset, just silence) must not use it all up.
    let node_timeout = (opts.connect_timeout / 3).max(Duration::from_millis(100));
    let (live, failed) = probe_all(
        opts,
        &tried,
        ProbeWait {
            grace: true,
            limit: None,
        },
    )
    .await;
    // A node that refuses us for a reason waiting will not fix (password, eviction policy,
    // version) is reported as such.
    if let Some((_, e)) = failed.iter().find(|(_, e)| e.is_configuration()) {
        return Err(e.clone());
    }
    if live.is_empty() {
        return Err(unreachable(opts, &failed, None));
    }
    if !failed.is_empty() {
        let down: Vec<String> = failed
            .iter()
            .map(|((h, p), _)| format!("{h}:{p}"))
            .collect();
        tracing::info!(target_addr = %opts.redacted_target(), down = %down.join(","), "cluster nodes not answering; seeding from the others");
    }
    let initial: Vec<String> = live
        .iter()
        .map(|((h, p), _)| format!("redis://{h}:{p}"))
        .collect();
    let mut b = redis::cluster::ClusterClientBuilder::new(initial)
        .connection_timeout(node_timeout)
        .response_timeout(NO_RESPONSE_TIMEOUT)
        .retries(if blocking { 0 } else { CLUSTER_RETRIES })
        .min_retry_wait(RETRY_WAIT_MIN_MS)
        .max_retry_wait(RETRY_WAIT_MAX_MS)
        .retry_wait_formula(RETRY_WAIT_FACTOR_MS, 2);
    if let Some(u) = &opts.username {
        b = b.username(u);
    }
    if let Some(p) = &opts.password {
        b = b.password(p);
    }
    let client = b.build().map_err(|e| Error::InvalidOptions {
        field: "seeds",
        reason: format!("cannot build a cluster client: {e}"),
    })?;
    let mut conn = client
        .get_async_connection()
        .await
        .map_err(|e| unreachable(opts, &failed, Some(format!("cluster client: {e}"))))?;
    on_socket();
    // Learn the topology for the next dial.
    let slots = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await
        .map_err(|e| unreachable(opts, &failed, Some(format!("CLUSTER SLOTS: {e}"))))?;
    let fallback_host = live[0].0 .0.clone();
    let (masters, all) = parse_slots(&slots, &fallback_host);
    if all.is_empty() {
        return Err(Error::Protocol {
            target: opts.redacted_target(),
            detail: "CLUSTER SLOTS listed no node: is the cluster created?".into(),
        });
    }
    known.set(all);
    // Every master must pass the server checks; those not probed above (first dial, or a
    // node new to the topology) are checked now. One that does not answer is being failed
    // over; it is not ours to wait for.
    let probed: HashSet<&Node> = live
        .iter()
        .map(|(n, _)| n)
        .chain(failed.iter().map(|(n, _)| n))
        .collect();
    let unchecked: Vec<Node> = masters
        .iter()
        .filter(|m| !probed.contains(m))
        .cloned()
        .collect();
    let (checked, failed_now) = probe_all(
        opts,
        &unchecked,
        ProbeWait {
            grace: false,
            limit: Some(node_timeout),
        },
    )
    .await;
    if let Some((_, e)) = failed_now.iter().find(|(_, e)| e.is_configuration()) {
        return Err(e.clone());
    }
    let server = live.into_iter().chain(checked).find_map(|(_, info)| info);
    // No driver to watch: losses surface as command errors, which kick the supervisor.
    let driver = tokio::spawn(std::future::pending::<()>());
    Ok(Dialed {
        conn: crate::raw::RawConn::Cluster(conn),
        driver,
        server,
        master: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_give_masters_first_then_replicas_once() {
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 7001),
                node("127.0.0.1", 7004),
            ]),
            // A master with two ranges appears twice.
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7000),
            ]),
        ]);
        let (masters, all) = parse_slots(&v, "10.0.0.9");
        let h = |s: &str, p| (s.to_owned(), p);
        assert_eq!(masters, vec![h("127.0.0.1", 7000), h("10.0.0.9", 7001)]);
        assert_eq!(
            all,
            vec![
                h("127.0.0.1", 7000),
                h("10.0.0.9", 7001),
                h("127.0.0.1", 7003),
                h("127.0.0.1", 7004)
            ]
        );
        assert_eq!(parse_slots(&Value::Nil, "x"), (vec![], vec![]));
    }

    #[test]
    fn candidates_put_known_nodes_first_and_list_each_once() {
        let h = |p| ("127.0.0.1".to_owned(), p);
        let known = vec![h(7003), h(7000), h(7001)];
        let seeds = vec![h(7000), h(7009)];
        assert_eq!(
            candidates(&known, &seeds),
            vec![h(7003), h(7000), h(7001), h(7009)]
        );
    }
}
