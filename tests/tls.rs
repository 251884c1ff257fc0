//! TLS termination end to end against the real binary, with certificates made here by rcgen:
//! SNI (exact, wildcard, default, strict), ALPN h2 and http/1.1, X-Forwarded-Proto, mTLS and the
//! subject header, certificate reload (new clients see the new certificate, open connections
//! keep working, a bad file keeps the old one), `waypost check` on a mismatched key,
//! redirect_https and HSTS, and a scan by sslscan (Debian's package, installed by .ci/test.sh).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::pki::{Ca, Leaf};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn ecdsa() -> &'static rcgen::SignatureAlgorithm {
    &rcgen::PKCS_ECDSA_P256_SHA256
}

fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&str],
    auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match auth {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg
}

/// Accepts any server certificate, to look at what a server presents without trusting it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that completes the handshake whatever certificate it is shown (SNI `name` sent
/// unless `sni` is false).
fn looking_client(sni: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    cfg.enable_sni = sni;
    cfg
}

async fn connect(addr: SocketAddr, cfg: rustls::ClientConfig, name: &str) -> Result<TlsStream<TcpStream>, String> {
    connect_arc(addr, Arc::new(cfg), name).await
}

async fn connect_arc(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(s: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1_get(
    sender: &mut H1,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<http::Response<Bytes>, String> {
    let mut req = Request::get(path).header("host", host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// A config with a TLS listener "https" (its `[listener.tls]` body given) before one pool of `backend`.
fn config(backend: SocketAddr, tls_table: &str, https_extra: &str, more_listeners: &str) -> String {
    Config::new()
        .log("access = \"off\"")
        .listener(
            "https",
            "127.0.0.1:0",
            &format!("{https_extra}\n[listener.tls]\n{tls_table}\n{more_listeners}"),
        )
        .pool("web", &[backend], "")
        .route("all", "path_prefix = \"/\"\npool = \"web\"")
        .build()
}

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// Three server certificates (ECDSA a.test, Ed25519 b.test, ECDSA *.c.test) written to `dir`.
fn three_certs(ca: &Ca, dir: &Path) -> (Vec<Leaf>, String) {
    let leaves = vec![
        ca.leaf(&["a.test"], "a.test", false, ecdsa()),
        ca.leaf(&["b.test", "www.b.test"], "b.test", false, &rcgen::PKCS_ED25519),
        ca.leaf(&["*.c.test"], "c.test", false, ecdsa()),
    ];
    let entries: Vec<String> = leaves
        .iter()
        .zip(["a", "b", "c"])
        .map(|(l, n)| {
            let (c, k) = l.write(dir, n);
            format!("  {{ cert = \"{}\", key = \"{}\" }},", toml_path(&c), toml_path(&k))
        })
        .collect();
    (leaves, format!("certificates = [\n{}\n]", entries.join("\n")))
}

async fn post_reload(p: &Proxy) -> serde_json::Value {
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    serde_json::from_slice(r.body()).unwrap()
}

#[tokio::test]
async fn sni_picks_each_certificate_and_the_first_by_default() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (leaves, certs) = three_certs(&ca, dir.path());
    let p = Proxy::start(&config(backend.addr, &certs, "", ""));
    let addr = p.listeners["https"];
    for (name, want) in [
        ("a.test", 0),
        ("b.test", 1),
        ("www.b.test", 1),
        ("x.c.test", 2),
        ("y.c.test", 2),
        ("unknown.test", 0),
    ] {
        // Unknown names get the default certificate, which a verifying client then refuses
        // (it is not for that name); a client that only looks sees which one it was.
        if name == "unknown.test" {
            let e = connect(addr, client_config(&ca.der(), &[], None), name)
                .await
                .unwrap_err();
            assert!(e.contains("certificate not valid for name"), "{e}");
            let s = connect(addr, looking_client(true), name).await.unwrap();
            assert_eq!(peer_cert(&s), leaves[0].der, "the default certificate for {name}");
            continue;
        }
        let s = connect(addr, client_config(&ca.der(), &[], None), name).await.unwrap();
        assert_eq!(peer_cert(&s), leaves[want].der, "certificate for {name}");
    }
    // No SNI at all: the first certificate.
    let mut cfg = client_config(&ca.der(), &[], None);
    cfg.enable_sni = false;
    let s = connect(addr, cfg, "a.test").await.unwrap();
    assert_eq!(peer_cert(&s), leaves[0].der, "default certificate without SNI");
    // And requests flow, with X-Forwarded-Proto https.
    let mut h = h1(s).await;
    let r = h1_get(&mut h, "a.test", "/hello", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(&r);
    assert_eq!(e["headers"]["x-forwarded-proto"], "https", "{e}");
    assert_eq!(e["path"], "/hello");
    assert!(
        p.metric("waypost_tls_handshakes_total{listener=\"https\"}")
            .await
            .unwrap_or(0.0)
            >= 6.0
    );
    for (file, leaf) in ["a.crt", "b.crt", "c.crt"].iter().zip(&leaves) {
        let not_after = p
            .metric(&format!(
                "waypost_tls_cert_not_after_seconds{{certificate=\"{}\"}}",
                dir.path().join(file).display()
            ))
            .await
            .expect("cert expiry gauge");
        assert_eq!(not_after, leaf.not_after as f64, "the notAfter of {file}");
    }
    let (_, text) = p.admin_get("/metrics").await;
    for name in [
        "waypost_tls_handshakes_total",
        "waypost_tls_handshake_errors_total",
        "waypost_tls_cert_not_after_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{text}");
    }
}

#[tokio::test]
async fn sni_strict_refuses_unknown_names_and_no_sni() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (leaves, certs) = three_certs(&ca, dir.path());
    let p = Proxy::start(&config(backend.addr, &format!("{certs}\nsni_strict = true"), "", ""));
    let addr = p.listeners["https"];
    let s = connect(addr, client_config(&ca.der(), &[], None), "z.c.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), leaves[2].der);
    // Refused by the server, not by the client: even a client that would accept any
    // certificate gets none, and an alert instead.
    for (what, sni) in [("an unknown name", true), ("no SNI", false)] {
        let e = connect(addr, looking_client(sni), "unknown.test").await.unwrap_err();
        assert!(
            e.contains("received fatal alert"),
            "{what} must be refused by the server: {e}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            p.metric("waypost_tls_handshake_errors_total{listener=\"https\"}")
                .await
                .unwrap_or(0.0)
                >= 2.0
        })
        .await
    );
}

#[tokio::test]
async fn alpn_chooses_h2_or_http1_on_one_listener_and_hsts_is_added() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, certs) = three_certs(&ca, dir.path());
    let p = Proxy::start(&config(
        backend.addr,
        &format!("{certs}\nhsts = \"max-age=31536000\""),
        "",
        "",
    ));
    let addr = p.listeners["https"];

    let s = connect(addr, client_config(&ca.der(), &["h2", "http/1.1"], None), "a.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://a.test/two")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = sender.send_request(req).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["headers"]["x-forwarded-proto"], "https", "{e}");

    let s = connect(addr, client_config(&ca.der(), &["http/1.1"], None), "b.test")
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h = h1(s).await;
    let r = h1_get(&mut h, "b.test", "/one", &[]).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
}

#[tokio::test]
async fn mtls_accepts_a_good_client_refuses_others_and_passes_the_subject() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Clients CA");
    let other = Ca::new("Other CA");
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca.leaf(&["a.test"], "a.test", false, ecdsa()).write(dir.path(), "a");
    let ca_file = std::path::PathBuf::from(clients.write(dir.path(), "clients.pem"));
    let table = format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\" }}]\nclient_ca = \"{}\"\nclient_cert_header = \"x-client-subject\"",
        toml_path(&c),
        toml_path(&k),
        toml_path(&ca_file)
    );
    let p = Proxy::start(&config(backend.addr, &table, "", ""));
    let addr = p.listeners["https"];

    let alice = clients.leaf(&[], "alice", true, ecdsa());
    let s = connect(addr, client_config(&ca.der(), &[], Some(alice.client_auth())), "a.test")
        .await
        .unwrap();
    let mut h = h1(s).await;
    let r = h1_get(&mut h, "a.test", "/", &[("x-client-subject", "CN=mallory")])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(&r);
    let subject = e["headers"]["x-client-subject"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(subject.contains("CN=alice"), "{e}");
    assert!(!subject.contains("mallory"), "{e}");

    // Without a certificate, and with one from another CA: no request gets through.
    for auth in [None, Some(other.leaf(&[], "eve", true, ecdsa()).client_auth())] {
        let had = auth.is_some();
        let refused = match connect(addr, client_config(&ca.der(), &[], auth), "a.test").await {
            Err(_) => true,
            // TLS 1.3: the server's refusal arrives after the client's side of the handshake.
            Ok(s) => {
                let mut h = h1(s).await;
                h1_get(&mut h, "a.test", "/", &[]).await.is_err()
            }
        };
        assert!(refused, "client (certificate: {had}) must be refused");
    }
}

#[tokio::test]
async fn the_client_cert_header_is_stripped_without_mtls_and_on_plain_listeners() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, certs) = three_certs(&ca, dir.path());
    let plain = "[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n";
    let p = Proxy::start(&config(backend.addr, &certs, "", plain));
    let s = connect(p.listeners["https"], client_config(&ca.der(), &[], None), "a.test")
        .await
        .unwrap();
    let mut h = h1(s).await;
    let r = h1_get(&mut h, "a.test", "/", &[("x-client-cert-subject", "CN=mallory")])
        .await
        .unwrap();
    assert!(
        echo(&r)["headers"].get("x-client-cert-subject").is_none(),
        "{}",
        echo(&r)
    );
    let r = send(
        p.listeners["http"],
        Request::get("/")
            .header("x-client-cert-subject", "CN=mallory")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let e = echo(&r);
    assert!(e["headers"].get("x-client-cert-subject").is_none(), "{e}");
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_clients_and_keeps_open_connections() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["a.test"], "a.test", false, ecdsa());
    let (c, k) = first.write(dir.path(), "a");
    let table = format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        toml_path(&c),
        toml_path(&k)
    );
    let p = Proxy::start(&config(backend.addr, &table, "", ""));
    let addr = p.listeners["https"];
    let old = connect(addr, client_config(&ca.der(), &[], None), "a.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&old), first.der);
    let mut old = h1(old).await;
    assert_eq!(h1_get(&mut old, "a.test", "/", &[]).await.unwrap().status(), 200);

    // A bad certificate file: the reload fails naming it, the old certificate stays.
    std::fs::write(&c, "not a certificate\n").unwrap();
    let out = post_reload(&p).await;
    assert_eq!(out["ok"], false, "{out}");
    assert!(out["errors"].to_string().contains(&toml_path(&c)), "{out}");
    let s = connect(addr, client_config(&ca.der(), &[], None), "a.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), first.der);

    // A good new certificate: new clients see it; the open connection keeps working.
    let second = ca.leaf(&["a.test"], "a.test", false, &rcgen::PKCS_ED25519);
    std::fs::write(&k, &second.key_pem).unwrap();
    std::fs::write(&c, &second.cert_pem).unwrap();
    let out = post_reload(&p).await;
    assert_eq!(out["ok"], true, "{out}");
    let s = connect(addr, client_config(&ca.der(), &[], None), "a.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&s), second.der);
    let r = h1_get(&mut old, "a.test", "/still", &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo(&r)["path"], "/still");
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_reload_request() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["a.test"], "a.test", false, ecdsa());
    let (c, k) = first.write(dir.path(), "a");
    let table = format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        toml_path(&c),
        toml_path(&k)
    );
    let p = Proxy::start(&config(backend.addr, &table, "", ""));
    let addr = p.listeners["https"];
    let second = ca.leaf(&["a.test"], "a.test", false, ecdsa());
    // Replace both files by rename, as certificate tools do.
    let (c2, k2) = second.write(dir.path(), "next");
    std::fs::rename(&k2, &k).unwrap();
    std::fs::rename(&c2, &c).unwrap();
    let ca_der = ca.der();
    let seen = eventually(Duration::from_secs(10), || {
        let cfg = client_config(&ca_der, &[], None);
        let want = second.der.clone();
        async move {
            match connect(addr, cfg, "a.test").await {
                Ok(s) => peer_cert(&s) == want,
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(seen, "the new certificate was not served:\n{}", p.stderr());
}

#[tokio::test]
async fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let a = ca.leaf(&["a.test"], "a.test", false, ecdsa());
    let b = ca.leaf(&["b.test"], "b.test", false, ecdsa());
    let (c, _) = a.write(dir.path(), "a");
    let (_, k) = b.write(dir.path(), "b");
    let cfg = config(
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            toml_path(&c),
            toml_path(&k)
        ),
        "",
        "",
    );
    let path = dir.path().join("waypost.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("listener[0].tls.certificates[0].key"), "{text}");
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains(&toml_path(&k)), "{text}");
}

#[tokio::test]
async fn redirect_https_answers_308_with_host_path_and_query() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, certs) = three_certs(&ca, dir.path());
    let plain = "[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\nredirect_https = 8443\n";
    let p = Proxy::start(&config(backend.addr, &certs, "", plain));
    let r = get_host(p.listeners["http"], "example.com:8080", "/a/b?x=1&y=2").await;
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://example.com:8443/a/b?x=1&y=2");
    assert_eq!(backend_requests(&p).await, 0.0);
    // Counted as a request that matched no route.
    let series = "waypost_requests_total{listener=\"http\",route=\"\",status_class=\"3xx\"}";
    assert_eq!(p.metric(series).await, Some(1.0));
    // HTTP/1.0 without a Host header: nothing to redirect to.
    let r = send(
        p.listeners["http"],
        Request::get("/x")
            .header("host", "")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 400);
}

async fn backend_requests(p: &Proxy) -> f64 {
    p.metric("waypost_upstream_requests_total{pool=\"web\",backend=\"b1\",status_class=\"2xx\"}")
        .await
        .unwrap_or(0.0)
}

/// What sslscan found.
struct Scan {
    /// (protocol, enabled)
    protocols: Vec<(String, bool)>,
    /// Accepted ciphers: (protocol, bits, name).
    ciphers: Vec<(String, u32, String)>,
    /// Lines about renegotiation.
    notes: Vec<String>,
}

fn parse_sslscan(out: &str) -> Scan {
    let mut protocols = Vec::new();
    let mut ciphers = Vec::new();
    let mut notes = Vec::new();
    for raw in out.lines() {
        // Strip ANSI colour sequences, in case --no-colour is not honoured.
        let mut line = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                line.push(ch);
            }
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [proto, state, ..]
                if (proto.starts_with("SSLv") || proto.starts_with("TLSv"))
                    && (*state == "enabled" || *state == "disabled") =>
            {
                protocols.push((proto.to_string(), *state == "enabled"));
            }
            [kind, proto, bits, "bits", name, ..] if *kind == "Preferred" || *kind == "Accepted" => {
                ciphers.push((proto.to_string(), bits.parse().unwrap_or(0), name.to_string()));
            }
            _ if line.to_ascii_lowercase().contains("renegotiation") => notes.push(line.trim().to_string()),
            _ => {}
        }
    }
    Scan {
        protocols,
        ciphers,
        notes,
    }
}

#[tokio::test]
async fn sslscan_finds_no_old_protocol_and_no_weak_cipher() {
    let version = Command::new("sslscan").arg("--version").output();
    if version.is_err() {
        panic!("`sslscan` is not installed: run the project's test script, `bash .ci/test.sh`, which installs Debian's `sslscan` package");
    }
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, certs) = three_certs(&ca, dir.path());
    let p = Proxy::start(&config(backend.addr, &certs, "", ""));
    let target = p.listeners["https"].to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sslscan")
            .args(["--no-colour", "--no-heartbleed", &target])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Scan {
        protocols,
        ciphers,
        notes,
    } = parse_sslscan(&text);
    assert!(!protocols.is_empty(), "no protocol lines in sslscan's output:\n{text}");
    for (proto, enabled) in &protocols {
        let modern = proto == "TLSv1.2" || proto == "TLSv1.3";
        assert!(modern || !enabled, "{proto} is enabled:\n{text}");
    }
    assert!(
        protocols.iter().any(|(p, e)| p == "TLSv1.3" && *e),
        "TLS 1.3 is not offered:\n{text}"
    );
    assert!(
        protocols.iter().any(|(p, e)| p == "TLSv1.2" && *e),
        "TLS 1.2 is not offered:\n{text}"
    );
    assert!(
        !ciphers.is_empty(),
        "no accepted cipher found in sslscan's output:\n{text}"
    );
    for (proto, bits, name) in &ciphers {
        assert!(proto == "TLSv1.2" || proto == "TLSv1.3", "{proto} {name}:\n{text}");
        assert!(*bits >= 128, "{bits}-bit {name}:\n{text}");
        let upper = name.to_ascii_uppercase();
        for weak in [
            "RC4", "DES", "NULL", "EXP", "ANON", "ADH", "AECDH", "MD5", "PSK", "SRP", "CBC", "SHA1",
        ] {
            assert!(!upper.contains(weak), "weak cipher {name}:\n{text}");
        }
        if proto == "TLSv1.2" {
            assert!(
                upper.starts_with("ECDHE-") || upper.starts_with("DHE-"),
                "{name} is not forward secret:\n{text}"
            );
        }
    }
    for n in &notes {
        assert!(!n.to_ascii_lowercase().contains("insecure"), "{n}:\n{text}");
    }
}

/// Run openssl (Debian's `openssl` package, installed by .ci/test.sh) in `dir`.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("`openssl` is not installed: run `bash .ci/test.sh`, which installs Debian's `openssl` package");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn rsa_pkcs1_rsa_pkcs8_and_ec_sec1_keys_are_served() {
    let backend = TestBackend::start("b1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=OpenSSL-CA -days 2");
    openssl(d, "genrsa -traditional -out pkcs1.key 2048");
    openssl(d, "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out pkcs8.key");
    openssl(d, "ecparam -name prime256v1 -genkey -noout -out sec1.key");
    let mut certs = Vec::new();
    for name in ["pkcs1", "pkcs8", "sec1"] {
        std::fs::write(
            d.join(format!("{name}.ext")),
            format!("subjectAltName=DNS:{name}.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        openssl(
            d,
            &format!("req -new -key {name}.key -subj /CN={name}.test -out {name}.csr"),
        );
        openssl(
            d,
            &format!("x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2 -extfile {name}.ext"),
        );
        certs.push(format!("{{ cert = \"{name}.crt\", key = \"{name}.key\" }}"));
    }
    let first = std::fs::read_to_string(d.join("pkcs1.key")).unwrap();
    assert!(first.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{first}");
    let sec1 = std::fs::read_to_string(d.join("sec1.key")).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    // Proxy::start writes the config into a directory of its own: absolute paths here.
    let cfg = config(backend.addr, &format!("certificates = [{}]", certs.join(", ")), "", "");
    let cfg = cfg.replace("cert = \"", &format!("cert = \"{}/", d.display()));
    let cfg = cfg.replace("key = \"", &format!("key = \"{}/", d.display()));
    let p = Proxy::start(&cfg);
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_file(d.join("ca.crt")).unwrap();
    for name in ["pkcs1", "pkcs8", "sec1"] {
        let want = CertificateDer::from_pem_file(d.join(format!("{name}.crt"))).unwrap();
        let s = connect(
            p.listeners["https"],
            client_config(&ca, &[], None),
            &format!("{name}.test"),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(peer_cert(&s), want, "{name}");
        let mut h = h1(s).await;
        assert_eq!(
            h1_get(&mut h, &format!("{name}.test"), "/", &[])
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn sessions_resume_with_tls13_tickets_and_tls12_session_ids_across_a_reload() {
    let backend = TestBackend::start("b1").await.unwrap();
    let ca = Ca::new("Test CA");
    let dir = tempfile::tempdir().unwrap();
    let (_, certs) = three_certs(&ca, dir.path());
    let p = Proxy::start(&config(backend.addr, &certs, "", ""));
    let addr = p.listeners["https"];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    for (label, versions) in [
        ("TLS 1.3", &[&rustls::version::TLS13][..]),
        ("TLS 1.2", &[&rustls::version::TLS12][..]),
    ] {
        let cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        for round in 0..3 {
            if round == 2 {
                assert_eq!(post_reload(&p).await["ok"], true);
            }
            let s = connect_arc(addr, cfg.clone(), "a.test").await.unwrap();
            let kind = s.get_ref().1.handshake_kind();
            // One request, so that TLS 1.3 tickets sent after the handshake are read.
            let mut h = h1(s).await;
            assert_eq!(h1_get(&mut h, "a.test", "/", &[]).await.unwrap().status(), 200);
            let want = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{label}, connection {round}");
        }
    }
}
