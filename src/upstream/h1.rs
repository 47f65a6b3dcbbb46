//! The HTTP/1.1 client of plain-TCP upstreams, on the same framing code as the client-facing
//! codec (`crate::http1`), with a connection pool of its own.
//!
//! Written by hand because hyper-util's pooled client keeps ~30 KiB per idle connection (a
//! dispatch task, its channel, read and write buffers) and hashes its pool key on every checkout
//! and return. Here an idle connection is its socket and nothing else (no task, no buffer),
//! kept in its target's own list, and checked for a close by the peer from the reactor's
//! readiness without a system call. A connection carries one exchange at a time (no
//! pipelining) and goes back to the pool only when both the request and the response ended
//! cleanly and both sides keep it alive.

use std::future::poll_fn;
use std::io::{self, Cursor, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::buf::Chain;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use super::Target;
use super::balance::TargetState;
use super::client::{HostField, OutHead};
use crate::http1::{BodyError, ConnectionTokens, Decode, Framing, Seen, parsed_value, put_field};
use crate::proxy::body::{RequestBody, RequestBodyError};
use crate::proxy::error::ErrorKind;
use crate::proxy::headers::{is_hop_by_hop, list_items};
use crate::send;

/// A response head longer than this is a bad response (hyper's client allowed more, but no
/// sane upstream sends 64 KiB of header fields).
const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 100;
/// A response head's first read; heads are usually well under 1 KiB.
const HEAD_BUFFER: usize = 4096;
/// Body reads start at this size and double while reads fill them, so a large body moves in
/// few system calls and a small one takes no large buffer.
const MIN_READ: usize = 16 << 10;
const MAX_READ: usize = 256 << 10;

/// The idle connections of one target, most recently used last (taken first, so a quiet
/// period lets the surplus reach the idle timeout). Part of the target's state
/// (`TargetState`), where only its pointer sits among the fields every request reads.
pub struct IdleConns {
    /// One list per worker (`crate::worker`): a connection's socket is registered with the
    /// reactor of the worker that opened it, so only that worker's requests take it (another
    /// worker's task would be woken from this worker's thread). Each lock is held only to
    /// push or pop (never across an await or a system call), and only by its own worker's
    /// requests to this one target, so it is never contended; the sweep takes each in turn.
    lists: Box<[List]>,
}

/// One worker's idle connections to a target, on a cache line of its own (workers' lists
/// side by side would share one, which every request of each worker would pull over).
#[repr(align(64))]
struct List {
    conns: Mutex<Vec<Conn>>,
    /// `max_idle_per_target` shared among the workers (rounded up), so the target sees about
    /// as many idle connections as configured, however many workers.
    max: usize,
}

impl IdleConns {
    pub fn new(max: u32) -> Self {
        let workers = crate::worker::count();
        let max = usize::try_from(max).unwrap_or(usize::MAX).div_ceil(workers);
        let lists = (0..workers).map(|_| List { conns: Mutex::new(Vec::new()), max }).collect();
        IdleConns { lists }
    }

    /// Starts loading the calling worker's list (`Upstream::load_ahead`).
    pub fn load_ahead(&self) {
        super::prefetch(self.list());
    }

    /// The calling worker's list.
    fn list(&self) -> &List {
        let i = crate::worker::index().min(self.lists.len() - 1);
        &self.lists[i]
    }

    /// The most recently used idle connection that is still open and idle for less than
    /// `timeout`. Its age is told by the worker's last clock reading: every caller of `send`
    /// reads `worker::now()` as it sends (the proxy for the upstream's timing, a health probe
    /// for its deadline).
    fn take(&self, timeout: Duration) -> Option<Conn> {
        let now = crate::worker::recent();
        let list = self.list();
        loop {
            let conn = lock(&list.conns).pop()?;
            if conn.usable(timeout, now) {
                return Some(conn);
            }
            // Dropped (closed) here, outside the lock.
        }
    }

    /// `since`: when it went idle, or a little before (which at worst makes it look older).
    fn put(&self, mut conn: Conn, since: Instant) {
        conn.since = since;
        let list = self.list();
        let mut conns = lock(&list.conns);
        if conns.len() < list.max {
            conns.push(conn);
        }
        // Else dropped after the guard: more idle connections than `max_idle_per_target`.
    }

    /// Closes connections idle past `timeout`, and those the peer closed.
    fn sweep(&self, timeout: Duration) {
        for list in &self.lists {
            let now = Instant::now();
            let stale: Vec<Conn> = lock(&list.conns).extract_if(.., |c| !c.usable(timeout, now)).collect();
            drop(stale);
        }
    }
}

fn lock(list: &Mutex<Vec<Conn>>) -> std::sync::MutexGuard<'_, Vec<Conn>> {
    // Poisoning would only mean a panic between a push and a pop: the list is still valid.
    list.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements its target's open-connection count when the connection is dropped.
pub struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection between exchanges.
struct Conn {
    io: TcpStream,
    since: Instant,
    _open: Open,
}

impl Conn {
    /// Not idle past `timeout`, and neither closed nor written to by the peer since its last
    /// exchange. The reactor's readiness tells without a system call: a connection that is not
    /// readable has seen no FIN; a readable one is read once to find out.
    fn usable(&self, timeout: Duration, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) >= timeout {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Bytes between exchanges are a protocol error too: either way, not reused.
            Poll::Ready(Ok(())) => {
                matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// The client of one upstream: connects with the upstream's connect timeout, keeps idle
/// connections in each target's [`IdleConns`], and sweeps them in one task per upstream.
pub struct Client {
    connect_timeout: Duration,
    idle_timeout: Duration,
    pools: Arc<[Weak<TargetState>]>,
    sweeping: AtomicBool,
}

impl Client {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, pools: &[Arc<TargetState>]) -> Self {
        let pools = pools.iter().map(Arc::downgrade).collect();
        Client { connect_timeout, idle_timeout, pools, sweeping: AtomicBool::new(false) }
    }

    /// Sends `req` to `target` over an idle pooled connection or a new one, and reads the
    /// response head. A pooled connection that turns out closed before any byte of the response
    /// (the upstream closed it as the request left: the keep-alive race) is given up and the
    /// request sent once more on a new connection, when its method is idempotent and its body
    /// can be sent again.
    ///
    /// With a `raw` policy, a plain response keeps its fields as lines (see [`RawFields`]),
    /// which the caller takes from the body and writes out itself.
    pub async fn send(
        &self,
        target: &Target,
        req: &OutHead<'_>,
        body: RequestBody,
        raw: Option<&FieldPolicy>,
        lines: &[u8],
        deadline: tokio::time::Instant,
    ) -> Result<Response<Box<Body>>, ErrorKind> {
        let head_request = *req.method == Method::HEAD;
        let (mut head, framing) = encode_head(req, lines, &body, target);
        let mut again = if super::retry::is_idempotent(req.method) { body.replay() } else { None };
        let mut body = Some(body);
        // The response-header deadline, on a timer the worker lends (`crate::deadline`): made
        // and registered anew per request it cost ~0.4k instructions (callgrind), kept by each
        // connection it was cold whenever the targets were many.
        let mut timer = crate::deadline::Lent::new(deadline);
        loop {
            let (conn, reused) = match target.state.idle.take(self.idle_timeout) {
                Some(conn) => (conn, true),
                // Boxed: connecting (name lookup, timer) is the rare path; its state should not
                // be carried by every request that finds a pooled connection.
                None => match Box::pin(tokio::time::timeout_at(deadline, self.connect(target))).await {
                    Ok(conn) => (conn?, false),
                    Err(_elapsed) => return Err(ErrorKind::UpstreamResponseTimeout),
                },
            };
            let b = match body.take() {
                Some(b) => b,
                None => {
                    // The second try: the same head again (encoded anew: the first try's is
                    // spent, and keeping a copy would cost every request an allocation).
                    let Some(b) = again.take() else { return Err(ErrorKind::UpstreamReset) };
                    head = encode_head(req, lines, &b, target).0;
                    b
                }
            };
            let mut ex = Exchange::new(conn, std::mem::take(&mut head), b, framing);
            let polled = poll_fn(|cx| match ex.poll_head(cx, head_request, raw) {
                Poll::Pending => timer.poll(cx).map(|()| Err(ErrorKind::UpstreamResponseTimeout)),
                done => done,
            })
            .await;
            match polled {
                Ok(resp) => return Ok(ex.into_response(resp, target)),
                Err(ErrorKind::UpstreamReset) if reused && !ex.received && again.is_some() => {
                    tracing::debug!(target = %target.address, "pooled connection closed by the upstream; sending on a new one");
                }
                Err(kind) => return Err(kind),
            }
        }
    }

    async fn connect(&self, target: &Target) -> Result<Conn, ErrorKind> {
        let io = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*target.address)).await {
            Err(_elapsed) => return Err(ErrorKind::UpstreamConnectTimeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(ErrorKind::UpstreamConnectTimeout),
            Ok(Err(e)) => {
                tracing::debug!(target = %target.address, error = %e, "upstream connect failed");
                return Err(ErrorKind::UpstreamConnectRefused);
            }
            Ok(Ok(io)) => io,
        };
        // Heads and small bodies leave in one write each; Nagle would hold the next one back.
        let _ = io.set_nodelay(true);
        target.state.open.fetch_add(1, Ordering::Relaxed);
        self.start_sweeper();
        let now = Instant::now();
        Ok(Conn { io, since: now, _open: Open(target.state.open.clone()) })
    }

    /// One task per upstream closes idle connections past the idle timeout or closed by their
    /// peer (so they do not sit in CLOSE_WAIT); it ends once the upstream is gone.
    fn start_sweeper(&self) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pools = self.pools.clone();
        let timeout = self.idle_timeout;
        let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let mut live = false;
                for target in pools.iter().filter_map(Weak::upgrade) {
                    live = true;
                    target.idle.sweep(timeout);
                }
                if !live {
                    return;
                }
            }
        });
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy)]
enum Sending {
    Length(u64),
    Chunked,
}

/// The request head, and how its body is sent: the request line, the map's fields, then
/// `lines` (fields the caller wrote as lines already), then the framing. RFC 9112 §6: the
/// framing is the gateway's own (from the body's known length, else chunked); the client's
/// framing fields were for its hop.
fn encode_head(req: &OutHead<'_>, lines: &[u8], body: &RequestBody, target: &Target) -> (Vec<u8>, Sending) {
    // `as_str` is "/" for an empty path.
    let target_form = req.path_and_query.as_str();
    let fields: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut buf = Vec::with_capacity(64 + target_form.len() + fields + lines.len());
    buf.extend_from_slice(req.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target_form.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    // RFC 9112 §3.2: every HTTP/1.1 request has a Host: the fields' own, or else the target's.
    let host_from_fields = req.host == HostField::Fields && req.headers.contains_key(header::HOST);
    if !host_from_fields {
        put_field(&mut buf, &header::HOST, &target.host_value);
    }
    let mut had_length = false;
    for (name, value) in req.headers.iter() {
        if name == header::CONTENT_LENGTH {
            had_length = true;
        } else if name != header::TRANSFER_ENCODING && (host_from_fields || name != header::HOST) {
            put_field(&mut buf, name, value);
        }
    }
    buf.extend_from_slice(lines);
    let sending = match body.size_hint().exact() {
        Some(n) => {
            let usual = matches!(*req.method, Method::POST | Method::PUT | Method::PATCH);
            if n > 0 || had_length || usual {
                let _ = write!(buf, "content-length: {n}\r\n");
            }
            Sending::Length(n)
        }
        None => {
            buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Sending::Chunked
        }
    };
    buf.extend_from_slice(b"\r\n");
    (buf, sending)
}

/// A piece of the request on its way out: a prefix (the head, a chunk-size line), data, and a
/// suffix (a chunk's CRLF), written in one system call where the socket takes it whole.
type Piece = Chain<Chain<Cursor<Vec<u8>>, Bytes>, &'static [u8]>;

/// A small `data` is copied behind the prefix, so that the piece is one `send` (`crate::send`).
fn piece(mut prefix: Vec<u8>, data: Bytes, suffix: &'static [u8]) -> Piece {
    if send::coalesce(&mut prefix, &data, suffix) {
        return Cursor::new(prefix).chain(Bytes::new()).chain(&b""[..]);
    }
    Cursor::new(prefix).chain(data).chain(suffix)
}

/// Why the request could not be sent whole.
enum SendFailed {
    /// The client's body failed (too large, cut, too slow): the gateway answers for it.
    Body(RequestBodyError),
    /// The upstream stopped reading (it may still have answered).
    Io,
}

/// Where sending the request is.
enum Send {
    /// A request without a body (most of them): its head, as far as it is still to go.
    Head(Cursor<Vec<u8>>),
    /// Boxed: a streamed body's state is a few hundred bytes that bodiless requests need not
    /// carry.
    Writing(Box<Writing>),
    Done,
    /// Sending stopped short: the connection is not reused.
    Broken,
}

struct Writing {
    /// The head, until it goes out with (or ahead of) the body's first piece.
    head: Option<Vec<u8>>,
    pending: Option<Piece>,
    body: RequestBody,
    framing: Sending,
    /// Body bytes still owed under a length; more is refused, fewer is a cut request.
    left: u64,
    finished: bool,
}

/// One request and response on one connection.
struct Exchange {
    conn: Conn,
    buf: BytesMut,
    send: Send,
    /// Some of the response arrived (so the request reached the upstream).
    received: bool,
}

/// A parsed response head, and how its body is framed.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
    /// The end-to-end fields as lines, when they were kept as such (`parts` then holds none).
    raw: Option<RawFields>,
}

/// A response's end-to-end fields as HTTP/1.1 lines (`name: value` CRLF each, names in lower
/// case), ready to be written to an HTTP/1.1 client as they are.
///
/// A response no part of the gateway reads the fields of (no middleware with a response hook,
/// no cache, an HTTP/1.1 client) goes out with the fields its upstream sent; building a
/// `HeaderMap` of them (a hashed insert and a name lookup each) and writing them out of it
/// again was a tenth of the instructions of a small proxied request (callgrind). Only a plain
/// response is kept so: a final status with a body, framed by one valid Content-Length, no
/// hop-by-hop field but a Connection that lists no names (it and Keep-Alive are dropped).
/// Anything else goes into the map. The body's length is the one Content-Length
/// line's (and the body's exact size hint until it is read from).
pub struct RawFields {
    pub lines: Vec<u8>,
    /// Whether `lines` holds a Date.
    pub has_date: bool,
}

/// Which of a response's fields its consumers (the proxy and the route's response hooks) use,
/// so that the rest may stay lines: a response with a `touched` field goes into a map; a
/// `replaced` field is left out of the lines (a consumer replaces or removes it whatever the
/// upstream sent). Made by `proxy::response_fields` and `middleware::Chain`.
pub struct FieldPolicy {
    /// The names as bytes: checked against every line, and `HeaderName::as_str` of a
    /// standard name is a table lookup each time.
    touched: Vec<Box<[u8]>>,
    replaced: Vec<Box<[u8]>>,
    /// How many bytes of lines the hooks may add (`middleware::Fields`): reserved with the
    /// lines, so that they are allocated once rather than grown while the hooks run (the
    /// map, which a hook rarely needs, starts empty and unallocated).
    pub room: usize,
}

impl FieldPolicy {
    pub fn new(room: usize) -> Self {
        FieldPolicy { touched: Vec::new(), replaced: Vec::new(), room }
    }

    /// Adds the names a consumer reads or sets, and those it replaces whatever the upstream
    /// sent.
    pub fn add(&mut self, touched: &[HeaderName], replaced: &[HeaderName]) {
        let bytes = |n: &HeaderName| Box::from(n.as_str().as_bytes());
        self.touched.extend(touched.iter().map(bytes));
        self.replaced.extend(replaced.iter().map(bytes));
    }

    fn names(list: &[Box<[u8]>], name: &[u8]) -> bool {
        list.iter().any(|n| **n == *name)
    }
}

impl Exchange {
    fn new(conn: Conn, head: Vec<u8>, body: RequestBody, framing: Sending) -> Self {
        let left = match framing {
            Sending::Length(n) => n,
            Sending::Chunked => 0,
        };
        let send = if body.is_end_stream() && left == 0 {
            Send::Head(Cursor::new(head))
        } else {
            Send::Writing(Box::new(Writing { head: Some(head), pending: None, body, framing, left, finished: false }))
        };
        Exchange { conn, buf: BytesMut::new(), send, received: false }
    }

    /// Writes what there is of the request: `Ready(Ok)` once all of it is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendFailed>> {
        loop {
            let w = match &mut self.send {
                Send::Writing(w) => &mut **w,
                Send::Head(head) => {
                    if ready!(send::poll_write_all(Pin::new(&mut self.conn.io), cx, head)).is_err() {
                        self.send = Send::Broken;
                        return Poll::Ready(Err(SendFailed::Io));
                    }
                    self.send = Send::Done;
                    return Poll::Ready(Ok(()));
                }
                Send::Done => return Poll::Ready(Ok(())),
                Send::Broken => return Poll::Ready(Err(SendFailed::Io)),
            };
            let Writing { head, pending, body, framing, left, finished } = w;
            if let Some(p) = pending {
                if ready!(send::poll_write_all(Pin::new(&mut self.conn.io), cx, p)).is_err() {
                    self.send = Send::Broken;
                    return Poll::Ready(Err(SendFailed::Io));
                }
                *pending = None;
            }
            if *finished {
                self.send = Send::Done;
                return Poll::Ready(Ok(()));
            }
            let chunked = matches!(framing, Sending::Chunked);
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => match head.take() {
                    // No body piece yet: the head goes alone, so the upstream can start.
                    Some(h) => *pending = Some(piece(h, Bytes::new(), b"")),
                    None => return Poll::Pending,
                },
                Poll::Ready(None) => {
                    if *left > 0 {
                        // Shorter than the length the head gave: the upstream would wait for
                        // the rest, or read the next request into it.
                        self.send = Send::Broken;
                        return Poll::Ready(Err(SendFailed::Body(RequestBodyError::Client(
                            "request body shorter than its length".into(),
                        ))));
                    }
                    *finished = true;
                    let tail: &'static [u8] = if chunked { crate::http1::LAST_CHUNK } else { b"" };
                    *pending = Some(piece(head.take().unwrap_or_default(), Bytes::new(), tail));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        let mut prefix = head.take().unwrap_or_default();
                        let suffix: &'static [u8] = if chunked {
                            // Into the prefix itself: no allocation per chunk.
                            let _ = write!(prefix, "{:x}\r\n", data.len());
                            b"\r\n"
                        } else {
                            let n = data.len() as u64;
                            if n > *left {
                                self.send = Send::Broken;
                                return Poll::Ready(Err(SendFailed::Body(RequestBodyError::Client(
                                    "request body longer than its length".into(),
                                ))));
                            }
                            *left -= n;
                            b""
                        };
                        *pending = Some(piece(prefix, data, suffix));
                    }
                    Err(frame) => {
                        // Trailers: only a chunked body can carry them.
                        let mut prefix = head.take().unwrap_or_default();
                        if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                            prefix.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                if !crate::http1::is_framing_field(name) {
                                    put_field(&mut prefix, name, value);
                                }
                            }
                            prefix.extend_from_slice(b"\r\n");
                            *finished = true;
                        }
                        *pending = Some(piece(prefix, Bytes::new(), b""));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.send = Send::Broken;
                    return Poll::Ready(Err(SendFailed::Body(e)));
                }
            }
        }
    }

    /// Sends the request while reading the response head (an upstream may read the whole body
    /// before it answers, or answer before it has read it); informational heads are skipped.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        raw: Option<&FieldPolicy>,
    ) -> Poll<Result<Head, ErrorKind>> {
        loop {
            if matches!(self.send, Send::Writing(_) | Send::Head(_))
                && let Poll::Ready(Err(SendFailed::Body(e))) = self.poll_send(cx)
            {
                return Poll::Ready(Err(e.kind()));
            }
            while !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_request, raw)? {
                    // RFC 9110 §15.2: 1xx answers before the final one are not forwarded
                    // (101 is final: it ends HTTP on this connection).
                    Some(head)
                        if head.parts.status.is_informational()
                            && head.parts.status != StatusCode::SWITCHING_PROTOCOLS => {}
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.buf.len() >= MAX_HEAD => return Poll::Ready(Err(ErrorKind::UpstreamBadResponse)),
                    None => break,
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(HEAD_BUFFER);
            }
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, &mut self.buf)) {
                Ok(n) if n > 0 => self.received = true,
                // Closed or reset before a whole head: nothing usable was answered.
                _ => return Poll::Ready(Err(ErrorKind::UpstreamReset)),
            }
        }
    }

    /// The body is boxed where it is made: the response then moves up the awaits as its head
    /// and a pointer, where a `Body` moved with it was 319 bytes a move, and boxing it later
    /// copied it once more.
    fn into_response(self, head: Head, target: &Target) -> Response<Box<Body>> {
        let Head { parts, framing, keep_alive, raw } = head;
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the tunnel, with what the upstream sent after the
            // 101 (the new protocol's first bytes).
            let Exchange { conn, buf, .. } = self;
            let upgraded = Upgraded::new(buf.freeze(), conn.io, conn._open);
            let mut resp = Response::from_parts(parts, Box::new(Body::done()));
            resp.extensions_mut().insert(UpstreamUpgrade(Arc::new(Mutex::new(Some(upgraded)))));
            return resp;
        }
        let mut body = Box::new(Body {
            decode: Decode::new(framing),
            keep_alive,
            read_size: MIN_READ,
            exchange: Some(self),
            home: Some(target.state.clone()),
            raw_date: raw.as_ref().is_some_and(|r| r.has_date),
            raw: raw.map(|r| r.lines),
        });
        body.finish_if_done(true);
        Response::from_parts(parts, body)
    }
}

/// Parses a complete response head off the front of `buf`; `None` while it is incomplete.
/// With a `raw` policy, a plain response's fields are kept as lines rather than in a map.
fn parse_head(buf: &mut BytesMut, head_request: bool, raw: Option<&FieldPolicy>) -> Result<Option<Head>, ErrorKind> {
    let bad = ErrorKind::UpstreamBadResponse;
    // Left uninitialised, as the server's request parser does (3.2 KiB filled per response).
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(bad),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(bad)?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Connection says whether this connection persists; when that is all it says (no names
    // listed), it and Keep-Alive are not kept: both are hop-by-hop, and the proxy would only
    // remove them again (a 101 keeps them: the upgrade is read from them).
    let mut persistence = ConnectionTokens::default();
    for h in parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        persistence.read(h.value);
    }
    let drop_connection = !persistence.lists_names && status != StatusCode::SWITCHING_PROTOCOLS;
    let persistent = match version {
        Version::HTTP_10 => persistence.keep_alive,
        _ => !persistence.close,
    };
    if let Some(policy) = raw
        && drop_connection
        && !head_request
        && let Some(fields) = raw_fields(parsed.headers, status, policy)
    {
        buf.advance(len);
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = HeaderMap::new();
        let (fields, length) = fields;
        return Ok(Some(Head { parts, framing: Framing::Length(length), keep_alive: persistent, raw: Some(fields) }));
    }
    // Where each value sits in the buffer, so the frozen head can be sliced without copies.
    let base = buf.as_ptr() as usize;
    let mut fields: Vec<(HeaderName, std::ops::Range<usize>)> = Vec::with_capacity(parsed.headers.len());
    let mut seen = Seen::default();
    for h in parsed.headers.iter() {
        if drop_connection && (h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("keep-alive")) {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad)?;
        seen.note(&name);
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start..start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the proxy adds (via, request id, middleware's).
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    for (name, range) in fields {
        headers.append(name, parsed_value(head.slice(range)).ok_or(bad)?);
    }

    let framing = response_framing(status, head_request, &headers, seen)?;
    // RFC 9112 §6.1: with both, the coding frames the message, the length is dropped (it
    // would mislead the next hop), and the connection is not reused.
    let both = seen.transfer_encoding && seen.content_length;
    if both {
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive = persistent && !both && framing != Framing::UntilClose;

    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head { parts, framing, keep_alive, raw: None }))
}

/// A plain response's fields as lines (see [`RawFields`]) and its body's length, or `None`
/// when the response is not plain and goes into a map instead. Connection and Keep-Alive are
/// left out (the caller has made sure Connection lists no names), and so are the names the
/// policy says are replaced.
fn raw_fields(fields: &[httparse::Header<'_>], status: StatusCode, policy: &FieldPolicy) -> Option<(RawFields, u64)> {
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return None;
    }
    let size: usize = fields.iter().map(|h| h.name.len() + h.value.len() + 4).sum();
    // And room for the proxy's own lines (Via, a 32-digit X-Request-Id: 67 bytes) and the
    // hooks', which would otherwise grow the vector.
    let mut lines = Vec::with_capacity(size + 96 + policy.room);
    let mut length = None;
    let mut has_date = false;
    for h in fields {
        let start = lines.len();
        lines.extend_from_slice(h.name.as_bytes());
        lines[start..].make_ascii_lowercase();
        let name = &lines[start..];
        if FieldPolicy::names(&policy.touched, name) {
            return None;
        }
        if FieldPolicy::names(&policy.replaced, name) {
            // The length frames the body as it is written: a hook that replaces it needs the
            // map (the codec then frames the body itself).
            if name == b"content-length" {
                return None;
            }
            lines.truncate(start);
            continue;
        }
        match name {
            b"connection" | b"keep-alive" => {
                lines.truncate(start);
                continue;
            }
            b"content-length" if length.is_none() => length = Some(decimal(h.value)?),
            // A second length, even an equal one, goes the way of the map, which merges them.
            b"content-length" => return None,
            b"date" => has_date = true,
            name if is_hop_by_hop(name) => return None,
            _ => {}
        }
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(h.value);
        lines.extend_from_slice(b"\r\n");
    }
    Some((RawFields { lines, has_date }, length?))
}

/// A Content-Length value: ASCII digits only, no sign, no space, within `u64`.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(
        0u64,
        |n, &b| {
            if b.is_ascii_digit() { n.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
        },
    )
}

/// RFC 9112 §6.3: how a response's body is delimited, in the order the section gives.
/// `seen` says which framing fields the head has (noted as it was parsed).
fn response_framing(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
    seen: Seen,
) -> Result<Framing, ErrorKind> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if seen.transfer_encoding {
        // Chunked only as the last coding; otherwise the body runs until the close.
        let last = list_items(headers, &header::TRANSFER_ENCODING).filter(|t| !t.is_empty()).last();
        return Ok(if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    if !seen.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut length = None;
    for item in list_items(headers, &header::CONTENT_LENGTH) {
        // An invalid or disagreeing length leaves the response unreadable: a bad response,
        // never a guess.
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ErrorKind::UpstreamBadResponse);
        }
        let n: u64 = item.parse().map_err(|_| ErrorKind::UpstreamBadResponse)?;
        if length.is_some_and(|l| l != n) {
            return Err(ErrorKind::UpstreamBadResponse);
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A response body read off its upstream connection, which goes back to the target's pool
/// when the body ends cleanly (and is closed otherwise). A request body still being sent is
/// sent on while this body is read.
pub struct Body {
    decode: Decode,
    keep_alive: bool,
    read_size: usize,
    exchange: Option<Exchange>,
    home: Option<Arc<TargetState>>,
    /// The response's fields, when they were kept as lines, and whether they hold a Date (apart:
    /// the flag packs beside `keep_alive`, and a body is moved several times on its way out).
    raw: Option<Vec<u8>>,
    raw_date: bool,
}

impl Body {
    /// A body with nothing in it (and no connection).
    fn done() -> Self {
        Body {
            decode: Decode::Done,
            keep_alive: false,
            read_size: 0,
            exchange: None,
            home: None,
            raw: None,
            raw_date: false,
        }
    }

    /// The lines of [`take_raw_fields`](Self::take_raw_fields), to add to before they are
    /// taken (the proxy's own fields).
    pub fn raw_lines_mut(&mut self) -> Option<&mut Vec<u8>> {
        self.raw.as_mut()
    }

    /// The response's fields as lines, when the client asked for them so and the response was
    /// plain; its head's `HeaderMap` then holds none of them.
    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.raw.take().map(|lines| RawFields { lines, has_date: self.raw_date })
    }

    /// Once the body has ended: the connection back to its pool when it can carry another
    /// exchange, else closed. `with_head`: the body ended with the head (the worker's last
    /// clock reading, the request's send time, stamps the connection), not later (read anew).
    fn finish_if_done(&mut self, with_head: bool) {
        if !matches!(self.decode, Decode::Done) {
            return;
        }
        if let (Some(ex), Some(home)) = (self.exchange.take(), self.home.take())
            && self.keep_alive
            && matches!(ex.send, Send::Done)
            && ex.buf.is_empty()
        {
            home.idle.put(ex.conn, if with_head { crate::worker::recent() } else { crate::worker::now() });
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.exchange = None;
        self.decode = Decode::Done;
        Poll::Ready(Some(Err(e)))
    }
}

#[cfg(target_os = "linux")]
impl Body {
    /// The body's remaining length when it can move socket to socket (see `crate::splice`):
    /// framed by a length, its connection in hand, and no upload still being sent beside it.
    pub fn spliceable(&self) -> Option<u64> {
        let ex = self.exchange.as_ref()?;
        match (&self.decode, &ex.send) {
            (Decode::Length(n), Send::Done) => Some(*n),
            _ => None,
        }
    }

    /// What of the body was read with the head (it goes out first, as usual).
    pub fn take_buffered(&mut self) -> Bytes {
        let Some(ex) = self.exchange.as_mut() else { return Bytes::new() };
        if ex.buf.is_empty() {
            return Bytes::new();
        }
        match self.decode.next(&mut ex.buf) {
            Ok(Some(Some(frame))) => {
                let data = frame.into_data().unwrap_or_default();
                self.finish_if_done(false);
                data
            }
            _ => Bytes::new(),
        }
    }

    /// Moves the rest of the body (after [`Body::take_buffered`]) into `to`; the connection
    /// goes back to its pool once the last byte has moved.
    pub async fn splice_into(
        &mut self,
        to: &TcpStream,
        idle: Duration,
        moved: impl FnMut(u64),
    ) -> Result<(), crate::splice::SpliceError> {
        let (Some(ex), Decode::Length(left)) = (self.exchange.as_ref(), &self.decode) else { return Ok(()) };
        let result = crate::splice::copy(&ex.conn.io, to, *left, idle, moved).await;
        match result {
            Ok(()) => {
                self.decode = Decode::Done;
                self.finish_if_done(false);
            }
            // The connection is in an unknown place of its body: closed, never pooled.
            Err(_) => self.exchange = None,
        }
        result
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(ex) = this.exchange.as_mut() else { return Poll::Ready(None) };
            if matches!(ex.send, Send::Writing(_) | Send::Head(_)) {
                // The upload goes on beside the download; if it fails now, the response still
                // arrives whole, and the connection is closed after it.
                let _ = ex.poll_send(cx);
            }
            match this.decode.next(&mut ex.buf) {
                Err(e) => return this.fail(e),
                Ok(Some(frame)) => {
                    this.finish_if_done(false);
                    return Poll::Ready(frame.map(Ok));
                }
                Ok(None) => {}
            }
            if ex.buf.capacity() - ex.buf.len() < 1024 {
                ex.buf.reserve(this.read_size);
            }
            let room = ex.buf.capacity() - ex.buf.len();
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut ex.conn.io), cx, &mut ex.buf)) {
                Ok(0) if matches!(this.decode, Decode::UntilClose) => {
                    this.decode = Decode::Done;
                    this.exchange = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(BodyError::Incomplete),
                Ok(n) => {
                    if n == room {
                        this.read_size = (this.read_size * 2).min(MAX_READ);
                    }
                }
                Err(e) => return this.fail(BodyError::Io(e)),
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
        self.finish_if_done(false);
    }
}

/// The upstream side of a `101 Switching Protocols`, in the response's extensions (which must
/// be `Clone`); taken once by the tunnel.
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<Upgraded>>>);

impl UpstreamUpgrade {
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// An upstream connection after its 101: first the bytes read past the response head, then
/// the socket; counted as open until it is dropped.
pub type Upgraded = crate::rewind::Rewind<TcpStream, Open>;

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn an_idle_pooled_connection_is_its_socket_and_its_stamp() {
        // A timer, a buffer or a task of its own would be paid by every idle connection of
        // every target (the response deadline's timer is lent by the worker instead).
        assert!(std::mem::size_of::<Conn>() <= 64, "{} bytes", std::mem::size_of::<Conn>());
    }

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, ErrorKind> {
        parse_head(&mut BytesMut::from(text), head_request, None)
    }

    /// The lines a head keeps when its fields may stay lines; `None` when they went to the map
    /// (which may find the head bad).
    fn lines(text: &str, head_request: bool) -> Option<String> {
        lines_with(text, head_request, &FieldPolicy::new(4))
    }

    fn lines_with(text: &str, head_request: bool, policy: &FieldPolicy) -> Option<String> {
        let mut buf = BytesMut::from(text);
        let h = match parse_head(&mut buf, head_request, Some(policy)) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("incomplete: {text}"),
            Err(_) => return None,
        };
        let raw = h.raw?;
        assert!(h.parts.headers.is_empty(), "kept as lines and in the map");
        assert!(matches!(h.framing, Framing::Length(_)), "a plain body has a length");
        Some(String::from_utf8(raw.lines).expect("ascii"))
    }

    #[test]
    fn a_plain_response_keeps_its_end_to_end_fields_as_lines() {
        let got = lines(
            "HTTP/1.1 200 OK\r\nServer: X\r\nDATE: d\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhi",
            false,
        );
        assert_eq!(got.as_deref(), Some("server: X\r\ndate: d\r\ncontent-length: 2\r\n"));
        let mut buf = BytesMut::from("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nConnection: close\r\n\r\nnext");
        let Ok(Some(h)) = parse_head(&mut buf, false, Some(&FieldPolicy::new(4))) else { panic!("not parsed") };
        assert_eq!(&buf[..], b"next", "the head is taken off the buffer, the rest left");
        let raw = h.raw.expect("plain");
        assert!(!h.keep_alive && !raw.has_date && h.framing == Framing::Length(0));
    }

    #[test]
    fn the_policy_of_response_hooks_decides_which_fields_stay_lines() {
        let mut policy = FieldPolicy::new(4);
        policy.add(&[header::ACCESS_CONTROL_ALLOW_ORIGIN], &[header::SERVER, header::DATE]);
        let text = "HTTP/1.1 200 OK\r\nServer: X\r\nDate: d\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(
            lines_with(text, false, &policy).as_deref(),
            Some("x-a: 1\r\ncontent-length: 2\r\n"),
            "replaced fields are left out (and a replaced Date is not one the codec keeps)"
        );
        let mut buf = BytesMut::from(text);
        let Ok(Some(h)) = parse_head(&mut buf, false, Some(&policy)) else { panic!("not parsed") };
        assert!(!h.raw.expect("plain").has_date);
        let touched = "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(lines_with(touched, false, &policy), None, "a field a hook reads or sets: the map");
        let mut length = FieldPolicy::new(4);
        length.add(&[], &[header::CONTENT_LENGTH]);
        assert_eq!(lines_with(text, false, &length), None, "a replaced length: the map, which frames anew");
    }

    #[test]
    fn a_response_that_is_not_plain_goes_to_the_map() {
        for text in [
            // framed otherwise, or not framed by one valid length
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // hop-by-hop fields to remove, or a Connection that names some
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Authenticate: Basic\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nupgrade: h2c\r\n\r\n",
            // statuses without a body, and 101
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(lines(text, false), None, "{text}");
        }
        // A HEAD's length is not its body's.
        assert_eq!(lines("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true), None);
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let h = |raw: &str| head(raw, false).ok().flatten().map(|h| (h.framing, h.keep_alive));
        assert_eq!(h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Some((Framing::Length(5), true)));
        assert_eq!(h("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), Some((Framing::Chunked, true)));
        assert_eq!(h("HTTP/1.1 200 OK\r\n\r\n"), Some((Framing::UntilClose, false)));
        assert_eq!(h("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"), Some((Framing::Length(0), true)));
        assert_eq!(h("HTTP/1.1 304 Not Modified\r\n\r\n"), Some((Framing::Length(0), true)));
        assert_eq!(h("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), Some((Framing::UntilClose, false)));
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"),
            Some((Framing::Length(5), false))
        );
        assert_eq!(h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"), Some((Framing::Length(5), false)));
        assert_eq!(
            h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"),
            Some((Framing::Length(5), true))
        );
        // A HEAD response's length is the GET's: no body follows.
        let parsed = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).ok().flatten().map(|h| h.framing);
        assert_eq!(parsed, Some(Framing::Length(0)));
    }

    #[test]
    fn a_response_with_both_a_coding_and_a_length_is_read_by_the_coding_and_not_reused() {
        let parsed = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", false);
        let Ok(Some(h)) = parsed else { panic!("not parsed") };
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(!h.parts.headers.contains_key(header::CONTENT_LENGTH), "the misleading length is dropped");
    }

    #[test]
    fn unreadable_lengths_and_heads_are_bad_responses() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
            "HTTP/1.1 999999 Huh\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            assert!(matches!(head(raw, false), Err(ErrorKind::UpstreamBadResponse)), "{raw:?}");
        }
        assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-le", false), Ok(None)), "a partial head waits");
    }

    #[test]
    fn a_connection_that_only_says_whether_it_persists_is_not_kept() {
        let names = |raw: &str| {
            let Ok(Some(h)) = head(raw, false) else { panic!("not parsed: {raw:?}") };
            (h.parts.headers.keys().map(|k| k.as_str().to_owned()).collect::<Vec<_>>(), h.keep_alive)
        };
        let (kept, reused) =
            names("HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\n\r\n");
        assert_eq!((kept, reused), (vec!["x-a".to_owned()], false), "no length: read until the close");
        let (kept, reused) = names("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: , close\r\n\r\n");
        assert_eq!((kept, reused), (vec!["content-length".to_owned()], false));
        let (_, reused) = names("HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n");
        assert!(reused);
        // Listing a field: all of it stays for the proxy's hop-by-hop removal to apply.
        let (kept, reused) = names("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: x-a, close\r\nx-a: 1\r\n\r\n");
        assert_eq!(
            (kept, reused),
            (vec!["content-length".to_owned(), "connection".to_owned(), "x-a".to_owned()], false)
        );
        let (kept, _) = names("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
        assert_eq!(kept, ["connection", "upgrade"]);
    }

    #[test]
    fn a_head_leaves_the_bytes_after_it_in_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nhi");
        let Ok(Some(h)) = parse_head(&mut buf, false, None) else { panic!("not parsed") };
        assert_eq!(&buf[..], b"hi");
        assert_eq!(h.parts.headers.get("x-a").map(HeaderValue::as_bytes), Some(&b"1"[..]));
    }
}
