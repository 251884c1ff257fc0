//! TLS to backends (pool `tls = true`, `ca_file`) against the real binary, with certificates made
//! here by rcgen: a backend with its own CA is reached; one whose certificate the CA did not
//! sign is refused (502, counted); h2 is used when the backend offers it; a gRPC-style exchange
//! (h2 on both sides, request body, response trailers) passes end to end; a WebSocket upgrade
//! still goes over HTTP/1.1 to a backend that offers h2.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use support::pki::Ca;
use support::*;
use tokio::net::TcpStream;

async fn tls_backend(ca: &Ca, name: &str, h2: bool) -> TestBackend {
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    TestBackend::start_tls(name, &cert, &key, h2).await.unwrap()
}

fn pool_tls(ca_file: &str) -> String {
    format!("tls = true\nca_file = \"{ca_file}\"")
}

#[tokio::test]
async fn backend_with_its_own_ca_is_reached_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let b = tls_backend(&ca, "secure", false).await;
    let p = Proxy::start(&simple_config(&[b.addr], &pool_tls(&ca_file)));
    for i in 0..3 {
        let r = send(
            p.addr(),
            Request::post(format!("/hello/{i}"))
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let e = echo(&r);
        assert_eq!(e["backend"], "secure");
        assert_eq!(e["version"], "HTTP/1.1", "the backend offers only http/1.1");
        assert_eq!(e["path"], format!("/hello/{i}"));
        assert_eq!(e["body_bytes"], 7);
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn a_backend_given_by_name_is_verified_against_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    // Only the name, no IP address: verifying against 127.0.0.1 would fail.
    let (cert, key) = ca.issue(&["localhost"]);
    let b = TestBackend::start_tls("named", &cert, &key, true).await.unwrap();
    let config = simple_config(&[b.addr], &format!("{}\nretries = 1", pool_tls(&ca_file)))
        .replace(&b.addr.to_string(), &format!("localhost:{}", b.addr.port()));
    let p = Proxy::start(&config);
    let r = get(p.addr(), "/").await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(echo(&r)["backend"], "named");
    assert_eq!(echo(&r)["version"], "HTTP/2.0");
}

#[tokio::test]
async fn backend_certificate_from_another_ca_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("trusted CA");
    let other = Ca::new("other CA");
    let ca_file = trusted.write(dir.path(), "ca.pem");
    let b = tls_backend(&other, "impostor", true).await;
    let p = Proxy::start(&simple_config(&[b.addr], &pool_tls(&ca_file)));
    let r = get(p.addr(), "/").await;
    assert_eq!(r.status(), 502, "{:?}", r.body());
    assert_eq!(b.hits(), 0, "nothing reaches a backend that failed verification");
    let errors = p
        .metric_sum(
            "waypost_upstream_requests_total",
            &[
                ("pool", "web"),
                ("backend", &b.addr.to_string()),
                ("status_class", "error"),
            ],
        )
        .await;
    assert!(errors >= 1.0, "the refused attempt is counted, got {errors}");
}

#[tokio::test]
async fn refused_backend_is_retried_on_a_verified_one() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("trusted CA");
    let other = Ca::new("other CA");
    let ca_file = trusted.write(dir.path(), "ca.pem");
    let bad = tls_backend(&other, "impostor", false).await;
    let good = tls_backend(&trusted, "good", false).await;
    let p = Proxy::start(&simple_config(
        &[bad.addr, good.addr],
        &format!("{}\nretries = 1", pool_tls(&ca_file)),
    ));
    for _ in 0..4 {
        let r = get(p.addr(), "/").await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(echo(&r)["backend"], "good");
    }
    assert_eq!(bad.hits(), 0);
}

#[tokio::test]
async fn h2_is_used_when_the_backend_offers_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let b = tls_backend(&ca, "h2", true).await;
    let p = Proxy::start(&simple_config(&[b.addr], &pool_tls(&ca_file)));
    // Many requests at once share the h2 connection(s); every one gets its own answer.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = p.addr();
        tasks.push(tokio::spawn(async move {
            let r = send(
                addr,
                Request::get(format!("/q?i={i}"))
                    .header("host", "app.example")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(r.version(), http::Version::HTTP_11, "the client spoke HTTP/1.1");
        let e = echo(&r);
        assert_eq!(e["version"], "HTTP/2.0", "h2 to the backend");
        assert_eq!(e["query"], format!("i={i}"));
        assert_eq!(e["authority"], "app.example", "the Host goes as :authority: {e}");
        assert!(e["headers"].get("host").is_none(), "and not also as a header: {e}");
    }
    assert_eq!(b.hits(), 20);
}

#[tokio::test]
async fn websocket_upgrade_uses_http1_to_an_h2_backend() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let b = tls_backend(&ca, "ws", true).await;
    let p = Proxy::start(&simple_config(&[b.addr], &pool_tls(&ca_file)));
    let r = send(
        p.addr(),
        Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 101, "{:?}", r.body());
    // Plain requests still go over h2 afterwards.
    let r = get(p.addr(), "/after").await;
    assert_eq!(echo(&r)["version"], "HTTP/2.0");
}

/// A waypost TLS listener in front of a TLS pool: `(config, CA the client trusts)`.
fn grpc_config(dir: &Path, backend: SocketAddr, backend_ca: &str) -> (String, Ca) {
    let front = Ca::new("front CA");
    let (cert, key) = front.issue(&["grpc.test"]);
    std::fs::write(dir.join("front.crt"), cert).unwrap();
    std::fs::write(dir.join("front.key"), key).unwrap();
    let config = Config::new()
        .log("access = \"off\"")
        .listener(
            "https",
            "127.0.0.1:0",
            &format!(
                "[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
                dir.join("front.crt").display(),
                dir.join("front.key").display()
            ),
        )
        .pool("web", &[backend], &format!("tls = true\nca_file = \"{backend_ca}\""))
        .route("all", "path_prefix = \"/\"\npool = \"web\"")
        .build();
    (config, front)
}

#[tokio::test]
async fn grpc_style_exchange_passes_end_to_end_with_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let b = tls_backend(&ca, "grpc", true).await;
    let (config, front) = grpc_config(dir.path(), b.addr, &ca_file);
    let p = Proxy::start(&config);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(front.der()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("grpc.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    for round in 0..3 {
        // A length-prefixed gRPC message, then request trailers.
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
        let mut req_trailers = http::HeaderMap::new();
        req_trailers.insert("x-req-trailer", "done".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(message.clone())), Ok(Frame::trailers(req_trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let req = Request::post("https://grpc.test/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "5S")
            .body(body)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("answer in time")
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("response trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0", "round {round}");
        assert_eq!(trailers["grpc-message"], "ok");
        let e: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
        assert_eq!(e["version"], "HTTP/2.0", "h2 to the backend: {e}");
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/helloworld.Greeter/SayHello");
        assert_eq!(e["headers"]["content-type"], "application/grpc", "untouched: {e}");
        assert_eq!(e["headers"]["te"], "trailers", "{e}");
        assert_eq!(e["headers"]["grpc-timeout"], "5S", "{e}");
        assert_eq!(e["body_bytes"], message.len() as u64);
        assert_eq!(
            e["trailers"]["x-req-trailer"], "done",
            "request trailers reach the backend: {e}"
        );
    }
    assert_eq!(b.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_tls_pool_speak_tls_and_a_relative_ca_file_is_found() {
    let ca = Ca::new("backend CA");
    // Written next to the config, named relatively: resolved against the config's directory.
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let b = TestBackend::start_tls("checked", &cert, &key, false).await.unwrap();
    let health = "\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1";
    let config = simple_config(&[b.addr], &format!("{}{health}", pool_tls("backend-ca.pem")));
    let p = Proxy::start_command(&config, |path| {
        ca.write(path.parent().unwrap(), "backend-ca.pem");
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--config").arg(path);
        cmd
    });
    let checked = eventually(std::time::Duration::from_secs(10), || async {
        let (_, s) = p.admin_get("/status").await;
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let b0 = &v["pools"][0]["backends"][0];
        b0["state"] == "up" && b0["last_check"]["ok"] == true
    })
    .await;
    assert!(checked, "the TLS backend's health checks never passed:\n{}", p.stderr());
    assert_eq!(get(p.addr(), "/").await.status(), 200);
}
