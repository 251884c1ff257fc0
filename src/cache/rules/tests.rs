//! Tables across the rules: what is stored and for how long, how old it is, which requests it
//! answers; and a garbage loop that feeds every parser random header values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::*;

const T0: u64 = 1_700_000_000;

fn at(offset: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0.checked_add_signed(offset).unwrap())
}

fn date(offset: i64) -> String {
    fmt_http_date(at(offset))
}

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

/// Response headers with `Date: T0` and the given Cache-Control (if not empty) and extras.
fn resp(cc: &str, extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = map(extra);
    if !h.contains_key("date") {
        h.insert("date", HeaderValue::from_str(&date(0)).unwrap());
    }
    if !cc.is_empty() {
        h.append("cache-control", HeaderValue::from_str(cc).unwrap());
    }
    h
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

type Fields = &'static [(&'static str, &'static str)];
type Verdict = Result<(u64, FreshnessSource), NotStored>;
const ETAG: (&str, &str) = ("etag", "\"e\"");
/// Date(120) and date(-10): T0 is Tue, 14 Nov 2023 22:13:20 GMT.
const EXP_120: &str = "Tue, 14 Nov 2023 22:15:20 GMT";
const EXP_PAST: &str = "Tue, 14 Nov 2023 22:13:10 GMT";

fn verdict(s: Storability) -> Verdict {
    match s {
        Storability::Stored(s) => Ok((s.lifetime.as_secs(), s.source)),
        Storability::NotStored(n) => Err(n),
    }
}

#[test]
fn storability_table() {
    use FreshnessSource::*;
    use NotStored as N;
    assert_eq!((date(120).as_str(), date(-10).as_str()), (EXP_120, EXP_PAST));
    // Responses to a plain GET, answered 200: (what, response Cache-Control, other response
    // fields, default_ttl, expected).
    #[rustfmt::skip]
    let table: &[(&str, &str, Fields, u64, Verdict)] = &[
        ("max-age", "max-age=60", &[], 0, Ok((60, MaxAge))),
        ("s-maxage over max-age", "max-age=60, s-maxage=30", &[], 0, Ok((30, SMaxAge))),
        ("max-age over Expires", "max-age=60", &[("expires", EXP_120)], 0, Ok((60, MaxAge))),
        ("Expires - Date", "", &[("expires", EXP_120)], 0, Ok((120, Expires))),
        ("Expires before Date", "", &[("expires", EXP_PAST), ETAG], 0, Ok((0, Expires))),
        ("Expires: 0 with a validator", "", &[("expires", "0"), ETAG], 300, Ok((0, Expires))),
        ("Expires: 0 alone", "", &[("expires", "0")], 300, Err(N::NotReusable)),
        ("two Expires: the earliest", "", &[("expires", EXP_120), ("expires", EXP_PAST), ETAG], 0, Ok((0, Expires))),
        ("nothing, no default", "", &[], 0, Err(N::NotReusable)),
        ("nothing, default_ttl", "", &[], 300, Ok((300, Default))),
        ("nothing but a validator", "", &[("last-modified", EXP_PAST)], 0, Ok((0, Default))),
        ("no-store", "max-age=60, no-store", &[], 0, Err(N::NoStore)),
        ("no-store on a later line", "max-age=60", &[("cache-control", "NO-STORE")], 0, Err(N::NoStore)),
        ("must-understand over no-store", "max-age=60, no-store, must-understand", &[], 0, Ok((60, MaxAge))),
        ("private", "private, max-age=60", &[], 0, Err(N::Private)),
        ("private with a field list", "private=\"x-user\", max-age=60", &[], 0, Ok((60, MaxAge))),
        ("Vary: *", "max-age=60", &[("vary", "accept, *")], 0, Err(N::VaryStar)),
        ("Vary: accept-encoding", "max-age=60", &[("vary", "accept-encoding")], 0, Ok((60, MaxAge))),
        ("no-cache without validator", "no-cache, max-age=60", &[], 0, Err(N::NotReusable)),
        ("no-cache with validator", "no-cache", &[ETAG], 0, Ok((0, Default))),
        ("max-age=0 + stale-if-error", "max-age=0, stale-if-error=60", &[], 0, Ok((0, MaxAge))),
        ("... + must-revalidate", "max-age=0, stale-if-error=60, must-revalidate", &[], 0, Err(N::NotReusable)),
        ("invalid max-age is stale", "max-age=soon", &[ETAG], 300, Ok((0, MaxAge))),
        ("huge s-maxage is 2^31", "s-maxage=999999999999999999", &[], 0, Ok((DELTA_MAX, SMaxAge))),
    ];
    for (what, cc, extra, default_ttl, want) in table {
        let got = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &resp(cc, extra),
            secs(*default_ttl),
        );
        assert_eq!(verdict(got), *want, "{what}");
    }
    // Other methods, statuses and requests: (what, method, request fields, status, response
    // Cache-Control, default_ttl, expected).
    let auth: Fields = &[("authorization", "Bearer x")];
    let get = || Method::GET;
    #[rustfmt::skip]
    let table: &[(&str, Method, Fields, u16, &str, u64, Verdict)] = &[
        ("HEAD", Method::HEAD, &[], 200, "max-age=60", 0, Err(N::Method)),
        ("POST", Method::POST, &[], 200, "max-age=60", 0, Err(N::Method)),
        ("404 by default", get(), &[], 404, "", 10, Ok((10, Default))),
        ("301 by default", get(), &[], 301, "", 10, Ok((10, Default))),
        ("302 not by default", get(), &[], 302, "", 300, Err(N::NoFreshness)),
        ("302 public is still not default", get(), &[], 302, "public", 300, Err(N::NoFreshness)),
        ("302 explicit", get(), &[], 302, "max-age=60", 0, Ok((60, MaxAge))),
        ("500 not by default", get(), &[], 500, "", 300, Err(N::NoFreshness)),
        ("503 explicit", get(), &[], 503, "max-age=5", 0, Ok((5, MaxAge))),
        ("206", get(), &[], 206, "max-age=60", 0, Err(N::Status)),
        ("304", get(), &[], 304, "max-age=60", 0, Err(N::Status)),
        ("429", get(), &[], 429, "max-age=60", 0, Err(N::Status)),
        ("unknown 299", get(), &[], 299, "max-age=60", 0, Err(N::Status)),
        ("1xx", get(), &[], 100, "max-age=60", 0, Err(N::Status)),
        ("request no-store", get(), &[("cache-control", "no-store")], 200, "max-age=60", 0, Err(N::RequestNoStore)),
        ("Authorization", get(), auth, 200, "max-age=60", 0, Err(N::Authorization)),
        ("Authorization + public", get(), auth, 200, "public, max-age=60", 0, Ok((60, MaxAge))),
        ("Authorization + s-maxage", get(), auth, 200, "s-maxage=60", 0, Ok((60, SMaxAge))),
        ("Authorization + must-revalidate", get(), auth, 200, "must-revalidate, max-age=60", 0, Ok((60, MaxAge))),
    ];
    for (what, method, req, status, cc, default_ttl, want) in table {
        let status = StatusCode::from_u16(*status).unwrap();
        let got = storable(method, &map(req), status, &resp(cc, &[]), secs(*default_ttl));
        assert_eq!(verdict(got), *want, "{what}");
    }
}

#[test]
fn set_cookie_is_storable_but_never_stored() {
    let mut h = resp(
        "max-age=60, no-cache=\"x-debug\"",
        &[("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-debug", "1")],
    );
    match storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &h, Duration::ZERO) {
        Storability::Stored(s) => assert!(s.drops_set_cookie),
        other => panic!("{other:?}"),
    }
    assert!(strip_for_storage(&mut h));
    assert!(!h.contains_key("set-cookie") && !h.contains_key("x-debug"));
    assert!(!strip_for_storage(&mut h), "nothing left to drop");
}

#[test]
fn not_stored_details_are_tokens() {
    use NotStored as N;
    let all = [
        N::Method,
        N::Status,
        N::RequestNoStore,
        N::NoStore,
        N::Private,
        N::Authorization,
        N::VaryStar,
        N::NoFreshness,
        N::NotReusable,
    ];
    for n in all {
        let v = cache_status(&CacheStatus {
            detail: Some(n.detail()),
            ..CacheStatus::fwd(Fwd::Miss)
        });
        assert_eq!(v.to_str().unwrap(), format!("waypost; fwd=miss; detail={}", n.detail()));
    }
}

#[test]
fn freshness_lifetime_table() {
    // (response Cache-Control, other fields, default_ttl, lifetime)
    #[rustfmt::skip]
    let table: &[(&str, Fields, u64, u64)] = &[
        ("s-maxage=10, max-age=20", &[("expires", EXP_120)], 5, 10),
        ("max-age=20", &[("expires", EXP_120)], 5, 20),
        ("", &[("expires", EXP_120)], 5, 120),
        ("", &[], 5, 5),
        ("public", &[], 5, 5),
        ("max-age=bad", &[], 5, 0),
        ("", &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")], 5, 0),
        ("", &[("expires", "garbage")], 5, 0),
    ];
    for (cc, extra, default_ttl, want) in table {
        let got = freshness_lifetime(&resp(cc, extra), secs(*default_ttl));
        assert_eq!(got, secs(*want), "{cc} {extra:?}");
    }
    // Expires with no Date to measure it against counts as stale (ensure_date prevents it).
    assert_eq!(
        freshness_lifetime(&map(&[("expires", EXP_120)]), secs(5)),
        Duration::ZERO
    );
}

#[test]
fn age_arithmetic_table() {
    // (Date offset or none, Age, request time, response time, now, expected current age)
    type Row = (Option<i64>, Option<&'static str>, i64, i64, i64, u64);
    #[rustfmt::skip]
    let table: &[Row] = &[
        (Some(0), None, 0, 0, 10, 10),
        (Some(-5), None, 0, 0, 0, 5),
        (Some(0), Some("30"), -2, 0, 10, 42),
        (Some(-100), Some("30"), -2, 0, 0, 100),
        (Some(100), None, -3, 0, 0, 3),
        (None, None, -1, 0, 5, 6),
        (Some(0), Some("abc"), 0, 0, 1, 1),
        (Some(0), Some("-5"), 0, 0, 1, 1),
        (Some(0), Some("10, 20"), 0, 0, 0, 10),
        (Some(0), Some("99999999999999999999"), 0, 0, 0, DELTA_MAX),
        (Some(0), None, 0, 0, -50, 0),
        (Some(0), None, 5, 0, 0, 0),
    ];
    for &(d, age, req_t, resp_t, now, want) in table {
        let mut h = HeaderMap::new();
        if let Some(d) = d {
            h.insert("date", HeaderValue::from_str(&date(d)).unwrap());
        }
        if let Some(a) = age {
            h.insert("age", HeaderValue::from_str(a).unwrap());
        }
        let got = current_age(&h, at(req_t), at(resp_t), at(now));
        assert_eq!(got, secs(want), "{d:?} {age:?} {req_t} {resp_t} {now}");
        let facts = EntryFacts::new(&h, secs(60), at(req_t), at(resp_t));
        assert_eq!(facts.age(at(now)), got, "EntryFacts agrees");
    }
}

#[test]
fn ttl_and_age_header_follow_the_clock() {
    let h = resp("max-age=60", &[("age", "10")]);
    let facts = EntryFacts::new(&h, freshness_lifetime(&h, Duration::ZERO), at(0), at(0));
    assert_eq!(facts.ttl(at(0)), 50);
    assert_eq!(facts.ttl(at(50)), 0);
    assert_eq!(facts.ttl(at(55)), -5);
    assert_eq!(age_header(facts.age(at(5))), "15");
    assert_eq!(
        age_header(Duration::from_secs(u64::MAX)),
        DELTA_MAX.to_string().as_str()
    );
}

#[test]
fn request_directives_table() {
    use Decision::*;
    let stale = |swr, sie| Stale {
        may_serve_while_revalidate: swr,
        may_serve_if_error: sie,
        by_request: false,
    };
    let too_old_for_client = Stale {
        may_serve_while_revalidate: false,
        may_serve_if_error: true,
        by_request: true,
    };
    let strict = MustRevalidate { by_request: false };
    let by_client = MustRevalidate { by_request: true };
    // (response Cache-Control, request Cache-Control, seconds after storing, route defaults
    //  (swr, sie), decision). Stored at T0 with Date T0 and no Age, so age = seconds after.
    type Row = (&'static str, &'static str, i64, (u64, u64), Decision);
    #[rustfmt::skip]
    let table: &[Row] = &[
        ("max-age=60", "", 10, (0, 0), Fresh),
        ("max-age=60", "", 60, (0, 0), stale(false, false)),
        ("max-age=60", "", 70, (30, 0), stale(true, false)),
        ("max-age=60", "", 100, (30, 0), stale(false, false)),
        ("max-age=60", "", 70, (0, 30), stale(false, true)),
        ("max-age=60, stale-while-revalidate=10", "", 65, (30, 0), stale(true, false)),
        ("max-age=60, stale-while-revalidate=10", "", 75, (30, 0), stale(false, false)),
        ("max-age=60, stale-if-error=100", "", 150, (0, 0), stale(false, true)),
        ("max-age=60, stale-if-error=0", "", 70, (0, 30), stale(false, false)),
        ("max-age=60, must-revalidate", "", 70, (30, 30), strict),
        ("max-age=60, proxy-revalidate, stale-if-error=99", "", 70, (30, 30), strict),
        ("max-age=60, must-revalidate", "max-stale", 70, (0, 0), strict),
        ("s-maxage=60", "", 70, (30, 30), strict),
        ("s-maxage=60", "max-stale", 70, (0, 0), strict),
        ("s-maxage=60, stale-while-revalidate=30", "", 70, (0, 0), stale(true, false)),
        ("s-maxage=60, stale-if-error=30", "stale-if-error=300", 100, (0, 0), stale(false, false)),
        ("no-cache, max-age=60", "", 1, (30, 30), strict),
        ("max-age=60", "no-cache", 1, (0, 0), by_client),
        ("max-age=60", "", 1, (0, 0), Fresh),
        ("max-age=60", "max-age=5", 10, (0, 0), too_old_for_client),
        ("max-age=60", "max-age=20", 10, (0, 0), Fresh),
        ("max-age=60", "max-age=0", 0, (0, 0), Fresh),
        ("max-age=60", "max-age=0", 1, (0, 0), too_old_for_client),
        ("max-age=60", "min-fresh=30", 40, (0, 0), too_old_for_client),
        ("max-age=60", "min-fresh=10", 40, (0, 0), Fresh),
        ("max-age=60", "min-fresh", 1, (0, 0), too_old_for_client),
        ("max-age=60, immutable", "max-age=0", 10, (0, 0), Fresh),
        ("max-age=60, immutable", "min-fresh=100", 10, (0, 0), Fresh),
        ("max-age=60, immutable", "no-cache", 10, (0, 0), by_client),
        ("max-age=60, immutable", "", 61, (0, 0), stale(false, false)),
        ("max-age=60", "max-stale", 1000, (0, 0), StaleAccepted),
        ("max-age=60", "max-stale=10", 65, (0, 0), StaleAccepted),
        ("max-age=60", "max-stale=10", 80, (0, 0), stale(false, false)),
        ("max-age=60", "max-stale, min-fresh=1", 70, (0, 0), stale(false, false)),
        ("max-age=60", "max-stale, max-age=65", 70, (30, 30), stale(false, true)),
        ("max-age=60", "max-stale, max-age=75", 70, (0, 0), StaleAccepted),
        ("max-age=60", "max-age=10", 70, (30, 0), stale(false, false)),
        ("max-age=60", "stale-if-error=100", 110, (0, 0), stale(false, true)),
        ("max-age=60", "stale-if-error=100", 170, (0, 0), stale(false, false)),
        ("max-age=60", "only-if-cached", 10, (0, 0), Fresh),
        ("max-age=60", "only-if-cached", 70, (30, 30), GatewayTimeout),
        ("max-age=60", "only-if-cached, max-stale", 70, (0, 0), StaleAccepted),
        ("max-age=60", "only-if-cached, no-cache", 1, (0, 0), GatewayTimeout),
        ("max-age=0", "", 0, (0, 0), stale(false, false)),
        ("max-age=bad", "", 0, (0, 0), stale(false, false)),
        ("", "", 5, (0, 0), stale(false, false)),
    ];
    for (resp_cc, req_cc, after, (swr, sie), want) in table {
        let h = resp(resp_cc, &[("etag", "\"e\"")]);
        let facts = EntryFacts::new(&h, freshness_lifetime(&h, Duration::ZERO), at(0), at(0));
        let req = CacheControl::parse(&map(&[("cache-control", req_cc)]));
        let defaults = StaleDefaults {
            while_revalidate: secs(*swr),
            if_error: secs(*sie),
        };
        let got = evaluate(&req, &facts, &defaults, at(*after));
        assert_eq!(
            got, *want,
            "response {resp_cc:?}, request {req_cc:?}, +{after}s, defaults {swr}/{sie}"
        );
    }
}

#[test]
fn revalidation_round_trip() {
    // A stale entry goes upstream with its validators; the 304 refreshes it.
    let mut stored = resp("max-age=10", &[("etag", "\"v1\""), ("content-length", "5")]);
    let facts = EntryFacts::new(&stored, freshness_lifetime(&stored, Duration::ZERO), at(0), at(0));
    let d = evaluate(&CacheControl::default(), &facts, &StaleDefaults::default(), at(20));
    assert!(matches!(d, Decision::Stale { .. }), "{d:?}");
    assert_eq!(revalidation_headers(&stored)["if-none-match"], "\"v1\"");
    let mut not_mod = map(&[("etag", "\"v1\""), ("cache-control", "max-age=100")]);
    ensure_date(&mut not_mod, at(20));
    assert!(can_freshen(&stored, &not_mod));
    merge_304(&mut stored, &not_mod);
    assert!(storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &stored, Duration::ZERO).is_stored());
    let facts = EntryFacts::new(&stored, freshness_lifetime(&stored, Duration::ZERO), at(19), at(20));
    assert_eq!(
        evaluate(&CacheControl::default(), &facts, &StaleDefaults::default(), at(50)),
        Decision::Fresh
    );
    assert_eq!(facts.ttl(at(50)), 69);
    assert_eq!(stored["content-length"], "5");
}

#[test]
fn invalidation_by_unsafe_methods() {
    let table: &[(Method, u16, bool)] = &[
        (Method::POST, 200, true),
        (Method::PUT, 204, true),
        (Method::DELETE, 302, true),
        (Method::PATCH, 500, false),
        (Method::POST, 404, false),
        (Method::GET, 200, false),
        (Method::HEAD, 200, false),
        (Method::from_bytes(b"PURGE").unwrap(), 200, true),
    ];
    for (m, s, want) in table {
        assert_eq!(invalidates(m, StatusCode::from_u16(*s).unwrap()), *want, "{m} {s}");
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the garbage loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A valid header value biased towards the bytes the parsers care about.
    fn value(&mut self) -> HeaderValue {
        const PIECES: &[&[u8]] = &[
            b"max-age",
            b"s-maxage",
            b"no-cache",
            b"private",
            b"no-store",
            b"max-stale",
            b"min-fresh",
            b"stale-if-error",
            b"stale-while-revalidate",
            b"must-understand",
            b"immutable",
            b"only-if-cached",
            b"public",
            b"must-revalidate",
            b"=",
            b"\"",
            b",",
            b";",
            b"\\",
            b" ",
            b"\t",
            b"W/",
            b"*",
            b"q=0",
            b"gzip",
            b"identity",
            b"0",
            b"9",
            b"99999999999999999999",
            b"-1",
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94",
            b"GMT",
            b":",
            b"\xff",
            b"\x80",
            b"set-cookie",
            b"etag",
        ];
        let mut v = Vec::new();
        for _ in 0..self.below(12) {
            if self.below(4) == 0 {
                // A raw byte from the range header values allow.
                let b = match self.below(3) {
                    0 => b'\t',
                    1 => 0x20 + self.below(0x5f) as u8,
                    _ => 0x80 + self.below(0x80) as u8,
                };
                v.push(b);
            } else {
                v.extend_from_slice(PIECES[self.below(PIECES.len())]);
            }
        }
        HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(""))
    }

    fn headers(&mut self) -> HeaderMap {
        const NAMES: &[&str] = &[
            "cache-control",
            "pragma",
            "expires",
            "date",
            "age",
            "etag",
            "last-modified",
            "vary",
            "if-none-match",
            "if-modified-since",
            "accept-encoding",
            "cookie",
            "connection",
            "set-cookie",
            "authorization",
            "content-length",
            "x-other",
        ];
        let mut h = HeaderMap::new();
        for _ in 0..self.below(10) {
            h.append(HeaderName::from_static(NAMES[self.below(NAMES.len())]), self.value());
        }
        h
    }

    fn time(&mut self) -> SystemTime {
        match self.below(4) {
            0 => UNIX_EPOCH,
            1 => UNIX_EPOCH + Duration::from_secs(253_402_300_799),
            _ => at(self.below(2000) as i64 - 1000),
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let methods = [Method::GET, Method::HEAD, Method::POST];
    for _ in 0..5000 {
        let req = rng.headers();
        let mut stored = rng.headers();
        let other = rng.headers();
        let method = &methods[rng.below(3)];
        let status = StatusCode::from_u16(100 + rng.below(500) as u16).unwrap();
        let (t1, t2, t3) = (rng.time(), rng.time(), rng.time());

        let req_cc = CacheControl::parse(&req);
        let _ = CacheControl::parse(&stored);
        let _ = storable(method, &req, status, &stored, secs(rng.below(100) as u64));
        let lifetime = freshness_lifetime(&stored, secs(rng.below(100) as u64));
        assert!(lifetime <= secs(DELTA_MAX));
        let _ = current_age(&stored, t1, t2, t3);
        let facts = EntryFacts::new(&stored, lifetime, t1, t2);
        let _ = facts.ttl(t3);
        let _ = age_header(facts.age(t3));
        let defaults = StaleDefaults {
            while_revalidate: secs(rng.below(60) as u64),
            if_error: secs(0),
        };
        let _ = evaluate(&req_cc, &facts, &defaults, t3);
        let _ = not_modified(method, &req, status, &stored);
        let _ = not_modified_headers(&stored);
        let _ = revalidation_headers(&stored);
        let _ = vary_key(&stored, &req);
        for v in stored.values() {
            let _ = parse_http_date(v.as_bytes());
        }
        let _ = can_freshen(&stored, &other);
        let _ = head_refresh(&mut stored.clone(), &other);
        merge_304(&mut stored, &other);
        strip_for_storage(&mut stored);
        ensure_date(&mut stored, t1);
        let detail = String::from_utf8_lossy(rng.value().as_bytes()).into_owned();
        let s = CacheStatus {
            detail: Some(&detail),
            ttl: Some(rng.next() as i64),
            ..CacheStatus::hit(0)
        };
        assert!(cache_status(&s).to_str().is_ok());
    }
}

#[test]
fn formatted_dates_round_trip_at_random() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let t = UNIX_EPOCH + Duration::from_secs(rng.next() % 253_402_300_800);
        assert_eq!(parse_http_date(fmt_http_date(t).as_bytes()), Some(t));
    }
}
