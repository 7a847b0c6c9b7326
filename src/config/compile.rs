//! Compile: checked settings → runtime structures (route trie, clusters with pooled clients).
//! Nothing here knows about serde; invariants hold by construction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::RawProtocol;
use super::validate::Checked;
use crate::authn::jwt::{Issuer, Verifier};
use crate::authn::{RouteAuth, jwks};
use crate::observe::metrics::Metrics;
use crate::proxy::Router;
use crate::proxy::upstream::{Cluster, PoolSettings, Route, UpstreamClient, UpstreamProtocol};

/// Per connect timeout, one client per worker.
type ClientsByTimeout = HashMap<Duration, Arc<[UpstreamClient]>>;

/// The compiled configuration the request path reads (one `ArcSwap::load` per request).
#[derive(Debug)]
pub struct Runtime {
    /// The route table.
    pub router: Router,
    /// Peers whose `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Token verification (issuers, keys, verified-token cache), when issuers are configured.
    pub verifier: Option<Arc<crate::authn::jwt::Verifier>>,
    /// Authorization tables, ownership lookups and the audit log.
    pub authz: crate::authz::AuthzRuntime,
    /// Rate limiters and quotas.
    pub limits: crate::ratelimit::RateLimits,
    /// The settings this was compiled from (listeners, admin, limits).
    pub settings: Checked,
}

/// Compiles checked settings.
///
/// # Errors
/// Only if validation let an inconsistency through (reported, never panics).
pub fn compile(checked: Checked, metrics: &Metrics) -> Result<Runtime, String> {
    let mut clusters = HashMap::new();
    let mut built: Vec<(Arc<Cluster>, PoolSettings, ClientsByTimeout)> = Vec::new();
    for c in &checked.clusters {
        let protocol = match c.protocol {
            RawProtocol::Http1 => UpstreamProtocol::Http1,
            RawProtocol::H2c | RawProtocol::H2 => UpstreamProtocol::H2,
        };
        let tls = match &c.tls {
            Some(t) => Some(
                crate::tls::client::build(t, protocol == UpstreamProtocol::H2)
                    .map_err(|e| format!("cluster `{}`: {e}", c.name))?,
            ),
            None => None,
        };
        let cluster = Arc::new(Cluster::new(
            &c.name,
            c.endpoints.clone(),
            protocol,
            c.eject_for,
            tls,
        ));
        clusters.insert(c.name.clone(), cluster.clone());
        let pool = PoolSettings {
            idle_timeout: c.pool_idle_timeout,
            max_idle_per_host: c.max_idle_per_endpoint,
        };
        built.push((cluster, pool, HashMap::new()));
    }
    let mut limits = crate::ratelimit::RateLimits::new(&checked.limits, checked.workers, metrics)?;
    let mut router = Router::default();
    for r in &checked.routes {
        let Some((cluster, pool, clients)) = built.get_mut(r.cluster) else {
            return Err(format!(
                "route `{}` names a cluster that was not compiled",
                r.name
            ));
        };
        // Routes with the same connect timeout share one client, so they share its pool.
        // Each worker has its own client (and pool), so a pooled connection never hops between
        // event loops; routes with the same connect timeout share them.
        let clients = clients
            .entry(r.connect_timeout)
            .or_insert_with(|| {
                (0..checked.workers.max(1))
                    .map(|_| cluster.client(r.connect_timeout, *pool))
                    .collect()
            })
            .clone();
        let route = Arc::new(Route {
            name: r.name.as_str().into(),
            cluster: cluster.clone(),
            clients,
            request_timeout: r.request_timeout,
            mtls: r.mtls.clone().map(Into::into),
            auth: RouteAuth {
                mode: r.auth,
                issuers: r.jwt_issuers.clone().map(Into::into),
                require_bound: r.require_bound_tokens,
            },
            authz: r.authz.clone().map(Arc::new),
            metrics: Arc::new(crate::observe::metrics::RouteMetrics::new(
                r.name.as_str().into(),
            )),
            body: r.body.clone(),
            keep_cache_control: r.keep_cache_control,
            limit: crate::ratelimit::RouteLimit {
                cost: r.rate_limit.cost.max(1),
                per_route: r.rate_limit.per_route,
                override_bucket: r.rate_limit.override_limit.map(|limit| {
                    // An override keeps the failure mode of the default tier.
                    let base = checked
                        .limits
                        .default_tier
                        .and_then(|i| checked.limits.tiers.get(i));
                    limits.add_override(
                        crate::ratelimit::BucketSettings {
                            name: format!("route:{}", r.name),
                            limit,
                            on_failure: base
                                .map_or(crate::ratelimit::OnRedisFailure::FailOpenLocal, |b| {
                                    b.on_failure
                                }),
                            local_share: base.map_or(1.0, |b| b.local_share),
                            per_route: true,
                        },
                        checked.limits.max_keys,
                        metrics,
                    )
                }),
                quota: checked.clusters[r.cluster].quota.map(|(limit, active)| {
                    limits.add_quota(&checked.clusters[r.cluster].name, limit, active, metrics)
                }),
            },
        });
        router
            .insert(r.host.as_deref(), &r.template, &r.methods, route)
            .map_err(|other| format!("route `{}` collides with `{other}`", r.name))?;
    }
    let verifier = (!checked.issuers.is_empty()).then(|| {
        let issuers = checked
            .issuers
            .iter()
            .map(|i| Issuer {
                name: i.name.as_str().into(),
                iss: i.iss.clone(),
                audiences: i.audiences.clone(),
                algorithms: i.algorithms.clone(),
                leeway: i.leeway,
                max_lifetime: i.max_lifetime,
                required_claims: i.required_claims.clone(),
                claims: i.claims.clone(),
                typ: i.typ.clone(),
                require_bound_tokens: i.require_bound_tokens,
                keys: jwks::store_for(&i.name, &i.jwks, metrics),
            })
            .collect();
        Arc::new(
            Verifier::new(issuers, checked.jwt.max_token_bytes, checked.jwt.cache).counted(metrics),
        )
    });
    let authz = crate::authz::AuthzRuntime {
        tables: checked.tables.clone(),
        lookups: Arc::new(
            crate::authz::lookup::Lookups::new(
                checked.authz.redis_url.as_deref(),
                checked.authz.cache_entries,
            )?
            .with_shared_cache(checked.authz.cache_in_redis),
        ),
        audit: crate::authz::audit::Audit::start(&checked.authz.audit, metrics)?,
    };
    Ok(Runtime {
        router,
        trusted_proxies: checked.trusted_proxies.clone(),
        clusters,
        verifier,
        authz,
        limits,
        settings: checked,
    })
}
