//! Authorization (pipeline stage 8): scoped RBAC, tenant isolation and declarative
//! object-ownership (BOLA) checks, with report-only rules and an audit log.
//!
//! Reads [`RouteMatch`], the `Arc<`[`Principal`]`>` written by authentication and the
//! connection's identity; the route's compiled [`RouteAuthz`] says what to check:
//! - scopes, roles and permissions (roles map to permissions in the policies' `roles:`), as
//!   bit sets compiled from config; a caller's sets are computed once per verified token;
//! - `tenant`: a path parameter must equal the caller's tenant;
//! - `ownership`: object ids from the path, the query or a JSON body field (JSON Pointer) must
//!   be the caller's: listed in an array claim, equal to a claim, matching a pattern built from
//!   claims, or confirmed by a lookup in Redis or an ownership service. A missing id, a lookup
//!   error or a timeout denies (fail closed). A denial answers 404 by default so ids cannot be
//!   probed, 403 when the route says so.
//!
//! A body is read only for a route whose rules name a body field, bounded, parsed once and
//! forwarded byte for byte. A rule in `report` mode is evaluated and its would-deny logged,
//! counted and audited, but the request goes on.

pub mod audit;
pub mod explain;
pub mod lookup;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use crate::authn::jwt::Principal;
use crate::config::reload::Snapshot;
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::observe::request_id::RequestId;
use crate::proxy::RouteMatch;
use crate::server::ConnInfo;
use crate::{Body, BoxFuture};
use audit::{Audit, Record};
use lookup::{LookupError, LookupPolicy, Lookups, Question};

/// A set of interned names (scopes, roles or permissions) as bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`.
    pub fn set_bit(&mut self, i: u32) {
        self.set(i);
    }
    /// Adds every bit of `other`.
    pub fn union_with(&mut self, other: &Bits) {
        self.union(other);
    }
    fn set(&mut self, i: u32) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }
    fn union(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// Every bit of `need` is in `self`.
    fn contains_all(&self, need: &Bits) -> bool {
        need.0
            .iter()
            .enumerate()
            .all(|(i, n)| self.0.get(i).copied().unwrap_or(0) & n == *n)
    }
    /// Some bit of `any` is in `self`.
    fn intersects(&self, any: &Bits) -> bool {
        any.0.iter().zip(&self.0).any(|(a, b)| a & b != 0)
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// Names interned at compile time.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    /// Scope name → bit.
    pub scopes: HashMap<String, u32>,
    /// Role name → bit.
    pub roles: HashMap<String, u32>,
    /// Permission name → bit.
    pub permissions: HashMap<String, u32>,
    /// Permissions of each role (by role bit).
    pub role_permissions: Vec<Bits>,
}

impl Tables {
    /// Interns `name` in `map`.
    pub fn intern(map: &mut HashMap<String, u32>, name: &str) -> u32 {
        let next = u32::try_from(map.len()).unwrap_or(u32::MAX);
        *map.entry(name.to_owned()).or_insert(next)
    }

    /// Bits of `names` in `map` (names unknown to the config set no bit).
    fn bits_of<'a>(map: &HashMap<String, u32>, names: impl Iterator<Item = &'a str>) -> Bits {
        let mut b = Bits::default();
        for n in names {
            if let Some(i) = map.get(n) {
                b.set(*i);
            }
        }
        b
    }

    fn caller(&self, p: &Principal) -> CallerBits {
        let scopes = Self::bits_of(&self.scopes, p.scopes.iter().map(String::as_str));
        let roles = Self::bits_of(&self.roles, p.roles.iter().map(String::as_str));
        let mut permissions = Bits::default();
        for (i, w) in roles.0.iter().enumerate() {
            for b in 0..64 {
                if w & (1 << b) != 0
                    && let Some(p) = self.role_permissions.get(i * 64 + b)
                {
                    permissions.union(p);
                }
            }
        }
        CallerBits {
            scopes,
            roles,
            permissions,
        }
    }
}

/// A caller's scopes, roles and permissions as bits (computed once per verified token).
#[derive(Debug, Clone, Default)]
pub struct CallerBits {
    scopes: Bits,
    roles: Bits,
    permissions: Bits,
}

/// Enforce or report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Deny when the rule fails.
    #[default]
    Enforce,
    /// Log, count and audit a would-deny; allow.
    Report,
}

/// `all_of` / `any_of` over scopes, roles or permissions.
#[derive(Debug, Clone, Default)]
pub struct SetRule {
    /// Every one of these.
    pub all_of: Bits,
    /// At least one of these (none required when empty).
    pub any_of: Bits,
    /// As written, for messages (`all of [a, b]`).
    pub text: String,
    /// Enforce or report.
    pub mode: Mode,
}

impl SetRule {
    fn holds(&self, have: &Bits) -> bool {
        have.contains_all(&self.all_of) && (self.any_of.is_empty() || have.intersects(&self.any_of))
    }
}

/// Where an object id comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A path parameter.
    Path(String),
    /// A query parameter (a repeated one is refused: ambiguous).
    Query(String),
    /// A JSON Pointer into the body.
    Body(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path(p) => write!(f, "path parameter `{p}`"),
            Source::Query(q) => write!(f, "query parameter `{q}`"),
            Source::Body(b) => write!(f, "body field `{b}`"),
        }
    }
}

/// A template over claims and the object id: literal text and `{name}` placeholders.
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Var(String),
}

impl Template {
    /// Parses `owner:{tenant}:accounts`.
    ///
    /// # Errors
    /// An unclosed or empty placeholder.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Lit(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("`{s}` has an unclosed `{{`"));
            };
            let name = &after[..close];
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(format!("`{{{name}}}` in `{s}` is not a claim name"));
            }
            pieces.push(Piece::Var(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// Fills the placeholders: `{id}` with the object id (escaped by `escape`), others with
    /// the caller's string claims; `None` when a claim is missing.
    fn render(&self, id: &str, p: &Principal, escape: fn(&str) -> String) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) if v == "id" => out.push_str(&escape(id)),
                Piece::Var(v) => out.push_str(&escape(claim_str(p, v)?)),
            }
        }
        Some(out)
    }
}

fn claim_str<'a>(p: &'a Principal, name: &str) -> Option<&'a str> {
    match name {
        "tenant" => p.tenant.as_deref(),
        "sub" => p.subject.as_deref(),
        other => p.claims.get(other).and_then(serde_json::Value::as_str),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (URL path segments).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn no_escape(s: &str) -> String {
    s.to_owned()
}

/// What the id must satisfy.
#[derive(Debug, Clone)]
pub enum Check {
    /// The id is in this array claim.
    ClaimContains(String),
    /// The id equals this string claim.
    ClaimEquals(String),
    /// The id matches this pattern (claims filled in; `*` matches any run of characters).
    Pattern(Template),
    /// `SISMEMBER <key> <id>`.
    Redis {
        /// Key template.
        key: Template,
        /// Timeout and cache lifetimes.
        policy: LookupPolicy,
    },
    /// GET the URL; owned when the status is `expect`.
    Http {
        /// URL template (`{id}` and claims percent-encoded).
        url: Template,
        /// The status meaning "owned".
        expect: u16,
        /// Timeout and cache lifetimes.
        policy: LookupPolicy,
    },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::ClaimContains(c) => write!(f, "claim_contains {c}"),
            Check::ClaimEquals(c) => write!(f, "claim_equals {c}"),
            Check::Pattern(_) => f.write_str("template"),
            Check::Redis { .. } => f.write_str("redis lookup"),
            Check::Http { .. } => f.write_str("http lookup"),
        }
    }
}

/// One ownership rule.
#[derive(Debug, Clone)]
pub struct OwnershipRule {
    /// Where the id is.
    pub source: Source,
    /// What it must satisfy.
    pub check: Check,
}

/// Ownership rules of a route.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// `all_of` (true) or `any_of` (false).
    pub all: bool,
    /// The rules.
    pub rules: Vec<OwnershipRule>,
    /// 404 or 403.
    pub deny_status: StatusCode,
    /// Largest body read.
    pub max_body_bytes: usize,
    /// Enforce or report.
    pub mode: Mode,
}

/// A route's authorization rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct RouteAuthz {
    /// Scopes.
    pub scopes: Option<SetRule>,
    /// Roles.
    pub roles: Option<SetRule>,
    /// Permissions (through roles).
    pub permissions: Option<SetRule>,
    /// Tenant isolation: (path parameter, mode).
    pub tenant: Option<(String, Mode)>,
    /// Object ownership.
    pub ownership: Option<Ownership>,
}

impl RouteAuthz {
    /// Whether a rule reads the body.
    pub fn needs_body(&self) -> bool {
        self.ownership
            .as_ref()
            .is_some_and(|o| o.rules.iter().any(|r| matches!(r.source, Source::Body(_))))
    }
}

/// What authorization needs at run time besides the routes.
#[derive(Debug)]
pub struct AuthzRuntime {
    /// Interned names.
    pub tables: Tables,
    /// Redis and HTTP ownership lookups.
    pub lookups: Arc<Lookups>,
    /// The audit log.
    pub audit: Audit,
}

/// A decision: allowed, or the deciding rule and the refusal.
pub type Verdict = Result<(), (&'static str, AuthzError)>;

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AuthzError {
    /// 403, 404 or 503.
    pub status: StatusCode,
    /// `forbidden`, `not-found`, `audit-unavailable`.
    pub kind: &'static str,
    /// Machine-readable reason (`insufficient_scope`, `ownership`, ...).
    pub reason: &'static str,
    /// For the caller; names the requirement, never another caller's data.
    pub detail: String,
    /// Scopes to advertise in `WWW-Authenticate` (RFC 6750 `insufficient_scope`).
    pub scope_hint: Option<String>,
}

/// The outcome of one request's checks, for the audit log, the metrics and `explain`.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Record each check's detail (for `explain`; the request path skips the formatting).
    pub verbose: bool,
    /// Each check: (rule, passed, detail), when `verbose`.
    pub checks: Vec<(String, bool, String)>,
    /// Object ids looked at.
    pub object_ids: Vec<String>,
    /// Rules in report mode that would have denied.
    pub would_deny: Vec<String>,
    /// The ownership rule that failed, for the audit log (the caller only sees a 404).
    pub ownership_failure: Option<String>,
}

enum Outcome {
    Pass,
    Fail {
        rule: &'static str,
        err: AuthzError,
        mode: Mode,
    },
}

fn forbidden(reason: &'static str, detail: String) -> AuthzError {
    AuthzError {
        status: StatusCode::FORBIDDEN,
        kind: "forbidden",
        reason,
        detail,
        scope_hint: None,
    }
}

/// The synchronous checks: scopes, roles, permissions, tenant.
fn check_rbac(
    rules: &RouteAuthz,
    rt: &AuthzRuntime,
    principal: Option<&Principal>,
    m: &RouteMatch,
    trace: &mut Trace,
) -> Outcome {
    static NONE: OnceLock<CallerBits> = OnceLock::new();
    let caller = match principal {
        Some(p) => p.authz_bits.get_or_init(|| rt.tables.caller(p)),
        None => NONE.get_or_init(CallerBits::default),
    };
    let sets: [(&'static str, &Option<SetRule>, &Bits); 3] = [
        ("scopes", &rules.scopes, &caller.scopes),
        ("roles", &rules.roles, &caller.roles),
        ("permissions", &rules.permissions, &caller.permissions),
    ];
    for (name, rule, have) in sets {
        let Some(rule) = rule else { continue };
        let ok = rule.holds(have);
        if trace.verbose {
            trace
                .checks
                .push((name.to_owned(), ok, format!("needs {}", rule.text)));
        }
        if !ok {
            let mut err = forbidden(
                if name == "scopes" {
                    "insufficient_scope"
                } else {
                    "insufficient_role"
                },
                format!("this route needs {name} {}", rule.text),
            );
            if name == "scopes" {
                err.scope_hint = Some(rule.text.clone());
            }
            return Outcome::Fail {
                rule: name,
                err,
                mode: rule.mode,
            };
        }
    }
    if let Some((param, mode)) = &rules.tenant {
        let value = m.param(param);
        let tenant = principal.and_then(|p| p.tenant.as_deref());
        let ok = matches!((value, tenant), (Some(v), Some(t)) if v == t);
        if trace.verbose {
            trace.checks.push((
                "tenant".into(),
                ok,
                format!("path parameter `{param}` must be the caller's tenant"),
            ));
        }
        if !ok {
            return Outcome::Fail {
                rule: "tenant",
                err: forbidden(
                    "tenant_mismatch",
                    format!("path parameter `{param}` must be your own tenant"),
                ),
                mode: *mode,
            };
        }
    }
    Outcome::Pass
}

/// The object id a rule refers to.
fn object_id(
    source: &Source,
    m: &RouteMatch,
    query: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Option<String> {
    match source {
        Source::Path(p) => m.param(p).map(str::to_owned),
        Source::Query(name) => {
            let mut found = None;
            for pair in query.unwrap_or("").split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == name {
                    if found.is_some() {
                        return None; // repeated: ambiguous, deny
                    }
                    found = Some(v.to_owned());
                }
            }
            found.filter(|v| !v.is_empty())
        }
        Source::Body(ptr) => match body?.pointer(ptr)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleResult {
    Owned,
    NotOwned,
    Missing,
    LookupFailed,
    Timeout,
}

async fn check_rule(
    rule: &OwnershipRule,
    id: Option<&str>,
    principal: Option<&Principal>,
    lookups: &Lookups,
) -> RuleResult {
    let (Some(id), Some(p)) = (id, principal) else {
        return RuleResult::Missing;
    };
    let yes = |b: bool| {
        if b {
            RuleResult::Owned
        } else {
            RuleResult::NotOwned
        }
    };
    match &rule.check {
        Check::ClaimContains(c) => yes(p
            .claims
            .get(c)
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(id)))),
        Check::ClaimEquals(c) => yes(claim_str(p, c) == Some(id)),
        Check::Pattern(t) => match t.render(id, p, no_escape) {
            Some(pattern) => yes(glob(&pattern, id)),
            None => RuleResult::Missing,
        },
        Check::Redis { key, policy } => {
            let Some(key) = key.render(id, p, no_escape) else {
                return RuleResult::Missing;
            };
            let q = Question::RedisSetMember {
                key,
                member: id.to_owned(),
            };
            lookup_result(lookups.ask(&q, policy).await)
        }
        Check::Http {
            url,
            expect,
            policy,
        } => {
            let Some(url) = url.render(id, p, url_escape) else {
                return RuleResult::Missing;
            };
            let q = Question::Http {
                url,
                expect_status: *expect,
            };
            lookup_result(lookups.ask(&q, policy).await)
        }
    }
}

fn lookup_result(r: Result<bool, LookupError>) -> RuleResult {
    match r {
        Ok(true) => RuleResult::Owned,
        Ok(false) => RuleResult::NotOwned,
        Err(LookupError::Timeout) => RuleResult::Timeout,
        Err(_) => RuleResult::LookupFailed,
    }
}

/// Evaluates the ownership rules.
#[allow(clippy::too_many_arguments)]
async fn check_ownership(
    o: &Ownership,
    m: &RouteMatch,
    query: Option<&str>,
    body: Option<&serde_json::Value>,
    principal: Option<&Principal>,
    lookups: &Lookups,
    metrics: &Metrics,
    trace: &mut Trace,
) -> Outcome {
    let mut any_ok = false;
    let mut any_fail = false;
    for rule in &o.rules {
        let id = object_id(&rule.source, m, query, body);
        if let Some(id) = &id {
            trace.object_ids.push(id.clone());
        }
        let r = check_rule(rule, id.as_deref(), principal, lookups).await;
        let label = match r {
            RuleResult::Owned => None,
            RuleResult::NotOwned => Some("not_owned"),
            RuleResult::Missing => Some("missing_ref"),
            RuleResult::LookupFailed => Some("lookup_error"),
            RuleResult::Timeout => Some("timeout"),
        };
        if let Some(l) = label {
            metrics.ownership_failures.with_label_values(&[l]).inc();
        }
        if trace.verbose {
            let detail = format!(
                "{} {} → {}",
                rule.source,
                rule.check,
                label.unwrap_or("owned")
            );
            trace
                .checks
                .push(("ownership".into(), label.is_none(), detail));
        }
        if label.is_none() {
            any_ok = true;
            if !o.all {
                break;
            }
        } else {
            any_fail = true;
            if trace.ownership_failure.is_none() {
                trace.ownership_failure = Some(format!(
                    "{} {} → {}",
                    rule.source,
                    rule.check,
                    label.unwrap_or("owned")
                ));
            }
            if o.all {
                break;
            }
        }
    }
    let ok = if o.all { !any_fail } else { any_ok };
    if ok {
        return Outcome::Pass;
    }
    let err = if o.deny_status == StatusCode::NOT_FOUND {
        AuthzError {
            status: StatusCode::NOT_FOUND,
            kind: "not-found",
            reason: "ownership",
            detail: "The requested object was not found.".into(),
            scope_hint: None,
        }
    } else {
        forbidden(
            "ownership",
            "the objects this request names are not yours".into(),
        )
    };
    Outcome::Fail {
        rule: "ownership",
        err,
        mode: o.mode,
    }
}

/// Reads the body (bounded) and parses it as JSON once; the bytes are put back unchanged.
async fn take_json_body(
    req: &mut Request<Body>,
    limit: usize,
) -> Result<Option<serde_json::Value>, GatewayError> {
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(GatewayError::Authz(AuthzError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "payload-too-large",
            reason: "body_too_large",
            detail: format!("this route accepts bodies of at most {limit} bytes"),
            scope_hint: None,
        }));
    }
    let body = std::mem::replace(req.body_mut(), crate::full(Bytes::new()));
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(GatewayError::Authz(AuthzError {
                status: if too_large {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                kind: if too_large {
                    "payload-too-large"
                } else {
                    "bad-request"
                },
                reason: if too_large {
                    "body_too_large"
                } else {
                    "body_unreadable"
                },
                detail: if too_large {
                    format!("this route accepts bodies of at most {limit} bytes")
                } else {
                    "the request body could not be read".into()
                },
                scope_hint: None,
            }));
        }
    };
    // Only strict JSON is read for object references: with duplicate keys (or anything else
    // parsers disagree on) the backend could act on another id than the one checked here, so
    // such a body has no references and the ownership rule denies.
    let strict =
        crate::sanitize::json::check(&bytes, &crate::sanitize::json::JsonLimits::default());
    let parsed = strict
        .ok()
        .and_then(|()| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    *req.body_mut() = crate::full(bytes);
    Ok(parsed)
}

/// Applies each route's authorization rules (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    metrics: Arc<Metrics>,
    allowed: prometheus::IntCounter,
}

impl AuthzLayer {
    /// Counts decisions in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        // Resolved once: a label lookup takes a lock and hashes on every call.
        let allowed = metrics.authz_decisions.with_label_values(&["all", "allow"]);
        Self { metrics, allowed }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            metrics: self.metrics.clone(),
            allowed: self.allowed.clone(),
        }
    }
}

/// The service made by [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    metrics: Arc<Metrics>,
    allowed: prometheus::IntCounter,
}

type Fut = BoxFuture<Result<Response<Body>, GatewayError>>;

impl<S> Service<Request<Body>> for Authz<S>
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ext = req.extensions();
        let (Some(m), Some(runtime)) = (ext.get::<RouteMatch>(), ext.get::<Snapshot>()) else {
            return Box::pin(async {
                Err(GatewayError::Internal(
                    "authorization without a route".into(),
                ))
            });
        };
        let Some(rules) = m.route.authz.clone() else {
            // A public route (validation guarantees every other route has rules).
            return self.inner.call(req);
        };
        let runtime = runtime.clone();
        let metrics = self.metrics.clone();
        // The common case — no ownership rules, no audit of this request — stays synchronous.
        let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if rules.ownership.is_none() && !(writes && runtime.authz.audit.enabled()) {
            let mut trace = Trace::default();
            let principal = ext.get::<Arc<Principal>>().cloned();
            let outcome = check_rbac(&rules, &runtime.authz, principal.as_deref(), m, &mut trace);
            match settle(outcome, &metrics, &mut trace) {
                Ok(()) if trace.would_deny.is_empty() => {
                    self.allowed.inc();
                    return self.inner.call(req);
                }
                _ => {}
            }
        }
        let inner = self.inner.clone();
        let allowed = self.allowed.clone();
        Box::pin(async move { decide(req, rules, runtime, metrics, allowed, inner).await })
    }
}

/// Applies report mode: a failing report-only rule is noted, not enforced.
fn settle(
    outcome: Outcome,
    metrics: &Metrics,
    trace: &mut Trace,
) -> Result<(), (&'static str, AuthzError)> {
    match outcome {
        Outcome::Pass => Ok(()),
        Outcome::Fail {
            rule,
            mode: Mode::Report,
            err,
        } => {
            metrics
                .authz_decisions
                .with_label_values(&[rule, "would_deny"])
                .inc();
            tracing::warn!(rule, reason = err.reason, "report-only rule would deny");
            trace.would_deny.push(format!("{rule}: {}", err.detail));
            Ok(())
        }
        Outcome::Fail { rule, err, .. } => Err((rule, err)),
    }
}

async fn decide<S>(
    mut req: Request<Body>,
    rules: Arc<RouteAuthz>,
    runtime: Snapshot,
    metrics: Arc<Metrics>,
    allowed: prometheus::IntCounter,
    inner: S,
) -> Result<Response<Body>, GatewayError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError, Future = Fut>,
{
    let rt = &runtime.authz;
    let mut trace = Trace::default();
    let principal = req.extensions().get::<Arc<Principal>>().cloned();
    // Taken out (not cloned) while the checks run; put back for the forwarder.
    let Some(m) = req.extensions_mut().remove::<RouteMatch>() else {
        return Err(GatewayError::Internal(
            "authorization without a route".into(),
        ));
    };
    let mut verdict = settle(
        check_rbac(&rules, rt, principal.as_deref(), &m, &mut trace),
        &metrics,
        &mut trace,
    );
    if verdict.is_ok()
        && let Some(o) = &rules.ownership
    {
        let body = if rules.needs_body() {
            take_json_body(&mut req, o.max_body_bytes).await?
        } else {
            None
        };
        let outcome = check_ownership(
            o,
            &m,
            req.uri().query(),
            body.as_ref(),
            principal.as_deref(),
            &rt.lookups,
            &metrics,
            &mut trace,
        )
        .await;
        verdict = settle(outcome, &metrics, &mut trace);
    }
    match &verdict {
        Ok(()) => allowed.inc(),
        Err((rule, _)) => metrics
            .authz_decisions
            .with_label_values(&[rule, "deny"])
            .inc(),
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let reported = !trace.would_deny.is_empty();
    if rt.audit.enabled() && (verdict.is_err() || reported || writes) {
        let (decision, rule, reason) = match &verdict {
            Err((rule, e)) => (
                "deny",
                (*rule).to_owned(),
                match (&trace.ownership_failure, *rule) {
                    (Some(why), "ownership") => why.clone(),
                    _ => e.detail.clone(),
                },
            ),
            Ok(()) if reported => ("report", "report".to_owned(), trace.would_deny.join("; ")),
            Ok(()) => ("allow", "all".to_owned(), "every rule passed".to_owned()),
        };
        let id = req.extensions().get::<RequestId>();
        let peer = req
            .extensions()
            .get::<Arc<ConnInfo>>()
            .and_then(|c| c.identity.as_ref())
            .map(|i| i.fingerprint.clone());
        let record = Record {
            time: audit::now_rfc3339(),
            request_id: id.map(|i| i.as_str().to_owned()).unwrap_or_default(),
            subject: principal.as_ref().and_then(|p| p.subject.clone()),
            tenant: principal.as_ref().and_then(|p| p.tenant.clone()),
            peer_fingerprint: peer,
            route: m.route.name.to_string(),
            method: req.method().as_str().to_owned(),
            // Object ids may be card numbers: the audit keeps only their first six and last
            // four digits.
            object_ids: trace
                .object_ids
                .iter()
                .map(|id| crate::observe::redact::mask_pans(id).into_owned())
                .collect(),
            decision,
            rule,
            reason,
        };
        let queued = rt.audit.push(record);
        if !queued && rt.audit.required && verdict.is_ok() && writes {
            return Err(GatewayError::Authz(AuthzError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "audit-unavailable",
                reason: "audit_queue_full",
                detail: "writes are refused while they cannot be audited; retry shortly".into(),
                scope_hint: None,
            }));
        }
    }
    match verdict {
        Ok(()) => {
            req.extensions_mut().insert(m);
            inner.oneshot(req).await
        }
        Err((_, e)) => Err(GatewayError::Authz(e)),
    }
}

/// Decides `req` offline for `portcullis explain`: every check with its inputs and result.
///
/// # Errors
/// When the route has no rules to explain (public) — reported as an allow by the caller.
pub async fn explain(
    rules: &RouteAuthz,
    rt: &AuthzRuntime,
    m: &RouteMatch,
    principal: Option<&Principal>,
    query: Option<&str>,
    body: Option<&serde_json::Value>,
    metrics: &Metrics,
) -> (Trace, Verdict) {
    evaluate(rules, rt, m, principal, query, body, metrics, true).await
}

#[allow(clippy::too_many_arguments)]
async fn evaluate(
    rules: &RouteAuthz,
    rt: &AuthzRuntime,
    m: &RouteMatch,
    principal: Option<&Principal>,
    query: Option<&str>,
    body: Option<&serde_json::Value>,
    metrics: &Metrics,
    verbose: bool,
) -> (Trace, Verdict) {
    let mut trace = Trace {
        verbose,
        ..Trace::default()
    };
    let mut verdict = settle(
        check_rbac(rules, rt, principal, m, &mut trace),
        metrics,
        &mut trace,
    );
    if verdict.is_ok()
        && let Some(o) = &rules.ownership
    {
        let outcome = check_ownership(
            o,
            m,
            query,
            body,
            principal,
            &rt.lookups,
            metrics,
            &mut trace,
        )
        .await;
        verdict = settle(outcome, metrics, &mut trace);
    }
    (trace, verdict)
}

/// Decides at once when no rule needs to wait (claim-based rules only: no lookup); `None`
/// when a lookup would have to be awaited. For benchmarks and `explain`.
pub fn decide_now(
    rules: &RouteAuthz,
    rt: &AuthzRuntime,
    m: &RouteMatch,
    principal: Option<&Principal>,
    query: Option<&str>,
    body: Option<&serde_json::Value>,
    metrics: &Metrics,
) -> Option<(Trace, Verdict)> {
    // As on the request path: no per-check detail strings.
    let fut = std::pin::pin!(evaluate(
        rules, rt, m, principal, query, body, metrics, false
    ));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_templates() {
        assert!(glob("acme-*", "acme-100"));
        assert!(!glob("acme-*", "globex-100"));
        assert!(glob("*-100", "acme-100"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(glob("exact", "exact"));
        assert!(Template::parse("owner:{tenant}:accounts").is_ok());
        assert!(Template::parse("owner:{tenant").is_err());
        assert!(Template::parse("{}").is_err());
        assert_eq!(url_escape("a/../b c"), "a%2F..%2Fb%20c");
    }

    #[test]
    fn bit_sets() {
        let mut have = Bits::default();
        have.set(1);
        have.set(70);
        let mut need = Bits::default();
        need.set(70);
        assert!(have.contains_all(&need));
        need.set(2);
        assert!(!have.contains_all(&need));
        assert!(have.intersects(&need));
        assert!(!Bits::default().intersects(&need));
    }
}
