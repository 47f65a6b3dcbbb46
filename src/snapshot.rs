//! Compiling a checked config into an immutable `Snapshot`, and the `Gateway` that holds the
//! current one behind `ArcSwap` (one atomic load per request, no lock).
//!
//! A snapshot never changes; a reload compiles a new one beside it and swaps it in whole, so a
//! request keeps the snapshot it started with. State that must outlive a reload (upstream
//! pools) lives in registries outside the snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, HostHeader, Limits, PathSpec};
use crate::middleware;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::proxy::request_id::IdSource;
use crate::routing::{RouteSpec, Router};
use crate::server::acme::{self, Acme};
use crate::server::tls::{self, ListenerRuntime};
use crate::upstream::{Registry, Upstream};

pub struct Route {
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// Byte length of the matched prefix to strip (`/api/users` → 10), for `strip_prefix`.
    pub strip_prefix: Option<usize>,
    pub host_header: HostHeader,
    pub max_request_body: u64,
    /// This route's counters, shared with every snapshot that has a route of this name.
    pub metrics: Arc<RouteMetrics>,
    /// The route's middleware, `None` when it has none.
    pub chain: Option<Arc<middleware::Chain>>,
}

pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub limits: Limits,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Names of the upstreams some route uses (readiness looks at these only).
    pub routed: Vec<Arc<str>>,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Key sets this config fetches in the background.
    pub jwks: Vec<Arc<middleware::jwt::Jwks>>,
    /// How each listener (by name) accepts connections: TLS settings, redirects.
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// Files besides the config that it depends on (certificates, keys): a change reloads.
    pub watched_files: Vec<PathBuf>,
    /// Certificates this config obtains by ACME (http-01 tokens are looked up here).
    pub acme: Vec<Arc<Acme>>,
    /// Route names in config order (the dashboard lists these).
    pub route_names: Vec<Arc<str>>,
    /// The config document, secrets redacted (`GET /config`).
    pub document: Arc<serde_json::Value>,
}

/// Why a checked config still could not be compiled (for example an upstream address that
/// passed validation but cannot form a URI authority).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// State that outlives snapshots: upstream pools, middleware state, metrics.
#[derive(Default)]
pub struct Registries {
    pub upstreams: Registry,
    pub middleware: middleware::Registry,
    pub acme: acme::Registry,
    pub metrics: Metrics,
}

pub fn compile(config: &Config, registries: &Registries) -> Result<Snapshot, CompileError> {
    let (registry, metrics) = (&registries.upstreams, &registries.metrics);
    let compiled = middleware::compile(config, &registries.middleware);
    let mut upstreams = HashMap::new();
    for (name, def) in &config.upstreams {
        let def = def.as_ref().ok_or_else(|| CompileError(format!("upstream {} is invalid", name.value)))?;
        let upstream = registry.get_or_create(&name.value, def).map_err(CompileError)?;
        upstreams.insert(name.value.as_str(), upstream);
    }
    let mut specs = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let upstream = upstreams.get(r.upstream.value.as_str()).cloned().ok_or_else(|| {
            CompileError(format!("route {} names unknown upstream {}", r.name.value, r.upstream.value))
        })?;
        let strip_prefix = match (&r.matcher.path.value, r.strip_prefix.as_ref().is_some_and(|s| s.value)) {
            (PathSpec::Prefix(p), true) => Some(p.trim_end_matches('/').len()),
            _ => None,
        };
        let route = Route {
            name: r.name.value.as_str().into(),
            upstream,
            strip_prefix,
            host_header: r.host_header.clone(),
            max_request_body: r.limits.max_request_body.unwrap_or(config.limits.max_request_body),
            metrics: metrics.route(&r.name.value),
            chain: compiled.chain(&r.middleware),
        };
        specs.push(RouteSpec {
            host: r.matcher.host.as_ref().map(|h| h.value.clone()),
            path: r.matcher.path.value.clone(),
            methods: r.matcher.methods.clone(),
            headers: r.matcher.headers.clone(),
            value: Arc::new(route),
        });
    }
    let router = Router::new(specs).map_err(|e| CompileError(format!("route regexes: {e}")))?;
    let mut upstreams: Vec<Arc<Upstream>> = upstreams.into_values().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let mut routed: Vec<Arc<str>> = config.routes.iter().map(|r| Arc::from(r.upstream.value.as_str())).collect();
    routed.sort();
    routed.dedup();
    let redirect_port = config.listeners.iter().find(|l| l.tls.is_some()).map(|l| l.address.value.port());
    let mut listeners = HashMap::new();
    let mut watched_files = Vec::new();
    let mut acme: Vec<Arc<Acme>> = Vec::new();
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(def) => {
                watched_files.extend(def.files.iter().cloned());
                let certs = def.acme.as_ref().map(|a| registries.acme.get_or_create(&a.value));
                if let Some(a) = &certs
                    && !acme.iter().any(|known| Arc::ptr_eq(known, a))
                {
                    acme.push(a.clone());
                }
                Some(
                    tls::listener_tls(def, certs)
                        .map_err(|e| CompileError(format!("listener {}: {e}", l.name.value)))?,
                )
            }
            None => None,
        };
        let redirect_https = l.redirect_to_https.as_ref().and(redirect_port);
        listeners.insert(l.name.value.clone(), Arc::new(ListenerRuntime { tls, redirect_https }));
    }
    Ok(Snapshot {
        route_names: config.routes.iter().map(|r| Arc::from(r.name.value.as_str())).collect(),
        document: config.document.clone(),
        acme,
        listeners,
        watched_files,
        router,
        limits: config.limits,
        upstreams,
        routed,
        trusted_proxies: config.trusted_proxies.clone(),
        jwks: compiled.jwks,
    })
}

/// One line describing a config, for `ferroway check` and the startup log.
pub fn summary(config: &Config) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}, {}",
        plural(config.listeners.len(), "listener"),
        plural(config.routes.len(), "route"),
        plural(config.upstreams.len(), "upstream")
    )
}

/// The running gateway's shared state: the current snapshot and what outlives it.
pub struct Gateway {
    current: ArcSwap<Snapshot>,
    pub registries: Registries,
    pub access_log: Arc<AccessLog>,
    pub ids: IdSource,
    /// OTLP span export, when `tracing:` is configured (a change takes a restart).
    pub tracing: Option<Arc<crate::observe::otel::Exporter>>,
}

impl Gateway {
    pub fn new(config: &Config, access_log: Arc<AccessLog>) -> Result<Gateway, CompileError> {
        let registries = Registries::default();
        let snapshot = compile(config, &registries)?;
        start_background(&snapshot);
        let tracing =
            config.tracing.as_ref().map(crate::observe::otel::Exporter::new).transpose().map_err(CompileError)?;
        Ok(Gateway {
            current: ArcSwap::from_pointee(snapshot),
            registries,
            access_log,
            ids: IdSource::default(),
            tracing,
        })
    }

    /// The snapshot a new request should use; it stays valid for that request whatever
    /// reloads happen meanwhile.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles `config` beside the running snapshot and swaps it in only if that succeeds.
    pub fn reload(&self, config: &Config) -> Result<(), CompileError> {
        let next = self.prepare(config)?;
        self.install(next);
        Ok(())
    }

    /// Compiles a snapshot without installing it (unchanged upstreams are shared).
    pub fn prepare(&self, config: &Config) -> Result<Snapshot, CompileError> {
        compile(config, &self.registries)
    }

    /// Makes `next` the snapshot new requests use; requests in flight keep theirs.
    pub fn install(&self, next: Snapshot) {
        start_background(&next);
        self.current.store(Arc::new(next));
    }

    pub fn metrics(&self) -> &Metrics {
        &self.registries.metrics
    }
}

/// Health checks and key fetches a snapshot needs (each starts once, however many snapshots
/// share it).
fn start_background(s: &Snapshot) {
    s.upstreams.iter().for_each(Upstream::start_health_checks);
    s.jwks.iter().for_each(middleware::jwt::Jwks::start);
    s.acme.iter().for_each(Acme::start);
}
