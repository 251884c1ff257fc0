//! Every metric name lives here. Handles are resolved when a generation is built, so the request
//! path increments pre-registered atomics instead of hashing label sets per request. Gauges that
//! mirror live state (in-flight, up, active connections) are set from that state at scrape time.

use std::sync::{Arc, OnceLock};

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const REQUESTS_TOTAL: &str = "waypost_requests_total";
pub const REQUEST_DURATION: &str = "waypost_request_duration_seconds";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "waypost_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "waypost_upstream_duration_seconds";
pub const BACKEND_UP: &str = "waypost_backend_up";
pub const BACKEND_IN_FLIGHT: &str = "waypost_backend_in_flight";
pub const RETRIES_TOTAL: &str = "waypost_retries_total";
pub const NO_HEALTHY_BACKEND_TOTAL: &str = "waypost_no_healthy_backend_total";
pub const BACKEND_EJECTIONS_TOTAL: &str = "waypost_backend_ejections_total";
pub const PANIC_MODE_TOTAL: &str = "waypost_panic_mode_total";
pub const QUEUE_TIMEOUTS_TOTAL: &str = "waypost_queue_timeouts_total";
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "waypost_retry_budget_exhausted_total";
pub const CONNECTIONS_ACTIVE: &str = "waypost_connections_active";
pub const CONNECTIONS_TOTAL: &str = "waypost_connections_total";
pub const CONFIG_RELOADS_TOTAL: &str = "waypost_config_reloads_total";
pub const CONFIG_GENERATION: &str = "waypost_config_generation";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "waypost_config_last_reload_success_timestamp_seconds";
pub const STICKY_REQUESTS_TOTAL: &str = "waypost_sticky_requests_total";
pub const STICKY_COOKIES_REJECTED_TOTAL: &str = "waypost_sticky_cookies_rejected_total";
pub const GEO_REQUESTS_TOTAL: &str = "waypost_geo_requests_total";
pub const DATACENTER_FAILOVERS_TOTAL: &str = "waypost_datacenter_failovers_total";
pub const PROXY_PROTOCOL_ERRORS_TOTAL: &str = "waypost_proxy_protocol_errors_total";
pub const CLIENT_ERRORS_TOTAL: &str = "waypost_client_errors_total";
pub const SPLIT_REQUESTS_TOTAL: &str = "waypost_split_requests_total";
pub const REPLICA_LAG_SECONDS: &str = "waypost_replica_lag_seconds";
pub const DNS_RESOLUTIONS_TOTAL: &str = "waypost_dns_resolutions_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "waypost_access_log_dropped_total";
pub const TLS_HANDSHAKES_TOTAL: &str = "waypost_tls_handshakes_total";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "waypost_tls_handshake_errors_total";
pub const TLS_CERT_NOT_AFTER: &str = "waypost_tls_cert_not_after_seconds";
pub const CACHE_REQUESTS_TOTAL: &str = "waypost_cache_requests_total";
pub const CACHE_BYTES: &str = "waypost_cache_bytes";
pub const CACHE_ENTRIES: &str = "waypost_cache_entries";
pub const CACHE_PURGED_TOTAL: &str = "waypost_cache_purged_total";
pub const ERRORS_TOTAL: &str = "waypost_errors_total";
pub const RATELIMITED_TOTAL: &str = "waypost_ratelimited_total";
pub const RATELIMIT_KEYS: &str = "waypost_ratelimit_keys";
pub const RATELIMIT_EVICTIONS_TOTAL: &str = "waypost_ratelimit_evictions_total";
pub const RATELIMIT_REDIS_UP: &str = "waypost_ratelimit_redis_up";
pub const RATELIMIT_REDIS_INSTANCES: &str = "waypost_ratelimit_redis_instances";
pub const RATELIMIT_REDIS_SYNCS_TOTAL: &str = "waypost_ratelimit_redis_syncs_total";
pub const MIRROR_REQUESTS_TOTAL: &str = "waypost_mirror_requests_total";

/// Status classes as label values; index 5 is a transport failure with no status at all.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

pub const ERROR_CLASS: usize = 5;

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once) and return its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)
            .expect("static bucket list is not empty")
            // Gauges are refreshed at every scrape; ones not refreshed belong to removed
            // backends or listeners and are dropped.
            .idle_timeout(MetricKindMask::GAUGE, Some(std::time::Duration::from_secs(300)))
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host program embedding the library);
        // then this handle still renders what our own recorder holds.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by listener, route and status class."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request head to the end of the response, by route."
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        "Requests sent to backends, by pool, backend and status class (error: no response)."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time from sending to a backend to its response head."
    );
    describe_gauge!(BACKEND_UP, "1 while a backend may receive traffic, else 0.");
    describe_gauge!(BACKEND_IN_FLIGHT, "Requests in flight to a backend.");
    describe_counter!(RETRIES_TOTAL, "Requests retried on another backend.");
    describe_counter!(
        NO_HEALTHY_BACKEND_TOTAL,
        "Requests refused because no backend of the pool could take them."
    );
    describe_counter!(
        BACKEND_EJECTIONS_TOTAL,
        "Passive ejections of a backend after consecutive failed requests."
    );
    describe_counter!(
        PANIC_MODE_TOTAL,
        "Requests routed to all backends of a pool because too few were healthy."
    );
    describe_counter!(
        QUEUE_TIMEOUTS_TOTAL,
        "Requests that waited for a backend slot past queue_timeout (or found the queue full) and got 503."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "Retries not made because the pool's retry budget was spent."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections, by listener.");
    describe_counter!(CONNECTIONS_TOTAL, "Client connections accepted, by listener.");
    describe_counter!(CONFIG_RELOADS_TOTAL, "Config reloads, by result (success or failure).");
    describe_gauge!(CONFIG_GENERATION, "The generation number of the running config.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful config load."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        "Access log lines dropped because the writer fell behind."
    );
    describe_counter!(
        DNS_RESOLUTIONS_TOTAL,
        "Resolutions of backend host names, by name and result (success or failure)."
    );
    describe_counter!(STICKY_REQUESTS_TOTAL, "Requests on sticky routes, by result: hit (the pinned backend), new (no valid cookie), moved (the pinned backend was unavailable).");
    describe_counter!(
        STICKY_COOKIES_REJECTED_TOTAL,
        "Sticky cookies ignored, by reason (malformed, bad_signature, expired, wrong_purpose)."
    );
    describe_counter!(
        SPLIT_REQUESTS_TOTAL,
        "Requests on split routes, by target (primary or replica)."
    );
    describe_gauge!(
        REPLICA_LAG_SECONDS,
        Unit::Seconds,
        "Replication lag the backend's health probe last reported (lag_header)."
    );
    describe_counter!(
        GEO_REQUESTS_TOTAL,
        "Requests on geo routes, by client region and the data center that served them."
    );
    describe_counter!(
        DATACENTER_FAILOVERS_TOTAL,
        "Geo requests served by another data center than their region's own, by from and to."
    );
    describe_counter!(
        PROXY_PROTOCOL_ERRORS_TOTAL,
        "Connections closed because their PROXY protocol header was missing, malformed or late."
    );
    describe_counter!(
        CLIENT_ERRORS_TOTAL,
        "Requests refused for breaking a client limit or HTTP framing, by listener and reason (header_timeout, header_too_large, bad_framing, body_too_large)."
    );
    describe_counter!(TLS_HANDSHAKES_TOTAL, "TLS handshakes completed, by listener.");
    describe_counter!(
        TLS_HANDSHAKE_ERRORS_TOTAL,
        "TLS handshakes that failed or timed out, by listener."
    );
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        "Requests on cached routes, by route and result (hit, miss, stale, revalidated, bypass)."
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Memory held by cached responses, headers and bodies (as weighed against [cache] max_size)."
    );
    describe_gauge!(CACHE_ENTRIES, "Stored responses (each Vary variant counts).");
    describe_counter!(CACHE_PURGED_TOTAL, "Stored responses removed by POST /cache/purge.");
    describe_counter!(
        ERRORS_TOTAL,
        "Requests answered from the error table, by route (\"\" when none matched), kind (the access log's error flag) and blame (client, upstream or proxy)."
    );
    describe_gauge!(
        TLS_CERT_NOT_AFTER,
        Unit::Seconds,
        "Unix time at which a served certificate expires, by certificate file."
    );
    describe_counter!(
        RATELIMITED_TOTAL,
        "Requests refused with 429 by a rate limit, by route and limit."
    );
    describe_gauge!(
        RATELIMIT_KEYS,
        "Keys a rate limit is tracking (not yet back to a full burst), by limit; at most its max_keys."
    );
    describe_counter!(
        RATELIMIT_EVICTIONS_TOTAL,
        "Active keys dropped from a full rate-limit table for a new key (that key restarts with a full burst), by limit."
    );
    describe_gauge!(
        RATELIMIT_REDIS_UP,
        "1 while rate limits are shared through Redis, 0 while they fall back ([ratelimit] on_redis_down)."
    );
    describe_gauge!(
        RATELIMIT_REDIS_INSTANCES,
        "Instances sharing the rate limits, as last counted in Redis: each one's local share is 1/N."
    );
    describe_counter!(
        RATELIMIT_REDIS_SYNCS_TOTAL,
        "Exchanges of rate-limit counts with Redis, by result: ok, error, timeout."
    );
    describe_counter!(
        MIRROR_REQUESTS_TOTAL,
        "Copies of requests for a route's shadow pool, by result: ok (the shadow answered), error, dropped (too many in flight), too_large (body over max_body_bytes), incomplete (the client's body did not finish)."
    );
}

/// Per-route handles: requests by listener and status class, and the duration histogram.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Per listener, per status class 1xx..5xx (a client always gets a status).
    requests: Vec<[Counter; 5]>,
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str, listeners: &[Arc<str>]) -> RouteMetrics {
        let requests = listeners
            .iter()
            .map(|l| {
                [0, 1, 2, 3, 4].map(|i| {
                    let class = STATUS_CLASSES[i];
                    counter!(REQUESTS_TOTAL, "listener" => l.to_string(), "route" => route.to_string(), "status_class" => class)
                })
            })
            .collect();
        RouteMetrics {
            requests,
            duration: histogram!(REQUEST_DURATION, "route" => route.to_string()),
        }
    }

    pub fn request(&self, listener: Option<crate::config::ListenerId>, class: usize) {
        if let Some(per) = listener.and_then(|l| self.requests.get(l.index())) {
            per[class].increment(1);
        }
    }
}

/// waypost_cache_requests_total for one route and result.
pub fn cache_counter(route: &str, result: &'static str) -> Counter {
    counter!(CACHE_REQUESTS_TOTAL, "route" => route.to_string(), "result" => result)
}

pub fn cache_purged(n: u64) {
    counter!(CACHE_PURGED_TOTAL).increment(n);
}

pub fn set_cache(bytes: u64, entries: u64) {
    gauge!(CACHE_BYTES).set(bytes as f64);
    gauge!(CACHE_ENTRIES).set(entries as f64);
}

/// Requests that matched no route still count, under route "".
/// One request answered with an error of `kind` (a [`crate::error::ProxyError::flag`]).
pub fn error(route: &str, kind: &'static str, blame: &'static str) {
    counter!(ERRORS_TOTAL, "route" => route.to_string(), "kind" => kind, "blame" => blame).increment(1);
}

pub fn unrouted(listener: &str, class: usize) {
    counter!(REQUESTS_TOTAL, "listener" => listener.to_string(), "route" => "", "status_class" => STATUS_CLASSES[class]).increment(1);
}

#[derive(Debug)]
pub struct BackendMetrics {
    upstream: [Counter; 6],
    pub duration: Histogram,
    pub ejections: Counter,
}

impl BackendMetrics {
    pub fn new(pool: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            upstream: STATUS_CLASSES.map(|class| {
                counter!(UPSTREAM_REQUESTS_TOTAL, "pool" => pool.to_string(), "backend" => backend.to_string(), "status_class" => class)
            }),
            duration: histogram!(UPSTREAM_DURATION, "pool" => pool.to_string(), "backend" => backend.to_string()),
            ejections: counter!(BACKEND_EJECTIONS_TOTAL, "pool" => pool.to_string(), "backend" => backend.to_string()),
        }
    }

    pub fn response(&self, class: usize) {
        self.upstream[class].increment(1);
    }
}

#[derive(Debug)]
pub struct PoolMetrics {
    pub retries: Counter,
    pub no_healthy: Counter,
    pub panic: Counter,
    pub queue_timeouts: Counter,
    pub budget_exhausted: Counter,
}

impl PoolMetrics {
    pub fn new(pool: &str) -> PoolMetrics {
        PoolMetrics {
            retries: counter!(RETRIES_TOTAL, "pool" => pool.to_string()),
            no_healthy: counter!(NO_HEALTHY_BACKEND_TOTAL, "pool" => pool.to_string()),
            panic: counter!(PANIC_MODE_TOTAL, "pool" => pool.to_string()),
            queue_timeouts: counter!(QUEUE_TIMEOUTS_TOTAL, "pool" => pool.to_string()),
            budget_exhausted: counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "pool" => pool.to_string()),
        }
    }
}

pub fn connections_total(listener: &str) -> Counter {
    counter!(CONNECTIONS_TOTAL, "listener" => listener.to_string())
}

pub fn set_connections_active(listener: &str, n: usize) {
    gauge!(CONNECTIONS_ACTIVE, "listener" => listener.to_string()).set(n as f64);
}

pub fn set_backend(pool: &str, backend: &str, up: bool, in_flight: usize) {
    gauge!(BACKEND_UP, "pool" => pool.to_string(), "backend" => backend.to_string()).set(if up { 1.0 } else { 0.0 });
    gauge!(BACKEND_IN_FLIGHT, "pool" => pool.to_string(), "backend" => backend.to_string()).set(in_flight as f64);
}

pub fn reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

pub fn set_generation(generation: u64, last_success_unix: f64) {
    gauge!(CONFIG_GENERATION).set(generation as f64);
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(last_success_unix);
}

pub fn access_log_dropped() {
    counter!(ACCESS_LOG_DROPPED_TOTAL).increment(1);
}

pub fn dns_resolution(name: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    counter!(DNS_RESOLUTIONS_TOTAL, "name" => name.to_string(), "result" => result).increment(1);
}

/// A sticky route's counters.
#[derive(Debug)]
pub struct StickyMetrics {
    pub hit: Counter,
    pub new: Counter,
    pub moved: Counter,
    route: String,
}

impl StickyMetrics {
    pub fn new(route: &str) -> StickyMetrics {
        let c =
            |result: &'static str| counter!(STICKY_REQUESTS_TOTAL, "route" => route.to_string(), "result" => result);
        StickyMetrics {
            hit: c("hit"),
            new: c("new"),
            moved: c("moved"),
            route: route.to_string(),
        }
    }

    /// A cookie that was ignored (rare: dynamic labels are fine here).
    pub fn rejected(&self, reason: &'static str) {
        counter!(STICKY_COOKIES_REJECTED_TOTAL, "route" => self.route.clone(), "reason" => reason).increment(1);
    }
}

pub fn split_counter(route: &str, target: &'static str) -> Counter {
    counter!(SPLIT_REQUESTS_TOTAL, "route" => route.to_string(), "target" => target)
}

pub fn set_replica_lag(pool: &str, backend: &str, seconds: f64) {
    gauge!(REPLICA_LAG_SECONDS, "pool" => pool.to_string(), "backend" => backend.to_string()).set(seconds);
}

pub fn geo_counter(region: &str, datacenter: &str) -> Counter {
    counter!(GEO_REQUESTS_TOTAL, "region" => region.to_string(), "datacenter" => datacenter.to_string())
}

pub fn datacenter_failover(from: &str, to: &str) {
    counter!(DATACENTER_FAILOVERS_TOTAL, "from" => from.to_string(), "to" => to.to_string()).increment(1);
}

pub fn proxy_protocol_error(listener: &str) {
    counter!(PROXY_PROTOCOL_ERRORS_TOTAL, "listener" => listener.to_string()).increment(1);
}

/// waypost_client_errors_total of one listener, one handle per reason.
#[derive(Debug, Clone)]
pub struct ClientErrors {
    pub header_timeout: Counter,
    pub header_too_large: Counter,
    pub bad_framing: Counter,
    pub body_too_large: Counter,
}

impl ClientErrors {
    pub fn new(listener: &str) -> ClientErrors {
        let c = |reason: &'static str| counter!(CLIENT_ERRORS_TOTAL, "listener" => listener.to_string(), "reason" => reason);
        ClientErrors {
            header_timeout: c("header_timeout"),
            header_too_large: c("header_too_large"),
            bad_framing: c("bad_framing"),
            body_too_large: c("body_too_large"),
        }
    }

    /// Count one refusal by its `reason` label.
    pub fn count(&self, reason: &str) {
        match reason {
            "header_timeout" => &self.header_timeout,
            "header_too_large" => &self.header_too_large,
            "body_too_large" => &self.body_too_large,
            _ => &self.bad_framing,
        }
        .increment(1);
    }
}

pub fn tls_handshakes(listener: &str) -> Counter {
    counter!(TLS_HANDSHAKES_TOTAL, "listener" => listener.to_string())
}

pub fn tls_handshake_errors(listener: &str) -> Counter {
    counter!(TLS_HANDSHAKE_ERRORS_TOTAL, "listener" => listener.to_string())
}

/// Expiry of a served certificate, labelled with its file.
pub fn set_cert_not_after(certificate: &str, unix: i64) {
    gauge!(TLS_CERT_NOT_AFTER, "certificate" => certificate.to_string()).set(unix as f64);
}

pub fn ratelimited_counter(route: &str, limit: &str) -> Counter {
    counter!(RATELIMITED_TOTAL, "route" => route.to_string(), "limit" => limit.to_string())
}

pub fn ratelimit_evictions(limit: &str) -> Counter {
    counter!(RATELIMIT_EVICTIONS_TOTAL, "limit" => limit.to_string())
}

pub fn set_ratelimit_keys(limit: &str, n: usize) {
    gauge!(RATELIMIT_KEYS, "limit" => limit.to_string()).set(n as f64);
}

pub fn redis_syncs(result: &'static str) -> Counter {
    counter!(RATELIMIT_REDIS_SYNCS_TOTAL, "result" => result)
}

pub fn set_redis(up: bool, instances: u32) {
    gauge!(RATELIMIT_REDIS_UP).set(if up { 1.0 } else { 0.0 });
    gauge!(RATELIMIT_REDIS_INSTANCES).set(instances as f64);
}

pub fn mirror_counter(route: &str, result: &'static str) -> Counter {
    counter!(MIRROR_REQUESTS_TOTAL, "route" => route.to_string(), "result" => result)
}

#[cfg(test)]
mod tests {
    /// Every metric name gets a HELP line: a metric without one fails `promtool check metrics`,
    /// and an edit that adds a name but misses `describe` is easy to make.
    #[test]
    fn every_metric_name_is_described() {
        let src = include_str!("metrics.rs");
        let describe_start = src.find("fn describe()").expect("describe");
        let describe_end = describe_start + src[describe_start..].find("\n}\n").expect("end of describe");
        let describe = &src[describe_start..describe_end];
        let names: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter(|l| l.contains("\"waypost_"))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(names.len() > 20, "{names:?}");
        let missing: Vec<&&str> = names.iter().filter(|n| !describe.contains(**n)).collect();
        assert!(missing.is_empty(), "metrics without a description: {missing:?}");
    }

    #[test]
    fn status_classes_cover_every_status() {
        assert_eq!(super::class_index(101), 0);
        assert_eq!(super::class_index(204), 1);
        assert_eq!(super::class_index(308), 2);
        assert_eq!(super::class_index(431), 3);
        assert_eq!(super::class_index(504), 4);
        assert_eq!(super::class_index(999), 4);
    }
}
