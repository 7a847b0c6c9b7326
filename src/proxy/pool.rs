//! Upstream connection pools (pipeline stage 11), one per worker thread and endpoint.
//!
//! Built on hyper's connection API rather than hyper-util's legacy client: a worker owns its
//! pools, so checking a connection out or in takes an uncontended lock and no hash lookup, and
//! no extra task is spawned per request to return a connection (profiles showed the legacy
//! client's pool bookkeeping at ~10% of gateway instructions). HTTP/1.1 connections are reused
//! once their response body has been read to the end; an HTTP/2 (h2c) connection is shared
//! by every request of the worker. A request refused by a connection that closed while idle
//! (never written) is retried once on a fresh connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

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
    /// The HTTP exchange failed.
    #[error("upstream exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

struct Idle {
    sender: http1::SendRequest<Body>,
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

    fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < self.idle_timeout {
                return Some(i.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
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
            None => self.handshake(TokioIo::new(tcp)).await,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| PoolError::ConnectTimeout)?
                .map_err(PoolError::Tls)?;
                self.handshake(TokioIo::new(tls)).await
            }
        }
    }

    async fn handshake<IO>(&self, io: IO) -> Result<Sender, PoolError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if self.h2 {
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
            let (sender, conn) = http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    async fn checkout(&self) -> Result<(Sender, bool), PoolError> {
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
        while let Some(mut s) = self.take_idle() {
            // A connection whose last response just ended may need one turn of its task.
            if s.ready().await.is_ok() {
                return Ok((Sender::H1(s), true));
            }
        }
        Ok((Box::pin(self.connect()).await?, false))
    }

    /// Sends `req` on a pooled (or new) connection. The response body returns the connection
    /// to the pool when it has been read to the end.
    ///
    /// # Errors
    /// Connect failures, timeouts of the connect, and HTTP errors.
    pub async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let (sender, reused) = self.checkout().await?;
        match self.send_on(sender, req).await {
            Ok(res) => Ok(res),
            // A pooled connection that closed while idle never saw the request: retry it once
            // on a fresh connection.
            Err(mut e) if reused && e.error().is_canceled() => match e.take_message() {
                Some(req) => {
                    let fresh = Box::pin(self.connect()).await?;
                    self.send_on(fresh, req)
                        .await
                        .map_err(|e| PoolError::Http(e.into_error()))
                }
                None => Err(PoolError::Http(e.into_error())),
            },
            Err(e) => Err(PoolError::Http(e.into_error())),
        }
    }

    async fn send_on(
        self: &Arc<Self>,
        sender: Sender,
        req: Request<Body>,
    ) -> Result<Response<Body>, hyper::client::conn::TrySendError<Request<Body>>> {
        match sender {
            Sender::H2(mut s) => {
                let res = s.try_send_request(req).await?;
                Ok(res.map(crate::boxed))
            }
            Sender::H1(mut s) => {
                let res = s.try_send_request(req).await?;
                let (parts, body) = res.into_parts();
                if body.is_end_stream() {
                    self.put_idle(s);
                    return Ok(Response::from_parts(parts, crate::boxed(body)));
                }
                let body = ReturningBody {
                    inner: body,
                    home: Some((s, self.clone())),
                };
                Ok(Response::from_parts(parts, crate::boxed(body)))
            }
        }
    }
}

/// A response body that gives its connection back to the pool once read to the end.
struct ReturningBody {
    inner: Incoming,
    home: Option<(http1::SendRequest<Body>, Arc<EndpointPool>)>,
}

impl HttpBody for ReturningBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.home = None;
                false
            }
            Poll::Pending => false,
        };
        if done && let Some((sender, pool)) = this.home.take() {
            pool.put_idle(sender);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The pools of one cluster for one worker, one per endpoint (same order as the cluster's).
#[derive(Debug)]
pub struct WorkerPools {
    /// Per endpoint.
    pub endpoints: Vec<Arc<EndpointPool>>,
}
