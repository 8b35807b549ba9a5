//! A bb8 pool of supervised connections, for services that want several sockets.
//!
//! Each pooled [`Connection`] is itself supervised (it reconnects by itself), so the pool
//! only replaces a connection whose supervisor has ended.

use crate::client::Connection;
use crate::error::Error;
use crate::events::ConnState;
use crate::options::RedisOptions;

/// bb8 manager that makes supervised connections.
#[derive(Clone, Debug)]
pub struct PoolManager {
    opts: RedisOptions,
}

impl PoolManager {
    /// A manager that connects with `opts`.
    pub fn new(opts: RedisOptions) -> Self {
        Self { opts }
    }
}

/// A pool of supervised connections.
pub type Pool = bb8::Pool<PoolManager>;

impl bb8::ManageConnection for PoolManager {
    type Connection = Connection;
    type Error = Error;

    async fn connect(&self) -> Result<Connection, Error> {
        Connection::connect(self.opts.clone()).await
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), Error> {
        conn.ping().await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.state() == ConnState::Ended
    }
}
