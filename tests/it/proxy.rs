//! Proxying: the right cluster, bodies intact, streaming, HTTP/2, header hygiene.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

use crate::support::*;

async fn two_clusters() -> (Gateway, Backend, Backend) {
    let a = Backend::start("accounts").await;
    let p = Backend::start("payments").await;
    let clusters = format!(
        "  accounts:\n    endpoints: [\"{}\"]\n  payments:\n    endpoints: [\"{}\"]\n    protocol: h2c\n",
        a.addr, p.addr
    );
    let routes = r#"
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: public
  - name: create-payment
    methods: [POST]
    path: /v1/payments
    cluster: payments
    auth: public
  - name: upload
    methods: [POST]
    path: /v1/upload
    cluster: accounts
    auth: public
"#;
    (
        Gateway::start(&gateway_yaml(&clusters, ""), routes).await,
        a,
        p,
    )
}

#[tokio::test]
async fn get_and_post_reach_the_right_cluster_with_the_body_intact() {
    let (gw, accounts, payments) = two_clusters().await;
    let r = get(&gw.url("/v1/accounts/acc-100?expand=owner"), &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["backend"], "accounts");
    assert_eq!(v["path"], "/v1/accounts/acc-100");
    assert_eq!(v["query"], "expand=owner");

    let body = r#"{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.40", "currency": "EUR"}"#;
    let req = Request::post(gw.url("/v1/payments"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["backend"], "payments");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["version"], "HTTP/2.0", "the payments cluster speaks h2c");
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_sha256"], hex(&Sha256::digest(body.as_bytes())));
    assert_eq!(accounts.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(payments.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_256_mib_upload_streams_through_with_flat_memory() {
    let (gw, _a, _p) = two_clusters().await;
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 256;
    let chunk: Bytes = (0..CHUNK)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut expected = Sha256::new();
    for _ in 0..CHUNKS {
        expected.update(&chunk);
    }
    let expected = hex(&expected.finalize());
    let before = peak_rss_kib();
    let req = Request::post(gw.url("/v1/upload"))
        .header("content-type", "application/octet-stream")
        .body(RepeatBody {
            chunk,
            remaining: CHUNKS,
        })
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["body_len"], (CHUNK * CHUNKS) as u64);
    assert_eq!(v["body_sha256"], expected);
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    // Client, gateway and backend share this process; buffering the body anywhere would add
    // at least 256 MiB to the peak.
    assert!(
        grown_mib < 96,
        "peak memory grew by {grown_mib} MiB while streaming 256 MiB"
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (gw, _a, _p) = two_clusters().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = client
        .get(gw.url("/v1/accounts/acc-7").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["path"], "/v1/accounts/acc-7");
    assert_eq!(
        v["version"], "HTTP/1.1",
        "the accounts cluster speaks HTTP/1.1"
    );
    assert!(
        v["headers"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "the :authority becomes Host"
    );
}

#[tokio::test]
async fn hop_by_hop_identity_and_forwarded_headers_are_handled() {
    let (gw, _a, _p) = two_clusters().await;
    let r = get(
        &gw.url("/v1/accounts/acc-100"),
        &[
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-portcullis-subject", "admin"),
            ("x-portcullis-tenant", "acme"),
            ("proxy-authorization", "Basic c2VjcmV0"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let h = v["headers"].as_object().unwrap();
    for gone in [
        "x-secret-hop",
        "x-portcullis-subject",
        "x-portcullis-tenant",
        "proxy-authorization",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the backend");
    }
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer cannot forge X-Forwarded-For"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // The response loses the backend's identity and its hop-by-hop headers.
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-hop"), None);
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_extended() {
    let a = Backend::start("accounts").await;
    let clusters = format!("  accounts:\n    endpoints: [\"{}\"]\n", a.addr);
    let routes = "routes:\n  - name: r\n    methods: [GET]\n    path: /x\n    cluster: accounts\n    auth: public\n";
    let gw = Gateway::start(
        &gateway_yaml(&clusters, "trusted_proxies: [127.0.0.0/8]"),
        routes,
    )
    .await;
    let r = get(
        &gw.url("/x"),
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let v = r.json();
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
}

/// A backend that counts its TCP connections (accepted, closed) and closes a keep-alive
/// connection that stays idle for 300 ms, as upstream servers do.
async fn closing_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let ended = closed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let ended = ended.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_millis(300))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_the_upstream_closed_them() {
    let (addr, accepted, closed) = closing_backend().await;
    let clusters = format!("  accounts:\n    endpoints: [\"{addr}\"]\n");
    let routes = "routes:\n  - name: any\n    methods: [GET, POST]\n    path: /v1/{x}\n    cluster: accounts\n    auth: public\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, "workers: 1"), routes).await;
    let client = client::<Full<Bytes>>();
    let call = |method: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(gw.url("/v1/a"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        client.request(req)
    };
    for _ in 0..20 {
        let res = call("GET").await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");

    // The backend closes the idle connection; the next requests (a POST too, which is never
    // retried once written) find it closed before writing and go out on a new connection.
    eventually(
        "the backend to close the idle connection",
        std::time::Duration::from_secs(3),
        || async { closed.load(Ordering::SeqCst) == 1 },
    )
    .await;
    for method in ["POST", "GET", "POST"] {
        let res = call(method).await.unwrap();
        assert_eq!(res.status(), 200, "{method} after the upstream closed");
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
