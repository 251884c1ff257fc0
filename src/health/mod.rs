//! Backend health: one state per backend that every way of picking respects. Active probes
//! (rise/fall), passive ejection from live traffic (with doubling back-off and a cap on how much
//! of a pool may be out), slow start after coming up. The rules are pure functions of the
//! current values and an explicit `now`; the state itself is atomics, read on the request path
//! without locks.

pub mod probe;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// The clock of every health timestamp: milliseconds on the one clock.
pub use crate::clock::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// No active check has decided yet.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Checked {
    fn from_u8(v: u8) -> Checked {
        match v {
            1 => Checked::Up,
            2 => Checked::Down,
            _ => Checked::Unknown,
        }
    }
}

/// What active checks and passive ejection know about one backend.
#[derive(Debug)]
pub struct Health {
    checked: AtomicU8,
    /// Whether an unchecked backend takes traffic (the pool's `assume_healthy`).
    unknown_is_up: AtomicBool,
    /// Consecutive probe results, for rise/fall.
    passes: AtomicU32,
    failures: AtomicU32,
    /// Consecutive failed live requests, for passive ejection.
    live_failures: AtomicU32,
    /// While now < ejected_until, the backend is out (0: not ejected).
    ejected_until: AtomicU64,
    /// How many ejections in a row, for the doubling back-off.
    ejections: AtomicU32,
    /// When the backend last became available (for slow start); 0: never.
    up_since: AtomicU64,
    pub last_check_ms: AtomicU64,
    /// The last probe's status code; 0 for a connection failure or timeout.
    pub last_check_status: AtomicU32,
    pub last_check_ok: AtomicBool,
    /// Replication lag in milliseconds from the last probe; u64::MAX: unknown.
    lag_ms: AtomicU64,
    /// The last probe said this backend is a primary (a promoted replica).
    primary_role: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            checked: AtomicU8::new(Checked::Unknown as u8),
            unknown_is_up: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            live_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            up_since: AtomicU64::new(now_ms()),
            last_check_ms: AtomicU64::new(0),
            last_check_status: AtomicU32::new(0),
            last_check_ok: AtomicBool::new(false),
            lag_ms: AtomicU64::new(u64::MAX),
            primary_role: AtomicBool::new(false),
        }
    }
}

pub use crate::config::Passive;

/// The back-off for the n-th ejection in a row (1-based): base, 2x, 4x, 8x, then 10x at most.
pub fn eject_duration(base: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX).min(10);
    base * factor
}

/// The share of its normal traffic a backend gets `elapsed_ms` after coming up, in [0.05, 1].
/// A small floor keeps a fresh backend from being starved entirely.
pub fn slow_start_factor(elapsed_ms: u64, window: Duration) -> f64 {
    let w = window.as_millis() as u64;
    if w == 0 || elapsed_ms >= w {
        return 1.0;
    }
    (elapsed_ms as f64 / w as f64).max(0.05)
}

/// A state change to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    None,
    Up,
    Down,
}

impl Health {
    /// Record the lag a probe reported (None: missing or unreadable).
    pub fn set_lag(&self, seconds: Option<f64>) {
        let ms = seconds
            .map(|s| (s * 1000.0).min(u64::MAX as f64 / 2.0) as u64)
            .unwrap_or(u64::MAX);
        self.lag_ms.store(ms, Ordering::Relaxed);
    }

    /// Replication lag as last reported, if known.
    pub fn lag(&self) -> Option<Duration> {
        match self.lag_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub fn set_primary_role(&self, primary: bool) {
        self.primary_role.store(primary, Ordering::Relaxed);
    }

    pub fn primary_role(&self) -> bool {
        self.primary_role.load(Ordering::Relaxed)
    }

    pub fn checked(&self) -> Checked {
        Checked::from_u8(self.checked.load(Ordering::Relaxed))
    }

    pub fn set_unknown_is_up(&self, v: bool) {
        self.unknown_is_up.store(v, Ordering::Relaxed);
    }

    /// Forget active-check results (the pool no longer has checks): the backend is up.
    pub fn clear_checks(&self) {
        self.checked.store(Checked::Up as u8, Ordering::Relaxed);
        self.passes.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Up by active checks (or unchecked and assumed up).
    pub fn checked_up(&self) -> bool {
        match self.checked() {
            Checked::Up => true,
            Checked::Down => false,
            Checked::Unknown => self.unknown_is_up.load(Ordering::Relaxed),
        }
    }

    pub fn ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Whether the backend may take new requests now.
    pub fn available(&self, now: u64) -> bool {
        self.checked_up() && !self.ejected(now)
    }

    /// The slow-start share at `now` (1.0 when not ramping).
    pub fn ramp(&self, now: u64, window: Duration) -> f64 {
        if window.is_zero() {
            return 1.0;
        }
        let since = self.up_since.load(Ordering::Relaxed);
        slow_start_factor(now.saturating_sub(since), window)
    }

    pub fn passes(&self) -> u32 {
        self.passes.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn live_failures(&self) -> u32 {
        self.live_failures.load(Ordering::Relaxed)
    }

    /// Record one active probe result; `rise` passes in a row bring a backend up, `fall`
    /// failures in a row take it down. Only the probe task of this backend calls this.
    pub fn record_probe(&self, ok: bool, status: u16, rise: u32, fall: u32, now: u64) -> Flip {
        self.last_check_ms.store(now, Ordering::Relaxed);
        self.last_check_status.store(u32::from(status), Ordering::Relaxed);
        self.last_check_ok.store(ok, Ordering::Relaxed);
        let state = self.checked();
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let passes = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if state != Checked::Up && passes >= rise {
                let was_available = self.checked_up();
                self.checked.store(Checked::Up as u8, Ordering::Relaxed);
                if !was_available {
                    self.up_since.store(now, Ordering::Relaxed);
                    // Checks prove it recovered: an ejection from the same outage is lifted.
                    self.ejected_until.store(0, Ordering::Relaxed);
                    self.live_failures.store(0, Ordering::Relaxed);
                }
                return if state == Checked::Down { Flip::Up } else { Flip::None };
            }
        } else {
            self.passes.store(0, Ordering::Relaxed);
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if state != Checked::Down && failures >= fall {
                self.checked.store(Checked::Down as u8, Ordering::Relaxed);
                return Flip::Down;
            }
        }
        Flip::None
    }

    /// Record a live request's outcome. Returns the ejection deadline when this failure ejects
    /// the backend; `may_eject` says whether the pool can spare it (max_ejected_percent).
    pub fn record_live(&self, ok: bool, cfg: &Passive, now: u64, may_eject: impl FnOnce() -> bool) -> Option<u64> {
        if ok {
            if self.live_failures.load(Ordering::Relaxed) != 0 {
                self.live_failures.store(0, Ordering::Relaxed);
            }
            // A full base period of calm since readmission forgives earlier ejections.
            let until = self.ejected_until.load(Ordering::Relaxed);
            if until != 0
                && now >= until + cfg.eject_for.as_millis() as u64
                && self.ejections.load(Ordering::Relaxed) != 0
            {
                self.ejections.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let n = self.live_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.consecutive_failures || self.ejected(now) || !may_eject() {
            return None;
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now + eject_duration(cfg.eject_for, k).as_millis() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        // Back in rotation after the ejection, ramping like any backend that comes up.
        self.up_since.store(until, Ordering::Relaxed);
        self.live_failures.store(0, Ordering::Relaxed);
        Some(until)
    }

    /// Mark that the backend became available now (for slow start), e.g. a new backend.
    pub fn mark_up_since(&self, now: u64) {
        self.up_since.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSIVE: Passive = Passive {
        consecutive_failures: 3,
        eject_for: Duration::from_secs(10),
        max_ejected_percent: 50,
    };

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let h = Health::default();
        assert!(h.checked_up(), "unknown is used until checks decide");
        assert_eq!(h.record_probe(false, 500, 2, 3, 1), Flip::None);
        assert_eq!(h.record_probe(false, 500, 2, 3, 2), Flip::None);
        assert_eq!(
            h.record_probe(true, 200, 2, 3, 3),
            Flip::None,
            "a pass resets the failure run"
        );
        assert_eq!(h.record_probe(false, 0, 2, 3, 4), Flip::None);
        assert_eq!(h.record_probe(false, 0, 2, 3, 5), Flip::None);
        assert_eq!(h.record_probe(false, 0, 2, 3, 6), Flip::Down);
        assert!(!h.available(6));
        assert_eq!(h.record_probe(true, 200, 2, 3, 7), Flip::None);
        assert_eq!(h.record_probe(true, 200, 2, 3, 8), Flip::Up);
        assert!(h.available(8));
        assert_eq!(
            h.ramp(8 + 500, Duration::from_secs(1)),
            0.5,
            "ramps from the moment it came up"
        );
    }

    #[test]
    fn recovery_by_active_checks_lifts_a_passive_ejection() {
        let h = Health::default();
        for _ in 0..3 {
            h.record_live(false, &PASSIVE, 0, || true);
        }
        assert!(h.ejected(1));
        h.record_probe(false, 0, 1, 1, 2);
        assert_eq!(h.record_probe(true, 200, 1, 1, 3), Flip::Up);
        assert!(h.available(4));
    }

    #[test]
    fn unknown_backends_can_be_held_back_until_checked() {
        let h = Health::default();
        h.set_unknown_is_up(false);
        assert!(!h.available(1));
        h.record_probe(true, 200, 1, 1, 2);
        assert!(h.available(2));
    }

    #[test]
    fn passive_ejection_after_consecutive_failures_with_doubling() {
        let h = Health::default();
        assert_eq!(h.record_live(false, &PASSIVE, 0, || true), None);
        assert_eq!(h.record_live(false, &PASSIVE, 0, || true), None);
        assert_eq!(h.record_live(false, &PASSIVE, 0, || true), Some(10_000));
        assert!(!h.available(5_000));
        assert!(h.available(10_000));
        // Failing again right after readmission: twice as long.
        for _ in 0..2 {
            h.record_live(false, &PASSIVE, 10_001, || true);
        }
        assert_eq!(h.record_live(false, &PASSIVE, 10_001, || true), Some(30_001));
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let h = Health::default();
        h.record_live(false, &PASSIVE, 0, || true);
        h.record_live(false, &PASSIVE, 0, || true);
        h.record_live(true, &PASSIVE, 0, || true);
        assert_eq!(h.record_live(false, &PASSIVE, 0, || true), None);
        assert!(h.available(1));
    }

    #[test]
    fn no_ejection_when_the_pool_cannot_spare_it() {
        let h = Health::default();
        for _ in 0..10 {
            assert_eq!(h.record_live(false, &PASSIVE, 0, || false), None);
        }
        assert!(h.available(1));
    }

    #[test]
    fn ejection_back_off_doubles_up_to_ten_times() {
        let b = Duration::from_secs(30);
        let got: Vec<u64> = (1..=6).map(|n| eject_duration(b, n).as_secs()).collect();
        assert_eq!(got, vec![30, 60, 120, 240, 300, 300]);
        assert_eq!(eject_duration(b, 40), Duration::from_secs(300));
    }

    #[test]
    fn calm_after_readmission_forgives_earlier_ejections() {
        let h = Health::default();
        for _ in 0..3 {
            h.record_live(false, &PASSIVE, 0, || true);
        }
        // Serving well for a full base period after readmission at 10 s.
        h.record_live(true, &PASSIVE, 20_000, || true);
        for _ in 0..2 {
            h.record_live(false, &PASSIVE, 20_001, || true);
        }
        assert_eq!(h.record_live(false, &PASSIVE, 20_001, || true), Some(30_001));
    }

    #[test]
    fn slow_start_grows_linearly_with_a_floor() {
        let w = Duration::from_secs(10);
        assert_eq!(slow_start_factor(0, w), 0.05);
        assert_eq!(slow_start_factor(2_500, w), 0.25);
        assert_eq!(slow_start_factor(5_000, w), 0.5);
        assert_eq!(slow_start_factor(10_000, w), 1.0);
        assert_eq!(slow_start_factor(0, Duration::ZERO), 1.0);
    }
}
