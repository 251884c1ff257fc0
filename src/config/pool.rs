//! `[[pool]]`: backends, balancing, timeouts, health checks and limits.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::reader::{At, Obj};
use super::{check_name, positive_duration, BackendAddress, BackendConfig, Balance, HashKey, PoolConfig};
use super::{parse_status_ranges, HealthCheck, Passive};

pub(super) fn read_pool(o: &Obj, base: Option<&Path>) -> Option<(PoolConfig, At)> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let mut balance = Some(Balance::RoundRobin);
    if let Some(b) = o.str("balance") {
        balance = match b.as_str() {
            "round_robin" => Some(Balance::RoundRobin),
            "least_request" => Some(Balance::LeastRequest),
            "random" => Some(Balance::Random),
            "consistent_hash" => Some(Balance::ConsistentHash),
            other => {
                o.problem(
                    "balance",
                    format!("unknown policy {other:?} (round_robin, least_request, random, consistent_hash)"),
                );
                None
            }
        };
    }
    if !o.has("backends") {
        o.problem_here("missing required key `backends`");
    }
    let backend_objs = o.objs("backends");
    if o.has("backends") && backend_objs.is_empty() {
        o.problem("backends", "a pool needs at least one backend");
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for b in &backend_objs {
        let addr = b.req_str("address").and_then(|a| parse_backend_address(b, &a));
        let weight = b.uint("weight", 10_000).unwrap_or(1);
        if b.has("weight") && weight == 0 {
            b.problem("weight", "must be at least 1 (remove the backend to take it out)");
        }
        if let Some(addr) = addr {
            if !seen.insert(addr.clone()) {
                b.problem("address", format!("backend {addr} is listed twice in this pool"));
            }
            backends.push(BackendConfig {
                address: addr,
                weight: weight.max(1) as u32,
            });
        }
    }
    for b in backend_objs {
        b.finish();
    }
    let connect_timeout = positive_duration(o, "connect_timeout", Duration::from_secs(2));
    let response_timeout = positive_duration(o, "response_timeout", Duration::from_secs(30));
    let retries = o.uint("retries", 10).unwrap_or(1) as u32;
    let tls = read_upstream_tls(o, base);
    let datacenter = o.str("datacenter");
    let hash_key = o.str("hash_key").and_then(|k| match parse_hash_key(&k) {
        Ok(v) => Some(v),
        Err(e) => {
            o.problem("hash_key", e);
            None
        }
    });
    let hash_balance_factor = o.float("hash_balance_factor");
    if let Some(f) = hash_balance_factor {
        if f < 1.0 {
            o.problem(
                "hash_balance_factor",
                format!("must be at least 1.0 (1.25 lets a backend take 25% above the mean), found {f}"),
            );
        }
    }
    if balance == Some(Balance::ConsistentHash) {
        if !o.has("hash_key") {
            o.problem_here("balance = \"consistent_hash\" needs hash_key (header:NAME, cookie:NAME, query:NAME, client_ip or path)");
        }
    } else {
        for key in ["hash_key", "hash_balance_factor"] {
            if o.has(key) {
                o.problem(key, "only applies with balance = \"consistent_hash\"");
            }
        }
    }
    let health = o.obj("health").map(|h| {
        let hc = read_health(&h);
        h.finish();
        hc
    });
    let passive = match o.obj("passive") {
        Some(p) => {
            let v = read_passive(&p);
            p.finish();
            v
        }
        None => Some(Passive {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: 50,
        }),
    };
    let slow_start = o.duration("slow_start").unwrap_or(Duration::ZERO);
    let panic_threshold = o.uint("panic_threshold", 100).unwrap_or(0) as u32;
    let max_connections_per_backend = o.uint("max_connections_per_backend", 1_000_000).unwrap_or(0) as u32;
    let queue_timeout = positive_duration(o, "queue_timeout", Duration::from_secs(1));
    let queue_size = o.uint("queue_size", 1_000_000).unwrap_or(1024) as u32;
    if max_connections_per_backend == 0 {
        for key in ["queue_timeout", "queue_size"] {
            if o.has(key) {
                o.problem(key, "only applies with max_connections_per_backend set above 0");
            }
        }
    }
    Some((
        PoolConfig {
            name: name?,
            balance: balance?,
            backends,
            connect_timeout,
            response_timeout,
            retries,
            datacenter,
            hash_key,
            hash_balance_factor,
            health,
            passive,
            slow_start,
            panic_threshold,
            max_connections_per_backend,
            queue_timeout,
            queue_size,
            tls,
        },
        o.at(),
    ))
}

/// `tls` and `ca_file`: the CA bundle is read and parsed now, so a bad one is a config error.
/// A relative `ca_file` is taken from the config file's directory, like every other path.
fn read_upstream_tls(o: &Obj, base: Option<&Path>) -> Option<UpstreamTlsConfig> {
    let tls = o.bool("tls").unwrap_or(false);
    let ca_file = o.str("ca_file");
    if !tls {
        if ca_file.is_some() {
            o.problem("ca_file", "only applies with tls = true");
        }
        return None;
    }
    if ca_file.as_deref() == Some("") {
        o.problem("ca_file", "must not be empty (remove it to use the system roots)");
        return None;
    }
    let key = if ca_file.is_some() { "ca_file" } else { "tls" };
    let ca_path = ca_file.as_deref().map(|f| super::resolve(base, f));
    match load_trust_roots(ca_path.as_deref()) {
        Ok(t) => Some(t),
        Err(e) => {
            o.problem(key, e);
            None
        }
    }
}

/// `tls = true` on a pool: the trust roots its backends' certificates are verified against,
/// read and checked while the config is validated.
#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    /// None: the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// Identifies the trust roots, so a reload with the same ones keeps the pool's backends.
    pub digest: String,
    pub roots: Arc<[CertificateDer<'static>]>,
}

/// Trust roots from `ca_file` (a PEM bundle) or, without it, the system's store. Each one is
/// checked the way the TLS client will use it.
pub fn load_trust_roots(ca_file: Option<&Path>) -> Result<UpstreamTlsConfig, String> {
    let (roots, digest) = match ca_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let certs = super::tls::parse_chain(path, &bytes)?;
            let mut store = rustls::RootCertStore::empty();
            for c in &certs {
                store
                    .add(c.clone())
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            (certs, super::digest(&bytes))
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut store = rustls::RootCertStore::empty();
            let usable: Vec<_> = found
                .certs
                .into_iter()
                .filter(|c| store.add(c.clone()).is_ok())
                .collect();
            if usable.is_empty() {
                return Err("no system root certificates found (install ca-certificates, or set ca_file)".to_string());
            }
            (usable, "system".to_string())
        }
    };
    Ok(UpstreamTlsConfig {
        ca_file: ca_file.map(Path::to_path_buf),
        digest,
        roots: roots.into(),
    })
}

fn read_health(h: &Obj) -> HealthCheck {
    let path = h.str("path").unwrap_or_else(|| "/healthz".into());
    if !path.starts_with('/') {
        h.problem("path", format!("{path:?} must start with '/'"));
    }
    let interval = positive_duration(h, "interval", Duration::from_secs(2));
    let timeout = positive_duration(h, "timeout", Duration::from_secs(1));
    let rise = h.uint("rise", 1000).unwrap_or(2) as u32;
    let fall = h.uint("fall", 1000).unwrap_or(3) as u32;
    for (key, v) in [("rise", rise), ("fall", fall)] {
        if v == 0 {
            h.problem(key, "must be at least 1");
        }
    }
    let expect = match h.str("expect_status") {
        Some(s) => parse_status_ranges(&s).unwrap_or_else(|e| {
            h.problem("expect_status", e);
            vec![(200, 399)]
        }),
        None => vec![(200, 399)],
    };
    let host = h.str("host");
    if let Some(hv) = &host {
        if http::HeaderValue::from_str(hv).is_err() || hv.is_empty() {
            h.problem("host", format!("{hv:?} is not a valid Host header value"));
        }
    }
    let assume_healthy = h.bool("assume_healthy").unwrap_or(true);
    let header = |key: &'static str| {
        h.str(key)
            .and_then(|v| match http::HeaderName::from_bytes(v.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    h.problem(key, format!("{v:?} is not a valid header name"));
                    None
                }
            })
    };
    let lag_header = header("lag_header");
    let role_header = header("role_header");
    HealthCheck {
        path,
        host,
        interval,
        timeout,
        rise: rise.max(1),
        fall: fall.max(1),
        expect,
        assume_healthy,
        lag_header,
        role_header,
    }
}

fn read_passive(p: &Obj) -> Option<Passive> {
    let consecutive_failures = p.uint("consecutive_failures", 1_000_000).unwrap_or(5) as u32;
    let eject_for = positive_duration(p, "eject_for", Duration::from_secs(30));
    let max_ejected_percent = p.uint("max_ejected_percent", 100).unwrap_or(50) as u32;
    (consecutive_failures > 0).then_some(Passive {
        consecutive_failures,
        eject_for,
        max_ejected_percent,
    })
}

fn parse_backend_address(o: &Obj, a: &str) -> Option<BackendAddress> {
    if let Ok(addr) = a.parse::<SocketAddr>() {
        if addr.port() == 0 {
            o.problem("address", format!("backend {a:?} needs a port other than 0"));
            return None;
        }
        return Some(BackendAddress::Ip(addr));
    }
    let valid_host = |h: &str| {
        h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && host.parse::<IpAddr>().is_err() && valid_host(host) => {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Some(BackendAddress::Name {
                    host: host.to_ascii_lowercase(),
                    port: p,
                }),
                _ => {
                    o.problem("address", format!("backend {a:?} needs a port from 1 to 65535"));
                    None
                }
            }
        }
        _ => {
            o.problem(
                "address",
                format!("invalid backend address {a:?}: expected IP:port or host:port, like \"127.0.0.1:9001\" or \"app.internal:8080\""),
            );
            None
        }
    }
}

fn parse_hash_key(k: &str) -> Result<HashKey, String> {
    let bad = || format!("invalid hash_key {k:?}: expected header:NAME, cookie:NAME, query:NAME, client_ip or path");
    match k.split_once(':') {
        Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| bad()),
        Some(("cookie", name)) if !name.trim().is_empty() => Ok(HashKey::Cookie(name.trim().to_string())),
        Some(("query", name)) if !name.trim().is_empty() => Ok(HashKey::Query(name.trim().to_string())),
        None if k == "client_ip" => Ok(HashKey::ClientIp),
        None if k == "path" => Ok(HashKey::Path),
        _ => Err(bad()),
    }
}
