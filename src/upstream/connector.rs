//! The connector upstream pools dial through: hyper-util's `HttpConnector` (inside
//! hyper-rustls' `HttpsConnector` for TLS upstreams), wrapped to count the connections open
//! to each target (for pool metrics; hyper-util's pool exposes none).
//!
//! Counting happens once per connection, never per request; the per-target counters are
//! looked up in a map fixed when the upstream is built, so no lock is taken.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct CountingConnector<C> {
    inner: C,
    /// Open connections by target authority (`host:port`).
    open: Arc<HashMap<String, Arc<AtomicUsize>>>,
}

impl<C> CountingConnector<C> {
    pub fn new(inner: C, open: Arc<HashMap<String, Arc<AtomicUsize>>>) -> Self {
        CountingConnector { inner, open }
    }
}

impl<C> tower_service::Service<Uri> for CountingConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted<C::Response>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let counter = uri.authority().and_then(|a| self.open.get(a.as_str())).cloned();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            if let Some(c) = &counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Counted { io, counter })
        })
    }
}

/// A connection that is counted as open until it is dropped.
pub struct Counted<T> {
    io: T,
    counter: Option<Arc<AtomicUsize>>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper writes vectored whenever it may: one piece goes as a plain write (`send`).
        match crate::send::one_piece(bufs) {
            Some(buf) => Pin::new(&mut self.io).poll_write(cx, buf),
            None => Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
        }
    }
}
