//! Listeners, connections and shutdown (pipeline stage 2).
//!
//! Each listener accepts TCP connections up to `max_connections` (more are closed at once and
//! counted), serves HTTP/1.1 and HTTP/2 on the same port (auto-detected), bounds the request
//! head (`max_header_bytes`, `max_headers`, `header_read_timeout`) and closes idle connections.
//! Every request gets a [`ConnInfo`] extension. On shutdown the listeners close (new
//! connections are refused), open connections finish their in-flight requests up to the grace
//! period, and then the server returns.

pub mod stack;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;

use crate::config::Runtime;
use crate::config::validate::ListenerSettings;
use crate::observe::admin::{self, Readiness};
use crate::observe::metrics::Metrics;

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The peer's IP as a header value (formatted once per connection).
    pub peer_ip: http::HeaderValue,
    /// The verified client certificate's identity (mTLS connections only).
    pub identity: Option<Arc<crate::tls::identity::PeerIdentity>>,
    /// Framing mistakes found in the connection's raw HTTP/1 bytes (see
    /// [`crate::sanitize::framing`]).
    pub framing: Arc<crate::sanitize::framing::FramingVerdict>,
}

/// State shared by every connection and the reloader.
#[derive(Debug)]
pub struct Shared {
    /// The current compiled config.
    pub config: Arc<ArcSwap<Runtime>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness for `/readyz`.
    pub ready: Readiness,
    /// Wakes the TLS watchers to reload certificates now (SIGHUP).
    pub tls_reload: Arc<Notify>,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    /// Bound traffic listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Shared state (config, metrics).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// A handle that can start the shutdown from elsewhere (signal handlers).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

#[derive(Debug, Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

/// Binds every listener and the admin listener, then serves until shutdown.
///
/// Traffic is served by `workers` threads, each running its own single-threaded event loop
/// over a shared listening socket and its own upstream pools (the Envoy model): a request is
/// handled start to finish on one thread, with no cross-thread wake-ups. The admin listener,
/// the reloader and signal handling stay on the caller's runtime.
///
/// # Errors
/// When an address cannot be bound.
pub async fn start(runtime: Runtime, metrics: Metrics) -> std::io::Result<Running> {
    let settings = runtime.settings.clone();
    let shared = Arc::new(Shared {
        config: Arc::new(ArcSwap::from_pointee(runtime)),
        metrics: metrics.clone(),
        ready: Readiness::default(),
        tls_reload: Arc::new(Notify::new()),
    });
    let workers = settings.workers.max(1);
    // Each worker gets its own SO_REUSEPORT socket per listener, so the kernel spreads new
    // connections evenly across workers (a shared socket let one worker take most of them).
    // The first socket resolves port 0; the others bind the port it got.
    let mut bound = Vec::new();
    for l in &settings.listeners {
        let tls = match &l.tls {
            Some(t) => {
                let (store, not_after) = crate::tls::TlsStore::new(l.name.clone(), t.clone())
                    .map_err(|e| std::io::Error::other(format!("listener `{}`: {e}", l.name)))?;
                record_not_after(&metrics, &l.name, &not_after);
                let store = Arc::new(store);
                tokio::spawn(watch_tls(
                    store.clone(),
                    metrics.clone(),
                    settings.poll_interval,
                    shared.tls_reload.clone(),
                ));
                Some(store)
            }
            None => None,
        };
        let first = reuseport_listener(l.address)?;
        let actual = first.local_addr()?;
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(reuseport_listener(actual)?);
        }
        // One connection limit per listener, shared by all workers.
        let share = ListenerShare {
            settings: Arc::new(l.clone()),
            limit: Arc::new(Semaphore::new(l.max_connections)),
            per_ip: Arc::new(PerIp {
                max: l.max_connections_per_ip,
                open: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
            tls,
        };
        bound.push((share, socks));
    }
    let admin_listener = admin::bind(settings.admin).await?;
    let admin_addr = admin_listener.local_addr()?;
    let addrs = bound
        .iter()
        .map(|(_, socks)| socks[0].local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let (tx, rx) = watch::channel(false);
    let mut done = Vec::new();
    for w in 0..workers {
        let mut listeners = Vec::new();
        for (share, socks) in &mut bound {
            if let Some(sock) = socks.pop() {
                listeners.push((share.clone(), sock));
            }
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let ctx = WorkerCtx {
            id: w,
            listeners,
            // Built per worker, so the per-request clones stay on the worker's own counts.
            pipeline: stack::build(&shared, settings.access_log),
            metrics: metrics.clone(),
            shutdown: rx.clone(),
            grace: settings.shutdown_grace,
        };
        std::thread::Builder::new()
            .name(format!("portcullis-w{w}"))
            .spawn(move || {
                worker_main(ctx);
                let _ = done_tx.send(());
            })?;
        done.push(done_rx);
    }
    drop(bound);
    tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        shared.ready.clone(),
        shared.config.clone(),
        rx.clone(),
    ));
    shared.ready.set(true);
    tracing::info!(listeners = ?addrs, admin = %admin_addr, workers, "portcullis is serving");
    let ready = shared.ready.clone();
    let mut stop = rx;
    let task = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        ready.set(false);
        for d in done {
            let _ = d.await;
        }
        tracing::info!("all workers stopped");
    });
    Ok(Running {
        addrs,
        admin_addr,
        shared,
        shutdown: tx,
        task,
    })
}

/// A listening socket with SO_REUSEADDR and SO_REUSEPORT, handed over as a std listener so a
/// worker can register it with its own event loop.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let std = listener.into_std()?;
    std.set_nonblocking(true)?;
    Ok(std)
}

struct WorkerCtx {
    id: usize,
    listeners: Vec<(ListenerShare, std::net::TcpListener)>,
    pipeline: stack::Pipeline,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
}

/// One traffic worker: accepts, serves, and on shutdown drains its connections up to the grace
/// period.
fn worker_main(ctx: WorkerCtx) {
    crate::proxy::upstream::set_worker(ctx.id);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = ctx.id, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let tracker = Arc::new(Tracker::default());
        let mut accept_tasks = Vec::new();
        for (share, sock) in ctx.listeners {
            let listener = match TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = ctx.id, error = %e, "cannot register a listener");
                    continue;
                }
            };
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                share,
                ctx.pipeline.clone(),
                ctx.metrics.clone(),
                tracker.clone(),
                ctx.shutdown.clone(),
            )));
        }
        // The accept loops end at shutdown; their listeners close with them.
        for t in accept_tasks {
            let _ = t.await;
        }
        let open = tracker.open.load(Ordering::SeqCst);
        if open > 0 {
            tracing::info!(
                worker = ctx.id,
                open_connections = open,
                grace_ms = ctx.grace.as_millis() as u64,
                "draining"
            );
        }
        let drained = tokio::time::timeout(ctx.grace, async {
            loop {
                let notified = tracker.idle.notified();
                if tracker.open.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                worker = ctx.id,
                open_connections = tracker.open.load(Ordering::SeqCst),
                "grace period over; closing"
            );
        }
    });
}

async fn accept_loop(
    listener: TcpListener,
    share: ListenerShare,
    pipeline: stack::Pipeline,
    metrics: Metrics,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ListenerShare {
        settings,
        limit,
        per_ip,
        tls,
    } = share;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The worker's watchdog enforces the header-read timeout for all connections with one
        // timer; hyper's would arm a timer per request.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes)
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024));
    let builder = Arc::new(builder);
    let watchdog = Arc::new(Watchdog::default());
    let tick = (settings.header_read_timeout.min(settings.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let dog = watchdog.clone();
    let (header_timeout, idle) = (settings.header_read_timeout, settings.idle_timeout);
    let watch_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            dog.scan(header_timeout, idle);
        }
    });
    let open = metrics
        .connections_open
        .with_label_values(&[&settings.name]);
    let accepted_total = metrics
        .connections
        .with_label_values(&[&settings.name, "accepted"]);
    let rejected_total = metrics
        .connections
        .with_label_values(&[&settings.name, "rejected_limit"]);
    let rejected_per_ip = metrics
        .connections
        .with_label_values(&[&settings.name, "rejected_per_ip"]);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            rejected_total.inc();
            drop(stream);
            continue;
        };
        let Some(ip_slot) = PerIp::take(&per_ip, peer.ip()) else {
            rejected_per_ip.inc();
            drop(stream);
            continue;
        };
        accepted_total.inc();
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            local: stream.local_addr().unwrap_or(peer),
            listener: settings.name.clone(),
            tls: false,
            peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            identity: None,
            framing: Arc::default(),
        };
        tracker.open.fetch_add(1, Ordering::SeqCst);
        open.inc();
        let (builder, pipeline, watchdog, tracker, open, tls, metrics, handshake_timeout) = (
            builder.clone(),
            pipeline.clone(),
            watchdog.clone(),
            tracker.clone(),
            open.clone(),
            tls.clone(),
            metrics.clone(),
            settings.header_read_timeout,
        );
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, info, &builder, pipeline, &watchdog).await,
                Some(store) => {
                    if let Some((stream, info)) =
                        handshake(stream, info, &store, &metrics, handshake_timeout).await
                    {
                        serve_connection(stream, info, &builder, pipeline, &watchdog).await;
                    }
                }
            }
            drop(permit);
            drop(ip_slot);
            open.dec();
            if tracker.open.fetch_sub(1, Ordering::SeqCst) == 1 {
                tracker.idle.notify_waiters();
            }
        });
    }
    // Shutdown: every open connection finishes its in-flight request and closes. The watchdog
    // keeps running (it is dropped with the worker's runtime) so slow clients still time out.
    watchdog.close_all();
    drop(watch_task);
}

/// What the connection task and the worker's watchdog share about one connection. The hot
/// path only bumps counters; the watchdog (one timer per worker, not per request) reads them,
/// decides about header-read and idle timeouts and shutdown, and wakes the connection.
#[derive(Debug, Default)]
struct Activity {
    /// Successful reads.
    reads: AtomicU64,
    /// Successful writes.
    writes: AtomicU64,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// `reads` when the connection last became idle (`u64::MAX` before the first request), so
    /// "bytes arrived while idle" means a request head is being read.
    reads_at_idle: AtomicU64,
    /// 0 serve, 1 close gracefully, 2 close now.
    verdict: std::sync::atomic::AtomicU8,
    waker: atomic_waker::AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            reads_at_idle: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }
    fn touch(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
    fn decide(&self, verdict: u8) {
        if self.verdict.fetch_max(verdict, Ordering::AcqRel) < verdict {
            self.waker.wake();
        }
    }
}

const CLOSE_GRACEFULLY: u8 = 1;
const CLOSE_NOW: u8 = 2;

/// The watchdog's own view of one connection.
struct Watched {
    activity: std::sync::Weak<Activity>,
    head_since: Option<Instant>,
    last_events: u64,
    quiet_since: Instant,
}

/// One per worker: enforces `header_read_timeout` (slowloris) and `idle_timeout` for all of
/// the worker's connections of a listener with a single periodic timer.
#[derive(Default)]
struct Watchdog {
    conns: std::sync::Mutex<Vec<Watched>>,
}

impl Watchdog {
    fn watch(&self, a: &Arc<Activity>) {
        if let Ok(mut c) = self.conns.lock() {
            c.push(Watched {
                activity: Arc::downgrade(a),
                head_since: None,
                last_events: u64::MAX,
                quiet_since: Instant::now(),
            });
        }
    }

    fn scan(&self, header_timeout: Duration, idle: Duration) {
        let now = Instant::now();
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        conns.retain_mut(|w| {
            let Some(a) = w.activity.upgrade() else {
                return false;
            };
            let in_flight = a.in_flight.load(Ordering::Relaxed);
            let reads = a.reads.load(Ordering::Relaxed);
            let events = reads.wrapping_add(a.writes.load(Ordering::Relaxed));
            // A request head is being read: bytes arrived (or none yet) since the connection
            // was last idle, and no request has started.
            let reading_head = in_flight == 0 && reads != a.reads_at_idle.load(Ordering::Relaxed);
            if reading_head {
                let since = *w.head_since.get_or_insert(now);
                if now.duration_since(since) >= header_timeout {
                    a.decide(CLOSE_NOW);
                }
            } else {
                w.head_since = None;
            }
            if events != w.last_events || in_flight > 0 {
                w.last_events = events;
                w.quiet_since = now;
            } else if now.duration_since(w.quiet_since) >= idle {
                a.decide(CLOSE_GRACEFULLY);
            }
            true
        });
    }

    fn close_all(&self) {
        if let Ok(conns) = self.conns.lock() {
            for w in conns.iter() {
                if let Some(a) = w.activity.upgrade() {
                    a.decide(CLOSE_GRACEFULLY);
                }
            }
        }
    }
}

struct InFlightGuard(Arc<Activity>);
impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0
                .reads_at_idle
                .store(self.0.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.0.touch();
    }
}

/// Vectored writes up to this many bytes are copied into one buffer and written at once.
const FLATTEN_UP_TO: usize = 4096;

/// A stream that counts its reads and writes for the watchdog.
struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Follows HTTP/1 request heads for framing mistakes hyper forgives.
    scanner: crate::sanitize::framing::HeadScanner,
    framing: Arc<crate::sanitize::framing::FramingVerdict>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
            let this = &mut *self;
            if this.scanner.active() {
                this.scanner.feed(&buf.filled()[before..], &this.framing);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total = bufs.iter().fold(0usize, |t, b| t.saturating_add(b.len()));
        let r = if bufs.len() > 1 && total <= FLATTEN_UP_TO {
            // A small response (head and body, or a chunk with its framing) goes out in one
            // plain write: the kernel's `writev` path costs more than the copy, and under TLS
            // it makes one record instead of several.
            let mut one = Vec::with_capacity(total);
            for b in bufs {
                one.extend_from_slice(b);
            }
            Pin::new(&mut self.inner).poll_write(cx, &one)
        } else {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    builder: &auto::Builder<TokioExecutor>,
    pipeline: stack::Pipeline,
    watchdog: &Watchdog,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    watchdog.watch(&activity);
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
        scanner: crate::sanitize::framing::HeadScanner::default(),
        framing: info.framing.clone(),
    });
    let act = activity.clone();
    let peer = info.peer;
    // One allocation per connection; each request clones this Arc (a count no other thread touches).
    let info = Arc::new(info);
    // The connection's own handle on the pipeline: called in place, not cloned per request.
    let pipeline = std::cell::RefCell::new(pipeline);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        act.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(act.clone());
        let req: Request<crate::Body> = req.map(crate::boxed);
        let fut = call_pipeline(&pipeline, req);
        async move {
            let res = fut.await;
            drop(guard);
            res
        }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    let res = std::future::poll_fn(|cx| {
        activity.waker.register(cx.waker());
        match activity.verdict.load(Ordering::Acquire) {
            CLOSE_NOW => return Poll::Ready(Ok(())),
            CLOSE_GRACEFULLY if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
    }
}

/// Calls the pipeline in place when it is ready (every stage is, unless one applies
/// backpressure), otherwise on a clone that waits for readiness.
fn call_pipeline(
    pipeline: &std::cell::RefCell<stack::Pipeline>,
    req: Request<crate::Body>,
) -> crate::BoxFuture<Result<http::Response<crate::Body>, std::convert::Infallible>> {
    let mut p = pipeline.borrow_mut();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match tower::Service::poll_ready(&mut *p, &mut cx) {
        Poll::Ready(Ok(())) => tower::Service::call(&mut *p, req),
        _ => Box::pin(p.clone().oneshot(req)),
    }
}

/// Open connections per client IP on one listener (shared by all workers).
struct PerIp {
    /// Most per IP; 0: unlimited (nothing is counted).
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its IP's count, given back when dropped.
struct IpSlot(Option<(Arc<PerIp>, std::net::IpAddr)>);

impl PerIp {
    /// A slot for a new connection from `ip`, or `None` when `ip` is at its limit.
    fn take(this: &Arc<PerIp>, ip: std::net::IpAddr) -> Option<IpSlot> {
        if this.max == 0 {
            return Some(IpSlot(None));
        }
        let mut open = this
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((this.clone(), ip))))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut open = per_ip
                .open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// What every worker knows about one listener.
#[derive(Clone)]
struct ListenerShare {
    settings: Arc<ListenerSettings>,
    /// One connection limit per listener, shared by all workers.
    limit: Arc<Semaphore>,
    /// Connections per client IP.
    per_ip: Arc<PerIp>,
    tls: Option<Arc<crate::tls::TlsStore>>,
}

fn record_not_after(metrics: &Metrics, listener: &str, not_after: &crate::tls::NotAfter) {
    for (kind, subject, exp) in not_after {
        metrics
            .tls_not_after
            .with_label_values(&[listener, kind, subject])
            .set(*exp);
    }
}

/// Reloads a listener's TLS material when its files change, and on demand (SIGHUP).
async fn watch_tls(
    store: Arc<crate::tls::TlsStore>,
    metrics: Metrics,
    every: Duration,
    trigger: Arc<Notify>,
) {
    let every = if every.is_zero() {
        Duration::from_secs(3600)
    } else {
        every
    };
    loop {
        let force = tokio::select! {
            () = trigger.notified() => true,
            () = tokio::time::sleep(every) => false,
        };
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || s.reload(force))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok(None) => {}
            Ok(Some(not_after)) => {
                record_not_after(&metrics, &store.listener, &not_after);
                metrics
                    .tls_reloads
                    .with_label_values(&[&store.listener, "success"])
                    .inc();
                tracing::info!(listener = %store.listener, "TLS material reloaded");
            }
            Err(e) => {
                metrics
                    .tls_reloads
                    .with_label_values(&[&store.listener, "failure"])
                    .inc();
                tracing::error!(listener = %store.listener, error = %e, "TLS material rejected; the previous certificates stay in use");
            }
        }
    }
}

/// Runs the TLS handshake (bounded by the header-read timeout) and reads the peer's identity.
async fn handshake(
    stream: TcpStream,
    mut info: ConnInfo,
    store: &crate::tls::TlsStore,
    metrics: &Metrics,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    let listener = &*store.listener;
    let result = match tokio::time::timeout(timeout, store.acceptor().accept(stream)).await {
        Err(_) => Err("timeout"),
        Ok(Err(e)) => {
            let kind = crate::tls::classify(&e);
            tracing::debug!(peer = %info.peer, error = %e, result = kind, "TLS handshake refused");
            Err(kind)
        }
        Ok(Ok(s)) => Ok(s),
    };
    let tls = match result {
        Ok(s) => s,
        Err(kind) => {
            metrics
                .tls_handshakes
                .with_label_values(&[listener, kind])
                .inc();
            return None;
        }
    };
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "other",
    };
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http/1.1",
        Some(_) => "other",
        None => "none",
    };
    info.identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| crate::tls::identity::PeerIdentity::from_der(der).ok())
        .map(Arc::new);
    info.tls = true;
    metrics
        .tls_handshakes
        .with_label_values(&[listener, "ok"])
        .inc();
    metrics
        .tls_connections
        .with_label_values(&[listener, version, alpn])
        .inc();
    Some((tls, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    /// Records how it was written to.
    #[derive(Default)]
    struct Recorder {
        plain: Vec<Vec<u8>>,
        vectored: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.plain.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored.push(bufs.len());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn io() -> ActivityIo<Recorder> {
        ActivityIo {
            inner: Recorder::default(),
            activity: Arc::new(Activity::new()),
            scanner: crate::sanitize::framing::HeadScanner::default(),
            framing: Arc::default(),
        }
    }

    #[test]
    fn small_vectored_writes_go_out_as_one_write_of_the_same_bytes() {
        let mut io = io();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let bufs = [
            IoSlice::new(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
            IoSlice::new(b""),
            IoSlice::new(b"{}"),
        ];
        let n = Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs);
        assert!(matches!(n, Poll::Ready(Ok(40))), "{n:?}");
        assert_eq!(
            io.inner.plain,
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()]
        );
        assert!(io.inner.vectored.is_empty());
        assert_eq!(io.activity.writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn large_or_single_vectored_writes_pass_through() {
        let mut io = io();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let big = vec![b'x'; FLATTEN_UP_TO];
        let bufs = [IoSlice::new(b"1000\r\n"), IoSlice::new(&big)];
        let n = Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs);
        assert!(
            matches!(n, Poll::Ready(Ok(k)) if k == FLATTEN_UP_TO + 6),
            "{n:?}"
        );
        let one = [IoSlice::new(b"abc")];
        let _ = Pin::new(&mut io).poll_write_vectored(&mut cx, &one);
        assert_eq!(io.inner.vectored, vec![2, 1]);
        assert!(io.inner.plain.is_empty());
    }
}
