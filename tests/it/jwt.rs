//! JWT bearer authentication against a real JWKS server: forged and confused tokens, claim
//! policy, key rotation and removal, unknown-kid floods, a JWKS outage, certificate-bound
//! tokens (RFC 8705) and the `auth` route setting.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use portcullis::tls::devcerts::{DevCa, Issued, Usage};
use serde_json::{Value, json};

use crate::support::jwt::*;
use crate::support::*;

/// The `iss` of the second, stricter issuer (PS256/ES256 only, `typ: at+jwt`, `sub` required).
const STRICT_ISS: &str = "https://strict.acme.test";

/// JWKS settings (indented under `jwks:`) with a long refresh and a 30 s cooldown.
const SLOW_JWKS: &str = "      refresh: 5m\n      cooldown: 30s\n      timeout: 2s\n";
/// JWKS settings that refresh (and retry) every 200 ms.
const FAST_JWKS: &str = "      refresh: 200ms\n      cooldown: 200ms\n      timeout: 2s\n";

const ROUTES: &str = "routes:
  - name: accounts
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: main
    auth: jwt
    authz: { authenticated: true }
  - name: status
    methods: [GET]
    path: /v1/status
    cluster: main
    auth: public
";

/// `issuers:` YAML: `acme-idp` (RS256, PS256, ES256, EdDSA) and, when `strict`, `strict-idp`
/// on the same key set.
fn issuers_yaml(url: &str, jwks: &str, strict: bool) -> String {
    let mut y = format!(
        "issuers:\n  acme-idp:\n    issuer: {ISS}\n    audiences: [{AUD}]\n    jwks:\n      url: {url}\n{jwks}    algorithms: [RS256, PS256, ES256, EdDSA]\n    max_lifetime: 1h\n"
    );
    if strict {
        y.push_str(&format!(
            "  strict-idp:\n    issuer: {STRICT_ISS}\n    audiences: [{AUD}]\n    jwks:\n      url: {url}\n{jwks}    algorithms: [PS256, ES256]\n    max_lifetime: 1h\n    typ: at+jwt\n    required_claims: [sub]\n"
        ));
    }
    y
}

/// A plain-HTTP gateway (request heads up to 256 KiB, so oversized tokens reach the JWT
/// check) in front of `backend`, trusting the keys served by `jwks`.
async fn jwt_gateway(
    backend: &Backend,
    jwks: &JwksServer,
    settings: &str,
    strict: bool,
) -> Gateway {
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", backend.addr);
    let yaml = gateway_yaml(&clusters, &issuers_yaml(&jwks.url(), settings, strict)).replace(
        "    address: 127.0.0.1:0\nadmin",
        "    address: 127.0.0.1:0\n    max_header_bytes: 262144\nadmin",
    );
    Gateway::start(&yaml, ROUTES).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> Resp {
    match token {
        Some(t) => get(&gw.url(path), &[("authorization", &bearer(t))]).await,
        None => get(&gw.url(path), &[]).await,
    }
}

/// Checks a 200 that reached the backend with the token's identity; returns what the backend
/// saw.
fn assert_admitted(r: &Resp, what: &str) -> Value {
    assert_eq!(
        r.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    let h = &v["headers"];
    assert_eq!(h["x-portcullis-subject"], SUB, "{what}: {v}");
    assert_eq!(h["x-portcullis-tenant"], TENANT, "{what}: {v}");
    assert_eq!(h["x-portcullis-scopes"], SCOPE, "{what}: {v}");
    v
}

/// Checks a 401 refusal: problem+json of type `unauthorized` whose `reason` is one of
/// `reasons`, a Bearer challenge, and neither the token nor its signature echoed. Returns the
/// reason.
fn assert_refused(r: &Resp, what: &str, reasons: &[&str], token: Option<&str>) -> String {
    assert_eq!(
        r.status,
        401,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = assert_problem(r, 401);
    assert_eq!(v["type"], "urn:portcullis:problem:unauthorized", "{what}");
    let reason = v["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reasons.contains(&reason.as_str()),
        "{what}: reason {reason:?}, expected one of {reasons:?}: {v}"
    );
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("realm=\"portcullis\""),
        "{what}: {challenge}"
    );
    if token.is_some() {
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }
    if let Some(t) = token {
        let body = String::from_utf8_lossy(&r.body);
        let sig = t.rsplit('.').next().unwrap_or_default();
        for secret in [t, sig] {
            if secret.len() >= 16 {
                assert!(
                    !body.contains(secret),
                    "{what}: the token is echoed: {body}"
                );
                assert!(!challenge.contains(secret), "{what}: echoed: {challenge}");
            }
        }
    }
    reason
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let m = prom::parse(&gw.metrics().await).unwrap();
    prom::value(&m, name, labels).unwrap_or(0.0)
}

/// Waits (bounded) for `portcullis_authn_total{result}` to reach `at_least`.
async fn authn_counted(gw: &Gateway, result: &str, at_least: f64) {
    eventually(
        &format!("portcullis_authn_total{{result=\"{result}\"}} >= {at_least}"),
        Duration::from_secs(5),
        || async { metric(gw, "portcullis_authn_total", &[("result", result)]).await >= at_least },
    )
    .await;
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = get(&format!("http://{}/readyz", gw.admin), &[]).await;
    (r.status.as_u16(), r.json())
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_reach_the_backend_with_the_identity() {
    let rsa = Key::rsa("rsa-1");
    let ec = Key::p256("ec-1");
    let ed = Key::ed25519("ed-1");
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, true).await;

    let strict = claims_with(json!({ "iss": STRICT_ISS }));
    let cases = [
        (
            "RS256",
            rsa.token_alg(Algorithm::RS256, &claims()),
            "acme-idp",
        ),
        (
            "PS256",
            rsa.token_alg(Algorithm::PS256, &claims()),
            "acme-idp",
        ),
        ("ES256", ec.token(&claims()), "acme-idp"),
        ("EdDSA", ed.token(&claims()), "acme-idp"),
        (
            "PS256 on the strict issuer",
            rsa.sign_raw(
                Algorithm::PS256,
                &json!({"alg": "PS256", "typ": "at+jwt", "kid": rsa.kid}),
                &strict,
            ),
            "strict-idp",
        ),
    ];
    for (what, token, issuer) in &cases {
        // A caller-supplied identity header never reaches the backend.
        let r = get(
            &gw.url("/v1/accounts/acc-1"),
            &[
                ("authorization", &bearer(token)),
                ("x-portcullis-subject", "admin"),
                ("x-portcullis-tenant", "other-bank"),
            ],
        )
        .await;
        let v = assert_admitted(&r, what);
        assert_eq!(v["headers"]["x-portcullis-issuer"], *issuer, "{what}");
        assert_eq!(
            v["headers"]["authorization"],
            bearer(token),
            "{what}: Authorization is forwarded unchanged"
        );
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), cases.len());
    authn_counted(&gw, "ok", cases.len() as f64).await;

    // The same token again is answered from the verified-token cache.
    let hits_before = metric(&gw, "portcullis_jwt_cache_total", &[("result", "hit")]).await;
    assert_admitted(
        &call(&gw, "/v1/accounts/acc-1", Some(&cases[0].1)).await,
        "repeat",
    );
    let hits_after = metric(&gw, "portcullis_jwt_cache_total", &[("result", "hit")]).await;
    assert!(
        hits_after > hits_before,
        "cache hits {hits_before} -> {hits_after}"
    );
    assert!(metric(&gw, "portcullis_jwt_cache_total", &[("result", "miss")]).await >= 1.0);
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys", &[("issuer", "acme-idp")]).await,
        3.0
    );
}

#[tokio::test]
async fn forged_and_confused_tokens_are_refused_before_the_backend() {
    let rsa = Key::rsa("rsa-1");
    let ec = Key::p256("ec-1");
    let ed = Key::ed25519("ed-1");
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]).await;
    // The attacker's own key, served from the attacker's own JWKS server: the gateway must
    // never fetch it.
    let attacker = Key::rsa("attacker");
    let evil = JwksServer::start(&[&attacker]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, true).await;

    let c = claims();
    let rs = |kid: &str| json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let valid = rsa.token(&c);
    let mut parts = valid.split('.');
    let (h, p) = (parts.next().unwrap(), parts.next().unwrap());
    // Two valid tokens of the same key; the first is verified (and cached) before its
    // signature is swapped for the second's.
    let first = rsa.token(&claims_with(json!({"sub": "someone-else"})));
    assert_eq!(call(&gw, "/v1/accounts/a", Some(&first)).await.status, 200);
    let second_sig = valid.rsplit('.').next().unwrap().to_owned();
    let first_signing_input = first.rsplit_once('.').unwrap().0.to_owned();
    let attacker_cert = DevCa::new("Attacker").unwrap().cert_pem;

    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "alg none, unsigned",
            raw_token(
                &json!({"alg": "none", "typ": "JWT", "kid": rsa.kid}),
                &c,
                b"",
            ),
            &["alg_none"],
        ),
        (
            "HS256 keyed with the RSA public key PEM",
            {
                let secret = jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes());
                let input = format!(
                    "{}.{}",
                    b64json(&json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid})),
                    b64json(&c)
                );
                let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &secret, Algorithm::HS256)
                    .unwrap();
                format!("{input}.{sig}")
            },
            &["alg_not_allowed", "key_mismatch"],
        ),
        (
            "RS256 on an issuer that allows PS256 and ES256 only",
            rsa.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid}),
                &claims_with(json!({"iss": STRICT_ISS})),
            ),
            &["alg_not_allowed"],
        ),
        (
            "embedded jwk (CVE-2018-0114), signed by that key",
            attacker.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": rsa.kid, "jwk": attacker.jwk}),
                &c,
            ),
            &["embedded_key"],
        ),
        (
            "jku pointing at the attacker's JWKS",
            attacker.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": attacker.kid, "jku": evil.url()}),
                &c,
            ),
            &["embedded_key"],
        ),
        (
            "x5u pointing at the attacker",
            attacker.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": attacker.kid,
                        "x5u": format!("http://{}/cert.pem", evil.addr)}),
                &c,
            ),
            &["embedded_key"],
        ),
        (
            "x5c carrying a certificate",
            attacker.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": attacker.kid,
                        "x5c": [b64_std(&pem_der(&attacker_cert))]}),
                &c,
            ),
            &["embedded_key"],
        ),
        (
            "kid path traversal",
            attacker.sign_raw(Algorithm::RS256, &rs("../../../../etc/passwd"), &c),
            &["bad_kid", "unknown_kid"],
        ),
        (
            "kid SQL injection",
            attacker.sign_raw(Algorithm::RS256, &rs("' OR 1=1 --"), &c),
            &["bad_kid", "unknown_kid"],
        ),
        (
            "unknown kid signed by an unknown key",
            attacker.token(&c),
            &["unknown_kid"],
        ),
        (
            "ES256 with the RSA key's kid",
            ec.sign_raw(
                Algorithm::ES256,
                &json!({"alg": "ES256", "typ": "JWT", "kid": rsa.kid}),
                &c,
            ),
            &["key_mismatch"],
        ),
        (
            "EdDSA with the EC key's kid",
            ed.sign_raw(
                Algorithm::EdDSA,
                &json!({"alg": "EdDSA", "typ": "JWT", "kid": ec.kid}),
                &c,
            ),
            &["key_mismatch"],
        ),
        (
            "ES256 with r = s = 0 (CVE-2022-21449)",
            raw_token(
                &json!({"alg": "ES256", "typ": "JWT", "kid": ec.kid}),
                &c,
                &[0u8; 64],
            ),
            &["bad_signature"],
        ),
        (
            "signature stripped",
            format!("{h}.{p}."),
            &["malformed", "bad_signature"],
        ),
        ("two parts only", format!("{h}.{p}"), &["malformed"]),
        (
            "the signature of another token",
            format!("{first_signing_input}.{second_sig}"),
            &["bad_signature"],
        ),
        (
            "a claims part changed after signing",
            {
                let forged = b64json(&claims_with(json!({"sub": "admin"})));
                format!("{h}.{forged}.{second_sig}")
            },
            &["bad_signature"],
        ),
        ("not a JWT", "hello.world.x".to_owned(), &["malformed"]),
    ];

    let mut seen = BTreeSet::new();
    for (what, token, reasons) in &cases {
        let r = call(&gw, "/v1/accounts/acc-1", Some(token)).await;
        let reason = assert_refused(&r, what, reasons, Some(token));
        let body = String::from_utf8_lossy(&r.body);
        for kid in ["passwd", "OR 1=1", "attacker", "rsa-1"] {
            assert!(!body.contains(kid), "{what}: the kid is echoed: {body}");
        }
        seen.insert(reason);
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "only the one valid token reached the backend"
    );
    assert_eq!(evil.hits(), 0, "the gateway fetched an attacker's URL");
    for reason in &seen {
        authn_counted(&gw, reason, 1.0).await;
    }
    // The legitimate token still works after all that.
    assert_admitted(
        &call(&gw, "/v1/accounts/acc-1", Some(&valid)).await,
        "valid",
    );
}

#[tokio::test]
async fn claims_outside_the_issuer_policy_are_refused() {
    let rsa = Key::rsa("rsa-1");
    let ec = Key::p256("ec-1");
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, true).await;
    let t = now();
    let strict = |changes: Value, typ: &str| {
        let mut c = claims_with(changes);
        c["iss"] = json!(STRICT_ISS);
        ec.sign_raw(
            Algorithm::ES256,
            &json!({"alg": "ES256", "typ": typ, "kid": ec.kid}),
            &c,
        )
    };

    let refused: Vec<(&str, String, &str)> = vec![
        (
            "expired beyond the leeway",
            rsa.token(&claims_with(json!({"iat": t - 900, "exp": t - 120}))),
            "expired",
        ),
        (
            "no exp",
            rsa.token(&claims_with(json!({"exp": null}))),
            "missing_claim",
        ),
        (
            "nbf beyond the leeway",
            rsa.token(&claims_with(json!({"nbf": t + 120, "exp": t + 900}))),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            rsa.token(&claims_with(json!({"iat": t + 300, "exp": t + 900}))),
            "issued_in_future",
        ),
        (
            "wrong issuer",
            rsa.token(&claims_with(json!({"iss": "https://evil.example"}))),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            rsa.token(&claims_with(json!({"aud": "other-api"}))),
            "wrong_audience",
        ),
        (
            "audience list without ours",
            rsa.token(&claims_with(json!({"aud": ["other-api", "third-api"]}))),
            "wrong_audience",
        ),
        (
            "24 h lifetime on a 1 h maximum",
            rsa.token(&claims_with(json!({"iat": t, "exp": t + 86_400}))),
            "lifetime",
        ),
        (
            "24 h lifetime without iat",
            rsa.token(&claims_with(json!({"iat": null, "exp": t + 86_400}))),
            "lifetime",
        ),
        (
            "unknown crit header",
            rsa.sign_raw(
                Algorithm::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": rsa.kid,
                        "crit": ["x-custom"], "x-custom": true}),
                &claims(),
            ),
            "crit",
        ),
        (
            "strict issuer: typ JWT instead of at+jwt",
            strict(json!({}), "JWT"),
            "wrong_typ",
        ),
        (
            "strict issuer: no sub",
            strict(json!({"sub": null}), "at+jwt"),
            "missing_claim",
        ),
    ];
    for (what, token, reason) in &refused {
        let r = call(&gw, "/v1/accounts/acc-1", Some(token)).await;
        assert_refused(&r, what, &[reason], Some(token));
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );

    // Controls: inside the 30 s leeway, an audience list with ours, the strict issuer's typ.
    let admitted: Vec<(&str, String)> = vec![
        (
            "expired 10 s ago",
            rsa.token(&claims_with(json!({"iat": t - 600, "exp": t - 10}))),
        ),
        (
            "nbf in 10 s",
            rsa.token(&claims_with(json!({"nbf": t + 10}))),
        ),
        (
            "audience list with ours",
            rsa.token(&claims_with(json!({"aud": ["other-api", AUD]}))),
        ),
        ("strict issuer, typ at+jwt", strict(json!({}), "at+jwt")),
    ];
    for (what, token) in &admitted {
        assert_admitted(&call(&gw, "/v1/accounts/acc-1", Some(token)).await, what);
    }
    for (_, _, reason) in &refused {
        authn_counted(&gw, reason, 1.0).await;
    }
}

#[tokio::test]
async fn tokens_in_the_query_string_and_oversized_tokens_are_refused() {
    let rsa = Key::rsa("rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, false).await;
    let token = rsa.token(&claims());

    let r = call(&gw, &format!("/v1/accounts/a?access_token={token}"), None).await;
    assert_refused(
        &r,
        "token in the query only",
        &["token_in_query"],
        Some(&token),
    );
    let r = call(
        &gw,
        &format!("/v1/accounts/a?x=1&access_token={token}"),
        Some(&token),
    )
    .await;
    assert_refused(
        &r,
        "token in the query and a valid header",
        &["token_in_query"],
        Some(&token),
    );

    // 100 KiB of token: refused before parsing (the listener admits 256 KiB heads).
    let big = format!(
        "{}.{}.{}",
        "eyJhbGciOiJSUzI1NiJ9",
        "A".repeat(100 * 1024),
        "AAAA"
    );
    let r = call(&gw, "/v1/accounts/a", Some(&big)).await;
    assert_refused(&r, "100 KiB token", &["too_large"], Some(&big));

    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    // Control: the same token in the header only is fine.
    assert_admitted(&call(&gw, "/v1/accounts/a", Some(&token)).await, "header");
    authn_counted(&gw, "token_in_query", 2.0).await;
    authn_counted(&gw, "too_large", 1.0).await;
}

#[tokio::test]
async fn a_request_without_a_token_gets_a_bare_challenge_and_public_routes_need_none() {
    let rsa = Key::rsa("rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, false).await;

    let r = call(&gw, "/v1/accounts/a", None).await;
    assert_refused(&r, "no token", &["missing"], None);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(!challenge.contains("error="), "{challenge}");
    let r = get(
        &gw.url("/v1/accounts/a"),
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(r.status, 401, "a Basic credential is not a bearer token");
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    authn_counted(&gw, "missing", 1.0).await;

    // The public route: no token needed, and no identity (nor a spoofed one) upstream.
    let r = get(&gw.url("/v1/status"), &[("x-portcullis-subject", "admin")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["headers"].get("x-portcullis-subject").is_none(), "{v}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_route_without_auth_fails_validation() {
    let dir = TempDir::new();
    let gateway = dir.write(
        "gateway.yaml",
        &gateway_yaml("  main:\n    endpoints: [\"127.0.0.1:9\"]\n", ""),
    );
    let route = "routes:\n  - name: accounts\n    methods: [GET]\n    path: /v1/accounts\n    cluster: main\n";
    dir.write("routes/routes.yaml", route);
    let err = match portcullis::config::load(&gateway, &portcullis::config::process_env) {
        Ok(_) => panic!("a route without auth must not validate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("auth"), "the error names the setting: {err}");
    // Control: the same route with `auth: public` loads.
    dir.write("routes/routes.yaml", &format!("{route}    auth: public\n"));
    if let Err(e) = portcullis::config::load(&gateway, &portcullis::config::process_env) {
        panic!("with auth the config is valid: {e}");
    }
}

#[tokio::test]
async fn a_key_published_after_start_is_picked_up_with_one_refetch() {
    let old = Key::p256("old");
    let jwks = JwksServer::start(&[&old]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, false).await;
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&old.token(&claims()))).await,
        "old",
    );
    let before = jwks.hits();

    let new = Key::rsa("new");
    jwks.set_keys(&[&old, &new]);
    let r = call(&gw, "/v1/accounts/a", Some(&new.token(&claims()))).await;
    assert_admitted(&r, "a token of the new key, on its first use");
    assert_eq!(jwks.hits(), before + 1, "exactly one refetch");
    // Both keys now work, with no further fetches.
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&old.token(&claims()))).await,
        "old",
    );
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&new.token(&claims()))).await,
        "new",
    );
    assert_eq!(jwks.hits(), before + 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_one_refetch_per_cooldown() {
    let known = Key::ed25519("known");
    let jwks = JwksServer::start(&[&known]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, SLOW_JWKS, false).await;
    let before = jwks.hits();
    assert!(before >= 1, "the key set is fetched at start");

    let unknown = Key::ed25519("unknown");
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let c = claims();
    let tokens: Vec<String> = (0..1000)
        .map(|i| unknown.with_kid(&format!("k{i:04}-{salt:08x}")).token(&c))
        .collect();
    let url = gw.url("/v1/accounts/a");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in tokens.chunks(20) {
        let chunk = chunk.to_vec();
        let url = url.clone();
        tasks.spawn(async move {
            let client = client::<Full<Bytes>>();
            let mut out = Vec::new();
            for t in chunk {
                let req = Request::get(&url)
                    .header("authorization", bearer(&t))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let res = client.request(req).await.unwrap();
                let status = res.status().as_u16();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                let reason = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_owned));
                out.push((status, reason));
            }
            out
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.extend(r.unwrap());
    }
    let took = started.elapsed();
    assert_eq!(results.len(), 1000);
    for (status, reason) in &results {
        assert_eq!(*status, 401);
        assert_eq!(reason.as_deref(), Some("unknown_kid"));
    }
    assert!(
        jwks.hits() <= before + 1,
        "{} JWKS requests during the flood (cooldown 30 s allows 1)",
        jwks.hits() - before
    );
    assert!(took < Duration::from_secs(30), "the flood took {took:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
    authn_counted(&gw, "unknown_kid", 1000.0).await;
    // The known key is unaffected.
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&known.token(&claims()))).await,
        "known",
    );
}

#[tokio::test]
async fn while_the_jwks_endpoint_is_down_known_keys_keep_working_and_readyz_says_stale() {
    let key = Key::p256("ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, FAST_JWKS, false).await;
    let fresh = |sub: &str| key.token(&claims_with(json!({ "sub": sub })));
    assert_eq!(
        call(&gw, "/v1/accounts/a", Some(&fresh("u0"))).await.status,
        200
    );
    let (status, v) = readyz(&gw).await;
    assert_eq!((status, &v["jwks"]["acme-idp"]), (200, &json!("ok")), "{v}");

    for (what, breaks) in [
        ("500", JwksServer::fail_with_500 as fn(&JwksServer)),
        ("closed connections", JwksServer::fail_by_closing),
    ] {
        let errors = metric(
            &gw,
            "portcullis_jwks_fetches_total",
            &[("issuer", "acme-idp"), ("result", "error")],
        )
        .await;
        breaks(&jwks);
        let hits = jwks.hits();
        eventually(
            &format!("fetches to fail with {what}"),
            Duration::from_secs(10),
            || async {
                jwks.hits() >= hits + 2
                    && metric(
                        &gw,
                        "portcullis_jwks_fetches_total",
                        &[("issuer", "acme-idp"), ("result", "error")],
                    )
                    .await
                        >= errors + 2.0
            },
        )
        .await;
        eventually("readyz to say stale", Duration::from_secs(10), || async {
            readyz(&gw).await.1["jwks"]["acme-idp"] == "stale"
        })
        .await;
        let (status, v) = readyz(&gw).await;
        assert_eq!(status, 200, "stale keys still serve: {v}");
        assert_eq!(
            metric(&gw, "portcullis_jwks_stale", &[("issuer", "acme-idp")]).await,
            1.0
        );
        // New (uncached) tokens of the known key keep working.
        let r = call(&gw, "/v1/accounts/a", Some(&fresh(what))).await;
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    jwks.restore();
    eventually(
        "readyz to say ok again",
        Duration::from_secs(10),
        || async {
            let (status, v) = readyz(&gw).await;
            status == 200 && v["jwks"]["acme-idp"] == "ok"
        },
    )
    .await;
    assert_eq!(
        metric(&gw, "portcullis_jwks_stale", &[("issuer", "acme-idp")]).await,
        0.0
    );
    assert_eq!(
        call(&gw, "/v1/accounts/a", Some(&fresh("u9"))).await.status,
        200
    );
}

#[tokio::test]
async fn without_any_keys_readyz_is_503_and_tokens_are_refused_until_the_jwks_answers() {
    let key = Key::ed25519("ed-1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.fail_with_500();
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, FAST_JWKS, false).await;
    let token = key.token(&claims());

    let (status, v) = readyz(&gw).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["jwks"]["acme-idp"], "unavailable", "{v}");
    // The token may be fine: the gateway cannot check it yet, so 503 (not 401).
    let r = call(&gw, "/v1/accounts/a", Some(&token)).await;
    let v = assert_problem(&r, 503);
    assert_eq!(v["type"], "urn:portcullis:problem:authn-unavailable", "{v}");
    assert_eq!(v["reason"], "no_keys", "{v}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);

    jwks.restore();
    eventually("readyz to turn ok", Duration::from_secs(10), || async {
        let (status, v) = readyz(&gw).await;
        status == 200 && v["jwks"]["acme-idp"] == "ok"
    })
    .await;
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&token)).await,
        "after recovery",
    );
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_working_at_the_next_refresh() {
    let stays = Key::p256("stays");
    let goes = Key::ed25519("goes");
    let jwks = JwksServer::start(&[&stays, &goes]).await;
    let b = Backend::start("main").await;
    let gw = jwt_gateway(&b, &jwks, FAST_JWKS, false).await;
    let token = goes.token(&claims());
    // Accepted twice: verified, then from the cache.
    assert_admitted(&call(&gw, "/v1/accounts/a", Some(&token)).await, "before");
    assert_admitted(&call(&gw, "/v1/accounts/a", Some(&token)).await, "cached");

    jwks.set_keys(&[&stays]);
    eventually(
        "the removed key's token to be refused",
        Duration::from_secs(10),
        || async { call(&gw, "/v1/accounts/a", Some(&token)).await.status == 401 },
    )
    .await;
    let r = call(&gw, "/v1/accounts/a", Some(&token)).await;
    assert_refused(&r, "removed key", &["unknown_kid"], Some(&token));
    assert_admitted(
        &call(&gw, "/v1/accounts/a", Some(&stays.token(&claims()))).await,
        "the remaining key",
    );
}

#[tokio::test]
async fn a_short_cache_control_max_age_shortens_the_refresh() {
    let key = Key::p256("ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_max_age(Some(1));
    let b = Backend::start("main").await;
    // Refresh 1 h: only the max-age makes the gateway come back.
    let settings = "      refresh: 1h\n      cooldown: 200ms\n      timeout: 2s\n";
    let gw = jwt_gateway(&b, &jwks, settings, false).await;
    let start = jwks.hits();
    eventually(
        "two refreshes driven by max-age=1",
        Duration::from_secs(10),
        || async { jwks.hits() >= start + 2 },
    )
    .await;
    // Without Cache-Control the 1 h refresh applies again: after the first answer without
    // it, quiet.
    jwks.set_max_age(None);
    eventually(
        "a key set served without max-age",
        Duration::from_secs(10),
        || async { jwks.log().last() == Some(&(Mode::Serve, None)) },
    )
    .await;
    let settled = jwks.hits();
    // Showing that something does not happen takes time: more than one max-age period.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jwks.hits(), settled, "no refresh before the hour");
    assert_eq!(
        call(&gw, "/v1/accounts/a", Some(&key.token(&claims())))
            .await
            .status,
        200
    );
}

/// Certificates for the RFC 8705 test: a CA, the server, and two client certificates.
struct Pki {
    dir: TempDir,
    ca: DevCa,
    alice: Issued,
    mallory: Issued,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new();
        let ca = DevCa::new("Test CA").unwrap();
        let server = ca
            .issue(
                "localhost",
                &["localhost", "127.0.0.1"],
                Usage::Server,
                1,
                30,
            )
            .unwrap();
        let alice = ca.issue("acme-web", &[], Usage::Client, 2, 30).unwrap();
        let mallory = ca.issue("mallory", &[], Usage::Client, 3, 30).unwrap();
        dir.write("ca.pem", &ca.cert_pem);
        dir.write("server.pem", &server.cert_pem);
        dir.write("server-key.pem", &server.key_pem);
        Self {
            dir,
            ca,
            alice,
            mallory,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

const TLS_ROUTES: &str = "routes:
  - name: accounts
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: main
    auth: jwt
    authz: { authenticated: true }
  - name: payments
    methods: [GET]
    path: /v1/payments
    cluster: main
    auth: jwt
    authz: { authenticated: true }
    jwt:
      require_bound_tokens: true
  - name: reports
    methods: [GET]
    path: /v1/reports
    cluster: main
    auth: jwt_and_mtls
    mtls:
      any_of:
        - cn: acme-web
";

async fn tls_get(gw: &Gateway, pki: &Pki, cert: Option<&Issued>, path: &str, token: &str) -> Resp {
    let mut c = crate::tls::connect(
        gw.addr,
        crate::tls::client_config(&pki.ca.cert_pem, cert, &[b"http/1.1"]),
    )
    .await
    .unwrap();
    c.get(path, &[("authorization", &bearer(token))])
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn certificate_bound_tokens_are_accepted_only_from_their_certificate() {
    let pki = Pki::new();
    let key = Key::p256("ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let b = Backend::start("main").await;
    let clusters = format!("  main:\n    endpoints: [\"{}\"]\n", b.addr);
    let tls = format!(
        "    tls:\n      certificates:\n        - cert: {}\n          key: {}\n      client_auth: optional\n      client_ca: [{}]\n",
        pki.path("server.pem"),
        pki.path("server-key.pem"),
        pki.path("ca.pem")
    );
    let yaml = gateway_yaml(&clusters, &issuers_yaml(&jwks.url(), SLOW_JWKS, false)).replace(
        "    address: 127.0.0.1:0\nadmin",
        &format!("    address: 127.0.0.1:0\n{tls}admin"),
    );
    let gw = Gateway::start(&yaml, TLS_ROUTES).await;

    let bound = key.token(&claims_with(
        json!({"cnf": {"x5t#S256": cert_thumbprint(&pki.alice.cert_pem)}}),
    ));
    let unbound = key.token(&claims());
    let accounts = "/v1/accounts/acc-1";

    assert_admitted(
        &tls_get(&gw, &pki, Some(&pki.alice), accounts, &bound).await,
        "bound token from its certificate",
    );
    let r = tls_get(&gw, &pki, Some(&pki.mallory), accounts, &bound).await;
    assert_refused(
        &r,
        "bound token, another certificate",
        &["cert_mismatch"],
        Some(&bound),
    );
    let r = tls_get(&gw, &pki, None, accounts, &bound).await;
    assert_refused(
        &r,
        "bound token, no certificate",
        &["cert_mismatch"],
        Some(&bound),
    );
    // A route that requires bound tokens.
    let r = tls_get(&gw, &pki, Some(&pki.alice), "/v1/payments", &unbound).await;
    assert_refused(
        &r,
        "unbound token on payments",
        &["unbound_token"],
        Some(&unbound),
    );
    assert_admitted(
        &tls_get(&gw, &pki, Some(&pki.alice), "/v1/payments", &bound).await,
        "bound token on payments",
    );
    // jwt_and_mtls: both must hold.
    assert_admitted(
        &tls_get(&gw, &pki, Some(&pki.alice), "/v1/reports", &unbound).await,
        "reports with the right certificate and a token",
    );
    let r = tls_get(&gw, &pki, Some(&pki.mallory), "/v1/reports", &unbound).await;
    let v = assert_problem(&r, 403);
    assert_eq!(v["type"], "urn:portcullis:problem:mtls-identity-required");
    let r = tls_get(&gw, &pki, Some(&pki.alice), "/v1/reports", "not-a-token").await;
    assert_eq!(r.status, 401);

    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
    authn_counted(&gw, "cert_mismatch", 2.0).await;
    authn_counted(&gw, "unbound_token", 1.0).await;
}
