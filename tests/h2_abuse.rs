//! HTTP/2 abuse over raw frames (h2c, prior knowledge): more streams than advertised, rapid
//! reset, CONTINUATION floods, oversized header lists, streams broken on purpose. Each time the
//! proxy refuses or ends the connection, and keeps serving everyone else.
mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::h2raw::{self, Conn};
use support::*;

fn config(backend: SocketAddr, server: &str) -> String {
    weighted_config(&[(backend, 1)], server, "access = \"off\"", "")
}

/// The proxy is still up and serves a normal request, HTTP/1.1 and h2.
async fn still_serves(p: &Proxy) {
    assert_eq!(get(p.addr(), "/after").await.status(), 200);
    let r = send_h2(
        p.addr(),
        Request::get(p.url("/after-h2")).body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_advertise_the_stream_and_header_limits() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(
        b.addr,
        "h2_max_concurrent_streams = 8\nmax_header_bytes = \"16KiB\"",
    ));
    let (_c, settings) = Conn::open(p.addr()).await;
    assert!(
        settings.contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 8)),
        "{settings:?}"
    );
    assert!(
        settings.contains(&(h2raw::SETTINGS_MAX_HEADER_LIST_SIZE, 16 * 1024)),
        "{settings:?}"
    );
    // The default: 256 streams, 64 KiB of headers.
    let p2 = Proxy::start(&config(b.addr, ""));
    let (_c, settings) = Conn::open(p2.addr()).await;
    assert!(settings.contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 256)));
    assert!(settings.contains(&(h2raw::SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_beyond_the_limit_are_refused_and_the_others_served() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "h2_max_concurrent_streams = 4"));
    let (mut c, _) = Conn::open(p.addr()).await;
    // Six requests at once, each held a moment by the backend: two too many.
    let mut burst = Vec::new();
    for id in [1, 3, 5, 7, 9, 11] {
        burst.extend(h2raw::get(id, "/slow", &[("x-test-delay", "500ms")]));
    }
    assert!(c.send(&burst).await);
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while answered.len() + refused.len() < 6 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = c.next(left).await else {
            panic!("connection ended or timed out: answered {answered:?}, refused {refused:?}");
        };
        if f.is_status_200() {
            answered.push(f.stream);
        } else if f.kind == h2raw::RST_STREAM {
            assert_eq!(f.error_code(), h2raw::REFUSED_STREAM, "stream {}", f.stream);
            refused.push(f.stream);
        }
    }
    answered.sort();
    refused.sort();
    assert_eq!(answered, vec![1, 3, 5, 7]);
    assert_eq!(refused, vec![9, 11]);
    // The same connection takes new streams once the others are done.
    assert!(c.send(&h2raw::get(13, "/again", &[])).await);
    let mut ok = false;
    while let Some(f) = c.next(PATIENCE).await {
        if f.stream == 13 && f.kind == h2raw::HEADERS {
            ok = f.is_status_200();
            break;
        }
    }
    assert!(ok, "stream 13 was served");
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_ends_the_connection_with_goaway() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, ""));
    let (mut c, _) = Conn::open(p.addr()).await;
    // Open and cancel streams as fast as possible (CVE-2023-44487).
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        flood.extend(h2raw::get(id, "/", &[("x-test-delay", "1s")]));
        flood.extend(h2raw::rst_stream(id, h2raw::CANCEL));
    }
    let _ = c.send(&flood).await;
    let (_, goaway) = c.until_goaway(PATIENCE).await;
    let goaway = goaway.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), h2raw::ENHANCE_YOUR_CALM);
    assert!(
        c.closed_within(PATIENCE).await,
        "the connection is closed after the GOAWAY"
    );
    // Cancelled streams are never served: at most a few that were accepted before their reset
    // was read could reach the backend, fewer than the 20 resets the connection is allowed
    // (none, in practice); a proxy that serves the flood shows hundreds.
    assert!(
        b.hits() <= 20,
        "the flood reached the backend ({} of 500 streams)",
        b.hits()
    );
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_ends_the_connection_with_goaway() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, ""));
    let (mut c, _) = Conn::open(p.addr()).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames,
    // each carrying another small field, none ending the block.
    let mut flood = h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &h2raw::get_block("/", &[]));
    for i in 0..10_000 {
        let field = h2raw::literal("x-flood", &format!("{i}"));
        flood.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &field));
    }
    let _ = c.send(&flood).await;
    let (_, goaway) = c.until_goaway(PATIENCE).await;
    let goaway = goaway.expect("a GOAWAY");
    assert_eq!(goaway.error_code(), h2raw::ENHANCE_YOUR_CALM);
    assert!(c.closed_within(PATIENCE).await);
    assert_eq!(b.hits(), 0);
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_lists_over_max_header_bytes_get_431() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "max_header_bytes = \"4KiB\""));
    let (mut c, _) = Conn::open(p.addr()).await;
    let big = "a".repeat(8 * 1024);
    assert!(c.send(&h2raw::get(1, "/big", &[("x-big", &big)])).await);
    // The stream gets a 431 (`:status` literal with indexed name 8, value "431") and ends; the
    // connection stays usable.
    let mut status = None;
    while let Some(f) = c.next(PATIENCE).await {
        if f.stream == 1 && f.kind == h2raw::HEADERS {
            status = Some(f.payload.clone());
            break;
        }
        assert_ne!(f.kind, h2raw::GOAWAY, "the connection survives");
    }
    let status = status.expect("an answer on stream 1");
    // HPACK: literal with indexing of name 8 (:status), then "431" raw or Huffman-coded.
    assert!(
        status.starts_with(&[0x48, 0x03, b'4', b'3', b'1']) || status.starts_with(&[0x48, 0x83, 0x69, 0x90, 0xff]),
        "expected :status 431, got {status:02x?}"
    );
    assert!(c.send(&h2raw::get(3, "/small", &[("x-small", "a")])).await);
    let mut ok = false;
    while let Some(f) = c.next(PATIENCE).await {
        if f.stream == 3 && f.kind == h2raw::HEADERS {
            ok = f.is_status_200();
            break;
        }
    }
    assert!(ok, "a normal stream on the same connection is served");
    assert_eq!(b.hits(), 1, "only the normal stream reached the backend");
    still_serves(&p).await;
}

/// `n` streams on a new connection, each malformed (a connection-specific field), which the
/// server must reset.
async fn malformed_streams(p: &Proxy, n: u32) -> Conn {
    let (mut c, _) = Conn::open(p.addr()).await;
    let mut flood = Vec::new();
    for i in 0..n {
        flood.extend(h2raw::get(1 + 2 * i, "/", &[("connection", "close")]));
    }
    let _ = c.send(&flood).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_broken_on_purpose_end_the_connection_with_goaway() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, ""));
    // Below the bound, each malformed stream is reset and the connection carries on.
    let mut c = malformed_streams(&p, 200).await;
    let mut resets = 0;
    while resets < 200 {
        let f = c.next(PATIENCE).await.expect("a reset for every malformed stream");
        assert_ne!(f.kind, h2raw::GOAWAY);
        if f.kind == h2raw::RST_STREAM {
            assert_eq!(f.error_code(), h2raw::PROTOCOL_ERROR);
            resets += 1;
        }
    }
    assert!(c.send(&h2raw::get(401, "/fine", &[])).await);
    let mut ok = false;
    while let Some(f) = c.next(PATIENCE).await {
        if f.stream == 401 && f.kind == h2raw::HEADERS {
            ok = f.is_status_200();
            break;
        }
    }
    assert!(ok, "a good stream after 200 bad ones is served");
    // A client that makes the server reset streams for it without end (CVE-2025-8671) is cut
    // off past the bound.
    let mut c = malformed_streams(&p, 1000).await;
    let (_, goaway) = c.until_goaway(PATIENCE).await;
    assert_eq!(goaway.expect("a GOAWAY").error_code(), h2raw::ENHANCE_YOUR_CALM);
    assert!(c.closed_within(PATIENCE).await);
    assert_eq!(b.hits(), 1, "no malformed stream reached the backend");
    still_serves(&p).await;
}
