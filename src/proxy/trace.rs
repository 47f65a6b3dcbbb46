//! W3C Trace Context (https://www.w3.org/TR/trace-context/): continue a valid incoming
//! `traceparent` with the gateway's own span id, or start a trace when there is none.
//!
//! `tracestate` is passed on untouched when the trace is continued and dropped when a new one
//! starts (§3.3.1: without a valid traceparent, tracestate is not to be trusted).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::headers::hex_into;
use crate::upstream::balance::random_u64;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// This request's place in a trace: the trace, the gateway's own span, and the caller's span
/// when it sent a valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    pub trace: u128,
    pub span: u64,
    pub parent: Option<u64>,
    pub flags: u8,
}

impl TraceIds {
    /// Continues the request's valid version-00 `traceparent` with a new span, or starts a
    /// trace (sampled) when there is none.
    pub fn for_value(traceparent: Option<&HeaderValue>) -> TraceIds {
        let span = random_u64() | 1;
        match traceparent.and_then(|v| parse(v.as_bytes())) {
            Some((trace, parent, flags)) => TraceIds { trace, span, parent: Some(parent), flags },
            None => {
                let trace = (u128::from(random_u64()) << 64) | u128::from(random_u64() | 1);
                TraceIds { trace, span, parent: None, flags: 1 }
            }
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` naming the gateway's span as the parent of the upstream's.
    pub fn traceparent(&self) -> HeaderValue {
        super::headers::hex_value(&self.traceparent_text())
    }

    /// [`traceparent`](Self::traceparent) as text.
    pub fn traceparent_text(&self) -> [u8; 55] {
        // Filled in by hand: `format!` with padded hex cost about a thousand instructions.
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut text[3..35], &self.trace.to_be_bytes());
        hex_into(&mut text[36..52], &self.span.to_be_bytes());
        hex_into(&mut text[53..55], &[self.flags]);
        text
    }
}

/// Trace id, parent id and flags of a valid version-00 `traceparent`: lower-case hex, ids not
/// all zero.
fn parse(v: &[u8]) -> Option<(u128, u64, u8)> {
    // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let lower_hex = |s: &[u8]| s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    if !(lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
        return None;
    }
    fn text(s: &[u8]) -> Option<&str> {
        std::str::from_utf8(s).ok()
    }
    let trace = u128::from_str_radix(text(trace)?, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(text(parent)?, 16).ok().filter(|p| *p != 0)?;
    Some((trace, parent, u8::from_str_radix(text(flags)?, 16).ok()?))
}

/// Sets the `traceparent` for the upstream request (dropping `tracestate` when the trace was
/// not continued); returns it (for the access log).
pub fn propagate(headers: &mut HeaderMap, ids: &TraceIds) -> HeaderValue {
    if ids.parent.is_none() {
        headers.remove(&TRACESTATE);
    }
    let value = ids.traceparent();
    headers.insert(TRACEPARENT.clone(), value.clone());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn forward(h: &mut HeaderMap) -> (HeaderValue, TraceIds) {
        let ids = TraceIds::for_value(h.get(&TRACEPARENT));
        (propagate(h, &ids), ids)
    }

    #[test]
    fn traceparent_is_the_ids_in_padded_lower_hex() {
        let ids = TraceIds {
            trace: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span: 0x00f0_67aa_0ba9_02b7,
            parent: None,
            flags: 1,
        };
        assert_eq!(ids.traceparent(), VALID);
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        let (out, ids) = forward(&mut h);
        let s = out.to_str().expect("ascii");
        assert_eq!(&s[..36], &VALID[..36], "same version and trace id");
        assert_ne!(&s[36..52], &VALID[36..52], "a new span id");
        assert_eq!(&s[52..], "-01");
        assert!(parse(s.as_bytes()).is_some());
        assert_eq!(h[&TRACESTATE], "vendor=x");
        assert_eq!(ids.parent, Some(0x00f0_67aa_0ba9_02b7), "the caller's span is the parent");
        assert!(ids.sampled());
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
            let (out, ids) = forward(&mut h);
            assert!(parse(out.as_bytes()).is_some(), "{bad}");
            assert_ne!(&out.to_str().expect("ascii")[3..35], bad.get(3..35).unwrap_or(""), "{bad}");
            assert!(!h.contains_key(&TRACESTATE), "{bad}");
            assert_eq!(ids.parent, None);
        }
        let mut none = HeaderMap::new();
        assert!(parse(forward(&mut none).0.as_bytes()).is_some());
    }
}
