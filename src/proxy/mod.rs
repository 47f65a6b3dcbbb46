//! The request path: route a request on the current snapshot, forward it to a target of the
//! route's upstream over a pooled connection, and stream the answer back.
//!
//! Every failure becomes a response here (the service's error type is `Infallible`), typed by
//! [`ErrorKind`]; nothing in this module parses configuration or takes a shared lock.

pub mod body;
pub mod error;
mod forward;
pub mod headers;
pub mod request_id;
pub mod trace;
mod upgrade;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use self::body::{ClientBody, Done, Exchange, PendingSpan, RequestBody, ResponseBody};
use self::error::ErrorKind;
use self::forward::{Outgoing, Payload};
use self::headers::{Peer, X_REQUEST_ID};
use self::trace::TraceIds;
use crate::config::HostHeader;
use crate::middleware::cache::Finishing;
use crate::middleware::client_ip;
use crate::middleware::{Answer, Chain, Cx, Req};
use crate::observe::access_log::Entry;
use crate::observe::metrics;
use crate::routing::{normalize_host, normalize_path};
use crate::server::acme;
use crate::snapshot::{Gateway, Route, Snapshot};
use crate::upstream::balance::InFlight;
use crate::upstream::client::UpstreamBody;
use crate::upstream::h1::{FieldPolicy, UpstreamUpgrade};

/// What the request path knows about a request besides the request itself.
struct Ctx<'a> {
    peer: &'a Peer,
    request_id: &'a HeaderValue,
    entry: Option<&'a mut Entry>,
    /// Set once a route matched: whose metrics the response is counted in.
    route: &'a mut Option<Arc<Route>>,
    /// This request's trace and the gateway's span in it.
    trace: &'a TraceIds,
}

pub async fn handle(req: Request<ClientBody>, peer: &Peer, gw: &Gateway) -> Response<ResponseBody> {
    // Split once here and lent below: a `Request` handed down by value was copied into each
    // `async fn`'s future on its way (264 bytes, three times a request).
    let (mut parts, body) = req.into_parts();
    let snapshot = gw.snapshot();
    let mut scan = headers::Scan::of(&parts.headers);
    let request_id = gw.ids.for_value(scan.request_id.take());
    let version = parts.version;
    let start = crate::worker::now();
    let method = metrics::method_index(&parts.method);
    let mut matched: Option<Arc<Route>> = None;
    let trace_ids = TraceIds::for_value(scan.traceparent.as_ref());
    // Only with an OTLP exporter: what the request's span needs beyond the ids.
    let span_path = gw.tracing.as_ref().map(|_| Box::<str>::from(parts.uri.path()));
    let mut entry = gw.access_log.enabled().then(|| {
        Box::new(Entry {
            sink: gw.access_log.clone(),
            start,
            request_id: request_id.clone(),
            client: peer.addr,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version,
            route: None,
            upstream_target: None,
            status: 0,
            upstream_duration: None,
            retries: 0,
            traceparent: None,
            agent: gw
                .access_log
                .wants_agent()
                .then(|| (parts.headers.get(header::REFERER).cloned(), parts.headers.get(header::USER_AGENT).cloned())),
            exchange: None,
            bytes_out: 0,
            error: None,
            consumer: None,
            client_cert_subject: peer.client_cert_subject.clone(),
            tls: peer.tls_version,
            decision: None,
        })
    });
    let grpc = scan.grpc;
    let ctx =
        Ctx { peer, request_id: &request_id, entry: entry.as_deref_mut(), route: &mut matched, trace: &trace_ids };
    let mut chained = None;
    let result = route_and_forward(&mut parts, body, &scan, ctx, &snapshot, &mut chained).await;
    let metrics = matched.as_ref().map_or_else(|| gw.metrics().unmatched.clone(), |r| r.metrics.clone());
    let span = gw.tracing.clone().zip(span_path).map(|(exporter, path)| {
        Box::new(PendingSpan { exporter, ids: trace_ids, route: matched.as_ref().map(|r| r.name.clone()), path })
    });
    if let (Some(e), Some(c)) = (entry.as_deref_mut(), chained.as_ref()) {
        e.consumer = c.cx.consumer();
        e.decision = c.cx.auth_failure.map(|o| format!("auth_failed:{}", o.label()));
    }
    match result {
        Ok((resp, in_flight, idle)) => {
            let (mut parts, mut body) = resp.into_parts();
            let switched = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
            let protocol = if switched { parts.headers.get(header::UPGRADE).cloned() } else { None };
            headers::strip_hop_by_hop(&mut parts.headers);
            if let Some(p) = protocol {
                parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(header::UPGRADE, p);
            }
            let via = headers::via_value(parts.version);
            // Fields kept as lines (the upstream's X-Request-Id left out of them, see
            // `response_fields`): the proxy's two are lines too, and the hooks add to them
            // (`middleware::Fields`), so the map stays empty unless a hook needs it (a map for
            // two fields: 0.9k instructions). Not when a hook names one of the proxy's: it
            // must find them in the map to replace or remove them.
            let mut lines = match chained.as_ref() {
                Some(c) if c.chain.uses_proxy_response_fields() => None,
                _ => body.own().and_then(|b| b.raw_lines_mut()),
            };
            match lines.as_deref_mut() {
                Some(lines) => {
                    crate::http1::put_field(lines, &header::VIA, &via);
                    crate::http1::put_field(lines, &X_REQUEST_ID, &request_id);
                }
                None => {
                    parts.headers.append(header::VIA, via);
                    parts.headers.insert(X_REQUEST_ID.clone(), request_id);
                }
            }
            parts.version = version;
            if let Some(c) = chained.as_mut() {
                c.chain.response(&mut c.cx, parts.status, &mut parts.headers, lines);
            }
            let mut resp = Response::from_parts(parts, body);
            let cached = chained.as_ref().and_then(|c| c.cx.cache.as_deref()).and_then(|state| {
                let mut status = resp.status();
                let finishing = crate::middleware::cache::finish(state, &mut status, resp.headers());
                *resp.status_mut() = status;
                finishing
            });
            let status = resp.status().as_u16();
            if let Some(e) = entry.as_mut() {
                e.status = status;
            }
            let done = Done { metrics, method, status, start, span };
            let mut resp = resp.map(|b| ResponseBody::upstream(b, entry, done, in_flight, idle));
            match cached {
                Some(Finishing::Body(body)) => resp.body_mut().replace(body),
                Some(Finishing::Tee(filling)) => resp.body_mut().tee(filling),
                None => {}
            }
            if let Some(coding) = chained.as_ref().and_then(|c| c.cx.encode.get().copied()) {
                resp.body_mut().encode(coding);
            }
            resp
        }
        Err(answer) => {
            let done = Done { metrics, method, status: answer.status.as_u16(), start, span };
            let mut resp = answer_response(answer, &request_id, entry, done, grpc);
            if let Some(c) = chained.as_mut() {
                let status = resp.status();
                c.chain.response(&mut c.cx, status, resp.headers_mut(), None);
                if let Some(coding) = c.cx.encode.get().copied() {
                    resp.body_mut().encode(coding);
                }
            }
            resp
        }
    }
}

/// A route's chain and what it learned about the request, kept for the response hooks.
struct Chained {
    chain: Arc<Chain>,
    cx: Cx,
}

/// The gateway's own answer: a JSON error body for error kinds, empty otherwise (a preflight).
/// A gRPC client gets a trailers-only response instead: HTTP 200 with `grpc-status` and
/// `grpc-message` in the headers and no body. Logs and metrics keep the HTTP status the error
/// stands for, so a failed gRPC call does not count as a success.
fn answer_response(
    answer: Answer,
    request_id: &HeaderValue,
    mut entry: Option<Box<Entry>>,
    done: Done,
    grpc: bool,
) -> Response<ResponseBody> {
    if let Some(e) = entry.as_mut() {
        e.status = answer.status.as_u16();
        e.error = answer.kind.map(ErrorKind::label);
    }
    let mut h = http::HeaderMap::with_capacity(4 + answer.headers.len());
    let (status, body) = match answer.kind {
        Some(kind) if grpc => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(u16::from(kind.grpc_status())));
            // Messages are fixed ASCII without `%`, so they need no percent-encoding.
            h.insert("grpc-message", HeaderValue::from_static(kind.message()));
            (http::StatusCode::OK, Bytes::new())
        }
        Some(kind) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (answer.status, error::json_body(kind, request_id.to_str().unwrap_or("-")))
        }
        None => (answer.status, answer.body.map_or_else(Bytes::new, |b| *b)),
    };
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    // Stated, not only implied by the body, so response hooks (compress's min_size) see it.
    if !body.is_empty() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    h.extend(answer.headers);
    let mut resp = Response::new(ResponseBody::fixed(body, entry, done));
    *resp.status_mut() = status;
    *resp.headers_mut() = h;
    resp
}

/// How the proxy itself uses an upstream response's fields (in `handle`): it appends Via and
/// sets the request id over any the upstream sent (one that echoes the id it was sent, or has
/// its own), and reads Upgrade only from a 101, which always goes into a map. Room in the
/// lines for two fields a hook, such as CORS's origin and credentials or a rate limit's two.
pub fn response_fields(hooks: usize) -> FieldPolicy {
    let mut policy = FieldPolicy::new(96 * hooks);
    policy.add(&[], std::slice::from_ref(&X_REQUEST_ID));
    policy
}

/// Room for the proxy's request lines: forwarding fields with an IPv6 client and a long host,
/// a 32-digit request id, a traceparent (a longer client request id grows it once).
const LINES_ROOM: usize = 384;

/// The policy of a route without middleware.
static NO_HOOKS: LazyLock<FieldPolicy> = LazyLock::new(|| response_fields(0));

async fn route_and_forward(
    parts: &mut http::request::Parts,
    body: ClientBody,
    scan: &headers::Scan,
    mut ctx: Ctx<'_>,
    snapshot: &Snapshot,
    chained: &mut Option<Chained>,
) -> Result<(Response<UpstreamBody>, InFlight, Duration), Answer> {
    // Early limits, before any routing work.
    if scan.bytes > snapshot.limits.max_header_bytes {
        return Err(ErrorKind::HeadersTooLarge.into());
    }
    // ACME http-01 validations, answered before routing and before any redirect (RFC 8555
    // §8.3 lets the CA follow one, but not every CA does). An unknown token goes on to the
    // routes, so a config may still proxy this path to a certificate tool of its own.
    if !snapshot.acme.is_empty()
        && let Some(token) = parts.uri.path().strip_prefix(acme::HTTP01_PREFIX)
        && let Some(key_auth) = snapshot.acme.iter().find_map(|a| a.http01(token))
    {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        return Err(Answer::plain(http::StatusCode::OK, headers, key_auth));
    }
    if let Some(port) = ctx.peer.redirect_https {
        return Err(redirect_to_https(parts, port));
    }
    let path = normalize_path(parts.uri.path().as_bytes()).map_err(|_| ErrorKind::BadPath)?;
    let (host_value, host_field) = request_host(parts, scan.host.clone(), scan.more_hosts)?;
    let host_text = host_value.as_ref().and_then(|h| h.to_str().ok());
    let host = host_text.map(normalize_host).unwrap_or_default();
    let route: &Arc<Route> =
        snapshot.router.lookup(&host, &path, &parts.method, &parts.headers).ok_or(ErrorKind::NoRoute)?;
    *ctx.route = Some(route.clone());
    if let Some(e) = ctx.entry.as_deref_mut() {
        e.route = Some(route.name.clone());
    }

    let declared = scan.declared?;
    if declared.is_some_and(|n| n > route.max_request_body) {
        return Err(ErrorKind::BodyTooLarge.into());
    }

    // The client as the middleware sees it, read before this hop is added to X-Forwarded-For.
    if let Some(chain) = &route.chain {
        let ip = client_ip::client_ip(ctx.peer.addr.ip(), &parts.headers, &snapshot.trusted_proxies);
        let req = Req { method: &parts.method, uri: &parts.uri, host: &host, path: &path, headers: &mut parts.headers };
        let subject = ctx.peer.client_cert_subject.clone();
        let cx = chain.new_cx(ip, subject, route.name.clone(), ctx.request_id.clone(), &req);
        *chained = Some(Chained { chain: chain.clone(), cx });
    }

    let upstream = &route.upstream;
    let client_version = parts.version;
    // An HTTP/2 connection to the upstream cannot carry an HTTP/1.1 upgrade: such a request
    // goes as a plain request, and the upstream answers it as one.
    let upgrade = if upstream.h2_only() {
        None
    } else {
        upgrade::requested(parts.version, &parts.headers, &mut parts.extensions)
    };
    let te_trailers = headers::strip_hop_by_hop_present(&mut parts.headers, scan.hop_by_hop);
    if let Some(u) = &upgrade {
        u.restore(&mut parts.headers);
    }
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // The proxy's own fields go up as lines when nothing reads them from the map: no hook
    // that may use one, none of them from the client to append to or replace, the own
    // HTTP/1.1 client, and no hashing on one of them.
    let mut lines = Vec::new();
    let traceparent = if route.chain.as_ref().is_none_or(|c| !c.uses_forwarding_fields())
        && !scan.forwarding
        && upstream.client.takes_lines()
        && !upstream.hashes_on(headers::FORWARDING_FIELDS)
    {
        lines.reserve(LINES_ROOM);
        headers::forwarding_lines(&mut lines, ctx.peer, host_value.as_ref(), host_text, client_version);
        crate::http1::put_field(&mut lines, &X_REQUEST_ID, ctx.request_id);
        // Written as text; a value is made only for the access log.
        let traceparent = ctx.trace.traceparent_text();
        lines.extend_from_slice(b"traceparent: ");
        lines.extend_from_slice(&traceparent);
        lines.extend_from_slice(b"\r\n");
        ctx.entry.is_some().then(|| headers::hex_value(&traceparent))
    } else {
        headers::add_forwarding(&mut parts.headers, ctx.peer, host_value.as_ref(), host_text, client_version);
        parts.headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        Some(trace::propagate(&mut parts.headers, ctx.trace))
    };
    if let Some(e) = ctx.entry.as_deref_mut() {
        e.traceparent = traceparent;
    }
    match &route.host_header {
        // A Host field the request has is already the one to send; one taken from the target's
        // authority (HTTP/2's `:authority`, an absolute-form target) is added.
        HostHeader::Preserve if host_field => None,
        HostHeader::Preserve => host_value.as_ref().and_then(|h| parts.headers.insert(header::HOST, h.clone())),
        // Set per try, from the target it goes to.
        HostHeader::Upstream => None,
        HostHeader::Literal(v) => parts.headers.insert(header::HOST, v.clone()),
    };

    // Request hooks in order; one may answer instead of the upstream.
    if let Some(c) = chained.as_mut() {
        let mut req =
            Req { method: &parts.method, uri: &parts.uri, host: &host, path: &path, headers: &mut parts.headers };
        c.chain.request(&mut c.cx, &mut req).await?;
    }

    // Bytes in are counted for the access log only; without one, nothing is allocated.
    let exchange = ctx.entry.as_deref_mut().map(|e| e.exchange.insert(Arc::new(Exchange::default())).clone());
    let client_body = RequestBody::client(body, route.max_request_body, snapshot.limits.client_body_timeout, exchange);
    let retry = &upstream.def().retry;
    let payload = if retry.attempts <= 1 {
        Payload::Stream(client_body)
    } else if client_body.is_end_stream() {
        Payload::Replay(Bytes::new())
    } else if declared.is_some_and(|n| n <= retry.max_replay_body) {
        // Small enough to keep for a replay: read it whole (under the same limits) first.
        // Boxed: the rare path's state should not be carried by every request.
        let collected = Box::pin(client_body.collect()).await.map_err(|e| e.kind())?;
        Payload::Replay(collected.to_bytes())
    } else {
        Payload::Stream(client_body)
    };
    let mut out = Outgoing {
        path_and_query: upstream_path(&parts.uri, &path, route.strip_prefix)?,
        // Taken out of the lent parts: nothing reads the client's method or fields after this.
        method: std::mem::take(&mut parts.method),
        headers: std::mem::take(&mut parts.headers),
        host_from_target: route.host_header == HostHeader::Upstream,
        body: payload,
        // The HTTP/2 codec needs a map; the HTTP/1.1 one takes lines where the proxy and the
        // route's hooks name the fields they use.
        raw_response: matches!(client_version, http::Version::HTTP_10 | http::Version::HTTP_11)
            .then(|| chained.as_ref().map_or(Some(&*NO_HOOKS), |c| c.chain.response_fields()))
            .flatten(),
        lines,
    };
    let (mut resp, in_flight) =
        forward::forward(upstream, &mut out, ctx.peer.addr.ip(), &path, ctx.entry, ctx.request_id).await?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // A 101 the client did not ask for would leave it speaking HTTP to a switched peer.
        let Some(upgrade) = upgrade else { return Err(ErrorKind::UpstreamBadResponse.into()) };
        let hold = ctx.peer.connections.as_ref().map(|c| c.hold());
        let taken = resp.extensions_mut().remove::<UpstreamUpgrade>().and_then(|u| u.take());
        let side = match taken {
            Some(own) => upgrade::UpstreamSide::H1(own),
            None => upgrade::UpstreamSide::Hyper(hyper::upgrade::on(&mut resp)),
        };
        upgrade.tunnel(side, upstream.timeouts().upgrade_idle, hold);
    }
    Ok((resp, in_flight, upstream.timeouts().idle))
}

/// `redirect_to_https`: 308 (method and body kept, RFC 9110 §15.4.9) to the same host, path
/// and query on the TLS listener's port. A request without a usable host is a bad request.
fn redirect_to_https(req: &http::request::Parts, port: u16) -> Answer {
    let authority = req.uri.authority().cloned().or_else(|| {
        let h = req.headers.get(header::HOST)?;
        http::uri::Authority::try_from(h.as_bytes()).ok()
    });
    // Only the host of the authority: no port, and never a userinfo part.
    let host = authority.as_ref().filter(|a| !a.as_str().contains('@')).map(|a| a.host());
    let Some(host) = host.filter(|h| !h.is_empty()) else { return ErrorKind::BadRequest.into() };
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 { format!("https://{host}{path}") } else { format!("https://{host}:{port}{path}") };
    let Ok(location) = HeaderValue::try_from(location) else { return ErrorKind::BadRequest.into() };
    let mut headers = http::HeaderMap::new();
    headers.insert(header::LOCATION, location);
    Answer::plain(http::StatusCode::PERMANENT_REDIRECT, headers, Bytes::new())
}

/// The host the client asked for. HTTP/2 carries it in `:authority`, HTTP/1.1 in `Host`
/// (RFC 9110 §7.2). RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is answered
/// 400, as is one whose Host disagrees with an absolute-form target; two readings of the host
/// could route one way and be served another. With it, whether the host is the request's own
/// Host field (rather than taken from its target).
/// `host` is the request's first Host field; `more_hosts`, whether it has another.
fn request_host(
    parts: &http::request::Parts,
    host: Option<HeaderValue>,
    more_hosts: bool,
) -> Result<(Option<HeaderValue>, bool), ErrorKind> {
    if more_hosts {
        return Err(ErrorKind::BadRequest);
    }
    let authority = parts.uri.authority();
    match (host, authority) {
        (Some(h), Some(a)) if parts.version != Version::HTTP_2 && h.as_bytes() != a.as_str().as_bytes() => {
            Err(ErrorKind::BadRequest)
        }
        (Some(h), _) => Ok((Some(h), true)),
        (None, Some(a)) => Ok((HeaderValue::from_str(a.as_str()).ok(), false)),
        (None, None) if parts.version == Version::HTTP_11 => Err(ErrorKind::BadRequest),
        (None, None) => Ok((None, false)),
    }
}

fn upstream_path(uri: &Uri, normal: &str, strip: Option<usize>) -> Result<PathAndQuery, ErrorKind> {
    let path = match strip {
        Some(n) if normal.len() > n => &normal[n..],
        Some(_) => "/",
        None => normal,
    };
    if strip.is_none()
        && path == uri.path()
        && let Some(pq) = uri.path_and_query()
    {
        return Ok(pq.clone());
    }
    let mut s = String::with_capacity(path.len() + uri.query().map_or(0, |q| q.len() + 1));
    s.push_str(path);
    if let Some(q) = uri.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(s)).map_err(|_| ErrorKind::BadRequest)
}
