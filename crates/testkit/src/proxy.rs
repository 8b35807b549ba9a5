//! A TCP fault proxy between a client and a server: pass, refuse, reset, black-hole and
//! added latency, switchable at run time.

use std::io;
use std::net::SocketAddr;
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
}

/// A running proxy. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    mode: watch::Sender<(ProxyMode, u64)>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a random loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel((ProxyMode::Pass, 0));
        let task = tokio::spawn(accept_loop(listener, port, upstream, rx));
        Ok(Self { port, mode, task })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_modify(|m| m.0 = mode);
    }

    /// Resets (RST) every live connection now; the mode is unchanged.
    pub fn cut_all(&self) {
        self.mode.send_modify(|m| m.1 += 1);
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
                tokio::spawn(handle(client, upstream, rx.clone()));
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

async fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<(ProxyMode, u64)>,
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
    let a = pump(cr, sw, rx.clone(), cut);
    let b = pump(sr, cw, rx.clone(), cut);
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

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<(ProxyMode, u64)>,
    cut: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
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
                    break;
                }
                ProxyMode::Pass | ProxyMode::Refuse => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
