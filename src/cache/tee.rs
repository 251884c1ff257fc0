//! The body of a response on its way to the client and into the store.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body::{Body, Frame};

use crate::body::{BoxError, ProxyBody};
use crate::cache::rules::EntryFacts;
use crate::cache::store::{Cache, FlightGuard, Object};

/// What a teed body stores when it has been read to its end.
pub(super) struct ToStore {
    pub(super) cache: Arc<Cache>,
    pub(super) key: Box<[u8]>,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) facts: EntryFacts,
    pub(super) vary_key: Vec<u8>,
    pub(super) tags: Vec<Box<str>>,
    pub(super) keep: Duration,
    pub(super) limit: usize,
    /// Waiters for this URL go when the entry is stored (or the store is abandoned).
    pub(super) _flight: Option<FlightGuard>,
}

/// An upstream body on its way to the client that is also kept, up to the object size limit,
/// and stored once it ended cleanly. A body that grows past the limit, ends with trailers or an
/// error, or is dropped early is not stored.
pub struct Tee {
    pub(super) inner: ProxyBody,
    pub(super) chunks: Vec<Bytes>,
    pub(super) size: usize,
    pub(super) store: Option<ToStore>,
}

impl Tee {
    fn finish(&mut self) {
        let Some(mut s) = self.store.take() else { return };
        let mut body = BytesMut::with_capacity(self.size);
        for c in self.chunks.drain(..) {
            body.extend_from_slice(&c);
        }
        s.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.size));
        let obj = Object::new(
            s.status,
            std::mem::take(&mut s.headers),
            body.freeze(),
            s.facts.clone(),
            std::mem::take(&mut s.vary_key),
            std::mem::take(&mut s.tags),
            s.keep,
        );
        s.cache.store(std::mem::take(&mut s.key), obj);
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(store) = &this.store {
                    match frame.data_ref() {
                        Some(d) if this.size + d.len() <= store.limit => {
                            this.size += d.len();
                            this.chunks.push(d.clone());
                        }
                        // Too large, or trailers: stream on without storing.
                        _ => {
                            this.store = None;
                            this.chunks = Vec::new();
                        }
                    }
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.store = None;
                this.chunks = Vec::new();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // A body with nothing to read (Content-Length: 0) may never be polled.
        if self.store.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}
