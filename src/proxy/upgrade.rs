//! HTTP/1.1 protocol upgrades (RFC 9110 §7.8), WebSocket above all: the request goes through
//! routing and the route's middleware like any other, is forwarded with its `Connection:
//! upgrade` and `Upgrade` fields (hop-by-hop fields the proxy otherwise drops), and only a
//! `101 Switching Protocols` from the upstream turns the two connections into a byte pipe.
//!
//! Any other answer is an ordinary response, and the client connection stays an HTTP
//! connection whose next request is parsed and routed on its own (no upgrade smuggling).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Version;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::Hold;
use crate::server::h1::PendingUpgrade;

/// Where the upstream's switched connection comes from: the gateway's own HTTP/1.1 client, or
/// hyper's.
pub enum UpstreamSide {
    H1(crate::upstream::h1::Upgraded),
    Hyper(OnUpgrade),
}

impl UpstreamSide {
    async fn upgraded(self) -> Result<Box<dyn Switched>, String> {
        match self {
            UpstreamSide::H1(u) => Ok(Box::new(u)),
            UpstreamSide::Hyper(o) => {
                o.await.map(|u| Box::new(TokioIo::new(u)) as Box<dyn Switched>).map_err(|e| e.to_string())
            }
        }
    }
}

/// A client's request to switch protocols.
pub struct Requested {
    on_upgrade: ClientSide,
    protocol: HeaderValue,
}

/// Where the client's switched connection comes from: the gateway's HTTP/1.1 codec, or hyper.
enum ClientSide {
    H1(PendingUpgrade),
    Hyper(OnUpgrade),
}

/// A switched client connection, whichever server side it came from.
trait Switched: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Switched for T {}

impl ClientSide {
    async fn upgraded(self) -> Result<Box<dyn Switched>, String> {
        match self {
            ClientSide::H1(p) => p.switched().await.map(|s| Box::new(s) as Box<dyn Switched>).map_err(str::to_owned),
            ClientSide::Hyper(o) => {
                o.await.map(|u| Box::new(TokioIo::new(u)) as Box<dyn Switched>).map_err(|e| e.to_string())
            }
        }
    }
}

/// The upgrade a request asks for, read before hop-by-hop fields are stripped: HTTP/1.1 with
/// an `Upgrade` field and `upgrade` among its `Connection` options.
pub fn requested(version: Version, headers: &HeaderMap, extensions: &mut http::Extensions) -> Option<Requested> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = super::headers::list_items(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let protocol = headers.get(header::UPGRADE)?.clone();
    let on_upgrade = match extensions.remove::<PendingUpgrade>() {
        Some(p) => ClientSide::H1(p),
        None => ClientSide::Hyper(extensions.remove::<OnUpgrade>()?),
    };
    Some(Requested { on_upgrade, protocol })
}

impl Requested {
    /// Puts the upgrade request back on the headers going upstream.
    pub fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// After a 101 from the upstream: pipes the client's connection and the upstream's both
    /// ways once both have switched, until either side closes, neither sends a byte for
    /// `idle`, or shutdown cuts it (`hold` keeps it in the server's open count until then).
    pub fn tunnel(self, upstream: UpstreamSide, idle: Duration, mut hold: Option<Hold>) {
        tokio::spawn(async move {
            let (client, upstream) = match tokio::join!(self.on_upgrade.upgraded(), upstream.upgraded()) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
                (_, Err(e)) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let start = Instant::now();
            let last = Arc::new(AtomicU64::new(0));
            let mut client = Active { io: client, last: last.clone(), start };
            let mut upstream = Active { io: upstream, last: last.clone(), start };
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            let quiet = async {
                loop {
                    let since = elapsed_ms(start).saturating_sub(last.load(Ordering::Relaxed));
                    if since >= idle_ms {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
                }
            };
            tokio::select! {
                piped = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = piped {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                }
                () = quiet => tracing::debug!("upgraded connection idle: closed"),
                () = async {
                    match hold.as_mut() {
                        Some(h) => h.cut().await,
                        None => std::future::pending().await,
                    }
                } => tracing::debug!("upgraded connection cut by shutdown"),
            }
        });
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An upgraded connection that records when bytes last arrived, for the idle timeout.
struct Active<T> {
    io: T,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(elapsed_ms(self.start), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
