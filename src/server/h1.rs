//! HTTP/1.1 client connections, served by the gateway's own codec on `httparse`.
//!
//! Written by hand because hyper's HTTP/1 server (which served these connections before, and
//! still serves HTTP/2 and is the upstream client) keeps a read buffer, a write buffer and its
//! dispatcher for as long as a keep-alive connection is open: 21 KiB per idle connection in
//! `bench/`, against 0.6 KiB for NGINX. Here an idle connection holds no buffer: it waits for
//! readability, takes a buffer only while a request is in flight, and frees it once the
//! request is answered and nothing more is buffered. The request path is shorter too: the head
//! is parsed in place, the target and the header values share the read buffer (no copies),
//! and a small response leaves in one write.
//!
//! What it implements of RFC 9112: request heads (absolute-form targets included), bodies
//! framed by `Content-Length` or `chunked` (with trailers), `Expect: 100-continue`, pipelined
//! requests (answered in order), keep-alive by version and `Connection`, responses framed by
//! length, `chunked` (with trailers) or close, and upgrades (`101`, the connection handed to
//! the proxy's tunnel). Anything ambiguous about a request's length is refused with 400 and the
//! connection closed (§6.3: codings other than `chunked`, conflicting lengths; a coding with a length is read by the coding and the
//! connection closed), so no request can be read two ways.

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

use super::{Parking, TlsConn};
use crate::http1::{
    BodyError, CHUNK_END_AND_LAST, ConnectionTokens, Decode, Framing, LAST_CHUNK, Seen, is_framing_field, parsed_value,
    put_field, request_framing,
};
use crate::proxy::body::{ClientBody, ResponseBody, UpstreamBodyError};
use crate::proxy::error::{ErrorKind, json_body};
use crate::proxy::headers::{Peer, X_REQUEST_ID, content_length};
use crate::rewind::Rewind;
use crate::snapshot::Gateway;

/// More header fields than this is a 431, as with hyper before.
const MAX_HEADERS: usize = 100;
/// Fields of a request head parsed without an allocation; more go to the heap.
const INLINE_FIELDS: usize = 24;
/// A new request's buffer; heads are usually well under 1 KiB.
const HEAD_BUFFER: usize = 4096;
/// What a body read asks for at least, so large bodies move in large reads.
const BODY_READ: usize = 16 << 10;
/// After an answer that left the request body unread, at most this much more of it is read
/// and dropped before closing, so the client sees the answer rather than a reset.
const LINGER_BYTES: u64 = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Connection settings, from the config's `limits` as of the connection's accept.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The longest head read before answering 431 (the `max_header_bytes` check itself is the
    /// proxy's, on the parsed fields; this bounds the request line and the buffer).
    pub max_head: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    /// Idle this long, a plain TCP connection is handed back to be parked (`server::park`);
    /// `None` when parking is off or would come no sooner than the keep-alive timeout.
    pub park_after: Option<Duration>,
}

/// The read side of a client connection.
pub enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsConn>),
}

/// The write side of a client connection.
pub enum WriteSide {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<TlsConn>),
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.is_write_vectored(),
            WriteSide::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The read side with what has been read of it and not yet used.
pub struct Reader {
    io: ReadSide,
    buf: BytesMut,
}

impl Reader {
    pub fn new(io: ReadSide, buf: BytesMut) -> Self {
        Reader { io, buf }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, at_least: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(at_least);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self, at_least: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx, at_least)).await
    }

    /// Waits for the next request's first bytes. Over TCP no buffer is held while waiting: a
    /// buffer is taken only once a read will find data. (Over TLS the session keeps buffers
    /// of its own anyway, and the read itself waits.) `Ok(0)` when the client closed. A poll
    /// function rather than an `async fn`: it keeps no state of its own, and an idle
    /// connection's task is mostly its wait for this.
    fn poll_next_request(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match &mut self.io {
            ReadSide::Tcp(r) => poll_read_when_ready(r, &mut self.buf, cx),
            ReadSide::Tls(_) => self.poll_fill(cx, HEAD_BUFFER),
        }
    }
}

/// A TCP stream, or the read half of one.
pub trait TcpRead: AsyncRead + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl TcpRead for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl TcpRead for OwnedReadHalf {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// Reads into `buf` once `stream` is readable, taking a head-sized buffer only then: while it
/// waits, an empty `buf` holds no memory. If the readiness was stale (the read would block),
/// the buffer is given back and the wait goes on. `Ok(0)` when the peer closed.
///
/// The read is tokio's `poll_read`, not `try_read`: a read shorter than the buffer clears the
/// socket's readiness there (edge-triggered epoll: the socket is drained), so the next wait
/// sleeps at once instead of first making a read that finds nothing (`try_read` clears
/// readiness only on `EAGAIN`: 0.77 wasted `recvfrom` per keep-alive request, by `strace -c`).
pub fn poll_read_when_ready(
    stream: &mut impl TcpRead,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    ready!(stream.tcp().poll_read_ready(cx))?;
    buf.reserve(HEAD_BUFFER);
    match tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf) {
        Poll::Pending => {
            // Stale readiness: cleared by the read, and the wait goes on without a buffer.
            *buf = BytesMut::new();
            Poll::Pending
        }
        done => done,
    }
}

/// A connection after `101 Switching Protocols`: both halves as one stream, and first the
/// bytes the client sent after its request (the new protocol's first bytes).
pub type Switched = Rewind<tokio::io::Join<ReadSide, WriteSide>, ()>;

/// The client side of an upgrade this codec serves, in the request's extensions: resolves to
/// the connection once the `101` has been written (see `proxy::upgrade`). Extensions must be
/// `Clone`; the receiver is taken by whoever awaits it first.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Switched>>>>);

impl PendingUpgrade {
    pub async fn switched(self) -> Result<Switched, &'static str> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => rx.await.map_err(|_| "the client connection closed before switching protocols"),
            None => Err("the upgrade was already taken"),
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes, the client is idle for
/// `keepalive_timeout`, or the gateway drains. `reader` may already hold the first bytes.
/// With `parking`, a plain TCP connection idle for `settings.park_after` is parked instead
/// (`server::park`): this task ends, and the connection gets a new one when the client sends.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` keeps
/// its arguments twice in its state (as arguments and as locals), and this state is what an
/// idle connection costs.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
pub fn serve(
    mut reader: Reader,
    mut writer: WriteSide,
    peer: Arc<Peer>,
    gw: Arc<Gateway>,
    drain: watch::Receiver<bool>,
    settings: Settings,
    parking: Option<Parking>,
) -> impl Future<Output = ()> {
    async move {
        // Only plain TCP connections come with `parking` (over TLS the session's own buffers
        // and state stay with the connection anyway).
        let parks = parking.is_some() && settings.park_after.is_some();
        // One idle timer for the connection (the keep-alive timeout, or the wait before
        // parking), aimed at each idle wait's end (`crate::deadline`), where a new timer per
        // request was registered and removed again each time (callgrind: 0.5k instructions of a
        // small request).
        let wait = settings.park_after.filter(|_| parks).unwrap_or(settings.keepalive_timeout);
        let mut idle = std::pin::pin!(tokio::time::sleep(settings.keepalive_timeout));
        // The drain's wake-up, registered once for the connection: made anew each time the
        // connection went idle, it took a lock on the (process-wide) watch's waiter list to
        // register and again to leave, every request (callgrind: ~0.7k instructions of a
        // small request). Polled only while idle; once it is ready the connection ends. Once
        // registered it stays so (the task and its waker do not change), and is polled again
        // only when the drain's value changed: each poll of a registered waiter locks the
        // waiter list to compare wakers (callgrind: ~0.2k instructions of a small request).
        let mut drain_wait = drain.clone();
        let mut drained = std::pin::pin!(drain_wait.wait_for(|d| *d));
        let mut drain_registered = false;
        // Whether a request was answered: its response's end read the clock (`proxy::handle`
        // measures every response to its end), so the idle wait starts from that reading.
        let mut answered = false;
        loop {
            if reader.buf.is_empty() {
                // Idle: no buffer while waiting (a pipelined request keeps its bytes).
                reader.buf = BytesMut::new();
                let now = if answered { crate::worker::recent() } else { crate::worker::now() };
                let due = tokio::time::Instant::from_std(now) + wait;
                crate::deadline::aim(idle.as_mut(), due);
                let woke = poll_fn(|cx| {
                    if !drain_registered || !matches!(drain.has_changed(), Ok(false)) {
                        if drained.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::Close);
                        }
                        drain_registered = true;
                    }
                    if let Poll::Ready(read) = reader.poll_next_request(cx) {
                        return Poll::Ready(if matches!(read, Ok(n) if n > 0) { Woke::Request } else { Woke::Close });
                    }
                    crate::deadline::poll(idle.as_mut(), due, cx).map(|()| if parks { Woke::Park } else { Woke::Close })
                })
                .await;
                match woke {
                    Woke::Request => {}
                    Woke::Close => return,
                    Woke::Park => {
                        let (Some(parking), ReadSide::Tcp(r), WriteSide::Tcp(w)) = (parking, reader.io, writer) else {
                            return;
                        };
                        let waited = settings.park_after.unwrap_or_default();
                        let until = due + settings.keepalive_timeout.saturating_sub(waited);
                        if let Ok(stream) = r.reunite(w) {
                            parking.park(stream, until, &peer);
                        }
                        return;
                    }
                }
            }
            // Boxed so that an idle connection's task stays small: the request's state (about
            // 8.5 KiB) exists only while it is in flight.
            match boxed_in_place(|| one_request(reader, writer, &peer, &gw, &drain, settings)).await {
                Some((r, w)) => (reader, writer, answered) = (r, w, true),
                None => return,
            }
        }
    }
}

/// What ended an idle connection's wait.
enum Woke {
    Request,
    Close,
    Park,
}

/// `Box::pin(make())`, with the future built in its allocation. `Box::pin(f())` builds the
/// future on the stack and then copies all of it into the box, the unused part of its state
/// too: 8.5 KiB per request, a fifth of a small request's instructions under callgrind
/// (49.3k → 40.5k per request with this). Allocated first, the box is where `make` writes.
/// That is the optimiser's doing, not a guarantee (measured in this out-of-line form; if a
/// compiler stops doing it, the memcpy column of `bench/callgrind.sh` shows it).
#[inline(never)]
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Reads one request's head and answers it (or refuses it); the connection back when it is
/// kept alive. Closing, it lingers first, so that the client sees the answer. One `async fn`
/// from the head to the response: the head handed to another (`exchange`, before) was copied
/// with its arguments into that one's future and again into this one's (224 to 384 bytes,
/// four times a request, `bench/memcpy_sites.c`).
async fn one_request(
    mut reader: Reader,
    mut writer: WriteSide,
    peer: &Peer,
    gw: &Gateway,
    drain: &watch::Receiver<bool>,
    settings: Settings,
) -> Option<(Reader, WriteSide)> {
    let read = {
        let mut read = std::pin::pin!(read_head(&mut reader, settings.max_head));
        // The head is nearly always whole already (its first bytes ended the idle wait), so
        // the timeout is armed only when it is not: armed at once, it cost every request a
        // clock reading and a timer made and dropped.
        match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
            Poll::Ready(read) => Ok(read),
            Poll::Pending => tokio::time::timeout(settings.header_timeout, read).await,
        }
    };
    let head = match read {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Closed)) | Err(_) => return None,
        Ok(Err(HeadError::Io(e))) => {
            tracing::debug!(client = %peer.addr, error = %e, "reading a request head failed");
            return None;
        }
        Ok(Err(HeadError::Refused(kind))) => {
            if refuse(&mut writer, kind, gw).await.is_ok() {
                linger(reader).await;
            }
            return None;
        }
    };
    let Head { mut request, framing, mut keep_alive, client_closes, expect_continue, wants_upgrade } = head;
    // Whether the client's body was read to its end.
    let mut complete = true;
    keep_alive &= !*drain.borrow();
    let is_head = request.method == Method::HEAD;
    let version = request.version;
    let upgrade = wants_upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        request.extensions.insert(PendingUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))));
        tx
    });
    let (continue_tx, continue_rx) = if expect_continue {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (mut reader, mut returned, body) = if framing == Framing::Length(0) {
        (Some(reader), None, ClientBody::Empty)
    } else {
        let (tx, rx) = oneshot::channel();
        let body = Body { reader: Some(reader), decode: Decode::new(framing), back: Some(tx), continue_tx };
        (None, Some(rx), ClientBody::H1(Box::new(body)))
    };

    let request = Request::from_parts(request, body);
    let resp = match continue_rx {
        None => crate::proxy::handle(request, peer, gw).await,
        // Boxed: the rare case should not add the request path's size to every exchange.
        Some(asked) => match with_continue(Box::pin(crate::proxy::handle(request, peer, gw)), asked, &mut writer).await
        {
            Some(resp) => resp,
            None => return None,
        },
    };

    // A body handed back before the response is written decides keep-alive in its head.
    if let Some(rx) = returned.as_mut()
        && let Ok(r) = rx.try_recv()
    {
        keep_alive &= r.complete;
        complete &= r.complete;
        reader = Some(r.reader);
        returned = None;
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !switching {
        return None;
    }
    if write_response(&mut writer, resp, is_head, version, &mut keep_alive).await.is_err() {
        return None;
    }
    if let Some(rx) = returned {
        // The response went out before the body was read to its end (an upload the upstream
        // answered early): wait for the rest, as long as the client keeps sending it.
        match tokio::time::timeout(settings.body_timeout, rx).await {
            Ok(Ok(r)) => {
                keep_alive &= r.complete;
                complete &= r.complete;
                reader = Some(r.reader);
            }
            _ => return None,
        }
    }
    let reader = reader?;
    if let Some(tx) = upgrade.filter(|_| switching) {
        // The connection now belongs to the tunnel, with whatever the client sent after the
        // request (the first bytes of the new protocol).
        let Reader { io, buf } = reader;
        let _ = tx.send(Switched::new(buf.freeze(), tokio::io::join(io, writer), ()));
        return None;
    }
    if keep_alive {
        return Some((reader, writer));
    }
    // Lingering (reading until the client closes) is for a client that may still be sending:
    // the rest of a body, or requests after this one. A client that said this was its last
    // request, and whose request was read to its end, has nothing more to send.
    let linger = !(client_closes && complete && reader.buf.is_empty());
    close(reader, writer, linger).await;
    None
}

/// Closes the connection after an answer; with `linger_first`, after reading and dropping
/// what the client may still send.
async fn close(reader: Reader, writer: WriteSide, linger_first: bool) {
    match (writer, linger_first) {
        (mut w, true) => {
            let _ = w.shutdown().await;
            linger(reader).await;
        }
        // Over TCP, closing the socket sends the FIN (`forget`: no separate `shutdown` call on
        // drop); TLS first sends its close_notify, which tells a body ended by the close from a
        // cut one.
        (WriteSide::Tcp(w), false) => w.forget(),
        (mut w @ WriteSide::Tls(_), false) => {
            let _ = w.shutdown().await;
        }
    }
}

enum HeadError {
    /// Closed (or reset) before a request began: an ordinary end of a keep-alive connection.
    Closed,
    Io(io::Error),
    Refused(ErrorKind),
}

/// A parsed request head and how its body is framed.
struct Head {
    request: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    /// The client said this is its last request (`Connection: close`, or HTTP/1.0 without
    /// `keep-alive`), so it sends nothing after it.
    client_closes: bool,
    expect_continue: bool,
    wants_upgrade: bool,
}

async fn read_head(reader: &mut Reader, max_head: usize) -> Result<Head, HeadError> {
    loop {
        if !reader.buf.is_empty() {
            if let Some(head) = parse_head(&mut reader.buf, max_head)? {
                return Ok(head);
            }
            if reader.buf.len() >= max_head {
                return Err(HeadError::Refused(ErrorKind::HeadersTooLarge));
            }
        }
        match reader.fill(HEAD_BUFFER).await {
            Ok(0) if reader.buf.is_empty() => return Err(HeadError::Closed),
            // Half a head and then the end: nothing to answer.
            Ok(0) => return Err(HeadError::Closed),
            Ok(_) => {}
            Err(e)
                if reader.buf.is_empty()
                    && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Parses a complete head off the front of `buf`; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, HeadError> {
    let bad = || HeadError::Refused(ErrorKind::BadRequest);
    // Left uninitialised: filling 100 empty slots (3.2 KiB) cost every request more than
    // parsing its few fields.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > max_head => {
            return Err(HeadError::Refused(ErrorKind::HeadersTooLarge));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Refused(ErrorKind::HeadersTooLarge)),
        Err(_) => return Err(bad()),
    };
    // Where each piece sits in the buffer, so the frozen head can be sliced without copies.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|_| bad())?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let target = at(parsed.path.unwrap_or_default().as_bytes());
    // On the stack for the usual few fields (a `Vec` was an allocation per request).
    let mut fields: SmallVec<[(HeaderName, std::ops::Range<usize>); INLINE_FIELDS]> = SmallVec::new();
    let mut connection = ConnectionTokens::default();
    let mut seen = Seen::default();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        if name == header::CONNECTION {
            connection.read(h.value);
        } else {
            seen.note(&name);
        }
        fields.push((name, at(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad())?;
    // Room for the fields the proxy adds (forwarding, via, request id, traceparent: 7) and a
    // few the route's middleware add (claims, header rules): growing a map mid-request cost
    // more than parsing the head (a JWT route with four fields from the client grew it at +8).
    let mut headers = HeaderMap::with_capacity(fields.len() + 12);
    for (name, value) in fields.drain(..) {
        headers.append(name, parsed_value(head.slice(value)).ok_or_else(bad)?);
    }

    // RFC 9112 §6.1: a request with both a transfer coding and a length is read by its
    // coding, the length goes, and the connection closes after the answer (a peer that framed
    // it the other way must not get a second request out of it).
    let both = seen.transfer_encoding && seen.content_length;
    if both && version == Version::HTTP_11 {
        headers.remove(header::CONTENT_LENGTH);
    }
    let framing = request_framing(version, &headers, seen).ok_or_else(bad)?;
    let client_closes = match version {
        Version::HTTP_10 => !connection.keep_alive,
        _ => connection.close,
    };
    let keep_alive = !both && !client_closes;
    let has_body = framing != Framing::Length(0);
    let expect_continue = version == Version::HTTP_11
        && has_body
        && seen.expect
        && headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let wants_upgrade = version == Version::HTTP_11 && connection.upgrade && seen.upgrade;

    let mut request = Request::new(()).into_parts().0;
    request.method = method;
    request.uri = uri;
    request.version = version;
    request.headers = headers;
    Ok(Some(Head { request, framing, keep_alive, client_closes, expect_continue, wants_upgrade }))
}

/// Answers a request that could not be read, and the connection closes. The answer is the
/// proxy's JSON error (there is no request to log or route), written like any response.
async fn refuse(writer: &mut WriteSide, kind: ErrorKind, gw: &Gateway) -> io::Result<()> {
    let id = gw.ids.fresh();
    let body = json_body(kind, id.to_str().unwrap_or("-"));
    let mut resp = Response::new(ResponseBody::bytes(body));
    *resp.status_mut() = kind.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID.clone(), id);
    write_response(writer, resp, false, Version::HTTP_11, &mut false).await?;
    writer.shutdown().await
}

/// Awaits the response, writing `100 Continue` when the body is first wanted; `None` if that
/// write failed. Its own function so that the common case keeps no `select!` state.
async fn with_continue(
    mut service: Pin<Box<impl Future<Output = Response<ResponseBody>>>>,
    mut asked: oneshot::Receiver<()>,
    writer: &mut WriteSide,
) -> Option<Response<ResponseBody>> {
    tokio::select! {
        resp = &mut service => return Some(resp),
        wanted = &mut asked => {
            if wanted.is_ok() && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return None;
            }
        }
    }
    Some(service.await)
}

/// Reads and drops what the client still sends after the gateway has answered and shut its
/// side, bounded in bytes and time, so that closing does not reset the connection under the
/// answer before the client has read it (RFC 9112 §9.6).
async fn linger(mut reader: Reader) {
    let drop_rest = async {
        let mut dropped = 0u64;
        while dropped < LINGER_BYTES {
            reader.buf.clear();
            match reader.fill(BODY_READ).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n as u64,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drop_rest).await;
}

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the end of the connection ends the body.
    Close,
}

/// Writes the response, head and body; an error means the connection cannot continue.
async fn write_response(
    writer: &mut WriteSide,
    resp: Response<ResponseBody>,
    is_head: bool,
    version: Version,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let mut headers = parts.headers;
    let bodiless_status = status.is_informational() || status == StatusCode::NO_CONTENT;
    // A plain upstream response's fields, kept as the lines to write (whether they hold a Date
    // noted with them, their length the body's exact size); the map then holds only what the
    // proxy added.
    let raw = body.take_raw_fields();
    // The first Content-Length, and whether there is a Date, in one walk over the fields
    // rather than two hashed lookups.
    let mut length = raw.as_ref().and_then(|_| body.size_hint().exact()).map(Ok);
    let mut has_date = raw.as_ref().is_some_and(|r| r.has_date);
    for (name, value) in &headers {
        if *name == header::CONTENT_LENGTH {
            length.get_or_insert_with(|| content_length(value));
        } else if *name == header::DATE {
            has_date = true;
        }
    }
    let declared = length.transpose().unwrap_or_else(|_| {
        // Not a number: the codec frames the body instead.
        headers.remove(header::CONTENT_LENGTH);
        None
    });
    if bodiless_status {
        headers.remove(header::CONTENT_LENGTH);
    }
    let out = if bodiless_status || status == StatusCode::NOT_MODIFIED || is_head {
        if is_head
            && declared.is_none()
            && let Some(n) = body.size_hint().exact()
            && n > 0
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Out::None
    } else if let Some(n) = declared {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Out::Chunked
    } else {
        *keep_alive = false;
        Out::Close
    };

    let mut buf = Vec::with_capacity(512);
    status_line(&mut buf, status);
    if let Some(r) = &raw {
        buf.extend_from_slice(&r.lines);
    }
    for (name, value) in &headers {
        // Framing is the lines' own when there are lines.
        if (name != header::CONNECTION || status == StatusCode::SWITCHING_PROTOCOLS)
            && !(raw.is_some() && name == header::CONTENT_LENGTH)
        {
            put_field(&mut buf, name, value);
        }
    }
    if !has_date {
        date_field(&mut buf);
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !*keep_alive {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    buf.extend_from_slice(b"\r\n");

    if out == Out::None {
        writer.write_all(&buf).await?;
        writer.flush().await?;
        // The body is not sent, but it still runs to its end if it is already there, so the
        // access log and the metrics see a complete response.
        if body.is_end_stream() || status == StatusCode::SWITCHING_PROTOCOLS {
            let _ = frame_now(&mut body).await;
        }
        return Ok(());
    }

    // A long body nothing needs to read moves upstream socket to client socket (splice).
    #[cfg(target_os = "linux")]
    if let Out::Length(n) = out
        && n >= crate::splice::MIN_BODY
        && matches!(writer, WriteSide::Tcp(_))
        && body.can_splice(n)
    {
        let buffered = body.take_buffered();
        write_parts(writer, buf, &buffered, b"").await?;
        if let WriteSide::Tcp(w) = &*writer {
            body.splice_into(w.as_ref()).await?;
        }
        return Ok(());
    }

    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    let mut pending_head = Some(buf);
    // A frame polled early, to see whether the chunk before it was the last.
    let mut next = None;
    loop {
        if next.is_none() && (left == 0 || body.is_end_stream()) {
            break;
        }
        // The head waits for the first piece of the body only if it is already there, so a
        // small response leaves in one write and a slow one still gets its head at once.
        let frame = if let Some(frame) = next.take() {
            frame
        } else if let Some(head) = pending_head.take() {
            match frame_now(&mut body).await {
                Poll::Ready(frame) => {
                    pending_head = Some(head);
                    frame
                }
                Poll::Pending => {
                    writer.write_all(&head).await?;
                    writer.flush().await?;
                    http_body_util::BodyExt::frame(&mut body).await
                }
            }
        } else {
            http_body_util::BodyExt::frame(&mut body).await
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // The client must see the body as cut short: no last chunk, no more bytes.
                if let Some(head) = pending_head.take() {
                    writer.write_all(&head).await?;
                }
                writer.flush().await?;
                return Err(io::Error::other(e));
            }
        };
        let mut prefix = pending_head.take().unwrap_or_default();
        match frame.into_data() {
            Ok(mut data) => {
                if data.is_empty() {
                    if !prefix.is_empty() {
                        writer.write_all(&prefix).await?;
                    }
                    continue;
                }
                if (data.len() as u64) > left {
                    // More than the length the head announced: what fits goes, then the
                    // connection closes, so the client cannot take the rest for a response.
                    data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    *keep_alive = false;
                }
                if out == Out::Chunked {
                    // Into the prefix itself: no allocation per chunk.
                    let _ = write!(prefix, "{:x}\r\n", data.len());
                    // When the body's end is already there (a relayed chunked body's last chunk
                    // comes with its data, an encoder's last output with its end), the last
                    // chunk goes in the same write: one system call, one wake-up of the client.
                    let after = if body.is_end_stream() { Poll::Ready(None) } else { frame_now(&mut body).await };
                    if let Poll::Ready(None) = after {
                        write_parts(writer, prefix, &data, CHUNK_END_AND_LAST).await?;
                        writer.flush().await?;
                        return Ok(());
                    }
                    write_parts(writer, prefix, &data, b"\r\n").await?;
                    if let Poll::Ready(frame) = after {
                        next = Some(frame);
                    }
                } else {
                    left -= data.len() as u64;
                    write_parts(writer, prefix, &data, b"").await?;
                }
            }
            Err(frame) => {
                if let (Out::Chunked, Ok(trailers)) = (out, frame.into_trailers()) {
                    prefix.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        if !is_framing_field(name) {
                            put_field(&mut prefix, name, value);
                        }
                    }
                    prefix.extend_from_slice(b"\r\n");
                    writer.write_all(&prefix).await?;
                    writer.flush().await?;
                    return Ok(());
                } else if !prefix.is_empty() {
                    writer.write_all(&prefix).await?;
                }
                break;
            }
        }
        writer.flush().await?;
    }
    let mut tail = pending_head.unwrap_or_default();
    match out {
        Out::Chunked => tail.extend_from_slice(LAST_CHUNK),
        Out::Length(_) if left > 0 => {
            // Shorter than announced: the client can only tell from the connection closing.
            if !tail.is_empty() {
                writer.write_all(&tail).await?;
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "response body shorter than its length"));
        }
        _ => {}
    }
    if !tail.is_empty() {
        writer.write_all(&tail).await?;
    }
    writer.flush().await?;
    // Run the body to its end (it has no more data), so logs and metrics see it complete.
    if !body.is_end_stream() {
        let _ = frame_now(&mut body).await;
    }
    Ok(())
}

/// The body's next frame if it is already there, without waiting for it (the task is woken
/// when it comes).
async fn frame_now(body: &mut ResponseBody) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
}

/// Writes `prefix`, `data`, `suffix` in as few and as cheap system calls as it takes: a small
/// `data` is copied behind the prefix and all of it goes in one `send` (`crate::send`).
async fn write_parts(writer: &mut WriteSide, mut prefix: Vec<u8>, data: &[u8], suffix: &[u8]) -> io::Result<()> {
    if crate::send::coalesce(&mut prefix, data, suffix) {
        return writer.write_all(&prefix).await;
    }
    crate::send::write_all(writer, &mut prefix.chain(data).chain(suffix)).await
}

fn status_line(buf: &mut Vec<u8>, status: StatusCode) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// `date: …\r\n`, formatted once a second per thread.
fn date_field(buf: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        buf.extend_from_slice(b"date: ");
        buf.extend_from_slice(d.1.as_bytes());
        buf.extend_from_slice(b"\r\n");
    });
}

/// A request body read straight off the client connection. It owns the connection's read
/// side while it is read, and hands it back when it ends (or is dropped, unfinished).
pub struct Body {
    reader: Option<Reader>,
    decode: Decode,
    back: Option<oneshot::Sender<Returned>>,
    /// Asks the connection to send `100 Continue` the first time the body is wanted.
    continue_tx: Option<oneshot::Sender<()>>,
}

struct Returned {
    reader: Reader,
    /// The body was read to its end (and the next request can be read after it).
    complete: bool,
}

impl Body {
    fn give_back(&mut self, complete: bool) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned { reader, complete });
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(tx) = this.continue_tx.take() {
            let _ = tx.send(());
        }
        loop {
            let Some(reader) = this.reader.as_mut() else { return Poll::Ready(None) };
            let mut buf = std::mem::take(&mut reader.buf);
            let decoded = this.decode.next(&mut buf);
            if let Some(reader) = this.reader.as_mut() {
                reader.buf = buf;
            }
            match decoded {
                Err(e) => {
                    this.give_back(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(frame)) => {
                    if matches!(this.decode, Decode::Done) {
                        this.give_back(true);
                    }
                    return Poll::Ready(frame.map(Ok));
                }
                Ok(None) => {}
            }
            let Some(reader) = this.reader.as_mut() else { return Poll::Ready(None) };
            match ready!(reader.poll_fill(cx, BODY_READ)) {
                Ok(0) => {
                    this.give_back(false);
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.give_back(false);
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.decode.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let complete = matches!(self.decode, Decode::Done);
        self.give_back(complete);
    }
}
