//! Route rate limits through the real binary (one instance, no Redis): 429 with Retry-After and
//! the RateLimit fields, the metric and the access log flag, keys by header, cookie and
//! forwarded client address (IPv6 by prefix), a limit shared by name, reloads, and a flood of
//! distinct keys that leaves the table at its size.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);

fn config(backend: SocketAddr, top: &str, routes: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[log]
access = "stdout"

{top}

[[listener]]
name = "http"
bind = "127.0.0.1:0"

[[pool]]
name = "web"
backends = [{{ address = "{backend}" }}]

{routes}
"#
    )
}

fn one_route(limits: &str) -> String {
    format!("[[route]]\nname = \"all\"\npath_prefix = \"/\"\npool = \"web\"\n{limits}")
}

/// A kept-alive HTTP/1.1 connection, for many requests in a row.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { sender, addr }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
        let mut b = Request::get(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.sender.ready().await.expect("connection ready");
        let resp = self
            .sender
            .send_request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .expect("request");
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.collect().await.expect("body").to_bytes())
    }

    async fn status(&mut self, path: &str, headers: &[(&str, &str)]) -> u16 {
        self.get(path, headers).await.status().as_u16()
    }
}

fn header<'a>(r: &'a Response<Bytes>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers()))
        .to_str()
        .unwrap()
}

async fn reload(p: &Proxy, cfg: &str) {
    std::fs::write(&p.config_path, cfg).unwrap();
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

async fn status_json(p: &Proxy) -> serde_json::Value {
    let (code, body) = p.admin_get("/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_429_with_retry_after_the_ratelimit_fields_a_metric_and_a_log_flag() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(
        b.addr,
        "",
        &one_route("[[route.limit]]\nname = \"per-ip\"\nrate = 1\nper = \"10s\"\nburst = 3"),
    ));
    let mut c = Conn::open(p.addr()).await;
    for i in 0..3 {
        assert_eq!(c.status("/x", &[]).await, 200, "request {i} is within the burst");
    }
    let r = c.get("/refused", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.body().as_ref(), b"429 too many requests, retry later\n");
    let retry: u64 = header(&r, "retry-after").parse().expect("Retry-After is delay-seconds");
    assert!((1..=10).contains(&retry), "one request per 10 s: {retry}");
    assert_eq!(header(&r, "ratelimit-policy"), "\"per-ip\";q=1;w=10");
    let state = header(&r, "ratelimit");
    let t: u64 = state
        .strip_prefix("\"per-ip\";r=0;t=")
        .unwrap_or_else(|| panic!("RateLimit: {state}"))
        .parse()
        .unwrap();
    assert!((retry..=30).contains(&t), "the burst of 3 is back within 30 s: t={t}");
    assert_eq!(header(&r, "via"), "1.1 waypost");
    assert_eq!(b.hits(), 3, "the refused request never reached the backend");

    let series = "waypost_ratelimited_total{route=\"all\",limit=\"per-ip\"}";
    assert!(
        eventually(PATIENCE, || async { p.metric(series).await == Some(1.0) }).await,
        "{series} = {:?}",
        p.metric(series).await
    );
    let ok = eventually(PATIENCE, || async {
        p.stdout_lines().iter().any(|l| l.contains("/refused"))
    })
    .await;
    assert!(ok, "no log line for the refused request: {:?}", p.stdout_lines());
    let line = p.stdout_lines().into_iter().find(|l| l.contains("/refused")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 429, "{v}");
    assert_eq!(v["route"], "all", "{v}");
    assert_eq!(v["flags"], serde_json::json!(["rate_limited"]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_by_header_cookie_and_forwarded_client_address_with_an_ipv6_prefix() {
    let b = TestBackend::start("b").await.unwrap();
    let routes = r#"
[[route]]
name = "api"
path_prefix = "/api/"
pool = "web"
[[route.limit]]
name = "token"
rate = 1
per = "1m"
burst = 1
key = "header:x-api-key"

[[route]]
name = "session"
path_prefix = "/s/"
pool = "web"
[[route.limit]]
name = "sid"
rate = 1
per = "1m"
burst = 1
key = ["cookie:sid"]

[[route]]
name = "site"
path_prefix = "/"
pool = "web"
[[route.limit]]
name = "client"
rate = 1
per = "1m"
burst = 1
key = "client_ip"
ipv6_prefix = 64
"#;
    let p = Proxy::start(&config(b.addr, "[geo]\ntrusted_proxies = [\"127.0.0.0/8\"]", routes));
    let mut c = Conn::open(p.addr()).await;
    // By header: each token its own budget; no header, not counted.
    assert_eq!(c.status("/api/a", &[("x-api-key", "k1")]).await, 200);
    assert_eq!(c.status("/api/a", &[("x-api-key", "k1")]).await, 429);
    assert_eq!(c.status("/api/a", &[("x-api-key", "k2")]).await, 200);
    assert_eq!(c.status("/api/a", &[]).await, 200);
    assert_eq!(c.status("/api/a", &[]).await, 200);
    // By cookie, found among several.
    assert_eq!(c.status("/s/", &[("cookie", "a=1; sid=one")]).await, 200);
    assert_eq!(c.status("/s/", &[("cookie", "sid=one; b=2")]).await, 429);
    assert_eq!(c.status("/s/", &[("cookie", "sid=two")]).await, 200);
    // By client address: the peer (loopback) is a trusted proxy, so X-Forwarded-For names the
    // client; IPv6 clients of one /64 are one client.
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(c.status("/", &xff("203.0.113.5")).await, 200);
    assert_eq!(c.status("/", &xff("203.0.113.5")).await, 429);
    assert_eq!(c.status("/", &xff("203.0.113.6")).await, 200);
    assert_eq!(
        c.status("/", &xff("198.51.100.1, 203.0.113.6")).await,
        429,
        "the right-most untrusted entry is the client"
    );
    assert_eq!(c.status("/", &xff("2001:db8::1")).await, 200);
    assert_eq!(c.status("/", &xff("2001:db8::ffff:2")).await, 429, "same /64");
    assert_eq!(c.status("/", &xff("2001:db8:0:1::1")).await, 200, "another /64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_shared_by_name_counts_every_route_that_names_it() {
    let b = TestBackend::start("b").await.unwrap();
    let routes = r#"
[[route]]
name = "a"
path_prefix = "/a/"
pool = "web"
[[route.limit]]
name = "shared"
rate = 1
per = "1m"
burst = 2

[[route]]
name = "b"
path_prefix = "/b/"
pool = "web"
[[route.limit]]
name = "shared"

[[route]]
name = "c"
path_prefix = "/c/"
pool = "web"
[[route.limit]]
name = "own"
rate = 1
per = "1m"
burst = 1
[[route.limit]]
name = "whole-route"
rate = 1
per = "1m"
burst = 3
key = "route"
"#;
    let p = Proxy::start(&config(b.addr, "", routes));
    let mut c = Conn::open(p.addr()).await;
    assert_eq!(c.status("/a/", &[]).await, 200);
    assert_eq!(c.status("/b/", &[]).await, 200);
    assert_eq!(c.status("/a/", &[]).await, 429, "route b used the shared burst too");
    assert_eq!(c.status("/b/", &[]).await, 429);
    assert_eq!(c.status("/c/", &[]).await, 200, "another limit has its own count");
    assert_eq!(c.status("/c/", &[]).await, 429);
    let a = "waypost_ratelimited_total{route=\"a\",limit=\"shared\"}";
    let bb = "waypost_ratelimited_total{route=\"b\",limit=\"shared\"}";
    let own = "waypost_ratelimited_total{route=\"c\",limit=\"own\"}";
    assert!(
        eventually(PATIENCE, || async {
            p.metric(a).await == Some(1.0) && p.metric(bb).await == Some(1.0) && p.metric(own).await == Some(1.0)
        })
        .await,
        "{:?} {:?} {:?}",
        p.metric(a).await,
        p.metric(bb).await,
        p.metric(own).await
    );
    let s = status_json(&p).await;
    let names: Vec<&str> = s["ratelimit"]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shared", "own", "whole-route"], "one table per name: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_limit_and_applies_a_changed_one() {
    let b = TestBackend::start("b").await.unwrap();
    let limit = |burst: u32| format!("[[route.limit]]\nname = \"per-ip\"\nrate = 1\nper = \"1m\"\nburst = {burst}");
    let p = Proxy::start(&config(b.addr, "", &one_route(&limit(2))));
    let mut c = Conn::open(p.addr()).await;
    assert_eq!(c.status("/", &[]).await, 200);
    assert_eq!(c.status("/", &[]).await, 200);
    assert_eq!(c.status("/", &[]).await, 429);
    // Same limit, another change in the file: the counts carry over.
    reload(&p, &config(b.addr, "[dns]\nmin_ttl = \"2s\"", &one_route(&limit(2)))).await;
    let mut c = Conn::open(p.addr()).await;
    assert_eq!(c.status("/", &[]).await, 429, "the reload did not hand out a new burst");
    // A changed limit starts afresh with its new settings.
    reload(&p, &config(b.addr, "", &one_route(&limit(4)))).await;
    let mut c = Conn::open(p.addr()).await;
    for i in 0..4 {
        assert_eq!(c.status("/", &[]).await, 200, "request {i} within the new burst");
    }
    assert_eq!(c.status("/", &[]).await, 429);
    // And removing it lifts it.
    reload(&p, &config(b.addr, "", &one_route(""))).await;
    let mut c = Conn::open(p.addr()).await;
    assert_eq!(c.status("/", &[]).await, 200);
    let s = status_json(&p).await;
    assert_eq!(s["ratelimit"]["limits"], serde_json::json!([]), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_leaves_the_table_at_its_size() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&config(
        b.addr,
        "",
        &one_route("[[route.limit]]\nname = \"per-key\"\nrate = 1\nper = \"1m\"\nburst = 1\nkey = \"header:x-key\"\nmax_keys = 256"),
    ));
    let before = status_json(&p).await["ratelimit"]["limits"][0].clone();
    assert_eq!(before["capacity"], 256, "{before}");
    let rss_before = p.rss_kib();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Conn::open(p.addr()).await);
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(t, mut c)| {
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..5_000 {
                    let key = format!("k{t}-{i}");
                    if c.status("/", &[("x-key", &key)]).await != 200 {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, 0, "every new key has its burst of one");
    let after = status_json(&p).await["ratelimit"]["limits"][0].clone();
    assert_eq!(after["capacity"], 256, "{after}");
    assert_eq!(
        after["memory_bytes"], before["memory_bytes"],
        "the table never grew: {after}"
    );
    let keys = after["keys"].as_u64().unwrap();
    assert!(keys <= 256, "20000 keys seen, at most 256 kept: {after}");
    assert!(after["evictions"].as_u64().unwrap() >= 20_000 - 256, "{after}");
    // The process did not grow by anything like a table of 20000 keys per request either.
    let rss_after = p.rss_kib();
    eprintln!("rss before {rss_before} KiB, after 20000 distinct keys {rss_after} KiB; table {after}");
}
