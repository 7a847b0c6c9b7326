//! Ownership lookups for object-level authorization (BOLA): "is object X owned by this caller?",
//! answered by Redis (`SISMEMBER key member`) or by an HTTP ownership service (`GET url`), behind
//! a bounded answer cache.
//!
//! Everything fails closed: a timeout, a refused connection, an unexpected status or a Redis
//! error is a [`LookupError`], never an answer; the caller turns it into a deny. Errors are never
//! cached. Concurrent identical questions share one backend call.
//!
//! Redis: the connection is created lazily, on the first Redis question, by a dedicated thread
//! (`portcullis-redis`) running its own event loop; the connection's driver task and every
//! command run there, so callers on any runtime (one per traffic worker) only exchange messages
//! with it and never depend on another worker's event loop being alive. The connection is
//! replaced when it breaks or stalls; while Redis is unreachable, reconnects are spaced out
//! (100 ms doubling to 1 s) and questions in between fail at once. The thread ends when its
//! [`Lookups`] is dropped.
//!
//! HTTP: one short connection per backend call, on the caller's own event loop (`http`, or
//! `https` with the Mozilla roots). The response body is discarded (at most 64 KiB is read).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, watch};

/// At most this much of an ownership service's response body is read (and discarded).
const MAX_HTTP_BODY: usize = 64 * 1024;
/// Redis questions waiting for the Redis thread; beyond this they fail at once.
const REDIS_QUEUE: usize = 4096;
/// Time allowed for one Redis connect (independent of the question that triggered it, so a
/// short per-question timeout cannot keep the connection from ever being made).
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Minimum gap between Redis connects; doubles while connects fail, up to the maximum.
const REDIS_RETRY_MIN: Duration = Duration::from_millis(100);
const REDIS_RETRY_MAX: Duration = Duration::from_secs(1);

/// How one kind of question is asked and how long its answers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupPolicy {
    /// The longest a question may take in total (waiting for a shared call included).
    pub timeout: Duration,
    /// How long a `true` answer is cached (zero: not cached).
    pub positive_ttl: Duration,
    /// How long a `false` answer is cached (zero: not cached).
    pub negative_ttl: Duration,
}

/// One ownership question, with the caller's and the object's ids already substituted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Question {
    /// `SISMEMBER key member`: 1 is `true`, 0 is `false`.
    RedisSetMember {
        /// The set's key.
        key: String,
        /// The member to look for.
        member: String,
    },
    /// `GET url`: `expect_status` is `true`, 404 or 403 is `false`, anything else an error.
    Http {
        /// An `http` or `https` URL.
        url: String,
        /// The status that means "owned".
        expect_status: u16,
    },
}

/// Shows the kind of question and the sizes only: keys, members and URLs carry ids.
impl std::fmt::Debug for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Question::RedisSetMember { key, member } => f
                .debug_struct("RedisSetMember")
                .field("key_len", &key.len())
                .field("member_len", &member.len())
                .finish(),
            Question::Http { url, expect_status } => f
                .debug_struct("Http")
                .field("url_len", &url.len())
                .field("expect_status", expect_status)
                .finish(),
        }
    }
}

/// Why a question has no answer (the caller denies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No answer within the policy's timeout.
    #[error("lookup timed out")]
    Timeout,
    /// The backend failed (connection, unexpected status, Redis error).
    #[error("lookup failed: {0}")]
    Failed(String),
    /// A Redis question, but no Redis is configured.
    #[error("no redis configured")]
    NoRedis,
}

/// The outcome of a call in flight, published to the callers waiting for it.
type Shared = Option<Result<bool, LookupError>>;

/// The ownership lookups of one compiled config: the Redis connection (if any), the answer
/// cache and the calls in flight. `Send + Sync`; share it in an `Arc`.
pub struct Lookups {
    redis: Option<Redis>,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<Question, watch::Sender<Shared>>>,
    hits: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Answers given in advance (`portcullis explain`): no backend is asked.
    offline: Option<Offline>,
    /// Answers are also kept in Redis (shared by every replica), not only in memory.
    shared_cache: bool,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("redis", &self.redis.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Lookups {
    /// `redis_url` like `redis://127.0.0.1:6379/0` (None: Redis questions fail with
    /// [`LookupError::NoRedis`]); `max_cache_entries` bounds the answer cache (0 = no cache).
    /// Nothing connects yet: Redis is dialed on the first Redis question.
    ///
    /// # Errors
    /// When `redis_url` is not a usable Redis URL (the message never repeats the URL, which
    /// may hold a password).
    pub fn new(redis_url: Option<&str>, max_cache_entries: usize) -> Result<Self, String> {
        let redis = match redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url).map_err(|e| {
                    format!(
                        "invalid Redis URL ({:?}); expected redis://[user:password@]host:port/db",
                        e.kind()
                    )
                })?;
                Some(Redis {
                    client,
                    worker: ArcSwapOption::empty(),
                    start: Mutex::new(()),
                })
            }
        };
        Ok(Self {
            redis,
            cache: Mutex::new(Cache::new(max_cache_entries)),
            inflight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            offline: None,
            shared_cache: false,
        })
    }

    /// Keeps answers in Redis too (key `portcullis:ownership:<sha256 of the question>`, expiring
    /// with the answer's TTL), so every replica sharing that Redis reuses them. Needs Redis.
    #[must_use]
    pub fn with_shared_cache(mut self, on: bool) -> Self {
        self.shared_cache = on && self.redis.is_some();
        self
    }

    fn shared_key(q: &Question) -> String {
        let text = match q {
            Question::RedisSetMember { key, member } => format!("redis\n{key}\n{member}"),
            Question::Http { url, expect_status } => format!("http\n{url}\n{expect_status}"),
        };
        let digest = crate::tls::identity::sha256(text.as_bytes());
        format!(
            "portcullis:ownership:{}",
            crate::observe::request_id::to_hex(&digest)
        )
    }

    /// Answers from the cache (true answers live `positive_ttl`, false ones `negative_ttl`;
    /// errors are never cached) or asks; never waits longer than `policy.timeout` in total.
    ///
    /// # Errors
    /// Any failure or timeout: the caller must deny.
    pub async fn ask(&self, q: &Question, policy: &LookupPolicy) -> Result<bool, LookupError> {
        let result = match &self.offline {
            Some(o) => o.answer(q),
            None => self.ask_inner(q, policy).await,
        };
        if let Err(e) = &result {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(question = ?q, error = %e, "ownership lookup failed");
        }
        result
    }

    /// (cache hits, backend calls, errors) so far, for tests and metrics. A question answered
    /// by another caller's call in flight counts as a hit.
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    async fn ask_inner(&self, q: &Question, policy: &LookupPolicy) -> Result<bool, LookupError> {
        let deadline = Instant::now() + policy.timeout;
        let redis = match q {
            Question::RedisSetMember { .. } => {
                Some(self.redis.as_ref().ok_or(LookupError::NoRedis)?)
            }
            Question::Http { .. } => None,
        };
        loop {
            if let Some(answer) = self.cached(q) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(answer);
            }
            // Join the call in flight for the same question, or become the one making it.
            let mut waiting = {
                let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
                match inflight.get(q) {
                    Some(tx) => Some(tx.subscribe()),
                    None => {
                        inflight.insert(q.clone(), watch::channel(None).0);
                        None
                    }
                }
            };
            if let Some(rx) = waiting.as_mut() {
                let shared = tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some))
                    .await
                    .map_err(|_| LookupError::Timeout)?;
                match shared.as_deref() {
                    Ok(Some(result)) => {
                        if result.is_ok() {
                            self.hits.fetch_add(1, Ordering::Relaxed);
                        }
                        return result.clone();
                    }
                    // The caller making the call gave up (dropped): ask again.
                    _ => continue,
                }
            }
            let flight = Flight {
                lookups: self,
                q,
                done: false,
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            // The answer another replica put in the shared cache, if any (a miss or an error
            // there just means asking the backend).
            if self.shared_cache
                && let Some(r) = &self.redis
                && let Ok(Some(answer)) = r
                    .run(
                        Cmd::Get {
                            key: Self::shared_key(q),
                        },
                        deadline,
                    )
                    .await
            {
                let ttl = if answer {
                    policy.positive_ttl
                } else {
                    policy.negative_ttl
                };
                self.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(q, answer, ttl);
                self.hits.fetch_add(1, Ordering::Relaxed);
                let result = Ok(answer);
                flight.finish(&result);
                return result;
            }
            let call = async {
                match (q, redis) {
                    (Question::RedisSetMember { key, member }, Some(redis)) => {
                        redis.sismember(key, member, deadline).await
                    }
                    (Question::Http { url, expect_status }, _) => {
                        http_get(url, *expect_status, deadline).await
                    }
                    (Question::RedisSetMember { .. }, None) => Err(LookupError::NoRedis),
                }
            };
            let Ok(result) = tokio::time::timeout_at(deadline.into(), call).await else {
                // Out of time: dropping the flight unpublished lets callers with later
                // deadlines ask again rather than share this caller's timeout.
                drop(flight);
                return Err(LookupError::Timeout);
            };
            if let Ok(answer) = result {
                let ttl = if answer {
                    policy.positive_ttl
                } else {
                    policy.negative_ttl
                };
                self.cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(q, answer, ttl);
                if self.shared_cache
                    && let Some(r) = &self.redis
                    && !ttl.is_zero()
                {
                    // Fire and forget: the request does not wait for the cache write.
                    let _ = r.queue().map(|tx| {
                        // The Redis thread skips jobs nobody waits for: keep the reply's
                        // receiver alive until the write is done.
                        let (reply, done) = oneshot::channel();
                        tokio::spawn(async move {
                            let _ = done.await;
                        });
                        tx.try_send(Job {
                            cmd: Cmd::SetPx {
                                key: Self::shared_key(q),
                                value: answer,
                                ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                            },
                            deadline: Instant::now() + Duration::from_secs(1),
                            reply,
                            retried: false,
                        })
                    });
                }
            }
            flight.finish(&result);
            return result;
        }
    }

    fn cached(&self, q: &Question) -> Option<bool> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(q)
    }
}

/// The call in flight for one question; removed from the in-flight map when finished or
/// abandoned (the caller's future dropped), so waiting callers never wait for nothing.
struct Flight<'a> {
    lookups: &'a Lookups,
    q: &'a Question,
    done: bool,
}

impl Flight<'_> {
    fn finish(mut self, result: &Result<bool, LookupError>) {
        self.done = true;
        let mut inflight = self
            .lookups
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = inflight.remove(self.q) {
            tx.send_replace(Some(result.clone()));
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Dropping the sender wakes the waiters, who then ask again.
            self.lookups
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(self.q);
        }
    }
}

/// A bounded answer cache: entries expire at their deadline; when full, the oldest entry goes.
struct Cache {
    max: usize,
    map: HashMap<Arc<Question>, Entry>,
    /// Insertion order, with the insertion number (entries replaced since are skipped).
    order: VecDeque<(Arc<Question>, u64)>,
    seq: u64,
}

struct Entry {
    answer: bool,
    expires: Instant,
    seq: u64,
}

impl Cache {
    fn new(max: usize) -> Self {
        Self {
            max,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    fn get(&mut self, q: &Question) -> Option<bool> {
        let entry = self.map.get(q)?;
        if entry.expires > Instant::now() {
            return Some(entry.answer);
        }
        self.map.remove(q);
        None
    }

    fn insert(&mut self, q: &Question, answer: bool, ttl: Duration) {
        if self.max == 0 || ttl.is_zero() {
            return;
        }
        let Some(expires) = Instant::now().checked_add(ttl) else {
            return;
        };
        self.seq += 1;
        let key = Arc::new(q.clone());
        self.map.insert(
            key.clone(),
            Entry {
                answer,
                expires,
                seq: self.seq,
            },
        );
        self.order.push_back((key, self.seq));
        while self.map.len() > self.max {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                self.map.remove(&old);
            }
        }
        // Replaced and expired entries leave stale positions behind; drop them now and then.
        if self.order.len() > 2 * self.max + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// The Redis side: the client (URL parsed, nothing dialed) and the queue to the Redis thread.
struct Redis {
    client: redis::Client,
    worker: ArcSwapOption<mpsc::Sender<Job>>,
    start: Mutex<()>,
}

/// A command for the Redis thread.
#[derive(Clone)]
enum Cmd {
    /// `SISMEMBER key member` → yes / no.
    IsMember { key: String, member: String },
    /// `GET key` of a shared cached answer → `1` / `0` / none.
    Get { key: String },
    /// `SET key 1|0 PX ms` (a shared cached answer).
    SetPx { key: String, value: bool, ms: u64 },
}

/// One command for the Redis thread.
struct Job {
    cmd: Cmd,
    deadline: Instant,
    reply: oneshot::Sender<Result<Option<bool>, LookupError>>,
    /// Already resubmitted once after the connection broke under it.
    retried: bool,
}

impl Redis {
    async fn sismember(
        &self,
        key: &str,
        member: &str,
        deadline: Instant,
    ) -> Result<bool, LookupError> {
        let cmd = Cmd::IsMember {
            key: key.to_owned(),
            member: member.to_owned(),
        };
        match self.run(cmd, deadline).await? {
            Some(b) => Ok(b),
            None => Err(LookupError::Failed("Redis: no SISMEMBER reply".into())),
        }
    }

    async fn run(&self, cmd: Cmd, deadline: Instant) -> Result<Option<bool>, LookupError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            cmd,
            deadline,
            reply,
            retried: false,
        };
        self.queue()?.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                LookupError::Failed("too many Redis lookups waiting".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                LookupError::Failed("the Redis lookup thread stopped".into())
            }
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(LookupError::Failed("the Redis lookup was dropped".into())))
    }

    /// The queue to the Redis thread, starting the thread on first use (or again if it ended).
    fn queue(&self) -> Result<Arc<mpsc::Sender<Job>>, LookupError> {
        if let Some(tx) = self.worker.load_full() {
            if !tx.is_closed() {
                return Ok(tx);
            }
        }
        let _starting = self.start.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = self.worker.load_full() {
            if !tx.is_closed() {
                return Ok(tx);
            }
        }
        let tx = Arc::new(spawn_redis_thread(self.client.clone())?);
        self.worker.store(Some(tx.clone()));
        Ok(tx)
    }
}

fn spawn_redis_thread(client: redis::Client) -> Result<mpsc::Sender<Job>, LookupError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LookupError::Failed(format!("cannot start the Redis lookup loop: {e}")))?;
    let (tx, rx) = mpsc::channel(REDIS_QUEUE);
    let weak = tx.downgrade();
    std::thread::Builder::new()
        .name("portcullis-redis".into())
        .spawn(move || rt.block_on(redis_loop(client, rx, weak)))
        .map_err(|e| LookupError::Failed(format!("cannot start the Redis lookup thread: {e}")))?;
    Ok(tx)
}

/// A live connection and what its commands observed.
#[derive(Clone)]
struct Conn {
    mux: redis::aio::MultiplexedConnection,
    /// Set by a command that saw the connection fail or stall: the next question reconnects.
    broken: Arc<AtomicBool>,
    /// Replies received (to tell a stalled connection from a slow command).
    replies: Arc<AtomicU64>,
}

/// The Redis thread: owns the connection, dials it when needed, and runs each question as a
/// task of this thread's event loop. Ends when every [`Lookups`] handle to it is gone.
async fn redis_loop(
    client: redis::Client,
    mut jobs: mpsc::Receiver<Job>,
    requeue: mpsc::WeakSender<Job>,
) {
    // Our own deadlines apply, not the crate's defaults.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None);
    let mut conn: Option<Conn> = None;
    let mut next_connect = Instant::now();
    let mut retry = REDIS_RETRY_MIN;
    let mut down = false;
    while let Some(job) = jobs.recv().await {
        if job.reply.is_closed() || job.deadline <= Instant::now() {
            continue;
        }
        if conn
            .as_ref()
            .is_some_and(|c| c.broken.load(Ordering::Relaxed))
        {
            tracing::debug!("ownership Redis connection dropped; reconnecting");
            conn = None;
        }
        let c = match &conn {
            Some(c) => c.clone(),
            None => {
                // Connects are spaced out; a question that cannot wait that long fails now.
                if Instant::now() < next_connect {
                    if job.deadline <= next_connect {
                        let _ = job
                            .reply
                            .send(Err(LookupError::Failed("Redis unavailable".into())));
                        continue;
                    }
                    tokio::time::sleep_until(next_connect.into()).await;
                }
                let dialed = tokio::time::timeout(
                    REDIS_CONNECT_TIMEOUT,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await;
                match dialed {
                    Ok(Ok(mux)) => {
                        if down {
                            tracing::info!("ownership Redis reachable again");
                            down = false;
                        }
                        retry = REDIS_RETRY_MIN;
                        next_connect = Instant::now() + REDIS_RETRY_MIN;
                        let c = Conn {
                            mux,
                            broken: Arc::new(AtomicBool::new(false)),
                            replies: Arc::new(AtomicU64::new(0)),
                        };
                        conn = Some(c.clone());
                        c
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => format!("Redis connect: {e}"),
                            _ => {
                                format!("Redis connect: no answer within {REDIS_CONNECT_TIMEOUT:?}")
                            }
                        };
                        if !down {
                            tracing::warn!(error = %why, "ownership Redis unavailable; Redis ownership checks deny until it is back");
                            down = true;
                        }
                        next_connect = Instant::now() + retry;
                        retry = (retry * 2).min(REDIS_RETRY_MAX);
                        let _ = job.reply.send(Err(LookupError::Failed(why)));
                        continue;
                    }
                }
            }
        };
        tokio::spawn(run_job(c, job, requeue.clone()));
    }
}

async fn run_job(mut c: Conn, job: Job, requeue: mpsc::WeakSender<Job>) {
    let before = c.replies.load(Ordering::Relaxed);
    let query = async {
        match &job.cmd {
            Cmd::IsMember { key, member } => {
                tracing::debug!(key = %key, "ownership SISMEMBER");
                redis::cmd("SISMEMBER")
                    .arg(key)
                    .arg(member)
                    .query_async::<i64>(&mut c.mux)
                    .await
                    .map(|n| Some(n == 1))
            }
            Cmd::Get { key } => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c.mux)
                .await
                .map(|v| match v.as_deref() {
                    Some("1") => Some(true),
                    Some("0") => Some(false),
                    _ => None,
                }),
            Cmd::SetPx { key, value, ms } => redis::cmd("SET")
                .arg(key)
                .arg(if *value { "1" } else { "0" })
                .arg("PX")
                .arg(*ms)
                .query_async::<()>(&mut c.mux)
                .await
                .map(|()| None),
        }
    };
    let asked = tokio::time::timeout_at(job.deadline.into(), query).await;
    let result = match asked {
        Ok(Ok(v)) => {
            c.replies.fetch_add(1, Ordering::Relaxed);
            Ok(v)
        }
        Ok(Err(e))
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() =>
        {
            c.broken.store(true, Ordering::Relaxed);
            // Every command here is idempotent: ask once more on a new connection.
            if !job.retried {
                if let Some(tx) = requeue.upgrade() {
                    let again = Job {
                        retried: true,
                        ..job
                    };
                    if let Err(e) = tx.try_send(again) {
                        let job = match e {
                            mpsc::error::TrySendError::Full(j)
                            | mpsc::error::TrySendError::Closed(j) => j,
                        };
                        let _ = job
                            .reply
                            .send(Err(LookupError::Failed("Redis connection lost".into())));
                    }
                }
                return;
            }
            Err(LookupError::Failed(format!("Redis: {e}")))
        }
        Ok(Err(e)) => {
            c.replies.fetch_add(1, Ordering::Relaxed);
            Err(LookupError::Failed(format!("Redis: {e}")))
        }
        Err(_) => {
            if c.replies.load(Ordering::Relaxed) == before {
                // Nothing came back on this connection meanwhile: treat it as stalled.
                c.broken.store(true, Ordering::Relaxed);
            }
            Err(LookupError::Timeout)
        }
    };
    let _ = job.reply.send(result);
}

/// `GET url` on a new connection: `expect_status` is `true`, 404 and 403 are `false`.
async fn http_get(url: &str, expect_status: u16, deadline: Instant) -> Result<bool, LookupError> {
    let failed = |what: String| LookupError::Failed(what);
    let uri: http::Uri = url
        .parse()
        .map_err(|_| failed("bad ownership URL".into()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(failed("the ownership URL must be http or https".into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| failed("the ownership URL has no host".into()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| failed(format!("ownership service connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    // Host without any userinfo of the URL.
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let res = if https {
        let config = https_config()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| failed("bad ownership service host name".into()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("ownership service TLS: {e}")))?;
        crate::authn::jwks::exchange(TokioIo::new(tls), req, deadline)
            .await
            .map_err(|e| LookupError::Failed(format!("ownership service HTTP: {e}")))?
    } else {
        crate::authn::jwks::exchange(TokioIo::new(tcp), req, deadline)
            .await
            .map_err(|e| LookupError::Failed(format!("ownership service HTTP: {e}")))?
    };
    let status = res.status().as_u16();
    let answer = if status == expect_status {
        Ok(true)
    } else if status == 404 || status == 403 {
        Ok(false)
    } else {
        Err(failed(format!("ownership service answered {status}")))
    };
    // Read (and discard) at most MAX_HTTP_BODY of the body, so the exchange ends cleanly.
    let mut body = res.into_body();
    let mut read = 0usize;
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while read < MAX_HTTP_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    })
    .await;
    answer
}

/// The TLS client config for `https` ownership services (Mozilla roots), built once.
fn https_config() -> Result<Arc<rustls::ClientConfig>, LookupError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::authn::jwks::client_config(&[]))
        .clone()
        .map_err(LookupError::Failed)
}

/// Answers given in advance, for `portcullis explain`: no backend is asked, and a question
/// without an answer fails (the caller denies, as for an unreachable backend).
struct Offline {
    answers: HashMap<String, bool>,
    /// Questions asked, in order, with their answers.
    asked: Mutex<Vec<(String, Option<bool>)>>,
}

impl Offline {
    fn answer(&self, q: &Question) -> Result<bool, LookupError> {
        let key = q.offline_key();
        let answer = self.answers.get(&key).copied();
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, answer));
        answer.ok_or_else(|| LookupError::Failed("no offline answer for this question".into()))
    }
}

impl Question {
    /// The question as `portcullis explain --lookup` writes it: `redis <key> <member>` or
    /// `http <url>`. Carries ids: for the operator's terminal, never for logs.
    pub fn offline_key(&self) -> String {
        match self {
            Question::RedisSetMember { key, member } => format!("redis {key} {member}"),
            Question::Http { url, .. } => format!("http {url}"),
        }
    }
}

impl Lookups {
    /// Lookups answered only from `answers` (keyed by [`Question::offline_key`]); any other
    /// question fails with [`LookupError::Failed`]. Nothing is cached or dialed.
    ///
    /// # Errors
    /// None in practice (no Redis URL is parsed).
    pub fn offline(answers: HashMap<String, bool>) -> Result<Self, String> {
        let mut l = Self::new(None, 0)?;
        l.offline = Some(Offline {
            answers,
            asked: Mutex::new(Vec::new()),
        });
        Ok(l)
    }

    /// The questions asked of offline lookups so far, with their answers (`None`: not
    /// answered); empty for live lookups.
    pub fn offline_asked(&self) -> Vec<(String, Option<bool>)> {
        self.offline.as_ref().map_or_else(Vec::new, |o| {
            o.asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: usize) -> Question {
        Question::RedisSetMember {
            key: format!("k{n}"),
            member: "m".into(),
        }
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_oldest() {
        let mut c = Cache::new(3);
        for n in 0..5 {
            c.insert(&q(n), true, Duration::from_secs(60));
        }
        assert_eq!(c.map.len(), 3);
        assert_eq!(c.get(&q(0)), None);
        assert_eq!(c.get(&q(1)), None);
        assert_eq!(c.get(&q(4)), Some(true));
        // Replacing an entry many times keeps the order queue bounded too.
        for _ in 0..1000 {
            c.insert(&q(4), false, Duration::from_secs(60));
        }
        assert!(c.order.len() <= 2 * 3 + 64 + 1);
        assert_eq!(c.get(&q(4)), Some(false));
        assert_eq!(c.get(&q(2)), Some(true));
    }

    #[test]
    fn cache_expires_and_zero_disables() {
        let mut c = Cache::new(10);
        c.insert(&q(1), true, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&q(1)), None);
        c.insert(&q(2), true, Duration::ZERO);
        assert_eq!(c.get(&q(2)), None);
        let mut none = Cache::new(0);
        none.insert(&q(3), true, Duration::from_secs(60));
        assert_eq!(none.get(&q(3)), None);
    }

    #[test]
    fn debug_hides_ids() {
        let s = format!(
            "{:?}",
            Question::Http {
                url: "http://own/accounts/4711/owner/alice".into(),
                expect_status: 200
            }
        );
        assert!(!s.contains("4711") && !s.contains("alice"), "{s}");
    }

    #[test]
    fn bad_redis_url_does_not_echo_it() {
        let e = Lookups::new(Some("nonsense://:hunter2@x"), 10).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn no_redis_is_an_error() {
        let l = Lookups::new(None, 10).unwrap_or_else(|e| unreachable!("{e}"));
        let p = LookupPolicy {
            timeout: Duration::from_millis(100),
            positive_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(1),
        };
        assert_eq!(l.ask(&q(1), &p).await, Err(LookupError::NoRedis));
        assert_eq!(l.stats(), (0, 0, 1));
    }
}
