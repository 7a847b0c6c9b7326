//! Failures come back as problem+json with the request id, within the configured timeout.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let b = Backend::start("payments").await;
    let clusters = format!("  payments:\n    endpoints: [\"{}\"]\n", b.addr);
    let routes = "routes:\n  - name: pay\n    methods: [POST, PUT]\n    path: /v1/payments\n    cluster: payments\n    auth: public\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), routes).await;
    let r = get(&gw.url("/v1/nothing/here"), &[]).await;
    let v = assert_problem(&r, 404);
    assert_eq!(v["type"], "urn:portcullis:problem:no-route");
    let r = get(&gw.url("/v1/payments"), &[]).await;
    assert_problem(&r, 405);
    assert_eq!(r.header("allow"), Some("POST, PUT"));
    assert_eq!(
        b.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "refused requests never reach the backend"
    );
}

#[tokio::test]
async fn refused_upstream_is_502_then_503_while_ejected() {
    let dead = closed_port();
    let clusters = format!("  ledger:\n    endpoints: [\"{dead}\"]\n    eject_for: 30s\n");
    let routes = "routes:\n  - name: ledger\n    methods: [GET]\n    path: /v1/ledger\n    cluster: ledger\n    auth: public\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), routes).await;
    let r = get(&gw.url("/v1/ledger"), &[]).await;
    let v = assert_problem(&r, 502);
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !text.contains(&dead.port().to_string()) && !text.contains("ledger"),
        "no upstream detail leaks: {text}"
    );
    assert_eq!(v["type"], "urn:portcullis:problem:upstream-unavailable");

    let r = get(&gw.url("/v1/ledger"), &[]).await;
    let v = assert_problem(&r, 503);
    assert_eq!(v["type"], "urn:portcullis:problem:no-healthy-upstream");

    let m = prom::parse(&gw.metrics().await).unwrap();
    assert_eq!(
        prom::value(
            &m,
            "portcullis_upstream_errors_total",
            &[("cluster", "ledger"), ("kind", "refused")]
        ),
        Some(1.0)
    );
    assert_eq!(
        prom::value(
            &m,
            "portcullis_upstream_errors_total",
            &[("cluster", "ledger"), ("kind", "no_healthy_endpoint")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_slow_upstream_is_504_at_the_route_timeout() {
    let b = Backend::start("reports").await;
    let clusters = format!(
        "  reports:\n    endpoints: [\"{}\"]\n    request_timeout: 30s\n",
        b.addr
    );
    let routes = "routes:\n  - name: slow\n    methods: [GET]\n    path: /slow\n    cluster: reports\n    auth: public\n    timeouts:\n      request: 300ms\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), routes).await;
    let started = Instant::now();
    let r = get(&gw.url("/slow?ms=10000"), &[]).await;
    let took = started.elapsed();
    let v = assert_problem(&r, 504);
    assert_eq!(v["type"], "urn:portcullis:problem:upstream-timeout");
    // The route's 300 ms timeout answered, not the backend's 10 s (nor the cluster's 30 s).
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_reachable_upstream_is_not_ejected_by_other_clusters_failures() {
    let ok = Backend::start("ok").await;
    let dead = closed_port();
    let clusters = format!(
        "  good:\n    endpoints: [\"{}\"]\n  bad:\n    endpoints: [\"{dead}\", \"{}\"]\n",
        ok.addr, ok.addr
    );
    let routes = "routes:\n  - name: good\n    methods: [GET]\n    path: /good\n    cluster: good\n    auth: public\n  - name: bad\n    methods: [GET]\n    path: /bad\n    cluster: bad\n    auth: public\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), routes).await;
    // Round-robin over a dead and a live endpoint: after the dead one is ejected, all succeed.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&gw.url("/bad"), &[]).await.status.as_u16());
    }
    assert!(
        statuses.iter().filter(|s| **s == 502).count() <= 1,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(get(&gw.url("/good"), &[]).await.status, 200);
}
