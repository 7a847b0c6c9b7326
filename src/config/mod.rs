//! Configuration: parse (YAML with positions, serde with unknown keys rejected), validate (every
//! error at once, with file, line, column, key path and a hint) and compile (runtime structures
//! with no serde in them). [`reload`] swaps a new compiled config in atomically.
//!
//! Layout: one gateway file (listeners, admin, clusters, limits) that names a `policies` folder;
//! every `*.yaml`/`*.yml` file in that folder (recursively, in name order) holds routes.

pub mod auth;
pub mod authz;
pub mod compile;
pub mod hygiene;
pub mod limits;
pub mod raw;
pub mod reload;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use compile::{Runtime, compile};
pub use validate::Checked;
use yaml::{Node, Pos};

/// One configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as the user named it.
    pub file: Arc<str>,
    /// Line and column.
    pub pos: Pos,
    /// Key path, like `routes[2].cluster` (may be empty for top-level problems).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )?;
        if !self.path.is_empty() {
            write!(f, " (at `{}`)", self.path)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// A list of configuration errors, printed one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        write!(
            f,
            "{} error{} found",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// A config file's name and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Name used in error messages (the path as given).
    pub name: Arc<str>,
    /// File contents.
    pub text: String,
}

/// How `${VAR}` is resolved.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn parse_file(
    file: &SourceFile,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Node> {
    let (root, errs) = yaml::parse(&file.text);
    let mut ye = errs;
    let root = root.map(|mut r| {
        yaml::interpolate(&mut r, env, &mut ye);
        r
    });
    errors.extend(ye.into_iter().map(|e| ConfigError {
        file: file.name.clone(),
        pos: e.pos,
        path: String::new(),
        message: e.message,
        hint: None,
    }));
    root
}

/// Loads, validates and checks the gateway file at `path` and its policies folder.
///
/// # Errors
/// Every problem found, each with file, line, column and key path.
pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Checked, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string().into(),
            pos: Pos { line: 0, col: 0 },
            path: String::new(),
            message: format!("cannot read the gateway file: {e}"),
            hint: None,
        }])
    })?;
    let gateway = SourceFile {
        name: path.display().to_string().into(),
        text,
    };
    load_sources(&gateway, Some(path), None, env)
}

/// Loads from in-memory sources. `policies` given explicitly wins over the gateway's
/// `policies` key; otherwise that folder is read relative to `gateway_path`.
///
/// # Errors
/// Every problem found.
pub fn load_sources(
    gateway: &SourceFile,
    gateway_path: Option<&Path>,
    policies: Option<Vec<SourceFile>>,
    env: EnvLookup<'_>,
) -> Result<Checked, ConfigErrors> {
    let mut errors = Vec::new();
    let root = parse_file(gateway, env, &mut errors);
    let Some(root) = root else {
        return Err(ConfigErrors(errors));
    };
    let base = gateway_path
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let part = validate::check_gateway(gateway, &root, &base, &mut errors);
    let mut policies_dir = None;
    let policy_files = match policies {
        Some(p) => p,
        None => match (&part.policies, gateway_path) {
            (Some((rel, pos)), Some(gp)) => {
                let dir = validate::policies_dir(gp, rel);
                match read_policy_dir(&dir) {
                    Ok(files) => {
                        policies_dir = Some(dir);
                        files
                    }
                    Err(e) => {
                        errors.push(ConfigError {
                            file: gateway.name.clone(),
                            pos: *pos,
                            path: "policies".into(),
                            message: format!(
                                "cannot read the policies folder `{}`: {e}",
                                dir.display()
                            ),
                            hint: Some("the path is relative to the gateway file".into()),
                        });
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        },
    };
    let mut parsed = Vec::new();
    let mut recovered: Vec<Arc<str>> = Vec::new();
    for f in policy_files {
        let before = errors.len();
        if let Some(root) = parse_file(&f, env, &mut errors) {
            if errors[before..]
                .iter()
                .any(|e| e.message.starts_with("YAML syntax error"))
            {
                recovered.push(f.name.clone());
            }
            parsed.push((f, root));
        }
    }
    let declared: Vec<String> = match root.get("clusters").map(|n| &n.value) {
        Some(yaml::Value::Map(entries)) => entries.iter().map(|(k, _)| k.name.clone()).collect(),
        _ => Vec::new(),
    };
    let issuer_names = auth::IssuerNames {
        valid: &part.issuers,
        declared: &part.issuer_names,
    };
    let policy_limits = limits::check_policy_limits(&parsed, &mut errors);
    let (routes, tables, warnings) = validate::check_policies(
        &parsed,
        &part.clusters,
        &declared,
        &issuer_names,
        part.authz.redis_url.is_some(),
        &policy_limits.tiers,
        &mut errors,
    );
    // A line blanked to get past a syntax error leaves its item short of a key; that is the
    // syntax error's echo, not a second mistake.
    errors.retain(|e| {
        !(recovered.contains(&e.file) && e.message.starts_with("missing required key"))
    });
    if !errors.is_empty() {
        errors.sort_by(|a, b| {
            (&*a.file, a.pos.line, a.pos.col).cmp(&(&*b.file, b.pos.line, b.pos.col))
        });
        return Err(ConfigErrors(errors));
    }
    Ok(Checked {
        listeners: part.listeners,
        admin: part.admin,
        clusters: part.clusters,
        routes,
        trusted_proxies: part.trusted_proxies,
        log_level: part.log_level,
        access_log: part.access_log,
        poll_interval: part.poll_interval,
        shutdown_grace: part.shutdown_grace,
        policies_dir,
        workers: part.workers,
        issuers: part.issuers,
        jwt: part.jwt,
        authz: part.authz,
        tables,
        hygiene: part.hygiene,
        limits: crate::ratelimit::RateLimitSettings {
            redis: part.limits.redis,
            max_keys: part.limits.max_keys,
            headers_on_all: part.limits.headers_on_all,
            tier_claim: policy_limits.tier_claim,
            per_ip: part.limits.per_ip,
            per_client_cert: part.limits.per_client_cert,
            tiers: policy_limits.tiers,
            tenants: policy_limits.tenants,
            default_tier: policy_limits.default_tier,
        },
        warnings,
    })
}

/// Reads every `*.yaml`/`*.yml` file under `dir`, recursively, sorted by path.
///
/// # Errors
/// When the folder or a file cannot be read.
pub fn read_policy_dir(dir: &Path) -> std::io::Result<Vec<SourceFile>> {
    let mut paths = Vec::new();
    collect_yaml(dir, &mut paths, 0)?;
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            Ok(SourceFile {
                name: p.display().to_string().into(),
                text: std::fs::read_to_string(&p)?,
            })
        })
        .collect()
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue; // Kubernetes ConfigMap mounts keep `..data` links; editors keep swap files.
        }
        if p.is_dir() {
            collect_yaml(&p, out, depth + 1)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}
