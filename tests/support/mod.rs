//! Shared test support: run the real `waypost` binary on a config written to a temp dir (every
//! address on port 0, learned from the daemon's own log), plus small HTTP/1.1 and h2c clients.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub mod config;
pub mod h2raw;
pub mod pki;
pub mod raw;

pub use config::Config;
pub use raw::{dead_addr, RawBackend};

pub use waypost::testbackend::{Mode, TestBackend};

pub const BIN: &str = env!("CARGO_BIN_EXE_waypost");

/// How long any test waits for something that should happen (a response, a close, a state
/// change) before calling it a failure. Generous: the machine is shared and noisy; a test
/// passes as soon as the thing happens, so this only bounds how long a failure takes.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `f`'s outcome, or a failure naming `what` when there is none within PATIENCE (instead of a
/// test that hangs).
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {PATIENCE:?}"))
}

/// A running waypost process.
pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Listener name -> bound address.
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Start waypost on `config` (TOML). Listeners and admin should bind port 0; their real
    /// addresses are read from the log. Panics with the daemon's output if it does not come up.
    pub fn start(config: &str) -> Proxy {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_custom(config, move |cmd| {
            for (k, v) in &env {
                cmd.env(k, v);
            }
        })
    }

    /// Start with a hook on the command before it is spawned (extra fds, environment, or a
    /// wrapper program); the hook gets the command as set up to run waypost on the config.
    pub fn start_custom(config: &str, customize: impl FnOnce(&mut Command)) -> Proxy {
        Self::start_command(config, |path| {
            let mut cmd = Command::new(BIN);
            cmd.arg("--config").arg(path);
            customize(&mut cmd);
            cmd
        })
    }

    /// Start from a command the caller builds around the config file's path (a wrapper program,
    /// inherited descriptors); stdio and the log level are set here.
    pub fn start_command(config: &str, make: impl FnOnce(&std::path::Path) -> Command) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("waypost.toml");
        std::fs::write(&config_path, config).expect("write config");
        let expected = config.matches("[[listener]]").count();
        let mut cmd = make(&config_path);
        cmd.env("RUST_LOG", "waypost=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn waypost");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = stderr.lock().unwrap().clone();
            let listeners: HashMap<String, SocketAddr> = lines
                .iter()
                .filter(|l| l.contains(" listening ") && l.contains("listener="))
                .filter_map(|l| Some((field(l, "listener=")?, field(l, "address=")?.parse().ok()?)))
                .collect();
            let admin = lines
                .iter()
                .find(|l| l.contains("admin API listening"))
                .and_then(|l| field(l, "address=")?.parse().ok());
            if let (Some(admin), true) = (admin, listeners.len() >= expected) {
                return Proxy {
                    child,
                    dir,
                    config_path,
                    listeners,
                    admin,
                    stderr,
                    stdout,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("waypost exited with {status} before listening:\n{}", lines.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("waypost did not come up in time:\n{}", lines.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the only (or first-named "http") listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners
            .get("http")
            .copied()
            .or_else(|| self.listeners.values().next().copied())
            .expect("a listener")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The lines logged so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Access log lines written so far (stdout).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit (after a signal) and return its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// GET an admin path; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = get(self.admin, path).await;
        (r.status().as_u16(), String::from_utf8_lossy(r.body()).into_owned())
    }

    /// The value of one metric series from /metrics (exact series text, e.g.
    /// `waypost_retries_total{pool="web"}`), or None if absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The sum of every series of metric `name` that carries all of `labels` (in any order,
    /// among others); 0 when there is none.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text().await;
        let mut sum = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (n, labelset) = match series.find('{') {
                Some(i) => (&series[..i], series[i + 1..].trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                continue;
            }
            let have: Vec<&str> = labelset.split(',').collect();
            if labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
            {
                sum += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        sum
    }

    /// The /metrics page (within PATIENCE).
    pub async fn metrics_text(&self) -> String {
        within("GET /metrics", self.admin_get("/metrics")).await.1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

/// `name=value` from a log line (value ends at a space; quotes trimmed).
fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(name)? + name.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// Wait until `f` returns true, up to `timeout`; false if it never did.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until the peer of `s` (a loopback socket: both ends are on this host) has read every
/// byte `s` sent, as the kernel's receive queue of the peer's socket shows (/proc/net/tcp).
/// Tells a test that a piece it wrote was read on its own before it writes the next one.
pub async fn wait_read_by_peer(s: &TcpStream) {
    let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    let read_all = eventually(PATIENCE, || async move {
        // The peer's side is the line whose local port is `peer`'s and remote port ours; and
        // our own send queue must be empty (everything delivered).
        let table = std::fs::read_to_string(if local.is_ipv4() {
            "/proc/net/tcp"
        } else {
            "/proc/net/tcp6"
        })
        .unwrap_or_default();
        let queues = |from: u16, to: u16| {
            table.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
                if port(f.get(1)?)? != from || port(f.get(2)?)? != to {
                    return None;
                }
                let (tx, rx) = f.get(4)?.split_once(':')?;
                Some((u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?))
            })
        };
        matches!(
            (queues(local.port(), peer.port()), queues(peer.port(), local.port())),
            (Some((0, _)), Some((_, 0)))
        )
    })
    .await;
    assert!(read_all, "the peer of {local} did not read what was sent");
}

/// One HTTP/1.1 request on a new connection; the whole response body collected.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    try_send(addr, req).await.expect("request failed")
}

pub async fn try_send(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> Result<Response<Bytes>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
    }
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

pub async fn get(addr: SocketAddr, path: &str) -> Response<Bytes> {
    send(addr, Request::get(path).body(Full::new(Bytes::new())).unwrap()).await
}

/// GET with a Host header.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Response<Bytes> {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// One h2c (prior knowledge) request; the whole body collected.
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("h2 request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("h2 body").to_bytes();
    Response::from_parts(parts, body)
}

/// The JSON the test backend answers with.
pub fn echo(resp: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(resp.body()).unwrap_or_else(|e| {
        panic!(
            "not a test-backend answer ({e}): {} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body())
        )
    })
}

/// A config with one listener and the admin API on port 0, one pool "web" of weighted
/// `backends` and one catch-all route "all"; `server` and `log` are the bodies of those tables
/// and `pool_extra` goes into the pool's. (`Config::weighted` with those parts.)
pub fn weighted_config(backends: &[(SocketAddr, u32)], server: &str, log: &str, pool_extra: &str) -> String {
    Config::weighted(backends)
        .server(server)
        .log(log)
        .pool_extra(pool_extra)
        .build()
}

/// A minimal config: `weighted_config` with equal weights and the access log on stdout.
pub fn simple_config(backends: &[SocketAddr], pool_extra: &str) -> String {
    Config::proxy(backends)
        .log("access = \"stdout\"")
        .pool_extra(pool_extra)
        .build()
}
