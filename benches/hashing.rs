//! Benchmarks of consistent hashing and session cookies, the pure work that sticky sessions,
//! `consistent_hash` pools and read-your-writes add to a request: hashing a key, picking a
//! backend (10, 100 and 1000 backends; plain, with one backend down, and with a bounded-load
//! factor), building a table on reload, and sealing and opening a cookie.
//!
//! Run: `cargo bench --bench hashing` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick look). Compare numbers within one run on one machine; they are not absolute claims.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypost::balancer::hash::{backend_id, hash_key, HashTable};
use waypost::session::{cookie_value, SessionKey};

const BACKEND_COUNTS: [usize; 3] = [10, 100, 1_000];
const NOW: u64 = 1_700_000_000;

fn members(n: usize) -> Vec<(u64, u32)> {
    (0..n)
        .map(|i| (backend_id("shards", &format!("10.0.{}.{}:8080", i / 250, i % 250)), 1))
        .collect()
}

/// 1024 pre-hashed keys, cycled so that every iteration looks up a different ring position.
fn keys() -> Vec<u64> {
    (0..1024).map(|k| hash_key(format!("user-{k}").as_bytes())).collect()
}

fn bench_hash_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_key");
    for len in [8usize, 32, 128] {
        let key = vec![b'k'; len];
        g.bench_with_input(BenchmarkId::from_parameter(len), &key, |b, key| {
            b.iter(|| hash_key(black_box(key)))
        });
    }
    g.finish();
}

fn bench_pick(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("hash_pick");
    for n in BACKEND_COUNTS {
        let table = HashTable::new(&members(n));
        // Loads as a busy pool would have them, read through a closure like Pool's atomics.
        let load: Vec<usize> = (0..n).map(|i| 4 + i % 5).collect();
        let mut k = 0usize;
        let mut next_key = || {
            k = (k + 1) & 1023;
            keys[k]
        };
        g.bench_function(BenchmarkId::new("plain", n), |b| {
            b.iter(|| table.pick(black_box(next_key()), |_| true, |i| load[i], None))
        });
        // Member 0 down: a tenth to a thousandth of the keys walk on to the next member.
        g.bench_function(BenchmarkId::new("one_down", n), |b| {
            b.iter(|| table.pick(black_box(next_key()), |i| i != 0, |i| load[i], None))
        });
        // Bounded load summing the loads itself: O(members) per pick.
        g.bench_function(BenchmarkId::new("bounded_1.25", n), |b| {
            b.iter(|| table.pick(black_box(next_key()), |_| true, |i| load[i], Some(1.25)))
        });
        // Bounded load with the pool's running total passed in: what a pool that keeps one pays.
        let summary = table.load_summary(|_| true, |i| load[i]);
        g.bench_function(BenchmarkId::new("bounded_1.25_summary", n), |b| {
            b.iter(|| table.pick_bounded(black_box(next_key()), |_| true, |i| load[i], 1.25, summary))
        });
    }
    g.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_build");
    g.sample_size(10);
    for n in BACKEND_COUNTS {
        let m = members(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &m, |b, m| {
            b.iter(|| HashTable::new(black_box(m)))
        });
    }
    g.finish();
}

fn bench_cookie(c: &mut Criterion) {
    let key = SessionKey::from_secret(&[7u8; 32]).expect("32 bytes");
    let sticky = key.seal_sticky(backend_id("shards", "10.0.0.1:8080"), NOW + 3600);
    let header = format!("theme=dark; session=0123456789abcdef; waypost_affinity={sticky}; lang=en");
    let mut g = c.benchmark_group("cookie");
    g.bench_function("seal_sticky", |b| {
        b.iter(|| key.seal_sticky(black_box(42), black_box(NOW)))
    });
    g.bench_function("open_sticky", |b| b.iter(|| key.open_sticky(black_box(&sticky), NOW)));
    g.bench_function("open_tampered", |b| {
        let mut bad = sticky.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        b.iter(|| key.open_sticky(black_box(&bad), NOW))
    });
    g.bench_function("parse_header", |b| {
        b.iter(|| cookie_value(black_box(&header), "waypost_affinity"))
    });
    g.finish();
}

criterion_group!(benches, bench_hash_key, bench_pick, bench_build, bench_cookie);
criterion_main!(benches);
