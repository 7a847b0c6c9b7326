//! Routing and proxying (pipeline stages 5 and 11).
//!
//! [`ROUTER_LAYER`] reads the [`Snapshot`] extension and writes [`RouteMatch`]; [`Forward`] is the
//! innermost service that sends the request upstream.

pub mod forward;
pub mod h1;
pub mod pool;
pub mod router;
pub mod upstream;

use std::sync::Arc;

use http::Request;

use crate::Body;
use crate::config::reload::Snapshot;
use crate::decide::DecideLayer;
use crate::error::GatewayError;
use crate::observe::RouteSlot;
pub use forward::{Forward, Rescue, UpstreamInfo};
pub use router::{RouteError, RouteMatch, Router};

/// Chooses the route of each request; unmatched requests end here with 404 or 405.
pub const ROUTER_LAYER: DecideLayer = DecideLayer(route);

/// Finds the route for `req`, records it for the metrics and attaches the [`RouteMatch`].
///
/// # Errors
/// [`RouteError`] when no route matches.
pub fn route(req: &mut Request<Body>) -> Result<(), GatewayError> {
    let Some(runtime) = req.extensions().get::<Snapshot>() else {
        return Err(GatewayError::Internal("no runtime snapshot".into()));
    };
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    let m = runtime.router.find(host, req.method(), req.uri().path())?;
    if let Some(slot) = req.extensions().get::<Arc<RouteSlot>>() {
        slot.set(m.route.metrics.clone());
    }
    req.extensions_mut().insert(m);
    Ok(())
}
