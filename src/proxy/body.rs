//! The one body type of the request path: a client's body streamed to a backend, a backend's body
//! streamed to the client (returning its connection when read to the end), or a small fixed body
//! made here. An enum rather than a boxed trait object: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way to a backend.
    Incoming(Incoming),
    /// A backend's response body on its way to the client.
    Upstream(UpstreamBody),
    /// A backend's response body on its way to the client and into the cache.
    Caching(Box<super::cache::Tee>),
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Upstream(u) => u.body.size_hint(),
            ProxyBody::Caching(t) => t.size_hint(),
        }
    }
}
