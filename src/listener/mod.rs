//! Listening sockets: bind, accept under the process-wide connection limit, and serve each
//! connection with HTTP/1.1 and h2c (prior knowledge) on the same port (over TLS when the
//! listener has it, h2 then chosen by ALPN), draining gracefully
//! when the listener is removed or the process stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::metrics::Counter;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::admin::metrics;
use crate::app::Shared;
use crate::config::ServerConfig;
use crate::proxy::{self, ConnInfo};
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
    shared: Arc<Shared>,
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

/// The HTTP server settings of a generation's `[server]` table.
fn server_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Head and small bodies go out in one flat write: measured cheaper than writev here.
    // The guard answers slow heads with 408 (hyper's own timeout closes without a word), and
    // refuses heads over max_header_bytes before hyper's buffer fills (its minimum is 8 KiB).
    b.http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .writev(false)
        .header_read_timeout(None)
        .max_buf_size((cfg.max_header_bytes + 1).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams a client resets before they are served.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams reset because the client broke the protocol on them (CVE-2025-8671).
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
    b
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
    shared: Arc<Shared>,
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
    let mut builder = Arc::new(server_builder(&ServerConfig::default()));
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
                        builder = Arc::new(server_builder(&state.config.server));
                        conn_limits = limits(&state.config.server);
                    }
                }
                tokio::spawn(serve(
                    stream,
                    peer,
                    stats.clone(),
                    shared.clone(),
                    (builder.clone(), conn_limits),
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

/// A connection's HTTP settings: the server builder and the guard's limits.
type Http = (Arc<auto::Builder<TokioExecutor>>, Limits);

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Shared>,
    builder: Http,
    stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Open {
        shared: shared.clone(),
        stats: stats.clone(),
    });
    let _ = stream.set_nodelay(true);
    if !stats.proxy_protocol {
        return serve_conn(stream, peer, stats, shared, builder, stop, open).await;
    }
    // Behind an L4 balancer: the client is the PROXY header's source. A connection without a
    // valid header in time is closed and counted; it is never served as if it were direct.
    match proxy_protocol::read_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
        Ok((source, rest)) => {
            let client = source.unwrap_or(peer);
            let io = proxy_protocol::Rewind::new(stream, rest);
            serve_conn(io, client, stats, shared, builder, stop, open).await
        }
        Err(e) => {
            metrics::proxy_protocol_error(&stats.name);
            tracing::debug!(peer = %peer, error = %e, "PROXY protocol header refused; closing");
        }
    }
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
    /// The connection's place in the counts; the HTTP exchange takes it over.
    open: Option<Arc<Open>>,
}

/// Terminate TLS when the listener has it in the current generation (the generation at accept
/// time decides: a reload applies to new connections), then serve HTTP.
async fn serve_conn<IO>(
    io: IO,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Shared>,
    builder: Http,
    stop: watch::Receiver<bool>,
    open: Arc<Open>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tls, redirect_https) = {
        let state = shared.state.load();
        (
            state.tls_for(&stats.name),
            state.listener_config(&stats.name).and_then(|l| l.redirect_https),
        )
    };
    let Some(tls) = tls else {
        let extra = ConnExtra {
            scheme: "http",
            cert_header: http::HeaderName::from_static(crate::config::tls::DEFAULT_CLIENT_CERT_HEADER),
            client_subject: None,
            hsts: None,
            redirect_https,
            open: Some(open),
        };
        return serve_http(io, peer, stats, shared, builder, stop, extra, false).await;
    };
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
        open: Some(open),
    };
    drop(tls);
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(stream, peer, stats, shared, builder, stop, extra, h2).await
}

/// How long an L4 balancer may take to send the PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve HTTP on a connection until it ends, is idle for `idle_timeout`, or drains. `h2`: the
/// connection speaks HTTP/2 from the start (chosen by ALPN).
#[allow(clippy::too_many_arguments)]
async fn serve_http<IO>(
    stream: IO,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Shared>,
    (builder, limits): Http,
    mut stop: watch::Receiver<bool>,
    mut extra: ConnExtra,
    h2: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut info = ConnInfo::new(stats.name.clone(), peer, extra.scheme);
    info.hold = extra.open.take().map(|o| o as Arc<dyn std::any::Any + Send + Sync>);
    info.body_too_large = Some(stats.client_errors.body_too_large.clone());
    let info = Arc::new(info);
    let svc_shared = shared.clone();
    let activity = Arc::new(Activity::new());
    let stream = Guard::new(stream, &limits, activity.clone(), stats.clone(), h2);
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
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut drain = shared.drain.subscribe();
    // Checked lazily: it fires at most once per idle_timeout and then looks at what happened.
    let idle = tokio::time::sleep(limits.idle_timeout);
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
            _ = stop.wait_for(|s| *s) => false,
            _ = idle.as_mut() => true,
        };
        if !idle_check {
            break;
        }
        if let Some(left) = activity.idle_for(limits.idle_timeout) {
            idle.as_mut().reset(tokio::time::Instant::now() + left);
            continue;
        }
        // Idle: HTTP/1.1 closes at once, HTTP/2 says GOAWAY first.
        tracing::trace!(peer = %peer, "closing an idle connection");
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await;
        return;
    }
    // A connection accepted just before the drain may not have sent its first request yet:
    // closing it now would lose a request the client cannot know to retry. Give it a moment.
    let fresh_until = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
    while !activity.seen_request.load(Ordering::Relaxed) && tokio::time::Instant::now() < fresh_until {
        tokio::select! {
            r = conn.as_mut() => {
                let _ = r;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    // Finish the request in progress, then close; idle keep-alive connections close at once.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How long an idle connection told to close (HTTP/2: GOAWAY) may take to do so.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection that has sent nothing yet may take to send its first request once a
/// drain begins.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
