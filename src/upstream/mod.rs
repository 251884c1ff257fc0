//! Backends and the way to them. A request goes down these files in order:
//! - [`pool`]: a pool of one generation and the pick of a member (policy, health, panic mode,
//!   slow start, replica lag), its connection slots and queue, passive ejection.
//! - [`forward`]: the attempt loop: pick, send, and one safe retry on another backend within
//!   the pool's retries and retry budget; `Replay` for requests that may be sent again.
//! - [`backend`]: one backend, shared across generations: its counters and health, per-worker
//!   idle connection stacks, and the `Lease` a request holds on it.
//! - [`connect`]: one attempt on one backend: an idle connection or a new one (plain or TLS,
//!   HTTP/1.1 or HTTP/2), the handshakes and the exchange under the response timeout.
//! - [`budget`], [`dns`], [`tls`]: the retry budget, backend name resolution, backend TLS.
//!
//! The rest of the crate uses the names re-exported here.

mod backend;
pub mod budget;
mod connect;
pub mod dns;
mod forward;
mod pool;
pub mod tls;

#[cfg(test)]
mod tests;

pub use backend::{set_worker_id, set_workers, Backend, Lease};
pub use connect::dial;
pub use forward::{forward, is_idempotent, Attempts, Replay};
pub use pool::{PickHint, Pool};
