//! `cache`: a shared HTTP cache (RFC 9111) in memory, in front of the route's upstream.
//!
//! - **Lookup** (request hook): GET and HEAD only, keyed by the configured parts of the
//!   request (method, normalised host and path, query) plus the request fields the stored
//!   response names in `Vary`. A fresh entry is answered at once (`x-cache: HIT`, with `Age`),
//!   a client's matching `If-None-Match` gets 304. HEAD is answered from the GET entry.
//! - **Coalescing**: the first miss for a key goes upstream; misses arriving meanwhile wait for
//!   it (up to [`FILL_WAIT`]) and are then served from the entry it stored, so a burst of
//!   misses reaches the upstream once. A response that turns out not storable releases them.
//! - **Revalidation**: a stale entry with a validator is refreshed with a conditional request
//!   (`If-None-Match`/`If-Modified-Since`, unless the client sent conditionals of its own);
//!   a 304 refreshes the entry's headers and freshness, and the client gets the entry.
//! - **stale-while-revalidate**: while one request refreshes an entry that went stale less
//!   than `stale_while_revalidate` ago (or the response's own directive), others get the stale
//!   entry at once (`x-cache: STALE`). `must-revalidate` and `no-cache` entries are never
//!   served stale.
//! - **Store** (response hook, then the body): a storable response (see [`policy`]) is copied
//!   as it streams to the client, up to `max_object_size`; past that it streams on uncached.
//!   The entry holds the final headers, after every response hook (a `compress` later in the
//!   chain has added `Vary: Accept-Encoding`, so each coding is its own variant). Hop-by-hop
//!   fields are already gone; the request id, `Age` and `x-cache` are per answer, not stored.
//! - **Memory**: moka holds at most `max_size` bytes (body + headers + key per entry), evicting
//!   by TinyLFU; purged by path prefix from the admin listener.
//! - **Unsafe methods**: a non-error answer to POST, PUT, PATCH or DELETE invalidates the
//!   entries of that path (RFC 9111 §4.4).

pub mod policy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::sync::watch;

use self::policy::{Freshness, RequestFacts};
use super::{Answer, Cx, Fields, Middleware, MiddlewareMetrics, Outcome, Req, Step};
use crate::config::{CacheDef, CacheKeyPart};

/// How long a miss waits for another request already fetching the same key.
pub const FILL_WAIT: Duration = Duration::from_secs(30);

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The entries of one `cache` middleware, kept across reloads while its definition stays.
pub struct Store {
    entries: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    /// The `Vary` fields last stored for a primary key.
    vary: moka::sync::Cache<Arc<str>, Arc<[HeaderName]>>,
    /// Keys being fetched or refreshed right now, and the signal their waiters watch.
    fills: moka::sync::Cache<Arc<str>, Arc<watch::Sender<bool>>>,
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        Store {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_size)
                .weigher(|k: &Arc<str>, e: &Arc<Entry>| u32::try_from(k.len() + e.weight()).unwrap_or(u32::MAX))
                .support_invalidation_closures()
                .build(),
            vary: moka::sync::Cache::builder().max_capacity(100_000).build(),
            fills: moka::sync::Cache::builder().build(),
        }
    }

    /// Bytes held and entries, after moka's pending evictions.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    /// Drops every entry whose path starts with `prefix`; returns how many.
    pub fn purge(&self, prefix: &str) -> usize {
        let doomed: Vec<Arc<str>> =
            self.entries.iter().filter(|(_, e)| e.path.starts_with(prefix)).map(|(k, _)| (*k).clone()).collect();
        for k in &doomed {
            self.entries.invalidate(k);
        }
        doomed.len()
    }

    fn invalidate_path(&self, path: &str) {
        let path: Box<str> = path.into();
        // Lazily applied: `get` never returns a matching entry after this.
        let _ = self.entries.invalidate_entries_if(move |_, e| e.path == path);
    }
}

/// One stored response.
pub struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    freshness: Freshness,
    path: Box<str>,
}

impl Entry {
    fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        self.body.len() + headers + self.path.len() + 128
    }

    fn age(&self) -> Duration {
        self.freshness.initial_age + self.stored.elapsed()
    }

    fn fresh(&self) -> bool {
        self.age() < self.freshness.lifetime
    }

    /// Stale, but within its stale-while-revalidate window.
    fn servable_stale(&self) -> bool {
        !self.freshness.must_revalidate
            && self.age() < self.freshness.lifetime.saturating_add(self.freshness.stale_while_revalidate)
    }

    fn validators(&self) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
        (self.headers.get(header::ETAG), self.headers.get(header::LAST_MODIFIED))
    }

    /// The answer for a request served from this entry.
    fn answer(&self, outcome: &'static str, head: bool) -> Answer {
        let mut headers = self.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(self.age().as_secs()));
        headers.insert(X_CACHE.clone(), HeaderValue::from_static(outcome));
        let body = (!head && !self.body.is_empty()).then(|| Box::new(self.body.clone()));
        Answer { status: self.status, kind: None, headers, body }
    }

    /// 304 to a client whose `If-None-Match` matches (RFC 9110 §15.4.5: the fields a 200
    /// would carry that describe the representation's identity and caching).
    fn not_modified(&self) -> Answer {
        let mut headers = HeaderMap::new();
        for name in
            [header::ETAG, header::CACHE_CONTROL, header::EXPIRES, header::VARY, header::DATE, header::LAST_MODIFIED]
        {
            for v in self.headers.get_all(&name) {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert(header::AGE, HeaderValue::from(self.age().as_secs()));
        headers.insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
        Answer { status: StatusCode::NOT_MODIFIED, kind: None, headers, body: None }
    }
}

pub struct Cache {
    store: Arc<Store>,
    key: Vec<CacheKeyPart>,
    max_object_size: usize,
    default_ttl: Duration,
    stale_while_revalidate: Duration,
    metrics: Arc<MiddlewareMetrics>,
}

/// What the cache knows about one request, from its request hook to the end of the body.
pub struct RequestState {
    store: Arc<Store>,
    primary: Arc<str>,
    full: Arc<str>,
    path: Box<str>,
    facts: RequestFacts,
    max_object_size: usize,
    default_ttl: Duration,
    stale_while_revalidate: Duration,
    /// The entry this request revalidates (it added the conditionals).
    revalidating: Option<Arc<Entry>>,
    /// The request's fields, for the variant key once the response names its `Vary`.
    req_headers: HeaderMap,
    /// Held while this request is the one fetching `full`; dropping it releases the waiters.
    fill: Mutex<Option<FillGuard>>,
    /// Set by the response hook: how the response leaves the gateway.
    finish: Mutex<Finish>,
}

#[derive(Default)]
enum Finish {
    #[default]
    AsIs,
    /// Copy the body into a new entry with these freshness facts.
    Store(Freshness),
    /// The upstream said 304 to our revalidation: send the entry's status and body.
    Replace(StatusCode, Bytes),
}

struct FillGuard {
    store: Arc<Store>,
    key: Arc<str>,
    done: Arc<watch::Sender<bool>>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.store.fills.invalidate(&self.key);
        self.done.send_replace(true);
    }
}

impl Cache {
    pub fn new(def: &CacheDef, store: Arc<Store>, metrics: Arc<MiddlewareMetrics>) -> Cache {
        Cache {
            store,
            key: def.key.clone(),
            max_object_size: usize::try_from(def.max_object_size).unwrap_or(usize::MAX),
            default_ttl: def.default_ttl,
            stale_while_revalidate: def.stale_while_revalidate,
            metrics,
        }
    }

    fn primary_key(&self, req: &Req<'_>) -> String {
        let mut key = String::with_capacity(req.path.len() + 64);
        for part in &self.key {
            match part {
                // HEAD is answered from the GET entry.
                CacheKeyPart::Method => key.push_str("GET"),
                CacheKeyPart::Host => key.push_str(req.host),
                CacheKeyPart::Path => key.push_str(req.path),
                CacheKeyPart::Query => key.push_str(req.uri.query().unwrap_or("")),
            }
            key.push('\n');
        }
        key
    }

    fn full_key(&self, primary: &Arc<str>, headers: &HeaderMap) -> Arc<str> {
        match self.store.vary.get(primary) {
            Some(fields) => vary_key(primary, &fields, headers),
            None => primary.clone(),
        }
    }

    fn hit(&self, entry: &Entry, req: &Req<'_>, outcome: Outcome, label: &'static str) -> Step<'static> {
        self.metrics.count(outcome);
        if req.headers.contains_key(header::IF_NONE_MATCH)
            && policy::none_match(req.headers, entry.headers.get(header::ETAG))
        {
            return Step::Answer(entry.not_modified());
        }
        Step::Answer(entry.answer(label, *req.method == Method::HEAD))
    }

    /// Becomes the request that fetches `full`, or finds one already doing it.
    fn lead(&self, full: &Arc<str>) -> Result<FillGuard, watch::Receiver<bool>> {
        let entry = self.store.fills.entry(full.clone()).or_insert_with(|| Arc::new(watch::channel(false).0));
        let done = entry.value().clone();
        if entry.is_fresh() {
            Ok(FillGuard { store: self.store.clone(), key: full.clone(), done })
        } else {
            Err(done.subscribe())
        }
    }
}

/// Conditional fields a client may send; with any of them, the cache does not add its own.
static CONDITIONALS: [HeaderName; 5] =
    [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_MATCH, header::IF_UNMODIFIED_SINCE, header::IF_RANGE];

impl Middleware for Cache {
    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            if !method.is_safe() {
                cx.cache = Some(Box::new(self.state(req, Arc::from(""), Arc::from(""), None)));
            }
            return Step::Next;
        }
        let cc = policy::Directives::parse(req.headers);
        // A body on a GET makes the answer depend on something the key does not hold.
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || req.headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            return Step::Next;
        }
        let primary: Arc<str> = self.primary_key(req).into();
        let full = self.full_key(&primary, req.headers);
        let entry = if cc.no_cache { None } else { self.store.entries.get(&full) };
        match &entry {
            Some(e) if e.fresh() && !e.freshness.no_cache => return self.hit(e, req, Outcome::CacheHit, "HIT"),
            _ => {}
        }
        match self.lead(&full) {
            Ok(guard) => {
                // Another request may have stored the entry between our lookup and the lead.
                if let Some(e) = self.store.entries.get(&full).filter(|e| e.fresh() && !e.freshness.no_cache)
                    && entry.is_none()
                {
                    return self.hit(&e, req, Outcome::CacheHit, "HIT");
                }
                let revalidating = entry.filter(|e| {
                    let (etag, modified) = e.validators();
                    (etag.is_some() || modified.is_some()) && !CONDITIONALS.iter().any(|c| req.headers.contains_key(c))
                });
                if let Some(e) = &revalidating {
                    let (etag, modified) = e.validators();
                    if let Some(etag) = etag {
                        req.headers.insert(header::IF_NONE_MATCH, etag.clone());
                    }
                    if let Some(modified) = modified {
                        req.headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
                    }
                }
                self.metrics.count(Outcome::CacheMiss);
                cx.cache = Some(Box::new(self.state(req, primary, full, revalidating)));
                if let Some(state) = cx.cache.as_deref() {
                    *lock(&state.fill) = Some(guard);
                }
                Step::Next
            }
            Err(mut done) => {
                // Someone is fetching this key: a stale entry within its window is served now;
                // otherwise wait for that fetch and answer from what it stored.
                if let Some(e) = entry.as_ref().filter(|e| e.servable_stale()) {
                    return self.hit(e, req, Outcome::CacheStale, "STALE");
                }
                let head = *req.method == Method::HEAD;
                let conditional = req.headers.get(header::IF_NONE_MATCH).cloned();
                let state = self.state(req, primary, full.clone(), None);
                Step::Wait(Box::pin(async move {
                    let _ = tokio::time::timeout(FILL_WAIT, done.wait_for(|d| *d)).await;
                    if let Some(e) = self.store.entries.get(&full).filter(|e| e.fresh() && !e.freshness.no_cache) {
                        self.metrics.count(Outcome::CacheHit);
                        let mut probe = HeaderMap::new();
                        if let Some(c) = conditional {
                            probe.insert(header::IF_NONE_MATCH, c);
                        }
                        if probe.contains_key(header::IF_NONE_MATCH)
                            && policy::none_match(&probe, e.headers.get(header::ETAG))
                        {
                            return Err(e.not_modified());
                        }
                        return Err(e.answer("HIT", head));
                    }
                    // Nothing stored (not storable, too big, failed): fetch for ourselves.
                    self.metrics.count(Outcome::CacheMiss);
                    cx.cache = Some(Box::new(state));
                    Ok(())
                }))
            }
        }
    }

    fn response(&self, cx: &Cx, status: StatusCode, fields: &mut Fields<'_>) {
        // Reads any field (`ResponseFields::Any`), so the response is all in the map.
        let headers = fields.map();
        let Some(state) = cx.cache.as_deref() else { return };
        if state.facts.method != Method::GET && state.facts.method != Method::HEAD {
            if !status.is_client_error() && !status.is_server_error() {
                self.store.invalidate_path(&state.path);
            }
            return;
        }
        headers.insert(X_CACHE.clone(), HeaderValue::from_static("MISS"));
        let now = SystemTime::now();
        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = &state.revalidating
        {
            // RFC 9111 §4.3.4: the 304's fields replace the stored ones.
            let mut merged = old.headers.clone();
            for name in headers.keys() {
                if *name == header::CONTENT_LENGTH || *name == X_CACHE || *name == crate::proxy::headers::X_REQUEST_ID {
                    continue;
                }
                merged.remove(name);
                for v in headers.get_all(name) {
                    merged.append(name.clone(), v.clone());
                }
            }
            if let Ok(freshness) = policy::storable(
                &state.facts,
                old.status,
                &merged,
                state.default_ttl,
                state.stale_while_revalidate,
                now,
            ) {
                let refreshed = Entry {
                    status: old.status,
                    headers: merged.clone(),
                    body: old.body.clone(),
                    stored: Instant::now(),
                    freshness,
                    path: old.path.clone(),
                };
                self.store.entries.insert(state.full.clone(), Arc::new(refreshed));
            } else {
                self.store.entries.invalidate(&state.full);
            }
            let request_id = headers.get(&crate::proxy::headers::X_REQUEST_ID).cloned();
            *headers = merged;
            if let Some(id) = request_id {
                headers.insert(crate::proxy::headers::X_REQUEST_ID.clone(), id);
            }
            headers.insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
            headers.insert(header::AGE, HeaderValue::from(0));
            *lock(&state.finish) = Finish::Replace(old.status, old.body.clone());
            return;
        }
        let declared_too_big = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > state.max_object_size);
        match policy::storable(&state.facts, status, headers, state.default_ttl, state.stale_while_revalidate, now) {
            Ok(freshness) if !declared_too_big => *lock(&state.finish) = Finish::Store(freshness),
            // Not storable: whoever waits on this key fetches for itself.
            _ => drop(lock(&state.fill).take()),
        }
    }
}

impl Cache {
    fn state(
        &self,
        req: &Req<'_>,
        primary: Arc<str>,
        full: Arc<str>,
        revalidating: Option<Arc<Entry>>,
    ) -> RequestState {
        let cc = policy::Directives::parse(req.headers);
        RequestState {
            store: self.store.clone(),
            primary,
            full,
            path: req.path.into(),
            facts: RequestFacts {
                method: req.method.clone(),
                authorization: req.headers.contains_key(header::AUTHORIZATION),
                no_store: cc.no_store,
            },
            max_object_size: self.max_object_size,
            default_ttl: self.default_ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            revalidating,
            // Only a GET's response is stored under a variant key.
            req_headers: if *req.method == Method::GET { req.headers.clone() } else { HeaderMap::new() },
            fill: Mutex::new(None),
            finish: Mutex::new(Finish::AsIs),
        }
    }
}

/// The key of one variant: the primary key and the request's values of the `Vary` fields.
fn vary_key(primary: &Arc<str>, fields: &[HeaderName], headers: &HeaderMap) -> Arc<str> {
    if fields.is_empty() {
        return primary.clone();
    }
    let mut key = String::from(&**primary);
    for f in fields {
        key.push('\n');
        key.push_str(f.as_str());
        key.push(':');
        for (i, v) in headers.get_all(f).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    key.into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Per request and uncontended; a poisoned lock only means a hook panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// After every response hook: what the cache decided, applied to the response leaving the
/// gateway (its final headers are what gets stored).
pub fn finish(state: &RequestState, status: &mut StatusCode, headers: &HeaderMap) -> Option<Finishing> {
    match std::mem::take(&mut *lock(&state.finish)) {
        Finish::AsIs => None,
        Finish::Replace(s, body) => {
            *status = s;
            Some(Finishing::Body(body))
        }
        Finish::Store(freshness) => {
            let mut stored = headers.clone();
            stored.remove(&crate::proxy::headers::X_REQUEST_ID);
            stored.remove(&X_CACHE);
            stored.remove(header::AGE);
            let fields: Vec<HeaderName> = crate::proxy::headers::list_items(&stored, &header::VARY)
                .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
                .collect();
            Some(Finishing::Tee(Box::new(Filling {
                store: state.store.clone(),
                primary: state.primary.clone(),
                full: vary_key(&state.primary, &fields, &state.req_headers),
                path: state.path.clone(),
                vary: fields,
                status: *status,
                headers: stored,
                freshness,
                limit: state.max_object_size,
                buf: BytesMut::new(),
                _fill: lock(&state.fill).take(),
            })))
        }
    }
}

pub enum Finishing {
    /// Send this body instead of the upstream's (a 304 turned back into the entry).
    Body(Bytes),
    /// Copy the body into the cache as it is sent.
    Tee(Box<Filling>),
}

/// A response being copied into the cache as it streams to the client.
pub struct Filling {
    store: Arc<Store>,
    primary: Arc<str>,
    full: Arc<str>,
    path: Box<str>,
    vary: Vec<HeaderName>,
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    limit: usize,
    buf: BytesMut,
    /// Released when the copy is stored or given up, whichever comes first.
    _fill: Option<FillGuard>,
}

impl Filling {
    /// Takes the next piece of the body; `false` once past `max_object_size` (given up).
    pub fn data(&mut self, bytes: &[u8]) -> bool {
        if self.buf.len() + bytes.len() > self.limit {
            return false;
        }
        self.buf.extend_from_slice(bytes);
        true
    }

    /// The body ended cleanly: store it, under the key its own `Vary` gives.
    pub fn end(self: Box<Self>) {
        let this = *self;
        if this.vary.is_empty() {
            this.store.vary.invalidate(&this.primary);
        } else if this.store.vary.get(&this.primary).is_none_or(|v| *v != *this.vary) {
            this.store.vary.insert(this.primary.clone(), this.vary.clone().into());
        }
        let full = this.full;
        let entry = Entry {
            status: this.status,
            headers: this.headers,
            body: this.buf.freeze(),
            stored: Instant::now(),
            freshness: this.freshness,
            path: this.path,
        };
        this.store.entries.insert(full, Arc::new(entry));
    }
}
