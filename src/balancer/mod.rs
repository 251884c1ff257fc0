//! Backend picking policies. Pure over weights, in-flight loads and an availability predicate,
//! so every policy is unit-tested and benched without sockets. State is atomics only: no lock on
//! the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

pub mod hash;

/// Largest smooth round-robin cycle kept; larger weight sums are scaled down to fit.
const MAX_CYCLE: u64 = 1 << 16;

#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    /// Smooth weighted round-robin order of member indexes (nginx's algorithm, precomputed).
    cycle: Box<[u32]>,
    next: AtomicUsize,
    weights: Box<[u32]>,
    /// Running sums of weights, for weighted random picks.
    cumulative: Box<[u64]>,
}

impl Balancer {
    pub fn new(policy: Balance, weights: &[u32]) -> Balancer {
        let mut acc = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += u64::from(*w);
                acc
            })
            .collect();
        Balancer {
            policy,
            cycle: smooth_cycle(weights).into_boxed_slice(),
            next: AtomicUsize::new(fastrand::usize(..weights.len().max(1) * 16)),
            weights: weights.into(),
            cumulative,
        }
    }

    pub fn policy(&self) -> Balance {
        self.policy
    }

    /// Pick a member index. `usable(i)` says whether member i may take this request (healthy,
    /// not already tried); `load(i)` is its in-flight count.
    pub fn pick(&self, usable: impl Fn(usize) -> bool, load: impl Fn(usize) -> usize) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let first = match self.policy {
            // A consistent-hash pool picks by key elsewhere; requests without the key, and
            // this balancer's share of its work, are round robin.
            Balance::RoundRobin | Balance::ConsistentHash => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let len = self.cycle.len();
                // Walk the cycle from the next slot to the first usable member.
                for k in 0..len {
                    let i = self.cycle[(start + k) % len] as usize;
                    if usable(i) {
                        return Some(i);
                    }
                }
                return None;
            }
            Balance::Random => self.weighted_random(),
            Balance::LeastRequest => {
                if n == 1 {
                    0
                } else {
                    let a = self.weighted_random();
                    let mut b = self.weighted_random();
                    if a == b {
                        b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    }
                    match (usable(a), usable(b)) {
                        (true, true) => {
                            if self.lighter(a, b, &load) {
                                a
                            } else {
                                b
                            }
                        }
                        (true, false) => a,
                        (false, true) => b,
                        (false, false) => return self.least_loaded(&usable, &load),
                    }
                }
            }
        };
        if usable(first) {
            return Some(first);
        }
        // The random pick is out; take the next usable member after it.
        (1..n).map(|k| (first + k) % n).find(|&i| usable(i))
    }

    /// Compare load per unit of weight without division: a/wa < b/wb  <=>  a*wb < b*wa.
    fn lighter(&self, a: usize, b: usize, load: &impl Fn(usize) -> usize) -> bool {
        let (la, lb) = (load(a) as u64 + 1, load(b) as u64 + 1);
        la * u64::from(self.weights[b]) <= lb * u64::from(self.weights[a])
    }

    fn least_loaded(&self, usable: &impl Fn(usize) -> bool, load: &impl Fn(usize) -> usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in (0..self.weights.len()).filter(|&i| usable(i)) {
            best = match best {
                Some(b) if self.lighter(b, i, load) => Some(b),
                _ => Some(i),
            };
        }
        best
    }

    fn weighted_random(&self) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(..total.max(1));
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// The smooth weighted round-robin order: weights 3:1 give a, a, b, a (interleaved), never
/// a, a, a, b. Each step adds every weight to its running score, picks the highest score and
/// takes the total off the winner.
pub fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1)) / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_CYCLE {
        for x in &mut w {
            *x = (*x * MAX_CYCLE / sum).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_round_robin_interleaves_weights() {
        assert_eq!(smooth_cycle(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_cycle(&[1]), vec![0]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_a_bounded_cycle() {
        let c = smooth_cycle(&[10_000, 9_999, 1]);
        assert!(c.len() as u64 <= MAX_CYCLE + 3);
        assert!(c.contains(&2));
    }

    #[test]
    fn round_robin_serves_weights_in_proportion() {
        let b = Balancer::new(Balance::RoundRobin, &[3, 1]);
        let mut count = [0; 2];
        for _ in 0..400 {
            count[b.pick(|_| true, |_| 0).unwrap()] += 1;
        }
        assert_eq!(count, [300, 100]);
    }

    #[test]
    fn round_robin_skips_unusable_members() {
        let b = Balancer::new(Balance::RoundRobin, &[1, 1, 1]);
        for _ in 0..30 {
            assert_ne!(b.pick(|i| i != 1, |_| 0), Some(1));
        }
        assert_eq!(b.pick(|_| false, |_| 0), None);
    }

    #[test]
    fn least_request_prefers_the_idler_backend() {
        let b = Balancer::new(Balance::LeastRequest, &[1, 1]);
        let loads = [10usize, 0];
        for _ in 0..100 {
            assert_eq!(b.pick(|_| true, |i| loads[i]), Some(1));
        }
    }

    #[test]
    fn least_request_spreads_over_equal_loads_and_respects_usable() {
        let b = Balancer::new(Balance::LeastRequest, &[1, 1, 1, 1]);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[b.pick(|i| i != 3, |_| 0).unwrap()] += 1;
        }
        assert_eq!(seen[3], 0);
        assert!(seen[..3].iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn random_follows_weights_roughly() {
        let b = Balancer::new(Balance::Random, &[9, 1]);
        let mut count = [0; 2];
        for _ in 0..10_000 {
            count[b.pick(|_| true, |_| 0).unwrap()] += 1;
        }
        assert!(count[0] > 8_500 && count[0] < 9_500, "{count:?}");
    }

    #[test]
    fn random_falls_over_to_a_usable_member() {
        let b = Balancer::new(Balance::Random, &[1, 1, 1]);
        for _ in 0..50 {
            assert_eq!(b.pick(|i| i == 2, |_| 0), Some(2));
        }
    }
}
