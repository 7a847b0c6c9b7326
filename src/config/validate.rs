//! Decode and validate: YAML trees → checked settings, collecting every error with its file,
//! line, column and key path (and a hint where one helps) instead of stopping at the first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::uri::Authority;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::raw::{self, Dur, RawCluster, RawListener, RawRoute};
use super::yaml::{Node, Pos, Value};
use super::{ConfigError, SourceFile};
use crate::proxy::router::{Segment, parse_template};

/// A validated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Name (metrics label).
    pub name: Arc<str>,
    /// Bind address.
    pub address: SocketAddr,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one client IP (0: unlimited).
    pub max_connections_per_ip: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Idle connection timeout.
    pub idle_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most concurrent HTTP/2 streams.
    pub max_concurrent_streams: u32,
    /// TLS termination, when configured.
    pub tls: Option<crate::tls::TlsSettings>,
}

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Name.
    pub name: String,
    /// Endpoints (`host:port`) with their authorities.
    pub endpoints: Vec<(String, Authority)>,
    /// Protocol.
    pub protocol: raw::RawProtocol,
    /// Default connect timeout.
    pub connect_timeout: Duration,
    /// Default request timeout.
    pub request_timeout: Duration,
    /// Ejection time after a refused connection.
    pub eject_for: Duration,
    /// Pool idle timeout.
    pub pool_idle_timeout: Duration,
    /// Most idle connections per endpoint.
    pub max_idle_per_endpoint: usize,
    /// TLS to the endpoints, when configured.
    pub tls: Option<crate::tls::client::UpstreamTls>,
    /// The provider's quota and how long a tenant counts as active.
    pub quota: Option<(crate::ratelimit::Limit, Duration)>,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Name.
    pub name: String,
    /// Lowercased host, if any.
    pub host: Option<String>,
    /// Methods.
    pub methods: Vec<Method>,
    /// Parsed template.
    pub template: Vec<Segment>,
    /// Index into [`Checked::clusters`].
    pub cluster: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Accepted mTLS identities (any of), when the route demands one.
    pub mtls: Option<Vec<crate::tls::identity::IdentityPattern>>,
    /// How callers authenticate.
    pub auth: crate::authn::AuthMode,
    /// Issuers accepted on the route (indices into [`Checked::issuers`]), all when `None`.
    pub jwt_issuers: Option<Vec<usize>>,
    /// Tokens must be certificate-bound.
    pub require_bound_tokens: bool,
    /// Authorization rules (`None`: public, or mTLS identities only).
    pub authz: Option<crate::authz::RouteAuthz>,
    /// Rate-limit cost and overrides.
    pub rate_limit: crate::ratelimit::RouteLimitSettings,
    /// Body rules (`None`: any body, streamed).
    pub body: Option<Arc<crate::sanitize::body::RouteBody>>,
    /// Keep the upstream's `Cache-Control`.
    pub keep_cache_control: bool,
}

/// The whole configuration after validation.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Traffic listeners.
    pub listeners: Vec<ListenerSettings>,
    /// Admin listener address.
    pub admin: SocketAddr,
    /// Clusters.
    pub clusters: Vec<ClusterSettings>,
    /// Routes in load order.
    pub routes: Vec<RouteSettings>,
    /// Peers whose `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Log filter.
    pub log_level: String,
    /// Access log on/off.
    pub access_log: bool,
    /// Reload poll interval (zero: off).
    pub poll_interval: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// The policies folder, when loaded from disk.
    pub policies_dir: Option<PathBuf>,
    /// Worker threads serving traffic (each with its own event loop and upstream pools).
    pub workers: usize,
    /// Token issuers.
    pub issuers: Vec<super::auth::IssuerSettings>,
    /// Global token settings.
    pub jwt: super::auth::JwtSettings,
    /// Redis, ownership cache and audit settings.
    pub authz: super::authz::AuthzSettings,
    /// Interned scopes, roles and permissions (role → permissions from `roles:`).
    pub tables: crate::authz::Tables,
    /// Rate limits: tiers, tenants, pre-authentication limits, the store.
    pub limits: crate::ratelimit::RateLimitSettings,
    /// Request and response hygiene.
    pub hygiene: crate::sanitize::HygieneSettings,
    /// Problems that do not stop the config (printed by `validate`, logged at load).
    pub warnings: Vec<ConfigError>,
}

/// Suggests the candidate closest to `word`, if any is close.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) struct Ctx<'a> {
    pub(super) file: Arc<str>,
    pub(super) errors: &'a mut Vec<ConfigError>,
    /// Relative file names in the config resolve against this folder.
    pub(super) base: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn err(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            path: path.to_owned(),
            message: message.into(),
            hint,
        });
    }

    /// Decodes `node` into `T`, reporting a serde error at the exact key or value.
    pub(super) fn decode<T: DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        let json = node.to_json();
        match serde_path_to_error::deserialize::<_, T>(json) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut target = node;
                let mut full = path.to_owned();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment as S;
                    let next = match seg {
                        S::Seq { index } => {
                            full.push_str(&format!("[{index}]"));
                            match &target.value {
                                Value::Seq(items) => items.get(*index),
                                _ => None,
                            }
                        }
                        S::Map { key } => {
                            full.push_str(&format!(".{key}"));
                            target.get(key)
                        }
                        S::Enum { .. } | S::Unknown => None,
                    };
                    match next {
                        Some(n) => target = n,
                        None => break,
                    }
                }
                let msg = e.inner().to_string();
                if let Some(rest) = msg.strip_prefix("unknown field `") {
                    let name = rest.split('`').next().unwrap_or("");
                    let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
                    // The path may already end at the unknown key; locate the key itself.
                    let (parent_path, pos) = match full.rsplit_once('.') {
                        Some((p, last)) if last == name => (p.to_owned(), target.pos),
                        _ => (full.clone(), target.key_pos(name).unwrap_or(target.pos)),
                    };
                    let pos = find_key(node, name).unwrap_or(pos);
                    let hint = match suggest(name, expected.iter().copied()) {
                        Some(s) => format!(
                            "did you mean `{s}`? Valid keys here: {}",
                            expected.join(", ")
                        ),
                        None => format!("valid keys here: {}", expected.join(", ")),
                    };
                    self.err(
                        pos,
                        &parent_path,
                        format!("unknown key `{name}`"),
                        Some(hint),
                    );
                } else if let Some(rest) = msg.strip_prefix("missing field `") {
                    let name = rest.split('`').next().unwrap_or("");
                    self.err(
                        target.pos,
                        &full,
                        format!("missing required key `{name}`"),
                        None,
                    );
                } else {
                    self.err(target.pos, &full, msg, None);
                }
                None
            }
        }
    }
}

/// Finds the position of the first key `name` anywhere under `node` (for unknown-key errors).
fn find_key(node: &Node, name: &str) -> Option<Pos> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k.pos)
            .or_else(|| entries.iter().find_map(|(_, v)| find_key(v, name))),
        Value::Seq(items) => items.iter().find_map(|v| find_key(v, name)),
        _ => None,
    }
}

pub(super) fn pos_of(node: &Node, key: &str) -> Pos {
    node.get(key).map_or(node.pos, |n| n.pos)
}

fn check_top_keys(ctx: &mut Ctx<'_>, root: &Node, allowed: &[&str], what: &str) {
    match &root.value {
        Value::Map(entries) => {
            for (k, _) in entries {
                if !allowed.contains(&k.name.as_str()) {
                    let hint = match suggest(&k.name, allowed.iter().copied()) {
                        Some(s) => format!(
                            "did you mean `{s}`? Valid keys in {what}: {}",
                            allowed.join(", ")
                        ),
                        None => format!("valid keys in {what}: {}", allowed.join(", ")),
                    };
                    ctx.err(k.pos, "", format!("unknown key `{}`", k.name), Some(hint));
                }
            }
        }
        Value::Null => {}
        _ => ctx.err(root.pos, "", format!("{what} must be a map of keys"), None),
    }
}

pub(super) fn dur(d: Option<Dur>, default: Duration) -> Duration {
    d.map_or(default, |d| d.0)
}

fn positive(ctx: &mut Ctx<'_>, node: &Node, path: &str, key: &str, d: Option<Dur>) {
    if let Some(Dur(v)) = d
        && v.is_zero()
    {
        ctx.err(
            pos_of(node, key),
            &format!("{path}.{key}"),
            "this timeout must be greater than zero",
            None,
        );
    }
}

/// The gateway file, decoded and checked.
pub(super) struct GatewayPart {
    pub listeners: Vec<ListenerSettings>,
    pub admin: SocketAddr,
    pub clusters: Vec<ClusterSettings>,
    pub trusted_proxies: Vec<IpNet>,
    pub log_level: String,
    pub access_log: bool,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    pub policies: Option<(String, Pos)>,
    pub workers: usize,
    pub issuers: Vec<super::auth::IssuerSettings>,
    pub issuer_names: Vec<String>,
    pub jwt: super::auth::JwtSettings,
    pub authz: super::authz::AuthzSettings,
    pub limits: super::limits::GatewayLimits,
    pub hygiene: crate::sanitize::HygieneSettings,
}

pub(super) fn check_gateway(
    file: &SourceFile,
    root: &Node,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> GatewayPart {
    let mut ctx = Ctx {
        file: file.name.clone(),
        errors,
        base,
    };
    check_top_keys(&mut ctx, root, raw::GATEWAY_KEYS, "the gateway file");

    let mut listeners: Vec<ListenerSettings> = Vec::new();
    match root.get("listeners").map(|n| &n.value) {
        Some(Value::Seq(items)) => {
            if items.is_empty() {
                ctx.err(
                    pos_of(root, "listeners"),
                    "listeners",
                    "at least one listener is needed",
                    None,
                );
            }
            for (i, item) in items.iter().enumerate() {
                let path = format!("listeners[{i}]");
                let Some(l) = ctx.decode::<RawListener>(item, &path) else {
                    continue;
                };
                if let Some(s) = check_listener(&mut ctx, item, &path, &l, &listeners) {
                    listeners.push(s);
                }
            }
        }
        Some(_) => ctx.err(
            pos_of(root, "listeners"),
            "listeners",
            "`listeners` must be a list",
            None,
        ),
        None => ctx.err(
            root.pos,
            "",
            "missing required key `listeners`",
            Some("add at least one listener with a `name` and an `address`".into()),
        ),
    }

    let mut admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9901));
    if let Some(node) = root.get("admin")
        && let Some(a) = ctx.decode::<raw::RawAdmin>(node, "admin")
        && let Some(addr) = a.address
    {
        match addr.parse() {
            Ok(a) => admin = a,
            Err(_) => ctx.err(
                pos_of(node, "address"),
                "admin.address",
                format!("`{addr}` is not an `ip:port` address"),
                Some("for example `127.0.0.1:9901`".into()),
            ),
        }
    }
    if admin.port() != 0 && listeners.iter().any(|l| l.address == admin) {
        ctx.err(
            pos_of(root, "admin"),
            "admin.address",
            "the admin listener must not share an address with a traffic listener",
            None,
        );
    }

    let mut clusters = Vec::new();
    match root.get("clusters").map(|n| &n.value) {
        Some(Value::Map(entries)) => {
            for (k, node) in entries {
                let path = format!("clusters.{}", k.name);
                if !valid_name(&k.name) {
                    ctx.err(
                        k.pos,
                        &path,
                        format!(
                            "cluster name `{}` must be letters, digits, `-`, `_` or `.`",
                            k.name
                        ),
                        None,
                    );
                }
                if let Some(c) = ctx.decode::<RawCluster>(node, &path)
                    && let Some(s) = check_cluster(&mut ctx, node, &path, &k.name, c)
                {
                    clusters.push(s);
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => ctx.err(
            pos_of(root, "clusters"),
            "clusters",
            "`clusters` must be a map from name to cluster",
            None,
        ),
    }

    let mut trusted_proxies = Vec::new();
    if let Some(node) = root.get("trusted_proxies")
        && let Some(list) = ctx.decode::<Vec<String>>(node, "trusted_proxies")
    {
        for (i, s) in list.iter().enumerate() {
            let parsed = s
                .parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
            match parsed {
                Some(n) => trusted_proxies.push(n),
                None => {
                    let pos = match &node.value {
                        Value::Seq(items) => items.get(i).map_or(node.pos, |n| n.pos),
                        _ => node.pos,
                    };
                    ctx.err(
                        pos,
                        &format!("trusted_proxies[{i}]"),
                        format!("`{s}` is not an IP address or CIDR range"),
                        Some("for example `10.0.0.0/8` or `192.0.2.7`".into()),
                    );
                }
            }
        }
    }

    let mut log_level = "info".to_owned();
    let mut access_log = true;
    if let Some(node) = root.get("log")
        && let Some(l) = ctx.decode::<raw::RawLog>(node, "log")
    {
        if let Some(level) = l.level {
            if tracing_subscriber::EnvFilter::builder()
                .parse(&level)
                .is_err()
            {
                ctx.err(
                    pos_of(node, "level"),
                    "log.level",
                    format!("`{level}` is not a log level or filter"),
                    Some("use one of error, warn, info, debug, trace".into()),
                );
            }
            log_level = level;
        }
        access_log = l.access.unwrap_or(true);
    }
    let mut poll_interval = Duration::from_secs(1);
    if let Some(node) = root.get("reload")
        && let Some(r) = ctx.decode::<raw::RawReload>(node, "reload")
    {
        poll_interval = dur(r.poll_interval, poll_interval);
    }
    let mut shutdown_grace = Duration::from_secs(30);
    if let Some(node) = root.get("shutdown")
        && let Some(s) = ctx.decode::<raw::RawShutdown>(node, "shutdown")
    {
        shutdown_grace = dur(s.grace, shutdown_grace);
    }
    let policies = match root.get("policies") {
        Some(n) => match n.as_str() {
            Some(s) => Some((s.to_owned(), n.pos)),
            None => {
                ctx.err(
                    n.pos,
                    "policies",
                    "`policies` must be a folder path",
                    Some("for example `policies: ./policies`".into()),
                );
                None
            }
        },
        None => None,
    };
    let default_workers =
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut workers = default_workers;
    if let Some(node) = root.get("workers")
        && let Some(n) = ctx.decode::<usize>(node, "workers")
    {
        if (1..=256).contains(&n) {
            workers = n;
        } else {
            ctx.err(
                node.pos,
                "workers",
                format!("workers must be between 1 and 256, not {n}"),
                Some(format!(
                    "leave it out to use one per CPU ({default_workers} here)"
                )),
            );
        }
    }
    let (issuers, issuer_names) = super::auth::check_issuers(&mut ctx, root);
    let jwt = super::auth::check_jwt(&mut ctx, root);
    let authz = super::authz::check_gateway_authz(&mut ctx, root);
    let limits = super::limits::check_gateway_limits(&mut ctx, root, authz.redis_url.as_deref());
    let hygiene = super::hygiene::check_gateway_hygiene(&mut ctx, root);
    GatewayPart {
        hygiene,
        limits,
        listeners,
        admin,
        clusters,
        trusted_proxies,
        log_level,
        access_log,
        poll_interval,
        shutdown_grace,
        policies,
        workers,
        issuers,
        issuer_names,
        jwt,
        authz,
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_listener(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    l: &RawListener,
    seen: &[ListenerSettings],
) -> Option<ListenerSettings> {
    let mut ok = true;
    if !valid_name(&l.name) {
        ctx.err(
            pos_of(node, "name"),
            &format!("{path}.name"),
            "a listener name must be letters, digits, `-`, `_` or `.`",
            None,
        );
        ok = false;
    }
    if seen.iter().any(|s| *s.name == *l.name) {
        ctx.err(
            pos_of(node, "name"),
            &format!("{path}.name"),
            format!("listener name `{}` is used twice", l.name),
            None,
        );
        ok = false;
    }
    let address = match l.address.parse::<SocketAddr>() {
        Ok(a) => {
            if seen.iter().any(|s| s.address == a && a.port() != 0) {
                ctx.err(
                    pos_of(node, "address"),
                    &format!("{path}.address"),
                    format!("address `{a}` is used by two listeners"),
                    None,
                );
                ok = false;
            }
            Some(a)
        }
        Err(_) => {
            ctx.err(
                pos_of(node, "address"),
                &format!("{path}.address"),
                format!("`{}` is not an `ip:port` address", l.address),
                Some("for example `0.0.0.0:8443` or `[::]:8443`".into()),
            );
            None
        }
    };
    let max_header_bytes = l.max_header_bytes.unwrap_or(16 * 1024);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        ctx.err(
            pos_of(node, "max_header_bytes"),
            &format!("{path}.max_header_bytes"),
            format!("max_header_bytes must be between 8192 and 1048576, not {max_header_bytes}"),
            None,
        );
        ok = false;
    }
    let max_headers = l.max_headers.unwrap_or(100);
    if !(1..=1000).contains(&max_headers) {
        ctx.err(
            pos_of(node, "max_headers"),
            &format!("{path}.max_headers"),
            format!("max_headers must be between 1 and 1000, not {max_headers}"),
            None,
        );
        ok = false;
    }
    let max_connections_per_ip = l.max_connections_per_ip.unwrap_or(0);
    if l.max_connections_per_ip == Some(0) {
        ctx.err(
            pos_of(node, "max_connections_per_ip"),
            &format!("{path}.max_connections_per_ip"),
            "max_connections_per_ip must be at least 1 (leave it out for no per-IP limit)",
            None,
        );
        ok = false;
    }
    let max_connections = l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        ctx.err(
            pos_of(node, "max_connections"),
            &format!("{path}.max_connections"),
            "max_connections must be at least 1",
            None,
        );
        ok = false;
    }
    positive(
        ctx,
        node,
        path,
        "header_read_timeout",
        l.header_read_timeout,
    );
    positive(ctx, node, path, "idle_timeout", l.idle_timeout);
    let streams = l.max_concurrent_streams.unwrap_or(100);
    if streams == 0 {
        ctx.err(
            pos_of(node, "max_concurrent_streams"),
            &format!("{path}.max_concurrent_streams"),
            "max_concurrent_streams must be at least 1",
            None,
        );
        ok = false;
    }
    let tls = match &l.tls {
        Some(t) => {
            let tnode = node.get("tls").unwrap_or(node);
            let settings = crate::tls::TlsSettings {
                certificates: t
                    .certificates
                    .iter()
                    .map(|c| crate::tls::CertFiles {
                        cert: ctx.base.join(&c.cert),
                        key: ctx.base.join(&c.key),
                    })
                    .collect(),
                client_auth: match t.client_auth {
                    None | Some(raw::RawClientAuth::Off) => crate::tls::ClientAuth::Off,
                    Some(raw::RawClientAuth::Optional) => crate::tls::ClientAuth::Optional,
                    Some(raw::RawClientAuth::Required) => crate::tls::ClientAuth::Required,
                },
                client_ca: t.client_ca.iter().map(|p| ctx.base.join(p)).collect(),
                crl: t.crl.iter().map(|p| ctx.base.join(p)).collect(),
            };
            if settings.client_auth != crate::tls::ClientAuth::Off && settings.client_ca.is_empty()
            {
                ctx.err(
                    pos_of(tnode, "client_auth"),
                    &format!("{path}.tls.client_ca"),
                    "client certificates are requested but no `client_ca` bundle is given",
                    Some("add `client_ca: [ca.pem]`, or set `client_auth: off`".into()),
                );
                ok = false;
            } else if let Err(e) = crate::tls::build_server(&settings) {
                ctx.err(
                    tnode.pos,
                    &format!("{path}.tls"),
                    e,
                    Some("paths are relative to the gateway file".into()),
                );
                ok = false;
            }
            Some(settings)
        }
        None => None,
    };
    let address = address?;
    ok.then(|| ListenerSettings {
        name: l.name.as_str().into(),
        address,
        max_connections,
        max_connections_per_ip,
        header_read_timeout: dur(l.header_read_timeout, Duration::from_secs(10)),
        idle_timeout: dur(l.idle_timeout, Duration::from_secs(60)),
        max_header_bytes,
        max_headers,
        max_concurrent_streams: streams,
        tls,
    })
}

fn check_cluster(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    name: &str,
    c: RawCluster,
) -> Option<ClusterSettings> {
    let mut endpoints = Vec::new();
    if c.endpoints.is_empty() {
        ctx.err(
            pos_of(node, "endpoints"),
            &format!("{path}.endpoints"),
            "a cluster needs at least one endpoint",
            Some("for example `endpoints: [\"10.0.0.5:8080\"]`".into()),
        );
    }
    let items = node.get("endpoints");
    for (i, e) in c.endpoints.iter().enumerate() {
        let pos = match items.map(|n| &n.value) {
            Some(Value::Seq(v)) => v.get(i).map_or(node.pos, |n| n.pos),
            _ => node.pos,
        };
        let epath = format!("{path}.endpoints[{i}]");
        if e.contains("://") {
            ctx.err(
                pos,
                &epath,
                format!("endpoint `{e}` must be `host:port` without a scheme"),
                Some("the protocol comes from the cluster's `protocol` key".into()),
            );
            continue;
        }
        match e.parse::<Authority>() {
            Ok(a) if a.port_u16().is_some_and(|p| p > 0) && !a.as_str().contains('@') => {
                endpoints.push((e.clone(), a))
            }
            _ => ctx.err(
                pos,
                &epath,
                format!("endpoint `{e}` is not a `host:port` address"),
                Some("for example `10.0.0.5:8080` or `accounts.internal:8080`".into()),
            ),
        }
    }
    positive(ctx, node, path, "connect_timeout", c.connect_timeout);
    positive(ctx, node, path, "request_timeout", c.request_timeout);
    let mut tls_ok = true;
    let tls = c.tls.as_ref().map(|t| crate::tls::client::UpstreamTls {
        ca: t.ca.iter().map(|p| ctx.base.join(p)).collect(),
        server_name: t.server_name.clone(),
        client_cert: match (&t.client_cert, &t.client_key) {
            (Some(cert), Some(key)) => Some(crate::tls::CertFiles {
                cert: ctx.base.join(cert),
                key: ctx.base.join(key),
            }),
            _ => None,
        },
    });
    if let Some(t) = &c.tls
        && t.client_cert.is_some() != t.client_key.is_some()
    {
        ctx.err(
            pos_of(node, "tls"),
            &format!("{path}.tls"),
            "`client_cert` and `client_key` go together",
            None,
        );
        tls_ok = false;
    }
    match (&tls, c.protocol) {
        (Some(_), raw::RawProtocol::H2c) => {
            ctx.err(
                pos_of(node, "protocol"),
                &format!("{path}.protocol"),
                "`h2c` is cleartext HTTP/2; with `tls` use `protocol: h2`",
                None,
            );
            tls_ok = false;
        }
        (None, raw::RawProtocol::H2) => {
            ctx.err(
                pos_of(node, "protocol"),
                &format!("{path}.protocol"),
                "`h2` needs `tls`; for cleartext HTTP/2 use `protocol: h2c`",
                None,
            );
            tls_ok = false;
        }
        (Some(t), p) if tls_ok => {
            if let Err(e) = crate::tls::client::build(t, p == raw::RawProtocol::H2) {
                ctx.err(
                    pos_of(node, "tls"),
                    &format!("{path}.tls"),
                    e,
                    Some("paths are relative to the gateway file".into()),
                );
                tls_ok = false;
            }
        }
        _ => {}
    }
    let quota = match &c.quota {
        Some(q) => Some(super::limits::check_quota(ctx, node, path, q)?),
        None => None,
    };
    if endpoints.len() != c.endpoints.len() || endpoints.is_empty() || !tls_ok {
        return None;
    }
    Some(ClusterSettings {
        name: name.to_owned(),
        endpoints,
        protocol: c.protocol,
        connect_timeout: dur(c.connect_timeout, Duration::from_secs(2)),
        request_timeout: dur(c.request_timeout, Duration::from_secs(30)),
        eject_for: dur(c.eject_for, Duration::from_secs(5)),
        pool_idle_timeout: dur(c.pool_idle_timeout, Duration::from_secs(90)),
        max_idle_per_endpoint: c.max_idle_per_endpoint.unwrap_or(64),
        tls,
        quota,
    })
}

/// Where a route was defined (for "first defined at" messages).
struct Origin {
    name: String,
    file: Arc<str>,
    line: usize,
}

/// Checks every policies file; cluster names resolve against `clusters` (declared names, even
/// when a cluster itself had errors, so one mistake is not reported twice).
pub(super) fn check_policies(
    files: &[(SourceFile, Node)],
    clusters: &[ClusterSettings],
    declared_clusters: &[String],
    issuers: &super::auth::IssuerNames<'_>,
    redis: bool,
    tiers: &[crate::ratelimit::BucketSettings],
    errors: &mut Vec<ConfigError>,
) -> (Vec<RouteSettings>, crate::authz::Tables, Vec<ConfigError>) {
    let mut routes = Vec::new();
    let mut tables = crate::authz::Tables::default();
    let mut warnings = Vec::new();
    let mut role_names = Vec::new();
    let declared_scopes: Option<Vec<String>> =
        issuers.valid.iter().any(|i| i.scopes.is_some()).then(|| {
            issuers
                .valid
                .iter()
                .flat_map(|i| i.scopes.iter().flatten().cloned())
                .collect()
        });
    for (file, root) in files {
        let mut ctx = Ctx {
            file: file.name.clone(),
            errors,
            base: Path::new("."),
        };
        role_names.extend(super::authz::check_roles(&mut ctx, root, &mut tables));
    }
    let mut names: HashMap<String, Origin> = HashMap::new();
    // (host, shape) → method → origin
    let mut shapes: HashMap<(Option<String>, String), HashMap<Method, Origin>> = HashMap::new();
    for (file, root) in files {
        let mut ctx = Ctx {
            file: file.name.clone(),
            errors,
            base: Path::new("."),
        };
        check_top_keys(&mut ctx, root, raw::POLICY_KEYS, "a policies file");
        let items = match root.get("routes").map(|n| &n.value) {
            Some(Value::Seq(items)) => items.as_slice(),
            Some(Value::Null) | None => &[],
            Some(_) => {
                ctx.err(
                    pos_of(root, "routes"),
                    "routes",
                    "`routes` must be a list",
                    None,
                );
                &[]
            }
        };
        for (i, node) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(r) = ctx.decode::<RawRoute>(node, &path) else {
                continue;
            };
            let mut ac = super::authz::AuthzContext {
                tables: &mut tables,
                roles: &role_names,
                scopes: declared_scopes.as_deref(),
                redis,
                warnings: &mut warnings,
            };
            if let Some(s) = check_route(
                &mut ctx,
                node,
                &path,
                r,
                clusters,
                declared_clusters,
                issuers,
                &mut ac,
                tiers,
                &mut names,
                &mut shapes,
            ) {
                routes.push(s);
            }
        }
    }
    (routes, tables, warnings)
}

#[allow(clippy::too_many_arguments)]
fn check_route(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    r: RawRoute,
    clusters: &[ClusterSettings],
    declared: &[String],
    issuers: &super::auth::IssuerNames<'_>,
    ac: &mut super::authz::AuthzContext<'_>,
    tiers: &[crate::ratelimit::BucketSettings],
    names: &mut HashMap<String, Origin>,
    shapes: &mut HashMap<(Option<String>, String), HashMap<Method, Origin>>,
) -> Option<RouteSettings> {
    let mut ok = true;
    if !valid_name(&r.name) {
        ctx.err(
            pos_of(node, "name"),
            &format!("{path}.name"),
            "a route name must be letters, digits, `-`, `_` or `.`",
            None,
        );
        ok = false;
    }
    if let Some(first) = names.get(&r.name) {
        ctx.err(
            pos_of(node, "name"),
            &format!("{path}.name"),
            format!(
                "route name `{}` is already used (first at {}:{})",
                r.name, first.file, first.line
            ),
            None,
        );
        ok = false;
    } else {
        names.insert(
            r.name.clone(),
            Origin {
                name: r.name.clone(),
                file: ctx.file.clone(),
                line: node.pos.line,
            },
        );
    }
    let template = match parse_template(&r.path) {
        Ok(t) => Some(t),
        Err(msg) => {
            ctx.err(
                pos_of(node, "path"),
                &format!("{path}.path"),
                msg,
                Some("templates look like `/v1/accounts/{account_id}/transactions`".into()),
            );
            None
        }
    };
    let mut methods: Vec<Method> = Vec::new();
    if r.methods.is_empty() {
        ctx.err(
            pos_of(node, "methods"),
            &format!("{path}.methods"),
            "a route needs at least one method",
            Some("for example `methods: [GET]`".into()),
        );
        ok = false;
    }
    for m in &r.methods {
        let valid = !m.is_empty() && m.bytes().all(|c| c.is_ascii_uppercase());
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if valid => {
                if methods.contains(&method) {
                    ctx.err(
                        pos_of(node, "methods"),
                        &format!("{path}.methods"),
                        format!("method `{m}` is listed twice"),
                        None,
                    );
                }
                methods.push(method);
            }
            _ => {
                let known = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                let upper = m.to_ascii_uppercase();
                let hint = suggest(&upper, known).map(|s| format!("did you mean `{s}`?"));
                ctx.err(
                    pos_of(node, "methods"),
                    &format!("{path}.methods"),
                    format!("`{m}` is not an HTTP method (methods are upper case)"),
                    hint,
                );
                ok = false;
            }
        }
    }
    let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host
        && (h.is_empty()
            || !h
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.')))
    {
        ctx.err(
            pos_of(node, "host"),
            &format!("{path}.host"),
            format!("`{h}` is not a host name"),
            Some("write the host without scheme or port, like `api.example.com`".into()),
        );
        ok = false;
    }
    let cluster = clusters.iter().position(|c| c.name == r.cluster);
    if cluster.is_none() && !declared.contains(&r.cluster) {
        let hint = match suggest(&r.cluster, declared.iter().map(String::as_str)) {
            Some(s) => Some(format!("did you mean `{s}`?")),
            None if declared.is_empty() => {
                Some("no clusters are defined in the gateway file".into())
            }
            None => Some(format!("defined clusters: {}", declared.join(", "))),
        };
        ctx.err(
            pos_of(node, "cluster"),
            &format!("{path}.cluster"),
            format!("unknown cluster `{}`", r.cluster),
            hint,
        );
    }
    let timeouts = r.timeouts.clone();
    if let Some(t) = &timeouts {
        let tnode = node.get("timeouts").unwrap_or(node);
        positive(
            ctx,
            tnode,
            &format!("{path}.timeouts"),
            "connect",
            t.connect,
        );
        positive(
            ctx,
            tnode,
            &format!("{path}.timeouts"),
            "request",
            t.request,
        );
    }
    let template = template?;
    let shape: String = template
        .iter()
        .map(|s| match s {
            Segment::Static(s) => format!("/{s}"),
            Segment::Param(_) => "/{}".to_owned(),
        })
        .collect();
    let by_method = shapes.entry((host.clone(), shape)).or_default();
    for m in &methods {
        if let Some(first) = by_method.get(m) {
            ctx.err(
                pos_of(node, "path"),
                &format!("{path}.path"),
                format!("route `{}` is ambiguous with route `{}` ({}:{}): same host, path shape and method {m}", r.name, first.name, first.file, first.line),
                Some("give the routes different paths or methods, or merge them".into()),
            );
            ok = false;
        } else {
            by_method.insert(
                m.clone(),
                Origin {
                    name: r.name.clone(),
                    file: ctx.file.clone(),
                    line: node.pos.line,
                },
            );
        }
    }
    let mut mtls = None;
    if let Some(m) = &r.mtls {
        let mnode = node
            .get("mtls")
            .and_then(|n| n.get("any_of"))
            .unwrap_or(node);
        let mut patterns = Vec::new();
        if m.any_of.is_empty() {
            ctx.err(
                mnode.pos,
                &format!("{path}.mtls.any_of"),
                "`any_of` needs at least one identity",
                Some("for example `- uri: \"spiffe://acme.internal/*\"`".into()),
            );
            ok = false;
        }
        for (i, p) in m.any_of.iter().enumerate() {
            use crate::tls::identity::{Glob, IdentityPattern as P};
            let ppos = match &mnode.value {
                Value::Seq(items) => items.get(i).map_or(mnode.pos, |n| n.pos),
                _ => mnode.pos,
            };
            let ppath = format!("{path}.mtls.any_of[{i}]");
            let set = [
                p.uri.is_some(),
                p.dns.is_some(),
                p.cn.is_some(),
                p.fingerprint.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                ctx.err(
                    ppos,
                    &ppath,
                    "each identity names exactly one of `uri`, `dns`, `cn`, `fingerprint`",
                    None,
                );
                ok = false;
                continue;
            }
            let pattern = if let Some(u) = &p.uri {
                P::Uri(Glob::new(u))
            } else if let Some(d) = &p.dns {
                P::Dns(Glob::new(&d.to_ascii_lowercase()))
            } else if let Some(c) = &p.cn {
                P::CommonName(Glob::new(c))
            } else {
                let raw_fp = p.fingerprint.clone().unwrap_or_default();
                match crate::tls::identity::normalise_fingerprint(&raw_fp) {
                    Some(fp) => P::Fingerprint(fp),
                    None => {
                        ctx.err(
                            ppos,
                            &ppath,
                            format!("`{raw_fp}` is not a SHA-256 fingerprint"),
                            Some("64 hex digits, `:` separators allowed".into()),
                        );
                        ok = false;
                        continue;
                    }
                }
            };
            patterns.push(pattern);
        }
        mtls = Some(patterns);
    }
    let auth = super::auth::check_route_auth(ctx, node, path, &r, issuers);
    let params: Vec<String> = template
        .iter()
        .filter_map(|s| match s {
            Segment::Param(p) => Some(p.clone()),
            Segment::Static(_) => None,
        })
        .collect();
    let authz = match &auth {
        Some((mode, _, _)) => super::authz::check_route_authz(
            ctx,
            node,
            path,
            *mode,
            r.mtls.is_some(),
            &params,
            r.authz.as_ref(),
            ac,
        ),
        None => None,
    };
    let rate_limit =
        super::limits::check_route_limit(ctx, node, path, r.rate_limit.as_ref(), tiers);
    let body = match &r.body {
        Some(b) => {
            let file = ctx.file.clone();
            let base = Path::new(&*file).parent().unwrap_or(Path::new("."));
            match super::hygiene::check_route_body(ctx, node, path, b, base) {
                Some(b) => Some(Arc::new(b)),
                None => {
                    ok = false;
                    None
                }
            }
        }
        None => None,
    };
    let cluster = cluster?;
    let c = &clusters[cluster];
    let (auth, jwt_issuers, require_bound_tokens) = auth?;
    let rate_limit = rate_limit?;
    let authz = authz?;
    ok.then(|| RouteSettings {
        authz,
        rate_limit,
        body,
        keep_cache_control: r.response.as_ref().is_some_and(|x| x.keep_cache_control),
        mtls,
        auth,
        jwt_issuers,
        require_bound_tokens,
        name: r.name,
        host,
        methods,
        template,
        cluster,
        connect_timeout: timeouts
            .as_ref()
            .and_then(|t| t.connect)
            .map_or(c.connect_timeout, |d| d.0),
        request_timeout: timeouts
            .as_ref()
            .and_then(|t| t.request)
            .map_or(c.request_timeout, |d| d.0),
    })
}

/// Resolves the policies folder relative to the gateway file.
pub(super) fn policies_dir(gateway_path: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() {
        p.to_owned()
    } else {
        gateway_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}
