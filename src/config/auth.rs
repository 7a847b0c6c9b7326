//! Validation of the authentication settings: token issuers, the global `jwt` block and each
//! route's `auth` rule (deny by default: a route that does not say how its callers
//! authenticate is an error).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::raw::{self, RawAuth, RawIssuer, RawRoute};
use super::validate::{Ctx, dur, pos_of, suggest, valid_name};
use super::yaml::{Node, Value};
use crate::authn::AuthMode;
use crate::authn::jwks::{JwksSettings, JwksSource};
use crate::authn::jwt::{CacheLimits, ClaimMap};

/// A validated issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    /// Config name.
    pub name: String,
    /// Exact `iss`.
    pub iss: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock leeway.
    pub leeway: Duration,
    /// Maximum lifetime.
    pub max_lifetime: Duration,
    /// Required claims.
    pub required_claims: Vec<String>,
    /// Claim mapping.
    pub claims: ClaimMap,
    /// Required `typ` (lower case, no `application/`).
    pub typ: Option<String>,
    /// Every token must be certificate-bound.
    pub require_bound_tokens: bool,
    /// Key source.
    pub jwks: JwksSettings,
    /// The scopes this issuer grants, when declared.
    pub scopes: Option<Vec<String>>,
}

/// Validated global token settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtSettings {
    /// Largest bearer token accepted.
    pub max_token_bytes: usize,
    /// Verified-token cache bounds.
    pub cache: CacheLimits,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            max_token_bytes: 8192,
            cache: CacheLimits::default(),
        }
    }
}

/// Issuer names for route checks: the valid ones (their index is the runtime index) and every
/// declared one (so a route naming an issuer with its own error is not reported twice).
pub struct IssuerNames<'a> {
    /// Validated issuers.
    pub valid: &'a [IssuerSettings],
    /// Every name under `issuers`.
    pub declared: &'a [String],
}

const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];
const KNOWN_ALGORITHMS: [&str; 10] = [
    "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "none",
];

pub(super) fn check_issuers(ctx: &mut Ctx<'_>, root: &Node) -> (Vec<IssuerSettings>, Vec<String>) {
    let mut out = Vec::new();
    let mut declared = Vec::new();
    match root.get("issuers").map(|n| &n.value) {
        Some(Value::Map(entries)) => {
            for (k, node) in entries {
                declared.push(k.name.clone());
                let path = format!("issuers.{}", k.name);
                if !valid_name(&k.name) {
                    ctx.err(
                        k.pos,
                        &path,
                        format!(
                            "issuer name `{}` must be letters, digits, `-`, `_` or `.`",
                            k.name
                        ),
                        None,
                    );
                    continue;
                }
                if let Some(raw) = ctx.decode::<RawIssuer>(node, &path)
                    && let Some(s) = check_issuer(ctx, node, &path, &k.name, raw)
                {
                    if let Some(first) = out.iter().find(|o: &&IssuerSettings| o.iss == s.iss) {
                        ctx.err(
                            pos_of(node, "issuer"),
                            &format!("{path}.issuer"),
                            format!(
                                "issuer `{}` is also configured as `{}`; the token's `iss` must pick one",
                                s.iss, first.name
                            ),
                            None,
                        );
                        continue;
                    }
                    out.push(s);
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => ctx.err(
            pos_of(root, "issuers"),
            "issuers",
            "`issuers` must be a map from name to issuer",
            None,
        ),
    }
    (out, declared)
}

fn check_issuer(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    name: &str,
    r: RawIssuer,
) -> Option<IssuerSettings> {
    let mut ok = true;
    if r.issuer.trim().is_empty() {
        ctx.err(
            pos_of(node, "issuer"),
            &format!("{path}.issuer"),
            "`issuer` must be the exact `iss` of the tokens",
            Some("for example `https://idp.acme.example`".into()),
        );
        ok = false;
    }
    if r.audiences.is_empty() || r.audiences.iter().any(|a| a.trim().is_empty()) {
        ctx.err(
            pos_of(node, "audiences"),
            &format!("{path}.audiences"),
            "`audiences` needs at least one non-empty audience",
            Some(
                "tokens must be meant for this API: for example `audiences: [finance-api]`".into(),
            ),
        );
        ok = false;
    }
    let mut algorithms = Vec::new();
    match &r.algorithms {
        None => algorithms.extend(DEFAULT_ALGORITHMS),
        Some(list) => {
            let anode = node.get("algorithms").unwrap_or(node);
            if list.is_empty() {
                ctx.err(
                    anode.pos,
                    &format!("{path}.algorithms"),
                    "`algorithms` needs at least one algorithm",
                    Some("leave it out for PS256, ES256 and EdDSA".into()),
                );
                ok = false;
            }
            for (i, a) in list.iter().enumerate() {
                let apos = match &anode.value {
                    Value::Seq(items) => items.get(i).map_or(anode.pos, |n| n.pos),
                    _ => anode.pos,
                };
                let apath = format!("{path}.algorithms[{i}]");
                match a.parse::<Algorithm>() {
                    Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                        ctx.err(
                            apos,
                            &apath,
                            format!("`{a}` is not accepted: an HMAC secret cannot be published in a JWKS, and accepting HMAC invites key-confusion attacks"),
                            Some("use an asymmetric algorithm such as PS256, ES256 or EdDSA".into()),
                        );
                        ok = false;
                    }
                    Ok(alg) => {
                        if !algorithms.contains(&alg) {
                            algorithms.push(alg);
                        }
                    }
                    Err(_) if a.eq_ignore_ascii_case("none") => {
                        ctx.err(
                            apos,
                            &apath,
                            "`none` (unsigned tokens) is never accepted",
                            None,
                        );
                        ok = false;
                    }
                    Err(_) => {
                        let hint = suggest(a, KNOWN_ALGORITHMS[..9].iter().copied())
                            .map(|s| format!("did you mean `{s}`?"));
                        ctx.err(
                            apos,
                            &apath,
                            format!("`{a}` is not a JWS signature algorithm"),
                            hint.or_else(|| {
                                Some("one of PS256, PS384, PS512, RS256, RS384, RS512, ES256, ES384, EdDSA".into())
                            }),
                        );
                        ok = false;
                    }
                }
            }
        }
    }
    let leeway = dur(r.leeway, Duration::from_secs(30));
    if leeway > Duration::from_secs(120) {
        ctx.err(
            pos_of(node, "leeway"),
            &format!("{path}.leeway"),
            format!(
                "a leeway of {} s is too lenient; at most 120 s",
                leeway.as_secs()
            ),
            None,
        );
        ok = false;
    }
    let max_lifetime = dur(r.max_lifetime, Duration::from_secs(3600));
    if max_lifetime.is_zero() {
        ctx.err(
            pos_of(node, "max_lifetime"),
            &format!("{path}.max_lifetime"),
            "`max_lifetime` must be positive",
            None,
        );
        ok = false;
    }
    let defaults = ClaimMap::default();
    let claims = match &r.claims {
        None => defaults,
        Some(c) => ClaimMap {
            tenant: c.tenant.clone().unwrap_or(defaults.tenant),
            scopes: c.scopes.clone().unwrap_or(defaults.scopes),
            roles: c.roles.clone().unwrap_or(defaults.roles),
        },
    };
    let typ = r.typ.as_ref().map(|t| {
        let t = t.to_ascii_lowercase();
        t.strip_prefix("application/").unwrap_or(&t).to_owned()
    });
    let jwks = check_jwks(
        ctx,
        node.get("jwks").unwrap_or(node),
        &format!("{path}.jwks"),
        &r.jwks,
    );
    let jwks = jwks?;
    ok.then(|| IssuerSettings {
        name: name.to_owned(),
        iss: r.issuer,
        audiences: r.audiences,
        algorithms,
        leeway,
        max_lifetime,
        required_claims: r.required_claims,
        claims,
        typ,
        require_bound_tokens: r.require_bound_tokens,
        jwks,
        scopes: r.scopes,
    })
}

fn check_jwks(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    j: &raw::RawJwks,
) -> Option<JwksSettings> {
    let mut ok = true;
    let source = match (&j.url, &j.file) {
        (Some(url), None) => {
            let parsed: Result<http::Uri, _> = url.parse();
            match parsed {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    Some(JwksSource::Url(url.clone()))
                }
                _ => {
                    ctx.err(
                        pos_of(node, "url"),
                        &format!("{path}.url"),
                        format!("`{url}` is not an http or https URL"),
                        Some("for example `https://idp.acme.example/.well-known/jwks.json`".into()),
                    );
                    None
                }
            }
        }
        (None, Some(file)) => Some(JwksSource::File(ctx.base.join(file))),
        _ => {
            ctx.err(
                node.pos,
                path,
                "`jwks` needs exactly one of `url` and `file`",
                None,
            );
            None
        }
    };
    let refresh = dur(j.refresh, Duration::from_secs(300));
    let cooldown = dur(j.cooldown, Duration::from_secs(30));
    let max_stale = dur(j.max_stale, Duration::from_secs(24 * 3600));
    let timeout = dur(j.timeout, Duration::from_secs(2));
    for (key, d) in [
        ("refresh", refresh),
        ("cooldown", cooldown),
        ("timeout", timeout),
    ] {
        if d < Duration::from_millis(100) {
            ctx.err(
                pos_of(node, key),
                &format!("{path}.{key}"),
                format!("`{key}` must be at least 100ms"),
                None,
            );
            ok = false;
        }
    }
    if cooldown > refresh {
        ctx.err(
            pos_of(node, "cooldown"),
            &format!("{path}.cooldown"),
            "`cooldown` must not be longer than `refresh`",
            Some("the cooldown also bounds how often a Cache-Control max-age may refresh".into()),
        );
        ok = false;
    }
    let ca: Vec<PathBuf> = j.ca.iter().map(|p| ctx.base.join(p)).collect();
    let source = source?;
    ok.then_some(JwksSettings {
        source,
        refresh,
        cooldown,
        max_stale,
        timeout,
        ca,
    })
}

pub(super) fn check_jwt(ctx: &mut Ctx<'_>, root: &Node) -> JwtSettings {
    let mut s = JwtSettings::default();
    if let Some(node) = root.get("jwt")
        && let Some(j) = ctx.decode::<raw::RawJwt>(node, "jwt")
    {
        if let Some(n) = j.max_token_bytes {
            if (512..=65536).contains(&n) {
                s.max_token_bytes = n;
            } else {
                ctx.err(
                    pos_of(node, "max_token_bytes"),
                    "jwt.max_token_bytes",
                    format!("max_token_bytes must be between 512 and 65536, not {n}"),
                    None,
                );
            }
        }
        if let Some(c) = j.cache {
            if let Some(n) = c.max_entries {
                s.cache.max_entries = n;
            }
            if let Some(n) = c.max_bytes {
                s.cache.max_bytes = n;
            }
        }
    }
    s
}

/// The route's `auth`, issuers (indices) and bound-token demand.
pub(super) fn check_route_auth(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    r: &RawRoute,
    issuers: &IssuerNames<'_>,
) -> Option<(AuthMode, Option<Vec<usize>>, bool)> {
    let Some(auth) = r.auth else {
        ctx.err(
            node.pos,
            path,
            format!("route `{}` does not say how callers authenticate", r.name),
            Some("add `auth:` with one of public, jwt, mtls, jwt_and_mtls (deny by default: `public` must be written out)".into()),
        );
        return None;
    };
    let mode = match auth {
        RawAuth::Public => AuthMode::Public,
        RawAuth::Jwt => AuthMode::Jwt,
        RawAuth::Mtls => AuthMode::Mtls,
        RawAuth::JwtAndMtls => AuthMode::JwtAndMtls,
    };
    let mut ok = true;
    let wants_jwt = matches!(mode, AuthMode::Jwt | AuthMode::JwtAndMtls);
    let wants_mtls = matches!(mode, AuthMode::Mtls | AuthMode::JwtAndMtls);
    if r.jwt.is_some() && !wants_jwt {
        ctx.err(
            pos_of(node, "jwt"),
            &format!("{path}.jwt"),
            "`jwt` rules need `auth: jwt` or `auth: jwt_and_mtls`",
            None,
        );
        ok = false;
    }
    if r.mtls.is_some() && !wants_mtls {
        ctx.err(
            pos_of(node, "mtls"),
            &format!("{path}.mtls"),
            "`mtls` identities need `auth: mtls` or `auth: jwt_and_mtls`",
            None,
        );
        ok = false;
    }
    if wants_jwt && issuers.declared.is_empty() {
        ctx.err(
            pos_of(node, "auth"),
            &format!("{path}.auth"),
            "this route takes tokens but no `issuers` are configured in the gateway file",
            Some("add an issuer under `issuers:` with its `issuer`, `audiences` and `jwks`".into()),
        );
        ok = false;
    }
    let mut indices = None;
    let mut require_bound = false;
    if let Some(j) = &r.jwt {
        require_bound = j.require_bound_tokens;
        if let Some(names) = &j.issuers {
            let inode = node
                .get("jwt")
                .and_then(|n| n.get("issuers"))
                .unwrap_or(node);
            let mut list = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let ipos = match &inode.value {
                    Value::Seq(items) => items.get(i).map_or(inode.pos, |x| x.pos),
                    _ => inode.pos,
                };
                match issuers.valid.iter().position(|s| &s.name == n) {
                    Some(idx) => list.push(idx),
                    None if issuers.declared.contains(n) => ok = false,
                    None => {
                        let hint = suggest(n, issuers.declared.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"))
                            .or_else(|| {
                                Some(format!(
                                    "configured issuers: {}",
                                    issuers.declared.join(", ")
                                ))
                            });
                        ctx.err(
                            ipos,
                            &format!("{path}.jwt.issuers[{i}]"),
                            format!("unknown issuer `{n}`"),
                            hint,
                        );
                        ok = false;
                    }
                }
            }
            if list.is_empty() && ok {
                ctx.err(
                    inode.pos,
                    &format!("{path}.jwt.issuers"),
                    "`issuers` needs at least one issuer (leave it out to accept every issuer)",
                    None,
                );
                ok = false;
            }
            indices = Some(list);
        }
    }
    ok.then_some((mode, indices, require_bound))
}
