//! Phase 3 of the pipeline: the lookup. It answers from the store when RFC 9111 allows it (a
//! fresh hit, a stale one the client or `stale-while-revalidate` accepts, a 304 to a conditional
//! request, a 206 for one byte range); otherwise it says how to go upstream: as a plain miss
//! (leading the fetch that concurrent requests for the same URL wait for), as a revalidation of
//! a stale response with its validators, or past the cache entirely.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode};

use super::fill::{Kind, Pending};
use super::flow::{Flow, Plan};
use super::route::{CacheResult, RouteCache};
use crate::body::ProxyBody;
use crate::cache::rules::{
    age_header, cache_status, evaluate, not_modified, not_modified_headers, revalidation_headers, vary_key,
    CacheControl, CacheStatus, Decision, Fwd,
};
use crate::cache::store::{self, Cache, Flight, Object};
use crate::headers::VIA_VALUE;

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

/// The stored variant of `res` that this request's Vary fields select, if any.
fn variant_for<'a>(res: &'a store::Resource, req: &HeaderMap) -> Option<&'a Arc<Object>> {
    let vkey = if res.varies() {
        vary_key(&res.variants[0].headers, req)?
    } else {
        Vec::new()
    };
    res.variant(&vkey)
}

/// stale-while-revalidate: the refresh is a GET of its own, whatever the client asked, with the
/// stored validators.
fn as_refresh(mut p: Pending, parts: &mut request::Parts, obj: &Object) -> Pending {
    p.req_headers = parts.headers.clone();
    p.method = Method::GET;
    parts.method = Method::GET;
    parts.headers.remove(header::RANGE);
    ask_to_revalidate(&mut parts.headers, &obj.headers);
    p
}

/// Phase 3: look the request up. `wait_for` bounds how long a request waits for another
/// one's fetch of the same URL. A hit touches nothing but the store: the [`Pending`] of a
/// request that goes upstream is only made on the way out.
pub async fn lookup(
    cache: Option<&Arc<Cache>>,
    rc: Option<&RouteCache>,
    parts: &mut request::Parts,
    host: Option<&HeaderValue>,
    upgrade: bool,
    wait_for: Duration,
) -> Plan {
    match (cache, rc) {
        (Some(cache), Some(rc)) => plan(cache, rc, parts, host, upgrade, wait_for).await,
        _ => Plan::Go(Flow::Off),
    }
}

async fn plan(
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
    let mut now = crate::clock::wall();
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
        return Plan::pending(pending(Kind::Bypass(Fwd::Method), key, now, false, false));
    }
    if upgrade {
        return Plan::pending(pending(Kind::Bypass(Fwd::Bypass), Vec::new(), now, false, false));
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
        let res = cache.get(&key);
        let found = res.as_deref().and_then(|r| variant_for(r, &parts.headers));
        if found.is_some_and(|o| authorized && !allows_authorized(&o.headers)) {
            return Plan::pending(pending(
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
                    if !obj.begin_refresh() {
                        return Plan::Serve(resp, CacheResult::Stale);
                    }
                    let p = pending(Kind::Revalidate(obj.clone()), key, now, collapsed, versioned);
                    return Plan::refresh(resp, as_refresh(p, parts, obj));
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
        // Going upstream.
        if req_cc.only_if_cached {
            return Plan::Serve(only_if_cached(), CacheResult::Miss);
        }
        if method == Method::HEAD {
            let mut p = pending(Kind::Head, Vec::new(), now, collapsed, versioned);
            p.stale = stale;
            return Plan::pending(p);
        }
        if range {
            // Range requests are answered from a fresh stored response; anything else about
            // them goes straight through, not stored.
            return Plan::pending(pending(
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
                    now = crate::clock::wall();
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
        return Plan::pending(p);
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
pub(super) fn serve(
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
pub(super) fn owned_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let mut v = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::rules::EntryFacts;
    use bytes::Bytes;

    fn obj(body: &'static [u8], etag: Option<&'static str>) -> Object {
        let mut h = HeaderMap::new();
        if let Some(e) = etag {
            h.insert(header::ETAG, HeaderValue::from_static(e));
        }
        let facts = EntryFacts::new(&h, Duration::from_secs(60), crate::clock::wall(), crate::clock::wall());
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

    /// A stored response with `max-age=60`, stored now.
    fn store_fresh_for_a_minute(cache: &Cache, host: &HeaderValue, path: &str) {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let now = crate::clock::wall();
        let facts = EntryFacts::new(&h, Duration::from_secs(60), now, now);
        let obj = Object::new(
            StatusCode::OK,
            h,
            Bytes::from_static(b"hello"),
            facts,
            Vec::new(),
            Vec::new(),
            Duration::from_secs(3600),
        );
        cache.store(primary_key(Some(host), path).into_boxed_slice(), obj);
    }

    fn route_cache() -> RouteCache {
        RouteCache::new(
            "ttl",
            crate::config::RouteCacheConfig {
                default_ttl: Duration::ZERO,
                version_param: None,
                versioned_ttl: Duration::from_secs(86400),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_response_is_a_hit_until_its_max_age_passes_then_it_is_revalidated() {
        let cache = Arc::new(Cache::new(&crate::config::CacheConfig::default()));
        let rc = route_cache();
        let host = HeaderValue::from_static("example.com");
        store_fresh_for_a_minute(&cache, &host, "/a");
        let ask = || async {
            let mut parts = http::Request::get("/a").body(()).unwrap().into_parts().0;
            lookup(
                Some(&cache),
                Some(&rc),
                &mut parts,
                Some(&host),
                false,
                Duration::from_secs(1),
            )
            .await
        };
        tokio::time::sleep(Duration::from_secs(59)).await;
        match ask().await {
            Plan::Serve(resp, CacheResult::Hit) => {
                assert_eq!(resp.status(), StatusCode::OK);
                assert_eq!(resp.headers()[header::AGE], "59");
            }
            _ => panic!("a response 59 s into its 60 s max-age is a hit"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        match ask().await {
            Plan::Go(Flow::Forward(p)) => assert!(
                matches!(p.kind, Kind::Revalidate(_)),
                "stale with a validator: revalidate"
            ),
            _ => panic!("a response past its max-age goes upstream"),
        }
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
