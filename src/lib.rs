//! Portcullis: a security gateway for internal finance APIs.
//!
//! Every request passes one pipeline (ordered in [`server::stack`]): correlation ids, request
//! hygiene, routing, then the proxy to an upstream cluster. Failures become RFC 9457
//! problem+json responses in one place ([`error`]). Configuration is parsed, validated and
//! compiled by [`config`], and swapped atomically on reload.

pub mod authn;
pub mod authz;
pub mod config;
pub mod decide;
pub mod demo;
pub mod error;
pub mod observe;
pub mod proxy;
pub mod ratelimit;
pub mod sanitize;
pub mod server;
pub mod tls;

/// The one body type used inside the pipeline.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BodyError>;

/// The error of a [`Body`]: a concrete type (not a trait object) so that futures holding bodies
/// stay `Send` for every lifetime the compiler picks.
#[derive(Debug)]
pub struct BodyError(pub BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A boxed, thread-safe error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Wraps any compatible body into the pipeline's [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    body.map_err(|e| BodyError(e.into())).boxed_unsync()
}

/// A boxed, sendable future (the pipeline's service futures).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// A body holding `bytes` (or nothing).
pub fn empty() -> Body {
    full(bytes::Bytes::new())
}

/// A complete body of `bytes`.
pub fn full(bytes: impl Into<bytes::Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()))
}
