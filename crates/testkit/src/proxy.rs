//! A TCP fault proxy between a client and a server: pass, refuse, reset, black-hole, added
//! latency, and "the reply to the n-th `EVALSHA <sha>` is lost after the command ran",
//! switchable at run time.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyMode {
    /// Forward everything.
    Pass,
    /// Stop listening: new connects get `ECONNREFUSED`. Live connections go on.
    Refuse,
    /// Accept, then close with RST; live connections are reset at their next byte.
    Reset,
    /// Keep every socket open and forward nothing, in either direction (a dead network).
    BlackHole,
    /// Forward everything after this delay per chunk.
    Latency(Duration),
    /// Forward everything, except that the `nth` request (1-based, counted over every
    /// connection since this mode was set) whose RESP array begins with `EVALSHA <sha>` is
    /// forwarded, and then its connection is cut (RST to both sides) as soon as the server's
    /// reply to it has arrived, without forwarding that reply: the command ran, the client
    /// never hears. Later matching requests pass. Build it with [`ProxyMode::drop_reply_to`].
    DropReplyTo {
        /// The script's SHA-1, as 40 lowercase hex digits.
        sha: [u8; 40],
        /// Which matching request loses its reply (1 = the first).
        nth: u32,
    },
}

impl ProxyMode {
    /// [`ProxyMode::DropReplyTo`] for a script SHA-1 given as text; `None` unless `sha` is 40
    /// hex digits and `nth` is at least 1.
    pub fn drop_reply_to(sha: &str, nth: u32) -> Option<Self> {
        let bytes = sha.to_ascii_lowercase().into_bytes();
        let sha: [u8; 40] = bytes.try_into().ok()?;
        (nth >= 1 && sha.iter().all(u8::is_ascii_hexdigit))
            .then_some(ProxyMode::DropReplyTo { sha, nth })
    }
}

/// State of the `DropReplyTo` mode shared by every connection of one proxy.
#[derive(Debug, Default)]
struct DropState {
    /// Matching requests seen since the mode was last set.
    matches: AtomicU32,
    /// The requests whose replies were dropped (their first arguments, as text).
    dropped: Mutex<Vec<Vec<String>>>,
}

/// A running proxy. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    mode: watch::Sender<(ProxyMode, u64)>,
    drops: Arc<DropState>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a random loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel((ProxyMode::Pass, 0));
        let drops = Arc::new(DropState::default());
        let task = tokio::spawn(accept_loop(listener, port, upstream, rx, drops.clone()));
        Ok(Self {
            port,
            mode,
            drops,
            task,
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode. Setting [`ProxyMode::DropReplyTo`] restarts its count of matching
    /// requests.
    pub fn set_mode(&self, mode: ProxyMode) {
        if matches!(mode, ProxyMode::DropReplyTo { .. }) {
            self.drops.matches.store(0, Ordering::SeqCst);
        }
        self.mode.send_modify(|m| m.0 = mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.mode.borrow().0
    }

    /// Resets (RST) every live connection now; the mode is unchanged.
    pub fn cut_all(&self) {
        self.mode.send_modify(|m| m.1 += 1);
    }

    /// The requests whose replies were dropped so far (in `DropReplyTo` mode), oldest first:
    /// each as its arguments in text (`EVALSHA`, the sha, the key count, the keys, ...; long
    /// arguments are shortened).
    pub fn dropped_replies(&self) -> Vec<Vec<String>> {
        self.drops
            .dropped
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    port: u16,
    upstream: SocketAddr,
    mut rx: watch::Receiver<(ProxyMode, u64)>,
    drops: Arc<DropState>,
) {
    loop {
        let mode = rx.borrow_and_update().0;
        if mode == ProxyMode::Refuse {
            drop(listener);
            while rx.borrow_and_update().0 == ProxyMode::Refuse {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            listener = match rebind(port).await {
                Some(l) => l,
                None => return,
            };
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let _ = client.set_nodelay(true);
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                if rx.borrow().0 == ProxyMode::Reset {
                    drop(client);
                    continue;
                }
                tokio::spawn(handle(client, upstream, rx.clone(), drops.clone()));
            }
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

async fn rebind(port: u16) -> Option<TcpListener> {
    for _ in 0..100 {
        let sock = TcpSocket::new_v4().ok()?;
        let _ = sock.set_reuseaddr(true);
        if sock.bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            if let Ok(l) = sock.listen(128) {
                return Some(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// What one connection's two pumps share: the index of the request whose reply must be
/// dropped (`u64::MAX` while none).
#[derive(Debug)]
struct ConnTrack {
    drop_at: AtomicU64,
}

async fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<(ProxyMode, u64)>,
    drops: Arc<DropState>,
) {
    let cut = rx.borrow().1;
    // A black hole also swallows the upstream connect.
    while rx.borrow().0 == ProxyMode::BlackHole {
        if rx.changed().await.is_err() {
            return;
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let track = Arc::new(ConnTrack {
        drop_at: AtomicU64::new(u64::MAX),
    });
    let requests = Framing::Requests {
        drops,
        track: track.clone(),
    };
    let a = pump(cr, sw, rx.clone(), cut, requests);
    let b = pump(sr, cw, rx.clone(), cut, Framing::Replies { track });
    tokio::select! {
        _ = a => {}
        _ = b => {}
        _ = wait_cut(&mut rx, cut) => {}
    }
    // Dropping both sockets with linger 0 sends RST to both peers.
}

async fn wait_cut(rx: &mut watch::Receiver<(ProxyMode, u64)>, cut: u64) {
    loop {
        if rx.borrow().1 != cut {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How a pump splits its byte stream into RESP values, for the `DropReplyTo` mode.
enum Framing {
    /// Client to server: requests, matched against the mode.
    Requests {
        drops: Arc<DropState>,
        track: Arc<ConnTrack>,
    },
    /// Server to client: replies, counted, one of them possibly dropped.
    Replies { track: Arc<ConnTrack> },
}

/// What the framing step decided for the bytes read so far.
enum Step {
    /// Forward this many bytes from the front of the buffer and go on.
    Forward(usize),
    /// Forward this many bytes, then forward nothing more (the connection will be cut).
    ForwardThenPark(usize),
    /// Forward this many bytes, then cut the connection.
    ForwardThenCut(usize),
}

/// Incremental RESP framing state of one direction.
struct Framer {
    kind: Framing,
    buf: Vec<u8>,
    /// Complete values seen (requests or replies).
    count: u64,
    /// Cleared when the stream is not RESP (inline commands, say): bytes then pass raw.
    parsing: bool,
}

impl Framer {
    /// Appends `chunk` and decides how much may be forwarded now.
    fn push(&mut self, chunk: &[u8], mode: ProxyMode) -> Step {
        self.buf.extend_from_slice(chunk);
        if !self.parsing {
            return Step::Forward(self.buf.len());
        }
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            if rest.is_empty() {
                return Step::Forward(at);
            }
            let len = match value_len(rest, 0) {
                Ok(Some(len)) => len,
                Ok(None) => return Step::Forward(at),
                Err(()) => {
                    self.parsing = false;
                    return Step::Forward(self.buf.len());
                }
            };
            let index = self.count;
            self.count += 1;
            match &self.kind {
                Framing::Requests { drops, track } => {
                    if let ProxyMode::DropReplyTo { sha, nth } = mode {
                        let args = request_args(&rest[..len]);
                        let matches = args.len() >= 2
                            && args[0].eq_ignore_ascii_case(b"EVALSHA")
                            && args[1].eq_ignore_ascii_case(&sha);
                        if matches && drops.matches.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                            let shown = args
                                .iter()
                                .take(64)
                                .map(|a| {
                                    let t = String::from_utf8_lossy(a);
                                    t.chars().take(200).collect::<String>()
                                })
                                .collect();
                            if let Ok(mut d) = drops.dropped.lock() {
                                d.push(shown);
                            }
                            // Set before the request leaves, so the reply cannot beat it.
                            track.drop_at.store(index, Ordering::SeqCst);
                            return Step::ForwardThenPark(at + len);
                        }
                    }
                }
                Framing::Replies { track } => {
                    if track.drop_at.load(Ordering::SeqCst) == index {
                        return Step::ForwardThenCut(at);
                    }
                }
            }
            at += len;
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<(ProxyMode, u64)>,
    cut: u64,
    framing: Framing,
) {
    let mut framer = Framer {
        kind: framing,
        buf: Vec::new(),
        count: 0,
        parsing: true,
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mode = loop {
            let (mode, c) = *rx.borrow_and_update();
            if c != cut {
                return;
            }
            match mode {
                ProxyMode::BlackHole => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                ProxyMode::Reset => return,
                ProxyMode::Latency(d) => {
                    tokio::time::sleep(d).await;
                    break mode;
                }
                ProxyMode::Pass | ProxyMode::Refuse | ProxyMode::DropReplyTo { .. } => break mode,
            }
        };
        let step = framer.push(&chunk[..n], mode);
        let (len, then) = match step {
            Step::Forward(len) => (len, None),
            Step::ForwardThenPark(len) => (len, Some(false)),
            Step::ForwardThenCut(len) => (len, Some(true)),
        };
        if len > 0 {
            if to.write_all(&framer.buf[..len]).await.is_err() {
                return;
            }
            framer.buf.drain(..len);
        }
        match then {
            None => {}
            // The other direction cuts the connection once the reply has arrived.
            Some(false) => std::future::pending::<()>().await,
            Some(true) => return,
        }
    }
}

/// The position just past the CRLF that ends the line starting at `at`, if complete.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    buf.get(at..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| at + p + 2)
}

/// The integer on the header line starting at `at` (after the type byte).
fn header(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ()> {
    let Some(end) = line_end(buf, at) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[at + 1..end - 2]).map_err(|_| ())?;
    let n = text.parse::<i64>().map_err(|_| ())?;
    Ok(Some((n, end)))
}

/// Length of the complete RESP2 or RESP3 value starting at `at` (relative to `at`):
/// `Ok(None)` when more bytes are needed, `Err` when this is not RESP.
fn value_len(buf: &[u8], at: usize) -> Result<Option<usize>, ()> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let end = match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => match line_end(buf, at) {
            Some(end) => end,
            None => return Ok(None),
        },
        b'$' | b'!' | b'=' => {
            let Some((n, end)) = header(buf, at)? else {
                return Ok(None);
            };
            if n < 0 {
                end
            } else {
                let total = end + usize::try_from(n).map_err(|_| ())? + 2;
                if buf.len() < total {
                    return Ok(None);
                }
                total
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some((n, mut end)) = header(buf, at)? else {
                return Ok(None);
            };
            let items = if matches!(kind, b'%' | b'|') {
                n.saturating_mul(2)
            } else {
                n
            };
            for _ in 0..items.max(0) {
                match value_len(buf, end)? {
                    Some(len) => end += len,
                    None => return Ok(None),
                }
            }
            end
        }
        _ => return Err(()),
    };
    Ok(Some(end - at))
}

/// The bulk-string arguments of one complete request (an array of bulk strings).
fn request_args(req: &[u8]) -> Vec<&[u8]> {
    let mut args = Vec::new();
    let Ok(Some((n, mut at))) = header(req, 0) else {
        return args;
    };
    if req.first() != Some(&b'*') {
        return args;
    }
    for _ in 0..n.max(0) {
        match (req.get(at), header(req, at)) {
            (Some(b'$'), Ok(Some((len, start)))) if len >= 0 => {
                let Ok(len) = usize::try_from(len) else {
                    return args;
                };
                let Some(arg) = req.get(start..start + len) else {
                    return args;
                };
                args.push(arg);
                at = start + len + 2;
            }
            _ => return args,
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{encode, read_reply, RedisServer};
    use std::io::{BufReader, Write};

    #[test]
    fn resp_values_are_framed_incrementally() {
        let req = encode(&["EVALSHA", "abc", "0"]);
        assert_eq!(value_len(&req, 0), Ok(Some(req.len())));
        for cut in 0..req.len() {
            assert_eq!(value_len(&req[..cut], 0), Ok(None), "cut at {cut}");
        }
        assert_eq!(request_args(&req), vec![&b"EVALSHA"[..], b"abc", b"0"]);
        let reply = b"*3\r\n$-1\r\n:5\r\n*2\r\n+OK\r\n-ERR x\r\n";
        assert_eq!(value_len(reply, 0), Ok(Some(reply.len())));
        assert_eq!(value_len(b"%1\r\n+a\r\n:1\r\n", 0), Ok(Some(12)));
        assert_eq!(value_len(b"PING\r\n", 0), Err(()));
    }

    #[test]
    fn drop_reply_to_wants_a_sha_and_a_positive_count() {
        let sha = "a".repeat(40);
        assert!(ProxyMode::drop_reply_to(&sha, 1).is_some());
        assert!(ProxyMode::drop_reply_to(&sha, 0).is_none());
        assert!(ProxyMode::drop_reply_to("abc", 1).is_none());
        assert!(ProxyMode::drop_reply_to(&"z".repeat(40), 1).is_none());
    }

    /// The n-th matching `EVALSHA` runs on the server, its reply never reaches the client,
    /// the connection is cut, and the next matching request passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_nth_evalsha_runs_but_its_reply_is_lost() {
        let server = RedisServer::start().expect("redis");
        let body = "return redis.call('INCR', KEYS[1])";
        let sha = server.admin(&["SCRIPT", "LOAD", body]).expect("load");
        let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port())))
            .await
            .expect("proxy");
        proxy.set_mode(ProxyMode::drop_reply_to(&sha, 2).expect("mode"));
        let port = proxy.port();
        let sha2 = sha.clone();
        let replies = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            for _ in 0..3 {
                // A PING and the script, pipelined, so framing sees several values per read.
                let mut both = encode(&["PING"]);
                both.extend(encode(&["EVALSHA", &sha2, "1", "counter"]));
                if s.write_all(&both).is_err() {
                    out.push("write failed".to_owned());
                    break;
                }
                let ping = read_reply(&mut r).map_err(|e| e.kind());
                let evalsha = read_reply(&mut r).map_err(|e| e.kind());
                out.push(format!("{ping:?} {evalsha:?}"));
                if evalsha.is_err() {
                    break;
                }
            }
            out
        })
        .await
        .expect("client");
        assert_eq!(replies[0], r#"Ok("PONG") Ok("1")"#);
        assert!(replies[1].starts_with(r#"Ok("PONG") Err("#), "{replies:?}");
        assert_eq!(replies.len(), 2, "{replies:?}");
        // The script ran although its reply was lost.
        assert_eq!(server.admin(&["GET", "counter"]).expect("get"), "2");
        let dropped = proxy.dropped_replies();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0][3], "counter");
        // Later matches pass.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        s.write_all(&encode(&["EVALSHA", &sha, "1", "counter"]))
            .expect("write");
        assert_eq!(read_reply(&mut r).expect("reply"), "3");
    }
}
