//! Health checking, passive ejection, slow start, panic mode, connection limits and the retry
//! budget, through the real binary with real backends on loopback.
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn pool_config(backends: &[SocketAddr], pool_extra: &str) -> String {
    simple_config(backends, pool_extra)
}

async fn status(p: &Proxy) -> serde_json::Value {
    let (code, body) = p.admin_get("/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("status is JSON")
}

async fn backend_state(p: &Proxy, addr: SocketAddr) -> serde_json::Value {
    let s = status(p).await;
    s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in {s}"))
}

/// Issue GETs one after another until `stop` resolves; returns (ok, failed).
async fn steady_gets(addr: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut failed = Vec::new();
    while !*stop.borrow() {
        match try_send(addr, Request::get("/").body(Full::new(Bytes::new())).unwrap()).await {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failed.push(format!("{} {}", r.status(), String::from_utf8_lossy(r.body()))),
            Err(e) => failed.push(e),
        }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_rotation_without_failed_requests_and_rejoins_with_slow_start() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let c = TestBackend::start("c").await.unwrap();
    let c_addr = c.addr;
    let p = Proxy::start(&pool_config(
        &[a.addr, b.addr, c.addr],
        r#"slow_start = "20s"
[pool.health]
path = "/healthz"
interval = "100ms"
timeout = "100ms"
rise = 2
fall = 2"#,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(steady_gets(p.addr(), stop_rx));
    // The load is flowing through all three before one dies.
    assert!(
        eventually(PATIENCE, || async { a.hits() > 3 && b.hits() > 3 && c.hits() > 3 }).await,
        "the load never reached every backend"
    );

    c.kill();
    assert!(
        eventually(Duration::from_secs(10), || async {
            backend_state(&p, c_addr).await["state"] == "down"
        })
        .await,
        "the dead backend was never marked down"
    );
    let up = p
        .metric(&format!("waypost_backend_up{{pool=\"web\",backend=\"{c_addr}\"}}"))
        .await;
    assert_eq!(up, Some(0.0));

    let c2 = TestBackend::start_on(c_addr, "c-again").await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            backend_state(&p, c_addr).await["state"] == "up"
        })
        .await,
        "the revived backend never rejoined"
    );
    // Read at once after it rejoined: well inside the 20 s ramp.
    let ramping = backend_state(&p, c_addr).await;
    let pct = ramping["slow_start_percent"]
        .as_f64()
        .expect("ramping right after rejoining");
    assert!(pct < 100.0, "{ramping}");
    assert!(
        eventually(Duration::from_secs(10), || async { c2.hits() > 3 }).await,
        "the revived backend never got traffic"
    );
    stop_tx.send(true).unwrap();
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed GETs (of {}): {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "too little traffic to mean anything: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_500s_is_ejected_then_readmitted_with_doubling() {
    let good = TestBackend::start("good").await.unwrap();
    let bad = TestBackend::start("bad").await.unwrap();
    bad.set_mode(Mode::Status(500));
    let p = Proxy::start(&pool_config(
        &[good.addr, bad.addr],
        r#"[pool.passive]
consecutive_failures = 3
eject_for = "1s"
max_ejected_percent = 50"#,
    ));
    let series = format!(
        "waypost_backend_ejections_total{{pool=\"web\",backend=\"{}\"}}",
        bad.addr
    );
    for _ in 0..10 {
        get(p.addr(), "/").await;
    }
    assert_eq!(p.metric(&series).await, Some(1.0));
    let ejected = backend_state(&p, bad.addr).await;
    assert_eq!(ejected["state"], "ejected", "{ejected}");
    // While ejected, no traffic reaches it.
    let hits = bad.hits();
    for _ in 0..10 {
        assert_eq!(get(p.addr(), "/").await.status(), 200);
    }
    assert_eq!(bad.hits(), hits);
    // Readmitted after eject_for; still failing, it is ejected again for twice as long.
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(p.addr(), "/").await;
            p.metric(&series).await == Some(2.0)
        })
        .await,
        "never readmitted and ejected again"
    );
    let again = backend_state(&p, bad.addr).await;
    let left = again["ejected_for_seconds"].as_f64().expect("ejected");
    assert!(left <= 2.0, "second ejection should last 2 s: {again}");
    // How long each ejection was for, as logged when it was decided: 1 s, then twice that.
    let lengths: Vec<String> = p
        .log_lines_with("backend ejected after consecutive failures")
        .iter()
        .filter(|l| l.contains(&bad.addr.to_string()))
        .filter_map(|l| l.split("for_ms=").nth(1)?.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(lengths, ["1000", "2000"], "the ejection back-off doubles");
    assert!(
        good.hits() >= 10,
        "the healthy backend carried the traffic: {}",
        good.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_ejected_percent_of_the_pool_is_ejected() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    a.set_mode(Mode::Status(502));
    b.set_mode(Mode::Status(502));
    let p = Proxy::start(&pool_config(
        &[a.addr, b.addr],
        r#"[pool.passive]
consecutive_failures = 2
eject_for = "30s"
max_ejected_percent = 50"#,
    ));
    for _ in 0..20 {
        get(p.addr(), "/").await;
    }
    let s = status(&p).await;
    let ejected = s["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "ejected")
        .count();
    assert_eq!(ejected, 1, "{s}");
}

fn failing_checks(extra: &str) -> String {
    // The backends answer 200; the check expects 204, so every check fails while requests work.
    format!(
        r#"{extra}
[pool.health]
interval = "100ms"
timeout = "200ms"
fall = 1
rise = 1
expect_status = "204""#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_requests_get_503_with_retry_after() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&pool_config(&[a.addr, b.addr], &failing_checks("panic_threshold = 0")));
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(p.addr(), "/").await.status() == 503
        })
        .await,
        "never went 503"
    );
    let r = get(p.addr(), "/").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(String::from_utf8_lossy(r.body()).lines().count(), 1);
    assert!(
        p.metric("waypost_no_healthy_backend_total{pool=\"web\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_traffic_spreads_over_all_backends() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&pool_config(&[a.addr, b.addr], &failing_checks("panic_threshold = 50")));
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = status(&p).await;
            s["pools"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["state"] == "down")
        })
        .await
    );
    let (ha, hb) = (a.hits(), b.hits());
    for _ in 0..20 {
        assert_eq!(get(p.addr(), "/").await.status(), 200);
    }
    assert!(a.hits() - ha >= 5 && b.hits() - hb >= 5, "panic mode should use both");
    assert!(p.metric("waypost_panic_mode_total{pool=\"web\"}").await.unwrap_or(0.0) >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_connection_limit_queue_and_time_out() {
    let a = TestBackend::start("a").await.unwrap();
    let p = Arc::new(Proxy::start(&pool_config(
        &[a.addr],
        r#"max_connections_per_backend = 1
queue_timeout = "300ms""#,
    )));
    let slow = {
        let addr = p.addr();
        tokio::spawn(async move {
            send(
                addr,
                Request::get("/")
                    .header("x-test-delay", "1500ms")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        })
    };
    assert!(eventually(PATIENCE, || async { a.in_flight() == 1 }).await);
    let r = get(p.addr(), "/").await;
    assert_eq!(r.status(), 503, "{}", String::from_utf8_lossy(r.body()));
    assert_eq!(a.hits(), 1, "the queued request never reached the backend");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(p.metric("waypost_queue_timeouts_total{pool=\"web\"}").await, Some(1.0));
    assert_eq!(slow.await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_served_in_turn_and_the_limit_holds() {
    let a = TestBackend::start("a").await.unwrap();
    let p = Arc::new(Proxy::start(&pool_config(
        &[a.addr],
        r#"max_connections_per_backend = 2
queue_timeout = "20s""#,
    )));
    let mut reqs = Vec::new();
    for _ in 0..6 {
        let addr = p.addr();
        reqs.push(tokio::spawn(async move {
            send(
                addr,
                Request::get("/")
                    .header("x-test-delay", "300ms")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        }));
    }
    // Counted at the backend: two at a time, the other four waited their turn in the queue.
    for r in reqs {
        assert_eq!(r.await.unwrap().status(), 200);
    }
    assert_eq!(a.hits(), 6);
    assert!(a.max_in_flight() <= 2, "limit exceeded: {} at once", a.max_in_flight());
    assert_eq!(
        a.max_in_flight(),
        2,
        "the limit was never reached: nothing had to queue"
    );
    assert_eq!(p.metric("waypost_queue_timeouts_total{pool=\"web\"}").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let a = TestBackend::start("a").await.unwrap();
    let p = Arc::new(Proxy::start(&pool_config(
        &[a.addr],
        r#"max_connections_per_backend = 1
queue_timeout = "20s"
queue_size = 1"#,
    )));
    // The backend holds what reaches it: one in flight, one in the queue, until released.
    a.set_mode(Mode::Hold);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let addr = p.addr();
        slow.push(tokio::spawn(async move { get(addr, "/").await }));
    }
    assert!(
        eventually(PATIENCE, || async {
            a.in_flight() == 1 && backend_state(&p, a.addr).await["queued"] == 1
        })
        .await
    );
    // Answered while the backend still holds the one in flight: the full queue did not make
    // this client wait for a slot (queue_timeout is 20 s).
    let refused = tokio::time::timeout(PATIENCE, get(p.addr(), "/"))
        .await
        .expect("a full queue made the client wait");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        (a.hits(), a.in_flight()),
        (1, 1),
        "the refused request never reached the backend"
    );
    a.set_mode(Mode::Normal);
    for s in slow {
        assert_eq!(s.await.unwrap().status(), 200);
    }
}

/// A backend that accepts, reads a request, waits, then closes without answering: a failure
/// that a GET may be retried after, and slow enough for retries to overlap.
async fn slow_breaking_backend() -> RawBackend {
    RawBackend::replying(b"").wait(Duration::from_millis(400)).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_backend_fails() {
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(slow_breaking_backend().await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let p = Arc::new(Proxy::start(&pool_config(
        &addrs,
        r#"retries = 1
[pool.passive]
consecutive_failures = 0"#,
    )));
    let n = 60;
    let mut reqs = Vec::new();
    for _ in 0..n {
        let addr = p.addr();
        reqs.push(tokio::spawn(async move { get(addr, "/").await.status().as_u16() }));
    }
    for r in reqs {
        assert_eq!(r.await.unwrap(), 502);
    }
    let retries = p.metric("waypost_retries_total{pool=\"web\"}").await.unwrap_or(0.0);
    let refused = p
        .metric("waypost_retry_budget_exhausted_total{pool=\"web\"}")
        .await
        .unwrap_or(0.0);
    assert!(retries <= 3.0 + 0.2 * n as f64, "retries {retries} exceed the budget");
    assert!(refused >= 1.0, "the budget never refused a retry");
    assert!(
        retries >= 3.0,
        "the floor of concurrent retries was not honoured: {retries}"
    );
}
