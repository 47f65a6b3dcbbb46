//! Rate limiting by client IP, a header, a JWT claim, an API key or the route, with GCRA
//! semantics exactly as configured, kept in process or shared through Redis.
//!
//! Admitted responses carry `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-
//! headers-10); refused requests get 429 with `Retry-After` as well. A request without the
//! header or claim its limit is keyed on is limited by its client IP instead.

pub mod gcra;
pub mod local;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{HeaderName, StatusCode};

use self::gcra::{Decision, Gcra};
pub use self::local::LocalStore;
use self::local::Tracked;
pub use self::redis::RedisStore;
use super::{Answer, Cx, Fields, Middleware, MiddlewareMetrics, Outcome, Req, ResponseFields, Step};
use crate::config::{LimitKey, RateLimitDef};
use crate::proxy::error::ErrorKind;

pub enum Store {
    Local(Arc<LocalStore>),
    Redis(Arc<RedisStore>),
}

pub struct RateLimit {
    /// Redis keys are `ferroway:rl:<middleware>:<key>`.
    prefix: String,
    key: LimitKey,
    gcra: Gcra,
    store: Store,
    allow_on_store_error: bool,
    policy: HeaderValue,
    /// The policy's name as a structured-field string, for the `RateLimit` value.
    name: String,
    metrics: Arc<MiddlewareMetrics>,
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// A structured-field string (RFC 8941 §3.3.3): quotes and backslashes escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimit {
    pub fn new(name: &str, def: &RateLimitDef, store: Store, metrics: Arc<MiddlewareMetrics>) -> RateLimit {
        let sf = sf_string(name);
        let policy = format!("{sf};q={};w={}", def.rate.count, def.rate.per.as_secs());
        RateLimit {
            prefix: format!("ferroway:rl:{name}:"),
            key: def.key.clone(),
            gcra: Gcra::new(def.rate.count, def.rate.per, def.burst),
            store,
            allow_on_store_error: def.allow_on_store_error,
            policy: HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("\"default\"")),
            name: sf,
            metrics,
        }
    }

    /// The key's text: what Redis stores it under, and what the local store hashes.
    /// The local store's key, hashed straight from the bytes (no text made per request).
    fn local_key(&self, store: &LocalStore, cx: &Cx, req: &Req<'_>) -> u64 {
        let found: Option<(u8, &[u8])> = match &self.key {
            LimitKey::ClientIp => None,
            LimitKey::Route => Some((1, cx.route.as_bytes())),
            LimitKey::Header(h) => req.headers.get(h).map(|v| (2, v.as_bytes())),
            LimitKey::Claim(c) => match cx.claims.as_ref().and_then(|cl| cl.get(c)) {
                Some(serde_json::Value::String(s)) => Some((3, s.as_bytes())),
                Some(other) => return store.key(3, other.to_string().as_bytes()),
                None => None,
            },
            LimitKey::ApiKey => cx.api_key_id.as_ref().map(|k| (4, k.as_bytes())),
        };
        match (found, cx.client_ip) {
            (Some((tag, bytes)), _) => store.key(tag, bytes),
            (None, std::net::IpAddr::V4(ip)) => store.key(0, &ip.octets()),
            (None, std::net::IpAddr::V6(ip)) => store.key(0, &ip.octets()),
        }
    }

    /// The key as text, for Redis (every gateway must name a key the same way).
    fn key_text(&self, cx: &Cx, req: &Req<'_>) -> (u8, String) {
        let found = match &self.key {
            LimitKey::ClientIp => None,
            LimitKey::Route => Some((1, cx.route.to_string())),
            LimitKey::Header(h) => req.headers.get(h).map(|v| (2, String::from_utf8_lossy(v.as_bytes()).into_owned())),
            LimitKey::Claim(c) => cx.claims.as_ref().and_then(|cl| cl.get(c)).map(|v| match v {
                serde_json::Value::String(s) => (3, s.clone()),
                other => (3, other.to_string()),
            }),
            LimitKey::ApiKey => cx.api_key_id.as_ref().map(|k| (4, k.to_string())),
        };
        found.unwrap_or_else(|| (0, cx.client_ip.to_string()))
    }

    fn record(&self, cx: &mut Cx, d: Decision) -> Step<'static> {
        let (remaining, reset) = match d {
            Decision::Allowed { remaining, reset } => (remaining, reset),
            Decision::Limited { reset, .. } => (0, reset),
        };
        cx.rate_limits.push((cx.position(), remaining, ceil_secs(reset)));
        match d {
            Decision::Allowed { .. } => Step::Next,
            Decision::Limited { retry_after, .. } => {
                let mut h = HeaderMap::new();
                h.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(retry_after).max(1)));
                Step::Answer(Answer::error(ErrorKind::RateLimited, h))
            }
        }
    }

    fn store_error(&self) -> Result<(), Answer> {
        if self.allow_on_store_error {
            self.metrics.count(Outcome::StoreErrorAllowed);
            Ok(())
        } else {
            self.metrics.count(Outcome::StoreErrorDenied);
            let mut h = HeaderMap::new();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(Answer::error(ErrorKind::RateLimitUnavailable, h))
        }
    }

    fn count(&self, d: &Decision) {
        self.metrics.count(match d {
            Decision::Allowed { .. } => Outcome::Allowed,
            Decision::Limited { .. } => Outcome::Limited,
        });
    }
}

impl Middleware for RateLimit {
    /// A header key's field; the other keys come from the chain's context.
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(match &self.key {
            LimitKey::Header(h) => vec![h.clone()],
            _ => Vec::new(),
        })
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        match &self.store {
            Store::Local(store) => {
                let key = self.local_key(store, cx, req);
                match store.decide(&self.gcra, key, store.now()) {
                    Tracked::Yes(d) => {
                        self.count(&d);
                        self.record(cx, d)
                    }
                    Tracked::Untracked(d) => {
                        self.metrics.count(Outcome::Untracked);
                        self.record(cx, d)
                    }
                }
            }
            Store::Redis(store) => Step::Wait(Box::pin(async move {
                let (tag, text) = self.key_text(cx, req);
                let key = if text.len() <= 128 {
                    format!("{}{tag}:{text}", self.prefix)
                } else {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(text.as_bytes());
                    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{}{tag}:sha256:{hex}", self.prefix)
                };
                let us = |ns: u64| ns.div_ceil(1000);
                match store.decide(&key, us(self.gcra.interval), us(self.gcra.limit)).await {
                    Ok((admitted, ahead_us)) => {
                        let d = self.gcra.outcome(admitted, ahead_us.saturating_mul(1000));
                        self.count(&d);
                        match self.record(cx, d) {
                            Step::Answer(a) => Err(a),
                            _ => Ok(()),
                        }
                    }
                    Err(_) => self.store_error(),
                }
            })),
        }
    }

    fn response(&self, cx: &Cx, _status: StatusCode, h: &mut Fields<'_>) {
        if let Some(&(_, remaining, reset)) = cx.rate_limits.iter().find(|(p, _, _)| *p == cx.position()) {
            h.append(RATELIMIT_POLICY, self.policy.clone());
            // Written by hand into the response's lines: `format!` was 2k instructions, most
            // of this middleware's cost, and a value of its own another 0.5k. `name` is an
            // sf-string of printable ASCII, so the value is valid field content.
            h.append_written(RATELIMIT, |out| {
                let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
                for part in [&*self.name, ";r=", r.format(remaining), ";t=", t.format(reset)] {
                    out.extend_from_slice(part.as_bytes());
                }
            });
        }
    }

    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Appends
    }
}
