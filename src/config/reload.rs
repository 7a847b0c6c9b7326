//! Hot reload: on a change in the config files (polled by content) or on SIGHUP, load, validate
//! and compile the whole new config, then swap it in with one atomic store. Requests in flight
//! keep the `Arc<Runtime>` they started with. An invalid config is logged with every error,
//! counted (`portcullis_config_reloads_total{result="failure"}`) and the old one keeps serving.
//!
//! Also exports [`ConfigLayer`], which loads the current config once per request and puts it in
//! the request extensions for the layers below.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use tokio::sync::{Notify, watch};
use tower::{Layer, Service};

use super::{ConfigErrors, Runtime, compile, load};
use crate::observe::metrics::Metrics;

/// A variable lookup that can move into the reload task.
pub type SharedEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Hashes the gateway file and every policy file (names and contents).
pub fn fingerprint(gateway: &Path, policies_dir: Option<&Path>) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(gateway).ok().hash(&mut h);
    if let Some(dir) = policies_dir
        && let Ok(files) = super::read_policy_dir(dir)
    {
        for f in files {
            f.name.hash(&mut h);
            f.text.hash(&mut h);
        }
    }
    h.finish()
}

/// Watches the config files and swaps in new configs.
pub struct Reloader {
    path: PathBuf,
    env: SharedEnv,
    config: Arc<ArcSwap<Runtime>>,
    metrics: Metrics,
    last: u64,
}

impl Reloader {
    /// Creates a reloader for the gateway file at `path`.
    pub fn new(
        path: PathBuf,
        env: SharedEnv,
        config: Arc<ArcSwap<Runtime>>,
        metrics: Metrics,
    ) -> Self {
        let dir = config.load().settings.policies_dir.clone();
        let last = fingerprint(&path, dir.as_deref());
        Self {
            path,
            env,
            config,
            metrics,
            last,
        }
    }

    /// Loads, validates and compiles the config now and swaps it in.
    ///
    /// # Errors
    /// The config errors; the running config is unchanged.
    pub fn reload(&mut self) -> Result<(), ConfigErrors> {
        let env = self.env.clone();
        let result = load(&self.path, &*env).and_then(|checked| {
            compile(checked, &self.metrics).map_err(|e| {
                ConfigErrors(vec![super::ConfigError {
                    file: self.path.display().to_string().into(),
                    pos: super::yaml::Pos::default(),
                    path: String::new(),
                    message: e,
                    hint: None,
                }])
            })
        });
        match result {
            Ok(mut runtime) => {
                let old = self.config.load();
                runtime.limits.inherit(&old.limits);
                if old.settings.listeners != runtime.settings.listeners
                    || old.settings.admin != runtime.settings.admin
                {
                    tracing::warn!(
                        "listener and admin changes take effect at the next restart; routes and clusters were reloaded"
                    );
                }
                self.last = fingerprint(&self.path, runtime.settings.policies_dir.as_deref());
                self.config.store(Arc::new(runtime));
                self.metrics.record_reload(true);
                tracing::info!(file = %self.path.display(), "configuration reloaded");
                Ok(())
            }
            Err(errors) => {
                // Remember this state so a broken file is reported once, not every poll.
                let dir = self.config.load().settings.policies_dir.clone();
                self.last = fingerprint(&self.path, dir.as_deref());
                self.metrics.record_reload(false);
                tracing::error!(file = %self.path.display(), errors = %errors, "configuration rejected; the previous configuration keeps serving");
                Err(errors)
            }
        }
    }

    /// Polls for changes every `interval` (zero: only on `trigger`) until `shutdown`.
    pub async fn run(
        mut self,
        interval: Duration,
        trigger: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let poll = if interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            interval
        };
        loop {
            tokio::select! {
                () = trigger.notified() => {
                    let _ = self.reload();
                }
                () = tokio::time::sleep(poll) => {
                    if interval.is_zero() {
                        continue;
                    }
                    let dir = self.config.load().settings.policies_dir.clone();
                    let path = self.path.clone();
                    let now = tokio::task::spawn_blocking(move || fingerprint(&path, dir.as_deref())).await.unwrap_or(self.last);
                    if now != self.last {
                        let _ = self.reload();
                    }
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }
}

/// Puts the current `Arc<Runtime>` into every request's extensions (one atomic load).
///
/// The shared `ArcSwap` sits behind a second, per-worker `Arc`: the pipeline is cloned for every
/// request, and this way that clone counts on the worker's own allocation instead of bouncing
/// one cache line between cores.
#[derive(Clone)]
pub struct ConfigLayer {
    config: Arc<WorkerConfig>,
}

/// The shared config cell, as one worker's pipeline holds it.
struct WorkerConfig(Arc<ArcSwap<Runtime>>);

impl std::fmt::Debug for ConfigLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigLayer")
    }
}

impl ConfigLayer {
    /// Creates the layer over the shared config.
    pub fn new(config: Arc<ArcSwap<Runtime>>) -> Self {
        Self {
            config: Arc::new(WorkerConfig(config)),
        }
    }
}

impl<S> Layer<S> for ConfigLayer {
    type Service = WithConfig<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WithConfig {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`ConfigLayer`].
#[derive(Clone)]
pub struct WithConfig<S> {
    inner: S,
    config: Arc<WorkerConfig>,
}

impl<S, B> Service<Request<B>> for WithConfig<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.config.0.load_full());
        self.inner.call(req)
    }
}
