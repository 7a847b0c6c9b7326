//! Request and response hygiene (pipeline stages 4 and 12).
//!
//! [`HygieneLayer`] reads the [`ConnInfo`](crate::server::ConnInfo) and
//! [`Runtime`](crate::config::Runtime) extensions, strips hop-by-hop and client-sent identity
//! headers, sets the `X-Forwarded-*` headers, and cleans upstream responses on the way back.

pub mod headers;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::util::MapResponse;
use tower::{Layer, Service};

use crate::config::Runtime;
use crate::server::ConnInfo;

/// Applies header hygiene in both directions.
#[derive(Debug, Clone, Default)]
pub struct HygieneLayer;

/// Cleans a response on its way out (a plain function, so the response side needs no boxed
/// future: tower's `MapResponse` names its future type).
fn clean(mut res: Response<crate::Body>) -> Response<crate::Body> {
    headers::clean_response(res.headers_mut());
    res
}

/// The response half of the hygiene layer.
pub type CleanResponse<S> = MapResponse<S, fn(Response<crate::Body>) -> Response<crate::Body>>;

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<CleanResponse<S>>;
    fn layer(&self, inner: S) -> Self::Service {
        Hygiene {
            inner: MapResponse::new(inner, clean as fn(_) -> _),
        }
    }
}

/// The service made by [`HygieneLayer`].
#[derive(Debug, Clone)]
pub struct Hygiene<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Hygiene<S>
where
    S: Service<Request<B>, Response = Response<crate::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Read what the forwarded headers need before the headers are borrowed mutably; the
        // clones are reference counts, never copies.
        let forwarded = req.extensions().get::<Arc<ConnInfo>>().map(|conn| {
            let trusted = req.extensions().get::<Arc<Runtime>>().is_some_and(|r| {
                !r.trusted_proxies.is_empty()
                    && headers::is_trusted(conn.peer.ip(), &r.trusted_proxies)
            });
            (
                conn.peer_ip.clone(),
                if conn.tls { "https" } else { "http" },
                trusted,
            )
        });
        let host = req.headers().get(http::header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        let h = req.headers_mut();
        headers::strip(h, true);
        if let Some((peer_ip, proto, trusted)) = forwarded {
            headers::set_forwarded(h, &peer_ip, proto, host.as_ref(), trusted);
        }
        self.inner.call(req)
    }
}
