//! Workers: one thread per worker, each running its own current-thread tokio runtime.
//!
//! Every worker accepts on every listener (its own socket of an `SO_REUSEPORT` group, so the
//! kernel spreads new connections), and a connection stays on the worker that accepted it:
//! its task, its timers and the upstream connections it opens are that worker's alone, as
//! with NGINX's worker processes (here in one process, sharing the snapshot, metrics, rate
//! limits and health state through atomics and `ArcSwap`). A multi-thread (work-stealing)
//! runtime was measured against this: with two workers it cost a third more CPU per small
//! request (18.3 against 13.8 µs: cross-thread wake-ups, the stealing, an upstream
//! connection's readiness arriving on another thread) and served less, where two runtimes
//! cost no more per request than one (bench/RESULTS.md, session 20). What a worker gives up is
//! stealing: a busy worker's connections wait for it while another idles, which on a proxy's
//! many short requests evens out.
//!
//! Worker 0 is the thread that started the gateway: it also runs the control tasks (signals,
//! reloads, the file watch, the admin listener, health checks). Code that runs outside any
//! worker (tests, tools) counts as worker 0.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
    static RECENT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// This thread runs a worker's (current-thread) runtime, whose tasks never move to another
    /// thread: only there is the thread's last reading the task's own.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The time, as `Instant::now()`, also kept as this thread's [`recent`] reading. The request
/// path's readings that measure something (a request's start and end, the upstream's answer)
/// go through here.
pub fn now() -> Instant {
    let now = Instant::now();
    RECENT.set(Some(now));
    now
}

/// The last [`now`] read on this thread (or the time, if none was): for what only needs to
/// know about when it is, where the caller knows a reading was just taken on its request's way
/// (NGINX keeps its time the same way, read once per event loop turn). A reading costs ~25 ns
/// here (the vDSO's TSC read, about 1% of a small request's CPU at seven a request, `perf`);
/// the pool's idle stamps and the keep-alive deadline take this instead. It is never later
/// than the time, so a deadline made from it comes early rather than late. Off a worker's
/// thread (the gateway embedded in a multi-thread runtime, or a test's), where a task may
/// resume on a thread that has not read the clock lately, it reads the time.
pub fn recent() -> Instant {
    match RECENT.get() {
        Some(read) if on_worker() => read,
        _ => now(),
    }
}

/// The calling thread is a worker's, whose runtime lasts as long as the thread.
pub fn on_worker() -> bool {
    ON_WORKER.get()
}

/// Makes the calling thread worker `index`, the one its runtime runs on.
pub(crate) fn become_worker(index: usize) {
    INDEX.with(|c| c.set(index));
    ON_WORKER.set(true);
}

static COUNT: OnceLock<usize> = OnceLock::new();

/// How many workers this process runs (1 until [`start`] says otherwise).
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The calling thread's worker, `0..count()`.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// The runtime of worker 0, to be run on the calling thread, and handles to the runtimes of
/// workers 1..`workers`, each already running on a thread of its own. Call once, before the
/// gateway starts: per-worker state (the upstream connection pools) is sized from the count.
pub fn start(workers: usize) -> std::io::Result<(tokio::runtime::Runtime, Vec<tokio::runtime::Handle>)> {
    let workers = workers.max(1);
    if COUNT.set(workers).is_err() && count() != workers {
        return Err(std::io::Error::other("the worker count is set once per process"));
    }
    let main = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Worker 0's runtime runs on this thread.
    become_worker(0);
    let mut handles = Vec::with_capacity(workers - 1);
    let (running, started) = std::sync::mpsc::channel();
    for i in 1..workers {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(runtime.handle().clone());
        let running = running.clone();
        // Linux shows 15 bytes of a thread's name (`top -H`, /proc/PID/task/TID/comm).
        std::thread::Builder::new().name(format!("ferroway-w{i}")).spawn(move || {
            become_worker(i);
            let _ = running.send(());
            // Runs the tasks spawned onto it until the process exits.
            runtime.block_on(std::future::pending::<()>());
        })?;
    }
    // Every worker is running (named, with its index) before anything is spawned onto it.
    for _ in 1..workers {
        started.recv().map_err(|_| std::io::Error::other("a worker thread ended at start"))?;
    }
    Ok((main, handles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_is_a_worker_threads_last_reading_and_never_ahead_of_the_time() {
        std::thread::spawn(|| {
            // A worker's thread that has read nothing gets the time itself.
            become_worker(1);
            let before = Instant::now();
            assert!(recent() >= before);
            let read = now();
            assert_eq!(recent(), read, "recent() reads no clock once now() has been read");
            assert!(recent() <= Instant::now());
            let again = now();
            assert_eq!(recent(), again);
        })
        .join()
        .expect("worker thread");
    }

    #[test]
    fn off_a_worker_thread_recent_reads_the_time() {
        std::thread::spawn(|| {
            let read = now();
            // The clock has moved on since `read` (at its resolution).
            while Instant::now() == read {}
            let later = recent();
            assert!(later >= read);
            assert_ne!(later, read, "a thread that is no worker's does not trust its last reading");
        })
        .join()
        .expect("thread");
    }
}
