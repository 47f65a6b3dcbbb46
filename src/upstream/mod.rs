//! Upstream pools: the targets of one named upstream, how a target is picked, and the pooled
//! keep-alive connections to them.
//!
//! An `Upstream` outlives config reloads while its definition is unchanged (see [`Registry`]),
//! so its connections and counters are not reset by unrelated edits. Picking a target takes
//! atomics only; no lock is taken on the request path.

pub mod balance;
pub mod client;
mod connector;
pub mod h1;
pub mod health;
pub mod retry;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::uri::Authority;
use http::{HeaderMap, HeaderValue};

use self::balance::{Ring, RoundRobin, TargetState};
use crate::config::{Balance, HashOn, Timeouts, UpstreamDef};

pub struct Target {
    /// `host:port` as written in the config: the access log's `upstream_target`.
    pub address: Arc<str>,
    pub authority: Authority,
    /// The value sent as Host when a route says `host_header: upstream`.
    pub host_value: HeaderValue,
    /// Its balancing counters, health, idle connections and latency, in one allocation.
    pub state: Arc<TargetState>,
}

enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest { weights: Vec<u32>, rotate: AtomicUsize },
    P2cEwma { weights: Vec<u32> },
    ConsistentHash { ring: Ring, on: HashOn },
    Random { cumulative: Vec<u64> },
}

/// Round robin loads its next targets ahead (`Upstream::load_ahead`) from this many targets
/// on; fewer stay in the cache.
const LOAD_AHEAD_FROM: usize = 64;

/// Asks the CPU to start loading the cache line at `p`: a hint, which reads nothing and
/// cannot fault. A no-op off x86-64.
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is an SSE instruction (every x86-64 CPU has SSE), and it neither
    // reads nor writes memory as the program sees it; any address is allowed.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One target as metrics see it.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub address: Arc<str>,
    /// The active checker's verdict (true without active checks).
    pub healthy: bool,
    pub ejected: bool,
    /// Consecutive ejections so far (reset by a success after the target is back).
    pub ejections: u32,
    pub in_flight: u32,
    pub ewma_latency: std::time::Duration,
    pub open_connections: usize,
    /// Open connections not carrying a request right now.
    pub idle_connections: usize,
}

/// One upstream as metrics see it.
#[derive(Debug, Clone)]
pub struct UpstreamView {
    pub name: Arc<str>,
    pub targets: Vec<TargetView>,
    /// Requests waiting for a connection slot.
    pub pending: usize,
    /// Retries by cause label.
    pub retries: [(&'static str, u64); 4],
    pub retry_budget_exhausted: u64,
}

/// What a balancer may look at in a request.
pub struct PickInput<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub path: &'a str,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub client: client::UpstreamClient,
    balancer: Balancer,
    checks_started: AtomicBool,
    pub retry_budget: retry::Budget,
    pub retry_stats: retry::RetryStats,
    /// Requests waiting for a connection permit, bounded by `circuit_breaker.max_pending`.
    pending: AtomicUsize,
    def: UpstreamDef,
}

/// Why a request could not have a connection to its target.
pub enum SlotError {
    /// More than `max_pending` requests were already waiting.
    Saturated,
}

impl Upstream {
    fn new(name: &str, def: &UpstreamDef) -> Result<Upstream, String> {
        let targets = def
            .targets
            .iter()
            .map(|t| {
                let authority =
                    Authority::try_from(t.address.as_str()).map_err(|e| format!("target {}: {e}", t.address))?;
                let host_value = HeaderValue::from_str(&t.address).map_err(|e| format!("target {}: {e}", t.address))?;
                Ok(Target {
                    address: t.address.as_str().into(),
                    authority,
                    host_value,
                    state: Arc::new(TargetState::new(def.max_idle_per_target)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let open = targets.iter().map(|t| (t.authority.as_str().to_owned(), t.state.open.clone())).collect();
        let pools: Vec<Arc<TargetState>> = targets.iter().map(|t| t.state.clone()).collect();
        let client =
            client::UpstreamClient::new(def, Arc::new(open), &pools).map_err(|e| format!("upstream {name}: {e}"))?;
        let weights: Vec<u32> = def.targets.iter().map(|t| t.weight).collect();
        let balancer = match def.balance {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            Balance::LeastRequest => Balancer::LeastRequest { weights, rotate: AtomicUsize::new(0) },
            Balance::P2cEwma => Balancer::P2cEwma { weights },
            Balance::ConsistentHash => {
                let points: Vec<(&str, u32)> = def.targets.iter().map(|t| (t.address.as_str(), t.weight)).collect();
                let on = def.hash_on.clone().unwrap_or(HashOn::ClientIp);
                Balancer::ConsistentHash { ring: Ring::new(&points), on }
            }
            Balance::Random => {
                let cumulative = weights
                    .iter()
                    .scan(0u64, |acc, &w| {
                        *acc += u64::from(w);
                        Some(*acc)
                    })
                    .collect();
                Balancer::Random { cumulative }
            }
        };
        Ok(Upstream {
            name: name.into(),
            targets,
            client,
            balancer,
            checks_started: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            retry_budget: retry::Budget::new(def.retry.budget_permille),
            retry_stats: retry::RetryStats::default(),
            def: def.clone(),
        })
    }

    /// Whether every connection to this upstream speaks HTTP/2 (`h2c`, `h2`).
    pub fn h2_only(&self) -> bool {
        matches!(self.def.protocol, crate::config::UpstreamProtocol::H2 | crate::config::UpstreamProtocol::H2c)
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.def.timeouts
    }

    /// The target for one request, by the upstream's balancer, among targets that are healthy
    /// and not ejected; `None` when there is none.
    pub fn pick_target(&self, input: &PickInput<'_>, tried: &[usize]) -> Option<(usize, &Target)> {
        // Read only if a target was ever ejected or slow start is on: most requests need no
        // clock reading here.
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(health::now_ms);
        let n = self.targets.len();
        let healthy = |i: usize| self.targets[i].state.health.is_available(now);
        let untried = |i: usize| healthy(i) && !tried.contains(&i);
        // A retry never goes to a target already tried, unless no other is left.
        let usable: &dyn Fn(usize) -> bool = if tried.is_empty() || !(0..n).any(untried) { &healthy } else { &untried };
        let state = |i: usize| &*self.targets[i].state;
        let i = match &self.balancer {
            Balancer::RoundRobin(rr) => {
                let (i, place) = rr.pick();
                if n >= LOAD_AHEAD_FROM {
                    self.load_ahead([1, 2, 3].map(|k| rr.ahead(place, k)));
                }
                i
            }
            Balancer::LeastRequest { weights, rotate } => balance::pick_least_request(state, weights, rotate),
            Balancer::P2cEwma { weights } => balance::pick_p2c_ewma(state, weights),
            Balancer::ConsistentHash { ring, on } => {
                return ring.pick_available(hash_key(on, input), usable).map(|i| (i, &self.targets[i]));
            }
            Balancer::Random { cumulative } => balance::pick_random(cumulative),
        };
        // The balancer's choice is unusable: take the next usable target after it, passing over
        // targets still ramping up after slow start with the probability of their ramp.
        let mut candidates = (0..n).map(|k| (i + k) % n).filter(|&j| usable(j));
        let first = candidates.next()?;
        let chosen = std::iter::once(first).chain(candidates).find(|&j| self.admits(j, now)).unwrap_or(first);
        Some((chosen, &self.targets[chosen]))
    }

    /// Starts loading what this worker's next requests will touch of the targets round robin
    /// gives them, a stage per request: the target after next-but-one, the state of the one
    /// after next (its address read from the target loaded one request ago), the idle list of
    /// the next (from the state loaded one request ago). With many targets taking turns each
    /// request found these cold, a wait for memory each (`perf`: ~0.1 µs a line here); loaded
    /// ahead, they come while the requests in between run.
    fn load_ahead(&self, [next, after, then]: [usize; 3]) {
        if let (Some(next), Some(after), Some(then)) =
            (self.targets.get(next), self.targets.get(after), self.targets.get(then))
        {
            prefetch(&raw const then.state);
            let state: &TargetState = &after.state;
            prefetch(state);
            prefetch((&raw const state.latency).cast::<u8>());
            next.state.idle.load_ahead();
        }
    }

    /// Slow start: a target back from unhealthy or ejection `t` ago takes a request with
    /// probability `t / slow_start` (at least 10%), so its share ramps up instead of jumping.
    fn admits(&self, i: usize, now: impl FnOnce() -> u64) -> bool {
        let Some(window) = self.def.slow_start else { return true };
        let now = now();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.targets[i].state.health.back_for_ms(now) {
            Some(t) if t < window_ms => balance::random_u64() % window_ms < t.max(window_ms / 10),
            _ => true,
        }
    }

    /// What the metrics and admin endpoints publish about this upstream, read from atomics.
    pub fn view(&self) -> UpstreamView {
        let now = health::now_ms();
        let targets = self
            .targets
            .iter()
            .map(|t| {
                let in_flight = t.state.in_flight.load(Ordering::Relaxed);
                let open = t.state.open.load(Ordering::Relaxed);
                TargetView {
                    address: t.address.clone(),
                    healthy: t.state.health.passes_checks(),
                    ejected: t.state.health.is_ejected(now),
                    ejections: t.state.health.ejections(),
                    in_flight,
                    ewma_latency: std::time::Duration::from_nanos(t.state.ewma_ns.load(Ordering::Relaxed)),
                    open_connections: open,
                    idle_connections: open.saturating_sub(in_flight as usize),
                }
            })
            .collect();
        let s = &self.retry_stats;
        let causes = [retry::Cause::ConnectFailure, retry::Cause::Reset, retry::Cause::Timeout, retry::Cause::Status];
        UpstreamView {
            name: self.name.clone(),
            targets,
            pending: self.pending.load(Ordering::Relaxed),
            retries: causes.map(|c| (c.label(), s.by_cause[c as usize].load(Ordering::Relaxed))),
            retry_budget_exhausted: s.budget_exhausted.load(Ordering::Relaxed),
        }
    }

    pub fn def(&self) -> &UpstreamDef {
        &self.def
    }

    /// Whether target choice hashes on one of these request fields (lower-case names).
    pub fn hashes_on(&self, names: &[&str]) -> bool {
        matches!(&self.def.hash_on, Some(HashOn::Header(h)) if names.contains(&h.as_str()))
    }

    /// Takes a connection slot on `target`: at once when one is free, else by waiting behind
    /// at most `max_pending` other requests, for at most the connect timeout; past either
    /// bound the request is refused instead of queueing without limit (the circuit breaker).
    pub async fn acquire_slot(&self, target: &Target) -> Result<balance::InFlight, SlotError> {
        let max = self.def.max_connections_per_target;
        if let Some(slot) = balance::InFlight::try_start(&target.state, max) {
            return Ok(slot);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.def.max_pending as usize {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotError::Saturated);
        }
        let waited =
            tokio::time::timeout(self.def.timeouts.connect, balance::InFlight::wait_start(&target.state, max)).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        waited.map_err(|_| SlotError::Saturated)
    }

    /// Counts a request's outcome for passive health (a 5xx answer, a refused or reset
    /// connection, or a timeout is a failure).
    pub fn report(&self, target: &Target, ok: bool) {
        let Some(def) = &self.def.passive_health else { return };
        let now = health::now_ms();
        let may_eject = || {
            let ejected = self.targets.iter().filter(|t| t.state.health.is_ejected(now)).count();
            (ejected + 1) * 100 <= def.max_ejected_percent as usize * self.targets.len()
        };
        if let Some(time) = target.state.health.record_outcome(ok, def, now, may_eject) {
            tracing::warn!(upstream = %self.name, target = %target.address, seconds = time.as_secs_f64(), "passive health: target ejected");
        }
    }

    /// Starts active health checks once per upstream (a reload that keeps the upstream keeps
    /// its checkers). Needs a Tokio runtime; `ferroway check` never calls it.
    pub fn start_health_checks(self: &Arc<Self>) {
        if let Some(def) = &self.def.health_check
            && !self.checks_started.swap(true, Ordering::Relaxed)
        {
            health::spawn_checkers(self, def);
        }
    }
}

/// The ring position of a request under `consistent_hash`, hashed from borrowed bytes (no
/// allocation). A missing header or cookie hashes as empty, so such requests still land on
/// one stable target.
fn hash_key(on: &HashOn, input: &PickInput<'_>) -> u64 {
    match on {
        HashOn::Header(name) => balance::stable_hash(input.headers.get(name).map_or(&[][..], |v| v.as_bytes())),
        HashOn::Cookie(name) => balance::stable_hash(cookie(input.headers, name).unwrap_or("").as_bytes()),
        HashOn::ClientIp => match input.client_ip {
            IpAddr::V4(v4) => balance::stable_hash(&v4.octets()),
            IpAddr::V6(v6) => balance::stable_hash(&v6.octets()),
        },
        HashOn::Path => balance::stable_hash(input.path.as_bytes()),
    }
}

/// The value of cookie `name` (RFC 6265 §4.2.1: `Cookie: a=1; b=2`, possibly in several fields).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Upstreams by name, shared between snapshots while their definition does not change.
/// Only consulted while compiling a snapshot, never per request.
#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Arc<str>, Weak<Upstream>>>,
}

impl Registry {
    /// The running upstream for `name` if its definition is unchanged, else a new one.
    pub fn get_or_create(&self, name: &str, def: &UpstreamDef) -> Result<Arc<Upstream>, String> {
        if def.targets.is_empty() {
            return Err(format!("upstream {name} has no targets"));
        }
        // Poisoning only means another compile panicked; the map itself is still consistent.
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = live.get(name).and_then(Weak::upgrade)
            && existing.def == *def
        {
            return Ok(existing);
        }
        let fresh = Arc::new(Upstream::new(name, def)?);
        live.insert(name.into(), Arc::downgrade(&fresh));
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_fields_and_pairs() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sess"), None);
        // Keys of the same cookie map to the same ring position; missing ones hash as empty.
        let on = HashOn::Cookie("session".into());
        let input = PickInput { headers: &h, client_ip: IpAddr::from([127, 0, 0, 1]), path: "/" };
        assert_eq!(hash_key(&on, &input), balance::stable_hash(b"abc"));
        let none = HeaderMap::new();
        let input = PickInput { headers: &none, client_ip: IpAddr::from([127, 0, 0, 1]), path: "/" };
        assert_eq!(hash_key(&on, &input), balance::stable_hash(b""));
    }
}
