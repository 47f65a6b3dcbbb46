//! The connector upstream pools dial through: hyper-util's `HttpConnector`, wrapped to count
//! the connections open to each target (for pool metrics; hyper-util's pool exposes none).
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
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    /// Open connections by target authority (`host:port`).
    open: Arc<HashMap<String, Arc<AtomicUsize>>>,
}

impl CountingConnector {
    pub fn new(inner: HttpConnector, open: Arc<HashMap<String, Arc<AtomicUsize>>>) -> Self {
        CountingConnector { inner, open }
    }
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let counter = uri.authority().and_then(|a| self.open.get(a.as_str())).cloned();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            if let Some(c) = &counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Counted { io, counter })
        })
    }
}

/// A connection that is counted as open until it is dropped.
pub struct Counted {
    io: TokioIo<TcpStream>,
    counter: Option<Arc<AtomicUsize>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
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
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
