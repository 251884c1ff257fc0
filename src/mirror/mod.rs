//! Traffic mirroring (`[route.mirror]`): a copy of each request (or a sampled share) goes to a
//! shadow pool, and its answer is read and thrown away. The client's request never waits on
//! the copy and never fails because of it: the copy is sent from a task of its own, at most
//! `max_in_flight` copies per route are out at once (more are dropped and counted), and a
//! request body reaches the shadow only once the client's body has gone by in full.
//!
//! The body is teed without holding the client back: each frame the backend is sent is also
//! kept (a reference-counted `Bytes` clone, not a copy) until the body ends, up to
//! `max_body_bytes`; past that the copy is abandoned (`too_large`) and nothing more is kept.
//! A request whose declared length is already over the cap is not copied at all.
//!
//! The request path makes one call, [`Mirrors::tee`], where the upstream request is built, so
//! the shadow sees exactly what the route's backend sees (same method, path after any prefix
//! stripping, headers including X-Forwarded-*, body), plus the mirror header.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ::metrics::Counter;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, UPGRADE};
use http::{Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::admin::metrics;
use crate::body::{BoxError, ProxyBody, UpstreamBody};
use crate::config::{Config, MirrorConfig};
use crate::upstream::{self, Attempts, PickHint, Pool};

/// A shadow's answer is read up to this much (so its connection can be reused), then dropped.
const DRAIN_MAX: usize = 1 << 20;

struct Counters {
    ok: Counter,
    error: Counter,
    dropped: Counter,
    too_large: Counter,
    incomplete: Counter,
}

/// One route's mirror in one generation.
pub struct Mirror {
    route: Arc<str>,
    pool: Arc<Pool>,
    cfg: MirrorConfig,
    /// Copies out now; shared with the previous generation's mirror of the same route.
    in_flight: Arc<AtomicU32>,
    counters: Arc<Counters>,
}

/// The mirrors of a generation, by route index.
pub struct Mirrors {
    routes: Vec<Option<Mirror>>,
}

/// Holds one of the route's in-flight places until the copy is done.
struct Place(Arc<AtomicU32>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The copy's request head.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Mirrors {
    /// `pools` are the generation's pools in config order (a route's mirror pool was checked to
    /// exist when the config was read).
    pub fn build(config: &Config, pools: &[Arc<Pool>], previous: Option<&Mirrors>) -> Mirrors {
        let routes = config
            .routes
            .iter()
            .map(|rc| {
                let mc = rc.mirror.as_ref()?;
                let pool = pools.iter().find(|p| *p.name == *mc.pool)?.clone();
                let prev = previous.and_then(|p| p.routes.iter().flatten().find(|m| *m.route == *rc.name));
                Some(Mirror {
                    route: rc.name.as_str().into(),
                    pool,
                    cfg: mc.clone(),
                    in_flight: prev.map(|m| m.in_flight.clone()).unwrap_or_default(),
                    counters: prev.map(|m| m.counters.clone()).unwrap_or_else(|| {
                        Arc::new(Counters {
                            ok: metrics::mirror_counter(&rc.name, "ok"),
                            error: metrics::mirror_counter(&rc.name, "error"),
                            dropped: metrics::mirror_counter(&rc.name, "dropped"),
                            too_large: metrics::mirror_counter(&rc.name, "too_large"),
                            incomplete: metrics::mirror_counter(&rc.name, "incomplete"),
                        })
                    }),
                })
            })
            .collect();
        Mirrors { routes }
    }

    /// The request path's one call: start a copy of `req` for route `route`'s shadow when it
    /// has one, and hand back the request to send on (its body teed when it has one).
    pub fn tee(&self, route: usize, req: Request<ProxyBody>) -> Request<ProxyBody> {
        let Some(Some(m)) = self.routes.get(route) else {
            return req;
        };
        if m.cfg.percent < 100.0 && fastrand::f64() * 100.0 >= m.cfg.percent {
            return req;
        }
        // A tunnel (WebSocket) cannot be copied: the shadow would need its own client.
        if req.headers().contains_key(UPGRADE) {
            return req;
        }
        if req.body().size_hint().lower() > m.cfg.max_body_bytes {
            m.counters.too_large.increment(1);
            return req;
        }
        if m.in_flight.fetch_add(1, Ordering::AcqRel) >= m.cfg.max_in_flight {
            m.in_flight.fetch_sub(1, Ordering::AcqRel);
            m.counters.dropped.increment(1);
            return req;
        }
        let place = Place(m.in_flight.clone());
        let mut headers = req.headers().clone();
        headers.insert(m.cfg.header.clone(), HeaderValue::from_static("1"));
        let head = Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers,
        };
        let pool = m.pool.clone();
        let counters = m.counters.clone();
        if req.body().is_end_stream() {
            tokio::spawn(send(pool, head, Bytes::new(), counters, place));
            return req;
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            match rx.await {
                Ok(Some(body)) => send(pool, head, body, counters, place).await,
                Ok(None) => counters.too_large.increment(1),
                Err(_) => counters.incomplete.increment(1),
            }
        });
        let (parts, body) = req.into_parts();
        let tee = Tee {
            inner: body,
            kept: Vec::new(),
            size: 0,
            cap: m.cfg.max_body_bytes,
            tx: Some(tx),
        };
        Request::from_parts(parts, ProxyBody::Mirrored(Box::new(tee)))
    }
}

/// Send the copy and throw its answer away.
async fn send(pool: Arc<Pool>, head: Head, body: Bytes, counters: Arc<Counters>, place: Place) {
    let mut req = Request::new(if body.is_empty() {
        ProxyBody::Empty
    } else {
        ProxyBody::bytes(body)
    });
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers;
    let mut notes = Attempts::default();
    match upstream::forward(&pool, req, None, PickHint::default(), &mut notes).await {
        Ok((resp, lease)) => {
            counters.ok.increment(1);
            let mut body = ProxyBody::Upstream(UpstreamBody::new(resp.into_body(), lease));
            let mut read = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        read += f.data_ref().map_or(0, |d| d.len());
                        if read > DRAIN_MAX {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        Err(e) => {
            tracing::debug!(pool = %pool.name, error = %e, "mirrored request failed");
            counters.error.increment(1);
        }
    }
    drop(place);
}

/// A client's request body on its way to the backend, its frames also kept for the copy.
pub struct Tee {
    inner: ProxyBody,
    kept: Vec<Bytes>,
    size: u64,
    cap: u64,
    /// The whole body (Some) or "too large" (None) for the copy's task; dropped unsent when
    /// the body fails or is abandoned.
    tx: Option<oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    fn keep(&mut self, data: &Bytes) {
        if self.tx.is_none() {
            return;
        }
        self.size += data.len() as u64;
        if self.size > self.cap {
            self.kept = Vec::new();
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(None);
            }
            return;
        }
        self.kept.push(data.clone());
    }

    fn done(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let kept = std::mem::take(&mut self.kept);
        let body = match kept.len() {
            0 => Bytes::new(),
            1 => kept.into_iter().next().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.size as usize);
                for k in kept {
                    b.extend_from_slice(&k);
                }
                b.freeze()
            }
        };
        let _ = tx.send(Some(body));
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.keep(d);
                }
                // The sender may stop polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(None) => this.done(),
            Poll::Ready(Some(Err(_))) => {
                this.tx = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.done();
        }
    }
}
