//! Route policies: `[ratelimit]` (the process-wide settings, Redis sharing), `[[route.limit]]`
//! (rate limits on a route, shared by name across routes) and `[route.mirror]` (traffic copied
//! to a shadow pool). Plain data and its checks only.

use std::collections::HashMap;
use std::time::Duration;

use super::reader::{At, Ctx, Obj};
use super::{check_name, positive_duration};

/// `[ratelimit]`: settings shared by every limit of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `redis://…` (or `rediss://…`): instances sharing this Redis enforce each limit together.
    pub redis: Option<String>,
    /// How often each instance exchanges its counts with Redis.
    pub sync_interval: Duration,
    /// A Redis exchange (or connection) slower than this counts as Redis being down.
    pub redis_timeout: Duration,
    /// What a limit does while Redis is down.
    pub on_redis_down: RedisDown,
    /// Instances assumed for the local share until Redis has told how many there are.
    pub instances: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            redis: None,
            sync_interval: Duration::from_millis(100),
            redis_timeout: Duration::from_millis(250),
            on_redis_down: RedisDown::LocalShare,
            instances: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisDown {
    /// Each instance enforces rate / instances (and burst / instances) on its own.
    LocalShare,
    /// No limit is enforced until Redis is back.
    FailOpen,
}

/// One part of a limit's key; a request lacking a header or cookie part is not counted by
/// that limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKeyPart {
    /// The client address (PROXY protocol source, trusted X-Forwarded-For), by prefix.
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    /// The route's name: with nothing else, one bucket for the whole route.
    Route,
}

/// `[[route.limit]]`: a GCRA limit of `rate` requests per `per`, with `burst`, per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// Routes naming the same limit share its counters.
    pub name: String,
    pub rate: u64,
    pub per: Duration,
    /// Requests a fresh key may send at once.
    pub burst: u64,
    pub key: Vec<LimitKeyPart>,
    /// IPv4 clients are grouped by this prefix length (32: each address alone).
    pub ipv4_prefix: u8,
    /// IPv6 clients are grouped by this prefix length (64: one customer's usual allocation).
    pub ipv6_prefix: u8,
    /// The key table holds at most this many keys; idle keys are reused first.
    pub max_keys: u64,
}

/// `[route.mirror]`: copies of the route's requests to a shadow pool.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    pub pool: String,
    /// Share of requests mirrored, 0 to 100.
    pub percent: f64,
    /// Request bodies up to this size are mirrored; a request with a larger body is not.
    pub max_body_bytes: u64,
    /// Copies in flight at once for this route; more are dropped (and counted).
    pub max_in_flight: u32,
    /// Added to every copy, value "1", so the shadow can tell copies apart.
    pub header: http::HeaderName,
}

pub(super) fn read_ratelimit(o: Option<Obj>) -> Option<RateLimitConfig> {
    let mut c = RateLimitConfig::default();
    let Some(o) = o else { return Some(c) };
    match o.str("redis") {
        Some(u) if u.is_empty() => {}
        Some(u) => {
            if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://")) {
                o.problem(
                    "redis",
                    format!("{:?} is not a Redis URL: expected \"redis://host:port/db\"", redact(&u)),
                );
            } else if u.starts_with("rediss://") {
                o.problem(
                    "redis",
                    "TLS to Redis (rediss://) is not supported: use redis:// on a private network",
                );
            } else if u.starts_with("redis+unix://") {
                o.problem("redis", "Unix sockets are not supported: use redis://host:port");
            } else if let Err(e) = redis_url_ok(&u) {
                o.problem("redis", e);
            } else {
                c.redis = Some(u);
            }
        }
        None => {}
    }
    c.sync_interval = positive_duration(&o, "sync_interval", c.sync_interval);
    if c.sync_interval < Duration::from_millis(10) {
        o.problem("sync_interval", "must be at least 10ms");
    }
    c.redis_timeout = positive_duration(&o, "redis_timeout", c.redis_timeout);
    match o.str("on_redis_down").as_deref() {
        None | Some("local_share") => {}
        Some("fail_open") => c.on_redis_down = RedisDown::FailOpen,
        Some(v) => o.problem("on_redis_down", format!("unknown value {v:?} (local_share, fail_open)")),
    }
    if let Some(n) = o.uint("instances", 10_000) {
        if n == 0 {
            o.problem("instances", "must be at least 1");
        } else {
            c.instances = n as u32;
        }
    }
    o.finish();
    Some(c)
}

/// A URL with its password hidden, for messages.
fn redact(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
        _ => u.to_string(),
    }
}

/// Parsed by the Redis client itself (no connection is made).
fn redis_url_ok(u: &str) -> Result<(), String> {
    ::redis::Client::open(u)
        .map(|_| ())
        .map_err(|e| format!("invalid Redis URL {:?}: {e}", redact(u)))
}

pub(super) fn read_route_limits(o: &Obj) -> (Vec<LimitConfig>, Vec<At>) {
    let mut out = Vec::new();
    let mut at = Vec::new();
    for l in o.objs("limit") {
        if let Some(c) = read_limit(&l) {
            at.push(l.at());
            out.push(c);
        }
        l.finish();
    }
    (out, at)
}

/// A limit with only a `name` refers to one defined on another route: `rate` 0 marks it until
/// [`resolve_shared_limits`] fills it in.
fn read_limit(o: &Obj) -> Option<LimitConfig> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let defines = ["rate", "per", "burst", "key", "ipv4_prefix", "ipv6_prefix", "max_keys"]
        .iter()
        .any(|k| o.has(k));
    if !defines {
        return Some(LimitConfig {
            name: name?,
            rate: 0,
            per: Duration::from_secs(1),
            burst: 0,
            key: Vec::new(),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_keys: 0,
        });
    }
    let rate = match o.uint("rate", 1_000_000_000) {
        Some(0) => {
            o.problem("rate", "must be at least 1 (to refuse a route, leave it out)");
            None
        }
        Some(r) => Some(r),
        None => {
            if !o.has("rate") {
                o.problem_here("missing required key `rate` (requests per `per`)");
            }
            None
        }
    };
    let per = positive_duration(o, "per", Duration::from_secs(1));
    let burst = match o.uint("burst", 1_000_000_000) {
        Some(0) => {
            o.problem("burst", "must be at least 1");
            None
        }
        Some(b) => Some(b),
        None => rate,
    };
    if let Some(r) = rate {
        // The emission interval is per / rate in nanoseconds: it must not round to nothing.
        if per.as_nanos() / (r as u128) < 1_000 {
            o.problem(
                "rate",
                "more than one request per microsecond cannot be limited this way",
            );
        }
    }
    let mut key = Vec::new();
    let parts = o
        .str_or_list("key")
        .unwrap_or_else(|| vec![("client_ip".into(), o.at_key("key"))]);
    if parts.is_empty() {
        o.problem(
            "key",
            "an empty key list: use \"route\" for one bucket for the whole route",
        );
    }
    for (p, at) in parts {
        match parse_key_part(&p) {
            Ok(k) if key.contains(&k) => o
                .ctx()
                .problem(at.path, at.line, format!("key part {p:?} is listed twice")),
            Ok(k) => key.push(k),
            Err(e) => o.ctx().problem(at.path, at.line, e),
        }
    }
    let prefix = |k: &'static str, max: u64, default: u8| match o.uint(k, max) {
        Some(0) => {
            o.problem(
                k,
                "must be at least 1 (0 would put every client in one bucket: use key = \"route\")",
            );
            default
        }
        Some(n) => n as u8,
        None => default,
    };
    let ipv4_prefix = prefix("ipv4_prefix", 32, 32);
    let ipv6_prefix = prefix("ipv6_prefix", 128, 64);
    let max_keys = match o.uint("max_keys", 1 << 26) {
        Some(n) if n < 64 => {
            o.problem("max_keys", "must be at least 64");
            None
        }
        Some(n) => Some(n),
        None => Some(100_000),
    };
    Some(LimitConfig {
        name: name?,
        rate: rate?,
        per,
        burst: burst?,
        key,
        ipv4_prefix,
        ipv6_prefix,
        max_keys: max_keys?,
    })
}

fn parse_key_part(p: &str) -> Result<LimitKeyPart, String> {
    let bad =
        || format!("invalid key part {p:?}: expected \"client_ip\", \"route\", \"header:NAME\" or \"cookie:NAME\"");
    match p {
        "client_ip" => return Ok(LimitKeyPart::ClientIp),
        "route" => return Ok(LimitKeyPart::Route),
        _ => {}
    }
    if let Some(h) = p.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.as_bytes())
            .map(LimitKeyPart::Header)
            .map_err(|_| format!("{h:?} is not a valid header name"));
    }
    if let Some(c) = p.strip_prefix("cookie:") {
        let token = !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        return if token {
            Ok(LimitKeyPart::Cookie(c.to_string()))
        } else {
            Err(format!("{c:?} is not a valid cookie name"))
        };
    }
    Err(bad())
}

/// Fill in name-only references from the route that defines the limit, and report limits of
/// one name defined differently or never defined.
pub(super) fn resolve_shared_limits(ctx: &Ctx, routes: &mut [(&mut Vec<LimitConfig>, &[At])]) {
    let mut defs: HashMap<String, (LimitConfig, At)> = HashMap::new();
    for (limits, ats) in routes.iter() {
        for (l, at) in limits.iter().zip(ats.iter()) {
            if l.rate == 0 {
                continue;
            }
            match defs.get(&l.name) {
                Some((d, first)) if d != l => ctx.problem(
                    &at.path,
                    at.line,
                    format!(
                        "limit {:?} is defined differently at {} (line {}): give only `name` to share it, or another name",
                        l.name, first.path, first.line
                    ),
                ),
                Some(_) => {}
                None => {
                    defs.insert(l.name.clone(), (l.clone(), at.clone()));
                }
            }
        }
    }
    for (limits, ats) in routes.iter_mut() {
        let mut seen: Vec<String> = Vec::new();
        for (l, at) in limits.iter_mut().zip(ats.iter()) {
            if seen.contains(&l.name) {
                ctx.problem(
                    &at.path,
                    at.line,
                    format!("limit {:?} is listed twice on this route", l.name),
                );
            }
            seen.push(l.name.clone());
            if l.rate == 0 {
                match defs.get(&l.name) {
                    Some((d, _)) => *l = d.clone(),
                    None => ctx.problem(
                        &at.path,
                        at.line,
                        format!(
                            "limit {:?} is not defined: give it a `rate` here or on another route",
                            l.name
                        ),
                    ),
                }
            }
        }
    }
}

pub(super) fn read_route_mirror(o: &Obj) -> Option<MirrorConfig> {
    let m = o.obj("mirror")?;
    let pool = m.req_str("pool");
    let percent = match m.float("percent") {
        Some(p) if !(0.0..=100.0).contains(&p) => {
            m.problem("percent", format!("must be between 0 and 100, found {p}"));
            100.0
        }
        Some(p) => p,
        None => 100.0,
    };
    let max_body_bytes = m.size("max_body_bytes").unwrap_or(64 << 10);
    if max_body_bytes > 16 << 20 {
        m.problem(
            "max_body_bytes",
            "must be at most 16MiB (copies are held in memory until sent)",
        );
    }
    let max_in_flight = match m.uint("max_in_flight", 1_000_000) {
        Some(0) => {
            m.problem("max_in_flight", "must be at least 1");
            64
        }
        Some(n) => n as u32,
        None => 64,
    };
    let header = match m.str("header") {
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                m.problem("header", format!("{h:?} is not a valid header name"));
                http::HeaderName::from_static("x-waypost-mirror")
            }
        },
        None => http::HeaderName::from_static("x-waypost-mirror"),
    };
    m.finish();
    Some(MirrorConfig {
        pool: pool?,
        percent,
        max_body_bytes,
        max_in_flight,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Problem};
    use super::*;

    fn config(extra_top: &str, route_a: &str, route_b: &str) -> String {
        format!(
            r#"
[[listener]]
name = "http"
bind = "127.0.0.1:0"
[[pool]]
name = "web"
backends = [{{ address = "127.0.0.1:9001" }}]
[[pool]]
name = "shadow"
backends = [{{ address = "127.0.0.1:9002" }}]
{extra_top}
[[route]]
name = "a"
path_prefix = "/a/"
pool = "web"
{route_a}
[[route]]
name = "b"
path_prefix = "/b/"
pool = "web"
{route_b}
"#
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, None).expect_err("expected problems")
    }

    fn has(ps: &[Problem], path: &str, msg: &str) -> bool {
        ps.iter()
            .any(|p| p.path == path && p.message.contains(msg) && p.line > 0)
    }

    #[test]
    fn a_limit_with_defaults_and_a_shared_reference() {
        let c = parse(
            &config(
                "",
                "[[route.limit]]\nname = \"per-ip\"\nrate = 10\n[[route.limit]]\nname = \"tok\"\nrate = 5\nper = \"1m\"\nburst = 2\nkey = [\"header:x-api-key\", \"cookie:sid\", \"route\"]\nipv6_prefix = 48",
                "[[route.limit]]\nname = \"per-ip\"",
            ),
            None,
        )
        .expect("valid");
        let a = &c.routes[0].limits;
        assert_eq!(a[0].rate, 10);
        assert_eq!(a[0].burst, 10, "burst defaults to the rate");
        assert_eq!(a[0].key, vec![LimitKeyPart::ClientIp]);
        assert_eq!((a[0].ipv4_prefix, a[0].ipv6_prefix, a[0].max_keys), (32, 64, 100_000));
        assert_eq!(a[1].per, Duration::from_secs(60));
        assert_eq!(
            a[1].key,
            vec![
                LimitKeyPart::Header(http::HeaderName::from_static("x-api-key")),
                LimitKeyPart::Cookie("sid".into()),
                LimitKeyPart::Route
            ]
        );
        assert_eq!(
            c.routes[1].limits[0], a[0],
            "a name-only limit is the shared definition"
        );
    }

    #[test]
    fn a_shared_name_defined_twice_differently_or_never_is_an_error() {
        let ps = problems(&config(
            "",
            "[[route.limit]]\nname = \"x\"\nrate = 10",
            "[[route.limit]]\nname = \"x\"\nrate = 11\n[[route.limit]]\nname = \"nowhere\"",
        ));
        assert!(
            has(&ps, "route[1].limit[0]", "defined differently at route[0].limit[0]"),
            "{ps:?}"
        );
        assert!(
            has(&ps, "route[1].limit[1]", "limit \"nowhere\" is not defined"),
            "{ps:?}"
        );
    }

    #[test]
    fn bad_limit_values_name_their_key() {
        let ps = problems(&config(
            "",
            "[[route.limit]]\nname = \"x\"\nrate = 0\nkey = [\"client_ip\", \"query:a\"]\nipv6_prefix = 129\nmax_keys = 10\nbogus = 1",
            "[[route.limit]]\nname = \"y\"\nper = \"1s\"",
        ));
        assert!(has(&ps, "route[0].limit[0].rate", "at least 1"), "{ps:?}");
        assert!(
            has(&ps, "route[0].limit[0].key[1]", "invalid key part \"query:a\""),
            "{ps:?}"
        );
        assert!(has(&ps, "route[0].limit[0].ipv6_prefix", "between 0 and 128"), "{ps:?}");
        assert!(has(&ps, "route[0].limit[0].max_keys", "at least 64"), "{ps:?}");
        assert!(has(&ps, "route[0].limit[0].bogus", "unknown key"), "{ps:?}");
        assert!(has(&ps, "route[1].limit[0]", "missing required key `rate`"), "{ps:?}");
    }

    #[test]
    fn mirror_settings_and_their_errors() {
        let c = parse(
            &config("", "[route.mirror]\npool = \"shadow\"\npercent = 12.5", ""),
            None,
        )
        .expect("valid");
        let m = c.routes[0].mirror.as_ref().expect("mirror");
        assert_eq!(
            (m.pool.as_str(), m.percent, m.max_body_bytes, m.max_in_flight),
            ("shadow", 12.5, 65536, 64)
        );
        assert_eq!(m.header, "x-waypost-mirror");
        let ps = problems(&config(
            "",
            "[route.mirror]\npool = \"nope\"\npercent = 101\nmax_in_flight = 0",
            "[route.mirror]\nheader = \"bad header\"",
        ));
        assert!(has(&ps, "route[0].mirror.pool", "unknown pool \"nope\""), "{ps:?}");
        assert!(has(&ps, "route[0].mirror.percent", "between 0 and 100"), "{ps:?}");
        assert!(has(&ps, "route[0].mirror.max_in_flight", "at least 1"), "{ps:?}");
        assert!(has(&ps, "route[1].mirror", "missing required key `pool`"), "{ps:?}");
        assert!(has(&ps, "route[1].mirror.header", "not a valid header name"), "{ps:?}");
    }

    #[test]
    fn ratelimit_table_and_redis_needs_a_shared_secret() {
        let c = parse(
            &config(
                "[ratelimit]\nsync_interval = \"50ms\"\non_redis_down = \"fail_open\"\ninstances = 3",
                "",
                "",
            ),
            None,
        )
        .expect("valid");
        assert_eq!(c.ratelimit.sync_interval, Duration::from_millis(50));
        assert_eq!(c.ratelimit.on_redis_down, RedisDown::FailOpen);
        assert_eq!(c.ratelimit.instances, 3);
        assert_eq!(c.ratelimit.redis, None);
        let ps = problems(&config("[ratelimit]\nredis = \"redis://127.0.0.1:6379\"", "", ""));
        assert!(has(&ps, "ratelimit.redis", "needs a [session] secret_file"), "{ps:?}");
        let ps = problems(&config(
            "[ratelimit]\nredis = \"http://x\"\non_redis_down = \"maybe\"\nsync_interval = \"1ms\"",
            "",
            "",
        ));
        assert!(has(&ps, "ratelimit.redis", "not a Redis URL"), "{ps:?}");
        assert!(has(&ps, "ratelimit.on_redis_down", "unknown value \"maybe\""), "{ps:?}");
        assert!(has(&ps, "ratelimit.sync_interval", "at least 10ms"), "{ps:?}");
        let ps = problems(&config("[ratelimit]\nredis = \"redis://:pw@host:notaport/\"", "", ""));
        assert!(has(&ps, "ratelimit.redis", "invalid Redis URL"), "{ps:?}");
        assert!(ps.iter().all(|p| !p.message.contains("pw")), "{ps:?}");
    }

    #[test]
    fn a_password_in_a_bad_redis_url_is_not_printed() {
        assert_eq!(redact("redis://user:secret@host:1/0"), "redis://***@host:1/0");
    }
}
