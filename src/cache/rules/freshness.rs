//! Freshness (RFC 9111 §4.2): lifetime, age, and whether a stored response may answer a request.
//!
//! Times are passed in; nothing here reads the clock. Ages keep sub-second precision so that a
//! request's `max-age=0` turns down anything but a response received at that very instant, as
//! browsers' reloads intend, while the RFC's "age ≤ max-age" still holds literally.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};

use super::date::{date_of, parse_http_date};
use super::directives::{CacheControl, MaxStale, DELTA_MAX};

/// Where a stored response's freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessSource {
    SMaxAge,
    MaxAge,
    Expires,
    /// No explicit freshness: the route's `default_ttl` (waypost's heuristic, RFC 9111 §4.2.2).
    Default,
}

/// The route's stale-serving defaults, used when the response gives none (RFC 5861 directives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleDefaults {
    pub while_revalidate: Duration,
    pub if_error: Duration,
}

/// What a stored entry needs to be judged on each request, computed once when it is stored
/// (and again after each refresh). Fields are public so that the cache can override the
/// lifetime for versioned URLs (`versioned_ttl`, `immutable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    pub lifetime: Duration,
    /// RFC 9111 §4.2.3 `corrected_initial_age`: the age the response had on arrival.
    pub initial_age: Duration,
    pub response_time: SystemTime,
    /// Unqualified response `no-cache`: every reuse needs validation.
    pub no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale, not even on error.
    pub must_revalidate: bool,
    /// `s-maxage` implies `proxy-revalidate` (RFC 9111 §5.2.2.10), but an explicit
    /// `stale-while-revalidate` / `stale-if-error` from the same origin still grants its window.
    pub s_maxage: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// ETag or Last-Modified: a conditional request can revalidate without a new body.
    pub has_validator: bool,
}

/// What to do with a stored response for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it without contacting upstream (Cache-Status `hit`).
    Fresh,
    /// Serve it without contacting upstream though it is stale: the request's `max-stale`
    /// accepts this much staleness and the response does not forbid it.
    StaleAccepted,
    /// Go upstream (conditionally when the entry has validators). While that runs the stored
    /// response may be served at once (`may_serve_while_revalidate`, refreshing in the
    /// background), or in place of an upstream failure (`may_serve_if_error`). `by_request` says
    /// the entry is fresh but the request's `max-age` / `min-fresh` turned it down
    /// (Cache-Status `fwd=request` rather than `fwd=stale`).
    Stale {
        may_serve_while_revalidate: bool,
        may_serve_if_error: bool,
        by_request: bool,
    },
    /// Go upstream and never serve the stored response without a successful validation, not
    /// even on error (response `no-cache`, `must-revalidate`, `proxy-revalidate`, `s-maxage`,
    /// or request `no-cache` when `by_request`).
    MustRevalidate { by_request: bool },
    /// `only-if-cached` and nothing servable without upstream: answer 504 (RFC 9111 §5.2.1.7).
    GatewayTimeout,
}

/// RFC 9111 §4.2.1 for a shared cache: `s-maxage`, else `max-age`, else `Expires − Date`, else
/// `default_ttl`. Invalid or repeated values are read strictly (see `directives`); an invalid
/// Expires is in the past; Expires without a valid Date gives 0, which [`super::ensure_date`]
/// prevents. The result is capped at 2^31 seconds.
pub fn freshness_lifetime(resp_headers: &HeaderMap, default_ttl: Duration) -> Duration {
    let cc = CacheControl::parse(resp_headers);
    explicit_lifetime(resp_headers, &cc)
        .map_or(default_ttl, |(d, _)| d)
        .min(Duration::from_secs(DELTA_MAX))
}

/// The explicit freshness lifetime and its source, if the response has any.
pub(super) fn explicit_lifetime(resp: &HeaderMap, cc: &CacheControl) -> Option<(Duration, FreshnessSource)> {
    if let Some(s) = cc.s_maxage {
        return Some((Duration::from_secs(s), FreshnessSource::SMaxAge));
    }
    if let Some(s) = cc.max_age {
        return Some((Duration::from_secs(s), FreshnessSource::MaxAge));
    }
    let mut lines = resp.get_all(header::EXPIRES).iter().peekable();
    lines.peek()?;
    // Several Expires lines: the earliest wins, and an unreadable one (such as "0") means
    // already expired (RFC 9111 §5.3).
    let mut earliest: Option<SystemTime> = None;
    let mut invalid = false;
    for v in lines {
        match parse_http_date(v.as_bytes()) {
            Some(t) => earliest = Some(earliest.map_or(t, |e| e.min(t))),
            None => invalid = true,
        }
    }
    let lifetime = match (invalid, earliest, date_of(resp)) {
        (false, Some(e), Some(d)) => e.duration_since(d).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    Some((lifetime, FreshnessSource::Expires))
}

/// The first member of the first Age line, if it is a non-negative integer (RFC 9111 §5.1
/// says to ignore anything else).
fn age_value(resp: &HeaderMap) -> Option<Duration> {
    let v = resp.get(header::AGE)?.as_bytes();
    let first = v.split(|b| *b == b',').next()?;
    let first = first.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = first
        .iter()
        .fold(0u64, |acc, d| (acc * 10 + u64::from(d - b'0')).min(DELTA_MAX));
    Some(Duration::from_secs(secs))
}

/// RFC 9111 §4.2.3 `corrected_initial_age`: the larger of the apparent age (by Date) and the
/// upstream Age plus the time the request took.
fn initial_age(resp: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let apparent = date_of(resp).map_or(Duration::ZERO, |d| response_time.duration_since(d).unwrap_or_default());
    let delay = response_time.duration_since(request_time).unwrap_or_default();
    let corrected = age_value(resp).unwrap_or_default().saturating_add(delay);
    apparent.max(corrected)
}

/// RFC 9111 §4.2.3 `current_age` of a response sent at `request_time`, received at
/// `response_time`, at `now`.
pub fn current_age(
    resp_headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    let resident = now.duration_since(response_time).unwrap_or_default();
    initial_age(resp_headers, request_time, response_time).saturating_add(resident)
}

impl EntryFacts {
    /// Facts of a response being stored (or just refreshed) with the given lifetime, usually
    /// `Stored::lifetime` or [`freshness_lifetime`].
    pub fn new(
        resp_headers: &HeaderMap,
        lifetime: Duration,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> EntryFacts {
        let cc = CacheControl::parse(resp_headers);
        EntryFacts {
            lifetime,
            initial_age: initial_age(resp_headers, request_time, response_time),
            response_time,
            no_cache: cc.no_cache,
            must_revalidate: cc.must_revalidate || cc.proxy_revalidate,
            s_maxage: cc.s_maxage.is_some(),
            immutable: cc.immutable,
            stale_while_revalidate: cc.stale_while_revalidate.map(Duration::from_secs),
            stale_if_error: cc.stale_if_error.map(Duration::from_secs),
            has_validator: resp_headers.contains_key(header::ETAG) || resp_headers.contains_key(header::LAST_MODIFIED),
        }
    }

    /// The current age at `now`; the Age header of a response served from cache is its whole
    /// seconds.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age
            .saturating_add(now.duration_since(self.response_time).unwrap_or_default())
    }

    /// Seconds of freshness left at `now`, negative once stale (Cache-Status `ttl`).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        secs(self.lifetime).saturating_sub(secs(self.age(now)))
    }
}

/// Whether the stored response may answer a request carrying `req` directives at `now`.
///
/// Choices where RFC 9111 leaves room:
/// - `immutable` (RFC 8246) on a fresh response overrides the request's `max-age` and
///   `min-fresh` (a browser's ordinary reload) but not its `no-cache` (a forced reload).
/// - Stale serving is never allowed after `no-cache`, `must-revalidate` or `proxy-revalidate`.
///   After `s-maxage` (implied proxy-revalidate) only the response's own
///   `stale-while-revalidate` / `stale-if-error` windows apply: the route's defaults and the
///   request's `max-stale` do not.
/// - The route's defaults apply when the response gives no such directive.
/// - `stale-while-revalidate` is not used for a request with `max-age` or `min-fresh` (the
///   client wants something fresher); `stale-if-error` is, and the request's own
///   `stale-if-error` (RFC 5861 §4) widens the window.
/// - `only-if-cached` is answered only by `Fresh` / `StaleAccepted`, never by serving stale
///   while revalidating.
pub fn evaluate(req: &CacheControl, entry: &EntryFacts, defaults: &StaleDefaults, now: SystemTime) -> Decision {
    let d = decide(req, entry, defaults, now);
    if req.only_if_cached && !matches!(d, Decision::Fresh | Decision::StaleAccepted) {
        return Decision::GatewayTimeout;
    }
    d
}

fn decide(req: &CacheControl, entry: &EntryFacts, defaults: &StaleDefaults, now: SystemTime) -> Decision {
    if entry.no_cache {
        return Decision::MustRevalidate { by_request: false };
    }
    if req.no_cache {
        return Decision::MustRevalidate { by_request: true };
    }
    let age = entry.age(now);
    let fresh = entry.lifetime > age;
    let staleness = age.saturating_sub(entry.lifetime);
    let age_ok = req.max_age.map_or(true, |m| age <= Duration::from_secs(m));
    let min_fresh_ok = req
        .min_fresh
        .map_or(true, |m| entry.lifetime.saturating_sub(age) >= Duration::from_secs(m));
    if fresh && (entry.immutable || (age_ok && min_fresh_ok)) {
        return Decision::Fresh;
    }
    if fresh {
        // Fresh, but not fresh enough for this client: a fresh response is still better than
        // an error.
        return Decision::Stale {
            may_serve_while_revalidate: false,
            may_serve_if_error: true,
            by_request: true,
        };
    }
    if entry.must_revalidate {
        return Decision::MustRevalidate { by_request: false };
    }
    let client_wants_fresher = !age_ok || req.min_fresh.is_some();
    if !entry.s_maxage && !client_wants_fresher {
        let accepted = match req.max_stale {
            Some(MaxStale::Any) => true,
            Some(MaxStale::Secs(s)) => staleness <= Duration::from_secs(s),
            None => false,
        };
        if accepted {
            return Decision::StaleAccepted;
        }
    }
    let (swr, sie) = if entry.s_maxage {
        (
            entry.stale_while_revalidate.unwrap_or_default(),
            entry.stale_if_error.unwrap_or_default(),
        )
    } else {
        let client_sie = req.stale_if_error.map_or(Duration::ZERO, Duration::from_secs);
        (
            entry.stale_while_revalidate.unwrap_or(defaults.while_revalidate),
            entry.stale_if_error.unwrap_or(defaults.if_error).max(client_sie),
        )
    };
    if entry.s_maxage && swr.is_zero() && sie.is_zero() {
        return Decision::MustRevalidate { by_request: false };
    }
    Decision::Stale {
        may_serve_while_revalidate: !swr.is_zero() && staleness <= swr && !client_wants_fresher,
        may_serve_if_error: !sie.is_zero() && staleness <= sie,
        by_request: false,
    }
}

/// The Age field of a response served from cache: whole seconds, at most 2^31 (RFC 9111 §5.1).
pub fn age_header(age: Duration) -> HeaderValue {
    HeaderValue::from(age.as_secs().min(DELTA_MAX))
}
