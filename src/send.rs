//! Writing a message's pieces (a head, a piece of body, a chunk's framing) to a socket in the
//! cheapest system calls: one piece goes with `send`, several small ones are copied into one
//! buffer first, and only large pieces go with a vectored write.
//!
//! tokio's `write_all_buf` and tokio-util's `poll_write_buf` write vectored whenever the stream
//! supports it, one piece or several. On a socket a vectored write is `writev`, which goes
//! through the kernel's file layer (position lock, permission and fsnotify hooks, copying the
//! iovec array in) before reaching the socket, where `send` goes straight to it: `perf`
//! counted ~0.35 µs of kernel time per `writev` above HAProxy's `send` on a small proxied
//! request, two of them per request (bench/RESULTS.md, session 29). Copying a small body
//! behind its head costs far less than that.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Up to this many bytes of body (with its suffix) are copied behind the prefix that goes
/// before them, so that both leave in one `send`; larger pieces go vectored, uncopied.
pub const COALESCE: usize = 4096;

/// Appends `data` and `suffix` to `prefix` when they are small enough to copy
/// ([`COALESCE`]); `true` when it did, and only `prefix` is left to write. `data` alone is
/// left where it is: it is one piece already.
pub fn coalesce(prefix: &mut Vec<u8>, data: &[u8], suffix: &[u8]) -> bool {
    if data.len() + suffix.len() > COALESCE || (prefix.is_empty() && suffix.is_empty()) {
        return false;
    }
    prefix.reserve(data.len() + suffix.len());
    prefix.extend_from_slice(data);
    prefix.extend_from_slice(suffix);
    true
}

/// Writes some of `buf`, advancing it by what was written: with `poll_write` (on a socket,
/// `send`) when what is left is one contiguous piece or the stream does not write vectored,
/// with `poll_write_vectored` only when there are several pieces.
pub fn poll_write_buf<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    buf: &mut impl Buf,
) -> Poll<io::Result<usize>> {
    if !buf.has_remaining() {
        return Poll::Ready(Ok(0));
    }
    if buf.chunk().len() < buf.remaining() && io.is_write_vectored() {
        return tokio_util::io::poll_write_buf(io, cx, buf);
    }
    let n = ready!(io.poll_write(cx, buf.chunk()))?;
    buf.advance(n);
    Poll::Ready(Ok(n))
}

/// Writes all of `buf` ([`poll_write_buf`]); a write of nothing is an error.
pub fn poll_write_all<W: AsyncWrite + ?Sized>(
    mut io: Pin<&mut W>,
    cx: &mut Context<'_>,
    buf: &mut impl Buf,
) -> Poll<io::Result<()>> {
    while buf.has_remaining() {
        if ready!(poll_write_buf(io.as_mut(), cx, buf))? == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
    }
    Poll::Ready(Ok(()))
}

/// Writes all of `buf` ([`poll_write_buf`]).
pub async fn write_all<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, buf: &mut impl Buf) -> io::Result<()> {
    poll_fn(|cx| poll_write_all(Pin::new(&mut *io), cx, buf)).await
}

/// The one piece of `bufs` with data, if no other has any: a vectored write of it is better
/// made as a plain one. For streams written by code that writes vectored whenever the stream
/// allows (rustls' records, hyper's HTTP/2 frames): their wrappers route such writes to
/// `poll_write`.
pub fn one_piece<'a>(bufs: &'a [IoSlice<'a>]) -> Option<&'a [u8]> {
    let mut pieces = bufs.iter().filter(|b| !b.is_empty());
    match (pieces.next(), pieces.next()) {
        (Some(one), None) => Some(one),
        (None, _) => Some(&[]),
        _ => None,
    }
}

/// A stream written by someone else's code (rustls over a client's socket, hyper's HTTP/2 on
/// an h2c one), whose vectored writes of one piece become plain writes ([`one_piece`]).
/// hyper's upstream connections do the same in `upstream::connector::Counted` (hyper's own
/// `Write` trait, not tokio's).
pub struct PlainWrites<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for PlainWrites<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PlainWrites<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.get_mut().0);
        match one_piece(bufs) {
            Some(buf) => inner.poll_write(cx, buf),
            None => inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records how each write was made.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, usize)>,
        out: Vec<u8>,
        /// At most this many bytes per call (a socket whose buffer is nearly full).
        limit: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = self.limit.map_or(buf.len(), |l| l.min(buf.len()));
            self.calls.push(("write", n));
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.limit.unwrap_or(usize::MAX);
            let mut n = 0;
            for b in bufs {
                let take = room.min(b.len());
                self.out.extend_from_slice(&b[..take]);
                n += take;
                room -= take;
            }
            self.calls.push(("writev", n));
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(w: &mut Recorder, buf: &mut impl Buf) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(poll_write_all(Pin::new(w), &mut cx, buf), Poll::Ready(Ok(()))));
    }

    #[test]
    fn one_piece_is_a_plain_write_even_inside_a_chain() {
        let mut w = Recorder::default();
        write(&mut w, &mut (&b""[..]).chain(&b"hello"[..]).chain(&b""[..]));
        assert_eq!(w.calls, [("write", 5)]);
        assert_eq!(w.out, b"hello");
    }

    #[test]
    fn several_pieces_go_vectored_and_the_rest_after_a_short_write_too() {
        let mut w = Recorder { limit: Some(4), ..Recorder::default() };
        write(&mut w, &mut (&b"head"[..]).chain(&b"body"[..]).chain(&b"!"[..]));
        // After the first 4 bytes the head is gone; "body" + "!" are still two pieces, then
        // "!" alone is one.
        assert_eq!(w.calls, [("writev", 4), ("writev", 4), ("write", 1)]);
        assert_eq!(w.out, b"headbody!");
    }

    #[test]
    fn a_vectored_write_of_one_piece_through_plain_writes_is_a_plain_write() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut w = PlainWrites(Recorder::default());
        let one = [IoSlice::new(b""), IoSlice::new(b"record"), IoSlice::new(b"")];
        assert!(matches!(Pin::new(&mut w).poll_write_vectored(&mut cx, &one), Poll::Ready(Ok(6))));
        let two = [IoSlice::new(b"frame"), IoSlice::new(b"data")];
        assert!(matches!(Pin::new(&mut w).poll_write_vectored(&mut cx, &two), Poll::Ready(Ok(9))));
        assert_eq!(w.0.calls, [("write", 6), ("writev", 9)]);
        assert_eq!(w.0.out, b"recordframedata");
    }

    #[test]
    fn small_pieces_are_copied_behind_the_prefix_and_large_ones_are_not() {
        let mut prefix = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        assert!(coalesce(&mut prefix, b"hello", b"\r\n"));
        assert_eq!(prefix, b"HTTP/1.1 200 OK\r\n\r\nhello\r\n");
        let big = vec![b'x'; COALESCE];
        let mut prefix = b"head".to_vec();
        assert!(!coalesce(&mut prefix, &big, b"\r\n"));
        assert_eq!(prefix, b"head");
        assert!(coalesce(&mut prefix, &big[2..], b"\r\n"));
        assert_eq!(prefix.len(), 4 + COALESCE);
        // Nothing around it: the data is one piece as it is, and not copied.
        let mut empty = Vec::new();
        assert!(!coalesce(&mut empty, b"hello", b""));
        assert!(empty.is_empty());
    }
}
