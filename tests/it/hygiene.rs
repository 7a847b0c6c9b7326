//! Request hygiene through the gateway with raw sockets (exact bytes, nothing normalised by a
//! client library): request smuggling shapes, path traversal and encoding tricks, JSON and
//! money checks with a schema, slow clients, and response hygiene.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const ROUTES: &str = r#"
routes:
  - name: any
    methods: [GET, POST]
    path: /v1/echo
    cluster: main
    auth: public
  - name: account
    methods: [GET]
    path: /v1/accounts/{id}
    cluster: main
    auth: public
  - name: pay
    methods: [POST]
    path: /v1/payments
    cluster: main
    auth: public
    body:
      content_types: [application/json]
      max_bytes: 65536
      schema:
        type: object
        additionalProperties: false
        required: [from_account, to_account, amount, currency]
        properties:
          from_account: { type: string, pattern: "^acc-[0-9]+$" }
          to_account: { type: string, pattern: "^acc-[0-9]+$" }
          amount: { type: string }
          currency: { type: string, pattern: "^[A-Z]{3}$" }
      money:
        - { amount: /amount, currency: /currency }
  - name: upload
    methods: [POST]
    path: /v1/upload
    cluster: main
    auth: public
    body:
      max_bytes: 1000
"#;

async fn gateway(extra: &str) -> (Gateway, Backend) {
    let b = Backend::start("main").await;
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", b.addr);
    let gw = Gateway::start(&gateway_yaml(&clusters, extra), ROUTES).await;
    (gw, b)
}

/// Sends `raw` on a new connection; returns everything read until the gateway closes it (or
/// `None` if it stays open past `wait`).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&buf).to_string()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_a_closed_connection_and_never_reach_the_backend() {
    let (gw, b) = gateway("").await;
    let shapes: [(&str, &[u8]); 12] = [
        (
            "CL.TE",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        ),
        (
            "TE.CL",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
        (
            "TE.TE (second TE header)",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE.TE (xchunked)",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE.TE (chunked, identity)",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE.TE (space before colon)",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE.TE (tab in value)",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate Content-Length",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "comma-listed Content-Length",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            b"GET /v1/echo HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "invalid chunk size",
            b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bare LF in the request line",
            b"GET /v1/echo HTTP/1.1\nHost: a\r\n\r\n",
        ),
    ];
    for (name, raw) in shapes {
        let resp = exchange(gw.addr, raw, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: the connection stayed open"));
        assert_eq!(status_of(&resp), 400, "{name}: {resp}");
        assert_eq!(
            b.hits.load(Ordering::SeqCst),
            0,
            "{name}: the backend saw something"
        );
        // A legitimate request on a new connection still works.
        let ok = exchange(
            gw.addr,
            b"GET /v1/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status_of(&ok), 200, "{name}, then: {ok}");
        b.hits.store(0, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn traversal_and_encoding_tricks_are_refused_before_routing() {
    let (gw, b) = gateway("").await;
    let targets = [
        "/v1/accounts/../admin",
        "/v1/accounts/%2e%2e/admin",
        "/v1/accounts/%2E%2E/admin",
        "/v1/accounts/..%2fadmin",
        "/v1/accounts/..%2Fadmin",
        "/v1/accounts/%2e%2e%2fadmin",
        "/v1/accounts/%252e%252e/admin",
        "/v1/accounts/%252e%252e%252fadmin",
        "/v1/accounts/%c0%ae%c0%ae/admin",
        "/v1/accounts/%c0%af",
        "/v1/accounts/%e0%80%ae",
        "/v1/accounts/\\..\\admin",
        "/v1/accounts/..%5cadmin",
        "/v1/accounts/acc-100%00.json",
        "/v1/accounts/acc-100%0d%0aX-Injected:%201",
        "/v1/accounts/./acc-100",
        "/v1/accounts/.%2e/acc-100",
        "/v1//accounts/acc-100",
        "/v1/accounts/acc-100%",
        "/v1/accounts/acc-100%zz",
        "/v1/accounts/acc-100?x=%00",
        "/v1/accounts/acc-100?x=%252e",
        "/v1/accounts/caf\u{e9}",
        "/v1/accounts/%25%32%65%25%32%65/admin",
    ];
    assert!(targets.len() >= 20);
    for t in targets {
        let raw = format!("GET {t} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let resp = exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status_of(&resp), 400, "{t}: {resp}");
        assert!(!resp.contains("no-route"), "refused before routing: {t}");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 0, "the backend saw none");
    // The normal form is what routing and the backend see: %61 is `a`.
    let r = get(&gw.url("/v1/accounts/%61cc-100"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/v1/accounts/acc-100");
    // Over the path limit: 414.
    let long = format!("/v1/accounts/{}", "a".repeat(3000));
    let raw = format!("GET {long} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let resp = exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 414, "{resp}");
}

async fn post(gw: &Gateway, path: &str, ctype: &str, body: &[u8]) -> Resp {
    send(
        http::Request::post(gw.url(path))
            .header("content-type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn json_bodies_are_checked_strictly_and_valid_ones_pass_byte_for_byte() {
    use sha2::{Digest, Sha256};
    let (gw, b) = gateway("").await;
    let json = "application/json";
    // A valid payment reaches the backend with the exact bytes sent.
    let good = br#"{"from_account": "acc-100", "to_account":"acc-200",  "amount": "125.40", "currency": "EUR"}"#;
    let r = post(&gw, "/v1/payments", json, good).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body_sha256"], hex(&Sha256::digest(good)));
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("10,000-deep array", deep.into_bytes(), 400, ""),
        (
            "duplicate key",
            br#"{"from_account":"acc-100","from_account":"acc-200","to_account":"acc-2","amount":"1.00","currency":"EUR"}"#.to_vec(),
            400,
            "/from_account",
        ),
        (
            "3-decimal EUR",
            br#"{"from_account":"acc-100","to_account":"acc-2","amount":"125.401","currency":"EUR"}"#.to_vec(),
            422,
            "/amount",
        ),
        (
            "1e3 as an amount",
            br#"{"from_account":"acc-100","to_account":"acc-2","amount":"1e3","currency":"EUR"}"#.to_vec(),
            422,
            "/amount",
        ),
        (
            "an amount as a JSON number",
            br#"{"from_account":"acc-100","to_account":"acc-2","amount":125.4,"currency":"EUR"}"#.to_vec(),
            422,
            "/amount",
        ),
        ("over the cap", vec![b' '; 70_000], 413, ""),
        ("not UTF-8", b"{\"a\":\"\xff\"}".to_vec(), 400, ""),
    ];
    for (name, body, status, pointer) in cases {
        let r = post(&gw, "/v1/payments", json, &body).await;
        let v = assert_problem(&r, status);
        if !pointer.is_empty() {
            let pointers: Vec<&str> = v["errors"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no errors list: {v}"))
                .iter()
                .map(|e| e["pointer"].as_str().unwrap())
                .collect();
            assert!(pointers.contains(&pointer), "{name}: {v}");
        }
    }
    // Schema errors list every failing pointer.
    let r = post(
        &gw,
        "/v1/payments",
        json,
        br#"{"from_account":"bob","to_account":7,"amount":"1.00","currency":"EUR","memo":"x"}"#,
    )
    .await;
    let v = assert_problem(&r, 422);
    let pointers: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    for p in ["/from_account", "/to_account"] {
        assert!(pointers.contains(&p), "{p} missing in {v}");
    }
    assert!(
        !String::from_utf8_lossy(&r.body).contains("bob"),
        "values are not echoed"
    );
    // Wrong content type: 415.
    let r = post(&gw, "/v1/payments", "text/plain", good).await;
    assert_problem(&r, 415);
    // A streamed upload over its cap: 413 from Content-Length before anything is read ...
    let r = post(&gw, "/v1/upload", "application/octet-stream", &[7u8; 2000]).await;
    assert_problem(&r, 413);
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "refused bodies never reach the backend"
    );
    // ... and while streaming, for a chunked body without a length.
    let chunked = format!(
        "POST /v1/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        800,
        "a".repeat(800),
        800,
        "b".repeat(800)
    );
    let resp = exchange(gw.addr, chunked.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 413, "{resp}");
}

#[tokio::test]
async fn a_slowloris_client_is_cut_at_the_header_timeout_while_others_are_served() {
    let b = Backend::start("main").await;
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", b.addr);
    let yaml = gateway_yaml(&clusters, "").replace(
        "    address: 127.0.0.1:0\nadmin",
        "    address: 127.0.0.1:0\n    header_read_timeout: 2s\nadmin",
    );
    let gw = Gateway::start(&yaml, ROUTES).await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for byte in b"GET /v1/echo HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            // Closed by the gateway? A read returns 0 (or an error) at once.
            let mut buf = [0u8; 512];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
            {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    let c = client::<http_body_util::Full<bytes::Bytes>>();
    for _ in 0..100 {
        let r = c.get(gw.url("/v1/echo").parse().unwrap()).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let held = slow.await.unwrap();
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(5),
        "the slow client was cut after {held:?}"
    );
    assert_eq!(b.hits.load(Ordering::SeqCst), 100);
}

/// A backend that answers every request with `Server: Apache/2.4.1` and a 500 with a Java stack
/// trace.
async fn leaky_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "java.lang.NullPointerException: secret\n\tat com.bank.core.Ledger.post(Ledger.java:42)\n";
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nServer: Apache/2.4.1\r\nX-Powered-By: Servlet/3.0\r\nX-Backend-Host: db-7.internal\r\nCache-Control: public, max-age=600\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_5xx_bodies_and_leaky_headers_are_scrubbed() {
    let leaky = leaky_backend().await;
    let clusters = format!("  main:\n    endpoints: [\"{leaky}\"]\n");
    let gw = Gateway::start(
        &gateway_yaml(
            &clusters,
            "hygiene:\n  scrub_upstream_5xx: true\n  remove_response_headers: [x-backend-host]\n",
        ),
        ROUTES,
    )
    .await;
    let r = get(&gw.url("/v1/echo"), &[("x-request-id", "scrub-1")]).await;
    let v = assert_problem(&r, 500);
    assert_eq!(v["instance"], "scrub-1");
    let text = format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body));
    for leak in [
        "Apache",
        "java.lang",
        "Ledger",
        "Servlet",
        "db-7",
        "max-age=600",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );

    // Without scrubbing the body passes, but the identifying headers still go.
    let gw2 = Gateway::start(&gateway_yaml(&clusters, ""), ROUTES).await;
    let r = get(&gw2.url("/v1/echo"), &[]).await;
    assert_eq!(r.status, 500);
    assert!(r.header("server").is_none() && r.header("x-powered-by").is_none());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(String::from_utf8_lossy(&r.body).contains("java.lang"));
}
