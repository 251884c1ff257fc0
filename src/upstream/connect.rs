//! The way to a backend: one attempt on an idle connection or a new one, dialling (plain or
//! TLS, HTTP/1.1 or HTTP/2 by ALPN), the handshakes, and one request/response exchange under
//! the pool's response timeout.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::backend::Backend;
use super::pool::Pool;
use super::tls::BackendTls;
use crate::body::ProxyBody;
use crate::error::ProxyError;

type SendFailure = (ProxyError, Option<Request<ProxyBody>>);

/// One attempt on one backend, on the first of: this worker's HTTP/2 connection (a TLS
/// backend that chose h2), an idle HTTP/1.1 connection that is still ready, a new connection
/// (over TLS when the pool has `tls = true`, HTTP/2 when the backend picks h2 by ALPN).
/// Upgrades (WebSocket) need HTTP/1.1 and never use or open an HTTP/2 connection. The request
/// comes back with the error whenever none of it was written, so the caller can try elsewhere.
pub(super) async fn send(
    pool: &Pool,
    backend: &Backend,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<ProxyBody>>), SendFailure> {
    // Only a TLS backend has HTTP/2 connections: the plain path reads no header here.
    let h2_ok = backend.tls.is_some() && !req.headers().contains_key(http::header::UPGRADE);
    if h2_ok {
        if let Some(sender) = backend.shared_h2() {
            // Boxed, like every HTTP/2 and TLS step below: their state is several KB, and
            // inline it would make every request's future that large, to be moved and copied
            // on the plain path too (hyper keeps one such future's room per client connection).
            match Box::pin(exchange_h2(pool, sender, req)).await {
                Ok(resp) => return Ok((resp, None)),
                // Not sent: the connection is going away; open a new one.
                Err((_, Some(r))) => {
                    backend.set_h2(None);
                    req = r;
                }
                Err(e) => return Err(e),
            }
        }
    }
    while let Some(mut sender) = backend.take_idle() {
        if sender.ready().await.is_err() {
            continue;
        }
        match exchange(pool, &mut sender, req).await {
            Ok(resp) => return Ok((resp, Some(sender))),
            // Not written: the idle connection went away under us; use a fresh one.
            Err((_, Some(r))) => req = r,
            Err(e) => return Err(e),
        }
    }
    let opened = match &backend.tls {
        None => dial(backend.addr, pool.connect_timeout).await.map(Opened::H1),
        Some(tls) => Box::pin(open_tls(backend.addr, tls, pool.connect_timeout, !h2_ok)).await,
    };
    match opened {
        Err(e) => Err((e, Some(req))),
        Ok(Opened::H2(sender)) => {
            backend.set_h2(Some(sender.clone()));
            let resp = Box::pin(exchange_h2(pool, sender, req)).await?;
            Ok((resp, None))
        }
        Ok(Opened::H1(mut sender)) => {
            let resp = exchange(pool, &mut sender, req).await?;
            Ok((resp, Some(sender)))
        }
    }
}

/// A new connection to a TLS backend, by the protocol it chose.
enum Opened {
    H1(SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

async fn open_tls(addr: SocketAddr, tls: &BackendTls, timeout: Duration, h1_only: bool) -> Result<Opened, ProxyError> {
    let stream = tls.connect(addr, timeout, h1_only).await?;
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Ok(Opened::H2(handshake_h2(stream).await?))
    } else {
        Ok(Opened::H1(handshake_h1(stream).await?))
    }
}

/// Send on an HTTP/2 connection: the request goes as HTTP/2 with :scheme https and :authority
/// from its Host (which is then not sent as a header). A request that comes back unsent is
/// restored for HTTP/1.1.
async fn exchange_h2(
    pool: &Pool,
    mut sender: http2::SendRequest<ProxyBody>,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendFailure> {
    let plain_uri = req.uri().clone();
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            plain_uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    // HTTP/2 carries the host in :authority; some servers (nginx before 1.25) refuse a request
    // with a Host header as well.
    let host = match req.uri().authority() {
        Some(_) => req.headers_mut().remove(http::header::HOST),
        None => None,
    };
    *req.version_mut() = http::Version::HTTP_2;
    let restore = |mut r: Request<ProxyBody>| {
        *r.uri_mut() = plain_uri.clone();
        *r.version_mut() = http::Version::HTTP_11;
        if let Some(h) = &host {
            r.headers_mut().insert(http::header::HOST, h.clone());
        }
        r
    };
    if let Err(e) = sender.ready().await {
        return Err((ProxyError::UpstreamBroken(e), Some(restore(req))));
    }
    match tokio::time::timeout(pool.response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err((ProxyError::UpstreamTimeout, None)),
        Ok(Ok(mut resp)) => {
            // What goes on to the client is its own protocol's concern.
            *resp.version_mut() = http::Version::HTTP_11;
            Ok(resp)
        }
        Ok(Err(mut e)) => {
            let returned = e.take_message().map(restore);
            Err((send_failed(e.into_error()), returned))
        }
    }
}

async fn exchange(
    pool: &Pool,
    sender: &mut SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendFailure> {
    match tokio::time::timeout(pool.response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err((ProxyError::UpstreamTimeout, None)),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => {
            let returned = e.take_message();
            Err((send_failed(e.into_error()), returned))
        }
    }
}

/// A failed exchange: the backend's doing, unless the client's body broke its size limit.
fn send_failed(e: hyper::Error) -> ProxyError {
    if crate::body::is_body_too_large(&e) {
        ProxyError::BodyTooLarge
    } else {
        ProxyError::UpstreamBroken(e)
    }
}

/// Open a new HTTP/1.1 connection to a backend. Its driver task runs on the current runtime.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<ProxyBody>, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ProxyError::UpstreamConnectTimeout),
        Ok(Err(e)) => return Err(ProxyError::UpstreamConnect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    handshake_h1(stream).await
}

/// HTTP/1.1 over an open connection. Its driver task runs on the current runtime.
pub(super) async fn handshake_h1<T>(io: T) -> Result<SendRequest<ProxyBody>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::UpstreamBroken)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// HTTP/2 over an open TLS connection (ALPN h2). The driver task ends when the backend closes
/// the connection or every sender is dropped.
async fn handshake_h2<T>(io: T) -> Result<http2::SendRequest<ProxyBody>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::UpstreamBroken)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(sender)
}
