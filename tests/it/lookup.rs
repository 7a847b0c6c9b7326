//! Ownership lookups against a real `redis-server` and a real HTTP ownership service: answers,
//! cache lifetimes, sharing of concurrent calls, and failing closed within the timeout when the
//! backend is down, frozen or slow (and recovering by itself).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis::authz::lookup::{LookupError, LookupPolicy, Lookups, Question};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::redis::RedisServer;
use crate::support::{closed_port, eventually};

/// How much later than its timeout a failing lookup may return.
const MARGIN: Duration = Duration::from_millis(500);

fn policy(timeout_ms: u64, ttl_ms: u64) -> LookupPolicy {
    LookupPolicy {
        timeout: Duration::from_millis(timeout_ms),
        positive_ttl: Duration::from_millis(ttl_ms),
        negative_ttl: Duration::from_millis(ttl_ms),
    }
}

fn member(key: &str, member: &str) -> Question {
    Question::RedisSetMember {
        key: key.into(),
        member: member.into(),
    }
}

/// Asks and returns the answer with the time it took.
async fn timed(
    l: &Lookups,
    q: &Question,
    p: &LookupPolicy,
) -> (Result<bool, LookupError>, Duration) {
    let t = Instant::now();
    let r = l.ask(q, p).await;
    (r, t.elapsed())
}

/// Asks every 20 ms until the answer is `want`; fails naming `what` after `limit`.
async fn until(
    l: &Lookups,
    q: &Question,
    p: &LookupPolicy,
    want: bool,
    what: &str,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while l.ask(q, p).await != Ok(want) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_answers_and_cache_lifetimes() {
    let redis = RedisServer::start();
    redis.cmd(&["SADD", "owner:alice:accounts", "acct-1"]);
    let l = Lookups::new(Some(&redis.url()), 100).unwrap();
    let p = LookupPolicy {
        timeout: Duration::from_millis(500),
        positive_ttl: Duration::from_millis(400),
        negative_ttl: Duration::from_millis(250),
    };
    let owned = member("owner:alice:accounts", "acct-1");
    let other = member("owner:alice:accounts", "acct-2");

    let (r, first) = timed(&l, &owned, &p).await;
    assert_eq!(r, Ok(true));
    assert_eq!(l.ask(&other, &p).await, Ok(false));
    assert_eq!(l.stats(), (0, 2, 0));
    eprintln!("first Redis lookup (connect included): {first:?}");

    // Granted meanwhile: the cached negative answer holds until the negative TTL passes.
    let added = Instant::now();
    redis.cmd(&["SADD", "owner:alice:accounts", "acct-2"]);
    assert_eq!(l.ask(&other, &p).await, Ok(false));
    assert_eq!(l.stats(), (1, 2, 0));
    until(
        &l,
        &other,
        &p,
        true,
        "the negative answer to expire",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        added.elapsed() >= Duration::from_millis(200),
        "{:?}",
        added.elapsed()
    );

    // Revoked: the cached positive answer holds until the positive TTL passes.
    redis.cmd(&["SREM", "owner:alice:accounts", "acct-2"]);
    let removed = Instant::now();
    assert_eq!(l.ask(&other, &p).await, Ok(true));
    until(
        &l,
        &other,
        &p,
        false,
        "the positive answer to expire",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        removed.elapsed() >= Duration::from_millis(350),
        "{:?}",
        removed.elapsed()
    );

    // A key of another type is a Redis error: an error, never cached.
    redis.cmd(&["SET", "owner:bob:accounts", "x"]);
    let wrong = member("owner:bob:accounts", "acct-1");
    assert!(matches!(
        l.ask(&wrong, &p).await,
        Err(LookupError::Failed(_))
    ));
    let (_, calls, errors) = l.stats();
    assert!(matches!(
        l.ask(&wrong, &p).await,
        Err(LookupError::Failed(_))
    ));
    assert_eq!(l.stats().1, calls + 1);
    assert_eq!(l.stats().2, errors + 1);

    // Without Redis configured.
    let none = Lookups::new(None, 10).unwrap();
    assert_eq!(none.ask(&owned, &p).await, Err(LookupError::NoRedis));
}

#[tokio::test]
async fn redis_down_frozen_and_back() {
    let mut redis = RedisServer::start();
    redis.cmd(&["SADD", "owners", "o1"]);
    let l = Lookups::new(Some(&redis.url()), 0).unwrap();
    let p = policy(300, 0);
    let q = member("owners", "o1");
    assert_eq!(l.ask(&q, &p).await, Ok(true));

    // Frozen: the connection stays open and nothing answers.
    redis.freeze(true);
    for _ in 0..2 {
        let (r, took) = timed(&l, &q, &p).await;
        assert!(r.is_err(), "{r:?}");
        assert!(took < p.timeout + MARGIN, "frozen Redis: {took:?}");
        eprintln!("frozen Redis: {r:?} after {took:?}");
    }
    redis.freeze(false);
    until(
        &l,
        &q,
        &p,
        true,
        "lookups to work after a thaw",
        Duration::from_secs(3),
    )
    .await;

    // Stopped: refused connections, failing fast.
    redis.stop();
    for _ in 0..3 {
        let (r, took) = timed(&l, &q, &p).await;
        assert!(r.is_err(), "{r:?}");
        assert!(took < p.timeout + MARGIN, "stopped Redis: {took:?}");
        eprintln!("stopped Redis: {r:?} after {took:?}");
    }

    // Back (empty, same port): the same Lookups reconnects by itself.
    redis.restart();
    redis.cmd(&["SADD", "owners", "o1"]);
    let back = Instant::now();
    until(
        &l,
        &q,
        &p,
        true,
        "lookups to work after a restart",
        Duration::from_secs(3),
    )
    .await;
    eprintln!("recovered {:?} after the restart", back.elapsed());
    assert_eq!(l.ask(&member("owners", "o2"), &p).await, Ok(false));

    // Killed under a live connection, then back at once: the first question after the restart
    // is answered on a new connection.
    redis.restart();
    redis.cmd(&["SADD", "owners", "o1"]);
    let errors = l.stats().2;
    assert_eq!(l.ask(&q, &p).await, Ok(true));
    assert_eq!(l.stats().2, errors);

    // A Redis that was never there.
    let nowhere = Lookups::new(Some(&format!("redis://{}/0", closed_port())), 0).unwrap();
    let (r, took) = timed(&nowhere, &q, &p).await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");
    assert!(took < p.timeout + MARGIN, "{took:?}");
}

/// Lookups used from several event loops, one of which is gone before the others ask.
#[test]
fn redis_from_many_runtimes() {
    let redis = RedisServer::start();
    redis.cmd(&["SADD", "s", "m", "m0", "m2"]);
    let l = Arc::new(Lookups::new(Some(&redis.url()), 0).unwrap());
    let p = policy(1000, 0);
    let q = member("s", "m");
    let ask_on_own_runtime = |l: Arc<Lookups>, q: Question| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let t = Instant::now();
            let r = rt.block_on(l.ask(&q, &p));
            drop(rt);
            (r, t.elapsed())
        })
    };
    // The first asker (whose runtime then ends) makes the connection.
    let (r, _) = ask_on_own_runtime(l.clone(), q.clone()).join().unwrap();
    assert_eq!(r, Ok(true));
    let threads: Vec<_> = (0..4)
        .map(|i| ask_on_own_runtime(l.clone(), member("s", &format!("m{i}"))))
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (r, took) = t.join().unwrap();
        assert_eq!(r, Ok(i % 2 == 0));
        assert!(took < p.timeout, "{took:?}");
    }
    assert_eq!(l.stats(), (0, 5, 0));
}

/// An ownership service: `/owned/*` 200, `/forbidden/*` 403, `/error/*` 500, `/big/*` 200 with
/// 1 MiB of body, anything else 404; every answer after `delay_ms`. Counts calls.
struct OwnershipService {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl OwnershipService {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (c, d) = (calls.clone(), delay_ms.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, d) = (c.clone(), d.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| answer(c.clone(), d.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            calls,
            delay_ms,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Closes the listening socket: new connections are refused.
    async fn stop(&self) {
        self.accept.abort();
        let addr = self.addr;
        eventually(
            "the ownership service to close",
            Duration::from_secs(2),
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }
}

async fn answer(
    calls: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.uri().path();
    let (status, body) = if path.starts_with("/owned/") {
        (StatusCode::OK, Bytes::from_static(b"{\"owned\":true}"))
    } else if path.starts_with("/forbidden/") {
        (StatusCode::FORBIDDEN, Bytes::new())
    } else if path.starts_with("/error/") {
        (StatusCode::INTERNAL_SERVER_ERROR, Bytes::new())
    } else if path.starts_with("/big/") {
        (StatusCode::OK, Bytes::from(vec![b'x'; 1 << 20]))
    } else {
        (StatusCode::NOT_FOUND, Bytes::new())
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    Ok(res)
}

fn get(url: String) -> Question {
    Question::Http {
        url,
        expect_status: 200,
    }
}

#[tokio::test]
async fn http_answers_cache_and_failures() {
    let svc = OwnershipService::start().await;
    let l = Lookups::new(None, 100).unwrap();
    let p = policy(400, 2000);

    assert_eq!(l.ask(&get(svc.url("/owned/acct-1")), &p).await, Ok(true));
    assert_eq!(l.ask(&get(svc.url("/nope/acct-1")), &p).await, Ok(false));
    assert_eq!(
        l.ask(&get(svc.url("/forbidden/acct-1")), &p).await,
        Ok(false)
    );
    let r = l.ask(&get(svc.url("/error/acct-1")), &p).await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");
    // Another expected status: 200 is then neither "owned" nor "not owned".
    let q204 = Question::Http {
        url: svc.url("/owned/acct-1"),
        expect_status: 204,
    };
    assert!(matches!(
        l.ask(&q204, &p).await,
        Err(LookupError::Failed(_))
    ));
    // A large body is not read beyond 64 KiB and does not change the answer.
    let (r, took) = timed(&l, &get(svc.url("/big/acct-1")), &p).await;
    assert_eq!(r, Ok(true));
    eprintln!("1 MiB answer: {took:?}");
    assert_eq!(svc.calls(), 6);

    // Cached: repeated questions within the TTL make no new call; errors are not cached.
    for _ in 0..5 {
        assert_eq!(l.ask(&get(svc.url("/owned/acct-1")), &p).await, Ok(true));
        assert_eq!(l.ask(&get(svc.url("/nope/acct-1")), &p).await, Ok(false));
    }
    assert_eq!(svc.calls(), 6);
    assert!(l.ask(&get(svc.url("/error/acct-1")), &p).await.is_err());
    assert_eq!(svc.calls(), 7);
    let (hits, calls, errors) = l.stats();
    assert_eq!((hits, calls, errors), (10, 7, 3));

    // Slow: a timeout within the bound, not cached.
    svc.delay_ms.store(1500, Ordering::SeqCst);
    let (r, took) = timed(&l, &get(svc.url("/owned/acct-2")), &p).await;
    assert_eq!(r, Err(LookupError::Timeout));
    assert!(took >= p.timeout && took < p.timeout + MARGIN, "{took:?}");
    eprintln!("slow service: {r:?} after {took:?}");
    svc.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(l.ask(&get(svc.url("/owned/acct-2")), &p).await, Ok(true));

    // Down: nothing listens.
    let (r, took) = timed(&l, &get(format!("http://{}/owned/x", closed_port())), &p).await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");
    assert!(took < p.timeout + MARGIN, "{took:?}");

    // Stopped: cached answers still hold, new questions fail.
    svc.stop().await;
    assert_eq!(l.ask(&get(svc.url("/owned/acct-1")), &p).await, Ok(true));
    let (r, took) = timed(&l, &get(svc.url("/owned/acct-3")), &p).await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");
    assert!(took < p.timeout + MARGIN, "{took:?}");

    // Not a URL the lookups can use.
    assert!(l.ask(&get("ftp://x/y".into()), &p).await.is_err());
}

#[tokio::test]
async fn concurrent_identical_questions_share_one_call() {
    let svc = OwnershipService::start().await;
    svc.delay_ms.store(200, Ordering::SeqCst);
    // No cache at all: only the sharing of the call in flight saves calls.
    let l = Arc::new(Lookups::new(None, 0).unwrap());
    let p = policy(1000, 0);
    let q = get(svc.url("/owned/shared"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (l, q) = (l.clone(), q.clone());
        tasks.spawn(async move { l.ask(&q, &p).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), Ok(true));
    }
    assert_eq!(svc.calls(), 1);
    assert_eq!(l.stats(), (9, 1, 0));

    // A caller that gives up early (short timeout) does not leave the others waiting for
    // nothing: they ask again themselves.
    let short = policy(50, 0);
    let waiting = {
        let (l, q) = (l.clone(), q.clone());
        tokio::spawn(async move { l.ask(&q, &p).await })
    };
    assert_eq!(l.ask(&q, &short).await, Err(LookupError::Timeout));
    assert_eq!(waiting.await.unwrap(), Ok(true));
}
