//! Observation (pipeline stages 3 and 13): correlation ids, metrics, the access log and the admin
//! listener.
//!
//! [`ObserveLayer`] reads the [`RequestId`](request_id::RequestId) extension, inserts a
//! [`RouteSlot`] the router fills in, counts every request in Prometheus and writes one JSON
//! access-log line per request when its response body ends.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod redact;
pub mod request_id;

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::ErrorKind;
use crate::proxy::UpstreamInfo;
use crate::{Body, BodyError, BoxFuture};
use metrics::Metrics;
use request_id::RequestId;

/// Filled by the router with the matched route's name, read by the access log and metrics.
#[derive(Debug, Default)]
pub struct RouteSlot(OnceLock<Arc<metrics::RouteMetrics>>);

impl RouteSlot {
    /// Records the matched route (first write wins).
    pub fn set(&self, route: Arc<metrics::RouteMetrics>) {
        let _ = self.0.set(route);
    }
    fn get(&self) -> Option<&Arc<metrics::RouteMetrics>> {
        self.0.get()
    }
}

/// Counts requests, records latency and writes the access log.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    access_log: bool,
}

impl ObserveLayer {
    /// Creates the layer; `access_log` turns the per-request log line on.
    pub fn new(metrics: Arc<Metrics>, access_log: bool) -> Self {
        Self {
            metrics,
            access_log,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
        }
    }
}

/// The service made by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    access_log: bool,
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let slot = Arc::new(RouteSlot::default());
        req.extensions_mut().insert(slot.clone());
        let id = req.extensions().get::<RequestId>().cloned();
        let method = req.method().clone();
        // Card numbers in a path are masked before they reach the log.
        let path: Option<Box<str>> = self
            .access_log
            .then(|| redact::mask_pans(req.uri().path()).into());
        let span = tracing::info_span!(
            "request",
            request_id = id.as_ref().map_or("", RequestId::as_str)
        );
        let metrics = self.metrics.clone();
        let access_log = self.access_log;
        metrics.in_flight.inc();
        let guard = InFlight(metrics.in_flight.clone());
        let fut = self.inner.call(req).instrument(span);
        Box::pin(async move {
            let res = fut.await;
            drop(guard);
            let mut res = res?;
            // Every response carries the request id, errors included.
            if let Some(id) = &id {
                res.headers_mut()
                    .insert(request_id::X_REQUEST_ID, id.header_value());
            }
            let elapsed = started.elapsed();
            let route = slot.get();
            let status = res.status();
            metrics.observe_request(route.map(|r| &**r), &method, status, elapsed);
            if let Some(kind) = res.extensions().get::<ErrorKind>() {
                metrics.errors.with_label_values(&[kind.0]).inc();
            }
            if access_log {
                let entry = AccessEntry {
                    request_id: id,
                    method,
                    path: path.unwrap_or_default(),
                    route: route.map(|r| r.name.clone()),
                    status: status.as_u16(),
                    error: res.extensions().get::<ErrorKind>().map(|k| k.0),
                    upstream: res.extensions().get::<UpstreamInfo>().cloned(),
                    started,
                    headers_after: elapsed,
                    bytes: 0,
                    logged: false,
                };
                res = res.map(|body| crate::boxed(LoggedBody { inner: body, entry }));
            }
            Ok(res)
        })
    }
}

struct InFlight(prometheus::IntGauge);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct AccessEntry {
    request_id: Option<RequestId>,
    method: Method,
    path: Box<str>,
    route: Option<Arc<str>>,
    status: u16,
    error: Option<&'static str>,
    upstream: Option<UpstreamInfo>,
    started: Instant,
    headers_after: std::time::Duration,
    bytes: u64,
    logged: bool,
}

impl AccessEntry {
    fn log(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = self.request_id.as_ref().map_or("", RequestId::as_str),
            method = %self.method,
            path = &*self.path,
            route = self.route.as_deref().unwrap_or(""),
            status = self.status,
            error = self.error.unwrap_or(""),
            upstream_cluster = self.upstream.as_ref().map_or("", UpstreamInfo::cluster),
            upstream_endpoint = self.upstream.as_ref().map_or("", UpstreamInfo::endpoint),
            latency_ms = self.headers_after.as_secs_f64() * 1000.0,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            body = outcome,
            "access"
        );
    }
}

/// A response body that counts its bytes and writes the access-log line when it ends.
struct LoggedBody {
    inner: Body,
    entry: AccessEntry,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.entry.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.entry.log("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => this.entry.log("error"),
            Poll::Ready(None) => this.entry.log("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            "complete"
        } else {
            "aborted"
        };
        self.entry.log(outcome);
    }
}
