//! One timer kept for a run of deadlines that mostly move later: a connection's keep-alive
//! waits, its upstream responses. Setting a tokio `Sleep` anew for each deadline costs its tick
//! arithmetic every time (~0.1k instructions, twice a small request); instead the timer runs to
//! the deadline it was set for, and only when it fires early is it set again, for the deadline
//! now due. A busy connection's timer is then set about once per timeout, not once per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// Aims `timer` at `due`: moved at once only when `due` comes before the deadline it is set
/// for; a later `due` is taken up by [`poll`] when the timer fires.
pub fn aim(timer: Pin<&mut Sleep>, due: Instant) {
    if due < timer.deadline() {
        timer.reset(due);
    }
}

/// Ready once `due` has passed. A timer that fires before `due` (set for an earlier deadline)
/// is set again for `due`.
pub fn poll(mut timer: Pin<&mut Sleep>, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        ready!(timer.as_mut().poll(cx));
        if Instant::now() >= due {
            return Poll::Ready(());
        }
        timer.as_mut().reset(due);
    }
}
