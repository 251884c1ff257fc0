//! Rate limits (`[[route.limit]]`): GCRA per key over a bounded table (`table`), the key from
//! the request (`key`), optionally shared by instances through Redis (`redis`). The request
//! path makes one call, [`Limits::check`], after routing and before a pool is picked; under
//! the limit it takes a hash, a clock value the caller already has, and one uncontended lock.

pub mod key;
pub mod redis;
pub mod table;

use crate::clock::Instant;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::admin::metrics;
use crate::body::ProxyBody;
use crate::config::{Config, LimitConfig, RedisDown};
use crate::router::geo::{client_address, TrustedProxies};
use crate::session::SessionKey;
use ::metrics::Counter;
use key::KeySpec;
use redis::{Mode, Redis};
use table::{Params, Table, Verdict};

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The limits' clock: nanoseconds since the first use, never 0 (a TAT of 0 means idle).
pub fn now_ns(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(crate::clock::now);
    at.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// One named limit: its settings, its key table, and its Redis link when shared.
pub struct Limit {
    pub name: Arc<str>,
    cfg: LimitConfig,
    spec: KeySpec,
    /// The whole limit's GCRA numbers (what Redis counts in).
    params: Params,
    table: Table,
    redis: Option<Arc<Redis>>,
    /// Keys with requests to tell Redis at the next exchange (only when shared).
    dirty: Mutex<Vec<u64>>,
    evictions: Counter,
    /// `RateLimit-Policy` of this limit.
    policy_value: HeaderValue,
}

impl Limit {
    fn new(cfg: &LimitConfig, sip_key: [u8; 16], redis: Option<Arc<Redis>>) -> Limit {
        let step = (cfg.per.as_nanos() / cfg.rate as u128).max(1) as u64;
        // The window the fields advertise: whole seconds, the quota scaled to it.
        let per = cfg.per.as_secs_f64();
        let w = per.ceil().max(1.0);
        let q = (cfg.rate as f64 * w / per).round() as u64;
        let policy = format!("\"{}\";q={q};w={}", cfg.name, w as u64);
        Limit {
            name: cfg.name.as_str().into(),
            spec: KeySpec::new(&cfg.key, cfg.ipv4_prefix, cfg.ipv6_prefix, sip_key),
            params: Params {
                step,
                tolerance: step.saturating_mul(cfg.burst),
            },
            table: Table::new(cfg.max_keys),
            redis,
            dirty: Mutex::new(Vec::new()),
            evictions: metrics::ratelimit_evictions(&cfg.name),
            policy_value: HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("\"limit\"")),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &LimitConfig {
        &self.cfg
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// The GCRA numbers of the local share when each of `n` instances enforces its part alone.
    fn share(&self, n: u32) -> Params {
        let n = n.max(1) as u64;
        let burst = (self.cfg.burst / n).max(1);
        let step = self.params.step.saturating_mul(n);
        Params {
            step,
            tolerance: step.saturating_mul(burst),
        }
    }

    /// Check one request of this limit's `key` at `now` (ns, [`now_ns`]).
    pub fn check_key(&self, key: u64, now: u64) -> Verdict {
        let (params, track) = match &self.redis {
            None => (self.params, false),
            Some(r) => match r.mode() {
                Mode::Shared => (self.params, true),
                Mode::Down(RedisDown::FailOpen) => {
                    return Verdict::Allow {
                        remaining: self.cfg.burst,
                        reset: 0,
                    }
                }
                Mode::Down(RedisDown::LocalShare) => (self.share(r.instances()), false),
            },
        };
        let cap = self.table.capacity();
        let (v, fx) = self.table.check(key, now, params, track, |k| {
            let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            if d.len() >= cap {
                return false;
            }
            d.push(k);
            true
        });
        if fx.evicted {
            self.evictions.increment(1);
        }
        v
    }

    /// The keys to tell Redis about, emptied.
    pub(crate) fn take_dirty(&self) -> Vec<u64> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One limit as a route uses it.
struct RouteLimit {
    limit: Arc<Limit>,
    /// waypost_ratelimited_total{route,limit}
    refused: Counter,
}

/// The limits of one generation, by route index.
pub struct Limits {
    limits: Vec<Arc<Limit>>,
    routes: Vec<(Arc<str>, Vec<RouteLimit>)>,
    trusted: Arc<TrustedProxies>,
    redis: Option<Arc<Redis>>,
}

/// A refused request: what the 429 says.
pub struct Denied {
    limit: Arc<Limit>,
    retry: u64,
    reset: u64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

impl Denied {
    pub fn limit_name(&self) -> &Arc<str> {
        &self.limit.name
    }

    /// 429 with `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields
    /// (draft-ietf-httpapi-ratelimit-headers: `"name";q=…;w=…` and `"name";r=0;t=…`).
    pub fn response(&self) -> Response<ProxyBody> {
        let retry = ceil_secs(self.retry).max(1);
        let reset = ceil_secs(self.reset).max(retry);
        let mut resp = Response::new(ProxyBody::text("429 too many requests, retry later\n"));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
        h.insert(RATELIMIT_POLICY.clone(), self.limit.policy_value.clone());
        let state = format!("\"{}\";r=0;t={reset}", self.limit.name);
        if let Ok(v) = HeaderValue::from_str(&state) {
            h.insert(RATELIMIT.clone(), v);
        }
        h.insert(http::header::VIA, crate::headers::VIA_VALUE);
        resp
    }
}

impl Limits {
    /// The limits of `config`; a limit whose settings did not change keeps its table (and its
    /// counts) from `previous`, and the Redis link is kept while `[ratelimit]` is unchanged.
    pub fn build(config: &Config, previous: Option<&Limits>, session: &SessionKey) -> Limits {
        let rl = &config.ratelimit;
        let redis = rl
            .redis
            .as_ref()
            .map(|_| match previous.and_then(|p| p.redis.as_ref()) {
                Some(r) if r.config() == rl => r.clone(),
                _ => Redis::start(rl.clone()),
            });
        let mut limits: Vec<Arc<Limit>> = Vec::new();
        let routes = config
            .routes
            .iter()
            .map(|rc| {
                let list = rc
                    .limits
                    .iter()
                    .map(|lc| {
                        let limit = match limits.iter().find(|l| l.cfg.name == lc.name) {
                            Some(l) => l.clone(),
                            None => {
                                let same = |l: &&Arc<Limit>| {
                                    l.cfg == *lc
                                        && match (&l.redis, &redis) {
                                            (None, None) => true,
                                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                                            _ => false,
                                        }
                                };
                                let l = match previous.and_then(|p| p.limits.iter().find(same)) {
                                    Some(l) => l.clone(),
                                    None => {
                                        let sip = session.derive_key(format!("ratelimit {}", lc.name).as_bytes());
                                        Arc::new(Limit::new(lc, sip, redis.clone()))
                                    }
                                };
                                if let Some(r) = &redis {
                                    r.register(&l);
                                }
                                limits.push(l.clone());
                                l
                            }
                        };
                        RouteLimit {
                            refused: metrics::ratelimited_counter(&rc.name, &lc.name),
                            limit,
                        }
                    })
                    .collect();
                (Arc::from(rc.name.as_str()), list)
            })
            .collect();
        now_ns(crate::clock::now());
        Limits {
            limits,
            routes,
            trusted: config.geo.trusted.clone(),
            redis,
        }
    }

    /// The request path's one call: every limit of route `route`, in order, for a request from
    /// `peer` (the socket or PROXY-protocol address) with `headers`, at `at`. The first limit
    /// that refuses ends the check (limits before it have counted the request).
    pub fn check(&self, route: usize, peer: IpAddr, headers: &HeaderMap, at: Instant) -> Result<(), Box<Denied>> {
        let Some((name, list)) = self.routes.get(route) else {
            return Ok(());
        };
        if list.is_empty() {
            return Ok(());
        }
        let client = if self.trusted.contains(peer) {
            client_address(
                peer,
                headers.get_all(&XFF).iter().map(|v| v.to_str().unwrap_or("?")),
                &self.trusted,
            )
        } else {
            peer
        };
        let now = now_ns(at);
        for rl in list {
            let Some(key) = rl.limit.spec.hash(client, headers, name) else {
                continue;
            };
            if let Verdict::Deny { retry, reset } = rl.limit.check_key(key, now) {
                rl.refused.increment(1);
                return Err(Box::new(Denied {
                    limit: rl.limit.clone(),
                    retry,
                    reset,
                }));
            }
        }
        Ok(())
    }

    pub fn limits(&self) -> &[Arc<Limit>] {
        &self.limits
    }

    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.redis.as_ref()
    }

    /// Scrape-time gauges: live keys per limit, the Redis link.
    pub fn refresh_gauges(&self) {
        let now = now_ns(crate::clock::now());
        for l in &self.limits {
            metrics::set_ratelimit_keys(&l.name, l.table.live_keys(now));
        }
        if let Some(r) = &self.redis {
            r.refresh_gauges();
        }
    }

    /// For /status.
    pub fn status(&self) -> serde_json::Value {
        let now = now_ns(crate::clock::now());
        let limits: Vec<_> = self
            .limits
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": &*l.name,
                    "rate": l.cfg.rate,
                    "per_seconds": l.cfg.per.as_secs_f64(),
                    "burst": l.cfg.burst,
                    "keys": l.table.live_keys(now),
                    "capacity": l.table.capacity(),
                    "memory_bytes": l.table.memory_bytes(),
                    "evictions": l.table.evictions(),
                    "shared": l.redis.is_some(),
                })
            })
            .collect();
        serde_json::json!({
            "limits": limits,
            "redis": self.redis.as_ref().map(|r| r.status()),
        })
    }
}
