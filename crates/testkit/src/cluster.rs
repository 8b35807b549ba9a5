//! A real Redis Cluster: three masters and three replicas on loopback ports, created with
//! `redis-cli --cluster create`, each process started (and killed) by its own PID.
//!
//! The fault operations of the reliability plan's scenario D2 live here: `kill -9` of a
//! node by the PID this kit spawned ([`ClusterTopology::kill9`]), a coordinated
//! `CLUSTER FAILOVER` on a replica ([`ClusterTopology::failover`]), and waiting until a
//! key's slot is served by a live master again ([`ClusterTopology::wait_slot_master`]).

use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::server::RedisServer;

/// `cluster-node-timeout` of every node, in milliseconds: a master that does not answer for
/// this long is flagged as failing, and its replica is promoted (about 4.6 s on the project's
/// machine from `kill -9` to a new master).
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

/// Six nodes, `cluster-node-timeout 2000`.
#[derive(Debug)]
pub struct ClusterTopology {
    /// The nodes (the first three start as masters).
    pub nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`, as far as the kit needs it.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    myself: bool,
    master: bool,
    failed: bool,
    /// The master's id, for a replica.
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // `127.0.0.1:7000@17000` (the bus port after `@`).
            let addr = f[1].split('@').next()?;
            let port = addr.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

impl ClusterTopology {
    /// Starts six nodes, creates the cluster (each of the three masters gets one replica)
    /// and waits for `cluster_state:ok` everywhere and for every replica to be in sync, so
    /// that a failover can promote it at once.
    pub fn start() -> io::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", &CLUSTER_NODE_TIMEOUT_MS.to_string())
                    // A replica promotes itself whatever the age of its data (the default
                    // factor 10 refuses when the link was down for long; ours never is), and
                    // never refuses a failover.
                    .config("cluster-replica-validity-factor", "0")
                    .config("cluster-replica-no-failover", "no")
                    .start()?,
            );
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend([
            "--cluster-replicas".into(),
            "1".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("running redis-cli (package redis-tools): {e}"),
                )
            })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let t = Self { nodes };
        t.wait_ok(Duration::from_secs(30))?;
        t.wait_replicas_in_sync(Duration::from_secs(30))?;
        Ok(t)
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let ok = self.live().all(|i| {
                self.nodes[i]
                    .admin(&["CLUSTER", "INFO"])
                    .map(|i| i.contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if ok {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "cluster not ok"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live replica reports `master_link_status:up` and has caught up
    /// with its master's replication offset.
    pub fn wait_replicas_in_sync(&self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let synced = self.live().all(|i| {
                let n = &self.nodes[i];
                match n.info_field("role").ok().flatten().as_deref() {
                    Some("master") => true,
                    Some("slave") => {
                        n.info_field("master_link_status").ok().flatten().as_deref() == Some("up")
                            && n.info_field("master_sync_in_progress")
                                .ok()
                                .flatten()
                                .as_deref()
                                == Some("0")
                    }
                    _ => false,
                }
            });
            if synced {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "replicas not in sync with their masters",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Indices of the nodes that are running.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].pid().is_some())
    }

    /// Whether node `i` is running.
    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].pid().is_some()
    }

    /// The TCP port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port()
    }

    /// The TCP ports of all six nodes, dead or alive, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The PID of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (the first three nodes as seeds).
    pub fn url(&self) -> String {
        self.url_with_seeds(&[0, 1, 2])
    }

    /// `redis+cluster://…` with the given nodes as seeds, in that order.
    pub fn url_with_seeds(&self, seeds: &[usize]) -> String {
        let seeds: Vec<String> = seeds
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Runs one command on the first live node that answers it.
    fn any_admin(&self, args: &[&str]) -> io::Result<String> {
        let mut last = io::Error::other("no live node");
        for i in self.live() {
            match self.nodes[i].admin(args) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> io::Result<u16> {
        self.any_admin(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .map_err(io::Error::other)
    }

    /// The cluster node id of node `i`, as it reports itself in `CLUSTER NODES`.
    pub fn node_id(&self, i: usize) -> io::Result<String> {
        self.view(i)?
            .into_iter()
            .find(|l| l.myself)
            .map(|l| l.id)
            .ok_or_else(|| io::Error::other("CLUSTER NODES has no `myself` line"))
    }

    /// `CLUSTER NODES` as node `i` sees it.
    fn view(&self, i: usize) -> io::Result<Vec<NodeLine>> {
        Ok(parse_nodes(&self.nodes[i].admin(&["CLUSTER", "NODES"])?))
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The index of the node that masters `key`'s slot now, by its own account: a live
    /// node whose `CLUSTER NODES` says `myself,master` and lists the slot.
    pub fn master_of(&self, key: &str) -> io::Result<usize> {
        let slot = self.slot_of(key)?;
        for i in self.live() {
            let Ok(view) = self.view(i) else { continue };
            let serves = view.iter().any(|l| {
                l.myself && l.master && l.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            });
            if serves {
                return Ok(i);
            }
        }
        Err(io::Error::other(format!("no master serves slot {slot}")))
    }

    /// The index of a live replica of the master at index `master`, as the replica itself
    /// reports it.
    pub fn replica_of(&self, master: usize) -> io::Result<usize> {
        let master_id = self.node_id(master)?;
        for i in self.live() {
            if i == master {
                continue;
            }
            let Ok(view) = self.view(i) else { continue };
            let follows = view
                .iter()
                .any(|l| l.myself && !l.master && l.master_id.as_deref() == Some(&master_id));
            if follows {
                return Ok(i);
            }
        }
        Err(io::Error::other(format!(
            "node {master} (port {}) has no live replica",
            self.port(master)
        )))
    }

    /// `kill -9` node `i` by the PID this kit spawned, and reaps it. Returns when the
    /// process is gone (its sockets are closed by the kernel).
    pub fn kill9(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].kill9()
    }

    /// A coordinated switchover: `CLUSTER FAILOVER` on node `replica` (a replica), then waits
    /// within `timeout` until it reports itself master. The old master becomes its replica
    /// after handing over every write it acknowledged, so nothing is lost.
    pub fn failover(&self, replica: usize, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let reply = self.nodes[replica].admin(&["CLUSTER", "FAILOVER"])?;
        if reply.trim() != "OK" {
            return Err(io::Error::other(format!(
                "CLUSTER FAILOVER answered {reply}"
            )));
        }
        loop {
            if self.nodes[replica]
                .info_field("role")
                .ok()
                .flatten()
                .as_deref()
                == Some("master")
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("node {replica} did not become master within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `key`'s slot is served by a live master other than `not` (the node that
    /// failed or was demoted), every live node agrees on that master and reports
    /// `cluster_state:ok`. Returns the new master's index and how long the wait took.
    pub fn wait_slot_master(
        &self,
        key: &str,
        not: Option<usize>,
        timeout: Duration,
    ) -> io::Result<(usize, Duration)> {
        let start = Instant::now();
        let slot = self.slot_of(key)?;
        loop {
            if let Some(m) = self.agreed_master(slot, not) {
                return Ok((m, start.elapsed()));
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no live master for slot {slot} within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn agreed_master(&self, slot: u16, not: Option<usize>) -> Option<usize> {
        let mut agreed = None;
        for i in self.live() {
            let info = self.nodes[i].admin(&["CLUSTER", "INFO"]).ok()?;
            if !info.contains("cluster_state:ok") {
                return None;
            }
            let view = self.view(i).ok()?;
            let owner = view.iter().find(|l| {
                l.master && !l.failed && l.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })?;
            let idx = self.index_of_port(owner.port)?;
            if Some(idx) == not || !self.is_alive(idx) || agreed.is_some_and(|a| a != idx) {
                return None;
            }
            agreed = Some(idx);
        }
        agreed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
b2 127.0.0.1:7001@17001 slave,fail a1 0 0 1 connected\n\
c3 127.0.0.1:7002@17002 master - 0 0 2 connected 5461 5462-10922 [5463->-a1]\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].myself && nodes[0].master && !nodes[0].failed);
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert_eq!(nodes[1].port, 7001);
        assert!(nodes[1].failed && !nodes[1].master);
        assert_eq!(nodes[1].master_id.as_deref(), Some("a1"));
        assert_eq!(nodes[2].slots, vec![(5461, 5461), (5462, 10922)]);
        assert_eq!(nodes[2].id, "c3");
    }
}
