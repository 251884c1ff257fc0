//! `waypost status`: read a running daemon's `GET /status` and print what the status page
//! shows, as terminal tables, for an SSH session. Request rates come from two readings of the
//! counters `--interval` apart (as the page computes them between two polls).
//!
//! Exit status: 0 when every pool has a backend that can take requests, 1 when a pool has
//! none, 2 when the status could not be read (unreachable, refused token, bad answer).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The environment variable that gives the admin token (else `[admin].token_file`).
pub const TOKEN_ENV: &str = "WAYPOST_ADMIN_TOKEN";

/// Where to read from and how.
pub struct Options<'a> {
    pub config: &'a Path,
    /// `--admin`: an address (`127.0.0.1:9901`, `[::1]:9901`) overriding the config file's.
    pub admin: Option<&'a str>,
    /// Time between the two readings that give request rates; zero: one reading, no rates.
    pub interval: Duration,
    /// Colour the states (when stdout is a terminal).
    pub color: bool,
}

/// What went wrong, to print before exiting with status 2.
#[derive(Debug)]
pub struct Failure(pub String);

/// Run the command: print the tables to stdout, return whether every pool can serve.
pub fn run(opts: &Options) -> Result<bool, Failure> {
    let (addr, token) = target(opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        let first = fetch(addr, token.as_deref()).await?;
        let (before, now) = if opts.interval.is_zero() {
            (None, first)
        } else {
            tokio::time::sleep(opts.interval).await;
            (Some(first), fetch(addr, token.as_deref()).await?)
        };
        let color = opts.color && std::io::stdout().is_terminal();
        print!("{}", render(&now, before.as_ref(), addr, color));
        Ok(all_pools_serve(&now))
    })
}

/// The admin address and the token to send.
fn target(opts: &Options) -> Result<(SocketAddr, Option<String>), Failure> {
    let env_token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.trim().is_empty());
    let given = opts.admin.map(parse_admin).transpose()?;
    // The config is read for the address when none was given, and for the token when the
    // environment has none; with --admin, a config that cannot be read only costs the token.
    let need_config = given.is_none() || env_token.is_none();
    let config = if need_config {
        match crate::config::load(opts.config) {
            Ok(c) => Some(c),
            Err(e) if given.is_none() => {
                return Err(Failure(format!(
                    "cannot read the admin address from {}: {}\n(give it with --admin ADDRESS)",
                    opts.config.display(),
                    describe(&e)
                )))
            }
            Err(e) => {
                if opts.config.exists() {
                    eprintln!(
                        "waypost status: {}: {} (continuing without its token)",
                        opts.config.display(),
                        describe(&e)
                    );
                }
                None
            }
        }
    } else {
        None
    };
    let addr = match given {
        Some(a) => a,
        None => {
            let bind = config.as_ref().map(|c| c.admin.bind).expect("loaded above");
            loopback_for(bind)
        }
    };
    let token = env_token
        .map(|t| t.trim().to_string())
        .or_else(|| config.and_then(|c| c.admin.token));
    Ok((addr, token))
}

fn describe(e: &crate::config::LoadError) -> String {
    match e {
        crate::config::LoadError::Invalid(p) => {
            let first = p.first().map(|p| p.to_string()).unwrap_or_default();
            format!("{} problem(s), first: {first}", p.len())
        }
        other => other.to_string(),
    }
}

/// A wildcard bind address is reached on loopback.
fn loopback_for(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port()),
        _ => bind,
    }
}

fn parse_admin(s: &str) -> Result<SocketAddr, Failure> {
    let t = s.trim().trim_start_matches("http://").trim_end_matches('/');
    t.parse::<SocketAddr>().map(loopback_for).map_err(|_| {
        Failure(format!(
            "--admin {s:?}: expected an address and port such as 127.0.0.1:9901 or [::1]:9901"
        ))
    })
}

async fn fetch(addr: SocketAddr, token: Option<&str>) -> Result<Value, Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failure(format!("{what} http://{addr}/status: {e}"));
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| fail("timed out connecting to", &"no answer in 5 s"))?
        .map_err(|e| fail("cannot connect to", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail("cannot talk to", &e))?;
    tokio::spawn(conn);
    let mut req = http::Request::get("/status")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail("cannot build a request to", &e))?;
    let read = async {
        let resp = sender.send_request(req).await.map_err(|e| fail("no answer from", &e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail("cannot read", &e))?
            .to_bytes();
        Ok::<_, Failure>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| fail("timed out reading", &"no answer in 10 s"))??;
    if status == http::StatusCode::UNAUTHORIZED {
        let why = if token.is_some() {
            "the admin token was refused"
        } else {
            "an admin token is needed: set WAYPOST_ADMIN_TOKEN or [admin].token_file"
        };
        return Err(Failure(format!("http://{addr}/status: 401: {why}")));
    }
    if !status.is_success() {
        return Err(Failure(format!(
            "http://{addr}/status answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| fail("not JSON from", &e))
}

/// True when every pool has a backend that can take requests now.
pub fn all_pools_serve(st: &Value) -> bool {
    pools_without_backend(st).is_empty()
}

fn pools_without_backend(st: &Value) -> Vec<&str> {
    arr(&st["pools"])
        .iter()
        .filter(|p| p["healthy_backends"].as_u64() == Some(0))
        .filter_map(|p| p["name"].as_str())
        .collect()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|f| format!("{f:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn rate(now: &Value, before: Option<&Value>, dt: f64) -> String {
    match (now.as_f64(), before.map(|b| b.as_f64().unwrap_or(0.0))) {
        (Some(n), Some(b)) if dt > 0.0 => format!("{:.1}/s", (n - b).max(0.0) / dt),
        _ => "-".into(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into())
}

fn bytes(v: &Value) -> String {
    let Some(mut b) = v.as_f64() else { return "-".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while b >= 1024.0 && i < units.len() - 1 {
        b /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b:.0} {}", units[i])
    } else {
        format!("{b:.1} {}", units[i])
    }
}

fn ago(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s ago")
    } else if seconds < 3600.0 {
        format!("{:.0}m ago", seconds / 60.0)
    } else if seconds < 86_400.0 {
        format!("{:.1}h ago", seconds / 3600.0)
    } else {
        format!("{:.1}d ago", seconds / 86_400.0)
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MMZ` (UTC), by the days-from-civil inverse.
pub fn utc(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}Z", rem / 3600, rem % 3600 / 60)
}

/// A table: a header row and rows, columns padded to their widest cell.
struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// A cell's text and its colour (an ANSI SGR code), kept apart so padding counts the text.
struct Cell(String, Option<&'static str>);

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell(s, None)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell(s.to_string(), None)
    }
}

impl Table {
    fn new(head: &[&'static str]) -> Table {
        Table {
            head: head.to_vec(),
            rows: vec![],
        }
    }

    fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String, color: bool) {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.0.chars().count());
            }
        }
        let line = |out: &mut String, cells: Vec<(&str, Option<&str>)>| {
            let last = cells.len() - 1;
            for (i, (text, code)) in cells.into_iter().enumerate() {
                let pad = widths[i] - text.chars().count();
                match (code, color) {
                    (Some(code), true) => {
                        let _ = write!(out, "\x1b[{code}m{text}\x1b[0m");
                    }
                    _ => out.push_str(text),
                }
                if i < last {
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        };
        line(out, self.head.iter().map(|h| (*h, Some("1"))).collect());
        for r in &self.rows {
            line(out, r.iter().map(|c| (c.0.as_str(), c.1)).collect());
        }
        out.push('\n');
    }
}

const GREEN: &str = "32";
const RED: &str = "31";
const YELLOW: &str = "33";

fn state_cell(state: &str) -> Cell {
    let code = match state {
        "up" => GREEN,
        "down" => RED,
        "ejected" => YELLOW,
        _ => "36",
    };
    Cell(state.to_string(), Some(code))
}

/// The tables for one reading (`before`: an earlier one, for rates).
pub fn render(st: &Value, before: Option<&Value>, addr: SocketAddr, color: bool) -> String {
    let mut out = String::new();
    let dt = before
        .and_then(|b| Some(st["time_unix"].as_f64()? - b["time_unix"].as_f64()?))
        .unwrap_or(0.0);
    let req = &st["requests"];
    let breq = before.map(|b| &b["requests"]);
    let _ = writeln!(
        out,
        "waypost {} at {addr} · generation {} · config {} · {}",
        s(&st["version"]),
        s(&st["generation"]),
        s(&st["config_hash"]).chars().take(12).collect::<String>(),
        if st["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "NOT READY"
        }
    );
    let five = |r: &Value| r["status_classes"]["5xx"].as_f64().unwrap_or(0.0);
    let share = breq.and_then(|b| {
        let n = req["total"].as_f64()? - b["total"].as_f64()?;
        Some(if n > 0.0 { (five(req) - five(b)) / n } else { 0.0 })
    });
    let _ = writeln!(
        out,
        "requests {} · 5xx {} · open connections {} · cache hit ratio {}\n",
        rate(&req["total"], breq.map(|b| &b["total"]), dt),
        pct(share),
        s(&st["connections_active"]),
        if st["cache"].is_null() {
            "off".into()
        } else {
            pct(st["cache"]["hit_ratio"].as_f64())
        }
    );

    let mut t = Table::new(&["LISTENER", "ADDRESS", "OPEN CONNS", "REQUESTS"]);
    let by_name = |v: Option<&Value>, key: &str, name: &str| -> Option<Value> {
        arr(&v?[key]).iter().find(|x| x["name"].as_str() == Some(name)).cloned()
    };
    for l in arr(&st["listeners"]) {
        let name = l["name"].as_str().unwrap_or("");
        let now = by_name(Some(req), "listeners", name).map(|x| x["total"].clone());
        let then = breq.map(|b| {
            by_name(Some(b), "listeners", name)
                .map(|x| x["total"].clone())
                .unwrap_or(Value::from(0))
        });
        t.row(vec![
            name.into(),
            s(&l["address"]).into(),
            s(&l["connections_active"]).into(),
            rate(&now.unwrap_or(Value::from(0)), then.as_ref(), dt).into(),
        ]);
    }
    t.render(&mut out, color);

    let mut t = Table::new(&["ROUTE", "HOSTS", "PATH", "POOL", "REQUESTS", "5XX", "TOTAL"]);
    for r in arr(&st["routes"]) {
        let name = r["name"].as_str().unwrap_or("");
        let now = by_name(Some(req), "routes", name).unwrap_or(Value::Null);
        let then = breq.map(|b| by_name(Some(b), "routes", name).unwrap_or(Value::Null));
        let hosts: Vec<String> = arr(&r["hosts"]).iter().map(s).collect();
        let path = if r["path"].is_string() {
            s(&r["path"])
        } else {
            format!("{}*", s(&r["path_prefix"]))
        };
        let pool = if r["split"].is_object() {
            format!("{} / {}", s(&r["split"]["primary"]), s(&r["split"]["replicas"]))
        } else if r["pools"].is_array() {
            arr(&r["pools"]).iter().map(s).collect::<Vec<_>>().join(" > ")
        } else {
            s(&r["pool"])
        };
        let zero = |v: &Value| if v.is_null() { Value::from(0) } else { v.clone() };
        t.row(vec![
            if r["cached"].as_bool() == Some(true) {
                format!("{name} (cached)").into()
            } else {
                name.into()
            },
            if hosts.is_empty() {
                "any".into()
            } else {
                hosts.join(",").into()
            },
            path.into(),
            pool.into(),
            rate(
                &zero(&now["total"]),
                then.as_ref().map(|t| zero(&t["total"])).as_ref(),
                dt,
            )
            .into(),
            rate(
                &zero(&now["status_classes"]["5xx"]),
                then.as_ref().map(|t| zero(&t["status_classes"]["5xx"])).as_ref(),
                dt,
            )
            .into(),
            s(&zero(&now["total"])).into(),
        ]);
    }
    t.render(&mut out, color);

    let mut t = Table::new(&[
        "POOL",
        "BACKEND",
        "STATE",
        "WEIGHT",
        "SLOW START",
        "IN FLIGHT",
        "QUEUED",
        "LAST CHECK",
        "LAG",
    ]);
    for p in arr(&st["pools"]) {
        let mut pool_name = s(&p["name"]);
        if p["panic"].as_bool() == Some(true) {
            pool_name.push_str(" (panic)");
        }
        for b in arr(&p["backends"]) {
            let lc = &b["last_check"];
            let last = if lc.is_null() {
                "-".to_string()
            } else {
                let what = match (lc["ok"].as_bool(), lc["status"].as_u64()) {
                    (Some(true), Some(code)) if code > 0 => code.to_string(),
                    (Some(true), _) => "ok".into(),
                    (_, Some(code)) if code > 0 => format!("failed {code}"),
                    _ => "failed".into(),
                };
                format!("{what} {}", ago(lc["seconds_ago"].as_f64().unwrap_or(0.0)))
            };
            let mut state = state_cell(b["state"].as_str().unwrap_or("?"));
            if let Some(left) = b["ejected_for_seconds"].as_f64() {
                state.0.push_str(&format!(" ({left:.0}s left)"));
            }
            t.row(vec![
                pool_name.as_str().into(),
                s(&b["address"]).into(),
                state,
                s(&b["weight"]).into(),
                if b["slow_start_percent"].is_null() {
                    "-".into()
                } else {
                    format!("{}%", num(&b["slow_start_percent"], 0)).into()
                },
                s(&b["in_flight"]).into(),
                s(&b["queued"]).into(),
                last.into(),
                if b["lag_seconds"].is_null() {
                    "-".into()
                } else {
                    format!("{}s", num(&b["lag_seconds"], 2)).into()
                },
            ]);
        }
    }
    t.render(&mut out, color);

    let dcs = arr(&st["geo"]["datacenters"]);
    if !dcs.is_empty() {
        let mut t = Table::new(&["DATA CENTER", "POOLS", "STATE"]);
        for d in dcs {
            let healthy = d["healthy"].as_bool() == Some(true);
            t.row(vec![
                s(&d["name"]).into(),
                arr(&d["pools"]).iter().map(s).collect::<Vec<_>>().join(",").into(),
                if healthy {
                    Cell("healthy".into(), Some(GREEN))
                } else {
                    Cell("no healthy pool".into(), Some(RED))
                },
            ]);
        }
        t.render(&mut out, color);
        let mut t = Table::new(&["REGION", "FAILOVER ORDER", "SERVING"]);
        for r in arr(&st["geo"]["regions"]) {
            let serving = match (r["serving"].as_str(), r["failed_over"].as_bool()) {
                (None, _) => Cell("none".into(), Some(RED)),
                (Some(d), Some(true)) => Cell(format!("{d} (failed over)"), Some(YELLOW)),
                (Some(d), _) => Cell(d.to_string(), Some(GREEN)),
            };
            t.row(vec![
                s(&r["region"]).into(),
                arr(&r["order"]).iter().map(s).collect::<Vec<_>>().join(" > ").into(),
                serving,
            ]);
        }
        t.render(&mut out, color);
    }

    let c = &st["cache"];
    if c.is_object() {
        let r = &c["requests"];
        let mut t = Table::new(&[
            "CACHE",
            "ENTRIES",
            "HIT RATIO",
            "HITS",
            "MISSES",
            "STALE",
            "REVALIDATED",
            "BYPASS",
        ]);
        t.row(vec![
            format!("{} of {}", bytes(&c["bytes"]), bytes(&c["max_size"])).into(),
            s(&c["entries"]).into(),
            pct(c["hit_ratio"].as_f64()).into(),
            s(&r["hit"]).into(),
            s(&r["miss"]).into(),
            s(&r["stale"]).into(),
            s(&r["revalidated"]).into(),
            s(&r["bypass"]).into(),
        ]);
        t.render(&mut out, color);
    }

    let certs = arr(&st["certificates"]);
    if !certs.is_empty() {
        let mut t = Table::new(&["CERTIFICATE", "NAMES", "LISTENER", "EXPIRES", "DAYS LEFT"]);
        for c in certs {
            let days = c["days_left"].as_f64().unwrap_or(0.0);
            let code = if days < 14.0 {
                RED
            } else if days < 30.0 {
                YELLOW
            } else {
                GREEN
            };
            t.row(vec![
                s(&c["file"]).into(),
                arr(&c["names"]).iter().map(s).collect::<Vec<_>>().join(",").into(),
                s(&c["listener"]).into(),
                utc(c["not_after_unix"].as_f64().unwrap_or(0.0)).into(),
                Cell(format!("{days:.1}"), Some(code)),
            ]);
        }
        t.render(&mut out, color);
    }

    let now = st["time_unix"].as_f64().unwrap_or(0.0);
    let mut t = Table::new(&["RELOAD", "KIND", "RESULT", "GENERATION", "ERRORS"]);
    for r in arr(&st["reloads"]) {
        let ok = r["ok"].as_bool() == Some(true);
        let errors: Vec<String> = arr(&r["errors"]).iter().map(s).collect();
        t.row(vec![
            format!(
                "{} ({})",
                utc(r["time_unix"].as_f64().unwrap_or(0.0)),
                ago((now - r["time_unix"].as_f64().unwrap_or(now)).max(0.0))
            )
            .into(),
            s(&r["kind"]).into(),
            if ok {
                Cell("ok".into(), Some(GREEN))
            } else {
                Cell("failed".into(), Some(RED))
            },
            s(&r["generation"]).into(),
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join("; ").into()
            },
        ]);
    }
    t.render(&mut out, color);

    for p in pools_without_backend(st) {
        let _ = writeln!(out, "pool {p:?} has no healthy backend");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00Z");
        assert_eq!(utc(1_798_761_599.0), "2026-12-31 23:59Z");
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(parse_admin("127.0.0.1:9901").unwrap().to_string(), "127.0.0.1:9901");
        assert_eq!(parse_admin("http://[::1]:9/").unwrap().to_string(), "[::1]:9");
        assert_eq!(parse_admin("0.0.0.0:9901").unwrap().to_string(), "127.0.0.1:9901");
        assert!(parse_admin("localhost").is_err());
    }
}
