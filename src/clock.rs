//! The one clock of the daemon.
//!
//! Elapsed time is tokio's [`Instant`], so that in-process tests on paused time
//! (`#[tokio::test(start_paused = true)]`) move every timer, timestamp and TTL together; outside a
//! runtime (or without tokio's test-util) it is the monotonic clock itself. Wall-clock time (HTTP
//! dates, cookie expiry, log timestamps) comes from [`wall`] alone. Functions that decide by time
//! take `now` as an argument where they can, so tests give them any time they like; the rest of
//! `src/` reads the clock here only (`clippy::disallowed_methods` keeps `Instant::now` and
//! `SystemTime::now` out elsewhere; see clippy.toml).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// Now, on the monotonic clock.
#[inline]
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since this process's clock started (never 0): the timestamps kept in atomics
/// (health, idle connections).
#[inline]
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The wall-clock time.
#[cfg(not(test))]
#[inline]
#[allow(clippy::disallowed_methods)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// In the library's own unit tests the wall clock follows the monotonic one from an anchor
/// taken at its first reading on the test's thread, so that paused time moves HTTP dates and TTLs too.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub fn wall() -> SystemTime {
    // Per thread: each test runs on a thread of its own, with a paused clock of its own.
    thread_local! {
        static ANCHOR: (SystemTime, Instant) = (SystemTime::now(), Instant::now());
    }
    ANCHOR.with(|&(wall, mono)| wall + now().saturating_duration_since(mono))
}

/// The wall-clock time in whole seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    wall().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The wall-clock time in seconds since the Unix epoch, with fractions.
pub fn unix_f64() -> f64 {
    wall()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_monotonic_clock_and_its_milliseconds() {
        let (t0, ms0) = (now(), now_ms());
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(now() - t0, Duration::from_secs(90));
        assert_eq!(now_ms() - ms0, 90_000);
    }

    #[tokio::test(start_paused = true)]
    async fn in_unit_tests_the_wall_clock_follows_paused_time() {
        let w0 = wall();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(wall().duration_since(w0).unwrap(), Duration::from_secs(3600));
    }
}
