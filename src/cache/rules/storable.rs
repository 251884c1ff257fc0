//! Whether a shared cache may store a response (RFC 9111 §3), and what it must leave out.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

use super::directives::{CacheControl, DELTA_MAX};
use super::freshness::{explicit_lifetime, FreshnessSource};
use super::vary::vary_names;

/// The verdict of [`storable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    Stored(Stored),
    NotStored(NotStored),
}

/// A response that may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Freshness lifetime at storage; `EntryFacts::new` takes it.
    pub lifetime: Duration,
    pub source: FreshnessSource,
    /// The response carried Set-Cookie, which [`strip_for_storage`] removes: a cookie meant for
    /// one client is never served to another.
    pub drops_set_cookie: bool,
}

/// Why a response is not stored; [`NotStored::detail`] names it for Cache-Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only responses to GET are stored (a HEAD response may refresh one: `head_refresh`).
    Method,
    /// Not a final status whose caching rules waypost understands, or 206 (partial content is
    /// not stored; Range requests pass through) or 304.
    Status,
    /// `no-store` in the request.
    RequestNoStore,
    /// `no-store` in the response (without `must-understand` on a status understood).
    NoStore,
    /// Unqualified `private`.
    Private,
    /// The request carried Authorization and the response has none of `public`, `s-maxage`,
    /// `must-revalidate` (RFC 9111 §3.5).
    Authorization,
    /// `Vary: *`, or a Vary naming something that is not a field name: never matched.
    VaryStar,
    /// No explicit freshness and a status that is not cacheable by default.
    NoFreshness,
    /// Nothing could ever be served from it: zero lifetime (or `no-cache`), no validator to
    /// revalidate with, no stale-serving window of its own.
    NotReusable,
}

impl NotStored {
    /// A token for the Cache-Status `detail` parameter.
    pub fn detail(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::NotReusable => "not-reusable",
        }
    }
}

impl Storability {
    pub fn is_stored(&self) -> bool {
        matches!(self, Storability::Stored(_))
    }
}

/// Statuses cacheable by default (RFC 9110 §15.1): these alone may use the route's default_ttl.
pub fn cacheable_by_default(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final statuses defined by RFC 9110 whose caching rules are the generic ones. 206 and 304
/// are left out (waypost stores neither), as are 305 (deprecated) and statuses from other
/// specifications, some of which forbid storage (RFC 6585's 428, 429, 431, 511).
fn understood(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200..=205 | 300..=303 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

/// May a shared cache store this response to this request, and for how long is it fresh?
///
/// Call [`super::ensure_date`] on the response first: Expires is measured against Date.
/// Choices where RFC 9111 leaves room:
/// - `public` lifts the Authorization restriction but does not make a status cacheable by
///   default: only explicit freshness or the default list lets a response in.
/// - A response nothing could be served from is not stored (`NotReusable`), even when the
///   route has a stale_if_error default: a response that says nothing about caching and gets no
///   default_ttl is not kept just in case the origin fails.
/// - For a versioned URL, pass versioned_ttl as `default_ttl` and override the lifetime.
pub fn storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    default_ttl: Duration,
) -> Storability {
    match check(method, req_headers, status, resp_headers, default_ttl) {
        Ok(s) => Storability::Stored(s),
        Err(n) => Storability::NotStored(n),
    }
}

fn check(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    default_ttl: Duration,
) -> Result<Stored, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if !understood(status) {
        return Err(NotStored::Status);
    }
    if CacheControl::parse(req_headers).no_store {
        return Err(NotStored::RequestNoStore);
    }
    let cc = CacheControl::parse(resp);
    // must-understand overrides no-store for a status whose rules we know (RFC 9111 §5.2.2.3);
    // every status that gets past `understood` is one.
    if cc.no_store && !cc.must_understand {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if req_headers.contains_key(header::AUTHORIZATION) && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if vary_names(resp).is_none() {
        return Err(NotStored::VaryStar);
    }
    let (lifetime, source) = match explicit_lifetime(resp, &cc) {
        Some(explicit) => explicit,
        None if cacheable_by_default(status) => (default_ttl, FreshnessSource::Default),
        None => return Err(NotStored::NoFreshness),
    };
    let lifetime = lifetime.min(Duration::from_secs(DELTA_MAX));
    let has_validator = resp.contains_key(header::ETAG) || resp.contains_key(header::LAST_MODIFIED);
    let may_serve_stale = !(cc.must_revalidate || cc.proxy_revalidate)
        && (cc.stale_while_revalidate.unwrap_or(0) > 0 || cc.stale_if_error.unwrap_or(0) > 0);
    if !has_validator && (cc.no_cache || (lifetime.is_zero() && !may_serve_stale)) {
        return Err(NotStored::NotReusable);
    }
    Ok(Stored {
        lifetime,
        source,
        drops_set_cookie: resp.contains_key(header::SET_COOKIE),
    })
}

/// Whether a response to `method` with `status` invalidates the stored responses for its
/// target URI (RFC 9111 §4.4): a non-error status to an unsafe (or unknown) method. The same
/// applies to a same-origin Location and Content-Location.
pub fn invalidates(method: &Method, status: StatusCode) -> bool {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    !safe && (status.is_success() || status.is_redirection())
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATION_INFO: HeaderName = HeaderName::from_static("proxy-authentication-info");

/// Removes from headers about to be stored what a shared cache must not keep: Set-Cookie,
/// the fields named by a qualified `private` or `no-cache` (never served without validation,
/// so never served from here), and the fields RFC 9111 §3.1 excludes (connection-specific
/// ones, those named in Connection). Returns whether Set-Cookie was dropped.
pub fn strip_for_storage(headers: &mut HeaderMap) -> bool {
    let cc = CacheControl::parse(headers);
    for name in cc.private_fields.iter().chain(&cc.no_cache_fields) {
        headers.remove(name);
    }
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &PROXY_AUTHENTICATION_INFO,
    ] {
        headers.remove(name);
    }
    headers.remove(header::SET_COOKIE).is_some()
}

/// Field names listed in Connection.
pub(super) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}
