//! Routing and proxying (pipeline stages 5 and 11).
//!
//! [`RouterLayer`] reads the [`Runtime`] extension and writes [`RouteMatch`]; [`Forward`] is the
//! innermost service that sends the request upstream.

pub mod forward;
pub mod pool;
pub mod router;
pub mod upstream;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::config::Runtime;
use crate::error::GatewayError;
use crate::observe::RouteSlot;
use crate::{Body, BoxFuture};
pub use forward::{Forward, Rescue, UpstreamInfo};
pub use router::{RouteError, RouteMatch, Router};

/// Chooses the route of each request; unmatched requests end here with 404 or 405.
#[derive(Debug, Clone, Default)]
pub struct RouterLayer;

impl<S> Layer<S> for RouterLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteService { inner }
    }
}

/// The service made by [`RouterLayer`].
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RouteService<S>
where
    // The inner future is already boxed: on the success path it is passed through as it is.
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = GatewayError,
            Future = BoxFuture<Result<Response<Body>, GatewayError>>,
        >,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(runtime) = req.extensions().get::<Arc<Runtime>>() else {
            return Box::pin(async { Err(GatewayError::Internal("no runtime snapshot".into())) });
        };
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        match runtime.router.find(host, req.method(), req.uri().path()) {
            Ok(m) => {
                if let Some(slot) = req.extensions().get::<Arc<RouteSlot>>() {
                    slot.set(m.route.metrics.clone());
                }
                req.extensions_mut().insert(m);
                self.inner.call(req)
            }
            Err(e) => Box::pin(async move { Err(GatewayError::Route(e)) }),
        }
    }
}
