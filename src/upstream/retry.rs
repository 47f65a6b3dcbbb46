//! Retry policy state of one upstream: the budget that keeps retries a bounded share of live
//! traffic, jittered backoff, and counters by cause (for metrics).
//!
//! The budget is a token bucket on atomics: every first try deposits `budget` of a token, a
//! retry withdraws a whole one, and a floor of 3 retries per second is refilled with time, so
//! a pool whose every target fails sees at most (1 + budget) × the client rate, never
//! `attempts` × it. No lock is taken.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::balance::random_u64;
use super::health::now_ms;

/// One token, in the fixed-point unit the bucket counts in.
const TOKEN: i64 = 1000;
/// Retries always allowed per second, however little traffic there is.
const MIN_PER_SECOND: i64 = 3;
/// The most tokens that can be saved up: bounds a burst of retries after a quiet spell.
const CAP: i64 = 100 * TOKEN;
/// A new budget starts with ten seconds of the floor (as Finagle's retry budget does), so a
/// freshly started or reloaded upstream can retry at once.
const START: i64 = 10 * MIN_PER_SECOND * TOKEN;

pub struct Budget {
    tokens: AtomicI64,
    refilled_at_ms: AtomicU64,
    deposit: i64,
}

impl Budget {
    pub fn new(budget_permille: u32) -> Self {
        Budget {
            tokens: AtomicI64::new(START),
            refilled_at_ms: AtomicU64::new(now_ms()),
            deposit: i64::from(budget_permille),
        }
    }

    /// A first try: earns the budget's share of a retry.
    pub fn on_request(&self) {
        self.add(self.deposit);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        self.refill(now_ms());
        self.tokens.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t >= TOKEN).then_some(t - TOKEN)).is_ok()
    }

    fn add(&self, n: i64) {
        let _ = self.tokens.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some((t + n).min(CAP)));
    }

    /// Adds the floor's tokens for the whole milliseconds since the last refill; one caller
    /// wins the exchange, so time is never counted twice.
    fn refill(&self, now: u64) {
        let last = self.refilled_at_ms.load(Ordering::Acquire);
        let elapsed = now.saturating_sub(last);
        if elapsed == 0 {
            return;
        }
        if self.refilled_at_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let earned =
                i64::try_from(elapsed).unwrap_or(i64::MAX / TOKEN).saturating_mul(MIN_PER_SECOND * TOKEN) / 1000;
            self.add(earned);
        }
    }
}

/// "Full jitter" backoff: a random wait up to `base × 2^(retry-1)`, capped at `max`.
/// RFC 9110 §9.2.2: methods whose repetition has the effect of one request, so a try that may
/// have reached the upstream can be made again.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

pub fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(if nanos == 0 { 0 } else { random_u64() % (nanos + 1) })
}

/// Why a try is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    ConnectFailure = 0,
    Reset = 1,
    Timeout = 2,
    Status = 3,
}

impl Cause {
    pub fn label(self) -> &'static str {
        match self {
            Cause::ConnectFailure => "connect_failure",
            Cause::Reset => "reset",
            Cause::Timeout => "timeout",
            Cause::Status => "status",
        }
    }
}

/// Counters for the metrics the observability work publishes.
#[derive(Default)]
pub struct RetryStats {
    pub by_cause: [AtomicU64; 4],
    pub budget_exhausted: AtomicU64,
}

impl RetryStats {
    pub fn count(&self, cause: Cause) {
        self.by_cause[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_bounded_share_of_requests() {
        let b = Budget::new(200);
        // Freeze the floor's clock and spend the starting tokens, so only deposits count.
        b.refilled_at_ms.store(u64::MAX, Ordering::Relaxed);
        assert_eq!((0..100).filter(|_| b.try_retry()).count(), 30);
        let mut allowed = 0;
        for _ in 0..1000 {
            b.on_request();
            if b.try_retry() {
                allowed += 1;
            }
            if b.try_retry() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn a_quiet_pool_still_gets_three_retries_a_second() {
        let b = Budget::new(0);
        b.tokens.store(0, Ordering::Relaxed);
        let t0 = b.refilled_at_ms.load(Ordering::Relaxed);
        b.refill(t0 + 2000);
        let allowed = (0..10).filter(|_| b.try_retry_at(t0 + 2000)).count();
        assert_eq!(allowed, 6);
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling() {
        let (base, max) = (Duration::from_millis(25), Duration::from_millis(250));
        for retry in 1..6 {
            let ceiling = (base * (1 << (retry - 1))).min(max);
            for _ in 0..100 {
                assert!(backoff(retry, base, max) <= ceiling);
            }
        }
    }

    impl Budget {
        fn try_retry_at(&self, now: u64) -> bool {
            self.refill(now);
            self.tokens.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t >= TOKEN).then_some(t - TOKEN)).is_ok()
        }
    }
}
