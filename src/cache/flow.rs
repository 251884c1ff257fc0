//! The cache's one entry into the request pipeline and its one exit.
//!
//! Entry: [`lookup`](super::lookup::lookup) returns a [`Plan`]: answer from the store, or go
//! upstream with the [`Flow`] that finishes the request. Exit: [`Flow::forward`] runs the exchange with
//! the backend (in the background for stale-while-revalidate) and turns its outcome into what
//! the client gets: the backend's response, teed into the store when it may be stored; a 304
//! merged into the stored response; a stale response when the origin failed and
//! `stale-if-error` allows it. A route without a cache takes the same exit as [`Flow::Off`].

use std::sync::Arc;

use http::header::HeaderValue;
use http::{response, Request, Response, StatusCode};

use super::fill::{Filled, Pending};
use super::route::CacheResult;
use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use crate::upstream::{self, Attempts, Backend, Lease, PickHint, Pool, Replay};

/// What the lookup decided.
pub enum Plan {
    /// Answer with this, from the store.
    Serve(Response<ProxyBody>, CacheResult),
    /// Go upstream, and finish as the flow says.
    Go(Flow),
}

impl Plan {
    pub(super) fn pending(p: Pending) -> Plan {
        Plan::Go(Flow::Forward(Box::new(p)))
    }

    pub(super) fn refresh(stale: Response<ProxyBody>, p: Pending) -> Plan {
        Plan::Go(Flow::Refresh(Box::new((stale, p))))
    }
}

/// How a request that goes upstream is finished: small, since the pipeline holds it across the
/// exchange (the cache's state is boxed; routes without a cache allocate nothing).
pub enum Flow {
    /// The route does not cache: the exchange is the backend's alone.
    Off,
    /// [`Pending`] deals with the answer.
    Forward(Box<Pending>),
    /// Answer with this stale response now, and refresh it upstream in the background.
    Refresh(Box<(Response<ProxyBody>, Pending)>),
}

/// What the client gets once the upstream side is done.
pub enum Answer {
    /// The backend's response. Its body holds the backend connection until read to the end, and
    /// is teed into the store when the response may be stored.
    Backend {
        parts: response::Parts,
        body: ProxyBody,
        backend: Arc<Backend>,
        /// The Cache-Status field, on a cached route.
        cache_status: Option<HeaderValue>,
    },
    /// 101 Switching Protocols to an upgrade request: the lease goes with the tunnel.
    Switched { parts: response::Parts, lease: Lease },
    /// Answered from the store: a revalidated response, a stale one on an origin error, or the
    /// stale response of a background refresh.
    Stored(Response<ProxyBody>),
}

/// The outcome of phases 6 and 7, with what the accounting needs to know of them.
pub struct Exchange {
    pub answer: Result<Answer, ProxyError>,
    /// The route's cache result (None on a route without a cache, and for upgrades).
    pub cache: Option<CacheResult>,
    pub attempts: Attempts,
}

impl Exchange {
    fn done(answer: Result<Answer, ProxyError>, cache: Option<CacheResult>, attempts: Attempts) -> Exchange {
        Exchange {
            answer,
            cache,
            attempts,
        }
    }
}

impl Flow {
    /// Phases 6 (forward) and 7 (store): send `req` to a backend of `pool` and finish what the
    /// cache planned. `upgrade`: the client asked to switch protocols.
    pub async fn forward(self, pool: Arc<Pool>, req: Request<ProxyBody>, hint: PickHint, upgrade: bool) -> Exchange {
        let mut attempts = Attempts::default();
        let mut pending = match self {
            Flow::Off => None,
            Flow::Forward(p) => Some(p),
            Flow::Refresh(refresh) => {
                let (resp, p) = *refresh;
                // stale-while-revalidate: the client has its answer now; the refresh runs on its own.
                tokio::spawn(p.refresh(pool, req, hint));
                return Exchange::done(Ok(Answer::Stored(resp)), Some(CacheResult::Stale), attempts);
            }
        };
        let replay = Replay::capture(&req, &pool);
        let (resp, lease) = match upstream::forward(&pool, req, replay, hint, &mut attempts).await {
            Ok(ok) => ok,
            Err(e) => {
                let Some(p) = pending.as_mut() else {
                    return Exchange::done(Err(e), None, attempts);
                };
                let (answer, result) = match p.stale_on_error(None) {
                    Some(stale) => (Ok(Answer::Stored(stale)), CacheResult::Stale),
                    None => (Err(e), p.result_on_error()),
                };
                return Exchange::done(answer, Some(result), attempts);
            }
        };
        let (mut parts, body) = resp.into_parts();
        if upgrade && parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Exchange::done(Ok(Answer::Switched { parts, lease }), None, attempts);
        }
        let backend = lease.backend().clone();
        let body = ProxyBody::Upstream(UpstreamBody::new(body, lease));
        let Some(p) = pending else {
            let answer = Answer::Backend {
                parts,
                body,
                backend,
                cache_status: None,
            };
            return Exchange::done(Ok(answer), None, attempts);
        };
        let (filled, result) = p.on_response(&mut parts, body);
        let answer = match filled {
            Filled::Forwarded(body, status) => Answer::Backend {
                parts,
                body,
                backend,
                cache_status: Some(status),
            },
            Filled::FromCache(resp) => Answer::Stored(resp),
        };
        Exchange::done(Ok(answer), Some(result), attempts)
    }
}
