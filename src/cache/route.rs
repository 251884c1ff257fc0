//! A cached route's settings and counters, and the result labels of its requests.

use metrics::Counter;

use crate::cache::rules::StaleDefaults;
use crate::config::RouteCacheConfig;

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
