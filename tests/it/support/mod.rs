//! Shared test support: temp dirs, a real echo backend, the gateway in-process, an HTTP client
//! and a strict Prometheus text parser.

#![allow(dead_code)]

pub mod jwt;
pub mod prom;
pub mod redis;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::config::reload::{Reloader, SharedEnv};
use portcullis::observe::metrics::Metrics;
use portcullis::server::Running;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Notify;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("portcullis-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as editors and ConfigMaps do, so a reader never sees half a file.
        let tmp = p.with_extension("tmp-write");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real HTTP backend (HTTP/1.1 and h2c) that reports what it received.
///
/// - `/slow?ms=N` waits N ms, then answers like the echo.
/// - anything else: JSON with method, path, query, headers, body length and SHA-256, the name
///   of the backend, and a `Server`/`X-Powered-By` header the gateway must strip.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicUsize>,
}

async fn echo(
    name: &'static str,
    hits: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    if parts.uri.path() == "/slow" {
        let ms: u64 = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            hasher.update(d);
            len += d.len() as u64;
        }
    }
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<bin>").to_owned(),
            )
        })
        .collect();
    let v = json!({
        "backend": name,
        "method": parts.method.as_str(),
        "version": format!("{:?}", parts.version),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": len,
        "body_sha256": hex(&hasher.finalize()),
    });
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())));
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res.headers_mut()
        .insert("server", "secret-backend/1.2.3".parse().unwrap());
    res.headers_mut()
        .insert("x-powered-by", "leaky-framework".parse().unwrap());
    res.headers_mut()
        .insert("connection", "x-hop".parse().unwrap());
    res.headers_mut()
        .insert("x-hop", "must-not-reach-client".parse().unwrap());
    Ok(res)
}

impl Backend {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(name, h.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, name, hits }
    }
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// The gateway running in-process on port 0 from files in a temp dir.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub running: Option<Running>,
    pub reload: Arc<Notify>,
}

/// A gateway file with one listener and admin on port 0, the given clusters YAML (indented
/// under `clusters:`) and extra top-level YAML.
pub fn gateway_yaml(clusters: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nclusters:\n{clusters}\npolicies: routes\nlog:\n  level: warn\n  access: true\nshutdown:\n  grace: 5s\n{extra}\n"
    )
}

impl Gateway {
    /// Starts a gateway from `gateway` and `routes` YAML; the reloader polls every 100 ms.
    pub async fn start(gateway: &str, routes: &str) -> Self {
        let dir = TempDir::new();
        let config_path = dir.write("gateway.yaml", gateway);
        dir.write("routes/routes.yaml", routes);
        let checked = match portcullis::config::load(&config_path, &portcullis::config::process_env)
        {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}"),
        };
        let metrics = Metrics::new().unwrap();
        let runtime = portcullis::config::compile(checked, &metrics).unwrap();
        let running = portcullis::server::start(runtime, metrics.clone())
            .await
            .unwrap();
        let env: SharedEnv = Arc::new(portcullis::config::process_env);
        let reloader = Reloader::new(
            config_path.clone(),
            env,
            running.shared.config.clone(),
            metrics,
        );
        let reload = Arc::new(Notify::new());
        tokio::spawn(reloader.run(
            Duration::from_millis(100),
            reload.clone(),
            running.shutdown_handle().subscribe(),
        ));
        // Token issuers fetch their keys in the background; give them a moment (a test of an
        // unavailable JWKS simply starts not ready).
        let admin = running.admin_addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !ready(admin).await && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            addr: running.addrs[0],
            admin: running.admin_addr,
            dir,
            config_path,
            running: Some(running),
            reload,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn metrics(&self) -> String {
        let r = send(
            Request::get(format!("http://{}/metrics", self.admin))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

/// A finished response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request on a fresh client and reads the whole response.
pub async fn send<B>(req: Request<B>) -> Resp
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let res = client::<B>().request(req).await.expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

/// A body of `chunks` copies of `chunk`, produced lazily (nothing is buffered).
pub struct RepeatBody {
    pub chunk: Bytes,
    pub remaining: usize,
}

impl http_body::Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

/// Peak resident memory of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Checks a problem+json response: status, content type, and the request id in body and header.
pub fn assert_problem(r: &Resp, status: u16) -> Value {
    assert_eq!(
        r.status.as_u16(),
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    let id = r
        .header("x-request-id")
        .expect("x-request-id on an error")
        .to_owned();
    assert_eq!(v["status"], status);
    assert_eq!(v["instance"], id.as_str());
    assert_eq!(v["request_id"], id.as_str());
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:portcullis:problem:")
    );
    assert!(!v["title"].as_str().unwrap().is_empty());
    assert!(!v["detail"].as_str().unwrap().is_empty());
    v
}

/// Waits until `check` holds, polling every 20 ms; fails naming `what` after `limit`. Tests wait
/// on the event they need (a counter, a refused connect, a new certificate), never on a fixed
/// amount of time.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the admin listener at `admin` answers `/readyz` with 200.
pub async fn ready(admin: SocketAddr) -> bool {
    client::<Full<Bytes>>()
        .get(format!("http://{admin}/readyz").parse().unwrap())
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Starts the real `portcullis run --config cfg` binary (stderr captured when `logs`) and waits
/// until its admin listener at `admin` reports ready.
pub async fn run_binary(cfg: &Path, admin: SocketAddr, logs: bool) -> std::process::Child {
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(if logs { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .unwrap();
    eventually(
        "the gateway to become ready",
        Duration::from_secs(20),
        || ready(admin),
    )
    .await;
    child
}
