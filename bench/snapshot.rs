//! Cost of handing a request its compiled config while another core serves requests too:
//!
//! - `snapshot/shared_count`: `ArcSwap::load_full` and a drop per request — every request on
//!   every core increments and decrements the one shared `Arc<Runtime>` (how the config stage
//!   worked before the per-connection snapshot);
//! - `snapshot/per_connection`: the config stage as it is (`ConfigLayer`): one load of the
//!   shared cell, and a clone of the connection's own [`Snapshot`] handle.
//!
//! Both are timed on one thread while a second thread does the same thing in a loop, as the
//! other worker of a 2-worker gateway would. `cargo bench --bench snapshot`; `cargo test
//! --all-targets` runs each benchmark once.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::Criterion;
use http::Request;
use portcullis::config::reload::{ConfigLayer, Snapshot};
use portcullis::config::{Runtime, SourceFile, compile, load_sources};
use portcullis::observe::metrics::Metrics;
use tower::{Layer, Service};

fn runtime() -> Result<Runtime, String> {
    let gateway = SourceFile {
        name: "gateway.yaml".into(),
        text: "listeners:\n  - name: public\n    address: 127.0.0.1:0\nclusters:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n".into(),
    };
    let routes = SourceFile {
        name: "routes.yaml".into(),
        text: "routes:\n  - name: r\n    methods: [GET]\n    path: /\n    cluster: a\n    auth: public\n"
            .into(),
    };
    let checked =
        load_sources(&gateway, None, Some(vec![routes]), &|_| None).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    compile(checked, &metrics)
}

/// The innermost service: takes the snapshot out of the request and drops it with the request.
#[derive(Clone)]
struct Sink;
impl Service<Request<()>> for Sink {
    type Response = bool;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<bool, std::convert::Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<()>) -> Self::Future {
        std::future::ready(Ok(req.extensions().get::<Snapshot>().is_some()))
    }
}

/// Times `op` on this thread while another thread runs its own copy of it.
fn contended<F>(iters: u64, make: impl Fn() -> F + Send + Sync + 'static) -> Duration
where
    F: FnMut(),
{
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (make, stop) = (make.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut op = make();
            while !stop.load(Ordering::Relaxed) {
                op();
            }
        })
    };
    let mut op = make();
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    took
}

fn bench(c: &mut Criterion, runtime: Runtime) {
    let cell = Arc::new(ArcSwap::from_pointee(runtime));
    let mut g = c.benchmark_group("snapshot");
    {
        let cell = cell.clone();
        g.bench_function("shared_count", move |b| {
            let cell = cell.clone();
            b.iter_custom(move |iters| {
                let cell = cell.clone();
                contended(iters, move || {
                    let cell = cell.clone();
                    move || {
                        let mut req = Request::new(());
                        req.extensions_mut().insert(cell.load_full());
                        black_box(req);
                    }
                })
            });
        });
    }
    g.bench_function("per_connection", move |b| {
        let cell = cell.clone();
        b.iter_custom(move |iters| {
            let cell = cell.clone();
            contended(iters, move || {
                let mut conn = ConfigLayer::new(cell.clone()).layer(Sink);
                move || {
                    let fut = conn.call(Request::new(()));
                    let _ = black_box(fut.into_inner());
                }
            })
        });
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot compile the benchmark's config: {e}");
            std::process::exit(1);
        }
    };
    bench(&mut c, runtime);
    c.final_summary();
}
