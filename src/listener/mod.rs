//! Listening sockets: bind, accept under the process-wide connection limit, and serve each
//! connection with HTTP/1.1 and h2c (prior knowledge) on the same port (over TLS when the
//! listener has it, h2 then chosen by ALPN), draining gracefully
//! when the listener is removed or the process stops.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::metrics::Counter;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::admin::metrics;
use crate::config::ServerConfig;
use crate::proxy::{self, ConnInfo};
use crate::state::State;
use guard::{Activity, Guard, Limits, Tracked};

pub mod framing;
pub mod guard;
pub mod proxy_protocol;
pub mod tls;

/// Per-listener counters, shared by every worker's accept loop.
pub struct ListenerStats {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    pub active: AtomicUsize,
    total: Counter,
    /// Requests refused for client limits and framing.
    pub client_errors: metrics::ClientErrors,
}

impl ListenerStats {
    pub fn new(name: &str, bind: SocketAddr, proxy_protocol: bool) -> ListenerStats {
        ListenerStats {
            name: name.into(),
            bind,
            proxy_protocol,
            active: AtomicUsize::new(0),
            total: metrics::connections_total(name),
            client_errors: metrics::ClientErrors::new(name),
        }
    }
}

/// The process-wide count of open client connections, with the limit past which accepting pauses.
/// What the listeners share with the control plane: the current generation (each request loads
/// it once), the connection gate and the drain signal.
pub struct Plane {
    pub state: ArcSwap<State>,
    pub gate: ConnGate,
    /// Turns true once at shutdown: every connection finishes its request and closes.
    pub drain: watch::Sender<bool>,
}

pub struct ConnGate {
    active: AtomicUsize,
    max: AtomicUsize,
    changed: Notify,
}

impl ConnGate {
    pub fn new(max: usize) -> ConnGate {
        ConnGate {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            changed: Notify::new(),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Wait until a connection may be accepted.
    async fn admit(&self) {
        loop {
            let notified = self.changed.notified();
            if self.active.load(Ordering::Relaxed) < self.max.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Wait for a free slot and take it for an accepted connection. Every worker accepts on its
    /// own, so two may both have been admitted for the last slot: the one that loses holds its
    /// connection unserved, as if still in the kernel's queue, until a slot frees.
    async fn take(&self) {
        loop {
            let notified = self.changed.notified();
            let active = self.active.load(Ordering::Relaxed);
            if active < self.max.load(Ordering::Relaxed) {
                if self
                    .active
                    .compare_exchange(active, active + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            notified.await;
        }
    }

    /// Wait until no connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.active.load(Ordering::Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one connection open until dropped.
/// Counts one client connection open until the last holder drops it: the connection task, and
/// a WebSocket or other upgraded tunnel that outlives the HTTP exchange.
struct Open {
    shared: Arc<Plane>,
    stats: Arc<ListenerStats>,
}

impl Drop for Open {
    fn drop(&mut self) {
        let gate = &self.shared.gate;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        gate.active.fetch_sub(1, Ordering::Relaxed);
        gate.changed.notify_waiters();
    }
}

/// Bind a listening socket the way a server should: reuse the address across restarts, a deep
/// accept backlog, non-blocking for the runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The HTTP servers of a generation's `[server]` settings: HTTP/1.1 and HTTP/2 for connections
/// whose protocol is known before the first read (ALPN, or the first bytes peeked), and the
/// detecting one for the rest. Knowing it first spares hyper's detection, whose separate read of
/// the first 24 bytes makes hyper's read buffer grow to 16 KiB for the life of the connection.
pub struct Servers {
    auto: auto::Builder<TokioExecutor>,
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Servers {
    fn new(cfg: &ServerConfig) -> Servers {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        let mut h1 = hyper::server::conn::http1::Builder::new();
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Head and small bodies go out in one flat write: measured cheaper than writev here.
        // The guard answers slow heads with 408 (hyper's own timeout closes without a word), and
        // refuses heads over max_header_bytes before hyper's buffer fills (its minimum is 8 KiB).
        let max_buf = (cfg.max_header_bytes + 1).max(8192);
        auto.http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .writev(false)
            .header_read_timeout(None)
            .max_buf_size(max_buf);
        h1.keep_alive(true)
            .timer(TokioTimer::new())
            .writev(false)
            .header_read_timeout(None)
            .max_buf_size(max_buf);
        let header_list = u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX);
        auto.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.h2_max_concurrent_streams)
            .max_header_list_size(header_list)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.h2_max_concurrent_streams)
            .max_header_list_size(header_list)
            // Rapid reset (CVE-2023-44487): streams a client resets before they are served.
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            // Streams reset because the client broke the protocol on them (CVE-2025-8671).
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
        Servers { auto, h1, h2 }
    }
}

/// Which HTTP a connection speaks, as far as known before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    /// Not known: hyper looks at the first bytes.
    Detect,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which HTTP a plain connection speaks, from its first bytes, peeked (hyper still reads them):
/// HTTP/2 with prior knowledge starts with its preface. Waiting for them also keeps hyper's
/// buffers unallocated while a client says nothing. None: the client closed.
async fn sniff(
    stream: &TcpStream,
    head_deadline: tokio::time::Instant,
    shared: &Plane,
    stop: &mut watch::Receiver<bool>,
) -> Option<Proto> {
    let mut buf = [0u8; 24];
    let mut drain = shared.drain.subscribe();
    let peeked = tokio::select! {
        r = stream.peek(&mut buf) => r,
        // Nothing in time: the guard's head timer has run out and answers 408 at once.
        _ = tokio::time::sleep_until(head_deadline) => return Some(Proto::H1),
        // Draining: serve_http gives a silent new connection its grace period.
        _ = drain.wait_for(|d| *d) => return Some(Proto::Detect),
        _ = stop.wait_for(|s| *s) => return Some(Proto::Detect),
    };
    match peeked {
        Ok(0) | Err(_) => None,
        Ok(n) if buf[..n] != H2_PREFACE[..n] => Some(Proto::H1),
        Ok(24) => Some(Proto::H2),
        // Part of the preface so far: let hyper wait for the rest.
        Ok(_) => Some(Proto::Detect),
    }
}

/// HTTP/2: streams reset by the client before they were served, past which the connection is
/// closed with GOAWAY (ENHANCE_YOUR_CALM).
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: streams the server had to reset for the client's protocol errors, over the
/// connection's life, past which it is closed with GOAWAY.
const H2_MAX_ERROR_RESETS: usize = 256;

fn limits(cfg: &ServerConfig) -> Limits {
    Limits {
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        max_header_bytes: cfg.max_header_bytes,
    }
}

/// Accept connections on one worker until `stop` turns true.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    stats: Arc<ListenerStats>,
    shared: Arc<Plane>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %stats.name, error = %e, "cannot register listener");
            return;
        }
    };
    // The server settings follow the generation: rebuilt when a reload brings a new one.
    let mut generation = 0;
    let mut servers = Arc::new(Servers::new(&ServerConfig::default()));
    let mut conn_limits = limits(&ServerConfig::default());
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = shared.gate.admit() => {}
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = shared.gate.take() => {}
                }
                stats.active.fetch_add(1, Ordering::Relaxed);
                stats.total.increment(1);
                {
                    let state = shared.state.load();
                    if state.generation != generation {
                        generation = state.generation;
                        servers = Arc::new(Servers::new(&state.config.server));
                        conn_limits = limits(&state.config.server);
                    }
                }
                tokio::spawn(serve(
                    stream,
                    peer,
                    stats.clone(),
                    shared.clone(),
                    (servers.clone(), conn_limits),
                    stop.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors or a transient error: back off briefly instead of
                // spinning; connections already open keep being served.
                tracing::warn!(listener = %stats.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection's HTTP settings: the servers and the guard's limits.
type Http = (Arc<Servers>, Limits);

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Plane>,
    http: Http,
    stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Open {
        shared: shared.clone(),
        stats: stats.clone(),
    });
    let _ = stream.set_nodelay(true);
    let head_deadline = crate::clock::now() + http.1.header_read_timeout;
    let (tls, redirect_https) = {
        let state = shared.state.load();
        (
            state.tls_for(&stats.name),
            state.listener_config(&stats.name).and_then(|l| l.redirect_https),
        )
    };
    let mut conn = Conn {
        peer,
        stats,
        shared,
        http,
        stop,
        open,
        redirect_https,
        head_deadline,
    };
    if !conn.stats.proxy_protocol {
        let proto = match tls {
            Some(_) => Proto::Detect,
            None => match sniff(&stream, head_deadline, &conn.shared, &mut conn.stop).await {
                Some(p) => p,
                None => return,
            },
        };
        return serve_conn(stream, conn, tls, proto).await;
    }
    // Behind an L4 balancer: the client is the PROXY header's source. A connection without a
    // valid header in time is closed and counted; it is never served as if it were direct.
    match proxy_protocol::read_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
        Ok((source, rest)) => {
            let io = proxy_protocol::Rewind::new(stream, rest);
            let conn = Conn {
                peer: source.unwrap_or(peer),
                ..conn
            };
            serve_conn(io, conn, tls, Proto::Detect).await
        }
        Err(e) => {
            metrics::proxy_protocol_error(&conn.stats.name);
            tracing::debug!(peer = %peer, error = %e, "PROXY protocol header refused; closing");
        }
    }
}

/// What serving a connection needs besides its byte stream.
struct Conn {
    /// The client: the socket's peer, or the PROXY header's source.
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Plane>,
    http: Http,
    stop: watch::Receiver<bool>,
    /// The connection's place in the counts; the HTTP exchange takes it over.
    open: Arc<Open>,
    redirect_https: Option<u16>,
    /// When the first request head is due (header_read_timeout after accepting).
    head_deadline: tokio::time::Instant,
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection's requests need to know about it besides the peer: its scheme, the
/// verified client certificate, the listener's header and redirect settings.
struct ConnExtra {
    scheme: &'static str,
    /// Removed from every request; set to `client_subject` when there is one.
    cert_header: http::HeaderName,
    client_subject: Option<http::HeaderValue>,
    hsts: Option<http::HeaderValue>,
    redirect_https: Option<u16>,
}

/// Terminate TLS when the listener has it in the generation of the accept (a reload applies to
/// new connections), then serve HTTP.
async fn serve_conn<IO>(io: IO, conn: Conn, tls: Option<Arc<tls::TlsListener>>, proto: Proto)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = tls else {
        let extra = ConnExtra {
            scheme: "http",
            cert_header: http::HeaderName::from_static(crate::config::tls::DEFAULT_CLIENT_CERT_HEADER),
            client_subject: None,
            hsts: None,
            redirect_https: conn.redirect_https,
        };
        return serve_http(io, conn, extra, proto).await;
    };
    // Boxed: a TLS connection's state (the handshake, then the TLS stream under hyper) is
    // several KB; inline, it would size the task of every connection, plain ones too.
    Box::pin(serve_tls(io, conn, tls)).await
}

/// Terminate TLS with this generation's settings, then serve HTTP over it.
async fn serve_tls<IO>(io: IO, mut conn: Conn, tls: Arc<tls::TlsListener>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tls.handshake_errors.increment(1);
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tls.handshake_errors.increment(1);
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    tls.handshakes.increment(1);
    let extra = ConnExtra {
        scheme: "https",
        cert_header: tls.client_cert_header.clone(),
        client_subject: tls::client_subject(stream.get_ref().1),
        hsts: tls.hsts.clone(),
        redirect_https: None,
    };
    drop(tls);
    // The first head is due header_read_timeout after the handshake; ALPN names the protocol.
    conn.head_deadline = crate::clock::now() + conn.http.1.header_read_timeout;
    let proto = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        Some(b"http/1.1") => Proto::H1,
        _ => Proto::Detect,
    };
    serve_http(stream, conn, extra, proto).await
}

/// How long an L4 balancer may take to send the PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve HTTP on a connection until it ends, is idle for `idle_timeout`, or drains.
async fn serve_http<IO>(stream: IO, conn: Conn, extra: ConnExtra, proto: Proto)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        stats,
        shared,
        http: (servers, limits),
        stop,
        open,
        head_deadline,
        ..
    } = conn;
    let mut info = ConnInfo::new(stats.name.clone(), peer, extra.scheme);
    info.hold = Some(open as Arc<dyn std::any::Any + Send + Sync>);
    info.body_too_large = Some(stats.client_errors.body_too_large.clone());
    let info = Arc::new(info);
    let svc_shared = shared.clone();
    let activity = Arc::new(Activity::new());
    let stream = TokioIo::new(Guard::new(
        stream,
        &limits,
        head_deadline,
        activity.clone(),
        stats.clone(),
        proto == Proto::H2,
    ));
    let act = activity.clone();
    let extra = Arc::new(extra);
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        act.request_started();
        let act = act.clone();
        let info = info.clone();
        let extra = extra.clone();
        let state = svc_shared.state.load_full();
        // The client-certificate header comes from the handshake only, never from the client.
        let headers = req.headers_mut();
        while headers.remove(&extra.cert_header).is_some() {}
        if let Some(subject) = &extra.client_subject {
            headers.insert(extra.cert_header.clone(), subject.clone());
        }
        // The guard stops reading heads after one that asks to upgrade; unless the upgrade
        // happens, the connection must close after this answer.
        let upgrade_asked = act.upgrade_asked.load(Ordering::Relaxed);
        let connect = upgrade_asked && req.method() == http::Method::CONNECT;
        async move {
            if let Some(port) = extra.redirect_https {
                // Counted like requests that matched no route (route ""); not access-logged.
                let resp = proxy::redirect_https(&req, port);
                metrics::unrouted(&info.listener, metrics::class_index(resp.status().as_u16()));
                return Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, act)));
            }
            let mut resp = proxy::handle(req, &info, state).await;
            if let Some(hsts) = &extra.hsts {
                resp.headers_mut()
                    .entry(http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert_with(|| hsts.clone());
            }
            if upgrade_asked {
                let status = resp.status();
                let switched = status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
                if !switched {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
            }
            Ok(resp.map(|b| Tracked::new(b, act)))
        }
    });
    let run = Run {
        peer,
        shared: &shared,
        stop,
        activity: &activity,
        idle_timeout: limits.idle_timeout,
    };
    match proto {
        Proto::H1 => {
            let conn = std::pin::pin!(servers.h1.serve_connection(stream, svc).with_upgrades());
            run.drive(conn, |c| c.graceful_shutdown()).await
        }
        Proto::H2 => {
            let conn = std::pin::pin!(servers.h2.serve_connection(stream, svc));
            run.drive(conn, |c| c.graceful_shutdown()).await
        }
        Proto::Detect => {
            let conn = std::pin::pin!(servers.auto.serve_connection_with_upgrades(stream, svc));
            run.drive(conn, |c| c.graceful_shutdown()).await
        }
    }
}

/// Drives one connection's HTTP to its end: closes it when idle, drains it at shutdown.
struct Run<'a> {
    peer: SocketAddr,
    shared: &'a Plane,
    stop: watch::Receiver<bool>,
    activity: &'a Activity,
    idle_timeout: Duration,
}

impl Run<'_> {
    async fn drive<C, E>(mut self, mut conn: Pin<&mut C>, shutdown: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let peer = self.peer;
        let mut drain = self.shared.drain.subscribe();
        // Checked lazily: it fires at most once per idle_timeout and then looks at what happened.
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            let idle_check = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                _ = drain.wait_for(|d| *d) => false,
                _ = self.stop.wait_for(|s| *s) => false,
                _ = idle.as_mut() => true,
            };
            if !idle_check {
                break;
            }
            if let Some(left) = self.activity.idle_for(self.idle_timeout) {
                idle.as_mut().reset(crate::clock::now() + left);
                continue;
            }
            // Idle: HTTP/1.1 closes at once, HTTP/2 says GOAWAY first.
            tracing::trace!(peer = %peer, "closing an idle connection");
            shutdown(conn.as_mut());
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await;
            return;
        }
        // A connection accepted just before the drain may not have sent its first request yet:
        // closing it now would lose a request the client cannot know to retry. Give it a moment.
        let fresh_until = crate::clock::now() + FIRST_REQUEST_GRACE;
        while !self.activity.seen_request.load(Ordering::Relaxed) && crate::clock::now() < fresh_until {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        // Finish the request in progress, then close; idle keep-alive connections close at once.
        shutdown(conn.as_mut());
        let _ = conn.await;
    }
}

/// How long an idle connection told to close (HTTP/2: GOAWAY) may take to do so.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection that has sent nothing yet may take to send its first request once a
/// drain begins.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
