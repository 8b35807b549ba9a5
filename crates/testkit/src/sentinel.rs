//! A real Sentinel topology: one master, one replica and three sentinels, all on loopback
//! ports, each process started (and killed) by its own PID.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, read_reply, redis_server_binary, RedisServer};

/// The name the sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

/// One master, one replica, three sentinels (quorum 2, down-after 1000 ms).
#[derive(Debug)]
pub struct SentinelTopology {
    /// The first master.
    pub master: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

fn ask(port: u16, args: &[&str]) -> io::Result<String> {
    use std::io::{BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(s.try_clone()?);
    s.write_all(&crate::server::encode(args))?;
    read_reply(&mut r)
}

impl SentinelTopology {
    /// Starts everything and waits until the sentinels know the master and its replica.
    pub fn start() -> io::Result<Self> {
        let master = RedisServer::start()?;
        let replica = RedisServer::builder()
            .config("replicaof", &format!("127.0.0.1 {}", master.port()))
            .start()?;
        let dir = tempfile::Builder::new()
            .prefix("bullpen-sentinel-")
            .tempdir()?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port()?;
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 5000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.path().display(),
                    master.port()
                ),
            )?;
            let child = Command::new(redis_server_binary()?)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            sentinels.push((port, child));
        }
        let t = Self {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        t.wait_until_known(Duration::from_secs(20))?;
        Ok(t)
    }

    fn wait_until_known(&self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let ready = self.sentinels.iter().all(|(port, _)| {
                ask(*port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                    .map(|r| r.contains("127.0.0.1"))
                    .unwrap_or(false)
                    && ask(*port, &["SENTINEL", "SENTINELS", MASTER_NAME])
                        .map(|r| r.matches("127.0.0.1").count() >= 2)
                        .unwrap_or(false)
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "sentinels did not discover the topology",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(p, _)| *p).collect()
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// Sends one command to the first sentinel (e.g. `SENTINEL FAILOVER mymaster`).
    pub fn ask_sentinel(&self, args: &[&str]) -> io::Result<String> {
        ask(self.sentinels[0].0, args)
    }

    /// The master's port as the first sentinel reports it now.
    pub fn current_master_port(&self) -> io::Result<u16> {
        let r = ask(
            self.sentinels[0].0,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        )?;
        r.lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no master address in `{r}`")))
    }
}

impl Drop for SentinelTopology {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
