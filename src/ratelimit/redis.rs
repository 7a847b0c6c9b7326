//! The shared limiter: GCRA in one Lua script run by Redis, so every replica that points at the
//! same Redis draws from the same buckets.
//!
//! - **One round-trip per decision.** The script is loaded once and called with `EVALSHA`
//!   (reloaded by itself after a Redis restart). It reads Redis's own clock (`TIME`), so replicas
//!   whose clocks differ still agree.
//! - **Keys** are `<prefix>:{<tenant>}:<bucket>`: namespaced, expiring when their bucket is full
//!   again, and hash-tagged by tenant so a Redis Cluster keeps a tenant's keys on one slot.
//! - **Connections** are multiplexed, one per traffic worker, dialled on the worker's own event
//!   loop when it first needs one, so a decision never hops threads.
//! - **Failure.** Every call (dial included) is bounded by the configured timeout. A failed call
//!   opens a breaker: for `probe_interval` no request waits on Redis at all (callers get
//!   [`Unavailable`] at once and apply their tier's failure mode); then one request probes, and
//!   its success closes the breaker for everyone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{Decision, Limit};

/// GCRA, identical to governor's (see `local.rs`), in microseconds.
///
/// KEYS[1] the bucket; ARGV: interval (µs per cell), burst, cost.
/// Returns {allowed (0/1), remaining, retry_after (µs, -1: never fits), reset (µs)}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tau = interval * (burst - 1)
local add = interval * (cost - 1)
if add > tau then
  return {0, 0, -1, interval * burst}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local earliest = tat + add - tau
if now < earliest then
  return {0, 0, earliest - now, tat - now}
end
local nxt = math.max(tat, now) + interval + add
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
local remaining = math.floor((now + tau + interval - nxt) / interval)
return {1, remaining, 0, nxt - now}
";

/// Redis could not decide (down, slow, or the breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The breaker is open: Redis was not asked.
    Skipped,
    /// The call did not answer within the timeout.
    Timeout,
    /// Connect or command error.
    Error,
}

impl Unavailable {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unavailable::Skipped => "skipped",
            Unavailable::Timeout => "timeout",
            Unavailable::Error => "error",
        }
    }
}

/// What the breaker lets a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Redis is healthy: ask it.
    Ask,
    /// Redis was down and the probe interval has passed: this caller asks, alone.
    Probe,
    /// Redis is down: do not ask.
    Skip,
}

/// Opens on a failure, lets one probe through per interval, closes on the probe's success.
#[derive(Debug)]
struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not asked; 0 while closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    probe_interval: Duration,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn admit(&self) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Ask;
        }
        if self.now_ms() < until {
            return Admission::Skip;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Skip,
        }
    }

    /// Returns whether the breaker was open (so the caller can log the recovery once).
    fn success(&self, probe: bool) -> bool {
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Returns whether the breaker was closed (so the caller can log the outage once).
    fn failure(&self, probe: bool) -> bool {
        let until = self.now_ms().saturating_add(
            u64::try_from(self.probe_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let was = self.open_until.swap(until, Ordering::AcqRel);
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        was == 0
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// A Redis-backed GCRA limiter shared by all gateway replicas.
pub struct RedisLimiter {
    client: redis::Client,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    /// One connection slot per traffic worker.
    conns: Vec<Mutex<Option<MultiplexedConnection>>>,
    /// Called with `true` when Redis goes down, `false` when it is back (metrics, logs).
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("open", &self.breaker.is_open())
            .finish_non_exhaustive()
    }
}

/// The Redis settings of the rate limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://…` (never logged: it may carry a password).
    pub url: String,
    /// The longest a decision waits on Redis.
    pub timeout: Duration,
    /// How long Redis is left alone after a failure before one request probes it.
    pub probe_interval: Duration,
    /// Key namespace.
    pub prefix: String,
}

impl RedisLimiter {
    /// A limiter for `workers` traffic workers; nothing is dialled yet.
    ///
    /// # Errors
    /// When the URL cannot be parsed (the message does not repeat it).
    pub fn new(
        settings: &RedisSettings,
        workers: usize,
        on_change: Box<dyn Fn(bool) + Send + Sync>,
    ) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("the rate-limit Redis URL is not valid: {:?}", e.kind()))?;
        Ok(Self {
            client,
            script: redis::Script::new(GCRA),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            breaker: Breaker {
                epoch: Instant::now(),
                open_until: AtomicU64::new(0),
                probing: AtomicBool::new(false),
                probe_interval: settings.probe_interval,
            },
            conns: (0..workers.max(1)).map(|_| Mutex::new(None)).collect(),
            on_change,
        })
    }

    /// Whether Redis is considered down now.
    pub fn is_down(&self) -> bool {
        self.breaker.is_open()
    }

    /// The key of `bucket` for `tenant`.
    pub fn key(&self, tenant: &str, bucket: &str) -> String {
        format!("{}:{{{}}}:{bucket}", self.prefix, tag_safe(tenant))
    }

    /// Takes `cost` cells of `limit` from `key` in Redis.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis was not asked (breaker open) or did not answer in time.
    pub async fn check(&self, key: &str, limit: Limit, cost: u32) -> Result<Decision, Unavailable> {
        let probe = match self.breaker.admit() {
            Admission::Skip => return Err(Unavailable::Skipped),
            Admission::Probe => true,
            Admission::Ask => false,
        };
        let slot = &self.conns[crate::proxy::upstream::worker_id() % self.conns.len()];
        let deadline = tokio::time::Instant::now() + self.timeout;
        let outcome = tokio::time::timeout_at(deadline, self.call(slot, key, limit, cost)).await;
        let outcome = match outcome {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(())) => Err(Unavailable::Error),
            Err(_) => Err(Unavailable::Timeout),
        };
        match &outcome {
            Ok(_) => {
                if self.breaker.success(probe) {
                    tracing::info!("rate-limit Redis reachable again; shared limits resume");
                    (self.on_change)(false);
                }
            }
            Err(why) => {
                // The connection may be stalled or broken: the next call dials a new one.
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = None;
                if self.breaker.failure(probe) {
                    tracing::warn!(
                        error = why.label(),
                        "rate-limit Redis unavailable; tiers apply their failure mode until it is back"
                    );
                    (self.on_change)(true);
                }
            }
        }
        outcome
    }

    async fn call(
        &self,
        slot: &Mutex<Option<MultiplexedConnection>>,
        key: &str,
        limit: Limit,
        cost: u32,
    ) -> Result<Decision, ()> {
        let existing = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut conn = match existing {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(None)
                    .set_response_timeout(None);
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| tracing::debug!(error = ?e.kind(), "rate-limit Redis connect"))?;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(c.clone());
                c
            }
        };
        let interval = u64::try_from(limit.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let reply: (i64, i64, i64, i64) = self
            .script
            .key(key)
            .arg(interval)
            .arg(limit.burst)
            .arg(cost.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| tracing::debug!(error = ?e.kind(), "rate-limit Redis call"))?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let (allowed, remaining, retry_after, reset) = reply;
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: if retry_after < 0 {
                limit.interval * limit.burst
            } else {
                micros(retry_after)
            },
            reset: micros(reset),
        })
    }
}

/// A tenant name fit for a key's hash tag: itself when short and plain, otherwise a hash.
fn tag_safe(tenant: &str) -> std::borrow::Cow<'_, str> {
    let plain = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'));
    if plain {
        std::borrow::Cow::Borrowed(tenant)
    } else {
        std::borrow::Cow::Owned(format!("h{:016x}", super::key_hash(&[tenant.as_bytes()])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_lets_one_probe_through_and_closes_on_success() {
        let b = Breaker {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_interval: Duration::from_millis(1),
        };
        assert_eq!(b.admit(), Admission::Ask);
        assert!(b.failure(false));
        assert_eq!(b.admit(), Admission::Skip);
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Skip, "one probe at a time");
        assert!(b.success(true));
        assert_eq!(b.admit(), Admission::Ask);
    }

    #[test]
    fn keys_are_namespaced_and_hash_tagged() {
        assert_eq!(tag_safe("acme"), "acme");
        let odd = tag_safe("a}{b");
        assert!(odd.starts_with('h') && !odd.contains('}'), "{odd}");
        assert_eq!(tag_safe(&"x".repeat(65)).len(), 17);
    }
}
