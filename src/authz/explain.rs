//! `portcullis explain`: why a request would be allowed or denied, offline.
//!
//! Loads and compiles a config like `run` (nothing is bound, no request is sent), routes the
//! request, then runs the checks the gateway would: the route's mTLS identities against a
//! client certificate file, the token rules a verifier applies after the signature (issuer
//! accepted by the route, required claims, RFC 8705 binding) against claims given as JSON, and
//! the route's authorization rules through [`super::explain`]. Signatures, expiry, audiences
//! and certificate chains are not checked: the claims and the certificate are taken as given.
//!
//! Ownership lookups go to the configured Redis / ownership service, unless answers are given
//! (`--lookup 'redis <key> <member>=yes'`, `--lookup 'http <url>=no'`) or `--offline` is set:
//! then every lookup not answered counts as an error (deny), as an unreachable backend would.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use http::Method;
use serde_json::{Map, Value};

use super::lookup::Lookups;
use crate::authn::AuthMode;
use crate::authn::jwt::{ClaimMap, Principal};
use crate::config;
use crate::observe::metrics::Metrics;
use crate::proxy::RouteMatch;
use crate::proxy::router::RouteError;
use crate::tls::identity::PeerIdentity;

/// What to explain (the command line, parsed).
#[derive(Debug, Clone, Default)]
pub struct ExplainArgs {
    /// The gateway file.
    pub config: PathBuf,
    /// The request method.
    pub method: String,
    /// The request path, optionally with `?query`.
    pub path: String,
    /// The `Host` (port ignored).
    pub host: Option<String>,
    /// The token's claims, a JSON object.
    pub claims: Option<String>,
    /// The issuer whose claim map applies (default: the first configured).
    pub issuer: Option<String>,
    /// A file holding the JSON request body.
    pub body: Option<PathBuf>,
    /// A PEM client certificate.
    pub client_cert: Option<PathBuf>,
    /// Lookup answers, `<question>=yes|no`.
    pub lookups: Vec<String>,
    /// Answer lookups only from `lookups` (the others are errors).
    pub offline: bool,
}

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// `mtls`, `token`, `scopes`, `ownership`, ...
    pub rule: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its inputs and result.
    pub detail: String,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request goes on to the backend.
    Allow {
        /// Report-only rules that would have denied.
        would_deny: Vec<String>,
    },
    /// The request is refused.
    Deny {
        /// The rule that decided (`routing`, `mtls`, `token`, `scopes`, `ownership`, ...).
        rule: String,
        /// The status the caller gets.
        status: u16,
        /// What the caller is told.
        detail: String,
    },
}

/// Why a request would be allowed or denied. `Display` prints it for people.
#[derive(Debug, Clone)]
pub struct ExplainReport {
    /// `POST /v1/payments`.
    pub request: String,
    /// The matched route: (name, cluster, auth mode); `None` when none matched.
    pub route: Option<(String, String, &'static str)>,
    /// The caller, as the claims describe them.
    pub principal: Option<String>,
    /// The certificate's identity, when one was given.
    pub certificate: Option<String>,
    /// Each check, in order.
    pub checks: Vec<CheckLine>,
    /// Object ids the ownership rules looked at.
    pub object_ids: Vec<String>,
    /// Offline lookups asked: (question, answer; `None`: not answered).
    pub lookups: Option<Vec<(String, Option<bool>)>>,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
    /// The outcome.
    pub decision: Decision,
}

impl ExplainReport {
    /// Whether the request would be allowed.
    pub fn allowed(&self) -> bool {
        matches!(self.decision, Decision::Allow { .. })
    }

    fn deny(&mut self, rule: &str, status: u16, detail: impl Into<String>) {
        self.decision = Decision::Deny {
            rule: rule.to_owned(),
            status,
            detail: detail.into(),
        };
    }

    fn check(&mut self, rule: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(CheckLine {
            rule: rule.to_owned(),
            passed,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for ExplainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        match &self.route {
            Some((name, cluster, auth)) => {
                writeln!(f, "route: {name} (cluster {cluster}, auth {auth})")?;
            }
            None => writeln!(f, "route: none")?,
        }
        if let Some(p) = &self.principal {
            writeln!(f, "principal: {p}")?;
        }
        if let Some(c) = &self.certificate {
            writeln!(f, "certificate: {c}")?;
        }
        if !self.checks.is_empty() {
            writeln!(f, "checks:")?;
            for c in &self.checks {
                let mark = if c.passed { '✔' } else { '✘' };
                writeln!(f, "  {mark} {}: {}", c.rule, c.detail)?;
            }
        }
        if !self.object_ids.is_empty() {
            writeln!(f, "object ids: {}", self.object_ids.join(", "))?;
        }
        if let Some(asked) = &self.lookups
            && !asked.is_empty()
        {
            writeln!(f, "lookups (offline):")?;
            for (q, a) in asked {
                match a {
                    Some(true) => writeln!(f, "  {q} → yes")?,
                    Some(false) => writeln!(f, "  {q} → no")?,
                    None => writeln!(
                        f,
                        "  {q} → not answered (an error: add --lookup '{q}=yes' or '=no')"
                    )?,
                }
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        match &self.decision {
            Decision::Allow { would_deny } if would_deny.is_empty() => {
                writeln!(f, "decision: allow")
            }
            Decision::Allow { would_deny } => {
                writeln!(f, "decision: allow (report-only rules would deny)")?;
                for w in would_deny {
                    writeln!(f, "  would deny: {w}")?;
                }
                Ok(())
            }
            Decision::Deny {
                rule,
                status,
                detail,
            } => {
                writeln!(f, "decision: deny ({rule}, {status})")?;
                writeln!(f, "  the caller is told: {detail}")
            }
        }
    }
}

fn mode_name(m: AuthMode) -> &'static str {
    match m {
        AuthMode::Public => "public",
        AuthMode::Jwt => "jwt",
        AuthMode::Mtls => "mtls",
        AuthMode::JwtAndMtls => "jwt_and_mtls",
    }
}

/// `--lookup` values into answers keyed by [`super::lookup::Question::offline_key`] text.
fn parse_lookups(items: &[String]) -> Result<HashMap<String, bool>, String> {
    let mut answers = HashMap::new();
    for item in items {
        let bad = || {
            format!("--lookup `{item}`: write `redis <key> <member>=yes|no` or `http <url>=yes|no`")
        };
        let (q, a) = item.rsplit_once('=').ok_or_else(bad)?;
        let answer = match a.trim() {
            "yes" | "true" => true,
            "no" | "false" => false,
            _ => return Err(bad()),
        };
        let q = q.trim();
        let well_formed = match q.split_once(' ') {
            Some(("redis", rest)) => rest.trim().split_once(' ').is_some(),
            Some(("http", rest)) => !rest.trim().is_empty(),
            _ => false,
        };
        if !well_formed {
            return Err(bad());
        }
        answers.insert(q.to_owned(), answer);
    }
    Ok(answers)
}

fn read_cert(path: &std::path::Path) -> Result<PeerIdentity, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path).map_err(|e| {
        format!(
            "--client-cert `{}`: not a PEM certificate: {e}",
            path.display()
        )
    })?;
    PeerIdentity::from_der(&der).map_err(|e| format!("--client-cert `{}`: {e}", path.display()))
}

fn describe_cert(id: &PeerIdentity) -> String {
    let mut parts = vec![format!("subject {}", id.subject)];
    if !id.uris.is_empty() {
        parts.push(format!("uri [{}]", id.uris.join(", ")));
    }
    if !id.dns.is_empty() {
        parts.push(format!("dns [{}]", id.dns.join(", ")));
    }
    parts.push(format!("sha256 {}", id.fingerprint));
    parts.join(", ")
}

fn describe_principal(p: &Principal) -> String {
    format!(
        "sub {}, tenant {}, issuer {}, scopes [{}], roles [{}]",
        p.subject.as_deref().unwrap_or("-"),
        p.tenant.as_deref().unwrap_or("-"),
        p.issuer,
        p.scopes.join(", "),
        p.roles.join(", ")
    )
}

/// Explains one request (see the module docs).
///
/// # Errors
/// Usage and config errors: a bad method, path, claims, body, certificate or `--lookup`, an
/// unknown `--issuer`, a config that does not load or compile.
#[allow(clippy::too_many_lines)]
pub async fn run(args: ExplainArgs) -> Result<ExplainReport, String> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--method `{}` is not an HTTP method", args.method))?;
    let (path, query) = match args.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (args.path.as_str(), None),
    };
    if !path.starts_with('/') {
        return Err(format!("--path `{}` must start with `/`", args.path));
    }
    let claims: Option<Map<String, Value>> = match &args.claims {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Some(m),
            Ok(_) => return Err("--claims must be a JSON object".into()),
            Err(e) => return Err(format!("--claims is not JSON: {e}")),
        },
    };
    let body = match &args.body {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p)
                .map_err(|e| format!("--body `{}`: cannot read it: {e}", p.display()))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("--body `{}`: not JSON: {e}", p.display()))?;
            Some((bytes.len(), v))
        }
    };
    let cert = args.client_cert.as_deref().map(read_cert).transpose()?;
    let offline = if args.offline || !args.lookups.is_empty() {
        Some(parse_lookups(&args.lookups)?)
    } else {
        None
    };

    let checked = config::load(&args.config, &config::process_env).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let mut runtime = config::compile(checked, &metrics)?;
    let offline_lookups = match offline {
        Some(answers) => {
            let l = Arc::new(Lookups::offline(answers)?);
            runtime.authz.lookups = l.clone();
            Some(l)
        }
        None => None,
    };

    // The issuer whose claim map reads the claims.
    let issuers = runtime
        .verifier
        .as_ref()
        .map_or(&[][..], |v| v.issuers.as_slice());
    let issuer_index = match &args.issuer {
        None => 0,
        Some(name) => issuers
            .iter()
            .position(|i| &*i.name == name.as_str())
            .ok_or_else(|| {
                let known: Vec<&str> = issuers.iter().map(|i| &*i.name).collect();
                format!(
                    "--issuer `{name}` is not configured (issuers: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })?,
    };
    let issuer = issuers.get(issuer_index);

    let mut report = ExplainReport {
        request: format!("{method} {}", args.path),
        route: None,
        principal: None,
        certificate: cert.as_ref().map(describe_cert),
        checks: Vec::new(),
        object_ids: Vec::new(),
        lookups: None,
        notes: Vec::new(),
        decision: Decision::Allow {
            would_deny: Vec::new(),
        },
    };

    let m: RouteMatch = match runtime.router.find(args.host.as_deref(), &method, path) {
        Ok(m) => m,
        Err(RouteError::NotFound) => {
            report.notes.push(format!(
                "no route matches {}{path}",
                args.host
                    .as_deref()
                    .map_or(String::new(), |h| format!("host {h}, path "))
            ));
            report.deny("routing", 404, "no route matches (404 not-found)");
            return Ok(report);
        }
        Err(RouteError::MethodNotAllowed { allow }) => {
            report.notes.push(format!(
                "the path matches a route, but not for {method} (allow: {allow})"
            ));
            report.deny(
                "routing",
                405,
                format!("method not allowed (405; Allow: {allow})"),
            );
            return Ok(report);
        }
    };
    let route = m.route.clone();
    let mode = route.auth.mode;
    report.route = Some((
        route.name.to_string(),
        route.cluster.name.to_string(),
        mode_name(mode),
    ));
    if !m.params.is_empty() {
        let params: Vec<String> = m.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        report
            .notes
            .push(format!("path parameters: {}", params.join(", ")));
    }

    // Authentication: the certificate, then the token (as the gateway orders them).
    if matches!(mode, AuthMode::Mtls | AuthMode::JwtAndMtls) {
        let rule_text = route.mtls.as_deref().map_or_else(
            || "any verified client certificate".to_owned(),
            |r| {
                r.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            },
        );
        match &cert {
            None => {
                report.check(
                    "mtls",
                    false,
                    format!("needs {rule_text}; no --client-cert given"),
                );
                report.deny(
                    "mtls",
                    403,
                    format!("mTLS identity required: {rule_text} (403 mtls-identity-required)"),
                );
                return Ok(report);
            }
            Some(id) => match crate::authn::check_mtls(route.mtls.as_deref(), Some(id)) {
                Ok(matched) => report.check(
                    "mtls",
                    true,
                    format!(
                        "needs {rule_text} → matched by {} (chain not verified here)",
                        matched.unwrap_or("the certificate")
                    ),
                ),
                Err(e) => {
                    report.check(
                        "mtls",
                        false,
                        format!("needs {rule_text} → the certificate matches none"),
                    );
                    report.deny("mtls", 403, format!("{e} (403 mtls-identity-required)"));
                    return Ok(report);
                }
            },
        }
    } else if cert.is_some() {
        report
            .notes
            .push("the route does not check client certificates (auth is not mtls)".into());
    }

    let mut principal: Option<Principal> = None;
    if matches!(mode, AuthMode::Jwt | AuthMode::JwtAndMtls) {
        let Some(claims) = claims else {
            report.check(
                "token",
                false,
                "no --claims given: the request has no bearer token",
            );
            report.deny("token", 401, "token refused: no bearer token (401)");
            return Ok(report);
        };
        let Some(issuer) = issuer else {
            // Validation refuses token routes without issuers; shown for completeness.
            let p = Principal::from_claims(0, "(none)".into(), &ClaimMap::default(), claims);
            report.principal = Some(describe_principal(&p));
            report.check("token", false, "no token issuer is configured");
            report.deny(
                "token",
                401,
                "token refused: no token issuer is configured (401)",
            );
            return Ok(report);
        };
        if let Some(allowed) = route.auth.issuers.as_deref()
            && !allowed.contains(&issuer_index)
        {
            let names: Vec<&str> = allowed
                .iter()
                .filter_map(|i| issuers.get(*i).map(|x| &*x.name))
                .collect();
            report.check(
                "token",
                false,
                format!(
                    "issuer {} → not accepted on this route (accepts: {})",
                    issuer.name,
                    names.join(", ")
                ),
            );
            report.deny(
                "token",
                401,
                "token refused: the token's issuer is not accepted on this route (401)",
            );
            return Ok(report);
        }
        if let Some(missing) = issuer
            .required_claims
            .iter()
            .find(|c| !claims.contains_key(c.as_str()))
        {
            report.check(
                "token",
                false,
                format!(
                    "issuer {} requires claims [{}] → `{missing}` is missing",
                    issuer.name,
                    issuer.required_claims.join(", ")
                ),
            );
            report.deny(
                "token",
                401,
                format!("token refused: required claim `{missing}` is missing (401)"),
            );
            return Ok(report);
        }
        let must_bind = route.auth.require_bound || issuer.require_bound_tokens;
        let bound = claims
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(Value::as_str);
        let binding = match (bound, &cert) {
            (Some(b), Some(id)) => {
                use base64::Engine;
                let want =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.fingerprint_raw);
                if b == want {
                    Ok("bound to the certificate (cnf.x5t#S256)")
                } else {
                    Err("the token is bound to another client certificate (cnf.x5t#S256)")
                }
            }
            (Some(_), None) => {
                Err("the token is bound to a client certificate (cnf.x5t#S256); none given")
            }
            (None, _) if must_bind => {
                Err("this route requires a certificate-bound token (RFC 8705 cnf.x5t#S256)")
            }
            (None, _) => Ok(""),
        };
        let required = if issuer.required_claims.is_empty() {
            String::new()
        } else {
            format!(
                ", required claims [{}] present",
                issuer.required_claims.join(", ")
            )
        };
        match binding {
            Ok(b) => {
                let b = if b.is_empty() {
                    String::new()
                } else {
                    format!(", {b}")
                };
                report.check(
                    "token",
                    true,
                    format!(
                        "issuer {}{required}{b} (signature, expiry and audience not checked)",
                        issuer.name
                    ),
                );
            }
            Err(why) => {
                report.check("token", false, format!("issuer {} → {why}", issuer.name));
                report.deny("token", 401, format!("token refused: {why} (401)"));
                return Ok(report);
            }
        }
        let p = Principal::from_claims(issuer_index, issuer.name.clone(), &issuer.claims, claims);
        report.principal = Some(describe_principal(&p));
        principal = Some(p);
    } else if claims.is_some() {
        report
            .notes
            .push("--claims ignored: this route takes no token".into());
    }
    // Authorization.
    let Some(rules) = route.authz.clone() else {
        report.notes.push(match mode {
            AuthMode::Public => "a public route: no authorization checks".into(),
            _ => "the route's mTLS identities are its authorization rule".into(),
        });
        return Ok(report);
    };
    let body_value = match (&body, &rules.ownership) {
        (Some((len, v)), Some(o)) if rules.needs_body() => {
            if *len > o.max_body_bytes {
                report.check(
                    "body",
                    false,
                    format!(
                        "{len} bytes → over the route's max_body_bytes of {}",
                        o.max_body_bytes
                    ),
                );
                report.deny(
                    "body",
                    413,
                    format!(
                        "this route accepts bodies of at most {} bytes (413)",
                        o.max_body_bytes
                    ),
                );
                return Ok(report);
            }
            Some(v)
        }
        (None, _) if rules.needs_body() => {
            report
                .notes
                .push("a rule reads the body; no --body given, so its id is missing".into());
            None
        }
        _ => None,
    };
    let (trace, verdict) = super::explain(
        &rules,
        &runtime.authz,
        &m,
        principal.as_ref(),
        query,
        body_value,
        &metrics,
    )
    .await;
    if let Some(l) = &offline_lookups {
        report.lookups = Some(l.offline_asked());
    }
    for (rule, passed, detail) in trace.checks {
        report.check(&rule, passed, detail);
    }
    if rules.scopes.is_none()
        && rules.roles.is_none()
        && rules.permissions.is_none()
        && rules.tenant.is_none()
        && rules.ownership.is_none()
    {
        report.check("authenticated", true, "any authenticated caller");
    }
    report.object_ids = trace.object_ids;
    match verdict {
        Ok(()) => {
            report.decision = Decision::Allow {
                would_deny: trace.would_deny,
            };
        }
        Err((rule, e)) => {
            report.deny(
                rule,
                e.status.as_u16(),
                format!("{} ({} {})", e.detail, e.status.as_u16(), e.kind),
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_flags() {
        let a = parse_lookups(&[
            "redis owner:acme:accounts acc-100=yes".into(),
            "http http://own.internal/a?x=1=no".into(),
        ])
        .unwrap_or_default();
        assert_eq!(a.get("redis owner:acme:accounts acc-100"), Some(&true));
        assert_eq!(a.get("http http://own.internal/a?x=1"), Some(&false));
        assert!(parse_lookups(&["redis onlykey=yes".into()]).is_err());
        assert!(parse_lookups(&["ftp x=yes".into()]).is_err());
        assert!(parse_lookups(&["http http://x=maybe".into()]).is_err());
    }
}
