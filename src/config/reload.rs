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

/// Puts the current compiled config into every request's extensions, as a [`Snapshot`].
///
/// The shared `ArcSwap` sits behind a second, per-worker `Arc`: the pipeline is cloned for every
/// connection, and this way that clone counts on the worker's own allocation instead of bouncing
/// one cache line between cores.
#[derive(Clone)]
pub struct ConfigLayer {
    config: Arc<WorkerConfig>,
}

/// The compiled config a request is served with (a request extension).
///
/// A per-connection handle on one `Arc<Runtime>`: cloning it for a request, and for the stages
/// that keep it, counts on an allocation only the connection's worker touches, so requests
/// served on different cores do not bounce the shared runtime's reference count between them.
/// A connection takes the new runtime with its first request after a reload; until then
/// (while it idles, at most the listener's `idle_timeout`) it keeps the old one alive.
#[derive(Clone)]
pub struct Snapshot(Arc<Held>);

/// The connection's one reference on the shared runtime; its own count is what requests clone.
struct Held(Arc<Runtime>);

impl std::ops::Deref for Snapshot {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.0.0
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
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
            current: None,
        }
    }
}

/// The service made by [`ConfigLayer`].
#[derive(Clone)]
pub struct WithConfig<S> {
    inner: S,
    config: Arc<WorkerConfig>,
    /// The snapshot this connection's last request was served with.
    current: Option<Snapshot>,
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
        // One load of the shared cell (no reference count is written); a new snapshot only
        // when the config changed since this connection's last request.
        let live = self.config.0.load();
        let snapshot = match &self.current {
            Some(s) if Arc::ptr_eq(&s.0.0, &*live) => s.clone(),
            _ => {
                let s = Snapshot(Arc::new(Held(arc_swap::Guard::into_inner(live))));
                self.current = Some(s.clone());
                s
            }
        };
        req.extensions_mut().insert(snapshot);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SourceFile, load_sources};
    use std::future::Future;

    fn runtime(metrics: &Metrics) -> Runtime {
        let gateway = SourceFile {
            name: "gateway.yaml".into(),
            text: "listeners:\n  - name: public\n    address: 127.0.0.1:0\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n".into(),
        };
        let routes = SourceFile {
            name: "routes.yaml".into(),
            text: "routes:\n  - name: r\n    methods: [GET]\n    path: /\n    cluster: a\n    auth: public\n".into(),
        };
        let checked = load_sources(&gateway, None, Some(vec![routes]), &|_| None).unwrap();
        compile(checked, metrics).unwrap()
    }

    /// A service that hands back the snapshot its request carried.
    #[derive(Clone)]
    struct Echo;
    impl Service<Request<()>> for Echo {
        type Response = Option<Snapshot>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Option<Snapshot>, std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            std::future::ready(Ok(req.extensions().get::<Snapshot>().cloned()))
        }
    }

    fn served(svc: &mut WithConfig<Echo>) -> Snapshot {
        let fut = svc.call(Request::new(()));
        let waker = std::task::Waker::noop();
        match std::pin::pin!(fut).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Ok(Some(s))) => s,
            _ => panic!("no snapshot"),
        }
    }

    #[test]
    fn a_connection_reuses_its_snapshot_until_the_config_changes() {
        let metrics = Metrics::new().unwrap();
        let cell = Arc::new(ArcSwap::from_pointee(runtime(&metrics)));
        let mut conn = ConfigLayer::new(cell.clone()).layer(Echo);
        let first = served(&mut conn);
        let second = served(&mut conn);
        // The same per-connection handle: the shared runtime's count is not touched again.
        assert!(Arc::ptr_eq(&first.0, &second.0));
        assert!(Arc::ptr_eq(&first.0.0, &cell.load_full()));
        // A reload: the next request carries the new runtime; the old snapshot still works.
        cell.store(Arc::new(runtime(&metrics)));
        let third = served(&mut conn);
        assert!(!Arc::ptr_eq(&third.0.0, &first.0.0));
        assert!(Arc::ptr_eq(&third.0.0, &cell.load_full()));
        // Stages read the runtime through the snapshot.
        assert!(first.clusters.contains_key("a") && third.clusters.contains_key("a"));
        // Another connection of the same worker gets its own handle on the same runtime.
        let mut other = ConfigLayer::new(cell.clone()).layer(Echo);
        let fourth = served(&mut other);
        assert!(!Arc::ptr_eq(&fourth.0, &third.0));
        assert!(Arc::ptr_eq(&fourth.0.0, &third.0.0));
    }
}
