//! Bad input and broken backends, over raw sockets: framing that a backend could read
//! differently is refused with 400 (with the reason, where waypost decides) and never forwarded,
//! alone, pipelined behind a good request, or split across reads; a backend that resets, sends garbage,
//! closes after the head, hangs or sends an oversized head costs the client a clean 502/504
//! (or, once a body has started, an aborted connection, never a short body passed as whole);
//! everyone else keeps being served.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write raw bytes, read until the server closes; the response text. A server that neither
/// closes nor aborts the connection within PATIENCE fails the test.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

/// Everything the server sends until it closes (or resets) the connection, which it must do
/// within PATIENCE.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(closed.is_ok(), "the server kept the connection open: {text:?}");
    text
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The status line and, when there is one, the body of a raw response.
fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_with_400_and_never_forwarded() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    // (what, request, the reason waypost gives, or None where hyper refuses it with its own
    // empty 400)
    let cases: &[(&str, &[u8], Option<&str>)] = &[
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some("400 both Content-Length and Transfer-Encoding"),
        ),
        (
            "Transfer-Encoding and Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\nhello",
            Some("400 both Content-Length and Transfer-Encoding"),
        ),
        (
            "Content-Length with a listed Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Some("400 both Content-Length and Transfer-Encoding"),
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
            Some("400 invalid or conflicting Content-Length"),
        ),
        (
            "a Content-Length list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
            Some("400 invalid or conflicting Content-Length"),
        ),
        (
            "an invalid Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd",
            Some("400 invalid or conflicting Content-Length"),
        ),
        (
            "a signed Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
            Some("400 invalid or conflicting Content-Length"),
        ),
        (
            "a Transfer-Encoding other than chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            Some("400 unsupported Transfer-Encoding"),
        ),
        (
            "chunked, then another coding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            Some("400 unsupported Transfer-Encoding"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some("400 unsupported Transfer-Encoding"),
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
            Some("400 obsolete line folding"),
        ),
        (
            "a folded Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX: y\r\n\tTransfer-Encoding: chunked\r\n\r\nhello",
            Some("400 obsolete line folding"),
        ),
        (
            "an invalid header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            None,
        ),
        (
            "a space before the colon",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
            None,
        ),
        (
            "a control character in a value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
            None,
        ),
        (
            "a NUL in a value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            None,
        ),
        (
            // (Framing is fine here, so the connection may stay open: ask for the close.)
            "a bad request target",
            b"GET not-a-path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Some("400 bad request"),
        ),
        ("a space in the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", None),
        ("an unknown version", b"GET / HTTP/1.7\r\nHost: x\r\n\r\n", None),
    ];
    let mut failures = Vec::new();
    for (what, bytes, reason) in cases {
        let before = b.hits();
        let resp = raw(p.addr(), bytes).await;
        let line = status_line(&resp);
        let body_ok = match reason {
            Some(r) => body_of(&resp) == format!("{r}\n"),
            None => true,
        };
        if line != "HTTP/1.1 400 Bad Request" || !body_ok || b.hits() != before {
            failures.push(format!(
                "{what}: got {line:?}, backend hits +{} ({resp:?})",
                b.hits() - before
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the proxy still serves well-formed requests.
    assert_eq!(get(p.addr(), "/").await.status(), 200);
    let refused = p
        .metric("waypost_client_errors_total{listener=\"http\",reason=\"bad_framing\"}")
        .await;
    assert_eq!(refused, Some(12.0), "each refusal of waypost's own is counted");
}

/// A request smuggled behind a good one on the same connection (pipelined, in one write): the
/// good one is served, the one with both lengths is refused, and nothing after it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_smuggled_behind_a_pipelined_one_is_refused() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let resp = raw(
        p.addr(),
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(b.hits(), 1, "only the first request reached the backend: {resp}");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\"path\":\"/first\""), "{resp}");
    let second = &resp[resp.find("HTTP/1.1 400").unwrap_or_else(|| panic!("no 400: {resp}"))..];
    assert_eq!(
        body_of(second),
        "400 both Content-Length and Transfer-Encoding\n",
        "{resp}"
    );
    assert!(!resp.contains("/smuggled"), "{resp}");
}

/// The same refusal when the head arrives in pieces that split its lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_head_split_across_reads_is_still_refused() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    for piece in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Enc"[..],
        b"oding: chu",
        b"nked\r\nContent-Len",
        b"gth: 5\r",
        b"\n\r",
        b"\nhello",
    ] {
        s.write_all(piece).await.unwrap();
        // Each piece is read on its own before the next is sent.
        wait_read_by_peer(&s).await;
    }
    let resp = read_to_close(&mut s).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "{resp}");
    assert_eq!(b.hits(), 0);
}

/// A backend that answers every connection with `script`: it reads the request head, then
/// writes `reply` (possibly in slow pieces) and then does `after`.
#[derive(Clone, Copy)]
enum After {
    Close,
    Hang,
}

async fn scripted_backend(reply: &'static [u8], trickle: Option<Duration>, after: After) -> RawBackend {
    let mut b = RawBackend::replying(reply);
    if let Some(d) = trickle {
        b = b.trickle(d);
    }
    if let After::Hang = after {
        b = b.then_hang();
    }
    b.start().await
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
        let backend = scripted_backend(reply, trickle, after).await;
        let addr = backend.addr;
        let p = Proxy::start(&format!(
            "{}\n[[pool]]\nname = \"ok\"\nbackends = [{{ address = \"{}\" }}]\n[[route]]\nname = \"ok\"\npath_prefix = \"/ok/\"\npool = \"ok\"\n",
            one_backend(addr),
            healthy.addr
        ));
        // Another client keeps being served while the broken exchange is under way.
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
        let body = body_of(&broken);
        assert!(
            body.len() > 1 && body.ends_with('\n') && body.matches('\n').count() == 1,
            "{what}: the error body is one line: {body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_backend_aborts_the_client_connection() {
    // The head promises 100 bytes; 10 arrive, then the backend resets.
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        None,
        After::Close,
    )
    .await;
    let p = Proxy::start(&one_backend(backend.addr));
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
    let chunked = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        None,
        After::Close,
    )
    .await;
    let p2 = Proxy::start(&one_backend(chunked.addr));
    let resp = raw(p2.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&resp), Some(200));
    assert!(
        !resp.ends_with("0\r\n\r\n"),
        "a cut chunked body must not be terminated as complete: {resp:?}"
    );
}
