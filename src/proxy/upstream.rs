//! Upstream clusters (pipeline stage 11): endpoints, round-robin choice, passive health and the
//! pooled keep-alive clients (hyper-util) that carry requests to them.
//!
//! A connect failure ejects the endpoint for the cluster's `eject_for`; when every endpoint is
//! ejected the cluster answers [`UpstreamError::NoHealthyEndpoint`] at once instead of waiting
//! on dead hosts. Routes hold an `Arc<Cluster>`, so a reload never changes the cluster of a
//! request in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::pool::{EndpointPool, WorkerPools};

/// Why the upstream could not answer. Variants carry detail for logs only.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused or dropped before a response.
    #[error("upstream {cluster} endpoint {endpoint} refused: {source}")]
    Refused {
        /// Cluster name.
        cluster: Arc<str>,
        /// Endpoint address.
        endpoint: Arc<str>,
        /// The underlying error.
        source: crate::BoxError,
    },
    /// The upstream broke the protocol or reset the exchange.
    #[error("upstream {cluster} endpoint {endpoint} failed: {source}")]
    Protocol {
        /// Cluster name.
        cluster: Arc<str>,
        /// Endpoint address.
        endpoint: Arc<str>,
        /// The underlying error.
        source: crate::BoxError,
    },
    /// Every endpoint is ejected.
    #[error("upstream {cluster} has no healthy endpoint")]
    NoHealthyEndpoint {
        /// Cluster name.
        cluster: Arc<str>,
    },
    /// No response headers within the timeout.
    #[error("upstream {cluster} endpoint {endpoint} timed out after {after:?}")]
    Timeout {
        /// Cluster name.
        cluster: Arc<str>,
        /// Endpoint address.
        endpoint: Arc<str>,
        /// The timeout that expired.
        after: Duration,
    },
}

impl UpstreamError {
    /// The metrics label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Protocol { .. } => "protocol",
            Self::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Self::Timeout { .. } => "timeout",
        }
    }
}

/// The protocol spoken to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2: prior knowledge in cleartext (h2c), or ALPN `h2` over TLS.
    H2,
}

/// One address of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, as a URI authority.
    pub authority: Authority,
    /// Milliseconds since the cluster epoch until which this endpoint is ejected (0 = healthy).
    ejected_until_ms: AtomicU64,
}

/// The pooled connections a route uses to reach its cluster (one set per worker).
pub type UpstreamClient = WorkerPools;

/// A named group of endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// Cluster name (logs and metrics only; never sent to clients).
    pub name: Arc<str>,
    /// Endpoints in configured order.
    pub endpoints: Vec<Endpoint>,
    /// HTTP/1.1 or h2c.
    pub protocol: UpstreamProtocol,
    /// How long a failed endpoint is skipped (zero: never).
    pub eject_for: Duration,
    /// TLS to the endpoints, when configured.
    pub tls: Option<crate::tls::client::Connector>,
    /// The cluster's upstream latency histogram, resolved on first use.
    pub upstream_duration: std::sync::OnceLock<prometheus::Histogram>,
    next: AtomicUsize,
    epoch: Instant,
}

/// Pool settings shared by a cluster's clients.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// Most idle connections kept per endpoint.
    pub max_idle_per_host: usize,
}

impl Cluster {
    /// Creates a cluster.
    pub fn new(
        name: &str,
        endpoints: Vec<(String, Authority)>,
        protocol: UpstreamProtocol,
        eject_for: Duration,
        tls: Option<crate::tls::client::Connector>,
    ) -> Self {
        Self {
            name: name.into(),
            endpoints: endpoints
                .into_iter()
                .map(|(a, authority)| Endpoint {
                    address: a.into(),
                    authority,
                    ejected_until_ms: AtomicU64::new(0),
                })
                .collect(),
            protocol,
            eject_for,
            tls,
            upstream_duration: std::sync::OnceLock::new(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// Builds connection pools (one per endpoint) for one worker, with the given connect timeout.
    pub fn client(&self, connect_timeout: Duration, pool: PoolSettings) -> UpstreamClient {
        let h2 = self.protocol == UpstreamProtocol::H2;
        WorkerPools {
            endpoints: self
                .endpoints
                .iter()
                .map(|e| {
                    let tls = self.tls.as_ref().and_then(|c| {
                        let name = c.server_name.clone().or_else(|| {
                            rustls::pki_types::ServerName::try_from(
                                e.authority.host().trim_matches(['[', ']']).to_owned(),
                            )
                            .ok()
                        })?;
                        Some((c.config.clone(), name))
                    });
                    Arc::new(EndpointPool::new(
                        e.address.clone(),
                        h2,
                        connect_timeout,
                        pool.idle_timeout,
                        pool.max_idle_per_host,
                        tls,
                    ))
                })
                .collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Picks the next healthy endpoint, round-robin.
    ///
    /// # Errors
    /// [`UpstreamError::NoHealthyEndpoint`] when every endpoint is ejected.
    pub fn pick(&self) -> Result<(usize, &Endpoint), UpstreamError> {
        let n = self.endpoints.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        let mut now = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.endpoints[idx];
            let until = ep.ejected_until_ms.load(Ordering::Relaxed);
            // Healthy endpoints (0) are taken without reading the clock.
            if until == 0 || until <= *now.get_or_insert_with(|| self.now_ms()) {
                return Ok((idx, ep));
            }
        }
        Err(UpstreamError::NoHealthyEndpoint {
            cluster: self.name.clone(),
        })
    }

    /// Marks `ep` unhealthy for `eject_for`.
    pub fn eject(&self, ep: &Endpoint) {
        if !self.eject_for.is_zero() {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.eject_for.as_millis()).unwrap_or(u64::MAX));
            ep.ejected_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(cluster = %self.name, endpoint = %ep.address, eject_for_ms = self.eject_for.as_millis() as u64, "upstream endpoint ejected");
        }
    }
}

/// A compiled route: where matching requests go and how long they may take.
#[derive(Debug)]
pub struct Route {
    /// Route name (unique; used in metrics and logs).
    pub name: Arc<str>,
    /// The cluster behind the route.
    pub cluster: Arc<Cluster>,
    /// Pooled clients for the cluster with this route's connect timeout, one per worker.
    pub clients: Arc<[UpstreamClient]>,
    /// Time allowed for the upstream to answer with response headers.
    pub request_timeout: Duration,
    /// mTLS identities admitted (any of), when the route demands one.
    pub mtls: Option<Arc<[crate::tls::identity::IdentityPattern]>>,
    /// How callers authenticate.
    pub auth: crate::authn::RouteAuth,
    /// What authenticated callers may do (`None`: a public route).
    pub authz: Option<Arc<crate::authz::RouteAuthz>>,
    /// The route's metric handles.
    pub metrics: Arc<crate::observe::metrics::RouteMetrics>,
    /// Rate-limit cost, buckets and cluster quota.
    pub limit: crate::ratelimit::RouteLimit,
    /// Body rules (`None`: any body, streamed).
    pub body: Option<Arc<crate::sanitize::body::RouteBody>>,
    /// Keep the upstream's `Cache-Control` (else `no-store`).
    pub keep_cache_control: bool,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as traffic worker `id` (selects its upstream pools).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// The traffic worker running on this thread (0 elsewhere).
pub fn worker_id() -> usize {
    WORKER.with(std::cell::Cell::get)
}

impl Route {
    /// The calling worker's pooled client.
    pub fn client(&self) -> &UpstreamClient {
        let i = WORKER.with(std::cell::Cell::get);
        &self.clients[i % self.clients.len()]
    }

    /// A route to an unreachable single-endpoint cluster, for unit tests.
    #[doc(hidden)]
    pub fn for_tests(name: &str) -> Self {
        let authority = Authority::from_static("127.0.0.1:9");
        let cluster = Arc::new(Cluster::new(
            "test",
            vec![("127.0.0.1:9".into(), authority)],
            UpstreamProtocol::Http1,
            Duration::ZERO,
            None,
        ));
        let client = cluster.client(
            Duration::from_secs(1),
            PoolSettings {
                idle_timeout: Duration::from_secs(1),
                max_idle_per_host: 1,
            },
        );
        Self {
            name: name.into(),
            cluster,
            clients: Arc::new([client]),
            request_timeout: Duration::from_secs(1),
            mtls: None,
            auth: crate::authn::RouteAuth::default(),
            authz: None,
            metrics: Arc::new(crate::observe::metrics::RouteMetrics::new(name.into())),
            limit: crate::ratelimit::RouteLimit::default(),
            body: None,
            keep_cache_control: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_ejected_endpoints() {
        let eps = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| ((*a).to_owned(), Authority::from_static(a)))
            .collect();
        let c = Cluster::new(
            "c",
            eps,
            UpstreamProtocol::Http1,
            Duration::from_secs(60),
            None,
        );
        let picks: Vec<_> = (0..3)
            .map(|_| c.pick().unwrap().1.address.to_string())
            .collect();
        assert_eq!(picks, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        c.eject(&c.endpoints[1]);
        for _ in 0..6 {
            assert_ne!(&*c.pick().unwrap().1.address, "127.0.0.1:2");
        }
        c.eject(&c.endpoints[0]);
        c.eject(&c.endpoints[2]);
        assert!(matches!(
            c.pick(),
            Err(UpstreamError::NoHealthyEndpoint { .. })
        ));
    }
}
