//! The one error table of the request path: every way a request can fail, with its status, its
//! one-line reason, who is to blame and whether another backend may be tried.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("no healthy backend in pool")]
    NoHealthyBackend,
    #[error("every backend of the pool is at its connection limit and the wait timed out")]
    QueueTimeout,
    #[error("no healthy primary for a write")]
    PrimaryUnavailable,
    #[error("backend connection failed: {0}")]
    UpstreamConnect(std::io::Error),
    #[error("backend connection timed out")]
    UpstreamConnectTimeout,
    #[error("backend connection broke: {0}")]
    UpstreamBroken(hyper::Error),
    #[error("backend did not answer in time")]
    UpstreamTimeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body larger than max_body_bytes")]
    BodyTooLarge,
}

/// Who caused a failure: drives logs and tells operators where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Proxy,
}

impl Blame {
    /// The `blame` label of waypost_errors_total and the access log's `blame` field.
    pub fn label(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Proxy => "proxy",
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyBackend | ProxyError::QueueTimeout | ProxyError::PrimaryUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamBroken(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The one-line body sent to the client. It names the failure, never internal addresses.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "404 no route for this host and path\n",
            ProxyError::NoHealthyBackend => "503 no healthy backend available, retry later\n",
            ProxyError::QueueTimeout => "503 all backends busy, retry later\n",
            ProxyError::PrimaryUnavailable => {
                "503 primary unavailable: writes are refused until it recovers, retry later\n"
            }
            ProxyError::UpstreamConnect(_) => "502 backend unreachable\n",
            ProxyError::UpstreamConnectTimeout => "504 backend connection timed out\n",
            ProxyError::UpstreamBroken(_) => "502 backend closed the connection or sent a broken response\n",
            ProxyError::UpstreamTimeout => "504 backend did not answer in time\n",
            ProxyError::BadRequest(_) => "400 bad request\n",
            ProxyError::BodyTooLarge => "413 request body too large\n",
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute | ProxyError::BadRequest(_) | ProxyError::BodyTooLarge => Blame::Client,
            ProxyError::NoHealthyBackend | ProxyError::QueueTimeout => Blame::Proxy,
            ProxyError::PrimaryUnavailable => Blame::Upstream,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UpstreamTimeout => Blame::Upstream,
        }
    }

    /// Whether nothing reached the backend, so another backend may be tried whatever the method.
    pub fn nothing_sent(&self) -> bool {
        match self {
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamConnectTimeout => true,
            ProxyError::NoRoute
            | ProxyError::NoHealthyBackend
            | ProxyError::QueueTimeout
            | ProxyError::PrimaryUnavailable
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge => false,
        }
    }

    /// Whether a retry elsewhere may help once the request was sent (an idempotent request whose
    /// body was not streamed). A timeout is not retried: the backend may still be working on it,
    /// and a second full wait doubles the client's.
    pub fn retry_after_send(&self) -> bool {
        match self {
            ProxyError::UpstreamBroken(_) => true,
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamConnectTimeout => true,
            ProxyError::NoRoute
            | ProxyError::NoHealthyBackend
            | ProxyError::QueueTimeout
            | ProxyError::PrimaryUnavailable
            | ProxyError::UpstreamTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge => false,
        }
    }

    /// Short word for the access log's `flags`.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::QueueTimeout => "queue_timeout",
            ProxyError::PrimaryUnavailable => "primary_unavailable",
            ProxyError::UpstreamConnect(_) => "upstream_connect_error",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamBroken(_) => "upstream_broken",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge => "body_too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn each_error_has_its_status() {
        let table: Vec<(ProxyError, u16)> = vec![
            (ProxyError::NoRoute, 404),
            (ProxyError::NoHealthyBackend, 503),
            (ProxyError::QueueTimeout, 503),
            (ProxyError::PrimaryUnavailable, 503),
            (ProxyError::UpstreamConnect(io()), 502),
            (ProxyError::UpstreamConnectTimeout, 504),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::BodyTooLarge, 413),
        ];
        for (e, code) in table {
            assert_eq!(e.status().as_u16(), code, "{e}");
            assert!(e.body().starts_with(&code.to_string()), "{e}");
            assert!(e.body().ends_with('\n') && e.body().lines().count() == 1);
        }
    }

    #[test]
    fn only_failures_before_sending_are_always_retryable() {
        assert!(ProxyError::UpstreamConnect(io()).nothing_sent());
        assert!(ProxyError::UpstreamConnectTimeout.nothing_sent());
        assert!(!ProxyError::UpstreamTimeout.nothing_sent());
        assert!(!ProxyError::UpstreamTimeout.retry_after_send());
        assert_eq!(ProxyError::NoRoute.blame(), Blame::Client);
        assert_eq!(ProxyError::UpstreamTimeout.blame(), Blame::Upstream);
    }
}
