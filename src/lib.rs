//! waypost: a layer-7 reverse proxy and load balancer.
//!
//! Crate map (read this first):
//! - [`config`]: TOML → validated [`config::Config`], every problem with key path and line.
//! - [`state`]: one immutable generation of the running config (router, pools, log sink),
//!   built from the config and the previous generation, swapped in with arc-swap.
//! - [`proxy`]: the request pipeline, its phases in order; `proxy::headers` holds the
//!   forwarding rules, `proxy::body` the one body type.
//! - [`router`]: host and path matching. [`balancer`]: picking policies (pure).
//! - [`upstream`]: backends, their idle connections, dialing, forwarding and retries.
//! - [`listener`]: binding, accepting under the connection limit, serving connections; the
//!   client limits (`listener::guard`) and the HTTP/1 framing scanner (`listener::framing`).
//! - [`admin`]: the admin API; `admin::metrics` names every metric; `admin::page` is the
//!   status page at `/`, `admin::report` the parts of `/status` it needs (reloads, certificates,
//!   counters), `admin::cli` the `waypost status` command.
//! - [`app`]: start-up, worker runtimes, signals, reload, graceful shutdown.
//! - [`error`]: the one error table (status, body, blame, retry rules).
//! - [`accesslog`]: JSON / combined access log written off the request path.
//! - [`testbackend`]: the test backend used by `waypost demo` and the integration tests.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod balancer;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod proxy;
pub mod router;
pub mod session;
pub mod state;
pub mod systemd;
pub mod testbackend;
pub mod upstream;
