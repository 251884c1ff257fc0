//! The Cache-Status response field (RFC 9211) for waypost's member of the list.
//!
//! RFC 9211 asks a cache to keep the members that upstream caches put there and append its own
//! (closest to the client last): append this value, do not replace the field.

use http::HeaderValue;

/// The cache's name in its Cache-Status member.
pub const CACHE_NAME: &str = "waypost";

/// RFC 9211 §2.2 `fwd`: why the request went upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// The cache was configured not to handle the request (e.g. not a cached method or route).
    Bypass,
    /// The request method is not cacheable.
    Method,
    /// No stored response for the URI.
    UriMiss,
    /// Stored responses for the URI, none for this request's Vary fields.
    VaryMiss,
    /// Not found without saying which of the above.
    Miss,
    /// The request's directives (no-cache, max-age, ...) required going upstream.
    Request,
    /// The stored response was stale.
    Stale,
    /// Only part of the response was stored.
    Partial,
}

impl Fwd {
    fn token(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Partial => "partial",
        }
    }
}

/// What happened: served from cache, or forwarded (with the upstream status when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Fwd { reason: Fwd, status: Option<u16> },
}

/// One Cache-Status member. `ttl` is seconds of freshness left, negative when stale; `detail`
/// is written bare when it is an sf-token and as an sf-string otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus<'a> {
    pub outcome: Outcome,
    pub stored: bool,
    /// Another request's upstream response was reused (coalesced misses).
    pub collapsed: bool,
    pub ttl: Option<i64>,
    pub detail: Option<&'a str>,
}

impl CacheStatus<'_> {
    pub fn hit(ttl: i64) -> CacheStatus<'static> {
        CacheStatus {
            outcome: Outcome::Hit,
            stored: false,
            collapsed: false,
            ttl: Some(ttl),
            detail: None,
        }
    }

    pub fn fwd(reason: Fwd) -> CacheStatus<'static> {
        CacheStatus {
            outcome: Outcome::Fwd { reason, status: None },
            stored: false,
            collapsed: false,
            ttl: None,
            detail: None,
        }
    }
}

/// `waypost; hit; ttl=42`, `waypost; fwd=miss; stored`, `waypost; fwd=stale; fwd-status=304`,
/// `waypost; fwd=miss; detail=private`.
pub fn cache_status(s: &CacheStatus<'_>) -> HeaderValue {
    let mut out = String::from(CACHE_NAME);
    match s.outcome {
        Outcome::Hit => out.push_str("; hit"),
        Outcome::Fwd { reason, status } => {
            out.push_str("; fwd=");
            out.push_str(reason.token());
            if let Some(code) = status {
                out.push_str(&format!("; fwd-status={code}"));
            }
        }
    }
    if s.stored {
        out.push_str("; stored");
    }
    if s.collapsed {
        out.push_str("; collapsed");
    }
    if let Some(ttl) = s.ttl {
        // sf-integer holds at most 15 digits.
        const SF_MAX: i64 = 999_999_999_999_999;
        out.push_str(&format!("; ttl={}", ttl.clamp(-SF_MAX, SF_MAX)));
    }
    if let Some(detail) = s.detail {
        out.push_str("; detail=");
        push_sf_item(&mut out, detail);
    }
    // Only ASCII printable characters are ever written; the fallback keeps this unwrap-free.
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(CACHE_NAME))
}

/// An sf-token as is, anything else as an sf-string (escaping `"` and `\`, dropping what an
/// sf-string cannot hold).
fn push_sf_item(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
    let token = matches!(b.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'*') && b.iter().all(|c| is_tchar(*c));
    if token {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_strings() {
        let fwd = |reason, status| Outcome::Fwd { reason, status };
        let s = |outcome, stored, ttl, detail| CacheStatus {
            outcome,
            stored,
            collapsed: false,
            ttl,
            detail,
        };
        #[rustfmt::skip]
        let table: &[(CacheStatus<'_>, &str)] = &[
            (CacheStatus::hit(42), "waypost; hit; ttl=42"),
            (CacheStatus::hit(-3), "waypost; hit; ttl=-3"),
            (s(fwd(Fwd::Miss, None), true, None, None), "waypost; fwd=miss; stored"),
            (s(fwd(Fwd::UriMiss, Some(200)), true, Some(60), None), "waypost; fwd=uri-miss; fwd-status=200; stored; ttl=60"),
            (s(fwd(Fwd::Stale, Some(304)), false, None, None), "waypost; fwd=stale; fwd-status=304"),
            (s(fwd(Fwd::Miss, None), false, None, Some("private")), "waypost; fwd=miss; detail=private"),
            (s(fwd(Fwd::Bypass, None), false, None, None), "waypost; fwd=bypass"),
            (s(fwd(Fwd::VaryMiss, None), false, None, None), "waypost; fwd=vary-miss"),
            (s(fwd(Fwd::Request, None), false, None, None), "waypost; fwd=request"),
            (s(fwd(Fwd::Method, None), false, None, None), "waypost; fwd=method"),
            (s(fwd(Fwd::Partial, None), false, None, None), "waypost; fwd=partial"),
            (s(Outcome::Hit, false, Some(i64::MIN), None), "waypost; hit; ttl=-999999999999999"),
            (s(Outcome::Hit, false, None, Some("two words")), "waypost; hit; detail=\"two words\""),
            (s(Outcome::Hit, false, None, Some("q\"b\\\n\u{e9}")), "waypost; hit; detail=\"q\\\"b\\\\\""),
            (s(Outcome::Hit, false, None, Some("1abc")), "waypost; hit; detail=\"1abc\""),
            (s(Outcome::Hit, false, None, Some("")), "waypost; hit; detail=\"\""),
        ];
        for (status, want) in table {
            assert_eq!(cache_status(status), *want);
        }
        let collapsed = CacheStatus {
            collapsed: true,
            ..CacheStatus::fwd(Fwd::Miss)
        };
        assert_eq!(cache_status(&collapsed), "waypost; fwd=miss; collapsed");
    }
}
