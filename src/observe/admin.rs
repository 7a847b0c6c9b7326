//! The admin listener (default 127.0.0.1:9901): `/metrics`, `/healthz`, `/readyz`.
//!
//! Kept apart from the traffic listeners so scraping and probes never compete with clients and
//! metrics are never exposed to them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use super::metrics::Metrics;
use crate::authn::jwks::Health;
use crate::config::Runtime;

/// Readiness: true once the gateway serves traffic with a loaded config, false while draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the readiness state.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// The readiness state.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// `/readyz`: ready once serving with a loaded config, and every token issuer has keys. An
/// issuer whose JWKS fetches fail while its last good keys serve is `stale` (still ready: a
/// down identity provider must not take every replica out of the load balancer).
fn readiness(ready: &Readiness, config: &ArcSwap<Runtime>) -> (StatusCode, Vec<u8>) {
    let runtime = config.load();
    let mut jwks = serde_json::Map::new();
    let mut keys_ok = true;
    if let Some(v) = &runtime.verifier {
        for issuer in &v.issuers {
            let health = issuer.keys.health();
            keys_ok &= health != Health::Unavailable;
            jwks.insert(issuer.name.to_string(), health.as_str().into());
        }
    }
    let up = ready.get() && keys_ok;
    let mut body = serde_json::json!({ "status": if up { "ready" } else { "not_ready" } });
    if !jwks.is_empty() {
        body["jwks"] = serde_json::Value::Object(jwks);
    }
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body.to_string().into_bytes())
}

fn respond(
    metrics: &Metrics,
    ready: &Readiness,
    config: &ArcSwap<Runtime>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, ctype, body): (StatusCode, &str, Vec<u8>) = match (req.method(), req.uri().path())
    {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            "application/json",
            br#"{"status":"ok"}"#.to_vec(),
        ),
        (&Method::GET, "/readyz") => {
            let (status, body) = readiness(ready, config);
            (status, "application/json", body)
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    res
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    config: Arc<ArcSwap<Runtime>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let res = respond(&metrics, &ready, &config, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds the admin listener.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
