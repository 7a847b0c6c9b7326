//! Authentication (pipeline stage 7): each route says how its callers prove who they are —
//! `public`, `jwt` (a bearer token from a configured issuer), `mtls` (a verified client
//! certificate, optionally matching identity patterns) or `jwt_and_mtls`.
//!
//! Reads [`RouteMatch`], the connection's [`PeerIdentity`] (from [`ConnInfo`]) and the
//! [`Runtime`](crate::config::Runtime)'s [`jwt::Verifier`]; writes an `Arc<`[`jwt::Principal`]`>` request extension and
//! the `X-Portcullis-Subject`, `-Tenant`, `-Scopes`, `-Issuer` and `-Client-Cert` headers for the
//! backend (inbound copies were already stripped by the hygiene layer). A token refusal is 401
//! with `WWW-Authenticate: Bearer`; an mTLS refusal is 403 naming the requirement (never the
//! certificate's details). Only a token whose `kid` is unknown makes the request wait (for the
//! one shared, throttled JWKS refetch); every other decision is synchronous.

pub mod devtools;
pub mod jwks;
pub mod jwt;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::Body;
use crate::BoxFuture;
use crate::config::reload::Snapshot;
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::proxy::RouteMatch;
use crate::server::ConnInfo;
use crate::tls::identity::{IdentityPattern, PeerIdentity};
use jwt::{Demand, Principal, TokenError, Verdict};

/// `X-Portcullis-Client-Cert`: `sha256=<hex>` and, when known, `san="<identity>"`.
pub const X_PORTCULLIS_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-portcullis-client-cert");
/// `X-Portcullis-Subject`: the token's `sub`.
pub const X_PORTCULLIS_SUBJECT: HeaderName = HeaderName::from_static("x-portcullis-subject");
/// `X-Portcullis-Tenant`: the token's tenant claim.
pub const X_PORTCULLIS_TENANT: HeaderName = HeaderName::from_static("x-portcullis-tenant");
/// `X-Portcullis-Scopes`: the token's scopes, space separated.
pub const X_PORTCULLIS_SCOPES: HeaderName = HeaderName::from_static("x-portcullis-scopes");
/// `X-Portcullis-Issuer`: the config name of the token's issuer.
pub const X_PORTCULLIS_ISSUER: HeaderName = HeaderName::from_static("x-portcullis-issuer");

/// How a route's callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone (explicitly).
    Public,
    /// A bearer token.
    Jwt,
    /// A verified client certificate.
    Mtls,
    /// Both.
    JwtAndMtls,
}

/// A route's authentication rule, compiled.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// The mode.
    pub mode: AuthMode,
    /// Issuers accepted (indices into the verifier), all when `None`.
    pub issuers: Option<Arc<[usize]>>,
    /// Tokens must be certificate-bound (RFC 8705).
    pub require_bound: bool,
}

impl Default for RouteAuth {
    fn default() -> Self {
        Self {
            mode: AuthMode::Public,
            issuers: None,
            require_bound: false,
        }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The route needs an mTLS identity the caller does not have.
    #[error("mTLS identity required: {requirement}")]
    MtlsIdentityRequired {
        /// The route's rule, as configured (safe to show).
        requirement: String,
    },
    /// The bearer token is missing or was refused.
    #[error("token refused: {0}")]
    Token(TokenError),
}

impl AuthnError {
    /// The `portcullis_authn_total` result label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::MtlsIdentityRequired { .. } => "mtls_identity_required",
            AuthnError::Token(e) => e.reason,
        }
    }
}

/// The decision for one request: `Ok(identity value to tell the backend)` or the refusal.
///
/// # Errors
/// [`AuthnError::MtlsIdentityRequired`] when the route's rule is not met.
pub fn check_mtls<'a>(
    rule: Option<&[IdentityPattern]>,
    id: Option<&'a PeerIdentity>,
) -> Result<Option<&'a str>, AuthnError> {
    let Some(rule) = rule else {
        // No rule: tell the backend the most specific name the certificate carries.
        return Ok(id.and_then(|i| {
            i.uris
                .first()
                .or(i.dns.first())
                .map(String::as_str)
                .or(i.common_name.as_deref())
        }));
    };
    if let Some(id) = id {
        for p in rule {
            if let Some(v) = p.matched(id) {
                return Ok(Some(v));
            }
        }
    }
    let requirement = rule
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    Err(AuthnError::MtlsIdentityRequired { requirement })
}

/// `sha256=<hex>`, then `;san="<name>"` when the identity is a URI or DNS SAN, or
/// `;cn="<name>"` when it is the subject CN.
fn header_value(id: &PeerIdentity, matched: Option<&str>) -> Option<HeaderValue> {
    let (key, value) = id
        .header_cache
        .get_or_init(|| (matched.map(str::to_owned), render_header(id, matched)));
    if key.as_deref() == matched {
        return value.clone();
    }
    render_header(id, matched)
}

fn render_header(id: &PeerIdentity, matched: Option<&str>) -> Option<HeaderValue> {
    let mut v = format!("sha256={}", id.fingerprint);
    if let Some(m) = matched
        && m != id.fingerprint
        && m.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
    {
        let key = if id.uris.iter().chain(&id.dns).any(|s| s == m) {
            "san"
        } else {
            "cn"
        };
        v.push_str(&format!(";{key}=\"{m}\""));
    }
    HeaderValue::from_str(&v).ok()
}

/// Applies each route's authentication rule (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthnLayer {
    metrics: Arc<Metrics>,
    ok: prometheus::IntCounter,
}

impl AuthnLayer {
    /// Counts decisions in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        // Resolved once: the label lookup takes a lock and hashes on every call.
        let ok = metrics.authn.with_label_values(&["ok"]);
        Self { metrics, ok }
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = Authn<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authn {
            inner,
            metrics: self.metrics.clone(),
            ok: self.ok.clone(),
        }
    }
}

/// The service made by [`AuthnLayer`].
#[derive(Debug, Clone)]
pub struct Authn<S> {
    inner: S,
    metrics: Arc<Metrics>,
    ok: prometheus::IntCounter,
}

type Fut = BoxFuture<Result<Response<Body>, GatewayError>>;

impl<S> Service<Request<Body>> for Authn<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError, Future = Fut>
        + Clone
        + Send
        + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match authenticate(&mut req, true) {
            Step::Pass => {
                self.ok.inc();
                self.inner.call(req)
            }
            Step::Refuse(e) => {
                self.count(e.reason());
                Box::pin(async move { Err(GatewayError::Authn(e)) })
            }
            Step::Refetch(store) => {
                // The token names a key the issuer does not publish (yet): one shared,
                // throttled refetch, then one more try without refetching again.
                let inner = self.inner.clone();
                let metrics = self.metrics.clone();
                Box::pin(async move {
                    store.refetch_for_unknown_kid().await;
                    let result = match authenticate(&mut req, false) {
                        Step::Pass => Ok(()),
                        Step::Refuse(e) => Err(e),
                        Step::Refetch(_) => Err(AuthnError::Token(jwt::unknown_kid_error())),
                    };
                    let label = result.as_ref().err().map_or("ok", AuthnError::reason);
                    metrics.authn.with_label_values(&[label]).inc();
                    result?;
                    inner.oneshot(req).await
                })
            }
        }
    }
}

impl<S> Authn<S> {
    fn count(&self, result: &str) {
        self.metrics.authn.with_label_values(&[result]).inc();
    }
}

enum Step {
    Pass,
    Refuse(AuthnError),
    Refetch(Arc<jwks::KeyStore>),
}

/// The bearer token of `req`, or why there is none usable.
fn bearer(req: &Request<Body>, max: usize) -> Result<&str, TokenError> {
    let token_in_query = req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("access_token"))
        })
    });
    if token_in_query {
        return Err(TokenError {
            reason: "token_in_query",
            detail: "tokens in the query string are refused (they end up in logs and caches)"
                .into(),
        });
    }
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(TokenError {
            reason: if req.headers().contains_key(http::header::AUTHORIZATION) {
                "malformed"
            } else {
                "missing"
            },
            detail: if req.headers().contains_key(http::header::AUTHORIZATION) {
                "the request carries several Authorization headers".into()
            } else {
                "no bearer token".into()
            },
        });
    };
    if value.len() > max + 7 {
        return Err(TokenError {
            reason: "too_large",
            detail: format!("the bearer token is over {max} bytes"),
        });
    }
    let v = value.as_bytes();
    let scheme_ok = v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ");
    let token = if scheme_ok {
        std::str::from_utf8(&v[7..])
            .ok()
            .map(|t| t.trim_start_matches(' '))
    } else {
        None
    };
    match token {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(TokenError {
            reason: "missing",
            detail: "no bearer token (the Authorization header must be `Bearer <token>`)".into(),
        }),
    }
}

fn authenticate(req: &mut Request<Body>, may_refetch: bool) -> Step {
    let ext = req.extensions();
    let Some(m) = ext.get::<RouteMatch>() else {
        return Step::Refuse(AuthnError::Token(TokenError {
            reason: "internal",
            detail: "authentication reached without a route".into(),
        }));
    };
    // Borrowed, not cloned: the route's count is shared by every worker.
    let route = &*m.route;
    let id = ext.get::<Arc<ConnInfo>>().and_then(|c| c.identity.clone());
    let mode = route.auth.mode;
    let mut matched: Option<String> = None;
    if matches!(mode, AuthMode::Mtls | AuthMode::JwtAndMtls) {
        if id.is_none() && route.mtls.is_none() {
            return Step::Refuse(AuthnError::MtlsIdentityRequired {
                requirement: "a verified client certificate".into(),
            });
        }
        match check_mtls(route.mtls.as_deref(), id.as_deref()) {
            Ok(v) => matched = v.map(str::to_owned),
            Err(e) => return Step::Refuse(e),
        }
    } else if let Some(id) = id.as_deref() {
        matched = check_mtls(None, Some(id)).ok().flatten().map(str::to_owned);
    }
    let mut principal: Option<Arc<Principal>> = None;
    if matches!(mode, AuthMode::Jwt | AuthMode::JwtAndMtls) {
        let Some(verifier) = ext.get::<Snapshot>().and_then(|r| r.verifier.clone()) else {
            return Step::Refuse(AuthnError::Token(TokenError {
                reason: "no_keys",
                detail: "no token issuer is configured".into(),
            }));
        };
        let token = match bearer(req, verifier.max_token_bytes) {
            Ok(t) => t,
            Err(e) => return Step::Refuse(AuthnError::Token(e)),
        };
        let demand = Demand {
            issuers: route.auth.issuers.as_deref(),
            require_bound: route.auth.require_bound,
        };
        let cert = id.as_deref().map(|i| &i.fingerprint_raw);
        match verifier.check(token, cert, demand, true) {
            Verdict::Ok(p) => principal = Some(p),
            Verdict::Refused(e) => return Step::Refuse(AuthnError::Token(e)),
            Verdict::UnknownKid(store) if may_refetch => return Step::Refetch(store),
            Verdict::UnknownKid(_) => {
                return Step::Refuse(AuthnError::Token(jwt::unknown_kid_error()));
            }
        }
    }
    let cert_header = id
        .as_deref()
        .and_then(|i| header_value(i, matched.as_deref()));
    let headers = req.headers_mut();
    if let Some(v) = cert_header {
        headers.insert(X_PORTCULLIS_CLIENT_CERT, v);
    }
    if let Some(p) = principal {
        let h = &p.headers;
        for (name, value) in [
            (X_PORTCULLIS_SUBJECT, &h.subject),
            (X_PORTCULLIS_TENANT, &h.tenant),
            (X_PORTCULLIS_SCOPES, &h.scopes),
            (X_PORTCULLIS_ISSUER, &h.issuer),
        ] {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
        req.extensions_mut().insert(p);
    }
    Step::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::Glob;

    fn service_id() -> PeerIdentity {
        PeerIdentity {
            subject: "CN=reconciler".into(),
            common_name: Some("reconciler".into()),
            dns: vec![],
            uris: vec!["spiffe://acme.internal/reconciler".into()],
            emails: vec![],
            serial: "01".into(),
            fingerprint: "ab".repeat(32),
            fingerprint_raw: [0xab; 32],
            not_after: 0,
            header_cache: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn identity_rules() {
        let reports = [IdentityPattern::Uri(Glob::new("spiffe://acme.internal/*"))];
        let payments = [IdentityPattern::CommonName(Glob::new("acme-web"))];
        let id = service_id();
        assert_eq!(
            check_mtls(Some(&reports), Some(&id)),
            Ok(Some("spiffe://acme.internal/reconciler"))
        );
        let err = check_mtls(Some(&payments), Some(&id)).unwrap_err();
        assert_eq!(
            err,
            AuthnError::MtlsIdentityRequired {
                requirement: "cn acme-web".into()
            }
        );
        assert!(check_mtls(Some(&reports), None).is_err());
        assert_eq!(check_mtls(None, None), Ok(None));
        let fp = [IdentityPattern::Fingerprint("ab".repeat(32))];
        assert!(check_mtls(Some(&fp), Some(&id)).is_ok());
    }
}
