//! Benchmarks of the cache's request path: the lookup phase answering a hit (the whole of what a
//! cache hit costs in waypost besides HTTP I/O), with and without Vary, a conditional request
//! answered 304, and a miss deciding to go upstream; on a store of 10k URLs.
//!
//! Run: `cargo bench --bench cache` (add `-- --warm-up-time 1 --measurement-time 2` for a quick
//! look). Compare numbers within one run on one machine; they are not absolute claims.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode};
use waypost::cache::rules::{vary_key, EntryFacts};
use waypost::cache::store::Object;
use waypost::cache::Cache;
use waypost::cache::{lookup, primary_key, Plan, RouteCache};
use waypost::config::{CacheConfig, RouteCacheConfig};

const URLS: usize = 10_000;

fn stored(cache: &Cache, host: &HeaderValue, path: &str, vary: Option<(&str, &str)>) {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    h.insert(header::ETAG, HeaderValue::from_static("\"abc123\""));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("48"));
    let mut req = HeaderMap::new();
    if let Some((name, value)) = vary {
        h.insert(header::VARY, HeaderValue::from_str(name).unwrap());
        req.insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let now = SystemTime::now();
    let facts = EntryFacts::new(&h, Duration::from_secs(3600), now, now);
    let vkey = vary_key(&h, &req).unwrap();
    let obj = Object::new(
        StatusCode::OK,
        h,
        Bytes::from_static(b"static asset body, about fifty bytes long....\n"),
        facts,
        vkey,
        Vec::new(),
        Duration::from_secs(7200),
    );
    cache.store(primary_key(Some(host), path).into_boxed_slice(), obj);
}

fn bench(c: &mut Criterion) {
    let cache = Arc::new(Cache::new(&CacheConfig::default()));
    let host = HeaderValue::from_static("static.example.com");
    for i in 0..URLS {
        stored(&cache, &host, &format!("/assets/{i}.css"), None);
    }
    stored(&cache, &host, "/vary.css", Some(("accept-encoding", "gzip, br")));
    let rc = RouteCache::new(
        "bench",
        RouteCacheConfig {
            default_ttl: Duration::ZERO,
            version_param: None,
            versioned_ttl: Duration::from_secs(86400),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        },
    );
    let request = |path: &str, extra: &[(&str, &str)]| {
        let mut b = Request::get(path)
            .header("host", "static.example.com")
            .header("user-agent", "wrk")
            .header("accept", "*/*");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    };
    let mut run = |name: &str, path: &str, extra: &[(&str, &str)], want: StatusCode| {
        let parts = request(path, extra);
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut p = parts.clone();
                let plan = lookup(
                    Some(&cache),
                    Some(&rc),
                    &mut p,
                    Some(&host),
                    false,
                    Duration::from_secs(1),
                )
                .now_or_never()
                .expect("a hit does not wait");
                match plan {
                    Plan::Serve(resp, _) => {
                        assert_eq!(resp.status(), want);
                        black_box(resp)
                    }
                    _ => panic!("not a hit"),
                };
            })
        });
    };
    run("cache hit", "/assets/4242.css", &[], StatusCode::OK);
    run(
        "cache hit with Vary",
        "/vary.css",
        &[("accept-encoding", "br, gzip")],
        StatusCode::OK,
    );
    run(
        "cache conditional hit (304)",
        "/assets/7.css",
        &[("if-none-match", "\"abc123\"")],
        StatusCode::NOT_MODIFIED,
    );
    let parts = request("/not/stored.css", &[]);
    c.bench_function("cache miss decision", |b| {
        b.iter(|| {
            let mut p = parts.clone();
            let plan = lookup(
                Some(&cache),
                Some(&rc),
                &mut p,
                Some(&host),
                false,
                Duration::from_secs(1),
            )
            .now_or_never()
            .expect("a miss leads at once");
            // Dropping the plan ends its flight, so every iteration leads a new one.
            black_box(matches!(plan, Plan::Go(_)))
        })
    });
    // A parts clone is part of every iteration above; this is its cost alone.
    let parts = request("/assets/1.css", &[]);
    c.bench_function("request parts clone (baseline)", |b| {
        b.iter(|| black_box(parts.clone()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
