//! The property checks of waypost's fuzz targets, one `check_*` function per target.
//!
//! Each takes the fuzzer's raw bytes, feeds them to a parser of the main crate and asserts what
//! must hold for any input, beyond "does not panic". The same file is compiled twice: as this
//! crate's library, for the targets in `fuzz_targets/` (nightly, cargo-fuzz), and by path into
//! `tests/fuzz_corpus.rs`, which replays every committed corpus file on stable. So it uses only
//! waypost's public API and crates the main crate already depends on (`http`).
//!
//! What each target checks is listed in docs/fuzzing.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use waypost::cache::rules::{vary_key, CacheControl, MaxStale, DELTA_MAX};
use waypost::config;
use waypost::listener::proxy_protocol::{self as pp, Parsed, ProxyError};
use waypost::session::{cookie_value, find_cookie, set_cookie, Claim, CookieError, Purpose, SessionKey};

// ---------------------------------------------------------------------------------------------
// config

/// The loader reads the files a config names (token_file, secret_file, certificates, mmdb).
/// Keep the fuzzer off device and kernel files, which may never end (/dev/zero) or block
/// (/dev/stdin): paths into them are defused (one letter changed, so they name no file) and
/// TOML's unicode escapes, which could spell them, lose their backslash. Line breaks and the
/// rest of the text stay as they are, so every input is still checked.
fn defuse(text: &str) -> String {
    let mut t = text.to_string();
    for (from, to) in [
        ("dev/", "deV/"),
        ("/dev", "/deV"),
        ("proc/", "proC/"),
        ("/proc", "/proC"),
        ("sys/", "syS/"),
        ("/sys", "/syS"),
        ("\\u", "_u"),
        ("\\U", "_U"),
    ] {
        t = t.replace(from, to);
    }
    t
}

/// `config::parse` on the input as TOML text.
///
/// - Ok: the hash is the digest of the text, there is a listener, names are unique, every pool
///   has a backend and every pool a route names exists.
/// - Err: at least one problem; each has a key path, a message, a line from 1 to the number of
///   lines of the text, and shows as one line; problems come sorted by line.
pub fn check_config(data: &[u8]) {
    // Bytes that are not UTF-8 are refused whole by the loader (it reads the file as text);
    // their text with replacement characters is checked instead, so no input goes unchecked.
    let text = defuse(&String::from_utf8_lossy(data));
    let lines = text.split('\n').count();
    match config::parse(&text, None) {
        Ok(cfg) => {
            assert_eq!(cfg.hash, config::digest(text.as_bytes()));
            assert!(!cfg.listeners.is_empty(), "a config without listeners was accepted");
            unique(cfg.listeners.iter().map(|l| l.name.as_str()).collect(), "listener");
            unique(cfg.routes.iter().map(|r| r.name.as_str()).collect(), "route");
            let pools = unique(cfg.pools.iter().map(|p| p.name.as_str()).collect(), "pool");
            for p in &cfg.pools {
                assert!(!p.backends.is_empty(), "pool {} has no backend", p.name);
                assert!(p.backends.iter().all(|b| b.weight >= 1), "pool {}: weight 0", p.name);
            }
            for r in &cfg.routes {
                let mut named: Vec<&str> = r.pools.iter().map(String::as_str).collect();
                if r.pools.is_empty() {
                    named.push(&r.pool);
                }
                if let Some(s) = &r.split {
                    named.extend([s.primary.as_str(), s.replicas.as_str()]);
                }
                for p in named {
                    assert!(pools.contains(p), "route {} names unknown pool {p:?}", r.name);
                }
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "rejected without a problem");
            for p in &problems {
                assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
                assert!(
                    (1..=lines).contains(&p.line),
                    "problem without a line in the text ({lines} lines): {p:?}"
                );
                let shown = p.to_string();
                assert!(!shown.contains('\n'), "a problem shows on one line: {shown:?}");
            }
            assert!(
                problems.windows(2).all(|w| w[0].line <= w[1].line),
                "not sorted by line"
            );
        }
    }
}

/// The names as a set, asserting there are no duplicates.
fn unique<'a>(names: Vec<&'a str>, what: &str) -> BTreeSet<&'a str> {
    let set: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(set.len(), names.len(), "duplicate {what} names accepted: {names:?}");
    set
}

// ---------------------------------------------------------------------------------------------
// Cache-Control

/// The input's lines (split on `\n`) that are valid header values.
fn header_lines(data: &[u8]) -> Vec<HeaderValue> {
    data.split(|b| *b == b'\n')
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect()
}

fn map_of(name: &HeaderName, values: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), v.clone());
    }
    h
}

/// A parsed Cache-Control with its field lists in a fixed order, for comparisons where the
/// order of the input's directives may differ.
fn normalised(mut cc: CacheControl) -> CacheControl {
    cc.no_cache_fields.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    cc.private_fields.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    cc
}

/// `CacheControl::parse` on the input's lines as Cache-Control field lines (and as Pragma).
///
/// - Every delta-seconds value is at most 2^31; field lists hold no duplicates.
/// - The order of the field lines does not matter, nor the ASCII case of the whole field.
/// - Without quoted strings, several lines mean the same as one comma-joined line.
/// - Pragma alone gives at most `no-cache`; next to Cache-Control it is ignored.
pub fn check_cache_control(data: &[u8]) {
    let lines = header_lines(data);
    let cc = CacheControl::parse(&map_of(&header::CACHE_CONTROL, &lines));

    let deltas = [
        cc.max_age,
        cc.s_maxage,
        cc.stale_while_revalidate,
        cc.stale_if_error,
        cc.min_fresh,
        match cc.max_stale {
            Some(MaxStale::Secs(s)) => Some(s),
            _ => None,
        },
    ];
    assert!(deltas.iter().flatten().all(|d| *d <= DELTA_MAX), "{cc:?}");
    for list in [&cc.no_cache_fields, &cc.private_fields] {
        let set: BTreeSet<&str> = list.iter().map(HeaderName::as_str).collect();
        assert_eq!(set.len(), list.len(), "duplicate field names: {list:?}");
    }

    let base = normalised(cc.clone());
    let mut reversed = lines.clone();
    reversed.reverse();
    let got = normalised(CacheControl::parse(&map_of(&header::CACHE_CONTROL, &reversed)));
    assert_eq!(got, base, "line order changed the meaning of {lines:?}");

    let upper: Vec<HeaderValue> = lines
        .iter()
        .filter_map(|v| HeaderValue::from_bytes(&v.as_bytes().to_ascii_uppercase()).ok())
        .collect();
    let got = normalised(CacheControl::parse(&map_of(&header::CACHE_CONTROL, &upper)));
    assert_eq!(got, base, "ASCII case changed the meaning of {lines:?}");

    if lines.len() > 1 && !lines.iter().any(|v| v.as_bytes().contains(&b'"')) {
        let joined = HeaderValue::from_bytes(
            &lines
                .iter()
                .map(HeaderValue::as_bytes)
                .collect::<Vec<_>>()
                .join(&b","[..]),
        )
        .expect("valid values joined by commas are valid");
        let got = normalised(CacheControl::parse(&map_of(&header::CACHE_CONTROL, &[joined])));
        assert_eq!(got, base, "joining the lines changed the meaning of {lines:?}");
    }

    let pragma_only = CacheControl::parse(&map_of(&header::PRAGMA, &lines));
    let want = CacheControl {
        no_cache: pragma_only.no_cache,
        ..CacheControl::default()
    };
    assert_eq!(pragma_only, want, "Pragma gave more than no-cache: {lines:?}");
    if !lines.is_empty() {
        let mut both = map_of(&header::CACHE_CONTROL, &lines);
        for v in &lines {
            both.append(header::PRAGMA, v.clone());
        }
        assert_eq!(CacheControl::parse(&both), cc, "Pragma counted next to Cache-Control");
    }
}

// ---------------------------------------------------------------------------------------------
// Vary

/// The Vary names of `resp` read independently of the parser: None for `*` or a bad name.
fn expected_vary_names(resp: &HeaderMap) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for v in resp.get_all(header::VARY) {
        for m in v.as_bytes().split(|b| *b == b',') {
            let m = m.trim_ascii();
            if m.is_empty() {
                continue;
            }
            if m == b"*" {
                return None;
            }
            names.insert(HeaderName::from_bytes(m).ok()?.as_str().to_string());
        }
    }
    Some(names)
}

/// `vary_key` on a response's Vary lines (the input's lines up to the first empty one) and a
/// request's fields (the following `name: value` lines).
///
/// - None exactly when a Vary member is `*` or not a field name.
/// - The key is one line per distinct name, in name order: `name` when the request lacks the
///   field, else `name:value`.
/// - The order of Vary lines and request fields not named by Vary do not change the key.
/// - A field sent as several lines keys like the same field as one joined line (`, `, or `; `
///   for Cookie), when no quoted string is involved.
pub fn check_vary(data: &[u8]) {
    let (vary_part, req_part) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let vary_lines = header_lines(vary_part);
    let resp = map_of(&header::VARY, &vary_lines);
    let mut req = HeaderMap::new();
    for line in req_part.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            req.append(n, v);
        }
    }

    let key = vary_key(&resp, &req);
    let names = expected_vary_names(&resp);
    let (Some(key), Some(names)) = (&key, &names) else {
        assert_eq!(key.is_none(), names.is_none(), "Vary {vary_lines:?}: key {key:?}");
        return;
    };
    if names.is_empty() {
        assert!(key.is_empty(), "no Vary names, key {key:?}");
    } else {
        assert_eq!(key.last(), Some(&b'\n'), "{key:?}");
        let key_lines: Vec<&[u8]> = key[..key.len() - 1].split(|b| *b == b'\n').collect();
        assert_eq!(
            key_lines.len(),
            names.len(),
            "one key line per name: {key:?} for {names:?}"
        );
        for (line, name) in key_lines.iter().zip(names) {
            if req.contains_key(name.as_str()) {
                assert!(
                    line.starts_with(name.as_bytes()) && line.get(name.len()) == Some(&b':'),
                    "{name}: {line:?}"
                );
            } else {
                assert_eq!(*line, name.as_bytes(), "absent field {name}");
            }
        }
    }

    let mut reversed = vary_lines.clone();
    reversed.reverse();
    assert_eq!(vary_key(&map_of(&header::VARY, &reversed), &req).as_ref(), Some(key));

    let unrelated = HeaderName::from_static("x-fuzz-unrelated");
    if !names.contains(unrelated.as_str()) {
        let mut more = req.clone();
        more.append(unrelated, HeaderValue::from_static("1"));
        assert_eq!(
            vary_key(&resp, &more).as_ref(),
            Some(key),
            "an unrelated field changed the key"
        );
    }

    for name in names {
        let values: Vec<&HeaderValue> = req.get_all(name.as_str()).iter().collect();
        if values.len() < 2 || values.iter().any(|v| v.as_bytes().contains(&b'"')) {
            continue;
        }
        let sep: &[u8] = if name == "cookie" { b"; " } else { b", " };
        let joined = values.iter().map(|v| v.as_bytes()).collect::<Vec<_>>().join(sep);
        let mut one = req.clone();
        one.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a name read from a HeaderName"),
            HeaderValue::from_bytes(&joined).expect("valid values joined are valid"),
        );
        assert_eq!(
            vary_key(&resp, &one).as_ref(),
            Some(key),
            "{name}: {values:?} as one line keys differently"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol

fn encode_v1(s: SocketAddr, d: SocketAddr) -> Vec<u8> {
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
}

fn encode_v2(s: SocketAddr, d: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (s, d) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            block.extend(s.ip().octets());
            block.extend(d.ip().octets());
            0x21
        }
        _ => unreachable!("checked to be of one family"),
    };
    block.extend(s.port().to_be_bytes());
    block.extend(d.port().to_be_bytes());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, family]);
    h.extend((block.len() as u16).to_be_bytes());
    h.extend(block);
    h
}

/// `proxy_protocol::parse` on the input as the first bytes of a connection.
///
/// - `Done` never claims more than the input (`header_len <= len`), and is decided by the
///   header alone: the header by itself, or followed by other bytes, parses the same, and one
///   byte less is `Incomplete`. Addresses come in pairs of one family, and re-encoded in the
///   same version they parse back to themselves.
/// - `Incomplete` is only said of inputs shorter than the longest header.
/// - Errors are final: more bytes do not change them; parse never says Timeout or Closed.
/// - Every beginning of the input parses as `Incomplete` or as the whole input does.
pub fn check_proxy_protocol(data: &[u8]) {
    let whole = pp::parse(data);
    let mut extended = data.to_vec();
    extended.extend_from_slice(b"\r\n\0GET / HTTP/1.1\r\n\r\n");
    match whole {
        Ok(Parsed::Done {
            source,
            destination,
            header_len,
        }) => {
            assert!(
                header_len > 0 && header_len <= data.len(),
                "{header_len} of {}",
                data.len()
            );
            let header = &data[..header_len];
            assert_eq!(pp::parse(header), whole);
            assert_eq!(pp::parse(&extended), whole);
            assert_eq!(pp::parse(&header[..header_len - 1]), Ok(Parsed::Incomplete));
            match (source, destination) {
                (None, None) => {}
                (Some(s), Some(d)) => {
                    assert_eq!(s.is_ipv4(), d.is_ipv4(), "mixed families {s} {d}");
                    let again = if data[0] == b'P' {
                        encode_v1(s, d)
                    } else {
                        encode_v2(s, d)
                    };
                    assert_eq!(
                        pp::parse(&again),
                        Ok(Parsed::Done {
                            source,
                            destination,
                            header_len: again.len()
                        })
                    );
                }
                _ => panic!("one address without the other: {source:?} {destination:?}"),
            }
        }
        Ok(Parsed::Incomplete) => {
            let max = if data.first() == Some(&b'P') {
                pp::V1_MAX_LEN
            } else {
                pp::V2_MAX_LEN
            };
            assert!(data.len() < max, "incomplete at {} bytes", data.len());
        }
        Err(ref e) => {
            assert!(matches!(e, ProxyError::Malformed(_) | ProxyError::TooLong), "{e:?}");
            assert_eq!(pp::parse(&extended), whole, "more bytes changed an error");
        }
    }
    // Every beginning: all of the short ones, a sample of the long ones (the full scan would be
    // quadratic on 16 KiB headers).
    let n = data.len();
    let mut cuts: Vec<usize> = (0..n.min(256)).collect();
    cuts.extend((256..n).step_by(97));
    if let Ok(Parsed::Done { header_len, .. }) = whole {
        cuts.extend([header_len.saturating_sub(2), header_len.saturating_sub(1), header_len]);
    }
    for cut in cuts.into_iter().filter(|c| *c <= n) {
        let part = pp::parse(&data[..cut]);
        assert!(
            part == Ok(Parsed::Incomplete) || part == whole,
            "the first {cut} bytes gave {part:?}, all {n} gave {whole:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sticky and read-your-writes cookies

const COOKIE: &str = "waypost_affinity";
/// "Now" for opening arbitrary values: 2026-11-24.
const NOW: u64 = 1_795_478_400;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Two instances' keys: `keys().0` seals, `keys().1` is another secret.
fn keys() -> &'static (SessionKey, SessionKey) {
    static KEYS: OnceLock<(SessionKey, SessionKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let a = SessionKey::from_secret(b"waypost fuzzing secret, 32 bytes").expect("32 bytes");
        let b = SessionKey::from_secret(b"another instance's secret (32 B)").expect("32 bytes");
        (a, b)
    })
}

fn other(p: Purpose) -> Purpose {
    match p {
        Purpose::Sticky => Purpose::ReadYourWrites,
        Purpose::ReadYourWrites => Purpose::Sticky,
    }
}

/// Up to 8 bytes of the input as a number, big-endian, then the rest.
fn take_u64(data: &mut &[u8]) -> u64 {
    let n = data.len().min(8);
    let (head, rest) = data.split_at(n);
    *data = rest;
    head.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// The session cookie code, two ways.
///
/// The input as a cookie value (and as a Cookie header):
/// - it opens only if it is exactly what `seal` makes of the claim it opens to, for the purpose
///   asked, unexpired; another secret refuses it;
/// - a value `cookie_value` finds is a piece of the header, without `;`; a sealed cookie put
///   first in the header is found whatever follows.
///
/// Claims made of the input's first bytes (backend id, expiry, now, where and what to change):
/// - sealed, the value is cookie-safe and of fixed length, opens to the claim before its expiry
///   and as `Expired` from then on, as `WrongPurpose` for the other purpose, as `BadSignature`
///   under another secret;
/// - any changed character, a missing or an extra one: refused (`BadSignature` or `Malformed`);
/// - the Set-Cookie value waypost sends reads back as the sealed value.
pub fn check_cookie(data: &[u8]) {
    let (key, other_key) = keys();
    if let Ok(text) = std::str::from_utf8(data) {
        for purpose in [Purpose::Sticky, Purpose::ReadYourWrites] {
            if let Ok(claim) = key.open(purpose, text, NOW) {
                assert_eq!(claim.purpose(), purpose);
                assert!(claim.expires() > NOW, "{claim:?}");
                assert_eq!(key.seal(claim), text, "a value that seal does not make opened");
                assert_eq!(other_key.open(purpose, text, NOW), Err(CookieError::BadSignature));
            }
        }
        if let Some(v) = cookie_value(text, COOKIE) {
            let inside = text.as_ptr() as usize..=text.as_ptr() as usize + text.len();
            assert!(inside.contains(&(v.as_ptr() as usize)) && inside.contains(&(v.as_ptr() as usize + v.len())));
            assert!(!v.contains(';'), "{v:?}");
        }
        let sealed = key.seal_sticky(data.len() as u64, NOW + 60);
        let header = format!("{COOKIE}={sealed}; {text}");
        assert_eq!(cookie_value(&header, COOKIE), Some(sealed.as_str()));
        assert_eq!(find_cookie([header.as_str(), text], COOKIE), Some(sealed.as_str()));
        assert_eq!(key.open_sticky(&sealed, NOW), Ok(data.len() as u64));
    }

    let mut rest = data;
    let backend = take_u64(&mut rest);
    let expires = take_u64(&mut rest);
    let now = take_u64(&mut rest);
    let at = take_u64(&mut rest) as usize;
    for claim in [Claim::Sticky { backend, expires }, Claim::ReadYourWrites { expires }] {
        let purpose = claim.purpose();
        let v = key.seal(claim);
        assert_eq!(v.len(), if purpose == Purpose::Sticky { 46 } else { 35 });
        assert!(v.bytes().all(|b| ALPHABET.contains(&b)), "{v}");
        let opened = key.open(purpose, &v, now);
        if now < expires {
            assert_eq!(opened, Ok(claim));
        } else {
            assert_eq!(opened, Err(CookieError::Expired));
        }
        assert_eq!(key.open(other(purpose), &v, now), Err(CookieError::WrongPurpose));
        assert_eq!(other_key.open(purpose, &v, now), Err(CookieError::BadSignature));

        let refused = |m: &str| {
            for p in [Purpose::Sticky, Purpose::ReadYourWrites] {
                let e = key.open(p, m, 0);
                assert!(
                    matches!(e, Err(CookieError::BadSignature | CookieError::Malformed)),
                    "{v} changed to {m} gave {e:?}"
                );
            }
        };
        let i = at % v.len();
        let mut changed = v.clone().into_bytes();
        changed[i] = ALPHABET[(at >> 8) % 64];
        if changed != v.as_bytes() {
            refused(std::str::from_utf8(&changed).expect("ASCII"));
        }
        refused(&[&v[..i], &v[i + 1..]].concat());
        refused(&[&v[..i], "A", &v[i..]].concat());

        let set = set_cookie(COOKIE, &v, 60, at % 2 == 0);
        assert_eq!(cookie_value(&set, COOKIE), Some(v.as_str()));
    }
}
