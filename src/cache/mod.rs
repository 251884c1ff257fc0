//! The response cache (RFC 9111 shared cache): the rules as pure functions, the store, and the
//! two places the request pipeline meets it: [`lookup`] (phase 3) and [`Flow::finish`]
//! (phases 6 and 7).
//!
//! - `rules`: what RFC 9111 says, as pure functions (freshness, storability, Vary, dates).
//! - `store`: the moka store of responses, request coalescing, purges, versioned URLs.
//! - `route`: a cached route's settings and counters.
//! - `lookup`: phase 3, answering from the store or planning the trip upstream.
//! - `flow`: the plan, and the one exit that runs the exchange and finishes it.
//! - `fill`: what the exit does with the upstream answer (store, revalidate, stale-if-error).
//! - `tee`: the body that goes to the client and into the store at once.

mod fill;
pub mod flow;
pub mod lookup;
pub mod route;
pub mod rules;
pub mod store;
mod tee;

pub use flow::{Answer, Exchange, Flow, Outcome, Plan, Refresh};
pub use lookup::{lookup, primary_key};
pub use route::{CacheResult, RouteCache};
pub use store::{Cache, Purge};
pub use tee::Tee;
