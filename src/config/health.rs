//! A pool's health settings as validated data: `[pool.health]` (active checks) and
//! `[pool.passive]` (ejection of backends that keep failing). The health module runs them.

use std::time::Duration;

/// A pool's `[pool.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Inclusive status ranges that pass.
    pub expect: Vec<(u16, u16)>,
    /// Whether a backend not yet decided by checks takes traffic.
    pub assume_healthy: bool,
    /// Read replication lag (seconds, decimal) from this response header of the probe.
    pub lag_header: Option<http::HeaderName>,
    /// Read the backend's role from this header: "primary" marks a promoted replica.
    pub role_header: Option<http::HeaderName>,
}

impl HealthCheck {
    pub fn passes(&self, status: u16) -> bool {
        self.expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// Parse "200-399" or "200,204,300-399" into inclusive ranges.
pub fn parse_status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |x: &str| x.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        match (parse(lo), parse(hi)) {
            (Some(l), Some(h)) if l <= h => out.push((l, h)),
            _ => {
                return Err(format!(
                    "invalid status range {part:?}: expected like \"200-399\" or \"200,204\" with codes 100 to 599"
                ))
            }
        }
    }
    Ok(out)
}

/// Passive ejection settings of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    pub max_ejected_percent: u32,
}
