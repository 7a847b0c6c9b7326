//! `/metrics` is valid Prometheus text and counts what happened; health endpoints; the demo.

use crate::support::*;

#[tokio::test]
async fn metrics_are_valid_exposition_and_count_the_requests() {
    let b = Backend::start("accounts").await;
    let clusters = format!("  accounts:\n    endpoints: [\"{}\"]\n", b.addr);
    let routes = "routes:\n  - name: get-account\n    methods: [GET]\n    path: /v1/accounts/{id}\n    cluster: accounts\n";
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), routes).await;
    for i in 0..3 {
        assert_eq!(
            get(&gw.url(&format!("/v1/accounts/acc-{i}")), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(get(&gw.url("/v1/unknown"), &[]).await.status, 404);
    assert_eq!(
        get(&gw.url("/v1/unknown"), &[("x-request-id", "x")])
            .await
            .status,
        404
    );

    let text = gw.metrics().await;
    let m = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        m.iter().all(|s| s.name.starts_with("portcullis_")),
        "every metric is namespaced"
    );
    let v = |name: &str, labels: &[(&str, &str)]| prom::value(&m, name, labels);
    assert_eq!(
        v(
            "portcullis_requests_total",
            &[
                ("route", "get-account"),
                ("method", "GET"),
                ("status_class", "2xx")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "portcullis_requests_total",
            &[
                ("route", "none"),
                ("method", "GET"),
                ("status_class", "4xx")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "portcullis_request_duration_seconds_count",
            &[("route", "get-account")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "portcullis_request_duration_seconds_bucket",
            &[("route", "get-account"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v("portcullis_errors_total", &[("kind", "no-route")]),
        Some(2.0)
    );
    assert_eq!(v("portcullis_requests_in_flight", &[]), Some(0.0));
    assert!(
        v(
            "portcullis_connections_total",
            &[("listener", "public"), ("result", "accepted")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(v("portcullis_connections_open", &[("listener", "public")]).is_some());
    assert_eq!(
        v(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        v("portcullis_config_reloads_total", &[("result", "failure")]),
        Some(0.0)
    );
    assert_eq!(
        v(
            "portcullis_upstream_duration_seconds_count",
            &[("cluster", "accounts")]
        ),
        Some(3.0)
    );

    let health = get(&format!("http://{}/healthz", gw.admin), &[]).await;
    assert_eq!(health.status, 200);
    let ready = get(&format!("http://{}/readyz", gw.admin), &[]).await;
    assert_eq!(ready.status, 200);
    // The admin endpoints are not on the traffic listener.
    assert_eq!(get(&gw.url("/metrics"), &[]).await.status, 404);
}

#[tokio::test]
async fn the_demo_serves_the_reference_scenario() {
    let backends = portcullis::demo::start_backends().await.unwrap();
    let mut checked = portcullis::demo::config(backends).unwrap();
    checked.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    checked.admin = "127.0.0.1:0".parse().unwrap();
    let runtime = portcullis::config::compile(checked).unwrap();
    let metrics = portcullis::observe::metrics::Metrics::new().unwrap();
    let running = portcullis::server::start(runtime, metrics).await.unwrap();
    let base = format!("http://{}", running.addrs[0]);

    let r = get(
        &format!("{base}/v1/accounts/acc-100"),
        &[("x-request-id", "demo-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["owner"], "alice@acme");
    assert_eq!(
        r.json()["request_id"],
        "demo-1",
        "the backend echoes the id it received"
    );
    assert_eq!(r.header("x-backend-saw-request-id"), Some("demo-1"));

    let body = r#"{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.40", "currency": "EUR"}"#;
    let req = http::Request::post(format!("{base}/v1/payments"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let r = send(req).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["amount"], "125.40");
    assert_eq!(
        get(&format!("{base}/v1/accounts/acc-100/transactions"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&format!("{base}/v1/reports/acme/daily"), &[])
            .await
            .json()["tenant_id"],
        "acme"
    );
    assert_eq!(
        get(&format!("{base}/v1/payments/pay-1"), &[]).await.status,
        200
    );

    // Every curl command the demo prints hits a configured path.
    let text = portcullis::demo::curl_commands(running.addrs[0], running.admin_addr);
    assert!(text.contains(&format!("http://{}/v1/accounts/acc-100", running.addrs[0])));
    running.shutdown().await;
}
