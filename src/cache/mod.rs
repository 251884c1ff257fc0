//! The response cache (RFC 9111 shared cache).

pub mod rules;
