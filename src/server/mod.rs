//! Listeners and connections: accept TCP, serve HTTP/1.1 and HTTP/2 (prior knowledge) on the
//! same port with upgrades enabled, hand each request to the proxy, and drain on shutdown.
//!
//! Nothing here knows about routes or upstreams; it owns sockets, protocol settings and the
//! connection lifecycle.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Limits};
use crate::observe::access_log::AccessLog;
use crate::proxy::headers::Peer;
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

/// A started gateway: its bound addresses, and the handle that stops it.
pub struct Running {
    /// Listener name and the address it actually bound (useful with port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    graceful: Arc<GracefulShutdown>,
    shutdown_timeout: Duration,
}

impl Running {
    pub fn address(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == listener).map(|(_, a)| *a)
    }

    /// Stops accepting, lets open connections finish their in-flight requests (idle
    /// keep-alive connections are closed, HTTP/2 clients get GOAWAY), and cuts whatever is
    /// still open after the shutdown timeout. Returns how many connections were cut.
    pub async fn shutdown(mut self) -> usize {
        let _ = self.stop.send(true);
        while self.accept_loops.join_next().await.is_some() {}
        // Every accept loop (the only other holders) has ended.
        let Ok(graceful) = Arc::try_unwrap(self.graceful) else { return 0 };
        let open = graceful.count();
        match tokio::time::timeout(self.shutdown_timeout, graceful.shutdown()).await {
            Ok(()) => 0,
            Err(_) => open,
        }
    }
}

pub async fn start(config: &Config) -> Result<Running, StartError> {
    let access_log = AccessLog::open(&config.access_log).map_err(StartError::AccessLog)?;
    let gateway = Arc::new(Gateway::new(config, access_log)?);
    let mut bound = Vec::new();
    for l in &config.listeners {
        let address = l.address.value;
        let listener = TcpListener::bind(address).await.map_err(|source| StartError::Bind {
            name: l.name.value.clone(),
            address,
            source,
        })?;
        let actual =
            listener.local_addr().map_err(|source| StartError::Bind { name: l.name.value.clone(), address, source })?;
        bound.push((l.name.value.clone(), actual, listener));
    }
    let (stop, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let builder = Arc::new(connection_builder(&config.limits));
    let mut accept_loops = JoinSet::new();
    let mut listeners = Vec::new();
    for (name, addr, listener) in bound {
        tracing::info!(listener = %name, address = %addr, "listening");
        listeners.push((name, addr));
        accept_loops.spawn(accept_loop(listener, builder.clone(), gateway.clone(), graceful.clone(), stop_rx.clone()));
    }
    Ok(Running { listeners, gateway, stop, accept_loops, graceful, shutdown_timeout: config.shutdown_timeout })
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 by itself past its read buffer; keep that well above our own
    // max_header_bytes check so clients normally get the gateway's JSON answer instead.
    let header_buf = usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX).saturating_add(16 << 10).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(header_buf)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

async fn accept_loop(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
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
        let _ = stream.set_nodelay(true);
        let peer = Arc::new(Peer::new(addr, false));
        let gw = gateway.clone();
        let service = service_fn(move |req| {
            let gw = gw.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(crate::proxy::handle(req, &peer, &gw).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
