//! Prometheus metrics: counters and histograms kept as plain atomics where the request path
//! records them (no lock, no label lookup per request), rendered in the text exposition format
//! when `/metrics` is scraped.
//!
//! Per-route metrics live in a registry keyed by route name, so a reload keeps their counts
//! (counters must never go backwards); label values come from the config only, never from a
//! request, so cardinality is bounded by the config.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

/// Bucket bounds in seconds, from 1 ms to 10 s.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// `repr(C)`: the count and sum beside the low buckets, so a fast observation writes one
/// cache line (a target's histogram is cold when the targets are many).
#[derive(Default)]
#[repr(C)]
pub struct Histogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Methods get their own label value; anything else is `other` (a client cannot add series).
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"];

/// The label of a method index (`other` for methods outside the standard set).
pub fn method_name(index: usize) -> &'static str {
    METHODS.get(index).copied().unwrap_or("other")
}

pub fn method_index(m: &Method) -> usize {
    METHODS.iter().position(|&name| name == m.as_str()).unwrap_or(METHODS.len() - 1)
}

/// Requests of one route (or of no route), by method and status class, and their durations.
#[derive(Default)]
pub struct RouteMetrics {
    requests: [[AtomicU64; 5]; METHODS.len()],
    duration: Histogram,
}

/// A route's counters at one moment, for the dashboard (which takes differences between two).
pub struct RouteStats {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Durations per bucket of [`BUCKETS`] (not cumulative), and past the last bound.
    pub buckets: [u64; BUCKETS.len() + 1],
}

impl RouteMetrics {
    pub fn stats(&self) -> RouteStats {
        let by_class = |c: usize| self.requests.iter().map(|m| m[c].load(Ordering::Relaxed)).sum::<u64>();
        let requests = (0..5).map(by_class).sum();
        let mut buckets = [0; BUCKETS.len() + 1];
        for (b, n) in buckets.iter_mut().zip(&self.duration.buckets) {
            *b = n.load(Ordering::Relaxed);
        }
        let counted: u64 = buckets.iter().sum();
        buckets[BUCKETS.len()] = self.duration.count.load(Ordering::Relaxed).saturating_sub(counted);
        RouteStats { requests, errors: by_class(4), buckets }
    }

    pub fn record(&self, method: usize, status: u16, took: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[method.min(METHODS.len() - 1)][class].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
    }
}

/// Counters that belong to the process rather than to a route or upstream.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Requests that matched no route.
    pub unmatched: Arc<RouteMetrics>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// TLS handshakes that failed or timed out (bad client certificate, no shared version…).
    pub tls_handshake_failures: AtomicU64,
}

impl Metrics {
    /// The metrics of route `name`, the same object across reloads. Called while compiling a
    /// snapshot, never per request.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(name.to_owned()).or_default().clone()
    }

    pub fn routes(&self) -> Vec<(String, Arc<RouteMetrics>)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

/// Escapes a label value (text format: backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Everything `/metrics` shows, gathered by the caller from the running gateway.
pub struct Scrape<'a> {
    pub metrics: &'a Metrics,
    pub upstreams: Vec<crate::upstream::UpstreamView>,
    pub target_latency: Vec<(Arc<str>, Arc<str>, &'a Histogram)>,
    pub active_connections: usize,
    /// Of them, idle ones parked without a task (`keepalive_park_after`).
    pub parked_connections: usize,
    /// Counters by middleware (`kind/name`), from the middleware registry.
    pub middleware: Vec<(String, Arc<crate::middleware::MiddlewareMetrics>)>,
    /// ACME certificates of the running config, by first domain.
    pub acme: Vec<crate::server::acme::AcmeStatus>,
    /// Response caches by middleware name: bytes held and entries.
    pub caches: Vec<(String, u64, u64)>,
}

pub fn render(s: &Scrape<'_>) -> String {
    let mut out = String::with_capacity(16 << 10);
    let routes = s.metrics.routes();
    let all_routes = routes.iter().map(|(n, m)| (n.as_str(), m)).chain(std::iter::once(("", &s.metrics.unmatched)));

    header(
        &mut out,
        "ferroway_requests_total",
        "counter",
        "Requests by route (empty: no route matched), method and status class.",
    );
    for (name, m) in all_routes.clone() {
        for (mi, method) in METHODS.iter().enumerate() {
            for (ci, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let n = m.requests[mi][ci].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "ferroway_requests_total{{route=\"{}\",method=\"{method}\",status_class=\"{class}\"}} {n}",
                        label(name)
                    );
                }
            }
        }
    }
    header(
        &mut out,
        "ferroway_request_duration_seconds",
        "histogram",
        "Time from request to the end of the response, by route.",
    );
    for (name, m) in all_routes {
        m.duration.render(&mut out, "ferroway_request_duration_seconds", &format!("route=\"{}\"", label(name)));
    }
    header(
        &mut out,
        "ferroway_upstream_request_duration_seconds",
        "histogram",
        "Time from sending a try to its response headers, by upstream and target.",
    );
    for (upstream, target, h) in &s.target_latency {
        h.render(
            &mut out,
            "ferroway_upstream_request_duration_seconds",
            &format!("upstream=\"{}\",target=\"{}\"", label(upstream), label(target)),
        );
    }
    let per_target =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&crate::upstream::TargetView) -> u64| {
            header(out, name, kind, help);
            for u in &s.upstreams {
                for t in &u.targets {
                    let _ = writeln!(
                        out,
                        "{name}{{upstream=\"{}\",target=\"{}\"}} {}",
                        label(&u.name),
                        label(&t.address),
                        value(t)
                    );
                }
            }
        };
    per_target(
        &mut out,
        "ferroway_upstream_target_healthy",
        "gauge",
        "1 when the target passes health checks and is not ejected.",
        &|t| u64::from(t.healthy && !t.ejected),
    );
    per_target(
        &mut out,
        "ferroway_upstream_target_ejections",
        "gauge",
        "Consecutive passive-health ejections of the target.",
        &|t| u64::from(t.ejections),
    );
    per_target(&mut out, "ferroway_upstream_in_flight", "gauge", "Requests in flight to the target.", &|t| {
        u64::from(t.in_flight)
    });
    per_target(
        &mut out,
        "ferroway_upstream_connections_open",
        "gauge",
        "Pooled connections open to the target.",
        &|t| t.open_connections as u64,
    );
    per_target(
        &mut out,
        "ferroway_upstream_connections_idle",
        "gauge",
        "Open connections to the target not carrying a request.",
        &|t| t.idle_connections as u64,
    );
    header(&mut out, "ferroway_upstream_pending_requests", "gauge", "Requests waiting for a connection slot.");
    for u in &s.upstreams {
        let _ = writeln!(out, "ferroway_upstream_pending_requests{{upstream=\"{}\"}} {}", label(&u.name), u.pending);
    }
    header(&mut out, "ferroway_upstream_retries_total", "counter", "Retries by upstream and cause.");
    for u in &s.upstreams {
        for (cause, n) in &u.retries {
            let _ = writeln!(
                out,
                "ferroway_upstream_retries_total{{upstream=\"{}\",cause=\"{cause}\"}} {n}",
                label(&u.name)
            );
        }
    }
    header(
        &mut out,
        "ferroway_upstream_retry_budget_exhausted_total",
        "counter",
        "Retries refused because the budget was spent.",
    );
    for u in &s.upstreams {
        let _ = writeln!(
            out,
            "ferroway_upstream_retry_budget_exhausted_total{{upstream=\"{}\"}} {}",
            label(&u.name),
            u.retry_budget_exhausted
        );
    }
    render_middleware(&mut out, &s.middleware);
    header(&mut out, "ferroway_client_connections", "gauge", "Client connections open.");
    let _ = writeln!(out, "ferroway_client_connections {}", s.active_connections);
    header(
        &mut out,
        "ferroway_client_connections_parked",
        "gauge",
        "Idle client connections parked (counted in ferroway_client_connections too): no task or buffer held until the client sends again.",
    );
    let _ = writeln!(out, "ferroway_client_connections_parked {}", s.parked_connections);
    header(&mut out, "ferroway_reloads_total", "counter", "Config reloads by outcome.");
    let _ = writeln!(out, "ferroway_reloads_total{{outcome=\"ok\"}} {}", s.metrics.reloads_ok.load(Ordering::Relaxed));
    let _ = writeln!(
        out,
        "ferroway_reloads_total{{outcome=\"failed\"}} {}",
        s.metrics.reloads_failed.load(Ordering::Relaxed)
    );
    header(&mut out, "ferroway_tls_handshake_failures_total", "counter", "TLS handshakes that failed or timed out.");
    let _ = writeln!(
        out,
        "ferroway_tls_handshake_failures_total {}",
        s.metrics.tls_handshake_failures.load(Ordering::Relaxed)
    );
    if !s.acme.is_empty() {
        header(
            &mut out,
            "ferroway_acme_orders_total",
            "counter",
            "ACME certificate orders by first domain and outcome.",
        );
        for a in &s.acme {
            let _ =
                writeln!(out, "ferroway_acme_orders_total{{domain=\"{}\",outcome=\"ok\"}} {}", a.domain, a.orders_ok);
            let _ = writeln!(
                out,
                "ferroway_acme_orders_total{{domain=\"{}\",outcome=\"error\"}} {}",
                a.domain, a.orders_failed
            );
        }
        header(
            &mut out,
            "ferroway_acme_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the ACME certificate in service expires (absent until one is obtained).",
        );
        for a in &s.acme {
            if let Some(t) = a.not_after {
                let _ =
                    writeln!(out, "ferroway_acme_certificate_expiry_timestamp_seconds{{domain=\"{}\"}} {t}", a.domain);
            }
        }
    }
    if !s.caches.is_empty() {
        header(&mut out, "ferroway_cache_bytes", "gauge", "Bytes a response cache holds (bodies, headers, keys).");
        for (name, bytes, _) in &s.caches {
            let _ = writeln!(out, "ferroway_cache_bytes{{middleware=\"{}\"}} {bytes}", label(name));
        }
        header(&mut out, "ferroway_cache_entries", "gauge", "Entries a response cache holds.");
        for (name, _, entries) in &s.caches {
            let _ = writeln!(out, "ferroway_cache_entries{{middleware=\"{}\"}} {entries}", label(name));
        }
    }
    header(&mut out, "ferroway_build_info", "gauge", "Build information.");
    let _ = writeln!(out, "ferroway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}

/// Rate-limit decisions, auth outcomes and IP-filter decisions, each under its own name.
fn render_middleware(out: &mut String, all: &[(String, Arc<crate::middleware::MiddlewareMetrics>)]) {
    use crate::middleware::Outcome;
    let families: [(&str, &[&str], &str, &str); 5] = [
        (
            "ferroway_ratelimit_decisions_total",
            &["rate_limit"],
            "decision",
            "Rate-limit decisions by middleware and decision (store_error_*: the store could not answer).",
        ),
        (
            "ferroway_auth_results_total",
            &["jwt", "api_key"],
            "result",
            "Authentication results by middleware: authenticated, or the reason for a 401.",
        ),
        ("ferroway_ip_filter_decisions_total", &["ip_filter"], "decision", "IP filter decisions by middleware."),
        (
            "ferroway_path_filter_decisions_total",
            &["path_filter"],
            "decision",
            "Path filter decisions by middleware (denied: answered 404).",
        ),
        ("ferroway_cache_requests_total", &["cache"], "result", "Response cache lookups by middleware and result."),
    ];
    for (name, kinds, label_name, help) in families {
        header(out, name, "counter", help);
        for (key, m) in all.iter().filter(|(_, m)| kinds.contains(&m.kind)) {
            let middleware = key.split_once('/').map_or(key.as_str(), |(_, n)| n);
            for (outcome, n) in m.counts() {
                let relevant = match m.kind {
                    "rate_limit" => matches!(
                        outcome,
                        Outcome::Allowed
                            | Outcome::Limited
                            | Outcome::StoreErrorAllowed
                            | Outcome::StoreErrorDenied
                            | Outcome::Untracked
                    ),
                    "ip_filter" | "path_filter" => matches!(outcome, Outcome::Allowed | Outcome::Denied),
                    "cache" => matches!(outcome, Outcome::CacheHit | Outcome::CacheMiss | Outcome::CacheStale),
                    _ => n > 0 || matches!(outcome, Outcome::Authenticated),
                };
                if relevant {
                    let _ = writeln!(
                        out,
                        "{name}{{middleware=\"{}\",{label_name}=\"{}\"}} {n}",
                        label(middleware),
                        outcome.label()
                    );
                }
            }
        }
    }
}
