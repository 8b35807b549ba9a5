//! Small scripted peers for what a real Redis 7.0 cannot show on demand: a server that
//! reports an old version or another eviction policy, and peers that are not Redis at all.
//! They are never used where a real server can answer.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a fake peer does with each connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FakeBehaviour {
    /// Answers any input with an HTTP error page, then closes (a web server on the port).
    Http,
    /// Accepts and never says anything.
    Silent,
    /// Speaks RESP: `PING` -> `PONG`, `INFO` -> this text, anything else -> `OK`.
    RedisWithInfo(String),
}

/// A fake peer on a random loopback port; stops on drop.
#[derive(Debug)]
pub struct FakeServer {
    port: u16,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts a fake peer.
    pub async fn start(behaviour: FakeBehaviour) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, behaviour.clone()));
            }
        });
        Ok(Self { port, task })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: TcpStream, behaviour: FakeBehaviour) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    match behaviour {
        FakeBehaviour::Silent => {
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink).await;
        }
        FakeBehaviour::Http => {
            let mut buf = [0u8; 512];
            let _ = r.read(&mut buf).await;
            let _ = w
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        FakeBehaviour::RedisWithInfo(info) => loop {
            let Ok(Some(args)) = read_command(&mut r).await else {
                return;
            };
            let name = args
                .first()
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            let reply = match name.as_str() {
                "PING" => "+PONG\r\n".to_owned(),
                "INFO" => format!("${}\r\n{}\r\n", info.len(), info),
                _ => "+OK\r\n".to_owned(),
            };
            if w.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        },
    }
}

async fn read_command<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<Vec<String>>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let n: usize = line
        .trim_end()
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("expected an array"))?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await?;
        let len: usize = line
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other("expected a bulk string"))?;
        let mut buf = vec![0u8; len + 2];
        r.read_exact(&mut buf).await?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(Some(args))
}
