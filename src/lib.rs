//! waypost: a layer-7 reverse proxy and load balancer.
//!
//! Crate map (read this first; docs/design.md draws it). Dependencies point downward:
//! - app level: [`app`] (start-up, worker runtimes, signals, reload, graceful shutdown),
//!   [`admin`] (the admin API; `admin::metrics` names every metric, `admin::page` is the status
//!   page at `/`, `admin::report` what `/status` adds for it, `admin::cli` `waypost status`),
//!   [`lifecycle`] (watchdog,
//!   config-file watcher, binary upgrade), [`demo`], [`systemd`] (the service manager's protocols).
//! - [`listener`]: binding, accepting under the connection limit, serving connections; the
//!   client limits (`listener::guard`), the HTTP/1 framing scanner (`listener::framing`), TLS
//!   termination (`listener::tls`), PROXY protocol. Shares [`listener::Plane`] with `app`.
//! - [`proxy`]: the request pipeline, its phases in order, and its one exit (`proxy::Account`).
//! - [`cache`]: the response cache: `cache::lookup` (phase 3), `cache::Flow::finish` (phase
//!   7), the store and the RFC 9111 rules.
//! - [`state`]: one immutable generation of the running config (router, pools, log sink), built
//!   from the config and the previous generation, swapped in with arc-swap.
//! - [`upstream`]: backends, their idle connections, pools and picking, forwarding and retries,
//!   dialing, TLS to backends, DNS. [`health`]: health state, rules and probes.
//! - [`body`]: the one body type. [`accesslog`]: JSON / combined access log written off the
//!   request path.
//! - leaves: [`config`] (TOML → validated plain data, every problem with key path and line),
//!   [`router`] (host and path matching), [`balancer`] (picking policies, pure), [`error`] (the
//!   one error table: status, body, blame, retry rules), [`headers`] (forwarding rules for
//!   header fields), [`session`] (signed cookies), [`net`] (addresses, CIDR tables), [`clock`]
//!   (the one clock).
//! - [`ratelimit`]: route rate limits (GCRA over a bounded key table, shared through Redis).
//! - [`mirror`]: copies of a route's requests to a shadow pool.
//! - [`testbackend`]: the test backend used by `waypost demo` and the integration tests.

#![warn(clippy::disallowed_methods)]

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod balancer;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod mirror;
pub mod net;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod session;
pub mod state;
pub mod systemd;
pub mod testbackend;
pub mod upstream;
