//! Cache-Control directives (RFC 9111 §5.2, RFC 5861, RFC 8246) of a request or a response.
//!
//! The parser never fails: whatever it cannot read is taken in the way that serves a stored
//! response less, never more (RFC 9111 §4.2.1 asks caches to treat invalid freshness as stale):
//! - A bad number in a directive that limits reuse is its strictest value: `max-age`,
//!   `s-maxage` → 0 (stale at once); `min-fresh` → [`DELTA_MAX`] (nothing is fresh enough).
//!   In a directive that extends reuse it is no extension: `max-stale`,
//!   `stale-while-revalidate`, `stale-if-error` → 0.
//! - A numeric directive without its argument counts as a bad number, except `max-stale`, whose
//!   bare form means "any staleness".
//! - A directive given twice keeps its most restrictive value (smallest `max-age`, largest
//!   `min-fresh`, ...) rather than the first: RFC 9111 allows "first or stale", and the smaller
//!   lifetime lies between the two.
//! - Flags that restrict (`no-store`, `must-revalidate`, ...) apply whatever argument they carry;
//!   flags that permit (`public`, `immutable`, `must-understand`) are ignored with an argument.
//! - A field list (`private="Set-Cookie"`, `no-cache="X-A, X-B"`) that is empty, unterminated
//!   or names an invalid field counts as the unqualified directive.
//! - Values larger than 2^31 seconds are 2^31 (RFC 9111 §1.2.2).
//!
//! `Pragma: no-cache` counts as `no-cache` only when there is no Cache-Control field at all
//! (RFC 7234 §5.4; RFC 9111 deprecates Pragma and says nothing more).

use http::header::{self, HeaderMap, HeaderName};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2): 2^31.
pub const DELTA_MAX: u64 = 1 << 31;

/// The request's `max-stale`: the bare directive accepts any staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    Any,
    Secs(u64),
}

/// Every directive waypost acts on; unknown extensions are ignored. Durations are whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// Unqualified `no-cache`: every reuse needs a successful validation.
    pub no_cache: bool,
    /// `no-cache="..."`: these fields are never served from the stored response.
    pub no_cache_fields: Vec<HeaderName>,
    /// Unqualified `private`: a shared cache must not store the response.
    pub private: bool,
    /// `private="..."`: these fields are never stored.
    pub private_fields: Vec<HeaderName>,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub max_stale: Option<MaxStale>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
    pub no_transform: bool,
}

/// A directive's argument as read: absent, a well-formed token or quoted string, or malformed.
enum Arg<'a> {
    None,
    Value(std::borrow::Cow<'a, [u8]>),
    Malformed,
}

impl CacheControl {
    /// Reads every Cache-Control field line of a request or a response.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        let mut any = false;
        for line in headers.get_all(header::CACHE_CONTROL) {
            any = true;
            parse_line(line.as_bytes(), &mut |name, arg| cc.apply(name, arg));
        }
        if !any {
            for line in headers.get_all(header::PRAGMA) {
                parse_line(line.as_bytes(), &mut |name, _| {
                    if name.eq_ignore_ascii_case(b"no-cache") {
                        cc.no_cache = true;
                    }
                });
            }
        }
        cc
    }

    fn apply(&mut self, name: &[u8], arg: Arg<'_>) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        let bare = matches!(arg, Arg::None);
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            match field_list(&arg) {
                Some(fields) => union(&mut self.no_cache_fields, fields),
                None => self.no_cache = true,
            }
        } else if is("private") {
            match field_list(&arg) {
                Some(fields) => union(&mut self.private_fields, fields),
                None => self.private = true,
            }
        } else if is("public") {
            self.public |= bare;
        } else if is("max-age") {
            keep_min(&mut self.max_age, delta(&arg).unwrap_or(0));
        } else if is("s-maxage") {
            keep_min(&mut self.s_maxage, delta(&arg).unwrap_or(0));
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("must-understand") {
            self.must_understand |= bare;
        } else if is("immutable") {
            self.immutable |= bare;
        } else if is("stale-while-revalidate") {
            keep_min(&mut self.stale_while_revalidate, delta(&arg).unwrap_or(0));
        } else if is("stale-if-error") {
            keep_min(&mut self.stale_if_error, delta(&arg).unwrap_or(0));
        } else if is("max-stale") {
            let v = if bare {
                MaxStale::Any
            } else {
                MaxStale::Secs(delta(&arg).unwrap_or(0))
            };
            self.max_stale = Some(match (self.max_stale, v) {
                (None | Some(MaxStale::Any), v) => v,
                (Some(MaxStale::Secs(a)), MaxStale::Any) => MaxStale::Secs(a),
                (Some(MaxStale::Secs(a)), MaxStale::Secs(b)) => MaxStale::Secs(a.min(b)),
            });
        } else if is("min-fresh") {
            let v = delta(&arg).unwrap_or(DELTA_MAX);
            self.min_fresh = Some(self.min_fresh.map_or(v, |old| old.max(v)));
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        } else if is("no-transform") {
            self.no_transform = true;
        }
    }
}

fn keep_min(slot: &mut Option<u64>, v: u64) {
    *slot = Some(slot.map_or(v, |old| old.min(v)));
}

fn union(into: &mut Vec<HeaderName>, fields: Vec<HeaderName>) {
    for f in fields {
        if !into.contains(&f) {
            into.push(f);
        }
    }
}

/// delta-seconds (RFC 9111 §1.2.2), token or quoted (§5.2 asks recipients to accept both).
fn delta(arg: &Arg<'_>) -> Option<u64> {
    let Arg::Value(v) = arg else { return None };
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Saturate instead of overflowing: any long run of digits is DELTA_MAX.
    Some(
        v.iter()
            .fold(0u64, |acc, d| (acc * 10 + u64::from(d - b'0')).min(DELTA_MAX)),
    )
}

/// The field names of a qualified `private` / `no-cache`, or None for the unqualified form
/// (which a malformed list also falls back to, being the stricter reading).
fn field_list(arg: &Arg<'_>) -> Option<Vec<HeaderName>> {
    let Arg::Value(v) = arg else { return None };
    let mut out = Vec::new();
    for part in v.split(|b| *b == b',') {
        let name = trim(part);
        if name.is_empty() {
            continue;
        }
        out.push(HeaderName::from_bytes(name).ok()?);
    }
    (!out.is_empty()).then_some(out)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits one field line into `name[=arg]` directives, honouring quoted strings (whose commas
/// do not separate directives) and backslash escapes inside them.
fn parse_line(line: &[u8], each: &mut dyn FnMut(&[u8], Arg<'_>)) {
    let mut i = 0;
    while i < line.len() {
        let start = i;
        while i < line.len() && line[i] != b',' && line[i] != b'=' {
            i += 1;
        }
        let name = trim(&line[start..i]);
        let arg = if i < line.len() && line[i] == b'=' {
            i += 1;
            while i < line.len() && matches!(line[i], b' ' | b'\t') {
                i += 1;
            }
            if i < line.len() && line[i] == b'"' {
                let (arg, next) = quoted(line, i + 1);
                i = next;
                // Anything between the closing quote and the next comma spoils the value.
                let tail_start = i;
                while i < line.len() && line[i] != b',' {
                    i += 1;
                }
                if trim(&line[tail_start..i]).is_empty() {
                    arg
                } else {
                    Arg::Malformed
                }
            } else {
                let vstart = i;
                while i < line.len() && line[i] != b',' {
                    i += 1;
                }
                Arg::Value(trim(&line[vstart..i]).into())
            }
        } else {
            Arg::None
        };
        i += 1; // past the comma
        if !name.is_empty() {
            each(name, arg);
        }
    }
}

/// Reads a quoted string whose opening quote precedes `i`; returns the unescaped content and
/// the index after the closing quote. An unterminated string is malformed and eats the line.
fn quoted(line: &[u8], mut i: usize) -> (Arg<'_>, usize) {
    let start = i;
    let mut escaped: Option<Vec<u8>> = None;
    while i < line.len() {
        match line[i] {
            b'"' => {
                let arg = match escaped {
                    Some(v) => Arg::Value(v.into()),
                    None => Arg::Value(line[start..i].into()),
                };
                return (arg, i + 1);
            }
            b'\\' if i + 1 < line.len() => {
                let buf = escaped.get_or_insert_with(|| line[start..i].to_vec());
                buf.push(line[i + 1]);
                i += 2;
            }
            b => {
                if let Some(buf) = escaped.as_mut() {
                    buf.push(b);
                }
                i += 1;
            }
        }
    }
    (Arg::Malformed, line.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(lines: &[&str]) -> CacheControl {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::CACHE_CONTROL, HeaderValue::from_str(l).unwrap());
        }
        CacheControl::parse(&h)
    }

    fn names(list: &[&'static str]) -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    #[test]
    fn numeric_directives_table() {
        // (field lines, max-age, s-maxage, swr, sie, min-fresh)
        type Row = (
            &'static [&'static str],
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            (&["max-age=60"], Some(60), None, None, None, None),
            (&["MAX-AGE=60"], Some(60), None, None, None, None),
            (&["max-age=\"60\""], Some(60), None, None, None, None),
            (&["max-age = 60"], Some(60), None, None, None, None),
            (&["max-age=60, max-age=30"], Some(30), None, None, None, None),
            (&["max-age=30", "max-age=60"], Some(30), None, None, None, None),
            (&["max-age=abc"], Some(0), None, None, None, None),
            (&["max-age=-1"], Some(0), None, None, None, None),
            (&["max-age=1.5"], Some(0), None, None, None, None),
            (&["max-age="], Some(0), None, None, None, None),
            (&["max-age"], Some(0), None, None, None, None),
            (&["max-age=5 6"], Some(0), None, None, None, None),
            (&["max-age=\"5\"x"], Some(0), None, None, None, None),
            (&["max-age=99999999999999999999999"], Some(DELTA_MAX), None, None, None, None),
            (&["s-maxage=10, max-age=5"], Some(5), Some(10), None, None, None),
            (&["stale-while-revalidate=30, stale-if-error=600"], None, None, Some(30), Some(600), None),
            (&["stale-while-revalidate"], None, None, Some(0), None, None),
            (&["min-fresh=5"], None, None, None, None, Some(5)),
            (&["min-fresh=5, min-fresh=9"], None, None, None, None, Some(9)),
            (&["min-fresh=x"], None, None, None, None, Some(DELTA_MAX)),
            (&[""], None, None, None, None, None),
            (&[",,, ,"], None, None, None, None, None),
        ];
        for (lines, max_age, s_maxage, swr, sie, min_fresh) in table {
            let c = cc(lines);
            assert_eq!(
                (
                    c.max_age,
                    c.s_maxage,
                    c.stale_while_revalidate,
                    c.stale_if_error,
                    c.min_fresh
                ),
                (*max_age, *s_maxage, *swr, *sie, *min_fresh),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn flags_are_case_insensitive_and_restrictive_ones_ignore_arguments() {
        let c = cc(&[
            "No-Store=1, MUST-REVALIDATE, proxy-revalidate",
            "only-if-cached, no-transform",
        ]);
        assert!(c.no_store && c.must_revalidate && c.proxy_revalidate && c.only_if_cached && c.no_transform);
        let c = cc(&["public=yes, immutable=1, must-understand=x"]);
        assert!(!c.public && !c.immutable && !c.must_understand);
        let c = cc(&["public, immutable, must-understand, unknown-ext=\"a,b\", x"]);
        assert!(c.public && c.immutable && c.must_understand);
    }

    #[test]
    fn max_stale_with_and_without_value() {
        let table: &[(&str, Option<MaxStale>)] = &[
            ("max-stale", Some(MaxStale::Any)),
            ("max-stale=10", Some(MaxStale::Secs(10))),
            ("max-stale=oops", Some(MaxStale::Secs(0))),
            ("max-stale, max-stale=10", Some(MaxStale::Secs(10))),
            ("max-stale=10, max-stale", Some(MaxStale::Secs(10))),
            ("max-stale=10, max-stale=3", Some(MaxStale::Secs(3))),
            ("no-cache", None),
        ];
        for (line, want) in table {
            assert_eq!(cc(&[line]).max_stale, *want, "{line}");
        }
    }

    #[test]
    fn field_lists_of_private_and_no_cache() {
        let c = cc(&["private=\"Set-Cookie, X-User\", no-cache=\"x-debug\""]);
        assert!(!c.private && !c.no_cache);
        assert_eq!(c.private_fields, names(&["set-cookie", "x-user"]));
        assert_eq!(c.no_cache_fields, names(&["x-debug"]));
        // The token form names one field.
        let c = cc(&["private=set-cookie"]);
        assert_eq!((c.private, c.private_fields), (false, names(&["set-cookie"])));
        // Empty, unterminated or invalid lists fall back to the unqualified directive.
        for line in [
            "private=\"\"",
            "private=\"set-cookie",
            "private=\"a b\"",
            "private=\"x\" y",
        ] {
            assert!(cc(&[line]).private, "{line}");
        }
        assert!(cc(&["no-cache=\"\""]).no_cache);
        // Unqualified and qualified together: unqualified stands.
        let c = cc(&["private=\"x-a\"", "private"]);
        assert!(c.private);
    }

    #[test]
    fn quoted_strings_keep_commas_and_escapes() {
        let c = cc(&[r#"ext="a, max-age=1, \"q\"", max-age=60"#]);
        assert_eq!(c.max_age, Some(60));
        let c = cc(&[r#"no-cache="x-a,\x-b""#]);
        assert_eq!(c.no_cache_fields, names(&["x-a", "x-b"]));
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(CacheControl::parse(&h).no_cache);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!CacheControl::parse(&h).no_cache);
    }

    #[test]
    fn non_utf8_bytes_are_ignored_not_fatal() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"\xff\xfe, max-age=7, \x80=\x81").unwrap(),
        );
        assert_eq!(CacheControl::parse(&h).max_age, Some(7));
    }
}
