//! DNS-discovered backends: a real DNS server (hickory) on loopback answers for `app.test`;
//! the proxy resolves it, follows changed answers by TTL without failing requests, and keeps the
//! last good answer when the DNS server goes away.
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use http::Request;
use http_body_util::Full;
use support::*;

struct TestDns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    task: tokio::task::JoinHandle<()>,
    serial: std::sync::atomic::AtomicU32,
}

impl TestDns {
    async fn start() -> TestDns {
        let origin = Name::from_str("test.").unwrap();
        let zone = Arc::new(InMemoryZoneHandler::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ));
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("admin.test.").unwrap(),
            1,
            60,
            60,
            60,
            1,
        );
        zone.upsert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1)
            .await;
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone() as Arc<dyn ZoneHandler>]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        TestDns {
            addr,
            zone,
            task,
            serial: 2.into(),
        }
    }

    /// Make `app.test.` answer exactly these addresses, with a 1 s TTL.
    async fn set(&self, ips: &[Ipv4Addr]) {
        let name = Name::from_str("app.test.").unwrap();
        let serial = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&name), RecordType::A));
        for ip in ips {
            self.zone
                .upsert(Record::from_rdata(name.clone(), 1, RData::A(A(*ip))), serial)
                .await;
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backends(p: &Proxy) -> Vec<String> {
    let (_, body) = p.admin_get("/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<String> = v["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn config(dns: SocketAddr, backend: &str) -> String {
    Config::new()
        .log("access = \"off\"")
        .table(&format!(
            "[dns]\nservers = [\"{dns}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"2s\""
        ))
        .listener("http", "127.0.0.1:0", "")
        .pool_addresses("web", &[backend], "")
        .route("all", "pool = \"web\"")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_set_follows_dns_answers_and_survives_a_dns_outage() {
    let one = TestBackend::start("one").await.unwrap();
    let port = one.addr.port();
    let _two = TestBackend::start_on(SocketAddr::from(([127, 0, 0, 2], port)), "two")
        .await
        .unwrap();
    let dns = TestDns::start().await;
    dns.set(&[Ipv4Addr::new(127, 0, 0, 1)]).await;

    let p = Proxy::start(&config(dns.addr, &format!("app.test:{port}")));
    assert_eq!(backends(&p).await, vec![format!("127.0.0.1:{port}")]);
    assert_eq!(echo(&get(p.addr(), "/").await)["backend"], "one");

    // Steady traffic while the answer changes: no request may fail.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let addr = p.addr();
    let load = tokio::spawn(async move {
        let mut failed = Vec::new();
        let mut n = 0;
        while !*stop_rx.borrow() {
            n += 1;
            match try_send(addr, Request::get("/").body(Full::new(Bytes::new())).unwrap()).await {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e),
            }
        }
        (n, failed)
    });

    dns.set(&[Ipv4Addr::new(127, 0, 0, 2)]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            backends(&p).await == vec![format!("127.0.0.2:{port}")]
        })
        .await,
        "the pool never followed the new answer: {:?}",
        backends(&p).await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            echo(&get(p.addr(), "/").await)["backend"] == "two"
        })
        .await
    );

    dns.set(&[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async { backends(&p).await.len() == 2 }).await,
        "both addresses should become backends"
    );
    stop_tx.send(true).unwrap();
    let (n, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {n} requests failed while DNS changed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    // The DNS server goes away: the last good answer stays and traffic goes on.
    drop(dns);
    assert!(
        eventually(Duration::from_secs(20), || async {
            p.metric("waypost_dns_resolutions_total{name=\"app.test\",result=\"failure\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        })
        .await,
        "a failed resolution was never counted"
    );
    assert_eq!(backends(&p).await.len(), 2);
    assert_eq!(get(p.addr(), "/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_in_etc_hosts_resolve_without_dns() {
    let b = TestBackend::start("local").await.unwrap();
    let dns = TestDns::start().await; // knows nothing of localhost
    let p = Proxy::start(&config(dns.addr, &format!("localhost:{}", b.addr.port())));
    let list = backends(&p).await;
    assert!(list.contains(&b.addr.to_string()), "{list:?}");
    assert_eq!(echo(&get(p.addr(), "/").await)["backend"], "local");
}
