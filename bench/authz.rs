//! Authorization cost per request, for a route with 3 scopes (`all_of: [a, b, c]`) and 2
//! claim-based ownership rules (`all_of`: the path parameter `account_id` must be in the
//! `accounts` array claim, and the query parameter `ledger` must match the template
//! `{tenant}-*`), measured on `authz::decide_now` (the scope, role, permission and tenant
//! checks, then the ownership rules, with the same trace the gateway builds):
//!
//! - `authz/3scopes_2owner/allow`: `GET /v1/accounts/acc-100?ledger=bench-main`, every rule
//!   passes; the same principal on every iteration, so its scope/role/permission bit sets are
//!   already computed (as in the gateway, where the principal is cached with the verified token
//!   and the bit sets are computed on its first authorization);
//! - `authz/3scopes_2owner/deny`: `GET /v1/accounts/acc-200?ledger=bench-main`, the scopes
//!   pass and the first ownership rule fails (acc-200 is not the caller's: 404), same principal;
//! - `authz/3scopes_2owner/allow_fresh_principal`: as `allow`, with a new principal each
//!   iteration (made outside the timing), so each decision also computes the caller's bit sets:
//!   what the first request of each newly verified token costs.
//!
//! Not included: routing (the `RouteMatch` is found once, before timing), the decision
//! counter and the audit record the gateway adds per decision (a deny is audited; an allowed
//! GET is not), and for the gateway's other body-reading routes, reading and parsing the body.
//! The deny case does include the `portcullis_ownership_failures_total` increment.
//!
//! The runtime is built as the gateway builds it: a gateway file and a routes file in a temp
//! dir, `config::load`, then `config::compile` (issuer `bench-idp` with an empty JWKS file; no
//! token is verified here, the principal is made from claims with `Principal::from_claims`).
//!
//! `cargo bench --bench authz` (add e.g. `-- --warm-up-time 1 --measurement-time 2` to shorten
//! it); `cargo test --all-targets` runs each benchmark once.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion};
use http::{Method, StatusCode};
use portcullis::authn::jwt::{ClaimMap, Principal};
use portcullis::authz::decide_now;
use portcullis::config::Runtime;
use portcullis::observe::metrics::Metrics;
use portcullis::proxy::RouteMatch;
use serde_json::{Map, Value, json};

const GATEWAY: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
clusters:
  accounts:
    endpoints: [\"127.0.0.1:9\"]
issuers:
  bench-idp:
    issuer: https://idp.bench.test
    audiences: [bench-api]
    jwks: { file: jwks.json }
    algorithms: [ES256]
policies: routes
log:
  level: warn
  access: false
";

const ROUTES: &str = r#"
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: jwt
    authz:
      scopes: { all_of: [a, b, c] }
      ownership:
        all_of:
          - path: account_id
            claim_contains: accounts
          - query: ledger
            template: "{tenant}-*"
"#;

const QUERY: &str = "ledger=bench-main";
const ALLOWED: &str = "/v1/accounts/acc-100";
const DENIED: &str = "/v1/accounts/acc-200";

/// A private temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-authz-bench-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(path.join("routes"))
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self(path))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.0.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The compiled runtime, from config files as the gateway reads them.
fn runtime(dir: &TempDir, metrics: &Metrics) -> Result<Runtime, String> {
    dir.write("jwks.json", r#"{"keys":[]}"#)?;
    dir.write("routes/routes.yaml", ROUTES)?;
    let gateway = dir.write("gateway.yaml", GATEWAY)?;
    let checked = portcullis::config::load(&gateway, &portcullis::config::process_env)
        .map_err(|e| format!("the bench config is invalid:\n{e}"))?;
    portcullis::config::compile(checked, metrics)
}

/// Claims like a verified bench token's: all three scopes, tenant `bench`, one account.
fn claims() -> Map<String, Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v = json!({
        "iss": "https://idp.bench.test", "aud": "bench-api", "sub": "bench", "tenant": "bench",
        "scope": "a b c", "accounts": ["acc-100"], "iat": now, "exp": now + 3600,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn principal(claims: &Map<String, Value>) -> Principal {
    Principal::from_claims(0, "bench".into(), &ClaimMap::default(), claims.clone())
}

fn route(rt: &Runtime, path: &str) -> Result<RouteMatch, String> {
    rt.router
        .find(None, &Method::GET, path)
        .map_err(|e| format!("GET {path} finds no route: {e:?}"))
}

/// One decision; `Ok(true)` allow, `Ok(false)` a 404 ownership denial, `Err` anything else.
fn decide(rt: &Runtime, m: &RouteMatch, p: &Principal, metrics: &Metrics) -> Result<bool, String> {
    let rules = m
        .route
        .authz
        .as_deref()
        .ok_or_else(|| format!("route `{}` has no authz rules", m.route.name))?;
    match decide_now(rules, &rt.authz, m, Some(p), Some(QUERY), None, metrics) {
        None => Err("decide_now would wait (a lookup?)".into()),
        Some((_, Ok(()))) => Ok(true),
        Some((_, Err(("ownership", e)))) if e.status == StatusCode::NOT_FOUND => Ok(false),
        Some((trace, Err((rule, e)))) => Err(format!(
            "unexpected denial by `{rule}` ({} {}): {:?}",
            e.status, e.detail, trace.checks
        )),
    }
}

fn run(c: &mut Criterion) -> Result<(), String> {
    let dir = TempDir::new()?;
    let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
    let rt = runtime(&dir, &metrics)?;
    let allowed = route(&rt, ALLOWED)?;
    let denied = route(&rt, DENIED)?;
    let Some(rules) = allowed.route.authz.clone() else {
        return Err("the bench route has no authz rules".into());
    };
    let claims = claims();
    let steady = principal(&claims);

    // Each case must decide as expected before it is timed (this also computes `steady`'s
    // bit sets, so the steady-state cases never pay for them).
    if !decide(&rt, &allowed, &steady, &metrics)? {
        return Err(format!("GET {ALLOWED}?{QUERY} is denied"));
    }
    if decide(&rt, &denied, &steady, &metrics)? {
        return Err(format!("GET {DENIED}?{QUERY} is allowed"));
    }
    if !decide(&rt, &allowed, &principal(&claims), &metrics)? {
        return Err(format!(
            "GET {ALLOWED}?{QUERY} is denied to a fresh principal"
        ));
    }

    let authz = &rt.authz;
    let mut group = c.benchmark_group("authz/3scopes_2owner");
    group.bench_function("allow", |b| {
        b.iter(|| {
            black_box(decide_now(
                black_box(&rules),
                authz,
                black_box(&allowed),
                Some(black_box(&steady)),
                Some(black_box(QUERY)),
                None,
                &metrics,
            ))
        })
    });
    group.bench_function("deny", |b| {
        b.iter(|| {
            black_box(decide_now(
                black_box(&rules),
                authz,
                black_box(&denied),
                Some(black_box(&steady)),
                Some(black_box(QUERY)),
                None,
                &metrics,
            ))
        })
    });
    group.bench_function("allow_fresh_principal", |b| {
        b.iter_batched(
            || principal(&claims),
            // The principal is returned so that it is dropped after the timing, with the rest.
            |p| {
                let d = decide_now(
                    black_box(&rules),
                    authz,
                    black_box(&allowed),
                    Some(black_box(&p)),
                    Some(black_box(QUERY)),
                    None,
                    &metrics,
                );
                (d, p)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    Ok(())
}

fn main() -> ExitCode {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let result = run(&mut c);
    c.final_summary();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authz bench: {e}");
            ExitCode::FAILURE
        }
    }
}
