//! `[cache]` (the process-wide store) and `[route.cache]` (caching on one route).

use std::time::Duration;

use super::reader::Obj;

/// `[cache]`: one store shared by every cached route, kept across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes of stored responses, headers and bodies together.
    pub max_size: u64,
    /// Larger responses stream through without being stored (or buffered).
    pub max_object_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: 256 << 20,
            max_object_size: 8 << 20,
        }
    }
}

/// `[route.cache]`: its presence turns caching on for the route's GET and HEAD requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCacheConfig {
    /// Freshness for cacheable-by-default responses with none of their own (0: RFC 9111 alone).
    pub default_ttl: Duration,
    /// The query parameter that names a version ("/app.js?v=abc").
    pub version_param: Option<String>,
    pub versioned_ttl: Duration,
    /// Used when the origin's response gives none.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// The largest object moka can weigh (its weights are u32) with room for the headers.
const MAX_OBJECT: u64 = 1 << 30;

pub(super) fn read_cache(o: Option<Obj>) -> Option<CacheConfig> {
    let mut c = CacheConfig::default();
    let Some(o) = o else { return Some(c) };
    if let Some(v) = o.size("max_size") {
        if v < 1 << 20 {
            o.problem("max_size", "must be at least 1MiB");
        }
        c.max_size = v;
    }
    if let Some(v) = o.size("max_object_size") {
        if v == 0 || v > MAX_OBJECT {
            o.problem("max_object_size", "must be more than 0 and at most 1GiB");
        }
        c.max_object_size = v;
    }
    if c.max_object_size > c.max_size {
        o.problem("max_object_size", "must not be larger than max_size");
    }
    o.finish();
    Some(c)
}

pub(super) fn read_route_cache(o: &Obj) -> Option<RouteCacheConfig> {
    let c = o.obj("cache")?;
    let default_ttl = c.duration("default_ttl").unwrap_or_default();
    let version_param = match c.str("version_param") {
        Some(p) if p.is_empty() => None,
        Some(p) => {
            let ok = p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
            if !ok {
                c.problem(
                    "version_param",
                    format!("{p:?} is not a plain query parameter name (letters, digits, -_.~)"),
                );
            }
            Some(p)
        }
        None => None,
    };
    let versioned_ttl = c.duration("versioned_ttl").unwrap_or(Duration::from_secs(365 * 86400));
    if versioned_ttl.is_zero() {
        c.problem("versioned_ttl", "must be more than 0");
    }
    let stale_while_revalidate = c.duration("stale_while_revalidate").unwrap_or_default();
    let stale_if_error = c.duration("stale_if_error").unwrap_or_default();
    c.finish();
    Some(RouteCacheConfig {
        default_ttl,
        version_param,
        versioned_ttl,
        stale_while_revalidate,
        stale_if_error,
    })
}
