//! Choosing a target: smooth weighted round robin, least request, power of two choices over
//! EWMA latency, consistent hashing, and random.
//!
//! Every balancer picks with atomics only (no lock on the request path). Per-target counters
//! (`TargetState`) belong to the upstream, so they survive reloads that leave it unchanged.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What the requests to one target share, in one allocation: the balancers' counters, its
/// health, its idle connections and its latency histogram. With many targets taking turns a
/// request finds its target's state cold, so the fields every request touches come first
/// (`repr(C)` keeps the order) and fill the allocation's first cache line with `Arc`'s
/// counts: in-flight count, EWMA, the idle lists' pointer, the health verdict and ejection
/// time. The latency histogram's count, sum and low buckets follow in the second. (The line
/// boundary holds where the allocator aligns the allocation to 64 bytes, as jemalloc's size
/// classes from 256 bytes do; elsewhere the same fields span one line more.)
#[repr(C)]
pub struct TargetState {
    /// Requests holding a slot on this target (bounded by `max_connections_per_target`).
    pub in_flight: AtomicU32,
    /// Requests waiting for a slot; a release wakes one only when this is non-zero.
    waiting: AtomicU32,
    /// Exponentially weighted moving average of time to response headers, in nanoseconds
    /// (0 until the first response).
    pub ewma_ns: AtomicU64,
    /// Idle connections of the own HTTP/1.1 client (hyper-util's pools its own).
    pub idle: super::h1::IdleConns,
    pub health: super::health::Health,
    /// Time from sending a try to its response headers.
    pub latency: crate::observe::metrics::Histogram,
    freed: tokio::sync::Notify,
    /// Connections open to the target, idle or not, by whichever client opened them
    /// (hyper-util's connector counts into the same number): for metrics.
    pub open: std::sync::Arc<AtomicUsize>,
}

impl TargetState {
    /// `max_idle`: the upstream's `max_idle_per_target`.
    pub fn new(max_idle: u32) -> Self {
        TargetState {
            in_flight: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            idle: super::h1::IdleConns::new(max_idle),
            health: super::health::Health::default(),
            latency: crate::observe::metrics::Histogram::default(),
            freed: tokio::sync::Notify::new(),
            open: std::sync::Arc::default(),
        }
    }

    /// Folds one observed latency into the average (weight 1/5 for the new sample). Updates
    /// may race; a lost sample only delays convergence slightly.
    pub fn observe(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let old = self.ewma_ns.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 5 + sample / 5 };
        self.ewma_ns.store(new.max(1), Ordering::Relaxed);
    }
}

/// Holds one in-flight slot of a target, and its connection permit, until dropped (when the
/// response has ended).
pub struct InFlight {
    state: std::sync::Arc<TargetState>,
}

impl InFlight {
    /// Takes a slot if fewer than `max` are held: one compare-and-swap, no lock.
    pub fn try_start(state: &std::sync::Arc<TargetState>, max: u32) -> Option<Self> {
        state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| InFlight { state: state.clone() })
    }

    /// Waits until a slot frees and takes it. The lock inside `Notify` is taken only on this
    /// slow path and by releases while someone waits, never by an uncontended request.
    pub async fn wait_start(state: &std::sync::Arc<TargetState>, max: u32) -> Self {
        state.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = WaitingGuard(state);
        loop {
            let freed = state.freed.notified();
            tokio::pin!(freed);
            // Register before re-checking, so a release between the check and the wait is seen.
            freed.as_mut().enable();
            if let Some(slot) = InFlight::try_start(state, max) {
                return slot;
            }
            freed.await;
        }
    }
}

/// Keeps `waiting` right even when a wait is abandoned (timed out or cancelled).
struct WaitingGuard<'a>(&'a TargetState);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.state.waiting.load(Ordering::Acquire) > 0 {
            self.state.freed.notify_one();
        }
    }
}

/// The order smooth weighted round robin (NGINX's algorithm) visits targets in, computed once:
/// weights 3:1 give `a a b a`-like interleaving, never a run of one target longer than its
/// weight. Picking is one atomic increment into this table.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

pub struct RoundRobin {
    order: Vec<u32>,
    /// One cursor per worker (`crate::worker`), each on a cache line of its own, as NGINX keeps
    /// round robin per worker process: one shared counter was a line every request of every
    /// core wrote, and a worker's own cursor tells which targets its next requests take (which
    /// `Upstream::pick_target` loads ahead). The cursors start spread over the schedule.
    cursors: Box<[Cursor]>,
}

#[repr(align(64))]
struct Cursor(AtomicUsize);

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        Self::for_workers(weights, crate::worker::count())
    }

    fn for_workers(weights: &[u32], workers: usize) -> Self {
        let order = smooth_schedule(weights);
        let workers = workers.max(1);
        let cursors = (0..workers).map(|w| Cursor(AtomicUsize::new(w * order.len() / workers))).collect();
        RoundRobin { order, cursors }
    }

    /// The target to take, and its place in the schedule (for [`Self::ahead`]).
    pub fn pick(&self) -> (usize, usize) {
        let n = self.order.len().max(1);
        let cursor = &self.cursors[crate::worker::index().min(self.cursors.len() - 1)].0;
        let place = cursor.fetch_add(1, Ordering::Relaxed) % n;
        (self.order.get(place).map_or(0, |&t| t as usize), place)
    }

    /// The target `k` places after `place`: the one the calling worker takes `k` requests later
    /// (if no other thread shares its cursor: threads that are no worker's share worker 0's).
    pub fn ahead(&self, place: usize, k: usize) -> usize {
        let n = self.order.len().max(1);
        self.order.get((place + k) % n).map_or(0, |&t| t as usize)
    }
}

/// A small fast random source per thread (xorshift64*), seeded from the OS once per thread.
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9E37_79B9_7F4A_7C15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A random target, weighted.
pub fn pick_random(cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(1);
    let r = random_u64() % total;
    cumulative.partition_point(|&c| c <= r)
}

/// Fewest requests in flight relative to weight. Exact (a scan) for pools up to 32 targets;
/// larger pools compare two random targets, which keeps the cost flat in the pool size.
pub fn pick_least_request<'a>(state: impl Fn(usize) -> &'a TargetState, weights: &[u32], rr: &AtomicUsize) -> usize {
    let n = weights.len();
    let load = |i: usize| u64::from(state(i).in_flight.load(Ordering::Relaxed)) * 1_000_000 / u64::from(weights[i]);
    if n <= 32 {
        // Start the scan at a rotating offset so ties spread instead of piling on target 0.
        let start = rr.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|k| (start + k) % n).min_by_key(|&i| load(i)).unwrap_or(0)
    } else {
        let (a, b) = two_distinct(n);
        if load(b) < load(a) { b } else { a }
    }
}

/// Power of two choices: of two random targets, the one with the lower expected cost,
/// EWMA latency × (in flight + 1). Targets without a latency yet are tried first.
pub fn pick_p2c_ewma<'a>(state: impl Fn(usize) -> &'a TargetState, weights: &[u32]) -> usize {
    let n = weights.len();
    if n == 1 {
        return 0;
    }
    let (a, b) = two_distinct(n);
    let cost = |i: usize| {
        let ewma = state(i).ewma_ns.load(Ordering::Relaxed);
        let pending = u64::from(state(i).in_flight.load(Ordering::Relaxed)) + 1;
        ewma.saturating_mul(pending) / u64::from(weights[i])
    };
    if cost(b) < cost(a) { b } else { a }
}

fn two_distinct(n: usize) -> (usize, usize) {
    let r = random_u64();
    let a = (r % n as u64) as usize;
    let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
    (a, b)
}

/// A stable 64-bit hash (FNV-1a with a splitmix finaliser): every gateway instance maps a key
/// to the same ring position, unlike the per-process seeded std hasher.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A consistent-hash ring (Ketama style): each target owns `160 × weight` points placed by
/// hashing its address, so removing one of N targets moves only about 1/N of the keys.
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (i, (address, weight)) in targets.iter().enumerate() {
            for v in 0..160 * weight {
                points.push((stable_hash(format!("{address}#{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn pick(&self, key: &[u8]) -> usize {
        self.pick_available(stable_hash(key), |_| true).unwrap_or(0)
    }

    /// The target owning ring position `h` (a [`stable_hash`] of the key), or when that one is
    /// unavailable the next available one clockwise, so a down target's keys spread over the
    /// others instead of piling onto one.
    pub fn pick_available(&self, h: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(p, _)| p < h);
        let n = self.points.len();
        (0..n).map(|k| self.points[(start + k) % n].1 as usize).find(|&t| available(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_every_request_touches_of_a_target_fills_two_cache_lines() {
        use std::mem::{offset_of, size_of};
        // `Arc` puts its two counts (16 bytes) before the state.
        let first_line = 64 - 16;
        assert!(offset_of!(TargetState, idle) + size_of::<super::super::h1::IdleConns>() <= first_line);
        assert!(offset_of!(TargetState, health) + super::super::health::HOT_BYTES <= first_line);
        // The histogram's count, sum and buckets up to 10 ms in the second line.
        assert!(offset_of!(TargetState, latency) + 16 + 4 * 8 <= 2 * 64 - 16);
        // jemalloc's size classes above 224 bytes are multiples of 64, so the allocation
        // starts a cache line.
        assert!(16 + size_of::<TargetState>() > 224);
    }

    #[test]
    fn round_robin_spreads_equal_targets_evenly() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[rr.pick().0] += 1;
        }
        for c in counts {
            assert!((3300..=3367).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn each_worker_goes_round_on_its_own_from_its_own_start() {
        let rr = std::sync::Arc::new(RoundRobin::for_workers(&[1, 1, 1, 1], 2));
        // This thread is no worker's: it takes worker 0's cursor.
        assert_eq!(rr.pick(), (0, 0));
        let other = rr.clone();
        let worker_1 = std::thread::spawn(move || {
            crate::worker::become_worker(1);
            (0..6).map(|_| other.pick().0).collect::<Vec<_>>()
        });
        assert_eq!(worker_1.join().expect("worker thread"), [2, 3, 0, 1, 2, 3], "from half way round");
        // Worker 1's picks did not move worker 0 on.
        assert_eq!((rr.pick().0, rr.ahead(1, 1), rr.ahead(1, 3)), (1, 2, 0));
    }

    #[test]
    fn weights_are_honoured_smoothly() {
        let rr = RoundRobin::new(&[3, 1]);
        let picks: Vec<usize> = (0..10_000).map(|_| rr.pick().0).collect();
        let a = picks.iter().filter(|&&p| p == 0).count();
        assert!((7300..=7700).contains(&a), "{a}");
        // No run of one target longer than its weight.
        let longest_b = picks.split(|&p| p == 0).map(<[usize]>::len).max().unwrap_or(0);
        let longest_a = picks.split(|&p| p == 1).map(<[usize]>::len).max().unwrap_or(0);
        assert!(longest_a <= 3 && longest_b <= 1, "{longest_a} {longest_b}");
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[tokio::test]
    async fn slots_are_capped_and_a_release_wakes_a_waiter() {
        let stats = std::sync::Arc::new(TargetState::new(0));
        let a = InFlight::try_start(&stats, 2).expect("first slot");
        let _b = InFlight::try_start(&stats, 2).expect("second slot");
        assert!(InFlight::try_start(&stats, 2).is_none(), "the cap holds");
        let waiter = tokio::spawn({
            let stats = stats.clone();
            async move { InFlight::wait_start(&stats, 2).await }
        });
        // Let the waiter register, then free a slot: it must get it.
        while stats.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("task");
        assert_eq!(stats.in_flight.load(Ordering::Acquire), 2);
        drop(c);
        assert_eq!(stats.in_flight.load(Ordering::Acquire), 1);
        assert_eq!(stats.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn an_abandoned_wait_leaves_no_trace() {
        let stats = std::sync::Arc::new(TargetState::new(0));
        let _held = InFlight::try_start(&stats, 1).expect("slot");
        let waited = tokio::time::timeout(Duration::from_millis(20), InFlight::wait_start(&stats, 1)).await;
        assert!(waited.is_err());
        assert_eq!(stats.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn least_request_prefers_the_idle_target() {
        let stats: Vec<TargetState> = (0..3).map(|_| TargetState::new(0)).collect();
        stats[0].in_flight.store(5, Ordering::Relaxed);
        stats[2].in_flight.store(1, Ordering::Relaxed);
        let rr = AtomicUsize::new(0);
        for _ in 0..10 {
            assert_eq!(pick_least_request(|i| &stats[i], &[1, 1, 1], &rr), 1);
        }
    }

    #[test]
    fn p2c_ewma_prefers_the_faster_target() {
        let stats: Vec<TargetState> = (0..2).map(|_| TargetState::new(0)).collect();
        stats[0].observe(Duration::from_millis(50));
        stats[1].observe(Duration::from_millis(5));
        let fast = (0..1000).filter(|_| pick_p2c_ewma(|i| &stats[i], &[1, 1]) == 1).count();
        assert_eq!(fast, 1000);
    }

    #[test]
    fn random_is_roughly_uniform_and_weighted() {
        let mut counts = [0usize; 2];
        for _ in 0..20_000 {
            counts[pick_random(&[3, 4])] += 1;
        }
        assert!((14_000..16_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_about_one_nth_when_a_target_goes() {
        let four = Ring::new(&[("a:1", 1), ("b:1", 1), ("c:1", 1), ("d:1", 1)]);
        let three = Ring::new(&[("a:1", 1), ("b:1", 1), ("c:1", 1)]);
        let names = ["a", "b", "c", "d"];
        let mut moved = 0;
        let mut per = [0usize; 4];
        for k in 0..10_000 {
            let key = format!("user-{k}");
            let before = four.pick(key.as_bytes());
            assert_eq!(before, four.pick(key.as_bytes()));
            per[before] += 1;
            let after = three.pick(key.as_bytes());
            if names[before] != names[after] {
                moved += 1;
                assert_eq!(before, 3, "only keys of the removed target move");
            }
        }
        assert!((2_000..3_000).contains(&moved), "{moved} of 10000 moved");
        assert!(per.iter().all(|&c| (1_800..3_200).contains(&c)), "{per:?}");
    }
}
