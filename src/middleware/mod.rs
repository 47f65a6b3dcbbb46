//! The per-route middleware chain: one small trait, one module per middleware, and the chain
//! compiled once per snapshot from the route's list of names.
//!
//! Request hooks run in the listed order and may answer early (401, 403, 429, a 204
//! preflight); response hooks of every middleware that ran then apply in reverse order, on
//! upstream answers and early answers alike. A hook is synchronous unless it must wait (a
//! Redis decision, a JWKS fetch for an unknown key), so a chain of local checks boxes nothing.
//! Middleware never touches the body.

pub mod api_key;
pub mod cache;
pub mod client_ip;
pub mod compress;
pub mod cors;
pub mod headers;
pub mod ip_filter;
pub mod jwt;
pub mod path_filter;
pub mod prehashed;
pub mod rate_limit;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::config::{Config, MiddlewareDef, MiddlewareKind};
use crate::proxy::error::ErrorKind;
use crate::upstream::h1::FieldPolicy;

/// Claims of a verified JWT.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// What the chain knows about one request, from its first request hook to its last response
/// hook.
pub struct Cx {
    /// The socket peer, or the right-most untrusted `X-Forwarded-For` entry when the peer is a
    /// trusted proxy.
    pub client_ip: IpAddr,
    pub route: Arc<str>,
    pub request_id: HeaderValue,
    /// The subject of the client's verified TLS certificate, on an mTLS listener.
    pub client_cert_subject: Option<Arc<str>>,
    /// A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method).
    pub preflight: bool,
    /// The request's Origin when a `cors` middleware allowed it.
    pub origin: Option<HeaderValue>,
    /// Claims of the token a `jwt` middleware verified.
    pub claims: Option<Arc<Claims>>,
    /// Id of the key an `api_key` middleware matched.
    pub api_key_id: Option<Arc<str>>,
    /// What each rate limit decided, by the position of the middleware: the requests left and
    /// the seconds until the limit resets (its `RateLimit` field). Inline for one, so a chain
    /// with one limit allocates nothing for it.
    pub rate_limits: smallvec::SmallVec<[(usize, u64, u64); 1]>,
    /// The coding a `compress` middleware negotiated from `Accept-Encoding`.
    pub accept_coding: Option<crate::config::Coding>,
    /// The coding a `compress` middleware applied to this response (its body is encoded).
    pub encode: std::sync::OnceLock<crate::config::Coding>,
    /// Why an auth middleware refused the request (the access log's `auth_failed:REASON`).
    pub auth_failure: Option<Outcome>,
    /// A `cache` middleware's view of this request, from lookup to store.
    pub cache: Option<Box<cache::RequestState>>,
    position: usize,
    ran: usize,
    /// Position of the first `cors` middleware, which answers preflights.
    cors_at: Option<usize>,
}

impl Cx {
    /// Position of the running middleware in its chain.
    pub fn position(&self) -> usize {
        self.position
    }

    /// A preflight that a `cors` middleware later in this chain will answer. Preflights never
    /// carry credentials (Fetch standard §4.8), so auth lets exactly these through.
    pub fn preflight_answered_later(&self) -> bool {
        self.preflight && self.cors_at.is_some_and(|c| c > self.position)
    }

    /// The identity logs show: the API key id, else the token's `sub`.
    pub fn consumer(&self) -> Option<Arc<str>> {
        self.api_key_id
            .clone()
            .or_else(|| self.claims.as_ref().and_then(|c| c.get("sub")).and_then(|s| s.as_str()).map(Arc::from))
    }
}

/// A response made by the gateway instead of the upstream.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Error answers carry a JSON body and count as that kind; `None` sends `body`.
    pub kind: Option<ErrorKind>,
    pub headers: HeaderMap,
    /// Boxed to keep `Answer` (an `Err` on hot paths) small; `None` is empty.
    pub body: Option<Box<Bytes>>,
}

impl From<ErrorKind> for Answer {
    fn from(kind: ErrorKind) -> Answer {
        Answer { status: kind.status(), kind: Some(kind), headers: HeaderMap::new(), body: None }
    }
}

impl Answer {
    pub fn error(kind: ErrorKind, headers: HeaderMap) -> Answer {
        Answer { status: kind.status(), kind: Some(kind), headers, body: None }
    }

    /// An answer that is not an error: `status` with `headers` and `body`.
    pub fn plain(status: StatusCode, headers: HeaderMap, body: Bytes) -> Answer {
        let body = (!body.is_empty()).then(|| Box::new(body));
        Answer { status, kind: None, headers, body }
    }
}

pub type Wait<'a> = Pin<Box<dyn Future<Output = Result<(), Answer>> + Send + 'a>>;

/// What a request hook decided.
pub enum Step<'a> {
    Next,
    Answer(Answer),
    /// The decision needs I/O; the chain awaits it.
    Wait(Wait<'a>),
}

/// What middleware sees of a request: method and target read-only (routing has decided on
/// them, and the normalised path borrows the target), headers writable.
pub struct Req<'r> {
    pub method: &'r Method,
    pub uri: &'r Uri,
    /// The normalised host (lower case, no port) and path routing matched.
    pub host: &'r str,
    pub path: &'r str,
    pub headers: &'r mut HeaderMap,
}

pub trait Middleware: Send + Sync {
    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a>;

    fn response(&self, _cx: &Cx, _status: StatusCode, _fields: &mut Fields<'_>) {}

    /// Which of an upstream response's fields this middleware reads or changes (in its
    /// response hook, or as a cache). A chain that names them lets a response to an HTTP/1.1
    /// client keep the other fields as its upstream sent them, unparsed
    /// (`upstream::h1::RawFields`). `Any` unless a middleware says otherwise, so one that
    /// forgets to costs speed, never fields.
    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Any
    }

    /// The request fields this middleware reads or changes, when it can name them all;
    /// `None` (any field) unless a middleware says otherwise, so one that forgets to costs
    /// speed, never fields. A chain whose middleware name none of the fields the proxy adds on
    /// the way up (`proxy::headers::FORWARDING_FIELDS`) lets the proxy send those as lines
    /// after the request's map rather than insert them before the hooks run.
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        None
    }

    /// Whether this middleware answers CORS preflights itself (auth before it lets them by).
    fn answers_preflights(&self) -> bool {
        false
    }
}

/// A response's fields as a response hook sees them: the response's map and, on a response
/// kept as lines (`upstream::h1::RawFields`), those lines. The lines hold only fields no hook
/// names, so every field a hook may read or remove is in the map (`map`, `get`,
/// `contains_key`). What a hook adds (`append`, `insert`) becomes a line when nothing after it
/// could need to see it: the response is kept as lines, no hook that runs later names the
/// field (`Chain::later`), the map holds none of that name, and it is not a field the HTTP/1.1
/// writer reads (framing, Date).
pub struct Fields<'a> {
    map: &'a mut HeaderMap,
    lines: Option<&'a mut Vec<u8>>,
    later: &'a [HeaderName],
}

impl<'a> Fields<'a> {
    /// Fields that live in a map only (an HTTP/2 response, the proxy's own answer).
    pub fn new(map: &'a mut HeaderMap) -> Self {
        Fields { map, lines: None, later: &[] }
    }

    /// All of the map, for a hook that reads or changes any field (it keeps the response out
    /// of lines by saying so: `ResponseFields::Any`).
    pub fn map(&mut self) -> &mut HeaderMap {
        self.map
    }

    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.map.get(name)
    }

    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.map.contains_key(name)
    }

    pub fn remove(&mut self, name: &HeaderName) {
        self.map.remove(name);
    }

    /// Adds a field after any of its name.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.add(name, value, false);
    }

    /// Adds a field whose value `write` puts into the buffer it is given: straight into the
    /// lines when it may be a line, so the value is never a `HeaderValue` of its own. The value
    /// must be valid field content (visible ASCII, spaces, tabs), made so by the caller: the
    /// lines are written as they are (a debug build checks).
    pub fn append_written(&mut self, name: HeaderName, write: impl FnOnce(&mut Vec<u8>)) {
        match self.line_for(&name) {
            Some(lines) => {
                lines.extend_from_slice(name.as_str().as_bytes());
                lines.extend_from_slice(b": ");
                let start = lines.len();
                write(lines);
                debug_assert!(HeaderValue::from_bytes(&lines[start..]).is_ok(), "not a field value");
                lines.extend_from_slice(b"\r\n");
            }
            None => {
                let mut value = Vec::new();
                write(&mut value);
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                    self.map.append(name, v);
                }
            }
        }
    }

    /// Sets a field in place of any of its name.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.add(name, value, true);
    }

    /// A line, or into the map (in place of the name's fields when `replace`). As a line, an
    /// insert is an append: `line_for` made sure there is none of that name to replace.
    fn add(&mut self, name: HeaderName, value: HeaderValue, replace: bool) {
        match self.line_for(&name) {
            Some(lines) => crate::http1::put_field(lines, &name, &value),
            None if replace => _ = self.map.insert(name, value),
            None => _ = self.map.append(name, value),
        }
    }

    fn line_for(&mut self, name: &HeaderName) -> Option<&mut Vec<u8>> {
        let lines = self.lines.as_deref_mut()?;
        let writer_reads = crate::http1::is_framing_field(name) || *name == http::header::DATE;
        let in_map = !self.map.is_empty() && self.map.contains_key(name);
        (!writer_reads && !self.later.contains(name) && !in_map).then_some(lines)
    }
}

/// What a middleware's response side does with an upstream response's fields.
pub enum ResponseFields {
    /// Nothing, or only appends fields: an appended field follows the upstream's either way.
    Appends,
    /// Sets or reads the `touched` names only when the upstream sent none of them (its hook
    /// would see them missing either way), and replaces or removes the `replaced` names
    /// whatever it sent; appends otherwise.
    Names { touched: Vec<HeaderName>, replaced: Vec<HeaderName> },
    /// Reads any field (compression, a cache).
    Any,
}

/// A route's compiled chain.
pub struct Chain {
    items: Vec<Arc<dyn Middleware>>,
    cors_at: Option<usize>,
    /// The fields the chain's response hooks use, when they name them.
    fields: Option<FieldPolicy>,
    /// Whether a request hook may read or change a field the proxy adds on the way up.
    forwarding: bool,
    /// Whether a response hook may read or change a field the proxy adds on the way back
    /// (Via, X-Request-Id), which then go into the response's map before the hooks run.
    proxy_response_fields: bool,
    /// For each position, the names that the response hooks before it (which run after it)
    /// read or change: what its hook adds under those names goes into the map.
    later: Vec<Box<[HeaderName]>>,
}

impl Chain {
    /// The fields the chain's response hooks read or change, or `None` when any.
    pub fn response_fields(&self) -> Option<&FieldPolicy> {
        self.fields.as_ref()
    }

    /// Whether a request hook may read or change one of the fields the proxy adds on the way
    /// up, which then go into the request's map before the hooks run.
    pub fn uses_forwarding_fields(&self) -> bool {
        self.forwarding
    }

    /// Whether a response hook may read or change the proxy's own response fields (Via,
    /// X-Request-Id): they then go into the response's map, where the hook sees them.
    pub fn uses_proxy_response_fields(&self) -> bool {
        self.proxy_response_fields
    }

    pub fn new_cx(
        &self,
        client_ip: IpAddr,
        client_cert_subject: Option<Arc<str>>,
        route: Arc<str>,
        request_id: HeaderValue,
        req: &Req<'_>,
    ) -> Cx {
        Cx {
            client_ip,
            client_cert_subject,
            route,
            request_id,
            preflight: cors::is_preflight(req),
            origin: None,
            claims: None,
            api_key_id: None,
            rate_limits: smallvec::SmallVec::new(),
            accept_coding: None,
            encode: std::sync::OnceLock::new(),
            cache: None,
            auth_failure: None,
            position: 0,
            ran: 0,
            cors_at: self.cors_at,
        }
    }

    pub async fn request(&self, cx: &mut Cx, req: &mut Req<'_>) -> Result<(), Answer> {
        for (i, m) in self.items.iter().enumerate() {
            cx.position = i;
            cx.ran = i + 1;
            match m.request(cx, req) {
                Step::Next => {}
                Step::Answer(a) => return Err(a),
                Step::Wait(w) => w.await?,
            }
        }
        Ok(())
    }

    /// Response hooks of the middleware that ran, last first. `lines`: those of a response
    /// kept as lines, to which the hooks may add (see [`Fields`]).
    pub fn response(&self, cx: &mut Cx, status: StatusCode, map: &mut HeaderMap, mut lines: Option<&mut Vec<u8>>) {
        for i in (0..cx.ran).rev() {
            cx.position = i;
            let mut fields = Fields { map: &mut *map, lines: lines.as_deref_mut(), later: &self.later[i] };
            self.items[i].response(cx, status, &mut fields);
        }
    }
}

/// How each middleware fared, by name: plain atomics, rendered on `/metrics`.
pub struct MiddlewareMetrics {
    pub kind: &'static str,
    outcomes: [AtomicU64; Outcome::ALL.len()],
}

impl MiddlewareMetrics {
    pub fn count(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.iter().map(|o| (*o, self.outcomes[*o as usize].load(Ordering::Relaxed)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited,
    StoreErrorAllowed,
    StoreErrorDenied,
    Untracked,
    Authenticated,
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    BadAlgorithm,
    UnknownKey,
    InvalidKey,
    Denied,
    CacheHit,
    CacheMiss,
    CacheStale,
}

impl Outcome {
    pub const ALL: [Outcome; 21] = [
        Outcome::Allowed,
        Outcome::Limited,
        Outcome::StoreErrorAllowed,
        Outcome::StoreErrorDenied,
        Outcome::Untracked,
        Outcome::Authenticated,
        Outcome::Missing,
        Outcome::Malformed,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::WrongIssuer,
        Outcome::WrongAudience,
        Outcome::MissingClaim,
        Outcome::BadAlgorithm,
        Outcome::UnknownKey,
        Outcome::InvalidKey,
        Outcome::Denied,
        Outcome::CacheHit,
        Outcome::CacheMiss,
        Outcome::CacheStale,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::StoreErrorAllowed => "store_error_allowed",
            Outcome::StoreErrorDenied => "store_error_denied",
            Outcome::Untracked => "untracked",
            Outcome::Authenticated => "authenticated",
            Outcome::Missing => "missing",
            Outcome::Malformed => "malformed",
            Outcome::BadSignature => "bad_signature",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::WrongIssuer => "wrong_issuer",
            Outcome::WrongAudience => "wrong_audience",
            Outcome::MissingClaim => "missing_claim",
            Outcome::BadAlgorithm => "bad_algorithm",
            Outcome::UnknownKey => "unknown_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::Denied => "denied",
            Outcome::CacheHit => "hit",
            Outcome::CacheMiss => "miss",
            Outcome::CacheStale => "stale",
        }
    }
}

/// Middleware state that outlives a reload (rate-limit buckets, fetched key sets, Redis
/// connections, counters), keyed by the definition it belongs to. Used while compiling only.
/// State is held weakly, as upstream pools are: it lives as long as a snapshot uses it, so a
/// reload that keeps a definition keeps its state, and one that drops it frees it (and stops
/// its background fetch). Counters are held for good, so they never go backwards.
#[derive(Default)]
pub struct Registry {
    local_limits: Mutex<HashMap<String, Weak<rate_limit::LocalStore>>>,
    jwks: Mutex<HashMap<String, Weak<jwt::Jwks>>>,
    redis: Mutex<HashMap<String, Weak<rate_limit::RedisStore>>>,
    caches: Mutex<HashMap<String, Weak<cache::Store>>>,
    metrics: Mutex<HashMap<String, Arc<MiddlewareMetrics>>>,
}

fn shared<T>(map: &Mutex<HashMap<String, Weak<T>>>, key: String, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
        return live;
    }
    let made = Arc::new(make());
    map.insert(key, Arc::downgrade(&made));
    made
}

impl Registry {
    /// Live response caches by middleware name (for `/metrics` and purges).
    pub fn caches(&self) -> Vec<(String, Arc<cache::Store>)> {
        let map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<(String, Arc<cache::Store>)> = map
            .iter()
            .filter_map(|(k, w)| Some((k.split_once('\0').map_or(k.as_str(), |(n, _)| n).to_owned(), w.upgrade()?)))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    pub fn metrics(&self) -> Vec<(String, Arc<MiddlewareMetrics>)> {
        let map = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

/// The compiled middleware of one config, by name, and the background work they need.
pub struct Compiled {
    by_name: HashMap<String, Arc<dyn Middleware>>,
    /// Key sets to keep fresh while this config runs.
    pub jwks: Vec<Arc<jwt::Jwks>>,
}

pub fn compile(config: &Config, registry: &Registry) -> Compiled {
    let mut by_name: HashMap<String, Arc<dyn Middleware>> = HashMap::new();
    let mut jwks = Vec::new();
    for MiddlewareDef { name, kind } in &config.middleware {
        let label = kind.label();
        let metrics = {
            let mut all = registry.metrics.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(format!("{label}/{}", name.value))
                .or_insert_with(|| Arc::new(MiddlewareMetrics { kind: label, outcomes: Default::default() }))
                .clone()
        };
        let m: Arc<dyn Middleware> = match kind {
            MiddlewareKind::Cors(def) => Arc::new(cors::Cors::new(def)),
            MiddlewareKind::Jwt(def) => {
                let keys = match &def.keys {
                    crate::config::JwtKeys::Static(k) => jwt::Keys::Static(k.clone()),
                    crate::config::JwtKeys::Jwks { url, refresh, cooldown, ca } => {
                        // Roots are part of the identity: a changed jwks_ca makes a new set.
                        let roots = ca.as_ref().map(|c| {
                            use std::hash::{Hash, Hasher};
                            let mut h = std::collections::hash_map::DefaultHasher::new();
                            c.hash(&mut h);
                            h.finish()
                        });
                        let key = format!("{url} {refresh:?} {cooldown:?} {roots:?}");
                        let set = shared(&registry.jwks, key, || {
                            jwt::Jwks::new(url.clone(), *refresh, *cooldown, ca.clone())
                        });
                        jwks.push(set.clone());
                        jwt::Keys::Jwks(set)
                    }
                };
                Arc::new(jwt::Jwt::new(def, keys, metrics))
            }
            MiddlewareKind::ApiKey(def) => Arc::new(api_key::ApiKey::new(def, metrics)),
            MiddlewareKind::IpFilter(def) => Arc::new(ip_filter::IpFilter::new(def, metrics)),
            MiddlewareKind::RateLimit(def) => {
                let store = match def.store {
                    crate::config::LimitStore::Local => rate_limit::Store::Local(shared(
                        &registry.local_limits,
                        format!("{} {:?}", name.value, def),
                        || rate_limit::LocalStore::new(def.max_keys as usize),
                    )),
                    crate::config::LimitStore::Redis => {
                        let redis = config.redis.as_ref().expect("validation requires `redis` for store: redis");
                        rate_limit::Store::Redis(shared(
                            &registry.redis,
                            format!("{} {:?}", redis.url.value, redis.timeout),
                            || rate_limit::RedisStore::new(&redis.url.value, redis.timeout),
                        ))
                    }
                };
                Arc::new(rate_limit::RateLimit::new(&name.value, def, store, metrics))
            }
            MiddlewareKind::Headers(def) => Arc::new(headers::HeaderRules::new(def)),
            MiddlewareKind::SecurityHeaders(def) => Arc::new(headers::SecurityHeaders::new(def)),
            MiddlewareKind::PathFilter(def) => Arc::new(path_filter::PathFilter::new(def, metrics)),
            MiddlewareKind::Compress(def) => Arc::new(compress::Compress::new(def)),
            MiddlewareKind::Cache(def) => {
                // Entries survive a reload that leaves this definition as it was.
                let store =
                    shared(&registry.caches, format!("{}\0{:?}", name.value, def), || cache::Store::new(def.max_size));
                Arc::new(cache::Cache::new(def, store, metrics))
            }
        };
        by_name.insert(name.value.clone(), m);
    }
    Compiled { by_name, jwks }
}

impl Compiled {
    /// The chain for a route's list of names (already checked to exist); `None` when empty, so
    /// a route without middleware does no middleware work at all.
    pub fn chain(&self, names: &[crate::config::Located<String>]) -> Option<Arc<Chain>> {
        if names.is_empty() {
            return None;
        }
        let items: Vec<Arc<dyn Middleware>> =
            names.iter().filter_map(|n| self.by_name.get(&n.value).cloned()).collect();
        let cors_at = items.iter().position(|m| m.answers_preflights());
        let fields = field_policy(&items);
        let forwarding = items.iter().any(|m| {
            m.request_fields().is_none_or(|names| {
                names.iter().any(|n| crate::proxy::headers::FORWARDING_FIELDS.contains(&n.as_str()))
            })
        });
        let named: Vec<Vec<HeaderName>> = items
            .iter()
            .map(|m| match m.response_fields() {
                ResponseFields::Names { touched, replaced } => touched.into_iter().chain(replaced).collect(),
                // Any keeps the response out of lines, so what it names does not matter here.
                ResponseFields::Appends | ResponseFields::Any => Vec::new(),
            })
            .collect();
        let proxy_response_fields = fields.is_none()
            || named.iter().flatten().any(|n| *n == http::header::VIA || *n == crate::proxy::headers::X_REQUEST_ID);
        let later = (0..items.len()).map(|i| named[..i].concat().into_boxed_slice()).collect();
        Some(Arc::new(Chain { items, cors_at, fields, forwarding, proxy_response_fields, later }))
    }
}

/// The route's use of response fields as one policy, the proxy's own and then the chain's;
/// `None` when a middleware reads any.
fn field_policy(items: &[Arc<dyn Middleware>]) -> Option<FieldPolicy> {
    let mut policy = crate::proxy::response_fields(items.len());
    for m in items {
        match m.response_fields() {
            ResponseFields::Appends => {}
            ResponseFields::Names { touched, replaced } => policy.add(&touched, &replaced),
            ResponseFields::Any => return None,
        }
    }
    Some(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    /// Where each field a hook adds goes on a response kept as lines.
    #[test]
    fn a_hooks_fields_become_lines_unless_something_after_it_needs_them_in_the_map() {
        let (mut map, mut lines) = (HeaderMap::new(), b"server: up\r\n".to_vec());
        let later = [header::VARY];
        let mut f = Fields { map: &mut map, lines: Some(&mut lines), later: &later };
        let v = HeaderValue::from_static;
        f.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, v("*"));
        f.insert(header::VARY, v("Origin"));
        f.insert(header::DATE, v("Thu, 01 Jan 2026 00:00:00 GMT"));
        f.insert(header::CONTENT_LENGTH, v("2"));
        f.append(header::CONNECTION, v("close"));
        // The map now holds a Vary, so the next one follows it there.
        f.remove(&header::VARY);
        f.map().insert(header::WARNING, v("1"));
        f.append(header::WARNING, v("2"));
        assert_eq!(lines, b"server: up\r\naccess-control-allow-origin: *\r\n");
        let mut in_map: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        in_map.sort_unstable();
        assert_eq!(in_map, ["connection", "content-length", "date", "warning"]);
        assert_eq!(map.get_all(header::WARNING).iter().count(), 2);

        let mut map = HeaderMap::new();
        Fields::new(&mut map).append(header::VARY, v("Origin"));
        assert_eq!(map.len(), 1, "without lines, the map");
    }
}
