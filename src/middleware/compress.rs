//! `compress`: response bodies compressed with brotli, zstd or gzip as the client's
//! `Accept-Encoding` allows (RFC 9110 §12.5.3), streamed frame by frame: never the whole body
//! in memory, and flushed whenever the upstream pauses so a trickling response (server-sent
//! events) is not held back.
//!
//! Skipped: HEAD, statuses without a body or with a partial one (1xx, 204, 206, 304), bodies
//! already encoded, declared shorter than `min_size`, of a type not listed, or marked
//! `Cache-Control: no-transform` (RFC 9110 §7.7). A compressed response loses
//! `Content-Length` and `Accept-Ranges` (ranges would address the compressed bytes), and a
//! strong `ETag` becomes weak, since the compressed and plain representations are not
//! byte-identical (RFC 9110 §8.8.3). Every response whose form depends on `Accept-Encoding`
//! says so in `Vary`.
//!
//! The codecs are compression-codecs' (the async-compression project's) streaming encoders.
//! Levels favour speed, as a proxy compresses every response afresh: brotli quality 4 with a
//! 256 KiB window, zstd level 3 with a 512 KiB window, gzip level 5; memory per response in
//! flight stays near the window.

use std::io;

use bytes::{Bytes, BytesMut};
use compression_codecs::EncodeV2;
use compression_codecs::core::Level;
use compression_codecs::core::util::{PartialBuffer, WriteBuffer};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::{Cx, Fields, Middleware, Req, Step};
use crate::config::{Coding, CompressDef};
use crate::proxy::headers::list_items;

pub struct Compress {
    algorithms: Vec<Coding>,
    min_size: u64,
    content_types: Vec<String>,
}

impl Compress {
    pub fn new(def: &CompressDef) -> Compress {
        Compress {
            algorithms: def.algorithms.clone(),
            min_size: def.min_size,
            content_types: def.content_types.clone(),
        }
    }

    /// Whether this response's form would depend on `Accept-Encoding` (what `Vary` must say).
    fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        if headers.get(header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
            return false;
        }
        if list_items(headers, &header::CACHE_CONTROL).any(|d| d.eq_ignore_ascii_case("no-transform")) {
            return false;
        }
        let short = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n < self.min_size);
        !short && headers.get(header::CONTENT_TYPE).is_some_and(|t| self.listed(t))
    }

    fn listed(&self, content_type: &HeaderValue) -> bool {
        let Ok(t) = content_type.to_str() else { return false };
        let essence = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((ty, sub)) = essence.split_once('/') else { return false };
        self.content_types.iter().any(|pattern| match pattern.split_once('/') {
            Some(("*", "*")) => true,
            Some((pt, "*")) => pt == ty,
            Some((pt, ps)) => pt == ty && ps == sub,
            None => false,
        })
    }
}

impl Middleware for Compress {
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(vec![header::ACCEPT_ENCODING])
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        if *req.method != Method::HEAD && cx.accept_coding.is_none() {
            cx.accept_coding = negotiate(&self.algorithms, req.headers);
        }
        Step::Next
    }

    fn response(&self, cx: &Cx, status: StatusCode, fields: &mut Fields<'_>) {
        // Reads any field (`ResponseFields::Any`), so the response is all in the map.
        let headers = fields.map();
        // One encoding per response: a second `compress` in the chain sees it encoded already.
        if cx.encode.get().is_some() || !self.eligible(status, headers) {
            return;
        }
        add_vary(headers);
        let Some(coding) = cx.accept_coding else { return };
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        if let Some(etag) = headers.get(header::ETAG)
            && etag.as_bytes().starts_with(b"\"")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, v);
            }
        }
        let _ = cx.encode.set(coding);
    }
}

/// `Vary: Accept-Encoding`, unless the response already varies on it or on everything.
fn add_vary(headers: &mut HeaderMap) {
    let covered = list_items(headers, &header::VARY).any(|f| f == "*" || f.eq_ignore_ascii_case("accept-encoding"));
    if !covered {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The coding to use: the client's highest q-value among `offered`, ties going to the
/// earlier in `offered`; a coding the client does not name takes `*`'s q-value; q=0 refuses.
/// `None`: send the body as it is.
pub fn negotiate(offered: &[Coding], headers: &HeaderMap) -> Option<Coding> {
    let mut any: Option<u16> = None;
    let mut named: Vec<(Coding, u16)> = Vec::new();
    let mut seen = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        seen = true;
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim();
            if token.is_empty() {
                continue;
            }
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .next()
                .map_or(Some(1000), qvalue);
            let Some(q) = q else { continue };
            if token == "*" {
                any = Some(q);
            } else if let Some(c) = offered.iter().find(|c| c.token().eq_ignore_ascii_case(token)) {
                named.push((*c, q));
            }
        }
    }
    if !seen {
        return None;
    }
    let mut best: Option<(Coding, u16)> = None;
    for c in offered {
        let q = named.iter().find(|(n, _)| n == c).map(|(_, q)| *q).or(any).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((*c, q));
        }
    }
    best.map(|(c, _)| c)
}

/// An RFC 9110 §12.4.2 qvalue in thousandths: `0`, `0.5`, `1.000`; anything else is ignored.
fn qvalue(s: &str) -> Option<u16> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// A streaming encoder for one response body.
pub struct Encoder {
    codec: Box<dyn EncodeV2 + Send>,
    scratch: Box<[u8]>,
    /// Input taken since the last output left: a pause flushes only when there is some.
    unflushed: bool,
}

impl Encoder {
    pub fn new(coding: Coding) -> Encoder {
        let codec: Box<dyn EncodeV2 + Send> = match coding {
            Coding::Br => Box::new(compression_codecs::BrotliEncoder::new(
                compression_codecs::brotli::params::EncoderParams::default().quality(Level::Precise(4)).window_size(18),
            )),
            Coding::Zstd => Box::new(compression_codecs::ZstdEncoder::new_with_params(
                3,
                &[compression_codecs::zstd::params::CParameter::window_log(19)],
            )),
            Coding::Gzip => Box::new(compression_codecs::GzipEncoder::new(Level::Precise(5).into())),
        };
        Encoder { codec, scratch: vec![0; 16 << 10].into_boxed_slice(), unflushed: false }
    }

    /// Compresses `input`; returns what the codec let out (often nothing yet).
    pub fn data(&mut self, input: &[u8]) -> io::Result<Bytes> {
        let mut out = BytesMut::new();
        let mut input = PartialBuffer::new(input);
        while !input.unwritten().is_empty() {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            let before = input.written_len();
            self.codec.encode(&mut input, &mut output)?;
            if input.written_len() == before && output.written_len() == 0 {
                return Err(io::Error::other("the encoder made no progress"));
            }
            out.extend_from_slice(output.written());
        }
        self.unflushed = true;
        Ok(out.freeze())
    }

    /// Everything taken so far, as output that can be decoded up to here.
    pub fn flush(&mut self) -> io::Result<Bytes> {
        if !self.unflushed {
            return Ok(Bytes::new());
        }
        self.unflushed = false;
        self.drain(|codec, output| codec.flush(output))
    }

    /// The rest of the stream, with its end marker and checksum.
    pub fn finish(&mut self) -> io::Result<Bytes> {
        self.unflushed = false;
        self.drain(|codec, output| codec.finish(output))
    }

    fn drain(
        &mut self,
        mut step: impl FnMut(&mut (dyn EncodeV2 + Send), &mut WriteBuffer<'_>) -> io::Result<bool>,
    ) -> io::Result<Bytes> {
        let mut out = BytesMut::new();
        loop {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            let done = step(&mut *self.codec, &mut output)?;
            out.extend_from_slice(output.written());
            if done {
                return Ok(out.freeze());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).expect("value"));
        h
    }

    const ALL: &[Coding] = &[Coding::Br, Coding::Zstd, Coding::Gzip];

    #[test]
    fn negotiation_follows_q_values_then_the_configured_order() {
        assert_eq!(negotiate(ALL, &HeaderMap::new()), None, "no Accept-Encoding: identity");
        assert_eq!(negotiate(ALL, &accept("gzip, deflate, br")), Some(Coding::Br));
        assert_eq!(negotiate(ALL, &accept("gzip;q=1.0, br;q=0.5")), Some(Coding::Gzip));
        assert_eq!(negotiate(ALL, &accept("br;q=0, *;q=0.1")), Some(Coding::Zstd));
        assert_eq!(negotiate(ALL, &accept("*")), Some(Coding::Br));
        assert_eq!(negotiate(ALL, &accept("identity;q=0, gzip;q=0")), None);
        assert_eq!(negotiate(ALL, &accept("deflate")), None);
        assert_eq!(negotiate(ALL, &accept("GZIP;Q=0.3, zstd;q=0.2")), Some(Coding::Gzip));
        assert_eq!(negotiate(ALL, &accept("gzip;q=2, zstd;q=0.2")), Some(Coding::Zstd), "a bad qvalue drops its item");
        assert_eq!(negotiate(&[Coding::Gzip], &accept("br, zstd")), None);
    }

    #[test]
    fn qvalues_are_read_as_rfc_9110_writes_them() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue("0.1234"), None);
        assert_eq!(qvalue("-1"), None);
    }
}
