//! Slow readers: a client that reads a large response slowly, or stops reading for a while,
//! makes waypost stop reading from the backend instead of buffering the response. Measured on
//! the proxy process's resident memory while a 512 MiB download stalls and crawls.
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOTAL: u64 = 512 << 20;
/// Generous: the response is 512 MiB; what a proxy may hold per slow connection is buffers.
const BOUND_KIB: u64 = 64 * 1024;

/// Sample the proxy's RSS every 50 ms until stopped; the peak in KiB.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let peak = AtomicU64::new(0);
        while !s.load(Ordering::Relaxed) {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kib = text
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            peak.fetch_max(kib, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, task)
}

/// Wait until the backend has stopped sending (its count of body bytes sent stays the same for
/// 200 ms): the proxy no longer reads from it. Then check it sent at most `BOUND_KIB` more than
/// the client has read: an unbounded proxy would have pulled the whole response by then.
async fn backend_stalls(b: &TestBackend, client_got: u64, when: &str) {
    let stalled = tokio::time::timeout(PATIENCE, async {
        let mut last = b.bytes_sent();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = b.bytes_sent();
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{when}: the backend never stopped sending ({} bytes)", b.bytes_sent()));
    eprintln!("{when}: the backend stopped at {stalled} bytes, the client had read {client_got}");
    assert!(
        stalled - client_got < BOUND_KIB << 10,
        "{when}: the backend sent {stalled} bytes, the client had read {client_got}: the proxy buffered the rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http1_reader_holds_the_backend_back_instead_of_filling_memory() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    assert_eq!(get(p.addr(), "/warm-up").await.status(), 200);
    let baseline = p.rss_kib();
    let (stop, peak) = watch_rss(p.pid());

    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(format!("GET /bytes/{TOTAL} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "the head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Not reading at all: an unbounded proxy would pull the backend's 512 MiB now.
    backend_stalls(&b, got, "not reading").await;
    // Then a crawl: 32 MiB in 64 KiB reads with pauses.
    while got < 32 << 20 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended early at {got}");
        got += n as u64;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    backend_stalls(&b, got, "after the crawl").await;
    // Then the rest at full speed, to the exact end.
    while got < TOTAL {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended early at {got}");
        got += n as u64;
    }
    assert_eq!(got, TOTAL);
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    eprintln!("rss baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak < baseline + BOUND_KIB,
        "RSS went from {baseline} KiB to a peak of {peak} KiB while a client read slowly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_h2_reader_holds_the_backend_back_instead_of_filling_memory() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    assert_eq!(get(p.addr(), "/warm-up").await.status(), 200);
    let baseline = p.rss_kib();
    let (stop, peak) = watch_rss(p.pid());

    let stream = TcpStream::connect(p.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(p.url(&format!("/bytes/{TOTAL}")))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Not reading: HTTP/2 flow control stops the proxy, which must stop reading the backend.
    let mut got = 0u64;
    backend_stalls(&b, got, "not reading").await;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
            if got < 32 << 20 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    assert_eq!(got, TOTAL);
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    eprintln!("rss baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak < baseline + BOUND_KIB,
        "RSS went from {baseline} KiB to a peak of {peak} KiB while an h2 client read slowly"
    );
}
