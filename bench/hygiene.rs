//! Cost of request hygiene per request:
//!
//! - `hygiene/typical_request`: the framing and header checks on a typical API request's
//!   headers (11 headers: host, a bearer token, content type and length, accept, user agent,
//!   request id, traceparent, forwarded-for, …) and the path/query normal form of
//!   `/v1/accounts/acc-100/transactions?from=2026-01-01&limit=50`;
//! - `hygiene/payment_4k_schema`: a 4 KiB JSON payment (a payment with 33 line items) checked
//!   strictly (UTF-8, depth, duplicate keys, safe numbers), parsed, validated against its JSON
//!   Schema (draft 2020-12, compiled once) and its money rule (`/amount` with `/currency`'s
//!   scale) — everything the gateway does to such a body before forwarding it.
//!
//! `cargo bench --bench hygiene`; `cargo test --all-targets` runs each benchmark once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Version};
use portcullis::sanitize::body::{MoneyRule, RouteBody, check_json};
use portcullis::sanitize::json::JsonLimits;
use portcullis::sanitize::path::{PathLimits, normalize};
use portcullis::sanitize::request::check_headers;
use serde_json::json;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.bank.example"),
        (
            "authorization",
            "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6Imp3dC1lczI1NiJ9.eyJzdWIiOiJhbGljZUBhY21lIn0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl",
        ),
        ("content-type", "application/json"),
        ("content-length", "4096"),
        ("accept", "application/json"),
        ("user-agent", "bank-app/7.3 (iOS 19.1)"),
        ("x-request-id", "0193b7c2-5d1e-7c3a-9f00-3a5b2c1d4e5f"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-forwarded-for", "203.0.113.7"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("idempotency-key", "pay-2026-11-25-000123"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn payment() -> Vec<u8> {
    let lines: Vec<_> = (0..33)
        .map(|i| {
            json!({
                "description": format!("invoice line {i:02} for services rendered"),
                "amount": format!("{}.{:02}", 10 + i, i),
                "currency": "EUR",
                "reference": format!("INV-2026-{i:06}")
            })
        })
        .collect();
    let body = json!({
        "from_account": "acc-100",
        "to_account": "acc-200",
        "amount": "1234.56",
        "currency": "EUR",
        "reference": "November invoices",
        "lines": lines
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn rules() -> RouteBody {
    let schema = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["from_account", "to_account", "amount", "currency"],
        "properties": {
            "from_account": {"type": "string", "pattern": "^acc-[0-9]{1,12}$"},
            "to_account": {"type": "string", "pattern": "^acc-[0-9]{1,12}$"},
            "amount": {"type": "string"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "reference": {"type": "string", "maxLength": 140},
            "lines": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["description", "amount", "currency"],
                    "properties": {
                        "description": {"type": "string", "maxLength": 200},
                        "amount": {"type": "string", "pattern": "^-?(0|[1-9][0-9]*)(\\.[0-9]+)?$"},
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                        "reference": {"type": "string", "maxLength": 40}
                    }
                }
            }
        }
    });
    let validator = jsonschema::draft202012::new(&schema).ok().map(Arc::new);
    RouteBody {
        content_types: Some(vec!["application/json".into()]),
        max_bytes: Some(65536),
        json: Some(JsonLimits::default()),
        schema: validator,
        money: vec![MoneyRule {
            amount: "/amount".into(),
            currency: "/currency".into(),
            max_integer_digits: 15,
        }],
        read_timeout: Duration::from_secs(10),
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let h = headers();
    let limits = PathLimits::default();
    c.bench_function("hygiene/typical_request", |b| {
        b.iter(|| {
            let ok = check_headers(black_box(&h), Version::HTTP_11).is_ok();
            let n = normalize(
                black_box("/v1/accounts/acc-100/transactions"),
                Some(black_box("from=2026-01-01&limit=50")),
                &limits,
            );
            black_box((ok, n))
        });
    });
    let body = payment();
    let rules = rules();
    assert_eq_len(&body);
    c.bench_function("hygiene/payment_4k_schema", |b| {
        b.iter(|| black_box(check_json(&rules, black_box(&body)).is_ok()));
    });
    c.final_summary();
}

/// The payment is about 4 KiB and valid (so the benchmark measures the whole pass).
fn assert_eq_len(body: &[u8]) {
    let rules = rules();
    if !(3500..=4700).contains(&body.len()) || check_json(&rules, body).is_err() {
        eprintln!(
            "hygiene bench: the payment is {} bytes, valid: {}",
            body.len(),
            check_json(&rules, body).is_ok()
        );
        std::process::exit(1);
    }
}
