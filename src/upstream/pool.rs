//! A pool of one generation and the pick: which member takes a request (policy, health, panic
//! mode, slow start, replica lag, a sticky or only member), the connection slots and queue
//! when backends are limited, and live outcomes fed to passive ejection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::backend::Backend;
use super::budget::RetryBudget;
use super::dns;
use super::tls::{BackendTls, UpstreamTls};
use crate::admin::metrics::PoolMetrics;
use crate::balancer::hash::HashTable;
use crate::balancer::Balancer;
use crate::config::{BackendAddress, Balance, HashKey, PoolConfig};
use crate::error::ProxyError;
use crate::health::probe::HealthCheck;
use crate::health::{self, Passive};

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

    /// Pick a member not yet tried. First choice: healthy, with a free slot, and admitted by its
    /// slow-start share; else any healthy one (it will queue for a slot). In panic mode, any.
    pub(super) fn pick(&self, tried: &Tried, now: u64, hint: PickHint) -> Option<usize> {
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
    pub(super) async fn acquire_slot(&self, i: usize) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
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
    pub(super) fn record_outcome(&self, i: usize, ok: bool) {
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
pub(super) struct Tried {
    list: [usize; 12],
    len: usize,
}

impl Tried {
    pub(super) fn new() -> Tried {
        Tried { list: [0; 12], len: 0 }
    }
    pub(super) fn len(&self) -> usize {
        self.len
    }
    pub(super) fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }
    pub(super) fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }
}
