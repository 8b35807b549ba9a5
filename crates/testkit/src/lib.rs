//! `bullpen-testkit`: what bullpen's tests stand on. Not published.
//!
//! * [`RedisServer`]: a real `redis-server` on a random loopback port in a temporary
//!   directory, with AOF, password, ACL users, a unix socket and `maxmemory-policy` as
//!   options. It can be killed with `kill -9` and restarted on the same port and directory,
//!   and stopped and continued with SIGSTOP and SIGCONT, always by its own PID. It is killed
//!   on drop.
//! * [`ClusterTopology`]: a real Redis Cluster of 3 masters and 3 replicas
//!   (`cluster-node-timeout 2000`), with `kill -9` of a node by its PID, `CLUSTER FAILOVER` on
//!   a replica, and waits until a slot has a live master again.
//! * [`FaultProxy`]: a TCP proxy with the modes pass, refuse, reset, black-hole and latency.
//! * [`FakeServer`]: scripted peers for what a real server cannot show (old versions, a
//!   port where something that is not Redis answers).
//! * [`eventually`]: wait for a condition with a deadline, never a fixed sleep.
//!
//! ```no_run
//! # async fn t() -> std::io::Result<()> {
//! let mut server = bullpen_testkit::RedisServer::builder().aof().start()?;
//! server.kill9()?;
//! server.restart()?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod certs;
mod cluster;
mod fake;
pub mod node;
mod proxy;
mod sentinel;
mod server;

use std::future::Future;
use std::time::{Duration, Instant};

pub use cluster::{ClusterTopology, CLUSTER_NODE_TIMEOUT_MS};
pub use fake::{FakeBehaviour, FakeServer};
pub use proxy::{FaultProxy, ProxyMode};
pub use sentinel::{SentinelTopology, MASTER_NAME};
pub use server::{
    encode, free_port, read_reply, redis_server_binary, RedisServer, RedisServerOptions,
};

/// Polls `condition` every 20 ms until it is true or `deadline` has passed. Returns how long
/// it took, or an error naming the deadline.
pub async fn eventually<F, Fut>(mut condition: F, deadline: Duration) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return Err(format!("condition not met within {deadline:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
