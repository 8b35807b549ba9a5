//! Running our Lua scripts: `EVALSHA` first, and on `NOSCRIPT` (after a restart, a failover
//! or `SCRIPT FLUSH`) `EVAL` with the body, which also caches it again.

use std::sync::OnceLock;

use bullpen_conn::redis::{self, FromRedisValue, ToRedisArgs};
use bullpen_conn::Connection;

use crate::error::{Error, Result};

/// One Lua script with its SHA-1, computed once.
#[derive(Debug)]
pub struct Script {
    name: &'static str,
    source: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    /// A script named `name` with this body.
    pub const fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            sha: OnceLock::new(),
        }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// SHA-1 of the body, as `EVALSHA` wants it.
    pub fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| redis::Script::new(self.source).get_hash().to_owned())
    }

    /// Runs the script with `keys` and `args`. On a lost connection the call is sent again
    /// once reconnected, as [`Connection::query`] does.
    pub async fn run<T: FromRedisValue>(
        &self,
        conn: &Connection,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> Result<T> {
        self.run_with(conn, keys, args, true).await
    }

    /// Runs the script at most once: if the connection breaks after the call may have reached
    /// the server, the call fails (applied: unknown) instead of being sent again. For scripts
    /// whose second run would not be a no-op, such as an add with an automatic id.
    pub async fn run_at_most_once<T: FromRedisValue>(
        &self,
        conn: &Connection,
        keys: &[String],
        args: &[impl ToRedisArgs],
    ) -> Result<T> {
        self.run_with(conn, keys, args, false).await
    }

    async fn run_with<T: FromRedisValue>(
        &self,
        conn: &Connection,
        keys: &[String],
        args: &[impl ToRedisArgs],
        resend: bool,
    ) -> Result<T> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha()).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(a);
        }
        let first = if resend {
            conn.query::<T>(&cmd).await
        } else {
            conn.query_at_most_once::<T>(&cmd).await
        };
        match first {
            Err(e) if e.server_code() == Some("NOSCRIPT") => {
                tracing::debug!(script = self.name, "NOSCRIPT: sending the body");
                let mut eval = redis::cmd("EVAL");
                eval.arg(self.source).arg(keys.len()).arg(keys);
                for a in args {
                    eval.arg(a);
                }
                let second = if resend {
                    conn.query::<T>(&eval).await
                } else {
                    conn.query_at_most_once::<T>(&eval).await
                };
                second.map_err(|source| Error::Redis {
                    script: self.name,
                    source,
                })
            }
            other => other.map_err(|source| Error::Redis {
                script: self.name,
                source,
            }),
        }
    }
}

macro_rules! script {
    ($ident:ident, $file:literal) => {
        /// The script `lua/` + its file name.
        pub static $ident: $crate::script::Script =
            $crate::script::Script::new($file, include_str!(concat!("../lua/", $file, ".lua")));
    };
}

/// Like `script!`, with `lua/lib/common.lua` prepended (shared helpers, prefixed `bp_`).
macro_rules! script_with_lib {
    ($ident:ident, $file:literal) => {
        /// The script `lua/` + its file name, with the common helpers.
        pub static $ident: $crate::script::Script = $crate::script::Script::new(
            $file,
            concat!(
                include_str!("../lua/lib/common.lua"),
                include_str!(concat!("../lua/", $file, ".lua"))
            ),
        );
    };
}

script_with_lib!(ADD_JOB, "add_job");
script_with_lib!(DRAIN, "drain");
script_with_lib!(CLEAN, "clean");
script_with_lib!(OBLITERATE, "obliterate");
script_with_lib!(MOVE_JOBS_TO_WAIT, "move_jobs_to_wait");
script_with_lib!(REPROCESS_JOB, "reprocess_job");
script_with_lib!(CHANGE_PRIORITY, "change_priority");
script_with_lib!(CHANGE_DELAY, "change_delay");
script_with_lib!(PROMOTE, "promote");
script!(PAUSE, "pause");
script!(REMOVE_JOB, "remove_job");
script!(JOB_STATE, "job_state");
script!(UPDATE_PROGRESS, "update_progress");
script!(ADD_LOG, "add_log");
script!(UPDATE_DATA, "update_data");
script_with_lib!(MOVE_TO_ACTIVE, "move_to_active");
script_with_lib!(MOVE_TO_FINISHED, "move_to_finished");
script_with_lib!(COMPLETE_MANY, "complete_many");
script_with_lib!(RETRY_JOB, "retry_job");
script_with_lib!(MOVE_TO_WAIT_FRONT, "move_to_wait_front");
script!(EXTEND_LOCKS, "extend_locks");
script_with_lib!(MOVE_STALLED_JOBS_TO_WAIT, "move_stalled_jobs_to_wait");
script!(READ_EVENTS, "read_events");
