//! HTTP/1.1 message framing (RFC 9112), shared by the client-facing codec (`server::h1`) and
//! the upstream client (`upstream::h1`): how a body is delimited, and a body decoder that
//! turns buffered bytes into frames. Pure functions over buffers; nothing here does I/O.

use bytes::{Buf, Bytes, BytesMut};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::proxy::headers::list_items;

/// What a message's Connection fields say (RFC 9112 §9.3, RFC 9110 §7.6.1), read off the
/// parsed fields in one pass, for both codecs.
#[derive(Default)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// A token besides `close` and `keep-alive` (`upgrade` too): a field that goes with the
    /// Connection when it is removed.
    pub lists_names: bool,
}

impl ConnectionTokens {
    /// Adds one Connection field's tokens.
    pub fn read(&mut self, value: &[u8]) {
        // Nearly every Connection field is one of these, whole: no splitting and trimming.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                self.lists_names = true;
            }
        }
    }
}

/// Which framing and routing fields a parsed head has, noted while its fields are read (one
/// comparison of a parsed name each), so that a message without them is framed without
/// looking them up in its map: most requests have none of them.
#[derive(Default, Clone, Copy)]
pub struct Seen {
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub expect: bool,
    pub upgrade: bool,
}

impl Seen {
    pub fn note(&mut self, name: &HeaderName) {
        if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == header::EXPECT {
            self.expect = true;
        } else if *name == header::UPGRADE {
            self.upgrade = true;
        }
    }
}

/// A field value parsed by `httparse`, as a `HeaderValue` sharing the head's bytes.
///
/// `httparse` admits in a value exactly the bytes `HeaderValue` does (HTAB, and 0x20 to 0xFF
/// but 0x7F), so checking them again, byte by byte, was 12% of parsing a head (callgrind). The
/// unchecked constructor asks for UTF-8; an ASCII value is, and is the usual case (one word-wide
/// test); any other value goes through the checked constructor.
pub fn parsed_value(bytes: Bytes) -> Option<HeaderValue> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8, the unchecked constructor's one requirement; the bytes
        // are a value `httparse` accepted, so they are also ones `HeaderValue` admits (a debug
        // build checks this again).
        Some(unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) })
    } else {
        HeaderValue::from_maybe_shared(bytes).ok()
    }
}

/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// A chunk's closing CRLF and the last chunk without trailers (RFC 9112 §7.1): the end of a
/// chunked body whose end comes with its last data, in one write.
pub const CHUNK_END_AND_LAST: &[u8] = b"\r\n0\r\n\r\n";
/// The last chunk without trailers.
pub const LAST_CHUNK: &[u8] = CHUNK_END_AND_LAST.split_at(2).1;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Responses only: the body ends when the connection closes.
    UntilClose,
}

/// How a request's body is delimited (RFC 9112 §6.3); `None` when that is not certain.
/// `seen` says which framing fields the head has (noted as it was parsed).
pub fn request_framing(version: Version, headers: &HeaderMap, seen: Seen) -> Option<Framing> {
    if !seen.transfer_encoding && !seen.content_length {
        return Some(Framing::Length(0));
    }
    if seen.transfer_encoding {
        // HTTP/1.0 has no transfer codings, and a coding other than chunked leaves the length
        // unknown.
        if version == Version::HTTP_10 {
            return None;
        }
        let mut codings = list_items(headers, &header::TRANSFER_ENCODING).filter(|t| !t.is_empty());
        let only_chunked =
            codings.next().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) && codings.next().is_none();
        return only_chunked.then_some(Framing::Chunked);
    }
    let mut length = None;
    for item in list_items(headers, &header::CONTENT_LENGTH) {
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = item.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    Some(Framing::Length(length.unwrap_or(0)))
}

/// Fields that frame or route a message and never belong in a trailer section.
pub fn is_framing_field(name: &HeaderName) -> bool {
    [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::HOST, header::TRAILER, header::CONNECTION]
        .contains(name)
}

/// `name: value\r\n`.
pub fn put_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Where a body decoder is in its message.
#[derive(Debug)]
pub enum Decode {
    Length(u64),
    /// A response without a length: everything until the connection closes (RFC 9112 §6.3).
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the connection closed before the body's end")]
    Incomplete,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decode {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(0) => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::ChunkSize,
            Framing::UntilClose => Decode::UntilClose,
        }
    }

    /// The body's size as far as the decoder knows it: exact under a length, unknown otherwise.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Decode::Length(n) => http_body::SizeHint::with_exact(*n),
            Decode::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }

    /// The next frame from what is buffered: `Ok(None)` when more must be read first.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Frame<Bytes>>>, BodyError> {
        loop {
            match *self {
                Decode::Done => return Ok(Some(None)),
                Decode::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Some(Frame::data(buf.split().freeze()))));
                }
                Decode::Length(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (frame, left) = take_data(buf, n);
                    *self = if left == 0 { Decode::Done } else { Decode::Length(left) };
                    return Ok(Some(Some(frame)));
                }
                Decode::ChunkSize => {
                    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(BodyError::Chunked("chunk-size line too long"));
                        }
                        return Ok(None);
                    };
                    if eol > MAX_CHUNK_LINE || eol == 0 || buf[eol - 1] != b'\r' {
                        return Err(BodyError::Chunked("chunk-size line not ended by CRLF"));
                    }
                    let size = chunk_size(&buf[..eol - 1])?;
                    buf.advance(eol + 1);
                    *self = if size == 0 { Decode::Trailers } else { Decode::ChunkData(size) };
                }
                Decode::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let (frame, left) = take_data(buf, n);
                    *self = if left == 0 { Decode::ChunkEnd } else { Decode::ChunkData(left) };
                    return Ok(Some(Some(frame)));
                }
                Decode::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decode::ChunkSize;
                }
                Decode::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decode::Done;
                        return Ok(Some(None));
                    }
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                if let (Ok(name), Ok(value)) =
                                    (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                                    && !is_framing_field(&name)
                                {
                                    trailers.append(name, value);
                                }
                            }
                            buf.advance(len);
                            *self = Decode::Done;
                            return Ok(Some(Some(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= 64 << 10 => return Ok(None),
                        _ => return Err(BodyError::Chunked("malformed trailer section")),
                    }
                }
            }
        }
    }
}

/// Up to `n` of the buffered body bytes as a frame, and how many of the `n` are left after it.
pub fn take_data(buf: &mut BytesMut, n: u64) -> (Frame<Bytes>, u64) {
    let take = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
    (Frame::data(buf.split_to(take).freeze()), n - take as u64)
}

/// The size of a chunk from its line: hex digits, then optional extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Chunked("bad chunk size"));
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || {
        let ext = rest.trim_ascii_start();
        ext.first() == Some(&b';') && ext.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80)
    };
    if !rest_ok {
        return Err(BodyError::Chunked("bad chunk extension"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::Chunked("bad chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| BodyError::Chunked("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::ConnectionTokens;

    #[test]
    fn connection_tokens_are_read_case_blind_across_fields() {
        let mut t = ConnectionTokens::default();
        t.read(b" Keep-Alive ,, ");
        assert!(t.keep_alive && !t.close && !t.upgrade && !t.lists_names);
        t.read(b"UPGRADE,close");
        assert!(t.close && t.upgrade && t.lists_names, "upgrade names a field (Upgrade)");
        let mut named = ConnectionTokens::default();
        named.read(b"x-secret");
        assert!(named.lists_names && !named.upgrade);
        // A whole value of one usual token, as most fields are.
        let mut whole = ConnectionTokens::default();
        whole.read(b"keep-alive");
        assert!(whole.keep_alive && !whole.close && !whole.lists_names);
        whole.read(b"CLOSE");
        assert!(whole.keep_alive && whole.close && !whole.lists_names);
    }
}
