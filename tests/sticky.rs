//! Sticky sessions by signed cookie and consistent hashing with bounded load, through the real
//! binary: pinning, tampering, failover (strict and not), two instances sharing a key, key
//! stability across reloads, minimal remapping, and a hot key that cannot overload its shard.
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn sticky_config(addrs: &[SocketAddr], secret: &std::path::Path, strict: bool, pool_extra: &str) -> String {
    Config::new()
        .log("access = \"off\"")
        .table(&format!("[session]\nsecret_file = \"{}\"", secret.display()))
        .listener("http", "127.0.0.1:0", "")
        .pool("web", addrs, pool_extra)
        .route(
            "app",
            &format!(
                "path_prefix = \"/\"\npool = \"web\"\n[route.sticky]\ncookie = \"affinity\"\nmax_age = \"1h\"\nstrict = {strict}"
            ),
        )
        .build()
}

fn secret_file(dir: &tempfile::TempDir, name: &str, byte: u8) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, [byte; 48]).unwrap();
    p
}

async fn get_with_cookie(addr: SocketAddr, cookie: Option<&str>) -> http::Response<Bytes> {
    let mut b = Request::get("/").header("host", "app.test");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("theme=dark; affinity={c}; other=1"));
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// The `affinity` cookie value a response sets, if any.
fn set_cookie(r: &http::Response<Bytes>) -> Option<String> {
    let v = r.headers().get("set-cookie")?.to_str().ok()?;
    assert!(
        v.contains("HttpOnly") && v.contains("SameSite=Lax") && v.contains("Path=/") && v.contains("Max-Age=3600"),
        "{v}"
    );
    v.strip_prefix("affinity=")?.split(';').next().map(str::to_string)
}

async fn three_backends() -> Vec<TestBackend> {
    let mut v = Vec::new();
    for n in ["b0", "b1", "b2"] {
        v.push(TestBackend::start(n).await.unwrap());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_pins_a_thousand_requests_to_one_backend_and_reveals_no_address() {
    let bs = three_backends().await;
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&sticky_config(&addrs, &secret_file(&dir, "k", 7), false, ""));
    let first = get_with_cookie(p.addr(), None).await;
    let cookie = set_cookie(&first).expect("a new client gets a cookie");
    for a in &addrs {
        for needle in [a.to_string(), a.port().to_string()] {
            assert!(!cookie.contains(&needle), "the cookie reveals the backend: {cookie}");
        }
    }
    let pinned = echo(&first)["backend"].as_str().unwrap().to_string();
    for _ in 0..999 {
        let r = get_with_cookie(p.addr(), Some(&cookie)).await;
        assert_eq!(echo(&r)["backend"], pinned.as_str());
        assert!(set_cookie(&r).is_none(), "a valid cookie is not re-issued");
    }
    assert_eq!(
        p.metric("waypost_sticky_requests_total{route=\"app\",result=\"hit\"}")
            .await,
        Some(999.0)
    );
    assert_eq!(
        p.metric("waypost_sticky_requests_total{route=\"app\",result=\"new\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cookie_is_ignored_and_replaced() {
    let bs = three_backends().await;
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&sticky_config(&addrs, &secret_file(&dir, "k", 7), false, ""));
    let cookie = set_cookie(&get_with_cookie(p.addr(), None).await).unwrap();
    let mut chars: Vec<char> = cookie.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let r = get_with_cookie(p.addr(), Some(&tampered)).await;
    assert_eq!(r.status(), 200);
    let fresh = set_cookie(&r).expect("a tampered cookie is replaced");
    assert_ne!(fresh, tampered);
    assert_eq!(get_with_cookie(p.addr(), Some("garbage!!")).await.status(), 200);
    let rejected = p
        .metric("waypost_sticky_cookies_rejected_total{route=\"app\",reason=\"bad_signature\"}")
        .await
        .unwrap_or(0.0)
        + p.metric("waypost_sticky_cookies_rejected_total{route=\"app\",reason=\"malformed\"}")
            .await
            .unwrap_or(0.0);
    assert_eq!(rejected, 2.0, "both bad cookies are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_moves_the_client_or_answers_503_when_strict() {
    for strict in [false, true] {
        let bs = three_backends().await;
        let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
        let dir = tempfile::tempdir().unwrap();
        let health = "[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1";
        let p = Proxy::start(&sticky_config(&addrs, &secret_file(&dir, "k", 9), strict, health));
        let first = get_with_cookie(p.addr(), None).await;
        let cookie = set_cookie(&first).unwrap();
        let pinned = echo(&first)["backend"].as_str().unwrap().to_string();
        let victim = bs.iter().find(|b| b.name() == pinned).unwrap();
        victim.set_mode(Mode::Status(503));
        // The health check (200-399 expected) now fails: wait until the proxy stops using it.
        let moved = eventually(Duration::from_secs(10), || async {
            let r = get_with_cookie(p.addr(), Some(&cookie)).await;
            if strict {
                r.status() == 503 && r.headers().contains_key("retry-after")
            } else {
                r.status() == 200 && echo(&r)["backend"] != pinned.as_str() && set_cookie(&r).is_some()
            }
        })
        .await;
        assert!(moved, "strict = {strict}: the client was not handled as expected");
        if !strict {
            assert!(
                p.metric("waypost_sticky_requests_total{route=\"app\",result=\"moved\"}")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_key_honour_each_others_cookies() {
    let bs = three_backends().await;
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let shared = secret_file(&dir, "shared", 3);
    let one = Proxy::start(&sticky_config(&addrs, &shared, false, ""));
    let two = Proxy::start(&sticky_config(&addrs, &shared, false, ""));
    let other = Proxy::start(&sticky_config(&addrs, &secret_file(&dir, "other", 4), false, ""));
    for _ in 0..5 {
        let r = get_with_cookie(one.addr(), None).await;
        let cookie = set_cookie(&r).unwrap();
        let pinned = echo(&r)["backend"].clone();
        for _ in 0..10 {
            let r2 = get_with_cookie(two.addr(), Some(&cookie)).await;
            assert_eq!(
                echo(&r2)["backend"],
                pinned,
                "the other instance must honour the cookie"
            );
            assert!(set_cookie(&r2).is_none());
        }
        let r3 = get_with_cookie(other.addr(), Some(&cookie)).await;
        assert!(
            set_cookie(&r3).is_some(),
            "an instance with another key must not trust it"
        );
    }
    assert_eq!(
        other
            .metric("waypost_sticky_cookies_rejected_total{route=\"app\",reason=\"bad_signature\"}")
            .await,
        Some(5.0)
    );
}

fn hash_config(addrs: &[SocketAddr], extra_route: bool, factor: Option<f64>) -> String {
    let factor = factor.map(|f| format!("hash_balance_factor = {f}")).unwrap_or_default();
    let mut c = Config::new()
        .log("access = \"off\"")
        .listener("http", "127.0.0.1:0", "")
        .pool(
            "shards",
            addrs,
            &format!(
                "balance = \"consistent_hash\"\nhash_key = \"header:x-user-id\"\n{factor}\nresponse_timeout = \"30s\""
            ),
        )
        .route("app", "path_prefix = \"/\"\npool = \"shards\"");
    if extra_route {
        c = c.route("other", "path = \"/other\"\npool = \"shards\"");
    }
    c.build()
}

async fn owner(addr: SocketAddr, key: &str) -> String {
    let r = send(
        addr,
        Request::get("/")
            .header("x-user-id", key)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    echo(&r)["backend"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_on_their_backend_across_requests_and_reloads_and_removal_moves_few() {
    let mut bs = Vec::new();
    for i in 0..5 {
        bs.push(TestBackend::start(&format!("s{i}")).await.unwrap());
    }
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let p = Proxy::start(&hash_config(&addrs, false, None));
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let mut before = HashMap::new();
    for k in &keys {
        before.insert(k.clone(), owner(p.addr(), k).await);
    }
    let spread: std::collections::HashSet<_> = before.values().collect();
    assert_eq!(spread.len(), 5, "keys should spread over every backend");
    for k in keys.iter().take(50) {
        assert_eq!(
            owner(p.addr(), k).await,
            before[k],
            "a key changed backend between requests"
        );
    }
    // A reload that changes something else keeps every key in place.
    std::fs::write(&p.config_path, hash_config(&addrs, true, None)).unwrap();
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status(), 200);
    for k in &keys {
        assert_eq!(owner(p.addr(), k).await, before[k], "a key moved across a reload");
    }
    // Removing one of five backends moves only its keys (about a fifth).
    std::fs::write(&p.config_path, hash_config(&addrs[..4], true, None)).unwrap();
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status(), 200);
    let mut moved = 0;
    for k in &keys {
        let now = owner(p.addr(), k).await;
        if now != before[k] {
            moved += 1;
            assert_eq!(before[k], "s4", "only keys of the removed backend may move ({k})");
        }
    }
    // Exactly the removed backend's keys moved (how many it had depends on where its random
    // port put it on the ring: about a fifth).
    let had = keys.iter().filter(|k| before[*k] == "s4").count();
    assert_eq!(moved, had, "{moved} of {} keys moved; s4 had {had}", keys.len());
    // Requests without the key are spread round robin.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..12 {
        seen.insert(echo(&get(p.addr(), "/").await)["backend"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 4, "keyless requests should use every backend: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_cannot_overload_its_shard() {
    let mut bs = Vec::new();
    for i in 0..4 {
        bs.push(TestBackend::start(&format!("s{i}")).await.unwrap());
    }
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let factor = 1.25;
    let p = Arc::new(Proxy::start(&hash_config(&addrs, false, Some(factor))));
    const N: usize = 40;
    let mut reqs = Vec::new();
    for _ in 0..N {
        let addr = p.addr();
        reqs.push(tokio::spawn(async move {
            let req = Request::get("/")
                .header("x-user-id", "celebrity")
                .header("x-test-delay", "400ms");
            send(addr, req.body(Full::new(Bytes::new())).unwrap()).await
        }));
    }
    // Counted at the backends: how many each answers at once, and all of them together.
    let mut peak_total = 0;
    while reqs.iter().any(|r| !r.is_finished()) {
        peak_total = peak_total.max(bs.iter().map(|b| b.in_flight()).sum::<u64>());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut served = std::collections::HashSet::new();
    for r in reqs {
        let r = r.await.unwrap();
        assert_eq!(r.status(), 200);
        served.insert(echo(&r)["backend"].as_str().unwrap().to_string());
    }
    assert_eq!(bs.iter().map(|b| b.hits()).sum::<u64>(), N as u64);
    assert!(
        peak_total >= 10,
        "the load never built up ({peak_total} in flight): the test proves nothing"
    );
    // The cap is factor x the mean load (+1), the mean taken over what is in flight; with at
    // most N in flight, no backend may ever have held more than this.
    let cap = (factor * N as f64 / bs.len() as f64).ceil() as u64 + 1;
    for b in &bs {
        assert!(
            b.max_in_flight() <= cap,
            "{} answered {} at once, above the cap of {cap}",
            b.name(),
            b.max_in_flight()
        );
    }
    assert!(
        served.len() >= 3,
        "the hot key should spill over to other shards: {served:?}"
    );
}
