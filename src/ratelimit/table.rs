//! The bounded keyed GCRA table: one theoretical arrival time (TAT) per key, in a fixed array of
//! small set-associative buckets allocated once. Memory never grows with the number of keys
//! seen: a new key takes an empty slot of its bucket, else an idle one (a key whose TAT has
//! passed is in exactly the state of a key never seen, so reusing its slot loses nothing), else
//! the slot closest to idle (its key gets a fresh burst: eviction only ever makes one key's
//! limit more lenient, never stricter). Pure over an explicit `now` in nanoseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Slots per bucket: one lock covers them; a lookup scans them.
pub const WAYS: usize = 8;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0 marks an empty slot.
    key: u64,
    /// Theoretical arrival time, ns on the caller's clock.
    tat: u64,
    /// Requests admitted here and not yet told to Redis.
    pending: u32,
    /// On the list of keys to exchange with Redis at the next sync.
    dirty: bool,
}

/// The two numbers of a GCRA check, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Emission interval: how far one request moves the TAT.
    pub step: u64,
    /// How far ahead of now the TAT may be after a request: burst × step.
    pub tolerance: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `remaining`: requests the key could still send at once; `reset`: ns until its full
    /// burst is back.
    Allow { remaining: u64, reset: u64 },
    /// `retry`: ns until one request would be allowed.
    Deny { retry: u64, reset: u64 },
}

/// What a check did besides its verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// A key still active lost its slot to this one.
    pub evicted: bool,
}

pub struct Table {
    buckets: Box<[Mutex<[Slot; WAYS]>]>,
    mask: u64,
    evictions: AtomicU64,
}

/// Hash 0 marks an empty slot; the one key hashing to it shares the slot of key 1.
fn nonzero(key: u64) -> u64 {
    key.max(1)
}

impl Table {
    /// A table holding at least `max_keys` keys (rounded up to a power of two of buckets).
    pub fn new(max_keys: u64) -> Table {
        let buckets = (max_keys.div_ceil(WAYS as u64)).max(1).next_power_of_two();
        Table {
            buckets: (0..buckets).map(|_| Mutex::new([Slot::default(); WAYS])).collect(),
            mask: buckets - 1,
            evictions: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes of the table: fixed at creation.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets) + std::mem::size_of::<Table>()
    }

    /// Active keys lost to newer ones since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn bucket(&self, key: u64) -> &Mutex<[Slot; WAYS]> {
        // The high bits: the low ones of SipHash are as good, but a caller's test keys often
        // differ only there, and buckets should not line up with them.
        let i = (key.rotate_left(29) & self.mask) as usize;
        &self.buckets[i]
    }

    fn lock(&self, key: u64) -> std::sync::MutexGuard<'_, [Slot; WAYS]> {
        // A panic while holding a bucket cannot leave a slot half-written (plain copies), so a
        // poisoned lock is still good.
        self.bucket(key).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request of `key` at `now`. With `track`, an admitted request is remembered for the
    /// next Redis exchange, and `on_dirty(key)` is called (under the bucket's lock) the first
    /// time the key needs exchanging; it returns false when the list is full.
    pub fn check(
        &self,
        key: u64,
        now: u64,
        p: Params,
        track: bool,
        on_dirty: impl FnOnce(u64) -> bool,
    ) -> (Verdict, Effects) {
        let key = nonzero(key);
        let mut fx = Effects::default();
        let mut slots = self.lock(key);
        let i = match slots.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                let i = slots
                    .iter()
                    .position(|s| s.key == 0 || (s.tat <= now && !s.dirty))
                    .unwrap_or_else(|| {
                        fx.evicted = true;
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        let mut best = 0;
                        for (j, s) in slots.iter().enumerate() {
                            if s.tat < slots[best].tat {
                                best = j;
                            }
                        }
                        best
                    });
                slots[i] = Slot { key, ..Slot::default() };
                i
            }
        };
        let s = &mut slots[i];
        let base = s.tat.max(now);
        let next = base + p.step;
        let verdict = if next - now > p.tolerance {
            Verdict::Deny {
                retry: next - now - p.tolerance,
                reset: base - now,
            }
        } else {
            s.tat = next;
            if track {
                s.pending = s.pending.saturating_add(1);
            }
            Verdict::Allow {
                remaining: (p.tolerance - (next - now)) / p.step.max(1),
                reset: next - now,
            }
        };
        if track && !s.dirty {
            s.dirty = on_dirty(key);
        }
        (verdict, fx)
    }

    /// For a Redis exchange: the requests `key` admitted since the last one (the count is
    /// reset and the key taken off the dirty list); None when the key lost its slot meanwhile.
    pub fn take_pending(&self, key: u64) -> Option<u32> {
        let key = nonzero(key);
        let mut slots = self.lock(key);
        let s = slots.iter_mut().find(|s| s.key == key)?;
        s.dirty = false;
        Some(std::mem::take(&mut s.pending))
    }

    /// Redis says the key's shared TAT is `ahead` ns past `now`: the local TAT becomes at least
    /// that, plus what this instance admitted since it asked.
    pub fn merge_remote(&self, key: u64, now: u64, ahead: u64, step: u64) {
        let key = nonzero(key);
        let mut slots = self.lock(key);
        if let Some(s) = slots.iter_mut().find(|s| s.key == key) {
            let remote = now + ahead + s.pending as u64 * step;
            s.tat = s.tat.max(remote);
        }
    }

    /// Keys whose TAT is still ahead of `now`: the ones the table must remember.
    pub fn live_keys(&self, now: u64) -> usize {
        self.buckets
            .iter()
            .map(|b| {
                let slots = b.lock().unwrap_or_else(|e| e.into_inner());
                slots.iter().filter(|s| s.key != 0 && s.tat > now).count()
            })
            .sum()
    }

    /// Slots holding a key, idle or not.
    pub fn occupied(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| {
                let slots = b.lock().unwrap_or_else(|e| e.into_inner());
                slots.iter().filter(|s| s.key != 0).count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    /// 10 per second, burst 3.
    const P: Params = Params {
        step: 100 * MS,
        tolerance: 300 * MS,
    };

    fn check(t: &Table, key: u64, now: u64) -> Verdict {
        t.check(key, now, P, false, |_| true).0
    }

    fn allowed(v: Verdict) -> bool {
        matches!(v, Verdict::Allow { .. })
    }

    #[test]
    fn a_fresh_key_gets_its_burst_then_waits_one_interval() {
        let t = Table::new(64);
        let now = 1_000 * MS;
        assert_eq!(
            check(&t, 7, now),
            Verdict::Allow {
                remaining: 2,
                reset: 100 * MS
            }
        );
        assert!(allowed(check(&t, 7, now)));
        assert_eq!(
            check(&t, 7, now),
            Verdict::Allow {
                remaining: 0,
                reset: 300 * MS
            }
        );
        assert_eq!(
            check(&t, 7, now),
            Verdict::Deny {
                retry: 100 * MS,
                reset: 300 * MS
            }
        );
        // One interval later, exactly one more.
        assert!(allowed(check(&t, 7, now + 100 * MS)));
        assert!(!allowed(check(&t, 7, now + 100 * MS)));
    }

    #[test]
    fn a_steady_client_at_the_rate_is_never_refused() {
        let t = Table::new(64);
        for i in 0..1000 {
            assert!(allowed(check(&t, 1, 1_000 * MS + i * 100 * MS)), "request {i}");
        }
    }

    #[test]
    fn over_a_long_run_admissions_follow_the_rate() {
        let t = Table::new(64);
        // 100 requests per second for 10 s against 10/s with burst 3.
        let admitted = (0..1000)
            .filter(|i| allowed(check(&t, 1, 1_000 * MS + i * 10 * MS)))
            .count();
        // 10 s × 10/s plus the burst (the first request is at t=0).
        assert!((100..=103).contains(&admitted), "{admitted}");
    }

    #[test]
    fn keys_are_independent() {
        let t = Table::new(64);
        for _ in 0..3 {
            check(&t, 1, MS);
        }
        assert!(!allowed(check(&t, 1, MS)));
        assert!(allowed(check(&t, 2, MS)));
    }

    #[test]
    fn a_million_distinct_keys_never_grow_the_table() {
        let t = Table::new(65_536);
        let bytes = t.memory_bytes();
        let cap = t.capacity();
        let hot = 0xdead_beef_u64;
        let mut now = 1_000 * MS;
        // The hot key goes over its limit, then stays there while a flood of one-request keys
        // passes through: each flood key is busy for one interval (step) when it arrives.
        for _ in 0..3 {
            check(&t, hot, now);
        }
        let mut hot_refused = 0;
        let mut flood_refused = 0;
        for i in 0..1_000_000u64 {
            let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            if !allowed(check(&t, k, now)) {
                flood_refused += 1;
            }
            if i % 10_000 == 0 {
                // The hot client keeps hammering and must stay refused.
                if !allowed(check(&t, hot, now)) {
                    hot_refused += 1;
                }
            }
            now += 100; // 1M keys in 0.1 s
        }
        assert_eq!(t.memory_bytes(), bytes, "the table never reallocates");
        assert_eq!(t.capacity(), cap);
        assert!(t.occupied() <= cap);
        assert_eq!(flood_refused, 0, "every new key has its burst");
        assert_eq!(hot_refused, 100, "the limited key kept its state through the flood");
        assert!(t.evictions() > 0, "the flood did overflow the table");
        // Well after the flood everything is idle again.
        assert_eq!(t.live_keys(now + 1_000 * MS), 0);
    }

    #[test]
    fn an_idle_key_is_reused_before_an_active_one_is_evicted() {
        let t = Table::new(8); // one bucket of 8
        for k in 1..=8 {
            check(&t, k, MS);
        }
        // Key 1..7 stay active, key 8 goes idle (its TAT passes).
        let later = MS + 150 * MS;
        for k in 1..=7 {
            check(&t, k, later);
        }
        let (_, fx) = t.check(100, later, P, false, |_| true);
        assert!(!fx.evicted);
        assert_eq!(t.evictions(), 0);
        let (_, fx) = t.check(101, later, P, false, |_| true);
        assert!(fx.evicted, "the bucket is full of active keys now");
    }

    #[test]
    fn tracked_requests_are_pending_until_taken_and_dirty_once() {
        let t = Table::new(64);
        let mut dirty = Vec::new();
        for _ in 0..3 {
            t.check(5, MS, P, true, |k| {
                dirty.push(k);
                true
            });
        }
        assert_eq!(dirty, vec![5], "listed once per exchange");
        assert_eq!(t.take_pending(5), Some(3));
        assert_eq!(t.take_pending(5), Some(0));
        assert_eq!(t.take_pending(6), None);
    }

    #[test]
    fn a_remote_tat_ahead_of_ours_refuses_what_other_instances_used() {
        let t = Table::new(64);
        assert!(allowed(check(&t, 9, MS)));
        // Another instance used the whole burst: Redis's TAT is 300 ms ahead.
        t.merge_remote(9, MS, 300 * MS, P.step);
        assert!(!allowed(check(&t, 9, MS)));
        // A remote TAT behind ours changes nothing.
        let t2 = Table::new(64);
        for _ in 0..3 {
            check(&t2, 9, MS);
        }
        t2.merge_remote(9, MS, 0, P.step);
        assert!(!allowed(check(&t2, 9, MS)));
    }
}
