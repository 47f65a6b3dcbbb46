//! Upstream definitions: targets, balancing, health, retries, limits and timeouts, and how
//! each is read from the YAML tree (every problem reported, defaults on failure).

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::decode::{ByteSize, Decode, Dur, Fields, Located, Problems};
use super::node::Node;
use super::schema::lenient_list;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamDef {
    pub targets: Vec<TargetDef>,
    pub timeouts: Timeouts,
    pub balance: Balance,
    /// What `consistent_hash` hashes; `None` for the other balancers.
    pub hash_on: Option<HashOn>,
    pub health_check: Option<HealthCheckDef>,
    pub passive_health: Option<PassiveHealthDef>,
    /// Concurrent requests (so HTTP/1.1 connections) per target.
    pub max_connections_per_target: u32,
    /// Idle pooled connections kept per target (NGINX's `keepalive`); more are closed once
    /// their request is done. Defaults to `max_connections_per_target`.
    pub max_idle_per_target: u32,
    /// Requests that may wait for a free connection beyond that; more get 503 at once.
    pub max_pending: u32,
    pub retry: RetryDef,
    /// A target back from unhealthy or ejection ramps its share up over this time.
    pub slow_start: Option<Duration>,
    pub protocol: UpstreamProtocol,
    pub tls: Option<super::tls::UpstreamTlsDef>,
}

/// How the gateway speaks HTTP to an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, over TLS when `tls` is set.
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (gRPC backends, mostly).
    H2c,
    /// HTTP/2 over TLS.
    H2,
    /// Whatever TLS ALPN negotiates, HTTP/2 preferred.
    Auto,
}

/// When a failed try may be repeated on another target.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryDef {
    /// Total tries including the first; 1 means no retries.
    pub attempts: u32,
    pub on: RetryOn,
    /// Retries may add at most this share (per mille) of the live request rate (min 3/s).
    pub budget_permille: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bodies up to this size (declared by Content-Length) are buffered so a retry can replay them.
    pub max_replay_body: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
}

impl Default for RetryDef {
    fn default() -> Self {
        RetryDef {
            attempts: 1,
            on: RetryOn { connect_failure: true, reset: true, timeout: true, statuses: vec![502, 503, 504] },
            budget_permille: 200,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            max_replay_body: 64 << 10,
        }
    }
}

/// Active health checking: a GET to `path` on every target each `interval` (jittered).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckDef {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive range of statuses that count as healthy.
    pub expect_status: (u16, u16),
}

/// Outlier ejection from real traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassiveHealthDef {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetDef {
    /// `host:port`, where host is an IP address or a DNS name.
    pub address: String,
    /// Relative share of traffic, 1 to 1000.
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    P2cEwma,
    ConsistentHash,
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

/// The sum of one upstream's weights is bounded so the round-robin schedule stays small.
pub const MAX_TOTAL_WEIGHT: u32 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub idle: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is closed.
    pub upgrade_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(30),
            idle: Duration::from_secs(90),
            upgrade_idle: Duration::from_secs(300),
        }
    }
}

pub(super) fn decode_upstreams(
    node: &Node,
    path: &str,
    p: &mut Problems,
) -> Vec<(Located<String>, Option<UpstreamDef>)> {
    let Some(entries) = Vec::<(Located<String>, Node)>::decode(node, path, p) else { return Vec::new() };
    entries
        .into_iter()
        .map(|(name, n)| {
            let def = decode_upstream(&n, &name.path, p);
            (name, def)
        })
        .collect()
}

impl Decode for Node {
    fn decode(node: &Node, _: &str, _: &mut Problems) -> Option<Self> {
        Some(node.clone())
    }
}

fn decode_upstream(node: &Node, path: &str, p: &mut Problems) -> Option<UpstreamDef> {
    const KEYS: &[&str] = &[
        "targets",
        "timeouts",
        "balance",
        "hash_on",
        "health_check",
        "passive_health",
        "max_connections_per_target",
        "max_idle_per_target",
        "circuit_breaker",
        "retry",
        "slow_start",
        "protocol",
        "tls",
    ];
    let f = Fields::new(node, path, KEYS, p)?;
    let before = p.0.len();
    let targets = lenient_list(&f, "targets", p, decode_target);
    if !f.has("targets") {
        p.add(f.pos(), path, "missing required key `targets` (a list such as `- address: 127.0.0.1:9001`)");
    } else if targets.is_empty() && p.0.len() == before {
        p.add(f.pos(), path, "an upstream needs at least one target");
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|earlier| earlier.address == t.address) {
            p.add(
                f.pos(),
                &format!("{path}.targets"),
                format!("target {} is listed twice; give it a weight instead", t.address),
            );
        }
    }
    let total: u32 = targets.iter().map(|t| t.weight).sum();
    if total > MAX_TOTAL_WEIGHT {
        p.add(f.pos(), path, format!("the weights of one upstream add up to {total}; at most {MAX_TOTAL_WEIGHT}"));
    }
    let balance = f.opt::<Located<String>>("balance", p).map_or(Balance::RoundRobin, |b| {
        const NAMES: &[&str] = &["round_robin", "least_request", "p2c_ewma", "consistent_hash", "random"];
        match b.value.as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_request" => Balance::LeastRequest,
            "p2c_ewma" => Balance::P2cEwma,
            "consistent_hash" => Balance::ConsistentHash,
            "random" => Balance::Random,
            other => {
                let hint = super::decode::did_you_mean(other, NAMES)
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                p.add(
                    b.pos,
                    &b.path,
                    format!("unknown balancer `{other}`; {hint}expected one of: {}", NAMES.join(", ")),
                );
                Balance::RoundRobin
            }
        }
    });
    let hash_on = f.opt::<Located<String>>("hash_on", p).and_then(|h| {
        if balance != Balance::ConsistentHash {
            p.add(h.pos, &h.path, "hash_on only applies to `balance: consistent_hash`");
            return None;
        }
        super::decode::one_of(&h, p, "hash_on", "header:NAME, cookie:NAME, client_ip or path", |v| {
            match v.split_once(':') {
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes()).ok().map(HashOn::Header),
                Some(("cookie", name)) if !name.is_empty() => Some(HashOn::Cookie(name.to_owned())),
                None if v == "client_ip" => Some(HashOn::ClientIp),
                None if v == "path" => Some(HashOn::Path),
                _ => None,
            }
        })
    });
    let hash_on = match balance {
        Balance::ConsistentHash => Some(hash_on.unwrap_or(HashOn::ClientIp)),
        _ => None,
    };
    let tls: Option<super::tls::UpstreamTlsDef> = f.opt("tls", p);
    let protocol = f.opt::<Located<String>>("protocol", p).map_or(UpstreamProtocol::Http1, |v| {
        let protocol = super::decode::one_of(&v, p, "protocol", "http1, h2c, h2 or auto", |s| match s {
            "http1" => Some(UpstreamProtocol::Http1),
            "h2c" => Some(UpstreamProtocol::H2c),
            "h2" => Some(UpstreamProtocol::H2),
            "auto" => Some(UpstreamProtocol::Auto),
            _ => None,
        })
        .unwrap_or(UpstreamProtocol::Http1);
        match (protocol, f.has("tls")) {
            (UpstreamProtocol::H2c, true) => {
                p.add(v.pos, &v.path, "h2c is HTTP/2 without TLS, but this upstream has `tls:`; use `protocol: h2`")
            }
            (UpstreamProtocol::H2 | UpstreamProtocol::Auto, false) => p.add(
                v.pos,
                &v.path,
                format!(
                    "`protocol: {}` negotiates over TLS; add `tls: {{}}` (or use h2c for cleartext HTTP/2)",
                    v.value
                ),
            ),
            _ => {}
        }
        protocol
    });
    let max_connections_per_target = bounded(&f, "max_connections_per_target", 1..=1_000_000, 1024, p);
    let max_idle_per_target = bounded(&f, "max_idle_per_target", 0..=1_000_000, max_connections_per_target, p)
        .min(max_connections_per_target);
    Some(UpstreamDef {
        targets,
        timeouts: f.opt("timeouts", p).unwrap_or_default(),
        balance,
        hash_on,
        health_check: f.opt("health_check", p),
        passive_health: f.opt("passive_health", p),
        max_connections_per_target,
        max_idle_per_target,
        max_pending: f
            .node("circuit_breaker")
            .and_then(|n| {
                let cpath = super::decode::child_path(path, "circuit_breaker");
                let cb = Fields::new(n, &cpath, &["max_pending"], p)?;
                Some(bounded(&cb, "max_pending", 0..=1_000_000, 1000, p))
            })
            .unwrap_or(1000),
        retry: f.opt("retry", p).unwrap_or_default(),
        slow_start: f.opt::<Dur>("slow_start", p).map(|d| d.0).filter(|d| !d.is_zero()),
        protocol,
        tls,
    })
}

impl Decode for RetryDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["attempts", "on", "budget", "backoff", "max_replay_body"], p)?;
        let d = RetryDef { attempts: 3, ..RetryDef::default() };
        let on = f.opt::<Vec<Located<String>>>("on", p).map_or(d.on.clone(), |items| {
            let mut on = RetryOn::default();
            for item in items {
                match item.value.as_str() {
                    "connect_failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "timeout" => on.timeout = true,
                    s => match s.parse::<u16>() {
                        Ok(code) if (500..=599).contains(&code) => on.statuses.push(code),
                        _ => p.add(
                            item.pos,
                            &item.path,
                            format!("unknown retry condition {s:?}; expected connect_failure, reset, timeout or a 5xx status"),
                        ),
                    },
                }
            }
            on
        });
        let budget_permille = f.opt::<Located<String>>("budget", p).map_or(d.budget_permille, |b| {
            let pct = b.value.strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok());
            match pct {
                Some(v) if (0.0..=100.0).contains(&v) => (v * 10.0).round() as u32,
                _ => {
                    p.add(b.pos, &b.path, format!("invalid budget {:?}; expected a percentage such as 20%", b.value));
                    d.budget_permille
                }
            }
        });
        let (backoff_base, backoff_max) = match f.node("backoff") {
            Some(n) => {
                let bpath = super::decode::child_path(path, "backoff");
                match Fields::new(n, &bpath, &["base", "max"], p) {
                    Some(b) => {
                        let base = b.opt::<Dur>("base", p).map_or(d.backoff_base, |v| v.0);
                        let max = b.opt::<Located<Dur>>("max", p).map_or(d.backoff_max, |v| {
                            if v.value.0 < base {
                                p.add(v.pos, &v.path, "backoff max must be at least its base");
                            }
                            v.value.0
                        });
                        (base, max)
                    }
                    None => (d.backoff_base, d.backoff_max),
                }
            }
            None => (d.backoff_base, d.backoff_max),
        };
        Some(RetryDef {
            attempts: bounded(&f, "attempts", 1..=10, 3, p),
            on,
            budget_permille,
            backoff_base,
            backoff_max,
            max_replay_body: f.opt::<ByteSize>("max_replay_body", p).map_or(d.max_replay_body, |b| b.0),
        })
    }
}

/// A whole number in `range`, or the default when absent; out of range is reported.
fn bounded(f: &Fields, key: &str, range: std::ops::RangeInclusive<u32>, default: u32, p: &mut Problems) -> u32 {
    match f.opt::<Located<u32>>(key, p) {
        Some(v) if range.contains(&v.value) => v.value,
        Some(v) => {
            p.add(v.pos, &v.path, format!("{key} must be between {} and {}", range.start(), range.end()));
            default
        }
        None => default,
    }
}

impl Decode for HealthCheckDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] =
            &["path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "expect_status"];
        let f = Fields::new(node, path, KEYS, p)?;
        let check_path = f.req::<Located<String>>("path", p).and_then(|t| {
            match http::uri::PathAndQuery::try_from(t.value.as_str()) {
                Ok(pq) if t.value.starts_with('/') => Some(pq),
                _ => {
                    p.add(
                        t.pos,
                        &t.path,
                        format!("invalid health check path {:?}; expected a path such as /healthz", t.value),
                    );
                    None
                }
            }
        });
        let interval = f.opt::<Dur>("interval", p).map_or(Duration::from_secs(5), |d| d.0);
        let timeout = f.opt::<Located<Dur>>("timeout", p).map_or(Duration::from_secs(1), |d| {
            if d.value.0 > interval {
                p.add(d.pos, &d.path, "the health check timeout must not exceed its interval");
            }
            d.value.0
        });
        if interval < Duration::from_millis(10) {
            p.add(f.pos(), path, "health check interval must be at least 10ms");
        }
        let expect_status = f.opt::<Located<String>>("expect_status", p).map_or((200, 399), |s| {
            let parsed = match s.value.split_once('-') {
                Some((a, b)) => a.trim().parse::<u16>().ok().zip(b.trim().parse::<u16>().ok()),
                None => s.value.trim().parse::<u16>().ok().map(|v| (v, v)),
            };
            match parsed {
                Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => (a, b),
                _ => {
                    p.add(
                        s.pos,
                        &s.path,
                        format!("invalid expect_status {:?}; expected a status or a range such as 200-399", s.value),
                    );
                    (200, 399)
                }
            }
        });
        Some(HealthCheckDef {
            path: check_path?,
            interval,
            timeout,
            healthy_threshold: bounded(&f, "healthy_threshold", 1..=100, 2, p),
            unhealthy_threshold: bounded(&f, "unhealthy_threshold", 1..=100, 3, p),
            expect_status,
        })
    }
}

impl Decode for PassiveHealthDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["consecutive_failures", "ejection_time", "max_ejected_percent"], p)?;
        Some(PassiveHealthDef {
            consecutive_failures: bounded(&f, "consecutive_failures", 1..=1000, 5, p),
            ejection_time: f.opt::<Dur>("ejection_time", p).map_or(Duration::from_secs(30), |d| d.0),
            max_ejected_percent: bounded(&f, "max_ejected_percent", 0..=100, 50, p),
        })
    }
}

fn decode_target(node: &Node, path: &str, p: &mut Problems) -> Option<TargetDef> {
    let f = Fields::new(node, path, &["address", "weight"], p)?;
    let weight = f.opt::<Located<u32>>("weight", p).map_or(1, |w| {
        if (1..=1000).contains(&w.value) {
            w.value
        } else {
            p.add(w.pos, &w.path, "weight must be between 1 and 1000");
            1
        }
    });
    let address: Located<String> = f.req("address", p)?;
    match check_host_port(&address.value) {
        Ok(()) => Some(TargetDef { address: address.value, weight }),
        Err(why) => {
            p.add(
                address.pos,
                &address.path,
                format!("{why}; expected host:port such as 127.0.0.1:9001 or backend.internal:8080"),
            );
            None
        }
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} has no port"))?;
    port.parse::<u16>().map_err(|_| format!("invalid port in {s:?}"))?;
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if valid_name { Ok(()) } else { Err(format!("invalid host in {s:?}")) }
}

impl Decode for Timeouts {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["connect", "response_header", "idle", "upgrade_idle"], p)?;
        let d = Timeouts::default();
        Some(Timeouts {
            connect: f.opt::<Dur>("connect", p).map_or(d.connect, |v| v.0),
            response_header: f.opt::<Dur>("response_header", p).map_or(d.response_header, |v| v.0),
            idle: f.opt::<Dur>("idle", p).map_or(d.idle, |v| v.0),
            upgrade_idle: f.opt::<Dur>("upgrade_idle", p).map_or(d.upgrade_idle, |v| v.0),
        })
    }
}
