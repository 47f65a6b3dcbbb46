//! Forwarding a prepared request to its upstream: pick a target, take a connection slot, send,
//! and, where the request is safe to replay and the retry budget allows, try another target
//! after a retryable failure.
//!
//! Replay-safe means: the body is in memory (none, or buffered up to `max_replay_body`), and
//! the method is idempotent, or the failure happened before the request could reach the
//! upstream (the connection was never established). Nothing is retried once the response has
//! been handed back, so no client ever sees a response byte from a try that is then repeated.

use std::error::Error as StdError;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response};

use super::body::{RequestBody, RequestBodyError};
use super::error::ErrorKind;
use crate::config::RetryOn;
use crate::observe::access_log::Entry;
use crate::upstream::balance::InFlight;
use crate::upstream::client::{HostField, OutHead, SendError, UpstreamBody};
use crate::upstream::h1::FieldPolicy;
use crate::upstream::retry::{self, Cause};
use crate::upstream::{PickInput, Upstream};

/// The request body as forwarding sees it.
pub enum Payload {
    /// Streamed from the client: one try only.
    Stream(RequestBody),
    /// In memory: every try sends it again.
    Replay(Bytes),
}

/// A request ready to go upstream, bar what depends on the target (authority, and Host when
/// the route says `host_header: upstream`).
pub struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    pub host_from_target: bool,
    pub body: Payload,
    /// Whether the response's fields may stay lines for the client codec to write, and which
    /// of them the route's response hooks use (see `upstream::h1::FieldPolicy`).
    pub raw_response: Option<&'a FieldPolicy>,
    /// Fields the proxy adds, as lines, sent after `headers` on every try (empty unless the
    /// upstream's client `takes_lines`).
    pub lines: Vec<u8>,
}

/// `out` is lent: moved in, it was copied into this future's state and again into the
/// caller's (344 bytes each).
pub async fn forward(
    upstream: &Upstream,
    out: &mut Outgoing<'_>,
    client_ip: std::net::IpAddr,
    path: &str,
    mut entry: Option<&mut Entry>,
    request_id: &HeaderValue,
) -> Result<(Response<UpstreamBody>, InFlight), ErrorKind> {
    let policy = &upstream.def().retry;
    let replayable = matches!(out.body, Payload::Replay(_));
    let idempotent = retry::is_idempotent(&out.method);
    let max_attempts = if replayable { policy.attempts } else { 1 };
    if max_attempts > 1 {
        upstream.retry_budget.on_request();
    }
    let host = if upstream.h2_only() {
        HostField::Omit
    } else if out.host_from_target {
        HostField::Target
    } else {
        HostField::Fields
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= max_attempts;
        let input = PickInput { headers: &out.headers, client_ip, path };
        let Some((index, target)) = upstream.pick_target(&input, &tried) else {
            return Err(ErrorKind::NoHealthyTarget);
        };
        let slot = upstream.acquire_slot(target).await.map_err(|_| ErrorKind::UpstreamSaturated)?;

        let body = match &mut out.body {
            Payload::Stream(b) => std::mem::replace(b, RequestBody::empty()),
            Payload::Replay(bytes) => RequestBody::bytes(bytes.clone()),
        };
        // The last possible try may give the fields away; earlier ones lend a copy.
        let head = OutHead {
            method: &out.method,
            path_and_query: &out.path_and_query,
            headers: &mut out.headers,
            take: last,
            host,
        };

        // One clock reading for the start and the deadline, one for the end. The client keeps
        // the deadline (the own HTTP/1.1 client on a timer its worker lends, aimed at each
        // request's deadline rather than made and registered anew: `crate::deadline::Lent`).
        let sent = tokio::time::Instant::from_std(crate::worker::now());
        let timeout = upstream.timeouts().response_header;
        let outcome = upstream
            .client
            .request(target, head, body, out.raw_response, &out.lines, sent + timeout)
            .await
            .map_err(|e| classify(&e));
        let took = crate::worker::now().saturating_duration_since(sent.into_std());
        if let Some(e) = entry.as_deref_mut() {
            e.upstream_target = Some(target.address.clone());
            e.upstream_duration = Some(took);
        }
        // A failure counts as slow, so latency-aware balancing does not favour a target that
        // fails fast.
        if outcome.is_ok() {
            target.state.latency.observe(took);
        }
        target.state.observe(if outcome.is_ok() { took } else { timeout });
        upstream.report(
            target,
            match &outcome {
                Ok(resp) => !resp.status().is_server_error(),
                Err(kind) => !kind.is_upstream_failure(),
            },
        );

        let cause = match &outcome {
            Ok(resp) => policy.on.statuses.contains(&resp.status().as_u16()).then_some(Cause::Status),
            Err(kind) => retry_cause(*kind, &policy.on),
        };
        if let Some(cause) = cause.filter(|c| !last && (idempotent || *c == Cause::ConnectFailure)) {
            if upstream.retry_budget.try_retry() {
                upstream.retry_stats.count(cause);
                tracing::info!(
                    request_id = request_id.to_str().unwrap_or("-"),
                    upstream = %upstream.name,
                    target = %target.address,
                    attempt,
                    cause = cause.label(),
                    "retrying on another target"
                );
                if let Some(e) = entry.as_deref_mut() {
                    e.retries += 1;
                }
                tried.push(index);
                drop(outcome);
                drop(slot);
                tokio::time::sleep(retry::backoff(attempt, policy.backoff_base, policy.backoff_max)).await;
                continue;
            }
            upstream.retry_stats.budget_exhausted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return outcome.map(|resp| (resp, slot));
    }
}

/// Which configured retry condition a gateway error meets, if any.
fn retry_cause(kind: ErrorKind, on: &RetryOn) -> Option<Cause> {
    match kind {
        ErrorKind::UpstreamConnectRefused | ErrorKind::UpstreamConnectTimeout => {
            on.connect_failure.then_some(Cause::ConnectFailure)
        }
        ErrorKind::UpstreamReset | ErrorKind::UpstreamBadResponse => on.reset.then_some(Cause::Reset),
        ErrorKind::UpstreamResponseTimeout => on.timeout.then_some(Cause::Timeout),
        _ => None,
    }
}

/// Maps a client error to the gateway's answer (hyper's by walking its cause chain).
fn classify(err: &SendError) -> ErrorKind {
    let err = match err {
        SendError::Gateway(kind) => return *kind,
        SendError::Hyper(e) => e,
    };
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    let mut saw_timeout = false;
    while let Some(e) = source {
        if let Some(body_err) = e.downcast_ref::<RequestBodyError>() {
            return body_err.kind();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            saw_timeout |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_parse_status())
        {
            return ErrorKind::UpstreamBadResponse;
        }
        source = e.source();
    }
    if err.is_connect() {
        if saw_timeout { ErrorKind::UpstreamConnectTimeout } else { ErrorKind::UpstreamConnectRefused }
    } else {
        ErrorKind::UpstreamReset
    }
}
