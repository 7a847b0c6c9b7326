//! The configuration as written: serde structs only, unknown keys rejected everywhere.
//!
//! Top-level sections and list items are decoded one by one (see [`super::validate`]) so that a
//! mistake in one route does not hide the mistakes in the next.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `250ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration with a unit, like `250ms`, `10s`, `5m` or `1h`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).ok_or_else(|| {
                    E::custom(format!("`{s}` is not a duration; write a number and a unit, like `250ms`, `10s`, `5m` or `1h`"))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses `250ms`, `10s`, `1.5s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// A traffic listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name (metrics label).
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    /// Most simultaneous connections; more are closed at once.
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one client IP (unlimited when absent).
    pub max_connections_per_ip: Option<usize>,
    /// Time allowed for a client to send a request's headers (slowloris guard).
    pub header_read_timeout: Option<Dur>,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout: Option<Dur>,
    /// Largest request head in bytes (431 above it); at least 8192.
    pub max_header_bytes: Option<usize>,
    /// Most request headers (431 above it).
    pub max_headers: Option<usize>,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: Option<u32>,
    /// TLS termination (plain HTTP when absent).
    pub tls: Option<RawTls>,
}

/// A certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// Client certificate policy.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawClientAuth {
    /// Not requested.
    Off,
    /// Verified when sent.
    Optional,
    /// Required.
    Required,
}

/// A listener's TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server certificates, chosen by SNI; the first is the default.
    pub certificates: Vec<RawCertPair>,
    /// `off` (default), `optional` or `required`.
    pub client_auth: Option<RawClientAuth>,
    /// CA bundles for client certificates.
    #[serde(default)]
    pub client_ca: Vec<String>,
    /// CRL files.
    #[serde(default)]
    pub crl: Vec<String>,
}

/// TLS to a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// CA bundles for the upstream's certificate.
    pub ca: Vec<String>,
    /// SNI and verification name (default: the endpoint's host).
    pub server_name: Option<String>,
    /// Client certificate for mTLS to the upstream.
    pub client_cert: Option<String>,
    /// Its key.
    pub client_key: Option<String>,
}

/// One accepted mTLS identity (exactly one key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityPattern {
    /// URI SAN, exact or with a trailing `*`.
    pub uri: Option<String>,
    /// DNS SAN, exact or with a trailing `*`.
    pub dns: Option<String>,
    /// Subject CN, exact or with a trailing `*`.
    pub cn: Option<String>,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: Option<String>,
}

/// A route's mTLS identity requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// The caller's certificate must match one of these.
    pub any_of: Vec<RawIdentityPattern>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` to bind (default `127.0.0.1:9901`).
    pub address: Option<String>,
}

/// Protocol spoken to a cluster.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls`.
    H2,
}

/// An upstream cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `host:port` addresses.
    pub endpoints: Vec<String>,
    /// `http1` (default) or `h2c`.
    #[serde(default)]
    pub protocol: RawProtocol,
    /// Default connect timeout of the routes to this cluster.
    pub connect_timeout: Option<Dur>,
    /// Default request timeout of the routes to this cluster.
    pub request_timeout: Option<Dur>,
    /// How long an endpoint that refused a connection is skipped (`0s` disables).
    pub eject_for: Option<Dur>,
    /// Idle pooled connections close after this long.
    pub pool_idle_timeout: Option<Dur>,
    /// Most idle pooled connections per endpoint.
    pub max_idle_per_endpoint: Option<usize>,
    /// TLS to the endpoints (plain when absent).
    pub tls: Option<RawUpstreamTls>,
    /// The provider's quota, shared fairly among active tenants.
    pub quota: Option<RawQuota>,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Level or filter directive (`info`, `warn`, `portcullis=debug`).
    pub level: Option<String>,
    /// One access-log line per request (default true).
    pub access: Option<bool>,
}

/// Hot reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// How often the config files are checked for changes (default `1s`; `0s` disables polling,
    /// SIGHUP still reloads).
    pub poll_interval: Option<Dur>,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long in-flight requests may take to finish after SIGTERM (default `30s`).
    pub grace: Option<Dur>,
}

/// Per-route timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connect timeout to the upstream.
    pub connect: Option<Dur>,
    /// Time allowed until the upstream's response headers.
    pub request: Option<Dur>,
}

/// A route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name (metrics label, logs).
    pub name: String,
    /// Only requests for this host (any when absent).
    pub host: Option<String>,
    /// Accepted methods.
    pub methods: Vec<String>,
    /// Path template, e.g. `/v1/accounts/{account_id}`.
    pub path: String,
    /// The upstream cluster.
    pub cluster: String,
    /// Timeouts overriding the cluster's.
    pub timeouts: Option<RawTimeouts>,
    /// The mTLS identities admitted on this route (any identity, or none, when absent).
    pub mtls: Option<RawMtls>,
    /// How callers authenticate (required: deny by default).
    pub auth: Option<RawAuth>,
    /// Token rules of the route (`auth: jwt` or `jwt_and_mtls`).
    pub jwt: Option<RawRouteJwt>,
    /// Authorization rules (RBAC, tenant isolation, object ownership).
    pub authz: Option<RawAuthz>,
    /// Rate-limit cost and overrides of this route.
    pub rate_limit: Option<RawRouteLimit>,
    /// Body rules: content types, size cap, strict JSON, schema, money.
    pub body: Option<RawRouteBody>,
    /// Response rules.
    pub response: Option<RawRouteResponse>,
}

/// A route's `body:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteBody {
    /// Accepted media types, like `application/json` (any when absent).
    pub content_types: Option<Vec<String>>,
    /// Largest body in bytes.
    pub max_bytes: Option<u64>,
    /// Strict JSON checks (on with their defaults when `schema` or `money` is set).
    pub json: Option<RawJsonLimits>,
    /// A JSON Schema (draft 2020-12): a file path relative to the policies file, or the schema
    /// itself as a map.
    pub schema: Option<serde_json::Value>,
    /// Money amounts as decimal strings.
    #[serde(default)]
    pub money: Vec<RawMoney>,
    /// Time to receive a body that is read before forwarding (default 10s).
    pub read_timeout: Option<Dur>,
}

/// Strict JSON limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJsonLimits {
    /// Deepest nesting (default 32).
    pub max_depth: Option<usize>,
    /// Most keys per object (default 1000).
    pub max_keys: Option<usize>,
    /// Most elements per array (default 10000).
    pub max_array_len: Option<usize>,
    /// Longest string in bytes (default 65536).
    pub max_string_bytes: Option<usize>,
}

/// A money rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMoney {
    /// JSON Pointer to the amount (a decimal string).
    pub amount: String,
    /// JSON Pointer to the ISO 4217 currency code.
    pub currency: String,
    /// Most integer digits (default 15).
    pub max_integer_digits: Option<u8>,
}

/// A route's `response:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteResponse {
    /// Keep the upstream's `Cache-Control` instead of `no-store`.
    #[serde(default)]
    pub keep_cache_control: bool,
}

/// The gateway file's `hygiene:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHygiene {
    /// Longest path (default 2048 bytes; 414 above).
    pub max_path_bytes: Option<usize>,
    /// Longest query (default 4096 bytes; 414 above).
    pub max_query_bytes: Option<usize>,
    /// Most query parameters (default 64).
    pub max_query_params: Option<usize>,
    /// Upstream response headers to remove besides `Server` and `X-Powered-By`.
    #[serde(default)]
    pub remove_response_headers: Vec<String>,
    /// `Strict-Transport-Security` on TLS connections (`off` disables).
    pub hsts: Option<String>,
    /// Replace upstream 5xx bodies with a problem+json (status and request id only).
    #[serde(default)]
    pub scrub_upstream_5xx: bool,
}

/// A quota written as `rate` (`100/s`, `600/m`, `10000/h`, `100000/d`) and `burst`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Requests per unit of time, like `100/s` or `600/m`.
    pub rate: String,
    /// Requests a full bucket admits at once (default: the rate's count).
    pub burst: Option<u32>,
}

/// A route's `rate_limit:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimit {
    /// Cells one request takes (default 1).
    pub cost: Option<u32>,
    /// One bucket per tenant and route, with the tier's quota.
    #[serde(default)]
    pub per_route: bool,
    /// This route's own quota per tenant, replacing the tier's.
    #[serde(rename = "override")]
    pub override_limit: Option<RawLimit>,
}

/// A tier in the policies' `rate_limits.tiers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Requests per unit of time.
    pub rate: String,
    /// Requests a full bucket admits at once (default: the rate's count).
    pub burst: Option<u32>,
    /// `fail_open_local` (default) or `fail_closed`.
    pub on_redis_failure: Option<String>,
    /// The share of the limit applied locally while Redis is down (default 1).
    pub local_share: Option<f64>,
    /// One bucket per tenant and route instead of one per tenant.
    #[serde(default)]
    pub per_route: bool,
}

/// A policies file's `rate_limits:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyLimits {
    /// The tier of tenants not in `tenants` (required when tiers are defined).
    pub default_tier: Option<String>,
    /// A token claim naming the caller's tier (the tenant map wins over it).
    pub tier_claim: Option<String>,
    /// Tiers by name.
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, RawTier>,
    /// Tenant → tier.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, String>,
}

/// The gateway file's `rate_limits:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// `local` (default) or `redis` (needs `redis.url`).
    pub store: Option<String>,
    /// The longest a decision waits on Redis (default 50ms).
    pub redis_timeout: Option<Dur>,
    /// After a Redis failure, how long before one request probes it again (default 1s).
    pub probe_interval: Option<Dur>,
    /// Redis key namespace (default `portcullis:rl`).
    pub key_prefix: Option<String>,
    /// Most keys each local limiter keeps (default 100000).
    pub max_keys: Option<usize>,
    /// `limited` (default: `RateLimit` fields on refusals) or `all`.
    pub headers: Option<String>,
    /// Limit per client IP, before authentication.
    pub per_ip: Option<RawLimit>,
    /// Limit per client certificate, before authentication.
    pub per_client_cert: Option<RawLimit>,
}

/// A cluster's `quota:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Requests per unit of time the provider allows.
    pub rate: String,
    /// Requests at once (default: the rate's count).
    pub burst: Option<u32>,
    /// A tenant counts as active this long after its last request (default 60s).
    pub active_for: Option<Dur>,
}

/// `enforce` (default) or `report` (evaluate, log and count would-denies, allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    /// Deny when the rule fails.
    #[default]
    Enforce,
    /// Only report.
    Report,
}

/// A set requirement on scopes, roles or permissions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSetRule {
    /// Every one of these.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// At least one of these.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Enforce or report.
    #[serde(default)]
    pub mode: RawMode,
}

/// Tenant isolation: a path parameter must equal the caller's tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantRule {
    /// The path parameter.
    pub param: String,
    /// Enforce or report.
    #[serde(default)]
    pub mode: RawMode,
}

/// A lookup in Redis: `SISMEMBER <key> <id>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisLookup {
    /// Key template, e.g. `owner:{tenant}:accounts`.
    pub key: String,
    /// Per lookup.
    pub timeout: Option<Dur>,
    /// How long a yes is cached.
    pub positive_ttl: Option<Dur>,
    /// How long a no is cached.
    pub negative_ttl: Option<Dur>,
}

/// A lookup over HTTP: GET the URL, owned when the status is `expect_status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpLookup {
    /// URL template, e.g. `http://owners.internal/v1/{tenant}/accounts/{id}`.
    pub url: String,
    /// The status that means "owned" (default 200).
    pub expect_status: Option<u16>,
    /// Per lookup.
    pub timeout: Option<Dur>,
    /// How long a yes is cached.
    pub positive_ttl: Option<Dur>,
    /// How long a no is cached.
    pub negative_ttl: Option<Dur>,
}

/// One object reference and the rule its id must satisfy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOwnershipRule {
    /// The id is this path parameter.
    pub path: Option<String>,
    /// The id is this query parameter.
    pub query: Option<String>,
    /// The id is at this JSON Pointer in the body.
    pub body: Option<String>,
    /// The id must be in this array claim.
    pub claim_contains: Option<String>,
    /// The id must equal this claim.
    pub claim_equals: Option<String>,
    /// The id must match this pattern built from claims (`{tenant}-*`).
    pub template: Option<String>,
    /// Redis set membership.
    pub redis: Option<RawRedisLookup>,
    /// An ownership service.
    pub http: Option<RawHttpLookup>,
}

/// Object-ownership (BOLA) rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOwnership {
    /// Every rule must hold.
    #[serde(default)]
    pub all_of: Vec<RawOwnershipRule>,
    /// At least one rule must hold.
    #[serde(default)]
    pub any_of: Vec<RawOwnershipRule>,
    /// 404 (default: ids cannot be probed) or 403.
    pub deny_status: Option<u16>,
    /// Largest body read for body references (default 64 KiB).
    pub max_body_bytes: Option<usize>,
    /// Enforce or report.
    #[serde(default)]
    pub mode: RawMode,
}

/// A route's authorization rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    /// Any authenticated caller (explicit; for routes with no finer rule).
    #[serde(default)]
    pub authenticated: bool,
    /// Token scopes.
    pub scopes: Option<RawSetRule>,
    /// Token roles.
    pub roles: Option<RawSetRule>,
    /// Permissions granted by the token's roles.
    pub permissions: Option<RawSetRule>,
    /// Tenant isolation.
    pub tenant: Option<RawTenantRule>,
    /// Object ownership.
    pub ownership: Option<RawOwnership>,
}

/// Shared Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db`.
    pub url: String,
}

/// Ownership answer cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOwnershipCache {
    /// Most cached answers (0: off).
    pub max_entries: Option<usize>,
    /// `memory` (default) or `redis` (answers shared by every replica using that Redis).
    pub store: Option<String>,
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `stdout`, `off` or a file path (appended).
    pub path: Option<String>,
    /// Bounded queue between requests and the writer.
    pub queue: Option<usize>,
    /// Refuse writes (503) that cannot be audited.
    #[serde(default)]
    pub required: bool,
}

/// A route's authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawAuth {
    /// Anyone.
    Public,
    /// A bearer token.
    Jwt,
    /// A verified client certificate.
    Mtls,
    /// Both.
    JwtAndMtls,
}

/// A route's token rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteJwt {
    /// Issuers accepted on the route (every configured issuer when absent).
    pub issuers: Option<Vec<String>>,
    /// Tokens must be certificate-bound (RFC 8705).
    #[serde(default)]
    pub require_bound_tokens: bool,
}

/// A token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Where the keys come from.
    pub jwks: RawJwks,
    /// Allowed algorithms.
    pub algorithms: Option<Vec<String>>,
    /// Clock leeway.
    pub leeway: Option<Dur>,
    /// Maximum token lifetime.
    pub max_lifetime: Option<Dur>,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claim mapping.
    pub claims: Option<RawClaimMap>,
    /// Required header `typ`.
    pub typ: Option<String>,
    /// Every token must be certificate-bound.
    #[serde(default)]
    pub require_bound_tokens: bool,
    /// The scopes this issuer grants (optional; routes naming others get a warning).
    pub scopes: Option<Vec<String>>,
}

/// An issuer's key source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    /// `http(s)` URL.
    pub url: Option<String>,
    /// Local file.
    pub file: Option<String>,
    /// Background refresh interval.
    pub refresh: Option<Dur>,
    /// Minimum gap between unknown-kid refetches.
    pub cooldown: Option<Dur>,
    /// Maximum age of the last good keys while fetches fail.
    pub max_stale: Option<Dur>,
    /// Per-fetch timeout.
    pub timeout: Option<Dur>,
    /// Extra CA bundles for https.
    #[serde(default)]
    pub ca: Vec<String>,
}

/// Which claims carry tenant, scopes and roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimMap {
    /// Tenant claim.
    pub tenant: Option<String>,
    /// Scopes claim.
    pub scopes: Option<String>,
    /// Roles claim.
    pub roles: Option<String>,
}

/// Global token settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Largest bearer token accepted.
    pub max_token_bytes: Option<usize>,
    /// Verified-token cache bounds.
    pub cache: Option<RawJwtCache>,
}

/// Verified-token cache bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtCache {
    /// Most entries (0 disables the cache).
    pub max_entries: Option<usize>,
    /// Most bytes.
    pub max_bytes: Option<usize>,
}

/// Top-level keys of the gateway file.
pub const GATEWAY_KEYS: &[&str] = &[
    "listeners",
    "admin",
    "clusters",
    "policies",
    "trusted_proxies",
    "log",
    "reload",
    "shutdown",
    "workers",
    "issuers",
    "jwt",
    "redis",
    "ownership_cache",
    "audit",
    "rate_limits",
    "hygiene",
];
/// Top-level keys of a policies file.
pub const POLICY_KEYS: &[&str] = &["routes", "roles", "rate_limits"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
