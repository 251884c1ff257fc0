//! A waypost with something in every section of the status page and of `waypost status`:
//! an admin token, a plain and a TLS listener (its certificate expiring in 10 days), two
//! health-checked pools in two data centers behind a geo route, a cached route, traffic, and
//! one failed reload. Shared by tests/status_page.rs and tests/status_cli.rs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

pub const TOKEN: &str = "ops-test-token-5d1f0a";

pub struct Rich {
    pub proxy: Proxy,
    /// web-eu: two backends; web-us: one.
    pub eu: Vec<TestBackend>,
    pub us: TestBackend,
    pub dir: tempfile::TempDir,
    pub cert_file: PathBuf,
}

impl Rich {
    pub fn eu_addr(&self, i: usize) -> SocketAddr {
        self.eu[i].addr
    }
}

/// A server certificate for "localhost" that expires `days` from now: (cert, key) files.
fn short_lived_cert(dir: &std::path::Path, days: i64) -> (PathBuf, PathBuf) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // "YYYY-MM-DD HH:MMZ" of the expiry day.
    let date = waypost::admin::cli::utc(now + days as f64 * 86_400.0);
    let ymd: Vec<i32> = date[..10].split('-').map(|p| p.parse().unwrap()).collect();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    params.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let c = dir.join("site.crt");
    let k = dir.join("site.key");
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

pub fn config(eu: &[SocketAddr], us: SocketAddr, token_file: &str, cert: &str, key: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
token_file = "{token_file}"

[log]
access = "off"

[[listener]]
name = "http"
bind = "127.0.0.1:0"

[[listener]]
name = "https"
bind = "127.0.0.1:0"
[listener.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[geo]
trusted_proxies = ["127.0.0.0/8"]
region_header = "x-region"
default_region = "eu"
[geo.regions]
eu = ["127.0.1.0/24"]
na = ["127.0.2.0/24"]

[[datacenter]]
name = "eu-west"
regions = ["eu"]
failover = ["us-east"]

[[datacenter]]
name = "us-east"
regions = ["na"]
failover = ["eu-west"]

[cache]
max_size = "16MiB"

[[pool]]
name = "web-eu"
datacenter = "eu-west"
backends = [{{ address = "{eu0}", weight = 2 }}, {{ address = "{eu1}" }}]
slow_start = "10s"
[pool.health]
path = "/healthz"
interval = "200ms"
timeout = "500ms"
rise = 1
fall = 1

[[pool]]
name = "web-us"
datacenter = "us-east"
backends = [{{ address = "{us}" }}]
[pool.health]
path = "/healthz"
interval = "200ms"
timeout = "500ms"
rise = 1
fall = 1

[[route]]
name = "assets"
path_prefix = "/assets/"
pool = "web-eu"
[route.cache]
default_ttl = "60s"

[[route]]
name = "app"
path_prefix = "/"
pools = ["web-eu", "web-us"]
{extra}
"#,
        eu0 = eu[0],
        eu1 = eu[1],
    )
}

/// GET an admin path with the token.
pub async fn admin_get(p: &Proxy, path: &str) -> (u16, String) {
    let r = send(
        p.admin,
        Request::get(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    (r.status().as_u16(), String::from_utf8_lossy(r.body()).into_owned())
}

pub async fn status(p: &Proxy) -> serde_json::Value {
    let (code, body) = admin_get(p, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The state /status gives one backend.
pub async fn backend_state(p: &Proxy, addr: SocketAddr) -> String {
    let st = status(p).await;
    for pool in st["pools"].as_array().unwrap() {
        for b in pool["backends"].as_array().unwrap() {
            if b["address"] == addr.to_string() {
                return b["state"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("{addr} not in /status: {st}");
}

pub async fn start() -> Rich {
    start_with("").await
}

/// POST an admin path with the token and a JSON body.
pub async fn admin_post(p: &Proxy, path: &str, body: &str) -> (u16, String) {
    let r = send(
        p.admin,
        Request::post(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await;
    (r.status().as_u16(), String::from_utf8_lossy(r.body()).into_owned())
}

/// One failed TLS handshake on the https listener: plain HTTP sent to it.
pub async fn tls_handshakes(p: &Proxy) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(p.listeners["https"]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
}

/// `start` with more TOML appended to the config (pools, routes).
pub async fn start_with(extra: &str) -> Rich {
    let eu = vec![
        TestBackend::start("eu-1").await.unwrap(),
        TestBackend::start("eu-2").await.unwrap(),
    ];
    let us = TestBackend::start("us-1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (cert, key) = short_lived_cert(dir.path(), 10);
    let cfg = config(
        &[eu[0].addr, eu[1].addr],
        us.addr,
        &token_file.display().to_string(),
        &cert.display().to_string(),
        &key.display().to_string(),
        extra,
    );
    let proxy = Proxy::start(&cfg);
    let rich = Rich {
        proxy,
        eu,
        us,
        dir,
        cert_file: cert,
    };
    // Every backend checked up before traffic starts.
    for addr in [rich.eu[0].addr, rich.eu[1].addr, rich.us.addr] {
        assert!(
            eventually(Duration::from_secs(10), || async {
                backend_state(&rich.proxy, addr).await == "up"
            })
            .await,
            "{addr} never came up: {}",
            status(&rich.proxy).await
        );
    }
    traffic(&rich.proxy).await;
    // One broken reload: the config file gains an unknown key, then is put back.
    // Both writes replace the file by rename: the config watcher never sees it half written.
    let path = rich.proxy.config_path.clone();
    let replace = |text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let good = std::fs::read_to_string(&path).unwrap();
    replace(&format!("{good}\ncolour = \"red\"\n"));
    let r = send(
        rich.proxy.admin,
        Request::post("/reload")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 422, "{:?}", r.body());
    replace(&good);
    rich
}

/// Requests of every kind: cached misses and hits, both regions, a 5xx, an unrouted one.
pub async fn traffic(p: &Proxy) {
    let addr = p.addr();
    for i in 0..3 {
        for _ in 0..3 {
            let r = get(addr, &format!("/assets/app-{i}.css")).await;
            assert_eq!(r.status(), 200);
        }
    }
    for region in ["eu", "na", "eu"] {
        let r = send(
            addr,
            Request::get("/page")
                .header("x-region", region)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let r = send(
        addr,
        Request::get("/broken")
            .header("x-test-status", "503")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 503);
}
