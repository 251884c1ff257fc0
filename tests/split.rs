//! The read/write split, through the real binary: methods split, read-your-writes (honoured,
//! expiring, forged, shared by two instances), lagging replicas left out and readmitted, all
//! replicas down, the primary down, and a promoted replica taking writes.
mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::*;

struct Db {
    primary: TestBackend,
    r1: TestBackend,
    r2: TestBackend,
}

async fn db() -> Db {
    let db = Db {
        primary: TestBackend::start("primary").await.unwrap(),
        r1: TestBackend::start("replica-1").await.unwrap(),
        r2: TestBackend::start("replica-2").await.unwrap(),
    };
    db.r1.set_header("x-replica-lag", "0.1");
    db.r2.set_header("x-replica-lag", "0.2");
    db
}

fn config(db: &Db, secret: &std::path::Path, ryw: &str) -> String {
    let health = "[pool.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1";
    Config::new()
        .log("access = \"stdout\"")
        .table(&format!("[session]\nsecret_file = \"{}\"", secret.display()))
        .listener("http", "127.0.0.1:0", "")
        .pool("orders-primary", &[db.primary.addr], health)
        .pool(
            "orders-replicas",
            &[db.r1.addr, db.r2.addr],
            &format!("{health}\nlag_header = \"x-replica-lag\"\nrole_header = \"x-role\""),
        )
        .route(
            "orders",
            &format!(
                "path_prefix = \"/api/orders\"\n[route.split]\nprimary = \"orders-primary\"\nreplicas = \"orders-replicas\"\nread_your_writes = \"{ryw}\"\nmax_replica_lag = \"2s\"\nforce_primary_header = \"x-read-primary\""
            ),
        )
        .build()
}

fn secret(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("session.key");
    std::fs::write(&p, [5u8; 40]).unwrap();
    p
}

async fn call(
    addr: SocketAddr,
    method: Method,
    cookie: Option<&str>,
    extra: Option<(&str, &str)>,
) -> http::Response<Bytes> {
    let mut b = Request::builder()
        .method(method.clone())
        .uri("/api/orders/1")
        .header("host", "shop.test");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    if let Some((k, v)) = extra {
        b = b.header(k, v);
    }
    let body = if method == Method::POST {
        Bytes::from_static(b"{\"qty\":1}")
    } else {
        Bytes::new()
    };
    send(addr, b.body(Full::new(body)).unwrap()).await
}

/// The backend that answered (from its JSON echo), or "" for any other answer (a backend's
/// own error page, or one of waypost's).
fn backend(r: &http::Response<Bytes>) -> String {
    serde_json::from_slice::<serde_json::Value>(r.body())
        .ok()
        .and_then(|v| v["backend"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn ryw_cookie(r: &http::Response<Bytes>) -> Option<String> {
    let v = r.headers().get("set-cookie")?.to_str().ok()?;
    v.starts_with("waypost_ryw=")
        .then(|| v.split(';').next().unwrap().to_string())
}

/// Wait until the replicas' lag has been read by the health probes.
async fn settled(p: &Proxy) {
    assert!(
        eventually(PATIENCE, || async {
            let (_, s) = p.admin_get("/status").await;
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            v["pools"][1]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["lag_seconds"].is_number())
        })
        .await,
        "the probes never reported replica lag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_writes_to_the_primary_and_a_writer_reads_its_writes() {
    let db = db().await;
    let dir = tempfile::tempdir().unwrap();
    // read_your_writes long enough that the reads below, on a busy machine, come inside it.
    let p = Proxy::start(&config(&db, &secret(&dir), "3s"));
    settled(&p).await;
    for _ in 0..6 {
        assert!(backend(&call(p.addr(), Method::GET, None, None).await).starts_with("replica"));
    }
    // HEAD has no body to echo: the backend names itself in x-backend.
    let head = call(p.addr(), Method::HEAD, None, None).await;
    assert!(head.headers()["x-backend"].to_str().unwrap().starts_with("replica"));
    assert!(backend(&call(p.addr(), Method::OPTIONS, None, None).await).starts_with("replica"));
    let w = call(p.addr(), Method::POST, None, None).await;
    assert_eq!(backend(&w), "primary");
    let cookie = ryw_cookie(&w).expect("a successful write sets the read-your-writes cookie");
    // While the cookie is valid, this client's reads go to the primary; other clients' do not.
    for _ in 0..3 {
        assert_eq!(
            backend(&call(p.addr(), Method::GET, Some(&cookie), None).await),
            "primary"
        );
        assert!(backend(&call(p.addr(), Method::GET, None, None).await).starts_with("replica"));
    }
    // The header forces a read to the primary.
    assert_eq!(
        backend(&call(p.addr(), Method::GET, None, Some(("x-read-primary", "1"))).await),
        "primary"
    );
    // After read_your_writes (3 s), reads go back to the replicas.
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::GET, Some(&cookie), None).await).starts_with("replica")
        })
        .await,
        "the read-your-writes cookie never expired"
    );
    // A failed write sets no cookie.
    let failed = call(p.addr(), Method::POST, None, Some(("x-test-status", "500"))).await;
    assert_eq!(failed.status(), 500);
    assert!(ryw_cookie(&failed).is_none());
    let replica = p
        .metric("waypost_split_requests_total{route=\"orders\",target=\"replica\"}")
        .await
        .unwrap();
    let primary = p
        .metric("waypost_split_requests_total{route=\"orders\",target=\"primary\"}")
        .await
        .unwrap();
    assert!(replica >= 9.0 && primary >= 6.0, "replica {replica}, primary {primary}");
    let logged = p.stdout_lines();
    assert!(
        logged.iter().any(|l| l.contains("\"target\":\"replica\""))
            && logged.iter().any(|l| l.contains("\"target\":\"primary\""))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cookie_is_ignored_and_two_instances_share_a_real_one() {
    let db = db().await;
    let dir = tempfile::tempdir().unwrap();
    let key = secret(&dir);
    let one = Proxy::start(&config(&db, &key, "30s"));
    let two = Proxy::start(&config(&db, &key, "30s"));
    settled(&one).await;
    settled(&two).await;
    let forged = "waypost_ryw=AQIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(backend(&call(one.addr(), Method::GET, Some(forged), None).await).starts_with("replica"));
    let cookie = ryw_cookie(&call(one.addr(), Method::PUT, None, None).await).unwrap();
    for _ in 0..3 {
        assert_eq!(
            backend(&call(two.addr(), Method::GET, Some(&cookie), None).await),
            "primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() {
    let db = db().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&config(&db, &secret(&dir), "1s"));
    settled(&p).await;
    db.r1.set_header("x-replica-lag", "7.5");
    assert!(
        eventually(PATIENCE, || async {
            p.metric(&format!(
                "waypost_replica_lag_seconds{{pool=\"orders-replicas\",backend=\"{}\"}}",
                db.r1.addr
            ))
            .await
                == Some(7.5)
        })
        .await
    );
    for _ in 0..10 {
        assert_eq!(backend(&call(p.addr(), Method::GET, None, None).await), "replica-2");
    }
    // Both lagging: reads go to the primary.
    db.r2.set_header("x-replica-lag", "3");
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::GET, None, None).await) == "primary"
        })
        .await
    );
    // Caught up: back to the replicas.
    db.r1.set_header("x-replica-lag", "0.5");
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::GET, None, None).await) == "replica-1"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_reads_go_to_the_primary() {
    let db = db().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&config(&db, &secret(&dir), "1s"));
    settled(&p).await;
    db.r1.set_mode(Mode::Status(503));
    db.r2.set_mode(Mode::Status(503));
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::GET, None, None).await) == "primary"
        })
        .await
    );
    db.r2.set_mode(Mode::Normal);
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::GET, None, None).await) == "replica-2"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_writes_get_503_reads_carry_on_and_a_promoted_replica_takes_writes() {
    let db = db().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&config(&db, &secret(&dir), "1s"));
    settled(&p).await;
    db.primary.set_mode(Mode::Status(503));
    assert!(
        eventually(PATIENCE, || async {
            let r = call(p.addr(), Method::POST, None, None).await;
            r.status() == 503 && String::from_utf8_lossy(r.body()).contains("primary unavailable")
        })
        .await,
        "writes never saw the primary as down"
    );
    let refused = call(p.addr(), Method::POST, None, None).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert!(String::from_utf8_lossy(refused.body()).contains("primary unavailable"));
    for _ in 0..4 {
        let r = call(p.addr(), Method::GET, None, None).await;
        assert_eq!(r.status(), 200);
        assert!(backend(&r).starts_with("replica"));
    }
    // A replica reports it was promoted: writes follow it while the primary pool is down.
    db.r2.set_header("x-role", "primary");
    assert!(
        eventually(PATIENCE, || async {
            let r = call(p.addr(), Method::POST, None, None).await;
            r.status() == 200 && backend(&r) == "replica-2"
        })
        .await,
        "writes never followed the promoted replica"
    );
    // The primary recovers: writes go back to it.
    db.primary.set_mode(Mode::Normal);
    assert!(
        eventually(PATIENCE, || async {
            backend(&call(p.addr(), Method::POST, None, None).await) == "primary"
        })
        .await
    );
}
