//! Listeners and connections: accept TCP, serve HTTP/1.1 (the gateway's own codec, `h1`) and
//! HTTP/2 (hyper; prior knowledge in cleartext, ALPN over TLS) on the same port with upgrades
//! enabled, hand each request to the proxy, reload without dropping a connection, and drain on
//! shutdown.
//!
//! Nothing here knows about routes or upstreams; it owns sockets, protocol settings and the
//! connection lifecycle. The listener set is behind a mutex that only reload and shutdown
//! take, never a request.

pub mod acme;
mod file_watch;
pub mod h1;
#[cfg(unix)]
mod park;
pub mod tls;

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError, Limits};
use crate::observe::access_log::AccessLog;
use crate::proxy::headers::Peer;
use crate::rewind::Rewind;
use crate::send::PlainWrites;
use crate::snapshot::{CompileError, Gateway};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name}: cannot bind {address}: {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("listener {name}: cannot bind {address}: {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error("no config file to reload from (the gateway was started from text)")]
    NoFile,
}

/// What a successful reload changed in the listener set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadSummary {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
}

struct ListenerHandle {
    name: String,
    /// As configured (may have port 0); reloads compare this, not the bound address.
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    /// One accept loop per worker.
    tasks: Vec<JoinHandle<()>>,
}

/// Open connections (upgraded ones included), a wake-up when the last one ends (for
/// draining), and the signal that cuts upgraded connections when the shutdown timeout ends.
pub struct Connections {
    open: AtomicUsize,
    drained: Notify,
    cut: watch::Sender<bool>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { open: AtomicUsize::new(0), drained: Notify::new(), cut: watch::channel(false).0 }
    }
}

impl Connections {
    fn guard(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// For a connection that leaves hyper by an upgrade: it still counts as open (metrics,
    /// drain) until the tunnel ends. Taken while the HTTP connection's own count is held, so
    /// the count never dips to zero in between.
    pub fn hold(self: &Arc<Self>) -> Hold {
        Hold { _guard: self.guard(), cut: self.cut.subscribe() }
    }
}

/// An upgraded connection's place in the open count.
pub struct Hold {
    _guard: ConnectionGuard,
    cut: watch::Receiver<bool>,
}

impl Hold {
    /// Resolves when shutdown gives up waiting and cuts what is still open.
    pub async fn cut(&mut self) {
        let _ = self.cut.wait_for(|c| *c).await;
    }
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Shared by the accept loops, the admin listener and whoever holds `Running`.
pub struct Control {
    pub gateway: Arc<Gateway>,
    listeners: Mutex<Vec<ListenerHandle>>,
    protocols: ArcSwap<Protocols>,
    connections: Arc<Connections>,
    /// Tells every open connection to finish its in-flight requests and close.
    drain: watch::Sender<bool>,
    shutting_down: AtomicBool,
    shutdown_timeout: Duration,
    config_path: Option<PathBuf>,
    /// Serialises reloads (SIGHUP, admin, file watch) without touching the request path.
    reloading: tokio::sync::Mutex<()>,
    /// Successful reloads so far: the file watch re-reads its file set on each, and anyone
    /// may await the next (`reloads`).
    reloaded: watch::Sender<u64>,
    admin_address: Mutex<Option<SocketAddr>>,
    /// The last reloads, newest last, for the dashboard.
    reload_history: Mutex<std::collections::VecDeque<ReloadRecord>>,
    /// The runtimes of workers 1.. (see `crate::worker`); worker 0's is the one the gateway
    /// was started on. Each accepts on every listener.
    workers: Vec<tokio::runtime::Handle>,
    /// Idle HTTP/1.1 connections parked without a task (`keepalive_park_after`).
    #[cfg(unix)]
    lots: park::Lots,
}

/// One reload as the dashboard lists it.
#[derive(Clone, Debug)]
pub struct ReloadRecord {
    pub at: std::time::SystemTime,
    pub ok: bool,
    /// The first line of the error, for a failed one.
    pub error: Option<String>,
}

const RELOAD_HISTORY: usize = 20;

/// A started gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub control: Arc<Control>,
}

impl Running {
    /// Listener names and the addresses they actually bound (useful with port 0).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.control.listeners()
    }

    pub fn address(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners().into_iter().find(|(n, _)| n == listener).map(|(_, a)| a)
    }

    /// See [`Control::shutdown`].
    pub async fn shutdown(self) -> usize {
        self.control.shutdown().await
    }
}

impl Control {
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.lock_listeners().iter().map(|l| (l.name.clone(), l.bound)).collect()
    }

    /// Where the admin listener bound, if there is one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        *self.admin_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_admin_address(&self, addr: SocketAddr) {
        *self.admin_address.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<ListenerHandle>> {
        // Poisoning only means a reload panicked; the list itself is still consistent.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reloads whenever the config file changes (see `file_watch`); the watch ends with the task.
    pub fn watch_config(self: &Arc<Self>) -> Result<Option<JoinHandle<()>>, notify::Error> {
        match &self.config_path {
            Some(path) => file_watch::watch_config(self.clone(), path).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the config file again and reloads it.
    pub async fn reload_from_file(self: &Arc<Self>) -> Result<ReloadSummary, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        match config::load(path) {
            Ok(config) => self.reload(&config).await,
            Err(e) => {
                self.gateway.metrics().reloads_failed.fetch_add(1, Ordering::Relaxed);
                let e = ReloadError::from(e);
                self.record_reload(Err(&e));
                Err(e)
            }
        }
    }

    fn record_reload(&self, result: Result<(), &ReloadError>) {
        let mut history = self.reload_history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        let error = result.err().map(|e| e.to_string().lines().next().unwrap_or_default().to_owned());
        history.push_back(ReloadRecord { at: std::time::SystemTime::now(), ok: error.is_none(), error });
    }

    /// The count of successful reloads, which changes with each one.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// The last reloads (up to 20), oldest first.
    pub fn reload_history(&self) -> Vec<ReloadRecord> {
        self.reload_history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Client connections open right now (parked ones included).
    pub fn open_connections(&self) -> usize {
        self.connections.open.load(Ordering::Relaxed)
    }

    /// Idle client connections parked right now (see `keepalive_park_after`).
    pub fn parked_connections(&self) -> usize {
        #[cfg(unix)]
        return self.lots.parked();
        #[cfg(not(unix))]
        0
    }

    /// Applies a new config as a whole or not at all: the snapshot is compiled and new
    /// listeners are bound before anything changes; then the snapshot is swapped in and
    /// listeners the config no longer has stop accepting (their open connections finish).
    /// Changes to `access_log` and `workers` take a restart.
    pub async fn reload(self: &Arc<Self>, config: &Config) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config).await;
        let counter =
            if result.is_ok() { &self.gateway.metrics().reloads_ok } else { &self.gateway.metrics().reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.record_reload(result.as_ref().map(|_| ()));
        result
    }

    async fn apply(self: &Arc<Self>, config: &Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let snapshot = self.gateway.prepare(config)?;
        let existing: Vec<(String, SocketAddr)> =
            self.lock_listeners().iter().map(|l| (l.name.clone(), l.configured)).collect();
        let mut fresh = Vec::new();
        for l in &config.listeners {
            let (name, address) = (l.name.value.clone(), l.address.value);
            if existing.contains(&(name.clone(), address)) {
                continue;
            }
            match bind(address, 1 + self.workers.len()).await {
                Ok((listeners, bound)) => fresh.push((name, address, bound, listeners)),
                Err(source) => return Err(ReloadError::Bind { name, address, source }),
            }
        }
        self.gateway.install(snapshot);
        self.reloaded.send_modify(|n| *n += 1);
        self.protocols.store(Arc::new(Protocols::new(&config.limits)));
        let wanted: Vec<(String, SocketAddr)> =
            config.listeners.iter().map(|l| (l.name.value.clone(), l.address.value)).collect();
        let mut summary = ReloadSummary::default();
        let mut list = self.lock_listeners();
        list.retain(|l| {
            let keep = wanted.contains(&(l.name.clone(), l.configured));
            if !keep {
                tracing::info!(listener = %l.name, address = %l.bound, "listener removed");
                let _ = l.stop.send(true);
                summary.listeners_removed.push(l.name.clone());
            }
            keep
        });
        for (name, configured, bound, listeners) in fresh {
            tracing::info!(listener = %name, address = %bound, "listening");
            summary.listeners_added.push(name.clone());
            list.push(self.spawn_listener(name, configured, bound, listeners));
        }
        Ok(summary)
    }

    /// Stops accepting, lets open connections finish their in-flight requests (idle
    /// keep-alive connections are closed, HTTP/2 clients get GOAWAY), and cuts whatever is
    /// still open after the shutdown timeout. Returns how many connections were cut.
    pub async fn shutdown(&self) -> usize {
        self.shutting_down.store(true, Ordering::Release);
        let listeners: Vec<ListenerHandle> = self.lock_listeners().drain(..).collect();
        for l in &listeners {
            let _ = l.stop.send(true);
        }
        for task in listeners.into_iter().flat_map(|l| l.tasks) {
            let _ = task.await;
        }
        let _ = self.drain.send(true);
        let drained = async {
            loop {
                let wait = self.connections.drained.notified();
                tokio::pin!(wait);
                wait.as_mut().enable();
                if self.connections.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                wait.await;
            }
        };
        let cut = match tokio::time::timeout(self.shutdown_timeout, drained).await {
            Ok(()) => 0,
            Err(_) => {
                // Upgraded connections have no HTTP-level goodbye; they end here.
                self.connections.cut.send_replace(true);
                self.connections.open.load(Ordering::Acquire)
            }
        };
        if let Some(exporter) = &self.gateway.tracing {
            exporter.flush().await;
        }
        cut
    }

    /// Starts an accept loop on each worker, each with its own descriptor of the socket
    /// (`listeners`, one per worker, from [`bind`]).
    fn spawn_listener(
        self: &Arc<Self>,
        name: String,
        configured: SocketAddr,
        bound: SocketAddr,
        listeners: Vec<std::net::TcpListener>,
    ) -> ListenerHandle {
        // Linux copies TCP_NODELAY from the listener to each accepted socket: one call per
        // listening socket instead of one per connection (`accept_loop` sets it per connection
        // elsewhere).
        #[cfg(target_os = "linux")]
        for l in &listeners {
            if let Err(e) = socket2::SockRef::from(l).set_tcp_nodelay(true) {
                tracing::warn!(listener = %name, error = %e, "TCP_NODELAY on the listener failed");
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let runtimes = std::iter::once(tokio::runtime::Handle::current()).chain(self.workers.iter().cloned());
        let shared_name = Arc::<str>::from(name.as_str());
        let tasks = listeners
            .into_iter()
            .zip(runtimes)
            .map(|(listener, runtime)| {
                let (name, control, stop_rx) = (shared_name.clone(), self.clone(), stop_rx.clone());
                // Registered with the reactor of the worker that runs the loop, so it is made there.
                runtime.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, name, control, stop_rx).await,
                        Err(e) => {
                            tracing::error!(listener = %name, error = %e, "a worker cannot accept on the listener")
                        }
                    }
                })
            })
            .collect();
        ListenerHandle { name, configured, bound, stop, tasks }
    }
}

pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_with_file(config, None).await
}

/// Starts the gateway; `config_path` is where reloads read the config again.
pub async fn start_with_file(config: &Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    start_on_workers(config, config_path, Vec::new()).await
}

/// Binds `address`: one socket per worker, each registered with its own worker's reactor.
/// Non-blocking, as tokio binds (SO_REUSEADDR, a backlog of 1024).
///
/// Several workers get a socket each in one `SO_REUSEPORT` group, so that the kernel spreads
/// new connections over them. One socket shared by all (a descriptor each) woke every worker
/// for each connection, and the first to run took whole bursts: two workers split 128 new
/// connections 2:1 or 1:3 (by each thread's CPU time), which one worker's queue then paid for
/// in p99. A plain bind first tells an address in use, another gateway's group included (a
/// group would otherwise take in a second gateway of the same user without a word).
async fn bind(address: SocketAddr, workers: usize) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let listener = TcpListener::bind(address).await?.into_std()?;
    let bound = listener.local_addr()?;
    if workers <= 1 {
        defer_accept(&listener);
        return Ok((vec![listener], bound));
    }
    drop(listener);
    let group = (0..workers)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::for_address(bound), socket2::Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&bound.into())?;
            socket.listen(1024)?;
            let listener = socket.into();
            defer_accept(&listener);
            Ok(listener)
        })
        .collect::<std::io::Result<Vec<std::net::TcpListener>>>()?;
    Ok((group, bound))
}

/// Has the kernel hand over a new connection once its first bytes are there (Linux's
/// `TCP_DEFER_ACCEPT`; NGINX's `listen ... deferred`, HAProxy's `defer-accept`). Every protocol
/// a listener serves (HTTP/1.1, h2c, TLS) has the client speak first, so the first read after
/// accepting finds the request instead of an empty socket to wait on: 19% less CPU per new
/// connection (bench/RESULTS.md, session 31), and a connection that never sends costs nothing
/// here. A client that connects and stays silent is handed over after about a second anyway
/// (when the kernel retransmits its SYN-ACK), and then meets the header timeout as before.
/// Best effort: where the option is missing, connections are accepted at once, as before.
/// A `setsockopt` by hand: socket2, which sets the listeners' other options, has no setter
/// for this one.
fn defer_accept(listener: &std::net::TcpListener) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let seconds: libc::c_int = 1;
        // SAFETY: the descriptor is the listener's own and open for the call; the value is a
        // c_int that lives across the call, and its size goes with it.
        let done = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&seconds as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_DEFER_ACCEPT not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// Starts the gateway on the runtime it is called on (worker 0) and on `workers`, the
/// runtimes of the other workers (`crate::worker::start`).
pub async fn start_on_workers(
    config: &Config,
    config_path: Option<PathBuf>,
    workers: Vec<tokio::runtime::Handle>,
) -> Result<Running, StartError> {
    let access_log = AccessLog::open(&config.access_log).map_err(StartError::AccessLog)?;
    let gateway = Arc::new(Gateway::new(config, access_log)?);
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (name, address) = (l.name.value.clone(), l.address.value);
        match bind(address, 1 + workers.len()).await {
            Ok((listeners, actual)) => bound.push((name, address, actual, listeners)),
            Err(source) => return Err(StartError::Bind { name, address, source }),
        }
    }
    let control = Arc::new(Control {
        gateway: gateway.clone(),
        listeners: Mutex::new(Vec::new()),
        protocols: ArcSwap::from_pointee(Protocols::new(&config.limits)),
        connections: Arc::default(),
        drain: watch::channel(false).0,
        shutting_down: AtomicBool::new(false),
        shutdown_timeout: config.shutdown_timeout,
        config_path,
        reloading: tokio::sync::Mutex::new(()),
        reloaded: watch::channel(0).0,
        admin_address: Mutex::new(None),
        reload_history: Mutex::new(std::collections::VecDeque::with_capacity(RELOAD_HISTORY)),
        workers,
        #[cfg(unix)]
        lots: park::Lots::new(),
    });
    let handles: Vec<ListenerHandle> = bound
        .into_iter()
        .map(|(name, configured, actual, listeners)| {
            tracing::info!(listener = %name, address = %actual, "listening");
            control.spawn_listener(name, configured, actual, listeners)
        })
        .collect();
    control.lock_listeners().extend(handles);
    if let Some(admin) = &config.admin {
        crate::admin::start(admin, control.clone()).await.map_err(|source| StartError::Bind {
            name: "admin".into(),
            address: admin.address.value,
            source,
        })?;
    }
    Ok(Running { gateway, control })
}

/// How client connections are served, as of the last reload.
struct Protocols {
    h1: h1::Settings,
    h2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Self {
        // The head may be this much longer than `max_header_bytes` (the request line, the
        // separators) before the codec answers 431 itself; the proxy checks the fields exactly.
        let max_head = usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX).saturating_add(16 << 10);
        let h1 = h1::Settings {
            max_head,
            header_timeout: limits.client_header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            body_timeout: limits.client_body_timeout,
            // Parking is for connections that wait long; one that would time out first stays.
            park_after: limits.keepalive_park_after.filter(|p| cfg!(unix) && *p < limits.keepalive_timeout),
        };
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            // Rapid reset (CVE-2023-44487): a connection whose client resets more than 20
            // streams before they are served, or makes the gateway reset more than 1024, gets
            // GOAWAY ENHANCE_YOUR_CALM. The header list limit also bounds CONTINUATION floods.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024);
        Protocols { h1, h2 }
    }
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Inherited from the listener on Linux (see `spawn_listener`).
        #[cfg(not(target_os = "linux"))]
        let _ = stream.set_nodelay(true);
        // The listener's settings as of this connection; a reload applies to later ones.
        let Some(runtime) = control.gateway.snapshot().listeners.get(&*name).cloned() else { continue };
        let guard = control.connections.guard();
        let control = control.clone();
        let redirect = runtime.redirect_https;
        let task = async move {
            // The peer is made in each arm, not before the `match`: a local that lives across
            // an `.await` takes room in the task for as long as the connection is open.
            match &runtime.tls {
                None => serve_plain(stream, Arc::new(peer_of(addr, false, redirect, &control)), control, guard).await,
                // Boxed, like HTTP/2 below: a plain HTTP/1.1 connection's task then carries
                // neither the handshake's state nor hyper's HTTP/2 connection.
                Some(tls) => {
                    Box::pin(async move {
                        let _guard = guard;
                        let mut peer = peer_of(addr, true, redirect, &control);
                        let tls_stream =
                            match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(PlainWrites(stream)))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    control.gateway.metrics().tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    control.gateway.metrics().tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(client = %addr, "TLS handshake timed out");
                                    return;
                                }
                            };
                        // RFC 8737 §3: a validation connection ends once the handshake is done.
                        if tls_stream.get_ref().1.alpn_protocol() == Some(acme::ACME_TLS_ALPN) {
                            return;
                        }
                        peer.client_cert_subject = tls::client_subject(tls_stream.get_ref().1);
                        peer.tls_version = match tls_stream.get_ref().1.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
                            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
                            _ => None,
                        };
                        serve_tls(tls_stream, peer, &control).await
                    })
                    .await
                }
            }
        };
        tokio::spawn(task);
    }
}

/// A client's TLS connection. rustls writes its records vectored whenever the socket allows,
/// nearly always one record at a time: `PlainWrites` makes those `send`s (`crate::send`).
pub type TlsConn = tokio_rustls::server::TlsStream<PlainWrites<TcpStream>>;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client side of a connection accepted on a listener.
fn peer_of(addr: SocketAddr, tls: bool, redirect_https: Option<u16>, control: &Control) -> Peer {
    let mut peer = Peer::new(addr, tls);
    peer.redirect_https = redirect_https;
    peer.connections = Some(control.connections.clone());
    peer
}

/// Serves a cleartext connection: HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1.
///
/// An `async move` block rather than an `async fn`, like `h1::serve`: its state is what an
/// idle connection costs, and an `async fn` would keep its arguments in it twice.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
fn serve_plain(
    mut stream: TcpStream,
    peer: Arc<Peer>,
    control: Arc<Control>,
    guard: ConnectionGuard,
) -> impl Future<Output = ()> {
    async move {
        let protocols = control.protocols.load_full();
        let mut drain = control.drain.subscribe();
        // The first bytes are waited for with no buffer, like any idle keep-alive connection.
        let mut buf = BytesMut::new();
        let first = poll_fn(|cx| h1::poll_read_when_ready(&mut stream, &mut buf, cx));
        tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => return,
            read = tokio::time::timeout(protocols.h1.keepalive_timeout, first) => if !matches!(read, Ok(Ok(n)) if n > 0) { return },
        }
        let Some(buf) = sniff(&stream, buf, protocols.h1.header_timeout).await else { return };
        if buf.starts_with(H2_PREFACE) {
            let _guard = guard;
            // hyper's HTTP/2 writes vectored whenever it may: `PlainWrites` sends one piece with
            // `send` (`crate::send`), as under rustls.
            let io = TokioIo::new(Rewind::new(buf.freeze(), PlainWrites(stream), ()));
            Box::pin(serve_h2(io, peer, &control, &protocols.h2)).await;
        } else {
            serve_h1(stream, buf, peer, control, guard, drain, protocols.h1).await;
        }
    }
}

/// HTTP/1.1 on a plain connection, `buf` what was read of it already. It parks when idle for
/// `settings.park_after` (never without one). A plain function, not an `async` one: the
/// future is `h1::serve`'s own, with nothing kept beside it in an idle connection's task.
fn serve_h1(
    stream: TcpStream,
    buf: BytesMut,
    peer: Arc<Peer>,
    control: Arc<Control>,
    guard: ConnectionGuard,
    drain: watch::Receiver<bool>,
    settings: h1::Settings,
) -> impl Future<Output = ()> {
    let (read, write) = stream.into_split();
    let reader = h1::Reader::new(h1::ReadSide::Tcp(read), buf);
    let gw = control.gateway.clone();
    h1::serve(reader, h1::WriteSide::Tcp(write), peer, gw, drain, settings, Some(Parking { control, guard }))
}

/// What parking an idle plain HTTP/1.1 connection takes (`server::park`): the gateway, to
/// serve it again, and the connection's place in the open count, which it keeps while parked.
pub struct Parking {
    control: Arc<Control>,
    guard: ConnectionGuard,
}

impl Parking {
    /// Parks `stream` (idle, nothing buffered) until the client sends or closes, or `until`
    /// (its keep-alive timeout). If it cannot be parked, a new task serves it on, unparked.
    pub fn park(self, stream: TcpStream, until: tokio::time::Instant, peer: &Peer) {
        let Parking { control, guard } = self;
        let Ok(stream) = stream.into_std() else { return };
        #[cfg(unix)]
        let parked = park::Parked { stream, addr: peer.addr, redirect_https: peer.redirect_https, until, guard };
        #[cfg(unix)]
        let Err(park::Parked { stream, guard, .. }) = control.lots.park(&control, parked) else { return };
        let _ = until;
        tokio::spawn(serve_idle(stream, peer.addr, peer.redirect_https, control, guard, false));
    }
}

/// Serves, as a new task, a plain HTTP/1.1 connection that was idle with nothing buffered: a
/// parked one the client sent to (or closed), or one that could not be parked (`park`: false,
/// it is then not parked again). Its `Peer` is made anew; parked, it kept only the address.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
fn serve_idle(
    stream: std::net::TcpStream,
    addr: SocketAddr,
    redirect_https: Option<u16>,
    control: Arc<Control>,
    guard: ConnectionGuard,
    park: bool,
) -> impl Future<Output = ()> {
    async move {
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(client = %addr, error = %e, "an idle connection could not be served again");
                return;
            }
        };
        let peer = Arc::new(peer_of(addr, false, redirect_https, &control));
        let mut settings = control.protocols.load().h1;
        if !park {
            settings.park_after = None;
        }
        let drain = control.drain.subscribe();
        serve_h1(stream, BytesMut::new(), peer, control, guard, drain, settings).await;
    }
}

/// Reads on from a connection's first bytes until they tell the HTTP/2 preface from HTTP/1.1
/// (at once, for HTTP/1.1: its first byte differs); `None` when the client closed or stalled
/// longer than `timeout`.
async fn sniff(stream: &TcpStream, mut buf: BytesMut, timeout: Duration) -> Option<BytesMut> {
    let read = async {
        loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                return true;
            }
            if stream.readable().await.is_err() {
                return false;
            }
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(true) => Some(buf),
        _ => None,
    }
}

/// Serves a TLS connection: HTTP/2 when ALPN chose it, else HTTP/1.1.
async fn serve_tls(stream: TlsConn, peer: Peer, control: &Control) {
    let protocols = control.protocols.load_full();
    let peer = Arc::new(peer);
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(serve_h2(TokioIo::new(stream), peer, control, &protocols.h2)).await;
    } else {
        let (read, write) = tokio::io::split(stream);
        let reader = h1::Reader::new(h1::ReadSide::Tls(read), BytesMut::new());
        let gw = control.gateway.clone();
        h1::serve(reader, h1::WriteSide::Tls(write), peer, gw, control.drain.subscribe(), protocols.h1, None).await;
    }
}

/// Serves HTTP/2 on one connection until it ends or the gateway drains (then GOAWAY, and the
/// streams in flight finish).
async fn serve_h2<I>(io: I, peer: Arc<Peer>, control: &Control, builder: &http2::Builder<TokioExecutor>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let gw = control.gateway.clone();
    // Each stream's future is boxed: hyper spawns a task per stream around it, and the request
    // path's future (~3.6 KB) was moved by value seven times on the way into and out of the
    // task (hyper's `H2Stream`, tokio's task cell and its stages): ~25 KB of `memcpy` per
    // request. Boxed, those moves are a pointer's; the box is one allocation.
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        let peer = peer.clone();
        Box::pin(async move {
            let req = req.map(crate::proxy::body::ClientBody::Hyper);
            Ok::<_, Infallible>(crate::proxy::handle(req, &peer, &gw).await)
        })
    });
    let mut drain = control.drain.subscribe();
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = drain.wait_for(|d| *d) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    /// What an idle plain connection costs until it is parked is mostly this future (its tokio
    /// task adds a header and rounds up to 128 bytes): about 620 bytes when written, 690 with
    /// what parking takes (the connection's guard, the parking settings), 1 256 before the idle
    /// work. A local that lives across an `.await`, or an `async fn` that keeps its arguments
    /// twice, grows every idle connection.
    #[tokio::test]
    async fn a_plain_connection_future_stays_small() {
        let yaml = "listeners: [{ name: l, address: 127.0.0.1:0 }]\naccess_log: { output: off }\n\
                    upstreams: { u: { targets: [{ address: 127.0.0.1:9 }] } }\n\
                    routes: [{ name: r, match: { path_prefix: / }, upstream: u }]\n";
        let config = crate::config::load_str(yaml, Path::new("t.yaml"), HashMap::new()).expect("a valid config");
        let running = start(&config).await.expect("the gateway starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (stream, addr) = listener.accept().await.expect("accept");
        let control = running.control.clone();
        let guard = control.connections.guard();
        let future = serve_plain(stream, Arc::new(peer_of(addr, false, None, &control)), control, guard);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 768, "a plain connection's future is {size} bytes");
    }

    /// A listener's sockets, one worker's or a group's, take connections once the client has
    /// sent something (`defer_accept`): what makes a new connection 19% cheaper.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn listeners_are_handed_connections_once_their_first_bytes_are_there() {
        use std::os::fd::AsRawFd;
        for workers in [1, 2] {
            let (listeners, _) = bind("127.0.0.1:0".parse().expect("an address"), workers).await.expect("bind");
            assert_eq!(listeners.len(), workers);
            for listener in &listeners {
                let mut seconds: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: the listener's own open descriptor; `seconds` and `len` outlive the
                // call and `len` is `seconds`'s size.
                let done = unsafe {
                    libc::getsockopt(
                        listener.as_raw_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_DEFER_ACCEPT,
                        (&mut seconds as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
                assert!(seconds > 0, "TCP_DEFER_ACCEPT is off on a socket of {workers} worker(s)");
            }
        }
    }
}
