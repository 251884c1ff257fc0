//! Benchmarks of the two pure decisions on the request path: which route serves a request
//! (10, 1k and 10k routes) and which backend of a pool takes it (2, 10 and 100 backends).
//!
//! Run: `cargo bench --bench routing` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick look). Compare numbers within one run on one machine; they are not absolute claims.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use waypost::balancer::Balancer;
use waypost::config::{Balance, HostMatch, PathMatch, RouteConfig};
use waypost::router::Router;

const ROUTE_COUNTS: [usize; 3] = [10, 1_000, 10_000];
const BACKEND_COUNTS: [usize; 3] = [2, 10, 100];

fn route(name: String, hosts: Vec<HostMatch>, path: PathMatch, methods: Option<Vec<Method>>) -> RouteConfig {
    RouteConfig {
        name,
        hosts,
        path,
        methods,
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

/// Number of distinct host names in a table of `n` routes: about twenty routes per host, as in a
/// config that serves many sites with a handful of paths each.
fn host_count(n: usize) -> usize {
    (n / 20).max(1)
}

/// A table of `n` routes, a quarter of each kind:
/// - `i % 4 == 0`: exact host `site{h}.example.com`, `path_prefix = "/p{i}/"`;
/// - `i % 4 == 1`: wildcard host `*.t{h}.example.net`, `path_prefix = "/p{i}/"`;
/// - `i % 4 == 2`: exact host `site{h}.example.com`, exact `path = "/p{i}/exact"`, GET and HEAD only;
/// - `i % 4 == 3`: any host, `path_prefix = "/any/{i}/"`;
///
/// with `h = i % host_count(n)`, and a last catch-all route `/` for any host.
fn table(n: usize) -> Vec<RouteConfig> {
    let hosts = host_count(n);
    let mut routes: Vec<RouteConfig> = (0..n)
        .map(|i| {
            let h = i % hosts;
            let name = format!("r{i}");
            match i % 4 {
                0 => route(
                    name,
                    vec![HostMatch::Exact(format!("site{h}.example.com"))],
                    PathMatch::Prefix(format!("/p{i}/")),
                    None,
                ),
                1 => route(
                    name,
                    vec![HostMatch::Wildcard(format!(".t{h}.example.net"))],
                    PathMatch::Prefix(format!("/p{i}/")),
                    None,
                ),
                2 => route(
                    name,
                    vec![HostMatch::Exact(format!("site{h}.example.com"))],
                    PathMatch::Exact(format!("/p{i}/exact")),
                    Some(vec![Method::GET, Method::HEAD]),
                ),
                _ => route(name, vec![], PathMatch::Prefix(format!("/any/{i}/")), None),
            }
        })
        .collect();
    routes.push(route("catch-all".into(), vec![], PathMatch::Prefix("/".into()), None));
    routes
}

/// One request to look up: host, path, and the route it must reach (`None`: a 404).
struct Probe {
    what: &'static str,
    host: String,
    path: String,
    expect: Option<String>,
}

/// Requests aimed at routes in the middle of the table, one per kind, plus a miss: a known exact
/// host with a path none of its routes has (no fall-through to the any-host group: a 404, after
/// probing every prefix length of that host's group).
fn probes(n: usize) -> Vec<Probe> {
    let hosts = host_count(n);
    // The route of kind k nearest the middle of the table.
    let pick = |kind: usize| (n / 2) / 4 * 4 + kind;
    let (e, w, x, a) = (pick(0), pick(1), pick(2), pick(3));
    vec![
        Probe {
            what: "exact_host_prefix",
            host: format!("site{}.example.com", e % hosts),
            path: format!("/p{e}/static/app.css"),
            expect: Some(format!("r{e}")),
        },
        Probe {
            what: "wildcard_host_prefix",
            host: format!("shop.t{}.example.net:8080", w % hosts),
            path: format!("/p{w}/cart/42"),
            expect: Some(format!("r{w}")),
        },
        Probe {
            what: "exact_path",
            host: format!("site{}.example.com", x % hosts),
            path: format!("/p{x}/exact"),
            expect: Some(format!("r{x}")),
        },
        Probe {
            what: "any_host_prefix",
            host: "unknown.example.org".into(),
            path: format!("/any/{a}/index.html"),
            expect: Some(format!("r{a}")),
        },
        Probe {
            what: "miss",
            host: format!("site{}.example.com", e % hosts),
            path: "/nothing/here".into(),
            expect: None,
        },
    ]
}

fn bench_routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in ROUTE_COUNTS {
        let routes = table(n);
        let router = Router::new(&routes);
        for p in probes(n) {
            // The bench measures the lookup it claims to: check the answer first.
            let got = router
                .route(Some(&p.host), &p.path, &Method::GET)
                .map(|i| routes[i].name.clone());
            assert_eq!(got, p.expect, "{} with {n} routes", p.what);
            group.bench_with_input(BenchmarkId::new(p.what, n), &p, |b, p| {
                b.iter(|| {
                    router.route(
                        black_box(Some(p.host.as_str())),
                        black_box(p.path.as_str()),
                        black_box(&Method::GET),
                    )
                })
            });
        }
    }
    group.finish();
}

fn bench_picking(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in BACKEND_COUNTS {
        // Uneven weights (1, 2, 3, 1, 2, 3, ...) and in-flight loads, all backends usable.
        let weights: Vec<u32> = (0..n).map(|i| (i % 3) as u32 + 1).collect();
        let loads: Vec<usize> = (0..n).map(|i| (i * 7) % 11).collect();
        for policy in [Balance::RoundRobin, Balance::LeastRequest, Balance::Random] {
            let balancer = Balancer::new(policy, &weights);
            assert!(balancer.pick(|_| true, |i| loads[i]).is_some());
            group.bench_with_input(BenchmarkId::new(policy.as_str(), n), &n, |b, _| {
                b.iter(|| balancer.pick(|_| true, |i| black_box(loads[i])))
            });
        }
        // Round robin with every other backend unusable (down or already tried): the cost of
        // walking past members that cannot take the request.
        let balancer = Balancer::new(Balance::RoundRobin, &weights);
        group.bench_with_input(BenchmarkId::new("round_robin_half_down", n), &n, |b, _| {
            b.iter(|| balancer.pick(|i| black_box(i % 2 == 0), |i| loads[i]))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_routing, bench_picking);
criterion_main!(benches);
