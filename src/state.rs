//! `State`: one immutable generation of the running config, compiled for the request path. A
//! request loads one `Arc<State>` and keeps it to the end; a reload builds the next one from the
//! new config and the previous State, so backends keep their counters and idle connections.

use std::sync::Arc;

use crate::accesslog::AccessLog;
use crate::admin::metrics::{RouteMetrics, StickyMetrics};
use crate::cache::Cache;
use crate::cache::RouteCache;
use crate::config::{Config, GeoConfig, PathMatch, Problem, SplitConfig, StickyConfig};
pub use crate::config::{ListenerId, PoolId, RouteId};
use crate::listener::tls::TlsListener;
use crate::router::Router;
use crate::session::SessionKey;
use crate::upstream::dns::Resolved;
use crate::upstream::Pool;

pub struct Route {
    pub name: Arc<str>,
    pub pool: PoolId,
    /// Bytes of matched prefix removed before forwarding (0: none).
    pub strip: usize,
    pub metrics: RouteMetrics,
    pub sticky: Option<Sticky>,
    pub split: Option<Split>,
    /// Geo routes: the pools of `pools = [...]`, in listed order (empty otherwise).
    pub geo_pools: Vec<PoolId>,
    /// `[route.cache]`: settings and counters.
    pub cache: Option<RouteCache>,
}

/// The geo tables of a generation, by index.
pub struct Geo {
    pub cfg: GeoConfig,
    pub region_names: Vec<Arc<str>>,
    pub dc_names: Vec<Arc<str>>,
    /// Per region: its data center, then that one's failover list.
    pub order: Vec<Vec<usize>>,
    /// Per pool: its data center.
    pub pool_dc: Vec<Option<usize>>,
    pub default_region: Option<u16>,
    /// waypost_geo_requests_total, by [region + 1][datacenter + 1] (0: none).
    pub requests: Vec<Vec<metrics::Counter>>,
}

impl Geo {
    fn new(config: &Config, pools: &[Arc<Pool>]) -> Geo {
        let cfg = config.geo.clone();
        let region_names: Vec<Arc<str>> = cfg.regions.iter().map(|r| r.as_str().into()).collect();
        let dc_names: Vec<Arc<str>> = config.datacenters.iter().map(|d| d.name.as_str().into()).collect();
        let dc_index = |n: &str| config.datacenters.iter().position(|d| d.name == n);
        let order = cfg
            .regions
            .iter()
            .map(|r| {
                let Some(home) = config.datacenters.iter().position(|d| d.regions.contains(r)) else {
                    return Vec::new();
                };
                let mut v = vec![home];
                for f in &config.datacenters[home].failover {
                    if let Some(i) = dc_index(f) {
                        if !v.contains(&i) {
                            v.push(i);
                        }
                    }
                }
                v
            })
            .collect();
        let pool_dc = pools
            .iter()
            .map(|p| {
                config
                    .pools
                    .iter()
                    .find(|pc| *pc.name == *p.name)
                    .and_then(|pc| pc.datacenter.as_deref())
                    .and_then(dc_index)
            })
            .collect();
        let label = |v: Option<&Arc<str>>| v.map(|s| s.to_string()).unwrap_or_default();
        let requests = (0..=region_names.len())
            .map(|r| {
                (0..=dc_names.len())
                    .map(|d| {
                        crate::admin::metrics::geo_counter(
                            &label(r.checked_sub(1).and_then(|i| region_names.get(i))),
                            &label(d.checked_sub(1).and_then(|i| dc_names.get(i))),
                        )
                    })
                    .collect()
            })
            .collect();
        Geo {
            default_region: cfg.default_region.as_deref().and_then(|r| cfg.region_id(r)),
            cfg,
            region_names,
            dc_names,
            order,
            pool_dc,
            requests,
        }
    }
}

/// A database-bound route's split: pool indexes, settings and metric handles.
pub struct Split {
    pub primary: PoolId,
    pub replicas: PoolId,
    pub cfg: SplitConfig,
    pub to_primary: metrics::Counter,
    pub to_replica: metrics::Counter,
}

/// A route's session affinity, with its metric handles.
pub struct Sticky {
    pub cfg: StickyConfig,
    pub metrics: StickyMetrics,
}

pub struct State {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Vec<Route>,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<Arc<str>>,
    /// Per listener (same order as `listeners`): its TLS in this generation, if it has TLS.
    pub listener_tls: Vec<Option<Arc<TlsListener>>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Signs sticky and read-your-writes cookies.
    pub session: SessionKey,
    pub geo: Geo,
    /// The response store, when a route caches. Kept across reloads (emptied only when
    /// `[cache] max_size` changes or no route caches any more).
    pub cache: Option<Arc<Cache>>,
    /// `[[route.limit]]`: the limits by route; tables kept across reloads while unchanged.
    pub ratelimit: crate::ratelimit::Limits,
    /// `[route.mirror]`: the shadow pools by route.
    pub mirrors: crate::mirror::Mirrors,
}

impl State {
    /// Build generation `generation` from `config`, carrying over what `previous` had.
    pub fn build(
        config: Config,
        previous: Option<&State>,
        generation: u64,
        resolved: &Resolved,
    ) -> Result<State, Vec<Problem>> {
        let listeners: Vec<Arc<str>> = config.listeners.iter().map(|l| l.name.as_str().into()).collect();
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|pc| {
                let prev = previous.and_then(|p| p.pools.iter().find(|x| *x.name == *pc.name));
                Arc::new(Pool::new(pc, prev.map(|p| &**p), resolved))
            })
            .collect();
        let mut problems = Vec::new();
        // Validation made sure every pool a route names exists; a name that does not resolve
        // here is reported, never mapped to some other pool.
        let mut pool_id = |route: usize, name: &str| match pools.iter().position(|p| *p.name == *name) {
            Some(i) => PoolId::new(i),
            None => {
                problems.push(Problem {
                    path: format!("route[{route}]"),
                    line: 0,
                    message: format!("unknown pool {name:?}"),
                });
                PoolId::new(0)
            }
        };
        let routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| Route {
                name: rc.name.as_str().into(),
                pool: pool_id(i, &rc.pool),
                strip: match (&rc.path, rc.strip_prefix) {
                    (PathMatch::Prefix(p), true) => p.trim_end_matches('/').len(),
                    _ => 0,
                },
                metrics: RouteMetrics::new(&rc.name, &listeners),
                geo_pools: if rc.pools.len() > 1 {
                    rc.pools.iter().map(|n| pool_id(i, n)).collect()
                } else {
                    Vec::new()
                },
                split: rc.split.clone().map(|cfg| Split {
                    primary: pool_id(i, &cfg.primary),
                    replicas: pool_id(i, &cfg.replicas),
                    to_primary: crate::admin::metrics::split_counter(&rc.name, "primary"),
                    to_replica: crate::admin::metrics::split_counter(&rc.name, "replica"),
                    cfg,
                }),
                cache: rc.cache.clone().map(|cfg| RouteCache::new(&rc.name, cfg)),
                sticky: rc.sticky.clone().map(|cfg| Sticky {
                    cfg,
                    metrics: StickyMetrics::new(&rc.name),
                }),
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        // The configured key; else the previous generation's random one (cookies survive a
        // reload); else a new random one, with a warning at the first generation.
        let session = match (&config.session.key, previous) {
            (Some(k), _) => k.clone(),
            (None, Some(p)) if p.config.session.key.is_none() => p.session.clone(),
            (None, prev) => {
                if prev.is_none() && config.routes.iter().any(|r| r.sticky.is_some()) {
                    tracing::warn!(
                        "no [session] secret_file: cookies are signed with a random key, valid for this process only"
                    );
                }
                SessionKey::random()
            }
        };
        let access_log =
            AccessLog::reuse_or_open(&config.log, previous.and_then(|p| p.access_log.as_ref())).map_err(|e| {
                vec![Problem {
                    path: "log.access".into(),
                    line: 0,
                    message: e,
                }]
            })?;
        let geo = Geo::new(&config, &pools);
        let ratelimit = crate::ratelimit::Limits::build(&config, previous.map(|p| &p.ratelimit), &session);
        let mirrors = crate::mirror::Mirrors::build(&config, &pools, previous.map(|p| &p.mirrors));
        let cache = if config.routes.iter().any(|r| r.cache.is_some()) {
            match previous.and_then(|p| p.cache.as_ref()) {
                Some(c) if c.max_size == config.cache.max_size => {
                    c.set_max_object_size(config.cache.max_object_size);
                    Some(c.clone())
                }
                prev => {
                    if prev.is_some() {
                        tracing::info!("[cache] max_size changed: starting with an empty cache");
                    }
                    Some(Arc::new(Cache::new(&config.cache)))
                }
            }
        } else {
            None
        };
        let listener_tls = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let tls = l.tls.as_ref()?;
                let prev = previous.and_then(|p| p.tls_for(&l.name));
                match TlsListener::build(&l.name, tls, prev.as_deref()) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) => {
                        problems.push(Problem {
                            path: format!("listener[{i}].tls"),
                            line: 0,
                            message: e,
                        });
                        None
                    }
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(State {
            listener_tls,
            generation,
            router: Router::new(&config.routes),
            routes,
            pools,
            listeners,
            access_log,
            session,
            geo,
            cache,
            ratelimit,
            mirrors,
            config: Arc::new(config),
        })
    }

    /// The TLS of the listener named `name` in this generation, if it has TLS.
    pub fn tls_for(&self, name: &str) -> Option<Arc<TlsListener>> {
        self.listener_id(name)
            .and_then(|id| self.listener_tls[id.index()].clone())
    }

    /// The listener named `name` as this generation configures it.
    pub fn listener_config(&self, name: &str) -> Option<&crate::config::ListenerConfig> {
        self.config.listeners.iter().find(|l| l.name == name)
    }

    /// The listener named `name` in this generation (None: a reload removed it, and this is one
    /// of its connections still open).
    pub fn listener_id(&self, name: &str) -> Option<ListenerId> {
        self.listeners.iter().position(|l| &**l == name).map(ListenerId::new)
    }

    pub fn listener_name(&self, id: Option<ListenerId>) -> &str {
        id.map(|l| &*self.listeners[l.index()]).unwrap_or("")
    }

    pub fn pool(&self, id: PoolId) -> &Arc<Pool> {
        &self.pools[id.index()]
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.index()]
    }
}

#[cfg(test)]
mod tests;
