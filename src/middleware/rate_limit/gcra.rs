//! The generic cell rate algorithm: one number per key, the theoretical arrival time (TAT) of
//! the next request. With emission interval `T = period / count` and burst `B`, a request at
//! `now` is admitted when `max(TAT, now) + T - now ≤ B·T`, and then TAT moves on by `T`. A
//! fresh key admits exactly `B` at once, then one per `T`. A TAT at or before `now` carries no
//! information, so such keys can be forgotten without changing any decision.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// `T`, in nanoseconds.
    pub interval: u64,
    /// `B·T`, in nanoseconds.
    pub limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; `remaining` more would be admitted right now, and the key is back to a full
    /// burst after `reset`.
    Allowed { remaining: u64, reset: Duration },
    /// Refused; one request would be admitted after `retry_after`.
    Limited { retry_after: Duration, reset: Duration },
}

impl Gcra {
    pub fn new(count: u32, per: Duration, burst: u32) -> Gcra {
        let per = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(count.max(1))).max(1);
        Gcra { interval, limit: interval.saturating_mul(u64::from(burst.max(1))) }
    }

    /// The decision at `now` for a key whose TAT is `tat` (`None`: unknown key), and the TAT to
    /// store when admitted.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.unwrap_or(now).max(now);
        let next = tat.saturating_add(self.interval);
        if next - now > self.limit {
            (self.outcome(false, tat - now), None)
        } else {
            (self.outcome(true, next - now), Some(next))
        }
    }

    /// The decision from `ahead = TAT - now` after it was made (the form a Redis script
    /// returns, computed on the server's clock).
    pub fn outcome(&self, allowed: bool, ahead: u64) -> Decision {
        let reset = Duration::from_nanos(ahead);
        if allowed {
            Decision::Allowed { remaining: self.limit.saturating_sub(ahead) / self.interval, reset }
        } else {
            let wait = (ahead + self.interval).saturating_sub(self.limit);
            Decision::Limited { retry_after: Duration::from_nanos(wait), reset }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_fresh_key_admits_exactly_the_burst_then_the_rate() {
        let g = Gcra::new(100, Duration::from_secs(1), 200);
        let mut tat = None;
        let mut admitted = 0;
        let now = 5 * SEC;
        for _ in 0..1000 {
            let (d, next) = g.decide(tat, now);
            if let Some(n) = next {
                tat = Some(n);
            }
            if matches!(d, Decision::Allowed { .. }) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 200);
        // One more every 10 ms.
        let (d, _) = g.decide(tat, now + SEC / 100 - 1);
        assert!(matches!(d, Decision::Limited { .. }));
        let (d, next) = g.decide(tat, now + SEC / 100);
        assert!(matches!(d, Decision::Allowed { remaining: 0, .. }), "{d:?}");
        assert!(next.is_some());
        // After a second, 100 more.
        let mut admitted = 0;
        for _ in 0..1000 {
            let (d, next) = g.decide(tat, now + SEC);
            if let Some(n) = next {
                tat = Some(n);
                admitted += matches!(d, Decision::Allowed { .. }) as u32;
            }
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn retry_after_and_remaining_are_exact() {
        let g = Gcra::new(1, Duration::from_secs(1), 2);
        let (d, tat) = g.decide(None, 0);
        assert_eq!(d, Decision::Allowed { remaining: 1, reset: Duration::from_secs(1) });
        let (d, tat) = g.decide(tat, 0);
        assert_eq!(d, Decision::Allowed { remaining: 0, reset: Duration::from_secs(2) });
        let (d, none) = g.decide(tat, SEC / 2);
        assert_eq!(
            d,
            Decision::Limited { retry_after: Duration::from_millis(500), reset: Duration::from_millis(1500) }
        );
        assert_eq!(none, None);
    }
}
