//! The status page at the admin API's `/`, in a real headless Chromium driven through
//! chromedriver's W3C WebDriver HTTP API: the login form takes the admin token (a wrong one is
//! refused), the page draws every section with no console error, a killed backend turns
//! "down" on the page and "up" again when it returns, and it fits a phone's width.
//! Screenshots are kept in target/test-artifacts/: status-page.png (desktop, a backend down),
//! status-page-phone.png (the whole page at 390 px) and status-page-phone-top.png (one screen).
//!
//! chromium and chromium-driver come from Debian; the project's test command
//! (`bash .ci/test.sh`) installs them when missing.
mod ops_support;
mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const INSTALL_HINT: &str =
    "run the project's test script, `bash .ci/test.sh`, which installs Debian's `chromium` and `chromium-driver`";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a loopback port, killed on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        for tool in ["chromedriver", "chromium"] {
            match Command::new(tool).arg("--version").output() {
                Ok(o) if o.status.success() => {}
                other => panic!("`{tool} --version` failed ({other:?}): {INSTALL_HINT}"),
            }
        }
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let d = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let up = eventually(Duration::from_secs(20), || async {
            match try_send(d.addr, Request::get("/status").body(Full::new(Bytes::new())).unwrap()).await {
                Ok(r) => serde_json::from_slice::<Value>(r.body()).is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "chromedriver did not become ready");
        d
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .unwrap();
        let r = send(self.addr, req).await;
        let v: Value = serde_json::from_slice(r.body())
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {:?}", r.body()));
        assert!(r.status().is_success(), "{method} {path} answered {}: {v}", r.status());
        v["value"].clone()
    }

    async fn session(&self, profile: &std::path::Path) -> Session<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,2200",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        let id = v["sessionId"].as_str().expect("a session id").to_string();
        Session { driver: self, id }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
            .await
    }

    /// Wait until `script` (an expression) is truthy in the page.
    async fn until(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.js(&format!("return !!({script});")).await;
            if v == true {
                return;
            }
            if std::time::Instant::now() > deadline {
                let text = self.js("return document.body.innerText;").await;
                panic!(
                    "the page never showed {what} ({script}); it shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e.as_str())
            .expect("an element reference")
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({}))).await;
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })))
            .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    /// The browser's console and error log since the last call.
    async fn log(&self) -> Vec<Value> {
        let v = self.cmd("POST", "/se/log", Some(json!({"type": "browser"}))).await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("POST", "/goog/cdp/execute", Some(json!({"cmd": cmd, "params": params})))
            .await
    }

    async fn close(self) {
        self.cmd("DELETE", "", None).await;
    }
}

/// target/test-artifacts (beside cargo's target/tmp).
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts")
}

fn severe(log: &[Value]) -> Vec<String> {
    log.iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "ERROR")
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

fn row(addr: SocketAddr) -> String {
    format!("document.querySelector('tr[data-backend=\"{addr}\"]')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_backends_going_down_and_up_without_console_errors() {
    let mut rich = ops_support::start().await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let s = driver.session(profile.path()).await;
    let page = format!("http://{}/", rich.proxy.admin);
    s.goto(&page).await;

    // A token is set: the page asks for it, refuses a wrong one, takes the right one.
    s.until(
        "the login form",
        "!document.getElementById('login').classList.contains('hidden')",
        Duration::from_secs(10),
    )
    .await;
    s.type_into("#token", "not-the-token").await;
    s.click("#login-form button").await;
    s.until(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('refused')",
        Duration::from_secs(10),
    )
    .await;
    // The page asked for the token before any request: so far no console error; the refused
    // token's 401 is the only one, and it is from /status.
    let refused = s.log().await;
    let errors = severe(&refused);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("/status") && errors[0].contains("401"),
        "{errors:#?}"
    );
    s.type_into("#token", ops_support::TOKEN).await;
    s.click("#login-form button").await;
    s.until(
        "the content",
        "!document.getElementById('content').classList.contains('hidden')",
        Duration::from_secs(10),
    )
    .await;
    let url = s.cmd("GET", "/url", None).await;
    assert_eq!(url, page, "the token never goes into the URL");
    assert!(
        !url.as_str().unwrap().contains(ops_support::TOKEN),
        "the token is not in the URL"
    );

    // Every section is drawn from live state.
    let b2 = rich.eu_addr(1);
    s.until(
        "b2 up",
        &format!("{}.dataset.state === 'up'", row(b2)),
        Duration::from_secs(10),
    )
    .await;
    // A second poll: rates are computed between two readings.
    s.until(
        "a request rate",
        "/\\/s$/.test(document.getElementById('cards').children[0].textContent)",
        Duration::from_secs(10),
    )
    .await;
    let text = s.js("return document.body.innerText;").await;
    let text = text.as_str().unwrap().to_string();
    for needle in [
        "web-eu",
        "web-us",
        "eu-west",
        "us-east",
        "assets",
        "https",
        "site.crt",
        "localhost",
        "failed",
        "unknown key",
        "Hit ratio",
        "expires in",
    ] {
        assert!(text.contains(needle), "the page does not show {needle:?}:\n{text}");
    }
    // The certificate expiring in 10 days is flagged.
    let days = s
        .js("return [...document.querySelectorAll('#certs td')].map(td => td.textContent).join('|');")
        .await;
    let left: f64 = days.as_str().unwrap().rsplit('|').next().unwrap().parse().unwrap();
    assert!((8.9..=10.0).contains(&left), "{days}");
    let flagged = s
        .js("return document.querySelector('#certs td:last-child .badge').className;")
        .await;
    assert!(
        flagged.as_str().unwrap().contains("s-down"),
        "under 14 days is red: {flagged}"
    );

    // Traffic while the page watches, then kill a backend: it turns down on the page.
    traffic_burst(&rich.proxy).await;
    let killed = rich.eu.remove(1);
    killed.kill();
    s.until(
        "b2 down",
        &format!("{}.dataset.state === 'down'", row(b2)),
        Duration::from_secs(15),
    )
    .await;
    let shot = s.screenshot("status-page.png").await;
    eprintln!("screenshot: {}", shot.display());
    let back = TestBackend::start_on(b2, "eu-2-again").await.unwrap();
    s.until(
        "b2 up again",
        &format!("{}.dataset.state === 'up'", row(b2)),
        Duration::from_secs(15),
    )
    .await;
    // The page agrees with /status.
    assert_eq!(ops_support::backend_state(&rich.proxy, b2).await, "up");

    // A phone-sized viewport: nothing wider than the screen.
    let height = s.js("return document.documentElement.scrollHeight;").await;
    s.cdp(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    s.until("the phone layout", "window.innerWidth === 390", Duration::from_secs(5))
        .await;
    let overflow = s
        .js("return document.documentElement.scrollWidth - window.innerWidth;")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than a phone by {overflow} px"
    );
    // Stacked tables on a phone: the column names move into each cell.
    let stacked = s
        .js("return getComputedStyle(document.querySelector('#pools thead')).display;")
        .await;
    assert_eq!(stacked, "none", "tables stack on a phone");
    s.screenshot("status-page-phone-top.png").await;
    let full = s.js("return document.documentElement.scrollHeight;").await;
    s.cdp(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": full.as_i64().unwrap().min(6000), "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    let shot = s.screenshot("status-page-phone.png").await;
    eprintln!("phone screenshot: {} (desktop height {height})", shot.display());

    let log = s.log().await;
    let errors = severe(&log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    s.close().await;
    drop(back);
}

async fn traffic_burst(p: &Proxy) {
    for _ in 0..20 {
        let r = get(p.addr(), "/assets/app-0.css").await;
        assert_eq!(r.status(), 200);
    }
}

/// Without a token configured, the page shows the state at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_without_a_token_configured_needs_no_login() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let s = driver.session(profile.path()).await;
    s.goto(&format!("http://{}/", p.admin)).await;
    s.until(
        "the content",
        &format!("{}.dataset.state === 'up'", row(b.addr)),
        Duration::from_secs(10),
    )
    .await;
    let login_hidden = s
        .js("return document.getElementById('login').classList.contains('hidden');")
        .await;
    assert_eq!(login_hidden, true);
    let errors = severe(&s.log().await);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    s.close().await;
}
