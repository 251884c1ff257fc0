//! A backend that speaks raw bytes, for what the HTTP test backend (`TestBackend`) cannot do:
//! garbage instead of HTTP, a head trickled a byte at a time, a close or a hang at a chosen
//! moment, exact response bytes. Built fluently:
//!
//! ```ignore
//! let b = RawBackend::replying(b"HTTP/1.1 200 OK\r\n").trickle(ms(200)).then_hang().start().await;
//! ```
//!
//! On every connection it reads a request head (recorded), waits, writes the reply, then
//! closes (or hangs).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct RawBackend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// A backend that answers each request head with exactly `reply`.
    pub fn replying(reply: &'static [u8]) -> RawBuilder {
        RawBuilder {
            reply,
            trickle: None,
            wait: Duration::ZERO,
            hang: false,
        }
    }

    /// The request heads received so far, in arrival order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

pub struct RawBuilder {
    reply: &'static [u8],
    trickle: Option<Duration>,
    wait: Duration,
    hang: bool,
}

impl RawBuilder {
    /// Write the reply one byte at a time, this long apart.
    pub fn trickle(mut self, every: Duration) -> RawBuilder {
        self.trickle = Some(every);
        self
    }

    /// Wait this long after the request head before replying.
    pub fn wait(mut self, d: Duration) -> RawBuilder {
        self.wait = d;
        self
    }

    /// After the reply, keep the connection open without a word (instead of closing).
    pub fn then_hang(mut self) -> RawBuilder {
        self.hang = true;
        self
    }

    pub async fn start(self) -> RawBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local addr");
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        let RawBuilder {
            reply,
            trickle,
            wait,
            hang,
        } = self;
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                let seen = seen.clone();
                conns.spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&got).into_owned());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    match trickle {
                        None => {
                            let _ = s.write_all(reply).await;
                        }
                        Some(d) => {
                            for b in reply {
                                if s.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(d).await;
                            }
                        }
                    }
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        RawBackend { addr, heads, task }
    }
}

/// An address with nothing listening: bind port 0, note the address, close it.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}
