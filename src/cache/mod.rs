//! The response cache (RFC 9111 shared cache): the rules as pure functions, and the store.

pub mod rules;
pub mod store;

pub use store::{Cache, Purge};
