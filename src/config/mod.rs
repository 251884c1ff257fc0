//! The configuration: read a TOML file, check every key and cross-reference, and return either a
//! `Config` or every problem at once, each with its key path and line.

mod cache;
mod geo;
mod health;
pub mod ids;
mod policy;
mod pool;
mod reader;
mod route;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

pub use cache::{CacheConfig, RouteCacheConfig};
pub use geo::{DatacenterConfig, GeoConfig};
pub use health::{parse_status_ranges, HealthCheck, Passive};
pub use ids::{ListenerId, PoolId, RouteId};
pub use policy::{LimitConfig, LimitKeyPart, MirrorConfig, RateLimitConfig, RedisDown};
use pool::read_pool;
pub use pool::{load_trust_roots, UpstreamTlsConfig};
use route::{check_shadowed_routes, read_route, RouteAt};

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
    pub session: SessionConfig,
    pub geo: GeoConfig,
    pub datacenters: Vec<DatacenterConfig>,
    pub cache: CacheConfig,
    /// `[ratelimit]`: settings of every route limit, Redis sharing.
    pub ratelimit: RateLimitConfig,
    /// Hex digest of the file's bytes, shown in /status to tell generations apart.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// 0 means one per CPU core.
    pub worker_threads: usize,
    pub graceful_shutdown_timeout: Duration,
    pub max_connections: usize,
    /// A client must send a whole request head within this (HTTP/1), else 408.
    pub header_read_timeout: Duration,
    /// Keep-alive connections with no request for this long are closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// The largest request head (HTTP/1) or header list (HTTP/2): 431 beyond it.
    pub max_header_bytes: usize,
    /// The largest request body, 413 beyond it; 0: unlimited.
    pub max_body_bytes: u64,
    /// Streams an HTTP/2 client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            worker_threads: 0,
            graceful_shutdown_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_body_bytes: 0,
            h2_max_concurrent_streams: 256,
        }
    }
}

/// Bounds of `max_header_bytes`.
pub const MIN_HEADER_BYTES: u64 = 1 << 10;
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

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
    /// Expect a PROXY protocol (v1 or v2) header from an L4 balancer on every connection.
    pub proxy_protocol: bool,
    /// `[listener.tls]`: terminate TLS.
    pub tls: Option<tls::TlsConfig>,
    /// Answer every request with a 308 to https on this port (plain listeners only).
    pub redirect_https: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Random,
    /// Requests with the pool's hash key go to the key's backend on a hash ring; others are
    /// spread round robin.
    ConsistentHash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
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

/// What a consistent-hash pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
    Path,
}

/// `[route.sticky]`: session affinity by a signed cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    pub max_age: Duration,
    /// While the pinned backend is down: 503 (true) or move the client (false).
    pub strict: bool,
}

/// `[session]`: the key that signs cookies.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub secret_file: Option<PathBuf>,
    /// The key read from `secret_file` (never printed); None: a random key per process.
    pub key: Option<crate::session::SessionKey>,
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
    pub datacenter: Option<String>,
    /// consistent_hash only.
    pub hash_key: Option<HashKey>,
    pub hash_balance_factor: Option<f64>,
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
    /// `tls = true`: TLS to the backends, verified against `ca_file` or the system roots.
    pub tls: Option<UpstreamTlsConfig>,
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
    /// The pool, or with `split`, the primary pool.
    pub pool: String,
    pub sticky: Option<StickyConfig>,
    pub split: Option<SplitConfig>,
    /// Geo routing: the pools of several data centers (`pools = [...]`); empty otherwise.
    pub pools: Vec<String>,
    /// `[route.cache]`: this route's GET and HEAD responses are cached.
    pub cache: Option<RouteCacheConfig>,
    /// `[[route.limit]]`: rate limits, checked in order (a name shared with other routes is
    /// already resolved to its definition).
    pub limits: Vec<LimitConfig>,
    /// `[route.mirror]`: copies to a shadow pool.
    pub mirror: Option<MirrorConfig>,
}

/// `[route.split]`: writes to the primary pool, reads to the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitConfig {
    pub primary: String,
    pub replicas: String,
    pub read_methods: Vec<Method>,
    /// After a write, that client's reads go to the primary this long (0: off).
    pub read_your_writes: Duration,
    pub max_replica_lag: Duration,
    pub force_primary_header: Option<http::HeaderName>,
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
            return Err(vec![Problem {
                path: "(syntax)".into(),
                line,
                message: reader::syntax_message(text, &e),
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

pub(super) fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
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
    let session = read_session(root.obj("session"), base);
    let geo = geo::read_geo(root.obj("geo"), base);
    let dc_objs = root.objs("datacenter");
    let datacenters: Vec<_> = dc_objs.iter().filter_map(geo::read_datacenter).collect();
    let cache = cache::read_cache(root.obj("cache"));
    let ratelimit = policy::read_ratelimit(root.obj("ratelimit"));

    let listener_objs = root.objs("listener");
    // `listener = []` is as empty as no listener at all (a wrong type is reported by `objs`).
    let wrong_type = root.has("listener") && !root.is_array("listener");
    if listener_objs.is_empty() && !wrong_type {
        root.problem_here("at least one [[listener]] is required");
    }
    let listeners: Vec<_> = listener_objs.iter().filter_map(|o| read_listener(o, base)).collect();

    let pool_objs = root.objs("pool");
    let pools: Vec<_> = pool_objs.iter().filter_map(|o| read_pool(o, base)).collect();

    let route_objs = root.objs("route");
    let mut routes: Vec<(RouteConfig, RouteAt)> = route_objs.iter().filter_map(read_route).collect();
    {
        let mut refs: Vec<(&mut Vec<LimitConfig>, &[At])> = routes
            .iter_mut()
            .map(|(r, at)| (&mut r.limits, at.limits.as_slice()))
            .collect();
        policy::resolve_shared_limits(root.ctx(), &mut refs);
    }

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
    let dc_names = names(&dc_objs);
    check_unique(ctx, dc_names.iter().map(|(n, a)| (n.as_str(), a)), "data center");
    if let Some(g) = &geo {
        geo::check_datacenters(ctx, g, &dc_objs);
    }
    for o in &dc_objs {
        o.finish_ref();
    }
    let pool_dc: HashMap<String, Option<String>> = pool_objs
        .iter()
        .filter_map(|o| Some((o.peek_str("name")?, o.peek_str("datacenter"))))
        .collect();
    for o in &pool_objs {
        if let Some(dc) = o.peek_str("datacenter") {
            if !dc_names.iter().any(|(n, _)| *n == dc) {
                o.problem("datacenter", format!("unknown data center {dc:?}"));
            }
        }
    }
    for o in &route_objs {
        let list = o.peek_str_list("pools");
        for (p, at) in &list {
            match pool_dc.get(p) {
                None => ctx.problem(&at.path, at.line, format!("unknown pool {p:?}")),
                Some(None) if list.len() > 1 => ctx.problem(
                    &at.path,
                    at.line,
                    format!("pool {p:?} is in no data center (set its `datacenter`): a geo route chooses pools by data center"),
                ),
                Some(_) => {}
            }
        }
    }
    for o in &route_objs {
        for key in ["primary", "replicas"] {
            if let Some((p, at)) = o.peek_sub_str("split", key) {
                if !pool_names.contains(p.as_str()) {
                    ctx.problem(at.path, at.line, format!("unknown pool {p:?}"));
                }
            }
        }
        if let Some(p) = o.peek_str("pool") {
            if !pool_names.contains(p.as_str()) {
                o.problem("pool", format!("unknown pool {p:?}"));
            }
        }
        if let Some((p, at)) = o.peek_sub_str("mirror", "pool") {
            if !pool_names.contains(p.as_str()) {
                ctx.problem(at.path, at.line, format!("unknown pool {p:?}"));
            }
        }
    }
    if let (Some(rl), Some(s)) = (&ratelimit, &session) {
        if rl.redis.is_some() && s.secret_file.is_none() {
            ctx.problem(
                "ratelimit.redis",
                root.key_line("ratelimit"),
                "sharing limits through Redis needs a [session] secret_file shared by the instances (it keys the names of the counters)",
            );
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
        session: session?,
        datacenters: datacenters.into_iter().map(|(d, _)| d).collect(),
        geo: geo?,
        cache: cache?,
        ratelimit: ratelimit?,
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

fn read_session(o: Option<Obj>, base: Option<&Path>) -> Option<SessionConfig> {
    let Some(o) = o else {
        return Some(SessionConfig::default());
    };
    let mut s = SessionConfig::default();
    if let Some(f) = o.str("secret_file") {
        let path = resolve(base, &f);
        match crate::session::SessionKey::from_file(&path) {
            Ok(k) => s.key = Some(k),
            Err(e) => o.problem("secret_file", e.to_string()),
        }
        s.secret_file = Some(path);
    }
    o.finish();
    Some(s)
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
    let mut s = ServerConfig::default();
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
    s.header_read_timeout = positive_duration(&o, "header_read_timeout", s.header_read_timeout);
    s.idle_timeout = positive_duration(&o, "idle_timeout", s.idle_timeout);
    if let Some(n) = o.size("max_header_bytes") {
        if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) {
            s.max_header_bytes = n as usize;
        } else {
            o.problem(
                "max_header_bytes",
                format!("must be between 1KiB and 1MiB ({MIN_HEADER_BYTES} to {MAX_HEADER_BYTES} bytes), found {n}"),
            );
        }
    }
    if let Some(n) = o.size("max_body_bytes") {
        s.max_body_bytes = n;
    }
    if let Some(n) = o.uint("h2_max_concurrent_streams", 10_000) {
        if n == 0 {
            o.problem("h2_max_concurrent_streams", "must be at least 1");
        }
        s.h2_max_concurrent_streams = n as u32;
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

fn read_listener(o: &Obj, base: Option<&Path>) -> Option<(ListenerConfig, At)> {
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
    let proxy_protocol = o.bool("proxy_protocol").unwrap_or(false);
    let has_tls = o.has("tls");
    let tls = o.obj("tls").map(|t| tls::read_tls(t, base));
    let redirect_https = match o.uint("redirect_https", 65535) {
        Some(0) => {
            o.problem("redirect_https", "must be a port between 1 and 65535");
            None
        }
        Some(_) if has_tls => {
            o.problem(
                "redirect_https",
                "is for plain listeners: a TLS listener cannot redirect to https",
            );
            None
        }
        Some(p) => Some(p as u16),
        None => None,
    };
    let tls = match tls {
        Some(None) => return None,
        Some(Some(t)) => Some(t),
        None => None,
    };
    Some((
        ListenerConfig {
            name: name?,
            bind: bind?,
            proxy_protocol,
            tls,
            redirect_https,
        },
        o.at_key("bind"),
    ))
}

/// Names are metrics labels and log fields: keep them to a plain, unambiguous alphabet.
pub(super) fn check_name(o: &Obj, key: &str, name: &str) {
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

pub(super) fn positive_duration(o: &Obj, key: &'static str, default: Duration) -> Duration {
    match o.duration(key) {
        Some(d) if d.is_zero() => {
            o.problem(key, "must be greater than 0");
            default
        }
        Some(d) => d,
        None => default,
    }
}
