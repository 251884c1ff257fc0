//! Benchmarks of the rate-limit check on the request path, under the limit: the key hash and
//! the GCRA step on the bounded table, for one hot key and for 10k clients cycled through (the
//! table's buckets then miss the CPU caches as they would under real traffic), with and
//! without reading the clock (the request path passes the time it already took at the start
//! of the request). And the table step alone.
//!
//! Run: `cargo bench --bench ratelimit` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick look). Compare numbers within one run on one machine; they are not absolute claims.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use waypost::clock::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use waypost::ratelimit::table::{Params, Table};
use waypost::ratelimit::Limits;
use waypost::session::SessionKey;

/// A limit no bench run can exhaust: a million per second, a burst of a billion.
fn limits(key: &str) -> Limits {
    let text = format!(
        r#"
[[listener]]
name = "http"
bind = "127.0.0.1:0"
[[pool]]
name = "web"
backends = [{{ address = "127.0.0.1:9001" }}]
[[route]]
name = "all"
pool = "web"
[[route.limit]]
name = "l"
rate = 1000000
per = "1s"
burst = 1000000000
key = {key}
max_keys = 100000
"#
    );
    let config = waypost::config::parse(&text, None).expect("bench config");
    Limits::build(&config, None, &SessionKey::random())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let headers = HeaderMap::new();
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    let l = limits("\"client_ip\"");
    let at = Instant::now();
    g.bench_function("check/one client, time given", |b| {
        b.iter(|| black_box(l.check(0, black_box(ip), &headers, at)).is_ok())
    });
    g.bench_function("check/one client, clock read", |b| {
        b.iter(|| black_box(l.check(0, black_box(ip), &headers, Instant::now())).is_ok())
    });
    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
        .collect();
    let mut i = 0;
    g.bench_function("check/10k clients, time given", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(l.check(0, clients[i], &headers, at)).is_ok()
        })
    });
    let mut h = HeaderMap::new();
    h.insert("x-api-key", "k-1234567890abcdef".parse().unwrap());
    let lh = limits("[\"header:x-api-key\", \"client_ip\"]");
    g.bench_function("check/header + client, time given", |b| {
        b.iter(|| black_box(lh.check(0, ip, &h, at)).is_ok())
    });

    let t = Table::new(100_000);
    let p = Params {
        step: 1_000,
        tolerance: 1_000_000_000_000,
    };
    g.bench_function("table step alone", |b| {
        b.iter(|| black_box(t.check(black_box(42), 1_000, p, false, |_| true)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
