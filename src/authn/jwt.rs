//! Bearer-token (JWT/JWS compact) verification.
//!
//! The rules, in the order they run:
//! 1. size before anything else; three base64url parts, no padding, nothing else;
//! 2. header: `alg` `none` refused; `jwk`, `jku`, `x5u`, `x5c` refused (keys come only from the
//!    issuer's JWKS); any `crit` refused (no extension is understood); `kid` printable and short;
//! 3. the unverified `iss` picks the issuer (exact match); the header `alg` must be in that
//!    issuer's allowlist (config, never the token) and fit the key's type (an RSA key is never
//!    an HMAC secret: symmetric keys are never loaded at all);
//! 4. `kid` selects the key (an unknown `kid` lets the caller refetch once, see
//!    [`super::jwks::KeyStore::refetch_for_unknown_kid`]); the signature is checked by ring;
//! 5. claims: `exp` required, `nbf`/`iat` not in the future beyond the leeway, `aud` contains an
//!    accepted audience, `exp - iat` within the maximum lifetime, required claims present,
//!    optional `typ`; RFC 8705 `cnf.x5t#S256` equal to the connection's client certificate.
//!
//! A verified token is cached (bounded in entries and bytes, keyed by the whole token, never
//! past its `exp`, void once its issuer's key set changes); the time checks and the certificate
//! binding run again on every hit.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{self, KeyStore};

/// A refused token: a machine-readable reason and a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// One of the documented reason codes (`expired`, `bad_signature`, ...).
    pub reason: &'static str,
    /// What is wrong, for the caller; never contains the token, a key or the `kid`.
    pub detail: String,
}

impl TokenError {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason)
    }
}

/// Which claims carry the tenant, the scopes and the roles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimMap {
    /// Tenant claim (a string).
    pub tenant: String,
    /// Scopes claim (space-separated string or array of strings).
    pub scopes: String,
    /// Roles claim (array of strings or space-separated string).
    pub roles: String,
}

impl Default for ClaimMap {
    fn default() -> Self {
        Self {
            tenant: "tenant".into(),
            scopes: "scope".into(),
            roles: "roles".into(),
        }
    }
}

/// One trusted token issuer, compiled.
#[derive(Debug)]
pub struct Issuer {
    /// Config name (metrics, logs, `X-Portcullis-Issuer`).
    pub name: Arc<str>,
    /// Exact `iss`.
    pub iss: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock leeway.
    pub leeway: Duration,
    /// Maximum `exp - iat`.
    pub max_lifetime: Duration,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Claim mapping.
    pub claims: ClaimMap,
    /// Required header `typ`, lower case, without `application/`.
    pub typ: Option<String>,
    /// Every token must be certificate-bound.
    pub require_bound_tokens: bool,
    /// Its keys.
    pub keys: Arc<KeyStore>,
}

/// Who the caller is, as a verified token says.
#[derive(Debug)]
pub struct Principal {
    /// Index of the issuer in the verifier.
    pub issuer_index: usize,
    /// The issuer's config name.
    pub issuer: Arc<str>,
    /// `sub`.
    pub subject: Option<String>,
    /// The tenant claim.
    pub tenant: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Every claim, for later stages (authorization, rate limits).
    pub claims: Map<String, Value>,
    /// `exp`, Unix seconds.
    pub exp: i64,
    /// `nbf`, Unix seconds.
    pub nbf: Option<i64>,
    /// RFC 8705 `cnf.x5t#S256`, decoded.
    pub bound_to: Option<[u8; 32]>,
    /// Header values for the backend, prepared once per token.
    pub headers: PrincipalHeaders,
    /// Scopes, roles and permissions as authorization bit sets, computed on first use.
    pub authz_bits: std::sync::OnceLock<crate::authz::CallerBits>,
}

/// `X-Portcullis-*` values derived from a principal (absent when a value is not header-safe).
#[derive(Debug, Default)]
pub struct PrincipalHeaders {
    /// `X-Portcullis-Subject`.
    pub subject: Option<HeaderValue>,
    /// `X-Portcullis-Tenant`.
    pub tenant: Option<HeaderValue>,
    /// `X-Portcullis-Scopes`.
    pub scopes: Option<HeaderValue>,
    /// `X-Portcullis-Issuer`.
    pub issuer: Option<HeaderValue>,
}

fn safe_header(s: &str) -> Option<HeaderValue> {
    (!s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then(|| HeaderValue::from_str(s).ok())
        .flatten()
}

/// Limits of the verified-token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheLimits {
    /// Most entries.
    pub max_entries: usize,
    /// Most bytes (tokens and claims, estimated).
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// All issuers, the token size limit and the verified-token cache.
#[derive(Debug)]
pub struct Verifier {
    /// Issuers in config order.
    pub issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    /// Largest bearer token accepted, in bytes.
    pub max_token_bytes: usize,
    cache: TokenCache,
    /// `portcullis_jwt_cache_total{result="hit"|"miss"}`, when counted.
    counters: Option<(prometheus::IntCounter, prometheus::IntCounter)>,
}

/// What the route asks of the token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand<'a> {
    /// Issuers accepted on the route (indices), all when `None`.
    pub issuers: Option<&'a [usize]>,
    /// The route demands a certificate-bound token.
    pub require_bound: bool,
}

/// The outcome when the key is not known yet.
#[derive(Debug)]
pub enum Verdict {
    /// Verified.
    Ok(Arc<Principal>),
    /// Refused.
    Refused(TokenError),
    /// The token names a `kid` the issuer's key set lacks: refetch, then verify again.
    UnknownKid(Arc<KeyStore>),
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
    jwk: Option<Value>,
    jku: Option<Value>,
    x5u: Option<Value>,
    x5c: Option<Value>,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::new("malformed", "a token part is not unpadded base64url"))
}

/// A JSON object whose keys must be unique (a duplicated claim could be read two ways).
fn strict_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, TokenError> {
    struct Strict(Map<String, Value>);
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Strict;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Strict, A::Error> {
                    let mut m = Map::new();
                    while let Some((k, v)) = a.next_entry::<String, Value>()? {
                        if m.contains_key(&k) {
                            return Err(serde::de::Error::custom("duplicate key"));
                        }
                        m.insert(k, v);
                    }
                    Ok(Strict(m))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|_| {
            TokenError::new(
                "malformed",
                format!("the token {what} is not a JSON object with unique keys"),
            )
        })
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| {
                TokenError::new(
                    "malformed",
                    format!("claim `{name}` is not a NumericDate (seconds since the epoch)"),
                )
            }),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

impl Verifier {
    /// Builds a verifier.
    pub fn new(issuers: Vec<Issuer>, max_token_bytes: usize, cache: CacheLimits) -> Self {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, is)| (is.iss.clone(), i))
            .collect();
        Self {
            issuers,
            by_iss,
            max_token_bytes,
            cache: TokenCache::new(cache),
            counters: None,
        }
    }

    /// Counts cache hits and misses in `metrics`.
    #[must_use]
    pub fn counted(mut self, metrics: &crate::observe::metrics::Metrics) -> Self {
        self.counters = Some((
            metrics.jwt_cache.with_label_values(&["hit"]),
            metrics.jwt_cache.with_label_values(&["miss"]),
        ));
        self
    }

    /// A verifier for one issuer whose keys are the given JWKS document (benchmarks).
    ///
    /// # Panics
    /// Never; an unusable JWKS gives a verifier that refuses everything with `no_keys`.
    #[doc(hidden)]
    pub fn for_bench(issuer: &str, audience: &str, jwks_json: &str, algorithms: &[&str]) -> Self {
        let keys = KeyStore::fixed("bench", jwks_json.as_bytes()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "bench JWKS unusable");
            KeyStore::with_keys("bench", Vec::new())
        });
        let algorithms = algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .collect();
        Self::new(
            vec![Issuer {
                name: "bench".into(),
                iss: issuer.to_owned(),
                audiences: vec![audience.to_owned()],
                algorithms,
                leeway: Duration::from_secs(30),
                max_lifetime: Duration::from_secs(3600),
                required_claims: Vec::new(),
                claims: ClaimMap::default(),
                typ: None,
                require_bound_tokens: false,
                keys,
            }],
            8192,
            CacheLimits::default(),
        )
    }

    /// Full verification with the verified-token cache (known keys only).
    ///
    /// # Errors
    /// The refusal; an unknown `kid` is refused as `unknown_kid` (no refetch here).
    pub fn verify(
        &self,
        token: &str,
        client_cert_sha256: Option<&[u8; 32]>,
    ) -> Result<Arc<Principal>, TokenError> {
        match self.check(token, client_cert_sha256, Demand::default(), true) {
            Verdict::Ok(p) => Ok(p),
            Verdict::Refused(e) => Err(e),
            Verdict::UnknownKid(_) => Err(unknown_kid()),
        }
    }

    /// Verification without the cache: always a signature check.
    ///
    /// # Errors
    /// As [`Verifier::verify`].
    pub fn verify_uncached(
        &self,
        token: &str,
        client_cert_sha256: Option<&[u8; 32]>,
    ) -> Result<Arc<Principal>, TokenError> {
        match self.check(token, client_cert_sha256, Demand::default(), false) {
            Verdict::Ok(p) => Ok(p),
            Verdict::Refused(e) => Err(e),
            Verdict::UnknownKid(_) => Err(unknown_kid()),
        }
    }

    /// Checks `token` for a route's `demand`, from the cache when `cached`.
    pub fn check(
        &self,
        token: &str,
        cert: Option<&[u8; 32]>,
        demand: Demand<'_>,
        cached: bool,
    ) -> Verdict {
        if token.len() > self.max_token_bytes {
            return Verdict::Refused(TokenError::new(
                "too_large",
                format!("the bearer token is over {} bytes", self.max_token_bytes),
            ));
        }
        let now = now_secs();
        let hash = self.cache.hash(token);
        let hit = cached
            .then(|| self.cache.get(hash, token, &self.issuers))
            .flatten();
        if cached && let Some((hits, misses)) = &self.counters {
            if hit.is_some() {
                hits.inc()
            } else {
                misses.inc()
            }
        }
        let principal = match hit {
            Some(p) => p,
            None => match self.verify_fresh(token, now) {
                Ok((p, generation)) => {
                    let p = Arc::new(p);
                    if cached {
                        self.cache.put(hash, token, generation, p.clone());
                    }
                    p
                }
                Err(Fresh::Refused(e)) => return Verdict::Refused(e),
                Err(Fresh::UnknownKid(store)) => return Verdict::UnknownKid(store),
            },
        };
        match self.admit(&principal, now, cert, demand) {
            Ok(()) => Verdict::Ok(principal),
            Err(e) => Verdict::Refused(e),
        }
    }

    /// Cache hits and misses so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// The checks that depend on the time, the connection and the route (run on every hit).
    fn admit(
        &self,
        p: &Principal,
        now: i64,
        cert: Option<&[u8; 32]>,
        demand: Demand<'_>,
    ) -> Result<(), TokenError> {
        let Some(issuer) = self.issuers.get(p.issuer_index) else {
            return Err(TokenError::new(
                "unknown_issuer",
                "the token's issuer is not accepted",
            ));
        };
        let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(0);
        if now > p.exp.saturating_add(leeway) {
            return Err(TokenError::new("expired", "the token has expired"));
        }
        if let Some(nbf) = p.nbf
            && nbf > now.saturating_add(leeway)
        {
            return Err(TokenError::new(
                "not_yet_valid",
                "the token is not valid yet (nbf is in the future)",
            ));
        }
        if let Some(allowed) = demand.issuers
            && !allowed.contains(&p.issuer_index)
        {
            return Err(TokenError::new(
                "unknown_issuer",
                "the token's issuer is not accepted on this route",
            ));
        }
        match (&p.bound_to, cert) {
            // Thumbprints are public: a plain comparison is fine.
            (Some(bound), Some(cert)) if bound == cert => {}
            (Some(_), _) => {
                return Err(TokenError::new(
                    "cert_mismatch",
                    "the token is bound to another client certificate (cnf.x5t#S256)",
                ));
            }
            (None, _) if demand.require_bound || issuer.require_bound_tokens => {
                return Err(TokenError::new(
                    "unbound_token",
                    "this route requires a certificate-bound token (RFC 8705 cnf.x5t#S256)",
                ));
            }
            (None, _) => {}
        }
        Ok(())
    }

    fn verify_fresh(&self, token: &str, now: i64) -> Result<(Principal, u64), Fresh> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::new(
                "malformed",
                "the bearer token is not a compact JWS (three base64url parts)",
            )
            .into());
        };
        if h.is_empty() || c.is_empty() {
            return Err(TokenError::new(
                "malformed",
                "the bearer token has an empty header or payload",
            )
            .into());
        }
        let header: Header =
            serde_json::from_value(Value::Object(strict_object(&b64(h)?, "header")?)).map_err(
                |_| {
                    TokenError::new(
                        "malformed",
                        "the token header has a field of the wrong type",
                    )
                },
            )?;
        let alg_name = header.alg.as_deref().unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(TokenError::new(
                "alg_none",
                "unsigned tokens (alg `none`) are never accepted",
            )
            .into());
        }
        for (present, name) in [
            (header.jwk.is_some(), "jwk"),
            (header.jku.is_some(), "jku"),
            (header.x5u.is_some(), "x5u"),
            (header.x5c.is_some(), "x5c"),
        ] {
            if present {
                return Err(TokenError::new(
                    "embedded_key",
                    format!(
                        "the token header carries `{name}`; keys come only from the issuer's JWKS"
                    ),
                )
                .into());
            }
        }
        if header.crit.is_some() {
            return Err(TokenError::new(
                "crit",
                "the token header lists critical extensions (crit) this gateway does not support",
            )
            .into());
        }
        if let Some(kid) = &header.kid
            && (kid.is_empty()
                || kid.len() > 256
                || !kid.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            return Err(TokenError::new(
                "bad_kid",
                "the token's kid is empty, too long or not printable",
            )
            .into());
        }
        if sig.is_empty() {
            return Err(TokenError::new(
                "malformed",
                "the bearer token has no signature (unsigned or stripped)",
            )
            .into());
        }
        let claims = strict_object(&b64(c)?, "payload")?;
        let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
            return Err(TokenError::new("unknown_issuer", "the token has no `iss` claim").into());
        };
        let Some(&index) = self.by_iss.get(iss) else {
            return Err(
                TokenError::new("unknown_issuer", "the token's issuer is not accepted").into(),
            );
        };
        let issuer = &self.issuers[index];
        let alg = match alg_name.parse::<Algorithm>() {
            Ok(a) if issuer.algorithms.contains(&a) => a,
            _ => {
                let allowed: Vec<String> =
                    issuer.algorithms.iter().map(|a| format!("{a:?}")).collect();
                return Err(TokenError::new(
                    "alg_not_allowed",
                    format!(
                        "the token's algorithm is not allowed for this issuer (allowed: {})",
                        allowed.join(", ")
                    ),
                )
                .into());
            }
        };
        if let Some(want) = &issuer.typ {
            let got = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
            let got = got.strip_prefix("application/").unwrap_or(&got);
            if got != want {
                return Err(TokenError::new(
                    "wrong_typ",
                    format!("the token's typ must be `{want}`"),
                )
                .into());
            }
        }
        let keys = issuer.keys.keys();
        if keys.keys.is_empty() {
            return Err(TokenError::new(
                "no_keys",
                "the issuer's signing keys are not available right now",
            )
            .into());
        }
        let key = match &header.kid {
            Some(kid) => match keys.by_kid(kid) {
                Some(k) => k,
                None => return Err(Fresh::UnknownKid(issuer.keys.clone())),
            },
            None => {
                let mut fitting = keys.keys.iter().filter(|k| jwks::fits(alg, k.family));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => k,
                    _ => {
                        return Err(TokenError::new(
                            "bad_kid",
                            "the token has no kid and the issuer has several keys",
                        )
                        .into());
                    }
                }
            }
        };
        if !jwks::fits(alg, key.family) || key.alg.is_some_and(|a| a != alg) {
            return Err(TokenError::new(
                "key_mismatch",
                "the token's algorithm does not fit the type of the key it names",
            )
            .into());
        }
        let message = &token[..h.len() + 1 + c.len()];
        match jsonwebtoken::crypto::verify(sig, message.as_bytes(), &key.decoding, alg) {
            Ok(true) => {}
            _ => {
                return Err(TokenError::new(
                    "bad_signature",
                    "the token's signature does not verify",
                )
                .into());
            }
        }
        let generation = keys.generation;
        let principal = self.claims_checks(index, issuer, claims, now)?;
        Ok((principal, generation))
    }

    fn claims_checks(
        &self,
        index: usize,
        issuer: &Issuer,
        claims: Map<String, Value>,
        now: i64,
    ) -> Result<Principal, TokenError> {
        let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(0);
        let Some(exp) = numeric_date(&claims, "exp")? else {
            return Err(TokenError::new(
                "missing_claim",
                "required claim `exp` is missing",
            ));
        };
        let nbf = numeric_date(&claims, "nbf")?;
        let iat = numeric_date(&claims, "iat")?;
        if now > exp.saturating_add(leeway) {
            return Err(TokenError::new("expired", "the token has expired"));
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(leeway)
        {
            return Err(TokenError::new(
                "not_yet_valid",
                "the token is not valid yet (nbf is in the future)",
            ));
        }
        if let Some(iat) = iat
            && iat > now.saturating_add(leeway)
        {
            return Err(TokenError::new(
                "issued_in_future",
                "the token was issued in the future (iat)",
            ));
        }
        let audiences = string_list_exact(claims.get("aud"));
        if !audiences
            .iter()
            .any(|a| issuer.audiences.iter().any(|w| w == a))
        {
            return Err(TokenError::new(
                "wrong_audience",
                "the token is not meant for this API (aud)",
            ));
        }
        let start = iat.or(nbf).unwrap_or(now);
        let max = i64::try_from(issuer.max_lifetime.as_secs()).unwrap_or(i64::MAX);
        if exp.saturating_sub(start) > max {
            return Err(TokenError::new(
                "lifetime",
                format!(
                    "the token lives longer than this issuer's maximum of {} s",
                    issuer.max_lifetime.as_secs()
                ),
            ));
        }
        for name in &issuer.required_claims {
            if !claims.contains_key(name) {
                return Err(TokenError::new(
                    "missing_claim",
                    format!("required claim `{name}` is missing"),
                ));
            }
        }
        let bound_to = match claims.get("cnf").and_then(|c| c.get("x5t#S256")) {
            None => None,
            Some(v) => {
                let raw = v
                    .as_str()
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        TokenError::new(
                            "malformed",
                            "cnf.x5t#S256 is not a base64url SHA-256 thumbprint",
                        )
                    })?;
                Some(raw)
            }
        };
        let mut p = Principal::from_claims(index, issuer.name.clone(), &issuer.claims, claims);
        p.exp = exp;
        p.nbf = nbf;
        p.bound_to = bound_to;
        Ok(p)
    }
}

impl Principal {
    /// A principal from claims as given (for `portcullis explain` and tests: nothing here is
    /// verified): subject, tenant, scopes and roles through `map`.
    pub fn from_claims(
        issuer_index: usize,
        issuer: Arc<str>,
        map: &ClaimMap,
        claims: Map<String, Value>,
    ) -> Self {
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        let tenant = claims
            .get(&map.tenant)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let scopes = string_list(claims.get(&map.scopes));
        let roles = string_list(claims.get(&map.roles));
        let headers = PrincipalHeaders {
            subject: subject.as_deref().and_then(safe_header),
            tenant: tenant.as_deref().and_then(safe_header),
            scopes: (!scopes.is_empty())
                .then(|| safe_header(&scopes.join(" ")))
                .flatten(),
            issuer: safe_header(&issuer),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX);
        Principal {
            issuer_index,
            issuer,
            subject,
            tenant,
            scopes,
            roles,
            claims,
            exp,
            nbf: None,
            bound_to: None,
            headers,
            authz_bits: std::sync::OnceLock::new(),
        }
    }
}

/// `aud` as a string or an array of strings (no splitting on spaces).
fn string_list_exact(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn unknown_kid() -> TokenError {
    TokenError::new(
        "unknown_kid",
        "the token is signed with a key the issuer does not publish",
    )
}

/// The refusal for a `kid` still unknown after a refetch.
pub fn unknown_kid_error() -> TokenError {
    unknown_kid()
}

enum Fresh {
    Refused(TokenError),
    UnknownKid(Arc<KeyStore>),
}

impl From<TokenError> for Fresh {
    fn from(e: TokenError) -> Self {
        Fresh::Refused(e)
    }
}

/// Identity hasher for keys that are already hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const SHARDS: usize = 16;

struct Entry {
    token: Box<str>,
    generation: u64,
    principal: Arc<Principal>,
    size: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Vec<Entry>, BuildHasherDefault<IdHasher>>,
    entries: usize,
    bytes: usize,
}

impl Shard {
    fn remove_where(&mut self, mut dead: impl FnMut(&Entry) -> bool) {
        let (mut entries, mut bytes) = (self.entries, self.bytes);
        self.map.retain(|_, list| {
            list.retain(|e| {
                let d = dead(e);
                if d {
                    entries -= 1;
                    bytes -= e.size;
                }
                !d
            });
            !list.is_empty()
        });
        self.entries = entries;
        self.bytes = bytes;
    }
}

/// The verified-token cache: sharded, bounded, keyed by a keyed hash of the token with the
/// full token compared on lookup.
struct TokenCache {
    hasher: std::hash::RandomState,
    shards: Vec<Mutex<Shard>>,
    limits: CacheLimits,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    fn new(limits: CacheLimits) -> Self {
        Self {
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            limits,
            hits: 0.into(),
            misses: 0.into(),
        }
    }

    fn hash(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        let i = usize::try_from(hash >> 60).unwrap_or(0) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, hash: u64, token: &str, issuers: &[Issuer]) -> Option<Arc<Principal>> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.limits.max_entries == 0 {
            return None;
        }
        let mut shard = self.shard(hash);
        let found = shard.map.get(&hash).and_then(|list| {
            list.iter()
                .find(|e| &*e.token == token)
                .map(|e| (e.generation, e.principal.clone()))
        });
        let Some((generation, principal)) = found else {
            drop(shard);
            self.misses.fetch_add(1, Relaxed);
            return None;
        };
        let current = issuers
            .get(principal.issuer_index)
            .map(|i| i.keys.generation());
        if current != Some(generation) {
            // The issuer's keys changed since: this verification no longer counts.
            shard.remove_where(|e| &*e.token == token);
            drop(shard);
            self.misses.fetch_add(1, Relaxed);
            return None;
        }
        drop(shard);
        self.hits.fetch_add(1, Relaxed);
        Some(principal)
    }

    fn put(&self, hash: u64, token: &str, generation: u64, principal: Arc<Principal>) {
        let per_entries = self.limits.max_entries.div_ceil(SHARDS);
        let per_bytes = self.limits.max_bytes.div_ceil(SHARDS);
        let size = token.len() * 2
            + 256
            + principal
                .claims
                .iter()
                .map(|(k, v)| k.len() + v.to_string().len() + 32)
                .sum::<usize>();
        if per_entries == 0 || size > per_bytes {
            return;
        }
        let now = now_secs();
        let mut shard = self.shard(hash);
        if shard.entries + 1 > per_entries || shard.bytes + size > per_bytes {
            shard.remove_where(|e| e.principal.exp < now);
        }
        while shard.entries + 1 > per_entries || shard.bytes + size > per_bytes {
            // Still full of live entries: drop one (hash order is random).
            let Some(&victim) = shard.map.keys().next() else {
                break;
            };
            let (popped, empty) = match shard.map.get_mut(&victim) {
                Some(list) => (list.pop(), list.is_empty()),
                None => (None, true),
            };
            if let Some(e) = popped {
                shard.entries -= 1;
                shard.bytes -= e.size;
            }
            if empty {
                shard.map.remove(&victim);
            }
        }
        let list = shard.map.entry(hash).or_default();
        if list.iter().any(|e| &*e.token == token) {
            return;
        }
        list.push(Entry {
            token: token.into(),
            generation,
            principal,
            size,
        });
        shard.entries += 1;
        shard.bytes += size;
    }

    fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::devtools::DevKey;
    use serde_json::json;

    fn p256() -> DevKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        DevKey::from_pem(&kp.serialize_pem()).unwrap()
    }

    fn verifier(keys: &[(&DevKey, Option<&str>)], limits: CacheLimits) -> Verifier {
        let jwks: Vec<Value> = keys
            .iter()
            .map(|(k, kid)| {
                let mut j = k.jwk(kid.unwrap_or("x"), None);
                if kid.is_none() {
                    j.as_object_mut().unwrap().remove("kid");
                }
                j
            })
            .collect();
        let doc = json!({ "keys": jwks }).to_string();
        let mut v = Verifier::for_bench("https://idp.test", "api", &doc, &["ES256"]);
        v.cache = TokenCache::new(limits);
        v
    }

    fn claims() -> Value {
        let now = now_secs();
        json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "iat": now, "exp": now + 600})
    }

    fn raw_token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn duplicate_keys_and_non_objects_are_malformed() {
        let k = p256();
        let v = verifier(&[(&k, Some("a"))], CacheLimits::default());
        let dup = raw_token(
            r#"{"alg":"ES256","kid":"a"}"#,
            r#"{"iss":"https://idp.test","iss":"https://evil.test"}"#,
        );
        assert_eq!(v.verify(&dup, None).unwrap_err().reason, "malformed");
        let dup_header = raw_token(r#"{"alg":"ES256","alg":"none"}"#, r#"{}"#);
        assert_eq!(v.verify(&dup_header, None).unwrap_err().reason, "malformed");
        let array = raw_token(r#"["ES256"]"#, r#"{}"#);
        assert_eq!(v.verify(&array, None).unwrap_err().reason, "malformed");
        assert_eq!(v.verify("a.b", None).unwrap_err().reason, "malformed");
        assert_eq!(v.verify("a.b.c.d.e", None).unwrap_err().reason, "malformed");
        // Padded base64 is not base64url-without-padding.
        let padded = format!("{}=.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#));
        assert_eq!(v.verify(&padded, None).unwrap_err().reason, "malformed");
    }

    #[test]
    fn a_kidless_token_needs_a_single_fitting_key() {
        let (a, b) = (p256(), p256());
        let one = verifier(&[(&a, None)], CacheLimits::default());
        let t = a.sign("ES256", None, &claims()).unwrap();
        assert!(one.verify(&t, None).is_ok());
        let two = verifier(&[(&a, Some("a")), (&b, Some("b"))], CacheLimits::default());
        assert_eq!(two.verify(&t, None).unwrap_err().reason, "bad_kid");
    }

    #[test]
    fn cache_hits_recheck_time_binding_and_key_generation() {
        let k = p256();
        let v = verifier(&[(&k, Some("a"))], CacheLimits::default());
        let t = k.sign("ES256", Some("a"), &claims()).unwrap();
        assert!(v.verify(&t, None).is_ok());
        assert!(v.verify(&t, None).is_ok());
        assert_eq!(v.cache_stats(), (1, 1), "second call is a hit");
        // A bound token from the cache is still checked against this connection's certificate.
        let mut c = claims();
        c["cnf"] = json!({"x5t#S256": URL_SAFE_NO_PAD.encode([7u8; 32])});
        let bound = k.sign("ES256", Some("a"), &c).unwrap();
        assert!(v.verify(&bound, Some(&[7u8; 32])).is_ok());
        assert_eq!(
            v.verify(&bound, Some(&[8u8; 32])).unwrap_err().reason,
            "cert_mismatch"
        );
        assert_eq!(v.verify(&bound, None).unwrap_err().reason, "cert_mismatch");
        // New key set (the same key, re-published): earlier verifications are void.
        let store = &v.issuers[0].keys;
        let before = v.cache_stats();
        let jwk = json!({"keys": [k.jwk("b", None)]}).to_string();
        store.replace_for_tests(super::super::jwks::parse_jwks(jwk.as_bytes()).unwrap());
        assert_eq!(v.verify(&t, None).unwrap_err().reason, "unknown_kid");
        assert_eq!(
            v.cache_stats().1,
            before.1 + 1,
            "a void entry counts as a miss"
        );
    }

    #[test]
    fn the_cache_stays_within_its_entry_bound() {
        let k = p256();
        let limits = CacheLimits {
            max_entries: 32,
            max_bytes: 1 << 20,
        };
        let v = verifier(&[(&k, Some("a"))], limits);
        for i in 0..500 {
            let mut c = claims();
            c["jti"] = json!(i);
            let t = k.sign("ES256", Some("a"), &c).unwrap();
            assert!(v.verify(&t, None).is_ok());
        }
        let entries: usize = v
            .cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries)
            .sum();
        assert!(entries <= SHARDS * 32usize.div_ceil(SHARDS), "{entries}");
        assert!(entries > 0);
    }

    #[test]
    fn time_claims_use_the_leeway() {
        let k = p256();
        let v = verifier(&[(&k, Some("a"))], CacheLimits::default());
        let now = now_secs();
        let sign = |c: Value| k.sign("ES256", Some("a"), &c).unwrap();
        let base = |exp: i64| json!({"iss": "https://idp.test", "aud": ["other", "api"], "exp": exp, "iat": now - 60});
        assert!(
            v.verify(&sign(base(now - 10)), None).is_ok(),
            "within 30 s leeway"
        );
        assert_eq!(
            v.verify(&sign(base(now - 40)), None).unwrap_err().reason,
            "expired"
        );
        let mut c = base(now + 600);
        c["nbf"] = json!(now + 20);
        assert!(v.verify(&sign(c.clone()), None).is_ok());
        c["nbf"] = json!(now + 90);
        assert_eq!(
            v.verify(&sign(c), None).unwrap_err().reason,
            "not_yet_valid"
        );
        let mut c = base(now + 600);
        c["iat"] = json!(now + 90);
        assert_eq!(
            v.verify(&sign(c), None).unwrap_err().reason,
            "issued_in_future"
        );
        let mut c = base(now + 600);
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&sign(c), None).unwrap_err().reason,
            "missing_claim"
        );
        let mut c = base(now + 600);
        c["aud"] = json!("api other");
        assert_eq!(
            v.verify(&sign(c), None).unwrap_err().reason,
            "wrong_audience"
        );
    }
}
