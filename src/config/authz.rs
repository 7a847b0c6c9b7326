//! Validation of authorization: the policies' `roles:`, each route's `authz:` rules (compiled
//! straight into [`RouteAuthz`] with interned bit sets), and the gateway's `redis`,
//! `ownership_cache` and `audit` blocks.

use std::time::Duration;

use http::StatusCode;

use super::ConfigError;
use super::raw::{self, RawAuthz, RawMode, RawOwnershipRule, RawSetRule};
use super::validate::{Ctx, dur, pos_of, suggest};
use super::yaml::{Node, Value};
use crate::authn::AuthMode;
use crate::authz::audit::{AuditSettings, AuditSink};
use crate::authz::lookup::LookupPolicy;
use crate::authz::{
    Bits, Check, Mode, Ownership, OwnershipRule, RouteAuthz, SetRule, Source, Tables, Template,
};

/// Gateway-level authorization settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzSettings {
    /// `redis://…` for Redis ownership lookups.
    pub redis_url: Option<String>,
    /// Most cached ownership answers.
    pub cache_entries: usize,
    /// Keep ownership answers in Redis too (shared by the replicas).
    pub cache_in_redis: bool,
    /// The audit log.
    pub audit: AuditSettings,
}

fn mode(m: RawMode) -> Mode {
    match m {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Report => Mode::Report,
    }
}

pub(super) fn check_gateway_authz(ctx: &mut Ctx<'_>, root: &Node) -> AuthzSettings {
    let mut s = AuthzSettings {
        cache_entries: 100_000,
        ..AuthzSettings::default()
    };
    if let Some(node) = root.get("redis")
        && let Some(r) = ctx.decode::<raw::RawRedis>(node, "redis")
    {
        if r.url.starts_with("redis://") || r.url.starts_with("rediss://") {
            s.redis_url = Some(r.url);
        } else {
            ctx.err(
                pos_of(node, "url"),
                "redis.url",
                "the Redis URL must start with `redis://` (or `rediss://`)",
                Some("for example `redis://127.0.0.1:6379/0`".into()),
            );
        }
    }
    if let Some(node) = root.get("ownership_cache")
        && let Some(c) = ctx.decode::<raw::RawOwnershipCache>(node, "ownership_cache")
    {
        if let Some(n) = c.max_entries {
            s.cache_entries = n;
        }
        match c.store.as_deref() {
            None | Some("memory") => {}
            Some("redis") if s.redis_url.is_some() => s.cache_in_redis = true,
            Some("redis") => ctx.err(
                pos_of(node, "store"),
                "ownership_cache.store",
                "`store: redis` needs `redis: { url: … }` in the gateway file",
                None,
            ),
            Some(other) => ctx.err(
                pos_of(node, "store"),
                "ownership_cache.store",
                format!("`{other}` is not a cache store"),
                Some("use `memory` (the default) or `redis`".into()),
            ),
        }
    }
    if let Some(node) = root.get("audit")
        && let Some(a) = ctx.decode::<raw::RawAudit>(node, "audit")
    {
        s.audit.sink = match a.path.as_deref() {
            None | Some("off") => None,
            Some("stdout") => Some(AuditSink::Stdout),
            Some(p) => Some(AuditSink::File(ctx.base.join(p))),
        };
        s.audit.required = a.required;
        if let Some(q) = a.queue {
            if (1..=1_000_000).contains(&q) {
                s.audit.queue = q;
            } else {
                ctx.err(
                    pos_of(node, "queue"),
                    "audit.queue",
                    format!("the audit queue must hold 1 to 1000000 records, not {q}"),
                    None,
                );
            }
        }
        if s.audit.required && s.audit.sink.is_none() {
            ctx.err(
                pos_of(node, "required"),
                "audit.required",
                "`required: true` needs an audit `path` (a file or `stdout`)",
                None,
            );
        }
    }
    s
}

/// Reads `roles:` (role → permissions) into `tables`; returns the declared role names.
pub(super) fn check_roles(ctx: &mut Ctx<'_>, root: &Node, tables: &mut Tables) -> Vec<String> {
    let mut names = Vec::new();
    match root.get("roles").map(|n| &n.value) {
        Some(Value::Map(entries)) => {
            for (k, node) in entries {
                let path = format!("roles.{}", k.name);
                let Some(perms) = ctx.decode::<Vec<String>>(node, &path) else {
                    continue;
                };
                let role = Tables::intern(&mut tables.roles, &k.name) as usize;
                let mut bits = Bits::default();
                for p in &perms {
                    let i = Tables::intern(&mut tables.permissions, p);
                    bits.set_bit(i);
                }
                if tables.role_permissions.len() <= role {
                    tables.role_permissions.resize(role + 1, Bits::default());
                }
                tables.role_permissions[role].union_with(&bits);
                names.push(k.name.clone());
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => ctx.err(
            pos_of(root, "roles"),
            "roles",
            "`roles` must be a map from role to its permissions",
            Some("for example `teller: [payments:create, accounts:read]`".into()),
        ),
    }
    names
}

/// What a route's authz check needs from the rest of the config.
pub(super) struct AuthzContext<'a> {
    pub tables: &'a mut Tables,
    pub roles: &'a [String],
    /// Scopes the issuers declare they grant (`None`: no issuer declares any).
    pub scopes: Option<&'a [String]>,
    pub redis: bool,
    pub warnings: &'a mut Vec<ConfigError>,
}

#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
pub(super) fn check_route_authz(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    auth: AuthMode,
    has_mtls_rule: bool,
    params: &[String],
    r: Option<&RawAuthz>,
    ac: &mut AuthzContext<'_>,
) -> Option<Option<RouteAuthz>> {
    let Some(a) = r else {
        return match auth {
            AuthMode::Public => Some(None),
            // The route's mTLS identities are its authorization rule.
            AuthMode::Mtls | AuthMode::JwtAndMtls if has_mtls_rule => Some(None),
            _ => {
                ctx.err(
                    pos_of(node, "auth"),
                    &format!("{path}.authz"),
                    "this route authenticates callers but says nothing about what they may do (deny by default)",
                    Some("add `authz:` with scopes, roles, permissions, tenant or ownership rules, or `authz: { authenticated: true }` to admit every authenticated caller".into()),
                );
                None
            }
        };
    };
    let anode = node.get("authz").unwrap_or(node);
    if auth == AuthMode::Public {
        ctx.err(
            anode.pos,
            &format!("{path}.authz"),
            "a public route has no caller to authorize",
            Some("remove `authz`, or make the route `auth: jwt` / `mtls`".into()),
        );
        return None;
    }
    let mut ok = true;
    let has_rule = a.authenticated
        || a.scopes.is_some()
        || a.roles.is_some()
        || a.permissions.is_some()
        || a.tenant.is_some()
        || a.ownership.is_some();
    if !has_rule {
        ctx.err(
            anode.pos,
            &format!("{path}.authz"),
            "`authz` names no rule",
            Some(
                "use scopes, roles, permissions, tenant, ownership, or `authenticated: true`"
                    .into(),
            ),
        );
        return None;
    }
    let token_rules =
        a.scopes.is_some() || a.roles.is_some() || a.permissions.is_some() || a.tenant.is_some();
    if token_rules && auth == AuthMode::Mtls {
        ctx.err(
            anode.pos,
            &format!("{path}.authz"),
            "scopes, roles, permissions and tenant come from a token; this route takes none (`auth: mtls`)",
            Some("use `auth: jwt_and_mtls`, or the route's `mtls` identities".into()),
        );
        ok = false;
    }
    let mut out = RouteAuthz::default();
    let set = |ctx: &mut Ctx<'_>,
               key: &str,
               rule: &Option<RawSetRule>,
               map: &mut std::collections::HashMap<String, u32>,
               declared: Option<&[String]>,
               warnings: &mut Vec<ConfigError>|
     -> Option<SetRule> {
        let rule = rule.as_ref()?;
        let rnode = anode.get(key).unwrap_or(anode);
        if rule.all_of.is_empty() && rule.any_of.is_empty() {
            ctx.err(
                rnode.pos,
                &format!("{path}.authz.{key}"),
                format!("`{key}` needs `all_of` or `any_of`"),
                None,
            );
            return None;
        }
        let mut all = Bits::default();
        let mut any = Bits::default();
        for (names, bits) in [(&rule.all_of, &mut all), (&rule.any_of, &mut any)] {
            for n in names {
                if let Some(declared) = declared
                    && !declared.contains(n)
                {
                    let (message, fallback) = if key == "scopes" {
                        (
                            format!(
                                "scope `{n}` is granted by no configured issuer, so no caller can have it"
                            ),
                            "list it under the issuer's `scopes:`",
                        )
                    } else {
                        (
                            format!("role `{n}` is not defined, so no caller can have it"),
                            "define it under `roles:` in a policies file",
                        )
                    };
                    let hint = suggest(n, declared.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some(fallback.into()));
                    warnings.push(ConfigError {
                        file: ctx.file.clone(),
                        pos: rnode.pos,
                        path: format!("{path}.authz.{key}"),
                        message,
                        hint,
                    });
                }
                bits.set_bit(Tables::intern(map, n));
            }
        }
        let mut text = Vec::new();
        if !rule.all_of.is_empty() {
            text.push(format!("all of [{}]", rule.all_of.join(", ")));
        }
        if !rule.any_of.is_empty() {
            text.push(format!("any of [{}]", rule.any_of.join(", ")));
        }
        Some(SetRule {
            all_of: all,
            any_of: any,
            text: text.join(" and "),
            mode: mode(rule.mode),
        })
    };
    out.scopes = set(
        ctx,
        "scopes",
        &a.scopes,
        &mut ac.tables.scopes,
        ac.scopes,
        ac.warnings,
    );
    out.roles = set(
        ctx,
        "roles",
        &a.roles,
        &mut ac.tables.roles,
        Some(ac.roles),
        ac.warnings,
    );
    out.permissions = set(
        ctx,
        "permissions",
        &a.permissions,
        &mut ac.tables.permissions,
        None,
        ac.warnings,
    );
    if let Some(t) = &a.tenant {
        if params.contains(&t.param) {
            out.tenant = Some((t.param.clone(), mode(t.mode)));
        } else {
            let tnode = anode.get("tenant").unwrap_or(anode);
            ctx.err(
                pos_of(tnode, "param"),
                &format!("{path}.authz.tenant.param"),
                format!("the route's path has no parameter `{}`", t.param),
                suggest(&t.param, params.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?")),
            );
            ok = false;
        }
    }
    if let Some(o) = &a.ownership {
        let onode = anode.get("ownership").unwrap_or(anode);
        let (all, list, key) = match (o.all_of.is_empty(), o.any_of.is_empty()) {
            (false, true) => (true, &o.all_of, "all_of"),
            (true, false) => (false, &o.any_of, "any_of"),
            _ => {
                ctx.err(
                    onode.pos,
                    &format!("{path}.authz.ownership"),
                    "ownership needs exactly one of `all_of` and `any_of`, with at least one rule",
                    None,
                );
                return None;
            }
        };
        let lnode = onode.get(key).unwrap_or(onode);
        let mut rules = Vec::new();
        for (i, rr) in list.iter().enumerate() {
            let rpos = match &lnode.value {
                Value::Seq(items) => items.get(i).map_or(lnode.pos, |n| n.pos),
                _ => lnode.pos,
            };
            let rpath = format!("{path}.authz.ownership.{key}[{i}]");
            match ownership_rule(rr, params, ac.redis) {
                Ok(rule) => rules.push(rule),
                Err((msg, hint)) => {
                    ctx.err(rpos, &rpath, msg, hint);
                    ok = false;
                }
            }
        }
        let deny_status = match o.deny_status {
            None | Some(404) => StatusCode::NOT_FOUND,
            Some(403) => StatusCode::FORBIDDEN,
            Some(other) => {
                ctx.err(
                    pos_of(onode, "deny_status"),
                    &format!("{path}.authz.ownership.deny_status"),
                    format!("deny_status must be 404 (the default) or 403, not {other}"),
                    None,
                );
                ok = false;
                StatusCode::NOT_FOUND
            }
        };
        out.ownership = Some(Ownership {
            all,
            rules,
            deny_status,
            max_body_bytes: o.max_body_bytes.unwrap_or(64 * 1024),
            mode: mode(o.mode),
        });
    }
    ok.then_some(Some(out))
}

type RuleError = (String, Option<String>);

fn ownership_rule(
    r: &RawOwnershipRule,
    params: &[String],
    redis: bool,
) -> Result<OwnershipRule, RuleError> {
    let sources = [r.path.is_some(), r.query.is_some(), r.body.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources != 1 {
        return Err((
            "each ownership rule names exactly one of `path`, `query`, `body`".into(),
            Some("for example `- body: /from_account` then `claim_contains: accounts`".into()),
        ));
    }
    let source = if let Some(p) = &r.path {
        if !params.contains(p) {
            return Err((
                format!("the route's path has no parameter `{p}`"),
                suggest(p, params.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?")),
            ));
        }
        Source::Path(p.clone())
    } else if let Some(q) = &r.query {
        Source::Query(q.clone())
    } else {
        let ptr = r.body.clone().unwrap_or_default();
        if !ptr.starts_with('/') {
            return Err((
                format!("`{ptr}` is not a JSON Pointer"),
                Some("JSON Pointers start with `/`, like `/from_account`".into()),
            ));
        }
        Source::Body(ptr)
    };
    let checks = [
        r.claim_contains.is_some(),
        r.claim_equals.is_some(),
        r.template.is_some(),
        r.redis.is_some(),
        r.http.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if checks != 1 {
        return Err((
            "each ownership rule has exactly one of `claim_contains`, `claim_equals`, `template`, `redis`, `http`".into(),
            None,
        ));
    }
    let policy = |t: Option<raw::Dur>,
                  p: Option<raw::Dur>,
                  n: Option<raw::Dur>,
                  default_timeout: Duration| LookupPolicy {
        timeout: dur(t, default_timeout),
        positive_ttl: dur(p, Duration::from_secs(60)),
        negative_ttl: dur(n, Duration::from_secs(5)),
    };
    let check = if let Some(c) = &r.claim_contains {
        Check::ClaimContains(c.clone())
    } else if let Some(c) = &r.claim_equals {
        Check::ClaimEquals(c.clone())
    } else if let Some(t) = &r.template {
        Check::Pattern(Template::parse(t).map_err(|e| (e, None))?)
    } else if let Some(rd) = &r.redis {
        if !redis {
            return Err((
                "a Redis lookup needs `redis: { url: … }` in the gateway file".into(),
                None,
            ));
        }
        Check::Redis {
            key: Template::parse(&rd.key).map_err(|e| (e, None))?,
            policy: policy(
                rd.timeout,
                rd.positive_ttl,
                rd.negative_ttl,
                Duration::from_millis(50),
            ),
        }
    } else if let Some(h) = &r.http {
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err((format!("`{}` is not an http URL template", h.url), None));
        }
        Check::Http {
            url: Template::parse(&h.url).map_err(|e| (e, None))?,
            expect: h.expect_status.unwrap_or(200),
            policy: policy(
                h.timeout,
                h.positive_ttl,
                h.negative_ttl,
                Duration::from_millis(500),
            ),
        }
    } else {
        return Err(("no check".into(), None));
    };
    Ok(OwnershipRule { source, check })
}
