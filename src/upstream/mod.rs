//! Backends and the way to them: per-backend idle connection stacks (one per worker thread, so a
//! connection stays on the runtime that drives it), dialing with timeouts, sending with a
//! response timeout, and one safe retry on another backend.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
pub mod budget;
pub mod dns;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admin::metrics::{class_index, BackendMetrics, PoolMetrics, ERROR_CLASS};
use crate::balancer::hash::HashTable;
use crate::balancer::Balancer;
use crate::body::ProxyBody;
use crate::config::{BackendAddress, Balance, HashKey, PoolConfig};
use crate::error::ProxyError;
use crate::health::probe::HealthCheck;
use crate::health::{self, Health, Passive};
use budget::RetryBudget;
use tls::{BackendTls, UpstreamTls};

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

    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut shard = self.idle[shard(self.idle.len())].lock().ok()?;
        while let Some(idle) = shard.h1.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_MAX_AGE {
                return Some(idle.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<ProxyBody>) {
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
    fn shared_h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
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

    fn set_h2(&self, sender: Option<http2::SendRequest<ProxyBody>>) {
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
    conn: Option<SendRequest<ProxyBody>>,
    /// The connection slot, when the pool limits connections per backend.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Lease {
    fn new(backend: Arc<Backend>, slot: Option<OwnedSemaphorePermit>) -> Lease {
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

/// A pool of one generation: its members (shared `Backend`s with this generation's weights),
/// its balancer, timeouts, health settings and limits.
pub struct Pool {
    pub name: Arc<str>,
    pub members: Vec<Arc<Backend>>,
    pub weights: Vec<u32>,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retries: u32,
    pub health: Option<Arc<HealthCheck>>,
    pub passive: Option<Passive>,
    pub slow_start: Duration,
    pub panic_threshold: u32,
    pub max_connections: usize,
    /// Per member: the connection slots when max_connections_per_backend is set.
    slots: Vec<Option<Arc<Semaphore>>>,
    pub queue_timeout: Duration,
    pub queue_size: usize,
    pub budget: Arc<RetryBudget>,
    pub metrics: PoolMetrics,
    /// consistent_hash pools: the ring over members, what to hash, the load bound.
    pub ring: Option<HashTable>,
    pub hash_key: Option<HashKey>,
    pub hash_factor: Option<f64>,
    by_id: HashMap<u64, usize>,
}

/// What a request asks of the pick, beyond the policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickHint {
    /// A member to try first (a sticky client's backend), if it is available.
    pub member: Option<usize>,
    /// The request's key hash, for consistent_hash pools.
    pub key: Option<u64>,
    /// Skip backends whose reported replication lag is unknown or above this.
    pub max_lag: Option<Duration>,
    /// Only `member` may take the request (a write to a promoted replica): no other backend,
    /// not even on retry.
    pub only_member: bool,
}

impl Pool {
    /// Build from config, reusing the previous generation's backends of the same address (and
    /// their slots when the limit is unchanged, and the retry budget).
    pub fn new(cfg: &PoolConfig, previous: Option<&Pool>, resolved: &dns::Resolved) -> Pool {
        let now = health::now_ms();
        let max = cfg.max_connections_per_backend as usize;
        // Host names expand to every address they resolve to, with the name's weight.
        let mut addrs: Vec<(SocketAddr, u32, Option<&str>)> = Vec::with_capacity(cfg.backends.len());
        for b in &cfg.backends {
            let (expanded, host): (Vec<SocketAddr>, _) = match &b.address {
                BackendAddress::Ip(a) => (vec![*a], None),
                BackendAddress::Name { host, port } => (
                    resolved
                        .get(host)
                        .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect())
                        .unwrap_or_default(),
                    Some(host.as_str()),
                ),
            };
            for a in expanded {
                if !addrs.iter().any(|(x, _, _)| *x == a) {
                    addrs.push((a, b.weight, host));
                }
            }
        }
        let mut members = Vec::with_capacity(addrs.len());
        let mut slots = Vec::with_capacity(addrs.len());
        let pool_tls = cfg.tls.as_ref().map(|t| Arc::new(UpstreamTls::build(t)));
        for &(addr, _, host) in &addrs {
            let tls = pool_tls.as_ref().map(|t| BackendTls::new(t.clone(), host, addr));
            // A backend carries over only when it is reached the same way (plain, or TLS with
            // the same roots and name).
            let same_way = |m: &Backend| match (&m.tls, &tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b),
                _ => false,
            };
            let prev = previous.and_then(|p| {
                p.members
                    .iter()
                    .position(|m| m.addr == addr && same_way(m))
                    .map(|i| (p, i))
            });
            let backend = match prev {
                Some((p, i)) => p.members[i].clone(),
                None => {
                    let nb = Backend::with_tls(&cfg.name, addr, tls);
                    // A backend joining a running pool ramps up under slow_start; the backends of
                    // a new pool all start together, so none of them ramps.
                    nb.health.mark_up_since(if previous.is_some() { now } else { 0 });
                    Arc::new(nb)
                }
            };
            let slot = match (max, prev) {
                (0, _) => None,
                (m, Some((p, i))) if p.max_connections == m => p.slots[i].clone(),
                (m, _) => Some(Arc::new(Semaphore::new(m))),
            };
            members.push(backend);
            slots.push(slot);
        }
        let weights: Vec<u32> = addrs.iter().map(|(_, w, _)| *w).collect();
        let ring = (cfg.balance == Balance::ConsistentHash).then(|| {
            let ids: Vec<(u64, u32)> = members.iter().zip(&weights).map(|(m, w)| (m.id, *w)).collect();
            HashTable::new(&ids)
        });
        let by_id = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        Pool {
            ring,
            hash_key: cfg.hash_key.clone(),
            hash_factor: cfg.hash_balance_factor,
            by_id,
            name: cfg.name.as_str().into(),
            balancer: Balancer::new(cfg.balance, &weights),
            members,
            weights,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            retries: cfg.retries,
            health: cfg.health.clone().map(Arc::new),
            passive: cfg.passive.clone(),
            slow_start: cfg.slow_start,
            panic_threshold: cfg.panic_threshold,
            max_connections: max,
            slots,
            queue_timeout: cfg.queue_timeout,
            queue_size: cfg.queue_size as usize,
            budget: previous.map(|p| p.budget.clone()).unwrap_or_default(),
            metrics: PoolMetrics::new(&cfg.name),
        }
    }

    pub fn policy(&self) -> Balance {
        self.balancer.policy()
    }

    /// Whether fewer than panic_threshold percent of the backends are healthy.
    fn in_panic(&self, now: u64) -> bool {
        if self.panic_threshold == 0 {
            return false;
        }
        let healthy = self.members.iter().filter(|m| m.health.available(now)).count();
        healthy * 100 < self.panic_threshold as usize * self.members.len()
    }

    /// Pick a member not yet tried. First choice: healthy, with a free slot, and admitted by its
    /// slow-start share; else any healthy one (it will queue for a slot). In panic mode, any.
    /// The member with this stable id, if it is in the pool.
    pub fn member_by_id(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// A policy pick over `usable` members: the key's place on the ring for consistent_hash
    /// pools with a key, the balancer otherwise.
    fn policy_pick(
        &self,
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        match (&self.ring, key) {
            (Some(ring), Some(k)) => ring.pick(k, usable, load, self.hash_factor),
            _ => self.balancer.pick(usable, load),
        }
    }

    /// Whether the pool can take a request now: a backend is available, or panic mode would
    /// send to all of them.
    pub fn can_serve(&self, now: u64) -> bool {
        self.has_available(now) || (self.in_panic(now) && !self.members.is_empty())
    }

    /// Whether any backend is available now.
    pub fn has_available(&self, now: u64) -> bool {
        self.members.iter().any(|m| m.health.available(now))
    }

    fn lag_ok(&self, i: usize, max_lag: Option<Duration>) -> bool {
        match max_lag {
            None => true,
            Some(max) => self.members[i].health.lag().is_some_and(|l| l <= max),
        }
    }

    /// Whether some backend is available and within `max_lag` (a replica that can serve reads).
    pub fn can_read(&self, now: u64, max_lag: Duration) -> bool {
        (0..self.members.len()).any(|i| self.members[i].health.available(now) && self.lag_ok(i, Some(max_lag)))
    }

    /// An available backend whose probe reports it is a primary (a promoted replica).
    pub fn promoted(&self, now: u64) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.health.available(now) && m.health.primary_role())
    }

    fn pick(&self, tried: &Tried, now: u64, hint: PickHint) -> Option<usize> {
        if let Some(m) = hint.member {
            if !tried.contains(m) && self.members[m].health.available(now) {
                return Some(m);
            }
            if hint.only_member {
                return None;
            }
        }
        if hint.max_lag.is_some() {
            // Lagging replicas take no reads; with none left the caller chose another pool.
            let load = |i: usize| self.members[i].in_flight();
            let usable =
                |i: usize| !tried.contains(i) && self.members[i].health.available(now) && self.lag_ok(i, hint.max_lag);
            return self.policy_pick(hint.key, usable, load);
        }
        let load = |i: usize| self.members[i].in_flight();
        if self.in_panic(now) {
            self.metrics.panic.increment(1);
            return self.policy_pick(hint.key, |i| !tried.contains(i), load);
        }
        let healthy = |i: usize| !tried.contains(i) && self.members[i].health.available(now);
        let limit = self.max_connections;
        let ramping = !self.slow_start.is_zero();
        if limit == 0 && !ramping {
            return self.policy_pick(hint.key, healthy, load);
        }
        let preferred = |i: usize| {
            let m = &self.members[i];
            healthy(i)
                && (limit == 0 || m.in_flight() < limit)
                && (!ramping || {
                    let share = m.health.ramp(now, self.slow_start);
                    share >= 1.0 || fastrand::f64() < share
                })
        };
        self.policy_pick(hint.key, preferred, load)
            .or_else(|| self.policy_pick(hint.key, healthy, load))
    }

    /// A connection slot on member `i` when the pool limits connections: at once if free, else
    /// after waiting in the backend's FIFO queue up to queue_timeout.
    async fn acquire_slot(&self, i: usize) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(sem) = &self.slots[i] else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let backend = &self.members[i];
        if backend.queued.fetch_add(1, Ordering::Relaxed) >= self.queue_size {
            backend.queued.fetch_sub(1, Ordering::Relaxed);
            self.metrics.queue_timeouts.increment(1);
            return Err(ProxyError::QueueTimeout);
        }
        let waited = tokio::time::timeout(self.queue_timeout, sem.clone().acquire_owned()).await;
        backend.queued.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => {
                self.metrics.queue_timeouts.increment(1);
                Err(ProxyError::QueueTimeout)
            }
        }
    }

    /// Feed a live request's outcome to passive ejection.
    fn record_outcome(&self, i: usize, ok: bool) {
        let Some(passive) = &self.passive else { return };
        let backend = &self.members[i];
        let now = health::now_ms();
        let may_eject = || {
            let ejected = self.members.iter().filter(|m| m.health.ejected(now)).count();
            (ejected + 1) * 100 <= passive.max_ejected_percent as usize * self.members.len()
        };
        if let Some(until) = backend.health.record_live(ok, passive, now, may_eject) {
            backend.metrics.ejections.increment(1);
            tracing::warn!(
                pool = %self.name,
                backend = %backend.label,
                for_ms = until.saturating_sub(now),
                "backend ejected after consecutive failures"
            );
        }
    }
}

/// Members already tried for this request (at most retries + 1, which config caps at 11).
struct Tried {
    list: [usize; 12],
    len: usize,
}

impl Tried {
    fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }
    fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }
}

/// What a request may be replayed from: its head, when it is idempotent and had no body.
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    /// Keep a copy only when a retry after sending could be allowed, so the common single-backend
    /// or non-idempotent case copies nothing.
    pub fn capture(req: &Request<ProxyBody>, pool: &Pool) -> Option<Replay> {
        use http_body::Body;
        if pool.retries == 0 || pool.members.len() < 2 || !is_idempotent(req.method()) || !req.body().is_end_stream() {
            return None;
        }
        Some(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn rebuild(&self) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

pub fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Outcome notes for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempts {
    pub count: u32,
    pub retried: bool,
}

/// Send `req` to a backend of `pool`, retrying on another backend when that is safe and the
/// pool's retry budget allows.
pub async fn forward(
    pool: &Pool,
    mut req: Request<ProxyBody>,
    replay: Option<Replay>,
    hint: PickHint,
    notes: &mut Attempts,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let now = health::now_ms();
    pool.budget.record_request(now / 1000);
    let mut tried = Tried { list: [0; 12], len: 0 };
    let mut last_err = None;
    let mut _retry_permit = None;
    loop {
        let Some(idx) = pool.pick(&tried, now, hint) else {
            return Err(match last_err {
                Some(e) => e,
                None => {
                    pool.metrics.no_healthy.increment(1);
                    ProxyError::NoHealthyBackend
                }
            });
        };
        // A second attempt is a retry only now that another backend is there to take it.
        if let Some(err) = last_err.take() {
            let Some(permit) = pool.budget.try_retry(health::now_ms() / 1000) else {
                pool.metrics.budget_exhausted.increment(1);
                return Err(err);
            };
            _retry_permit = Some(permit);
            pool.metrics.retries.increment(1);
            notes.retried = true;
        }
        tried.push(idx);
        notes.count += 1;
        let slot = pool.acquire_slot(idx).await?;
        let backend = &pool.members[idx];
        let mut lease = Lease::new(backend.clone(), slot);
        let started = crate::clock::now();
        let result = send(pool, backend, req).await;
        backend.metrics.duration.record(started.elapsed().as_secs_f64());
        let may_retry = (tried.len as u32) <= pool.retries;
        match result {
            Ok((resp, conn)) => {
                let status = resp.status().as_u16();
                backend.metrics.response(class_index(status));
                pool.record_outcome(idx, status < 500);
                lease.conn = conn;
                return Ok((resp, lease));
            }
            // The client's fault, not the backend's: no retry, no mark against it.
            Err((err @ ProxyError::BodyTooLarge, _)) => return Err(err),
            Err((err, returned)) => {
                backend.metrics.response(ERROR_CLASS);
                pool.record_outcome(idx, false);
                tracing::debug!(pool = %pool.name, backend = %backend.label, error = %err, "upstream attempt failed");
                drop(lease);
                let next = match returned {
                    Some(r) => Some(r),
                    None if err.retry_after_send() => replay.as_ref().map(Replay::rebuild),
                    None => None,
                };
                match next {
                    Some(r) if may_retry => {
                        req = r;
                        last_err = Some(err);
                    }
                    _ => return Err(err),
                }
            }
        }
    }
}

type SendFailure = (ProxyError, Option<Request<ProxyBody>>);

/// One attempt on one backend: an idle connection if one is ready, else a new one. The request
/// comes back with the error whenever none of it was written, so the caller can try elsewhere.
async fn send(
    pool: &Pool,
    backend: &Backend,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<ProxyBody>>), SendFailure> {
    if let Some(t) = &backend.tls {
        // Boxed: the TLS path's state (handshakes, h2) is several KB, and inline it would make
        // every request's future that large, to be moved and copied on the plain path too.
        return Box::pin(send_tls(pool, backend, t, req)).await;
    }
    while let Some(mut sender) = backend.take_idle() {
        if sender.ready().await.is_err() {
            continue;
        }
        match exchange(pool, &mut sender, req).await {
            Ok(resp) => return Ok((resp, Some(sender))),
            // Not written: the idle connection went away under us; use a fresh one.
            Err((_, Some(r))) => req = r,
            Err(e) => return Err(e),
        }
    }
    let mut sender = match dial(backend.addr, pool.connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err((e, Some(req))),
    };
    let resp = exchange(pool, &mut sender, req).await?;
    Ok((resp, Some(sender)))
}

/// One attempt on a TLS backend: this worker's HTTP/2 connection if there is one, else an idle
/// HTTP/1.1 one, else a new connection, HTTP/2 when the backend picks h2 by ALPN. Upgrades
/// (WebSocket) need HTTP/1.1 and never use or open an HTTP/2 connection.
async fn send_tls(
    pool: &Pool,
    backend: &Backend,
    tls: &BackendTls,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<ProxyBody>>), SendFailure> {
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    if !upgrade {
        if let Some(sender) = backend.shared_h2() {
            match exchange_h2(pool, sender, req).await {
                Ok(resp) => return Ok((resp, None)),
                // Not sent: the connection is going away; open a new one.
                Err((_, Some(r))) => {
                    backend.set_h2(None);
                    req = r;
                }
                Err(e) => return Err(e),
            }
        }
    }
    while let Some(mut sender) = backend.take_idle() {
        if sender.ready().await.is_err() {
            continue;
        }
        match exchange(pool, &mut sender, req).await {
            Ok(resp) => return Ok((resp, Some(sender))),
            Err((_, Some(r))) => req = r,
            Err(e) => return Err(e),
        }
    }
    // Boxed: opening a connection is rare (idle ones are reused) and its TLS and HTTP/2
    // handshake state is large; inline, every request's future would carry that size, and
    // hyper keeps one such future's room per client connection.
    let opened = match Box::pin(open_tls(backend.addr, tls, pool.connect_timeout, upgrade)).await {
        Ok(o) => o,
        Err(e) => return Err((e, Some(req))),
    };
    match opened {
        Opened::H2(sender) => {
            backend.set_h2(Some(sender.clone()));
            let resp = exchange_h2(pool, sender, req).await?;
            Ok((resp, None))
        }
        Opened::H1(mut sender) => {
            let resp = exchange(pool, &mut sender, req).await?;
            Ok((resp, Some(sender)))
        }
    }
}

/// A new connection to a TLS backend, by the protocol it chose.
enum Opened {
    H1(SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

async fn open_tls(addr: SocketAddr, tls: &BackendTls, timeout: Duration, h1_only: bool) -> Result<Opened, ProxyError> {
    let stream = tls.connect(addr, timeout, h1_only).await?;
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Ok(Opened::H2(handshake_h2(stream).await?))
    } else {
        Ok(Opened::H1(handshake_h1(stream).await?))
    }
}

/// Send on an HTTP/2 connection: the request goes as HTTP/2 with :scheme https and :authority
/// from its Host (which is then not sent as a header). A request that comes back unsent is
/// restored for HTTP/1.1.
async fn exchange_h2(
    pool: &Pool,
    mut sender: http2::SendRequest<ProxyBody>,
    mut req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendFailure> {
    let plain_uri = req.uri().clone();
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            plain_uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    // HTTP/2 carries the host in :authority; some servers (nginx before 1.25) refuse a request
    // with a Host header as well.
    let host = match req.uri().authority() {
        Some(_) => req.headers_mut().remove(http::header::HOST),
        None => None,
    };
    *req.version_mut() = http::Version::HTTP_2;
    let restore = |mut r: Request<ProxyBody>| {
        *r.uri_mut() = plain_uri.clone();
        *r.version_mut() = http::Version::HTTP_11;
        if let Some(h) = &host {
            r.headers_mut().insert(http::header::HOST, h.clone());
        }
        r
    };
    if let Err(e) = sender.ready().await {
        return Err((ProxyError::UpstreamBroken(e), Some(restore(req))));
    }
    match tokio::time::timeout(pool.response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err((ProxyError::UpstreamTimeout, None)),
        Ok(Ok(mut resp)) => {
            // What goes on to the client is its own protocol's concern.
            *resp.version_mut() = http::Version::HTTP_11;
            Ok(resp)
        }
        Ok(Err(mut e)) => {
            let returned = e.take_message().map(restore);
            Err((send_failed(e.into_error()), returned))
        }
    }
}

async fn exchange(
    pool: &Pool,
    sender: &mut SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendFailure> {
    match tokio::time::timeout(pool.response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err((ProxyError::UpstreamTimeout, None)),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => {
            let returned = e.take_message();
            Err((send_failed(e.into_error()), returned))
        }
    }
}

/// A failed exchange: the backend's doing, unless the client's body broke its size limit.
fn send_failed(e: hyper::Error) -> ProxyError {
    if crate::body::is_body_too_large(&e) {
        ProxyError::BodyTooLarge
    } else {
        ProxyError::UpstreamBroken(e)
    }
}

/// Open a new HTTP/1.1 connection to a backend. Its driver task runs on the current runtime.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<ProxyBody>, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ProxyError::UpstreamConnectTimeout),
        Ok(Err(e)) => return Err(ProxyError::UpstreamConnect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    handshake_h1(stream).await
}

/// HTTP/1.1 over an open connection. Its driver task runs on the current runtime.
async fn handshake_h1<T>(io: T) -> Result<SendRequest<ProxyBody>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::UpstreamBroken)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// HTTP/2 over an open TLS connection (ALPN h2). The driver task ends when the backend closes
/// the connection or every sender is dropped.
async fn handshake_h2<T>(io: T) -> Result<http2::SendRequest<ProxyBody>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::UpstreamBroken)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(sender)
}
