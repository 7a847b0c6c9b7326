//! `portcullis explain`: the real binary against a small config; exit 0 allow, 1 deny, 2 error.

use std::process::{Command, Output};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const ROUTES: &str = r#"routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: jwt
    authz:
      scopes: { any_of: [accounts:read] }
      ownership:
        all_of:
          - path: account_id
            claim_contains: accounts
  - name: create-payment
    methods: [POST]
    path: /v1/payments
    cluster: payments
    auth: jwt
    authz:
      scopes: { all_of: [payments:write] }
      ownership:
        all_of:
          - body: /from_account
            claim_contains: accounts
  - name: get-ledger
    methods: [GET]
    path: /v1/ledgers/{ledger_id}
    cluster: accounts
    auth: jwt
    authz:
      ownership:
        all_of:
          - path: ledger_id
            redis: { key: "owner:{tenant}:ledgers" }
"#;

const ALICE: &str = r#"{"sub":"alice@acme","tenant":"acme","scope":"accounts:read payments:write","accounts":["acc-100"]}"#;

/// A config dir: two clusters, one issuer (an empty JWKS: explain needs no keys), Redis on a
/// closed port (explain must not need it when lookups are answered).
fn config() -> TempDir {
    let dir = TempDir::new();
    let clusters = "  accounts:\n    endpoints: [\"127.0.0.1:9\"]\n  payments:\n    endpoints: [\"127.0.0.1:9\"]\n";
    let extra = format!(
        "issuers:\n  acme-idp:\n    issuer: https://idp.acme.example\n    audiences: [finance-api]\n    jwks: {{ file: jwks.json }}\n    algorithms: [ES256]\n    required_claims: [sub, tenant]\nredis:\n  url: redis://{}/0\n",
        closed_port()
    );
    dir.write("jwks.json", r#"{"keys":[]}"#);
    dir.write("gateway.yaml", &gateway_yaml(clusters, &extra));
    dir.write("routes/routes.yaml", ROUTES);
    dir
}

fn explain(dir: &TempDir, args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(BIN)
        .arg("explain")
        .arg("--config")
        .arg(dir.path().join("gateway.yaml"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn alice_reading_her_account_is_allowed_and_every_check_is_listed() {
    let dir = config();
    let (code, text) = explain(
        &dir,
        &[
            "--method",
            "GET",
            "--path",
            "/v1/accounts/acc-100",
            "--claims",
            ALICE,
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("route: get-account (cluster accounts, auth jwt)"),
        "{text}"
    );
    assert!(text.contains("✔ token: issuer acme-idp"), "{text}");
    assert!(
        text.contains("✔ scopes: needs any of [accounts:read]"),
        "{text}"
    );
    assert!(
        text.contains("✔ ownership: path parameter `account_id` claim_contains accounts → owned"),
        "{text}"
    );
    assert!(text.contains("object ids: acc-100"), "{text}");
    assert!(text.contains("decision: allow"), "{text}");
    assert!(!text.contains('✘'), "{text}");
}

#[test]
fn alice_paying_from_someone_elses_account_is_denied_by_the_ownership_rule() {
    let dir = config();
    let body = dir.write(
        "payment.json",
        r#"{"from_account":"acc-200","amount":"10.00"}"#,
    );
    let (code, text) = explain(
        &dir,
        &[
            "--method",
            "POST",
            "--path",
            "/v1/payments",
            "--claims",
            ALICE,
            "--body",
            body.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("✔ scopes: needs all of [payments:write]"),
        "{text}"
    );
    assert!(
        text.contains(
            "✘ ownership: body field `/from_account` claim_contains accounts → not_owned"
        ),
        "{text}"
    );
    assert!(text.contains("object ids: acc-200"), "{text}");
    assert!(text.contains("decision: deny (ownership, 404)"), "{text}");

    // The same payment from her own account passes.
    let own = dir.write("own.json", r#"{"from_account":"acc-100"}"#);
    let (code, text) = explain(
        &dir,
        &[
            "--method",
            "POST",
            "--path",
            "/v1/payments",
            "--claims",
            ALICE,
            "--body",
            own.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("decision: allow"), "{text}");
}

#[test]
fn no_route_and_wrong_method_are_denials_and_bad_input_is_exit_2() {
    let dir = config();
    let (code, text) = explain(&dir, &["--method", "GET", "--path", "/v1/nothing"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("route: none (nothing matches /v1/nothing)"),
        "{text}"
    );
    assert!(text.contains("decision: deny (routing, 404)"), "{text}");

    let (code, text) = explain(&dir, &["--method", "DELETE", "--path", "/v1/payments"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("allowed: POST"), "{text}");
    assert!(text.contains("decision: deny (routing, 405)"), "{text}");

    // No claims on a token route: the request carries no token.
    let (code, text) = explain(&dir, &["--method", "GET", "--path", "/v1/accounts/acc-100"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("decision: deny (token, 401)"), "{text}");

    for bad in [
        vec![
            "--method",
            "GET",
            "--path",
            "/v1/accounts/acc-100",
            "--claims",
            "[1]",
        ],
        vec!["--method", "GET", "--path", "/x", "--issuer", "nope"],
        vec![
            "--method",
            "GET",
            "--path",
            "/x",
            "--lookup",
            "redis onlykey=yes",
        ],
    ] {
        let (code, text) = explain(&dir, &bad);
        assert_eq!(code, 2, "{bad:?}: {text}");
    }
    let missing = TempDir::new();
    let (code, text) = explain(&missing, &["--method", "GET", "--path", "/x"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot read the gateway file"), "{text}");
}

#[test]
fn lookups_are_answered_offline_and_unanswered_ones_deny() {
    let dir = config();
    let args = |extra: &[&'static str]| {
        let mut v = vec![
            "--method",
            "GET",
            "--path",
            "/v1/ledgers/led-1",
            "--claims",
            ALICE,
        ];
        v.extend_from_slice(extra);
        v
    };
    let (code, text) = explain(
        &dir,
        &args(&["--lookup", "redis owner:acme:ledgers led-1=yes"]),
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("✔ ownership: path parameter `ledger_id` redis lookup → owned"),
        "{text}"
    );
    assert!(
        text.contains("redis owner:acme:ledgers led-1 → yes"),
        "{text}"
    );

    let (code, text) = explain(
        &dir,
        &args(&["--lookup", "redis owner:acme:ledgers led-1=no"]),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("→ not_owned"), "{text}");

    let (code, text) = explain(&dir, &args(&["--offline"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("→ lookup_error"), "{text}");
    assert!(
        text.contains("--lookup 'redis owner:acme:ledgers led-1=yes'"),
        "{text}"
    );
    assert!(text.contains("decision: deny (ownership, 404)"), "{text}");
}

#[test]
fn client_certificates_must_chain_to_the_listener_ca_and_match_the_route() {
    let dir = TempDir::new();
    let certs = dir.path().join("certs");
    portcullis::tls::devcerts::write_dev_certs(&certs).unwrap();
    let c = |f: &str| certs.join(f).display().to_string();
    let tls = format!(
        "    tls:\n      certificates:\n        - cert: {}\n          key: {}\n      client_auth: required\n      client_ca: [{}]\n      crl: [{}]\n",
        c("server.pem"),
        c("server-key.pem"),
        c("ca.pem"),
        c("crl.pem")
    );
    let yaml = gateway_yaml("  reports:\n    endpoints: [\"127.0.0.1:9\"]\n", "").replace(
        "    address: 127.0.0.1:0\nadmin",
        &format!("    address: 127.0.0.1:0\n{tls}admin"),
    );
    dir.write("gateway.yaml", &yaml);
    dir.write(
        "routes/routes.yaml",
        "routes:\n  - name: daily-report\n    methods: [GET]\n    path: /v1/reports/{tenant_id}/daily\n    cluster: reports\n    auth: mtls\n    mtls:\n      any_of:\n        - uri: \"spiffe://acme.internal/*\"\n",
    );
    let with = |cert: Option<&str>| {
        let mut v = vec![
            "--method".to_owned(),
            "GET".to_owned(),
            "--path".to_owned(),
            "/v1/reports/acme/daily".to_owned(),
        ];
        if let Some(f) = cert {
            v.extend(["--client-cert".to_owned(), c(f)]);
        }
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        explain(&dir, &refs)
    };

    let (code, text) = with(Some("service.pem"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("✔ certificate: trusted by listener `public`"),
        "{text}"
    );
    assert!(
        text.contains("✔ mtls: needs uri spiffe://acme.internal/* → matched by spiffe://acme.internal/reconciler"),
        "{text}"
    );

    // The right SPIFFE ID from the wrong CA never gets past the handshake.
    let (code, text) = with(Some("rogue-client.pem"));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("decision: deny (certificate, TLS handshake refused)"),
        "{text}"
    );

    let (code, text) = with(Some("client.pem"));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("decision: deny (mtls, 403)"), "{text}");

    let (code, text) = with(None);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("decision: deny (mtls, 403)"), "{text}");
}
