//! `portcullis explain`: why a request would be allowed or denied, offline.
//!
//! Loads and compiles a config like `run` (nothing is bound, no request is sent), routes the
//! request, then runs the checks the gateway would, in its order:
//! - a client certificate file (`--client-cert`) against the client CAs (and CRLs) of the
//!   listeners that verify client certificates, then against the route's mTLS identities;
//! - claims given as JSON (`--claims`, taken as verified: signature, expiry and audience are not
//!   checked) against the rules a verifier applies after the signature: the route's issuers,
//!   the issuer's required claims and RFC 8705 certificate binding;
//! - the route's authorization rules, through [`super::explain`].
//!
//! Ownership lookups go to the configured Redis / ownership service, unless answers are given
//! (`--lookup 'redis <key> <member>=yes'`, `--lookup 'http <url>=no'`) or `--offline` is set:
//! then a lookup not answered fails (deny), as an unreachable backend would.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use serde_json::{Map, Value};

use super::lookup::Lookups;
use crate::authn::AuthMode;
use crate::authn::jwt::{ClaimMap, Principal};
use crate::config::{self, Checked};
use crate::observe::metrics::Metrics;
use crate::proxy::router::RouteError;
use crate::tls::ClientAuth;
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
    /// The issuer whose claim map reads the claims (default: the first configured).
    pub issuer: Option<String>,
    /// A file holding the JSON request body.
    pub body: Option<PathBuf>,
    /// A PEM client certificate (leaf first, then any intermediates).
    pub client_cert: Option<PathBuf>,
    /// Lookup answers, `<question>=yes|no`.
    pub lookups: Vec<String>,
    /// Answer lookups only from `lookups` (the others fail).
    pub offline: bool,
}

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// `certificate`, `mtls`, `token`, `scopes`, `tenant`, `ownership`, ...
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
        /// The rule that decided (`routing`, `certificate`, `mtls`, `token`, `scopes`, ...).
        rule: String,
        /// The status the caller gets (`None`: the TLS handshake is refused).
        status: Option<u16>,
        /// What the caller is told.
        detail: String,
    },
}

/// Why a request would be allowed or denied; `Display` prints it for people.
#[derive(Debug, Clone)]
pub struct ExplainReport {
    /// `POST /v1/payments`.
    pub request: String,
    /// The matched route: (name, cluster, auth mode).
    pub route: Option<(String, String, &'static str)>,
    /// Why no route matched.
    pub no_route: Option<String>,
    /// The route's path parameters.
    pub params: Vec<(String, String)>,
    /// The caller, as the claims describe them.
    pub principal: Option<String>,
    /// The client certificate's identity.
    pub certificate: Option<String>,
    /// Each check, in order.
    pub checks: Vec<CheckLine>,
    /// Object ids the ownership rules looked at (each once).
    pub object_ids: Vec<String>,
    /// Offline lookups asked: (question, answer; `None`: not answered). `None` when live.
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

    fn deny(&mut self, rule: &str, status: Option<u16>, detail: impl Into<String>) {
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
        match (&self.route, &self.no_route) {
            (Some((name, cluster, auth)), _) => {
                writeln!(f, "route: {name} (cluster {cluster}, auth {auth})")?;
            }
            (None, why) => writeln!(f, "route: none ({})", why.as_deref().unwrap_or("-"))?,
        }
        if !self.params.is_empty() {
            let params: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "path parameters: {}", params.join(", "))?;
        }
        if let Some(c) = &self.certificate {
            writeln!(f, "certificate: {c}")?;
        }
        if let Some(p) = &self.principal {
            writeln!(f, "principal: {p}")?;
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
                        "  {q} → not answered: an error (add --lookup '{q}=yes' or '…=no')"
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
                match status {
                    Some(s) => writeln!(f, "decision: deny ({rule}, {s})")?,
                    None => writeln!(f, "decision: deny ({rule}, TLS handshake refused)")?,
                }
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
        // The answer is after the last `=` (URLs may hold `=`).
        let (q, a) = item.rsplit_once('=').ok_or_else(bad)?;
        let answer = match a.trim() {
            "yes" | "true" => true,
            "no" | "false" => false,
            _ => return Err(bad()),
        };
        let q = q.trim();
        let well_formed = match q.split_once(' ') {
            Some(("redis", rest)) => rest.trim().contains(' '),
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

/// The PEM chain in `path` (leaf first) and the leaf's identity.
fn read_cert(path: &Path) -> Result<(Vec<CertificateDer<'static>>, PeerIdentity), String> {
    let bad = |e: String| format!("--client-cert `{}`: {e}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad("holds no certificate".into()))?;
    let id = PeerIdentity::from_der(leaf).map_err(bad)?;
    Ok((chain, id))
}

/// Whether a listener that verifies client certificates accepts `chain`: `Ok(listener)` or
/// why none does.
fn verify_chain(settings: &Checked, chain: &[CertificateDer<'static>]) -> Result<String, String> {
    use rustls::server::WebPkiClientVerifier;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no certificate".into());
    };
    let mut why = Vec::new();
    for l in &settings.listeners {
        let Some(tls) = &l.tls else { continue };
        if tls.client_auth == ClientAuth::Off || tls.client_ca.is_empty() {
            continue;
        }
        let mut roots = rustls::RootCertStore::empty();
        for path in &tls.client_ca {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("`{}`: {e}", path.display()))?;
                roots.add(c).map_err(|e| {
                    format!("`{}`: not a usable CA certificate: {e}", path.display())
                })?;
            }
        }
        let mut crls = Vec::new();
        for path in &tls.crl {
            for c in CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
            {
                crls.push(c.map_err(|e| format!("`{}`: {e}", path.display()))?);
            }
        }
        let mut b =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider());
        if !crls.is_empty() {
            b = b.with_crls(crls).only_check_end_entity_revocation();
        }
        let verifier = b
            .build()
            .map_err(|e| format!("listener `{}`: client certificate verifier: {e}", l.name))?;
        match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => return Ok(l.name.to_string()),
            Err(e) => why.push(format!("listener `{}`: {e}", l.name)),
        }
    }
    if why.is_empty() {
        Err("no listener asks for client certificates (tls.client_auth with client_ca): the gateway never sees one".into())
    } else {
        Err(why.join("; "))
    }
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

/// The request as parsed from the arguments (before any config is read).
struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    claims: Option<Map<String, Value>>,
    /// (size, parsed JSON or why not).
    body: Option<(usize, Result<Value, String>)>,
    cert: Option<(Vec<CertificateDer<'static>>, PeerIdentity)>,
    offline: Option<HashMap<String, bool>>,
}

fn parse_args(args: &ExplainArgs) -> Result<Request, String> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--method `{}` is not an HTTP method", args.method))?;
    let (path, query) = match args.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (args.path.clone(), None),
    };
    if !path.starts_with('/') {
        return Err(format!("--path `{}` must start with `/`", args.path));
    }
    let claims = match &args.claims {
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
            let parsed = serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string());
            Some((bytes.len(), parsed))
        }
    };
    let cert = args.client_cert.as_deref().map(read_cert).transpose()?;
    let offline = if args.offline || !args.lookups.is_empty() {
        Some(parse_lookups(&args.lookups)?)
    } else {
        None
    };
    Ok(Request {
        method,
        path,
        query,
        claims,
        body,
        cert,
        offline,
    })
}

/// Explains one request (see the module docs).
///
/// # Errors
/// Usage and config errors: a bad method, path, claims, body file, certificate file or
/// `--lookup`, an unknown `--issuer`, a config that does not load or compile.
#[allow(clippy::too_many_lines)]
pub async fn run(args: ExplainArgs) -> Result<ExplainReport, String> {
    let req = parse_args(&args)?;
    let checked = config::load(&args.config, &config::process_env).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let mut runtime = config::compile(checked, &metrics)?;
    let offline = match req.offline {
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
        None => usize::MAX, // the first the route accepts (chosen once the route is known)
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

    let mut report = ExplainReport {
        request: format!("{} {}", req.method, args.path),
        route: None,
        no_route: None,
        params: Vec::new(),
        principal: None,
        certificate: req.cert.as_ref().map(|(_, id)| describe_cert(id)),
        checks: Vec::new(),
        object_ids: Vec::new(),
        lookups: None,
        notes: Vec::new(),
        decision: Decision::Allow {
            would_deny: Vec::new(),
        },
    };

    let m = match runtime
        .router
        .find(args.host.as_deref(), &req.method, &req.path)
    {
        Ok(m) => m,
        Err(RouteError::NotFound) => {
            report.no_route = Some(match &args.host {
                Some(h) => format!("nothing matches host {h}, path {}", req.path),
                None => format!("nothing matches {}", req.path),
            });
            report.deny("routing", Some(404), "no route matches (404 not-found)");
            return Ok(report);
        }
        Err(RouteError::MethodNotAllowed { allow }) => {
            report.no_route = Some(format!(
                "the path matches, but not for {}; allowed: {allow}",
                req.method
            ));
            report.deny(
                "routing",
                Some(405),
                format!("method not allowed (405; Allow: {allow})"),
            );
            return Ok(report);
        }
    };
    let route = m.route.clone();
    let mode = route.auth.mode;
    let issuer_index = match (issuer_index, route.auth.issuers.as_deref()) {
        (usize::MAX, Some(accepted)) => accepted.first().copied().unwrap_or(0),
        (usize::MAX, None) => 0,
        (i, _) => i,
    };
    let issuer = issuers.get(issuer_index);
    report.route = Some((
        route.name.to_string(),
        route.cluster.name.to_string(),
        mode_name(mode),
    ));
    report.params = m
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();

    // The TLS handshake: a presented certificate must chain to a listener's client CA.
    let id = match &req.cert {
        None => {
            let tls: Vec<_> = runtime.settings.listeners.iter().map(|l| &l.tls).collect();
            if tls.iter().all(|t| {
                t.as_ref()
                    .is_some_and(|t| t.client_auth == ClientAuth::Required)
            }) {
                report.notes.push(
                    "every listener requires a client certificate: the handshake fails without one (check yours with --client-cert)".into(),
                );
            }
            None
        }
        Some((chain, id)) => match verify_chain(&runtime.settings, chain) {
            Ok(listener) => {
                report.check(
                    "certificate",
                    true,
                    format!("trusted by listener `{listener}`'s client CA"),
                );
                Some(id)
            }
            Err(why) if why.starts_with("no listener") => {
                report.check("certificate", false, why);
                None
            }
            Err(why) => {
                report.check("certificate", false, format!("not trusted: {why}"));
                report.deny(
                    "certificate",
                    None,
                    "nothing: the TLS handshake fails (the certificate is not trusted)",
                );
                return Ok(report);
            }
        },
    };

    // Authentication: the certificate's identity, then the token (as the gateway orders them).
    if matches!(mode, AuthMode::Mtls | AuthMode::JwtAndMtls) {
        let rule_text = route.mtls.as_deref().map_or_else(
            || "a verified client certificate".to_owned(),
            |r| {
                r.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            },
        );
        let verdict = match id {
            None => Err("no trusted client certificate (--client-cert)".to_owned()),
            Some(id) => match crate::authn::check_mtls(route.mtls.as_deref(), Some(id)) {
                Ok(matched) => Ok(matched.unwrap_or("the certificate").to_owned()),
                Err(_) => Err("the certificate matches none".to_owned()),
            },
        };
        match verdict {
            Ok(by) => report.check("mtls", true, format!("needs {rule_text} → matched by {by}")),
            Err(why) => {
                report.check("mtls", false, format!("needs {rule_text} → {why}"));
                report.deny(
                    "mtls",
                    Some(403),
                    format!("mTLS identity required: {rule_text} (403 mtls-identity-required)"),
                );
                return Ok(report);
            }
        }
    }

    let mut principal: Option<Principal> = None;
    if matches!(mode, AuthMode::Jwt | AuthMode::JwtAndMtls) {
        let Some(claims) = req.claims else {
            report.check(
                "token",
                false,
                "no --claims given: the request has no bearer token",
            );
            report.deny("token", Some(401), "token refused: no bearer token (401)");
            return Ok(report);
        };
        let Some(issuer) = issuer else {
            // Validation refuses token routes without issuers; shown for completeness.
            let p = Principal::from_claims(0, "(none)".into(), &ClaimMap::default(), claims);
            report.principal = Some(describe_principal(&p));
            report.check("token", false, "no token issuer is configured");
            report.deny(
                "token",
                Some(401),
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
                Some(401),
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
                Some(401),
                format!("token refused: required claim `{missing}` is missing (401)"),
            );
            return Ok(report);
        }
        let must_bind = route.auth.require_bound || issuer.require_bound_tokens;
        let bound = claims
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(Value::as_str);
        let binding = match (bound, id) {
            (Some(b), Some(id)) => {
                use base64::Engine;
                let thumbprint =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.fingerprint_raw);
                if b == thumbprint {
                    Ok(", bound to the certificate (cnf.x5t#S256)")
                } else {
                    Err("the token is bound to another client certificate (cnf.x5t#S256)")
                }
            }
            (Some(_), None) => Err(
                "the token is bound to a client certificate (cnf.x5t#S256); no trusted one given",
            ),
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
            Ok(b) => report.check(
                "token",
                true,
                format!(
                    "issuer {}{required}{b} (signature, expiry and audience not checked)",
                    issuer.name
                ),
            ),
            Err(why) => {
                report.check("token", false, format!("issuer {} → {why}", issuer.name));
                report.deny("token", Some(401), format!("token refused: {why} (401)"));
                return Ok(report);
            }
        }
        let p = Principal::from_claims(issuer_index, issuer.name.clone(), &issuer.claims, claims);
        report.principal = Some(describe_principal(&p));
        principal = Some(p);
    } else if req.claims.is_some() {
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
    let mut body = None;
    if let Some(o) = rules.ownership.as_ref().filter(|_| rules.needs_body()) {
        match &req.body {
            None => report
                .notes
                .push("a rule reads the body, and no --body was given".into()),
            Some((len, _)) if *len > o.max_body_bytes => {
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
                    Some(413),
                    format!(
                        "this route accepts bodies of at most {} bytes (413 payload-too-large)",
                        o.max_body_bytes
                    ),
                );
                return Ok(report);
            }
            Some((_, Err(e))) => report
                .notes
                .push(format!("--body is not JSON ({e}): its fields are missing")),
            Some((_, Ok(v))) => body = Some(v),
        }
    }
    let (trace, verdict) = super::explain(
        &rules,
        &runtime.authz,
        &m,
        principal.as_ref(),
        req.query.as_deref(),
        body,
        &metrics,
    )
    .await;
    for (rule, passed, detail) in trace.checks {
        // The caller's side of the comparison, which the trace leaves out.
        let detail = match (rule.as_str(), &principal) {
            ("scopes", Some(p)) => format!("{detail} → caller has [{}]", p.scopes.join(", ")),
            ("roles" | "permissions", Some(p)) => {
                format!("{detail} → caller's roles [{}]", p.roles.join(", "))
            }
            ("tenant", _) => {
                let param = rules.tenant.as_ref().map_or("", |(p, _)| p.as_str());
                format!(
                    "{detail} → {param}={}, caller's tenant {}",
                    m.param(param).unwrap_or("-"),
                    principal
                        .as_ref()
                        .and_then(|p| p.tenant.as_deref())
                        .unwrap_or("-")
                )
            }
            _ => detail,
        };
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
    for oid in trace.object_ids {
        if !report.object_ids.contains(&oid) {
            report.object_ids.push(oid);
        }
    }
    match &offline {
        Some(l) => report.lookups = Some(l.offline_asked()),
        None => {
            let looked_up = rules.ownership.as_ref().is_some_and(|o| {
                o.rules.iter().any(|r| {
                    matches!(
                        r.check,
                        super::Check::Redis { .. } | super::Check::Http { .. }
                    )
                })
            });
            if looked_up {
                report.notes.push(
                    "lookups asked the configured Redis / ownership service; --offline lists the questions, --lookup answers them".into(),
                );
            }
        }
    }
    match verdict {
        Ok(()) => {
            report.decision = Decision::Allow {
                would_deny: trace.would_deny,
            };
        }
        Err((rule, e)) => {
            report.deny(
                rule,
                Some(e.status.as_u16()),
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

    #[test]
    fn report_prints_checks_and_decision() {
        let mut r = ExplainReport {
            request: "POST /v1/payments".into(),
            route: Some(("create-payment".into(), "payments".into(), "jwt")),
            no_route: None,
            params: Vec::new(),
            principal: None,
            certificate: None,
            checks: Vec::new(),
            object_ids: vec!["acc-200".into()],
            lookups: None,
            notes: Vec::new(),
            decision: Decision::Allow {
                would_deny: Vec::new(),
            },
        };
        r.check("scopes", true, "needs all of [payments:write]");
        r.check("ownership", false, "body field `/from_account` → not_owned");
        r.deny("ownership", Some(404), "not found");
        let text = r.to_string();
        assert!(
            text.contains("  ✔ scopes: needs all of [payments:write]"),
            "{text}"
        );
        assert!(text.contains("  ✘ ownership: body field"), "{text}");
        assert!(text.contains("decision: deny (ownership, 404)"), "{text}");
        assert!(!r.allowed());
    }
}
