//! Phase 4 for database-bound routes: writes to the primary pool, reads to replicas that are
//! healthy and not lagging, reads of a client that just wrote (read-your-writes cookie) or that
//! asks for it (force header) to the primary; a promoted replica takes writes while the
//! primary pool has no healthy backend.

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

use crate::clock::unix_secs as unix_now;
use crate::session::{find_cookie, set_cookie};
use crate::state::{Split, State};

/// The cookie that sends a client's reads to the primary after its write.
pub const RYW_COOKIE: &str = "waypost_ryw";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary pool.
    Primary,
    /// The replicas pool, skipping replicas that lag.
    Replicas,
    /// This member of the replicas pool, which reports itself primary (promotion).
    Promoted(usize),
    /// A write with no healthy primary and no promoted replica.
    PrimaryDown,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Primary | Target::Promoted(_) | Target::PrimaryDown => "primary",
            Target::Replicas => "replica",
        }
    }
}

pub fn is_read(split: &Split, method: &Method) -> bool {
    split.cfg.read_methods.contains(method)
}

/// Where this request goes, by the pools' health at `now` (`clock::now_ms`).
pub fn decide(state: &State, split: &Split, method: &Method, headers: &HeaderMap, now: u64) -> Target {
    let primary = state.pool(split.primary);
    let replicas = state.pool(split.replicas);
    if is_read(split, method) {
        let forced = split
            .cfg
            .force_primary_header
            .as_ref()
            .is_some_and(|h| headers.contains_key(h));
        let wrote_recently = !split.cfg.read_your_writes.is_zero() && {
            let values = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            find_cookie(values, RYW_COOKIE).is_some_and(|v| state.session.open_read_your_writes(v, unix_now()).is_ok())
        };
        let primary_up = primary.has_available(now);
        if (forced || wrote_recently) && primary_up {
            return Target::Primary;
        }
        if replicas.can_read(now, split.cfg.max_replica_lag) {
            return Target::Replicas;
        }
        // No replica can serve: the primary does, while it is up.
        return if primary_up { Target::Primary } else { Target::Replicas };
    }
    if primary.has_available(now) {
        return Target::Primary;
    }
    match replicas.promoted(now) {
        Some(i) => Target::Promoted(i),
        None => Target::PrimaryDown,
    }
}

/// After a successful write, the cookie that keeps this client's reads on the primary.
pub fn after_write(state: &State, split: &Split, method: &Method, status: u16, secure: bool) -> Option<HeaderValue> {
    if is_read(split, method) || !(200..400).contains(&status) || split.cfg.read_your_writes.is_zero() {
        return None;
    }
    let ttl = split.cfg.read_your_writes.as_secs().max(1);
    let value = state.session.seal_read_your_writes(unix_now() + ttl);
    HeaderValue::from_str(&set_cookie(RYW_COOKIE, &value, ttl, secure)).ok()
}
