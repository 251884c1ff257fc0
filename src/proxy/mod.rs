//! The request pipeline. This module owns the order of the phases and nothing else:
//!
//! 1 route (then its rate limits) → 2 region (geo) → 3 cache lookup → 4 target pool → 5 pick + 6 forward
//! → 7 cache store → 8 respond (headers out; one exit writes the access log and metrics).
//!
//! Each capability plugs in as a phase of its own module (geo, cache, split, affinity); this
//! function only orders them.

pub mod affinity;
pub mod body;
pub mod cache;
pub mod geo;
pub mod headers;
pub mod split;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::accesslog::{flags, Record};
use crate::admin::metrics::{self, class_index};
use crate::error::ProxyError;
use crate::state::State;
use crate::upstream::{self, Attempts, Lease, Replay};
use affinity::Affinity;
use body::{BoxError, ProxyBody, UpstreamBody};

/// What a connection knows about its client, made once per connection.
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The client's IP as a header value, for X-Forwarded-For without formatting per request.
    pub client_ip: HeaderValue,
    pub scheme: &'static str,
    /// Keeps the client connection counted (open connections, drain) while held: an upgraded
    /// tunnel holds it past the end of the HTTP exchange.
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Counts request bodies refused for `max_body_bytes` (waypost_client_errors_total).
    pub body_too_large: Option<::metrics::Counter>,
}

impl ConnInfo {
    pub fn new(listener: Arc<str>, peer: SocketAddr, scheme: &'static str) -> ConnInfo {
        let ip = canonical_ip(peer.ip());
        ConnInfo {
            listener,
            peer: SocketAddr::new(ip, peer.port()),
            client_ip: HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown")),
            scheme,
            hold: None,
            body_too_large: None,
        }
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are the IPv4 client they stand for.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Everything the final phase needs to account for the request once its response is done.
struct Finish {
    state: Arc<State>,
    listener: usize,
    route: Option<usize>,
    status: u16,
    started: Instant,
    bytes: u64,
    log: Option<Box<Record>>,
}

impl Finish {
    fn complete(mut self, aborted: bool) {
        let class = class_index(self.status);
        match self.route.and_then(|r| self.state.routes.get(r)) {
            Some(route) => {
                route.metrics.request(self.listener, class);
                route.metrics.duration.record(self.started.elapsed().as_secs_f64());
            }
            None => {
                let l = self.state.listeners.get(self.listener).map(|l| &**l).unwrap_or("");
                metrics::unrouted(l, class);
            }
        }
        if let (Some(mut rec), Some(sink)) = (self.log.take(), self.state.access_log.as_ref()) {
            rec.bytes = self.bytes;
            rec.duration = self.started.elapsed();
            if aborted {
                rec.flags |= flags::ABORTED;
            }
            sink.log(*rec);
        }
    }
}

/// The body sent to the client: counts bytes and runs the final accounting when the body ends
/// (or is dropped before its end, which the log marks as aborted).
pub struct ResponseBody {
    inner: ProxyBody,
    finish: Option<Finish>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(fin)) = (f.data_ref(), this.finish.as_mut()) {
                    fin.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.complete(false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.finish.take() {
                    f.complete(true);
                }
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

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.complete(!self.inner.is_end_stream());
        }
    }
}

/// A plain listener's `redirect_https`: 308 to the same host, path and query over https on
/// `port` (no port in the URL when it is 443). A request without a usable host gets 400.
pub fn redirect_https<B>(req: &Request<B>, port: u16) -> Response<ResponseBody> {
    let host = req.uri().host().map(str::to_string).or_else(|| {
        let h = req.headers().get(header::HOST)?.to_str().ok()?;
        let authority: http::uri::Authority = h.parse().ok()?;
        Some(authority.host().to_string())
    });
    let plain = |status: StatusCode, body: ProxyBody| {
        let mut r = Response::new(ResponseBody {
            inner: body,
            finish: None,
        });
        *r.status_mut() = status;
        r
    };
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        let mut r = plain(
            StatusCode::BAD_REQUEST,
            ProxyBody::text("400 a Host header is required\n"),
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    };
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = plain(StatusCode::PERMANENT_REDIRECT, ProxyBody::Empty);
            r.headers_mut().insert(header::LOCATION, v);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, ProxyBody::text("400 bad request target\n")),
    }
}

/// Serve one request against one generation.
pub async fn handle(req: Request<Incoming>, conn: &ConnInfo, state: Arc<State>) -> Response<ResponseBody> {
    let started = Instant::now();
    let listener = state.listener_index(&conn.listener);
    let (mut parts, body) = req.into_parts();

    // For the access log, taken before the request is rewritten (all cheap reference clones).
    let mut log = state.access_log.as_ref().map(|sink| {
        Box::new(Record {
            time: SystemTime::now(),
            listener: conn.listener.clone(),
            client: conn.peer.ip(),
            method: parts.method.clone(),
            host: host_value(&parts),
            uri: parts.uri.clone(),
            version: parts.version,
            status: 0,
            bytes: 0,
            duration: Default::default(),
            route: None,
            pool: None,
            backend: None,
            flags: 0,
            error: None,
            target: None,
            cache: None,
            region: None,
            datacenter: None,
            user_agent: sink
                .wants_agent()
                .then(|| parts.headers.get(header::USER_AGENT).cloned())
                .flatten(),
            referer: sink
                .wants_agent()
                .then(|| parts.headers.get(header::REFERER).cloned())
                .flatten(),
        })
    });

    // A target that is neither a path nor "*" (for OPTIONS) is not one a backend should see.
    let path = parts.uri.path();
    let asterisk = parts.method == http::Method::OPTIONS && path == "*";
    if !(path.starts_with('/') || asterisk) {
        return respond_error(
            ProxyError::BadRequest("bad request target"),
            state,
            listener,
            None,
            started,
            log,
        );
    }
    let body = match body::limit(body, state.config.server.max_body_bytes, conn.body_too_large.as_ref()) {
        Ok(b) => b,
        Err(e) => return respond_error(e, state, listener, None, started, log),
    };

    // 1 route
    let host = host_value(&parts);
    let route_idx = state.router.route(
        host.as_ref().and_then(|h| h.to_str().ok()),
        parts.uri.path(),
        &parts.method,
    );
    let Some(route_idx) = route_idx else {
        return respond_error(ProxyError::NoRoute, state, listener, None, started, log);
    };
    let route = &state.routes[route_idx];
    // 1b rate limits: a request over a limit is refused before anything else is done for it.
    if let Err(denied) = state
        .ratelimit
        .check(route_idx, conn.peer.ip(), &parts.headers, started)
    {
        if let Some(l) = log.as_mut() {
            l.route = Some(route.name.clone());
            l.flags |= flags::RATE_LIMITED;
        }
        return respond(denied.response(), state, listener, Some(route_idx), started, log);
    }
    // 2 region: for geo routes, the client's region picks the data center's pool.
    let geo_pool = if route.geo_pools.is_empty() {
        None
    } else {
        let origin = geo::origin(&state.geo, conn.peer.ip(), &parts.headers);
        let (p, home, serving) = geo::choose(&state, route, origin);
        geo::account(&state, origin, home, serving);
        if let Some(l) = log.as_mut() {
            l.region = geo::region_name(&state, origin.region);
            l.datacenter = geo::dc_name(&state, serving);
        }
        Some(p)
    };
    // 3 cache lookup: answer from the store, or learn how to go upstream.
    let upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
    let mut pending = None;
    let mut refresh = None;
    if let (Some(rc), Some(store)) = (route.cache.as_ref(), state.cache.as_ref()) {
        let wait_for = state.pools[geo_pool.unwrap_or(route.pool)].response_timeout;
        match cache::lookup(store, rc, &mut parts, host.as_ref(), upgrade, wait_for).await {
            cache::Plan::Serve(resp, result) => {
                rc.count(result);
                if let Some(l) = log.as_mut() {
                    l.route = Some(route.name.clone());
                    l.cache = Some(result.label());
                }
                return respond(resp, state, listener, Some(route_idx), started, log);
            }
            cache::Plan::Forward(p) => pending = Some(p),
            cache::Plan::Refresh(resp, p) => refresh = Some((resp, p)),
        }
    }
    // 4 target: the route's pool, or for a split route the primary or the replicas.
    let split_target = route.split.as_ref().map(|sp| {
        let t = split::decide(&state, sp, &parts.method, &parts.headers);
        if t == split::Target::Replicas {
            sp.to_replica.increment(1);
        } else {
            sp.to_primary.increment(1);
        }
        (sp, t)
    });
    if let Some(l) = log.as_mut() {
        l.target = split_target.map(|(_, t)| t.label());
    }
    let pool = match split_target {
        None => state.pools[geo_pool.unwrap_or(route.pool)].clone(),
        Some((sp, split::Target::Primary)) => state.pools[sp.primary].clone(),
        Some((sp, _)) => state.pools[sp.replicas].clone(),
    };
    if let Some((_, split::Target::PrimaryDown)) = split_target {
        return respond_error(
            ProxyError::PrimaryUnavailable,
            state,
            listener,
            Some(route_idx),
            started,
            log,
        );
    }
    let method = split_target.map(|_| parts.method.clone());
    if let Some(l) = log.as_mut() {
        l.route = Some(route.name.clone());
        l.pool = Some(pool.name.clone());
    }

    // 5 pick: a sticky client's backend, a consistent-hash key, else the policy alone.
    let sticky = route.sticky.as_ref();
    let affinity = match sticky {
        Some(st) => match affinity::sticky(&state, st, &pool, &parts.headers) {
            Ok(a) => a,
            Err(affinity::PinnedDown) => {
                return respond_error(
                    ProxyError::NoHealthyBackend,
                    state,
                    listener,
                    Some(route_idx),
                    started,
                    log,
                )
            }
        },
        None => Affinity::None,
    };
    let key = affinity::key_hash(&pool, &parts.headers, &parts.uri, &conn.client_ip);
    let mut hint = affinity::hint(affinity, key);
    match split_target {
        Some((sp, split::Target::Replicas)) => hint.max_lag = Some(sp.cfg.max_replica_lag),
        Some((_, split::Target::Promoted(i))) => {
            hint.member = Some(i);
            hint.only_member = true;
        }
        _ => {}
    }

    // 6 forward
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    if parts.headers.get(header::HOST).is_none() {
        // HTTP/2 carries the host in :authority; an HTTP/1.1 backend needs it as Host.
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
    }
    headers::prepare_request(&mut parts.headers, &conn.client_ip, conn.scheme, upgrade);
    parts.uri = headers::upstream_uri(&parts.uri, route.strip);
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, ProxyBody::Incoming(body));
    // 6a mirror: a copy for the route's shadow pool, sent on its own.
    let upstream_req = state.mirrors.tee(route_idx, upstream_req);
    if let Some((resp, p)) = refresh {
        // stale-while-revalidate: the client has its answer now; the refresh runs on its own.
        if let Some(rc) = route.cache.as_ref() {
            rc.count(cache::CacheResult::Stale);
        }
        if let Some(l) = log.as_mut() {
            l.cache = Some(cache::CacheResult::Stale.label());
        }
        tokio::spawn(p.refresh(pool, upstream_req, hint));
        return respond(resp, state, listener, Some(route_idx), started, log);
    }
    let replay = Replay::capture(&upstream_req, &pool);
    let mut notes = Attempts::default();
    let result = upstream::forward(&pool, upstream_req, replay, hint, &mut notes).await;
    if let Some(l) = log.as_mut() {
        if notes.retried {
            l.flags |= flags::RETRIED;
        }
    }
    let (resp, lease) = match result {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(route = %route.name, pool = %pool.name, error = %e, "request failed");
            if let (Some(p), Some(rc)) = (pending.as_mut(), route.cache.as_ref()) {
                let stale = p.stale_on_error(None);
                let result = if stale.is_some() {
                    cache::CacheResult::Stale
                } else {
                    p.result_on_error()
                };
                rc.count(result);
                if let Some(l) = log.as_mut() {
                    l.cache = Some(result.label());
                }
                if let Some(resp) = stale {
                    return respond(resp, state, listener, Some(route_idx), started, log);
                }
            }
            return respond_error(e, state, listener, Some(route_idx), started, log);
        }
    };
    if let Some(l) = log.as_mut() {
        l.backend = Some(lease.backend().label.clone());
    }

    let (mut rparts, rbody) = resp.into_parts();
    let served_by = lease.backend().id;
    let switching = upgrade && rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    // 7 cache store: the response goes on (teed into the store when it may be stored), or the
    // store answers instead (a revalidated or stale-if-error response).
    let mut lease = Some(lease);
    let mut body = None;
    let mut cache_status = None;
    if !switching {
        let upstream = ProxyBody::Upstream(UpstreamBody::new(rbody, lease.take().expect("lease")));
        match (pending, route.cache.as_ref()) {
            (Some(p), Some(rc)) => {
                let (answer, result) = p.on_response(&mut rparts, upstream);
                rc.count(result);
                if let Some(l) = log.as_mut() {
                    l.cache = Some(result.label());
                }
                match answer {
                    cache::Answer::Forwarded(b, status) => {
                        body = Some(b);
                        cache_status = Some(status);
                    }
                    cache::Answer::FromCache(resp) => {
                        return respond(resp, state, listener, Some(route_idx), started, log);
                    }
                }
            }
            _ => body = Some(upstream),
        }
    }
    // 8 respond
    if let Some(st) = sticky {
        if let Some(cookie) = affinity::after_response(&state, st, &pool, affinity, served_by, conn.scheme == "https") {
            rparts.headers.append(header::SET_COOKIE, cookie);
        }
    }
    if let (Some((sp, _)), Some(m)) = (split_target, method.as_ref()) {
        if let Some(cookie) = split::after_write(&state, sp, m, rparts.status.as_u16(), conn.scheme == "https") {
            rparts.headers.append(header::SET_COOKIE, cookie);
        }
    }
    headers::prepare_response(&mut rparts.headers, switching);
    if let Some(v) = cache_status {
        rparts.headers.insert(HeaderName::from_static("cache-status"), v);
    }
    let body = if switching {
        match (client_upgrade, rparts.extensions.remove::<OnUpgrade>(), lease) {
            (Some(down), Some(up), Some(lease)) => {
                if let Some(l) = log.as_mut() {
                    l.flags |= flags::UPGRADED;
                }
                let hold = conn.hold.clone();
                tokio::spawn(async move {
                    tunnel(down, up, lease).await;
                    drop(hold);
                });
                ProxyBody::Empty
            }
            _ => {
                return respond_error(
                    ProxyError::BadRequest("upgrade not possible"),
                    state,
                    listener,
                    Some(route_idx),
                    started,
                    log,
                )
            }
        }
    } else {
        body.unwrap_or(ProxyBody::Empty)
    };
    let status = rparts.status.as_u16();
    if let Some(l) = log.as_mut() {
        l.status = status;
    }
    Response::from_parts(
        rparts,
        ResponseBody {
            inner: body,
            finish: Some(Finish {
                state,
                listener,
                route: Some(route_idx),
                status,
                started,
                bytes: 0,
                log,
            }),
        },
    )
}

/// The client's host: the Host header, else the URI authority (HTTP/2 :authority).
fn host_value(parts: &http::request::Parts) -> Option<HeaderValue> {
    match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Copy bytes both ways between the upgraded client and backend connections until either ends.
async fn tunnel(down: OnUpgrade, up: OnUpgrade, lease: Lease) {
    let (down, up) = match tokio::join!(down, up) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "tunnel ended with an error");
    }
    drop(lease);
}

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    h.insert(header::VIA, headers::VIA_VALUE);
    resp
}

fn respond_error(
    e: ProxyError,
    state: Arc<State>,
    listener: usize,
    route: Option<usize>,
    started: Instant,
    mut log: Option<Box<Record>>,
) -> Response<ResponseBody> {
    if let Some(l) = log.as_mut() {
        l.error = Some(e.flag());
    }
    respond(error_response(&e), state, listener, route, started, log)
}

/// A response made here (an error, or one from the cache), with the final accounting attached.
fn respond(
    resp: Response<ProxyBody>,
    state: Arc<State>,
    listener: usize,
    route: Option<usize>,
    started: Instant,
    mut log: Option<Box<Record>>,
) -> Response<ResponseBody> {
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    if let Some(l) = log.as_mut() {
        l.status = status;
    }
    Response::from_parts(
        parts,
        ResponseBody {
            inner: body,
            finish: Some(Finish {
                state,
                listener,
                route,
                status,
                started,
                bytes: 0,
                log,
            }),
        },
    )
}
