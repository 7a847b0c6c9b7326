//! The shell shared by pipeline stages that only decide (routing, authentication): a plain
//! synchronous function looks at the request, may annotate it (extensions, headers) and either
//! lets it through or ends it with a [`GatewayError`]. The inner (already boxed) future is passed
//! through untouched on the success path, so such a stage costs no allocation.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::{Body, BoxFuture};

/// A stage's decision.
pub type Decision = fn(&mut Request<Body>) -> Result<(), GatewayError>;

/// A layer that runs a [`Decision`] before its inner service.
#[derive(Debug, Clone, Copy)]
pub struct DecideLayer(pub Decision);

impl<S> Layer<S> for DecideLayer {
    type Service = Decide<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Decide {
            inner,
            decide: self.0,
        }
    }
}

/// The service made by [`DecideLayer`].
#[derive(Debug, Clone)]
pub struct Decide<S> {
    inner: S,
    decide: Decision,
}

type Fut = BoxFuture<Result<Response<Body>, GatewayError>>;

impl<S> Service<Request<Body>> for Decide<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError, Future = Fut>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match (self.decide)(&mut req) {
            Ok(()) => self.inner.call(req),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}
