//! Validation of rate limits: the gateway's `rate_limits` block (store, Redis timeouts, headers,
//! pre-authentication limits), the policies' `rate_limits` (tiers, tenants, default tier, tier
//! claim), each route's `rate_limit` and each cluster's `quota`.

use std::collections::HashMap;
use std::time::Duration;

use super::raw::{self, RawLimit, RawPolicyLimits, RawQuota, RawRouteLimit};
use super::validate::{Ctx, dur, pos_of, suggest, valid_name};
use super::yaml::Node;
use super::{ConfigError, SourceFile};
use crate::ratelimit::redis::RedisSettings;
use crate::ratelimit::{BucketSettings, Limit, OnRedisFailure, RouteLimitSettings};

/// The gateway file's part of the rate-limit settings.
#[derive(Debug, Clone, Default)]
pub struct GatewayLimits {
    /// Shared limits in Redis.
    pub redis: Option<RedisSettings>,
    /// Most keys per local limiter.
    pub max_keys: usize,
    /// `RateLimit` fields on every response.
    pub headers_on_all: bool,
    /// Per client IP.
    pub per_ip: Option<Limit>,
    /// Per client certificate.
    pub per_client_cert: Option<Limit>,
}

/// The policies' part of the rate-limit settings.
#[derive(Debug, Clone, Default)]
pub struct PolicyLimits {
    /// Tiers.
    pub tiers: Vec<BucketSettings>,
    /// Tenant → tier index.
    pub tenants: HashMap<String, usize>,
    /// Default tier index.
    pub default_tier: Option<usize>,
    /// Tier claim.
    pub tier_claim: Option<String>,
}

/// Parses `100/s`, `600/m`, `600/min`, `10000/h`, `100000/d` into (count, period).
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let bad = || {
        format!("`{s}` is not a rate; write requests per unit, like `100/s`, `600/m` or `10000/h`")
    };
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!(
            "`{s}` admits nothing; a rate needs at least 1 request"
        ));
    }
    let period = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return Err(bad()),
    };
    Ok((n, Duration::from_secs(period)))
}

/// A quota from its rate and burst, or an error at `path`.
fn limit_of(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    rate: &str,
    burst: Option<u32>,
) -> Option<Limit> {
    match parse_rate(rate) {
        Ok((n, period)) => {
            let burst = burst.unwrap_or(n);
            if burst == 0 {
                ctx.err(
                    pos_of(node, "burst"),
                    &format!("{path}.burst"),
                    "a burst of 0 admits nothing; use at least 1",
                    None,
                );
                return None;
            }
            Some(Limit {
                interval: period / n,
                burst,
            })
        }
        Err(msg) => {
            ctx.err(pos_of(node, "rate"), &format!("{path}.rate"), msg, None);
            None
        }
    }
}

fn check_raw_limit(ctx: &mut Ctx<'_>, node: &Node, path: &str, l: &RawLimit) -> Option<Limit> {
    limit_of(ctx, node, path, &l.rate, l.burst)
}

/// Checks the gateway file's `rate_limits` block.
pub(super) fn check_gateway_limits(
    ctx: &mut Ctx<'_>,
    root: &Node,
    redis_url: Option<&str>,
) -> GatewayLimits {
    let mut g = GatewayLimits {
        max_keys: 100_000,
        ..GatewayLimits::default()
    };
    let Some(node) = root.get("rate_limits") else {
        return g;
    };
    let Some(r) = ctx.decode::<raw::RawRateLimits>(node, "rate_limits") else {
        return g;
    };
    let timeout = dur(r.redis_timeout, Duration::from_millis(50));
    let probe = dur(r.probe_interval, Duration::from_secs(1));
    for (key, d) in [("redis_timeout", timeout), ("probe_interval", probe)] {
        if d.is_zero() {
            ctx.err(
                pos_of(node, key),
                &format!("rate_limits.{key}"),
                "this must be greater than zero",
                None,
            );
        }
    }
    match r.store.as_deref() {
        None | Some("local") => {}
        Some("redis") => match redis_url {
            Some(url) => {
                g.redis = Some(RedisSettings {
                    url: url.to_owned(),
                    timeout,
                    probe_interval: probe,
                    prefix: r
                        .key_prefix
                        .clone()
                        .unwrap_or_else(|| "portcullis:rl".into()),
                });
            }
            None => ctx.err(
                pos_of(node, "store"),
                "rate_limits.store",
                "`store: redis` needs `redis: { url: … }` in the gateway file",
                None,
            ),
        },
        Some(other) => ctx.err(
            pos_of(node, "store"),
            "rate_limits.store",
            format!("`{other}` is not a rate-limit store"),
            Some("use `local` (the default) or `redis`".into()),
        ),
    }
    if let Some(p) = &r.key_prefix
        && (p.is_empty() || p.contains(['{', '}']) || p.chars().any(char::is_whitespace))
    {
        ctx.err(
            pos_of(node, "key_prefix"),
            "rate_limits.key_prefix",
            "a key prefix must be non-empty, without spaces, `{` or `}`",
            None,
        );
    }
    if let Some(n) = r.max_keys {
        if (16..=100_000_000).contains(&n) {
            g.max_keys = n;
        } else {
            ctx.err(
                pos_of(node, "max_keys"),
                "rate_limits.max_keys",
                format!("`max_keys` must be between 16 and 100000000, not {n}"),
                None,
            );
        }
    }
    match r.headers.as_deref() {
        None | Some("limited") => {}
        Some("all") => g.headers_on_all = true,
        Some(other) => ctx.err(
            pos_of(node, "headers"),
            "rate_limits.headers",
            format!("`{other}` is not a header mode"),
            Some("use `limited` (on 429 responses, the default) or `all`".into()),
        ),
    }
    for (key, slot) in [
        ("per_ip", &mut g.per_ip),
        ("per_client_cert", &mut g.per_client_cert),
    ] {
        let raw = if key == "per_ip" {
            &r.per_ip
        } else {
            &r.per_client_cert
        };
        if let (Some(l), Some(n)) = (raw, node.get(key)) {
            *slot = check_raw_limit(ctx, n, &format!("rate_limits.{key}"), l);
        }
    }
    g
}

/// Checks every policies file's `rate_limits` (tiers, tenants and the default tier, each defined
/// once across the files).
pub(super) fn check_policy_limits(
    files: &[(SourceFile, Node)],
    errors: &mut Vec<ConfigError>,
) -> PolicyLimits {
    let mut out = PolicyLimits::default();
    let mut tier_index: HashMap<String, usize> = HashMap::new();
    // (tenant, tier name, file, position) — resolved once every tier is known.
    let mut tenants = Vec::new();
    let mut default: Option<(String, std::sync::Arc<str>, super::yaml::Pos)> = None;
    for (file, root) in files {
        let mut ctx = Ctx {
            file: file.name.clone(),
            errors,
            base: std::path::Path::new("."),
        };
        let Some(node) = root.get("rate_limits") else {
            continue;
        };
        let Some(r) = ctx.decode::<RawPolicyLimits>(node, "rate_limits") else {
            continue;
        };
        if let Some(d) = r.default_tier {
            if default.is_some() {
                ctx.err(
                    pos_of(node, "default_tier"),
                    "rate_limits.default_tier",
                    "`default_tier` is already set in another policies file",
                    None,
                );
            } else {
                default = Some((d, ctx.file.clone(), pos_of(node, "default_tier")));
            }
        }
        if let Some(c) = r.tier_claim {
            if out.tier_claim.is_some() {
                ctx.err(
                    pos_of(node, "tier_claim"),
                    "rate_limits.tier_claim",
                    "`tier_claim` is already set in another policies file",
                    None,
                );
            }
            out.tier_claim = Some(c);
        }
        let tiers_node = node.get("tiers").unwrap_or(node);
        for (name, t) in r.tiers {
            let tnode = tiers_node.get(&name).unwrap_or(tiers_node);
            let path = format!("rate_limits.tiers.{name}");
            if !valid_name(&name) {
                ctx.err(
                    tnode.pos,
                    &path,
                    "a tier name must be letters, digits, `-`, `_` or `.`",
                    None,
                );
                continue;
            }
            if tier_index.contains_key(&name) {
                ctx.err(
                    tnode.pos,
                    &path,
                    format!("tier `{name}` is already defined"),
                    None,
                );
                continue;
            }
            let Some(limit) = limit_of(&mut ctx, tnode, &path, &t.rate, t.burst) else {
                continue;
            };
            let on_failure = match t.on_redis_failure.as_deref() {
                None | Some("fail_open_local") => OnRedisFailure::FailOpenLocal,
                Some("fail_closed") => OnRedisFailure::FailClosed,
                Some(other) => {
                    ctx.err(
                        pos_of(tnode, "on_redis_failure"),
                        &format!("{path}.on_redis_failure"),
                        format!("`{other}` is not a failure mode"),
                        Some("use `fail_open_local` (the default) or `fail_closed`".into()),
                    );
                    continue;
                }
            };
            let share = t.local_share.unwrap_or(1.0);
            if !(share > 0.0 && share <= 1.0) {
                ctx.err(
                    pos_of(tnode, "local_share"),
                    &format!("{path}.local_share"),
                    format!("`local_share` is a fraction of the limit, above 0 and at most 1, not {share}"),
                    Some("with N replicas, `1/N` keeps the total near the limit, e.g. `0.34` for 3".into()),
                );
                continue;
            }
            tier_index.insert(name.clone(), out.tiers.len());
            out.tiers.push(BucketSettings {
                name,
                limit,
                on_failure,
                local_share: share,
                per_route: t.per_route,
            });
        }
        let tenants_node = node.get("tenants").unwrap_or(node);
        for (tenant, tier) in r.tenants {
            let pos = tenants_node
                .get(&tenant)
                .map_or(tenants_node.pos, |n| n.pos);
            tenants.push((tenant, tier, ctx.file.clone(), pos));
        }
    }
    let names: Vec<String> = out.tiers.iter().map(|t| t.name.clone()).collect();
    let unknown =
        |errors: &mut Vec<ConfigError>, file: std::sync::Arc<str>, pos, path: &str, tier: &str| {
            let hint = match suggest(tier, names.iter().map(String::as_str)) {
                Some(s) => Some(format!("did you mean `{s}`?")),
                None if names.is_empty() => Some("define it under `rate_limits.tiers`".into()),
                None => Some(format!("defined tiers: {}", names.join(", "))),
            };
            errors.push(ConfigError {
                file,
                pos,
                path: path.to_owned(),
                message: format!("unknown tier `{tier}`"),
                hint,
            });
        };
    for (tenant, tier, file, pos) in tenants {
        match tier_index.get(&tier) {
            Some(i) => {
                if out.tenants.insert(tenant.clone(), *i).is_some() {
                    errors.push(ConfigError {
                        file,
                        pos,
                        path: format!("rate_limits.tenants.{tenant}"),
                        message: format!("tenant `{tenant}` is mapped twice"),
                        hint: None,
                    });
                }
            }
            None => unknown(
                errors,
                file,
                pos,
                &format!("rate_limits.tenants.{tenant}"),
                &tier,
            ),
        }
    }
    match default {
        Some((d, file, pos)) => match tier_index.get(&d) {
            Some(i) => out.default_tier = Some(*i),
            None => unknown(errors, file, pos, "rate_limits.default_tier", &d),
        },
        None if !out.tiers.is_empty() => {
            if let Some((file, root)) = files.iter().find(|(_, r)| r.get("rate_limits").is_some()) {
                errors.push(ConfigError {
                    file: file.name.clone(),
                    pos: pos_of(root, "rate_limits"),
                    path: "rate_limits".into(),
                    message: "tiers are defined but no `default_tier` says which tier unknown tenants get".into(),
                    hint: Some(format!("add `default_tier: {}`", names[0])),
                });
            }
        }
        None => {}
    }
    out
}

/// Checks a route's `rate_limit` against the tiers.
pub(super) fn check_route_limit(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    raw: Option<&RawRouteLimit>,
    tiers: &[BucketSettings],
) -> Option<RouteLimitSettings> {
    let Some(r) = raw else {
        return Some(RouteLimitSettings {
            cost: 1,
            ..RouteLimitSettings::default()
        });
    };
    let lnode = node.get("rate_limit").unwrap_or(node);
    let path = format!("{path}.rate_limit");
    let cost = r.cost.unwrap_or(1);
    if cost == 0 {
        ctx.err(
            pos_of(lnode, "cost"),
            &format!("{path}.cost"),
            "a cost of 0 would make the route unlimited; use at least 1",
            None,
        );
        return None;
    }
    let override_limit = match &r.override_limit {
        Some(l) => Some(check_raw_limit(
            ctx,
            lnode.get("override").unwrap_or(lnode),
            &format!("{path}.override"),
            l,
        )?),
        None => None,
    };
    if override_limit.is_some() && r.per_route {
        ctx.err(
            pos_of(lnode, "per_route"),
            &format!("{path}.per_route"),
            "an `override` is already one bucket per tenant and route; drop `per_route`",
            None,
        );
        return None;
    }
    let too_small: Vec<String> = match override_limit {
        Some(l) if l.burst < cost => vec![format!("the override ({})", l.burst)],
        Some(_) => Vec::new(),
        None => tiers
            .iter()
            .filter(|t| t.limit.burst < cost)
            .map(|t| format!("tier `{}` ({})", t.name, t.limit.burst))
            .collect(),
    };
    if !too_small.is_empty() {
        ctx.err(
            pos_of(lnode, "cost"),
            &format!("{path}.cost"),
            format!(
                "cost {cost} exceeds the burst of {}: such requests could never pass",
                too_small.join(", ")
            ),
            Some("lower the cost or raise the burst".into()),
        );
        return None;
    }
    if tiers.is_empty() && override_limit.is_none() {
        // Without tiers a cost means nothing; say so rather than ignore it silently.
        ctx.err(
            pos_of(node, "rate_limit"),
            &path,
            "this route sets a rate-limit cost, but no tiers are defined",
            Some("define `rate_limits.tiers` and `default_tier` in a policies file".into()),
        );
        return None;
    }
    Some(RouteLimitSettings {
        cost,
        per_route: r.per_route,
        override_limit,
    })
}

/// Checks a cluster's `quota`.
pub(super) fn check_quota(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    q: &RawQuota,
) -> Option<(Limit, Duration)> {
    let qnode = node.get("quota").unwrap_or(node);
    let path = format!("{path}.quota");
    let limit = limit_of(ctx, qnode, &path, &q.rate, q.burst)?;
    let active = dur(q.active_for, Duration::from_secs(60));
    if active.is_zero() {
        ctx.err(
            pos_of(qnode, "active_for"),
            &format!("{path}.active_for"),
            "this must be greater than zero",
            None,
        );
        return None;
    }
    Some((limit, active))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("600/min"), Ok((600, Duration::from_secs(60))));
        assert_eq!(parse_rate(" 5 / h "), Ok((5, Duration::from_secs(3600))));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/fortnight").is_err());
        assert!(parse_rate("ten/s").is_err());
    }
}
