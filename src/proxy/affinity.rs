//! Phase 5's inputs beyond the policy: which backend a sticky client is pinned to, and what a
//! consistent-hash pool hashes. Both read the request only; the cookie to set is decided once
//! the backend that answered is known.

use http::header::{self, HeaderMap, HeaderValue};
use http::Uri;

use crate::balancer::hash::hash_key;
use crate::clock::unix_secs as unix_now;
use crate::config::HashKey;
use crate::session::{find_cookie, set_cookie};
use crate::state::{State, Sticky};
use crate::upstream::{PickHint, Pool};

/// Where a sticky request stands before the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// Not a sticky route.
    None,
    /// No valid cookie: pick freshly, then pin.
    New,
    /// Pinned to this member, which is available.
    Pinned(usize),
    /// Pinned to a backend that is down or gone: pick freshly, then re-pin.
    Moved,
}

/// The verdict of a strict sticky route whose pinned backend is unavailable.
pub struct PinnedDown;

/// Read the sticky cookie of `headers` for a route.
pub fn sticky(state: &State, sticky: &Sticky, pool: &Pool, headers: &HeaderMap) -> Result<Affinity, PinnedDown> {
    let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let Some(value) = find_cookie(values, &sticky.cfg.cookie) else {
        return Ok(Affinity::New);
    };
    match state.session.open_sticky(value, unix_now()) {
        Ok(id) => match pool.member_by_id(id) {
            Some(i) if pool.members[i].is_up() => Ok(Affinity::Pinned(i)),
            // Down, or removed from the pool: move the client unless the route is strict.
            _ if sticky.cfg.strict => Err(PinnedDown),
            _ => Ok(Affinity::Moved),
        },
        Err(e) => {
            sticky.metrics.rejected(e.as_str());
            Ok(Affinity::New)
        }
    }
}

/// The key hash of a request for a consistent-hash pool; None without the key (round robin).
pub fn key_hash(pool: &Pool, headers: &HeaderMap, uri: &Uri, client_ip: &HeaderValue) -> Option<u64> {
    let key = pool.hash_key.as_ref()?;
    pool.ring.as_ref()?;
    let bytes: &[u8] = match key {
        HashKey::Header(name) => headers.get(name)?.as_bytes(),
        HashKey::Cookie(name) => {
            let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            find_cookie(values, name)?.as_bytes()
        }
        HashKey::Query(name) => query_value(uri.query()?, name)?.as_bytes(),
        HashKey::ClientIp => client_ip.as_bytes(),
        HashKey::Path => uri.path().as_bytes(),
    };
    Some(hash_key(bytes))
}

/// The first value of `name` in a query string (raw, not percent-decoded: the same key
/// always hashes the same).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

pub fn hint(affinity: Affinity, key: Option<u64>) -> PickHint {
    PickHint {
        member: match affinity {
            Affinity::Pinned(i) => Some(i),
            _ => None,
        },
        key,
        ..PickHint::default()
    }
}

/// After the response: count the outcome and, unless the client kept its backend, the cookie
/// that pins it to the backend that answered.
pub fn after_response(
    state: &State,
    sticky: &Sticky,
    pool: &Pool,
    affinity: Affinity,
    served_by: u64,
    secure: bool,
) -> Option<HeaderValue> {
    let kept = matches!(affinity, Affinity::Pinned(i) if pool.members[i].id == served_by);
    match affinity {
        _ if kept => {
            sticky.metrics.hit.increment(1);
            return None;
        }
        Affinity::New => sticky.metrics.new.increment(1),
        // Pinned but answered by another backend (a retry): the client moved too.
        Affinity::Moved | Affinity::Pinned(_) => sticky.metrics.moved.increment(1),
        Affinity::None => return None,
    }
    let max_age = sticky.cfg.max_age.as_secs();
    let value = state.session.seal_sticky(served_by, unix_now() + max_age);
    HeaderValue::from_str(&set_cookie(&sticky.cfg.cookie, &value, max_age, secure)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_by_exact_name() {
        assert_eq!(query_value("a=1&user=42&b", "user"), Some("42"));
        assert_eq!(query_value("username=x&user=y", "user"), Some("y"));
        assert_eq!(query_value("flag&x=1", "flag"), Some(""));
        assert_eq!(query_value("x=1", "user"), None);
    }
}
