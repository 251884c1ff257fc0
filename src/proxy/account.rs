//! The per-request context and the pipeline's one exit: who asked, which route took it, when it
//! started and its access-log record; and, once the pipeline returns, the response with the
//! accounting (metrics, access log) attached to its body, or the error turned into its response
//! through the one error table.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::ConnInfo;
use crate::accesslog::{flags, Record};
use crate::admin::metrics::{self, class_index};
use crate::body::{BoxError, ProxyBody};
use crate::clock::{self, Instant};
use crate::error::{Blame, ProxyError};
use crate::headers::VIA_VALUE;
use crate::state::{ListenerId, RouteId, State};

/// One request's context: where it came in, the route once known, its start, and its access-log
/// record (None when the access log is off).
pub struct Account {
    listener: Option<ListenerId>,
    route: Option<RouteId>,
    started: Instant,
    log: Option<Box<Record>>,
}

impl Account {
    /// Taken before the request is rewritten (all cheap reference clones).
    pub fn start<B>(state: &State, conn: &ConnInfo, req: &Request<B>) -> Account {
        let log = state.access_log.as_ref().map(|sink| {
            let agent = |name| sink.wants_agent().then(|| req.headers().get(name).cloned()).flatten();
            Box::new(Record {
                time: clock::wall(),
                listener: conn.listener.clone(),
                client: conn.peer.ip(),
                method: req.method().clone(),
                host: super::host_value(req.headers(), req.uri()),
                uri: req.uri().clone(),
                version: req.version(),
                status: 0,
                bytes: 0,
                duration: Default::default(),
                route: None,
                pool: None,
                backend: None,
                flags: 0,
                error: None,
                blame: None,
                target: None,
                cache: None,
                region: None,
                datacenter: None,
                user_agent: agent(header::USER_AGENT),
                referer: agent(header::REFERER),
            })
        });
        Account {
            listener: state.listener_id(&conn.listener),
            route: None,
            started: clock::now(),
            log,
        }
    }

    /// The route is known: requests are counted under it from here on.
    pub fn routed(&mut self, id: RouteId, name: &Arc<str>) {
        self.route = Some(id);
        self.note(|l| l.route = Some(name.clone()));
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Fill in access-log fields (nothing when the access log is off).
    pub fn note(&mut self, f: impl FnOnce(&mut Record)) {
        if let Some(l) = self.log.as_deref_mut() {
            f(l);
        }
    }

    /// The pipeline's one exit: its response, or its error through the error table, with the
    /// final accounting attached to the body.
    pub fn respond(
        mut self,
        state: Arc<State>,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Response<ResponseBody> {
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                self.failed(&state, &e);
                error_response(&e)
            }
        };
        let (parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        self.note(|l| l.status = status);
        Response::from_parts(
            parts,
            ResponseBody {
                inner: body,
                finish: Some(Finish {
                    state,
                    account: self,
                    status,
                    bytes: 0,
                }),
            },
        )
    }

    /// An error is counted by kind and blame, logged at the level its blame deserves (a client's
    /// fault is no operator's alarm), and flagged in the access log.
    fn failed(&mut self, state: &State, e: &ProxyError) {
        let blame = e.blame();
        let route = self.route.map(|r| &*state.route(r).name).unwrap_or("");
        metrics::error(route, e.flag(), blame.label());
        match blame {
            Blame::Client => tracing::debug!(route, error = %e, "request refused"),
            Blame::Upstream | Blame::Proxy => {
                tracing::warn!(route, error = %e, blame = blame.label(), "request failed")
            }
        }
        self.note(|l| {
            l.error = Some(e.flag());
            l.blame = Some(blame.label());
        });
    }
}

/// The response to an error: its status and one-line body from the error table.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    h.insert(header::VIA, VIA_VALUE);
    resp
}

/// Everything the final accounting needs once the response is done.
struct Finish {
    state: Arc<State>,
    account: Account,
    status: u16,
    bytes: u64,
}

impl Finish {
    fn complete(self, aborted: bool) {
        let Finish {
            state,
            account,
            status,
            bytes,
        } = self;
        let class = class_index(status);
        let elapsed = account.started.elapsed();
        match account.route {
            Some(r) => {
                let route = state.route(r);
                route.metrics.request(account.listener, class);
                route.metrics.duration.record(elapsed.as_secs_f64());
            }
            None => metrics::unrouted(state.listener_name(account.listener), class),
        }
        if let (Some(mut rec), Some(sink)) = (account.log, state.access_log.as_ref()) {
            rec.bytes = bytes;
            rec.duration = elapsed;
            if aborted {
                rec.flags |= flags::ABORTED;
            }
            sink.log(*rec);
        }
    }
}

/// The body sent to the client: counts bytes and runs the final accounting when the body ends
/// (or is dropped before its end, which the log marks as aborted).
pub struct ResponseBody {
    inner: ProxyBody,
    finish: Option<Finish>,
}

impl ResponseBody {
    /// A response made outside any pipeline (a redirect): nothing to account for.
    pub fn plain(inner: ProxyBody) -> ResponseBody {
        ResponseBody { inner, finish: None }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(fin)) = (f.data_ref(), this.finish.as_mut()) {
                    fin.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.complete(false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.finish.take() {
                    f.complete(true);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.complete(!self.inner.is_end_stream());
        }
    }
}
