//! JWT bearer auth, verified by `jsonwebtoken` against an explicit algorithm allow-list (never
//! `none`; a key only verifies its own family, which stops the RS→HS key-confusion attack).
//!
//! Keys come from a secret, a PEM file, or a JWKS URL fetched in the background, refreshed on
//! a period and, at most once per cooldown, when a token names a `kid` the set lacks; a request
//! with such a token waits for that fetch. Verified tokens are cached briefly (bounded, keyed
//! by the whole token, dropped when the key set changes) so a client reusing its token does
//! not pay for a signature check each time.
//!
//! Rejections are 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3): no `error` when no token
//! came, `error="invalid_token"` otherwise.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use tokio::sync::{Notify, watch};

use super::prehashed::{PrehashedMap, shard_of};
use super::{Answer, Claims, Cx, Middleware, MiddlewareMetrics, Outcome, Req, ResponseFields, Step};
use crate::config::{JwtDef, TokenSource};
use crate::proxy::error::ErrorKind;

pub enum Keys {
    Static(DecodingKey),
    Jwks(Arc<Jwks>),
}

pub struct Jwt {
    validation: Validation,
    keys: Keys,
    required: Vec<String>,
    forward: Vec<(HeaderName, String)>,
    source: TokenSource,
    /// `None` with `verify_cache: false`.
    cache: Option<TokenCache>,
    metrics: Arc<MiddlewareMetrics>,
}

impl Jwt {
    pub fn new(def: &JwtDef, keys: Keys, metrics: Arc<MiddlewareMetrics>) -> Jwt {
        let mut v = Validation::new(def.algorithms.first().copied().unwrap_or_default());
        v.algorithms = def.algorithms.clone();
        v.leeway = def.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut spec: Vec<&str> = def
            .required_claims
            .iter()
            .map(String::as_str)
            .filter(|c| ["exp", "nbf", "aud", "iss", "sub"].contains(c))
            .collect();
        // A configured issuer or audience is checked only when the claim is there, so it is
        // required too: a token that leaves it out must not pass for any issuer.
        if !def.issuer.is_empty() {
            v.set_issuer(&def.issuer);
            spec.push("iss");
        }
        if def.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&def.audience);
            spec.push("aud");
        }
        v.set_required_spec_claims(&spec);
        Jwt {
            validation: v,
            keys,
            required: def.required_claims.clone(),
            forward: def.forward_claims.clone(),
            source: def.token_from.clone(),
            cache: def.verify_cache.then(TokenCache::default),
            metrics,
        }
    }

    /// The token as bytes: a cached one is found without testing them as text (`from_utf8`
    /// of a 500-byte token was 260 instructions), which `verify` does before decoding one.
    fn token<'r>(&self, req: &'r Req<'_>) -> Option<&'r [u8]> {
        match &self.source {
            TokenSource::Authorization => {
                let v = req.headers.get(header::AUTHORIZATION)?.as_bytes();
                let space = v.iter().position(|b| *b == b' ')?;
                let (scheme, token) = (&v[..space], &v[space + 1..]);
                scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
            }
            TokenSource::Header(h) => {
                let v = req.headers.get(h)?.as_bytes().trim_ascii();
                Some(v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")).unwrap_or(v))
            }
            TokenSource::Cookie(name) => req
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim_matches('"').as_bytes()),
            TokenSource::Query(name) => req
                .uri
                .query()?
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes()),
        }
        .filter(|t| !t.is_empty())
    }

    fn refuse(&self, cx: &mut Cx, outcome: Outcome) -> Answer {
        self.metrics.count(outcome);
        cx.auth_failure = Some(outcome);
        let value = match outcome {
            Outcome::Missing => HeaderValue::from_static("Bearer"),
            Outcome::Expired => {
                HeaderValue::from_static("Bearer error=\"invalid_token\", error_description=\"token expired\"")
            }
            _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
        };
        let mut h = HeaderMap::new();
        h.insert(header::WWW_AUTHENTICATE, value);
        Answer::error(ErrorKind::Unauthorized, h)
    }

    /// Verifies with the key the token names; `Err(None)` when that key is not (yet) known.
    fn verify(&self, token: &[u8], generation: u64) -> Result<Arc<Verified>, Option<Outcome>> {
        if let Some(verified) = self.cache.as_ref().and_then(|c| c.get(token, generation)) {
            return Ok(verified);
        }
        // A token is base64url and dots: one that is not even text is malformed.
        let token = std::str::from_utf8(token).map_err(|_| Some(Outcome::Malformed))?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| Some(reason(&e)))?;
        let verified = match &self.keys {
            Keys::Static(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation),
            Keys::Jwks(jwks) => {
                let set = jwks.keys.load();
                let key = match &header.kid {
                    Some(kid) => set.by_kid.get(kid),
                    // No kid: only an unambiguous set can say which key.
                    None if set.by_kid.len() == 1 => set.by_kid.values().next(),
                    None => return Err(Some(Outcome::UnknownKey)),
                };
                let Some(key) = key else { return Err(None) };
                jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            }
        };
        let claims = verified.map_err(|e| Some(reason(&e)))?.claims;
        if self.required.iter().any(|c| !claims.contains_key(c)) {
            return Err(Some(Outcome::MissingClaim));
        }
        let verified = Arc::new(Verified { forward: self.forward_values(&claims), claims: Arc::new(claims) });
        if let Some(cache) = &self.cache {
            cache.put(token, &verified, generation);
        }
        Ok(verified)
    }

    /// The values of the `forward_claims` headers, made once per verification (and kept with
    /// a cached one) rather than once per request.
    fn forward_values(&self, claims: &Claims) -> Box<[Option<HeaderValue>]> {
        self.forward
            .iter()
            .map(|(_, claim)| match claims.get(claim) {
                Some(serde_json::Value::String(s)) => HeaderValue::from_str(s).ok(),
                // `scope` as a list, or `roles`: space-separated like an OAuth scope string.
                Some(serde_json::Value::Array(items)) => {
                    let parts: Vec<String> =
                        items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect();
                    HeaderValue::from_str(&parts.join(" ")).ok()
                }
                Some(serde_json::Value::Null) | None => None,
                Some(other) => HeaderValue::from_str(&other.to_string()).ok(),
            })
            .collect()
    }

    fn admit(&self, cx: &mut Cx, req: &mut Req<'_>, verified: Arc<Verified>) {
        self.metrics.count(Outcome::Authenticated);
        for ((h, _), value) in self.forward.iter().zip(verified.forward.iter()) {
            match value {
                Some(v) => _ = req.headers.insert(h.clone(), v.clone()),
                None => _ = req.headers.remove(h),
            }
        }
        cx.claims = Some(verified.claims.clone());
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Static(_) => 0,
            Keys::Jwks(j) => j.keys.load().generation,
        }
    }
}

fn reason(e: &jsonwebtoken::errors::Error) -> Outcome {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => Outcome::BadSignature,
        K::ExpiredSignature => Outcome::Expired,
        K::ImmatureSignature => Outcome::NotYetValid,
        K::InvalidIssuer => Outcome::WrongIssuer,
        K::InvalidAudience | K::InvalidSubject => Outcome::WrongAudience,
        K::MissingRequiredClaim(_) => Outcome::MissingClaim,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm | K::UnsupportedAlgorithm => {
            Outcome::BadAlgorithm
        }
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => Outcome::BadAlgorithm,
        _ => Outcome::Malformed,
    }
}

impl Middleware for Jwt {
    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Appends
    }

    /// Where the token comes from, and the headers claims are forwarded in.
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        let source = match &self.source {
            TokenSource::Authorization => Some(header::AUTHORIZATION),
            TokenSource::Header(h) => Some(h.clone()),
            TokenSource::Cookie(_) => Some(header::COOKIE),
            TokenSource::Query(_) => None,
        };
        Some(source.into_iter().chain(self.forward.iter().map(|(h, _)| h.clone())).collect())
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        // Copies a client sent of the headers this middleware sets are never believed: removed
        // here when the request goes on without a verified token, replaced by `admit` when it
        // has one (a refused request goes nowhere).
        if cx.preflight_answered_later() {
            for (h, _) in &self.forward {
                req.headers.remove(h);
            }
            return Step::Next;
        }
        let Some(token) = self.token(req) else { return Step::Answer(self.refuse(cx, Outcome::Missing)) };
        match self.verify(token, self.generation()) {
            Ok(claims) => {
                self.admit(cx, req, claims);
                Step::Next
            }
            Err(Some(outcome)) => Step::Answer(self.refuse(cx, outcome)),
            Err(None) => {
                let Keys::Jwks(jwks) = &self.keys else { return Step::Answer(self.refuse(cx, Outcome::UnknownKey)) };
                let token = token.to_owned();
                Step::Wait(Box::pin(async move {
                    // Fetch now unless one ran within the cooldown, then look again.
                    jwks.refetch().await;
                    match self.verify(&token, self.generation()) {
                        Ok(claims) => {
                            self.admit(cx, req, claims);
                            Ok(())
                        }
                        Err(outcome) => Err(self.refuse(cx, outcome.unwrap_or(Outcome::UnknownKey))),
                    }
                }))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Verified tokens for a short while: 16 shards, each cleared when full (simple, bounded, and
/// a miss only costs one signature check).
///
/// Keyed by a seeded XXH3 of the token: SipHash (`RandomState`) of a typical 500-byte token was
/// 1.5k instructions, most of a cached verification. The token itself is compared on a hit, so
/// a collision, found or forced, costs a signature check and never admits the wrong token.
struct TokenCache {
    shards: Vec<Mutex<PrehashedMap<Cached>>>,
    seed: u64,
}

/// A verified token's claims, and the values of the headers they are forwarded in (one per
/// `forward_claims` entry, in order; `None` removes the header).
struct Verified {
    claims: Arc<Claims>,
    forward: Box<[Option<HeaderValue>]>,
}

struct Cached {
    token: Box<str>,
    verified: Arc<Verified>,
    /// Unix seconds after which the entry is not used.
    until: u64,
    generation: u64,
}

const CACHE_SHARDS: usize = 16;
const CACHE_PER_SHARD: usize = 4096;
const CACHE_TTL: u64 = 60;

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            // RandomState is seeded from the OS once per process: a cheap source of a seed.
            seed: RandomState::new().hash_one(0u64),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenCache {
    fn shard(&self, h: u64) -> &Mutex<PrehashedMap<Cached>> {
        &self.shards[shard_of(h, CACHE_SHARDS)]
    }

    /// The hash of the token's last 64 bytes (its signature's) and its length: a hit compares
    /// the whole token, so a hash of part of it is enough to find the entry, and hashing all
    /// of a 400-byte token was a fifth of this middleware's cost. A token that copies another's
    /// signature finds that one's entry, differs from it, and is verified (and refused) in full.
    fn hash(&self, token: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(&token[token.len().saturating_sub(64)..], self.seed ^ token.len() as u64)
    }

    fn get(&self, token: &[u8], generation: u64) -> Option<Arc<Verified>> {
        let h = self.hash(token);
        let shard = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        let c = shard.get(&h)?;
        (*c.token.as_bytes() == *token && c.generation == generation && unix_now() < c.until)
            .then(|| c.verified.clone())
    }

    fn put(&self, token: &str, verified: &Arc<Verified>, generation: u64) {
        // Only until the token expires (without leeway), and never past the TTL, so nbf/exp
        // are re-checked by the next full verification.
        let now = unix_now();
        let exp = verified.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(u64::MAX);
        let until = exp.min(now + CACHE_TTL);
        if until <= now {
            return;
        }
        let h = self.hash(token.as_bytes());
        let mut shard = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= CACHE_PER_SHARD {
            shard.clear();
        }
        shard.insert(h, Cached { token: token.into(), verified: verified.clone(), until, generation });
    }
}

// ---------------------------------------------------------------------------------------------

pub struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    /// The set as fetched, to tell whether a fetch changed anything.
    source: JwkSet,
    /// Bumped on every change, so cached verifications by a removed key stop counting.
    generation: u64,
}

/// A JWKS kept fresh in the background; shared by every snapshot that uses the same URL.
pub struct Jwks {
    url: http::Uri,
    /// Roots for an https URL; the system's when `None`.
    ca: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    refresh: Duration,
    cooldown: Duration,
    keys: ArcSwap<KeySet>,
    started: AtomicBool,
    /// Wakes the fetch task early (unknown kid).
    wake: Arc<Notify>,
    /// Counts finished fetches (success or not), for requests waiting on one.
    fetched: watch::Sender<u64>,
    /// Milliseconds since `epoch` of the last fetch started.
    last_fetch: AtomicU64,
    epoch: Instant,
    /// Dropped with the last snapshot that uses this set, which ends its task.
    stop: Arc<Notify>,
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1 << 20;

impl Jwks {
    pub fn new(
        url: http::Uri,
        refresh: Duration,
        cooldown: Duration,
        ca: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    ) -> Jwks {
        Jwks {
            url,
            ca,
            refresh: refresh.max(Duration::from_secs(1)),
            cooldown,
            keys: ArcSwap::from_pointee(KeySet {
                by_kid: HashMap::new(),
                generation: 0,
                source: JwkSet { keys: Vec::new() },
            }),
            started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            fetched: watch::channel(0).0,
            last_fetch: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: Arc::new(Notify::new()),
        }
    }

    /// The client fetches go through: http, or https verified by `jwks_ca` or the system's
    /// roots (without either, https fetches fail and say why at each try).
    fn client(&self) -> Option<JwksClient> {
        use crate::upstream::client::client_config;
        let tls =
            crate::config::UpstreamTlsDef { server_name: None, ca: self.ca.clone(), client_cert: None, verify: true };
        let alpn = vec![b"http/1.1".to_vec()];
        let config = client_config(&tls, alpn.clone())
            .or_else(|e| {
                tracing::warn!(url = %self.url, error = %e, "JWKS over https cannot be verified");
                client_config(&crate::config::UpstreamTlsDef { ca: Some(Arc::default()), ..tls }, alpn)
            })
            .map_err(|e| tracing::error!(url = %self.url, error = %e, "no TLS client for JWKS fetches"))
            .ok()?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let https = hyper_rustls::HttpsConnector::new(
            http,
            config,
            false,
            Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
        );
        Some(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
    }

    /// Starts the background fetch (once; later calls do nothing). Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(client) = weak.upgrade().and_then(|jwks| jwks.client()) else { return };
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                jwks.last_fetch.store(jwks.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                match fetch(&client, &jwks.url).await {
                    Ok(set) => jwks.install(set),
                    Err(e) => {
                        tracing::warn!(url = %jwks.url, error = %e, "JWKS fetch failed; keeping the keys we have")
                    }
                }
                jwks.fetched.send_modify(|n| *n += 1);
                let (refresh, stop, wake) = (jwks.refresh, jwks.stop.clone(), jwks.wake.clone());
                // Only a weak reference while idle, so a set no config uses goes away.
                drop(jwks);
                tokio::select! {
                    _ = tokio::time::sleep(refresh) => {}
                    _ = wake.notified() => {}
                    _ = stop.notified() => return,
                }
            }
        });
    }

    fn install(&self, set: JwkSet) {
        let current = self.keys.load();
        // Any change (a kid added or removed, or a kid now naming another key) replaces the
        // set and drops cached verifications; an identical set changes nothing.
        if current.generation > 0 && current.source == set {
            return;
        }
        let mut by_kid = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                    by_kid.insert(kid, k);
                }
                Err(e) => tracing::warn!(url = %self.url, error = %e, "skipping a JWKS key that cannot be used"),
            }
        }
        tracing::info!(url = %self.url, keys = by_kid.len(), "JWKS loaded");
        let generation = current.generation + 1;
        self.keys.store(Arc::new(KeySet { by_kid, generation, source: set }));
    }

    /// Fetches again unless a fetch started within the cooldown, and waits (at most the
    /// fetch timeout) for the fetch to finish. While the very first fetch is still under way,
    /// just waits for that one; once a fetch has failed, the cooldown applies as usual, so
    /// requests fail fast instead of each waiting out the timeout.
    async fn refetch(&self) {
        let mut rx = self.fetched.subscribe();
        if self.keys.load().generation > 0 || *rx.borrow() > 0 {
            let now = self.epoch.elapsed().as_millis() as u64;
            let last = self.last_fetch.load(Ordering::Relaxed);
            if now.saturating_sub(last) < self.cooldown.as_millis() as u64 {
                return;
            }
            self.wake.notify_one();
        }
        let _ = tokio::time::timeout(FETCH_TIMEOUT, rx.changed()).await;
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

type JwksClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

async fn fetch(client: &JwksClient, url: &http::Uri) -> Result<JwkSet, String> {
    let req = http::Request::get(url.clone())
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(FETCH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect())
        .await
        .map_err(|_| "timed out reading the body".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_answers_only_for_the_token_it_holds() {
        let cache = TokenCache::default();
        let mut claims = Claims::new();
        claims.insert("sub".into(), "a".into());
        let verified = Arc::new(Verified { claims: Arc::new(claims), forward: Box::new([]) });
        let (a, b) = ("header.payload-a.signature", "header.payload-b.signature");
        cache.put(a, &verified, 1);
        assert!(cache.get(a.as_bytes(), 1).is_some_and(|v| Arc::ptr_eq(&v, &verified)));
        assert!(cache.get(b.as_bytes(), 1).is_none(), "another token, though with the same signature and length");
        assert!(cache.get(a.as_bytes(), 2).is_none(), "another key generation");
        // Many tokens spread over the shards and stay findable.
        for i in 0..1000 {
            cache.put(&format!("t{i}"), &verified, 1);
        }
        assert!((0..1000).all(|i| cache.get(format!("t{i}").as_bytes(), 1).is_some()));
        assert!(cache.shards.iter().all(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).is_empty()));
    }
}
