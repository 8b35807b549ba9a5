//! A real Redis Cluster: three masters and three replicas on loopback ports, created with
//! `redis-cli --cluster create`, each process started (and killed) by its own PID.

use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::server::RedisServer;

/// Six nodes, `cluster-node-timeout 2000`.
#[derive(Debug)]
pub struct ClusterTopology {
    /// The nodes (the first three start as masters).
    pub nodes: Vec<RedisServer>,
}

impl ClusterTopology {
    /// Starts six nodes, creates the cluster and waits for `cluster_state:ok` everywhere.
    pub fn start() -> io::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", "2000")
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
        Ok(t)
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                n.admin(&["CLUSTER", "INFO"])
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

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (the first three nodes as seeds).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .take(3)
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The index of the node that masters `key`'s slot now.
    pub fn master_of(&self, key: &str) -> io::Result<usize> {
        let slot: u16 = self.nodes[0]
            .admin(&["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(io::Error::other)?;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pid().is_none() {
                continue;
            }
            let nodes = n.admin(&["CLUSTER", "NODES"])?;
            for line in nodes.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 8 && f[2].contains("myself") && f[2].contains("master") {
                    for range in &f[8..] {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                            if (a..=b).contains(&slot) {
                                return Ok(i);
                            }
                        }
                    }
                }
            }
        }
        Err(io::Error::other(format!("no master serves slot {slot}")))
    }
}
