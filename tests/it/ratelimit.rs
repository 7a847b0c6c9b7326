//! Rate limits through the whole gateway: real ES256 tokens (the tenant comes from the token), a
//! real backend, and for shared limits a real `redis-server` with three gateways in front of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis::authn::devtools::{DevKey, TokenSpec, claims};
use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::*;

/// The value of metric `name` with `labels` on `gw` (0 when absent).
async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let m = gw.metrics().await;
    let samples = prom::parse(&m).unwrap();
    prom::value(&samples, name, labels).unwrap_or(0.0)
}

const ISS: &str = "https://idp.acme.example";

/// Keys and a backend shared by the gateways of one test.
struct Kit {
    dir: TempDir,
    key: DevKey,
    backend: Backend,
}

impl Kit {
    async fn new() -> Self {
        let dir = TempDir::new();
        portcullis::authn::devtools::write_dev_keys(dir.path()).unwrap();
        let key = DevKey::read(&dir.path().join("jwt-es256-key.pem")).unwrap();
        Self {
            dir,
            key,
            backend: Backend::start("main").await,
        }
    }

    fn token(&self, sub: &str, tenant: &str, extra: serde_json::Value) -> String {
        let mut e = serde_json::Map::new();
        if let serde_json::Value::Object(m) = extra {
            e.extend(m);
        }
        let c = claims(&TokenSpec {
            iss: ISS,
            aud: "finance-api",
            sub: Some(sub),
            tenant: Some(tenant),
            scope: Some("accounts:read"),
            ttl: 600,
            cnf_cert_der: None,
            extra: e,
        });
        self.key.sign("ES256", Some("jwt-es256"), &c).unwrap()
    }

    /// A plain-HTTP gateway with the test issuer; `gateway_extra` is more top-level YAML,
    /// `cluster_extra` more keys of the `main` cluster.
    async fn gateway(&self, gateway_extra: &str, cluster_extra: &str, routes: &str) -> Gateway {
        let extra = format!(
            "{gateway_extra}issuers:\n  acme-idp:\n    issuer: {ISS}\n    audiences: [finance-api]\n    jwks:\n      file: {}\n    algorithms: [ES256]\n",
            self.dir.path().join("jwks.json").display()
        );
        let clusters = format!(
            "  main:\n    endpoints: [\"{}\"]\n{cluster_extra}",
            self.backend.addr
        );
        Gateway::start(&gateway_yaml(&clusters, &extra), routes).await
    }
}

fn route(name: &str, path: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    methods: [GET]\n    path: {path}\n    cluster: main\n    auth: jwt\n    authz:\n      authenticated: true\n{extra}"
    )
}

/// Sends `GET path` with `token` on a shared keep-alive client.
async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    gw: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> u16 {
    let req = Request::get(format!("http://{gw}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.expect("request");
    let status = res.status().as_u16();
    let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    status
}

/// When a window of hammering ends: at a fixed time, or a fixed time after the first admitted
/// response (shared by every client of a test, so a slow start does not shorten the window).
#[derive(Clone)]
enum Until {
    At(Instant),
    AfterFirstOk {
        base: Instant,
        /// Nanoseconds after `base` of the first 200 (0: none yet).
        first: Arc<std::sync::atomic::AtomicU64>,
        window: Duration,
        /// Give up this long after `base` even if nothing was admitted.
        limit: Duration,
    },
}

impl Until {
    fn after_first_ok(window: Duration) -> Self {
        Until::AfterFirstOk {
            base: Instant::now(),
            first: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            window,
            limit: window * 4,
        }
    }

    fn done(&self) -> bool {
        match self {
            Until::At(t) => Instant::now() >= *t,
            Until::AfterFirstOk {
                base,
                first,
                window,
                limit,
            } => {
                let first = first.load(Ordering::SeqCst);
                let now = base.elapsed();
                now >= *limit || (first != 0 && now >= Duration::from_nanos(first) + *window)
            }
        }
    }

    fn admitted(&self) {
        if let Until::AfterFirstOk { base, first, .. } = self {
            let at = u64::try_from(base.elapsed().as_nanos()).unwrap().max(1);
            let _ = first.compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// `clients` tasks hammer `path` on `gw` until `until`; returns (admitted, refused, other).
async fn hammer(
    gw: std::net::SocketAddr,
    path: &str,
    token: &str,
    clients: usize,
    until: impl Into<Until>,
) -> (usize, usize, usize) {
    let until = until.into();
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
        let (path, token, until) = (path.to_owned(), token.to_owned(), until.clone());
        tasks.push(tokio::spawn(async move {
            let c = client::<Full<Bytes>>();
            while !until.done() {
                match call(&c, gw, &path, &token).await {
                    200 => {
                        until.admitted();
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    429 => limited.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

impl From<Instant> for Until {
    fn from(t: Instant) -> Self {
        Until::At(t)
    }
}

const TIERS: &str = r#"
rate_limits:
  default_tier: standard
  tiers:
    standard: { rate: 1/s, burst: 10 }
    slow: { rate: 30/m, burst: 5 }
  tenants:
    gamma: slow
routes:
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_limiter_admits_exactly_the_gcra_bound_under_64_clients() {
    let kit = Kit::new().await;
    let routes = format!(
        "{TIERS}{}{}",
        route("read", "/v1/read", ""),
        route("pay", "/v1/pay", "    rate_limit: { cost: 5 }\n")
    );
    let gw = kit.gateway("", "", &routes).await;

    // 64 clients for 2.5 s (from the first admitted request) against 1/s with a burst of 10:
    // the burst, then one request a second after the first (at 1 and 2 s) — 12, never a request
    // more or less (the window ends half a second from either replenishment).
    let alpha = kit.token("a@alpha", "alpha", json!({}));
    let (ok, limited, other) = hammer(
        gw.addr,
        "/v1/read",
        &alpha,
        64,
        Until::after_first_ok(Duration::from_millis(2500)),
    )
    .await;
    assert_eq!(other, 0);
    assert!(limited > 100, "the clients kept trying: {limited}");
    assert_eq!(ok, 10 + 2, "admitted {ok}, refused {limited}");
    assert_eq!(kit.backend.hits.load(Ordering::SeqCst), ok);

    // A route of cost 5 empties a burst of 10 in two requests.
    let beta = kit.token("b@beta", "beta", json!({}));
    let c = client::<Full<Bytes>>();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&c, gw.addr, "/v1/pay", &beta).await);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);

    // 429 problem+json with Retry-After correct to the second, and the IETF fields: tier `slow`
    // is one request every 2 s.
    let gamma = kit.token("g@gamma", "gamma", json!({}));
    let auth = format!("Bearer {gamma}");
    let first = Instant::now();
    for _ in 0..5 {
        let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200);
    }
    let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
    let v = assert_problem(&r, 429);
    assert_eq!(v["type"], "urn:portcullis:problem:rate-limited");
    assert!(v["detail"].as_str().unwrap().contains("`slow`"), "{v}");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"slow\";q=5;w=10"));
    assert_eq!(r.header("ratelimit"), Some("\"slow\";r=0;t=10"));
    // One second later the wait is one second ...
    tokio::time::sleep_until((first + Duration::from_millis(1100)).into()).await;
    let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    // ... and when it has passed the request is admitted.
    tokio::time::sleep_until((first + Duration::from_millis(2050)).into()).await;
    let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let d = "portcullis_ratelimit_decisions_total";
    assert_eq!(
        metric(&gw, d, &[("tier", "standard"), ("result", "allow")]).await,
        (12 + 2) as f64
    );
    assert!(metric(&gw, d, &[("tier", "standard"), ("result", "deny")]).await > 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_one_limit() {
    let redis = RedisServer::start();
    let kit = Kit::new().await;
    let gateway_extra = format!(
        "redis:\n  url: {}\nrate_limits:\n  store: redis\n  redis_timeout: 1s\n",
        redis.url()
    );
    let routes = format!(
        "rate_limits:\n  default_tier: shared\n  tiers:\n    shared: {{ rate: 100/s, burst: 20 }}\nroutes:\n{}",
        route("read", "/v1/read", "")
    );
    let gws = [
        kit.gateway(&gateway_extra, "", &routes).await,
        kit.gateway(&gateway_extra, "", &routes).await,
        kit.gateway(&gateway_extra, "", &routes).await,
    ];
    let token = kit.token("a@acme", "acme", json!({}));
    let start = Instant::now();
    // Five seconds from the first admitted request, on whichever gateway.
    let until = Until::after_first_ok(Duration::from_secs(5));
    let runs = gws
        .iter()
        .map(|g| {
            let (addr, token, until) = (g.addr, token.clone(), until.clone());
            async move { hammer(addr, "/v1/read", &token, 4, until).await }
        })
        .collect::<Vec<_>>();
    let results = futures_join(runs).await;
    let elapsed = start.elapsed().as_secs_f64();
    let admitted: usize = results.iter().map(|r| r.0).sum();
    let refused: usize = results.iter().map(|r| r.1).sum();
    assert!(results.iter().all(|r| r.2 == 0), "{results:?}");
    // Every gateway admitted some: the limit is shared, not owned by one replica.
    assert!(results.iter().all(|r| r.0 > 50), "{results:?}");
    let expected = 20.0 + 100.0 * 5.0;
    let ratio = admitted as f64 / expected;
    eprintln!(
        "three gateways, one Redis: admitted {admitted} of {expected} ({ratio:.3}), per gateway {results:?}, refused {refused}"
    );
    assert!(
        (0.97..=1.03).contains(&ratio),
        "admitted {admitted} of {expected} ({ratio:.3}) in {elapsed:.2} s; refused {refused}; {results:?}"
    );
    for g in &gws {
        let errors = "portcullis_ratelimit_redis_errors_total";
        assert_eq!(metric(g, errors, &[("kind", "timeout")]).await, 0.0);
        assert_eq!(metric(g, errors, &[("kind", "error")]).await, 0.0);
    }
    let keys = redis.cmd(&["DBSIZE"]);
    assert_eq!(keys, 1, "one bucket for the tenant");
}

/// Awaits every future (the test's own tiny join, to keep the dependency tree lean).
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_failure_falls_back_or_closes_per_tier_and_recovers() {
    let mut redis = RedisServer::start();
    let kit = Kit::new().await;
    let timeout = Duration::from_millis(200);
    let gateway_extra = format!(
        "redis:\n  url: {}\nrate_limits:\n  store: redis\n  redis_timeout: 200ms\n  probe_interval: 200ms\n",
        redis.url()
    );
    let routes = format!(
        "rate_limits:\n  default_tier: open\n  tiers:\n    open: {{ rate: 10/s, burst: 20, on_redis_failure: fail_open_local, local_share: 0.5 }}\n    closed: {{ rate: 10/s, burst: 20, on_redis_failure: fail_closed }}\n  tenants:\n    acme: open\n    globex: closed\nroutes:\n{}",
        route("read", "/v1/read", "")
    );
    let gw = kit.gateway(&gateway_extra, "", &routes).await;
    let acme = kit.token("a@acme", "acme", json!({}));
    let globex = kit.token("g@globex", "globex", json!({}));
    let c = client::<Full<Bytes>>();
    assert_eq!(call(&c, gw.addr, "/v1/read", &acme).await, 200);
    assert_eq!(call(&c, gw.addr, "/v1/read", &globex).await, 200);
    assert!(redis.cmd(&["DBSIZE"]) == 2, "both buckets live in Redis");

    // Redis stops mid-load.
    redis.stop();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut open_ok, mut open_limited, mut closed_503) = (0, 0, 0);
    while start.elapsed() < Duration::from_secs(1) {
        for (token, is_open) in [(&acme, true), (&globex, false)] {
            let t = Instant::now();
            let auth = format!("Bearer {token}");
            let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
            slowest = slowest.max(t.elapsed());
            match (is_open, r.status.as_u16()) {
                (true, 200) => open_ok += 1,
                (true, 429) => open_limited += 1,
                (false, 503) => {
                    let v = assert_problem(&r, 503);
                    assert_eq!(v["type"], "urn:portcullis:problem:rate-limit-unavailable");
                    closed_503 += 1;
                }
                (open, s) => panic!("tier open={open}: unexpected status {s}"),
            }
        }
    }
    // The local share: half the burst (10) plus half the rate (5/s) over one second.
    assert!((10..=10 + 5 + 1).contains(&open_ok), "admitted {open_ok}");
    assert!(open_limited > 0);
    assert!(closed_503 > 10);
    assert!(
        slowest < timeout + Duration::from_millis(300),
        "a request waited {slowest:?}"
    );
    let d = "portcullis_ratelimit_decisions_total";
    assert_eq!(
        metric(&gw, "portcullis_ratelimit_fallback_active", &[]).await,
        1.0
    );
    assert_eq!(
        metric(&gw, d, &[("tier", "open"), ("result", "fallback_allow")]).await,
        open_ok as f64
    );
    assert_eq!(
        metric(&gw, d, &[("tier", "closed"), ("result", "unavailable")]).await,
        closed_503 as f64
    );

    // Redis is back (empty): shared limiting resumes by itself.
    redis.restart();
    eventually(
        "shared limits to resume",
        Duration::from_secs(5),
        || async { call(&c, gw.addr, "/v1/read", &globex).await == 200 },
    )
    .await;
    assert_eq!(call(&c, gw.addr, "/v1/read", &acme).await, 200);
    assert_eq!(redis.cmd(&["DBSIZE"]), 2);
    assert_eq!(
        metric(&gw, "portcullis_ratelimit_fallback_active", &[]).await,
        0.0
    );

    // A frozen Redis (connections open, no answers): no request waits past the timeout.
    redis.freeze(true);
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let s = call(&c, gw.addr, "/v1/read", &acme).await;
        slowest = slowest.max(t.elapsed());
        assert!(s == 200 || s == 429, "{s}");
    }
    redis.freeze(false);
    assert!(
        slowest < timeout + Duration::from_millis(300),
        "a request waited {slowest:?}"
    );
    assert!(
        metric(
            &gw,
            "portcullis_ratelimit_redis_errors_total",
            &[("kind", "timeout")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_quota_is_split_between_active_tenants() {
    let kit = Kit::new().await;
    let routes = format!("routes:\n{}", route("read", "/v1/read", ""));
    let gw = kit
        .gateway("", "    quota: { rate: 100/m, active_for: 60s }\n", &routes)
        .await;
    let a = kit.token("a@acme", "acme", json!({}));
    let g = kit.token("g@globex", "globex", json!({}));
    // Both tenants are active (one request each), then both hammer.
    let c = client::<Full<Bytes>>();
    assert_eq!(call(&c, gw.addr, "/v1/read", &a).await, 200);
    assert_eq!(call(&c, gw.addr, "/v1/read", &g).await, 200);
    let until = Instant::now() + Duration::from_millis(1500);
    let (mut ra, mut rg) = tokio::join!(
        hammer(gw.addr, "/v1/read", &a, 8, until),
        hammer(gw.addr, "/v1/read", &g, 8, until)
    );
    assert_eq!((ra.2, rg.2), (0, 0));
    ra.0 += 1;
    rg.0 += 1;
    let total = ra.0 + rg.0;
    // The quota is 100 at once plus 100 a minute (about 3 in 1.5 s).
    assert!((98..=104).contains(&total), "{ra:?} {rg:?}");
    for (name, got) in [("acme", ra.0), ("globex", rg.0)] {
        assert!(
            (43..=57).contains(&got),
            "{name} got {got} of {total}: {ra:?} {rg:?}"
        );
    }
    let q = "portcullis_upstream_quota_decisions_total";
    assert_eq!(
        metric(&gw, q, &[("cluster", "main"), ("result", "allow")]).await,
        total as f64
    );
}

#[tokio::test]
async fn pre_auth_limits_refuse_a_flooding_client_before_any_token_work() {
    let kit = Kit::new().await;
    let routes = format!("routes:\n{}", route("read", "/v1/read", ""));
    let gw = kit
        .gateway(
            "rate_limits:\n  per_ip: { rate: 1/m, burst: 3 }\n",
            "",
            &routes,
        )
        .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // No token at all: the first three get 401, then the address is limited.
        statuses.push(get(&gw.url("/v1/read"), &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let r = get(&gw.url("/v1/read"), &[]).await;
    assert_problem(&r, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_ip\";q=3;w=180"));
    let p = "portcullis_preauth_limit_decisions_total";
    assert_eq!(
        metric(&gw, p, &[("limit", "per_ip"), ("result", "deny")]).await,
        3.0
    );
}

#[tokio::test]
async fn headers_on_every_response_and_reload_keeps_the_buckets() {
    let kit = Kit::new().await;
    let routes = format!(
        "rate_limits:\n  default_tier: t\n  tiers:\n    t: {{ rate: 1/m, burst: 3 }}\nroutes:\n{}",
        route("read", "/v1/read", "")
    );
    let gw = kit
        .gateway("rate_limits:\n  headers: all\n", "", &routes)
        .await;
    let token = kit.token("a@acme", "acme", json!({}));
    let auth = format!("Bearer {token}");
    let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"t\";q=3;w=180"));
    assert_eq!(r.header("ratelimit"), Some("\"t\";r=2;t=60"));
    // An edit elsewhere in the policies reloads the config; the bucket keeps its state.
    let reloads = || async {
        let m = gw.metrics().await;
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    };
    gw.dir
        .write("routes/routes.yaml", &format!("{routes}\n# edited\n"));
    gw.reload.notify_one();
    eventually("the reload", Duration::from_secs(5), reloads).await;
    let r = get(&gw.url("/v1/read"), &[("authorization", &auth)]).await;
    assert_eq!(r.header("ratelimit"), Some("\"t\";r=1;t=120"));
}

#[test]
fn config_errors_name_the_tier_the_cost_and_the_store() {
    let dir = TempDir::new();
    let gw = dir.write(
        "gateway.yaml",
        "listeners:\n  - name: p\n    address: 127.0.0.1:0\nclusters:\n  main:\n    endpoints: [\"127.0.0.1:9\"]\n    quota: { rate: 100/fortnight }\npolicies: routes\nrate_limits:\n  store: redis\n  per_ip: { rate: 10/s, burst: 0 }\n",
    );
    dir.write(
        "routes/r.yaml",
        "rate_limits:\n  tiers:\n    free: { rate: 5/m, burst: 2, on_redis_failure: fail_shut }\n    pro: { rate: 5/s, local_share: 1.5 }\n    basic: { rate: 1/s }\n  tenants:\n    globex: fre\nroutes:\n  - name: pay\n    methods: [POST]\n    path: /pay\n    cluster: main\n    auth: public\n    rate_limit: { cost: 5 }\n",
    );
    let err = portcullis::config::load(&gw, &portcullis::config::process_env)
        .unwrap_err()
        .to_string();
    for needle in [
        "`100/fortnight` is not a rate",
        "`store: redis` needs `redis: { url: … }`",
        "a burst of 0 admits nothing",
        "`fail_shut` is not a failure mode",
        "`local_share` is a fraction",
        "unknown tier `fre`",
        "no `default_tier`",
        "cost 5 exceeds the burst of tier `basic` (1)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("gateway.yaml:7:"), "{err}");
}
