//! Forwarding through the real binary on real sockets: the header rules of RFC 9110 §7.6 in both
//! directions, streaming bodies of any size in constant memory, chunked bodies, trailers,
//! `Expect: 100-continue`, WebSocket tunnelling, h2c and HTTP/1.1 on one listener, keep-alive.
//! Routing through the listener lives in tests/routing.rs.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use support::*;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// Await `fut`, failing the test with `what` if it takes longer than `secs`.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// A keep-alive HTTP/1.1 client connection with any body type.
async fn h1_conn<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// An h2c (prior knowledge) client connection with any body type.
async fn h2_conn<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

type FrameStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// A body of unknown length (no size hint: sent chunked over HTTP/1.1) made of these frames.
fn frames_body(frames: Vec<Frame<Bytes>>) -> StreamBody<FrameStream> {
    let v: Vec<Result<Frame<Bytes>, Infallible>> = frames.into_iter().map(Ok).collect();
    StreamBody::new(futures_util::stream::iter(v))
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

/// Read a whole response body, returning its data and trailers.
async fn collect_with_trailers(body: Incoming) -> (Bytes, Option<HeaderMap>) {
    let c = within(20, "response body", body.collect())
        .await
        .expect("response body");
    let t = c.trailers().cloned();
    (c.to_bytes(), t)
}

/// A raw HTTP/1.1 client: exact bytes out, a simple parser in.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write");
    }

    async fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16 * 1024];
        let n = within(15, "reading from the proxy", self.s.read(&mut tmp))
            .await
            .expect("read");
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    /// The next response head (status line and fields), without the blank line.
    async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 4);
                return head;
            }
            if self.fill().await == 0 {
                panic!(
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await > 0, "connection closed mid-body");
        }
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await > 0, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// The body that follows `head` (Content-Length or chunked).
    async fn read_body(&mut self, head: &str) -> Vec<u8> {
        if let Some(n) = header_of(head, "content-length") {
            return self.read_exact(n.parse().expect("content-length")).await;
        }
        assert!(
            header_of(head, "transfer-encoding").is_some_and(|t| t.contains("chunked")),
            "neither length nor chunked: {head}"
        );
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("chunk size");
            if size == 0 {
                while !self.read_line().await.is_empty() {}
                return body;
            }
            body.extend(self.read_exact(size).await);
            assert_eq!(self.read_exact(2).await, b"\r\n");
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A field's value from a raw response head (first occurrence, case-insensitive name).
fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn hdr<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    v["headers"][name].as_str()
}

// ---------------------------------------------------------------------------------------------
// 1. Header rules (RFC 9110 §7.6)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_fields_do_not_reach_the_backend() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let req = Request::get("/hop")
        .header("host", "shop.example.com")
        .header("connection", "keep-alive, x-hop-a")
        .header("connection", "X-Hop-B")
        .header("x-hop-a", "1")
        .header("x-hop-b", "2")
        .header("keep-alive", "timeout=5")
        .header("te", "deflate;q=0.5, trailers")
        .header("upgrade", "websocket")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA==")
        .header("x-end-to-end", "kept")
        .header("authorization", "Bearer end-to-end")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(p.addr(), req).await;
    assert_eq!(r.status(), 200);
    let v = echo(&r);
    for gone in [
        "connection",
        "x-hop-a",
        "x-hop-b",
        "keep-alive",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            v["headers"].get(gone).is_none(),
            "{gone} reached the backend: {}",
            v["headers"]
        );
    }
    // TE is hop-by-hop: the client's value stops here; this hop sends its own (trailers only).
    assert_eq!(hdr(&v, "te"), Some("trailers"));
    assert_eq!(hdr(&v, "x-end-to-end"), Some("kept"));
    assert_eq!(hdr(&v, "authorization"), Some("Bearer end-to-end"));
    assert_eq!(hdr(&v, "host"), Some("shop.example.com"));

    // An h2c upgrade offer (what `curl --http2 http://...` sends) is not tunnelled: the request
    // is served as HTTP/1.1 and neither Upgrade nor the fields Connection names go on.
    let req = Request::get("/h2c-offer")
        .header("host", "shop.example.com")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(p.addr(), req).await;
    assert_eq!(r.status(), 200);
    let v = echo(&r);
    assert_eq!(v["path"], "/h2c-offer");
    for gone in ["connection", "upgrade", "http2-settings"] {
        assert!(
            v["headers"].get(gone).is_none(),
            "{gone} reached the backend: {}",
            v["headers"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_is_redone_per_hop_not_copied() {
    // The client's chunked framing is decoded and the body re-framed towards the backend: the
    // backend sees one `chunked`, not the client's field copied next to the proxy's own.
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let mut raw = Raw::connect(p.addr()).await;
    raw.write(
        b"POST /te HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = raw.read_body(&head).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_bytes"], 11);
    let te = hdr(&v, "transfer-encoding");
    assert!(
        te.is_none() || te == Some("chunked"),
        "backend saw transfer-encoding {te:?}"
    );
    assert!(
        te.is_some() || hdr(&v, "content-length") == Some("11"),
        "the body reached the backend without framing: {}",
        v["headers"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_fields_do_not_reach_the_client() {
    let raw = RawBackend::replying(
        b"HTTP/1.1 200 OK\r\n\
          Content-Length: 2\r\n\
          Connection: close, X-Resp-Hop\r\n\
          X-Resp-Hop: secret\r\n\
          Keep-Alive: timeout=5, max=100\r\n\
          Proxy-Authenticate: Basic realm=\"upstream\"\r\n\
          Proxy-Connection: keep-alive\r\n\
          Upgrade: h2c\r\n\
          Via: 1.1 upstream-cache\r\n\
          X-End-To-End: kept\r\n\
          \r\nok",
    )
    .start()
    .await;
    let p = Proxy::start(&simple_config(&[raw.addr], ""));
    let r = get(p.addr(), "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.body()[..], b"ok");
    for gone in [
        "x-resp-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            r.headers().get(gone).is_none(),
            "{gone} reached the client: {:?}",
            r.headers()
        );
    }
    // The client connection's own Connection field (if any) is the proxy's, not the backend's.
    for c in r.headers().get_all("connection") {
        let c = c.to_str().unwrap().to_ascii_lowercase();
        assert!(!c.contains("x-resp-hop"), "backend's Connection leaked: {c}");
    }
    assert_eq!(r.headers()["x-end-to-end"], "kept");
    let via: Vec<_> = r
        .headers()
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(via.join(", "), "1.1 upstream-cache, 1.1 waypost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_fields_via_and_host_towards_the_backend() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));

    // No earlier proxy: the list starts with the client.
    let r = get_host(p.addr(), "Shop.Example.com:8080", "/a").await;
    let v = echo(&r);
    assert_eq!(hdr(&v, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(hdr(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(hdr(&v, "x-forwarded-host"), Some("Shop.Example.com:8080"));
    assert_eq!(hdr(&v, "host"), Some("Shop.Example.com:8080"));
    assert_eq!(hdr(&v, "via"), Some("1.1 waypost"));
    assert_eq!(r.headers()["via"], "1.1 waypost");

    // Behind other proxies: the client address is appended to the existing list (two lines are
    // one list), Via is appended to, and a client cannot claim https on a plain listener.
    let req = Request::get("/b")
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "198.51.100.4, 192.0.2.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("via", "1.0 edge")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let v = echo(&send(p.addr(), req).await);
    assert_eq!(
        hdr(&v, "x-forwarded-for"),
        Some("203.0.113.9, 198.51.100.4, 192.0.2.1, 127.0.0.1")
    );
    assert_eq!(hdr(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(hdr(&v, "x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(hdr(&v, "host"), Some("shop.example.com"));
    assert_eq!(hdr(&v, "via"), Some("1.0 edge, 1.1 waypost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_authority_reaches_an_http1_backend_as_host() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let r = send_h2(
        p.addr(),
        Request::get("http://h2.example.com/over-h2?q=1")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.headers()["via"], "1.1 waypost");
    let v = echo(&r);
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["path"], "/over-h2");
    assert_eq!(v["query"], "q=1");
    assert_eq!(hdr(&v, "host"), Some("h2.example.com"));
    assert_eq!(hdr(&v, "x-forwarded-host"), Some("h2.example.com"));
    assert_eq!(hdr(&v, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(hdr(&v, "via"), Some("1.1 waypost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrites_only_its_route() {
    let api = TestBackend::start("api").await.unwrap();
    let web = TestBackend::start("web").await.unwrap();
    let p = Proxy::start(
        &Config::new()
            .log("access = \"off\"")
            .listener("http", "127.0.0.1:0", "")
            .pool("api", &[api.addr], "")
            .pool("web", &[web.addr], "")
            .route("api", "path_prefix = \"/api/\"\nstrip_prefix = true\npool = \"api\"")
            .route(
                "legacy",
                "path_prefix = \"/legacy\"\nstrip_prefix = true\npool = \"api\"",
            )
            .route("web", "path_prefix = \"/\"\npool = \"web\"")
            .build(),
    );
    let cases = [
        ("/api/users/7?x=1&y=2", "api", "/users/7", Some("x=1&y=2")),
        ("/api/", "api", "/", None),
        ("/legacy/old/page", "api", "/old/page", None),
        ("/legacy", "api", "/", None),
        ("/web/api/users", "web", "/web/api/users", None),
        ("/apix", "web", "/apix", None),
    ];
    for (path, backend, seen, query) in cases {
        let v = echo(&get(p.addr(), path).await);
        assert_eq!(v["backend"], backend, "{path}");
        assert_eq!(v["path"], seen, "{path}");
        assert_eq!(v["query"].as_str(), query, "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Streaming

/// A repeating pattern that makes reordered, lost or duplicated bytes visible: byte i of the
/// stream is `i % 251`. `PATTERN[o % 251..]` is the stream from offset o on.
const CHUNK: usize = 64 * 1024;
fn pattern() -> Bytes {
    Bytes::from((0..CHUNK + 251).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// Check `data`, found at stream offset `at`, against the pattern.
fn check_pattern(pat: &Bytes, at: u64, data: &[u8]) {
    let mut off = at;
    for piece in data.chunks(CHUNK) {
        let start = (off % 251) as usize;
        if piece != &pat[start..start + piece.len()] {
            panic!("corrupt data in the byte range starting at {off}");
        }
        off += piece.len() as u64;
    }
}

/// Samples a process's RSS until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, pk) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                pk.fetch_max(rss_of(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { stop, peak, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// RSS growth allowed over a gigabyte transfer: a streaming proxy holds a few buffers per
/// connection, never the body.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_and_download_stream_in_constant_memory() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], r#"response_timeout = "120s""#));
    // Warm up (first connections, first request through every phase) before the baseline.
    assert_eq!(get(p.addr(), "/warm").await.status(), 200);
    let base = p.rss_kib();
    assert!(base > 0, "cannot read the proxy's RSS");
    let sampler = RssSampler::start(p.pid());
    let started = Instant::now();

    // Upload 1 GiB of unknown length (chunked); the backend streams it straight back, so the
    // same exchange downloads 1 GiB too. Neither side ever holds more than a chunk.
    let pat = pattern();
    let up = pat.clone();
    let body = StreamBody::new(futures_util::stream::unfold(0u64, move |sent| {
        let up = up.clone();
        async move {
            if sent >= GIB {
                return None;
            }
            let n = (GIB - sent).min(CHUNK as u64) as usize;
            let start = (sent % 251) as usize;
            let frame = Frame::data(up.slice(start..start + n));
            Some((Ok::<_, Infallible>(frame), sent + n as u64))
        }
    }));
    let mut sender = h1_conn(p.addr()).await;
    let req = Request::post("/upload")
        .header("host", "big.example")
        .header("x-test-echo", "1")
        .body(body)
        .unwrap();
    let resp = within(30, "response head", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    within(600, "1 GiB echo", async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download broke");
            if let Some(d) = frame.data_ref() {
                check_pattern(&pat, got, d);
                got += d.len() as u64;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let peak = sampler.finish().await;
    eprintln!(
        "1 GiB up + 1 GiB down via echo: {:.1}s; proxy RSS base {} KiB, peak {} KiB",
        elapsed.as_secs_f64(),
        base,
        peak
    );
    assert_eq!(got, GIB, "downloaded byte count");
    assert!(
        peak.saturating_sub(base) < RSS_GROWTH_LIMIT_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB while streaming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_with_content_length_streams_in_constant_memory() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    assert_eq!(get(p.addr(), "/warm").await.status(), 200);
    let base = p.rss_kib();
    let sampler = RssSampler::start(p.pid());
    let started = Instant::now();
    let mut sender = h1_conn::<Full<Bytes>>(p.addr()).await;
    let req = Request::get(format!("/bytes/{GIB}"))
        .header("host", "big.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(30, "response head", sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    let mut body = resp.into_body();
    let mut got = 0u64;
    within(600, "1 GiB download", async {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("download broke").data_ref() {
                assert!(d.iter().all(|&c| c == b'w') || d.is_empty(), "corrupt data");
                got += d.len() as u64;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let peak = sampler.finish().await;
    eprintln!(
        "1 GiB download: {:.1}s; proxy RSS base {} KiB, peak {} KiB",
        elapsed.as_secs_f64(),
        base,
        peak
    );
    assert_eq!(got, GIB);
    assert!(
        peak.saturating_sub(base) < RSS_GROWTH_LIMIT_KIB,
        "proxy RSS grew from {base} KiB to {peak} KiB while streaming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_of_unknown_length_arrive_whole() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));

    // Through hyper: uneven chunk sizes, 8 MiB and a bit in total.
    let mut frames = Vec::new();
    let mut total = 0u64;
    for i in 0..300u64 {
        let n = 1 + (i * 7919) % 56_000;
        frames.push(Frame::data(Bytes::from(vec![b'c'; n as usize])));
        total += n;
    }
    let mut sender = h1_conn(p.addr()).await;
    let req = Request::put("/chunked")
        .header("host", "c.example")
        .body(frames_body(frames))
        .unwrap();
    let resp = within(30, "chunked upload", sender.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, _) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body_bytes"], total);

    // On a raw socket, with chunk extensions and uneven sizes, echoed back byte for byte.
    let mut raw = Raw::connect(p.addr()).await;
    raw.write(
        b"POST /echo HTTP/1.1\r\nHost: c.example\r\nx-test-echo: 1\r\n\
          Transfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n1\r\nd\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
    )
    .await;
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(raw.read_body(&head).await, b"abcd0123456789abcdef");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_bodies_without_length_reach_an_http1_backend() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let frames = (0..64)
        .map(|i| Frame::data(Bytes::from(vec![b'h'; 1000 + i])))
        .collect();
    let total: usize = (0..64).map(|i| 1000 + i).sum();
    let mut h2 = h2_conn(p.addr()).await;
    let req = Request::post("http://h2.example/upload")
        .body(frames_body(frames))
        .unwrap();
    let resp = within(30, "h2 upload", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, _) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_bytes"], total);
}

// ---------------------------------------------------------------------------------------------
// 4. Trailers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_an_http1_client() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let mut sender = h1_conn::<Full<Bytes>>(p.addr()).await;
    let req = Request::get("/with-trailers")
        .header("host", "t.example")
        .header("te", "trailers")
        .header("x-test-trailers", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(20, "response", sender.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["trailer"], "x-checksum");
    let (body, t) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("backend JSON");
    assert_eq!(v["backend"], "b1");
    let t = t.expect("the backend's trailers did not reach the HTTP/1.1 client");
    assert_eq!(t["x-checksum"], body.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_an_h2_client() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let mut h2 = h2_conn::<Full<Bytes>>(p.addr()).await;
    let req = Request::get("http://t.example/with-trailers")
        .header("te", "trailers")
        .header("x-test-trailers", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(20, "response", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, t) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("backend JSON");
    assert_eq!(v["backend"], "b1");
    let t = t.expect("the backend's trailers did not reach the h2 client");
    assert_eq!(t["x-checksum"], body.len().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_the_backend() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));

    // From an HTTP/1.1 client (chunked, declared in Trailer).
    let mut sender = h1_conn(p.addr()).await;
    let req = Request::post("/h1")
        .header("host", "t.example")
        .header("trailer", "x-req-sum")
        .body(frames_body(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::data(Bytes::from_static(b" world")),
            Frame::trailers(trailers(&[("x-req-sum", "11")])),
        ]))
        .unwrap();
    let resp = within(20, "h1 request", sender.send_request(req)).await.unwrap();
    let (body, _) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_bytes"], 11);
    assert_eq!(v["trailers"]["x-req-sum"], "11", "h1: {v}");

    // From an h2 client: trailers need no declaration there, but the HTTP/1.1 hop does.
    let mut h2 = h2_conn(p.addr()).await;
    let req = Request::post("http://t.example/h2")
        .header("trailer", "x-req-sum")
        .body(frames_body(vec![
            Frame::data(Bytes::from_static(b"abc")),
            Frame::trailers(trailers(&[("x-req-sum", "3")])),
        ]))
        .unwrap();
    let resp = within(20, "h2 request", h2.send_request(req)).await.unwrap();
    let (body, _) = collect_with_trailers(resp.into_body()).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_bytes"], 3);
    assert_eq!(v["trailers"]["x-req-sum"], "3", "h2: {v}");

    // On a raw socket.
    let mut raw = Raw::connect(p.addr()).await;
    raw.write(
        b"POST /raw HTTP/1.1\r\nHost: t.example\r\nTrailer: x-req-sum\r\n\
          Transfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\nx-req-sum: 4\r\n\r\n",
    )
    .await;
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&raw.read_body(&head).await).unwrap();
    assert_eq!(v["trailers"]["x-req-sum"], "4", "raw: {v}");
}

// ---------------------------------------------------------------------------------------------
// 5. Expect: 100-continue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_continue_before_the_body_is_sent() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let body = vec![b'e'; 100_000];
    let mut raw = Raw::connect(p.addr()).await;
    raw.write(
        format!(
            "PUT /upload HTTP/1.1\r\nHost: e.example\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    // Nothing of the body is sent until the interim response arrives.
    let interim = raw.read_head().await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "expected 100 Continue, got {interim:?}"
    );
    raw.write(&body).await;
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&raw.read_body(&head).await).unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body_bytes"], body.len());

    // The connection stays usable afterwards.
    raw.write(b"GET /after HTTP/1.1\r\nHost: e.example\r\n\r\n").await;
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&raw.read_body(&head).await).unwrap();
    assert_eq!(v["path"], "/after");
}

// ---------------------------------------------------------------------------------------------
// 6. WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_ping_and_close_are_tunnelled() {
    let b = TestBackend::start("ws").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let stream = TcpStream::connect(p.addr()).await.unwrap();
    let url = format!("ws://{}/chat", p.addr());
    let (mut ws, resp) = within(10, "websocket handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["via"], "1.1 waypost");

    async fn next(
        ws: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    ) -> Message {
        within(10, "websocket message", ws.next())
            .await
            .expect("websocket closed early")
            .expect("websocket error")
    }

    ws.send(Message::Text("hello through waypost".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("hello through waypost".into()));

    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::Binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Binary(binary));

    ws.send(Message::Ping(b"are you there".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Pong(b"are you there".to_vec()));

    // Several messages in flight at once come back in order.
    for i in 0..20 {
        ws.feed(Message::Text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..20 {
        assert_eq!(next(&mut ws).await, Message::Text(format!("m{i}")));
    }

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Normal);
            assert_eq!(f.reason, "bye");
        }
        other => panic!("expected the close echoed, got {other:?}"),
    }
    // After the close handshake the stream ends, and the tunnel's hold on the backend is let go.
    let end = within(10, "websocket end", ws.next()).await;
    assert!(end.is_none() || end.unwrap().is_err());
    drop(ws);
    let released = eventually(Duration::from_secs(10), || async {
        let (_, s) = p.admin_get("/status").await;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v["pools"][0]["backends"][0]["in_flight"] == 0
    })
    .await;
    assert!(released, "the backend stayed in flight after the WebSocket closed");
}

// ---------------------------------------------------------------------------------------------
// 7. h2c and HTTP/1.1 on one listener; keep-alive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_share_a_listener_and_keep_their_connections() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));

    // HTTP/1.1 keep-alive: several requests, GETs and a POST with a body, on one connection.
    let mut h1 = h1_conn::<Full<Bytes>>(p.addr()).await;
    for i in 0..5 {
        let req = if i == 2 {
            Request::post(format!("/h1/{i}"))
                .header("host", "k.example")
                .body(Full::new(Bytes::from_static(b"some body")))
        } else {
            Request::get(format!("/h1/{i}"))
                .header("host", "k.example")
                .body(Full::new(Bytes::new()))
        }
        .unwrap();
        within(10, "h1 ready", h1.ready()).await.expect("connection reusable");
        let resp = within(10, "h1 request", h1.send_request(req))
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        let (body, _) = collect_with_trailers(resp.into_body()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], format!("/h1/{i}"));
        assert_eq!(v["body_bytes"], if i == 2 { 9 } else { 0 });
    }

    // h2c with prior knowledge on the same port: sequential and concurrent streams on one
    // connection.
    let mut h2 = h2_conn::<Full<Bytes>>(p.addr()).await;
    for i in 0..3 {
        let resp = within(
            10,
            "h2 request",
            h2.send_request(
                Request::get(format!("http://k.example/h2/{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let (body, _) = collect_with_trailers(resp.into_body()).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], format!("/h2/{i}"));
    }
    let concurrent = (0..16).map(|i| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get(format!("http://k.example/c/{i}"))
                .header("x-test-delay", "50ms")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = h2.send_request(req).await.expect("concurrent h2 stream");
            let status = resp.status();
            let (body, _) = collect_with_trailers(resp.into_body()).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, v["path"].as_str().unwrap().to_string(), i)
        }
    });
    for (status, path, i) in within(30, "concurrent h2", futures_util::future::join_all(concurrent)).await {
        assert_eq!(status, 200);
        assert_eq!(path, format!("/c/{i}"));
    }

    // Exactly the two client connections above were accepted: nothing was reconnected.
    assert_eq!(
        p.metric(r#"waypost_connections_total{listener="http"}"#).await,
        Some(2.0)
    );
}
