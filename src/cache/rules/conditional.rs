//! Validation (RFC 9110 §13, RFC 9111 §4.3): answering clients' conditional requests from a
//! stored response, revalidating stored responses upstream, and folding a 304 back in.
//!
//! Anything malformed in a client's precondition makes it fail to match, so the client gets the
//! full response: always a correct answer, where a wrong 304 would not be.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::date::{date_of, parse_http_date};
use super::storable::{connection_named, strip_for_storage};

/// An entity-tag split into (weak, opaque-tag without quotes) and what follows it.
fn entity_tag(s: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    // `W/` is case-sensitive in the grammar; a lower-case `w/` is read the same, having no
    // other meaning.
    let (weak, s) = match s {
        [b'W' | b'w', b'/', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    let [b'"', rest @ ..] = s else { return None };
    let end = rest.iter().position(|b| *b == b'"')?;
    let opaque = &rest[..end];
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((weak, opaque, &rest[end + 1..]))
}

/// The stored response's entity-tag, if it has a well-formed one.
fn stored_etag(stored: &HeaderMap) -> Option<(bool, &[u8])> {
    let (weak, opaque, rest) = entity_tag(stored.get(header::ETAG)?.as_bytes().trim_ascii())?;
    rest.trim_ascii().is_empty().then_some((weak, opaque))
}

/// If-None-Match against the stored ETag with the weak comparison (RFC 9110 §13.1.2, §8.8.3.2):
/// `*` matches any stored response; otherwise any listed tag with the same opaque-tag.
fn if_none_match(lines: http::header::GetAll<'_, HeaderValue>, stored: Option<(bool, &[u8])>) -> bool {
    let mut matched = false;
    for line in lines {
        let mut s = line.as_bytes().trim_ascii();
        if s == b"*" {
            matched = true;
            continue;
        }
        loop {
            while let [b' ' | b'\t' | b',', rest @ ..] = s {
                s = rest;
            }
            if s.is_empty() {
                break;
            }
            let Some((_, opaque, rest)) = entity_tag(s) else {
                return false;
            };
            matched |= stored.is_some_and(|(_, o)| o == opaque);
            s = rest.trim_ascii_start();
            if !s.is_empty() && s[0] != b',' {
                return false;
            }
        }
    }
    matched
}

/// Whether the client's conditional GET or HEAD can be answered 304 from the stored response
/// (status `stored_status`, headers `stored`). If-None-Match decides when present; otherwise
/// If-Modified-Since, compared with the stored Last-Modified or, failing that, its Date
/// (RFC 9111 §4.3.2). Preconditions that only an origin can evaluate (If-Match,
/// If-Unmodified-Since, If-Range) are not looked at; send such requests upstream.
pub fn not_modified(method: &Method, req_headers: &HeaderMap, stored_status: StatusCode, stored: &HeaderMap) -> bool {
    if !(method == Method::GET || method == Method::HEAD) || !stored_status.is_success() {
        return false;
    }
    if req_headers.contains_key(header::IF_NONE_MATCH) {
        return if_none_match(req_headers.get_all(header::IF_NONE_MATCH), stored_etag(stored));
    }
    let mut ims = req_headers.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(ims), None) = (ims.next(), ims.next()) else {
        return false;
    };
    let Some(since) = parse_http_date(ims.as_bytes()) else {
        return false;
    };
    let modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| parse_http_date(v.as_bytes()))
        .or(date_of(stored));
    modified.is_some_and(|m| m <= since)
}

/// The headers of a 304 answered from the stored response: those RFC 9110 §15.4.5 asks for,
/// plus Last-Modified when there is no ETag (it guides the client's cache). Add Age.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let mut copy = |name: HeaderName| {
        for v in stored.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    };
    copy(header::CACHE_CONTROL);
    copy(header::CONTENT_LOCATION);
    copy(header::DATE);
    copy(header::ETAG);
    copy(header::EXPIRES);
    copy(header::VARY);
    if !stored.contains_key(header::ETAG) {
        copy(header::LAST_MODIFIED);
    }
    out
}

/// Preconditions for revalidating a stored response upstream (RFC 9111 §4.3.1): If-None-Match
/// with its ETag and If-Modified-Since with its Last-Modified, as received. Both are sent when
/// both exist; an origin that knows ETags ignores the date.
pub fn revalidation_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(etag) = stored.get(header::ETAG).filter(|_| stored_etag(stored).is_some()) {
        out.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored
        .get(header::LAST_MODIFIED)
        .filter(|v| parse_http_date(v.as_bytes()).is_some())
    {
        out.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    out
}

/// Whether a 304 from upstream refers to the stored response (RFC 9111 §4.3.4): its ETag, if
/// any, equals the stored one (weakly); else its Last-Modified, if any, equals the stored one;
/// a 304 with neither answers the validators we sent. When false, drop the entry and fetch.
pub fn can_freshen(stored: &HeaderMap, not_modified_resp: &HeaderMap) -> bool {
    if let Some(v) = not_modified_resp.get(header::ETAG) {
        let theirs = entity_tag(v.as_bytes().trim_ascii()).map(|(_, o, _)| o);
        return theirs.is_some() && theirs == stored_etag(stored).map(|(_, o)| o);
    }
    if let Some(v) = not_modified_resp.get(header::LAST_MODIFIED) {
        let theirs = parse_http_date(v.as_bytes());
        return theirs.is_some()
            && theirs
                == stored
                    .get(header::LAST_MODIFIED)
                    .and_then(|v| parse_http_date(v.as_bytes()));
    }
    true
}

/// Fields a 304 (or HEAD) response never changes in the stored response: they describe the
/// stored body's bytes and framing, which a bodiless response cannot speak for (RFC 9111 §3.2
/// names Content-Length). Content-Type is included because servers that add a default
/// Content-Type to every response would otherwise relabel the stored body.
fn kept_from_stored(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::TRANSFER_ENCODING,
        header::SET_COOKIE,
    ]
    .contains(name)
}

/// Updates the stored headers from a 304 that [`can_freshen`] them (RFC 9111 §3.2): each field
/// of the 304 replaces the stored one, except those above and connection-specific ones. A 304
/// without Date or Age also drops the stored ones, which described the older transmission (call
/// [`super::ensure_date`] on the 304 first). Afterwards the result is stripped as for storage;
/// re-run [`super::storable`] on it, since the 304 may have brought `no-store` or `private`, and
/// rebuild the entry's facts with the revalidation's request and response times.
pub fn merge_304(stored: &mut HeaderMap, not_modified_resp: &HeaderMap) {
    let hop = connection_named(not_modified_resp);
    for name in not_modified_resp.keys() {
        if kept_from_stored(name) || hop.contains(name) {
            continue;
        }
        stored.remove(name);
        for v in not_modified_resp.get_all(name) {
            stored.append(name.clone(), v.clone());
        }
    }
    for name in [header::DATE, header::AGE] {
        if !not_modified_resp.contains_key(&name) {
            stored.remove(name);
        }
    }
    strip_for_storage(stored);
}

/// A 200 response to a HEAD sent upstream, applied to the stored GET response for the same
/// key (RFC 9111 §4.3.5): when ETag, Last-Modified and (if the HEAD has one) Content-Length
/// agree, the stored headers are updated as by a 304 and this returns true; otherwise the
/// stored response is outdated and this returns false (treat it as stale or drop it).
pub fn head_refresh(stored: &mut HeaderMap, head_resp: &HeaderMap) -> bool {
    let same = |name: HeaderName| {
        let a = stored.get(&name).map(|v| v.as_bytes().trim_ascii());
        let b = head_resp.get(&name).map(|v| v.as_bytes().trim_ascii());
        a == b
    };
    let length_agrees = !head_resp.contains_key(header::CONTENT_LENGTH) || same(header::CONTENT_LENGTH);
    if !(same(header::ETAG) && same(header::LAST_MODIFIED) && length_agrees) {
        return false;
    }
    merge_304(stored, head_resp);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const DATE: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    #[test]
    fn if_none_match_table() {
        // (stored ETag, If-None-Match lines, not modified?)
        let table: &[(Option<&str>, &[&str], bool)] = &[
            (Some("\"abc\""), &["\"abc\""], true),
            (Some("\"abc\""), &["W/\"abc\""], true),
            (Some("W/\"abc\""), &["\"abc\""], true),
            (Some("W/\"abc\""), &["W/\"abc\""], true),
            (Some("\"abc\""), &["\"xyz\""], false),
            (Some("\"abc\""), &["\"xyz\", \"abc\""], true),
            (Some("\"abc\""), &["\"xyz\",W/\"abc\""], true),
            (Some("\"abc\""), &["\"xyz\"", "\"abc\""], true),
            (Some("\"a,b\""), &["\"a,b\""], true),
            (Some("\"abc\""), &["*"], true),
            (None, &["*"], true),
            (None, &["\"abc\""], false),
            (Some("abc"), &["abc"], false),
            (Some("\"abc\""), &["abc"], false),
            (Some("\"abc\""), &["\"abc\" junk"], false),
            (Some("\"abc\""), &["\"abc\", junk"], false),
            (Some("\"abc\""), &["\"abc"], false),
            (Some("\"abc\""), &["\"ab\"c\""], false),
            (Some("\"abc\""), &[""], false),
            (Some("\"abc\""), &[", ,\"abc\","], true),
        ];
        for (etag, inm, want) in table {
            let mut stored = map(&[("date", DATE)]);
            if let Some(e) = etag {
                stored.insert(header::ETAG, HeaderValue::from_str(e).unwrap());
            }
            let req: Vec<(&str, &str)> = inm.iter().map(|v| ("if-none-match", *v)).collect();
            let got = not_modified(&Method::GET, &map(&req), StatusCode::OK, &stored);
            assert_eq!(got, *want, "stored {etag:?}, If-None-Match {inm:?}");
        }
    }

    #[test]
    fn if_modified_since_table() {
        // (stored Last-Modified, If-Modified-Since lines, not modified?)
        let table: &[(Option<&str>, &[&str], bool)] = &[
            (Some(LM), &[LM], true),
            (Some(LM), &["Sun, 06 Nov 1994 08:49:38 GMT"], true),
            (Some(LM), &["Sun, 06 Nov 1994 08:49:36 GMT"], false),
            (Some(LM), &["Sunday, 06-Nov-94 08:49:37 GMT"], true),
            (Some(LM), &["garbage"], false),
            (Some(LM), &[LM, LM], false),
            // Without Last-Modified the stored Date stands in.
            (None, &[DATE], true),
            (None, &[LM], false),
        ];
        for (lm, ims, want) in table {
            let mut stored = map(&[("date", DATE)]);
            if let Some(lm) = lm {
                stored.insert(header::LAST_MODIFIED, HeaderValue::from_str(lm).unwrap());
            }
            let req: Vec<(&str, &str)> = ims.iter().map(|v| ("if-modified-since", *v)).collect();
            assert_eq!(
                not_modified(&Method::GET, &map(&req), StatusCode::OK, &stored),
                *want,
                "{lm:?} {ims:?}"
            );
        }
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let stored = map(&[("etag", "\"v2\""), ("last-modified", LM), ("date", DATE)]);
        let req = map(&[("if-none-match", "\"v1\""), ("if-modified-since", DATE)]);
        assert!(!not_modified(&Method::GET, &req, StatusCode::OK, &stored));
    }

    #[test]
    fn only_get_and_head_on_a_2xx_are_answered_304() {
        let stored = map(&[("etag", "\"v\"")]);
        let req = map(&[("if-none-match", "\"v\"")]);
        assert!(not_modified(&Method::HEAD, &req, StatusCode::OK, &stored));
        assert!(!not_modified(&Method::POST, &req, StatusCode::OK, &stored));
        assert!(!not_modified(&Method::GET, &req, StatusCode::NOT_FOUND, &stored));
        assert!(!not_modified(&Method::GET, &HeaderMap::new(), StatusCode::OK, &stored));
    }

    #[test]
    fn revalidation_uses_etag_and_last_modified_as_received() {
        let stored = map(&[("etag", "W/\"v1\""), ("last-modified", LM)]);
        let h = revalidation_headers(&stored);
        assert_eq!(h[header::IF_NONE_MATCH], "W/\"v1\"");
        assert_eq!(h[header::IF_MODIFIED_SINCE], LM);
        let h = revalidation_headers(&map(&[("etag", "unquoted"), ("last-modified", "0")]));
        assert!(h.is_empty());
        assert!(revalidation_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn not_modified_headers_carry_what_rfc_9110_lists() {
        let stored = map(&[
            ("etag", "\"v\""),
            ("cache-control", "max-age=60"),
            ("date", DATE),
            ("content-type", "text/css"),
            ("content-length", "10"),
            ("vary", "accept-encoding"),
            ("last-modified", LM),
        ]);
        let h = not_modified_headers(&stored);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "date", "etag", "vary"]);
        let h = not_modified_headers(&map(&[("last-modified", LM)]));
        assert_eq!(h[header::LAST_MODIFIED], LM);
    }

    #[test]
    fn merge_304_replaces_updates_and_keeps_body_fields() {
        let mut stored = map(&[
            ("content-type", "text/css"),
            ("content-length", "1234"),
            ("content-encoding", "gzip"),
            ("cache-control", "max-age=60"),
            ("etag", "\"v\""),
            ("date", LM),
            ("age", "100"),
            ("x-extra", "a"),
            ("x-extra", "b"),
            ("x-untouched", "1"),
        ]);
        let resp = map(&[
            ("cache-control", "max-age=600"),
            ("etag", "\"v\""),
            ("date", DATE),
            ("content-length", "0"),
            ("content-type", "text/html"),
            ("x-extra", "c"),
            ("set-cookie", "s=1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(can_freshen(&stored, &resp));
        merge_304(&mut stored, &resp);
        assert_eq!(stored[header::CACHE_CONTROL], "max-age=600");
        assert_eq!(stored[header::DATE], DATE);
        assert_eq!(stored[header::CONTENT_LENGTH], "1234");
        assert_eq!(stored[header::CONTENT_TYPE], "text/css");
        assert_eq!(stored[header::CONTENT_ENCODING], "gzip");
        assert_eq!(stored.get_all("x-extra").iter().collect::<Vec<_>>(), ["c"]);
        assert_eq!(stored["x-untouched"], "1");
        for gone in ["age", "set-cookie", "connection", "x-hop", "keep-alive"] {
            assert!(!stored.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn merge_304_without_date_drops_the_old_date_and_applies_field_lists() {
        let mut stored = map(&[("date", LM), ("x-user", "alice"), ("cache-control", "max-age=1")]);
        merge_304(
            &mut stored,
            &map(&[("cache-control", "max-age=60, private=\"x-user\"")]),
        );
        assert!(!stored.contains_key(header::DATE));
        assert!(!stored.contains_key("x-user"));
    }

    #[test]
    fn can_freshen_table() {
        // (stored, 304, refers to the stored response?)
        type Fields = &'static [(&'static str, &'static str)];
        #[rustfmt::skip]
        let table: &[(Fields, Fields, bool)] = &[
            (&[("etag", "\"a\"")], &[("etag", "\"a\"")], true),
            (&[("etag", "W/\"a\"")], &[("etag", "\"a\"")], true),
            (&[("etag", "\"a\"")], &[("etag", "\"b\"")], false),
            (&[], &[("etag", "\"a\"")], false),
            (&[("etag", "\"a\"")], &[("etag", "bad")], false),
            (&[("last-modified", LM)], &[("last-modified", LM)], true),
            (&[("last-modified", LM)], &[("last-modified", DATE)], false),
            (&[("etag", "\"a\"")], &[], true),
        ];
        for (stored, resp, want) in table {
            assert_eq!(can_freshen(&map(stored), &map(resp)), *want, "{stored:?} {resp:?}");
        }
    }

    #[test]
    fn head_refreshes_only_a_matching_stored_response() {
        let stored = map(&[
            ("etag", "\"a\""),
            ("content-length", "10"),
            ("cache-control", "max-age=1"),
        ]);
        let mut s = stored.clone();
        assert!(head_refresh(
            &mut s,
            &map(&[
                ("etag", "\"a\""),
                ("content-length", "10"),
                ("cache-control", "max-age=9")
            ])
        ));
        assert_eq!(s[header::CACHE_CONTROL], "max-age=9");
        let mut s = stored.clone();
        assert!(
            head_refresh(&mut s, &map(&[("etag", "\"a\"")])),
            "a HEAD without Content-Length"
        );
        assert!(!head_refresh(
            &mut stored.clone(),
            &map(&[("etag", "\"b\""), ("content-length", "10")])
        ));
        assert!(!head_refresh(
            &mut stored.clone(),
            &map(&[("etag", "\"a\""), ("content-length", "11")])
        ));
        assert!(!head_refresh(&mut stored.clone(), &map(&[("content-length", "10")])));
    }
}
