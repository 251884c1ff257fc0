//! The configuration: read a TOML file, check every key and cross-reference, and return either a
//! `Config` or every problem at once, each with its key path and line.

mod reader;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

use crate::health::probe::{parse_status_ranges, HealthCheck};
use crate::health::Passive;

pub use reader::{parse_duration, parse_size, At, Problem};
use reader::{Ctx, Obj};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: DnsConfig,
    /// Hex digest of the file's bytes, shown in /status to tell generations apart.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// 0 means one per CPU core.
    pub worker_threads: usize,
    pub graceful_shutdown_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// The bearer token read from `token_file`, never printed.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub access: AccessTarget,
    pub format: AccessFormat,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Random,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Random => "random",
        }
    }
}

/// Where a backend is: an address, or a host name resolved by DNS (every address it resolves
/// to becomes a backend).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddress::Ip(a) => write!(f, "{a}"),
            BackendAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub address: BackendAddress,
    pub weight: u32,
}

/// `[dns]`: how backend host names are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Name servers; empty: the system's (resolv.conf). /etc/hosts is honoured either way.
    pub servers: Vec<SocketAddr>,
    /// Re-resolve no sooner than this, whatever the record's TTL.
    pub min_ttl: Duration,
    /// Re-resolve at least this often.
    pub max_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub backends: Vec<BackendConfig>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retries: u32,
    /// Active checks (`[pool.health]`); none: backends are up until passively ejected.
    pub health: Option<HealthCheck>,
    /// Outlier ejection from live traffic; none when `consecutive_failures = 0`.
    pub passive: Option<Passive>,
    pub slow_start: Duration,
    /// Percent of healthy backends below which the pool routes to all of them; 0: never.
    pub panic_threshold: u32,
    /// 0: unlimited.
    pub max_connections_per_backend: u32,
    pub queue_timeout: Duration,
    /// Requests that may wait for a slot, per backend.
    pub queue_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Lower-case exact name.
    Exact(String),
    /// `*.example.com` stored as the suffix `.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub strip_prefix: bool,
    pub pool: String,
}

/// Why loading failed: the file could not be read, or it has these problems.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} problem(s) in the config", .0.len())]
    Invalid(Vec<Problem>),
}

pub const DEFAULT_PATH: &str = "/etc/waypost/waypost.toml";

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path.parent()).map_err(LoadError::Invalid)
}

/// Validate config text. `base` resolves relative file paths (token_file, access log).
pub fn parse(text: &str, base: Option<&Path>) -> Result<Config, Vec<Problem>> {
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let ctx = Ctx::new(text);
            let line = ctx.line_of(e.span());
            // One problem, one line: toml_edit's message may span several.
            let msg = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(vec![Problem {
                path: "(syntax)".into(),
                line,
                message: msg,
            }]);
        }
    };
    let ctx = Ctx::new(text);
    let root = Obj::root(&ctx, doc.as_table());
    let cfg = read_root(&root, base);
    root.finish();
    match cfg {
        Some(c) if !ctx.has_problems() => Ok(Config {
            hash: digest(text.as_bytes()),
            ..c
        }),
        _ => Err(ctx.into_problems()),
    }
}

/// The digest shown as `config_hash`: tells two files apart (not a security measure).
pub fn digest(bytes: &[u8]) -> String {
    // FNV-1a, 64 bit: enough to tell two generations' files apart at a glance.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

fn read_root(root: &Obj, base: Option<&Path>) -> Option<Config> {
    let server = read_server(root.obj("server"));
    let admin = read_admin(root.obj("admin"), base);
    let log = read_log(root.obj("log"), base);
    let dns = read_dns(root.obj("dns"));
    for (key, what) in [
        (
            "session",
            "signed cookies arrive with sticky sessions and read-your-writes",
        ),
        ("geo", "geo-routing"),
        ("datacenter", "geo-routing"),
        ("cache", "the response cache"),
    ] {
        root.unsupported(key, what);
    }

    let listener_objs = root.objs("listener");
    // `listener = []` is as empty as no listener at all (a wrong type is reported by `objs`).
    let wrong_type = root.has("listener") && !root.is_array("listener");
    if listener_objs.is_empty() && !wrong_type {
        root.problem_here("at least one [[listener]] is required");
    }
    let listeners: Vec<_> = listener_objs.iter().filter_map(read_listener).collect();

    let pool_objs = root.objs("pool");
    let pools: Vec<_> = pool_objs.iter().filter_map(read_pool).collect();

    let route_objs = root.objs("route");
    let routes: Vec<(RouteConfig, RouteAt)> = route_objs.iter().filter_map(read_route).collect();

    let ctx = root.ctx();
    // Names and references are checked from the raw tables, so that one bad key elsewhere in a
    // table neither hides a real problem nor invents a false one.
    let names = |objs: &[Obj]| -> Vec<(String, At)> {
        objs.iter()
            .filter_map(|o| o.peek_str("name").map(|n| (n, o.at_key("name"))))
            .collect()
    };
    let listener_names = names(&listener_objs);
    let pool_names_at = names(&pool_objs);
    let route_names = names(&route_objs);
    check_unique(ctx, listener_names.iter().map(|(n, a)| (n.as_str(), a)), "listener");
    check_unique(ctx, pool_names_at.iter().map(|(n, a)| (n.as_str(), a)), "pool");
    check_unique(ctx, route_names.iter().map(|(n, a)| (n.as_str(), a)), "route");
    let pool_names: HashSet<&str> = pool_names_at.iter().map(|(n, _)| n.as_str()).collect();
    for o in &route_objs {
        if let Some(p) = o.peek_str("pool") {
            if !pool_names.contains(p.as_str()) {
                o.problem("pool", format!("unknown pool {p:?}"));
            }
        }
    }
    for o in listener_objs {
        o.finish();
    }
    for o in pool_objs {
        o.finish();
    }
    for o in route_objs {
        o.finish();
    }
    let mut binds: HashMap<SocketAddr, &str> = HashMap::new();
    // Port 0 asks the system for a free port: never a clash.
    for (l, at) in listeners.iter().filter(|(l, _)| l.bind.port() != 0) {
        if let Some(other) = binds.insert(l.bind, &l.name) {
            ctx.problem(
                at.path.clone(),
                at.line,
                format!("address {} is already used by listener {other:?}", l.bind),
            );
        }
    }
    if let Some(a) = &admin {
        if let Some(name) = binds.get(&a.0.bind) {
            ctx.problem(
                "admin.bind",
                a.1.line,
                format!("address {} is already used by listener {name:?}", a.0.bind),
            );
        }
    }
    check_shadowed_routes(ctx, &routes);

    Some(Config {
        server: server?,
        admin: admin?.0,
        log: log?,
        listeners: listeners.into_iter().map(|(l, _)| l).collect(),
        pools: pools.into_iter().map(|(p, _)| p).collect(),
        routes: routes.into_iter().map(|(r, _)| r).collect(),
        dns: dns?,
        hash: String::new(),
    })
}

fn check_unique<'a>(ctx: &Ctx, names: impl Iterator<Item = (&'a str, &'a At)>, what: &str) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (name, at) in names {
        if let Some(first) = seen.insert(name, at.line) {
            ctx.problem(
                at.path.clone(),
                at.line,
                format!("duplicate {what} name {name:?} (first defined at line {first})"),
            );
        }
    }
}

/// Two routes with the same host, the same path and overlapping methods: the second could never
/// be chosen, which is always a mistake worth reporting.
fn check_shadowed_routes(ctx: &Ctx, routes: &[(RouteConfig, RouteAt)]) {
    let any_host = [HostMatch::Exact(String::new())];
    type Seen<'a> = HashMap<(&'a HostMatch, &'a PathMatch), Vec<(usize, Option<&'a Vec<Method>>)>>;
    let mut seen: Seen = HashMap::new();
    for (i, (r, at)) in routes.iter().enumerate() {
        let hosts: &[HostMatch] = if r.hosts.is_empty() { &any_host } else { &r.hosts };
        for h in hosts {
            let entry = seen.entry((h, &r.path)).or_default();
            for (j, m) in entry.iter() {
                let overlap = match (m, &r.methods) {
                    (None, _) | (_, None) => true,
                    (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
                };
                if overlap {
                    ctx.problem(
                        &at.name.path,
                        at.name.line,
                        format!(
                            "route {:?} can never match: route {:?} has the same host, path and methods",
                            r.name, routes[*j].0.name
                        ),
                    );
                }
            }
            entry.push((i, r.methods.as_ref()));
        }
    }
}

fn read_dns(o: Option<Obj>) -> Option<DnsConfig> {
    let mut d = DnsConfig::default();
    let Some(o) = o else { return Some(d) };
    for (s, at) in o.str_list("servers").unwrap_or_default() {
        let parsed = s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
        match parsed {
            Ok(a) => d.servers.push(a),
            Err(_) => o.ctx().problem(
                at.path,
                at.line,
                format!("invalid name server {s:?}: expected an IP or IP:port"),
            ),
        }
    }
    if let Some(v) = o.duration("min_ttl") {
        d.min_ttl = v;
    }
    if let Some(v) = o.duration("max_ttl") {
        d.max_ttl = v;
    }
    if d.max_ttl < d.min_ttl || d.max_ttl.is_zero() {
        o.problem("max_ttl", "must be greater than 0 and at least min_ttl");
    }
    o.finish();
    Some(d)
}

fn read_server(o: Option<Obj>) -> Option<ServerConfig> {
    let mut s = ServerConfig {
        worker_threads: 0,
        graceful_shutdown_timeout: Duration::from_secs(30),
        max_connections: 100_000,
    };
    let Some(o) = o else { return Some(s) };
    if let Some(n) = o.uint("worker_threads", 1024) {
        s.worker_threads = n as usize;
    }
    if let Some(d) = o.duration("graceful_shutdown_timeout") {
        s.graceful_shutdown_timeout = d;
    }
    if let Some(n) = o.uint("max_connections", 10_000_000) {
        if n == 0 {
            o.problem("max_connections", "must be at least 1");
        }
        s.max_connections = n as usize;
    }
    for key in [
        "header_read_timeout",
        "idle_timeout",
        "max_header_bytes",
        "max_body_bytes",
    ] {
        o.unsupported(key, "client limits arrive with the robustness work");
    }
    o.finish();
    Some(s)
}

fn read_admin(o: Option<Obj>, base: Option<&Path>) -> Option<(AdminConfig, At)> {
    let mut a = AdminConfig {
        bind: "127.0.0.1:9901".parse().expect("static address"),
        token_file: None,
        token: None,
    };
    let Some(o) = o else {
        return Some((a, At::default()));
    };
    let at = o.at_key("bind");
    if let Some(b) = o.str("bind") {
        match parse_bind(&b) {
            Ok(addr) => a.bind = addr,
            Err(e) => o.problem("bind", e),
        }
    }
    if let Some(f) = o.str("token_file") {
        let path = resolve(base, &f);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => a.token = Some(t.trim().to_string()),
            Ok(_) => o.problem("token_file", format!("{} is empty", path.display())),
            Err(e) => o.problem("token_file", format!("cannot read {}: {e}", path.display())),
        }
        a.token_file = Some(path);
    }
    if !a.bind.ip().is_loopback() && a.token.is_none() && !o.has("token_file") {
        o.problem(
            "bind",
            format!(
                "the admin API on a non-loopback address ({}) needs token_file, so that only holders of the token can reload or purge",
                a.bind
            ),
        );
    }
    o.finish();
    Some((a, at))
}

fn read_log(o: Option<Obj>, base: Option<&Path>) -> Option<LogConfig> {
    let mut l = LogConfig {
        level: "info".into(),
        access: AccessTarget::Stdout,
        format: AccessFormat::Json,
    };
    let Some(o) = o else { return Some(l) };
    if let Some(level) = o.str("level") {
        if ["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            l.level = level;
        } else {
            o.problem(
                "level",
                format!("unknown level {level:?} (error, warn, info, debug, trace)"),
            );
        }
    }
    if let Some(a) = o.str("access") {
        l.access = match a.as_str() {
            "off" => AccessTarget::Off,
            "stdout" => AccessTarget::Stdout,
            "" => {
                o.problem("access", "must be \"off\", \"stdout\" or a file path");
                AccessTarget::Off
            }
            p => AccessTarget::File(resolve(base, p)),
        };
    }
    if let Some(f) = o.str("format") {
        match f.as_str() {
            "json" => l.format = AccessFormat::Json,
            "combined" => l.format = AccessFormat::Combined,
            _ => o.problem("format", format!("unknown format {f:?} (json, combined)")),
        }
    }
    o.finish();
    Some(l)
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("invalid address {s:?}: expected IP:port, like \"127.0.0.1:8080\" or \"[::]:80\""))
}

fn read_listener(o: &Obj) -> Option<(ListenerConfig, At)> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let bind = o.req_str("bind").and_then(|b| match parse_bind(&b) {
        Ok(a) => Some(a),
        Err(e) => {
            o.problem("bind", e);
            None
        }
    });
    if o.bool("proxy_protocol") == Some(true) {
        o.problem(
            "proxy_protocol",
            "not supported yet (PROXY protocol arrives with geo-routing)",
        );
    }
    o.unsupported("redirect_https", "arrives with TLS termination");
    o.unsupported("tls", "TLS termination");
    Some((
        ListenerConfig {
            name: name?,
            bind: bind?,
        },
        o.at_key("bind"),
    ))
}

/// Names are metrics labels and log fields: keep them to a plain, unambiguous alphabet.
fn check_name(o: &Obj, key: &str, name: &str) {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        o.problem(
            key,
            format!("invalid name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
}

fn read_pool(o: &Obj) -> Option<(PoolConfig, At)> {
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
            "consistent_hash" => {
                o.problem(
                    "balance",
                    "consistent_hash is not supported yet (arrives with sticky sessions)",
                );
                None
            }
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
    if o.bool("tls") == Some(true) {
        o.problem("tls", "not supported yet (upstream TLS arrives with TLS termination)");
    }
    o.unsupported("ca_file", "upstream TLS arrives with TLS termination");
    o.unsupported("datacenter", "geo-routing");
    for key in ["hash_key", "hash_balance_factor"] {
        o.unsupported(key, "consistent hashing");
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
            health,
            passive,
            slow_start,
            panic_threshold,
            max_connections_per_backend,
            queue_timeout,
            queue_size,
        },
        o.at(),
    ))
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
    h.unsupported("lag_header", "replica lag arrives with the read/write split");
    HealthCheck {
        path,
        host,
        interval,
        timeout,
        rise: rise.max(1),
        fall: fall.max(1),
        expect,
        assume_healthy,
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

fn positive_duration(o: &Obj, key: &'static str, default: Duration) -> Duration {
    match o.duration(key) {
        Some(d) if d.is_zero() => {
            o.problem(key, "must be greater than 0");
            default
        }
        Some(d) => d,
        None => default,
    }
}

struct RouteAt {
    name: At,
}

fn read_route(o: &Obj) -> Option<(RouteConfig, RouteAt)> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let mut hosts = Vec::new();
    for (h, at) in o.str_or_list("host").unwrap_or_default() {
        match parse_host(&h) {
            Ok(m) => {
                if hosts.contains(&m) {
                    o.ctx().problem(at.path, at.line, format!("host {h:?} is listed twice"));
                } else {
                    hosts.push(m);
                }
            }
            Err(e) => o.ctx().problem(at.path, at.line, e),
        }
    }
    if o.is_array("host") && o.str_or_list_len("host") == Some(0) {
        o.problem(
            "host",
            "an empty host list matches nothing; omit `host` to match any host",
        );
    }
    let prefix = o.str("path_prefix");
    let exact = o.str("path");
    let path = match (prefix, exact) {
        (Some(_), Some(_)) => {
            o.problem("path", "use either `path` or `path_prefix`, not both");
            None
        }
        (Some(p), None) => check_path(o, "path_prefix", &p).then_some(PathMatch::Prefix(p)),
        (None, Some(p)) => check_path(o, "path", &p).then_some(PathMatch::Exact(p)),
        (None, None) => Some(PathMatch::Prefix("/".into())),
    };
    let methods = o.str_list("methods").map(|list| {
        if list.is_empty() {
            o.problem(
                "methods",
                "an empty method list matches nothing; omit `methods` to match any",
            );
        }
        list.into_iter()
            .filter_map(|(m, at)| {
                let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if valid => Some(method),
                    _ => {
                        o.ctx().problem(
                            at.path,
                            at.line,
                            format!("invalid method {m:?}: methods are upper-case tokens like \"GET\""),
                        );
                        None
                    }
                }
            })
            .collect()
    });
    let strip_prefix = o.bool("strip_prefix").unwrap_or(false);
    if strip_prefix && !matches!(path, Some(PathMatch::Prefix(_))) && o.has("path") {
        o.problem(
            "strip_prefix",
            "needs `path_prefix` (there is no prefix to strip from an exact `path`)",
        );
    }
    let pool = o.str("pool");
    if o.has("pools") {
        o.unsupported("pools", "geo-routing across data-center pools");
    }
    o.unsupported("split", "the read/write split");
    o.unsupported("sticky", "sticky sessions");
    o.unsupported("cache", "the response cache");
    if pool.is_none() && !o.has("pools") && !o.has("split") {
        o.problem_here("missing required key `pool` (the pool this route sends to)");
    }
    Some((
        RouteConfig {
            name: name?,
            hosts,
            path: path?,
            methods,
            strip_prefix,
            pool: pool.unwrap_or_default(),
        },
        RouteAt { name: o.at_key("name") },
    ))
}

fn check_path(o: &Obj, key: &'static str, p: &str) -> bool {
    if !p.starts_with('/') {
        o.problem(key, format!("{p:?} must start with '/'"));
        return false;
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        o.problem(
            key,
            format!("{p:?} must be a plain path (no query, fragment, spaces or control characters)"),
        );
        return false;
    }
    true
}

fn parse_host(h: &str) -> Result<HostMatch, String> {
    let lower = h.to_ascii_lowercase();
    // IPv6 literals match the bracketed form requests carry in Host: "[::1]".
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    if let Ok(IpAddr::V6(v6)) = bare.parse::<IpAddr>() {
        return Ok(HostMatch::Exact(format!("[{v6}]")));
    }
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    if let Some(rest) = lower.strip_prefix("*.") {
        if valid_label(rest) {
            return Ok(HostMatch::Wildcard(format!(".{rest}")));
        }
    } else if valid_label(&lower) || lower.parse::<IpAddr>().is_ok() {
        return Ok(HostMatch::Exact(lower));
    }
    Err(format!(
        "invalid host {h:?}: expected a name like \"example.com\" or a leading wildcard like \"*.example.com\""
    ))
}
