//! Listener limits: header count and size (431), connection cap, header-read and idle timeouts.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn gateway(listener_extra: &str) -> (Gateway, Backend) {
    let b = Backend::start("main").await;
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", b.addr);
    let yaml = gateway_yaml(&clusters, "").replace(
        "    address: 127.0.0.1:0\nadmin",
        &format!("    address: 127.0.0.1:0\n{listener_extra}admin"),
    );
    let routes = "routes:\n  - name: r\n    methods: [GET]\n    path: /r\n    cluster: main\n    auth: public\n";
    (Gateway::start(&yaml, routes).await, b)
}

/// Reads until EOF or error; returns what was read, or None if the peer kept the connection
/// open past `wait`.
async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<String> {
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

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let (gw, b) = gateway("    max_headers: 20\n    max_header_bytes: 8192\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut req = String::from("GET /r HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-Pad-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let text = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let big = format!(
        "GET /r HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let text = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_per_client_ip_are_capped_and_freed_on_close() {
    let (gw, _b) = gateway("    max_connections_per_ip: 2\n").await;
    let a = TcpStream::connect(gw.addr).await.unwrap();
    let _b2 = TcpStream::connect(gw.addr).await.unwrap();
    eventually("both connections", Duration::from_secs(5), || async {
        let m = prom::parse(&gw.metrics().await).unwrap();
        prom::value(&m, "portcullis_connections_open", &[("listener", "public")]) == Some(2.0)
    })
    .await;
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the third connection from this IP is closed");
    assert!(text.is_empty(), "{text}");
    let m = prom::parse(&gw.metrics().await).unwrap();
    assert_eq!(
        prom::value(
            &m,
            "portcullis_connections_total",
            &[("result", "rejected_per_ip")]
        ),
        Some(1.0)
    );
    // Closing one frees its place.
    drop(a);
    eventually("the place to be freed", Duration::from_secs(5), || async {
        let m = prom::parse(&gw.metrics().await).unwrap();
        prom::value(&m, "portcullis_connections_open", &[("listener", "public")]) == Some(1.0)
    })
    .await;
    let mut again = TcpStream::connect(gw.addr).await.unwrap();
    again
        .write_all(b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut again, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_counted() {
    let (gw, _b) = gateway("    max_connections: 2\n").await;
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b2 = TcpStream::connect(gw.addr).await.unwrap();
    eventually(
        "both connections to be accepted",
        Duration::from_secs(5),
        || async {
            let m = prom::parse(&gw.metrics().await).unwrap();
            prom::value(&m, "portcullis_connections_open", &[("listener", "public")]) == Some(2.0)
        },
    )
    .await;
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the third connection is closed");
    assert!(text.is_empty(), "{text}");
    let m = prom::parse(&gw.metrics().await).unwrap();
    assert_eq!(
        prom::value(
            &m,
            "portcullis_connections_total",
            &[("result", "rejected_limit")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn slowloris_headers_and_idle_connections_are_closed() {
    let (gw, _b) = gateway("    header_read_timeout: 300ms\n    idle_timeout: 300ms\n").await;
    // Half a request head, then silence: closed by the header-read timeout.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "slow header sender not cut off"
    );

    // A connection that never sends a byte is cut off by the same timeout.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "silent connection not cut off"
    );

    // A slow head on a keep-alive connection, after a first request: cut off too.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    s.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\nX-Slow")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "slow second head not cut off"
    );

    // A finished request, then silence: closed by the idle timeout.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("idle connection not closed");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
