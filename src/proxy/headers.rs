//! Header rules for forwarding: what is hop-by-hop, and what the gateway adds on the way.
//!
//! RFC 9110 §7.6.1: Connection and the fields it lists, plus the classic hop-by-hop fields,
//! belong to one connection and are never forwarded. `Trailer` is not among them: RFC 9110
//! §6.6.2 makes it an end-to-end declaration, and since trailers are forwarded end to end the
//! declaration stays true (hyper's HTTP/1 encoder also sends only declared trailer fields). `X-Forwarded-For` is appended to,
//! `X-Forwarded-Proto`/`-Host` are set, `Forwarded` (RFC 7239) and `Via` (RFC 9110 §7.6.3) are
//! appended.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Version;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use super::error::ErrorKind;

/// Whether a field name (lower case, as `HeaderName` keeps it) is hop-by-hop: Connection, the
/// classic hop-by-hop fields, and Proxy-Connection. Matched as text, which goes by length
/// first: comparing against a list of `HeaderName`s cost about ten instructions a name.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"te"
            | b"transfer-encoding"
            | b"upgrade"
            | b"proxy-authorization"
            | b"proxy-authenticate"
    )
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request fields the proxy sets or appends to on the way up: a hook or a balancer that
/// names one needs them in the request's map. `Scan::forwarding` looks for all but Via from
/// the client (a client's Via is kept and the proxy's follows it as a line of its own, as the
/// map would send it).
pub const FORWARDING_FIELDS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "via",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// The elements of every `name` field as a comma-separated list (RFC 9110 §5.6.1), trimmed;
/// fields that are not text are skipped.
pub fn list_items<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> + 'h {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// What the request path reads of a request's fields before it changes them, found in one
/// walk over the fields rather than a hashed lookup each (seven lookups were 700 instructions
/// of a small request; the walk is a few comparisons per field). Owned, so the request can be
/// taken apart while it is used; a field's value is cloned (a reference count) only when the
/// request has that field.
pub struct Scan {
    /// The header section's size as sent (`name: value` CRLF each), for `max_header_bytes`.
    pub bytes: u64,
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    /// The first Host field, and whether there is another.
    pub host: Option<HeaderValue>,
    pub more_hosts: bool,
    /// The first Content-Length as a number; a malformed one is a bad request.
    pub declared: Result<Option<u64>, ErrorKind>,
    /// A Content-Type of `application/grpc`, `application/grpc+proto`, `application/grpc-web…`:
    /// the client reads errors as a gRPC status, never from an HTTP status or body.
    pub grpc: bool,
    /// Whether any hop-by-hop field is present (most requests have none).
    pub hop_by_hop: bool,
    /// Whether the client sent a field the proxy sets or appends to on the way up
    /// (X-Forwarded-*, Forwarded, X-Request-Id, traceparent, tracestate): without one, the
    /// proxy's fields can go up as lines ([`forwarding_lines`]) rather than into the map.
    pub forwarding: bool,
}

impl Scan {
    pub fn of(headers: &HeaderMap) -> Scan {
        let mut scan = Scan {
            bytes: 0,
            request_id: None,
            traceparent: None,
            host: None,
            more_hosts: false,
            declared: Ok(None),
            grpc: false,
            hop_by_hop: false,
            forwarding: false,
        };
        let (mut length, mut content_type) = (None, None);
        for (name, value) in headers {
            let name = name.as_str();
            scan.bytes += (name.len() + value.len() + 4) as u64;
            // By the name's text, like `is_hop_by_hop`.
            match name {
                "host" if scan.host.is_some() => scan.more_hosts = true,
                "host" => scan.host = Some(value.clone()),
                "content-length" => _ = length.get_or_insert(value),
                "content-type" => _ = content_type.get_or_insert(value),
                "x-request-id" => {
                    scan.forwarding = true;
                    scan.request_id.get_or_insert_with(|| value.clone());
                }
                "traceparent" => {
                    scan.forwarding = true;
                    scan.traceparent.get_or_insert_with(|| value.clone());
                }
                "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded" | "tracestate" => {
                    scan.forwarding = true;
                }
                _ => scan.hop_by_hop |= is_hop_by_hop(name.as_bytes()),
            }
        }
        scan.declared = length.map(content_length).transpose();
        scan.grpc = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        scan
    }
}

/// A `Content-Length` value as a number; a malformed one is a bad request (RFC 9112 §6.3).
pub fn content_length(v: &HeaderValue) -> Result<u64, ErrorKind> {
    v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or(ErrorKind::BadRequest)
}

/// Removes hop-by-hop fields. Returns whether the sender accepts trailers (`TE: trailers`),
/// the one hop-by-hop signal a proxy passes on, since it holds for the whole chain.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // One scan of the names present rather than a hashed removal of each hop-by-hop name: most
    // messages carry none or one of them, and Connection-listed names need Connection.
    let present = headers.keys().any(|k| is_hop_by_hop(k.as_str().as_bytes()));
    strip_hop_by_hop_present(headers, present)
}

/// `strip_hop_by_hop`, for fields already known to hold a hop-by-hop one or not.
pub fn strip_hop_by_hop_present(headers: &mut HeaderMap, present: bool) -> bool {
    if !present {
        return false;
    }
    // Read before Connection's list is applied: a sender of TE lists "te" there (RFC 9110
    // §10.1.4).
    let te_trailers = list_items(headers, &header::TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    // The Connection values are cloned (shared bytes, no copy) so the map can change while
    // their names are read, and each name is removed by `&str` (no allocation even for a
    // name that is not a standard one, such as `keep-alive`).
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next().cloned(), connection.next().is_some()) {
        (None, _) => {}
        (Some(only), false) => remove_listed(headers, &only),
        (Some(_), true) => {
            let values: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
            for v in &values {
                remove_listed(headers, v);
            }
        }
    }
    while let Some(name) = headers.keys().find(|k| is_hop_by_hop(k.as_str().as_bytes())).cloned() {
        headers.remove(name);
    }
    te_trailers
}

/// Removes the fields a Connection value lists (RFC 9110 §7.6.1), except Host: every request
/// carries one to its next hop (RFC 9112 §3.2), and RFC 9110 §7.6.1 forbids listing a field
/// meant for every recipient, so `Connection: host` is not a way to drop it.
fn remove_listed(headers: &mut HeaderMap, value: &HeaderValue) {
    let Ok(list) = value.to_str() else { return };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("host")) {
        headers.remove(name);
    }
}

pub fn via_value(version: Version) -> HeaderValue {
    // Constants: `from_static` outside a const context checks its text byte by byte on every
    // call (~120 instructions, twice per request).
    const VIA_2: HeaderValue = HeaderValue::from_static("2 ferroway");
    const VIA_10: HeaderValue = HeaderValue::from_static("1.0 ferroway");
    const VIA_11: HeaderValue = HeaderValue::from_static("1.1 ferroway");
    match version {
        Version::HTTP_2 => VIA_2,
        Version::HTTP_10 => VIA_10,
        _ => VIA_11,
    }
}

/// Writes `bytes` as lower-case hex into `out` (twice as long), a byte at a time through a
/// table: digit by digit on a `u128`, a `traceparent` took 450 instructions.
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    static PAIRS: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [digits[i >> 4], digits[i & 15]];
            i += 1;
        }
        t
    };
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
}

/// A value the gateway wrote in hex digits and dashes (request ids, `traceparent`), copied
/// into a `HeaderValue` without the checked constructor's byte-by-byte test: a third of making
/// such a value (callgrind). Text that is not ASCII goes through the check.
pub fn hex_value(text: &[u8]) -> HeaderValue {
    debug_assert!(text.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-'), "not hex: {text:?}");
    if text.is_ascii() {
        // SAFETY: ASCII is valid UTF-8, the unchecked constructor's one requirement; hex digits
        // and dashes are bytes `HeaderValue` admits (the callers write only those, and a debug
        // build checks it above).
        unsafe { HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(text)) }
    } else {
        HeaderValue::from_bytes(text).unwrap_or(HeaderValue::from_static("-"))
    }
}

/// Per-connection forwarding facts, computed once when the connection is accepted.
pub struct Peer {
    pub addr: SocketAddr,
    /// The client IP as an `X-Forwarded-For` element.
    pub ip_value: HeaderValue,
    /// `for=…;proto=…`, the fixed part of this connection's `Forwarded` element.
    pub forwarded_for: String,
    pub proto: &'static str,
    /// The subject of the client's verified TLS certificate (mTLS), RFC 4514 form.
    pub client_cert_subject: Option<Arc<str>>,
    /// On a `redirect_to_https` listener: the TLS port every request is sent to.
    pub redirect_https: Option<u16>,
    /// The TLS version of this connection (`TLSv1.3`), on a TLS listener.
    pub tls_version: Option<&'static str>,
    /// The server's open-connection count, which an upgraded connection joins.
    pub connections: Option<Arc<crate::server::Connections>>,
}

impl Peer {
    /// Made for every new connection, so the address is written out without `fmt` where it
    /// can be: `format!` and `to_string` of an IPv4 address, with the strings they grew, were
    /// 2.5k instructions of every new connection (callgrind), more than reading its request.
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        let proto = if tls { "https" } else { "http" };
        let ip = addr.ip();
        let text = ip_text(ip);
        // RFC 7239 §6: IPv6 nodes are bracketed and quoted.
        let (open, close) = if ip.is_ipv6() { ("for=\"[", "]\";proto=") } else { ("for=", ";proto=") };
        let mut forwarded_for = String::with_capacity(open.len() + text.len() + close.len() + proto.len());
        for part in [open, &text, close, proto] {
            forwarded_for.push_str(part);
        }
        let ip_value = HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip_value,
            forwarded_for,
            proto,
            client_cert_subject: None,
            redirect_https: None,
            tls_version: None,
            connections: None,
        }
    }
}

/// An IP address as text (as its `Display` writes it): an IPv4 address octet by octet, with
/// no formatter, in a string of the right size.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Adds the forwarding headers for one request. `host` is the Host the client asked for, and
/// `host_text` the same as text, where it is visible ASCII (as routing read it).
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
    host_text: Option<&str>,
    version: Version,
) {
    // One hashed lookup for the usual case, a client that sent none.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer.ip_value.clone());
        }
        Entry::Occupied(mut e) => {
            let existing = e.iter().filter_map(|v| v.to_str().ok()).fold(String::new(), |mut acc, v| {
                if !acc.is_empty() {
                    acc.push_str(", ");
                }
                acc.push_str(v);
                acc
            });
            if existing.is_empty() {
                e.insert(peer.ip_value.clone());
            } else if let Ok(v) = HeaderValue::try_from(format!("{existing}, {}", peer.addr.ip())) {
                e.insert(v);
            }
        }
    }
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    headers.insert(X_FORWARDED_PROTO.clone(), if peer.proto == "https" { HTTPS } else { HTTP });
    // One allocation: the connection's fixed part, then this request's host.
    let mut forwarded = Vec::with_capacity(peer.forwarded_for.len() + host.map_or(0, |h| h.len() + 8));
    forwarded_element(&mut forwarded, peer, host_text);
    match host {
        Some(h) => _ = headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
        None => _ = headers.remove(&X_FORWARDED_HOST),
    }
    // SAFETY: bytes a `HeaderValue` admits (the unchecked constructor's one requirement), as
    // `forwarded_element` writes them.
    headers.append(header::FORWARDED, unsafe { HeaderValue::from_maybe_shared_unchecked(Bytes::from(forwarded)) });
    headers.append(header::VIA, via_value(version));
}

/// What [`add_forwarding`] adds, as `name: value` lines for the own HTTP/1.1 client to send
/// after the request's fields, for a request that has none of these fields of its own
/// (`Scan::forwarding`): X-Forwarded-For/-Proto/-Host, Forwarded, Via. Filling the map
/// with them and encoding it again was 1.7k instructions of a small request.
pub fn forwarding_lines(
    lines: &mut Vec<u8>,
    peer: &Peer,
    host: Option<&HeaderValue>,
    host_text: Option<&str>,
    version: Version,
) {
    // The names as literal text: through `HeaderName::as_str` and a closure per field, these
    // five lines took 700 instructions.
    lines.extend_from_slice(b"x-forwarded-for: ");
    lines.extend_from_slice(peer.ip_value.as_bytes());
    lines.extend_from_slice(b"\r\nx-forwarded-proto: ");
    lines.extend_from_slice(peer.proto.as_bytes());
    if let Some(h) = host {
        lines.extend_from_slice(b"\r\nx-forwarded-host: ");
        lines.extend_from_slice(h.as_bytes());
    }
    lines.extend_from_slice(b"\r\nforwarded: ");
    forwarded_element(lines, peer, host_text);
    lines.extend_from_slice(b"\r\nvia: ");
    lines.extend_from_slice(via_value(version).as_bytes());
    lines.extend_from_slice(b"\r\n");
}

/// This hop's `Forwarded` element (RFC 7239): the connection's fixed part (`for=…;proto=…`),
/// then the request's host, quoted, when it is text (`host`: a value that passed `to_str`)
/// without quotes or backslashes. Visible ASCII only: the fixed part is an IP address, `for=`,
/// `proto=`, quotes and brackets.
fn forwarded_element(out: &mut Vec<u8>, peer: &Peer, host: Option<&str>) {
    let start = out.len();
    out.extend_from_slice(peer.forwarded_for.as_bytes());
    let quotable = |h: &&[u8]| !h.iter().any(|&b| b == b'"' || b == b'\\');
    if let Some(h) = host.map(str::as_bytes).filter(quotable) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
    debug_assert!(out[start..].iter().all(|b| (0x20..0x7f).contains(b)), "{out:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_and_classic_hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-kept"));
        assert!(h.contains_key(header::TRAILER), "Trailer is end to end (RFC 9110 §6.6.2)");
    }

    #[test]
    fn names_listed_across_several_connection_fields_are_all_removed() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.append(header::CONNECTION, HeaderValue::from_static(" , X-B ,"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-c"]);
    }

    #[test]
    fn a_scan_finds_what_lookups_would() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a.example"));
        h.append(header::HOST, HeaderValue::from_static("b.example"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("id-1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let scan = Scan::of(&h);
        assert_eq!(scan.host.as_ref(), h.get(header::HOST), "the first Host");
        assert!(scan.more_hosts);
        assert_eq!(scan.declared, Ok(Some(5)), "the first length");
        assert_eq!(scan.request_id.as_ref(), h.get(&X_REQUEST_ID));
        assert_eq!(scan.traceparent, None);
        assert!(!scan.grpc && !scan.hop_by_hop);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("five"));
        let scan = Scan::of(&h);
        assert!(scan.grpc);
        assert_eq!(scan.declared, Err(ErrorKind::BadRequest));
        let sent: u64 = h.iter().map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64).sum();
        assert_eq!(scan.bytes, sent);
        for name in ["keep-alive", "proxy-connection", "te", "connection", "proxy-authorization"] {
            let mut one = HeaderMap::new();
            one.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            assert!(Scan::of(&one).hop_by_hop, "{name}");
        }
    }

    /// The scan and the list of the proxy's fields agree: a client's copy of any of them but Via
    /// sends the proxy's into the map.
    #[test]
    fn a_scan_notes_each_forwarding_field_but_via() {
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a.example"));
        plain.insert("x-other", HeaderValue::from_static("1"));
        assert!(!Scan::of(&plain).forwarding);
        for name in FORWARDING_FIELDS {
            let mut h = plain.clone();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            assert_eq!(Scan::of(&h).forwarding, *name != "via", "{name}");
        }
    }

    #[test]
    fn connection_cannot_list_host_away() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Host, x-a"));
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["host"]);
    }

    #[test]
    fn te_trailers_holds_when_connection_lists_te() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(strip_hop_by_hop(&mut h));
        assert!(h.is_empty());
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("x"));
        assert!(!strip_hop_by_hop(&mut plain));
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn a_peer_writes_its_address_as_display_does() {
        for (addr, forwarded) in [
            ("192.0.2.7:4000", "for=192.0.2.7;proto=https"),
            ("0.0.0.0:1", "for=0.0.0.0;proto=https"),
            ("255.255.255.255:1", "for=255.255.255.255;proto=https"),
            ("[2001:db8::1]:443", "for=\"[2001:db8::1]\";proto=https"),
            ("[::ffff:192.0.2.7]:443", "for=\"[::ffff:192.0.2.7]\";proto=https"),
        ] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let peer = Peer::new(addr, true);
            assert_eq!(peer.ip_value, addr.ip().to_string().as_str());
            assert_eq!(peer.forwarded_for, forwarded);
            assert_eq!(peer.forwarded_for.capacity(), forwarded.len(), "made at its size");
        }
    }

    #[test]
    fn the_forwarded_host_is_quoted_text_or_left_out() {
        let peer = Peer::new("192.0.2.7:4000".parse().expect("addr"), true);
        let element = |host: Option<&str>| {
            let mut out = Vec::new();
            forwarded_element(&mut out, &peer, host);
            String::from_utf8(out).expect("text")
        };
        assert_eq!(element(Some("api.example.com:8443")), "for=192.0.2.7;proto=https;host=\"api.example.com:8443\"");
        assert_eq!(element(Some("a\"b")), "for=192.0.2.7;proto=https");
        assert_eq!(element(Some("a\\b")), "for=192.0.2.7;proto=https");
        // A host that is not text (obs-text bytes): no `to_str`, so none.
        assert_eq!(element(None), "for=192.0.2.7;proto=https");
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("203.0.113.9"));
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        let peer = Peer::new("[2001:db8::1]:5000".parse().expect("addr"), false);
        let host = HeaderValue::from_static("api.example.com");
        add_forwarding(&mut h, &peer, Some(&host), host.to_str().ok(), Version::HTTP_11);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http;host=\"api.example.com\"");
        assert_eq!(h[header::VIA], "1.1 ferroway");
    }
}
