//! Correlation (pipeline stage 3): the request id and the W3C trace context.
//!
//! Keeps an inbound `X-Request-Id` of 1–128 characters from `[A-Za-z0-9._:-]`, otherwise makes a
//! UUIDv7. Continues a valid inbound `traceparent` (with a new parent id for this hop) or starts
//! a new trace. Writes the [`RequestId`] request extension and sets the (normalised) headers on
//! the request, so the upstream sees exactly what the response carries
//! (the observe layer copies the id onto every response).

use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The `x-request-id` header name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The `tracestate` header name.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How many headers the gateway may add to a request before it goes upstream.
const UPSTREAM_HEADERS_ADDED: usize = 8;

/// Longest inbound request id that is kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A validated request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Accepts `s` when it is 1–128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_bytes(s.as_bytes())
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let ok = !b.is_empty()
            && b.len() <= MAX_REQUEST_ID_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return None;
        }
        HeaderValue::from_bytes(b).ok().map(Self)
    }

    /// A fresh UUIDv7 (time-ordered) id.
    pub fn generate() -> Self {
        let id = V7.with(|ctx| uuid::Uuid::new_v7(uuid::Timestamp::now(ctx)));
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        id.hyphenated().encode_lower(&mut text);
        // Owned and reference counted from the start: the id is cloned into the upstream
        // request, the response and error bodies, and a `Bytes` made from a copy would
        // allocate again on its first clone.
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        )
    }

    /// Keeps the inbound header value when it is well formed, otherwise generates one.
    pub fn from_inbound(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| Self::from_bytes(v.as_bytes()))
            .unwrap_or_else(Self::generate)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever accepted, so this cannot fail.
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The W3C trace context of this hop (fixed-size, allocation-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// This hop's span id, sent upstream as the parent id.
    pub span_id: [u8; 8],
    /// The inbound parent id, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    /// Trace flags.
    pub flags: u8,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

thread_local! {
    /// The UUIDv7 counter and clock, one per thread: ids stay ordered within a worker, and no
    /// worker waits on another (`Uuid::now_v7` locks one process-wide mutex per id).
    static V7: uuid::ContextV7 = const { uuid::ContextV7::new() };
    /// SplitMix64 state, seeded once per thread from the OS generator (via uuid).
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
}

/// 64 random bits for trace and span ids: unique and unpredictable enough for tracing (W3C asks
/// for random ids, not secrets); ids that must resist guessing use the OS generator instead.
fn next_random() -> u64 {
    RNG.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

impl TraceContext {
    /// Continues a valid inbound `traceparent` or starts a new sampled trace.
    pub fn from_inbound(value: Option<&HeaderValue>) -> Self {
        let mut span_id = next_random().to_le_bytes();
        span_id[0] |= 1; // never all zeros
        if let Some((trace_id, parent, flags)) = value.and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return Self {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            };
        }
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&next_random().to_le_bytes());
        trace_id[8..].copy_from_slice(&next_random().to_le_bytes());
        trace_id[15] |= 1;
        Self {
            trace_id,
            span_id,
            parent_id: None,
            flags: 1,
        }
    }

    /// The `traceparent` value to send upstream.
    pub fn header_value(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut buf[3..35], &self.trace_id);
        hex_into(&mut buf[36..52], &self.span_id);
        hex_into(&mut buf[53..55], &[self.flags]);
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }
}

/// Parses a `traceparent`; returns (trace id, parent id, flags). Version `ff`, all-zero ids,
/// upper-case hex and a version-00 value with extra fields are invalid.
pub fn parse_traceparent(s: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = s.trim_ascii();
    if s.len() < 55 || s[2] != b'-' || s[35] != b'-' || s[52] != b'-' {
        return None;
    }
    let version: [u8; 1] = unhex(&s[0..2])?;
    if version[0] == 0xff || (version[0] == 0 && s.len() != 55) || (s.len() > 55 && s[55] != b'-') {
        return None;
    }
    let trace: [u8; 16] = unhex(&s[3..35])?;
    let parent: [u8; 8] = unhex(&s[36..52])?;
    let flags: [u8; 1] = unhex(&s[53..55])?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

/// Adds [`RequestId`] and the `traceparent` header to every request.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    // Request-side only: the observe layer copies the id onto the response, so this layer
    // needs no response future of its own.
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::from_inbound(req.headers().get(X_REQUEST_ID));
        let trace = TraceContext::from_inbound(req.headers().get(TRACEPARENT));
        let headers = req.headers_mut();
        // Room, at once, for the headers the gateway adds on the way up (request id,
        // traceparent, three X-Forwarded-*, identity): hyper sizes the map for the parsed
        // headers only, and each growth rehashes every entry.
        let _ = headers.try_reserve(UPSTREAM_HEADERS_ADDED);
        headers.insert(X_REQUEST_ID, id.header_value());
        headers.insert(TRACEPARENT, trace.header_value());
        if trace.parent_id.is_none() {
            // A new trace makes any inbound vendor state meaningless.
            headers.remove(TRACESTATE);
        }
        // The trace context travels in its header only: nothing downstream reads it, and every
        // extension costs the request an allocation.
        req.extensions_mut().insert(id);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_ids_and_replaces_bad_ones() {
        let keep = HeaderValue::from_static("req-1.2_3:abc");
        assert_eq!(
            RequestId::from_inbound(Some(&keep)).as_str(),
            "req-1.2_3:abc"
        );
        for bad in ["", "has space", "semi;colon", "é"] {
            let v = HeaderValue::from_bytes(bad.as_bytes()).ok();
            let id = RequestId::from_inbound(v.as_ref());
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 36, "a UUID replaces {bad:?}");
        }
        let long = "a".repeat(129);
        assert_eq!(
            RequestId::from_inbound(Some(&HeaderValue::from_str(&long).unwrap()))
                .as_str()
                .len(),
            36
        );
        let max = "a".repeat(128);
        assert_eq!(
            RequestId::from_inbound(Some(&HeaderValue::from_str(&max).unwrap())).as_str(),
            max
        );
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let v = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse_traceparent(v).is_some());
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")
                .is_none()
        );
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let id = RequestId::generate();
        let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(u.get_version_num(), 7);
        // Per-thread contexts: ordered within a thread, distinct across threads.
        let batch = || {
            (0..2000)
                .map(|_| RequestId::generate().as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(batch);
            let b = s.spawn(batch);
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(
            a.windows(2).all(|w| w[0] < w[1]),
            "ids of one thread ascend"
        );
        let all: std::collections::HashSet<_> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 4000);
    }

    #[test]
    fn traceparent_is_continued_or_started() {
        let inbound =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::from_inbound(Some(&inbound));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| to_hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(to_hex(&t.span_id), "00f067aa0ba902b7");
        let out = t.header_value();
        assert!(
            out.to_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(out.to_str().unwrap().ends_with("-01"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let t = TraceContext::from_inbound(Some(&HeaderValue::from_static(bad)));
            assert!(t.parent_id.is_none(), "{bad} must start a new trace");
            assert!(parse_traceparent(t.header_value().as_bytes()).is_some());
        }
    }
}
