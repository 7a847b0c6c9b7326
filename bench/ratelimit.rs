//! Local rate-limit cost and memory:
//!
//! - `ratelimit/local/hot_key`: one tenant's bucket checked again and again (the common case: a
//!   busy tenant), allowed every time;
//! - `ratelimit/local/distinct_keys_bounded`: every check a new key (a flood of spoofed client
//!   addresses) into a limiter bounded at 100 000 keys, so the store is full and each new key
//!   evicts (an eighth of a shard at a time);
//! - memory, printed before the timings: resident memory added by 1 000 000 distinct keys into a
//!   limiter bounded at 100 000 keys, side by side with one bounded at 1 000 000 (the bound is
//!   what caps the memory), with the key counts.
//!
//! `cargo bench --bench ratelimit`; `cargo test --all-targets` runs each benchmark once.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use portcullis::ratelimit::local::LocalLimiter;
use portcullis::ratelimit::{Limit, key_hash};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn limit() -> Limit {
    Limit {
        interval: Duration::from_millis(100),
        burst: 20,
    }
}

/// Resident memory added by `n` distinct keys into a limiter bounded at `bound`.
fn memory(bound: usize, n: u64) -> (u64, usize, usize) {
    let before = rss_kib();
    let l = LocalLimiter::new(limit(), bound);
    for k in 0..n {
        black_box(l.check(key_hash(&[&k.to_le_bytes()]), 1));
    }
    let after = rss_kib();
    let out = (after.saturating_sub(before), l.keys(), l.capacity());
    // Kept alive until measured; the bigger limiter is measured second, so its growth is not
    // hidden by memory the smaller one returned.
    drop(l);
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let n = if quick { 10_000 } else { 1_000_000 };
    for bound in [100_000usize, 1_000_000] {
        let (kib, keys, cap) = memory(bound, n);
        eprintln!(
            "ratelimit/local/memory: {n} distinct keys, bound {bound}: +{kib} KiB resident, {keys} keys held (capacity {cap})"
        );
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let hot = LocalLimiter::new(
        Limit {
            interval: Duration::from_nanos(1),
            burst: u32::MAX,
        },
        100_000,
    );
    let key = key_hash(&[b"acme"]);
    c.bench_function("ratelimit/local/hot_key", |b| {
        b.iter(|| black_box(hot.check(black_box(key), 1)));
    });
    let flood = LocalLimiter::new(limit(), 100_000);
    let mut k = 0u64;
    c.bench_function("ratelimit/local/distinct_keys_bounded", |b| {
        b.iter(|| {
            k += 1;
            black_box(flood.check(key_hash(&[&k.to_le_bytes()]), 1))
        });
    });
    c.final_summary();
}
