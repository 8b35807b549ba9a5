//! The Redis commands bullpen needs, for an ACL user that may run nothing else.
//!
//! Scripts run with their caller's permissions, so the list includes the commands used
//! inside our Lua scripts as well as those sent directly. Keys: the queue prefix (`~bull:*`
//! by default). A test builds an ACL user from this list and runs a producer, a worker and
//! an events listener with it, so the list cannot fall behind the code.

/// Every command (and `CLIENT`/`XINFO` subcommand) bullpen's crates send or run in scripts.
pub const REQUIRED_COMMANDS: &[&str] = &[
    // connection handshake and checks
    "auth",
    "client|setname",
    "info",
    "ping",
    "role",
    "select",
    // scripts and transactions
    "eval",
    "evalsha",
    "multi",
    "exec",
    // strings and keys
    "del",
    "exists",
    "get",
    "mget",
    "incr",
    "persist",
    "pexpire",
    "pttl",
    "set",
    // hashes
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hmget",
    "hset",
    // lists
    "llen",
    "lpos",
    "lpush",
    "lrange",
    "lrem",
    "ltrim",
    "rpop",
    "rpoplpush",
    "rpush",
    // sets
    "sadd",
    "scard",
    "smembers",
    "srem",
    // sorted sets
    "bzpopmin",
    "zadd",
    "zcard",
    "zcount",
    "zpopmin",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zrevrange",
    "zrevrangebyscore",
    "zscore",
    // streams
    "xadd",
    "xinfo|stream",
    "xrange",
    "xread",
    "xrevrange",
    "xtrim",
];

/// An `ACL SETUSER` rule list granting exactly [`REQUIRED_COMMANDS`] on keys under `prefix`.
pub fn acl_rules(prefix: &str) -> String {
    let mut rules = format!("resetkeys ~{prefix}:* resetchannels -@all");
    for c in REQUIRED_COMMANDS {
        rules.push_str(" +");
        rules.push_str(c);
    }
    rules
}
