//! Target health: active checks (a GET on an interval, with thresholds) and passive outlier
//! ejection from real traffic (consecutive failures, growing ejection time, a cap on how much
//! of a pool may be ejected at once).
//!
//! State lives in each target's `TargetState` as atomics, so the request path only reads it and
//! it survives reloads that keep the upstream. Checker tasks hold a `Weak` reference and end
//! when their upstream is dropped.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::header;

use super::Upstream;
use super::balance::random_u64;
use super::client::{HostField, OutHead};
use crate::config::{HealthCheckDef, PassiveHealthDef};
use crate::proxy::body::RequestBody;

/// Milliseconds since the process's first use of this clock (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `repr(C)`, what every request reads first: the verdict and the ejection time (and the
/// failure count, written per request under passive checks) lie in the first cache line of
/// the target's state (`TargetState`).
#[repr(C)]
pub struct Health {
    /// The active checker's verdict; targets start healthy.
    active_up: AtomicBool,
    passive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Consecutive probe results: > 0 successes, < 0 failures (written by one checker task).
    streak: AtomicI32,
    ejections: AtomicU32,
    /// When the active checker last found the target healthy again (0: never).
    healthy_again_ms: AtomicU64,
}

/// Bytes from the start of [`Health`] to the end of what every request reads.
pub const HOT_BYTES: usize = std::mem::offset_of!(Health, ejected_until_ms) + 8;

impl Default for Health {
    fn default() -> Self {
        Health {
            active_up: AtomicBool::new(true),
            streak: AtomicI32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            healthy_again_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Up by the active checks and not ejected. `now_ms` is asked only for a target that was
    /// ever ejected, so most requests read no clock here.
    pub fn is_available(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.active_up.load(Ordering::Relaxed)
            && match self.ejected_until_ms.load(Ordering::Relaxed) {
                0 => true,
                until => until <= now_ms(),
            }
    }

    /// How long ago the target last came back, from unhealthy or from an ejection; `None` if
    /// it never left.
    pub fn back_for_ms(&self, now_ms: u64) -> Option<u64> {
        let healthy_again = self.healthy_again_ms.load(Ordering::Relaxed);
        let ejection_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let back = healthy_again.max(if ejection_end <= now_ms { ejection_end } else { 0 });
        (back > 0).then(|| now_ms.saturating_sub(back))
    }

    pub fn passes_checks(&self) -> bool {
        self.active_up.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Folds one probe result in; returns the new verdict when it changed.
    pub fn record_probe(&self, ok: bool, def: &HealthCheckDef) -> Option<bool> {
        let prev = self.streak.load(Ordering::Relaxed);
        let streak = match (ok, prev) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let up = self.active_up.load(Ordering::Relaxed);
        let flip =
            if up { streak <= -(def.unhealthy_threshold as i32) } else { streak >= def.healthy_threshold as i32 };
        if flip {
            if !up {
                self.healthy_again_ms.store(now_ms().max(1), Ordering::Relaxed);
            }
            self.active_up.store(!up, Ordering::Relaxed);
            Some(!up)
        } else {
            None
        }
    }

    /// Counts one real request's outcome. Returns the ejection time when this failure ejects
    /// the target; `may_eject` says whether the pool's ejection cap leaves room.
    pub fn record_outcome(
        &self,
        ok: bool,
        def: &PassiveHealthDef,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if ok {
            // Written only when they change: every request of every worker comes here.
            if self.passive_failures.load(Ordering::Relaxed) != 0 {
                self.passive_failures.store(0, Ordering::Relaxed);
            }
            if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected(now_ms) {
                self.ejections.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let failures = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < def.consecutive_failures || self.is_ejected(now_ms) || !may_eject() {
            return None;
        }
        // Repeated ejections double the time, up to ten times the configured one.
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        let base = def.ejection_time;
        let time = base.saturating_mul(1 << n).min(base.saturating_mul(10));
        self.ejected_until_ms
            .store(now_ms.saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX)), Ordering::Relaxed);
        // When the ejection ends, one more failure (the probe request) ejects it again.
        self.passive_failures.store(def.consecutive_failures.saturating_sub(1), Ordering::Relaxed);
        Some(time)
    }
}

/// Starts one checker task per target; each probes on the interval with ±10% jitter, the
/// first probe at a random point of the first interval so that many gateways spread out.
pub fn spawn_checkers(upstream: &Arc<Upstream>, def: &HealthCheckDef) {
    for index in 0..upstream.targets.len() {
        let weak = Arc::downgrade(upstream);
        let def = def.clone();
        tokio::spawn(async move {
            tokio::time::sleep(jittered(def.interval, 0, 100)).await;
            loop {
                if !probe_once(&weak, index, &def).await {
                    return;
                }
                tokio::time::sleep(jittered(def.interval, 90, 110)).await;
            }
        });
    }
}

/// `d` scaled by a random percentage in `lo..=hi`.
fn jittered(d: Duration, lo: u64, hi: u64) -> Duration {
    let pct = lo + random_u64() % (hi - lo + 1);
    d.mul_f64(pct as f64 / 100.0)
}

/// Probes one target; false when the upstream is gone and the task should end.
async fn probe_once(weak: &Weak<Upstream>, index: usize, def: &HealthCheckDef) -> bool {
    let Some(upstream) = weak.upgrade() else { return false };
    let target = &upstream.targets[index];
    let ok = probe(&upstream, target, def).await;
    if let Some(up) = target.state.health.record_probe(ok, def) {
        if up {
            tracing::info!(upstream = %upstream.name, target = %target.address, "health check: target healthy again");
        } else {
            tracing::warn!(upstream = %upstream.name, target = %target.address, "health check: target unhealthy");
        }
    }
    true
}

/// One health-check request: true when it answers within the timeout with an expected status.
async fn probe(upstream: &Upstream, target: &super::Target, def: &HealthCheckDef) -> bool {
    let mut headers = http::HeaderMap::with_capacity(2);
    headers.insert(header::USER_AGENT, http::HeaderValue::from_static("ferroway-health-check"));
    let head = OutHead {
        method: &http::Method::GET,
        path_and_query: &def.path,
        headers: &mut headers,
        take: true,
        host: HostField::Target,
    };
    // Through the worker's clock: the pool judges its idle connections' age by this reading.
    let deadline = tokio::time::Instant::from_std(crate::worker::now()) + def.timeout;
    match upstream.client.request(target, head, RequestBody::empty(), None, &[], deadline).await {
        Ok(resp) => (def.expect_status.0..=def.expect_status.1).contains(&resp.status().as_u16()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheckDef {
        HealthCheckDef {
            path: http::uri::PathAndQuery::from_static("/h"),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            expect_status: (200, 399),
        }
    }

    #[test]
    fn thresholds_decide_when_the_verdict_flips() {
        let h = Health::default();
        let def = check(2, 3);
        assert_eq!(h.record_probe(false, &def), None);
        assert_eq!(h.record_probe(false, &def), None);
        assert_eq!(h.record_probe(true, &def), None, "a success resets the failure streak");
        assert_eq!(h.record_probe(false, &def), None);
        assert_eq!(h.record_probe(false, &def), None);
        assert_eq!(h.record_probe(false, &def), Some(false));
        assert!(!h.is_available(|| 0));
        assert_eq!(h.record_probe(true, &def), None);
        assert_eq!(h.record_probe(true, &def), Some(true));
        assert!(h.is_available(|| 0));
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_and_one_probe_decides() {
        let h = Health::default();
        let def = PassiveHealthDef {
            consecutive_failures: 3,
            ejection_time: Duration::from_secs(10),
            max_ejected_percent: 50,
        };
        assert_eq!(h.record_outcome(false, &def, 0, || true), None);
        assert_eq!(h.record_outcome(false, &def, 0, || true), None);
        assert_eq!(h.record_outcome(false, &def, 0, || true), Some(Duration::from_secs(10)));
        assert!(!h.is_available(|| 5_000));
        assert!(h.is_available(|| 10_000));
        // Back after the ejection: the first request fails, so it is ejected again, for longer.
        assert_eq!(h.record_outcome(false, &def, 10_000, || true), Some(Duration::from_secs(20)));
        assert!(!h.is_available(|| 29_999));
        // A success once back resets both the streak and the growth.
        assert_eq!(h.record_outcome(true, &def, 30_000, || true), None);
        for _ in 0..2 {
            assert_eq!(h.record_outcome(false, &def, 30_000, || true), None);
        }
        assert_eq!(h.record_outcome(false, &def, 30_000, || true), Some(Duration::from_secs(10)));
    }

    #[test]
    fn probes_are_jittered_so_gateways_do_not_probe_in_lockstep() {
        let interval = Duration::from_secs(10);
        let firsts: Vec<Duration> = (0..200).map(|_| jittered(interval, 0, 100)).collect();
        assert!(firsts.iter().all(|d| *d <= interval));
        let early = firsts.iter().filter(|d| **d < interval / 2).count();
        assert!((60..=140).contains(&early), "first probes spread over the interval: {early} of 200 in its first half");
        let later: Vec<Duration> = (0..200).map(|_| jittered(interval, 90, 110)).collect();
        assert!(later.iter().all(|d| *d >= interval.mul_f64(0.9) && *d <= interval.mul_f64(1.1)));
        assert!(later.iter().any(|d| *d != later[0]), "intervals vary");
    }

    #[test]
    fn the_ejection_cap_is_respected() {
        let h = Health::default();
        let def = PassiveHealthDef {
            consecutive_failures: 1,
            ejection_time: Duration::from_secs(10),
            max_ejected_percent: 0,
        };
        assert_eq!(h.record_outcome(false, &def, 0, || false), None);
        assert!(h.is_available(|| 0));
    }
}
