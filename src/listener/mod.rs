//! Listening sockets: bind, accept under the process-wide connection limit, and serve each
//! connection with HTTP/1.1 and h2c (prior knowledge) on the same port (over TLS when the
//! listener has it, h2 then chosen by ALPN), draining gracefully
//! when the listener is removed or the process stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::proxy::{self, ConnInfo};

pub mod framing;
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
}

impl ListenerStats {
    pub fn new(name: &str, bind: SocketAddr, proxy_protocol: bool) -> ListenerStats {
        ListenerStats {
            name: name.into(),
            bind,
            proxy_protocol,
            active: AtomicUsize::new(0),
            total: metrics::connections_total(name),
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

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Head and small bodies go out in one flat write: measured cheaper than writev here.
    b.http1().keep_alive(true).timer(TokioTimer::new()).writev(false);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    b
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
    let builder = Arc::new(server_builder());
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
                tokio::spawn(serve(
                    stream,
                    peer,
                    stats.clone(),
                    shared.clone(),
                    builder.clone(),
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

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
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
    builder: Arc<auto::Builder<TokioExecutor>>,
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
        return serve_http(io, peer, stats, shared, builder, stop, extra).await;
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
    serve_http(stream, peer, stats, shared, builder, stop, extra).await
}

/// How long an L4 balancer may take to send the PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve_http<IO>(
    stream: IO,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
    mut extra: ConnExtra,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut info = ConnInfo::new(stats.name.clone(), peer, extra.scheme);
    info.hold = extra.open.take().map(|o| o as Arc<dyn std::any::Any + Send + Sync>);
    let info = Arc::new(info);
    let svc_shared = shared.clone();
    let seen_request = Arc::new(AtomicBool::new(false));
    let seen = seen_request.clone();
    let extra = Arc::new(extra);
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let info = info.clone();
        let extra = extra.clone();
        let state = svc_shared.state.load_full();
        // The client-certificate header comes from the handshake only, never from the client.
        let headers = req.headers_mut();
        while headers.remove(&extra.cert_header).is_some() {}
        if let Some(subject) = &extra.client_subject {
            headers.insert(extra.cert_header.clone(), subject.clone());
        }
        async move {
            if let Some(port) = extra.redirect_https {
                // Counted like requests that matched no route (route ""); not access-logged.
                let resp = proxy::redirect_https(&req, port);
                metrics::unrouted(&info.listener, metrics::class_index(resp.status().as_u16()));
                return Ok::<_, Infallible>(resp);
            }
            let mut resp = proxy::handle(req, &info, state).await;
            if let Some(hsts) = &extra.hsts {
                resp.headers_mut()
                    .entry(http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert_with(|| hsts.clone());
            }
            Ok(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut drain = shared.drain.subscribe();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    // A connection accepted just before the drain may not have sent its first request yet:
    // closing it now would lose a request the client cannot know to retry. Give it a moment.
    let fresh_until = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
    while !seen_request.load(Ordering::Relaxed) && tokio::time::Instant::now() < fresh_until {
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

/// How long a connection that has sent nothing yet may take to send its first request once a
/// drain begins.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
