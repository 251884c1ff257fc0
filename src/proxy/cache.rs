//! Phases 3 (cache lookup) and 7 (cache store) of the pipeline, for routes with `[route.cache]`.
//!
//! The lookup answers from the store when RFC 9111 allows it (a fresh hit, a stale one the
//! client or `stale-while-revalidate` accepts, a 304 to a conditional request, a 206 for one byte
//! range); otherwise it says how to go upstream: as a plain miss (leading the fetch that
//! concurrent requests for the same URL wait for), as a revalidation of a stale response with
//! its validators, or past the cache entirely. After the upstream answer, [`Pending`] stores
//! what may be stored (teeing the body to the client and the store at once), serves a stale
//! response when the origin failed and `stale-if-error` allows it, and invalidates what a
//! successful unsafe request changed.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, response, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use metrics::Counter;

use super::body::{BoxError, ProxyBody, UpstreamBody};
use super::headers::VIA_VALUE;
use crate::cache::rules::{
    self, age_header, cache_status, can_freshen, ensure_date, evaluate, merge_304, not_modified, not_modified_headers,
    revalidation_headers, storable, strip_for_storage, vary_key, CacheControl, CacheStatus, Decision, EntryFacts, Fwd,
    NotStored, Outcome, StaleDefaults, Storability,
};
use crate::cache::store::{self, Cache, Flight, FlightGuard, Object};
use crate::config::RouteCacheConfig;
use crate::upstream::{self, Attempts, Lease, PickHint, Pool};

/// How a request fared with the cache: the `result` label of waypost_cache_requests_total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit = 0,
    Miss = 1,
    Stale = 2,
    Revalidated = 3,
    Bypass = 4,
}

impl CacheResult {
    pub const LABELS: [&'static str; 5] = ["hit", "miss", "stale", "revalidated", "bypass"];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// A cached route's settings and counters.
pub struct RouteCache {
    pub cfg: RouteCacheConfig,
    pub defaults: StaleDefaults,
    pub results: [Counter; 5],
}

impl RouteCache {
    pub fn new(route: &str, cfg: RouteCacheConfig) -> RouteCache {
        RouteCache {
            defaults: StaleDefaults {
                while_revalidate: cfg.stale_while_revalidate,
                if_error: cfg.stale_if_error,
            },
            cfg,
            results: CacheResult::LABELS.map(|r| crate::admin::metrics::cache_counter(route, r)),
        }
    }

    pub fn count(&self, r: CacheResult) {
        self.results[r as usize].increment(1);
    }
}

/// What the lookup decided.
pub enum Plan {
    /// Answer with this, from the store.
    Serve(Response<ProxyBody>, CacheResult),
    /// Go upstream; [`Pending`] deals with the answer.
    Forward(Pending),
    /// Answer with this stale response now, and refresh it upstream in the background.
    Refresh(Response<ProxyBody>, Pending),
}

enum Kind {
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
    cache: Arc<Cache>,
    key: Box<[u8]>,
    host: Option<HeaderValue>,
    method: Method,
    kind: Kind,
    /// The client's request headers as received (Vary, conditionals, Range), for misses and
    /// revalidations only.
    req_headers: HeaderMap,
    request_time: SystemTime,
    flight: Option<FlightGuard>,
    /// A stale response that may be served if the origin fails (stale-if-error).
    stale: Option<Arc<Object>>,
    collapsed: bool,
    versioned: bool,
    default_ttl: Duration,
    versioned_ttl: Duration,
    defaults: StaleDefaults,
}

/// The answer once the upstream response is in.
pub enum Answer {
    /// The upstream response goes on, with this body (teed into the store when stored) and
    /// this Cache-Status.
    Forwarded(ProxyBody, HeaderValue),
    /// Answered from the store instead: a revalidated response, or a stale one on error.
    FromCache(Response<ProxyBody>),
}

/// The store key: lower-cased host, then path and query.
pub fn primary_key(host: Option<&HeaderValue>, pq: &str) -> Vec<u8> {
    let host = host.map(HeaderValue::as_bytes).unwrap_or_default();
    let mut key = Vec::with_capacity(host.len() + pq.len());
    key.extend(host.iter().map(u8::to_ascii_lowercase));
    key.extend_from_slice(pq.as_bytes());
    key
}

/// The value of query parameter `name`, and the path and query without it.
fn version_of<'a>(pq: &'a str, name: &str) -> Option<(&'a str, String)> {
    let (path, query) = pq.split_once('?')?;
    let mut version = None;
    let mut rest = String::with_capacity(pq.len());
    rest.push_str(path);
    let mut sep = '?';
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name && version.is_none() {
            version = Some(v);
        } else {
            rest.push(sep);
            rest.push_str(pair);
            sep = '&';
        }
    }
    Some((version?, rest))
}

/// Whether a stored response may answer a request carrying Authorization (RFC 9111 §3.5).
fn allows_authorized(stored: &HeaderMap) -> bool {
    let cc = CacheControl::parse(stored);
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The request fields a cache's own revalidation replaces.
const CLIENT_CONDITIONALS: [HeaderName; 3] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_RANGE];

/// The request fields of a cache's own revalidation of `stored`: the client's conditionals
/// replaced by the stored validators.
fn ask_to_revalidate(req: &mut HeaderMap, stored: &HeaderMap) {
    for h in &CLIENT_CONDITIONALS {
        req.remove(h);
    }
    req.extend(revalidation_headers(stored));
}

/// Phase 3: look the request up. `wait_for` bounds how long a request waits for another
/// one's fetch of the same URL. A hit touches nothing but the store: the [`Pending`] of a
/// request that goes upstream is only made on the way out.
pub async fn lookup(
    cache: &Arc<Cache>,
    rc: &RouteCache,
    parts: &mut request::Parts,
    host: Option<&HeaderValue>,
    upgrade: bool,
    wait_for: Duration,
) -> Plan {
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let key = primary_key(host, pq);
    let method = parts.method.clone();
    let mut now = SystemTime::now();
    let mut collapsed = false;
    let mut versioned = false;
    let pending = |kind: Kind, key: Vec<u8>, now: SystemTime, collapsed: bool, versioned: bool| Pending {
        cache: cache.clone(),
        key: key.into_boxed_slice(),
        host: host.cloned(),
        method: method.clone(),
        kind,
        req_headers: HeaderMap::new(),
        request_time: now,
        flight: None,
        stale: None,
        collapsed,
        versioned,
        default_ttl: rc.cfg.default_ttl,
        versioned_ttl: rc.cfg.versioned_ttl,
        defaults: rc.defaults,
    };
    if method != Method::GET && method != Method::HEAD {
        // Unsafe methods keep the key: a success invalidates it.
        let key = if is_unsafe(&method) { key } else { Vec::new() };
        return Plan::Forward(pending(Kind::Bypass(Fwd::Method), key, now, false, false));
    }
    if upgrade {
        return Plan::Forward(pending(Kind::Bypass(Fwd::Bypass), Vec::new(), now, false, false));
    }
    if let Some(name) = rc.cfg.version_param.as_deref() {
        if let Some((version, base)) = version_of(pq, name) {
            versioned = true;
            if method == Method::GET {
                let mut base_key = primary_key(host, "");
                base_key.extend_from_slice(base.as_bytes());
                cache.see_version(&base_key, version.as_bytes(), &key);
            }
        }
    }
    let req_cc = CacheControl::parse(&parts.headers);
    let range = parts.headers.contains_key(header::RANGE);
    let authorized = parts.headers.contains_key(header::AUTHORIZATION);
    loop {
        let mut revalidate = None;
        let mut stale = None;
        if let Some(res) = cache.get(&key) {
            let vkey = if res.varies() {
                vary_key(&res.variants[0].headers, &parts.headers)
            } else {
                Some(Vec::new())
            };
            let found = vkey.as_deref().and_then(|k| res.variant(k));
            if found.is_some_and(|o| authorized && !allows_authorized(&o.headers)) {
                return Plan::Forward(pending(
                    Kind::Bypass(Fwd::Bypass),
                    Vec::new(),
                    now,
                    collapsed,
                    versioned,
                ));
            }
            if let Some(obj) = found {
                match evaluate(&req_cc, &obj.facts, &rc.defaults, now) {
                    Decision::Fresh => {
                        let status = CacheStatus {
                            collapsed,
                            ..CacheStatus::hit(obj.facts.ttl(now))
                        };
                        return Plan::Serve(serve(obj, &method, &parts.headers, now, &status), CacheResult::Hit);
                    }
                    Decision::StaleAccepted => {
                        let status = CacheStatus::hit(obj.facts.ttl(now));
                        return Plan::Serve(serve(obj, &method, &parts.headers, now, &status), CacheResult::Stale);
                    }
                    Decision::GatewayTimeout => return Plan::Serve(only_if_cached(), CacheResult::Miss),
                    Decision::Stale {
                        may_serve_while_revalidate: true,
                        ..
                    } => {
                        let status = CacheStatus::hit(obj.facts.ttl(now));
                        let resp = serve(obj, &method, &parts.headers, now, &status);
                        if obj
                            .refreshing
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                            .is_err()
                        {
                            return Plan::Serve(resp, CacheResult::Stale);
                        }
                        // The refresh is a GET of its own, whatever the client asked.
                        let mut p = pending(Kind::Revalidate(obj.clone()), key, now, collapsed, versioned);
                        p.req_headers = parts.headers.clone();
                        p.method = Method::GET;
                        parts.method = Method::GET;
                        parts.headers.remove(header::RANGE);
                        ask_to_revalidate(&mut parts.headers, &obj.headers);
                        return Plan::Refresh(resp, p);
                    }
                    Decision::Stale { may_serve_if_error, .. } => {
                        if may_serve_if_error {
                            stale = Some(obj.clone());
                        }
                        revalidate = obj.facts.has_validator.then(|| obj.clone());
                    }
                    Decision::MustRevalidate { .. } => {
                        revalidate = obj.facts.has_validator.then(|| obj.clone());
                    }
                }
            }
        }
        // Going upstream.
        if req_cc.only_if_cached {
            return Plan::Serve(only_if_cached(), CacheResult::Miss);
        }
        if method == Method::HEAD {
            let mut p = pending(Kind::Head, Vec::new(), now, collapsed, versioned);
            p.stale = stale;
            return Plan::Forward(p);
        }
        if range {
            // Range requests are answered from a fresh stored response; anything else about
            // them goes straight through, not stored.
            return Plan::Forward(pending(
                Kind::Bypass(Fwd::Partial),
                Vec::new(),
                now,
                collapsed,
                versioned,
            ));
        }
        let mut flight = None;
        if !collapsed {
            match cache.join_flight(&key) {
                Flight::Follower(rx) => {
                    store::wait(rx, wait_for).await;
                    collapsed = true;
                    now = SystemTime::now();
                    continue;
                }
                Flight::Leader(guard) => flight = Some(guard),
            }
        }
        let req_headers = parts.headers.clone();
        let kind = match revalidate {
            Some(obj) => {
                ask_to_revalidate(&mut parts.headers, &obj.headers);
                Kind::Revalidate(obj)
            }
            None => Kind::Miss,
        };
        let mut p = pending(kind, key, now, collapsed, versioned);
        p.req_headers = req_headers;
        p.flight = flight;
        p.stale = stale;
        return Plan::Forward(p);
    }
}

/// 504 for `only-if-cached` when nothing stored may answer (RFC 9111 §5.2.1.7).
fn only_if_cached() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text("504 not in cache (only-if-cached)\n"));
    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("cache-status"),
        HeaderValue::from_static("waypost; fwd=miss; detail=only-if-cached"),
    );
    h.insert(header::VIA, VIA_VALUE);
    r
}

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A response from the store: 304 when the client's conditionals match, 206 for one satisfiable
/// byte range, 416 for an unsatisfiable one, else the whole stored response (without a body for
/// HEAD). Age, Cache-Status and Via are added.
fn serve(
    obj: &Object,
    method: &Method,
    req: &HeaderMap,
    now: SystemTime,
    status: &CacheStatus<'_>,
) -> Response<ProxyBody> {
    let age = age_header(obj.facts.age(now));
    let mut resp = if not_modified(method, req, obj.status, &obj.headers) {
        let mut r = Response::new(ProxyBody::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = not_modified_headers(&obj.headers);
        r
    } else {
        match byte_range(method, req, obj) {
            Some(Ok((start, end))) => {
                let mut r = Response::new(ProxyBody::bytes(obj.body.slice(start..=end)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let mut h = obj.headers.clone();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", obj.body.len())) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                *r.headers_mut() = h;
                r
            }
            Some(Err(())) => {
                let mut r = Response::new(ProxyBody::Empty);
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.body.len())) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                r
            }
            None => {
                let body = if method == Method::HEAD {
                    ProxyBody::Empty
                } else {
                    ProxyBody::Full(Some(obj.body.clone()))
                };
                let mut r = Response::new(body);
                *r.status_mut() = obj.status;
                *r.headers_mut() = obj.headers.clone();
                r
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(header::AGE, age);
    h.insert(CACHE_STATUS.clone(), cache_status(status));
    h.append(header::VIA, VIA_VALUE);
    resp
}

/// One byte range of a stored 200 (RFC 9110 §14): `Some(Ok((first, last)))` to serve 206,
/// `Some(Err(()))` for 416, `None` to serve the whole response (no Range, several ranges, a
/// range unit other than bytes, or an If-Range that doesn't match).
fn byte_range(method: &Method, req: &HeaderMap, obj: &Object) -> Option<Result<(usize, usize), ()>> {
    if method != Method::GET || obj.status != StatusCode::OK {
        return None;
    }
    let spec = req.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(if_range) = req.get(header::IF_RANGE) {
        // Only a strong ETag equal to the stored one keeps the range (a date is too coarse).
        let stored = obj.headers.get(header::ETAG)?;
        if if_range.as_bytes().starts_with(b"W/") || if_range != stored {
            return None;
        }
    }
    let set = spec.strip_prefix("bytes=")?.trim();
    if set.contains(',') {
        return None;
    }
    let len = obj.body.len();
    let (first, last) = set.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let range = if first.is_empty() {
        // A suffix: the last N bytes.
        if !digits(last) {
            return None;
        }
        let n: usize = last.parse().unwrap_or(usize::MAX);
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        if !digits(first) || !(last.is_empty() || digits(last)) {
            return None;
        }
        let a: usize = first.parse().unwrap_or(usize::MAX);
        let b: usize = if last.is_empty() {
            usize::MAX
        } else {
            last.parse().unwrap_or(usize::MAX)
        };
        if b < a {
            return None;
        }
        if a >= len {
            return Some(Err(()));
        }
        (a, b.min(len - 1))
    };
    Some(Ok(range))
}

/// Header values parsed by hyper are views into its read buffer; stored ones get their own
/// memory, so that an entry never keeps a connection's buffer alive.
fn owned_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let mut v = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
    }
    out
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
    pub fn result_on_error(&self) -> CacheResult {
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
    pub fn stale_on_error(&mut self, code: Option<u16>) -> Option<Response<ProxyBody>> {
        let obj = self.stale.take()?;
        let status = CacheStatus {
            outcome: Outcome::Fwd {
                reason: Fwd::Stale,
                status: code,
            },
            stored: false,
            collapsed: self.collapsed,
            ttl: Some(obj.facts.ttl(SystemTime::now())),
            detail: Some("stale-if-error"),
        };
        let method = self.method.clone();
        Some(serve(&obj, &method, &self.req_headers, SystemTime::now(), &status))
    }

    /// Phase 7: the upstream response is in. `rparts` may be changed (a Date added); `body` is
    /// the upstream body.
    pub fn on_response(mut self, rparts: &mut response::Parts, body: ProxyBody) -> (Answer, CacheResult) {
        let code = rparts.status.as_u16();
        let now = SystemTime::now();
        if matches!(code, 500 | 502 | 503 | 504) {
            if let Some(r) = self.stale_on_error(Some(code)) {
                return (Answer::FromCache(r), CacheResult::Stale);
            }
        }
        match std::mem::replace(&mut self.kind, Kind::Miss) {
            Kind::Bypass(reason) => {
                if !self.key.is_empty() && rules::invalidates(&self.method, rparts.status) {
                    self.invalidate_after_write(&rparts.headers);
                }
                let v = self.status(reason, None, false, None);
                (Answer::Forwarded(body, v), CacheResult::Bypass)
            }
            Kind::Head => {
                let v = self.status(Fwd::Miss, Some(code), false, Some("head"));
                (Answer::Forwarded(body, v), CacheResult::Miss)
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
                (Answer::FromCache(resp), CacheResult::Revalidated)
            }
            _ => self.store_miss(rparts, body, now),
        }
    }

    fn store_miss(mut self, rparts: &mut response::Parts, body: ProxyBody, now: SystemTime) -> (Answer, CacheResult) {
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
                return (Answer::Forwarded(body, v), CacheResult::Miss);
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
            return (Answer::Forwarded(body, v), CacheResult::Miss);
        }
        let Some(vkey) = vary_key(&rparts.headers, &self.req_headers) else {
            let v = self.status(Fwd::Miss, Some(code), false, Some("vary-star"));
            return (Answer::Forwarded(body, v), CacheResult::Miss);
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
            Answer::Forwarded(ProxyBody::Caching(Box::new(tee)), v),
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
    pub async fn refresh(self, pool: Arc<Pool>, req: Request<ProxyBody>, hint: PickHint) {
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
        if let Answer::Forwarded(mut body @ ProxyBody::Caching(_), _) = answer {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        }
    }
}

/// What a teed body stores when it has been read to its end.
struct ToStore {
    cache: Arc<Cache>,
    key: Box<[u8]>,
    status: StatusCode,
    headers: HeaderMap,
    facts: EntryFacts,
    vary_key: Vec<u8>,
    tags: Vec<Box<str>>,
    keep: Duration,
    limit: usize,
    /// Waiters for this URL go when the entry is stored (or the store is abandoned).
    _flight: Option<FlightGuard>,
}

/// An upstream body on its way to the client that is also kept, up to the object size limit,
/// and stored once it ended cleanly. A body that grows past the limit, ends with trailers or an
/// error, or is dropped early is not stored.
pub struct Tee {
    inner: ProxyBody,
    chunks: Vec<Bytes>,
    size: usize,
    store: Option<ToStore>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(body: &'static [u8], etag: Option<&'static str>) -> Object {
        let mut h = HeaderMap::new();
        if let Some(e) = etag {
            h.insert(header::ETAG, HeaderValue::from_static(e));
        }
        let facts = EntryFacts::new(&h, Duration::from_secs(60), SystemTime::now(), SystemTime::now());
        Object::new(
            StatusCode::OK,
            h,
            Bytes::from_static(body),
            facts,
            Vec::new(),
            Vec::new(),
            Duration::from_secs(60),
        )
    }

    fn range(spec: &str, if_range: Option<&str>, o: &Object) -> Option<Result<(usize, usize), ()>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(spec).unwrap());
        if let Some(v) = if_range {
            h.insert(header::IF_RANGE, HeaderValue::from_str(v).unwrap());
        }
        byte_range(&Method::GET, &h, o)
    }

    #[test]
    fn byte_ranges() {
        let o = obj(b"0123456789", Some("\"abc\""));
        assert_eq!(range("bytes=0-3", None, &o), Some(Ok((0, 3))));
        assert_eq!(range("bytes=4-", None, &o), Some(Ok((4, 9))));
        assert_eq!(range("bytes=-3", None, &o), Some(Ok((7, 9))));
        assert_eq!(range("bytes=-30", None, &o), Some(Ok((0, 9))));
        assert_eq!(range("bytes=5-100", None, &o), Some(Ok((5, 9))));
        assert_eq!(range("bytes=10-", None, &o), Some(Err(())));
        assert_eq!(range("bytes=-0", None, &o), Some(Err(())));
        // Served whole: several ranges, other units, nonsense, a reversed range.
        assert_eq!(range("bytes=0-1,3-4", None, &o), None);
        assert_eq!(range("items=0-1", None, &o), None);
        assert_eq!(range("bytes=a-b", None, &o), None);
        assert_eq!(range("bytes=5-2", None, &o), None);
        // If-Range: only the same strong ETag keeps the range.
        assert_eq!(range("bytes=0-0", Some("\"abc\""), &o), Some(Ok((0, 0))));
        assert_eq!(range("bytes=0-0", Some("\"old\""), &o), None);
        assert_eq!(range("bytes=0-0", Some("W/\"abc\""), &o), None);
        assert_eq!(range("bytes=0-0", Some("Sat, 01 Jan 2000 00:00:00 GMT"), &o), None);
    }

    #[test]
    fn keys_and_versions() {
        let host = HeaderValue::from_static("Example.COM:8080");
        assert_eq!(primary_key(Some(&host), "/a?b=1"), b"example.com:8080/a?b=1");
        assert_eq!(primary_key(None, "/a"), b"/a");
        assert_eq!(version_of("/app.js?v=abc", "v"), Some(("abc", "/app.js".to_string())));
        assert_eq!(
            version_of("/app.js?x=1&v=abc&y=2", "v"),
            Some(("abc", "/app.js?x=1&y=2".to_string()))
        );
        assert_eq!(version_of("/app.js?version=abc", "v"), None);
        assert_eq!(version_of("/app.js", "v"), None);
    }
}
