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

/// The curl commands the demo prints, for a gateway at `addr` with certificates in `certs`.
pub fn curl_commands(addr: SocketAddr, admin: SocketAddr, certs: &std::path::Path) -> String {
    let c = certs.display();
    let port = addr.port();
    format!(
        r#"Portcullis demo is running: gateway https://localhost:{port} (mTLS required), admin http://{admin}
Certificates: {c} (made by `portcullis dev-certs`; delete the folder to get new ones)

Try these (each response carries X-Request-Id; errors are application/problem+json):

  # an account, as the user-facing client acme-web (200), with your own request id
  curl -si --cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem \
    https://localhost:{port}/v1/accounts/acc-100 -H 'X-Request-Id: demo-123'

  # a payment (201); the body reaches the backend byte for byte
  curl -si --cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem \
    https://localhost:{port}/v1/payments -H 'Content-Type: application/json' \
    -d '{{"from_account": "acc-100", "to_account": "acc-200", "amount": "125.40", "currency": "EUR"}}'

  # the daily report: only SPIFFE services may call it — the reconciler gets 200 ...
  curl -si --cacert {c}/ca.pem --cert {c}/service.pem --key {c}/service-key.pem \
    https://localhost:{port}/v1/reports/acme/daily
  # ... and acme-web gets 403 naming the rule
  curl -si --cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem \
    https://localhost:{port}/v1/reports/acme/daily

  # refused handshakes: no client certificate, and one from a CA the gateway does not trust
  curl -si --cacert {c}/ca.pem https://localhost:{port}/v1/accounts/acc-100
  curl -si --cacert {c}/ca.pem --cert {c}/rogue-client.pem --key {c}/rogue-client-key.pem \
    https://localhost:{port}/v1/accounts/acc-100

  # no such route (404) and wrong method (405 with Allow)
  curl -si --cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem https://localhost:{port}/v1/unknown
  curl -si --cacert {c}/ca.pem --cert {c}/client.pem --key {c}/client-key.pem -X DELETE https://localhost:{port}/v1/payments

  # metrics (handshakes by result, requests by route) and health
  curl -s http://{admin}/metrics | grep -E 'portcullis_(tls_handshakes|requests)_total'
  curl -s http://{admin}/readyz

Press Ctrl-C to stop.
"#
    )
}
