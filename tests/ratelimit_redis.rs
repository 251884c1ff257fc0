//! Rate limits shared by two waypost instances through a real `redis-server` on loopback
//! (Debian's package; .ci/test.sh installs it): together they hold one 100 req/s limit within
//! the accuracy the design states (docs/configuration.md), and when Redis is killed and
//! started again they fall back to their local share (or fail open), say so in /status and
//! the metrics, reconnect by themselves, and answer every request with 200 or 429 throughout.
mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(20);
const RATE: f64 = 100.0;
const BURST: f64 = 10.0;
const SYNC: f64 = 0.05;
const INSTANCES: f64 = 2.0;

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    async fn start(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/test.sh installs it)");
        let s = RedisServer { child, port, _dir: dir };
        let up = eventually(PATIENCE, || async { s.ping().await }).await;
        assert!(up, "redis-server did not answer PING on port {port}");
        s
    }

    async fn ping(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if c.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
    }

    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(backend: SocketAddr, secret: &std::path::Path, redis_port: u16, on_down: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[log]
access = "off"

[session]
secret_file = "{}"

[ratelimit]
redis = "redis://127.0.0.1:{redis_port}/"
sync_interval = "{}ms"
redis_timeout = "200ms"
on_redis_down = "{on_down}"

[[listener]]
name = "http"
bind = "127.0.0.1:0"

[[pool]]
name = "web"
backends = [{{ address = "{backend}" }}]

[[route]]
name = "all"
path_prefix = "/"
pool = "web"
[[route.limit]]
name = "global"
rate = {RATE}
per = "1s"
burst = {BURST}
key = "route"
"#,
        secret.display(),
        (SYNC * 1000.0) as u64
    )
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    limited: u64,
    /// Anything but 200 or 429, or no answer at all.
    other: u64,
}

/// Offer `rps` requests per second to each instance for `dur` (three kept-alive connections
/// each, paced); the tally per instance and the time it really took.
async fn load(addrs: &[SocketAddr], rps: f64, dur: Duration) -> (Vec<Tally>, f64) {
    const CONNS: usize = 3;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        for _ in 0..CONNS {
            tasks.push((
                i,
                tokio::spawn(async move {
                    let mut t = Tally::default();
                    let mut sender = None;
                    let mut tick = tokio::time::interval(Duration::from_secs_f64(CONNS as f64 / rps));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let end = Instant::now() + dur;
                    while Instant::now() < end {
                        tick.tick().await;
                        if sender.is_none() {
                            let Ok(stream) = TcpStream::connect(addr).await else {
                                t.other += 1;
                                continue;
                            };
                            let Ok((s, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                            else {
                                t.other += 1;
                                continue;
                            };
                            tokio::spawn(conn);
                            sender = Some(s);
                        }
                        let s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>> = sender.as_mut().unwrap();
                        let req = Request::get("/")
                            .header("host", "x")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let res = match s.ready().await {
                            Ok(()) => s.send_request(req).await,
                            Err(e) => Err(e),
                        };
                        match res {
                            Ok(r) => {
                                let code = r.status().as_u16();
                                let _ = r.into_body().collect().await;
                                match code {
                                    200 => t.ok += 1,
                                    429 => t.limited += 1,
                                    _ => t.other += 1,
                                }
                            }
                            Err(_) => {
                                t.other += 1;
                                sender = None;
                            }
                        }
                    }
                    t
                }),
            ));
        }
    }
    let mut out = vec![Tally::default(); addrs.len()];
    for (i, t) in tasks {
        let t = t.await.unwrap();
        out[i].ok += t.ok;
        out[i].limited += t.limited;
        out[i].other += t.other;
    }
    (out, started.elapsed().as_secs_f64())
}

/// The design's accuracy over a window of `secs` for `n` instances deciding alone between
/// exchanges: rate × window, give or take every instance's burst, the sync interval's worth of
/// rate per instance, and 15% of the window's allowance for pacing and scheduling on a loaded
/// machine (stated generously; the test prints the real figure).
fn bounds(secs: f64, n: f64) -> (f64, f64) {
    let slack = BURST * n + RATE * n * SYNC + 0.15 * RATE * secs;
    (RATE * secs - slack, RATE * secs + slack)
}

async fn status(p: &Proxy) -> serde_json::Value {
    let (code, body) = p.admin_get("/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

async fn wait_redis(ps: &[&Proxy], up: bool, instances: Option<u64>) {
    for p in ps {
        let ok = eventually(PATIENCE, || async {
            let s = status(p).await;
            s["ratelimit"]["redis"]["up"] == up
                && instances.map_or(true, |n| s["ratelimit"]["redis"]["instances"].as_u64() == Some(n))
        })
        .await;
        assert!(ok, "redis up={up} never showed: {}", status(p).await["ratelimit"]);
    }
}

fn assert_within(what: &str, tallies: &[Tally], secs: f64, rps: f64) -> f64 {
    let admitted: u64 = tallies.iter().map(|t| t.ok).sum();
    let sent: u64 = tallies.iter().map(|t| t.ok + t.limited + t.other).sum();
    let others: u64 = tallies.iter().map(|t| t.other).sum();
    assert_eq!(others, 0, "{what}: every request is answered 200 or 429: {tallies:?}");
    assert!(
        sent as f64 >= 1.5 * RATE * secs,
        "{what}: the load ({sent} requests in {secs:.2}s) must be well over the limit to test it (offered {rps}/s per instance)"
    );
    let (lo, hi) = bounds(secs, INSTANCES);
    let err = (admitted as f64 - RATE * secs) / (RATE * secs);
    eprintln!(
        "{what}: admitted {admitted} of {sent} in {secs:.2}s (limit {:.0}): {:+.1}% ; per instance {:?}",
        RATE * secs,
        err * 100.0,
        tallies.iter().map(|t| t.ok).collect::<Vec<_>>()
    );
    assert!(
        (lo..=hi).contains(&(admitted as f64)),
        "{what}: {admitted} admitted in {secs:.2}s, expected {lo:.0}..{hi:.0}: {tallies:?}"
    );
    err
}

fn secret(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("session.key");
    std::fs::write(&p, [0x5a; 32]).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hold_one_limit_through_redis_and_fall_back_to_their_share_while_it_is_gone() {
    let b = TestBackend::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = secret(&dir);
    let redis = RedisServer::start(free_port()).await;
    let cfg = config(b.addr, &key, redis.port, "local_share");
    let p1 = Proxy::start(&cfg);
    let p2 = Proxy::start(&cfg);
    wait_redis(&[&p1, &p2], true, Some(2)).await;
    let addrs = [p1.addr(), p2.addr()];
    let rps = 150.0; // per instance: 300/s offered against 100/s shared

    let (t, secs) = load(&addrs, rps, Duration::from_secs(4)).await;
    assert_within("shared through redis", &t, secs, rps);
    assert!(t.iter().all(|x| x.ok > 0), "both instances admit: {t:?}");
    for p in [&p1, &p2] {
        assert_eq!(p.metric("waypost_ratelimit_redis_up").await, Some(1.0));
        assert_eq!(p.metric("waypost_ratelimit_redis_instances").await, Some(2.0));
    }

    // Redis dies: each instance enforces half the limit on its own.
    let port = redis.kill();
    wait_redis(&[&p1, &p2], false, None).await;
    let s = status(&p1).await;
    assert_eq!(s["ratelimit"]["redis"]["mode"], "local_share", "{s}");
    let (t, secs) = load(&addrs, rps, Duration::from_secs(3)).await;
    assert_within("redis down, local share", &t, secs, rps);
    for p in [&p1, &p2] {
        assert_eq!(p.metric("waypost_ratelimit_redis_up").await, Some(0.0));
        let errors = p
            .metric("waypost_ratelimit_redis_syncs_total{result=\"error\"}")
            .await
            .unwrap_or(0.0)
            + p.metric("waypost_ratelimit_redis_syncs_total{result=\"timeout\"}")
                .await
                .unwrap_or(0.0);
        assert!(errors > 0.0, "failed exchanges are counted");
    }

    // Redis is back (empty): the instances reconnect by themselves and share again.
    let _redis = RedisServer::start(port).await;
    wait_redis(&[&p1, &p2], true, Some(2)).await;
    let (t, secs) = load(&addrs, rps, Duration::from_secs(3)).await;
    assert_within("redis back", &t, secs, rps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_open_nothing_is_refused_while_redis_is_gone() {
    let b = TestBackend::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = secret(&dir);
    let redis = RedisServer::start(free_port()).await;
    let cfg = config(b.addr, &key, redis.port, "fail_open");
    let p1 = Proxy::start(&cfg);
    let p2 = Proxy::start(&cfg);
    wait_redis(&[&p1, &p2], true, Some(2)).await;
    let addrs = [p1.addr(), p2.addr()];
    let (t, _) = load(&addrs, 150.0, Duration::from_secs(2)).await;
    assert!(
        t.iter().map(|x| x.limited).sum::<u64>() > 0,
        "the limit holds while Redis is up: {t:?}"
    );

    let port = redis.kill();
    wait_redis(&[&p1, &p2], false, None).await;
    assert_eq!(status(&p2).await["ratelimit"]["redis"]["mode"], "fail_open");
    let (t, _) = load(&addrs, 150.0, Duration::from_secs(2)).await;
    assert_eq!(
        t.iter().map(|x| x.limited + x.other).sum::<u64>(),
        0,
        "fail open: all admitted: {t:?}"
    );
    assert!(t.iter().map(|x| x.ok).sum::<u64>() > 300);

    let _redis = RedisServer::start(port).await;
    wait_redis(&[&p1, &p2], true, None).await;
    let (t, _) = load(&addrs, 150.0, Duration::from_secs(2)).await;
    assert!(
        t.iter().map(|x| x.limited).sum::<u64>() > 0,
        "limited again once Redis is back: {t:?}"
    );
    assert_eq!(t.iter().map(|x| x.other).sum::<u64>(), 0, "{t:?}");
}
