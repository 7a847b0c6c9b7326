//! Upstream connection pools (pipeline stage 11), one per worker thread and endpoint.
//!
//! Built on hyper's connection API rather than hyper-util's legacy client: a worker owns its
//! pools, so checking a connection out or in takes an uncontended lock and no hash lookup, and
//! no extra task is spawned per request to return a connection (profiles showed the legacy
//! client's pool bookkeeping at ~10% of gateway instructions).
//!
//! An HTTP/1.1 upstream connection has no task of its own: the request that has it checked
//! out runs the exchange itself ([`h1`](super::h1)), and gives it back to the pool as soon as
//! the answer has been read to the end — before the response leaves the stage when the whole
//! answer came in one read. While idle in the pool nobody polls it; checkout reads it once
//! without waiting, which notices an upstream that closed it (or wrote to it) meanwhile.
//!
//! An HTTP/2 (h2c or h2) connection is shared by every request of the worker and runs in its
//! own task (hyper). A request that a pooled connection failed before the upstream can have
//! acted on it is retried once on a fresh connection (see [`h1::Failure`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h1;
use crate::Body;

/// Why a connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// TCP connect did not finish within the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The HTTP/2 exchange failed.
    #[error("upstream exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The HTTP/1.1 exchange failed.
    #[error("upstream exchange failed: {0}")]
    H1(#[from] h1::Error),
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
}

enum Sender {
    H1(H1),
    H2(http2::SendRequest<Body>),
}

/// A plain or TLS upstream stream.
enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type H1 = h1::Conn<UpstreamIo>;

struct Idle {
    h1: H1,
    since: Instant,
}

/// The pool of one endpoint for one worker.
pub struct EndpointPool {
    address: Arc<str>,
    h2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
    shared_h2: Mutex<Option<http2::SendRequest<Body>>>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("address", &self.address)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl EndpointPool {
    /// A pool for `address` (`host:port`).
    pub fn new(
        address: Arc<str>,
        h2: bool,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        tls: Option<(
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
    ) -> Self {
        Self {
            address,
            h2,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            shared_h2: Mutex::new(None),
            tls,
        }
    }

    /// Whether connections to this endpoint use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn take_idle(&self, now: Instant, cx: &mut Context<'_>) -> Option<H1> {
        let mut idle = self.idle.lock().ok()?;
        // An idle connection the upstream closed (or wrote to) meanwhile is dropped here.
        while let Some(mut i) = idle.pop() {
            if now.saturating_duration_since(i.since) < self.idle_timeout && i.h1.is_usable(cx) {
                return Some(i.h1);
            }
        }
        None
    }

    fn put_idle(&self, h1: H1) {
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            // Nobody polls an idle connection: the oldest is closed here once it has idled
            // past the timeout, so a pool that is in use does not keep stale sockets.
            if idle
                .first()
                .is_some_and(|i| now.saturating_duration_since(i.since) >= self.idle_timeout)
            {
                idle.remove(0);
            }
            if idle.len() < self.max_idle {
                idle.push(Idle { h1, since: now });
            }
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.address))
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
        let tcp = self.connect_tcp().await?;
        match &self.tls {
            None => self.handshake(UpstreamIo::Plain(tcp)).await,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| PoolError::ConnectTimeout)?
                .map_err(PoolError::Tls)?;
                self.handshake(UpstreamIo::Tls(Box::new(tls))).await
            }
        }
    }

    async fn handshake(&self, io: UpstreamIo) -> Result<Sender, PoolError> {
        if self.h2 {
            let io = TokioIo::new(io);
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            if let Ok(mut shared) = self.shared_h2.lock() {
                *shared = Some(sender.clone());
            }
            Ok(Sender::H2(sender))
        } else {
            Ok(Sender::H1(h1::Conn::new(io)))
        }
    }

    async fn checkout(&self, now: Instant) -> Result<(Sender, bool), PoolError> {
        if self.h2 {
            let existing = self
                .shared_h2
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .filter(|s| !s.is_closed());
            if let Some(s) = existing {
                return Ok((Sender::H2(s), true));
            }
            return Ok((Box::pin(self.connect()).await?, false));
        }
        // Unconstrained: with the task's cooperative budget spent, the probe of an idle
        // connection would read nothing and take a closed connection for a live one.
        let idle = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(self.take_idle(now, cx))
        }))
        .await;
        if let Some(h1) = idle {
            return Ok((Sender::H1(h1), true));
        }
        Ok((Box::pin(self.connect()).await?, false))
    }

    /// Sends `req` on a pooled (or new) connection. The response body returns the connection
    /// to the pool when it has been read to the end; an HTTP/1.1 upstream that sends no body
    /// bytes for `body_idle` cuts it. `now` is the caller's clock reading,
    /// against which pooled connections are judged idle too long.
    ///
    /// # Errors
    /// Connect failures, timeouts of the connect, and HTTP errors.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        now: Instant,
        body_idle: Duration,
    ) -> Result<Response<Body>, PoolError> {
        let (sender, reused) = self.checkout(now).await?;
        match sender {
            Sender::H2(mut s) => {
                let res = s
                    .try_send_request(req)
                    .await
                    .map_err(|e| PoolError::Http(e.into_error()))?;
                Ok(res.map(crate::boxed))
            }
            Sender::H1(mut conn) => {
                let (mut parts, mut body) = req.into_parts();
                conn.prepare(&parts, &body);
                let method = std::mem::replace(&mut parts.method, http::Method::GET);
                // Encoded: the rest of the request need not live in the future while it waits.
                drop(parts);
                match conn.exchange(&mut body, &method).await {
                    Ok(answer) => Ok(self.answer(conn, answer, body_idle)),
                    // Boxed: the rare path keeps its state out of every request's future.
                    Err(f) if reused && f.retryable => {
                        Box::pin(self.retry(conn, body, method, body_idle)).await
                    }
                    Err(f) => Err(PoolError::H1(f.error)),
                }
            }
        }
    }

    /// Sends the request whose head `stale` holds again, on a fresh connection.
    async fn retry(
        self: &Arc<Self>,
        mut stale: H1,
        mut body: Body,
        method: http::Method,
        body_idle: Duration,
    ) -> Result<Response<Body>, PoolError> {
        let Sender::H1(mut fresh) = self.connect().await? else {
            return Err(PoolError::Connect(std::io::Error::other(
                "an HTTP/1.1 pool made an HTTP/2 connection",
            )));
        };
        fresh.take_request(&mut stale);
        match fresh.exchange(&mut body, &method).await {
            Ok(answer) => Ok(self.answer(fresh, answer, body_idle)),
            Err(f) => Err(PoolError::H1(f.error)),
        }
    }

    /// The response for `answer`; the connection goes back to the pool once its body is read.
    fn answer(
        self: &Arc<Self>,
        mut conn: H1,
        answer: h1::Answer,
        body_idle: Duration,
    ) -> Response<Body> {
        let (parts, ()) = answer.response.into_parts();
        if let Some(body) = conn.take_buffered_body(answer.framing) {
            if answer.reusable && conn.is_clean() {
                self.put_idle(conn);
            }
            return Response::from_parts(parts, crate::boxed(http_body_util::Full::new(body)));
        }
        let pool = self.clone();
        let body =
            h1::StreamedBody::new(conn, answer.framing, answer.reusable, body_idle, move |c| {
                pool.put_idle(c);
            });
        Response::from_parts(parts, crate::boxed(body))
    }
}

/// The pools of one cluster for one worker, one per endpoint (same order as the cluster's).
#[derive(Debug)]
pub struct WorkerPools {
    /// Per endpoint.
    pub endpoints: Vec<Arc<EndpointPool>>,
}
