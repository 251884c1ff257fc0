//! Active health probes: one task per checked backend, on the control runtime. Each probe is a
//! GET of the pool's path over a kept-alive connection; start times are spread over the interval
//! and every wait is jittered, so a thousand backends never probe in one burst.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use tokio::task::AbortHandle;

use super::{now_ms, Flip};
use crate::body::ProxyBody;
use crate::state::State;
use crate::upstream::Backend;

pub use crate::config::{parse_status_ranges, HealthCheck};

/// One jittered duration in [0.9, 1.1] x `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

async fn probe_once(backend: &Backend, cfg: &HealthCheck, conn: &mut Option<SendRequest<ProxyBody>>) -> (bool, u16) {
    let attempt = async {
        let reusable = match conn.take() {
            Some(mut s) if !s.is_closed() => s.ready().await.is_ok().then_some(s),
            _ => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            // The backend's own way in: TLS for a `tls = true` pool.
            None => backend.dial_h1(cfg.timeout).await.ok()?,
        };
        let mut req = Request::get(cfg.path.as_str()).body(ProxyBody::Empty).ok()?;
        let host = match &cfg.host {
            Some(h) => HeaderValue::from_str(h).ok()?,
            None => HeaderValue::from_str(&backend.addr.to_string()).ok()?,
        };
        req.headers_mut().insert(header::HOST, host);
        req.headers_mut()
            .insert(header::USER_AGENT, HeaderValue::from_static("waypost-health-check"));
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        if let Some(name) = &cfg.lag_header {
            // Missing or unreadable lag counts as too much: a replica that cannot say how far
            // behind it is must not serve reads that expect fresh data.
            let lag = resp
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0);
            backend.health.set_lag(lag);
        }
        if let Some(name) = &cfg.role_header {
            let primary = resp
                .headers()
                .get(name)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"primary"));
            backend.health.set_primary_role(primary);
        }
        // Read the (small) body so the connection can serve the next probe.
        let body_ok = resp.into_body().collect().await.is_ok();
        if body_ok {
            *conn = Some(sender);
        }
        Some(status)
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(Some(status)) => (cfg.passes(status), status),
        _ => {
            *conn = None;
            (false, 0)
        }
    }
}

async fn run(backend: Arc<Backend>, cfg: Arc<HealthCheck>) {
    tokio::time::sleep(cfg.interval.mul_f64(fastrand::f64())).await;
    let mut conn = None;
    loop {
        let (ok, status) = probe_once(&backend, &cfg, &mut conn).await;
        match backend.health.record_probe(ok, status, cfg.rise, cfg.fall, now_ms()) {
            Flip::Up => {
                tracing::info!(pool = %backend.pool, backend = %backend.label, "backend is up (health checks pass)")
            }
            Flip::Down => {
                tracing::warn!(pool = %backend.pool, backend = %backend.label, status, "backend is down (health checks fail)")
            }
            Flip::None => {}
        }
        tokio::time::sleep(jitter(cfg.interval)).await;
    }
}

struct Task {
    backend: Arc<Backend>,
    cfg: Arc<HealthCheck>,
    handle: AbortHandle,
}

/// The running probe tasks, kept in step with the current State.
#[derive(Default)]
pub struct Prober {
    tasks: Mutex<HashMap<(Arc<str>, SocketAddr), Task>>,
}

impl Prober {
    /// Start, restart or stop probe tasks to match `state`. Backends whose pool has no checks
    /// are marked up (nothing else would ever bring them back). Call on the control runtime.
    pub fn reconcile(&self, state: &State) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let mut wanted = HashMap::new();
        for pool in &state.pools {
            for b in &pool.members {
                match &pool.health {
                    Some(cfg) => {
                        b.health.set_unknown_is_up(cfg.assume_healthy);
                        wanted.insert((pool.name.clone(), b.addr), (b.clone(), cfg.clone()));
                    }
                    None => b.health.clear_checks(),
                }
            }
        }
        tasks.retain(|key, t| {
            let keep = wanted
                .get(key)
                .is_some_and(|(b, cfg)| Arc::ptr_eq(b, &t.backend) && **cfg == *t.cfg);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        for (key, (backend, cfg)) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(key) {
                let handle = tokio::spawn(run(backend.clone(), cfg.clone())).abort_handle();
                slot.insert(Task { backend, cfg, handle });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_and_match() {
        let r = parse_status_ranges("200-299, 404").unwrap();
        assert_eq!(r, vec![(200, 299), (404, 404)]);
        let hc = HealthCheck {
            path: "/".into(),
            host: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            expect: r,
            assume_healthy: true,
            lag_header: None,
            role_header: None,
        };
        assert!(hc.passes(204) && hc.passes(404));
        assert!(!hc.passes(301) && !hc.passes(500));
        assert!(parse_status_ranges("399-200").is_err());
        assert!(parse_status_ranges("2xx").is_err());
        assert!(parse_status_ranges("200-700").is_err());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(9) && j <= Duration::from_secs(11));
        }
    }
}
