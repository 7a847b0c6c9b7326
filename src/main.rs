//! The `portcullis` command line: `run`, `validate`, `demo` (and a hidden `backend` for
//! benchmarks). All user-facing output goes through [`out`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::config::reload::{Reloader, SharedEnv};
use portcullis::config::{self, Checked};
use portcullis::observe::{logging, metrics::Metrics};
use portcullis::server::{self, Running};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A security gateway for internal finance APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Run {
        /// The gateway file (it names the policies folder).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config and print every error with file, line and column.
    Validate {
        /// The gateway file (it names the policies folder).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the reference finance API and the gateway in front of it, on loopback.
    Demo,
    /// Explain why a request would be allowed or denied (exit 0 allow, 1 deny, 2 error).
    Explain {
        /// The gateway file (it names the policies folder).
        #[arg(long, short)]
        config: PathBuf,
        /// The request method.
        #[arg(long)]
        method: String,
        /// The request path, optionally with `?query`.
        #[arg(long)]
        path: String,
        /// The `Host` header (for host-specific routes).
        #[arg(long)]
        host: Option<String>,
        /// The token's claims as a JSON object (taken as verified).
        #[arg(long)]
        claims: Option<String>,
        /// The issuer whose claim map reads the claims (default: the first configured).
        #[arg(long)]
        issuer: Option<String>,
        /// A file holding the JSON request body.
        #[arg(long)]
        body: Option<PathBuf>,
        /// The client certificate (PEM) for mTLS routes.
        #[arg(long)]
        client_cert: Option<PathBuf>,
        /// An ownership lookup answer: `redis <key> <member>=yes|no` or `http <url>=yes|no`;
        /// repeatable. Unanswered lookups then fail (deny) instead of asking Redis/HTTP.
        #[arg(long = "lookup")]
        lookups: Vec<String>,
        /// Ask no Redis or ownership service: lookups not answered by `--lookup` fail.
        #[arg(long)]
        offline: bool,
    },
    /// Write a development CA and certificates (server, client, SPIFFE service, rogue) into DIR.
    DevCerts {
        /// Output folder (created if missing).
        dir: PathBuf,
    },
    /// Print a JWKS (public keys) for PKCS#8 private key files: RSA, P-256 or Ed25519.
    DevJwks {
        /// Key files, each optionally followed by `:KID` (default: the file stem).
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print a signed development token (JWT) for trying routes with `auth: jwt`.
    DevToken(TokenArgs),
    /// Serve the demo backend alone (for benchmarks).
    #[command(hide = true)]
    Backend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
        /// Answer every request with the same constant body (benchmarks).
        #[arg(long)]
        fixed: bool,
    },
}

/// Writes `s` to stdout (the one writer for CLI output).
fn out(s: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(s.as_bytes());
    let _ = stdout.flush();
}

fn err(s: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Validate { config } => validate(&config),
            Command::Run { config } => run(&config).await,
            Command::Demo => demo().await,
            Command::Explain {
                config,
                method,
                path,
                host,
                claims,
                issuer,
                body,
                client_cert,
                lookups,
                offline,
            } => {
                let args = portcullis::authz::explain::ExplainArgs {
                    config,
                    method,
                    path,
                    host,
                    claims,
                    issuer,
                    body,
                    client_cert,
                    lookups,
                    offline,
                };
                match portcullis::authz::explain::run(args).await {
                    Ok(report) => {
                        out(&report.to_string());
                        ExitCode::from(if report.allowed() { 0 } else { 1 })
                    }
                    Err(e) => {
                        err(&e);
                        ExitCode::from(2)
                    }
                }
            }
            Command::DevCerts { dir } => dev_certs(&dir),
            Command::Backend { listen, fixed } => backend(listen, fixed).await,
            Command::DevJwks { keys } => dev_jwks(&keys),
            Command::DevToken(args) => match dev_token(&args) {
                Ok(token) => {
                    out(&format!("{token}\n"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    err(&e);
                    ExitCode::FAILURE
                }
            },
        }
    })
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path, &config::process_env) {
        Ok(c) => {
            for w in &c.warnings {
                out(&format!(
                    "{}\n",
                    w.to_string().replacen(": error: ", ": warning: ", 1)
                ));
            }
            out(&format!(
                "{}: valid ({} listener(s), {} cluster(s), {} route(s))\n",
                path.display(),
                c.listeners.len(),
                c.clusters.len(),
                c.routes.len()
            ));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            out(&format!("{errors}\n"));
            ExitCode::FAILURE
        }
    }
}

fn dev_jwks(keys: &[String]) -> ExitCode {
    use portcullis::authn::devtools;
    let list: Vec<(PathBuf, String)> = keys
        .iter()
        .map(|k| {
            // `path:kid`, unless the part after the last `:` is a path (no such split).
            match k.rsplit_once(':') {
                Some((p, kid)) if !kid.contains('/') && !p.is_empty() => {
                    (PathBuf::from(p), kid.to_owned())
                }
                _ => {
                    let p = PathBuf::from(k);
                    let kid = devtools::default_kid(&p);
                    (p, kid)
                }
            }
        })
        .collect();
    match devtools::jwks(&list) {
        Ok(doc) => {
            out(&format!("{doc:#}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&e);
            ExitCode::FAILURE
        }
    }
}

/// `portcullis dev-token` arguments.
#[derive(clap::Args)]
struct TokenArgs {
    /// The signing key (PKCS#8 PEM: RSA, P-256 or Ed25519).
    #[arg(long)]
    key: PathBuf,
    /// Key id (default: the key file stem).
    #[arg(long)]
    kid: Option<String>,
    /// Algorithm (default from the key: RS256, ES256 or EdDSA; PS256 for RSA on request).
    #[arg(long)]
    alg: Option<String>,
    /// `iss`.
    #[arg(long)]
    iss: String,
    /// `aud`.
    #[arg(long)]
    aud: String,
    /// `sub`.
    #[arg(long)]
    sub: Option<String>,
    /// `tenant`.
    #[arg(long)]
    tenant: Option<String>,
    /// `scope` (space separated).
    #[arg(long)]
    scope: Option<String>,
    /// Lifetime, like `15m` or `1h`.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Bind the token to this client certificate (RFC 8705 `cnf.x5t#S256`).
    #[arg(long)]
    cnf_cert: Option<PathBuf>,
    /// Extra claims, `NAME=JSON` (e.g. `accounts=["acc-100"]`); repeatable.
    #[arg(long = "claim")]
    claims: Vec<String>,
}

fn dev_token(a: &TokenArgs) -> Result<String, String> {
    use portcullis::authn::devtools::{DevKey, TokenSpec, claims, default_kid};
    let key = DevKey::read(&a.key)?;
    let ttl = portcullis::config::raw::parse_duration(&a.ttl)
        .ok_or_else(|| format!("`{}` is not a duration like `15m` or `1h`", a.ttl))?;
    let cert_der = match &a.cnf_cert {
        None => None,
        Some(p) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let c = CertificateDer::from_pem_file(p)
                .map_err(|e| format!("`{}`: not a PEM certificate: {e}", p.display()))?;
            Some(c.to_vec())
        }
    };
    let mut extra = serde_json::Map::new();
    for c in &a.claims {
        let (name, json) = c
            .split_once('=')
            .ok_or_else(|| format!("`{c}`: write claims as NAME=JSON"))?;
        let v: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|_| serde_json::Value::String(json.to_owned()));
        extra.insert(name.to_owned(), v);
    }
    let spec = TokenSpec {
        iss: &a.iss,
        aud: &a.aud,
        sub: a.sub.as_deref(),
        tenant: a.tenant.as_deref(),
        scope: a.scope.as_deref(),
        ttl: ttl.as_secs(),
        cnf_cert_der: cert_der.as_deref(),
        extra,
    };
    let kid = a.kid.clone().unwrap_or_else(|| default_kid(&a.key));
    let alg = a.alg.as_deref().unwrap_or(key.default_alg());
    key.sign(alg, Some(&kid), &claims(&spec))
}

fn dev_certs(dir: &Path) -> ExitCode {
    match portcullis::tls::devcerts::write_dev_certs(dir) {
        Ok(()) => {
            let files = portcullis::tls::devcerts::DEV_FILES.join(", ");
            out(&format!(
                "wrote {files} into {} (private keys are 0600; see certs/README.md)\n",
                dir.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&e);
            ExitCode::FAILURE
        }
    }
}

async fn start(checked: Checked) -> Result<Running, String> {
    for w in &checked.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let runtime = config::compile(checked, &metrics)?;
    metrics.record_reload(true);
    server::start(runtime, metrics)
        .await
        .map_err(|e| format!("cannot bind a listener: {e}"))
}

/// Waits for SIGTERM/SIGINT (shutdown) and SIGHUP (reload) until the server stops.
async fn supervise(running: Running, reload: Option<Arc<Notify>>) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        err("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let stop = running.shutdown_handle();
    let tls_reload = running.shared.tls_reload.clone();
    let waiter = tokio::spawn(running.wait());
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break; }
            _ = hup.recv() => {
                tls_reload.notify_waiters();
                match &reload {
                    Some(r) => { tracing::info!(signal = "SIGHUP", "reloading"); r.notify_one(); }
                    None => tracing::info!("SIGHUP: certificates reloaded; the embedded config is not"),
                }
            }
        }
    }
    let _ = stop.send(true);
    let _ = waiter.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn run(path: &Path) -> ExitCode {
    let checked = match config::load(path, &config::process_env) {
        Ok(c) => c,
        Err(errors) => {
            err(&errors.to_string());
            return ExitCode::FAILURE;
        }
    };
    logging::init(&checked.log_level);
    let poll = checked.poll_interval;
    let running = match start(checked).await {
        Ok(r) => r,
        Err(e) => {
            err(&e);
            return ExitCode::FAILURE;
        }
    };
    let env: SharedEnv = Arc::new(config::process_env);
    let reloader = Reloader::new(
        path.to_owned(),
        env,
        running.shared.config.clone(),
        running.shared.metrics.clone(),
    );
    let trigger = Arc::new(Notify::new());
    tokio::spawn(reloader.run(poll, trigger.clone(), running.shutdown_handle().subscribe()));
    supervise(running, Some(trigger)).await
}

async fn demo() -> ExitCode {
    let backends = match portcullis::demo::start_backends().await {
        Ok(b) => b,
        Err(e) => {
            err(&format!("cannot start the demo backends: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let certs = PathBuf::from("certs/dev");
    let missing = portcullis::tls::devcerts::DEV_FILES
        .iter()
        .any(|f| !certs.join(f).exists());
    if missing {
        if let Err(e) = portcullis::tls::devcerts::write_dev_certs(&certs) {
            err(&format!("cannot create the demo certificates: {e}"));
            return ExitCode::FAILURE;
        }
        out(&format!(
            "created development certificates in {}\n",
            certs.display()
        ));
    }
    // The JWKS always matches the signing keys on disk (and key ids of older versions).
    if let Err(e) = portcullis::authn::devtools::write_dev_keys(&certs) {
        err(&format!("cannot write the demo token keys: {e}"));
        return ExitCode::FAILURE;
    }
    let checked = match portcullis::demo::config(backends, &certs) {
        Ok(c) => c,
        Err(errors) => {
            err(&errors.to_string());
            return ExitCode::FAILURE;
        }
    };
    logging::init(&checked.log_level);
    let running = match start(checked).await {
        Ok(r) => r,
        Err(e) => {
            err(&format!(
                "{e}\n(is another demo already running? ports 8443 and 9901 must be free)"
            ));
            return ExitCode::FAILURE;
        }
    };
    let tokens = match portcullis::demo::tokens(&certs) {
        Ok(t) => t,
        Err(e) => {
            err(&format!("cannot sign the demo tokens: {e}"));
            return ExitCode::FAILURE;
        }
    };
    out(&portcullis::demo::curl_commands(
        running.addrs[0],
        running.admin_addr,
        &certs,
        &tokens,
    ));
    supervise(running, None).await
}

async fn backend(listen: SocketAddr, fixed: bool) -> ExitCode {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => {
            out(&format!("demo backend listening on http://{listen}\n"));
            if fixed {
                portcullis::demo::backend::serve_fixed(l).await;
            } else {
                portcullis::demo::backend::serve(l).await;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&format!("cannot bind {listen}: {e}"));
            ExitCode::FAILURE
        }
    }
}

// mimalloc: per-thread free lists suit the thread-per-core workers; glibc malloc showed ~8% of
// gateway CPU in profiles under proxy load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
