//! A test backend for the demo and the integration tests: a real HTTP/1.1 + h2c server on
//! loopback that says who it is and what it received, and can be told to fail, hang, lag or
//! reset. It streams (never buffers) bodies, so it can take part in gigabyte transfers.
//!
//! Per-request controls (request headers): `x-test-status: 503`, `x-test-delay: 250ms`,
//! `x-test-echo: 1` (stream the request body back), `x-test-trailers: 1` (a chunked response
//! with a trailer), `content-type: application/grpc` (trailers `grpc-status: 0` and
//! `grpc-message`). `GET /bytes/N` streams N bytes. `Upgrade: websocket` gets a WebSocket echo.
//! Whole-backend behaviour: [`TestBackend::set_mode`]. What it saw, counted at the backend:
//! [`TestBackend::hits`], [`TestBackend::in_flight`] and its peak, the methods received and
//! the body bytes it sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What the backend does with every request, whatever the request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answer every request with this status.
    Status(u16),
    /// Never answer.
    Hang,
    /// Answer normally after this delay.
    Lag(Duration),
    /// Close the connection without answering.
    Reset,
    /// Hold every request until the mode changes, then act on the new mode.
    Hold,
}

struct Inner {
    name: String,
    hits: AtomicU64,
    /// Requests being answered now (from arrival until the response head is ready), and the
    /// most there ever were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Body bytes sent by `/bytes/N` responses.
    sent: Arc<AtomicU64>,
    /// The method of every request, in arrival order.
    methods: Mutex<Vec<String>>,
    mode: Mutex<Mode>,
    /// Wakes held requests when the mode changes.
    mode_changed: tokio::sync::Notify,
    /// Added to every response (health checks included): e.g. a replica's lag or role.
    headers: Mutex<Vec<(http::HeaderName, HeaderValue)>>,
}

impl Inner {
    fn new(name: &str) -> Inner {
        Inner {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            sent: Arc::new(AtomicU64::new(0)),
            methods: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Normal),
            mode_changed: tokio::sync::Notify::new(),
            headers: Mutex::new(Vec::new()),
        }
    }

    fn mode(&self) -> Mode {
        self.mode.lock().map(|m| m.clone()).unwrap_or(Mode::Normal)
    }
}

/// Counts one request in flight until dropped.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> InFlight<'a> {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TestBackend {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBackend {
    /// Start on 127.0.0.1 with a free port.
    pub async fn start(name: &str) -> std::io::Result<TestBackend> {
        Self::start_on("127.0.0.1:0".parse().expect("static address"), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<TestBackend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::new(name));
        let task = tokio::spawn(accept(listener, inner.clone(), None));
        Ok(TestBackend { addr, inner, task })
    }

    /// Start on 127.0.0.1 with a free port, serving TLS with this PEM certificate chain and key.
    /// ALPN offers h2 and http/1.1 when `h2` is set, else only http/1.1.
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str, h2: bool) -> std::io::Result<TestBackend> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad(&e))?;
        cfg.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::new(name));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let task = tokio::spawn(accept(listener, inner.clone(), Some(acceptor)));
        Ok(TestBackend { addr, inner, task })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Requests received so far (WebSocket upgrades included).
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::Relaxed)
    }

    /// Requests being answered right now (held or delayed ones included).
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests this backend was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Body bytes sent so far by `GET /bytes/N` responses (generated as the proxy reads them).
    pub fn bytes_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// The methods of the requests received, in arrival order.
    pub fn methods(&self) -> Vec<String> {
        self.inner.methods.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn set_mode(&self, mode: Mode) {
        if let Ok(mut m) = self.inner.mode.lock() {
            *m = mode;
        }
        self.inner.mode_changed.notify_waiters();
    }

    /// Add `name: value` to every response from now on (replacing an earlier value).
    pub fn set_header(&self, name: &'static str, value: &str) {
        if let (Ok(mut h), Ok(v)) = (self.inner.headers.lock(), HeaderValue::from_str(value)) {
            let name = http::HeaderName::from_static(name);
            h.retain(|(n, _)| *n != name);
            h.push((name, v));
        }
    }

    /// Stop listening and cut every open connection, like a crashed process.
    pub fn kill(self) {
        drop(self)
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>, tls: Option<tokio_rustls::TlsAcceptor>) {
    // Connections live in this set: aborting the accept task aborts them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(req, inner.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                    }
                }
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

async fn handle(req: Request<Incoming>, inner: Arc<Inner>) -> Result<Response<Body>, BoxError> {
    let mut r = respond(req, inner.clone()).await?;
    if let Ok(extra) = inner.headers.lock() {
        for (n, v) in extra.iter() {
            r.headers_mut().insert(n.clone(), v.clone());
        }
    }
    Ok(r)
}

async fn respond(mut req: Request<Incoming>, inner: Arc<Inner>) -> Result<Response<Body>, BoxError> {
    inner.hits.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::enter(&inner);
    if let Ok(mut m) = inner.methods.lock() {
        m.push(req.method().to_string());
    }
    let mode = loop {
        let changed = inner.mode_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match inner.mode() {
            Mode::Hold => changed.await,
            m => break m,
        }
    };
    match mode {
        // Hold was waited out above.
        Mode::Normal | Mode::Hold => {}
        Mode::Status(code) => {
            let mut r = Response::new(full(format!("backend {} failing with {code}\n", inner.name)));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(r);
        }
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Lag(d) => tokio::time::sleep(d).await,
        Mode::Reset => return Err("reset by test backend".into()),
    }
    if let Some(d) = req
        .headers()
        .get("x-test-delay")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| crate::config::parse_duration(s).ok())
    {
        tokio::time::sleep(d).await;
    }
    if is_websocket(req.headers()) {
        return Ok(websocket(&mut req));
    }
    let status = req
        .headers()
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Ok(stream_bytes(n, status, inner.sent.clone()));
    }
    if req.headers().get("x-test-echo").is_some() {
        let mut r = Response::new(req.into_body().map_err(BoxError::from).boxed());
        *r.status_mut() = status;
        r.headers_mut().insert("x-backend", HeaderValue::from_str(&inner.name)?);
        return Ok(r);
    }
    let trailers = req.headers().get("x-test-trailers").is_some();
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    let mut got_trailers = serde_json::Map::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            body_bytes += d.len() as u64;
        } else if let Some(t) = frame.trailers_ref() {
            for (k, v) in t {
                got_trailers.insert(k.to_string(), v.to_str().unwrap_or("").into());
            }
        }
    }
    let mut headers = serde_json::Map::new();
    for k in parts.headers.keys() {
        let joined: Vec<&str> = parts
            .headers
            .get_all(k)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        headers.insert(k.to_string(), joined.join(", ").into());
    }
    let info = serde_json::json!({
        "backend": inner.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "trailers": got_trailers,
    });
    let mut text = serde_json::to_vec(&info)?;
    text.push(b'\n');
    let body = if grpc {
        // gRPC-style: the status travels in trailers.
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from(text))), Ok(Frame::trailers(t))];
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    } else if trailers {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_str(&format!("{}", text.len()))?);
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from(text))), Ok(Frame::trailers(t))];
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    } else {
        full(text)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if grpc { "application/grpc" } else { "application/json" }),
    );
    r.headers_mut().insert("x-backend", HeaderValue::from_str(&inner.name)?);
    if trailers {
        r.headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
    }
    Ok(r)
}

/// N bytes of a repeating pattern, 64 KiB at a time, generated as it is read.
fn stream_bytes(n: u64, status: StatusCode, sent: Arc<AtomicU64>) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'w'; CHUNK]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        let sent = sent.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64) as usize;
            sent.fetch_add(take as u64, Ordering::Relaxed);
            Some((Ok::<_, BoxError>(Frame::data(chunk.slice(..take))), left - take as u64))
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    r
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .map(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .unwrap_or(false)
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let mut sha = Sha1::new();
    sha.update(&key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(io) = on_upgrade.await {
            let _ = ws_echo(TokioIo::new(io)).await;
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Echo WebSocket messages (RFC 6455 framing: client frames masked, ours not); answer pings,
/// echo close and stop.
async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            len = u64::from(io.read_u16().await?);
        } else if len == 127 {
            len = io.read_u64().await?;
        }
        if len > 16 << 20 {
            return Err(std::io::Error::other("frame too large for the test backend"));
        }
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_opcode = match opcode {
            0x9 => 0xA,      // ping -> pong
            0xA => continue, // unsolicited pong
            op => op,
        };
        let mut frame = vec![0x80 | reply_opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&payload);
        io.write_all(&frame).await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}
