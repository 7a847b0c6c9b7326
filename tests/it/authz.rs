//! Authorization through the whole gateway: HTTPS with client certificates, real ES256 tokens
//! from a JWKS file, a real backend that reports what it received. The reference scenario of
//! PRODUCT.md, body-field BOLA with byte-exact forwarding, tenant isolation, report-only rules
//! and the audit log (including a full queue).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use portcullis::authn::devtools::{DevKey, TokenSpec, claims};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;
use crate::tls::{Pki, client_config, connect};

const ISS: &str = "https://idp.acme.example";

const ROUTES: &str = r#"
roles:
  teller: [payments:create, accounts:read]
rate_limits:
  default_tier: enterprise
  tiers:
    enterprise: { rate: 1000/s, burst: 1000 }
    free: { rate: 10/m, burst: 3 }
  tenants:
    acme: enterprise
    globex: free
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: main
    auth: jwt
    authz:
      scopes: { any_of: [accounts:read] }
      ownership:
        all_of:
          - path: account_id
            claim_contains: accounts
  - name: get-account-403
    methods: [GET]
    path: /v2/accounts/{account_id}
    cluster: main
    auth: jwt
    authz:
      ownership:
        deny_status: 403
        all_of:
          - path: account_id
            claim_contains: accounts
  - name: create-payment
    methods: [POST]
    path: /v1/payments
    cluster: main
    auth: jwt
    authz:
      scopes: { all_of: [payments:write] }
      ownership:
        max_body_bytes: 4096
        all_of:
          - body: /from_account
            claim_contains: accounts
  - name: tenant-report
    methods: [GET]
    path: /v1/reports/{tenant_id}/daily
    cluster: main
    auth: jwt
    authz:
      tenant: { param: tenant_id }
  - name: service-report
    methods: [GET]
    path: /v1/svc/reports/{tenant_id}
    cluster: main
    auth: mtls
    mtls:
      any_of:
        - uri: "spiffe://acme.internal/*"
  - name: beta-account
    methods: [GET, PUT]
    path: /v1/beta/accounts/{account_id}
    cluster: main
    auth: jwt
    authz:
      ownership:
        mode: report
        all_of:
          - path: account_id
            claim_contains: accounts
  - name: card
    methods: [GET]
    path: /v1/cards/{card_id}
    cluster: main
    auth: jwt
    authz:
      roles: { any_of: [teller] }
      ownership:
        any_of:
          - path: card_id
            template: "{tenant}-*"
          - query: account
            claim_contains: accounts
  - name: status
    methods: [GET]
    path: /v1/status
    cluster: main
    auth: public
"#;

struct World {
    gw: Gateway,
    pki: Pki,
    backend: Backend,
    key: DevKey,
    audit_path: std::path::PathBuf,
}

fn token(
    key: &DevKey,
    sub: &str,
    tenant: &str,
    scope: &str,
    accounts: &[&str],
    extra: Value,
) -> String {
    let mut e = serde_json::Map::new();
    e.insert("accounts".into(), json!(accounts));
    if let Value::Object(m) = extra {
        e.extend(m);
    }
    let c = claims(&TokenSpec {
        iss: ISS,
        aud: "finance-api",
        sub: Some(sub),
        tenant: Some(tenant),
        scope: Some(scope),
        ttl: 600,
        cnf_cert_der: None,
        extra: e,
    });
    key.sign("ES256", Some("jwt-es256"), &c).unwrap()
}

/// Starts the world; `audit` is the `audit:` block's extra keys (the path is set here unless
/// `audit_path` is given).
async fn world(audit: &str, audit_path: Option<std::path::PathBuf>) -> World {
    world_with(ROUTES, audit, audit_path, "").await
}

async fn world_with(
    routes: &str,
    audit: &str,
    audit_path: Option<std::path::PathBuf>,
    gateway_extra: &str,
) -> World {
    let pki = Pki::new();
    portcullis::authn::devtools::write_dev_keys(pki.dir.path()).unwrap();
    let key = DevKey::read(&pki.dir.path().join("jwt-es256-key.pem")).unwrap();
    let backend = Backend::start("main").await;
    let audit_path = audit_path.unwrap_or_else(|| pki.dir.path().join("audit.jsonl"));
    let extra = format!(
        "{gateway_extra}issuers:\n  acme-idp:\n    issuer: {ISS}\n    audiences: [finance-api]\n    jwks:\n      file: {}\n    algorithms: [ES256]\naudit:\n  path: {}\n{audit}",
        pki.path("jwks.json"),
        audit_path.display()
    );
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", backend.addr);
    let gateway = gateway_yaml(&clusters, &extra).replacen(
        "    address: 127.0.0.1:0\n",
        &format!("    address: 127.0.0.1:0\n{}", pki.listener_tls("optional")),
        1,
    );
    let gw = Gateway::start(&gateway, routes).await;
    World {
        gw,
        pki,
        backend,
        key,
        audit_path,
    }
}

impl World {
    async fn call(
        &self,
        cert: Option<&portcullis::tls::devcerts::Issued>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut c = connect(
            self.gw.addr,
            client_config(&self.pki.ca.cert_pem, cert, &[b"http/1.1"]),
        )
        .await
        .unwrap();
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        c.send(method, path, &headers, Bytes::copy_from_slice(body))
            .await
            .unwrap()
            .0
    }

    fn hits(&self) -> usize {
        self.backend.hits.load(Ordering::SeqCst)
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn the_reference_scenario_decides_as_specified() {
    let w = world("", None).await;
    let alice = token(
        &w.key,
        "alice@acme",
        "acme",
        "accounts:read payments:write",
        &["acc-100", "acc-101"],
        json!({}),
    );
    let bob = token(
        &w.key,
        "bob@globex",
        "globex",
        "accounts:read",
        &["acc-200"],
        json!({}),
    );
    let client = Some(&w.pki.client);

    // alice reading acc-100 → 200, with her identity upstream.
    let r = w
        .call(client, "GET", "/v1/accounts/acc-100", Some(&alice), b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["headers"]["x-portcullis-subject"], "alice@acme");
    assert_eq!(w.hits(), 1);

    // alice reading acc-200 → 404 (BOLA), and 403 where the route asks for it; never upstream.
    let r = w
        .call(client, "GET", "/v1/accounts/acc-200", Some(&alice), b"")
        .await;
    let v = assert_problem(&r, 404);
    assert!(v.get("reason").is_none(), "a 404 must not say why: {v}");
    let r = w
        .call(client, "GET", "/v2/accounts/acc-200", Some(&alice), b"")
        .await;
    let v = assert_problem(&r, 403);
    assert_eq!(v["reason"], "ownership");
    assert_eq!(w.hits(), 1, "denied requests never reach the backend");

    // alice posting a payment from acc-100 → the backend gets her exact bytes.
    let body = br#"{"from_account": "acc-100",  "to_account":"acc-200", "amount": "125.40", "currency": "EUR"}"#;
    let r = w
        .call(client, "POST", "/v1/payments", Some(&alice), body)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_sha256"], hex(&Sha256::digest(body)));
    assert_eq!(w.hits(), 2);

    // ... from acc-200 → 404 (BOLA on a body field); bob without payments:write → 403.
    let stolen = br#"{"from_account": "acc-200", "to_account": "acc-100", "amount": "125.40", "currency": "EUR"}"#;
    let r = w
        .call(client, "POST", "/v1/payments", Some(&alice), stolen)
        .await;
    assert_problem(&r, 404);
    let r = w
        .call(client, "POST", "/v1/payments", Some(&bob), stolen)
        .await;
    let v = assert_problem(&r, 403);
    assert_eq!(v["reason"], "insufficient_scope");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("payments:write"),
        "{challenge}"
    );
    // A body without the referenced field, or not JSON, denies (fail closed).
    for bad in [&br#"{"to_account": "acc-100"}"#[..], b"not json", b""] {
        let r = w
            .call(client, "POST", "/v1/payments", Some(&alice), bad)
            .await;
        assert_problem(&r, 404);
    }
    // Over the route's body limit → 413 before anything is forwarded.
    let big = format!(
        r#"{{"from_account":"acc-100","memo":"{}"}}"#,
        "x".repeat(5000)
    );
    let r = w
        .call(client, "POST", "/v1/payments", Some(&alice), big.as_bytes())
        .await;
    assert_problem(&r, 413);
    assert_eq!(w.hits(), 2);

    // An expired token → 401.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = token(
        &w.key,
        "alice@acme",
        "acme",
        "accounts:read",
        &["acc-100"],
        json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
    );
    let r = w
        .call(client, "GET", "/v1/accounts/acc-100", Some(&expired), b"")
        .await;
    assert_eq!(assert_problem(&r, 401)["reason"], "expired");

    // Tenant isolation: acme's report yes, globex's no.
    let r = w
        .call(client, "GET", "/v1/reports/acme/daily", Some(&alice), b"")
        .await;
    assert_eq!(r.status, 200);
    let r = w
        .call(client, "GET", "/v1/reports/globex/daily", Some(&alice), b"")
        .await;
    assert_eq!(assert_problem(&r, 403)["reason"], "tenant_mismatch");

    // The SPIFFE service (mTLS, no token) reaches its report; the web client's certificate does not.
    let r = w
        .call(
            Some(&w.pki.service),
            "GET",
            "/v1/svc/reports/acme",
            None,
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = w
        .call(client, "GET", "/v1/svc/reports/acme", Some(&alice), b"")
        .await;
    assert_problem(&r, 403);
    assert_eq!(w.hits(), 4);

    // globex is on the free tier (3 at once, then 10 a minute): above it → 429 with
    // Retry-After, and the request never reaches the backend. bob's refused payment above was
    // refused before the rate limit (authorization first), so it spent nothing.
    for _ in 0..3 {
        let r = w
            .call(client, "GET", "/v1/accounts/acc-200", Some(&bob), b"")
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(w.hits(), 7);
    let r = w
        .call(client, "GET", "/v1/accounts/acc-200", Some(&bob), b"")
        .await;
    let v = assert_problem(&r, 429);
    assert_eq!(v["type"], "urn:portcullis:problem:rate-limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "one request per 6 s: {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"free\";q=3;w=18"));
    assert_eq!(w.hits(), 7, "a limited request never reaches the backend");
    // acme (enterprise) is not affected by globex's limit.
    let r = w
        .call(client, "GET", "/v1/accounts/acc-100", Some(&alice), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.hits(), 8);

    // Templates and query references: acme-* cards are alice's; others only with an owned account.
    let teller = token(
        &w.key,
        "alice@acme",
        "acme",
        "accounts:read",
        &["acc-100"],
        json!({"roles": ["teller"]}),
    );
    assert_eq!(
        w.call(client, "GET", "/v1/cards/acme-77", Some(&teller), b"")
            .await
            .status,
        200
    );
    assert_eq!(
        w.call(client, "GET", "/v1/cards/globex-77", Some(&teller), b"")
            .await
            .status,
        404
    );
    assert_eq!(
        w.call(
            client,
            "GET",
            "/v1/cards/globex-77?account=acc-100",
            Some(&teller),
            b""
        )
        .await
        .status,
        200
    );
    assert_eq!(
        w.call(
            client,
            "GET",
            "/v1/cards/globex-77?account=acc-100&account=acc-200",
            Some(&teller),
            b""
        )
        .await
        .status,
        404,
        "a repeated reference is ambiguous"
    );
    let r = w
        .call(client, "GET", "/v1/cards/acme-77", Some(&alice), b"")
        .await;
    assert_eq!(
        assert_problem(&r, 403)["reason"],
        "insufficient_role",
        "no teller role"
    );

    // A card number as an object id is masked in the audit (first six, last four).
    let r = w
        .call(
            client,
            "GET",
            "/v1/cards/4111111111111111",
            Some(&teller),
            b"",
        )
        .await;
    assert_eq!(r.status, 404);
    eventually(
        "the card denial audited",
        std::time::Duration::from_secs(3),
        || async {
            w.audit_lines()
                .iter()
                .any(|l| l["object_ids"] == json!(["411111******1111"]))
        },
    )
    .await;
    assert!(
        !std::fs::read_to_string(&w.audit_path)
            .unwrap_or_default()
            .contains("4111111111111111"),
        "no full card number in the audit log"
    );

    // Every deny and every allowed write was audited, without tokens.
    let text = std::fs::read_to_string(&w.audit_path).unwrap_or_default();
    assert!(
        !text.contains(&alice) && !text.contains("eyJ"),
        "no token in the audit log"
    );
    eventually("audit lines", std::time::Duration::from_secs(3), || async {
        w.audit_lines()
            .iter()
            .any(|l| l["decision"] == "allow" && l["method"] == "POST")
    })
    .await;
    let lines = w.audit_lines();
    let deny = lines
        .iter()
        .find(|l| {
            l["decision"] == "deny" && l["route"] == "create-payment" && l["rule"] == "ownership"
        })
        .expect("the stolen payment is audited");
    assert_eq!(deny["subject"], "alice@acme");
    assert_eq!(deny["tenant"], "acme");
    assert_eq!(deny["object_ids"], json!(["acc-200"]));
    assert_eq!(
        deny["reason"], "body field `/from_account` claim_contains accounts → not_owned",
        "the audit names the failing rule (the caller only saw a 404)"
    );
    assert!(deny["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        deny["peer_fingerprint"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );

    let m = w.gw.metrics().await;
    let samples = prom::parse(&m).unwrap();
    assert!(
        prom::value(
            &samples,
            "portcullis_authz_decisions_total",
            &[("rule", "ownership"), ("result", "deny")]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
    assert!(
        prom::value(
            &samples,
            "portcullis_ownership_failures_total",
            &[("kind", "missing_ref")]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
}

#[tokio::test]
async fn report_only_rules_let_the_request_through_and_leave_a_trace() {
    let w = world("", None).await;
    let bob = token(
        &w.key,
        "bob@globex",
        "globex",
        "accounts:read",
        &["acc-200"],
        json!({}),
    );
    let r = w
        .call(
            Some(&w.pki.client),
            "GET",
            "/v1/beta/accounts/acc-100",
            Some(&bob),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "report mode allows");
    assert_eq!(w.hits(), 1);
    eventually(
        "the report-only audit line",
        std::time::Duration::from_secs(3),
        || async {
            w.audit_lines()
                .iter()
                .any(|l| l["decision"] == "report" && l["route"] == "beta-account")
        },
    )
    .await;
    let samples = prom::parse(&w.gw.metrics().await).unwrap();
    assert_eq!(
        prom::value(
            &samples,
            "portcullis_authz_decisions_total",
            &[("rule", "ownership"), ("result", "would_deny")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_full_audit_queue_refuses_writes_when_required_and_counts_drops_otherwise() {
    for required in [true, false] {
        // A FIFO nobody reads: the writer blocks on opening it, so the queue (1 record) fills.
        let dir = TempDir::new();
        let fifo = dir.path().join("audit.fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let w = world(
            &format!("  queue: 1\n  required: {required}\n"),
            Some(fifo.clone()),
        )
        .await;
        let alice = token(
            &w.key,
            "alice@acme",
            "acme",
            "accounts:read payments:write",
            &["acc-100"],
            json!({}),
        );
        let body = br#"{"from_account": "acc-100"}"#;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                w.call(
                    Some(&w.pki.client),
                    "PUT",
                    "/v1/beta/accounts/acc-100",
                    Some(&alice),
                    body,
                )
                .await
                .status
                .as_u16(),
            );
        }
        // Reads are not audited when allowed, so they keep working.
        assert_eq!(
            w.call(
                Some(&w.pki.client),
                "GET",
                "/v1/accounts/acc-100",
                Some(&alice),
                b""
            )
            .await
            .status,
            200
        );
        let samples = prom::parse(&w.gw.metrics().await).unwrap();
        let dropped = prom::value(
            &samples,
            "portcullis_audit_records_total",
            &[("result", "dropped")],
        )
        .unwrap_or(0.0);
        if required {
            assert!(statuses.contains(&503), "{statuses:?}");
            assert_eq!(statuses[0], 200, "the first write is queued");
            let r = w
                .call(
                    Some(&w.pki.client),
                    "PUT",
                    "/v1/beta/accounts/acc-100",
                    Some(&alice),
                    body,
                )
                .await;
            assert_eq!(assert_problem(&r, 503)["reason"], "audit_queue_full");
        } else {
            assert_eq!(statuses, [200, 200, 200, 200]);
        }
        assert!(dropped >= 2.0, "drops counted: {dropped}");
        // Unblock the writer thread so the test process can end cleanly.
        let _ = std::fs::OpenOptions::new().read(true).open(&fifo);
    }
}

#[test]
fn routes_that_authenticate_must_say_what_callers_may_do() {
    let dir = TempDir::new();
    dir.write("jwks.json", r#"{"keys":[]}"#);
    let cfg = dir.write(
        "gateway.yaml",
        &gateway_yaml(
            "  main:\n    endpoints: [\"127.0.0.1:9\"]\n",
            &format!("issuers:\n  idp:\n    issuer: {ISS}\n    audiences: [api]\n    jwks: {{ file: jwks.json }}\n    scopes: [accounts:read, payments:write]\n"),
        ),
    );
    dir.write(
        "routes/r.yaml",
        "roles:\n  teller: [pay]\nroutes:\n  - name: a\n    methods: [GET]\n    path: /a/{id}\n    cluster: main\n    auth: jwt\n  - name: b\n    methods: [GET]\n    path: /b/{id}\n    cluster: main\n    auth: jwt\n    authz:\n      roles: { any_of: [teler] }\n      tenant: { param: idd }\n",
    );
    let err = portcullis::config::load(&cfg, &portcullis::config::process_env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("says nothing about what they may do"), "{err}");
    assert!(
        err.contains("no parameter `idd`") && err.contains("did you mean `id`?"),
        "{err}"
    );
    // Fixed: the undefined role is a warning with a hint, not an error.
    dir.write(
        "routes/r.yaml",
        "roles:\n  teller: [pay]\nroutes:\n  - name: b\n    methods: [GET]\n    path: /b/{id}\n    cluster: main\n    auth: jwt\n    authz:\n      roles: { any_of: [teler] }\n      scopes: { all_of: [payments:wirte] }\n",
    );
    let checked = portcullis::config::load(&cfg, &portcullis::config::process_env).unwrap();
    let w = checked
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        w.contains("role `teler` is not defined") && w.contains("did you mean `teller`?"),
        "{w}"
    );
    assert!(
        w.contains("scope `payments:wirte` is granted by no configured issuer")
            && w.contains("did you mean `payments:write`?"),
        "{w}"
    );
}

fn failures(samples: &[prom::Sample], kind: &str) -> f64 {
    prom::value(
        samples,
        "portcullis_ownership_failures_total",
        &[("kind", kind)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn redis_ownership_follows_the_set_and_fails_closed_when_redis_is_down() {
    let mut redis = crate::support::redis::RedisServer::start();
    let routes = "routes:\n  - name: ledger\n    methods: [GET]\n    path: /v1/ledgers/{ledger_id}\n    cluster: main\n    auth: jwt\n    authz:\n      ownership:\n        all_of:\n          - path: ledger_id\n            redis: { key: \"owner:{tenant}:ledgers\", timeout: 300ms, positive_ttl: 300ms, negative_ttl: 300ms }\n";
    let w = world_with(
        routes,
        "",
        None,
        &format!("redis:\n  url: {}\n", redis.url()),
    )
    .await;
    let alice = token(&w.key, "alice@acme", "acme", "", &[], json!({}));
    let get = || {
        w.call(
            Some(&w.pki.client),
            "GET",
            "/v1/ledgers/led-1",
            Some(&alice),
            b"",
        )
    };
    assert_eq!(get().await.status, 404, "not in the set");
    redis.cmd(&["SADD", "owner:acme:ledgers", "led-1"]);
    eventually(
        "the new member to be seen after the negative TTL",
        std::time::Duration::from_secs(3),
        || async { get().await.status == 200 },
    )
    .await;
    redis.cmd(&["SREM", "owner:acme:ledgers", "led-1"]);
    eventually(
        "the removal to be seen after the positive TTL",
        std::time::Duration::from_secs(3),
        || async { get().await.status == 404 },
    )
    .await;
    let hits = w.hits();
    redis.stop();
    // A ledger no answer is cached for: the question must go to the stopped Redis.
    let started = std::time::Instant::now();
    let r = w
        .call(
            Some(&w.pki.client),
            "GET",
            "/v1/ledgers/led-2",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(r.status, 404, "Redis down: denied");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.hits(), hits);
    let samples = prom::parse(&w.gw.metrics().await).unwrap();
    assert!(failures(&samples, "lookup_error") + failures(&samples, "timeout") >= 1.0);
    assert!(failures(&samples, "not_owned") >= 2.0);
}

/// An ownership service on port 0 that counts its calls: `/owners/acme/doc-1` is owned (200),
/// everything else is not (404), and a path ending in `/slow` answers after 2 s.
async fn ownership_service() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = calls.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        c.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path().to_owned();
                        async move {
                            if path.ends_with("/slow") {
                                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                            }
                            let status = if path == "/owners/acme/doc-1" {
                                200
                            } else {
                                404
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, calls, server)
}

#[tokio::test]
async fn an_http_ownership_service_is_asked_once_per_ttl_and_failures_deny() {
    let (addr, calls, server) = ownership_service().await;
    let routes = format!(
        "routes:\n  - name: doc\n    methods: [GET]\n    path: /v1/docs/{{doc_id}}\n    cluster: main\n    auth: jwt\n    authz:\n      ownership:\n        all_of:\n          - path: doc_id\n            http: {{ url: \"http://{addr}/owners/{{tenant}}/{{id}}\", expect_status: 200, timeout: 300ms, positive_ttl: 60s, negative_ttl: 60s }}\n"
    );
    let w = world_with(&routes, "", None, "").await;
    let alice = token(&w.key, "alice@acme", "acme", "", &[], json!({}));
    let get = |id: &'static str| {
        w.call(
            Some(&w.pki.client),
            "GET",
            if id == "doc-1" {
                "/v1/docs/doc-1"
            } else if id == "doc-2" {
                "/v1/docs/doc-2"
            } else {
                "/v1/docs/slow"
            },
            Some(&alice),
            b"",
        )
    };
    assert_eq!(get("doc-1").await.status, 200, "allowed");
    assert_eq!(get("doc-1").await.status, 200, "allowed, from the cache");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one call within the TTL");
    assert_eq!(get("doc-2").await.status, 404, "denied");
    let started = std::time::Instant::now();
    assert_eq!(get("slow").await.status, 404, "slow → timeout → deny");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    server.abort();
    let _ = server.await;
    // Down: a question not cached yet fails closed.
    let r = w
        .call(
            Some(&w.pki.client),
            "GET",
            "/v1/docs/doc-3",
            Some(&alice),
            b"",
        )
        .await;
    assert_eq!(r.status, 404, "down → deny");
    let samples = prom::parse(&w.gw.metrics().await).unwrap();
    assert!(failures(&samples, "timeout") >= 1.0);
    assert!(failures(&samples, "not_owned") >= 1.0);
    assert_eq!(w.hits(), 2);
}

#[tokio::test]
async fn replicas_share_ownership_answers_through_redis_when_configured() {
    let redis = crate::support::redis::RedisServer::start();
    let (addr, calls, _server) = ownership_service().await;
    let routes = format!(
        "routes:\n  - name: doc\n    methods: [GET]\n    path: /v1/docs/{{doc_id}}\n    cluster: main\n    auth: jwt\n    authz:\n      ownership:\n        all_of:\n          - path: doc_id\n            http: {{ url: \"http://{addr}/owners/{{tenant}}/{{id}}\", timeout: 500ms, positive_ttl: 60s }}\n"
    );
    let shared = format!(
        "redis:\n  url: {}\nownership_cache:\n  store: redis\n",
        redis.url()
    );
    // Two replicas: their own processes' worth of state (config, memory cache), one Redis.
    let a = world_with(&routes, "", None, &shared).await;
    let b = world_with(&routes, "", None, &shared).await;
    let alice_a = token(&a.key, "alice@acme", "acme", "", &[], json!({}));
    let alice_b = token(&b.key, "alice@acme", "acme", "", &[], json!({}));
    let r = a
        .call(
            Some(&a.pki.client),
            "GET",
            "/v1/docs/doc-1",
            Some(&alice_a),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The answer lands in Redis (written after the response, off the request path) ...
    eventually(
        "the shared answer in Redis",
        std::time::Duration::from_secs(3),
        || async { redis.cmd(&["DBSIZE"]) == 1 },
    )
    .await;
    // ... and replica b, which has never asked, answers from it.
    let r = b
        .call(
            Some(&b.pki.client),
            "GET",
            "/v1/docs/doc-1",
            Some(&alice_b),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "b never asked the service");
}
