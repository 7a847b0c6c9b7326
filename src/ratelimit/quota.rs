//! Upstream quotas: a cluster whose provider allows, say, 500 requests a minute shares that
//! quota fairly among the tenants that are using it.
//!
//! Two GCRA buckets decide each request: the tenant's share, then the cluster's whole quota. A
//! tenant is active while it has sent a request within `active_for`; with N active tenants each
//! share refills at 1/N of the quota's rate and holds 1/N of its burst (at least one request).
//! The whole-quota bucket guarantees the provider's limit even while N changes. The quota is kept
//! per replica (in memory).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Decision, Limit};

/// Most tenants tracked per cluster; the least recently seen is forgotten beyond it.
const MAX_TENANTS: usize = 10_000;

/// A cluster's quota, divided among its active tenants.
#[derive(Debug)]
pub struct FairQuota {
    limit: Limit,
    active_for: Duration,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The whole quota's theoretical arrival time (ns since `epoch`).
    total: u64,
    /// Tenant key → (share TAT, last seen), ns since `epoch`.
    tenants: HashMap<u64, (u64, u64)>,
}

/// One GCRA test: `Ok(new tat)` or `Err(wait)`.
fn gcra(tat: u64, now: u64, interval: u64, burst: u64) -> Result<u64, u64> {
    let tau = interval.saturating_mul(burst.saturating_sub(1));
    let tat = tat.max(now);
    if tat.saturating_sub(tau) > now {
        return Err(tat - tau - now);
    }
    Ok(tat + interval)
}

impl FairQuota {
    /// A quota of `limit` shared by the tenants seen within `active_for`.
    pub fn new(limit: Limit, active_for: Duration) -> Self {
        Self {
            limit,
            active_for,
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// The quota.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Tenants counted as active now.
    pub fn active(&self) -> usize {
        let now = self.now();
        let horizon = now.saturating_sub(nanos(self.active_for));
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.tenants
            .values()
            .filter(|(_, seen)| *seen >= horizon)
            .count()
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Takes one request of the quota for `tenant`.
    pub fn check(&self, tenant: u64) -> Decision {
        let now = self.now();
        let horizon = now.saturating_sub(nanos(self.active_for));
        let interval = nanos(self.limit.interval).max(1);
        let burst = u64::from(self.limit.burst);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.tenants.contains_key(&tenant) {
            s.tenants.retain(|_, (_, seen)| *seen >= horizon);
            if s.tenants.len() >= MAX_TENANTS
                && let Some(oldest) = s
                    .tenants
                    .iter()
                    .min_by_key(|(_, (_, seen))| *seen)
                    .map(|(k, _)| *k)
            {
                s.tenants.remove(&oldest);
            }
        }
        let active = s
            .tenants
            .iter()
            .filter(|(k, (_, seen))| **k != tenant && *seen >= horizon)
            .count() as u64
            + 1;
        let share_interval = interval.saturating_mul(active);
        let share_burst = (burst / active).max(1);
        let (share_tat, _) = s.tenants.get(&tenant).copied().unwrap_or((now, now));
        s.tenants.insert(tenant, (share_tat, now));
        let denied = |wait: u64| Decision {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_nanos(wait),
            reset: Duration::from_nanos(wait),
        };
        let next_share = match gcra(share_tat, now, share_interval, share_burst) {
            Ok(t) => t,
            Err(wait) => return denied(wait),
        };
        let next_total = match gcra(s.total, now, interval, burst) {
            Ok(t) => t,
            Err(wait) => return denied(wait),
        };
        s.total = next_total;
        s.tenants.insert(tenant, (next_share, now));
        let tau = share_interval.saturating_mul(share_burst - 1);
        let remaining = (now + tau + share_interval).saturating_sub(next_share) / share_interval;
        Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after: Duration::ZERO,
            reset: Duration::from_nanos(next_share.saturating_sub(now)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_active_tenants_split_the_burst() {
        let q = FairQuota::new(
            Limit {
                interval: Duration::from_secs(600),
                burst: 10,
            },
            Duration::from_secs(60),
        );
        // Both are active before either hammers.
        assert!(q.check(1).allowed);
        assert!(q.check(2).allowed);
        let mut got = [1, 1];
        for _ in 0..20 {
            for (i, t) in [1u64, 2].iter().enumerate() {
                if q.check(*t).allowed {
                    got[i] += 1;
                }
            }
        }
        assert_eq!(got, [5, 5]);
        assert_eq!(q.active(), 2);
    }

    #[test]
    fn a_lone_tenant_may_use_the_whole_quota() {
        let q = FairQuota::new(
            Limit {
                interval: Duration::from_secs(600),
                burst: 10,
            },
            Duration::from_secs(60),
        );
        let admitted = (0..20).filter(|_| q.check(7).allowed).count();
        assert_eq!(admitted, 10);
    }
}
