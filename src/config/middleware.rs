//! Middleware definitions (`middleware:` by name, `trusted_proxies:`, `redis:`), read from the
//! YAML tree with every problem reported at its line.
//!
//! Each definition is one mapping with exactly one key naming its kind (`cors`, `jwt`, …).
//! The one file this module reads is a JWT `public_key_file`, so `check` reports a missing or
//! unreadable key at the line that names it.

use std::fmt;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::decode::{Decode, Dur, Fields, Located, Problems, did_you_mean, one_of, parse_str};
use super::node::{Node, Value};

pub const KINDS: &[&str] = &[
    "cors",
    "jwt",
    "api_key",
    "ip_filter",
    "rate_limit",
    "headers",
    "security_headers",
    "path_filter",
    "compress",
    "cache",
];

#[derive(Debug)]
pub struct MiddlewareDef {
    pub name: Located<String>,
    pub kind: MiddlewareKind,
}

#[derive(Debug)]
pub enum MiddlewareKind {
    Cors(CorsDef),
    Jwt(JwtDef),
    ApiKey(ApiKeyDef),
    IpFilter(IpFilterDef),
    RateLimit(RateLimitDef),
    Headers(HeaderRulesDef),
    SecurityHeaders(SecurityHeadersDef),
    PathFilter(PathFilterDef),
    Compress(CompressDef),
    Cache(CacheDef),
}

impl MiddlewareKind {
    pub fn label(&self) -> &'static str {
        match self {
            MiddlewareKind::Cors(_) => "cors",
            MiddlewareKind::Jwt(_) => "jwt",
            MiddlewareKind::ApiKey(_) => "api_key",
            MiddlewareKind::IpFilter(_) => "ip_filter",
            MiddlewareKind::RateLimit(_) => "rate_limit",
            MiddlewareKind::Headers(_) => "headers",
            MiddlewareKind::SecurityHeaders(_) => "security_headers",
            MiddlewareKind::PathFilter(_) => "path_filter",
            MiddlewareKind::Compress(_) => "compress",
            MiddlewareKind::Cache(_) => "cache",
        }
    }
}

pub(super) fn decode_middleware(node: &Node, path: &str, p: &mut Problems) -> Vec<MiddlewareDef> {
    let entries = match &node.value {
        Value::Map(entries) => entries,
        Value::Null => return Vec::new(),
        _ => {
            p.add(node.pos, path, format!("expected a mapping of middleware names, found {}", node.kind()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (key, def) in entries {
        let here = super::decode::child_path(path, &key.name);
        let name = Located { value: key.name.clone(), pos: key.pos, path: here.clone() };
        let kinds = match &def.value {
            Value::Map(kinds) if kinds.len() == 1 => kinds,
            _ => {
                p.add(
                    def.pos,
                    &here,
                    format!(
                        "a middleware is a mapping with exactly one kind key; expected one of: {}",
                        KINDS.join(", ")
                    ),
                );
                continue;
            }
        };
        let (kind_key, body) = &kinds[0];
        let body_path = super::decode::child_path(&here, &kind_key.name);
        let kind = match kind_key.name.as_str() {
            "cors" => CorsDef::decode(body, &body_path, p).map(MiddlewareKind::Cors),
            "jwt" => JwtDef::decode(body, &body_path, p).map(MiddlewareKind::Jwt),
            "api_key" => ApiKeyDef::decode(body, &body_path, p).map(MiddlewareKind::ApiKey),
            "ip_filter" => IpFilterDef::decode(body, &body_path, p).map(MiddlewareKind::IpFilter),
            "rate_limit" => RateLimitDef::decode(body, &body_path, p).map(MiddlewareKind::RateLimit),
            "headers" => HeaderRulesDef::decode(body, &body_path, p).map(MiddlewareKind::Headers),
            "security_headers" => SecurityHeadersDef::decode(body, &body_path, p).map(MiddlewareKind::SecurityHeaders),
            "path_filter" => PathFilterDef::decode(body, &body_path, p).map(MiddlewareKind::PathFilter),
            "compress" => CompressDef::decode(body, &body_path, p).map(MiddlewareKind::Compress),
            "cache" => CacheDef::decode(body, &body_path, p).map(MiddlewareKind::Cache),
            other => {
                let hint = match did_you_mean(other, KINDS) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("expected one of: {}", KINDS.join(", ")),
                };
                p.add(kind_key.pos, &body_path, format!("unknown middleware kind `{other}`; {hint}"));
                None
            }
        };
        if let Some(kind) = kind {
            out.push(MiddlewareDef { name, kind });
        }
    }
    out
}

fn header_name(s: &Located<String>, p: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.value.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.add(s.pos, &s.path, format!("invalid header name {:?}", s.value));
            None
        }
    }
}

/// A header name that a middleware may set, append or remove: not one the gateway sets itself
/// from the message and the connection. A header rule or a forwarded claim that changed one
/// would break framing (a `Content-Length` or `Transfer-Encoding` that disagrees with the body
/// desynchronises the connection) or connection handling; Host follows the route's
/// `host_header`. The framing fields, and the hop-by-hop ones that run the connection.
fn changeable_header_name(s: &Located<String>, p: &mut Problems) -> Option<HeaderName> {
    let name = header_name(s, p)?;
    let managed = crate::http1::is_framing_field(&name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection" | "te" | "upgrade");
    if managed {
        let why = if name == http::header::HOST {
            "the route's `host_header` sets it"
        } else {
            "the gateway sets it from the message and the connection"
        };
        p.add(s.pos, &s.path, format!("header {:?} cannot be changed by middleware: {why}", s.value));
        return None;
    }
    Some(name)
}

/// The list at `key`, each name decoded by `one` (`header_name` or `changeable_header_name`).
fn header_names(
    f: &Fields,
    key: &str,
    p: &mut Problems,
    one: fn(&Located<String>, &mut Problems) -> Option<HeaderName>,
) -> Vec<HeaderName> {
    f.opt::<Vec<Located<String>>>(key, p).unwrap_or_default().iter().filter_map(|s| one(s, p)).collect()
}

// ---------------------------------------------------------------------------------------------
// CORS

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    /// `https://app.example.com` (lower-cased, no trailing slash).
    Exact(String),
    /// `https://*.example.org`: scheme, then any name ending in `.example.org`, then the port
    /// part (empty when none), so only real subdomains on that scheme and port match.
    Subdomains {
        scheme: String,
        suffix: String,
        port: String,
    },
}

#[derive(Debug)]
pub struct CorsDef {
    pub allow_origins: Vec<OriginPattern>,
    pub allow_methods: Vec<Method>,
    pub allow_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

impl Decode for CorsDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] =
            &["allow_origins", "allow_methods", "allow_headers", "expose_headers", "allow_credentials", "max_age"];
        let f = Fields::new(node, path, KEYS, p)?;
        let origins: Vec<Located<String>> = f.req("allow_origins", p)?;
        let allow_origins = origins.iter().filter_map(|o| parse_origin(o, p)).collect();
        let allow_methods = f
            .opt::<Vec<Located<String>>>("allow_methods", p)
            .map_or_else(|| vec![Method::GET, Method::HEAD, Method::POST], |ms| super::decode::methods(&ms, p));
        Some(CorsDef {
            allow_origins,
            allow_methods,
            allow_headers: header_names(&f, "allow_headers", p, header_name),
            expose_headers: header_names(&f, "expose_headers", p, header_name),
            allow_credentials: f.opt("allow_credentials", p).unwrap_or(false),
            max_age: f.opt::<Dur>("max_age", p).map(|d| d.0),
        })
    }
}

fn parse_origin(o: &Located<String>, p: &mut Problems) -> Option<OriginPattern> {
    if o.value == "*" {
        return Some(OriginPattern::Any);
    }
    let lower = o.value.to_ascii_lowercase();
    let bad = |p: &mut Problems| {
        p.add(
            o.pos,
            &o.path,
            format!(
                "invalid origin {:?}; expected \"*\", scheme://host[:port] such as https://app.example.com, or https://*.example.com",
                o.value
            ),
        );
        None
    };
    let Some((scheme, rest)) = lower.split_once("://") else { return bad(p) };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return bad(p);
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => (h, format!(":{port}")),
        Some(_) => return bad(p),
        None => (rest, String::new()),
    };
    let (wild, name) = match host.strip_prefix("*.") {
        Some(n) => (true, n),
        None => (false, host),
    };
    let ok = !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !ok {
        return bad(p);
    }
    Some(if wild {
        OriginPattern::Subdomains { scheme: scheme.to_owned(), suffix: format!(".{name}"), port }
    } else {
        OriginPattern::Exact(lower)
    })
}

// ---------------------------------------------------------------------------------------------
// JWT

pub enum JwtKeys {
    /// One key for every token (a secret or a PEM file).
    Static(DecodingKey),
    /// Fetched from a JWKS URL in the background and selected by `kid`.
    Jwks {
        url: http::Uri,
        refresh: Duration,
        cooldown: Duration,
        /// Roots for an https URL (`jwks_ca`); the system's when absent.
        ca: Option<std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    },
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The key itself is never printed.
            JwtKeys::Static(_) => write!(f, "Static"),
            JwtKeys::Jwks { url, refresh, cooldown, .. } => write!(f, "Jwks({url}, {refresh:?}, {cooldown:?})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// The whole value of another header (a `Bearer ` prefix is accepted).
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

#[derive(Debug)]
pub struct JwtDef {
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    pub forward_claims: Vec<(HeaderName, String)>,
    pub token_from: TokenSource,
    /// Keep verified tokens briefly (see the jwt middleware); `false` verifies every request.
    pub verify_cache: bool,
}

impl Decode for JwtDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &[
            "algorithms",
            "jwks_url",
            "secret",
            "public_key_file",
            "jwks_refresh",
            "jwks_refetch_cooldown",
            "jwks_ca",
            "issuer",
            "audience",
            "leeway",
            "required_claims",
            "forward_claims",
            "token_from",
            "verify_cache",
        ];
        let f = Fields::new(node, path, KEYS, p)?;
        let algs: Vec<Located<String>> = f.req("algorithms", p)?;
        let mut algorithms = Vec::new();
        for a in &algs {
            if a.value.eq_ignore_ascii_case("none") {
                p.add(a.pos, &a.path, "algorithm \"none\" is never accepted (it means an unsigned token)");
                continue;
            }
            match a.value.parse::<Algorithm>() {
                Ok(alg) => algorithms.push(alg),
                Err(_) => p.add(
                    a.pos,
                    &a.path,
                    format!(
                        "unknown algorithm {:?}; expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA",
                        a.value
                    ),
                ),
            }
        }
        if algs.is_empty() {
            p.add(f.pos(), &super::decode::child_path(path, "algorithms"), "list at least one algorithm");
        }
        let hs = |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let sources: Vec<&str> = ["secret", "public_key_file", "jwks_url"].into_iter().filter(|k| f.has(k)).collect();
        if sources.len() != 1 {
            p.add(
                f.pos(),
                path,
                format!(
                    "give exactly one of secret, public_key_file, jwks_url (found {})",
                    if sources.is_empty() { "none".to_owned() } else { sources.join(" and ") }
                ),
            );
            return None;
        }
        let keys = match sources[0] {
            "secret" => {
                let s: Located<String> = f.req("secret", p)?;
                if s.value.len() < 32 {
                    p.add(
                        s.pos,
                        &s.path,
                        "the secret must be at least 32 bytes (RFC 7518 §3.2 asks for a key as long as the hash)",
                    );
                }
                if let Some(a) = algorithms.iter().find(|a| !hs(a)) {
                    p.add(
                        s.pos,
                        &s.path,
                        format!("a secret verifies only HS256/HS384/HS512 tokens, but algorithms lists {a:?}"),
                    );
                }
                JwtKeys::Static(DecodingKey::from_secret(s.value.as_bytes()))
            }
            "public_key_file" => {
                let file: Located<String> = f.req("public_key_file", p)?;
                if let Some(a) = algorithms.iter().find(|a| hs(a)) {
                    p.add(
                        file.pos,
                        &file.path,
                        format!("{a:?} needs a secret, not a public key (that mix-up is the key-confusion attack)"),
                    );
                    return None;
                }
                let pem = match std::fs::read(&file.value) {
                    Ok(pem) => pem,
                    Err(e) => {
                        p.add(file.pos, &file.path, format!("cannot read {}: {e}", file.value));
                        return None;
                    }
                };
                let family = algorithms.first().map(|a| a.family());
                if algorithms.iter().any(|a| Some(a.family()) != family) {
                    p.add(
                        file.pos,
                        &file.path,
                        "one public key serves one algorithm family; list only RS*/PS*, ES* or EdDSA",
                    );
                }
                let key = match family {
                    Some(jsonwebtoken::AlgorithmFamily::Ec) => DecodingKey::from_ec_pem(&pem),
                    Some(jsonwebtoken::AlgorithmFamily::Ed) => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                match key {
                    Ok(k) => JwtKeys::Static(k),
                    Err(e) => {
                        p.add(
                            file.pos,
                            &file.path,
                            format!("{} is not a PEM public key for {:?}: {e}", file.value, algorithms.first()),
                        );
                        return None;
                    }
                }
            }
            _ => {
                let url: Located<String> = f.req("jwks_url", p)?;
                if let Some(a) = algorithms.iter().find(|a| hs(a)) {
                    p.add(url.pos, &url.path, format!("{a:?} needs a secret; a JWKS serves public keys"));
                }
                let uri = match url.value.parse::<http::Uri>() {
                    Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => u,
                    _ => {
                        p.add(
                            url.pos,
                            &url.path,
                            format!("invalid URL {:?}; expected https://host[:port]/path (or http://)", url.value),
                        );
                        return None;
                    }
                };
                JwtKeys::Jwks {
                    url: uri,
                    refresh: f.opt::<Dur>("jwks_refresh", p).map_or(Duration::from_secs(300), |d| d.0),
                    cooldown: f.opt::<Dur>("jwks_refetch_cooldown", p).map_or(Duration::from_secs(10), |d| d.0),
                    ca: f
                        .opt::<Located<String>>("jwks_ca", p)
                        .and_then(|file| super::tls::read_certs(&file, p))
                        .map(std::sync::Arc::new),
                }
            }
        };
        let token_from = f.opt::<Located<String>>("token_from", p).map_or(Some(TokenSource::Authorization), |t| {
            one_of(&t, p, "token_from", "header:NAME, cookie:NAME or query:NAME", |v| match v.split_once(':') {
                Some(("header", h)) if h.eq_ignore_ascii_case("authorization") => Some(TokenSource::Authorization),
                Some(("header", h)) => HeaderName::from_bytes(h.as_bytes()).ok().map(TokenSource::Header),
                Some(("cookie", c)) if !c.is_empty() => Some(TokenSource::Cookie(c.to_owned())),
                Some(("query", q)) if !q.is_empty() => Some(TokenSource::Query(q.to_owned())),
                _ => None,
            })
        });
        let forward_claims = f
            .opt::<Vec<(Located<String>, String)>>("forward_claims", p)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(h, claim)| changeable_header_name(&h, p).map(|h| (h, claim)))
            .collect();
        Some(JwtDef {
            algorithms,
            keys,
            issuer: one_or_many(&f, "issuer", p),
            audience: one_or_many(&f, "audience", p),
            leeway: f.opt::<Dur>("leeway", p).map_or(Duration::from_secs(30), |d| d.0),
            required_claims: f.opt("required_claims", p).unwrap_or_else(|| vec!["exp".to_owned()]),
            forward_claims,
            token_from: token_from?,
            verify_cache: f.opt("verify_cache", p).unwrap_or(true),
        })
    }
}

/// A string or a list of strings.
fn one_or_many(f: &Fields, key: &str, p: &mut Problems) -> Vec<String> {
    match f.node(key).map(|n| &n.value) {
        Some(Value::Seq(_)) => f.opt(key, p).unwrap_or_default(),
        Some(_) => f.opt::<String>(key, p).into_iter().collect(),
        None => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// API keys

#[derive(Debug)]
pub struct ApiKeyDef {
    pub header: HeaderName,
    /// Key ids and the SHA-256 of each key.
    pub keys: Vec<(String, [u8; 32])>,
}

impl Decode for ApiKeyDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["header", "keys"], p)?;
        let header = match f.opt::<Located<String>>("header", p) {
            Some(h) => header_name(&h, p)?,
            None => HeaderName::from_static("x-api-key"),
        };
        let items: Vec<ApiKeyItem> = f.req("keys", p)?;
        Some(ApiKeyDef { header, keys: items.into_iter().map(|k| (k.id, k.hash)).collect() })
    }
}

struct ApiKeyItem {
    id: String,
    hash: [u8; 32],
}

impl Decode for ApiKeyItem {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["id", "key_sha256"], p)?;
        let id: String = f.req("id", p)?;
        let hash = f.req::<Located<String>>("key_sha256", p)?;
        let bytes = decode_hex32(&hash.value);
        if bytes.is_none() {
            p.add(
                hash.pos,
                &hash.path,
                "expected the key's SHA-256 as 64 hex digits (e.g. `printf %s \"$KEY\" | sha256sum`); keys themselves never go in the config",
            );
        }
        Some(ApiKeyItem { id, hash: bytes? })
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// IP rules

#[derive(Debug)]
pub struct IpFilterDef {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Decode for IpNet {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        parse_str(node, path, p, "a CIDR such as 10.0.0.0/8 or 2001:db8::/32, or a single address", |s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("invalid network {s:?}"))
        })
    }
}

impl Decode for IpFilterDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["allow", "deny"], p)?;
        let allow: Vec<IpNet> = f.opt("allow", p).unwrap_or_default();
        let deny: Vec<IpNet> = f.opt("deny", p).unwrap_or_default();
        if allow.is_empty() && deny.is_empty() {
            p.add(f.pos(), path, "give `allow`, `deny` or both (CIDR lists)");
        }
        Some(IpFilterDef { allow, deny })
    }
}

// ---------------------------------------------------------------------------------------------
// Response cache

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKeyPart {
    Method,
    Host,
    Path,
    Query,
}

/// `cache`: a shared response cache (RFC 9111) in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheDef {
    /// Bytes held in all (bodies, headers and keys).
    pub max_size: u64,
    /// Larger responses stream through uncached.
    pub max_object_size: u64,
    /// Freshness for a storable response that states none.
    pub default_ttl: Duration,
    pub key: Vec<CacheKeyPart>,
    /// How long past freshness an entry may be served while one request refreshes it.
    pub stale_while_revalidate: Duration,
}

impl Decode for CacheDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &["max_size", "max_object_size", "default_ttl", "key", "stale_while_revalidate"];
        let f = Fields::new(node, path, KEYS, p)?;
        let max_size = f.opt::<super::decode::ByteSize>("max_size", p).map_or(256 << 20, |s| s.0);
        let max_object_size = f.opt::<super::decode::ByteSize>("max_object_size", p).map_or(1 << 20, |s| s.0);
        if max_object_size > max_size || max_object_size > u64::from(u32::MAX) {
            let at = f.node("max_object_size").map_or(f.pos(), |n| n.pos);
            p.add(
                at,
                &super::decode::child_path(path, "max_object_size"),
                format!("max_object_size must be at most max_size ({max_size} bytes) and under 4GiB"),
            );
        }
        let key = match f.opt::<Vec<Located<String>>>("key", p) {
            None => vec![CacheKeyPart::Method, CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query],
            Some(list) => {
                let parts: Vec<CacheKeyPart> = list
                    .iter()
                    .filter_map(|k| {
                        one_of(k, p, "cache key part", "method, host, path or query", |s| match s {
                            "method" => Some(CacheKeyPart::Method),
                            "host" => Some(CacheKeyPart::Host),
                            "path" => Some(CacheKeyPart::Path),
                            "query" => Some(CacheKeyPart::Query),
                            _ => None,
                        })
                    })
                    .collect();
                if !list.iter().any(|k| k.value == "path") {
                    p.add(
                        f.node("key").map_or(f.pos(), |n| n.pos),
                        &super::decode::child_path(path, "key"),
                        "the key must include `path`, or every path would share one entry",
                    );
                }
                parts
            }
        };
        Some(CacheDef {
            max_size,
            max_object_size,
            default_ttl: f.opt::<Dur>("default_ttl", p).map_or(Duration::ZERO, |d| d.0),
            key,
            stale_while_revalidate: f.opt::<Dur>("stale_while_revalidate", p).map_or(Duration::ZERO, |d| d.0),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Compression

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// The content-coding token (RFC 9110 §8.4.1, RFC 7932, RFC 8878).
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// `compress`: response compression negotiated by `Accept-Encoding`.
#[derive(Debug)]
pub struct CompressDef {
    /// Codings offered, in the gateway's preference order (ties in the client's q-values).
    pub algorithms: Vec<Coding>,
    /// Bodies declared shorter than this are sent as they are.
    pub min_size: u64,
    /// Media types (`text/*`, `application/json`), lower case, without parameters.
    pub content_types: Vec<String>,
}

impl Decode for CompressDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["algorithms", "min_size", "content_types"], p)?;
        let algorithms = match f.opt::<Vec<Located<String>>>("algorithms", p) {
            None => vec![Coding::Br, Coding::Zstd, Coding::Gzip],
            Some(list) => {
                let mut codings = Vec::new();
                for a in &list {
                    let c = one_of(a, p, "compression algorithm", "br, zstd or gzip", |s| match s {
                        "br" => Some(Coding::Br),
                        "zstd" => Some(Coding::Zstd),
                        "gzip" => Some(Coding::Gzip),
                        _ => None,
                    });
                    match c {
                        Some(c) if codings.contains(&c) => {
                            p.add(a.pos, &a.path, format!("{} is listed twice", a.value))
                        }
                        Some(c) => codings.push(c),
                        None => {}
                    }
                }
                if list.is_empty() {
                    p.add(
                        f.pos(),
                        &super::decode::child_path(path, "algorithms"),
                        "list at least one of br, zstd, gzip",
                    );
                }
                codings
            }
        };
        let min_size = f.opt::<super::decode::ByteSize>("min_size", p).map_or(1024, |s| s.0);
        let content_types = match f.opt::<Vec<Located<String>>>("content_types", p) {
            None => ["text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(list) => {
                let mut types = Vec::new();
                for t in list {
                    let v = t.value.trim().to_ascii_lowercase();
                    let valid = v.split_once('/').is_some_and(|(ty, sub)| {
                        let token = |s: &str| {
                            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                        };
                        match (ty, sub) {
                            ("*", "*") => true,
                            ("*", _) => false,
                            (ty, "*") => token(ty),
                            (ty, sub) => token(ty) && token(sub),
                        }
                    });
                    if valid {
                        types.push(v);
                    } else {
                        p.add(
                            t.pos,
                            &t.path,
                            format!("{:?} is not a media type such as text/* or application/json", t.value),
                        );
                    }
                }
                types
            }
        };
        Some(CompressDef { algorithms, min_size, content_types })
    }
}

// ---------------------------------------------------------------------------------------------
// Path filter

/// `path_filter`: globs over the normalised path; a match is answered 404.
#[derive(Debug)]
pub struct PathFilterDef {
    /// As written, for logs and the admin view.
    pub deny: Vec<String>,
    pub set: globset::GlobSet,
}

impl Decode for PathFilterDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["deny"], p)?;
        let deny: Vec<Located<String>> = f.req("deny", p)?;
        if deny.is_empty() {
            p.add(f.pos(), &super::decode::child_path(path, "deny"), "list at least one glob such as \"/internal/**\"");
        }
        let mut set = globset::GlobSetBuilder::new();
        let mut ok = true;
        for g in &deny {
            if !g.value.starts_with('/') && !g.value.starts_with("**") {
                p.add(
                    g.pos,
                    &g.path,
                    format!("{:?}: a glob over the path starts with / (such as \"/internal/**\")", g.value),
                );
                ok = false;
                continue;
            }
            // `/dir/**` also denies `/dir` itself: a deny list that let the directory's own
            // index through would surprise.
            let variants = match g.value.strip_suffix("/**") {
                Some(dir) if !dir.is_empty() => vec![g.value.clone(), dir.to_owned()],
                _ => vec![g.value.clone()],
            };
            for v in variants {
                // `*` stays within one segment, `**` crosses them, as in .gitignore.
                match globset::GlobBuilder::new(&v).literal_separator(true).backslash_escape(true).build() {
                    Ok(glob) => {
                        set.add(glob);
                    }
                    Err(e) => {
                        p.add(g.pos, &g.path, format!("invalid glob {:?}: {}", g.value, e.kind()));
                        ok = false;
                        break;
                    }
                }
            }
        }
        let set = match set.build() {
            Ok(set) => set,
            Err(e) => {
                p.add(f.pos(), path, format!("globs: {e}"));
                return None;
            }
        };
        ok.then(|| PathFilterDef { deny: deny.into_iter().map(|d| d.value).collect(), set })
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Header(HeaderName),
    Claim(String),
    Route,
    ApiKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStore {
    Local,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitDef {
    pub key: LimitKey,
    pub rate: Rate,
    pub burst: u32,
    pub store: LimitStore,
    /// When the store cannot be reached: admit (`true`) or refuse.
    pub allow_on_store_error: bool,
    /// Keys tracked at once by a local store; beyond it new keys are admitted untracked.
    pub max_keys: u32,
}

impl Decode for RateLimitDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const KEYS: &[&str] = &["key", "rate", "burst", "store", "on_store_error", "max_keys"];
        let f = Fields::new(node, path, KEYS, p)?;
        let rate = f.req::<Located<String>>("rate", p).and_then(|r| {
            let parsed = r.value.split_once('/').and_then(|(n, unit)| {
                let count = n.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
                let per = match unit.trim() {
                    "s" | "sec" | "second" => Duration::from_secs(1),
                    "m" | "min" | "minute" => Duration::from_secs(60),
                    "h" | "hour" => Duration::from_secs(3600),
                    _ => return None,
                };
                Some(Rate { count, per })
            });
            if parsed.is_none() {
                p.add(
                    r.pos,
                    &r.path,
                    format!("invalid rate {:?}; expected N/s, N/m or N/h with N ≥ 1, such as 100/s", r.value),
                );
            }
            parsed
        });
        let key = f.opt::<Located<String>>("key", p).map_or(Some(LimitKey::ClientIp), |k| {
            one_of(&k, p, "key", "client_ip, route, api_key, header:NAME or claim:NAME", |v| match v.split_once(':') {
                None if v == "client_ip" => Some(LimitKey::ClientIp),
                None if v == "route" => Some(LimitKey::Route),
                None if v == "api_key" => Some(LimitKey::ApiKey),
                Some(("header", h)) => HeaderName::from_bytes(h.as_bytes()).ok().map(LimitKey::Header),
                Some(("claim", c)) if !c.is_empty() => Some(LimitKey::Claim(c.to_owned())),
                _ => None,
            })
        });
        let store = f.opt::<Located<String>>("store", p).map_or(Some(LimitStore::Local), |s| match s.value.as_str() {
            "local" => Some(LimitStore::Local),
            "redis" => Some(LimitStore::Redis),
            other => {
                p.add(s.pos, &s.path, format!("unknown store {other:?}; expected local or redis"));
                None
            }
        });
        let allow_on_store_error =
            f.opt::<Located<String>>("on_store_error", p).map_or(Some(true), |s| match s.value.as_str() {
                "allow" => Some(true),
                "deny" => Some(false),
                other => {
                    p.add(s.pos, &s.path, format!("unknown on_store_error {other:?}; expected allow or deny"));
                    None
                }
            });
        let rate = rate?;
        let burst = f.opt::<Located<u32>>("burst", p).map_or(Some(rate.count), |b| {
            (b.value >= 1).then_some(b.value).or_else(|| {
                p.add(b.pos, &b.path, "burst must be at least 1");
                None
            })
        });
        Some(RateLimitDef {
            key: key?,
            rate,
            burst: burst?,
            store: store?,
            allow_on_store_error: allow_on_store_error?,
            max_keys: f.opt("max_keys", p).unwrap_or(1_000_000).max(1),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Header rules

/// A header value with `${request_id}`, `${client_ip}` or `${route}` in it.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Fixed(HeaderValue),
    Parts(Vec<TemplatePart>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Text(String),
    RequestId,
    ClientIp,
    Route,
    /// The verified mTLS client certificate's subject; empty without one.
    ClientCertSubject,
}

pub const TEMPLATE_VARS: &[&str] = &["request_id", "client_ip", "route", "client_cert_subject"];

impl Decode for Template {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let text = String::decode(node, path, p)?;
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else { break };
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_owned()));
            }
            let var = &rest[start + 2..start + len];
            parts.push(match var {
                "request_id" => TemplatePart::RequestId,
                "client_ip" => TemplatePart::ClientIp,
                "route" => TemplatePart::Route,
                "client_cert_subject" => TemplatePart::ClientCertSubject,
                other => {
                    let hint = did_you_mean(other, TEMPLATE_VARS).map_or_else(
                        || format!("expected one of: {}", TEMPLATE_VARS.join(", ")),
                        |n| format!("did you mean ${{{n}}}?"),
                    );
                    p.add(node.pos, path, format!("unknown variable ${{{other}}}; {hint}"));
                    return None;
                }
            });
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        let all_text: String =
            parts.iter().filter_map(|t| if let TemplatePart::Text(s) = t { Some(s.as_str()) } else { None }).collect();
        if HeaderValue::from_str(&all_text).is_err() {
            p.add(node.pos, path, "invalid header value (visible ASCII expected)");
            return None;
        }
        match parts.as_slice() {
            [] => Some(Template::Fixed(HeaderValue::from_static(""))),
            [TemplatePart::Text(t)] => HeaderValue::from_str(t).ok().map(Template::Fixed),
            _ => Some(Template::Parts(parts)),
        }
    }
}

#[derive(Debug, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, Template)>,
    pub append: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl Decode for HeaderRules {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["set", "append", "remove"], p)?;
        let pairs = |key: &str, p: &mut Problems| -> Vec<(HeaderName, Template)> {
            f.opt::<Vec<(Located<String>, Template)>>(key, p)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(name, t)| changeable_header_name(&name, p).map(|n| (n, t)))
                .collect()
        };
        Some(HeaderRules {
            set: pairs("set", p),
            append: pairs("append", p),
            remove: header_names(&f, "remove", p, changeable_header_name),
        })
    }
}

#[derive(Debug)]
pub struct HeaderRulesDef {
    pub request: HeaderRules,
    pub response: HeaderRules,
}

impl Decode for HeaderRulesDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["request", "response"], p)?;
        Some(HeaderRulesDef {
            request: f.opt("request", p).unwrap_or_default(),
            response: f.opt("response", p).unwrap_or_default(),
        })
    }
}

/// Response headers a browser acts on, each overridable; `false` drops one.
#[derive(Debug)]
pub struct SecurityHeadersDef {
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub const SECURITY_DEFAULTS: &[(&str, &str, Option<&str>)] = &[
    ("content_type_options", "x-content-type-options", Some("nosniff")),
    ("frame_options", "x-frame-options", Some("DENY")),
    ("referrer_policy", "referrer-policy", Some("strict-origin-when-cross-origin")),
    ("cross_origin_opener_policy", "cross-origin-opener-policy", Some("same-origin")),
    ("permissions_policy", "permissions-policy", None),
    ("content_security_policy", "content-security-policy", None),
    ("strict_transport_security", "strict-transport-security", None),
];

impl Decode for SecurityHeadersDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let keys: Vec<&str> = SECURITY_DEFAULTS.iter().map(|d| d.0).collect();
        let f = Fields::new(node, path, &keys, p)?;
        let mut headers = Vec::new();
        for (key, header, default) in SECURITY_DEFAULTS {
            let value = match f.node(key).map(|n| &n.value) {
                Some(Value::Bool(false)) => None,
                Some(_) => f.opt::<Located<String>>(key, p).and_then(|v| match HeaderValue::from_str(&v.value) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        p.add(v.pos, &v.path, "invalid header value (visible ASCII expected)");
                        None
                    }
                }),
                None => default.map(HeaderValue::from_static),
            };
            if let Some(v) = value {
                headers.push((HeaderName::from_static(header), v));
            }
        }
        Some(SecurityHeadersDef { headers })
    }
}

// ---------------------------------------------------------------------------------------------
// Top level: trusted proxies and Redis

/// `tracing:`: export one span per request over OTLP/HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingDef {
    /// Base URL of an OTLP/HTTP receiver (a collector); spans go to `<endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// How often queued spans are sent.
    pub export_interval: Duration,
}

impl Decode for TracingDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["otlp_endpoint", "service_name", "export_interval"], p)?;
        let endpoint: Located<String> = f.req("otlp_endpoint", p)?;
        let ok = endpoint
            .value
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some() && u.query().is_none());
        if !ok {
            p.add(
                endpoint.pos,
                &endpoint.path,
                format!(
                    "{:?}: expected the http:// base URL of an OTLP/HTTP receiver, such as http://127.0.0.1:4318 (https is not supported yet)",
                    endpoint.value
                ),
            );
            return None;
        }
        Some(TracingDef {
            otlp_endpoint: endpoint.value,
            service_name: f.opt("service_name", p).unwrap_or_else(|| "ferroway".to_owned()),
            export_interval: f.opt::<Dur>("export_interval", p).map_or(Duration::from_secs(5), |d| d.0),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisDef {
    pub url: Located<String>,
    /// Longest wait for one decision before `on_store_error` applies.
    pub timeout: Duration,
}

impl Decode for RedisDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["url", "timeout"], p)?;
        let url: Located<String> = f.req("url", p)?;
        // Parsing only; nothing connects until the first decision.
        if let Err(e) = redis::Client::open(url.value.as_str()) {
            p.add(
                url.pos,
                &url.path,
                format!("invalid Redis URL {:?} ({e}); expected redis://host:port[/db]", url.value),
            );
            return None;
        }
        Some(RedisDef { url, timeout: f.opt::<Dur>("timeout", p).map_or(Duration::from_millis(100), |d| d.0) })
    }
}
