//! `[[route]]`: host and path matching, methods, prefix stripping and the target.

use std::collections::HashMap;
use std::net::IpAddr;

use http::Method;

use super::reader::{At, Ctx, Obj};
use super::{check_name, positive_duration, HostMatch, PathMatch, RouteConfig, SplitConfig, StickyConfig};

pub(super) struct RouteAt {
    pub(super) name: At,
    /// Where each `[[route.limit]]` is, for the shared-name checks.
    pub(super) limits: Vec<At>,
}

pub(super) fn read_route(o: &Obj) -> Option<(RouteConfig, RouteAt)> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let mut hosts = Vec::new();
    for (h, at) in o.str_or_list("host").unwrap_or_default() {
        match parse_host(&h) {
            Ok(m) => {
                if hosts.contains(&m) {
                    o.ctx().problem(at.path, at.line, format!("host {h:?} is listed twice"));
                } else {
                    hosts.push(m);
                }
            }
            Err(e) => o.ctx().problem(at.path, at.line, e),
        }
    }
    if o.is_array("host") && o.str_or_list_len("host") == Some(0) {
        o.problem(
            "host",
            "an empty host list matches nothing; omit `host` to match any host",
        );
    }
    let prefix = o.str("path_prefix");
    let exact = o.str("path");
    let path = match (prefix, exact) {
        (Some(_), Some(_)) => {
            o.problem("path", "use either `path` or `path_prefix`, not both");
            None
        }
        (Some(p), None) => check_path(o, "path_prefix", &p).then_some(PathMatch::Prefix(p)),
        (None, Some(p)) => check_path(o, "path", &p).then_some(PathMatch::Exact(p)),
        (None, None) => Some(PathMatch::Prefix("/".into())),
    };
    let methods = o.str_list("methods").map(|list| {
        if list.is_empty() {
            o.problem(
                "methods",
                "an empty method list matches nothing; omit `methods` to match any",
            );
        }
        list.into_iter()
            .filter_map(|(m, at)| {
                let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if valid => Some(method),
                    _ => {
                        o.ctx().problem(
                            at.path,
                            at.line,
                            format!("invalid method {m:?}: methods are upper-case tokens like \"GET\""),
                        );
                        None
                    }
                }
            })
            .collect()
    });
    let strip_prefix = o.bool("strip_prefix").unwrap_or(false);
    if strip_prefix && !matches!(path, Some(PathMatch::Prefix(_))) && o.has("path") {
        o.problem(
            "strip_prefix",
            "needs `path_prefix` (there is no prefix to strip from an exact `path`)",
        );
    }
    let pool = o.str("pool");
    let pools: Vec<String> = o
        .str_list("pools")
        .unwrap_or_default()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    if o.has("pools") && pools.is_empty() {
        o.problem("pools", "an empty pool list sends nowhere");
    }
    if !pools.is_empty() && (pool.is_some() || o.has("split")) {
        o.problem("pools", "a route sends to one of `pool`, `pools` or `[route.split]`");
    }
    let split = o.obj("split").and_then(read_split);
    if split.is_some() && pool.is_some() {
        o.problem("split", "a route sends to one of `pool` or `[route.split]`, not both");
    }
    let sticky = o.obj("sticky").map(|st| {
        let cookie = st.str("cookie").unwrap_or_else(|| "waypost_affinity".into());
        let token = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&cookie) {
            st.problem(
                "cookie",
                format!("invalid cookie name {cookie:?}: use letters, digits and -_.!#$%&'*+^`|~"),
            );
        }
        let max_age = positive_duration(&st, "max_age", std::time::Duration::from_secs(3600));
        let strict = st.bool("strict").unwrap_or(false);
        st.finish();
        StickyConfig {
            cookie,
            max_age,
            strict,
        }
    });
    let cache = super::cache::read_route_cache(o);
    let (limits, limits_at) = super::policy::read_route_limits(o);
    let mirror = super::policy::read_route_mirror(o);
    if pool.is_none() && !o.has("pools") && !o.has("split") {
        o.problem_here("missing required key `pool` (the pool this route sends to)");
    }
    Some((
        RouteConfig {
            name: name?,
            hosts,
            path: path?,
            methods,
            strip_prefix,
            pool: pool
                .or_else(|| split.as_ref().map(|s| s.primary.clone()))
                .or_else(|| pools.first().cloned())
                .unwrap_or_default(),
            pools,
            sticky,
            split,
            cache,
            limits,
            mirror,
        },
        RouteAt {
            name: o.at_key("name"),
            limits: limits_at,
        },
    ))
}

/// `[route.split]`: the primary and replicas pools and the rules between them.
fn read_split(sp: Obj) -> Option<SplitConfig> {
    let primary = sp.req_str("primary");
    let replicas = sp.req_str("replicas");
    let read_methods = match sp.str_list("read_methods") {
        Some(list) => list
            .into_iter()
            .filter_map(|(m, at)| match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => Some(method),
                _ => {
                    sp.ctx().problem(at.path, at.line, format!("invalid method {m:?}"));
                    None
                }
            })
            .collect(),
        None => vec![Method::GET, Method::HEAD, Method::OPTIONS],
    };
    let read_your_writes = sp
        .duration("read_your_writes")
        .unwrap_or(std::time::Duration::from_secs(5));
    let max_replica_lag = sp
        .duration("max_replica_lag")
        .unwrap_or(std::time::Duration::from_secs(2));
    let force_primary_header = match sp.str("force_primary_header") {
        Some(v) if v.is_empty() => None,
        Some(v) => match http::HeaderName::from_bytes(v.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                sp.problem("force_primary_header", format!("{v:?} is not a valid header name"));
                None
            }
        },
        None => Some(http::HeaderName::from_static("x-read-primary")),
    };
    sp.finish();
    Some(SplitConfig {
        primary: primary?,
        replicas: replicas?,
        read_methods,
        read_your_writes,
        max_replica_lag,
        force_primary_header,
    })
}

fn check_path(o: &Obj, key: &'static str, p: &str) -> bool {
    if !p.starts_with('/') {
        o.problem(key, format!("{p:?} must start with '/'"));
        return false;
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        o.problem(
            key,
            format!("{p:?} must be a plain path (no query, fragment, spaces or control characters)"),
        );
        return false;
    }
    true
}

fn parse_host(h: &str) -> Result<HostMatch, String> {
    let lower = h.to_ascii_lowercase();
    // IPv6 literals match the bracketed form requests carry in Host: "[::1]".
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    if let Ok(IpAddr::V6(v6)) = bare.parse::<IpAddr>() {
        return Ok(HostMatch::Exact(format!("[{v6}]")));
    }
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    if let Some(rest) = lower.strip_prefix("*.") {
        if valid_label(rest) {
            return Ok(HostMatch::Wildcard(format!(".{rest}")));
        }
    } else if valid_label(&lower) || lower.parse::<IpAddr>().is_ok() {
        return Ok(HostMatch::Exact(lower));
    }
    Err(format!(
        "invalid host {h:?}: expected a name like \"example.com\" or a leading wildcard like \"*.example.com\""
    ))
}

/// Two routes with the same host, the same path and overlapping methods: the second could never
/// be chosen, which is always a mistake worth reporting.
pub(super) fn check_shadowed_routes(ctx: &Ctx, routes: &[(RouteConfig, RouteAt)]) {
    let any_host = [HostMatch::Exact(String::new())];
    type Seen<'a> = HashMap<(&'a HostMatch, &'a PathMatch), Vec<(usize, Option<&'a Vec<Method>>)>>;
    let mut seen: Seen = HashMap::new();
    for (i, (r, at)) in routes.iter().enumerate() {
        let hosts: &[HostMatch] = if r.hosts.is_empty() { &any_host } else { &r.hosts };
        for h in hosts {
            let entry = seen.entry((h, &r.path)).or_default();
            for (j, m) in entry.iter() {
                let overlap = match (m, &r.methods) {
                    (None, _) | (_, None) => true,
                    (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
                };
                if overlap {
                    ctx.problem(
                        &at.name.path,
                        at.name.line,
                        format!(
                            "route {:?} can never match: route {:?} has the same host, path and methods",
                            r.name, routes[*j].0.name
                        ),
                    );
                }
            }
            entry.push((i, r.methods.as_ref()));
        }
    }
}
