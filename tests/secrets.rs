//! Secrets never leave the process: the admin token, the session key and TLS private keys are
//! absent from /status, /metrics and every log line, at start, on reloads (good and broken) and
//! under traffic, even at the most verbose log level.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::pki::Ca;
use support::*;

#[tokio::test]
async fn no_secret_appears_in_status_metrics_or_logs() {
    let backend = TestBackend::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-3f9a1c7e5b2d4f60a8c9e1b3d5f7a9c1";
    let session = "session-key-7c1e9a3b5d7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d";
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    std::fs::write(dir.path().join("session.key"), session).unwrap();
    let ca = Ca::new("secrets test CA");
    let leaf = ca.leaf(&["localhost"], "localhost", false, &rcgen::PKCS_ECDSA_P256_SHA256);
    let (cert, key) = leaf.write(dir.path(), "site");
    // Every line of the key's base64 body is secret material.
    let key_lines: Vec<String> = leaf
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    assert!(!key_lines.is_empty());
    let config = |extra_route: &str| {
        format!(
            r#"
[admin]
bind = "127.0.0.1:0"
token_file = "{token_file}"

[log]
level = "debug"
access = "stdout"

[session]
secret_file = "{session_file}"

[[listener]]
name = "http"
bind = "127.0.0.1:0"

[[listener]]
name = "https"
bind = "127.0.0.1:0"
[listener.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[[pool]]
name = "web"
backends = [{{ address = "{backend}" }}]

[[route]]
name = "app"
path_prefix = "/"
pool = "web"
[route.sticky]
cookie = "aff"
{extra_route}
"#,
            token_file = dir.path().join("admin.token").display(),
            session_file = dir.path().join("session.key").display(),
            cert = cert.display(),
            key = key.display(),
            backend = backend.addr,
        )
    };
    let p = Proxy::start(&config(""));
    for _ in 0..3 {
        let r = get(p.addr(), "/x").await;
        assert_eq!(r.status(), 200);
    }
    // A good reload, then a broken one (its errors are logged and returned).
    std::fs::write(&p.config_path, config("")).unwrap();
    p.signal(libc::SIGHUP);
    std::fs::write(&p.config_path, config("colour = \"red\"")).unwrap();
    let r = send(
        p.admin,
        Request::post("/reload")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 422);
    let reload_answer = String::from_utf8_lossy(r.body()).into_owned();
    // A wrong token is refused and logged without echoing what was sent.
    let r = send(
        p.admin,
        Request::post("/reload")
            .header("authorization", format!("Bearer {token}x"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // /status needs the token when one is set; with it, it still never shows the token.
    let (code, _) = p.admin_get("/status").await;
    assert_eq!(code, 401, "GET /status without the token");
    let r = send(
        p.admin,
        Request::get("/status")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let status = String::from_utf8_lossy(r.body()).into_owned();
    assert!(status.contains("\"generation\""), "{status}");
    let (_, metrics) = p.admin_get("/metrics").await;
    let logs = format!("{}\n{}", p.stderr(), p.stdout_lines().join("\n"));
    assert!(
        logs.contains("colour"),
        "the broken reload was logged (so logs are really checked)"
    );
    for (place, text) in [
        ("/status", &status),
        ("/metrics", &metrics),
        ("the logs", &logs),
        ("the reload answer", &reload_answer),
    ] {
        assert!(!text.contains(token), "the admin token is in {place}");
        assert!(!text.contains(session), "the session key is in {place}");
        for l in &key_lines {
            assert!(!text.contains(l.as_str()), "the private key is in {place}");
        }
    }
}
