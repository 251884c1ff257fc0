//! RFC 9111 rules for a shared cache: pure functions over headers and times.
//!
//! What may be stored and for how long ([`storable`], [`freshness_lifetime`]), how old a stored
//! response is ([`current_age`], [`EntryFacts`]), whether it may answer a request
//! ([`evaluate`]), conditional requests both ways ([`not_modified`], [`revalidation_headers`],
//! [`merge_304`]), the Vary secondary key ([`vary_key`]), HTTP-dates and the Cache-Status field.
//! Nothing here reads the clock or does I/O: times come in as arguments, so every rule is
//! unit-tested with fixed instants. The store, coalescing and purge build on these.
//!
//! A response's way through the cache:
//! 1. [`ensure_date`] on the upstream response, then [`storable`]. When stored:
//!    [`strip_for_storage`] on the headers, [`vary_key`] for the variant, and
//!    [`EntryFacts::new`] with `Stored::lifetime` and the request/response times.
//! 2. On a lookup: [`CacheControl::parse`] the request, [`evaluate`] the entry; a hit serves
//!    the stored response with [`age_header`], or 304 when [`not_modified`] (headers from
//!    [`not_modified_headers`]).
//! 3. On revalidation: [`revalidation_headers`] upstream; a 304 that [`can_freshen`] the entry
//!    goes through [`ensure_date`] and [`merge_304`], then [`storable`] and [`EntryFacts::new`]
//!    again.
//! 4. [`cache_status`] names what happened.

mod conditional;
mod date;
mod directives;
mod freshness;
mod status;
mod storable;
mod vary;

#[cfg(test)]
mod tests;

pub use conditional::{can_freshen, head_refresh, merge_304, not_modified, not_modified_headers, revalidation_headers};
pub use date::{ensure_date, fmt_http_date, http_date_value, parse_http_date};
pub use directives::{CacheControl, MaxStale, DELTA_MAX};
pub use freshness::{
    age_header, current_age, evaluate, freshness_lifetime, Decision, EntryFacts, FreshnessSource, StaleDefaults,
};
pub use status::{cache_status, CacheStatus, Fwd, Outcome, CACHE_NAME};
pub use storable::{cacheable_by_default, invalidates, storable, strip_for_storage, NotStored, Storability, Stored};
pub use vary::vary_key;
