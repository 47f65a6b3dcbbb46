//! The in-process store: each key's TAT in one of 64 shards. A shard's lock is held for one
//! map lookup and insert, and a request contends only with requests whose keys hash to the
//! same shard, so this is no global lock.
//!
//! Memory is bounded: keys whose TAT has passed are swept (forgetting them changes no
//! decision), sweeps are amortised by doubling, and at most `max_keys` keys are held; past
//! that, new keys are admitted without being tracked and counted as `untracked`. An entry is
//! a 64-bit keyed hash of the key and a 64-bit TAT: about 40 bytes a key at worst with the
//! map's load factor and growth, so 1 000 000 live keys stay under 48 MiB.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::{Decision, Gcra};
use crate::middleware::prehashed::{PrehashedMap, shard_of};

const SHARDS: usize = 64;

struct Shard {
    tats: PrehashedMap<u64>,
    next_sweep: usize,
    /// A full shard of live keys is swept again only after this time, so a flood of new keys
    /// cannot make every request pay for a sweep.
    full_until: u64,
}

pub struct LocalStore {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
    epoch: Instant,
}

/// Whether the key is tracked: a decision for an untracked key is always "allowed".
pub enum Tracked {
    Yes(Decision),
    Untracked(Decision),
}

impl LocalStore {
    pub fn new(max_keys: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { tats: HashMap::default(), next_sweep: 1024, full_until: 0 }))
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds on this store's clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A key's hash: its kind's tag byte, then its bytes (one fixed-size tag, so no two keys
    /// hash the same input). A collision between two keys would merge their limits, which a
    /// 64-bit keyed hash (SipHash) makes as unlikely as guessing the process's random key.
    /// Two writes, not a hashed `&[&[u8]]`, whose length prefixes doubled the cost.
    pub fn key(&self, tag: u8, bytes: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(tag);
        h.write(bytes);
        h.finish()
    }

    pub fn decide(&self, gcra: &Gcra, key: u64, now: u64) -> Tracked {
        let shard = &self.shards[shard_of(key, SHARDS)];
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = s.tats.get(&key).copied();
        let (decision, next) = gcra.decide(tat, now);
        let Some(next) = next else { return Tracked::Yes(decision) };
        if tat.is_none() {
            let full = s.tats.len() >= self.per_shard;
            if (!full && s.tats.len() >= s.next_sweep) || (full && now >= s.full_until) {
                s.tats.retain(|_, t| *t > now);
                s.next_sweep = (s.tats.len() * 2).max(1024);
                let len = s.tats.len();
                if s.tats.capacity() > 4 * len.max(256) {
                    s.tats.shrink_to(len * 2);
                }
            }
            if s.tats.len() >= self.per_shard {
                s.full_until = now + 100_000_000;
                return Tracked::Untracked(decision);
            }
        }
        s.tats.insert(key, next);
        Tracked::Yes(decision)
    }

    /// Keys held now (tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tats.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
