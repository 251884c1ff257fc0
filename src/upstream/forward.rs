//! Forwarding with retries: one request to a pool, tried on another backend when that is safe
//! (nothing was written, or an idempotent request without a body can be replayed), the pool's
//! retries allow it and its retry budget has room.

use http::{Request, Response};
use hyper::body::Incoming;

use super::backend::Lease;
use super::connect::send;
use super::pool::{PickHint, Pool, Tried};
use crate::admin::metrics::{class_index, ERROR_CLASS};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::health;

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
    let mut tried = Tried::new();
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
        let may_retry = (tried.len() as u32) <= pool.retries;
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
