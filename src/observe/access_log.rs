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

use crate::config::{AccessLogDef, LogFormat, LogOutput, TemplatePiece};
use crate::proxy::body::Exchange;

const QUEUE: usize = 16 * 1024;

enum Msg {
    Line(String),
    /// Close and open the file again (after logrotate moved it).
    Reopen,
}

pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    format: LogFormat,
    pub dropped: AtomicU64,
}

fn open_file(path: &std::path::Path) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?))
}

impl AccessLog {
    pub fn open(def: &AccessLogDef) -> std::io::Result<Arc<AccessLog>> {
        let (out, path): (Box<dyn Write + Send>, _) = match &def.output {
            LogOutput::Off => {
                return Ok(Arc::new(AccessLog { tx: None, format: def.format.clone(), dropped: AtomicU64::new(0) }));
            }
            LogOutput::Stdout => (Box::new(std::io::stdout()), None),
            LogOutput::Stderr => (Box::new(std::io::stderr()), None),
            LogOutput::File(path) => (open_file(path)?, Some(path.clone())),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("ferroway-access-log".into()).spawn(move || drain(rx, out, path))?;
        Ok(Arc::new(AccessLog { tx: Some(tx), format: def.format.clone(), dropped: AtomicU64::new(0) }))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether lines need the Referer and User-Agent (the combined format, or a template that
    /// names them).
    pub fn wants_agent(&self) -> bool {
        match &self.format {
            LogFormat::Combined => true,
            LogFormat::Template(pieces) => {
                pieces.iter().any(|p| matches!(p, TemplatePiece::Field(f) if f == "referer" || f == "user_agent"))
            }
            LogFormat::Json => false,
        }
    }

    /// Reopens a file output (SIGUSR1, after logrotate has moved the file).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            // Blocking is fine: this is a signal handler's task, not a request.
            let _ = tx.send(Msg::Reopen);
        }
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            match tx.try_send(Msg::Line(line)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn drain(rx: Receiver<Msg>, out: Box<dyn Write + Send>, path: Option<std::path::PathBuf>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let handle = |msg: Msg, out: &mut std::io::BufWriter<Box<dyn Write + Send>>| match msg {
        Msg::Line(line) => {
            let _ = out.write_all(line.as_bytes());
        }
        Msg::Reopen => {
            let _ = out.flush();
            if let Some(path) = &path {
                match open_file(path) {
                    Ok(file) => *out = std::io::BufWriter::with_capacity(64 * 1024, file),
                    Err(e) => {
                        tracing::warn!(error = %e, path = %path.display(), "cannot reopen the access log; still writing to the old file")
                    }
                }
            }
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(msg, &mut out);
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut out);
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
    /// Referer and User-Agent, captured only for the combined format.
    pub agent: Option<(Option<HeaderValue>, Option<HeaderValue>)>,
    pub exchange: Option<Arc<Exchange>>,
    pub bytes_out: u64,
    pub error: Option<&'static str>,
    /// Who the request authenticated as: an API key id, or a JWT's `sub`.
    pub consumer: Option<Arc<str>>,
    /// The verified mTLS client certificate's subject.
    pub client_cert_subject: Option<Arc<str>>,
    /// The TLS version of the client's connection (`TLSv1.3`), on a TLS listener.
    pub tls: Option<&'static str>,
    /// Why a middleware refused the request, beyond its status (`auth_failed:expired`).
    pub decision: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert_subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a str>,
}

impl Entry {
    pub fn write(self) {
        if self.sink.format == LogFormat::Combined {
            let line = self.combined();
            self.sink.send(line);
            return;
        }
        let line = self.line();
        if let LogFormat::Template(pieces) = &self.sink.format {
            let text = self.templated(&line, pieces);
            self.sink.send(text);
            return;
        }
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            self.sink.send(text);
        }
    }

    fn line(&self) -> Line<'_> {
        Line {
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
            consumer: self.consumer.as_deref(),
            client_cert_subject: self.client_cert_subject.as_deref(),
            decision: self.decision.as_deref(),
            tls: self.tls,
        }
    }

    /// The line through a template: each field as the JSON line has it (strings unquoted), `-`
    /// for one the request does not have.
    fn templated(&self, line: &Line<'_>, pieces: &[TemplatePiece]) -> String {
        let fields = serde_json::to_value(line).unwrap_or_default();
        let agent = |i: usize| {
            self.agent
                .as_ref()
                .and_then(|a| if i == 0 { a.0.as_ref() } else { a.1.as_ref() })
                .and_then(|v| v.to_str().ok())
        };
        let mut out = String::with_capacity(128);
        for piece in pieces {
            match piece {
                TemplatePiece::Text(t) => out.push_str(t),
                TemplatePiece::Field(name) => {
                    let value = match name.as_str() {
                        "referer" => agent(0).map(str::to_owned),
                        "user_agent" => agent(1).map(str::to_owned),
                        _ => match fields.get(name) {
                            None | Some(serde_json::Value::Null) => None,
                            Some(serde_json::Value::String(s)) => Some(s.clone()),
                            Some(other) => Some(other.to_string()),
                        },
                    };
                    // One line per request, whatever a header held.
                    out.push_str(&value.map_or_else(|| "-".to_owned(), |v| v.replace(['\n', '\r'], " ")));
                }
            }
        }
        out.push('\n');
        out
    }
}

impl Entry {
    /// `client - - [date] "METHOD uri PROTO" status bytes "referer" "user-agent"`.
    fn combined(&self) -> String {
        let quoted = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "-".to_owned(), |s| s.replace('\\', "\\\\").replace('"', "\\\""))
        };
        let (referer, agent) =
            self.agent.as_ref().map_or(("-".to_owned(), "-".to_owned()), |(r, a)| (quoted(r), quoted(a)));
        let proto = match self.version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let bytes = if self.bytes_out == 0 { "-".to_owned() } else { self.bytes_out.to_string() };
        // The user field: a token's `sub` may hold anything, so only a plain word is written.
        let user = self
            .consumer
            .as_deref()
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .unwrap_or("-");
        format!(
            "{} - {user} [{}] \"{} {} {proto}\" {} {bytes} \"{referer}\" \"{agent}\"\n",
            self.client.ip(),
            clf_date(SystemTime::now()),
            self.method,
            self.uri,
            self.status
        )
    }
}

/// `24/Nov/2026:07:31:16 +0000` (UTC), the Common Log Format's date.
fn clf_date(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_dates_are_right() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_505_476);
        assert_eq!(clf_date(t), "24/Nov/2026:07:31:16 +0000");
        assert_eq!(clf_date(SystemTime::UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // 2024-02-29 12:00:00, a leap day.
        assert_eq!(clf_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_208_000)), "29/Feb/2024:12:00:00 +0000");
    }
}
