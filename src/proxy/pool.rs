//! Upstream connection pools (pipeline stage 11), one per worker thread and endpoint.
//!
//! Built on hyper's connection API rather than hyper-util's legacy client: a worker owns its
//! pools, so checking a connection out or in takes an uncontended lock and no hash lookup, and
//! no extra task is spawned per request to return a connection (profiles showed the legacy
//! client's pool bookkeeping at ~10% of gateway instructions).
//!
//! An HTTP/1.1 upstream connection has no task of its own: the request that has it checked
//! out drives it (see [`Inline`]), first from the forwarding future, then from the response
//! body, and gives it back to the pool once the body has been read to the end. A spawned
//! connection task cost four task switches per request (request in, response head out, body
//! wanted, body out); driven inline, the upstream exchange is done within the two polls the
//! client connection needs anyway. While idle in the pool nobody polls it; checkout polls it
//! once, which notices an upstream that closed it meanwhile.
//!
//! An HTTP/2 (h2c or h2) connection is shared by every request of the worker and runs in its
//! own task. A request refused by a connection that closed while idle (never written) is
//! retried once on a fresh connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

type H1Conn = http1::Connection<TokioIo<UpstreamIo>, Body>;

/// The waker an inline-driven connection, its response future and its body channel see.
///
/// hyper wakes these from inside the very poll that drives them (the dispatcher answering a
/// request wakes the response future, the body asking for data wakes the dispatcher). Passed
/// to the task scheduler, each such wake would poll the whole client connection task again;
/// here a wake during [`Inline::drive`] only makes it go round once more, and only a wake
/// from outside (socket readiness, the request body's producer) wakes the task.
#[derive(Default)]
struct Inline {
    task: atomic_waker::AtomicWaker,
    in_poll: AtomicBool,
    woken: AtomicBool,
}

impl Wake for Inline {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_poll.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// How many times [`H1::drive`] goes round before yielding to the scheduler.
const ROUNDS: usize = 4;

/// An HTTP/1.1 connection driven by whoever has it checked out.
struct H1 {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has ended (its dispatcher is dropped so that a response
    /// future or body channel it owed an answer sees the end).
    conn: Option<Box<H1Conn>>,
    inline: Arc<Inline>,
    waker: Waker,
}

impl H1 {
    fn new(sender: http1::SendRequest<Body>, conn: H1Conn) -> Self {
        let inline = Arc::new(Inline::default());
        Self {
            sender,
            conn: Some(Box::new(conn)),
            waker: Waker::from(inline.clone()),
            inline,
        }
    }

    /// Polls the connection, then `f`, with the inline waker, until `f` is ready or nothing
    /// woke during the round; the task's waker is kept for wakes from outside.
    fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.inline.task.register(cx.waker());
        let mut icx = Context::from_waker(&self.waker);
        // `f` first: what it waits for may already be there, and polling it may ask the
        // connection for more (a body's demand), which the connection then serves in the
        // same round.
        self.inline.in_poll.store(true, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            self.inline.woken.store(false, Ordering::SeqCst);
            if let Poll::Ready(v) = f(&mut icx) {
                self.inline.in_poll.store(false, Ordering::SeqCst);
                return Poll::Ready(v);
            }
            poll_conn(&mut self.conn, &mut icx);
            if !self.inline.woken.load(Ordering::SeqCst) {
                self.inline.in_poll.store(false, Ordering::SeqCst);
                // A wake between the check and here went to the task.
                if !self.inline.woken.swap(false, Ordering::SeqCst) {
                    return Poll::Pending;
                }
                self.inline.in_poll.store(true, Ordering::SeqCst);
            }
        }
        self.inline.in_poll.store(false, Ordering::SeqCst);
        // Still being woken (a cooperative yield, tokio's task budget): let the scheduler
        // run others first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// True when the connection is open and waiting for a request (not, say, still writing a
    /// request body that the upstream answered early). Gives it one poll (registering no one)
    /// if the exchange that just ended left it short of that.
    fn settle(&mut self) -> bool {
        if !self.sender.is_ready() {
            let mut cx = Context::from_waker(Waker::noop());
            poll_conn(&mut self.conn, &mut cx);
        }
        self.conn.is_some() && self.sender.is_ready()
    }
}

/// Polls a connection; one that ended is dropped.
fn poll_conn(conn: &mut Option<Box<H1Conn>>, cx: &mut Context<'_>) {
    if let Some(c) = conn.as_mut()
        && let Poll::Ready(r) = Pin::new(&mut **c).poll(cx)
    {
        if let Err(e) = r {
            tracing::debug!(error = %e, "upstream connection ended");
        }
        *conn = None;
    }
}

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

    fn take_idle(&self, now: Instant) -> Option<H1> {
        let mut idle = self.idle.lock().ok()?;
        // An idle connection the upstream closed meanwhile is noticed by its first poll, which
        // hands the request back unsent; `send` then retries it on a fresh connection.
        while let Some(i) = idle.pop() {
            if now.saturating_duration_since(i.since) < self.idle_timeout
                && !i.h1.sender.is_closed()
            {
                return Some(i.h1);
            }
        }
        None
    }

    fn put_idle(&self, mut h1: H1) {
        if !h1.settle() {
            return;
        }
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
        let io = TokioIo::new(io);
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
            Ok(Sender::H1(H1::new(sender, conn)))
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
        if let Some(h1) = self.take_idle(now) {
            return Ok((Sender::H1(h1), true));
        }
        Ok((Box::pin(self.connect()).await?, false))
    }

    /// Sends `req` on a pooled (or new) connection. The response body returns the connection
    /// to the pool when it has been read to the end. `now` is the caller's clock reading,
    /// against which pooled connections are judged idle too long.
    ///
    /// # Errors
    /// Connect failures, timeouts of the connect, and HTTP errors.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        now: Instant,
    ) -> Result<Response<Body>, PoolError> {
        let (sender, reused) = self.checkout(now).await?;
        match self.send_on(sender, req).await {
            Ok(res) => Ok(res),
            // A pooled connection that closed while idle never saw the request: retry it once
            // on a fresh connection.
            Err(mut e) if reused && e.error().is_canceled() => match e.take_message() {
                // Boxed: the rare path keeps its state out of every request's future.
                Some(req) => Box::pin(self.retry(req)).await,
                None => Err(PoolError::Http(e.into_error())),
            },
            Err(e) => Err(PoolError::Http(e.into_error())),
        }
    }

    async fn retry(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let fresh = self.connect().await?;
        self.send_on(fresh, req)
            .await
            .map_err(|e| PoolError::Http(e.into_error()))
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
            Sender::H1(mut h1) => {
                let mut answer = std::pin::pin!(h1.sender.try_send_request(req));
                let res = std::future::poll_fn(|cx| h1.drive(cx, |icx| answer.as_mut().poll(icx)))
                    .await?;
                let (parts, body) = res.into_parts();
                if body.is_end_stream() {
                    self.put_idle(h1);
                    return Ok(Response::from_parts(parts, crate::boxed(body)));
                }
                let body = ReturningBody {
                    inner: body,
                    home: Some((h1, self.clone())),
                };
                Ok(Response::from_parts(parts, crate::boxed(body)))
            }
        }
    }
}

/// A response body that drives its connection and gives it back to the pool once read to
/// the end.
struct ReturningBody {
    inner: Incoming,
    home: Option<(H1, Arc<EndpointPool>)>,
}

impl HttpBody for ReturningBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        let polled = match this.home.as_mut() {
            Some((h1, _)) => h1.drive(cx, |icx| Pin::new(&mut *inner).poll_frame(icx)),
            None => Pin::new(inner).poll_frame(cx),
        };
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.home = None;
                false
            }
            Poll::Pending => false,
        };
        if done && let Some((h1, pool)) = this.home.take() {
            pool.put_idle(h1);
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
