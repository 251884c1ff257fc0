//! The client limits of `[server]`, through the real binary over loopback: slow request heads
//! get 408, idle keep-alive connections are closed, oversized heads get 431 and oversized bodies
//! 413 (at once when declared, cut off upstream when not), `max_connections` pauses accepting,
//! and a reload applies new limits.
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(backend: SocketAddr, server: &str) -> String {
    weighted_config(&[(backend, 1)], server, "access = \"off\"", "")
}

/// Read until the server closes (or PATIENCE): everything it sent.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one response with a Content-Length body: (status line, body).
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    (
        head.lines().next().unwrap_or("").to_string(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_get_408_and_the_connection_closes() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "header_read_timeout = \"500ms\""));
    let addr = p.addr();
    let started = Instant::now();
    // A partial head, then nothing.
    let partial = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        read_to_close(&mut s).await
    });
    // Nothing at all.
    let silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        read_to_close(&mut s).await
    });
    // A byte every 100 ms: never idle, never done (slowloris).
    let trickle = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let head =
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            for b in head {
                if wr.write_all(&[*b]).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            true
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out)).await;
        writer.abort();
        String::from_utf8_lossy(&out).into_owned()
    });
    for (what, task) in [("partial", partial), ("silent", silent), ("trickle", trickle)] {
        let resp = task.await.unwrap();
        assert_eq!(status_line(&resp), "HTTP/1.1 408 Request Timeout", "{what}: {resp:?}");
        assert_eq!(body_of(&resp), "408 request head not received in time\n", "{what}");
        assert!(resp.contains("\r\nconnection: close\r\n"), "{what}: {resp:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not before the timeout"
    );
    assert_eq!(b.hits(), 0);
    assert_eq!(
        p.metric("waypost_client_errors_total{listener=\"http\",reason=\"header_timeout\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(get(p.addr(), "/").await.status(), 200, "everyone else is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_timer_runs_while_a_head_arrives_not_while_the_connection_is_idle() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "header_read_timeout = \"500ms\""));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, "HTTP/1.1 200 OK");
    // Idle between requests for longer than the head timeout: that is idle_timeout's business.
    // A head timer started now, on another connection, running out shows that long has passed.
    let mut control = TcpStream::connect(p.addr()).await.unwrap();
    control.write_all(b"GET /c HTTP/1.1\r\nHo").await.unwrap();
    let timed_out = read_to_close(&mut control).await;
    assert_eq!(status_line(&timed_out), "HTTP/1.1 408 Request Timeout", "{timed_out:?}");
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, "HTTP/1.1 200 OK");
    // The next head starts and stalls: 408 on the same connection.
    s.write_all(b"GET /3 HTTP/1.1\r\nHo").await.unwrap();
    let resp = read_to_close(&mut s).await;
    assert_eq!(status_line(&resp), "HTTP/1.1 408 Request Timeout", "{resp:?}");
    assert_eq!(b.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "idle_timeout = \"500ms\""));
    // HTTP/1.1: after a response, silence; the proxy closes without a word, once the
    // connection has been idle for idle_timeout (and not before: the default is 60 s, longer
    // than PATIENCE, and a close right after the response would come too early).
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let asked = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, "HTTP/1.1 200 OK");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "closed {:?} after the request, before idle_timeout (500ms) ran out",
        asked.elapsed()
    );
    assert!(
        rest.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    // A request that takes longer than idle_timeout is not cut.
    let r = send(
        p.addr(),
        Request::get("/slow")
            .header("x-test-delay", "1500ms")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    // HTTP/2: an idle connection gets a GOAWAY, then is closed.
    let (mut c, _) = h2raw::Conn::open(p.addr()).await;
    assert!(c.send(&h2raw::get(1, "/", &[])).await);
    let (seen, goaway) = c.until_goaway(PATIENCE).await;
    assert!(seen.iter().any(|f| f.is_status_200()), "the request was answered first");
    assert_eq!(goaway.expect("a GOAWAY").error_code(), h2raw::NO_ERROR);
    assert!(c.closed_within(PATIENCE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_max_header_bytes_get_431() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "max_header_bytes = \"4KiB\""));
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n", "a".repeat(8000));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(big.as_bytes()).await.unwrap();
    let resp = read_to_close(&mut s).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{resp:?}"
    );
    assert_eq!(body_of(&resp), "431 request head too large\n");
    // Just under the limit is fine.
    let fits = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n", "a".repeat(3900));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(fits.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, "HTTP/1.1 200 OK");
    // More fields than hyper takes: 431 with a reason, not a silent close.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(many.as_bytes()).await.unwrap();
    let resp = read_to_close(&mut s).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{resp:?}"
    );
    assert_eq!(body_of(&resp), "431 too many header fields\n");
    // HTTP/2: the header list limit is the same number.
    let r = send_h2(
        p.addr(),
        Request::get(p.url("/"))
            .header("cookie", "a".repeat(8000))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 431);
    assert_eq!(b.hits(), 1, "only the request that fits reached the backend");
    assert_eq!(
        p.metric("waypost_client_errors_total{listener=\"http\",reason=\"header_too_large\"}")
            .await,
        Some(2.0)
    );
}

/// A backend that records every byte it receives on its first connection and never answers.
async fn recording_backend() -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = tx.send(got);
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_bodies_over_max_body_bytes_get_413_before_anything_goes_upstream() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "max_body_bytes = \"1KiB\""));
    // Only the head is sent: the answer does not wait for the body.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n")
        .await
        .unwrap();
    let (line, body) = read_response(&mut s).await;
    assert!(line.starts_with("HTTP/1.1 413 "), "{line}");
    assert_eq!(body, "413 request body too large\n");
    // At the limit, the body goes through whole.
    let r = send(
        p.addr(),
        Request::post("/up")
            .body(Full::new(Bytes::from(vec![b'x'; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(echo(&r)["body_bytes"], 1024);
    // HTTP/2 with a content-length.
    let r = send_h2(
        p.addr(),
        Request::post(p.url("/up"))
            .header("content-length", "2048")
            .body(Full::new(Bytes::from(vec![b'x'; 2048])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(b.hits(), 1, "only the body within the limit reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_over_max_body_bytes_are_cut_off_never_passed_on_as_complete() {
    let (addr, recorded) = recording_backend().await;
    let p = Proxy::start(&config(addr, "max_body_bytes = \"1KiB\""));
    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(format!("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}").as_bytes())
        .await
        .unwrap();
    // The second chunk passes the limit; the last chunk would end the body.
    wait_read_by_peer(&s).await;
    let _ = s.write_all(format!("{chunk}{chunk}0\r\n\r\n").as_bytes()).await;
    let (line, body) = read_response(&mut s).await;
    assert!(line.starts_with("HTTP/1.1 413 "), "{line}");
    assert_eq!(body, "413 request body too large\n");
    let upstream = tokio::time::timeout(PATIENCE, recorded)
        .await
        .expect("the upstream connection was closed")
        .unwrap();
    let upstream = String::from_utf8_lossy(&upstream);
    assert!(upstream.starts_with("POST /up HTTP/1.1\r\n"), "{upstream:?}");
    assert!(
        !upstream.ends_with("0\r\n\r\n"),
        "the backend must never see the body end: {upstream:?}"
    );
    assert!(upstream.len() < 1024 + 600, "the rest was not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_bodies_without_length_over_max_body_bytes_get_413() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "max_body_bytes = \"1KiB\""));
    let stream = TcpStream::connect(p.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..3)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'z'; 600]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let resp = sender
        .send_request(Request::post(p.url("/up")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"413 request body too large\n");
    assert_eq!(
        p.metric("waypost_client_errors_total{listener=\"http\",reason=\"body_too_large\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_pauses_accepting_and_resumes_when_one_closes() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, "max_connections = 2"));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_response(&mut s).await.0, "HTTP/1.1 200 OK");
        held.push(s);
    }
    // A third connection waits in the kernel's queue: its request gets no answer yet.
    let mut third = TcpStream::connect(p.addr()).await.unwrap();
    third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut byte)).await;
    assert!(early.is_err(), "the third connection must wait while two are open");
    // One closes: the third is accepted and served.
    drop(held.pop());
    let mut rest = Vec::new();
    rest.push(
        tokio::time::timeout(PATIENCE, third.read(&mut byte))
            .await
            .expect("served after a slot freed")
            .map(|_| byte[0])
            .unwrap(),
    );
    assert_eq!(rest[0], b'H');
    drop(held);
    drop(third);
    // Still up, and serving.
    assert_eq!(get(p.addr(), "/").await.status(), 200);
    assert!(p.rss_kib() > 0, "the process is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(b.addr, ""));
    let post = || {
        send(
            p.addr(),
            Request::post("/up")
                .body(Full::new(Bytes::from(vec![b'x'; 4096])))
                .unwrap(),
        )
    };
    assert_eq!(post().await.status(), 200, "no body limit by default");
    std::fs::write(
        &p.config_path,
        config(b.addr, "max_body_bytes = \"1KiB\"\nmax_header_bytes = \"2KiB\""),
    )
    .unwrap();
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(post().await.status(), 413);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n", "a".repeat(3000));
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        status_line(&read_to_close(&mut s).await),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}
