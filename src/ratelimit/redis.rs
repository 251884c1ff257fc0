//! Limits shared by instances through Redis, without a request ever waiting on Redis.
//!
//! Each instance decides alone, on its own table, and every `sync_interval` tells Redis what
//! it admitted per key since the last exchange; one Lua script moves each key's shared TAT by
//! those admissions (GCRA, on Redis's clock) and answers how far ahead of now the shared TAT
//! is, which the instance folds into its own. Between exchanges an instance does not see what
//! the others admitted, so for a short moment the instances together can admit more than the
//! limit; the shared TAT then runs ahead of now and every instance refuses until the debt is
//! paid, so over any longer window the total follows the limit. The cost, per window W:
//! admitted ≤ rate × W + burst × instances + rate × (instances − 1) × (sync_interval + a round
//! trip) (docs/configuration.md states it, the note of the Redis test measures it).
//!
//! An exchange that fails or takes longer than `redis_timeout` marks Redis down: limits then
//! enforce their local share (rate and burst divided by the instance count last learned from
//! Redis) or nothing (`fail_open`), and the task reconnects at every interval until an
//! exchange succeeds again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use ::redis::aio::MultiplexedConnection;
use ::redis::Script;

use super::{now_ns, Limit};
use crate::admin::metrics;
use crate::config::{RateLimitConfig, RedisDown};
use ::metrics::Counter;

/// How a shared limit decides right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Down(RedisDown),
}

/// Keys per script call: bounds one call's size and time in Redis.
const BATCH: usize = 500;
const MEMBERS_KEY: &str = "waypost:rl:instances";

/// KEYS[1]: the instances' sorted set; KEYS[2..]: one per limit key.
/// ARGV[1]: this instance's id; ARGV[2]: how long (µs) an instance counts after its last
/// exchange; then per key: its emission interval (µs) and the requests admitted.
/// Returns the instance count, then per key how far (µs) its TAT is ahead of now.
const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000) + 1000)
local out = { redis.call('ZCARD', KEYS[1]) }
for i = 2, #KEYS do
  local step = tonumber(ARGV[3 + (i - 2) * 2])
  local n = tonumber(ARGV[4 + (i - 2) * 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 0 then
    if tat < now then tat = now end
    tat = tat + n * step
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local ahead = tat - now
  if ahead < 0 then ahead = 0 end
  out[i] = ahead
end
return out
"#;

fn script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(LUA))
}

pub struct Redis {
    cfg: RateLimitConfig,
    up: AtomicBool,
    instances: AtomicU32,
    limits: Mutex<Vec<Weak<Limit>>>,
    /// Unix ms of the last good exchange (0: none yet).
    last_ok: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Exchange duration of the last good one, µs.
    last_rtt_us: AtomicU64,
    id: String,
    ok: Counter,
    error: Counter,
    timeout: Counter,
}

fn unix_ms() -> u64 {
    crate::clock::wall()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Redis {
    /// The link, with its exchange task on the current tokio runtime (the control runtime;
    /// without one, as in a unit test building a State, it never exchanges and stays down).
    pub fn start(cfg: RateLimitConfig) -> Arc<Redis> {
        let r = Arc::new(Redis {
            instances: AtomicU32::new(cfg.instances),
            up: AtomicBool::new(false),
            limits: Mutex::new(Vec::new()),
            last_ok: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_rtt_us: AtomicU64::new(0),
            id: format!("{:016x}-{}", fastrand::u64(..), std::process::id()),
            ok: metrics::redis_syncs("ok"),
            error: metrics::redis_syncs("error"),
            timeout: metrics::redis_syncs("timeout"),
            cfg,
        });
        let url = r.cfg.redis.clone().unwrap_or_default();
        match (
            ::redis::Client::open(url.as_str()),
            tokio::runtime::Handle::try_current(),
        ) {
            (Ok(client), Ok(rt)) => {
                rt.spawn(run(Arc::downgrade(&r), client));
            }
            (Err(e), _) => {
                tracing::error!(error = %e, "[ratelimit] redis: invalid URL; limits use their local share");
                r.set_error(e.to_string());
            }
            (_, Err(_)) => {}
        }
        r
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    pub fn mode(&self) -> Mode {
        if self.up.load(Ordering::Relaxed) {
            Mode::Shared
        } else {
            Mode::Down(self.cfg.on_redis_down)
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Instances last counted in Redis (or the configured prior).
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    pub(crate) fn register(&self, l: &Arc<Limit>) {
        let mut v = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        if !v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(l))) {
            v.push(Arc::downgrade(l));
        }
    }

    fn live_limits(&self) -> Vec<Arc<Limit>> {
        let mut v = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.iter().filter_map(Weak::upgrade).collect()
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn went_down(&self, why: String, timed_out: bool) {
        if timed_out {
            self.timeout.increment(1);
        } else {
            self.error.increment(1);
        }
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, fallback = ?self.cfg.on_redis_down, "[ratelimit] redis down: limits fall back");
        }
        self.set_error(why);
    }

    pub fn refresh_gauges(&self) {
        metrics::set_redis(self.is_up(), self.instances());
    }

    pub fn status(&self) -> serde_json::Value {
        let last_ok = self.last_ok.load(Ordering::Relaxed);
        serde_json::json!({
            "up": self.is_up(),
            "mode": match self.mode() {
                Mode::Shared => "shared",
                Mode::Down(RedisDown::LocalShare) => "local_share",
                Mode::Down(RedisDown::FailOpen) => "fail_open",
            },
            "instances": self.instances(),
            "sync_interval_ms": self.cfg.sync_interval.as_millis() as u64,
            "last_sync_unix_ms": (last_ok > 0).then_some(last_ok),
            "last_sync_rtt_us": self.last_rtt_us.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }
}

/// One key to exchange: its limit, its hash, the requests admitted since the last exchange.
struct Item {
    limit: usize,
    key: u64,
}

async fn run(link: Weak<Redis>, client: ::redis::Client) {
    let Some(first) = link.upgrade() else { return };
    let interval = first.cfg.sync_interval;
    let wait = first.cfg.redis_timeout;
    // Instances that have not exchanged for this long are no longer counted.
    let member_ttl_us = (interval * 10).max(Duration::from_secs(2)).as_micros() as u64;
    drop(first);
    let mut conn: Option<MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = link.upgrade() else { return };
        if conn.is_none() {
            match tokio::time::timeout(wait, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    r.went_down(format!("connect: {e}"), false);
                    continue;
                }
                Err(_) => {
                    r.went_down("connect: timed out".into(), true);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let limits = r.live_limits();
        if let Err((why, timed_out)) = exchange(&r, &limits, c, wait, member_ttl_us).await {
            // Whatever was taken for this exchange is lost: those requests were admitted, and
            // Redis just never hears of them (the shared TAT lags by that much, once).
            r.went_down(why, timed_out);
            conn = None;
        }
    }
}

async fn exchange(
    r: &Redis,
    limits: &[Arc<Limit>],
    conn: &mut MultiplexedConnection,
    wait: Duration,
    member_ttl_us: u64,
) -> Result<(), (String, bool)> {
    let shared = r.is_up();
    // While down, limits do not track (their local share is all they enforce); the first
    // exchange after that only asks for the shared state of the keys in use since.
    let mut items: Vec<Item> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        for key in l.take_dirty() {
            if let Some(n) = l.table().take_pending(key) {
                items.push(Item { limit: i, key });
                counts.push(if shared { n } else { 0 });
            }
        }
    }
    let started = crate::clock::now();
    let mut instances = None;
    // At least one call, even with no key: it keeps this instance counted and tells whether
    // Redis is there.
    for c in 0..items.len().div_ceil(BATCH).max(1) {
        let range = c * BATCH..((c + 1) * BATCH).min(items.len());
        let (batch, ns) = (&items[range.clone()], &counts[range]);
        let mut inv = script().prepare_invoke();
        inv.key(MEMBERS_KEY);
        for it in batch {
            inv.key(format!("waypost:rl:{}:{:016x}", limits[it.limit].name, it.key));
        }
        inv.arg(&r.id).arg(member_ttl_us);
        for (it, n) in batch.iter().zip(ns) {
            let step_us = (limits[it.limit].params().step / 1_000).max(1);
            inv.arg(step_us).arg(*n);
        }
        let reply: Vec<i64> = match tokio::time::timeout(wait, inv.invoke_async(conn)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err((e.to_string(), false)),
            Err(_) => return Err(("exchange timed out".into(), true)),
        };
        let now = now_ns(crate::clock::now());
        instances = reply.first().copied();
        for (it, ahead) in batch.iter().zip(reply.iter().skip(1)) {
            let l = &limits[it.limit];
            l.table()
                .merge_remote(it.key, now, (*ahead).max(0) as u64 * 1_000, l.params().step);
        }
    }
    r.last_rtt_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if let Some(n) = instances {
        r.instances.store((n.max(1)) as u32, Ordering::Relaxed);
    }
    r.last_ok.store(unix_ms(), Ordering::Relaxed);
    if !r.up.swap(true, Ordering::Relaxed) {
        tracing::info!(instances = r.instances(), "[ratelimit] redis up: limits are shared");
    }
    r.ok.increment(1);
    Ok(())
}
