//! Authentication (pipeline stage 7). For now: mTLS identity rules per route.
//!
//! Reads [`RouteMatch`] and the connection's [`PeerIdentity`] (from [`ConnInfo`]). A route with
//! an `mtls` rule admits only callers whose verified certificate matches one of its patterns;
//! others get 403 naming the requirement (never the certificate's details). Every mTLS caller's
//! request carries `X-Portcullis-Client-Cert` upstream; inbound copies were already stripped by
//! the hygiene layer.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};

use crate::Body;
use crate::decide::DecideLayer;
use crate::error::GatewayError;
use crate::proxy::RouteMatch;
use crate::server::ConnInfo;
use crate::tls::identity::{IdentityPattern, PeerIdentity};

/// `X-Portcullis-Client-Cert`: `sha256=<hex>` and, when known, `san="<identity>"`.
pub const X_PORTCULLIS_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-portcullis-client-cert");

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The route needs an mTLS identity the caller does not have.
    #[error("mTLS identity required: {requirement}")]
    MtlsIdentityRequired {
        /// The route's rule, as configured (safe to show).
        requirement: String,
    },
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

/// Applies the route's authentication rules.
pub const AUTHN_LAYER: DecideLayer = DecideLayer(authenticate);

/// Checks the route's mTLS rule for `req` and sets `X-Portcullis-Client-Cert` for mTLS callers.
///
/// # Errors
/// [`AuthnError`] when the route's rule is not met.
pub fn authenticate(req: &mut Request<Body>) -> Result<(), GatewayError> {
    let id = req
        .extensions()
        .get::<Arc<ConnInfo>>()
        .and_then(|c| c.identity.as_deref());
    let rule = req
        .extensions()
        .get::<RouteMatch>()
        .and_then(|m| m.route.mtls.as_deref());
    let matched = check_mtls(rule, id)?;
    if let Some(v) = id.and_then(|id| header_value(id, matched)) {
        req.headers_mut().insert(X_PORTCULLIS_CLIENT_CERT, v);
    }
    Ok(())
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
