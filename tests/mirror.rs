//! Traffic mirroring through the real binary: the shadow sees the same method, path, headers
//! and body as the route's backend (plus the mirror header); a shadow that hangs or is down
//! changes nothing for the client; copies beyond max_in_flight are dropped and counted; bodies
//! over the cap are not copied; sampling; and mirroring follows reloads.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

const PATIENCE: Duration = Duration::from_secs(10);

/// One request as the shadow received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A shadow backend that records every request it gets, whole, and answers 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            s.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"shadow"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let ok = eventually(PATIENCE, || async { self.seen().len() >= n }).await;
        assert!(ok, "the shadow saw {} requests, expected {n}", self.seen().len());
        self.seen()
    }
}

fn config(backend: SocketAddr, shadow: SocketAddr, mirror: &str, shadow_extra: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[log]
access = "off"

[[listener]]
name = "http"
bind = "127.0.0.1:0"

[[pool]]
name = "web"
backends = [{{ address = "{backend}" }}]

[[pool]]
name = "shadow"
backends = [{{ address = "{shadow}" }}]
{shadow_extra}

[[route]]
name = "plain"
path_prefix = "/plain/"
pool = "web"

[[route]]
name = "api"
path_prefix = "/api"
strip_prefix = true
pool = "web"
{mirror}
"#
    )
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("x-custom", "one")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn counter(p: &Proxy, result: &str) -> f64 {
    p.metric(&format!(
        "waypost_mirror_requests_total{{route=\"api\",result=\"{result}\"}}"
    ))
    .await
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_sees_the_request_the_backend_sees_plus_the_mirror_header() {
    let b = TestBackend::start("b").await.unwrap();
    let shadow = Recorder::start().await;
    let p = Proxy::start(&config(
        b.addr,
        shadow.addr,
        "[route.mirror]\npool = \"shadow\"\nmax_body_bytes = \"1KiB\"",
        "",
    ));

    let r = send(p.addr(), post("/api/items?x=1", b"{\"hello\":\"mirror\"}")).await;
    assert_eq!(r.status(), 200);
    let primary = echo(&r);
    let seen = shadow.wait_for(1).await;
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.method, primary["method"]);
    assert_eq!(
        s.target, "/items?x=1",
        "the prefix is stripped for the shadow as for the backend"
    );
    assert_eq!(primary["path"], "/items");
    assert_eq!(s.body.as_ref(), b"{\"hello\":\"mirror\"}");
    assert_eq!(primary["body_bytes"], s.body.len(), "{primary}");
    assert_eq!(
        s.headers.get("x-waypost-mirror").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let headers = primary["headers"].as_object().expect("headers");
    assert!(!headers.contains_key("x-waypost-mirror"), "only the copy is marked");
    for (name, value) in headers {
        let v = value.as_str().unwrap();
        let got: Vec<&str> = s
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|h| h.to_str().unwrap())
            .collect();
        assert_eq!(
            got.join(", "),
            v,
            "header {name} as the backend saw it; the shadow got {:?}",
            s.headers
        );
    }
    // A streamed (chunked) body is teed frame by frame, and arrives whole.
    let chunks = futures_stream(&[b"part one, ", b"part two"]);
    let r = send_streamed(p.addr(), "/api/stream", chunks).await;
    assert_eq!(r, 200);
    let seen = shadow.wait_for(2).await;
    assert_eq!(seen[1].target, "/stream");
    assert_eq!(seen[1].body.as_ref(), b"part one, part two");

    // A body over the cap: the client's request goes through whole, no copy is made.
    let big: &'static [u8] = Box::leak(vec![b'x'; 4096].into_boxed_slice());
    let r = send(p.addr(), post("/api/big", big)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echo(&r)["body_bytes"], 4096);
    assert!(eventually(PATIENCE, || async { counter(&p, "too_large").await == 1.0 }).await);
    assert!(eventually(PATIENCE, || async { counter(&p, "ok").await == 2.0 }).await);
    assert_eq!(shadow.seen().len(), 2, "no copy of the large request");
    // A route without a mirror is not copied.
    assert_eq!(get(p.addr(), "/plain/x").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shadow.seen().len(), 2);
}

/// A body sent in the given chunks, with no Content-Length (chunked on HTTP/1.1).
fn futures_stream(chunks: &[&'static [u8]]) -> Vec<Bytes> {
    chunks.iter().map(|c| Bytes::from_static(c)).collect()
}

async fn send_streamed(addr: SocketAddr, path: &str, chunks: Vec<Bytes>) -> u16 {
    use http_body_util::StreamBody;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c))),
    );
    let req = Request::post(path)
        .header("host", addr.to_string())
        .body(StreamBody::new(frames))
        .unwrap();
    let r = sender.send_request(req).await.unwrap();
    let code = r.status().as_u16();
    let _ = r.into_body().collect().await;
    code
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// `n` sequential GETs alternating between `a` and `b` (after a warm-up), so both see the same
/// machine; the statuses and the p99 of each.
async fn timed_pairs(addr: SocketAddr, a: &str, b: &str, n: usize) -> ([Vec<u16>; 2], [Duration; 2]) {
    for _ in 0..20 {
        get(addr, a).await;
        get(addr, b).await;
    }
    let mut codes = [Vec::new(), Vec::new()];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..n {
        for (i, path) in [a, b].into_iter().enumerate() {
            let t = Instant::now();
            let r = get(addr, path).await;
            times[i].push(t.elapsed());
            codes[i].push(r.status().as_u16());
        }
    }
    let [ta, tb] = times;
    (codes, [p99(ta), p99(tb)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_absent_shadow_changes_nothing_for_the_client() {
    let b = TestBackend::start("b").await.unwrap();
    let hang = TestBackend::start("hang").await.unwrap();
    hang.set_mode(Mode::Hang);
    let mirror = "[route.mirror]\npool = \"shadow\"\nmax_in_flight = 4";
    let p = Proxy::start(&config(b.addr, hang.addr, mirror, "response_timeout = \"60s\""));
    const N: usize = 300;
    let ([plain, mirrored], [base_p99, hang_p99]) = timed_pairs(p.addr(), "/plain/x", "/api/x", N).await;
    assert!(plain.iter().all(|c| *c == 200));
    assert!(mirrored.iter().all(|c| *c == 200), "{mirrored:?}");
    // Four copies wait on the shadow; every other one was dropped, not queued.
    let copies = (N + 20) as f64;
    assert!(
        eventually(PATIENCE, || async { counter(&p, "dropped").await == copies - 4.0 }).await,
        "dropped = {}",
        counter(&p, "dropped").await
    );

    // The shadow is down (nothing listens on its port): copies fail, clients do not.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let q = Proxy::start(&config(b.addr, gone, "[route.mirror]\npool = \"shadow\"", ""));
    let ([plain, mirrored], [base2_p99, down_p99]) = timed_pairs(q.addr(), "/plain/x", "/api/x", N).await;
    assert!(plain.iter().all(|c| *c == 200));
    assert!(mirrored.iter().all(|c| *c == 200), "{mirrored:?}");
    assert!(eventually(PATIENCE, || async { counter(&q, "error").await > 0.0 }).await);
    assert_eq!(counter(&q, "ok").await, 0.0);
    eprintln!(
        "p99 over {N} GETs each, interleaved: no mirror {base_p99:?} vs shadow hanging {hang_p99:?}; no mirror {base2_p99:?} vs shadow down {down_p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_reloads_decide_what_is_copied() {
    let b = TestBackend::start("b").await.unwrap();
    let shadow = Recorder::start().await;
    let p = Proxy::start(&config(b.addr, shadow.addr, "", ""));
    let reload = |mirror: &str| {
        std::fs::write(&p.config_path, config(b.addr, shadow.addr, mirror, "")).unwrap();
        send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap())
    };
    for _ in 0..10 {
        get(p.addr(), "/api/a").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shadow.seen().len(), 0, "no mirror configured yet");

    assert_eq!(
        reload("[route.mirror]\npool = \"shadow\"\npercent = 0").await.status(),
        200
    );
    for _ in 0..50 {
        get(p.addr(), "/api/b").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shadow.seen().len(), 0, "percent = 0 copies nothing");

    assert_eq!(
        reload("[route.mirror]\npool = \"shadow\"\npercent = 50").await.status(),
        200
    );
    for _ in 0..400 {
        get(p.addr(), "/api/c").await;
    }
    // 400 draws at 1/2: 200 ± 10 standard deviations stays inside 100..300.
    assert!(
        eventually(PATIENCE, || async {
            counter(&p, "ok").await == shadow.seen().len() as f64
        })
        .await
    );
    let n = shadow.seen().len();
    assert!((100..=300).contains(&n), "{n} of 400 copied at 50%");

    assert_eq!(reload("").await.status(), 200);
    for _ in 0..20 {
        get(p.addr(), "/api/d").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shadow.seen().len(),
        n,
        "mirroring stops with the reload that removes it"
    );
}
