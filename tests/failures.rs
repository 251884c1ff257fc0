//! Failure paths through the real binary and real sockets: 502 for a refused or reset backend,
//! 504 for a backend that does not answer in time, the one safe retry on another backend (and
//! no retry of a non-idempotent request that was sent), graceful shutdown, and the admin API
//! (health, status, reload with a good and a broken file, the bearer token).
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::*;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One pool "web" of weighted backends; `server` goes into [server], `pool_extra` into the pool.
fn config(backends: &[(SocketAddr, u32)], pool_extra: &str, server: &str) -> String {
    weighted_config(backends, server, "access = \"stdout\"", pool_extra)
}

async fn get_req(addr: SocketAddr, path: &str) -> Response<Bytes> {
    within(&format!("GET {path}"), get(addr, path)).await
}

async fn post_req(addr: SocketAddr, path: &str, body: Vec<u8>) -> Response<Bytes> {
    within(
        &format!("POST {path}"),
        send(
            addr,
            Request::post(path)
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        ),
    )
    .await
}

/// POST to an admin path, optionally with a bearer token; returns (status, body).
async fn admin_post(p: &Proxy, path: &str, token: Option<&str>) -> (u16, String) {
    let mut b = Request::post(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let r = within(
        &format!("admin POST {path}"),
        send(p.admin, b.body(Full::new(Bytes::new())).unwrap()),
    )
    .await;
    (r.status().as_u16(), String::from_utf8_lossy(r.body()).into_owned())
}

async fn status_json(p: &Proxy) -> serde_json::Value {
    let (code, body) = within("GET /status", p.admin_get("/status")).await;
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

async fn retries(p: &Proxy) -> f64 {
    p.metric_sum("waypost_retries_total", &[("pool", "web")]).await
}

/// Upstream attempts on `backend` that ended with no response at all.
async fn upstream_errors(p: &Proxy, backend: SocketAddr) -> f64 {
    p.metric_sum(
        "waypost_upstream_requests_total",
        &[
            ("pool", "web"),
            ("backend", &backend.to_string()),
            ("status_class", "error"),
        ],
    )
    .await
}

/// The body is one line of text ending in a newline, starting with the status code.
fn assert_one_line(r: &Response<Bytes>, code: u16) {
    assert_eq!(r.status().as_u16(), code, "body: {:?}", r.body());
    let body = std::str::from_utf8(r.body()).expect("utf-8 body");
    assert!(
        body.ends_with('\n') && body.lines().count() == 1,
        "a {code} body should be one line: {body:?}"
    );
    assert!(
        body.starts_with(&code.to_string()),
        "a {code} body should say its status: {body:?}"
    );
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
}

/// Parsed access log lines (JSON) written so far.
fn log_lines(p: &Proxy) -> Vec<serde_json::Value> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_flag(v: &serde_json::Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .map(|a| a.iter().any(|f| f == flag))
        .unwrap_or(false)
}

/// Wait until the access log holds at least `n` lines.
async fn wait_log_lines(p: &Proxy, n: usize) -> Vec<serde_json::Value> {
    let ok = eventually(PATIENCE, || async { log_lines(p).len() >= n }).await;
    assert!(ok, "expected {n} access log lines, got: {:?}", p.stdout_lines());
    log_lines(p)
}

/// A GET on its own connection, running in the background.
fn spawn_get(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Result<Response<Bytes>, String>> {
    let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    tokio::spawn(async move { try_send(addr, req).await })
}

/// A test backend that holds every request (counted on arrival) until `release`.
async fn gated_backend() -> TestBackend {
    let b = TestBackend::start("gated").await.unwrap();
    b.set_mode(Mode::Hold);
    b
}

// ---------------------------------------------------------------------------------------------
// 502 and 504
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_502_with_a_one_line_body() {
    let dead = dead_addr();
    let p = Proxy::start(&config(&[(dead, 1)], "", ""));
    let r = get_req(p.addr(), "/x").await;
    assert_one_line(&r, 502);
    assert_eq!(r.headers()["via"], "1.1 waypost");
    let r = post_req(p.addr(), "/x", vec![b'p'; 1000]).await;
    assert_one_line(&r, 502);
    assert_eq!(upstream_errors(&p, dead).await, 2.0);
    assert_eq!(
        retries(&p).await,
        0.0,
        "a pool of one has no other backend: nothing was retried"
    );
    let lines = wait_log_lines(&p, 2).await;
    assert!(
        lines
            .iter()
            .all(|l| has_flag(l, "upstream_connect_error") && !has_flag(l, "retried")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_backend_is_502_on_a_pool_of_one() {
    let b = TestBackend::start("reset").await.unwrap();
    b.set_mode(Mode::Reset);
    let p = Proxy::start(&config(&[(b.addr, 1)], "", ""));
    let r = get_req(p.addr(), "/x").await;
    assert_one_line(&r, 502);
    assert_eq!(b.hits(), 1, "a pool of one has no other backend to retry on");
    let r = post_req(p.addr(), "/x", vec![b'p'; 1000]).await;
    assert_one_line(&r, 502);
    assert_eq!(b.hits(), 2);
    assert_eq!(retries(&p).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_is_504_after_response_timeout() {
    let b = TestBackend::start("hang").await.unwrap();
    b.set_mode(Mode::Hang);
    let p = Proxy::start(&config(&[(b.addr, 1)], "response_timeout = \"300ms\"", ""));
    let started = Instant::now();
    let r = get_req(p.addr(), "/slow").await;
    assert_one_line(&r, 504);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a 504 before response_timeout ran out: {:?}",
        started.elapsed()
    );
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_not_retried_on_another_backend() {
    let b1 = TestBackend::start("hang1").await.unwrap();
    let b2 = TestBackend::start("hang2").await.unwrap();
    b1.set_mode(Mode::Hang);
    b2.set_mode(Mode::Hang);
    let p = Proxy::start(&config(
        &[(b1.addr, 1), (b2.addr, 1)],
        "response_timeout = \"300ms\"\nretries = 1",
        "",
    ));
    let r = get_req(p.addr(), "/slow").await;
    assert_one_line(&r, 504);
    assert_eq!(
        b1.hits() + b2.hits(),
        1,
        "the backend may still be working on a timed-out request: no second attempt"
    );
    assert_eq!(retries(&p).await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend_for_any_method() {
    let dead = dead_addr();
    let live = TestBackend::start("live").await.unwrap();
    // The dead backend takes nearly every first pick, so the first requests are certainly
    // retried. (Passive ejection may take it out of rotation after a few failures: POSTs and
    // GETs alternate from the start so that both methods go through the retry path before.)
    let p = Proxy::start(&config(&[(dead, 1000), (live.addr, 1)], "retries = 1", ""));
    const GETS: usize = 5;
    const POSTS: usize = 5;
    for i in 0..GETS + POSTS {
        if i % 2 == 0 {
            let body = vec![b'a' + i as u8; 20_000 + i];
            let r = post_req(p.addr(), &format!("/post/{i}"), body.clone()).await;
            assert_eq!(r.status(), 200, "POST {i}: {:?}", r.body());
            let v = echo(&r);
            assert_eq!(v["backend"], "live");
            assert_eq!(v["method"], "POST");
            assert_eq!(
                v["body_bytes"],
                body.len() as u64,
                "the retried POST body arrives whole"
            );
        } else {
            let r = get_req(p.addr(), &format!("/get/{i}")).await;
            assert_eq!(r.status(), 200, "GET {i}: {:?}", r.body());
            assert_eq!(echo(&r)["backend"], "live");
        }
    }
    assert_eq!(live.hits() as usize, GETS + POSTS);

    // Every attempt on the dead backend was followed by exactly one retry, and the access log
    // marks exactly those requests.
    let n = retries(&p).await;
    assert!(n >= 1.0, "no request was retried");
    assert_eq!(n, upstream_errors(&p, dead).await);
    let lines = wait_log_lines(&p, GETS + POSTS).await;
    let retried: Vec<_> = lines.iter().filter(|l| has_flag(l, "retried")).collect();
    assert_eq!(retried.len() as f64, n, "{lines:#?}");
    assert!(
        retried.iter().any(|l| l["method"] == "POST"),
        "no POST took the retry path: {lines:#?}"
    );
    assert!(
        retried.iter().any(|l| l["method"] == "GET"),
        "no GET took the retry path: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_0_a_connect_failure_is_a_502() {
    let dead = dead_addr();
    let live = TestBackend::start("live").await.unwrap();
    let p = Proxy::start(&config(&[(dead, 3), (live.addr, 1)], "retries = 0", ""));
    const N: usize = 8;
    let mut bad = 0;
    for i in 0..N {
        let r = get_req(p.addr(), &format!("/r/{i}")).await;
        match r.status().as_u16() {
            200 => assert_eq!(echo(&r)["backend"], "live"),
            502 => {
                assert_one_line(&r, 502);
                bad += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(bad >= 1, "the dead backend was never picked");
    assert_eq!(live.hits() as usize, N - bad);
    assert_eq!(upstream_errors(&p, dead).await, bad as f64);
    assert_eq!(retries(&p).await, 0.0);
}

/// Send N requests with bodies to a pool [resetting backend, good backend]: a request the
/// resetting backend received must not be sent again to the good one.
async fn sent_with_body_is_not_retried(method: http::Method) {
    let reset = TestBackend::start("reset").await.unwrap();
    reset.set_mode(Mode::Reset);
    let good = TestBackend::start("good").await.unwrap();
    let p = Proxy::start(&config(&[(reset.addr, 1), (good.addr, 1)], "retries = 1", ""));
    const N: usize = 10;
    let mut bad = 0u64;
    for i in 0..N {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("/order/{i}"))
            .body(Full::new(Bytes::from(vec![b'o'; 5000])))
            .unwrap();
        let r = within(&format!("{method} {i}"), send(p.addr(), req)).await;
        match r.status().as_u16() {
            200 => {
                let v = echo(&r);
                assert_eq!(v["backend"], "good");
                assert_eq!(v["method"], method.as_str());
                assert_eq!(v["body_bytes"], 5000);
            }
            502 => {
                assert_one_line(&r, 502);
                bad += 1;
            }
            s => panic!("{method}: unexpected status {s}"),
        }
    }
    assert!(bad >= 1, "no {method} went to the resetting backend");
    assert!(bad < N as u64, "no {method} went to the good backend");
    // No request reached both backends.
    assert_eq!(
        reset.hits(),
        bad,
        "each 502 is exactly one {method} the reset backend saw"
    );
    assert_eq!(
        good.hits(),
        N as u64 - bad,
        "the good backend saw only the 200s: a {method} that was sent was sent again"
    );
    assert_eq!(retries(&p).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_post_is_never_retried() {
    sent_with_body_is_not_retried(http::Method::POST).await;
}

/// PUT is idempotent, but its body was streamed to the backend and cannot be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_put_with_a_streamed_body_is_not_retried() {
    sent_with_body_is_not_retried(http::Method::PUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_get_that_hit_a_reset_is_retried() {
    let reset = TestBackend::start("reset").await.unwrap();
    reset.set_mode(Mode::Reset);
    let good = TestBackend::start("good").await.unwrap();
    let p = Proxy::start(&config(&[(reset.addr, 1), (good.addr, 1)], "retries = 1", ""));
    const N: usize = 10;
    for i in 0..N {
        let r = get_req(p.addr(), &format!("/page/{i}")).await;
        assert_eq!(r.status(), 200, "GET {i}: {:?}", r.body());
        assert_eq!(echo(&r)["backend"], "good");
        assert_eq!(echo(&r)["path"], format!("/page/{i}"));
    }
    assert!(reset.hits() >= 1, "no GET went to the resetting backend");
    assert_eq!(good.hits(), N as u64);
    assert_eq!(retries(&p).await, reset.hits() as f64);
    let lines = wait_log_lines(&p, N).await;
    let retried = lines.iter().filter(|l| has_flag(l, "retried")).count();
    assert_eq!(retried as u64, reset.hits(), "{lines:#?}");
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let b = gated_backend().await;
    let grace = Duration::from_secs(20);
    let mut p = Proxy::start(&config(&[(b.addr, 1)], "", "graceful_shutdown_timeout = \"20s\""));
    let addr = p.addr();
    let admin = p.admin;
    let inflight = spawn_get(addr, "/long");
    assert!(
        eventually(PATIENCE, || async { b.hits() == 1 }).await,
        "the request never reached the backend"
    );

    p.signal(libc::SIGTERM);
    // Draining: not ready, and no new connection is accepted.
    assert!(
        eventually(PATIENCE, || async {
            let req = Request::get("/readyz").body(Full::new(Bytes::new())).unwrap();
            try_send(admin, req).await.is_ok_and(|r| r.status() == 503)
        })
        .await,
        "/readyz should say 503 while draining"
    );
    assert!(
        eventually(PATIENCE, || async { TcpStream::connect(addr).await.is_err() }).await,
        "the listener still accepts connections while draining"
    );
    assert!(!inflight.is_finished(), "the in-flight request was cut");

    let released = Instant::now();
    b.set_mode(Mode::Normal);
    let r = within("the in-flight request", inflight)
        .await
        .unwrap()
        .expect("the in-flight request failed during the drain");
    assert_eq!(r.status(), 200);
    assert_eq!(echo(&r)["path"], "/long", "the whole answer, after the release");
    let code = p.wait_exit(grace);
    assert_eq!(
        code,
        Some(0),
        "waypost should exit 0 once drained, within graceful_shutdown_timeout ({:?} since release)\n{}",
        released.elapsed(),
        p.stderr()
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "connection accepted after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_graceful_shutdown_timeout_does_not_keep_the_process_alive() {
    let b = TestBackend::start("hang").await.unwrap();
    b.set_mode(Mode::Hang);
    let mut p = Proxy::start(&config(
        &[(b.addr, 1)],
        "response_timeout = \"1h\"",
        "graceful_shutdown_timeout = \"500ms\"",
    ));
    let addr = p.addr();
    let inflight = spawn_get(addr, "/forever");
    assert!(
        eventually(PATIENCE, || async { b.hits() == 1 }).await,
        "the request never reached the backend"
    );
    let signalled = Instant::now();
    p.signal(libc::SIGTERM);
    let code = p.wait_exit(PATIENCE);
    let took = signalled.elapsed();
    assert!(
        code.is_some(),
        "waypost still runs {PATIENCE:?} after SIGTERM with a 500ms grace\n{}",
        p.stderr()
    );
    assert_eq!(code, Some(0), "{}", p.stderr());
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}: the in-flight request did not get its grace period"
    );
    let r = within("the cut request", inflight).await.unwrap();
    assert!(
        !matches!(&r, Ok(resp) if resp.status() == 200),
        "a hanging request cannot have succeeded: {r:?}"
    );
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let b = TestBackend::start("b").await.unwrap();
    let mut p = Proxy::start(&config(&[(b.addr, 1)], "", "graceful_shutdown_timeout = \"20s\""));
    // One HTTP/1.1 and one h2c connection, each used once and then left open and idle.
    let (mut h1, h1_conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(p.addr()).await.unwrap()))
            .await
            .unwrap();
    let h1_conn = tokio::spawn(h1_conn);
    let r = h1
        .send_request(
            Request::get("/one")
                .header("host", "a.example")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(p.addr()).await.unwrap()),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let r = h2
        .send_request(
            Request::get(format!("http://{}/two", p.addr()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();

    p.signal(libc::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)),
        Some(0),
        "idle connections kept waypost alive through graceful_shutdown_timeout\n{}",
        p.stderr()
    );
    // Both idle connections were closed, not left hanging.
    within("h1 connection end", h1_conn).await.unwrap().ok();
    within("h2 connection end", h2_conn).await.unwrap().ok();
    drop((h1, h2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_on_an_idle_proxy_exits_0() {
    let b = TestBackend::start("b").await.unwrap();
    let mut p = Proxy::start(&config(&[(b.addr, 1)], "", ""));
    assert_eq!(get_req(p.addr(), "/").await.status(), 200);
    p.signal(libc::SIGINT);
    assert_eq!(p.wait_exit(PATIENCE), Some(0), "{}", p.stderr());
    assert!(TcpStream::connect(p.addr()).await.is_err());
    assert!(TcpStream::connect(p.admin).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_readiness_and_unknown_paths() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(&[(b.addr, 1)], "", ""));
    assert_eq!(p.admin_get("/healthz").await.0, 200);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let (code, body) = p.admin_get("/no/such/endpoint").await;
    assert_eq!(code, 404, "{body}");
    let (code, _) = admin_post(&p, "/no/such/endpoint", None).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_shows_generation_listeners_pools_and_in_flight() {
    let gated = gated_backend().await;
    let p = Proxy::start(&config(&[(gated.addr, 1)], "", ""));
    let s = status_json(&p).await;
    assert_eq!(s["generation"], 1, "{s:#}");
    let listeners = s["listeners"].as_array().expect("listeners array");
    assert!(
        listeners
            .iter()
            .any(|l| l["name"] == "http" && l["address"] == p.addr().to_string()),
        "{s:#}"
    );
    let pools = s["pools"].as_array().expect("pools array");
    assert_eq!(pools.len(), 1, "{s:#}");
    assert_eq!(pools[0]["name"], "web");
    let backends = pools[0]["backends"].as_array().expect("backends array");
    assert_eq!(backends.len(), 1, "{s:#}");
    assert_eq!(backends[0]["address"], gated.addr.to_string(), "{s:#}");
    assert_eq!(backends[0]["in_flight"], 0, "{s:#}");

    // Hold two requests at the backend: /status counts them in flight, then none.
    let addr = p.addr();
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(spawn_get(addr, &format!("/held/{i}")));
    }
    assert!(
        eventually(PATIENCE, || async { gated.hits() == 2 }).await,
        "the requests did not reach the backend"
    );
    let s = status_json(&p).await;
    assert_eq!(s["pools"][0]["backends"][0]["in_flight"], 2, "{s:#}");
    gated.set_mode(Mode::Normal);
    for h in held {
        let r = within("held request", h).await.unwrap().expect("held request");
        assert_eq!(r.status(), 200);
    }
    assert!(
        eventually(PATIENCE, || async {
            status_json(&p).await["pools"][0]["backends"][0]["in_flight"] == 0
        })
        .await,
        "in_flight does not return to 0: {:#}",
        status_json(&p).await
    );
}

/// A config routing everything to `backend`, with optional extra [admin] lines.
fn reload_config(backend: SocketAddr, admin_extra: &str) -> String {
    Config::proxy(&[backend])
        .admin(admin_extra)
        .log("access = \"stdout\"")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_swaps_routing_and_bumps_the_generation() {
    let one = TestBackend::start("one").await.unwrap();
    let two = TestBackend::start("two").await.unwrap();
    let p = Proxy::start(&reload_config(one.addr, ""));
    assert_eq!(echo(&get_req(p.addr(), "/a").await)["backend"], "one");

    std::fs::write(&p.config_path, reload_config(two.addr, "")).unwrap();
    let (code, body) = admin_post(&p, "/reload", None).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON reload result");
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["generation"], 2, "{v:#}");
    assert_eq!(v["errors"].as_array().map(|e| e.len()), Some(0), "{v:#}");

    for i in 0..4 {
        let r = get_req(p.addr(), &format!("/b/{i}")).await;
        assert_eq!(echo(&r)["backend"], "two");
    }
    let s = status_json(&p).await;
    assert_eq!(s["generation"], 2, "{s:#}");
    assert_eq!(s["pools"][0]["backends"][0]["address"], two.addr.to_string());
    assert_eq!(p.metric_sum("waypost_config_generation", &[]).await, 2.0);
    assert_eq!(
        p.metric_sum("waypost_config_reloads_total", &[("result", "success")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_with_a_broken_file_keeps_the_old_routing() {
    let one = TestBackend::start("one").await.unwrap();
    let two = TestBackend::start("two").await.unwrap();
    let p = Proxy::start(&reload_config(one.addr, ""));
    assert_eq!(echo(&get_req(p.addr(), "/a").await)["backend"], "one");

    // Points at the other backend, but the route names a pool that does not exist.
    let broken = reload_config(two.addr, "").replace("pool = \"web\"", "pool = \"missing\"");
    std::fs::write(&p.config_path, broken).unwrap();
    let (code, body) = admin_post(&p, "/reload", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {code} {body}"));
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["generation"], 1, "{v:#}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("route[0].pool") && e.contains("missing") && e.contains("line")),
        "errors should name the key path, the value and the line: {errors:?}"
    );
    assert_ne!(code, 200, "a failed reload should not answer 200");

    for i in 0..4 {
        let r = get_req(p.addr(), &format!("/b/{i}")).await;
        assert_eq!(echo(&r)["backend"], "one", "the old routing keeps serving");
    }
    assert_eq!(two.hits(), 0);
    let s = status_json(&p).await;
    assert_eq!(s["generation"], 1, "{s:#}");
    assert_eq!(
        p.metric_sum("waypost_config_reloads_total", &[("result", "failure")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_needs_the_bearer_token_when_token_file_is_set() {
    let one = TestBackend::start("one").await.unwrap();
    let two = TestBackend::start("two").await.unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let token_path = secrets.path().join("admin.token");
    std::fs::write(&token_path, "s3cret-t0ken\n").unwrap();
    let admin_extra = format!("token_file = \"{}\"", token_path.display());
    let p = Proxy::start(&reload_config(one.addr, &admin_extra));

    // Health and metrics stay open; the state in /status needs the token too.
    assert_eq!(p.admin_get("/healthz").await.0, 200);
    assert_eq!(p.admin_get("/metrics").await.0, 200);
    assert_eq!(p.admin_get("/status").await.0, 401);
    let status_with = |token: &'static str| {
        let admin = p.admin;
        async move {
            let r = send(
                admin,
                Request::get("/status")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            (r.status().as_u16(), String::from_utf8_lossy(r.body()).into_owned())
        }
    };
    assert_eq!(status_with("wrong-token").await.0, 401);
    let generation = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap()["generation"].clone();

    std::fs::write(&p.config_path, reload_config(two.addr, &admin_extra)).unwrap();
    let (code, body) = admin_post(&p, "/reload", None).await;
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = admin_post(&p, "/reload", Some("wrong-token")).await;
    assert_eq!(code, 401, "wrong token: {body}");
    // A prefix of the token is not the token.
    let (code, body) = admin_post(&p, "/reload", Some("s3cret")).await;
    assert_eq!(code, 401, "a prefix of the token: {body}");
    let (code, body) = status_with("s3cret-t0ken").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(generation(body), 1);
    let (code, body) = admin_post(&p, "/reload", Some("s3cret-t0ken")).await;
    assert_eq!(code, 200, "right token: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["generation"], 2, "{v:#}");
    assert_eq!(echo(&get_req(p.addr(), "/").await)["backend"], "two");
    assert!(
        !p.stderr().contains("s3cret-t0ken") && !status_with("s3cret-t0ken").await.1.contains("s3cret"),
        "the token leaked into the log or /status"
    );
}
