//! /metrics checked by the real Prometheus toolchain: `promtool check metrics` accepts
//! waypost's exposition after traffic of every kind, and a real Prometheus server scrapes
//! waypost on loopback and reports the target up with waypost_requests_total present.
//!
//! promtool and prometheus come from Debian's `prometheus` package, which the project's test
//! command (`bash .ci/test.sh`) installs when missing.
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::*;

const INSTALL_HINT: &str =
    "run the project's test script, `bash .ci/test.sh`, which installs Debian's `prometheus` package (promtool and prometheus)";

/// A program of the Prometheus toolchain, or a failure that says how to get it.
fn tool(name: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => Command::new(name),
        Ok(out) => panic!(
            "`{name} --version` failed ({}): {}\n{INSTALL_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("`{name}` is not installed ({e}): {INSTALL_HINT}"),
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Two routes, one pool of live backends and one pool whose only backend refuses
/// connections: traffic then fills 2xx, 4xx, 5xx and retry series.
async fn proxy_with_traffic() -> (Proxy, Vec<TestBackend>) {
    let b1 = TestBackend::start("b1").await.unwrap();
    let b2 = TestBackend::start("b2").await.unwrap();
    let dead = free_port();
    let config = Config::new()
        .log("access = \"off\"")
        .listener("http", "127.0.0.1:0", "")
        .weighted_pool("web", &[(b1.addr, 2), (b2.addr, 1)], "")
        .pool_addresses("dead", &[&format!("127.0.0.1:{dead}")], "connect_timeout = \"500ms\"")
        .route(
            "app",
            "host = [\"localhost\", \"*.example.com\"]\npath_prefix = \"/\"\npool = \"web\"",
        )
        .route(
            "down",
            "host = [\"localhost\"]\npath_prefix = \"/down/\"\npool = \"dead\"",
        )
        .build();
    let p = Proxy::start(&config);
    let addr = p.addr();
    for i in 0..10 {
        let r = get_host(addr, "localhost", &format!("/page/{i}")).await;
        assert_eq!(r.status(), 200);
    }
    let r = get_host(addr, "www.example.com", "/x").await;
    assert_eq!(r.status(), 200);
    // A backend's own error status, passed through.
    let r = send(
        addr,
        http::Request::get("/fail")
            .header("host", "localhost")
            .header("x-test-status", "503")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 503);
    // No route for this host: 404.
    let r = get_host(addr, "nowhere.test", "/").await;
    assert_eq!(r.status(), 404);
    // A backend that refuses connections: 502.
    let r = get_host(addr, "localhost", "/down/x").await;
    assert_eq!(r.status(), 502);
    // A POST with a body, and an h2c request.
    let r = send(
        addr,
        http::Request::post("/form")
            .header("host", "localhost")
            .body(Full::new(Bytes::from_static(b"a=1")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send_h2(
        addr,
        http::Request::get(format!("http://localhost:{}/h2", addr.port()))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    (p, vec![b1, b2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_accepts_the_metrics_after_traffic() {
    let mut promtool = tool("promtool");
    let (p, _backends) = proxy_with_traffic().await;
    let (status, text) = p.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "waypost_requests_total{",
        "waypost_request_duration_seconds_bucket{",
        "waypost_upstream_requests_total{",
        "waypost_upstream_duration_seconds_bucket{",
        "waypost_backend_up{",
        "waypost_backend_in_flight{",
        "waypost_connections_total{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "no {series}...}} series in /metrics:\n{text}"
        );
    }

    let mut child = promtool
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// A Prometheus server run by the test; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Start Prometheus scraping `target` every second as job "waypost".
    fn start(target: SocketAddr) -> Prometheus {
        let mut last_log = String::new();
        // The free port may be taken between our probe and Prometheus's bind: try a few.
        for _ in 0..3 {
            let mut cmd = tool("prometheus");
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: waypost
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["{target}"]
"#
                ),
            )
            .expect("write prometheus.yml");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = dir.path().join("prometheus.log");
            let log_file = std::fs::File::create(&log).expect("create log");
            let child = cmd
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log"))
                .stderr(log_file)
                .spawn()
                .expect("spawn prometheus");
            let mut prom = Prometheus {
                child,
                addr,
                _dir: dir,
                log,
            };
            // Ready when its API answers, or gone.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = prom.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok() {
                    return prom;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log = prom.log();
            if !last_log.contains("address already in use") {
                panic!("prometheus did not start on {addr}:\n{last_log}");
            }
        }
        panic!("prometheus could not bind a free port:\n{last_log}");
    }

    fn log(&self) -> String {
        read_tail(&self.log, 8000)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_tail(path: &Path, max: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s[start..].to_string()
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET a path of Prometheus's HTTP API; the JSON answer, or why there is none.
async fn api(prom: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let req = http::Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let r = try_send(prom, req).await?;
    serde_json::from_slice(r.body()).map_err(|e| format!("{} {e}: {}", r.status(), String::from_utf8_lossy(r.body())))
}

/// The result vector of an instant query.
async fn query(prom: SocketAddr, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let v = api(prom, &format!("/api/v1/query?query={}", encode(q))).await?;
    if v["status"] != "success" {
        return Err(v.to_string());
    }
    v["data"]["result"].as_array().cloned().ok_or_else(|| v.to_string())
}

fn sample(series: &serde_json::Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_waypost_and_sees_the_target_up_with_its_requests() {
    tool("prometheus");
    let (p, _backends) = proxy_with_traffic().await;
    let prom = Prometheus::start(p.admin);

    let up_query = "up{job=\"waypost\"}";
    let requests_query = "waypost_requests_total{job=\"waypost\",route=\"app\",status_class=\"2xx\"}";
    let deadline = Duration::from_secs(60);
    let give_up = Instant::now() + deadline;
    let mut last = String::new();
    let seen = loop {
        last = match query(prom.addr, up_query).await {
            Ok(up) if up.len() == 1 && sample(&up[0]) == Some(1.0) => {
                match query(prom.addr, requests_query).await {
                    // What was sent before the scrape: 10 + 1 GETs, the POST and the h2c GET.
                    Ok(v) if v.iter().filter_map(sample).sum::<f64>() >= 13.0 => break true,
                    Ok(v) => format!("{requests_query} = {v:?}"),
                    Err(e) => format!("{requests_query}: {e}"),
                }
            }
            Ok(up) => format!("{up_query} = {up:?}"),
            Err(e) => format!("{up_query}: {e}"),
        };
        if Instant::now() > give_up {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !seen {
        let targets = api(prom.addr, "/api/v1/targets")
            .await
            .map(|v| v.to_string())
            .unwrap_or_else(|e| e);
        panic!(
            "Prometheus did not see the waypost target up with waypost_requests_total within {deadline:?}.\nlast answer: {last}\ntargets: {targets}\n--- prometheus log ---\n{}",
            prom.log()
        );
    }

    // The other series of the contract are there too, by their names and labels.
    for q in [
        "waypost_request_duration_seconds_bucket{route=\"app\"}",
        "waypost_upstream_requests_total{pool=\"web\"}",
        "waypost_requests_total{route=\"\",status_class=\"4xx\"}",
        "waypost_backend_up{pool=\"dead\"}",
    ] {
        let v = query(prom.addr, q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(!v.is_empty(), "Prometheus has no {q}");
    }
}
