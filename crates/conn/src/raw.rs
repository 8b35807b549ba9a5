//! The socket-level connection a link holds: one multiplexed connection, or a cluster
//! connection that routes each command to its slot's node (following `MOVED`/`ASK`,
//! retrying `TRYAGAIN`/`CLUSTERDOWN`).

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// One of the two connection kinds, used through redis-rs' `ConnectionLike`.
#[derive(Clone)]
pub(crate) enum RawConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RawConn {
    /// Whether this is a cluster client (many nodes behind one handle).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, RawConn::Cluster(_))
    }

    /// `PING` to see whether the link still works: the server for a single connection, any
    /// one node for a cluster (redis-rs would send a plain `PING` to every master, which
    /// fails while one of them is being failed over even though the link is fine).
    pub(crate) async fn probe(&self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self.clone() {
            RawConn::Single(mut c) => ping.query_async::<()>(&mut c).await,
            RawConn::Cluster(mut c) => c
                .route_command(ping, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await
                .map(|_| ()),
        }
    }
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RawConn::Single(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RawConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConn::Single(c) => c.get_db(),
            RawConn::Cluster(c) => c.get_db(),
        }
    }
}
