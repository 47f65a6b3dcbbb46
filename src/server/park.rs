//! Parked connections: plain HTTP/1.1 client connections idle past `keepalive_park_after`
//! wait here with no task, no buffer and no registration in the worker's reactor, only their
//! socket in an epoll set of the worker's own (mio's `Poll`) and about a hundred bytes of
//! bookkeeping. Bytes or a close from the client bring one back as a new connection task; the
//! keep-alive timeout and the drain close it here. Nothing here reads or answers a request.
//!
//! Why: a gateway's idle keep-alive connections far outnumber its busy ones, and an idle
//! connection otherwise costs its task (about 0.9 KiB, tokio rounds a task up to 128 bytes),
//! its I/O registration (256 bytes) and its `Peer`: 1.5 KiB each in `bench/`, three times
//! NGINX's. Parking costs four `epoll_ctl` calls per park and wake-up, so a connection parks
//! only after a pause (1 s by default), never between the requests of a busy one.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ConnectionGuard, Control};

/// A parked connection: what it takes to serve it again.
pub(super) struct Parked {
    pub stream: std::net::TcpStream,
    pub addr: SocketAddr,
    pub redirect_https: Option<u16>,
    /// Its keep-alive timeout ends then.
    pub until: Instant,
    /// It still counts as open (metrics, the drain).
    pub guard: ConnectionGuard,
}

/// A gateway's parking lots, one per worker (`crate::worker`): a parked socket must come back
/// to the reactor of the worker that served it, and each lot's lock is then taken only by its
/// own worker's tasks, never contended. Each lot is made at the first park on its worker.
pub(super) struct Lots {
    /// `None` once making it failed (logged): that worker's connections stay unparked.
    lots: Box<[OnceLock<Option<Arc<Lot>>>]>,
}

impl Lots {
    pub fn new() -> Lots {
        Lots { lots: (0..crate::worker::count()).map(|_| OnceLock::new()).collect() }
    }

    /// Connections parked now, over all workers (for metrics: each lot's lock, briefly).
    pub fn parked(&self) -> usize {
        self.lots.iter().filter_map(|l| l.get().and_then(Option::as_ref)).map(|l| l.lock().parked()).sum()
    }

    /// Parks `p` on the calling worker's lot; gives it back when it cannot be parked (the lot
    /// could not be made, or the gateway is draining).
    pub fn park(&self, control: &Arc<Control>, p: Parked) -> Result<(), Parked> {
        let i = crate::worker::index().min(self.lots.len() - 1);
        match self.lots[i].get_or_init(|| Lot::start(control)) {
            Some(lot) => lot.park(p),
            None => Err(p),
        }
    }
}

struct Lot {
    /// Registers sockets with the lot's `Poll`, which its task owns.
    registry: mio::Registry,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<usize>,
    /// The lot's task has ended (the drain, or the gateway is gone): nothing parks any more.
    closed: bool,
}

impl Slots {
    /// Every slot holds a connection but the free ones.
    fn parked(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Takes the connection out of slot `index`, which then goes to the next one parked with
    /// a new generation.
    fn take_at(&mut self, index: usize) -> Option<Parked> {
        let slot = self.entries.get_mut(index)?;
        let p = slot.parked.take()?;
        slot.generation = (slot.generation + 1) & LOW;
        self.free.push(index);
        Some(p)
    }

    /// Takes the connection a token names out of its slot, if it is still there.
    fn take(&mut self, token: Token) -> Option<Parked> {
        let (index, generation) = slot_of(token);
        self.entries.get(index).filter(|s| s.generation == generation)?;
        self.take_at(index)
    }
}

/// A generation per slot, in the token's upper half, so that a stale event cannot wake the
/// connection parked in the same slot later.
#[derive(Default)]
struct Slot {
    generation: usize,
    parked: Option<Parked>,
}

/// A token is a slot's index in its lower half and the slot's generation in its upper half.
const HALF: u32 = usize::BITS / 2;
const LOW: usize = (1 << HALF) - 1;

fn token(index: usize, generation: usize) -> Token {
    Token(((generation & LOW) << HALF) | index)
}

fn slot_of(token: Token) -> (usize, usize) {
    (token.0 & LOW, token.0 >> HALF)
}

impl Lot {
    /// Makes the calling worker's lot and starts its task; `None` (logged) if the system
    /// refuses an epoll instance.
    fn start(control: &Arc<Control>) -> Option<Arc<Lot>> {
        let made = mio::Poll::new().and_then(|poll| {
            let registry = poll.registry().try_clone()?;
            // SAFETY: `mio::Poll` owns its epoll descriptor and returns that same one from
            // every `as_raw_fd` until it is dropped, which the `AsyncFd` owning it does.
            let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
            Ok((poll.map_err(|e| e.into_parts().1)?, registry))
        });
        let (poll, registry) = match made {
            Ok(made) => made,
            Err(e) => {
                tracing::warn!(error = %e, "idle connections cannot be parked on this worker");
                return None;
            }
        };
        let lot = Arc::new(Lot { registry, slots: Mutex::default() });
        tokio::spawn(run(lot.clone(), poll, Arc::downgrade(control), control.drain.subscribe()));
        Some(lot)
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Poisoning would only mean a panic between two field updates; the slots stay usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park(&self, p: Parked) -> Result<(), Parked> {
        // Registered under the lock, so the lot's task cannot see the socket's event before
        // its slot holds it. The lock is this worker's alone (see `Lots`).
        let mut slots = self.lock();
        if slots.closed {
            return Err(p);
        }
        let index = match slots.free.pop() {
            Some(i) => i,
            None if slots.entries.len() < LOW => {
                slots.entries.push(Slot::default());
                slots.entries.len() - 1
            }
            None => return Err(p),
        };
        let slot = &mut slots.entries[index];
        let fd = p.stream.as_raw_fd();
        if let Err(e) = self.registry.register(&mut SourceFd(&fd), token(index, slot.generation), Interest::READABLE) {
            tracing::debug!(error = %e, "parking a connection failed; it stays served");
            slots.free.push(index);
            return Err(p);
        }
        slot.parked = Some(p);
        Ok(())
    }

    /// Takes out the connections whose keep-alive timeout has ended (closed as they drop;
    /// closing a socket also takes it out of the epoll set).
    fn expired(&self, now: Instant) -> Vec<Parked> {
        let mut slots = self.lock();
        let mut ended = Vec::new();
        for i in 0..slots.entries.len() {
            if slots.entries[i].parked.as_ref().is_some_and(|p| p.until <= now) {
                ended.extend(slots.take_at(i));
            }
        }
        ended
    }

    /// Closes the lot: every parked connection closes, and nothing parks any more.
    fn close(&self) -> Vec<Parked> {
        let mut slots = self.lock();
        slots.closed = true;
        slots.free.clear();
        slots.entries.drain(..).filter_map(|s| s.parked).collect()
    }
}

/// How often the lot looks for connections past their keep-alive timeout: a quarter of the
/// timeout, between 10 ms and 1 s (so one closes at most that late).
fn sweep_interval(keepalive: Duration) -> Duration {
    (keepalive / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The lot's task: wakes parked connections the client sent to (or closed), closes those past
/// their keep-alive timeout, and closes them all when the gateway drains or is gone.
async fn run(lot: Arc<Lot>, mut poll: AsyncFd<mio::Poll>, control: Weak<Control>, mut drain: watch::Receiver<bool>) {
    let mut events = Events::with_capacity(256);
    let interval =
        |control: &Weak<Control>| control.upgrade().map(|c| sweep_interval(c.protocols.load().h1.keepalive_timeout));
    let Some(first) = interval(&control) else { return };
    let mut next_sweep = Instant::now() + first;
    loop {
        let woke = tokio::select! {
            ready = poll.readable_mut() => ready.and_then(|mut ready| {
                let mut woke = Vec::new();
                loop {
                    match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                    let mut slots = lot.lock();
                    woke.extend(events.iter().filter_map(|e| slots.take(e.token())));
                    drop(slots);
                    if events.iter().count() < events.capacity() {
                        break;
                    }
                }
                // Every event is taken: now the readiness may be cleared (tokio keeps it if the
                // reactor saw a new event meanwhile).
                ready.clear_ready();
                Ok(woke)
            }),
            () = tokio::time::sleep_until(next_sweep) => {
                drop(lot.expired(Instant::now()));
                let Some(every) = interval(&control) else { break };
                next_sweep = Instant::now() + every;
                continue;
            }
            _ = drain.wait_for(|d| *d) => break,
        };
        let woke = match woke {
            Ok(woke) => woke,
            Err(e) => {
                tracing::warn!(error = %e, "the parked connections' epoll set failed; closing them");
                break;
            }
        };
        let Some(control) = control.upgrade() else { break };
        for p in woke {
            let fd = p.stream.as_raw_fd();
            // Out of the lot's set before the worker's reactor takes it.
            if lot.registry.deregister(&mut SourceFd(&fd)).is_err() {
                continue;
            }
            tokio::spawn(super::serve_idle(p.stream, p.addr, p.redirect_https, control.clone(), p.guard, true));
        }
    }
    drop(lot.close());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_slot_and_its_generation() {
        assert_eq!(slot_of(token(7, 3)), (7, 3));
        assert_eq!(slot_of(token(LOW, LOW)), (LOW, LOW));
        // A generation wraps within its half instead of spilling over.
        assert_eq!(slot_of(token(1, LOW + 1)), (1, 0));
    }

    #[test]
    fn a_stale_token_takes_nothing_and_the_count_is_what_the_slots_hold() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(super::super::Connections::default());
        let parked = || Parked {
            stream: std::net::TcpStream::connect(addr).expect("connect"),
            addr,
            redirect_https: None,
            until: Instant::now(),
            guard: connections.guard(),
        };
        let mut slots = Slots::default();
        slots.entries.push(Slot { generation: 0, parked: Some(parked()) });
        assert_eq!(slots.parked(), 1);
        assert!(slots.take(token(0, 0)).is_some());
        assert_eq!((slots.parked(), slots.free.as_slice()), (0, &[0][..]));
        // The slot's next connection, under a new generation: the old token no longer names it.
        slots.free.pop();
        slots.entries[0].parked = Some(parked());
        assert!(slots.take(token(0, 0)).is_none(), "a stale event");
        assert_eq!(slots.parked(), 1);
        assert!(slots.take(token(0, 1)).is_some());
        assert!(slots.take(token(0, 1)).is_none(), "taken once");
        assert_eq!(slots.parked(), 0);
    }

    #[test]
    fn the_sweep_runs_at_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(sweep_interval(Duration::from_secs(75)), Duration::from_secs(1));
        assert_eq!(sweep_interval(Duration::from_millis(400)), Duration::from_millis(100));
        assert_eq!(sweep_interval(Duration::from_millis(1)), Duration::from_millis(10));
    }
}
