//! The config file's top level (listeners, admin, limits, access log, runtime), and how it is
//! read from the YAML tree; routes and upstreams have their own modules.
//!
//! Values are parsed into their real types here (durations, sizes, addresses, methods, header
//! names, regexes) so nothing past this module ever parses configuration text. A field that
//! fails to decode is reported and replaced by its default, so one mistake does not hide others.

use std::net::SocketAddr;
use std::time::Duration;

use super::decode::{ByteSize, Decode, Dur, Fields, Located, Problems, item_path, parse_str};
use super::middleware::{MiddlewareDef, RedisDef, TracingDef, decode_middleware};
use super::node::{Node, Value};
use super::route::{RouteDef, decode_route};
use super::upstream::{UpstreamDef, decode_upstreams};

pub const DEFAULT_MAX_REQUEST_BODY: u64 = 10 << 20;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 << 10;
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_KEEPALIVE_PARK_AFTER: Option<Duration> = Some(Duration::from_secs(1));

#[derive(Debug)]
pub struct Config {
    pub listeners: Vec<ListenerDef>,
    pub admin: Option<AdminDef>,
    /// Upstreams by name, in file order; `None` where the definition itself was unreadable
    /// (already reported), so references to it are not reported a second time.
    pub upstreams: Vec<(Located<String>, Option<UpstreamDef>)>,
    pub routes: Vec<RouteDef>,
    pub limits: Limits,
    pub access_log: AccessLogDef,
    pub shutdown_timeout: Duration,
    /// Worker threads; `None` means one per available CPU.
    pub workers: Option<usize>,
    /// Reload when the config file changes.
    pub watch: bool,
    /// The gateway's own log level when `RUST_LOG` is not set.
    pub log_level: String,
    /// Middleware by name, in file order (those whose definition could be read).
    pub middleware: Vec<MiddlewareDef>,
    /// Every middleware name defined, readable or not, so a route naming one whose definition
    /// was already reported is not reported a second time.
    pub middleware_names: Vec<String>,
    /// Peers allowed to say who the client is through `X-Forwarded-For`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub redis: Option<RedisDef>,
    /// OTLP span export; a change takes a restart.
    pub tracing: Option<TracingDef>,
    /// The document as loaded (after `${ENV}`), secrets redacted: what `GET /config` shows.
    pub document: std::sync::Arc<serde_json::Value>,
}

#[derive(Debug)]
pub struct ListenerDef {
    pub name: Located<String>,
    pub address: Located<SocketAddr>,
    pub tls: Option<super::tls::ServerTlsDef>,
    /// Answer every request with a 308 to the same URL on the first TLS listener.
    pub redirect_to_https: Option<Located<bool>>,
}

#[derive(Debug)]
pub struct AdminDef {
    pub address: Located<SocketAddr>,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_request_body: u64,
    pub max_header_bytes: u64,
    /// Longest pause allowed between pieces of a request body before the gateway answers 408.
    pub client_body_timeout: Duration,
    /// Longest a request head may take to arrive once it has begun.
    pub client_header_timeout: Duration,
    /// Longest an HTTP/1.1 client connection may stay open with no request.
    pub keepalive_timeout: Duration,
    /// How long a plain HTTP/1.1 client connection waits idle before it is parked (its task
    /// and buffers freed, `server::park`); `None` (`off`) never parks.
    pub keepalive_park_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogDef {
    pub output: LogOutput,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogOutput {
    Off,
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGUSR1 (for logrotate).
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    Json,
    /// The NCSA combined log format, as NGINX and Apache write it.
    Combined,
    /// `template: "{client} {method} {uri} {status}"`: the JSON line's fields by name.
    Template(std::sync::Arc<[TemplatePiece]>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePiece {
    Text(String),
    Field(String),
}

/// What a template may name: the JSON line's fields, and the two the combined format adds.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "ts",
    "request_id",
    "client",
    "method",
    "uri",
    "proto",
    "status",
    "route",
    "upstream_target",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_duration_ms",
    "retries",
    "trace_id",
    "error",
    "decision",
    "consumer",
    "client_cert_subject",
    "tls",
    "referer",
    "user_agent",
];

/// `{field}` placeholders and text; `{{` and `}}` are literal braces.
fn parse_template(t: &str) -> Result<Vec<TemplatePiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                if !TEMPLATE_FIELDS.contains(&name.as_str()) {
                    let near = super::decode::did_you_mean(&name, TEMPLATE_FIELDS)
                        .map_or_else(String::new, |n| format!("did you mean {{{n}}}? "));
                    return Err(format!("unknown field {{{name}}}; {near}fields: {}", TEMPLATE_FIELDS.join(", ")));
                }
                if !text.is_empty() {
                    pieces.push(TemplatePiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(TemplatePiece::Field(name));
            }
            '}' => return Err("a lone `}`; write `}}` for a literal brace".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(TemplatePiece::Text(text));
    }
    Ok(pieces)
}

pub fn decode_config(node: &Node, p: &mut Problems) -> Config {
    const KEYS: &[&str] = &[
        "listeners",
        "admin",
        "upstreams",
        "routes",
        "limits",
        "access_log",
        "shutdown_timeout",
        "workers",
        "watch",
        "log_level",
        "middleware",
        "trusted_proxies",
        "redis",
        "tracing",
    ];
    let empty = Config {
        listeners: Vec::new(),
        admin: None,
        upstreams: Vec::new(),
        routes: Vec::new(),
        limits: Limits {
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            keepalive_park_after: DEFAULT_KEEPALIVE_PARK_AFTER,
        },
        access_log: AccessLogDef { output: LogOutput::Stdout, format: LogFormat::Json },
        shutdown_timeout: Duration::from_secs(30),
        workers: None,
        watch: true,
        log_level: "info".into(),
        middleware: Vec::new(),
        middleware_names: Vec::new(),
        trusted_proxies: Vec::new(),
        redis: None,
        tracing: None,
        document: Default::default(),
    };
    let Some(f) = Fields::new(node, "", KEYS, p) else { return empty };
    let listeners = if f.has("listeners") {
        lenient_list(&f, "listeners", p, decode_listener)
    } else {
        p.add(f.pos(), "", "missing required key `listeners` (at least one listener such as `- { name: public, address: 127.0.0.1:8080 }`)");
        Vec::new()
    };
    let upstreams = match f.node("upstreams") {
        Some(n) => decode_upstreams(n, "upstreams", p),
        None => Vec::new(),
    };
    let middleware = match f.node("middleware") {
        Some(n) => decode_middleware(n, "middleware", p),
        None => Vec::new(),
    };
    let middleware_names = match f.node("middleware").map(|n| &n.value) {
        Some(Value::Map(entries)) => entries.iter().map(|(k, _)| k.name.clone()).collect(),
        _ => Vec::new(),
    };
    Config {
        middleware,
        middleware_names,
        trusted_proxies: f.opt("trusted_proxies", p).unwrap_or_default(),
        redis: f.opt("redis", p),
        tracing: f.opt("tracing", p),
        document: Default::default(),
        listeners,
        admin: f.opt("admin", p),
        upstreams,
        routes: lenient_list(&f, "routes", p, decode_route),
        limits: f.opt("limits", p).unwrap_or(empty.limits),
        access_log: f.opt("access_log", p).unwrap_or(empty.access_log.clone()),
        shutdown_timeout: f.opt::<Dur>("shutdown_timeout", p).map_or(empty.shutdown_timeout, |d| d.0),
        workers: f.opt::<Located<u32>>("workers", p).and_then(|w| {
            if (1..=1024).contains(&w.value) {
                Some(w.value as usize)
            } else {
                p.add(w.pos, &w.path, "workers must be between 1 and 1024 (leave it out for one per CPU)");
                None
            }
        }),
        watch: f.opt("watch", p).unwrap_or(true),
        log_level: f.opt::<Located<String>>("log_level", p).map_or_else(
            || "info".to_owned(),
            |l| {
                const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
                if LEVELS.contains(&l.value.as_str()) {
                    l.value
                } else {
                    p.add(
                        l.pos,
                        &l.path,
                        format!("unknown log level {:?}; expected one of: {}", l.value, LEVELS.join(", ")),
                    );
                    "info".to_owned()
                }
            },
        ),
    }
}

/// A list whose readable items are kept even when others are not, so later checks still run.
pub(super) fn lenient_list<T>(
    f: &Fields,
    key: &str,
    p: &mut Problems,
    item: impl Fn(&Node, &str, &mut Problems) -> Option<T>,
) -> Vec<T> {
    let Some(node) = f.node(key) else { return Vec::new() };
    let path = super::decode::child_path(f.path(), key);
    match &node.value {
        Value::Seq(items) => items.iter().enumerate().filter_map(|(i, n)| item(n, &item_path(&path, i), p)).collect(),
        Value::Null => Vec::new(),
        _ => {
            p.add(node.pos, &path, format!("expected a list, found {}", node.kind()));
            Vec::new()
        }
    }
}

fn decode_listener(node: &Node, path: &str, p: &mut Problems) -> Option<ListenerDef> {
    let f = Fields::new(node, path, &["name", "address", "tls", "redirect_to_https"], p)?;
    let tls = f.opt("tls", p);
    let redirect_to_https = f.opt::<Located<bool>>("redirect_to_https", p).filter(|r| r.value);
    Some(ListenerDef { name: f.req("name", p)?, address: f.req("address", p)?, tls, redirect_to_https })
}

impl Decode for AdminDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["address", "token"], p)?;
        let address: Located<SocketAddr> = f.req("address", p)?;
        let token: Option<String> = f.opt::<String>("token", p).filter(|t| !t.is_empty());
        // The admin API can reload the config: without a token it stays on loopback.
        if token.is_none() && !address.value.ip().is_loopback() {
            p.add(
                address.pos,
                &address.path,
                format!(
                    "admin address {} is not loopback; set admin.token (e.g. token: ${{ADMIN_TOKEN}}) or use 127.0.0.1",
                    address.value
                ),
            );
        }
        Some(AdminDef { address, token })
    }
}

impl Decode for SocketAddr {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        parse_str(node, path, p, "an IP address and port such as 127.0.0.1:8080 or [::1]:8080", |s| {
            s.parse::<SocketAddr>().map_err(|_| format!("invalid address {s:?}"))
        })
    }
}

impl Decode for Limits {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &[
            "max_request_body",
            "max_header_bytes",
            "client_body_timeout",
            "client_header_timeout",
            "keepalive_timeout",
            "keepalive_park_after",
        ];
        let f = Fields::new(node, path, KEYS, p)?;
        let max_header_bytes = f.opt::<Located<ByteSize>>("max_header_bytes", p).and_then(|b| {
            if b.value.0 < 1024 || b.value.0 > (1 << 20) {
                p.add(b.pos, &b.path, "max_header_bytes must be between 1KiB and 1MiB");
                None
            } else {
                Some(b.value.0)
            }
        });
        Some(Limits {
            max_request_body: f.opt::<ByteSize>("max_request_body", p).map_or(DEFAULT_MAX_REQUEST_BODY, |b| b.0),
            max_header_bytes: max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            client_body_timeout: f.opt::<Dur>("client_body_timeout", p).map_or(DEFAULT_CLIENT_BODY_TIMEOUT, |d| d.0),
            client_header_timeout: f
                .opt::<Dur>("client_header_timeout", p)
                .map_or(DEFAULT_CLIENT_HEADER_TIMEOUT, |d| d.0),
            keepalive_timeout: f.opt::<Dur>("keepalive_timeout", p).map_or(DEFAULT_KEEPALIVE_TIMEOUT, |d| d.0),
            keepalive_park_after: f
                .opt::<ParkAfter>("keepalive_park_after", p)
                .map_or(DEFAULT_KEEPALIVE_PARK_AFTER, |a| a.0),
        })
    }
}

/// `keepalive_park_after`: `off`, or a duration above zero.
struct ParkAfter(Option<Duration>);

impl Decode for ParkAfter {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        parse_str(node, path, p, "a duration above zero such as 1s or 500ms, or off", |s| match s {
            "off" => Ok(ParkAfter(None)),
            _ => match Dur::parse(s)? {
                d if d.is_zero() => Err("0s would park a connection at every pause; use off to never park".into()),
                d => Ok(ParkAfter(Some(d))),
            },
        })
    }
}

impl Decode for AccessLogDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["output", "format", "template"], p)?;
        let template = f.opt::<Located<String>>("template", p);
        let format = f.opt::<Located<String>>("format", p).map_or(LogFormat::Json, |v| match v.value.as_str() {
            "json" => LogFormat::Json,
            "combined" => LogFormat::Combined,
            "template" => match &template {
                Some(t) => match parse_template(&t.value) {
                    Ok(pieces) => LogFormat::Template(pieces.into()),
                    Err(why) => {
                        p.add(t.pos, &t.path, why);
                        LogFormat::Json
                    }
                },
                None => {
                    p.add(
                        v.pos,
                        &v.path,
                        "format: template needs `template:` (such as \"{client} {method} {uri} {status}\")",
                    );
                    LogFormat::Json
                }
            },
            other => {
                p.add(
                    v.pos,
                    &v.path,
                    format!("unknown access log format {other:?}; expected json, combined or template"),
                );
                LogFormat::Json
            }
        });
        if let Some(t) = &template
            && !matches!(format, LogFormat::Template(_))
            && !p.0.iter().any(|q| q.path == t.path)
        {
            p.add(t.pos, &t.path, "`template` is used only with `format: template`");
        }
        // `output: off` is the documented spelling; `output: false` means the same.
        if f.node("output").is_some_and(|n| n.value == Value::Bool(false)) {
            return Some(AccessLogDef { output: LogOutput::Off, format });
        }
        let out: Option<String> = f.opt("output", p);
        let output = match out.as_deref() {
            None | Some("stdout") => LogOutput::Stdout,
            Some("stderr") => LogOutput::Stderr,
            Some("off") => LogOutput::Off,
            Some(file) => LogOutput::File(file.into()),
        };
        Some(AccessLogDef { output, format })
    }
}
