//! `/metrics` is valid Prometheus text and counts what happened; health endpoints; the demo.

use crate::support::*;

#[tokio::test]
async fn metrics_are_valid_exposition_and_count_the_requests() {
    let b = Backend::start("accounts").await;
    let clusters = format!("  accounts:\n    endpoints: [\"{}\"]\n", b.addr);
    let routes = "routes:\n  - name: get-account\n    methods: [GET]\n    path: /v1/accounts/{id}\n    cluster: accounts\n    auth: public\n";
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
async fn the_demo_serves_the_reference_scenario_over_mtls() {
    use crate::tls::{client_config, connect};
    let certs = TempDir::new();
    portcullis::tls::devcerts::write_dev_certs(certs.path()).unwrap();
    let read = |f: &str| std::fs::read_to_string(certs.path().join(f)).unwrap();
    let issued = |c: &str, k: &str| portcullis::tls::devcerts::Issued {
        cert_pem: read(c),
        key_pem: read(k),
        serial: 0,
    };
    let (client, service, rogue) = (
        issued("client.pem", "client-key.pem"),
        issued("service.pem", "service-key.pem"),
        issued("rogue-client.pem", "rogue-client-key.pem"),
    );
    let ca = read("ca.pem");

    let backends = portcullis::demo::start_backends().await.unwrap();
    let mut checked = portcullis::demo::config(backends, certs.path()).unwrap();
    checked.listeners[0].address = "127.0.0.1:0".parse().unwrap();
    checked.admin = "127.0.0.1:0".parse().unwrap();
    let metrics = portcullis::observe::metrics::Metrics::new().unwrap();
    let runtime = portcullis::config::compile(checked, &metrics).unwrap();
    let running = portcullis::server::start(runtime, metrics).await.unwrap();
    let addr = running.addrs[0];

    let tokens = portcullis::demo::tokens(certs.path()).unwrap();
    let alice = format!("Bearer {}", tokens.alice);
    let bearer = [("authorization", alice.as_str())];
    let mut web = connect(addr, client_config(&ca, Some(&client), &[b"http/1.1"]))
        .await
        .unwrap();
    // Users need a token: none, or an expired one, is 401.
    let (r, _) = web.get("/v1/accounts/acc-100", &[]).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "missing");
    let expired = format!("Bearer {}", tokens.expired);
    let (r, _) = web
        .get(
            "/v1/accounts/acc-100",
            &[("authorization", expired.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "expired");
    let (r, _) = web
        .get(
            "/v1/accounts/acc-100",
            &[
                ("x-request-id", "demo-1"),
                ("authorization", alice.as_str()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["owner"], "alice@acme");
    assert_eq!(
        r.json()["request_id"],
        "demo-1",
        "the backend echoes the id it received"
    );
    // The demo's BOLA rule: bob's account is not alice's (404, as the demo's curl shows).
    let (r, _) = web.get("/v1/accounts/acc-200", &bearer).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        web.get("/v1/accounts/acc-100/transactions", &bearer)
            .await
            .unwrap()
            .0
            .status,
        200
    );
    assert_eq!(
        web.get("/v1/payments/pay-1", &bearer)
            .await
            .unwrap()
            .0
            .status,
        200
    );
    assert_eq!(
        web.get("/v1/reports/acme/daily", &[])
            .await
            .unwrap()
            .0
            .status,
        403,
        "reports admit SPIFFE services only"
    );

    let mut svc = connect(addr, client_config(&ca, Some(&service), &[b"h2"]))
        .await
        .unwrap();
    let (r, _) = svc.get("/v1/reports/acme/daily", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenant_id"], "acme");

    // The demo's payment schema: EUR amounts have two decimals at most (422 naming /amount);
    // a valid payment passes.
    let json_ct = ("content-type", "application/json");
    let (r, _) = web
        .send(
            "POST",
            "/v1/payments",
            &[bearer[0], json_ct],
            bytes::Bytes::from_static(
                br#"{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.401", "currency": "EUR"}"#,
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["errors"][0]["pointer"], "/amount");
    let (r, _) = web
        .send(
            "POST",
            "/v1/payments",
            &[bearer[0], json_ct],
            bytes::Bytes::from_static(
                br#"{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.40", "currency": "EUR"}"#,
            ),
        )
        .await
        .unwrap();
    assert!(r.status.is_success(), "{}", r.status);

    // globex is on the demo's free tier (a burst of 5, then 10 a minute): above it, 429 with
    // Retry-After and the RateLimit fields; alice (acme, enterprise) is unaffected.
    let bob = format!("Bearer {}", tokens.bob);
    let bob = [("authorization", bob.as_str())];
    for _ in 0..5 {
        let (r, _) = web.get("/v1/accounts/acc-200", &bob).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let (r, _) = web.get("/v1/accounts/acc-200", &bob).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "urn:portcullis:problem:rate-limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "one request every 6 s: {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"free\";q=5;w=30"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"free\";r=0;t=")
    );
    let (r, _) = web.get("/v1/accounts/acc-100", &bearer).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(text_contains_loop(addr, &running, certs.path(), &tokens));

    // The rogue certificate (other CA) and no certificate are refused.
    let rogue_attempt = async {
        connect(addr, client_config(&ca, Some(&rogue), &[b"http/1.1"]))
            .await?
            .get("/v1/accounts/acc-100", &[])
            .await
    };
    assert!(rogue_attempt.await.is_err());
    let anonymous = async {
        connect(addr, client_config(&ca, None, &[b"http/1.1"]))
            .await?
            .get("/v1/accounts/acc-100", &[])
            .await
    };
    assert!(anonymous.await.is_err());

    // Every curl command the demo prints names a configured path and the certificates.
    let text = portcullis::demo::curl_commands(addr, running.admin_addr, certs.path(), &tokens);
    assert!(text.contains(&tokens.alice) && text.contains(&tokens.bob));
    assert!(text.contains(&format!(
        "https://localhost:{}/v1/accounts/acc-100",
        addr.port()
    )));
    assert!(text.contains("client.pem") && text.contains("service.pem"));
    running.shutdown().await;
}

/// The demo prints the free-tier loop that shows the 429.
fn text_contains_loop(
    addr: std::net::SocketAddr,
    running: &portcullis::server::Running,
    certs: &std::path::Path,
    tokens: &portcullis::demo::Tokens,
) -> bool {
    let text = portcullis::demo::curl_commands(addr, running.admin_addr, certs, tokens);
    text.contains("for i in 1 2 3 4 5 6") && text.contains("retry-after|ratelimit")
}
