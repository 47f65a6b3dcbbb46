//! The access log: one JSON line per request, written when its response body ends.
//!
//! Requests hand finished lines to a bounded channel and never wait on the disk: a writer
//! thread drains the channel into a buffered writer and flushes whenever it runs dry. If the
//! writer falls behind, lines are dropped and counted rather than slowing traffic.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Version};
use serde::Serialize;

use crate::config::AccessLogDef;
use crate::proxy::body::Exchange;

const QUEUE: usize = 16 * 1024;

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    pub fn open(def: &AccessLogDef) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = match def {
            AccessLogDef::Off => return Ok(Arc::new(AccessLog { tx: None, dropped: AtomicU64::new(0) })),
            AccessLogDef::Stdout => Box::new(std::io::stdout()),
            AccessLogDef::Stderr => Box::new(std::io::stderr()),
            AccessLogDef::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("ferroway-access-log".into()).spawn(move || drain(rx, out))?;
        Ok(Arc::new(AccessLog { tx: Some(tx), dropped: AtomicU64::new(0) }))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn drain(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// Everything the log line needs, filled in as the request goes along.
pub struct Entry {
    pub sink: Arc<AccessLog>,
    pub start: Instant,
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub method: Method,
    pub uri: http::Uri,
    pub version: Version,
    pub route: Option<Arc<str>>,
    pub upstream_target: Option<Arc<str>>,
    pub status: u16,
    pub upstream_duration: Option<Duration>,
    /// Tries repeated on another target.
    pub retries: u32,
    /// The `traceparent` sent upstream (its trace id goes in the log).
    pub traceparent: Option<HeaderValue>,
    pub exchange: Option<Arc<Exchange>>,
    pub bytes_out: u64,
    pub error: Option<&'static str>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    client: String,
    method: &'a str,
    uri: String,
    proto: &'a str,
    status: u16,
    route: Option<&'a str>,
    upstream_target: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_duration_ms: Option<f64>,
    retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl Entry {
    pub fn write(self) {
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: self.request_id.to_str().unwrap_or("-"),
            client: self.client.ip().to_string(),
            method: self.method.as_str(),
            uri: self.uri.to_string(),
            proto: match self.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: self.status,
            route: self.route.as_deref(),
            upstream_target: self.upstream_target.as_deref(),
            bytes_in: self.exchange.as_ref().map_or(0, |e| e.bytes_in.load(Ordering::Relaxed)),
            bytes_out: self.bytes_out,
            duration_ms: ms(self.start.elapsed()),
            upstream_duration_ms: self.upstream_duration.map(ms),
            retries: self.retries,
            trace_id: self.traceparent.as_ref().and_then(|t| t.to_str().ok()).and_then(|t| t.get(3..35)),
            error: self.error,
        };
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            self.sink.send(text);
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
