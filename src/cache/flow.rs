//! The cache's one entry into the request pipeline and its one exit.
//!
//! Entry: [`lookup`](super::lookup::lookup) returns a [`Plan`]: answer from the store, or go
//! upstream with the [`Flow`] that finishes the request. Exit: [`Flow::finish`] turns the
//! outcome of the pipeline's exchange with the backend into what the client gets (and
//! [`Refresh::answer_now`] answers stale-while-revalidate before it, the refresh going on its
//! own): the backend's response, teed into the store when it may be stored; a 304
//! merged into the stored response; a stale response when the origin failed and
//! `stale-if-error` allows it. A route without a cache takes the same exit as [`Flow::Off`].

use std::sync::Arc;

use http::header::HeaderValue;
use http::{response, Request, Response, StatusCode};

use super::fill::{Filled, Pending};
use super::route::CacheResult;
use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use hyper::body::Incoming;

use crate::upstream::{Backend, Lease, PickHint, Pool};

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

    pub(super) fn refresh(stale: Response<ProxyBody>, pending: Pending) -> Plan {
        Plan::Go(Flow::Refresh(Box::new(Refresh { stale, pending })))
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
    Refresh(Box<Refresh>),
}

/// stale-while-revalidate: the stale response the client gets now, and the refresh to run.
pub struct Refresh {
    stale: Response<ProxyBody>,
    pending: Pending,
}

impl Refresh {
    /// Send the refresh off on its own, and give the stale response the client gets now.
    pub fn answer_now(self, pool: Arc<Pool>, req: Request<ProxyBody>, hint: PickHint) -> Response<ProxyBody> {
        tokio::spawn(self.pending.refresh(pool, req, hint));
        self.stale
    }
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

/// The outcome of phase 7, with the cache result the accounting counts.
pub struct Exchange {
    pub answer: Result<Answer, ProxyError>,
    /// The route's cache result (None on a route without a cache, and for upgrades).
    pub cache: Option<CacheResult>,
}

fn done(answer: Result<Answer, ProxyError>, cache: Option<CacheResult>) -> Exchange {
    Exchange { answer, cache }
}

/// What the backend exchange of phase 6 gave: its response and lease, or why there is none.
pub type Outcome = Result<(Response<Incoming>, Lease), ProxyError>;

impl Flow {
    /// Phase 7, the cache's one exit: the backend exchange's outcome becomes what the client gets
    /// (stored, revalidated or stale-if-error on cached routes). `upgrade`: the client asked to
    /// switch protocols. The exchange itself (`upstream::forward`) is the pipeline's, so that its
    /// future is not nested in one more.
    pub fn finish(self, outcome: Outcome, upgrade: bool) -> Exchange {
        let mut pending = match self {
            Flow::Off => None,
            Flow::Forward(p) => Some(p),
            // A refresh flow is answered by Refresh::answer_now, before any exchange.
            Flow::Refresh(_) => None,
        };
        let (resp, lease) = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                let Some(p) = pending.as_mut() else {
                    return done(Err(e), None);
                };
                let (answer, result) = match p.stale_on_error(None) {
                    Some(stale) => (Ok(Answer::Stored(stale)), CacheResult::Stale),
                    None => (Err(e), p.result_on_error()),
                };
                return done(answer, Some(result));
            }
        };
        let (mut parts, body) = resp.into_parts();
        if upgrade && parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return done(Ok(Answer::Switched { parts, lease }), None);
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
            return done(Ok(answer), None);
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
        done(Ok(answer), Some(result))
    }
}
