//! The innermost service (pipeline stage 11): sends the request to the route's cluster and
//! streams the answer back.
//!
//! Reads the [`RouteMatch`] extension; writes an [`UpstreamInfo`] response extension for the
//! access log. Bodies stream in both directions and are never buffered here.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use tower::Service;

use super::pool::PoolError;
use super::router::RouteMatch;
use super::upstream::{UpstreamError, UpstreamProtocol};
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::{Body, BoxFuture};

/// Which upstream served a response (for logs; never sent to the client).
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// The route (and so the cluster) that served it.
    pub route: Arc<super::upstream::Route>,
    /// Index of the endpoint in the cluster.
    pub endpoint: usize,
}

impl UpstreamInfo {
    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.route.cluster.name
    }
    /// The endpoint's address.
    pub fn endpoint(&self) -> &str {
        self.route
            .cluster
            .endpoints
            .get(self.endpoint)
            .map_or("", |e| &*e.address)
    }
}

/// Forwards routed requests to their cluster.
#[derive(Debug, Clone)]
pub struct Forward {
    metrics: Arc<Metrics>,
}

impl Forward {
    /// Creates the forwarding service.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let metrics = self.metrics.clone();
        Box::pin(async move { forward(req, &metrics).await })
    }
}

fn count(metrics: &Metrics, e: UpstreamError) -> GatewayError {
    let cluster = match &e {
        UpstreamError::Refused { cluster, .. }
        | UpstreamError::Protocol { cluster, .. }
        | UpstreamError::NoHealthyEndpoint { cluster }
        | UpstreamError::Timeout { cluster, .. } => cluster.clone(),
    };
    metrics
        .upstream_errors
        .with_label_values(&[&*cluster, e.kind()])
        .inc();
    GatewayError::Upstream(e)
}

async fn forward(
    mut req: Request<Body>,
    metrics: &Metrics,
) -> Result<Response<Body>, GatewayError> {
    let Some(m) = req.extensions_mut().remove::<RouteMatch>() else {
        return Err(GatewayError::Internal(
            "forward reached without a route".into(),
        ));
    };
    let route = m.route;
    let cluster = &route.cluster;
    let (ep_index, ep) = cluster.pick().map_err(|e| count(metrics, e))?;

    // Keep the client's Host; HTTP/2 clients send it as :authority.
    if !req.headers().contains_key(header::HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            // Origin-form request line; the Host header names the authority.
            if req.uri().scheme().is_some() {
                *req.uri_mut() = Uri::from(pq);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        UpstreamProtocol::H2 => {
            // HTTP/2 carries the authority in :authority (the client's host), never twice.
            let authority = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| ep.authority.clone());
            let mut parts = http::uri::Parts::default();
            let tls = route
                .client()
                .endpoints
                .get(ep_index)
                .is_some_and(|p| p.is_tls());
            parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = Some(authority);
            parts.path_and_query = Some(pq);
            *req.uri_mut() =
                Uri::from_parts(parts).map_err(|e| GatewayError::Internal(e.to_string()))?;
            *req.version_mut() = Version::HTTP_2;
        }
    }

    let pool = route.client().endpoints.get(ep_index).cloned();
    let Some(pool) = pool else {
        return Err(GatewayError::Internal("endpoint pool missing".into()));
    };
    // One clock read serves the deadline, the idle check of a pooled connection and the
    // upstream duration.
    let started = Instant::now();
    let result = match started.checked_add(route.request_timeout) {
        Some(deadline) => {
            tokio::time::timeout_at(
                deadline.into(),
                pool.send(req, started, route.request_timeout),
            )
            .await
        }
        // A timeout too long to represent: no deadline, like `tokio::time::timeout`.
        None => Ok(pool.send(req, started, route.request_timeout).await),
    };
    metrics.observe_upstream(&cluster.upstream_duration, &cluster.name, started.elapsed());
    let res = match result {
        Err(_) => {
            return Err(count(
                metrics,
                UpstreamError::Timeout {
                    cluster: cluster.name.clone(),
                    endpoint: ep.address.clone(),
                    after: route.request_timeout,
                },
            ));
        }
        Ok(Err(e)) => {
            let endpoint = ep.address.clone();
            let name = cluster.name.clone();
            let err = match e {
                PoolError::ConnectTimeout => UpstreamError::Timeout {
                    cluster: name,
                    endpoint,
                    after: route.request_timeout,
                },
                PoolError::Connect(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    UpstreamError::Timeout {
                        cluster: name,
                        endpoint,
                        after: route.request_timeout,
                    }
                }
                PoolError::Connect(io) => {
                    cluster.eject(ep);
                    UpstreamError::Refused {
                        cluster: name,
                        endpoint,
                        source: Box::new(io),
                    }
                }
                PoolError::Tls(e) => UpstreamError::Protocol {
                    cluster: name,
                    endpoint,
                    source: Box::new(e),
                },
                PoolError::Http(e) => UpstreamError::Protocol {
                    cluster: name,
                    endpoint,
                    source: Box::new(e),
                },
                PoolError::H1(e) => UpstreamError::Protocol {
                    cluster: name,
                    endpoint,
                    source: Box::new(e),
                },
            };
            return Err(count(metrics, err));
        }
        Ok(Ok(res)) => res,
    };
    let (mut parts, body) = res.into_parts();
    parts.extensions.insert(UpstreamInfo {
        route,
        endpoint: ep_index,
    });
    Ok(Response::from_parts(parts, body))
}

/// Converts the pipeline's errors into problem responses (the "rescue" at the end of the stack).
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> Rescue<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<Request<Body>> for Rescue<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let id = req
            .extensions()
            .get::<crate::observe::request_id::RequestId>()
            .cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => Ok(res),
                Err(e) => Ok(crate::error::respond(&e, id.as_ref())),
            }
        })
    }
}
