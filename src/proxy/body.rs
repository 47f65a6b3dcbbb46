//! Streaming bodies in both directions, never collected.
//!
//! `RequestBody` forwards the client's body frame by frame and fails the moment it passes the
//! route's size limit; `ResponseBody` forwards the upstream's body (or carries a gateway answer)
//! and writes the access-log line once the body has ended, failed, or been abandoned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::config::Coding;
use crate::middleware::cache::Filling;
use crate::middleware::compress::Encoder;
use crate::observe::access_log::Entry;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::balance::InFlight;
use crate::upstream::client::UpstreamBody;

/// Why a request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the client's request body failed: {0}")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the client sent nothing of its request body for {0:?}")]
    Timeout(Duration),
}

impl RequestBodyError {
    /// The gateway's answer when this stops a request before the upstream answered.
    pub fn kind(&self) -> crate::proxy::error::ErrorKind {
        use crate::proxy::error::ErrorKind;
        match self {
            RequestBodyError::TooLarge(_) => ErrorKind::BodyTooLarge,
            RequestBodyError::Client(_) => ErrorKind::ClientBodyError,
            RequestBodyError::Timeout(_) => ErrorKind::ClientBodyTimeout,
        }
    }
}

/// Why an upstream's response body stopped before its end; the client's response is then
/// aborted, never ended cleanly.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("reading the upstream's response body failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the upstream sent nothing of its response body for {0:?}")]
    Stalled(Duration),
    #[error("compressing the response body failed: {0}")]
    Encode(#[source] std::io::Error),
}

/// Counters shared by a request's two bodies and its access-log entry.
#[derive(Default)]
pub struct Exchange {
    pub bytes_in: AtomicU64,
}

/// A client's request body as the server hands it over: HTTP/2 streams come through hyper,
/// HTTP/1.1 bodies through the gateway's own codec (`server::h1`).
pub enum ClientBody {
    Hyper(Incoming),
    /// Boxed: only a request with a body has one, and the request body is moved a dozen times
    /// on its way to the upstream's connection; inline (its reader and decoder) it made every
    /// request's body 144 bytes, each move a `memcpy` call, where 88 move in registers.
    H1(Box<crate::server::h1::Body>),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

enum Inner {
    /// Streamed from the client as it arrives.
    Client(ClientBody),
    /// Already in memory: a body buffered for replay, or none (`None` once sent).
    Bytes(Option<Bytes>),
}

pub struct RequestBody {
    inner: Inner,
    limit: u64,
    seen: u64,
    /// Shared with the access-log entry; `None` when nothing will read the count.
    exchange: Option<Arc<Exchange>>,
    /// Longest pause allowed between pieces of the client's body (`client_body_timeout`).
    idle: IdleTimer,
}

/// A deadline that restarts whenever data moves. The timer itself is made only once a body
/// first has to wait, so bodies that never wait (none, or already buffered) allocate nothing.
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(timeout: Duration) -> Self {
        IdleTimer { timeout, sleep: None }
    }

    fn progressed(&mut self) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    /// Called when the body is waiting: true once it has waited longer than the timeout.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl RequestBody {
    /// The client's body, cut at `limit` bytes or after `idle_timeout` without data.
    pub fn client(inner: ClientBody, limit: u64, idle_timeout: Duration, exchange: Option<Arc<Exchange>>) -> Self {
        RequestBody { inner: Inner::Client(inner), limit, seen: 0, exchange, idle: IdleTimer::new(idle_timeout) }
    }

    /// A body already in memory (empty for requests the gateway makes itself).
    pub fn bytes(bytes: Bytes) -> Self {
        let inner = Inner::Bytes((!bytes.is_empty()).then_some(bytes));
        RequestBody { inner, limit: u64::MAX, seen: 0, exchange: None, idle: IdleTimer::new(Duration::MAX) }
    }

    pub fn empty() -> Self {
        RequestBody::bytes(Bytes::new())
    }

    /// The same body again, for a second try, when it is in memory (or empty): `None` for a
    /// body streamed from the client, which can be sent once only.
    pub fn replay(&self) -> Option<RequestBody> {
        match &self.inner {
            Inner::Bytes(b) => Some(RequestBody::bytes(b.clone().unwrap_or_default())),
            Inner::Client(c) if c.is_end_stream() => Some(RequestBody::empty()),
            Inner::Client(_) => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let inner = match &mut this.inner {
            Inner::Bytes(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Client(inner) => inner,
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(x) = &this.exchange {
                        x.bytes_in.store(this.seen, Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                    this.idle.progressed();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.idle.expired(cx) => {
                Poll::Ready(Some(Err(RequestBodyError::Timeout(this.idle.timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Client(inner) => inner.is_end_stream(),
            Inner::Bytes(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Client(inner) => inner.size_hint(),
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

enum Source {
    /// The upstream's body, the target's in-flight slot it holds until it ends, and the
    /// upstream's `idle` timeout: a body silent that long is aborted, not waited on forever.
    Upstream {
        body: UpstreamBody,
        _in_flight: InFlight,
        idle: IdleTimer,
    },
    Fixed(Option<Bytes>),
}

/// What is recorded in the route's metrics (and its trace span) once the response is over.
pub struct Done {
    pub metrics: Arc<RouteMetrics>,
    pub method: usize,
    pub status: u16,
    pub start: std::time::Instant,
    pub span: Option<Box<PendingSpan>>,
}

/// A request's span, exported when its response ends.
pub struct PendingSpan {
    pub exporter: Arc<crate::observe::otel::Exporter>,
    pub ids: crate::proxy::trace::TraceIds,
    pub route: Option<Arc<str>>,
    pub path: Box<str>,
}

/// The body the client receives.
pub struct ResponseBody {
    source: Source,
    /// Set when a `compress` middleware encodes this response.
    encoding: Option<Box<Encoding>>,
    /// Set when a `cache` middleware stores this response: it sees every byte sent.
    tee: Option<Box<Filling>>,
    sent: u64,
    ended: bool,
    /// Boxed: the response is moved several times on its way out, and an entry inline
    /// would have it copy 488 more bytes each time.
    log: Option<Box<Entry>>,
    done: Option<Done>,
}

/// A body being compressed: the encoder, and the source's trailers held back until the
/// encoded stream's last bytes have gone.
struct Encoding {
    encoder: Encoder,
    finished: bool,
    trailers: Option<Frame<Bytes>>,
}

impl ResponseBody {
    pub fn upstream(
        body: UpstreamBody,
        log: Option<Box<Entry>>,
        done: Done,
        in_flight: InFlight,
        idle: Duration,
    ) -> Self {
        let source = Source::Upstream { body, _in_flight: in_flight, idle: IdleTimer::new(idle) };
        ResponseBody { source, encoding: None, tee: None, sent: 0, ended: false, log, done: Some(done) }
    }

    pub fn fixed(bytes: Bytes, log: Option<Box<Entry>>, done: Done) -> Self {
        let mut body = ResponseBody::bytes(bytes);
        body.log = log;
        body.done = Some(done);
        body
    }

    /// Bytes that are no route's answer: nothing is logged or counted when they end.
    pub fn bytes(bytes: Bytes) -> Self {
        ResponseBody {
            source: Source::Fixed(Some(bytes)),
            encoding: None,
            tee: None,
            sent: 0,
            ended: false,
            log: None,
            done: None,
        }
    }

    pub fn empty() -> Self {
        ResponseBody {
            source: Source::Fixed(None),
            encoding: None,
            tee: None,
            sent: 0,
            ended: true,
            log: None,
            done: None,
        }
    }

    /// Copies the body, as sent, into the cache (see `cache::Filling`).
    pub fn tee(&mut self, filling: Box<Filling>) {
        self.tee = Some(filling);
    }

    /// Sends `body` instead of the source's (the cache turning a 304 back into its entry).
    pub fn replace(&mut self, body: Bytes) {
        self.source = Source::Fixed(Some(body));
    }

    /// Compresses the body with `coding` (the headers already say so).
    pub fn encode(&mut self, coding: Coding) {
        self.encoding = Some(Box::new(Encoding { encoder: Encoder::new(coding), finished: false, trailers: None }));
    }

    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match &mut self.source {
            Source::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream { body, idle, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    idle.progressed();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(UpstreamBodyError::Read(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending if idle.expired(cx) => Poll::Ready(Some(Err(UpstreamBodyError::Stalled(idle.timeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// The source through the encoder: data frames in, whatever the codec lets out; a pause
    /// of the source flushes what was taken, so nothing waits behind a quiet upstream.
    fn poll_encoded(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let data = |b: Bytes| Poll::Ready(Some(Ok(Frame::data(b))));
        loop {
            let Some(enc) = self.encoding.as_deref_mut() else { return Poll::Ready(None) };
            if enc.finished {
                return Poll::Ready(enc.trailers.take().map(Ok));
            }
            let polled = self.poll_source(cx);
            let Some(enc) = self.encoding.as_deref_mut() else { return Poll::Ready(None) };
            let out = match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(bytes) => enc.encoder.data(&bytes),
                    Err(trailers) => {
                        enc.finished = true;
                        enc.trailers = Some(trailers);
                        enc.encoder.finish()
                    }
                },
                Poll::Ready(None) => {
                    enc.finished = true;
                    enc.encoder.finish()
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => match enc.encoder.flush() {
                    Ok(b) if b.is_empty() => return Poll::Pending,
                    flushed => flushed,
                },
            };
            match out {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => return data(b),
                Err(e) => return Poll::Ready(Some(Err(UpstreamBodyError::Encode(e)))),
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl ResponseBody {
    /// Whether the rest of this body, `n` bytes as its head says, can move from the upstream's
    /// socket to the client's without passing through the gateway (`crate::splice`): nothing
    /// transforms or copies it (no compression, no cache fill), and it is the own HTTP/1.1
    /// client's body with exactly that length left.
    pub fn can_splice(&mut self, n: u64) -> bool {
        if self.encoding.is_some() || self.tee.is_some() {
            return false;
        }
        let Source::Upstream { body, .. } = &mut self.source else { return false };
        body.own().and_then(|b| b.spliceable()) == Some(n)
    }

    /// The response's fields as the upstream sent them, when they were kept as lines rather
    /// than parsed into its head's map (see `upstream::h1::RawFields`); taken once.
    pub fn take_raw_fields(&mut self) -> Option<crate::upstream::h1::RawFields> {
        let Source::Upstream { body, .. } = &mut self.source else { return None };
        body.own().and_then(|b| b.take_raw_fields())
    }

    /// What of the body is already in memory (read with the upstream's head), counted as sent.
    pub fn take_buffered(&mut self) -> Bytes {
        let Source::Upstream { body, .. } = &mut self.source else { return Bytes::new() };
        let Some(b) = body.own() else { return Bytes::new() };
        let data = b.take_buffered();
        self.sent += data.len() as u64;
        data
    }

    /// Splices the rest of the body into the client's socket `to` (after
    /// [`ResponseBody::take_buffered`]); the access log and metrics see it as sent.
    pub async fn splice_into(&mut self, to: &tokio::net::TcpStream) -> std::io::Result<()> {
        let Source::Upstream { body, idle, .. } = &mut self.source else { return Ok(()) };
        let timeout = idle.timeout;
        let Some(b) = body.own() else { return Ok(()) };
        let sent = &mut self.sent;
        match b.splice_into(to, timeout, |n| *sent += n).await {
            Ok(()) => {
                self.ended = true;
                Ok(())
            }
            Err(crate::splice::SpliceError::Source(e)) => {
                if let Some(log) = &mut self.log {
                    log.error.get_or_insert("upstream_body_error");
                }
                Err(e)
            }
            Err(crate::splice::SpliceError::Destination(e)) => Err(e),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = if this.encoding.is_some() { this.poll_encoded(cx) } else { this.poll_source(cx) };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => {
                    this.sent += data.len() as u64;
                    if let Some(tee) = this.tee.as_mut()
                        && !tee.data(data)
                    {
                        this.tee = None;
                    }
                    // hyper stops polling a body whose length it knows once it has it all.
                    if this.is_end_stream()
                        && let Some(tee) = this.tee.take()
                    {
                        tee.end();
                    }
                }
                // A response with trailers is not stored: an entry holds no trailers.
                None => this.tee = None,
            },
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(tee) = this.tee.take() {
                    tee.end();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.tee = None;
                if let Some(log) = &mut this.log {
                    log.error.get_or_insert("upstream_body_error");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if let Some(enc) = &self.encoding {
            return enc.finished && enc.trailers.is_none();
        }
        match &self.source {
            Source::Fixed(b) => b.is_none(),
            Source::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoding.is_some() {
            return SizeHint::default();
        }
        match &self.source {
            Source::Fixed(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Fixed(None) => SizeHint::with_exact(0),
            Source::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.metrics.record(d.method, d.status, crate::worker::now().saturating_duration_since(d.start));
            if let Some(span) = d.span {
                span.exporter.record(&crate::observe::otel::Finished {
                    ids: span.ids,
                    method: crate::observe::metrics::method_name(d.method),
                    route: span.route.as_deref(),
                    path: &span.path,
                    status: d.status,
                    started: d.start,
                });
            }
        }
        if let Some(mut entry) = self.log.take() {
            let complete = self.ended || self.is_end_stream();
            if !complete && entry.error.is_none() {
                entry.error = Some("client_aborted");
            }
            entry.bytes_out = self.sent;
            entry.write();
        }
    }
}
