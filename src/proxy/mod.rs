//! The request pipeline. This module owns the order of the phases and nothing else:
//!
//! 1 route (then its rate limits) → 2 region (geo) → 3 cache lookup → 4 target pool → 5 pick
//! → 6 forward (a mirrored copy goes its own way) → 7 cache store → 8 respond.
//!
//! [`handle`] makes the request's context ([`Account`]), runs [`pipeline`], and sends its
//! result through the one exit ([`Account::respond`]): an error becomes its response through the
//! error table, and the final accounting (metrics, access log) rides on the response body. Each
//! phase is one call into the module that owns it.

mod account;
pub mod affinity;
pub mod geo;
pub mod split;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub use account::{error_response, Account, ResponseBody};

use crate::accesslog::flags;
use crate::body::{self, ClientBody, ProxyBody};
use crate::cache::{self, Answer, Flow, Plan};
use crate::clock;
use crate::error::ProxyError;
use crate::headers;
use crate::state::{PoolId, Route, RouteId, State};
use crate::upstream::{self, Attempts, Lease, PickHint, Pool, Replay};
use affinity::Affinity;
use split::Target;

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
        let ip = crate::net::canonical_ip(peer.ip());
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

/// Serve one request against one generation.
pub async fn handle(req: Request<Incoming>, conn: &ConnInfo, state: Arc<State>) -> Response<ResponseBody> {
    let mut account = Account::start(&state, conn, &req);
    let result = pipeline(&state, conn, &mut account, req).await;
    account.respond(state, result)
}

/// The phases in order; every failure leaves through `?`.
async fn pipeline(
    state: &Arc<State>,
    conn: &ConnInfo,
    account: &mut Account,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    check_target(&parts)?;
    let body = body::limit(body, state.config.server.max_body_bytes, conn.body_too_large.as_ref())?;
    let host = host_value(&parts.headers, &parts.uri);
    // 1 route
    let route_id = route(state, &parts, host.as_ref())?;
    let route = state.route(route_id);
    account.routed(route_id, &route.name);
    // 1b rate limits: a request over a limit is refused before anything else is done for it.
    if let Err(denied) = state
        .ratelimit
        .check(route_id.index(), conn.peer.ip(), &parts.headers, account.started())
    {
        account.note(|l| l.flags |= flags::RATE_LIMITED);
        return Ok(denied.response());
    }
    // 2 region: for geo routes, the client's region picks the data center's pool.
    let home_pool = region(state, route, conn, &parts.headers, account);
    // 3 cache lookup: answer from the store, or learn how to go upstream.
    let upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
    let wait_for = state.pool(home_pool.unwrap_or(route.pool)).response_timeout;
    let plan = cache::lookup(
        state.cache.as_ref(),
        route.cache.as_ref(),
        &mut parts,
        host.as_ref(),
        upgrade,
        wait_for,
    )
    .await;
    let flow = match plan {
        Plan::Serve(resp, result) => {
            count_cache(route, account, Some(result));
            return Ok(resp);
        }
        Plan::Go(flow) => flow,
    };
    // 4 target: the route's pool, or for a split route the primary or the replicas.
    let (pool, target) = target(state, route, &parts, home_pool, account)?;
    // 5 pick: a sticky client's backend, a consistent-hash key, else the policy alone.
    let (affinity, hint) = pick(state, route, &pool, target, &parts, conn)?;
    // 6 forward and 7 store: the exchange, finished by the cache on cached routes.
    let client_upgrade = upgrade.then(|| parts.extensions.remove::<OnUpgrade>()).flatten();
    let method = target.map(|_| parts.method.clone());
    let upstream_req = upstream_request(parts, body, host, conn, route);
    // 6a mirror: a copy for the route's shadow pool, sent on its own.
    let upstream_req = state.mirrors.tee(route_id.index(), upstream_req);
    let flow = match flow {
        Flow::Refresh(refresh) => {
            count_cache(route, account, Some(cache::CacheResult::Stale));
            return Ok(refresh.answer_now(pool, upstream_req, hint));
        }
        flow => flow,
    };
    let mut attempts = Attempts::default();
    let replay = Replay::capture(&upstream_req, &pool);
    let outcome = upstream::forward(&pool, upstream_req, replay, hint, &mut attempts).await;
    if attempts.retried {
        account.note(|l| l.flags |= flags::RETRIED);
    }
    let exchange = flow.finish(outcome, upgrade);
    count_cache(route, account, exchange.cache);
    // 8 respond
    let (mut resp, served_by, switched) = match exchange.answer? {
        Answer::Stored(resp) => return Ok(resp),
        Answer::Backend {
            parts,
            body,
            backend,
            cache_status,
        } => {
            account.note(|l| l.backend = Some(backend.label.clone()));
            let mut resp = Response::from_parts(parts, body);
            if let Some(v) = cache_status {
                resp.headers_mut().insert(CACHE_STATUS.clone(), v);
            }
            (resp, backend.id, false)
        }
        Answer::Switched { parts, lease } => {
            account.note(|l| l.backend = Some(lease.backend().label.clone()));
            let served_by = lease.backend().id;
            let resp = switch(conn, client_upgrade, parts, lease)?;
            account.note(|l| l.flags |= flags::UPGRADED);
            (resp, served_by, true)
        }
    };
    after_response(state, conn, route, &pool, affinity, served_by, method, &mut resp);
    headers::prepare_response(resp.headers_mut(), switched);
    Ok(resp)
}

static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A target that is neither a path nor "*" (for OPTIONS) is not one a backend should see.
fn check_target(parts: &request::Parts) -> Result<(), ProxyError> {
    let path = parts.uri.path();
    let asterisk = parts.method == http::Method::OPTIONS && path == "*";
    if path.starts_with('/') || asterisk {
        Ok(())
    } else {
        Err(ProxyError::BadRequest("bad request target"))
    }
}

/// Phase 1: the route for this host, path and method.
fn route(state: &State, parts: &request::Parts, host: Option<&HeaderValue>) -> Result<RouteId, ProxyError> {
    let host = host.and_then(|h| h.to_str().ok());
    state
        .router
        .route(host, parts.uri.path(), &parts.method)
        .map(RouteId::new)
        .ok_or(ProxyError::NoRoute)
}

/// Phase 2: for a geo route, the pool of the data center that serves the client's region.
fn region(state: &State, route: &Route, conn: &ConnInfo, headers: &HeaderMap, account: &mut Account) -> Option<PoolId> {
    if route.geo_pools.is_empty() {
        return None;
    }
    let origin = geo::origin(&state.geo, conn.peer.ip(), headers);
    let choice = geo::choose(state, route, origin, clock::now_ms());
    geo::account(state, origin, choice.home, choice.serving);
    account.note(|l| {
        l.region = geo::region_name(state, origin.region);
        l.datacenter = geo::dc_name(state, choice.serving);
    });
    Some(choice.pool)
}

/// The route's cache result, counted and logged.
fn count_cache(route: &Route, account: &mut Account, result: Option<cache::CacheResult>) {
    if let (Some(rc), Some(result)) = (route.cache.as_ref(), result) {
        rc.count(result);
        account.note(|l| l.cache = Some(result.label()));
    }
}

/// Phase 4: the pool this request goes to (for a split route: the primary or the replicas).
fn target(
    state: &State,
    route: &Route,
    parts: &request::Parts,
    home_pool: Option<PoolId>,
    account: &mut Account,
) -> Result<(Arc<Pool>, Option<Target>), ProxyError> {
    let Some(sp) = route.split.as_ref() else {
        let pool = state.pool(home_pool.unwrap_or(route.pool)).clone();
        account.note(|l| l.pool = Some(pool.name.clone()));
        return Ok((pool, None));
    };
    let t = split::decide(state, sp, &parts.method, &parts.headers, clock::now_ms());
    let counter = if t == Target::Replicas {
        &sp.to_replica
    } else {
        &sp.to_primary
    };
    counter.increment(1);
    // A promoted replica is a member of the replicas pool.
    let pool = match t {
        Target::Primary => state.pool(sp.primary),
        Target::Replicas | Target::Promoted(_) | Target::PrimaryDown => state.pool(sp.replicas),
    };
    account.note(|l| l.target = Some(t.label()));
    if t == Target::PrimaryDown {
        return Err(ProxyError::PrimaryUnavailable);
    }
    account.note(|l| l.pool = Some(pool.name.clone()));
    Ok((pool.clone(), Some(t)))
}

/// Phase 5: what the pick starts from: a sticky client's backend, a consistent-hash key, the
/// replicas' lag bound, or a promoted replica.
fn pick(
    state: &State,
    route: &Route,
    pool: &Pool,
    target: Option<Target>,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<(Affinity, PickHint), ProxyError> {
    let affinity = match route.sticky.as_ref() {
        Some(st) => affinity::sticky(state, st, pool, &parts.headers)
            .map_err(|affinity::PinnedDown| ProxyError::NoHealthyBackend)?,
        None => Affinity::None,
    };
    let key = affinity::key_hash(pool, &parts.headers, &parts.uri, &conn.client_ip);
    let mut hint = affinity::hint(affinity, key);
    match (route.split.as_ref(), target) {
        (Some(sp), Some(Target::Replicas)) => hint.max_lag = Some(sp.cfg.max_replica_lag),
        (_, Some(Target::Promoted(i))) => {
            hint.member = Some(i);
            hint.only_member = true;
        }
        _ => {}
    }
    Ok((affinity, hint))
}

/// The request as the backend gets it: Host kept (or taken from HTTP/2's :authority),
/// hop-by-hop fields dropped, X-Forwarded-* and Via added, the route's prefix stripped.
fn upstream_request(
    mut parts: request::Parts,
    body: ClientBody,
    host: Option<HeaderValue>,
    conn: &ConnInfo,
    route: &Route,
) -> Request<ProxyBody> {
    let upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
    if let (false, Some(h)) = (parts.headers.contains_key(header::HOST), host) {
        parts.headers.insert(header::HOST, h);
    }
    headers::prepare_request(&mut parts.headers, &conn.client_ip, conn.scheme, upgrade);
    parts.uri = headers::upstream_uri(&parts.uri, route.strip);
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, ProxyBody::Incoming(body))
}

/// Cookies set after the response: the sticky backend, and read-your-writes after a write.
#[allow(clippy::too_many_arguments)]
fn after_response(
    state: &State,
    conn: &ConnInfo,
    route: &Route,
    pool: &Pool,
    affinity: Affinity,
    served_by: u64,
    method: Option<http::Method>,
    resp: &mut Response<ProxyBody>,
) {
    let secure = conn.scheme == "https";
    if let Some(st) = route.sticky.as_ref() {
        if let Some(cookie) = affinity::after_response(state, st, pool, affinity, served_by, secure) {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    if let (Some(sp), Some(m)) = (route.split.as_ref(), method.as_ref()) {
        if let Some(cookie) = split::after_write(state, sp, m, resp.status().as_u16(), secure) {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
}

/// A backend switched protocols: tunnel bytes both ways once both sides have upgraded.
fn switch(
    conn: &ConnInfo,
    client: Option<OnUpgrade>,
    mut parts: http::response::Parts,
    lease: Lease,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (Some(down), Some(up)) = (client, parts.extensions.remove::<OnUpgrade>()) else {
        return Err(ProxyError::BadRequest("upgrade not possible"));
    };
    let hold = conn.hold.clone();
    tokio::spawn(async move {
        tunnel(down, up, lease).await;
        drop(hold);
    });
    Ok(Response::from_parts(parts, ProxyBody::Empty))
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

/// The client's host: the Host header, else the URI authority (HTTP/2 :authority).
fn host_value(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
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
    let resp = match host.filter(|h| !h.is_empty()) {
        None => {
            let mut r = Response::new(ProxyBody::text("400 a Host header is required\n"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        Some(host) => {
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let location = if port == 443 {
                format!("https://{host}{pq}")
            } else {
                format!("https://{host}:{port}{pq}")
            };
            match HeaderValue::from_str(&location) {
                Ok(v) => {
                    let mut r = Response::new(ProxyBody::Empty);
                    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
                    r.headers_mut().insert(header::LOCATION, v);
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                    r
                }
                Err(_) => {
                    let mut r = Response::new(ProxyBody::text("400 bad request target\n"));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            }
        }
    };
    resp.map(ResponseBody::plain)
}
