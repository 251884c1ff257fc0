//! The retry budget of a pool: retries may be at most 20% of the pool's requests over a sliding
//! ten-second window, with a floor of three retries in flight, so a failing pool never sees a
//! retry storm. Atomics only; the window is ten one-second buckets.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const WINDOW_SECS: u64 = 10;
const PERCENT: u64 = 20;
const MIN_CONCURRENT: usize = 3;

#[derive(Debug, Default)]
struct Bucket {
    sec: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECS as usize],
    active: AtomicUsize,
}

/// A retry in flight; counts against the concurrency floor until dropped.
#[derive(Debug)]
pub struct RetryPermit<'a>(&'a RetryBudget);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryBudget {
    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.buckets[(sec % WINDOW_SECS) as usize];
        let seen = b.sec.load(Ordering::Relaxed);
        if seen != sec
            && b.sec
                .compare_exchange(seen, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    fn window(&self, sec: u64) -> (u64, u64) {
        let mut req = 0;
        let mut ret = 0;
        for b in &self.buckets {
            let s = b.sec.load(Ordering::Relaxed);
            if s + WINDOW_SECS > sec && s <= sec {
                req += b.requests.load(Ordering::Relaxed);
                ret += b.retries.load(Ordering::Relaxed);
            }
        }
        (req, ret)
    }

    /// Count one request at second `sec`.
    pub fn record_request(&self, sec: u64) {
        self.bucket(sec).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A permit for one retry, or None when the budget is spent.
    pub fn try_retry(&self, sec: u64) -> Option<RetryPermit<'_>> {
        let active = self.active.fetch_add(1, Ordering::Relaxed);
        let permit = RetryPermit(self);
        if active >= MIN_CONCURRENT {
            let (req, ret) = self.window(sec);
            if (ret + 1) * 100 > req * PERCENT {
                return None;
            }
        }
        self.bucket(sec).retries.fetch_add(1, Ordering::Relaxed);
        Some(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_concurrent_retries_are_always_allowed() {
        let b = RetryBudget::default();
        let p: Vec<_> = (0..3).map(|_| b.try_retry(100).expect("floor")).collect();
        assert!(b.try_retry(100).is_none(), "no requests, floor used up");
        drop(p);
        assert!(b.try_retry(100).is_some());
    }

    #[test]
    fn retries_are_capped_at_a_fifth_of_requests_in_the_window() {
        let b = RetryBudget::default();
        for s in 0..10 {
            for _ in 0..10 {
                b.record_request(1000 + s);
            }
        }
        // 100 requests in the window: 20 retries allowed beyond the floor's worth.
        let mut held = Vec::new();
        let mut allowed = 0;
        for _ in 0..50 {
            if let Some(p) = b.try_retry(1009) {
                allowed += 1;
                held.push(p);
            }
        }
        assert_eq!(allowed, 20);
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(5);
        }
        let _floor: Vec<_> = (0..3).map(|_| b.try_retry(5).unwrap()).collect();
        assert!(b.try_retry(5).is_some(), "within budget now");
        assert!(b.try_retry(30).is_none(), "those requests are long past");
    }
}
