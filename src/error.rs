//! The one road to the client: every failure in the pipeline becomes an RFC 9457
//! `application/problem+json` response here.
//!
//! Modules return their own error enums; [`GatewayError`] gathers them and [`problem`] maps each
//! to a [`Problem`] with a safe title and an actionable detail. The response carries the request
//! id (`instance`) and an [`ErrorKind`] extension that metrics and logs use to count why a request
//! failed. No address, upstream name, token or stack trace is ever written into a body.

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::Body;
use crate::observe::request_id::RequestId;
use crate::proxy::router::RouteError;
use crate::proxy::upstream::UpstreamError;

/// Any failure that ends a request inside the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Routing failed (404 / 405).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The upstream could not answer (502 / 503 / 504).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Authentication failed.
    #[error(transparent)]
    Authn(#[from] crate::authn::AuthnError),
    /// Authorization refused (403 / 404), or a write could not be audited (503).
    #[error(transparent)]
    Authz(#[from] crate::authz::AuthzError),
    /// A rate limit or upstream quota refused the request (429), or a `fail_closed` tier could
    /// not reach its shared limiter (503).
    #[error(transparent)]
    RateLimited(#[from] crate::ratelimit::RateLimitError),
    /// Request hygiene or body checks refused the request (400, 408, 413, 414, 415, 422, 431).
    #[error(transparent)]
    Refused(#[from] crate::sanitize::Refusal),
    /// The request itself is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Anything unexpected: answered with a generic 500 and logged.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a request failed, recorded in response extensions for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind_uri: String,
    /// A short, human-readable summary of the problem type.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What happened and what to do about it; never contains secrets or internal addresses.
    pub detail: String,
    /// The request id of this occurrence.
    pub instance: String,
    /// The request id again, under an explicit name for log correlation.
    pub request_id: String,
    /// The machine-readable reason of an authentication refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Each failing place of a refused body: a JSON Pointer and what is wrong there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<crate::sanitize::FieldError>,
    #[serde(skip)]
    kind: &'static str,
    #[serde(skip)]
    allow: Option<String>,
    #[serde(skip)]
    www_authenticate: Option<String>,
    #[serde(skip)]
    extra_headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of kind `kind` (a short slug such as `no-route`).
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind_uri: format!("urn:portcullis:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            instance: String::new(),
            request_id: String::new(),
            reason: None,
            errors: Vec::new(),
            kind,
            allow: None,
            www_authenticate: None,
            extra_headers: Vec::new(),
        }
    }

    /// Renders the problem as a response carrying `request_id`.
    pub fn into_response(mut self, request_id: Option<&RequestId>) -> Response<Body> {
        let id = request_id
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        self.instance.clone_from(&id);
        self.request_id = id;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut res = Response::new(crate::full(body));
        *res.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(header::ALLOW, allow);
        }
        if let Some(v) = self
            .www_authenticate
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        for (k, v) in std::mem::take(&mut self.extra_headers) {
            headers.insert(k, v);
        }
        if let Some(id) = request_id {
            headers.insert(crate::observe::request_id::X_REQUEST_ID, id.header_value());
        }
        res.extensions_mut().insert(ErrorKind(self.kind));
        res
    }
}

/// Maps an error to the problem the client sees.
pub fn problem(err: &GatewayError) -> Problem {
    use StatusCode as S;
    match err {
        GatewayError::Route(RouteError::NotFound) => Problem::new(
            S::NOT_FOUND,
            "no-route",
            "No route matches this request",
            "No configured route matches this host, method and path. Check the path and the API version.",
        ),
        GatewayError::Route(RouteError::MethodNotAllowed { allow }) => {
            let mut p = Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed on this path",
                format!("This path accepts only: {allow}. See the Allow header."),
            );
            p.allow = Some(allow.clone());
            p
        }
        GatewayError::Upstream(e) => match e {
            UpstreamError::Refused { .. } => Problem::new(
                S::BAD_GATEWAY,
                "upstream-unavailable",
                "The upstream service could not be reached",
                "The service behind this route refused or dropped the connection. Retry later; if it persists, contact the API operator with the request id.",
            ),
            UpstreamError::Protocol { .. } => Problem::new(
                S::BAD_GATEWAY,
                "upstream-protocol",
                "The upstream service sent an invalid response",
                "The service behind this route answered with an invalid or incomplete response. Contact the API operator with the request id.",
            ),
            UpstreamError::NoHealthyEndpoint { .. } => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "no-healthy-upstream",
                "No healthy upstream is available",
                "Every instance of the service behind this route is currently marked unhealthy. Retry after a few seconds.",
            ),
            UpstreamError::Timeout { .. } => Problem::new(
                S::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "The upstream service did not answer in time",
                "The service behind this route did not answer within the route's timeout. Retry later, or ask the API operator to review the route's timeout.",
            ),
        },
        GatewayError::Authn(crate::authn::AuthnError::MtlsIdentityRequired { requirement }) => {
            Problem::new(
                S::FORBIDDEN,
                "mtls-identity-required",
                "A client certificate with another identity is required",
                format!(
                    "This route admits only callers whose client certificate matches: {requirement}. Connect with such a certificate."
                ),
            )
        }
        GatewayError::Authn(crate::authn::AuthnError::Token(e)) if e.reason == "no_keys" => {
            let mut p = Problem::new(
                S::SERVICE_UNAVAILABLE,
                "authn-unavailable",
                "Tokens cannot be verified right now",
                "The gateway has no signing keys for the token issuers yet (their JWKS could not be fetched). Retry after a few seconds.",
            );
            p.reason = Some(e.reason);
            p
        }
        GatewayError::Authn(crate::authn::AuthnError::Token(e)) => {
            let mut p = Problem::new(
                S::UNAUTHORIZED,
                "unauthorized",
                "The bearer token was refused",
                format!(
                    "{}. Send a valid token as `Authorization: Bearer <token>`.",
                    e.detail
                ),
            );
            p.reason = Some(e.reason);
            // RFC 6750 §3.1: no error code when the request carried no credentials at all.
            p.www_authenticate = Some(if e.reason == "missing" {
                r#"Bearer realm="portcullis""#.to_owned()
            } else {
                let desc: String = e
                    .detail
                    .chars()
                    .map(|c| {
                        if c == '"' || c == '\\' || !c.is_ascii() {
                            '\''
                        } else {
                            c
                        }
                    })
                    .collect();
                format!(
                    r#"Bearer realm="portcullis", error="invalid_token", error_description="{desc}""#
                )
            });
            p
        }
        GatewayError::Authz(e) => {
            let title = match e.status.as_u16() {
                404 => "Not found",
                413 => "The request body is too large",
                503 => "Writes cannot be audited right now",
                400 => "The request is malformed",
                _ => "The caller may not do this",
            };
            let mut p = Problem::new(e.status, e.kind, title, e.detail.clone());
            // A 404 must look like any other: no reason that tells an ownership check apart.
            if e.status != S::NOT_FOUND {
                p.reason = Some(e.reason);
            }
            if let Some(scope) = &e.scope_hint {
                let scope: String = scope
                    .chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .filter(|c| *c != '"' && *c != '\\')
                    .collect();
                p.www_authenticate = Some(format!(
                    r#"Bearer realm="portcullis", error="insufficient_scope", scope="{scope}""#
                ));
            }
            p
        }
        GatewayError::RateLimited(e) => {
            let title = if e.status == S::TOO_MANY_REQUESTS {
                "Too many requests"
            } else {
                "Rate limiting is unavailable"
            };
            let mut p = Problem::new(e.status, e.kind, title, e.detail.clone());
            p.extra_headers.clone_from(&e.headers);
            p
        }
        GatewayError::Refused(r) => {
            let mut p = Problem::new(r.status, r.kind, r.title, r.detail.clone());
            p.reason = Some(r.reason);
            p.errors.clone_from(&r.errors);
            if r.close {
                p.extra_headers
                    .push((header::CONNECTION, HeaderValue::from_static("close")));
            }
            p
        }
        GatewayError::BadRequest(what) => Problem::new(
            S::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
            *what,
        ),
        GatewayError::Internal(_) => Problem::new(
            S::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal gateway error",
            "The gateway failed to process this request. Contact the API operator with the request id.",
        ),
    }
}

/// Turns `err` into the response the client sees, logging what only operators may see.
pub fn respond(err: &GatewayError, request_id: Option<&RequestId>) -> Response<Body> {
    match err {
        GatewayError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
        GatewayError::Upstream(e) => tracing::warn!(error = %e, "upstream failure"),
        _ => tracing::debug!(error = %err, "request refused"),
    }
    problem(err).into_response(request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_body_carries_request_id_and_no_internal_detail() {
        let err = GatewayError::Upstream(UpstreamError::Refused {
            cluster: "accounts".into(),
            endpoint: "10.1.2.3:8080".into(),
            source: "connection refused".into(),
        });
        let id = RequestId::parse("abc-123").expect("valid id");
        let res = respond(&err, Some(&id));
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(
            res.extensions().get::<ErrorKind>(),
            Some(&ErrorKind("upstream-unavailable"))
        );
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["instance"], "abc-123");
        assert_eq!(v["status"], 502);
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("10.1.2.3") && !text.contains("accounts"),
            "{text}"
        );
    }

    #[test]
    fn method_not_allowed_sets_allow() {
        let err = GatewayError::Route(RouteError::MethodNotAllowed {
            allow: "GET, HEAD".into(),
        });
        let res = respond(&err, None);
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET, HEAD");
    }
}
