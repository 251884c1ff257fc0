//! The one body type of the request path: a client's body streamed to a backend, a backend's body
//! streamed to the client (returning its connection when read to the end), or a small fixed body
//! made here. An enum rather than a boxed trait object: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::upstream::Lease;
use ::metrics::Counter;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way to a backend.
    Incoming(ClientBody),
    /// A backend's response body on its way to the client.
    Upstream(UpstreamBody),
    /// A backend's response body on its way to the client and into the cache.
    Caching(Box<crate::cache::Tee>),
    /// A client's request body on its way to a backend, also kept for a mirrored copy.
    Mirrored(Box<crate::mirror::Tee>),
}

impl ProxyBody {
    pub fn text(s: &'static str) -> ProxyBody {
        ProxyBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }

    pub fn bytes(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }
}

pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub fn new(body: Incoming, lease: Lease) -> UpstreamBody {
        UpstreamBody {
            body,
            lease: Some(lease),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that had nothing to read (Content-Length: 0, 204, HEAD) may never be polled;
        // its connection is still clean.
        if let Some(lease) = self.lease.take() {
            if self.body.is_end_stream() {
                lease.release();
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Caching(t) => Pin::new(&mut **t).poll_frame(cx),
            ProxyBody::Mirrored(t) => Pin::new(&mut **t).poll_frame(cx),
            ProxyBody::Upstream(u) => match Pin::new(&mut u.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(lease) = u.lease.take() {
                        lease.release();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    // The connection is broken: drop it rather than return it.
                    u.lease = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Upstream(u) => u.body.is_end_stream(),
            ProxyBody::Caching(t) => t.is_end_stream(),
            ProxyBody::Mirrored(t) => t.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Upstream(u) => u.body.size_hint(),
            ProxyBody::Caching(t) => t.size_hint(),
            ProxyBody::Mirrored(t) => t.size_hint(),
        }
    }
}

/// A client's request body, held to `[server] max_body_bytes`: past it, the body fails with
/// [`BodyTooLarge`], so the request to the backend is aborted (an HTTP/1.1 backend sees the
/// connection close before the chunked body's end; an HTTP/2 one a reset stream), never ended
/// as if complete.
pub struct ClientBody {
    body: Incoming,
    /// Bytes still allowed (u64::MAX: no limit).
    left: u64,
    over: Option<Counter>,
}

/// The error a body over its limit fails with; the upstream error it causes becomes a 413.
#[derive(Debug, Clone, Copy)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than max_body_bytes")
    }
}

impl std::error::Error for BodyTooLarge {}

/// Hold a client's body to `max` bytes (0: unlimited). A body whose declared length is over it
/// is refused at once, before anything goes upstream; `over` counts refusals.
pub fn limit(body: Incoming, max: u64, over: Option<&Counter>) -> Result<ClientBody, ProxyError> {
    if max == 0 || body.is_end_stream() {
        return Ok(ClientBody {
            body,
            left: u64::MAX,
            over: None,
        });
    }
    if body.size_hint().lower() > max {
        if let Some(c) = over {
            c.increment(1);
        }
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(ClientBody {
        body,
        left: max,
        over: over.cloned(),
    })
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                let n = d.len() as u64;
                if n > this.left {
                    if let Some(c) = this.over.take() {
                        c.increment(1);
                    }
                    this.left = 0;
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
                this.left -= n;
            }
        }
        r.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether an error from sending to a backend came from a client's body over its limit.
pub fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}
