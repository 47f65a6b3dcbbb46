//! The admin listener: health and readiness probes, upstream state, and config reload, on its
//! own address (never a public listener's).
//!
//! It answers operators and orchestrators, not traffic, so it favours clarity over speed; it
//! reads the gateway only through `Control` and the current snapshot.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::AdminDef;
use crate::server::Control;

/// Binds the admin address and serves it until the process ends.
pub async fn start(def: &AdminDef, control: Arc<Control>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(def.address.value).await?;
    let bound = listener.local_addr()?;
    tracing::info!(listener = "admin", address = %bound, "listening");
    control.set_admin_address(bound);
    let token: Option<Arc<str>> = def.token.as_deref().map(Arc::from);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let control = control.clone();
            let token = token.clone();
            let service = service_fn(move |req| {
                let control = control.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(answer(req, &control, token.as_deref()).await) }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(bound)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    r
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The live dashboard: one self-contained page (no external resources), compiled in. It holds
/// no data, so it is served without the token; the `/stats` it polls needs the token.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn answer(req: Request<Incoming>, control: &Arc<Control>, token: Option<&str>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/" && req.method() == Method::GET {
        let mut r = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        );
        return r;
    }
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            let mut r = reply(StatusCode::UNAUTHORIZED, json!({ "error": "admin token required" }));
            r.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({ "status": "alive" })),
        (&Method::GET, "/ready") => ready(control),
        (&Method::GET, "/upstreams") => upstreams(control),
        (&Method::GET, "/metrics") => metrics(control),
        (&Method::GET, "/stats") => stats(control),
        (&Method::GET, "/config") => reply(StatusCode::OK, (*control.gateway.snapshot().document).clone()),
        (&Method::POST, "/reload") => match control.reload_from_file().await {
            Ok(s) => reply(
                StatusCode::OK,
                json!({ "status": "reloaded", "listeners_added": s.listeners_added, "listeners_removed": s.listeners_removed }),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reload failed; the running config keeps serving");
                let errors: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
                reply(StatusCode::UNPROCESSABLE_ENTITY, json!({ "status": "failed", "errors": errors }))
            }
        },
        (&Method::POST, "/cache/purge") => purge(control, req.uri().query()),
        (
            _,
            "/" | "/healthz" | "/ready" | "/upstreams" | "/metrics" | "/stats" | "/config" | "/reload" | "/cache/purge",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, json!({ "error": "method not allowed" })),
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "no such admin endpoint" })),
    }
}

/// `POST /cache/purge?prefix=/api/items`: drops the entries of every `cache` middleware whose
/// path starts with the prefix (`prefix=/` empties them). The prefix is normalised as request
/// paths are (`/api/%69tems` is `/api/items`), since entries hold normalised paths.
fn purge(control: &Control, query: Option<&str>) -> Response<Full<Bytes>> {
    let prefix = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("prefix="));
    let Some(prefix) = prefix.and_then(|p| crate::routing::normalize_path(p.as_bytes()).ok()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": "give ?prefix=/path (a path prefix starting with /)" }),
        );
    };
    let caches = control.gateway.registries.middleware.caches();
    let purged: usize = caches.iter().map(|(_, store)| store.purge(&prefix)).sum();
    reply(StatusCode::OK, json!({ "purged": purged, "caches": caches.len() }))
}

/// Ready: not shutting down, and every upstream that routes use has an available target.
fn ready(control: &Control) -> Response<Full<Bytes>> {
    if control.is_shutting_down() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "ready": false, "reason": "shutting down" }));
    }
    let snapshot = control.gateway.snapshot();
    let down: Vec<String> = snapshot
        .upstreams
        .iter()
        .filter(|u| snapshot.routed.iter().any(|n| n == &u.name))
        .map(|u| u.view())
        .filter(|v| !v.targets.iter().any(|t| t.healthy && !t.ejected))
        .map(|v| v.name.to_string())
        .collect();
    if down.is_empty() {
        reply(StatusCode::OK, json!({ "ready": true }))
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reason": "no available target", "upstreams": down }),
        )
    }
}

/// What the dashboard polls: counters as they are now (the page takes differences between two
/// polls for rates and latency quantiles), upstream targets, and the last reloads.
fn stats(control: &Control) -> Response<Full<Bytes>> {
    let snapshot = control.gateway.snapshot();
    let by_name = control.gateway.metrics().routes();
    let routes: Vec<serde_json::Value> = snapshot
        .route_names
        .iter()
        .filter_map(|name| by_name.iter().find(|(n, _)| **n == **name))
        .map(|(name, m)| {
            let s = m.stats();
            json!({ "name": name, "requests": s.requests, "errors": s.errors, "buckets": s.buckets.to_vec() })
        })
        .collect();
    let upstreams: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|u| {
            let v = u.view();
            json!({
                "name": &*v.name,
                "targets": v.targets.iter().map(|t| json!({
                    "address": &*t.address,
                    "healthy": t.healthy && !t.ejected,
                    "in_flight": t.in_flight,
                    "ewma_latency_ms": t.ewma_latency.as_secs_f64() * 1e3,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let reloads: Vec<serde_json::Value> =
        control.reload_history().iter().map(|r| json!({ "at_ms": unix(r.at), "ok": r.ok, "error": r.error })).collect();
    reply(
        StatusCode::OK,
        json!({
            "now_ms": unix(std::time::SystemTime::now()),
            "bounds_ms": crate::observe::metrics::BUCKETS.iter().map(|b| b * 1e3).collect::<Vec<_>>(),
            "routes": routes,
            "upstreams": upstreams,
            "reloads": reloads,
            "connections": control.open_connections(),
            "parked_connections": control.parked_connections(),
        }),
    )
}

fn metrics(control: &Control) -> Response<Full<Bytes>> {
    let snapshot = control.gateway.snapshot();
    let scrape = crate::observe::metrics::Scrape {
        metrics: control.gateway.metrics(),
        upstreams: snapshot.upstreams.iter().map(|u| u.view()).collect(),
        target_latency: snapshot
            .upstreams
            .iter()
            .flat_map(|u| u.targets.iter().map(move |t| (u.name.clone(), t.address.clone(), &t.state.latency)))
            .collect(),
        active_connections: control.open_connections(),
        parked_connections: control.parked_connections(),
        middleware: control.gateway.registries.middleware.metrics(),
        acme: snapshot.acme.iter().map(|a| a.status()).collect(),
        caches: control
            .gateway
            .registries
            .middleware
            .caches()
            .into_iter()
            .map(|(name, store)| {
                let (bytes, entries) = store.usage();
                (name, bytes, entries)
            })
            .collect(),
    };
    let mut r = Response::new(Full::new(Bytes::from(crate::observe::metrics::render(&scrape))));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

fn upstreams(control: &Control) -> Response<Full<Bytes>> {
    let snapshot = control.gateway.snapshot();
    let list: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|u| {
            let v = u.view();
            json!({
                "name": &*v.name,
                "pending": v.pending,
                "retries": v.retries.iter().map(|(cause, n)| (cause.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "retry_budget_exhausted": v.retry_budget_exhausted,
                "targets": v.targets.iter().map(|t| json!({
                    "address": &*t.address,
                    "healthy": t.healthy,
                    "ejected": t.ejected,
                    "ejections": t.ejections,
                    "in_flight": t.in_flight,
                    "ewma_latency_ms": t.ewma_latency.as_secs_f64() * 1e3,
                    "open_connections": t.open_connections,
                    "idle_connections": t.idle_connections,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    reply(StatusCode::OK, json!({ "upstreams": list }))
}
