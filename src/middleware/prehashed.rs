//! Maps keyed by a hash the caller already made (a keyed SipHash of a rate-limit key, a seeded
//! XXH3 of a token), split into shards behind their own locks. Shared by the local rate-limit
//! store and the JWT verification cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map whose `u64` keys are hashes already: it uses them as they are.
pub type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// Hashing again would only cost time (std has no identity hasher).
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys; folded in rather than lost if it ever is.
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The shard of `shards` a hash belongs to, from its middle bits: the map inside a shard takes
/// its bucket from the low bits and a tag from the top seven, so a shard chosen by either would
/// leave its keys sharing those bits (by the low ones, a 64-shard store's keys all fell in one
/// bucket in 64 and probed long runs).
pub fn shard_of(hash: u64, shards: usize) -> usize {
    (hash >> 32) as usize % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_keys_still_differ_in_the_bits_its_map_uses() {
        // Keys as a keyed hash would spread them: a fixed odd multiplier is enough here.
        let keys = (0u64..20_000).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let in_shard_0: Vec<u64> = keys.filter(|k| shard_of(*k, 64) == 0).collect();
        assert!(in_shard_0.len() > 100);
        let low: std::collections::HashSet<u64> = in_shard_0.iter().map(|k| k & 63).collect();
        let tags: std::collections::HashSet<u64> = in_shard_0.iter().map(|k| k >> 57).collect();
        assert!(low.len() > 48, "bucket bits: {} of 64 values", low.len());
        assert!(tags.len() > 96, "tag bits: {} of 128 values", tags.len());
    }
}
