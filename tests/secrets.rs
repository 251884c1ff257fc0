//! Secrets never leave the process: the admin token, the session key and TLS private keys are
//! absent from /status, /metrics and every log line, at start, on reloads (good and broken) and
//! under traffic, even at the most verbose log level.

mod support;

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
        Config::new()
            .admin(&format!(
                "token_file = \"{}\"",
                dir.path().join("admin.token").display()
            ))
            .log("level = \"debug\"\naccess = \"stdout\"")
            .table(&format!(
                "[session]\nsecret_file = \"{}\"",
                dir.path().join("session.key").display()
            ))
            .listener("http", "127.0.0.1:0", "")
            .listener(
                "https",
                "127.0.0.1:0",
                &format!(
                    "[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
                    cert.display(),
                    key.display()
                ),
            )
            .pool("web", &[backend.addr], "")
            .route(
                "app",
                &format!("path_prefix = \"/\"\npool = \"web\"\n[route.sticky]\ncookie = \"aff\"\n{extra_route}"),
            )
            .build()
    };
    let p = Proxy::start(&config(""));
    for _ in 0..3 {
        let r = get(p.addr(), "/x").await;
        assert_eq!(r.status(), 200);
    }
    // A good reload, then a broken one (its errors are logged and returned).
    std::fs::write(&p.config_path, config("")).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        eventually(PATIENCE, || async {
            p.metric("waypost_config_generation").await >= Some(2.0)
        })
        .await,
        "the good reload was applied"
    );
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
    // /status needs the token when one is set; with it, it still never shows the token.
    let (code, _) = p.admin_get("/status").await;
    assert_eq!(code, 401, "GET /status without the token");
    let logs = || format!("{}\n{}", p.stderr(), p.stdout_lines().join("\n"));
    assert!(
        eventually(PATIENCE, || async { logs().contains("colour") }).await,
        "the broken reload was logged (so logs are really checked)"
    );
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
    let logs = logs();
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
