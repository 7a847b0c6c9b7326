//! Prometheus metrics (pipeline stage 13), exposed on the admin listener only.
//!
//! Names are `portcullis_*`, in base units, counters end in `_total`. Label values come from
//! bounded sets (route names from config, a fixed method list, status classes) so a client can
//! never grow the series count.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports; cloning is one reference-count increment.
#[derive(Clone)]
pub struct Metrics(Arc<MetricsInner>);

impl std::ops::Deref for Metrics {
    type Target = MetricsInner;
    fn deref(&self) -> &MetricsInner {
        &self.0
    }
}

/// The metric handles behind [`Metrics`].
pub struct MetricsInner {
    registry: Registry,
    none_route: RouteMetrics,
    /// Requests by route, method and status class.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub request_duration: HistogramVec,
    /// Upstream failures by cluster and kind.
    pub upstream_errors: IntCounterVec,
    /// Requests being processed.
    pub in_flight: IntGauge,
    /// Open client connections by listener.
    pub connections_open: IntGaugeVec,
    /// Client connections by listener and result (`accepted`, `rejected_limit`).
    pub connections: IntCounterVec,
    /// Configuration reloads by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// Unix time of the last successful config load.
    pub config_last_success: IntGauge,
    /// Responses answered by the gateway itself, by problem kind.
    pub errors: IntCounterVec,
    /// Upstream request latency (until response headers) by cluster.
    pub upstream_duration: HistogramVec,
    /// TLS handshakes by listener and result.
    pub tls_handshakes: IntCounterVec,
    /// Accepted TLS connections by listener, version and ALPN protocol.
    pub tls_connections: IntCounterVec,
    /// Not-after of loaded certificates (Unix seconds) by listener, kind and subject.
    pub tls_not_after: IntGaugeVec,
    /// TLS material reloads by listener and result.
    pub tls_reloads: IntCounterVec,
    /// Authentication decisions by result (`ok` or a refusal reason).
    pub authn: IntCounterVec,
    /// Verified-token cache lookups by result (`hit`, `miss`).
    pub jwt_cache: IntCounterVec,
    /// JWKS fetches by issuer and result (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// Keys in each issuer's current key set.
    pub jwks_keys: IntGaugeVec,
    /// 1 while an issuer's JWKS fetches fail and its last good keys serve.
    pub jwks_stale: IntGaugeVec,
    /// Authorization decisions by deciding rule and result (`allow`, `deny`, `would_deny`).
    pub authz_decisions: IntCounterVec,
    /// Ownership checks that did not confirm ownership, by kind.
    pub ownership_failures: IntCounterVec,
    /// Audit records by result (`written`, `dropped`, `failed`).
    pub audit: IntCounterVec,
    /// Tenant rate-limit decisions by tier and result.
    pub ratelimit_decisions: IntCounterVec,
    /// Pre-authentication limit decisions by limit (`per_ip`, `per_client_cert`) and result.
    pub preauth_decisions: IntCounterVec,
    /// Upstream quota decisions by cluster and result.
    pub upstream_quota_decisions: IntCounterVec,
    /// Rate-limit Redis calls that failed, by kind (`timeout`, `error`).
    pub ratelimit_redis_errors: IntCounterVec,
    /// 1 while the rate-limit Redis is considered down and tiers apply their failure mode.
    pub ratelimit_fallback_active: IntGauge,
}

impl std::fmt::Debug for MetricsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsInner")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Errors
    /// Fails only if two metrics share a name (a programming error).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests handled, by route, method and status class.",
            ),
            &["route", "method", "status_class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request to response headers, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Upstream failures, by cluster and kind.",
            ),
            &["cluster", "kind"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_duration_seconds",
                "Time for the upstream to answer with headers, by cluster.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster"],
        )?;
        let in_flight = IntGauge::new(
            "portcullis_requests_in_flight",
            "Requests currently being processed.",
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "portcullis_connections_open",
                "Open client connections, by listener.",
            ),
            &["listener"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_total",
                "Client connections, by listener and result.",
            ),
            &["listener", "result"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )?;
        let config_last_success = IntGauge::new(
            "portcullis_config_last_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "portcullis_errors_total",
                "Responses produced by the gateway itself, by problem kind.",
            ),
            &["kind"],
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_handshakes_total",
                "TLS handshakes, by listener and result.",
            ),
            &["listener", "result"],
        )?;
        let tls_connections = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_connections_total",
                "Accepted TLS connections, by listener, version and ALPN.",
            ),
            &["listener", "version", "alpn"],
        )?;
        let tls_not_after = IntGaugeVec::new(
            Opts::new(
                "portcullis_tls_certificate_not_after_seconds",
                "Expiry (Unix seconds) of each loaded server certificate and client CA.",
            ),
            &["listener", "kind", "subject"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_reloads_total",
                "TLS material reloads, by listener and result.",
            ),
            &["listener", "result"],
        )?;
        let authn = IntCounterVec::new(
            Opts::new(
                "portcullis_authn_total",
                "Authentication decisions, by result (ok or the refusal reason).",
            ),
            &["result"],
        )?;
        let jwt_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_jwt_cache_total",
                "Verified-token cache lookups, by result.",
            ),
            &["result"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_fetches_total",
                "JWKS fetches, by issuer and result.",
            ),
            &["issuer", "result"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_keys",
                "Keys in each issuer's current key set.",
            ),
            &["issuer"],
        )?;
        let jwks_stale = IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_stale",
                "1 while an issuer's JWKS fetches fail and its last good keys serve.",
            ),
            &["issuer"],
        )?;
        let authz_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_authz_decisions_total",
                "Authorization decisions, by deciding rule and result.",
            ),
            &["rule", "result"],
        )?;
        let ownership_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_ownership_failures_total",
                "Ownership checks that did not confirm ownership, by kind (not_owned, missing_ref, lookup_error, timeout).",
            ),
            &["kind"],
        )?;
        let audit = IntCounterVec::new(
            Opts::new(
                "portcullis_audit_records_total",
                "Audit records, by result (written, dropped, failed).",
            ),
            &["result"],
        )?;
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_ratelimit_decisions_total",
                "Tenant rate-limit decisions, by tier and result (allow, deny, fallback_allow, fallback_deny, unavailable).",
            ),
            &["tier", "result"],
        )?;
        let preauth_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_preauth_limit_decisions_total",
                "Pre-authentication limit decisions, by limit (per_ip, per_client_cert) and result.",
            ),
            &["limit", "result"],
        )?;
        let upstream_quota_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_quota_decisions_total",
                "Upstream quota decisions, by cluster and result.",
            ),
            &["cluster", "result"],
        )?;
        let ratelimit_redis_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_ratelimit_redis_errors_total",
                "Rate-limit Redis calls that failed, by kind (timeout, error).",
            ),
            &["kind"],
        )?;
        let ratelimit_fallback_active = IntGauge::new(
            "portcullis_ratelimit_fallback_active",
            "1 while the rate-limit Redis is down and tiers apply their failure mode.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_success.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        registry.register(Box::new(tls_connections.clone()))?;
        registry.register(Box::new(tls_not_after.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(authn.clone()))?;
        registry.register(Box::new(jwt_cache.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(jwks_stale.clone()))?;
        registry.register(Box::new(authz_decisions.clone()))?;
        registry.register(Box::new(ownership_failures.clone()))?;
        registry.register(Box::new(audit.clone()))?;
        registry.register(Box::new(ratelimit_decisions.clone()))?;
        registry.register(Box::new(preauth_decisions.clone()))?;
        registry.register(Box::new(upstream_quota_decisions.clone()))?;
        registry.register(Box::new(ratelimit_redis_errors.clone()))?;
        registry.register(Box::new(ratelimit_fallback_active.clone()))?;
        Ok(Self(Arc::new(MetricsInner {
            registry,
            none_route: RouteMetrics::new("none".into()),
            requests,
            request_duration,
            upstream_errors,
            in_flight,
            connections_open,
            connections,
            config_reloads,
            config_last_success,
            errors,
            upstream_duration,
            tls_handshakes,
            tls_connections,
            tls_not_after,
            tls_reloads,
            authn,
            jwt_cache,
            jwks_fetches,
            jwks_keys,
            jwks_stale,
            authz_decisions,
            ownership_failures,
            audit,
            ratelimit_decisions,
            preauth_decisions,
            upstream_quota_decisions,
            ratelimit_redis_errors,
            ratelimit_fallback_active,
        })))
    }

    /// Counts a finished request (route `None` = unmatched) and its latency. The route's
    /// handles are resolved once and kept in the compiled route, so the hot path does no label
    /// lookup, no hashing and takes no lock.
    pub fn observe_request(
        &self,
        route: Option<&RouteMetrics>,
        method: &http::Method,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        let r = route.unwrap_or(&self.none_route);
        let m = method_index(method);
        let c = class_index(status);
        r.requests[m][c]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[&r.name, METHODS[m], CLASSES[c]])
            })
            .inc();
        r.duration
            .get_or_init(|| self.request_duration.with_label_values(&[&r.name]))
            .observe(elapsed.as_secs_f64());
    }

    /// Records the time an upstream took to answer with headers.
    pub fn observe_upstream(&self, cell: &OnceLock<Histogram>, cluster: &str, elapsed: Duration) {
        cell.get_or_init(|| self.upstream_duration.with_label_values(&[cluster]))
            .observe(elapsed.as_secs_f64());
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// Counts a finished configuration load.
    pub fn record_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.config_last_success
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }
}

/// A route's metric handles, resolved on first use and kept with the compiled route.
#[derive(Debug)]
pub struct RouteMetrics {
    /// The route's name (the `route` label).
    pub name: Arc<str>,
    duration: OnceLock<Histogram>,
    requests: [[OnceLock<IntCounter>; 5]; 8],
}

impl RouteMetrics {
    /// Handles for the route `name`.
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            duration: OnceLock::new(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &http::Method) -> usize {
    let label = method_label(m);
    METHODS.iter().position(|x| *x == label).unwrap_or(7)
}

fn class_index(s: http::StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The method label: the standard methods, everything else `OTHER` (bounded cardinality).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The status-class label (`2xx` …).
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
