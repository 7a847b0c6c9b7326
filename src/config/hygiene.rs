//! Validation of request and response hygiene: the gateway's `hygiene` block and each route's
//! `body` and `response` rules (JSON Schemas are compiled here, so a bad schema is a config
//! error with its position).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::raw::{RawHygiene, RawRouteBody};
use super::validate::{Ctx, dur, pos_of};
use super::yaml::Node;
use crate::sanitize::HygieneSettings;
use crate::sanitize::body::{MoneyRule, RouteBody};
use crate::sanitize::json::JsonLimits;
use crate::sanitize::path::PathLimits;

/// Checks the gateway file's `hygiene` block.
pub(super) fn check_gateway_hygiene(ctx: &mut Ctx<'_>, root: &Node) -> HygieneSettings {
    let mut s = HygieneSettings::default();
    let Some(node) = root.get("hygiene") else {
        return s;
    };
    let Some(h) = ctx.decode::<RawHygiene>(node, "hygiene") else {
        return s;
    };
    let d = PathLimits::default();
    let mut limit = |key: &str, v: Option<usize>, default: usize, min: usize| -> usize {
        match v {
            Some(n) if n >= min && n <= 1 << 20 => n,
            Some(n) => {
                ctx.err(
                    pos_of(node, key),
                    &format!("hygiene.{key}"),
                    format!("`{key}` must be between {min} and 1048576, not {n}"),
                    None,
                );
                default
            }
            None => default,
        }
    };
    s.path = PathLimits {
        max_path_bytes: limit("max_path_bytes", h.max_path_bytes, d.max_path_bytes, 16),
        max_query_bytes: limit("max_query_bytes", h.max_query_bytes, d.max_query_bytes, 16),
        max_query_params: limit(
            "max_query_params",
            h.max_query_params,
            d.max_query_params,
            1,
        ),
    };
    for name in &h.remove_response_headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => s.remove_response_headers.push(n),
            Err(_) => ctx.err(
                pos_of(node, "remove_response_headers"),
                "hygiene.remove_response_headers",
                format!("`{name}` is not a header name"),
                None,
            ),
        }
    }
    match h.hsts.as_deref() {
        None => {}
        Some("off") => s.hsts = None,
        Some(v) => match HeaderValue::from_str(v) {
            Ok(v) if v.to_str().is_ok_and(|t| t.starts_with("max-age=")) => s.hsts = Some(v),
            _ => ctx.err(
                pos_of(node, "hsts"),
                "hygiene.hsts",
                format!("`{v}` is not a Strict-Transport-Security value"),
                Some("for example `max-age=31536000; includeSubDomains`, or `off`".into()),
            ),
        },
    }
    s.scrub_upstream_5xx = h.scrub_upstream_5xx;
    s
}

/// Checks a route's `body` block; `base` is the policies file's folder (for schema files).
pub(super) fn check_route_body(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    b: &RawRouteBody,
    base: &Path,
) -> Option<RouteBody> {
    let bnode = node.get("body").unwrap_or(node);
    let path = format!("{path}.body");
    let mut ok = true;
    let content_types = b.content_types.as_ref().map(|list| {
        list.iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    });
    if let Some(list) = &content_types {
        for t in list {
            let valid = t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && !t.contains(';') && !t.contains(' ')
            });
            if !valid {
                ctx.err(
                    pos_of(bnode, "content_types"),
                    &format!("{path}.content_types"),
                    format!("`{t}` is not a media type"),
                    Some("write the type without parameters, like `application/json`".into()),
                );
                ok = false;
            }
        }
    }
    if b.max_bytes == Some(0) {
        ctx.err(
            pos_of(bnode, "max_bytes"),
            &format!("{path}.max_bytes"),
            "a body cap of 0 refuses every body; leave it out or use at least 1",
            None,
        );
        ok = false;
    }
    let d = JsonLimits::default();
    let json = b.json.as_ref().map(|j| JsonLimits {
        max_depth: j.max_depth.unwrap_or(d.max_depth),
        max_keys: j.max_keys.unwrap_or(d.max_keys),
        max_array_len: j.max_array_len.unwrap_or(d.max_array_len),
        max_string_bytes: j.max_string_bytes.unwrap_or(d.max_string_bytes),
        ..d
    });
    let schema = match &b.schema {
        None => None,
        Some(v) => {
            let snode = bnode.get("schema").unwrap_or(bnode);
            let doc = match v {
                serde_json::Value::String(file) => {
                    let p = base.join(file);
                    match std::fs::read_to_string(&p)
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                        }) {
                        Ok(doc) => Some(doc),
                        Err(e) => {
                            ctx.err(
                                snode.pos,
                                &format!("{path}.schema"),
                                format!("cannot read the JSON Schema `{}`: {e}", p.display()),
                                Some("the path is relative to the policies file".into()),
                            );
                            None
                        }
                    }
                }
                serde_json::Value::Object(_) => Some(v.clone()),
                _ => {
                    ctx.err(
                        snode.pos,
                        &format!("{path}.schema"),
                        "`schema` is a file name or the schema itself (a map)",
                        None,
                    );
                    None
                }
            };
            match doc.map(|d| jsonschema::draft202012::new(&d)) {
                Some(Ok(v)) => Some(Arc::new(v)),
                Some(Err(e)) => {
                    ctx.err(
                        snode.pos,
                        &format!("{path}.schema"),
                        format!("the JSON Schema does not compile: {e}"),
                        Some("schemas are draft 2020-12; external `$ref`s are not fetched".into()),
                    );
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            }
        }
    };
    let mut money = Vec::new();
    for (i, m) in b.money.iter().enumerate() {
        for (key, p) in [("amount", &m.amount), ("currency", &m.currency)] {
            if !(p.is_empty() || p.starts_with('/')) {
                ctx.err(
                    pos_of(bnode, "money"),
                    &format!("{path}.money[{i}].{key}"),
                    format!("`{p}` is not a JSON Pointer"),
                    Some("pointers start with `/`, like `/amount`".into()),
                );
                ok = false;
            }
        }
        money.push(MoneyRule {
            amount: m.amount.clone(),
            currency: m.currency.clone(),
            max_integer_digits: m.max_integer_digits.unwrap_or(15),
        });
    }
    let read_timeout = dur(b.read_timeout, Duration::from_secs(10));
    if read_timeout.is_zero() {
        ctx.err(
            pos_of(bnode, "read_timeout"),
            &format!("{path}.read_timeout"),
            "this must be greater than zero",
            None,
        );
        ok = false;
    }
    let json = json.or_else(|| (schema.is_some() || !money.is_empty()).then(JsonLimits::default));
    ok.then_some(RouteBody {
        content_types,
        max_bytes: b.max_bytes,
        json,
        schema,
        money,
        read_timeout,
    })
}
