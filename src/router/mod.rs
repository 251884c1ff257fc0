//! Host and path matching: a request's host picks one host group (exact, else the longest
//! wildcard, else the routes with no host); inside it the exact path wins, else the longest
//! prefix, narrowed by methods. Lookups are hash probes, never a scan over all routes.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

use crate::config::{HostMatch, PathMatch, RouteConfig};

/// The network tables live in `crate::net::cidr` (config builds them); routing reads them here.
pub use crate::net::cidr as geo;

#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    methods: Option<Box<[Method]>>,
}

impl Entry {
    fn allows(&self, m: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(ms) => ms.iter().any(|x| x == m),
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    exact: HashMap<Box<str>, Vec<Entry>>,
    prefix: HashMap<Box<str>, Vec<Entry>>,
    /// Distinct prefix lengths, longest first: a lookup probes `prefix` once per length.
    prefix_lens: Vec<usize>,
}

impl Group {
    fn add(&mut self, path: &PathMatch, e: Entry) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(e),
            PathMatch::Prefix(p) => {
                self.prefix.entry(p.as_str().into()).or_default().push(e);
                if !self.prefix_lens.contains(&p.len()) {
                    self.prefix_lens.push(p.len());
                    self.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
        }
    }

    fn find(&self, path: &str, method: &Method) -> Option<usize> {
        if !self.exact.is_empty() {
            if let Some(es) = self.exact.get(path) {
                if let Some(e) = es.iter().find(|e| e.allows(method)) {
                    return Some(e.route);
                }
            }
        }
        for &len in &self.prefix_lens {
            let Some(p) = path.get(..len) else { continue };
            if let Some(es) = self.prefix.get(p) {
                if let Some(e) = es.iter().find(|e| e.allows(method)) {
                    return Some(e.route);
                }
            }
        }
        None
    }
}

/// The compiled routing table of one generation.
#[derive(Debug, Default)]
pub struct Router {
    groups: Vec<Group>,
    exact_hosts: HashMap<Box<str>, usize>,
    /// Keyed by the suffix including its leading dot: `*.example.com` is `.example.com`.
    wildcard_hosts: HashMap<Box<str>, usize>,
    any_host: Option<usize>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut r = Router::default();
        for (i, rc) in routes.iter().enumerate() {
            let entry = Entry {
                route: i,
                methods: rc.methods.as_ref().map(|m| m.clone().into_boxed_slice()),
            };
            if rc.hosts.is_empty() {
                let g = r.group_for(None);
                r.groups[g].add(&rc.path, entry.clone());
            }
            for h in &rc.hosts {
                let g = r.group_for(Some(h));
                r.groups[g].add(&rc.path, entry.clone());
            }
        }
        r
    }

    fn group_for(&mut self, host: Option<&HostMatch>) -> usize {
        let next = self.groups.len();
        let idx = match host {
            None => *self.any_host.get_or_insert(next),
            Some(HostMatch::Exact(h)) => *self.exact_hosts.entry(h.as_str().into()).or_insert(next),
            Some(HostMatch::Wildcard(s)) => *self.wildcard_hosts.entry(s.as_str().into()).or_insert(next),
        };
        if idx == next {
            self.groups.push(Group::default());
        }
        idx
    }

    fn host_group(&self, host: &str) -> Option<usize> {
        if let Some(&g) = self.exact_hosts.get(host) {
            return Some(g);
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: ".b.example.com" before ".example.com".
            for (i, b) in host.bytes().enumerate() {
                if b == b'.' {
                    if let Some(&g) = self.wildcard_hosts.get(&host[i..]) {
                        return Some(g);
                    }
                }
            }
        }
        self.any_host
    }

    /// The index of the route for this request, if any. `host` may carry a port and any case.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        let host = host.map(normalize_host);
        let group = match host.as_deref() {
            Some(h) => self.host_group(h)?,
            None => self.any_host?,
        };
        self.groups[group].find(path, method)
    }
}

/// Lower-case, without port and trailing dot; allocates only when the host has upper case.
pub fn normalize_host(h: &str) -> Cow<'_, str> {
    let h = if h.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        }
    } else {
        match h.rfind(':') {
            Some(i) => &h[..i],
            None => h,
        }
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], path: PathMatch, methods: Option<&[&str]>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(s) => HostMatch::Wildcard(s.into()),
                    None => HostMatch::Exact(h.to_string()),
                })
                .collect(),
            path,
            methods: methods.map(|m| m.iter().map(|s| Method::from_bytes(s.as_bytes()).unwrap()).collect()),
            strip_prefix: false,
            pool: "p".into(),
            sticky: None,
            split: None,
            pools: vec![],
            cache: None,
            limits: Vec::new(),
            mirror: None,
        }
    }

    fn pre(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    fn name<'a>(routes: &'a [RouteConfig], r: &Router, host: Option<&str>, path: &str, m: Method) -> Option<&'a str> {
        r.route(host, path, &m).map(|i| routes[i].name.as_str())
    }

    #[test]
    fn exact_path_beats_longest_prefix_which_beats_shorter() {
        let routes = vec![
            route("root", &[], pre("/"), None),
            route("api", &[], pre("/api/"), None),
            route("api-v2", &[], pre("/api/v2/"), None),
            route("login", &[], PathMatch::Exact("/api/v2/login".into()), None),
        ];
        let r = Router::new(&routes);
        assert_eq!(name(&routes, &r, None, "/api/v2/login", Method::GET), Some("login"));
        assert_eq!(name(&routes, &r, None, "/api/v2/login/x", Method::GET), Some("api-v2"));
        assert_eq!(name(&routes, &r, None, "/api/v1/x", Method::GET), Some("api"));
        assert_eq!(name(&routes, &r, None, "/index.html", Method::GET), Some("root"));
    }

    #[test]
    fn exact_host_beats_wildcard_which_beats_any() {
        let routes = vec![
            route("any", &[], pre("/"), None),
            route("wild", &["*.example.com"], pre("/"), None),
            route("deep", &["*.eu.example.com"], pre("/"), None),
            route("www", &["www.example.com"], pre("/"), None),
        ];
        let r = Router::new(&routes);
        assert_eq!(
            name(&routes, &r, Some("www.example.com"), "/", Method::GET),
            Some("www")
        );
        assert_eq!(
            name(&routes, &r, Some("WWW.Example.COM:8080"), "/", Method::GET),
            Some("www")
        );
        assert_eq!(
            name(&routes, &r, Some("shop.example.com"), "/", Method::GET),
            Some("wild")
        );
        assert_eq!(
            name(&routes, &r, Some("a.eu.example.com"), "/", Method::GET),
            Some("deep")
        );
        // A wildcard does not match the bare domain.
        assert_eq!(name(&routes, &r, Some("example.com"), "/", Method::GET), Some("any"));
        assert_eq!(name(&routes, &r, Some("other.org"), "/", Method::GET), Some("any"));
        assert_eq!(name(&routes, &r, None, "/", Method::GET), Some("any"));
    }

    #[test]
    fn no_fall_through_to_a_less_specific_host_group() {
        let routes = vec![
            route("any", &[], pre("/"), None),
            route("shop", &["shop.example.com"], pre("/cart/"), None),
        ];
        let r = Router::new(&routes);
        assert_eq!(
            name(&routes, &r, Some("shop.example.com"), "/cart/1", Method::GET),
            Some("shop")
        );
        assert_eq!(name(&routes, &r, Some("shop.example.com"), "/other", Method::GET), None);
    }

    #[test]
    fn methods_narrow_a_route_and_fall_back_to_shorter_prefixes() {
        let routes = vec![
            route("root", &[], pre("/"), None),
            route("read", &[], pre("/api/"), Some(&["GET", "HEAD"])),
            route("write", &[], pre("/api/"), Some(&["POST"])),
        ];
        let r = Router::new(&routes);
        assert_eq!(name(&routes, &r, None, "/api/x", Method::GET), Some("read"));
        assert_eq!(name(&routes, &r, None, "/api/x", Method::POST), Some("write"));
        assert_eq!(name(&routes, &r, None, "/api/x", Method::DELETE), Some("root"));
    }

    #[test]
    fn no_match_is_none() {
        let routes = vec![route("api", &["api.example.com"], pre("/v1/"), None)];
        let r = Router::new(&routes);
        assert_eq!(name(&routes, &r, Some("api.example.com"), "/v2/", Method::GET), None);
        assert_eq!(name(&routes, &r, Some("x.example.com"), "/v1/", Method::GET), None);
        assert_eq!(name(&routes, &r, None, "/v1/", Method::GET), None);
    }

    #[test]
    fn ipv6_hosts_match_in_brackets() {
        let routes = vec![route("v6", &["[::1]"], pre("/"), None)];
        let r = Router::new(&routes);
        assert_eq!(name(&routes, &r, Some("[::1]:8080"), "/", Method::GET), Some("v6"));
        assert_eq!(name(&routes, &r, Some("[::1]"), "/", Method::GET), Some("v6"));
    }

    #[test]
    fn host_normalization_strips_port_and_dot_and_case() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert!(matches!(normalize_host("plain.org"), Cow::Borrowed(_)));
    }

    #[test]
    fn many_routes_resolve_without_scanning() {
        let mut routes: Vec<_> = (0..10_000)
            .map(|i| {
                route(
                    &format!("r{i}"),
                    &[&format!("h{}.example.com", i % 100)],
                    pre(&format!("/p{i}/")),
                    None,
                )
            })
            .collect();
        routes.push(route("fallback", &[], pre("/"), None));
        let r = Router::new(&routes);
        // A lookup is one host probe, then one probe per distinct prefix length in that host's
        // group: here 3 (/p42/, /p142/, /p1042/) for its 100 routes, whatever the route count.
        let g = &r.groups[r.exact_hosts["h42.example.com"]];
        assert_eq!(g.prefix.values().map(Vec::len).sum::<usize>(), 100);
        assert_eq!(g.prefix_lens, [7, 6, 5], "probes per lookup");
        assert_eq!(
            name(&routes, &r, Some("h42.example.com"), "/p4242/x", Method::GET),
            Some("r4242")
        );
        assert_eq!(
            name(&routes, &r, Some("nohost"), "/p4242/x", Method::GET),
            Some("fallback")
        );
    }
}
