//! The in-process limiter: governor's keyed GCRA over a state store whose size is bounded.
//!
//! governor decides; [`BoundedStore`] keeps one theoretical arrival time (TAT) per key, in
//! shards. A shard that is full evicts the eighth of its keys with the earliest TATs before it
//! admits a new key: those are the keys closest to (or already at) a full bucket, so evicting
//! them forgets the least. A flood of distinct keys (one per spoofed client) therefore costs a
//! fixed amount of memory and, at worst, hands an evicted key a fresh burst.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, Limit};

/// Shards of the store (a power of two); keys pick a shard by their low bits.
const SHARDS: usize = 16;

/// Keys are already well-mixed 64-bit hashes (see [`super::key_hash`]); this hasher passes them
/// through.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// A GCRA state store holding at most `max_keys` keys.
#[derive(Debug)]
pub struct BoundedStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl BoundedStore {
    /// A store for at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this store holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(key as usize) & (SHARDS - 1)]
    }
}

/// Removes the eighth of `map`'s entries (at least one) with the earliest TATs.
fn evict_oldest(map: &mut Shard) {
    let n = (map.len() / 8).max(1);
    let mut tats: Vec<u64> = map.values().copied().collect();
    if n >= tats.len() {
        map.clear();
        return;
    }
    let (_, cut, _) = tats.select_nth_unstable(n - 1);
    let cut = *cut;
    let mut removed = 0;
    map.retain(|_, tat| {
        if removed < n && *tat <= cut {
            removed += 1;
            false
        } else {
            true
        }
    });
}

/// A store shared by its limiter and the limiter's owner (who reads its size).
#[derive(Debug, Clone)]
pub struct SharedStore(pub Arc<BoundedStore>);

impl StateStore for SharedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self
            .0
            .shard(*key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let prev = map.get(key).copied();
        let (out, next) = f(prev.map(Nanos::from))?;
        if prev.is_none() && map.len() >= self.0.per_shard {
            evict_oldest(&mut map);
        }
        map.insert(*key, next.into());
        Ok(out)
    }
}

/// One quota over many keys.
pub struct LocalLimiter {
    limit: Limit,
    limiter: RateLimiter<u64, SharedStore, DefaultClock, StateInformationMiddleware>,
    store: Arc<BoundedStore>,
    clock: DefaultClock,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("limit", &self.limit)
            .field("keys", &self.keys())
            .finish()
    }
}

impl LocalLimiter {
    /// A limiter admitting `limit` per key, for at most `max_keys` keys.
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        let quota = Quota::with_period(limit.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN));
        let clock = DefaultClock::default();
        let store = Arc::new(BoundedStore::new(max_keys));
        Self {
            limit,
            limiter: RateLimiter::new(quota, SharedStore(store.clone()), clock.clone()),
            store,
            clock,
        }
    }

    /// The quota.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.store.len()
    }

    /// The most keys held.
    pub fn capacity(&self) -> usize {
        self.store.capacity()
    }

    /// Takes `cost` cells for `key`.
    pub fn check(&self, key: u64, cost: u32) -> Decision {
        let cost = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(&key, cost) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset: self.limit.interval * (self.limit.burst.saturating_sub(remaining)),
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    // The whole cost must fit: the wait until the bucket holds `cost` cells.
                    retry_after: wait,
                    // The bucket is full again `burst - cost` cells after the cost fits.
                    reset: wait + self.limit.interval * self.limit.burst.saturating_sub(cost.get()),
                }
            }
            // The cost exceeds the burst: it can never pass.
            Err(_) => Decision {
                allowed: false,
                remaining: 0,
                retry_after: self.limit.interval * self.limit.burst,
                reset: self.limit.interval * self.limit.burst,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_sec: u64, burst: u32) -> Limit {
        Limit {
            interval: Duration::from_nanos(1_000_000_000 / per_sec),
            burst,
        }
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let l = LocalLimiter::new(limit(10, 5), 10_000);
        let mut peak = 0;
        for k in 0..1_000_000u64 {
            let d = l.check(super::super::key_hash(&[&k.to_le_bytes()]), 1);
            assert!(d.allowed, "a new key has its whole burst");
            if k % 10_000 == 0 {
                peak = peak.max(l.keys());
            }
        }
        peak = peak.max(l.keys());
        assert!(peak <= l.capacity(), "{peak} keys > {}", l.capacity());
        assert!(l.capacity() < 10_100, "{}", l.capacity());
        assert!(peak > 9_000, "the store is used up to its bound: {peak}");
    }

    #[test]
    fn eviction_spares_the_keys_in_debt() {
        // One shard's worth of room: 16 shards × 1 key.
        let store = BoundedStore::new(16);
        let mut m = Shard::default();
        for k in 0..8u64 {
            m.insert(k, 1000 + k);
        }
        m.insert(99, 1);
        evict_oldest(&mut m);
        assert!(!m.contains_key(&99), "the earliest TAT goes first");
        assert_eq!(m.len(), 8);
        assert_eq!(store.capacity(), 16);
    }

    #[test]
    fn burst_then_refusal_with_retry_after_and_cost() {
        let l = LocalLimiter::new(limit(1, 3), 100);
        let d = l.check(1, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert!(l.check(1, 2).allowed);
        let d = l.check(1, 1);
        assert!(!d.allowed);
        assert!(
            d.retry_after > Duration::from_millis(900) && d.retry_after <= Duration::from_secs(1)
        );
        // A cost above the burst can never pass.
        assert!(!l.check(2, 4).allowed);
        // Other keys are untouched.
        assert!(l.check(3, 3).allowed);
    }
}
