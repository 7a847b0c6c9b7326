//! Hot reload: valid edits apply without failing in-flight requests; invalid ones are counted
//! and the old routes keep serving.

use std::time::Duration;

use crate::support::*;

const ROUTES_V1: &str = "routes:\n  - name: slow\n    methods: [GET]\n    path: /slow\n    cluster: main\n    auth: public\n";

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let m = prom::parse(&gw.metrics().await).unwrap();
    prom::value(&m, "portcullis_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

#[tokio::test]
async fn valid_edit_applies_without_failing_in_flight_and_invalid_edit_keeps_old_routes() {
    let b = Backend::start("main").await;
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", b.addr);
    let gw = Gateway::start(&gateway_yaml(&clusters, ""), ROUTES_V1).await;
    assert_eq!(get(&gw.url("/new"), &[]).await.status, 404);

    // A request in flight on the old config…
    let slow_url = gw.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { get(&slow_url, &[]).await });
    eventually(
        "the slow request to reach the backend",
        Duration::from_secs(10),
        || async { b.hits.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;

    // …while a valid edit adds a route.
    let v2 = format!(
        "{ROUTES_V1}  - name: new\n    methods: [GET]\n    path: /new\n    cluster: main\n    auth: public\n"
    );
    gw.dir.write("routes/routes.yaml", &v2);
    let url = gw.url("/new");
    eventually("the new route", Duration::from_secs(10), || {
        let url = url.clone();
        async move { get(&url, &[]).await.status == 200 }
    })
    .await;
    assert_eq!(
        in_flight.await.unwrap().status,
        200,
        "the in-flight request was not failed by the reload"
    );
    assert_eq!(reloads(&gw, "success").await, 1.0);

    // An invalid edit: counted, logged, and the previous routes keep serving.
    gw.dir.write(
        "routes/routes.yaml",
        &v2.replace("cluster: main\n", "cluster: mian\n"),
    );
    eventually(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || async { reloads(&gw, "failure").await == 1.0 },
    )
    .await;
    assert_eq!(get(&gw.url("/new"), &[]).await.status, 200);
    assert_eq!(get(&gw.url("/slow?ms=0"), &[]).await.status, 200);
    // The broken file is not retried every poll: still exactly one failure later on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reloads(&gw, "failure").await, 1.0);

    // Fixing the file applies it again; an explicit trigger (SIGHUP in the CLI) reloads too.
    gw.dir.write("routes/routes.yaml", ROUTES_V1);
    let url = gw.url("/new");
    eventually("the route to be removed", Duration::from_secs(10), || {
        let url = url.clone();
        async move { get(&url, &[]).await.status == 404 }
    })
    .await;
    gw.reload.notify_one();
    eventually("a triggered reload", Duration::from_secs(10), || async {
        reloads(&gw, "success").await == 3.0
    })
    .await;
}
