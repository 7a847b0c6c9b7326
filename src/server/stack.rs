//! The one place that orders the pipeline (see PRODUCT.md). Outermost first:
//!
//! 1. [`RequestIdLayer`] — request id and trace context (stage 3).
//! 2. [`ObserveLayer`] — metrics, the request span, the access log (stage 13); copies the
//!    request id onto every response.
//! 3. [`Rescue`] — every error below becomes one problem+json response (stage 12).
//! 4. [`ConfigLayer`] — one `ArcSwap::load` of the current config per request.
//! 5. [`HygieneLayer`] — framing and header checks, one normal form for path and query
//!    (stage 2), hop-by-hop and identity headers, `X-Forwarded-*` (stage 4); upstream response
//!    hygiene on the way out (stage 12).
//! 6. [`PRE_AUTH_LAYER`] — limits per client IP and client certificate, before any token
//!    work (stage 6).
//! 7. [`ROUTER_LAYER`] — host + method + path → route, or 404/405 (stage 5).
//! 8. [`AuthnLayer`] — the route's `auth` rule: bearer token (JWT via JWKS) and/or mTLS
//!    identity; verified identity headers upstream (stage 7).
//! 9. [`AuthzLayer`] — scopes/roles/permissions, tenant isolation, object ownership (BOLA),
//!    report-only rules, the audit log (stage 8).
//! 10. [`RateLimitLayer`] — the tenant's tier and the route's cost, then the cluster's quota
//!     (stage 9).
//! 11. [`BodyLayer`] — content types, size caps, strict JSON, JSON Schema, money (stage 10).
//! 12. [`Forward`] — the upstream call (stage 11).
//!
//! Later stages (authentication, authorization, rate limits, body checks) slot in between the
//! router and the forwarder, here and nowhere else.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneService;

use crate::Body;
use crate::authn::AuthnLayer;
use crate::authz::AuthzLayer;
use crate::config::reload::ConfigLayer;
use crate::observe::ObserveLayer;
use crate::observe::request_id::RequestIdLayer;
use crate::proxy::{Forward, ROUTER_LAYER, Rescue};
use crate::ratelimit::{PRE_AUTH_LAYER, RateLimitLayer};
use crate::sanitize::HygieneLayer;
use crate::sanitize::body::BodyLayer;

use super::Shared;

/// The finished, boxed pipeline.
pub type Pipeline = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// Builds the pipeline over `shared` state.
///
/// Call it once per worker: the metrics handle is wrapped in a per-worker `Arc`, so cloning it
/// per request touches a count no other thread writes.
pub fn build(shared: &Arc<Shared>, access_log: bool) -> Pipeline {
    let metrics = Arc::new(shared.metrics.clone());
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(ObserveLayer::new(metrics.clone(), access_log))
        .layer_fn(Rescue::new)
        .layer(ConfigLayer::new(shared.config.clone()))
        .layer(HygieneLayer)
        .layer(PRE_AUTH_LAYER)
        .layer(ROUTER_LAYER)
        .layer(AuthnLayer::new(metrics.clone()))
        .layer(AuthzLayer::new(metrics.clone()))
        .layer(RateLimitLayer::new(metrics.clone()))
        .layer(BodyLayer)
        .service(Forward::new(metrics));
    BoxCloneService::new(svc)
}
