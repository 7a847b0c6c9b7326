//! Request ids and trace context: generated, kept, replaced; the same at backend and client.

use crate::support::*;

async fn gateway() -> (Gateway, Backend) {
    let b = Backend::start("accounts").await;
    let clusters = format!("  accounts:\n    endpoints: [\"{}\"]\n", b.addr);
    let routes = "routes:\n  - name: acct\n    methods: [GET]\n    path: /v1/accounts/{id}\n    cluster: accounts\n    auth: public\n";
    (
        Gateway::start(&gateway_yaml(&clusters, ""), routes).await,
        b,
    )
}

fn backend_saw(r: &Resp, header: &str) -> String {
    r.json()["headers"][header]
        .as_str()
        .unwrap_or_else(|| panic!("backend did not get {header}"))
        .to_owned()
}

#[tokio::test]
async fn request_id_is_generated_kept_or_replaced() {
    let (gw, _b) = gateway().await;
    let url = gw.url("/v1/accounts/acc-1");

    // Absent: a UUIDv7 is made, and backend and client see the same one.
    let r = get(&url, &[]).await;
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(backend_saw(&r, "x-request-id"), id);

    // Valid: kept.
    let r = get(&url, &[("x-request-id", "client-req_42:a.b")]).await;
    assert_eq!(r.header("x-request-id"), Some("client-req_42:a.b"));
    assert_eq!(backend_saw(&r, "x-request-id"), "client-req_42:a.b");

    // 128 characters is the longest kept.
    let max = "k".repeat(128);
    let r = get(&url, &[("x-request-id", &max)]).await;
    assert_eq!(r.header("x-request-id"), Some(max.as_str()));

    // Malformed or too long: replaced, consistently on both sides.
    let too_long = "a".repeat(129);
    for bad in ["has space", "semi;colon", "quote\"", too_long.as_str()] {
        let r = get(&url, &[("x-request-id", bad)]).await;
        let id = r.header("x-request-id").unwrap().to_owned();
        assert_ne!(id, bad);
        assert!(
            uuid::Uuid::parse_str(&id).is_ok(),
            "{bad:?} was replaced by {id}"
        );
        assert_eq!(backend_saw(&r, "x-request-id"), id);
    }
}

#[tokio::test]
async fn error_bodies_carry_the_request_id() {
    let (gw, _b) = gateway().await;
    let r = get(&gw.url("/nope"), &[("x-request-id", "trace-me-404")]).await;
    let v = assert_problem(&r, 404);
    assert_eq!(v["instance"], "trace-me-404");
}

#[tokio::test]
async fn traceparent_is_propagated_or_started() {
    let (gw, _b) = gateway().await;
    let url = gw.url("/v1/accounts/acc-1");
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        &url,
        &[("traceparent", inbound), ("tracestate", "vendor=1")],
    )
    .await;
    let up = backend_saw(&r, "traceparent");
    let parts: Vec<&str> = up.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway is a new span");
    assert_eq!(parts[3], "01");
    assert_eq!(backend_saw(&r, "tracestate"), "vendor=1");

    let r = get(
        &url,
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
    )
    .await;
    let started = backend_saw(&r, "traceparent");
    assert!(!started.contains("00000000000000000000000000000000"));
    assert_eq!(started.len(), 55);

    let r = get(&url, &[]).await;
    assert_eq!(backend_saw(&r, "traceparent").len(), 55);
}
