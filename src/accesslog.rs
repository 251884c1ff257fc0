//! Access log: one line per request, JSON or combined, to stdout or a file. The request path
//! only hands a small record to a writer thread over a bounded channel (never blocking: a full
//! channel drops the line and counts it); formatting and I/O happen on that thread.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};

use crate::admin::metrics;
use crate::config::{AccessFormat, AccessTarget, LogConfig};

/// How a request ended, beyond its status.
pub mod flags {
    pub const RETRIED: u16 = 1;
    pub const UPGRADED: u16 = 1 << 1;
    /// The response body did not reach its end (client gone or backend broke mid-body).
    pub const ABORTED: u16 = 1 << 2;
    /// Refused by a route's rate limit (429).
    pub const RATE_LIMITED: u16 = 1 << 3;
    pub const NAMES: [(u16, &str); 4] = [
        (RETRIED, "retried"),
        (UPGRADED, "upgraded"),
        (ABORTED, "aborted"),
        (RATE_LIMITED, "rate_limited"),
    ];
}

pub struct Record {
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: IpAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub flags: u16,
    pub error: Option<&'static str>,
    /// With `error`: who is to blame (client, upstream or proxy).
    pub blame: Option<&'static str>,
    /// For split routes: primary or replica.
    pub target: Option<&'static str>,
    /// On cached routes: hit, miss, stale, revalidated or bypass.
    pub cache: Option<&'static str>,
    /// For geo routes: the client's region and the data center that served it.
    pub region: Option<Arc<str>>,
    pub datacenter: Option<Arc<str>>,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
}

pub struct AccessLog {
    target: AccessTarget,
    pub format: AccessFormat,
    tx: SyncSender<Record>,
}

const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// The log for a new generation: the previous one when the target is unchanged (no reopen),
    /// else a new writer. `None` when access logging is off.
    pub fn reuse_or_open(cfg: &LogConfig, previous: Option<&Arc<AccessLog>>) -> Result<Option<Arc<AccessLog>>, String> {
        if cfg.access == AccessTarget::Off {
            return Ok(None);
        }
        if let Some(p) = previous {
            if p.target == cfg.access && p.format == cfg.format {
                return Ok(Some(p.clone()));
            }
        }
        let out: Box<dyn Write + Send> = match &cfg.access {
            AccessTarget::Stdout => Box::new(std::io::stdout()),
            AccessTarget::File(path) => Box::new(open_append(path)?),
            AccessTarget::Off => unreachable!("handled above"),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let format = cfg.format;
        std::thread::Builder::new()
            .name("waypost-access-log".into())
            .spawn(move || writer(rx, out, format))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Some(Arc::new(AccessLog {
            target: cfg.access.clone(),
            format,
            tx,
        })))
    }

    pub fn log(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => metrics::access_log_dropped(),
        }
    }

    pub fn wants_agent(&self) -> bool {
        self.format == AccessFormat::Combined
    }
}

fn open_append(path: &PathBuf) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open access log {}: {e}", path.display()))
}

fn writer(rx: Receiver<Record>, out: Box<dyn Write + Send>, format: AccessFormat) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    while let Ok(r) = rx.recv() {
        let mut next = Some(r);
        while let Some(r) = next {
            line.clear();
            match format {
                AccessFormat::Json => json_line(&mut line, &r),
                AccessFormat::Combined => combined_line(&mut line, &r),
            }
            line.push('\n');
            let _ = out.write_all(line.as_bytes());
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// One JSON object per line.
pub fn json_line(s: &mut String, r: &Record) {
    s.push_str("{\"time\":\"");
    rfc3339(s, r.time);
    let _ = write!(s, "\",\"listener\":");
    json_str(s, &r.listener);
    let _ = write!(s, ",\"client\":\"{}\",\"method\":", r.client);
    json_str(s, r.method.as_str());
    s.push_str(",\"host\":");
    json_opt(s, r.host.as_ref().and_then(|h| h.to_str().ok()));
    s.push_str(",\"path\":");
    json_str(s, r.uri.path());
    s.push_str(",\"query\":");
    json_opt(s, r.uri.query());
    let _ = write!(
        s,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes\":{},\"duration\":{:.6},\"route\":",
        version_str(r.version),
        r.status,
        r.bytes,
        r.duration.as_secs_f64()
    );
    json_opt(s, r.route.as_deref());
    s.push_str(",\"pool\":");
    json_opt(s, r.pool.as_deref());
    s.push_str(",\"backend\":");
    json_opt(s, r.backend.as_deref());
    if let Some(region) = &r.region {
        s.push_str(",\"region\":");
        json_str(s, region);
    }
    if let Some(dc) = &r.datacenter {
        s.push_str(",\"datacenter\":");
        json_str(s, dc);
    }
    if let Some(t) = r.target {
        let _ = write!(s, ",\"target\":\"{t}\"");
    }
    if let Some(c) = r.cache {
        let _ = write!(s, ",\"cache\":\"{c}\"");
    }
    if let Some(b) = r.blame {
        let _ = write!(s, ",\"blame\":\"{b}\"");
    }
    s.push_str(",\"flags\":[");
    let mut first = true;
    for (bit, name) in flags::NAMES {
        if r.flags & bit != 0 {
            if !first {
                s.push(',');
            }
            first = false;
            json_str(s, name);
        }
    }
    if let Some(e) = r.error {
        if !first {
            s.push(',');
        }
        json_str(s, e);
    }
    s.push_str("]}");
}

/// The NCSA combined format that log tools read.
pub fn combined_line(s: &mut String, r: &Record) {
    let _ = write!(s, "{} - - [", r.client);
    clf_time(s, r.time);
    let _ = write!(s, "] \"{} ", r.method);
    escape_clf(s, r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let _ = write!(s, " {}\" {} {} \"", version_str(r.version), r.status, r.bytes);
    escape_clf(s, r.referer.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"));
    s.push_str("\" \"");
    escape_clf(s, r.user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"));
    s.push('"');
}

fn escape_clf(s: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c => s.push(c),
        }
    }
}

fn json_opt(s: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(s, v),
        None => s.push_str("null"),
    }
}

fn json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        d.subsec_millis(),
    )
}

fn rfc3339(s: &mut String, t: SystemTime) {
    let (y, mo, d, h, mi, se, ms) = civil(t);
    let _ = write!(s, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{ms:03}Z");
}

fn clf_time(s: &mut String, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, se, _) = civil(t);
    let _ = write!(
        s,
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{se:02} +0000",
        MONTHS[(mo - 1) as usize]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            listener: "http".into(),
            client: "192.0.2.1".parse().unwrap(),
            method: Method::GET,
            host: Some(HeaderValue::from_static("example.com")),
            uri: "/a\"b?x=1".parse().unwrap_or_else(|_| "/ab?x=1".parse().unwrap()),
            version: Version::HTTP_11,
            status: 200,
            bytes: 12,
            duration: Duration::from_micros(1500),
            route: Some("app".into()),
            pool: Some("web".into()),
            backend: Some("127.0.0.1:9001".into()),
            flags: flags::RETRIED,
            error: None,
            blame: None,
            target: None,
            cache: None,
            region: None,
            datacenter: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
            referer: None,
        }
    }

    #[test]
    fn json_line_is_valid_json_with_the_fields() {
        let mut s = String::new();
        json_line(&mut s, &record());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "app");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["flags"], serde_json::json!(["retried"]));
        assert_eq!(v["duration"].as_f64().unwrap(), 0.0015);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn combined_line_matches_the_ncsa_shape() {
        let mut s = String::new();
        let mut r = record();
        r.uri = "/index.html?q=1".parse().unwrap();
        combined_line(&mut s, &r);
        assert_eq!(
            s,
            "192.0.2.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html?q=1 HTTP/1.1\" 200 12 \"-\" \"curl/8\""
        );
    }

    #[test]
    fn civil_dates_cover_leap_years() {
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        let (y, m, d, ..) = civil(t);
        assert_eq!((y, m, d), (2000, 2, 29));
    }
}
