//! `portcullis demo`: the reference finance API of PRODUCT.md, self-contained on loopback.
//!
//! Starts the embedded backends ([`backend`]), loads the embedded `policies/demo/` config with
//! the backends' addresses filled in, and runs the gateway in front of them.

pub mod backend;

use std::net::SocketAddr;

use crate::config::{ConfigErrors, SourceFile};

/// The demo gateway file, embedded at build time.
pub const GATEWAY_YAML: &str = include_str!("../../policies/demo/gateway.yaml");
/// The demo routes, embedded at build time.
pub const ROUTES_YAML: &str = include_str!("../../policies/demo/routes/finance.yaml");

/// Addresses of the demo backends.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// Accounts service.
    pub accounts: SocketAddr,
    /// Payments service.
    pub payments: SocketAddr,
    /// Reports service.
    pub reports: SocketAddr,
}

/// Starts the three demo backends on loopback ports chosen by the OS.
///
/// # Errors
/// When a port cannot be bound.
pub async fn start_backends() -> std::io::Result<Backends> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(Backends {
        accounts: backend::spawn(any).await?,
        payments: backend::spawn(any).await?,
        reports: backend::spawn(any).await?,
    })
}

/// Loads the embedded demo config pointing at `backends`.
///
/// # Errors
/// Only if the embedded config is broken (a test guards against that).
pub fn config(
    backends: Backends,
    certs: &std::path::Path,
) -> Result<crate::config::Checked, ConfigErrors> {
    let certs = certs.display().to_string();
    let env = move |name: &str| match name {
        "DEMO_CERTS" => Some(certs.clone()),
        "DEMO_ACCOUNTS_ADDR" => Some(backends.accounts.to_string()),
        "DEMO_PAYMENTS_ADDR" => Some(backends.payments.to_string()),
        "DEMO_REPORTS_ADDR" => Some(backends.reports.to_string()),
        other => std::env::var(other).ok(),
    };
    let gateway = SourceFile {
        name: "policies/demo/gateway.yaml".into(),
        text: GATEWAY_YAML.to_owned(),
    };
    let routes = SourceFile {
        name: "policies/demo/routes/finance.yaml".into(),
        text: ROUTES_YAML.to_owned(),
    };
    crate::config::load_sources(&gateway, None, Some(vec![routes]), &env)
}

/// Bearer tokens of the reference scenario's users, signed with the development issuer key.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// `alice@acme`: tenant `acme`, scopes `accounts:read payments:write`, owns acc-100, acc-101.
    pub alice: String,
    /// `bob@globex`: tenant `globex`, scope `accounts:read`, owns acc-200.
    pub bob: String,
    /// Alice's token, expired an hour ago.
    pub expired: String,
}

/// The demo issuer's `iss`.
pub const DEMO_ISSUER: &str = "https://idp.acme.example";
/// The demo API's audience.
pub const DEMO_AUDIENCE: &str = "finance-api";

/// Signs the demo users' tokens (valid for one hour) with `certs/jwt-es256-key.pem`.
///
/// # Errors
/// When the key cannot be read.
pub fn tokens(certs: &std::path::Path) -> Result<Tokens, String> {
    use crate::authn::devtools::{DevKey, TokenSpec, claims};
    use serde_json::json;
    let key = DevKey::read(&certs.join("jwt-es256-key.pem"))?;
    let user = |sub: &str, tenant: &str, scope: &str, accounts: &[&str]| {
        let mut extra = serde_json::Map::new();
        extra.insert("accounts".into(), json!(accounts));
        claims(&TokenSpec {
            iss: DEMO_ISSUER,
            aud: DEMO_AUDIENCE,
            sub: Some(sub),
            tenant: Some(tenant),
            scope: Some(scope),
            ttl: 3600,
            cnf_cert_der: None,
            extra,
        })
    };
    let alice = user(
        "alice@acme",
        "acme",
        "accounts:read payments:write",
        &["acc-100", "acc-101"],
    );
    let bob = user("bob@globex", "globex", "accounts:read", &["acc-200"]);
    let mut expired = alice.clone();
    for (claim, shift) in [("iat", 7200), ("nbf", 7200), ("exp", 7200)] {
        if let Some(v) = expired.get(claim).and_then(serde_json::Value::as_i64) {
            expired[claim] = json!(v - shift);
        }
    }
    let sign = |c: &serde_json::Value| key.sign("ES256", Some("jwt-es256"), c);
    Ok(Tokens {
        alice: sign(&alice)?,
        bob: sign(&bob)?,
        expired: sign(&expired)?,
    })
}

/// The curl commands the demo prints, for a gateway at `addr` with certificates in `certs`.
pub fn curl_commands(
    addr: SocketAddr,
    admin: SocketAddr,
    certs: &std::path::Path,
    tokens: &Tokens,
) -> String {
    let c = certs.display();
    let port = addr.port();
    let (alice, bob, expired) = (&tokens.alice, &tokens.bob, &tokens.expired);
    format!(
        r#"Portcullis demo is running: gateway https://localhost:{port} (mTLS required), admin http://{admin}
Certificates and token keys: {c} (made by `portcullis dev-certs`; delete the folder to get new ones)

Users bring a bearer token from the demo issuer (valid for one hour; restart the demo for new ones):

  export ALICE='{alice}'
  export BOB='{bob}'
  export EXPIRED='{expired}'
  export CERTS='--cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem'

Try these (each response carries X-Request-Id; errors are application/problem+json):

  # an account, as alice through the user-facing client acme-web (200), with your own request id
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-100     -H "Authorization: Bearer $ALICE" -H 'X-Request-Id: demo-123'

  # a payment (201); the body reaches the backend byte for byte
  curl -si $CERTS https://localhost:{port}/v1/payments -H "Authorization: Bearer $ALICE"     -H 'Content-Type: application/json'     -d '{{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.40", "currency": "EUR"}}'

  # the payment schema: amounts are decimal strings with the currency's scale (EUR: 2) — 422
  # with an `errors` list naming /amount; a JSON number, `1e3` or a 4th decimal are refused too
  curl -si $CERTS https://localhost:{port}/v1/payments -H "Authorization: Bearer $ALICE"     -H 'Content-Type: application/json'     -d '{{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.401", "currency": "EUR"}}'

  # bob's view of his account (200); the backend sees X-Portcullis-Subject/-Tenant/-Scopes
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-200 -H "Authorization: Bearer $BOB"

  # object ownership (BOLA): alice may not read bob's account, nor pay from it — 404, so ids
  # cannot be probed; bob's token lacks payments:write — 403 naming the scope
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-200 -H "Authorization: Bearer $ALICE"
  curl -si $CERTS https://localhost:{port}/v1/payments -H "Authorization: Bearer $ALICE" \
    -H 'Content-Type: application/json' \
    -d '{{"from_account": "acc-200", "to_account": "acc-100", "amount": "125.40", "currency": "EUR"}}'
  curl -si $CERTS https://localhost:{port}/v1/payments -H "Authorization: Bearer $BOB" \
    -H 'Content-Type: application/json' \
    -d '{{"from_account": "acc-200", "to_account": "acc-100", "amount": "1.00", "currency": "EUR"}}'

  # globex is on the free tier (5 at once, then 10 a minute): the loop runs into 429, and the
  # refusal carries Retry-After and the RateLimit-Policy / RateLimit fields
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' $CERTS https://localhost:{port}/v1/accounts/acc-200 -H "Authorization: Bearer $BOB"; done; echo
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-200 -H "Authorization: Bearer $BOB" | grep -iE '^(HTTP|retry-after|ratelimit)'

  # no token, an expired token, a tampered token: 401 with WWW-Authenticate and the reason
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-100
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-100 -H "Authorization: Bearer $EXPIRED"
  curl -si $CERTS https://localhost:{port}/v1/accounts/acc-100 -H "Authorization: Bearer ${{ALICE%??????}}AAAAAA"

  # the daily report: only SPIFFE services may call it (mTLS, no token) — the reconciler gets 200 ...
  curl -si --cacert {c}/ca.pem --cert {c}/service.pem --key {c}/service-key.pem     https://localhost:{port}/v1/reports/acme/daily
  # ... and acme-web gets 403 naming the rule
  curl -si $CERTS https://localhost:{port}/v1/reports/acme/daily

  # refused handshakes: no client certificate, and one from a CA the gateway does not trust
  curl -si --cacert {c}/ca.pem https://localhost:{port}/v1/accounts/acc-100
  curl -si --cacert {c}/ca.pem --cert {c}/rogue-client.pem --key {c}/rogue-client-key.pem     https://localhost:{port}/v1/accounts/acc-100

  # no such route (404) and wrong method (405 with Allow)
  curl -si $CERTS https://localhost:{port}/v1/unknown
  curl -si $CERTS -X DELETE https://localhost:{port}/v1/payments

  # metrics (handshakes, requests by route, authentication results) and health
  curl -s http://{admin}/metrics | grep -E 'portcullis_(tls_handshakes|requests|authn|ratelimit_decisions)_total'
  curl -s http://{admin}/readyz

Press Ctrl-C to stop.
"#
    )
}
