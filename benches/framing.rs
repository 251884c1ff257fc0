//! Benchmarks of the framing scanner, the work every HTTP/1 request head pays for before hyper
//! parses it: a browser-like head read at once, the same head split in small reads, a
//! pipelined burst of short requests, and the size lines of a chunked upload.
//!
//! Run: `cargo bench --bench framing` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick look). Compare numbers within one run on one machine; they are not absolute claims.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use waypost::listener::framing::Scanner;

const BROWSER: &[u8] = b"GET /articles/2026/11/how-proxies-work?ref=home HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://www.example.com/\r\n\
Cookie: session=abcdef0123456789abcdef0123456789; theme=dark; tracking=xyz\r\n\
Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Cache-Control: max-age=0\r\n\
\r\n";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(BROWSER.len() as u64));
    g.bench_function("browser head, one read", |b| {
        b.iter(|| {
            let mut s = Scanner::new(64 << 10);
            s.feed(black_box(BROWSER)).unwrap();
            black_box(s.heads())
        })
    });
    g.bench_function("browser head, 64-byte reads", |b| {
        b.iter(|| {
            let mut s = Scanner::new(64 << 10);
            for piece in black_box(BROWSER).chunks(64) {
                s.feed(piece).unwrap();
            }
            black_box(s.heads())
        })
    });
    let short = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n".repeat(16);
    g.throughput(Throughput::Bytes(short.len() as u64));
    g.bench_function("16 pipelined short requests", |b| {
        b.iter(|| {
            let mut s = Scanner::new(64 << 10);
            s.feed(black_box(&short)).unwrap();
            black_box(s.heads())
        })
    });
    let mut upload = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..16 {
        upload.extend_from_slice(b"4000\r\n");
        upload.extend_from_slice(&[b'x'; 0x4000]);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    g.throughput(Throughput::Bytes(upload.len() as u64));
    g.bench_function("256 KiB chunked upload in 16 KiB chunks", |b| {
        b.iter(|| {
            let mut s = Scanner::new(64 << 10);
            for piece in black_box(&upload).chunks(16 << 10) {
                s.feed(piece).unwrap();
            }
            black_box(s.heads())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
