//! Phase 7 of the pipeline: the upstream answer is in. [`Pending`] stores what may be stored
//! (teeing the body to the client and the store at once), merges a 304 into the stored response,
//! serves a stale response when the origin failed and `stale-if-error` allows it, invalidates
//! what a successful unsafe request changed, and runs the background refresh of
//! stale-while-revalidate.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{response, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::lookup::{owned_headers, primary_key, serve};
use super::route::CacheResult;
use super::tee::{Tee, ToStore};
use crate::body::{ProxyBody, UpstreamBody};
use crate::cache::rules::{
    self, cache_status, can_freshen, ensure_date, merge_304, storable, strip_for_storage, vary_key, CacheStatus,
    EntryFacts, Fwd, NotStored, Outcome, StaleDefaults, Storability,
};
use crate::cache::store::{self, Cache, FlightGuard, Object};
use crate::upstream::{self, Attempts, Lease, PickHint, Pool};

pub(super) enum Kind {
    /// Not in the store (or no variant for this request): fetch and store if allowed.
    Miss,
    /// A stored response needs validating: the upstream request carries its validators.
    Revalidate(Arc<Object>),
    /// HEAD that found nothing: forwarded as HEAD, nothing stored.
    Head,
    /// Past the cache: unsafe methods (which invalidate), upgrades, range misses, `Authorization`
    /// a stored response doesn't allow.
    Bypass(Fwd),
}

/// A request on its way upstream, with what the cache needs to finish it.
pub struct Pending {
    pub(super) cache: Arc<Cache>,
    pub(super) key: Box<[u8]>,
    pub(super) host: Option<HeaderValue>,
    pub(super) method: Method,
    pub(super) kind: Kind,
    /// The client's request headers as received (Vary, conditionals, Range), for misses and
    /// revalidations only.
    pub(super) req_headers: HeaderMap,
    pub(super) request_time: SystemTime,
    pub(super) flight: Option<FlightGuard>,
    /// A stale response that may be served if the origin fails (stale-if-error).
    pub(super) stale: Option<Arc<Object>>,
    pub(super) collapsed: bool,
    pub(super) versioned: bool,
    pub(super) default_ttl: Duration,
    pub(super) versioned_ttl: Duration,
    pub(super) defaults: StaleDefaults,
}

/// What [`Pending::on_response`] made of the upstream response.
pub(super) enum Filled {
    /// The upstream response goes on, with this body (teed into the store when stored) and
    /// this Cache-Status.
    Forwarded(ProxyBody, HeaderValue),
    /// Answered from the store instead: a revalidated response, or a stale one on error.
    FromCache(Response<ProxyBody>),
}

/// How long an entry is worth keeping: the freshness it has left, then the longest stale window
/// that could still serve it, or a grace time (an hour with a validator, to revalidate cheaply;
/// five minutes without, for clients' max-stale), whichever is longer. Size evicts earlier.
fn keep_for(facts: &EntryFacts, defaults: &StaleDefaults, now: SystemTime) -> Duration {
    let fresh_left = facts.lifetime.saturating_sub(facts.age(now));
    let stale = facts
        .stale_while_revalidate
        .unwrap_or(defaults.while_revalidate)
        .max(facts.stale_if_error.unwrap_or(defaults.if_error));
    let grace = if facts.has_validator {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(300)
    };
    fresh_left
        .saturating_add(stale.max(grace))
        .max(Duration::from_secs(1))
        .min(Duration::from_secs(400 * 86400))
}

impl Pending {
    /// The result label when the request ends without an upstream answer.
    pub(super) fn result_on_error(&self) -> CacheResult {
        match self.kind {
            Kind::Bypass(_) => CacheResult::Bypass,
            _ => CacheResult::Miss,
        }
    }

    fn status(&self, reason: Fwd, code: Option<u16>, stored: bool, detail: Option<&str>) -> HeaderValue {
        cache_status(&CacheStatus {
            outcome: Outcome::Fwd { reason, status: code },
            stored,
            collapsed: self.collapsed,
            ttl: None,
            detail,
        })
    }

    /// The origin failed (no response, or a 5xx): a stale response that stale-if-error allows
    /// answers instead.
    pub(super) fn stale_on_error(&mut self, code: Option<u16>) -> Option<Response<ProxyBody>> {
        let obj = self.stale.take()?;
        let status = CacheStatus {
            outcome: Outcome::Fwd {
                reason: Fwd::Stale,
                status: code,
            },
            stored: false,
            collapsed: self.collapsed,
            ttl: Some(obj.facts.ttl(crate::clock::wall())),
            detail: Some("stale-if-error"),
        };
        let method = self.method.clone();
        Some(serve(&obj, &method, &self.req_headers, crate::clock::wall(), &status))
    }

    /// Phase 7: the upstream response is in. `rparts` may be changed (a Date added); `body` is
    /// the upstream body.
    pub(super) fn on_response(mut self, rparts: &mut response::Parts, body: ProxyBody) -> (Filled, CacheResult) {
        let code = rparts.status.as_u16();
        let now = crate::clock::wall();
        if matches!(code, 500 | 502 | 503 | 504) {
            if let Some(r) = self.stale_on_error(Some(code)) {
                return (Filled::FromCache(r), CacheResult::Stale);
            }
        }
        match std::mem::replace(&mut self.kind, Kind::Miss) {
            Kind::Bypass(reason) => {
                if !self.key.is_empty() && rules::invalidates(&self.method, rparts.status) {
                    self.invalidate_after_write(&rparts.headers);
                }
                let v = self.status(reason, None, false, None);
                (Filled::Forwarded(body, v), CacheResult::Bypass)
            }
            Kind::Head => {
                let v = self.status(Fwd::Miss, Some(code), false, Some("head"));
                (Filled::Forwarded(body, v), CacheResult::Miss)
            }
            Kind::Revalidate(obj)
                if rparts.status == StatusCode::NOT_MODIFIED && can_freshen(&obj.headers, &rparts.headers) =>
            {
                ensure_date(&mut rparts.headers, now);
                let mut headers = owned_headers(&obj.headers);
                merge_304(&mut headers, &owned_headers(&rparts.headers));
                let lifetime = if self.versioned {
                    self.versioned_ttl
                } else {
                    rules::freshness_lifetime(&headers, self.default_ttl)
                };
                let mut facts = EntryFacts::new(&headers, lifetime, self.request_time, now);
                facts.immutable |= self.versioned;
                let keep = keep_for(&facts, &self.defaults, now);
                let fresh = Arc::new(obj.refreshed(headers, facts, keep));
                let status = CacheStatus {
                    outcome: Outcome::Fwd {
                        reason: Fwd::Stale,
                        status: Some(304),
                    },
                    stored: true,
                    collapsed: self.collapsed,
                    ttl: Some(fresh.facts.ttl(now)),
                    detail: None,
                };
                let resp = serve(&fresh, &self.method, &self.req_headers, now, &status);
                self.cache.replace(&self.key, &obj, fresh);
                drop(body);
                (Filled::FromCache(resp), CacheResult::Revalidated)
            }
            _ => self.store_miss(rparts, body, now),
        }
    }

    fn store_miss(mut self, rparts: &mut response::Parts, body: ProxyBody, now: SystemTime) -> (Filled, CacheResult) {
        let code = rparts.status.as_u16();
        ensure_date(&mut rparts.headers, now);
        let ttl = if self.versioned {
            self.versioned_ttl
        } else {
            self.default_ttl
        };
        let verdict = if rparts.status == StatusCode::PARTIAL_CONTENT {
            Storability::NotStored(NotStored::Status)
        } else {
            storable(&Method::GET, &self.req_headers, rparts.status, &rparts.headers, ttl)
        };
        let stored = match verdict {
            Storability::Stored(s) => s,
            Storability::NotStored(why) => {
                if matches!(
                    why,
                    NotStored::NoStore
                        | NotStored::Private
                        | NotStored::VaryStar
                        | NotStored::NoFreshness
                        | NotStored::NotReusable
                ) {
                    self.cache.mark_pass(&self.key);
                }
                let v = self.status(Fwd::Miss, Some(code), false, Some(why.detail()));
                return (Filled::Forwarded(body, v), CacheResult::Miss);
            }
        };
        let limit = self.cache.max_object_size();
        let declared = rparts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            let v = self.status(Fwd::Miss, Some(code), false, Some("too-large"));
            return (Filled::Forwarded(body, v), CacheResult::Miss);
        }
        let Some(vkey) = vary_key(&rparts.headers, &self.req_headers) else {
            let v = self.status(Fwd::Miss, Some(code), false, Some("vary-star"));
            return (Filled::Forwarded(body, v), CacheResult::Miss);
        };
        let mut headers = owned_headers(&rparts.headers);
        strip_for_storage(&mut headers);
        let lifetime = if self.versioned && rparts.status == StatusCode::OK {
            self.versioned_ttl
        } else {
            stored.lifetime
        };
        let mut facts = EntryFacts::new(&headers, lifetime, self.request_time, now);
        facts.immutable |= self.versioned;
        let keep = keep_for(&facts, &self.defaults, now);
        let tags = store::tags_of(&rparts.headers);
        let v = self.status(Fwd::Miss, Some(code), true, None);
        let tee = Tee {
            inner: body,
            chunks: Vec::new(),
            size: 0,
            store: Some(ToStore {
                cache: self.cache.clone(),
                key: std::mem::take(&mut self.key),
                status: rparts.status,
                headers,
                facts,
                vary_key: vkey,
                tags,
                keep,
                limit: limit as usize,
                _flight: self.flight.take(),
            }),
        };
        (
            Filled::Forwarded(ProxyBody::Caching(Box::new(tee)), v),
            CacheResult::Miss,
        )
    }

    /// A successful unsafe request changed its target: remove it, and the same-origin
    /// Location and Content-Location (RFC 9111 §4.4).
    fn invalidate_after_write(&self, resp: &HeaderMap) {
        self.cache.invalidate(&self.key);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = resp.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = v.parse::<http::Uri>() else { continue };
            let same_origin = match uri.authority() {
                None => true,
                Some(a) => self
                    .host
                    .as_ref()
                    .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())),
            };
            let Some(pq) = uri.path_and_query().filter(|p| p.as_str().starts_with('/')) else {
                continue;
            };
            if same_origin {
                self.cache.invalidate(&primary_key(self.host.as_ref(), pq.as_str()));
            }
        }
    }

    /// Stale-while-revalidate: refresh the stored response upstream, in the background.
    pub(super) async fn refresh(self, pool: Arc<Pool>, req: Request<ProxyBody>, hint: PickHint) {
        let Kind::Revalidate(old) = &self.kind else { return };
        let old = old.clone();
        let mut notes = Attempts::default();
        let result = upstream::forward(&pool, req, None, hint, &mut notes).await;
        if let Ok((resp, lease)) = result {
            self.finish_refresh(resp, lease).await;
        }
        // A failed refresh lets a later request try again.
        old.refreshing.store(false, Ordering::Release);
    }

    async fn finish_refresh(self, resp: Response<hyper::body::Incoming>, lease: Lease) {
        let (mut rparts, body) = resp.into_parts();
        let body = ProxyBody::Upstream(UpstreamBody::new(body, lease));
        if rparts.status.is_server_error() {
            return;
        }
        let (answer, _) = self.on_response(&mut rparts, body);
        // A stored refresh completes as its body is read to the end.
        if let Filled::Forwarded(mut body @ ProxyBody::Caching(_), _) = answer {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        }
    }
}
