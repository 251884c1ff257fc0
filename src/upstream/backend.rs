//! One backend and its connections: the per-worker idle stacks (so a connection stays on the
//! runtime that drives it), this worker's HTTP/2 connection to a TLS backend, and the `Lease` a
//! request holds on a backend until its response is done.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;

use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use tokio::sync::OwnedSemaphorePermit;

use super::connect::{dial, handshake_h1};
use super::tls::BackendTls;
use crate::admin::metrics::BackendMetrics;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::health::{self, Health};

/// Idle upstream connections older than this are closed rather than reused: many servers drop
/// idle keep-alive connections after a few seconds, and a request written into a connection the
/// server is closing is lost if it cannot be replayed.
const IDLE_MAX_AGE: Duration = Duration::from_secs(4);
/// Idle connections kept per backend and worker.
const IDLE_MAX: usize = 512;

static SHARDS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Set once at start: how many worker threads share the idle connection stacks.
pub fn set_workers(n: usize) {
    SHARDS.store(n.max(1) + 1, Ordering::Relaxed);
}

/// Called on each worker thread with its index; the control thread keeps index 0.
pub fn set_worker_id(id: usize) {
    WORKER.with(|w| w.set(id));
}

fn shard(len: usize) -> usize {
    WORKER.with(|w| w.get()) % len
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// One worker's connections to a backend: idle HTTP/1.1 ones, and the HTTP/2 one (TLS
/// backends that offer h2), which stays here while it is open and carries many requests.
#[derive(Default)]
struct Shard {
    h1: Vec<Idle>,
    h2: Option<http2::SendRequest<ProxyBody>>,
}

/// One backend address. Survives reloads (matched by pool name and address) so its counters,
/// health and idle connections carry over.
pub struct Backend {
    pub addr: SocketAddr,
    /// Stable identity (pool name and address): the hash ring's and sticky cookies' name for
    /// this backend, the same in every process and generation.
    pub id: u64,
    /// The address as text: metrics label and log field.
    pub label: Arc<str>,
    pub pool: Arc<str>,
    pub in_flight: AtomicUsize,
    /// Requests waiting for a connection slot.
    pub queued: AtomicUsize,
    pub health: Health,
    idle: Box<[Mutex<Shard>]>,
    pub metrics: BackendMetrics,
    /// TLS to this backend (the pool has `tls = true`).
    pub tls: Option<BackendTls>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("pool", &self.pool)
            .finish()
    }
}

impl Backend {
    pub fn new(pool: &str, addr: SocketAddr) -> Backend {
        Self::with_tls(pool, addr, None)
    }

    pub fn with_tls(pool: &str, addr: SocketAddr, tls: Option<BackendTls>) -> Backend {
        let label: Arc<str> = addr.to_string().into();
        let shards = SHARDS.load(Ordering::Relaxed);
        Backend {
            addr,
            id: crate::balancer::hash::backend_id(pool, &label),
            metrics: BackendMetrics::new(pool, &label),
            label,
            pool: pool.into(),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            health: Health::default(),
            idle: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            tls,
        }
    }

    /// Whether this backend may take new requests now.
    pub fn is_up(&self) -> bool {
        self.health.available(health::now_ms())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle
            .iter()
            .map(|s| s.lock().map(|v| v.h1.len() + usize::from(v.h2.is_some())).unwrap_or(0))
            .sum()
    }

    pub(super) fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut shard = self.idle[shard(self.idle.len())].lock().ok()?;
        while let Some(idle) = shard.h1.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_MAX_AGE {
                return Some(idle.sender);
            }
        }
        None
    }

    pub(super) fn put_idle(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut shard) = self.idle[shard(self.idle.len())].lock() {
            if shard.h1.len() < IDLE_MAX {
                shard.h1.push(Idle {
                    sender,
                    since: crate::clock::now(),
                });
            }
        }
    }
}

impl Backend {
    /// This worker's HTTP/2 connection, while it is open.
    pub(super) fn shared_h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut shard = self.idle[shard(self.idle.len())].lock().ok()?;
        match &shard.h2 {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                shard.h2 = None;
                None
            }
            None => None,
        }
    }

    pub(super) fn set_h2(&self, sender: Option<http2::SendRequest<ProxyBody>>) {
        if let Ok(mut shard) = self.idle[shard(self.idle.len())].lock() {
            shard.h2 = sender;
        }
    }

    /// A new HTTP/1.1 connection to this backend, over TLS when the pool has `tls = true`
    /// (offering only http/1.1): for health checks.
    pub async fn dial_h1(&self, timeout: Duration) -> Result<SendRequest<ProxyBody>, ProxyError> {
        match &self.tls {
            None => dial(self.addr, timeout).await,
            Some(t) => handshake_h1(t.connect(self.addr, timeout, true).await?).await,
        }
    }
}

/// A request's hold on a backend: counts it in flight until dropped, and returns the
/// connection to the idle stack only when the response body was read to its end.
pub struct Lease {
    backend: Arc<Backend>,
    pub(super) conn: Option<SendRequest<ProxyBody>>,
    /// The connection slot, when the pool limits connections per backend.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Lease {
    pub(super) fn new(backend: Arc<Backend>, slot: Option<OwnedSemaphorePermit>) -> Lease {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease {
            backend,
            conn: None,
            _slot: slot,
        }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The exchange completed cleanly: the connection may serve another request.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.backend.put_idle(c);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
