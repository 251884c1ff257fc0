//! Benchmarks of the pure geo and connection-start decisions: the region of a client address in
//! a table of 100k networks (hits and misses, IPv4 and IPv6), building that table, the client
//! address behind trusted proxies, and parsing PROXY protocol v1 and v2 headers.
//!
//! Run: `cargo bench --bench geo` (add `-- --warm-up-time 1 --measurement-time 2` for a quick
//! look). Compare numbers within one run on one machine; they are not absolute claims.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypost::listener::proxy_protocol::{parse, Parsed};
use waypost::router::geo::{client_address, RegionTable, TrustedProxies};

const NETWORKS: usize = 100_000;
const REGIONS: u16 = 64;
/// Addresses cycled through per bench, so that one hot path through the table is not all that
/// is measured.
const PROBES: usize = 4096;

/// A network as (first address, prefix length), IPv4 in the low 32 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

/// Prefix lengths weighted roughly as in public routing tables: mostly /24 for IPv4, /48 for IPv6.
fn v4_len(rng: &mut fastrand::Rng) -> u8 {
    match rng.u32(..1000) {
        0..2 => 12,
        2..52 => 16,
        52..152 => 20,
        152..302 => 22,
        302..852 => 24,
        852..952 => 28,
        _ => 32,
    }
}

fn v6_len(rng: &mut fastrand::Rng) -> u8 {
    match rng.u32(..1000) {
        0..50 => 29,
        50..150 => 32,
        150..550 => 48,
        550..750 => 56,
        750..950 => 64,
        _ => 128,
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Half IPv4 networks in 1.0.0.0–223.255.255.255, half IPv6 in 2000::/3, distinct, seeded. The
/// misses below come from 240.0.0.0/4 and fc00::/7, which no network covers.
fn networks() -> Vec<Net> {
    let mut rng = fastrand::Rng::with_seed(0x6e0);
    let mut seen = HashSet::with_capacity(NETWORKS);
    let mut nets = Vec::with_capacity(NETWORKS);
    while nets.len() < NETWORKS {
        let net = if nets.len() % 2 == 0 {
            let len = v4_len(&mut rng);
            Net::V4(rng.u32(0x0100_0000..0xe000_0000) & mask32(len), len)
        } else {
            let len = v6_len(&mut rng);
            Net::V6((0x2000 << 112 | rng.u128(..1 << 125)) & mask128(len), len)
        };
        if seen.insert(net) {
            nets.push(net);
        }
    }
    nets
}

fn entries(nets: &[Net]) -> Vec<(String, u16)> {
    nets.iter()
        .enumerate()
        .map(|(i, n)| {
            let text = match *n {
                Net::V4(a, l) => format!("{}/{l}", Ipv4Addr::from(a)),
                Net::V6(a, l) => format!("{}/{l}", Ipv6Addr::from(a)),
            };
            (text, i as u16 % REGIONS)
        })
        .collect()
}

/// Addresses inside random networks of the table, with random host bits.
fn hits(nets: &[Net], v6: bool, rng: &mut fastrand::Rng) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(PROBES);
    while out.len() < PROBES {
        match nets[rng.usize(..nets.len())] {
            Net::V4(a, l) if !v6 => out.push(IpAddr::V4((a | (rng.u32(..) & !mask32(l))).into())),
            Net::V6(a, l) if v6 => out.push(IpAddr::V6((a | (rng.u128(..) & !mask128(l))).into())),
            _ => {}
        }
    }
    out
}

fn bench_lookup(c: &mut Criterion) {
    let nets = networks();
    let table = RegionTable::build(&entries(&nets)).expect("distinct networks");
    let mut rng = fastrand::Rng::with_seed(7);
    let v4_hits = hits(&nets, false, &mut rng);
    let v6_hits = hits(&nets, true, &mut rng);
    let mapped: Vec<IpAddr> = v4_hits
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => *v6,
        })
        .collect();
    let v4_misses: Vec<IpAddr> = (0..PROBES)
        .map(|_| IpAddr::V4((0xf000_0000 | rng.u32(..1 << 28)).into()))
        .collect();
    let v6_misses: Vec<IpAddr> = (0..PROBES)
        .map(|_| IpAddr::V6((0xfc00 << 112 | rng.u128(..1 << 121)).into()))
        .collect();

    let mut group = c.benchmark_group("geo_lookup");
    for (what, probes, hit) in [
        ("v4_hit", &v4_hits, true),
        ("v4_miss", &v4_misses, false),
        ("v4_mapped_hit", &mapped, true),
        ("v6_hit", &v6_hits, true),
        ("v6_miss", &v6_misses, false),
    ] {
        // The bench measures what it claims to: hits hit and misses miss.
        assert!(probes.iter().all(|&a| table.lookup(a).is_some() == hit), "{what}");
        group.bench_with_input(BenchmarkId::new(what, NETWORKS), probes, |b, probes| {
            // The index, not the address, goes through black_box: the address is read from the
            // array as a caller reads it from its connection, not from a stack copy.
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % PROBES;
                table.lookup(probes[black_box(i)])
            })
        });
    }
    group.finish();

    let trusted = TrustedProxies::build(&["10.0.0.0/8", "2001:db8:ffff::/48"]).expect("valid");
    let peer: IpAddr = "10.0.0.2".parse().expect("valid");
    let xff = ["198.51.100.7, 203.0.113.9:4711", "10.1.2.3, 10.0.0.9"];
    assert_eq!(
        client_address(peer, xff.iter().copied(), &trusted),
        "203.0.113.9".parse::<IpAddr>().expect("valid")
    );
    c.bench_function("client_address_xff_4_entries", |b| {
        b.iter(|| client_address(black_box(peer), black_box(&xff).iter().copied(), &trusted))
    });
}

fn bench_build(c: &mut Criterion) {
    let entries = entries(&networks());
    let mut group = c.benchmark_group("geo_build");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("region_table", NETWORKS), |b| {
        b.iter(|| RegionTable::build(black_box(&entries)).map(|t| t.is_empty()))
    });
    group.finish();
}

fn v2_header(family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, family]);
    h.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend(addresses);
    h.extend(tlvs);
    h
}

fn bench_proxy_protocol(c: &mut Criterion) {
    let v6: Vec<u8> = [Ipv6Addr::LOCALHOST.octets(), Ipv6Addr::LOCALHOST.octets()].concat();
    // An AWS-style header: the addresses, then an ALPN and a VPC endpoint TLV.
    let tlvs: &[u8] = &[
        0x01, 0, 2, b'h', b'2', 0xea, 0, 23, 0x01, b'v', b'p', b'c', b'e', b'-', b'0', b'1', b'2', b'3', b'4', b'5',
        b'6', b'7', b'8', b'9', b'a', b'b', b'c', b'd', b'e', b'f', b'0',
    ];
    let headers = [
        ("v1_tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n".to_vec()),
        (
            "v1_tcp6",
            b"PROXY TCP6 2001:db8::1:2:3 2001:db8::ffff 51234 443\r\n".to_vec(),
        ),
        (
            "v2_ipv4",
            v2_header(0x11, &[192, 0, 2, 1, 198, 51, 100, 2, 0xc8, 0x22, 1, 0xbb], &[]),
        ),
        (
            "v2_ipv6_tlvs",
            v2_header(0x21, &[v6, vec![0xc8, 0x22, 1, 0xbb]].concat(), tlvs),
        ),
    ];
    let mut group = c.benchmark_group("proxy_protocol_parse");
    for (what, mut bytes) in headers {
        let len = bytes.len();
        // As read from a socket: the header and the start of the first request.
        bytes.extend(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let parsed = parse(&bytes);
        assert!(
            matches!(parsed, Ok(Parsed::Done { source: Some(_), header_len, .. }) if header_len == len),
            "{what}: {parsed:?}"
        );
        group.bench_with_input(what, &bytes, |b, bytes| b.iter(|| parse(black_box(bytes))));
    }
    group.finish();
}

criterion_group!(benches, bench_lookup, bench_build, bench_proxy_protocol);
criterion_main!(benches);
