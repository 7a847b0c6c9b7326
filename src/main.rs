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
    /// Write a development CA and certificates (server, client, SPIFFE service, rogue) into DIR.
    DevCerts {
        /// Output folder (created if missing).
        dir: PathBuf,
    },
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
            Command::DevCerts { dir } => dev_certs(&dir),
            Command::Backend { listen, fixed } => backend(listen, fixed).await,
        }
    })
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path, &config::process_env) {
        Ok(c) => {
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
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let runtime = config::compile(checked)?;
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
    if !certs.join("ca.pem").exists() {
        if let Err(e) = portcullis::tls::devcerts::write_dev_certs(&certs) {
            err(&format!("cannot create the demo certificates: {e}"));
            return ExitCode::FAILURE;
        }
        out(&format!(
            "created development certificates in {}\n",
            certs.display()
        ));
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
    out(&portcullis::demo::curl_commands(
        running.addrs[0],
        running.admin_addr,
        &certs,
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
