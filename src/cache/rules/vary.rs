//! Vary (RFC 9111 §4.1): the secondary cache key made of the request fields a response varies on.
//!
//! Two requests get the same key when the origin could not tell them apart in any way that
//! matters, so one stored variant serves both:
//! - Field names are lower-cased, deduplicated and sorted, so `Vary: Accept-Encoding, Accept`
//!   and `Vary: accept, accept-encoding` key alike.
//! - Values: all lines of the field joined as one list; list members trimmed, empty members
//!   dropped (RFC 9110 §5.6.1), runs of spaces and tabs outside quoted strings collapsed to one
//!   space. Member order is kept (it carries preference in Accept-Language and friends).
//! - Cookie is split on `;` instead, so HTTP/2's one-crumb-per-line form keys like HTTP/1's.
//! - Accept-Encoding becomes the sorted set of acceptable codings, lower-cased, `x-gzip` read as
//!   `gzip` and `x-compress` as `compress` (RFC 9110 §8.4.1), q-values dropped: any variant
//!   whose coding the client accepts is a correct answer. Members with q=0 are dropped too,
//!   except `identity;q=0` and `*;q=0`, which change what is acceptable and stay in the set.
//! - An absent field and an empty one differ (no Accept-Encoding accepts every coding, an empty
//!   one only identity).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The field names of the response's Vary, lower-cased, sorted and deduplicated; None when one
/// of them is `*` or not a field name (both mean no later request can be said to match).
pub(super) fn vary_names(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in resp.get_all(header::VARY) {
        for member in line.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if member == b"*" {
                return None;
            }
            names.push(HeaderName::from_bytes(member).ok()?);
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The secondary key of `req_headers` under the Vary of `resp_vary` (a response's headers);
/// None when the response must never be served from cache (`Vary: *`). Without Vary the key is
/// empty. Each name contributes `name\n` when the request lacks the field, else
/// `name:normalised-value\n`; header values cannot contain `\n`, so keys are unambiguous.
pub fn vary_key(resp_vary: &HeaderMap, req_headers: &HeaderMap) -> Option<Vec<u8>> {
    let names = vary_names(resp_vary)?;
    let mut key = Vec::new();
    for name in &names {
        key.extend_from_slice(name.as_str().as_bytes());
        let values = req_headers.get_all(name);
        if values.iter().next().is_none() {
            key.push(b'\n');
            continue;
        }
        key.push(b':');
        if name == header::ACCEPT_ENCODING {
            accept_encoding(values.iter(), &mut key);
        } else if name == header::COOKIE {
            members(values.iter(), b';', &mut key);
        } else {
            members(values.iter(), b',', &mut key);
        }
        key.push(b'\n');
    }
    Some(key)
}

/// Splits on `sep` outside quoted strings.
fn split_outside_quotes(v: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut in_quotes = false;
    let mut escaped = false;
    v.split(move |&b| {
        if escaped {
            escaped = false;
        } else if in_quotes && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        }
        b == sep && !in_quotes
    })
}

fn members<'a>(values: impl Iterator<Item = &'a HeaderValue>, sep: u8, key: &mut Vec<u8>) {
    let mut first = true;
    for v in values {
        for m in split_outside_quotes(v.as_bytes(), sep) {
            let m = m.trim_ascii();
            if m.is_empty() {
                continue;
            }
            if !first {
                key.push(sep);
            }
            first = false;
            collapse_whitespace(m, key);
        }
    }
}

fn collapse_whitespace(m: &[u8], key: &mut Vec<u8>) {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut last_space = false;
    for &b in m {
        let space = matches!(b, b' ' | b'\t') && !in_quotes;
        if escaped {
            escaped = false;
        } else if in_quotes && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        }
        if space {
            if !last_space {
                key.push(b' ');
            }
        } else {
            key.push(b);
        }
        last_space = space;
    }
}

fn accept_encoding<'a>(values: impl Iterator<Item = &'a HeaderValue>, key: &mut Vec<u8>) {
    let mut codings: Vec<Vec<u8>> = Vec::new();
    for v in values {
        for m in v.as_bytes().split(|b| *b == b',') {
            let mut parts = m.split(|b| *b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            let coding = match coding.as_slice() {
                b"x-gzip" => b"gzip".to_vec(),
                b"x-compress" => b"compress".to_vec(),
                _ => coding,
            };
            let zero = parts.any(|p| {
                let p = p.trim_ascii();
                p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") && is_zero_weight(p[2..].trim_ascii())
            });
            if !zero {
                codings.push(coding);
            } else if coding == b"identity" || coding == b"*" {
                codings.push([coding.as_slice(), b";q=0"].concat());
            }
        }
    }
    codings.sort_unstable();
    codings.dedup();
    key.extend_from_slice(&codings.join(&b","[..]));
}

/// `0`, `0.`, `0.0`... (RFC 9110 §12.4.2 qvalue); anything unreadable counts as non-zero, which
/// keeps the coding in the key (a narrower match, never a wrong one).
fn is_zero_weight(w: &[u8]) -> bool {
    match w {
        [b'0'] => true,
        [b'0', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(|b| *b == b'0'),
        _ => false,
    }
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

    fn key(vary: &[&str], req: &[(&str, &str)]) -> Option<String> {
        let resp: Vec<(&str, &str)> = vary.iter().map(|v| ("vary", *v)).collect();
        vary_key(&map(&resp), &map(req)).map(|k| String::from_utf8(k).unwrap())
    }

    #[test]
    fn vary_star_or_a_bad_name_is_none() {
        assert_eq!(key(&["*"], &[]), None);
        assert_eq!(key(&["accept, *"], &[]), None);
        assert_eq!(key(&["accept", "*"], &[]), None);
        assert_eq!(key(&["accept, \"x\""], &[]), None);
    }

    #[test]
    fn no_vary_is_the_empty_key() {
        assert_eq!(key(&[], &[("accept", "x")]).as_deref(), Some(""));
        assert_eq!(key(&[" , "], &[("accept", "x")]).as_deref(), Some(""));
    }

    #[test]
    fn names_are_lowercased_sorted_and_deduplicated() {
        let req = [("accept", "a"), ("accept-language", "en")];
        let k1 = key(&["Accept-Language, Accept"], &req);
        let k2 = key(&["accept", "accept-language, ACCEPT"], &req);
        assert_eq!(k1, k2);
        assert_eq!(k1.as_deref(), Some("accept:a\naccept-language:en\n"));
    }

    #[test]
    fn normalisation_table() {
        // (Vary, request A's lines of that field, request B's, same key?)
        #[rustfmt::skip]
        let table: &[(&str, &[&str], &[&str], bool)] = &[
            ("accept-language", &["en , fr"], &["en,fr"], true),
            ("accept-language", &["en, fr"], &["en", "fr"], true),
            ("accept-language", &["en,,fr,"], &["en,fr"], true),
            ("accept-language", &["en, fr"], &["fr, en"], false),
            ("accept", &["text/html;  q=0.9"], &["text/html; q=0.9"], true),
            ("x-q", &["\"a,  b\""], &["\"a, b\""], false),
            ("accept-encoding", &["gzip, br"], &["BR,gzip"], true),
            ("accept-encoding", &["gzip;q=0.5, br;q=1.0"], &["br, gzip"], true),
            ("accept-encoding", &["gzip, br;q=0"], &["gzip"], true),
            ("accept-encoding", &["gzip, br;q=0.000"], &["gzip"], true),
            ("accept-encoding", &["x-gzip"], &["gzip"], true),
            ("accept-encoding", &["gzip, gzip"], &["gzip"], true),
            ("accept-encoding", &["gzip, identity;q=0"], &["gzip"], false),
            ("accept-encoding", &["gzip;q=0"], &[""], true),
            ("accept-encoding", &[""], &[], false),
            ("accept-encoding", &["gzip;q=x"], &["gzip"], true),
            ("cookie", &["a=1; b=2"], &["a=1", "b=2"], true),
            ("cookie", &["a=1; b=2"], &["a=1; b=3"], false),
            ("x-absent", &[], &[""], false),
        ];
        for (vary, a, b, same) in table {
            let req = |lines: &[&'static str]| -> Vec<(&str, &str)> { lines.iter().map(|l| (*vary, *l)).collect() };
            let (ka, kb) = (key(&[vary], &req(a)), key(&[vary], &req(b)));
            assert_eq!(ka == kb, *same, "{vary}: {a:?} -> {ka:?} vs {b:?} -> {kb:?}");
        }
    }

    #[test]
    fn accept_encoding_key_is_the_sorted_acceptable_set() {
        let k = key(
            &["accept-encoding"],
            &[("accept-encoding", "br;q=1, GZIP;q=0.8, deflate;q=0, *;q=0")],
        );
        assert_eq!(k.as_deref(), Some("accept-encoding:*;q=0,br,gzip\n"));
    }
}
