//! Body checks per route (pipeline stage 10): allowed content types (415), a size cap checked
//! from `Content-Length` before reading and while streaming (413), and for JSON routes a strict
//! parse ([`super::json`]), a JSON Schema (draft 2020-12, compiled with the config) and money
//! rules ([`super::money`]), each failure naming its JSON Pointer (400 / 422).
//!
//! A route without JSON rules keeps streaming: its body is only counted. A JSON route's body is
//! read once (within `read_timeout`, else 408), checked, and forwarded byte for byte.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::json::JsonLimits;
use super::{FieldError, Refusal};
use crate::error::GatewayError;
use crate::proxy::RouteMatch;
use crate::{Body, BodyError, BoxFuture};

/// A money rule: the amount at `amount` (a JSON Pointer) must be a decimal string with at most
/// the minor units of the currency code at `currency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyRule {
    /// Pointer to the amount.
    pub amount: String,
    /// Pointer to the ISO 4217 currency code.
    pub currency: String,
    /// Most integer digits.
    pub max_integer_digits: u8,
}

/// A route's compiled body rules.
#[derive(Debug, Clone)]
pub struct RouteBody {
    /// Accepted media types (lower-case essence, like `application/json`); `None`: any.
    pub content_types: Option<Vec<String>>,
    /// Largest body in bytes.
    pub max_bytes: Option<u64>,
    /// Strict JSON limits, when the body must be JSON.
    pub json: Option<JsonLimits>,
    /// JSON Schema, compiled.
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// Money rules.
    pub money: Vec<MoneyRule>,
    /// Time allowed to receive a body that is read before forwarding.
    pub read_timeout: Duration,
}

impl RouteBody {
    fn buffers(&self) -> bool {
        self.json.is_some() || self.schema.is_some() || !self.money.is_empty()
    }
}

/// The media type's essence, lower case (`Application/JSON; charset=utf-8` → `application/json`).
fn essence(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

fn too_large(max: u64) -> GatewayError {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "body_too_large",
        &format!("this route accepts bodies of at most {max} bytes"),
    )
    .into()
}

/// 408 for a body that did not arrive in time; the connection is closed (the rest of the body
/// may still be on its way).
fn body_timeout() -> GatewayError {
    Refusal {
        close: true,
        ..Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "body_timeout",
            "the request body was not received in time",
        )
    }
    .into()
}

/// A streaming body that fails once more than `max` bytes have passed, and says so in `over`.
struct Capped {
    inner: Body,
    left: u64,
    max: u64,
    over: Arc<AtomicBool>,
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > this.left {
                        this.over.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(BodyError(
                            format!("request body over {} bytes", this.max).into(),
                        ))));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frame was already read (to see that the framing is sound before anything
/// is sent upstream).
struct Prefixed {
    first: Option<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

/// Time allowed for the first frame of a body without a length.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the first frame of a body without a length (chunked), so that a body whose framing is
/// broken from the start (an invalid chunk size) is refused before the upstream sees anything.
async fn peek_first_frame(req: &mut Request<Body>) -> Result<(), GatewayError> {
    let mut body = std::mem::replace(req.body_mut(), crate::empty());
    let first = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, body.frame()).await {
        Err(_) => {
            return Err(body_timeout());
        }
        Ok(Some(Err(_))) => {
            return Err(Refusal {
                close: true,
                ..Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "bad-framing",
                    "bad_chunk",
                    "the chunked request body is malformed",
                )
            }
            .into());
        }
        Ok(Some(Ok(f))) => Some(f),
        Ok(None) => None,
    };
    *req.body_mut() = Prefixed { first, rest: body }.boxed_unsync();
    Ok(())
}

/// Checks a JSON document against the route's rules; every failure with its pointer.
///
/// # Errors
/// 400 for malformed or over-limit JSON, 422 for schema and money failures.
pub fn check_json(rules: &RouteBody, bytes: &[u8]) -> Result<(), Refusal> {
    let limits = rules.json.unwrap_or_default();
    if let Err(e) = super::json::check(bytes, &limits) {
        let mut r = Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-json",
            "invalid_json",
            &format!("the body is not acceptable JSON: {}", e.message),
        );
        r.errors.push(FieldError {
            pointer: e.pointer,
            message: e.message,
        });
        return Err(r);
    }
    if rules.schema.is_none() && rules.money.is_empty() {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-json",
            "invalid_json",
            "the body is not JSON",
        )
    })?;
    let mut errors = Vec::new();
    if let Some(schema) = &rules.schema {
        for e in schema.iter_errors(&value) {
            errors.push(FieldError {
                pointer: e.instance_path().to_string(),
                message: e.masked().to_string(),
            });
            if errors.len() >= 20 {
                break;
            }
        }
    }
    for m in &rules.money {
        let Some(amount) = value.pointer(&m.amount) else {
            continue;
        };
        let currency = value.pointer(&m.currency).and_then(|c| c.as_str());
        let Some(currency) = currency else {
            errors.push(FieldError {
                pointer: m.currency.clone(),
                message: "a currency code (ISO 4217, like `EUR`) is required with an amount".into(),
            });
            continue;
        };
        if let Err(e) = super::money::check_amount(amount, currency, m.max_integer_digits) {
            errors.push(FieldError {
                pointer: m.amount.clone(),
                message: e.to_string(),
            });
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let mut r = Refusal::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "schema",
        &format!(
            "the body does not match this route's rules at {}",
            errors
                .iter()
                .map(|e| if e.pointer.is_empty() {
                    "/"
                } else {
                    e.pointer.as_str()
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    r.errors = errors;
    Err(r)
}

/// Applies each route's body rules (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyLayer;

impl<S> Layer<S> for BodyLayer {
    type Service = BodyCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyCheck { inner }
    }
}

/// The service made by [`BodyLayer`].
#[derive(Debug, Clone)]
pub struct BodyCheck<S> {
    inner: S,
}

type Fut = BoxFuture<Result<Response<Body>, GatewayError>>;

impl<S> Service<Request<Body>> for BodyCheck<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError, Future = Fut>
        + Clone
        + Send
        + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let unknown_length =
            req.body().size_hint().exact().is_none() && !req.body().is_end_stream();
        let Some(rules) = req
            .extensions()
            .get::<RouteMatch>()
            .and_then(|m| m.route.body.clone())
        else {
            if unknown_length {
                let inner = self.inner.clone();
                return Box::pin(async move {
                    peek_first_frame(&mut req).await?;
                    inner.oneshot(req).await
                });
            }
            return self.inner.call(req);
        };
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body = length.is_some_and(|n| n > 0)
            || req.headers().contains_key(header::TRANSFER_ENCODING)
            || !req.body().is_end_stream();
        if !has_body {
            if rules.buffers()
                && matches!(
                    *req.method(),
                    http::Method::POST | http::Method::PUT | http::Method::PATCH
                )
            {
                let e = check_json(&rules, b"").err();
                if let Some(e) = e {
                    return Box::pin(async move { Err(e.into()) });
                }
            }
            return self.inner.call(req);
        }
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(essence);
        if let Some(allowed) = &rules.content_types
            && !ctype.as_ref().is_some_and(|c| allowed.contains(c))
        {
            let e = Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "content_type",
                &format!("this route accepts {}", allowed.join(", ")),
            );
            return Box::pin(async move { Err(e.into()) });
        }
        if rules.buffers() && !ctype.as_deref().is_some_and(is_json) {
            let e = Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "content_type",
                "this route accepts JSON (Content-Type: application/json)",
            );
            return Box::pin(async move { Err(e.into()) });
        }
        if let (Some(max), Some(n)) = (rules.max_bytes, length)
            && n > max
        {
            return Box::pin(async move { Err(too_large(max)) });
        }
        let inner = self.inner.clone();
        if rules.buffers() {
            return Box::pin(async move {
                let max = rules.max_bytes.unwrap_or(1024 * 1024);
                let body = std::mem::replace(req.body_mut(), crate::empty());
                let read =
                    http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                        .collect();
                let bytes = match tokio::time::timeout(rules.read_timeout, read).await {
                    Err(_) => {
                        return Err(body_timeout());
                    }
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(too_large(max));
                    }
                    Ok(Err(_)) => {
                        return Err(GatewayError::BadRequest(
                            "the request body could not be read",
                        ));
                    }
                    Ok(Ok(c)) => c.to_bytes(),
                };
                check_json(&rules, &bytes)?;
                *req.body_mut() = crate::full(bytes);
                inner.oneshot(req).await
            });
        }
        let Some(max) = rules.max_bytes else {
            return Box::pin(inner.oneshot(req));
        };
        let over = Arc::new(AtomicBool::new(false));
        Box::pin(async move {
            if unknown_length {
                peek_first_frame(&mut req).await?;
            }
            let body = std::mem::replace(req.body_mut(), crate::empty());
            *req.body_mut() = Capped {
                inner: body,
                left: max,
                max,
                over: over.clone(),
            }
            .boxed_unsync();
            let res = inner.oneshot(req).await;
            if over.load(Ordering::Acquire) {
                return Err(too_large(max));
            }
            res
        })
    }
}
