//! W3C Trace Context (https://www.w3.org/TR/trace-context/): continue a valid incoming
//! `traceparent` with the gateway's own span id, or start a trace when there is none.
//!
//! `tracestate` is passed on untouched when the trace is continued and dropped when a new one
//! starts (§3.3.1: without a valid traceparent, tracestate is not to be trusted).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::upstream::balance::random_u64;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(v: &[u8]) -> Option<(&[u8], &[u8])> {
    // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let lower_hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let nonzero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    (lower_hex(trace) && lower_hex(parent) && lower_hex(flags) && nonzero(trace) && nonzero(parent))
        .then_some((trace, flags))
}

fn hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend((0..16).map(|i| HEX[((v >> (60 - 4 * i)) & 15) as usize]));
}

/// Sets the `traceparent` for the upstream request; returns it (for the access log).
pub fn propagate(headers: &mut HeaderMap) -> HeaderValue {
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    let continued = headers.get(&TRACEPARENT).and_then(|v| parse(v.as_bytes()).map(|(t, f)| (t.to_vec(), f.to_vec())));
    let flags = match continued {
        Some((trace, flags)) => {
            out.extend_from_slice(&trace);
            flags
        }
        None => {
            headers.remove(&TRACESTATE);
            hex(&mut out, random_u64());
            hex(&mut out, random_u64() | 1);
            b"01".to_vec()
        }
    };
    out.push(b'-');
    hex(&mut out, random_u64() | 1);
    out.push(b'-');
    out.extend_from_slice(&flags);
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or(HeaderValue::from_static("-"));
    headers.insert(TRACEPARENT.clone(), value.clone());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        let out = propagate(&mut h);
        let s = out.to_str().expect("ascii");
        assert_eq!(&s[..36], &VALID[..36], "same version and trace id");
        assert_ne!(&s[36..52], &VALID[36..52], "a new span id");
        assert_eq!(&s[52..], "-01");
        assert!(parse(s.as_bytes()).is_some());
        assert_eq!(h[&TRACESTATE], "vendor=x");
    }

    #[test]
    fn an_invalid_or_missing_traceparent_starts_a_trace_and_drops_tracestate() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(&TRACEPARENT, HeaderValue::from_static(bad));
            h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
            let out = propagate(&mut h);
            assert!(parse(out.as_bytes()).is_some(), "{bad}");
            assert_ne!(&out.to_str().expect("ascii")[3..35], bad.get(3..35).unwrap_or(""), "{bad}");
            assert!(!h.contains_key(&TRACESTATE), "{bad}");
        }
        let mut none = HeaderMap::new();
        assert!(parse(propagate(&mut none).as_bytes()).is_some());
    }
}
