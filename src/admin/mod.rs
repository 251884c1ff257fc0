//! The admin API on [admin].bind: GET / (the status page) /metrics /healthz /readyz /status,
//! POST /reload /cache/purge. GET /status and the POST endpoints need the bearer token when one
//! is configured; the page itself holds no data and asks for the token.

pub mod cli;
pub mod metrics;
pub mod page;
pub mod report;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::app::{self, Shared};
use crate::health::{self, Checked};
use crate::upstream::{Backend, Pool};

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", s)
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            refresh_gauges(shared);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::install().render(),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.ready.load(Ordering::Relaxed) && !*shared.drain.borrow() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET | &Method::HEAD, "/") => page::page(shared.state.load().config.admin.token.is_some()),
        (&Method::GET, "/status") => {
            if let Some(denied) = check_token(&req, shared) {
                return denied;
            }
            json_reply(StatusCode::OK, status(shared))
        }
        (&Method::POST, "/reload") => {
            if let Some(denied) = check_token(&req, shared) {
                return denied;
            }
            let out = app::reload(shared).await;
            let code = if out.ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json_reply(code, serde_json::to_value(&out).unwrap_or_default())
        }
        (&Method::POST, "/cache/purge") => {
            if let Some(denied) = check_token(&req, shared) {
                return denied;
            }
            purge(req, shared).await
        }
        (_, "/" | "/metrics" | "/healthz" | "/readyz" | "/status" | "/reload" | "/cache/purge") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "404 unknown admin endpoint\n"),
    }
}

/// `POST /cache/purge` with one of `{"url": "http://host/path?q"}`, `{"prefix": "/assets/"}`,
/// `{"tag": "t"}` or `{"all": true}`; answers `{"purged": N}`, the stored responses removed.
async fn purge(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let bad = |msg: String| json_reply(StatusCode::BAD_REQUEST, json!({ "error": msg }));
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("could not read the request body: {e}")),
    };
    let what = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => match parse_purge(&v) {
            Ok(p) => p,
            Err(e) => return bad(e),
        },
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let state = shared.state.load();
    let Some(cache) = state.cache.as_ref() else {
        return json_reply(
            StatusCode::CONFLICT,
            json!({ "error": "no route has [route.cache]: there is no cache to purge" }),
        );
    };
    let n = cache.purge(&what);
    metrics::cache_purged(n as u64);
    tracing::info!(?what, purged = n, "cache purge");
    json_reply(StatusCode::OK, json!({ "purged": n }))
}

/// Read a purge request: exactly one of url, prefix, tag or all.
fn parse_purge(v: &serde_json::Value) -> Result<crate::cache::Purge, String> {
    use crate::cache::Purge;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    if obj.len() != 1 {
        return Err("expected exactly one of \"url\", \"prefix\", \"tag\" or \"all\"".into());
    }
    let (k, val) = obj.iter().next().ok_or("empty object")?;
    let text = || {
        val.as_str()
            .filter(|s| !s.is_empty())
            .ok_or(format!("\"{k}\" must be a non-empty string"))
    };
    match k.as_str() {
        "url" => {
            let (host, path) = split_url(text()?)?;
            Ok(Purge::Url { host, path })
        }
        "prefix" => {
            let (host, prefix) = split_url(text()?)?;
            Ok(Purge::Prefix { host, prefix })
        }
        "tag" => Ok(Purge::Tag(text()?.to_string())),
        "all" if val.as_bool() == Some(true) => Ok(Purge::All),
        "all" => Err("\"all\" must be true".into()),
        other => Err(format!(
            "unknown key \"{other}\": expected \"url\", \"prefix\", \"tag\" or \"all\""
        )),
    }
}

/// "http://Host:8080/p?q" → (Some("host:8080"), "/p?q"); "/p" → (None, "/p").
fn split_url(s: &str) -> Result<(Option<String>, String), String> {
    if s.starts_with('/') {
        return Ok((None, s.to_string()));
    }
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is neither a URL like \"https://example.com/path\" nor a path"))?;
    let host = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?
        .as_str()
        .to_ascii_lowercase();
    // A prefix keeps exactly what was given; a URL without a path is the root.
    let rest = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rest = if rest.is_empty() { "/" } else { rest };
    Ok((Some(host), rest.to_string()))
}

/// `None` when the request may proceed; else the refusal to send.
fn check_token(req: &Request<Incoming>, shared: &Shared) -> Option<Response<Full<Bytes>>> {
    let state = shared.state.load();
    let expected = state.config.admin.token.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if bool::from(given.ct_eq(expected.as_bytes())) {
        None
    } else {
        let mut r = text(StatusCode::UNAUTHORIZED, "401 a valid bearer token is required\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

fn refresh_gauges(shared: &Shared) {
    let state = shared.state.load();
    for pool in &state.pools {
        for b in &pool.members {
            metrics::set_backend(&pool.name, &b.label, b.is_up(), b.in_flight());
            if let Some(lag) = b.health.lag() {
                metrics::set_replica_lag(&pool.name, &b.label, lag.as_secs_f64());
            }
        }
    }
    if let Ok(map) = shared.listeners.lock() {
        for r in map.values() {
            metrics::set_connections_active(&r.stats.name, r.stats.active.load(Ordering::Relaxed));
        }
    }
    metrics::set_generation(state.generation, shared.last_success());
    state.ratelimit.refresh_gauges();
    if let Some(c) = &state.cache {
        c.settle();
        metrics::set_cache(c.bytes(), c.entries());
    }
}

fn backend_status(pool: &Pool, b: &Backend, weight: u32) -> serde_json::Value {
    let now = health::now_ms();
    let h = &b.health;
    // Failed active checks say more than an ejection: they are shown first.
    let state = match h.checked() {
        Checked::Down => "down",
        _ if h.ejected(now) => "ejected",
        Checked::Up => "up",
        Checked::Unknown if h.checked_up() => "unknown",
        Checked::Unknown => "unknown (held back until checked)",
    };
    let last_check_ms = h.last_check_ms.load(Ordering::Relaxed);
    let ramp = h.ramp(now, pool.slow_start);
    json!({
        "address": &*b.label,
        "state": state,
        "available": b.is_up(),
        "weight": weight,
        "in_flight": b.in_flight(),
        "queued": b.queued.load(Ordering::Relaxed),
        "idle_connections": b.idle_connections(),
        "ejected_for_seconds": if h.ejected(now) { Some((h.ejected_until() - now) as f64 / 1000.0) } else { None },
        "slow_start_percent": if ramp < 1.0 && b.is_up() { Some((ramp * 100.0).round()) } else { None },
        "lag_seconds": h.lag().map(|l| l.as_secs_f64()),
        "reports_primary": h.primary_role(),
        "consecutive_check_passes": h.passes(),
        "consecutive_check_failures": h.failures(),
        "consecutive_request_failures": h.live_failures(),
        "last_check": if last_check_ms == 0 { serde_json::Value::Null } else { json!({
            "ok": h.last_check_ok.load(Ordering::Relaxed),
            "status": h.last_check_status.load(Ordering::Relaxed),
            "seconds_ago": now.saturating_sub(last_check_ms) as f64 / 1000.0,
        })},
    })
}

/// Per region: its data centers in failover order, and which one serves now (the first with a
/// pool that can take requests).
fn geo_status(state: &crate::state::State) -> serde_json::Value {
    let geo = &state.geo;
    let now = health::now_ms();
    let regions: Vec<_> = geo
        .region_names
        .iter()
        .enumerate()
        .map(|(r, name)| {
            let order = &geo.order[r];
            let serving = order.iter().copied().find(|dc| {
                state
                    .pools
                    .iter()
                    .enumerate()
                    .any(|(p, pool)| geo.pool_dc[p] == Some(*dc) && pool.can_serve(now))
            });
            json!({
                "region": &**name,
                "order": order.iter().map(|d| &*geo.dc_names[*d]).collect::<Vec<_>>(),
                "serving": serving.map(|d| &*geo.dc_names[d]),
                "failed_over": serving.is_some_and(|d| order.first() != Some(&d)),
            })
        })
        .collect();
    let datacenters: Vec<_> = geo
        .dc_names
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let pools: Vec<_> = state
                .pools
                .iter()
                .enumerate()
                .filter(|(p, _)| geo.pool_dc[*p] == Some(d))
                .map(|(_, pool)| pool)
                .collect();
            json!({
                "name": &**name,
                "pools": pools.iter().map(|p| &*p.name).collect::<Vec<_>>(),
                "healthy": pools.iter().any(|p| p.can_serve(now)),
            })
        })
        .collect();
    json!({
        "default_region": geo.default_region.map(|r| &*geo.region_names[r as usize]),
        "regions": regions,
        "datacenters": datacenters,
    })
}

/// What an operator wants to see at a glance; never secrets (the admin token is not shown).
fn status(shared: &Shared) -> serde_json::Value {
    let state = shared.state.load();
    let listeners: Vec<_> = shared
        .listeners
        .lock()
        .map(|m| {
            let mut v: Vec<_> = m
                .values()
                .map(|r| {
                    json!({
                        "name": &*r.stats.name,
                        "address": r.stats.bind.to_string(),
                        "connections_active": r.stats.active.load(Ordering::Relaxed),
                    })
                })
                .collect();
            v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            v
        })
        .unwrap_or_default();
    let pools: Vec<_> = state
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "balance": p.policy().as_str(),
                "health_checks": p.health.is_some(),
                "healthy_backends": p.members.iter().filter(|b| b.is_up()).count(),
                "panic": p.panic_threshold > 0 && p.members.iter().filter(|b| b.is_up()).count() * 100 < p.panic_threshold as usize * p.members.len(),
                "backends": p.members.iter().zip(&p.weights).map(|(b, w)| backend_status(p, b, *w)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut rules = report::route_rules(&state);
    let routes: Vec<_> = state
        .routes
        .iter()
        .map(|r| {
            let mut o = json!({"name": &*r.name, "pool": &*state.pool(r.pool).name});
            if let (Some(serde_json::Value::Object(extra)), Some(o)) = (rules.remove(&*r.name), o.as_object_mut()) {
                o.extend(extra);
            }
            o
        })
        .collect();
    let last = shared.last_reload.lock().map(|l| l.clone()).unwrap_or_default();
    let (requests, cache_requests) = report::counters(&metrics::install().render());
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": state.generation,
        "config_hash": state.config.hash,
        "config_path": shared.config_path.as_ref().map(|p| p.display().to_string()),
        "ready": shared.ready.load(Ordering::Relaxed) && !*shared.drain.borrow(),
        "connections_active": shared.gate.active(),
        "last_reload": last,
        "listeners": listeners,
        "geo": geo_status(&state),
        "ratelimit": state.ratelimit.status(),
        "pools": pools,
        "routes": routes,
        "cache": state.cache.as_ref().map(|c| {
            c.settle();
            json!({
                "max_size": c.max_size,
                "max_object_size": c.max_object_size(),
                "bytes": c.bytes(),
                "entries": c.entries(),
                "requests": cache_requests["results"],
                "hit_ratio": cache_requests["hit_ratio"],
                "routes": cache_requests["routes"],
            })
        }),
        "requests": requests,
        "reloads": shared.reloads.newest_first(),
        "certificates": report::certificates(&state),
        "time_unix": crate::clock::unix_f64(),
    })
}
