//! Geo-routing through the real binary: clients on 127.0.1.x (eu) and 127.0.2.x (na) reach
//! their data centers' pools, fail over while theirs is down and come back, a region header
//! counts only from a trusted proxy, PROXY protocol v1/v2 sources decide the region and the
//! X-Forwarded-For, and a MaxMind database written by this test maps a country to a region.
mod support;

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Dcs {
    eu: TestBackend,
    us: TestBackend,
}

async fn dcs() -> Dcs {
    Dcs {
        eu: TestBackend::start("eu-backend").await.unwrap(),
        us: TestBackend::start("us-backend").await.unwrap(),
    }
}

fn config(d: &Dcs, listener_extra: &str, geo_extra: &str) -> String {
    let health = "[pool.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1";
    Config::new()
        .log("access = \"stdout\"")
        .table(&format!(
            "[geo]\ntrusted_proxies = [\"127.0.3.0/24\"]\nregion_header = \"x-client-region\"\n{geo_extra}\n\
             [geo.regions]\neu = [\"127.0.1.0/24\", \"2001:db8:1::/48\"]\nna = [\"127.0.2.0/24\"]"
        ))
        .table("[[datacenter]]\nname = \"eu-west\"\nregions = [\"eu\"]\nfailover = [\"us-east\"]")
        .table("[[datacenter]]\nname = \"us-east\"\nregions = [\"na\"]\nfailover = [\"eu-west\"]")
        .listener("http", "127.0.0.1:0", listener_extra)
        .pool("web-eu", &[d.eu.addr], &format!("datacenter = \"eu-west\"\n{health}"))
        .pool("web-us", &[d.us.addr], &format!("datacenter = \"us-east\"\n{health}"))
        .route("app", "path_prefix = \"/\"\npools = [\"web-eu\", \"web-us\"]")
        .build()
}

/// One GET from a client socket bound to `from` (another loopback address).
async fn get_from(from: Ipv4Addr, addr: SocketAddr, headers: &[(&str, &str)]) -> http::Response<Bytes> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::get("/").header("host", "app.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = sender
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = r.into_parts();
    let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    http::Response::from_parts(parts, body)
}

fn backend(r: &http::Response<Bytes>) -> String {
    serde_json::from_slice::<serde_json::Value>(r.body())
        .ok()
        .and_then(|v| v["backend"].as_str().map(str::to_string))
        .unwrap_or_default()
}

const EU_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 5);
const NA_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 5);
const PROXY_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_their_data_center_fail_over_and_come_back() {
    let d = dcs().await;
    let p = Proxy::start(&config(&d, "", ""));
    for _ in 0..3 {
        assert_eq!(backend(&get_from(EU_CLIENT, p.addr(), &[]).await), "eu-backend");
        assert_eq!(backend(&get_from(NA_CLIENT, p.addr(), &[]).await), "us-backend");
    }
    assert_eq!(
        p.metric("waypost_geo_requests_total{region=\"eu\",datacenter=\"eu-west\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        p.metric("waypost_geo_requests_total{region=\"na\",datacenter=\"us-east\"}")
            .await,
        Some(3.0)
    );

    // eu-west has no healthy backend: eu clients are served by us-east and counted.
    d.eu.set_mode(Mode::Status(503));
    assert!(
        eventually(PATIENCE, || async {
            backend(&get_from(EU_CLIENT, p.addr(), &[]).await) == "us-backend"
        })
        .await,
        "eu clients never failed over"
    );
    assert!(
        p.metric("waypost_datacenter_failovers_total{from=\"eu-west\",to=\"us-east\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    let (_, status) = p.admin_get("/status").await;
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    let eu = s["geo"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu")
        .unwrap()
        .clone();
    assert_eq!(eu["order"], serde_json::json!(["eu-west", "us-east"]));
    assert_eq!(eu["serving"], "us-east");
    // eu-west recovers: eu clients go home.
    d.eu.set_mode(Mode::Normal);
    assert!(
        eventually(PATIENCE, || async {
            backend(&get_from(EU_CLIENT, p.addr(), &[]).await) == "eu-backend"
        })
        .await,
        "eu clients never came back"
    );
    let lines = p.stdout_lines();
    assert!(lines
        .iter()
        .any(|l| l.contains("\"region\":\"eu\"") && l.contains("\"datacenter\":\"us-east\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_header_and_forwarded_for_count_only_from_a_trusted_proxy() {
    let d = dcs().await;
    let p = Proxy::start(&config(&d, "", ""));
    // From a trusted proxy, the header decides.
    let r = get_from(PROXY_PEER, p.addr(), &[("x-client-region", "na")]).await;
    assert_eq!(backend(&r), "us-backend");
    // From an ordinary client it is ignored: its own address decides.
    let r = get_from(EU_CLIENT, p.addr(), &[("x-client-region", "na")]).await;
    assert_eq!(backend(&r), "eu-backend");
    // From a trusted proxy, the right-most untrusted X-Forwarded-For entry is the client.
    let r = get_from(
        PROXY_PEER,
        p.addr(),
        &[("x-forwarded-for", "127.0.1.9, 127.0.2.77, 127.0.3.8")],
    )
    .await;
    assert_eq!(backend(&r), "us-backend");
    // From an untrusted peer, a forged X-Forwarded-For changes nothing.
    let r = get_from(EU_CLIENT, p.addr(), &[("x-forwarded-for", "127.0.2.77")]).await;
    assert_eq!(backend(&r), "eu-backend");
}

/// Send a PROXY header then a GET over a raw socket; returns the response text.
async fn over_proxy_protocol(addr: SocketAddr, header: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(header).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn proxy_v2(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_sources_decide_the_region_and_the_forwarded_for() {
    let d = dcs().await;
    let p = Proxy::start(&config(&d, "proxy_protocol = true", ""));
    let v1 = over_proxy_protocol(p.addr(), b"PROXY TCP4 127.0.2.9 127.0.0.1 5555 80\r\n").await;
    assert!(v1.contains("\"backend\":\"us-backend\""), "{v1}");
    assert!(v1.contains("\"x-forwarded-for\":\"127.0.2.9\""), "{v1}");
    let v2 = over_proxy_protocol(p.addr(), &proxy_v2(Ipv4Addr::new(127, 0, 1, 7), Ipv4Addr::LOCALHOST)).await;
    assert!(v2.contains("\"backend\":\"eu-backend\""), "{v2}");
    assert!(v2.contains("\"x-forwarded-for\":\"127.0.1.7\""), "{v2}");
    // A malformed header closes the connection and is counted; nothing is served.
    let bad = over_proxy_protocol(p.addr(), b"PROXY TCP9 nonsense\r\n").await;
    assert!(bad.is_empty(), "{bad}");
    assert_eq!(
        p.metric("waypost_proxy_protocol_errors_total{listener=\"http\"}").await,
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// A minimal MaxMind DB writer (format 2.0, IPv4 tree, 24-bit records), so the test needs no
// downloaded database: networks map to {"country": {"iso_code": CC}}.

fn ctrl(kind: u8, size: usize, out: &mut Vec<u8>) {
    assert!(size < 29);
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn mm_str(s: &str, out: &mut Vec<u8>) {
    ctrl(2, s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

fn mm_uint(kind: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    ctrl(kind, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn write_mmdb(networks: &[(Ipv4Addr, u8, &str)]) -> Vec<u8> {
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut data = Vec::new();
    let mut offsets = std::collections::HashMap::new();
    for (_, _, cc) in networks {
        offsets.entry(*cc).or_insert_with(|| {
            let at = data.len();
            ctrl(7, 1, &mut data);
            mm_str("country", &mut data);
            ctrl(7, 1, &mut data);
            mm_str("iso_code", &mut data);
            mm_str(cc, &mut data);
            at
        });
    }
    let mut nodes = vec![[Rec::Empty, Rec::Empty]];
    for (ip, len, cc) in networks {
        let bits = u32::from(*ip);
        let mut n = 0;
        for i in 0..*len {
            let b = ((bits >> (31 - i)) & 1) as usize;
            if i == len - 1 {
                nodes[n][b] = Rec::Data(offsets[cc]);
            } else {
                n = match nodes[n][b] {
                    Rec::Node(m) => m,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let m = nodes.len() - 1;
                        nodes[n][b] = Rec::Node(m);
                        m
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for rec in node {
            let v = match rec {
                Rec::Empty => count,
                Rec::Node(m) => *m,
                Rec::Data(o) => count + 16 + o,
            } as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    let mut meta = Vec::new();
    ctrl(7, 9, &mut meta);
    mm_str("node_count", &mut meta);
    mm_uint(6, count as u64, &mut meta);
    mm_str("record_size", &mut meta);
    mm_uint(5, 24, &mut meta);
    mm_str("ip_version", &mut meta);
    mm_uint(5, 4, &mut meta);
    mm_str("database_type", &mut meta);
    mm_str("waypost-test", &mut meta);
    mm_str("languages", &mut meta);
    ctrl(11, 0, &mut meta);
    mm_str("binary_format_major_version", &mut meta);
    mm_uint(5, 2, &mut meta);
    mm_str("binary_format_minor_version", &mut meta);
    mm_uint(5, 0, &mut meta);
    mm_str("build_epoch", &mut meta);
    mm_uint(9, 1_700_000_000, &mut meta);
    mm_str("description", &mut meta);
    ctrl(7, 0, &mut meta);
    out.extend_from_slice(&meta);
    out
}

#[test]
fn the_test_database_reads_back_with_the_maxmind_reader() {
    let db = write_mmdb(&[
        (Ipv4Addr::new(127, 0, 4, 0), 24, "DE"),
        (Ipv4Addr::new(127, 0, 5, 0), 24, "US"),
    ]);
    let r = maxminddb::Reader::from_source(db).unwrap();
    let c: maxminddb::geoip2::Country = r.lookup("127.0.4.9".parse().unwrap()).unwrap().unwrap();
    assert_eq!(c.country.unwrap().iso_code, Some("DE"));
    let c: maxminddb::geoip2::Country = r.lookup("127.0.5.1".parse().unwrap()).unwrap().unwrap();
    assert_eq!(c.country.unwrap().iso_code, Some("US"));
    assert!(r
        .lookup::<maxminddb::geoip2::Country>("127.0.6.1".parse().unwrap())
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maxmind_database_maps_a_country_to_a_region() {
    let d = dcs().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("country.mmdb");
    std::fs::write(
        &path,
        write_mmdb(&[
            (Ipv4Addr::new(127, 0, 4, 0), 24, "DE"),
            (Ipv4Addr::new(127, 0, 5, 0), 24, "US"),
        ]),
    )
    .unwrap();
    let cfg = config(&d, "", "").replace(
        "region_header = \"x-client-region\"\n",
        &format!(
            "region_header = \"x-client-region\"\nmmdb = \"{}\"\ndefault_region = \"eu\"\n",
            path.display()
        ),
    );
    let cfg = cfg.replace(
        "na = [\"127.0.2.0/24\"]\n",
        "na = [\"127.0.2.0/24\"]\n\n[geo.countries]\nDE = \"eu\"\nUS = \"na\"\n",
    );
    let p = Proxy::start(&cfg);
    assert_eq!(
        backend(&get_from(Ipv4Addr::new(127, 0, 5, 3), p.addr(), &[]).await),
        "us-backend"
    );
    assert_eq!(
        backend(&get_from(Ipv4Addr::new(127, 0, 4, 3), p.addr(), &[]).await),
        "eu-backend"
    );
    // Not in the CIDR table nor the database: the default region.
    assert_eq!(
        backend(&get_from(Ipv4Addr::new(127, 0, 6, 3), p.addr(), &[]).await),
        "eu-backend"
    );
    assert_eq!(
        p.metric("waypost_geo_requests_total{region=\"na\",datacenter=\"us-east\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_line_that_is_not_text_stops_the_walk() {
    let d = dcs().await;
    let p = Proxy::start(&config(&d, "", ""));
    // The client wrote the first line (claiming na); a line that is not text follows. The walk
    // from the right stops at the bad line, so the client's claim is never reached.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((PROXY_PEER, 0))).unwrap();
    let mut s = sock.connect(p.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\nx-forwarded-for: 127.0.2.77\r\nx-forwarded-for: \xff\xfe\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed.is_ok(), "no complete answer: {text:?}");
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n"),
        "the request was served: {text}"
    );
    // Neither claimed region nor the bad line decides: the proxy's own address is in no
    // region, so the default (eu) serves it.
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let answer: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a backend answer ({e}): {text}"));
    assert_eq!(answer["backend"], "eu-backend", "the client chose its region: {text}");
}
