//! Rate limits (pipeline stages 6 and 9).
//!
//! - [`PRE_AUTH_LAYER`] (before routing and authentication): a limit per client IP and one per
//!   client-certificate fingerprint, against floods and credential stuffing. Always local.
//! - [`RateLimitLayer`] (after authorization): the caller's tier — from the tenant map, a tier
//!   claim, or the default tier — with each route's cost, optionally one bucket per tenant and
//!   route, or a route's own override; then the route's cluster quota, shared fairly among the
//!   active tenants ([`quota`]).
//!
//! Buckets are GCRA: locally with governor ([`local`], the embedded default), or in Redis
//! ([`redis`]) so all replicas share one limit. When Redis cannot answer in time each tier
//! applies its failure mode: `fail_open_local` (a local bucket holding a configured share of the
//! limit) or `fail_closed` (503).
//!
//! Refusals are 429 problem+json with `Retry-After` and the IETF `RateLimit-Policy` /
//! `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers: `"<policy>";q=<burst>;w=<seconds>`
//! and `"<policy>";r=<remaining>;t=<seconds>`); `headers: all` adds them to every response.

pub mod local;
pub mod quota;
pub mod redis;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use crate::authn::jwt::Principal;
use crate::config::Runtime;
use crate::config::reload::Snapshot;
use crate::decide::DecideLayer;
use crate::error::GatewayError;
use crate::observe::metrics::Metrics;
use crate::proxy::RouteMatch;
use crate::server::ConnInfo;
use crate::{Body, BoxFuture};

use self::local::LocalLimiter;
use self::quota::FairQuota;
use self::redis::{RedisLimiter, RedisSettings, Unavailable};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A GCRA quota: one cell every `interval`, at most `burst` cells at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Time to earn one cell back.
    pub interval: Duration,
    /// Cells a full bucket holds.
    pub burst: u32,
}

impl Limit {
    /// The time a bucket takes to refill from empty, in whole seconds (at least 1).
    pub fn window_secs(&self) -> u64 {
        ceil_secs(self.interval * self.burst).max(1)
    }

    /// This limit reduced to `share` (0 < share ≤ 1) of its rate and burst.
    pub fn scaled(&self, share: f64) -> Limit {
        if share >= 1.0 {
            return *self;
        }
        let burst = ((f64::from(self.burst) * share).floor() as u32).max(1);
        Limit {
            interval: self.interval.div_f64(share.max(1e-6)),
            burst,
        }
    }
}

/// One rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Cells left after this request.
    pub remaining: u32,
    /// When refused: the wait until the request's cost fits.
    pub retry_after: Duration,
    /// The wait until the bucket is full again.
    pub reset: Duration,
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A 64-bit key for a limiter, keyed per process (so keys cannot be chosen to collide).
pub fn key_hash(parts: &[&[u8]]) -> u64 {
    static SEED: OnceLock<std::hash::RandomState> = OnceLock::new();
    let seed = SEED.get_or_init(std::hash::RandomState::new);
    let mut h = seed.build_hasher();
    for p in parts {
        std::hash::Hasher::write(&mut h, p);
        std::hash::Hasher::write_u8(&mut h, 0xff);
    }
    std::hash::Hasher::finish(&h)
}

/// What a tier does while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisFailure {
    /// Decide locally with a share of the limit.
    FailOpenLocal,
    /// Refuse with 503.
    FailClosed,
}

/// A validated bucket definition: a tier, or a route's override.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSettings {
    /// Policy name (the tier's name, or `route:<name>` for an override).
    pub name: String,
    /// The quota.
    pub limit: Limit,
    /// Behaviour while Redis is down.
    pub on_failure: OnRedisFailure,
    /// The share of the limit applied locally while Redis is down (0 < share ≤ 1).
    pub local_share: f64,
    /// One bucket per tenant and route instead of one per tenant.
    pub per_route: bool,
}

/// Validated rate-limit settings (gateway file and policies).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitSettings {
    /// Shared limits in Redis (local when `None`).
    pub redis: Option<RedisSettings>,
    /// Most keys per local limiter.
    pub max_keys: usize,
    /// `RateLimit` fields on every response, not only on refusals.
    pub headers_on_all: bool,
    /// A claim naming the caller's tier.
    pub tier_claim: Option<String>,
    /// Pre-authentication limit per client IP.
    pub per_ip: Option<Limit>,
    /// Pre-authentication limit per client certificate.
    pub per_client_cert: Option<Limit>,
    /// Tiers.
    pub tiers: Vec<BucketSettings>,
    /// Tenant → tier index.
    pub tenants: HashMap<String, usize>,
    /// The tier of tenants not in the map (an index into `tiers`).
    pub default_tier: Option<usize>,
}

/// A route's rate-limit settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteLimitSettings {
    /// Cells one request takes (at least 1).
    pub cost: u32,
    /// One bucket per tenant and route (with the tier's quota).
    pub per_route: bool,
    /// The route's own quota per tenant, replacing the tier's.
    pub override_limit: Option<Limit>,
}

/// A route's compiled rate-limit rule (in [`crate::proxy::upstream::Route`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLimit {
    /// Cells one request takes.
    pub cost: u32,
    /// One bucket per tenant and route.
    pub per_route: bool,
    /// Index of the route's override bucket in [`RateLimits::overrides`].
    pub override_bucket: Option<usize>,
    /// Index of the route's cluster quota in [`RateLimits::quotas`].
    pub quota: Option<usize>,
}

/// Decision counters of one bucket, resolved once.
#[derive(Debug, Clone)]
struct Counters {
    allow: prometheus::IntCounter,
    deny: prometheus::IntCounter,
    fallback_allow: prometheus::IntCounter,
    fallback_deny: prometheus::IntCounter,
    unavailable: prometheus::IntCounter,
}

impl Counters {
    fn new(vec: &prometheus::IntCounterVec, name: &str) -> Self {
        let c = |result: &str| vec.with_label_values(&[name, result]);
        Self {
            allow: c("allow"),
            deny: c("deny"),
            fallback_allow: c("fallback_allow"),
            fallback_deny: c("fallback_deny"),
            unavailable: c("unavailable"),
        }
    }
}

/// A compiled bucket.
#[derive(Debug)]
pub struct Bucket {
    settings: BucketSettings,
    /// The local limiter: the whole limit when Redis is off, the fallback share when it is on.
    local: Arc<LocalLimiter>,
    policy: HeaderValue,
    counters: Counters,
}

impl Bucket {
    fn new(settings: BucketSettings, redis: bool, max_keys: usize, metrics: &Metrics) -> Self {
        let local_limit = if redis {
            settings.limit.scaled(settings.local_share)
        } else {
            settings.limit
        };
        let policy = policy_header(&settings.name, settings.limit);
        Self {
            local: Arc::new(LocalLimiter::new(local_limit, max_keys)),
            counters: Counters::new(&metrics.ratelimit_decisions, &settings.name),
            policy,
            settings,
        }
    }

    /// The local limiter (for its key count).
    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }
}

fn policy_header(name: &str, limit: Limit) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "\"{name}\";q={};w={}",
        limit.burst,
        limit.window_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
}

/// A pre-authentication limit.
#[derive(Debug)]
pub struct PreAuth {
    limit: Limit,
    local: Arc<LocalLimiter>,
    policy: HeaderValue,
    allow: prometheus::IntCounter,
    deny: prometheus::IntCounter,
}

impl PreAuth {
    fn new(name: &str, limit: Limit, max_keys: usize, metrics: &Metrics) -> Self {
        Self {
            limit,
            local: Arc::new(LocalLimiter::new(limit, max_keys)),
            policy: policy_header(name, limit),
            allow: metrics
                .preauth_decisions
                .with_label_values(&[name, "allow"]),
            deny: metrics.preauth_decisions.with_label_values(&[name, "deny"]),
        }
    }

    /// The local limiter (for its key count).
    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }
}

/// A cluster's compiled quota.
#[derive(Debug)]
pub struct Quota {
    cluster: String,
    active_for: Duration,
    quota: Arc<FairQuota>,
    allow: prometheus::IntCounter,
    deny: prometheus::IntCounter,
}

/// Every compiled limiter of a configuration.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Tiers, in settings order.
    pub tiers: Vec<Bucket>,
    /// Route overrides, by [`RouteLimit::override_bucket`].
    pub overrides: Vec<Bucket>,
    /// Cluster quotas, by [`RouteLimit::quota`].
    pub quotas: Vec<Quota>,
    tier_names: HashMap<String, usize>,
    tenants: HashMap<String, usize>,
    default_tier: Option<usize>,
    tier_claim: Option<String>,
    headers_on_all: bool,
    /// The shared limiter, when Redis is configured.
    pub redis: Option<Arc<RedisLimiter>>,
    redis_settings: Option<RedisSettings>,
    /// Per client IP.
    pub per_ip: Option<PreAuth>,
    /// Per client certificate.
    pub per_client_cert: Option<PreAuth>,
}

impl RateLimits {
    /// Compiles `settings`; route overrides and cluster quotas are added by
    /// [`RateLimits::add_override`] and [`RateLimits::add_quota`].
    ///
    /// # Errors
    /// When the Redis URL cannot be used.
    pub fn new(
        settings: &RateLimitSettings,
        workers: usize,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let redis_on = settings.redis.is_some();
        let redis = match &settings.redis {
            Some(r) => {
                let gauge = metrics.ratelimit_fallback_active.clone();
                Some(Arc::new(RedisLimiter::new(
                    r,
                    workers,
                    Box::new(move |down| gauge.set(i64::from(down))),
                )?))
            }
            None => None,
        };
        let mk = |l: Limit, name: &str| PreAuth::new(name, l, settings.max_keys, metrics);
        Ok(Self {
            tiers: settings
                .tiers
                .iter()
                .map(|t| Bucket::new(t.clone(), redis_on, settings.max_keys, metrics))
                .collect(),
            overrides: Vec::new(),
            quotas: Vec::new(),
            tier_names: settings
                .tiers
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tenants: settings.tenants.clone(),
            default_tier: settings.default_tier,
            tier_claim: settings.tier_claim.clone(),
            headers_on_all: settings.headers_on_all,
            redis,
            redis_settings: settings.redis.clone(),
            per_ip: settings.per_ip.map(|l| mk(l, "per_ip")),
            per_client_cert: settings.per_client_cert.map(|l| mk(l, "per_client_cert")),
        })
    }

    /// Adds a route's override bucket; returns its index.
    pub fn add_override(
        &mut self,
        settings: BucketSettings,
        max_keys: usize,
        metrics: &Metrics,
    ) -> usize {
        let redis = self.redis.is_some();
        self.overrides
            .push(Bucket::new(settings, redis, max_keys, metrics));
        self.overrides.len() - 1
    }

    /// Adds (or finds) a cluster's quota; returns its index.
    pub fn add_quota(
        &mut self,
        cluster: &str,
        limit: Limit,
        active_for: Duration,
        metrics: &Metrics,
    ) -> usize {
        if let Some(i) = self.quotas.iter().position(|q| q.cluster == cluster) {
            return i;
        }
        self.quotas.push(Quota {
            cluster: cluster.to_owned(),
            active_for,
            quota: Arc::new(FairQuota::new(limit, active_for)),
            allow: metrics
                .upstream_quota_decisions
                .with_label_values(&[cluster, "allow"]),
            deny: metrics
                .upstream_quota_decisions
                .with_label_values(&[cluster, "deny"]),
        });
        self.quotas.len() - 1
    }

    /// Keeps the state of `old`'s limiters whose settings did not change, so a reload does not
    /// hand every tenant a fresh burst (or drop the Redis connections).
    pub fn inherit(&mut self, old: &RateLimits) {
        if self.redis_settings == old.redis_settings
            && let Some(r) = &old.redis
        {
            self.redis = Some(r.clone());
        }
        let keep = |new: &mut Bucket, olds: &[Bucket]| {
            if let Some(o) = olds
                .iter()
                .find(|o| o.settings == new.settings && o.local.limit() == new.local.limit())
            {
                new.local = o.local.clone();
            }
        };
        for b in &mut self.tiers {
            keep(b, &old.tiers);
        }
        for b in &mut self.overrides {
            keep(b, &old.overrides);
        }
        let keep_pre = |new: &mut Option<PreAuth>, old: &Option<PreAuth>| {
            if let (Some(n), Some(o)) = (new.as_mut(), old.as_ref())
                && n.limit == o.limit
            {
                n.local = o.local.clone();
            }
        };
        keep_pre(&mut self.per_ip, &old.per_ip);
        keep_pre(&mut self.per_client_cert, &old.per_client_cert);
        for q in &mut self.quotas {
            if let Some(o) = old.quotas.iter().find(|o| {
                o.cluster == q.cluster
                    && o.active_for == q.active_for
                    && o.quota.limit() == q.quota.limit()
            }) {
                q.quota = o.quota.clone();
            }
        }
    }

    /// Whether any tenant limit or cluster quota is configured.
    pub fn tenant_limits_on(&self) -> bool {
        !self.tiers.is_empty() || !self.overrides.is_empty() || !self.quotas.is_empty()
    }

    /// The tier of a caller.
    fn tier_of(&self, tenant: Option<&str>, principal: Option<&Principal>) -> Option<usize> {
        if let Some(t) = tenant
            && let Some(i) = self.tenants.get(t)
        {
            return Some(*i);
        }
        if let (Some(claim), Some(p)) = (&self.tier_claim, principal)
            && let Some(name) = p.claims.get(claim).and_then(|v| v.as_str())
            && let Some(i) = self.tier_names.get(name)
        {
            return Some(*i);
        }
        self.default_tier
    }
}

/// Who a tenant limit counts against: the tenant claim, else the subject, else the client
/// certificate. `None` for anonymous callers (public routes), who only meet pre-auth limits.
fn caller_id(req: &Request<Body>) -> Option<(String, Option<&Principal>)> {
    let principal = req.extensions().get::<Arc<Principal>>().map(|p| &**p);
    if let Some(p) = principal {
        if let Some(t) = &p.tenant {
            return Some((t.clone(), Some(p)));
        }
        if let Some(s) = &p.subject {
            return Some((format!("sub:{s}"), Some(p)));
        }
    }
    let conn = req.extensions().get::<Arc<ConnInfo>>()?;
    let id = conn.identity.as_ref()?;
    Some((
        format!("cert:{}", &id.fingerprint[..16.min(id.fingerprint.len())]),
        principal,
    ))
}

/// A request refused by a rate limit or quota.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct RateLimitError {
    /// 429, or 503 when a `fail_closed` tier cannot reach Redis.
    pub status: StatusCode,
    /// Problem kind.
    pub kind: &'static str,
    /// What happened and when to retry.
    pub detail: String,
    /// `Retry-After`, `RateLimit-Policy`, `RateLimit`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

fn limit_headers(policy: &HeaderValue, name: &str, d: &Decision) -> [(HeaderName, HeaderValue); 2] {
    let state = HeaderValue::from_str(&format!(
        "\"{name}\";r={};t={}",
        d.remaining,
        ceil_secs(d.reset)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
    [(RATELIMIT_POLICY, policy.clone()), (RATELIMIT, state)]
}

fn refusal(what: &str, policy: &HeaderValue, name: &str, d: &Decision) -> GatewayError {
    let retry = ceil_secs(d.retry_after).max(1);
    let mut headers = vec![(http::header::RETRY_AFTER, HeaderValue::from(retry))];
    headers.extend(limit_headers(policy, name, d));
    GatewayError::RateLimited(RateLimitError {
        status: StatusCode::TOO_MANY_REQUESTS,
        kind: "rate-limited",
        detail: format!("{what} Retry after {retry} s."),
        headers,
    })
}

// ---------------------------------------------------------------------------------------------
// Pre-authentication limits.

/// The pre-authentication limits (per client IP and per client certificate).
pub const PRE_AUTH_LAYER: DecideLayer = DecideLayer(pre_auth);

/// The client's IP: the peer, or — behind trusted proxies — the nearest untrusted address in
/// `X-Forwarded-For` (the header was already rebuilt by the hygiene stage).
fn client_ip(req: &Request<Body>, conn: &ConnInfo, rt: &Runtime) -> IpAddr {
    let peer = conn.peer.ip();
    if rt.trusted_proxies.is_empty()
        || !crate::sanitize::headers::is_trusted(peer, &rt.trusted_proxies)
    {
        return peer;
    }
    let forwarded = req
        .headers()
        .get_all(crate::sanitize::headers::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !crate::sanitize::headers::is_trusted(*ip, &rt.trusted_proxies))
        .unwrap_or(peer)
}

/// Applies the pre-authentication limits.
///
/// # Errors
/// 429 when the client's IP or certificate is over its limit.
pub fn pre_auth(req: &mut Request<Body>) -> Result<(), GatewayError> {
    let (Some(rt), Some(conn)) = (
        req.extensions().get::<Snapshot>(),
        req.extensions().get::<Arc<ConnInfo>>(),
    ) else {
        return Ok(());
    };
    let limits = &rt.limits;
    if let Some(p) = &limits.per_ip {
        let ip = client_ip(req, conn, rt);
        let key = match ip {
            IpAddr::V4(v4) => key_hash(&[&v4.octets()]),
            IpAddr::V6(v6) => key_hash(&[&v6.octets()]),
        };
        let d = p.local.check(key, 1);
        if !d.allowed {
            p.deny.inc();
            return Err(refusal(
                "Too many requests from this client address.",
                &p.policy,
                "per_ip",
                &d,
            ));
        }
        p.allow.inc();
    }
    if let Some(p) = &limits.per_client_cert
        && let Some(id) = &conn.identity
    {
        let d = p.local.check(key_hash(&[id.fingerprint.as_bytes()]), 1);
        if !d.allowed {
            p.deny.inc();
            return Err(refusal(
                "Too many requests with this client certificate.",
                &p.policy,
                "per_client_cert",
                &d,
            ));
        }
        p.allow.inc();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tenant limits and cluster quotas.

/// Applies tier limits and cluster quotas (see the module docs).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    /// Counts Redis errors in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type Fut = BoxFuture<Result<Response<Body>, GatewayError>>;

/// What the tenant stage resolved for one request.
struct Plan {
    rt: Snapshot,
    bucket: (bool, usize),
    tenant: String,
    key: u64,
    cost: u32,
    quota: Option<usize>,
}

impl Plan {
    fn bucket(&self) -> &Bucket {
        let l = &self.rt.limits;
        if self.bucket.0 {
            &l.overrides[self.bucket.1]
        } else {
            &l.tiers[self.bucket.1]
        }
    }

    /// The bucket's Redis key suffix.
    fn redis_bucket(&self, route: &str) -> String {
        let b = self.bucket();
        if self.bucket.0 || b.settings.per_route {
            format!("{}:{route}", b.settings.name)
        } else {
            b.settings.name.clone()
        }
    }
}

impl<S> Service<Request<Body>> for RateLimit<S>
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
        let (Some(m), Some(rt)) = (ext.get::<RouteMatch>(), ext.get::<Snapshot>()) else {
            return self.inner.call(req);
        };
        let limits = &rt.limits;
        if !limits.tenant_limits_on() {
            return self.inner.call(req);
        }
        let rl = m.route.limit;
        let caller = caller_id(&req);
        let bucket = match &caller {
            None => None,
            Some(_) if rl.override_bucket.is_some() => rl.override_bucket.map(|i| (true, i)),
            Some((tenant, p)) => limits.tier_of(Some(tenant), *p).map(|i| (false, i)),
        };
        let (tenant, principal_key) = match caller {
            Some((t, _)) => {
                let per_route = match bucket {
                    Some((true, _)) => false,
                    Some((false, i)) => limits.tiers[i].settings.per_route || rl.per_route,
                    None => false,
                };
                let key = if per_route {
                    key_hash(&[t.as_bytes(), m.route.name.as_bytes()])
                } else {
                    key_hash(&[t.as_bytes()])
                };
                (t, key)
            }
            None => (String::new(), 0),
        };
        let Some(bucket) = bucket else {
            // Anonymous: only the cluster quota applies.
            if let Some(q) = rl.quota {
                let q = &limits.quotas[q];
                if let Err(e) = check_quota(q, principal_key) {
                    return Box::pin(async move { Err(e) });
                }
            }
            return self.inner.call(req);
        };
        let plan = Plan {
            rt: rt.clone(),
            bucket,
            tenant,
            key: principal_key,
            cost: rl.cost.max(1),
            quota: rl.quota,
        };
        let route_name = m.route.name.clone();
        if limits.redis.is_none() {
            let b = plan.bucket();
            let d = b.local.check(plan.key, plan.cost);
            if let Err(e) = settle(&plan, d, false) {
                return Box::pin(async move { Err(e) });
            }
            if let Err(e) = plan.after_tier() {
                return Box::pin(async move { Err(e) });
            }
            if !limits.headers_on_all {
                return self.inner.call(req);
            }
            let headers = limit_headers(&b.policy, &b.settings.name, &d);
            let fut = self.inner.call(req);
            return Box::pin(async move { with_headers(fut.await, headers) });
        }
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let b = plan.bucket();
            let redis = plan.rt.limits.redis.clone();
            let (d, fallback) = match redis {
                Some(r) => {
                    let key = r.key(&plan.tenant, &plan.redis_bucket(&route_name));
                    match r.check(&key, b.settings.limit, plan.cost).await {
                        Ok(d) => (d, false),
                        Err(why) => {
                            if why != Unavailable::Skipped {
                                metrics
                                    .ratelimit_redis_errors
                                    .with_label_values(&[why.label()])
                                    .inc();
                            }
                            match b.settings.on_failure {
                                OnRedisFailure::FailOpenLocal => {
                                    (b.local.check(plan.key, plan.cost), true)
                                }
                                OnRedisFailure::FailClosed => {
                                    b.counters.unavailable.inc();
                                    return Err(GatewayError::RateLimited(RateLimitError {
                                        status: StatusCode::SERVICE_UNAVAILABLE,
                                        kind: "rate-limit-unavailable",
                                        detail: "The shared rate limiter is unavailable and this tier does not fall back; retry shortly.".into(),
                                        headers: vec![(
                                            http::header::RETRY_AFTER,
                                            HeaderValue::from_static("1"),
                                        )],
                                    }));
                                }
                            }
                        }
                    }
                }
                None => (b.local.check(plan.key, plan.cost), false),
            };
            settle(&plan, d, fallback)?;
            plan.after_tier()?;
            let all = plan.rt.limits.headers_on_all;
            let headers = limit_headers(&b.policy, &b.settings.name, &d);
            let res = inner.oneshot(req).await;
            if all { with_headers(res, headers) } else { res }
        })
    }
}

impl Plan {
    /// The cluster quota, once the tier admitted the request.
    fn after_tier(&self) -> Result<(), GatewayError> {
        match self.quota {
            Some(q) => check_quota(&self.rt.limits.quotas[q], self.key),
            None => Ok(()),
        }
    }
}

fn check_quota(q: &Quota, key: u64) -> Result<(), GatewayError> {
    let d = q.quota.check(key);
    if d.allowed {
        q.allow.inc();
        return Ok(());
    }
    q.deny.inc();
    let retry = ceil_secs(d.retry_after).max(1);
    Err(GatewayError::RateLimited(RateLimitError {
        status: StatusCode::TOO_MANY_REQUESTS,
        kind: "upstream-quota",
        detail: format!(
            "This caller has used its share of the upstream service's quota. Retry after {retry} s."
        ),
        headers: vec![(http::header::RETRY_AFTER, HeaderValue::from(retry))],
    }))
}

/// Counts a tier decision and turns a refusal into its 429.
fn settle(plan: &Plan, d: Decision, fallback: bool) -> Result<(), GatewayError> {
    let b = plan.bucket();
    let c = &b.counters;
    match (d.allowed, fallback) {
        (true, false) => c.allow.inc(),
        (true, true) => c.fallback_allow.inc(),
        (false, false) => c.deny.inc(),
        (false, true) => c.fallback_deny.inc(),
    }
    if d.allowed {
        return Ok(());
    }
    let l = b.settings.limit;
    Err(refusal(
        &format!(
            "This caller is over the `{}` limit ({} requests per {} s).",
            b.settings.name,
            l.burst,
            l.window_secs()
        ),
        &b.policy,
        &b.settings.name,
        &d,
    ))
}

fn with_headers(
    res: Result<Response<Body>, GatewayError>,
    headers: [(HeaderName, HeaderValue); 2],
) -> Result<Response<Body>, GatewayError> {
    res.map(|mut r| {
        for (k, v) in headers {
            r.headers_mut().insert(k, v);
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_limits_keep_at_least_one_cell() {
        let l = Limit {
            interval: Duration::from_millis(100),
            burst: 10,
        };
        let half = l.scaled(0.5);
        assert_eq!(half.burst, 5);
        assert_eq!(half.interval, Duration::from_millis(200));
        assert_eq!(l.scaled(0.01).burst, 1);
        assert_eq!(l.scaled(1.0), l);
        assert_eq!(l.window_secs(), 1);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
