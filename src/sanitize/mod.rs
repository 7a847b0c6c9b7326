//! Request and response hygiene (pipeline stages 2, 4 and 12) and body checks (stage 10).
//!
//! [`HygieneLayer`] runs before routing. On the way in it refuses requests a backend could read
//! differently from us ([`request`]: framing and header values; [`path`]: one normal form for
//! the path and query, written back into the request so routing, ownership checks and the
//! backend see the same bytes), strips hop-by-hop and client-sent identity headers and sets the
//! `X-Forwarded-*` headers. On the way out it cleans upstream responses: hop-by-hop, `Server`,
//! `X-Powered-By` and configured headers removed; `X-Content-Type-Options: nosniff`,
//! `Cache-Control: no-store` (unless the route keeps the upstream's) and, on TLS connections,
//! `Strict-Transport-Security` added; optionally upstream 5xx bodies replaced by a problem+json
//! that keeps only the status and the request id.
//!
//! [`body::BodyLayer`] runs after the rate limits: content types, size caps, strict JSON, JSON
//! Schema and money amounts, per route.

pub mod body;
pub mod framing;
pub mod headers;
pub mod json;
pub mod money;
pub mod path;
pub mod request;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use serde::Serialize;
use tower::{Layer, Service};

use crate::config::reload::Snapshot;
use crate::error::GatewayError;
use crate::observe::request_id::RequestId;
use crate::proxy::forward::UpstreamInfo;
use crate::server::ConnInfo;
use crate::{Body, BoxFuture};

/// One failing place of a refused body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) of the failing value (`""`: the whole document).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// A request refused by hygiene or body checks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// 400, 408, 413, 414, 415, 422 or 431.
    pub status: StatusCode,
    /// Problem kind (`bad-framing`, `bad-path`, `body-too-large`, …).
    pub kind: &'static str,
    /// Problem title.
    pub title: &'static str,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// What to fix.
    pub detail: String,
    /// Close the connection after answering (framing errors).
    pub close: bool,
    /// Each failing place, for body checks.
    pub errors: Vec<FieldError>,
}

impl Refusal {
    /// A refusal with the title of its status.
    pub fn new(status: StatusCode, kind: &'static str, reason: &'static str, detail: &str) -> Self {
        let title = match status.as_u16() {
            408 => "The request body was not received in time",
            413 => "The request body is too large",
            414 => "The request target is too long",
            415 => "This content type is not accepted here",
            422 => "The request body does not match what this route accepts",
            431 => "The request headers are too large",
            _ => "The request is malformed",
        };
        Self {
            status,
            kind,
            title,
            reason,
            detail: detail.to_owned(),
            close: false,
            errors: Vec::new(),
        }
    }
}

/// Gateway-wide hygiene settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HygieneSettings {
    /// Path and query limits.
    pub path: path::PathLimits,
    /// Upstream response headers removed besides `Server` and `X-Powered-By` (lower case).
    pub remove_response_headers: Vec<HeaderName>,
    /// `Strict-Transport-Security` on TLS connections (`None`: off).
    pub hsts: Option<HeaderValue>,
    /// Replace upstream 5xx bodies with a problem+json (status and request id only).
    pub scrub_upstream_5xx: bool,
}

impl Default for HygieneSettings {
    fn default() -> Self {
        Self {
            path: path::PathLimits::default(),
            remove_response_headers: Vec::new(),
            hsts: Some(HeaderValue::from_static(
                "max-age=31536000; includeSubDomains",
            )),
            scrub_upstream_5xx: false,
        }
    }
}

/// Applies request and response hygiene (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct HygieneLayer;

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Hygiene { inner }
    }
}

/// The service made by [`HygieneLayer`].
#[derive(Debug, Clone)]
pub struct Hygiene<S> {
    inner: S,
}

/// What the response side needs to know about its request.
pub struct Plan {
    runtime: Option<Snapshot>,
    tls: bool,
    request_id: Option<RequestId>,
}

/// The future of [`Hygiene`]: the inner call with its response cleaned, or a refusal.
pub enum HygieneFuture {
    /// Waiting for the inner service.
    Inner(
        BoxFuture<Result<Response<Body>, GatewayError>>,
        Option<Plan>,
    ),
    /// Refused before going further.
    Refused(Option<GatewayError>),
}

impl Future for HygieneFuture {
    type Output = Result<Response<Body>, GatewayError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            HygieneFuture::Inner(fut, plan) => match fut.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(res)) => Poll::Ready(Ok(match plan.take() {
                    Some(p) => clean(res, &p),
                    None => res,
                })),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            },
            HygieneFuture::Refused(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| GatewayError::Internal("hygiene polled twice".into())))),
        }
    }
}

/// How many headers the gateway may add to an upstream response: nosniff, no-store, HSTS and
/// (in the observe layer) the request id.
const RESPONSE_HEADERS_ADDED: usize = 4;

/// Cleans an upstream response (responses made by the gateway itself are already clean).
fn clean(mut res: Response<Body>, plan: &Plan) -> Response<Body> {
    let settings = plan.runtime.as_ref().map(|r| &r.settings.hygiene);
    // What the route says, read in place (no clone of the route the workers share).
    let (upstream, keep_cache_control) = res
        .extensions()
        .get::<UpstreamInfo>()
        .map_or((false, false), |u| (true, u.route.keep_cache_control));
    let h = res.headers_mut();
    // Room, at once, for what is added below and by the observe layer: one growth of the map
    // instead of one per insert that crosses its load factor.
    let _ = h.try_reserve(RESPONSE_HEADERS_ADDED);
    headers::clean_response(h);
    if let Some(s) = settings {
        for name in &s.remove_response_headers {
            h.remove(name);
        }
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !keep_cache_control {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if plan.tls
        && let Some(hsts) = settings.and_then(|s| s.hsts.clone())
    {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    if res.status().is_server_error() && upstream && settings.is_some_and(|s| s.scrub_upstream_5xx)
    {
        // Only the status and the request id survive: no backend body, no backend headers.
        let status = res.status();
        let mut p = crate::error::Problem::new(
            status,
            "upstream-error",
            "The upstream service failed",
            "The service behind this route failed to answer this request. Retry later, or contact the API operator with the request id.",
        )
        .into_response(plan.request_id.as_ref());
        if let Some(info) = res.extensions_mut().remove::<UpstreamInfo>() {
            p.extensions_mut().insert(info);
        }
        if let Some(hsts) = plan
            .tls
            .then(|| settings.and_then(|s| s.hsts.clone()))
            .flatten()
        {
            p.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        return p;
    }
    res
}

impl<S> Service<Request<Body>> for Hygiene<S>
where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = GatewayError,
            Future = BoxFuture<Result<Response<Body>, GatewayError>>,
        >,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = HygieneFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(reason) = req
            .extensions()
            .get::<Arc<ConnInfo>>()
            .and_then(|c| c.framing.violation())
        {
            return HygieneFuture::Refused(Some(
                Refusal {
                    close: true,
                    ..Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad-framing",
                        reason,
                        "the request's framing is ambiguous (a backend could read it differently); send one Content-Length or Transfer-Encoding: chunked, with CRLF line endings",
                    )
                }
                .into(),
            ));
        }
        if let Err(r) = request::check_headers(req.headers(), req.version()) {
            return HygieneFuture::Refused(Some(r.into()));
        }
        let runtime = req.extensions().get::<Snapshot>().cloned();
        let limits = runtime
            .as_ref()
            .map(|r| r.settings.hygiene.path)
            .unwrap_or_default();
        match path::normalize(req.uri().path(), req.uri().query(), &limits) {
            Ok(None) => {}
            Ok(Some(normal)) => {
                let mut parts = req.uri().clone().into_parts();
                match normal.parse() {
                    Ok(pq) => parts.path_and_query = Some(pq),
                    Err(_) => {
                        return HygieneFuture::Refused(Some(
                            Refusal::new(
                                StatusCode::BAD_REQUEST,
                                "bad-path",
                                "invalid_character",
                                "the request target cannot be normalised",
                            )
                            .into(),
                        ));
                    }
                }
                match http::Uri::from_parts(parts) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => {
                        return HygieneFuture::Refused(Some(GatewayError::BadRequest(
                            "the request target cannot be normalised",
                        )));
                    }
                }
            }
            Err(e) => {
                let status = if e.too_long {
                    StatusCode::URI_TOO_LONG
                } else {
                    StatusCode::BAD_REQUEST
                };
                return HygieneFuture::Refused(Some(
                    Refusal::new(status, "bad-path", e.reason, e.detail).into(),
                ));
            }
        }
        // Read what the forwarded headers need before the headers are borrowed mutably; the
        // clones are reference counts, never copies.
        let conn = req.extensions().get::<Arc<ConnInfo>>().cloned();
        let forwarded = conn.as_ref().map(|conn| {
            let trusted = runtime.as_ref().is_some_and(|r| {
                !r.trusted_proxies.is_empty()
                    && headers::is_trusted(conn.peer.ip(), &r.trusted_proxies)
            });
            (
                conn.peer_ip.clone(),
                if conn.tls { "https" } else { "http" },
                trusted,
            )
        });
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let h = req.headers_mut();
        headers::strip(h, true);
        if let Some((peer_ip, proto, trusted)) = forwarded {
            headers::set_forwarded(h, &peer_ip, proto, host.as_ref(), trusted);
        }
        let plan = Plan {
            tls: conn.as_ref().is_some_and(|c| c.tls),
            request_id: req.extensions().get::<RequestId>().cloned(),
            runtime,
        };
        HygieneFuture::Inner(self.inner.call(req), Some(plan))
    }
}
