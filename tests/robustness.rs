//! Bad input and broken backends, over raw sockets: framing that a backend could read
//! differently is refused with 400 and never forwarded; a backend that resets, sends garbage,
//! closes after the head, hangs or sends an oversized head costs the client a clean 502/504
//! (or, once a body has started, an aborted connection, never a short body passed as whole);
//! everyone else keeps being served.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(20);

/// Write raw bytes, read until the server closes (or the deadline); the response text.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_with_400_and_never_forwarded() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let cases: &[(&str, &[u8])] = &[
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "an invalid Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "an invalid header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        ),
        (
            "a control character in a value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        ),
        ("a bad request target", b"GET not-a-path HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "a Transfer-Encoding other than chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let before = b.hits();
        let resp = raw(p.addr(), bytes).await;
        let status = status_of(&resp);
        if status != Some(400) || b.hits() != before {
            failures.push(format!(
                "{what}: got {status:?}, backend hits +{} ({resp:?})",
                b.hits() - before
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the proxy still serves well-formed requests.
    assert_eq!(get(p.addr(), "/").await.status(), 200);
}

/// A backend that answers every connection with `script`: it reads the request head, then
/// writes `reply` (possibly in slow pieces) and then does `after`.
#[derive(Clone, Copy)]
enum After {
    Close,
    Hang,
}

async fn scripted_backend(reply: &'static [u8], trickle: Option<Duration>, after: After) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                match trickle {
                    None => {
                        let _ = s.write_all(reply).await;
                    }
                    Some(d) => {
                        for b in reply {
                            if s.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(d).await;
                        }
                    }
                }
                if let After::Hang = after {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    addr
}

fn one_backend(addr: SocketAddr) -> String {
    simple_config(
        &[addr],
        "response_timeout = \"1s\"\nretries = 0\n[pool.passive]\nconsecutive_failures = 0",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_backends_get_clean_errors_and_no_false_complete_bodies() {
    let oversized: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(1 << 20)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    // (what, the backend's reply, delay between its bytes, what it does after, statuses allowed)
    type Case = (&'static str, &'static [u8], Option<Duration>, After, &'static [u16]);
    let cases: Vec<Case> = vec![
        (
            "garbage instead of HTTP",
            b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n",
            None,
            After::Close,
            &[502],
        ),
        ("close right after accepting", b"", None, After::Close, &[502]),
        ("hang without answering", b"", None, After::Hang, &[504]),
        ("an oversized head", oversized, None, After::Close, &[502]),
        (
            "a head trickled one byte at a time past the timeout",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Some(Duration::from_millis(200)),
            After::Close,
            &[504],
        ),
    ];
    let healthy = TestBackend::start("healthy").await.unwrap();
    for (what, reply, trickle, after, want) in cases {
        let addr = scripted_backend(reply, trickle, after).await;
        let p = Proxy::start(&format!(
            "{}\n[[pool]]\nname = \"ok\"\nbackends = [{{ address = \"{}\" }}]\n[[route]]\nname = \"ok\"\npath_prefix = \"/ok/\"\npool = \"ok\"\n",
            one_backend(addr),
            healthy.addr
        ));
        // Another client keeps being served while the broken exchange is under way.
        let started = std::time::Instant::now();
        let (broken, fine) = tokio::join!(
            tokio::time::timeout(
                PATIENCE,
                raw(p.addr(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ),
            get(p.addr(), "/ok/x")
        );
        let broken = broken.unwrap_or_else(|_| panic!("{what}: the client was left hanging"));
        assert_eq!(fine.status(), 200, "{what}: another client was not served");
        let status = status_of(&broken);
        assert!(
            status.is_some_and(|s| want.contains(&s)),
            "{what}: expected {want:?}, got {broken:?}"
        );
        assert!(
            broken.lines().last().is_some_and(|l| !l.is_empty()),
            "{what}: the error body is one line"
        );
        assert!(started.elapsed() < PATIENCE, "{what}: took too long");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_backend_aborts_the_client_connection() {
    // The head promises 100 bytes; 10 arrive, then the backend resets.
    let addr = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        None,
        After::Close,
    )
    .await;
    let p = Proxy::start(&one_backend(addr));
    let resp = raw(p.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&resp), Some(200));
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.len() < 100,
        "the client must not receive a complete-looking body: {resp:?}"
    );
    assert!(body.starts_with("0123456789"));
    // The connection was closed under the client (read_to_end returned): the short body can
    // never be taken for a whole one, since Content-Length said 100.
    let chunked_addr = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        None,
        After::Close,
    )
    .await;
    let p2 = Proxy::start(&one_backend(chunked_addr));
    let resp = raw(p2.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&resp), Some(200));
    assert!(
        !resp.ends_with("0\r\n\r\n"),
        "a cut chunked body must not be terminated as complete: {resp:?}"
    );
}

/// With both Content-Length and Transfer-Encoding, hyper (the HTTP library) takes the chunked
/// framing, drops Content-Length and closes the connection after the request (RFC 9112 §6.3
/// allows this or a 400). What matters against smuggling holds: the backend gets one
/// unambiguous framing, and nothing after the body is read as another request. The issue asks
/// for a 400 here; hyper removes the header before waypost sees it, so that part is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    // The chunked body ends at "0"; the bytes after it would be a second, smuggled request.
    let resp = raw(
        p.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(b.hits(), 1, "exactly one request reached the backend: {resp}");
    assert!(!resp.contains("/smuggled"), "{resp}");
    let v: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("{}").trim()).unwrap_or_default();
    assert!(
        v["headers"].get("content-length").is_none(),
        "Content-Length must not reach the backend: {resp}"
    );
    assert_eq!(v["body_bytes"], 0);
}
