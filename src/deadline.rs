//! One timer kept for a run of deadlines that mostly move later: a connection's keep-alive
//! waits, its upstream responses. Setting a tokio `Sleep` anew for each deadline costs its tick
//! arithmetic every time (~0.1k instructions, twice a small request); instead the timer runs to
//! the deadline it was set for, and only when it fires early is it set again, for the deadline
//! now due. A busy connection's timer is then set about once per timeout, not once per request.
//!
//! A wait that belongs to no long-lived owner (an upstream exchange's response head: the
//! upstream connection is one of many, the request passes) borrows such a timer from its
//! worker ([`Lent`]).

use std::cell::RefCell;
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

/// Timers a worker keeps between the waits that borrow them, the last returned first.
const SPARE_MAX: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// A timer for one wait, borrowed from the worker's spares at its first poll and given back
/// when dropped: an upstream exchange's response-header deadline. Each pooled upstream
/// connection kept a timer of its own before, so with many targets every request woke a cold
/// one (two to three cache lines that a 1 000-target pool never kept warm: callgrind counted
/// ~1.6 more last-level misses a request with a 1 MiB last level); the worker's spares are
/// as many as its exchanges waiting at once, the most recently used lent first. A spare keeps
/// its registration and deadline (`aim` moves it only earlier), so lending costs no timer
/// wheel work. Spares are kept only on a worker's thread, whose runtime (the timers' driver)
/// lasts as long as the thread; elsewhere each wait makes its own timer.
pub struct Lent {
    due: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Lent {
    pub fn new(due: Instant) -> Self {
        Lent { due, timer: None }
    }

    /// Ready once `due` has passed.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.due;
        let timer = self.timer.get_or_insert_with(|| match SPARE.with(|s| s.try_borrow_mut().ok()?.pop()) {
            Some(mut timer) => {
                aim(timer.as_mut(), due);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(due)),
        });
        poll(timer.as_mut(), due, cx)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take()
            && crate::worker::on_worker()
        {
            SPARE.with(|s| {
                if let Ok(mut spare) = s.try_borrow_mut()
                    && spare.len() < SPARE_MAX
                {
                    spare.push(timer);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    /// Polls `lent` once: ready or not.
    async fn fired(lent: &mut Lent) -> bool {
        poll_fn(|cx| Poll::Ready(lent.poll(cx).is_ready())).await
    }

    /// On a paused clock (it moves only when the runtime has nothing else to do), so a slow
    /// machine cannot make a deadline pass between two lines of the test.
    fn paused_runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()
    }

    #[test]
    fn a_lent_timer_goes_back_to_its_worker_and_keeps_each_borrowers_deadline() {
        std::thread::spawn(|| {
            crate::worker::become_worker(1);
            let rt = paused_runtime();
            rt.expect("runtime").block_on(async {
                let mut first = Lent::new(Instant::now() + Duration::from_secs(10));
                assert!(!fired(&mut first).await);
                drop(first);
                assert_eq!(spares(), 1, "given back");

                // An earlier deadline moves the spare earlier: it fires then, not at 10 s.
                let due = Instant::now() + Duration::from_millis(30);
                let mut earlier = Lent::new(due);
                assert!(!fired(&mut earlier).await);
                assert_eq!(spares(), 0, "the spare is the one lent");
                tokio::time::sleep_until(due).await;
                assert!(fired(&mut earlier).await);
                drop(earlier);

                // The spare fired for its last borrower; the next one's later deadline holds.
                let due = Instant::now() + Duration::from_millis(300);
                let mut later = Lent::new(due);
                assert!(!fired(&mut later).await, "not the last borrower's deadline");
                tokio::time::sleep_until(due).await;
                assert!(fired(&mut later).await);
                drop(later);
                assert_eq!(spares(), 1, "one timer served all three waits");
            });
        })
        .join()
        .expect("worker thread");
    }

    #[test]
    fn off_a_worker_thread_no_timer_is_kept() {
        std::thread::spawn(|| {
            let rt = paused_runtime();
            rt.expect("runtime").block_on(async {
                let mut lent = Lent::new(Instant::now() + Duration::from_secs(1));
                assert!(!fired(&mut lent).await);
                drop(lent);
                assert_eq!(spares(), 0);
            });
        })
        .join()
        .expect("thread");
    }
}
