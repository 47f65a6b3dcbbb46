//! Request ids: keep a well-formed incoming `x-request-id`, otherwise make a new one.
//!
//! New ids are 32 hex digits: a random per-process prefix and a counter, so they are unique
//! without a syscall or a lock per request.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

pub struct IdSource {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        // RandomState is seeded from the OS once per process: a cheap source of a random prefix.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        IdSource { prefix: h.finish(), counter: AtomicU64::new(0) }
    }
}

impl IdSource {
    /// The request's incoming `x-request-id` if it is 1–128 visible ASCII characters, else a
    /// fresh one.
    pub fn for_value(&self, incoming: Option<HeaderValue>) -> HeaderValue {
        match incoming {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|c| (0x21..=0x7e).contains(c)) => v,
            _ => self.fresh(),
        }
    }

    pub fn fresh(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        super::headers::hex_into(&mut buf[..16], &self.prefix.to_be_bytes());
        super::headers::hex_into(&mut buf[16..], &n.to_be_bytes());
        super::headers::hex_value(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_incoming_ids_are_kept_and_bad_ones_replaced() {
        let ids = IdSource::default();
        assert_eq!(ids.for_value(Some(HeaderValue::from_static("abc-123"))), "abc-123");
        assert_ne!(ids.for_value(Some(HeaderValue::from_static("has space"))), "has space");
        let long = "x".repeat(129);
        assert_eq!(ids.for_value(Some(HeaderValue::try_from(long.as_str()).expect("value"))).len(), 32);
        assert_eq!(ids.for_value(None).len(), 32);
    }

    #[test]
    fn fresh_ids_are_unique_hex() {
        let ids = IdSource::default();
        let a = ids.fresh();
        let b = ids.fresh();
        assert_ne!(a, b);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
