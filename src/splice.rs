//! Zero-copy moves of a body between two TCP sockets through a pipe (`splice(2)`, Linux): the
//! bytes go from the upstream's receive queue to the client's send queue without being copied
//! into the gateway's memory and out again. Only for bodies nothing needs to read (no
//! compression, no cache fill); the caller decides that. No I/O policy here beyond the move.
//!
//! Written by hand: tokio has no splice, and the crates that wrap it for tokio are small and
//! unmaintained; the system calls are three (`pipe2`, `fcntl`, `splice`), behind safe
//! functions in this file only.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bodies shorter than this are copied as usual: a pipe's set-up (three system calls) costs more
/// than the copy it saves.
pub const MIN_BODY: u64 = 64 << 10;
/// The pipe's size asked for (the default is 64 KiB); more moves per call. Linux's default
/// `pipe-max-size` allows it without privileges.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Which side of a move failed.
#[derive(Debug)]
pub enum SpliceError {
    /// Reading the source (the upstream): closed early, reset, or silent past the idle timeout.
    Source(io::Error),
    /// Writing the destination (the client), or making the pipe.
    Destination(io::Error),
}

thread_local! {
    /// One empty pipe per thread, so consecutive bodies do not pay `pipe2`, `fcntl` and two
    /// `close` each.
    static SPARE: std::cell::Cell<Option<Pipe>> = const { std::cell::Cell::new(None) };
}

/// A pipe whose two ends close when it is dropped.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: a plain fcntl on a descriptor this function owns. Failure (a lowered
        // pipe-max-size) leaves the default size, which only costs more calls.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { read, write })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the caller holds their
    // owners); null offsets are what sockets and pipes take.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Moves exactly `len` bytes from `from` to `to`, calling `moved` with each count that reached
/// `to`. `from` silent for `idle` is an error, as for any upstream body.
pub async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    len: u64,
    idle: Duration,
    mut moved: impl FnMut(u64),
) -> Result<(), SpliceError> {
    let pipe = match SPARE.with(|spare| spare.take()) {
        Some(pipe) => pipe,
        None => Pipe::new().map_err(SpliceError::Destination)?,
    };
    let mut left = len;
    let mut in_pipe = 0usize;
    while left > 0 || in_pipe > 0 {
        if in_pipe == 0 {
            // Filled only when empty: then "would block" can only mean the socket has nothing
            // yet. (Into a part-full pipe it could also mean the pipe is full, and clearing the
            // socket's readiness for that would wait for data that is already there.)
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(PIPE_SIZE as usize);
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), want)) {
                Ok(0) => return Err(SpliceError::Source(io::ErrorKind::UnexpectedEof.into())),
                Ok(k) => {
                    in_pipe = k;
                    left -= k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(idle, from.readable()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => return Err(SpliceError::Source(e)),
                        Err(_) => return Err(SpliceError::Source(io::ErrorKind::TimedOut.into())),
                    }
                }
                Err(e) => return Err(SpliceError::Source(e)),
            }
        }
        match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)) {
            // The pipe holds data, so nothing moved means the destination is gone.
            Ok(0) => return Err(SpliceError::Destination(io::ErrorKind::WriteZero.into())),
            Ok(k) => {
                in_pipe -= k;
                moved(k as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await.map_err(SpliceError::Destination)?,
            Err(e) => return Err(SpliceError::Destination(e)),
        }
    }
    // Empty again: kept for the next body on this thread (a failed move drops its pipe, which
    // may still hold bytes).
    SPARE.with(|spare| spare.set(Some(pipe)));
    Ok(())
}
