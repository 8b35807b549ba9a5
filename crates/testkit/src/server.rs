//! A real `redis-server` on a random loopback port in its own temporary directory.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct RedisServerOptions {
    aof: bool,
    password: Option<String>,
    acl_users: Vec<(String, String, String)>,
    unix_socket: bool,
    maxmemory_policy: Option<String>,
    tls: Option<bool>,
    extra: Vec<(String, String)>,
}

impl RedisServerOptions {
    /// AOF on, with `appendfsync everysec`.
    pub fn aof(mut self) -> Self {
        self.aof = true;
        self
    }
    /// `requirepass`.
    pub fn password(mut self, p: &str) -> Self {
        self.password = Some(p.into());
        self
    }
    /// An ACL user with a password and ACL rules such as `~* &* +@all`.
    pub fn acl_user(mut self, name: &str, password: &str, rules: &str) -> Self {
        self.acl_users
            .push((name.into(), password.into(), rules.into()));
        self
    }
    /// Also listen on a unix socket in the server's directory.
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }
    /// Also listen with TLS on a second port, with a CA, server and client certificate made
    /// at start-up by `openssl`. `require_client_cert` turns on mutual TLS.
    pub fn tls(mut self, require_client_cert: bool) -> Self {
        self.tls = Some(require_client_cert);
        self
    }
    /// `maxmemory-policy`.
    pub fn maxmemory_policy(mut self, p: &str) -> Self {
        self.maxmemory_policy = Some(p.into());
        self
    }
    /// Any other `redis.conf` directive.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }
    /// Starts the server.
    pub fn start(self) -> io::Result<RedisServer> {
        RedisServer::start_with(self)
    }
}

/// A `redis-server` process this test started. Killed (by its own PID) on drop.
#[derive(Debug)]
pub struct RedisServer {
    opts: RedisServerOptions,
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The `redis-server` binary: `$BULLPEN_REDIS_SERVER`, or `redis-server` on the PATH.
pub fn redis_server_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BULLPEN_REDIS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "redis-server not found on PATH: install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu) or set BULLPEN_REDIS_SERVER",
            )
        })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// A plain server with default options.
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// Options for a server.
    pub fn builder() -> RedisServerOptions {
        RedisServerOptions::default()
    }

    fn start_with(opts: RedisServerOptions) -> io::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let mut server = Self {
                opts: opts.clone(),
                port: free_port()?,
                tls_port: if opts.tls.is_some() {
                    Some(free_port()?)
                } else {
                    None
                },
                dir: tempfile::Builder::new()
                    .prefix("bullpen-redis-")
                    .tempdir()?,
                child: None,
            };
            if let Some(mutual) = opts.tls {
                crate::certs::make(server.dir.path(), mutual)?;
            }
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    fn write_config(&self) -> io::Result<PathBuf> {
        let o = &self.opts;
        let mut conf = format!(
            "port {}\nbind 127.0.0.1\ndir {}\nlogfile {}\nsave \"\"\ndaemonize no\nenable-debug-command local\nprotected-mode yes\n",
            self.port,
            self.dir.path().display(),
            self.dir.path().join("redis.log").display(),
        );
        if o.aof {
            conf.push_str("appendonly yes\nappendfsync everysec\n");
        }
        if let Some(p) = &o.password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        for (name, pass, rules) in &o.acl_users {
            conf.push_str(&format!("user {name} on >{pass} {rules}\n"));
        }
        if o.unix_socket {
            conf.push_str(&format!(
                "unixsocket {}\nunixsocketperm 700\n",
                self.socket_path().display()
            ));
        }
        if let (Some(tls_port), Some(mutual)) = (self.tls_port, o.tls) {
            let d = self.dir.path();
            conf.push_str(&format!(
                "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display(),
                d.join("ca.crt").display(),
                if mutual { "yes" } else { "no" },
            ));
        }
        if let Some(p) = &o.maxmemory_policy {
            conf.push_str(&format!("maxmemory-policy {p}\n"));
        }
        for (k, v) in &o.extra {
            conf.push_str(&format!("{k} {v}\n"));
        }
        let path = self.dir.path().join("redis.conf");
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    fn spawn(&mut self) -> io::Result<()> {
        self.spawn_process()?;
        self.wait_ready(Duration::from_secs(10))
    }

    fn spawn_process(&mut self) -> io::Result<()> {
        let conf = self.write_config()?;
        let child = Command::new(redis_server_binary()?)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server answers `PING` and `INFO` shows `loading:0`.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(io::Error::other(format!(
                        "redis-server exited with {status}: {}",
                        self.log_tail()
                    )));
                }
            }
            if self.admin(&["PING"]).is_ok_and(|r| r == "PONG")
                && self.info_field("loading").ok().flatten().as_deref() == Some("0")
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server not ready: {}", self.log_tail()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (no credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port, when TLS is on.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Paths of the CA certificate, client certificate and client key (TLS only).
    pub fn tls_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.dir.path();
        (d.join("ca.crt"), d.join("client.crt"), d.join("client.key"))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the unix socket (when enabled).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: Signal) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("server is not running"))?;
        let pid = i32::try_from(pid).map_err(io::Error::other)?;
        kill(Pid::from_raw(pid), sig).map_err(io::Error::other)
    }

    /// `kill -9` the server (by its PID) and reap it.
    pub fn kill9(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            self.signal(Signal::SIGKILL)?;
        }
        if let Some(mut c) = self.child.take() {
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and directory (AOF is replayed if on).
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the server again without waiting for it to finish loading its dataset: returns
    /// as soon as it answers `PING`, with `PONG` or with a `LOADING` error.
    pub fn restart_no_wait(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        self.spawn_process()?;
        let start = Instant::now();
        let up = |r: io::Result<String>| match r {
            Ok(pong) => pong == "PONG",
            Err(e) => e.to_string().starts_with("LOADING"),
        };
        while !up(self.admin(&["PING"])) {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not answer PING",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGSTOP: the server freezes, sockets stay open.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> io::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Runs one command on a fresh admin connection (authenticated with the server's
    /// password) and returns the reply flattened to text; error replies become `Err`.
    pub fn admin(&self, args: &[&str]) -> io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        if let Some(p) = &self.opts.password {
            s.write_all(&encode(&["AUTH", p]))?;
            read_reply(&mut r)?;
        }
        s.write_all(&encode(args))?;
        read_reply(&mut r)
    }

    /// Reads one `INFO` field.
    pub fn info_field(&self, field: &str) -> io::Result<Option<String>> {
        let info = self.admin(&["INFO"])?;
        Ok(info.lines().find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        }))
    }

    /// `connected_clients`, not counting the admin connection that asks.
    pub fn connected_clients(&self) -> io::Result<u64> {
        let n: u64 = self
            .info_field("connected_clients")?
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("no connected_clients in INFO"))?;
        Ok(n.saturating_sub(1))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP2 reply, flattening arrays to newline-separated text.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (tag, rest) = line.split_at(1.min(line.len()));
    match tag {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(rest.to_owned())),
        "$" => {
            let n: i64 = rest.parse().map_err(io::Error::other)?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; usize::try_from(n).map_err(io::Error::other)? + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(buf.len() - 2);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(io::Error::other)?;
            let mut parts = Vec::new();
            for _ in 0..n.max(0) {
                parts.push(read_reply(r)?);
            }
            Ok(parts.join("\n"))
        }
        _ => Err(io::Error::other(format!("not RESP: {line}"))),
    }
}
