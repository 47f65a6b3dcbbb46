//! RFC 9111 as a shared cache reads it: which responses may be stored, for how long they are
//! fresh, and how old a stored one is. Pure functions over header maps.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::proxy::headers::list_items;

/// The `Cache-Control` directives a shared cache acts on (RFC 9111 §5.2).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub stale_while_revalidate: Option<Duration>,
}

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for item in list_items(headers, &header::CACHE_CONTROL) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item, None),
            };
            let seconds = || value.and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
            match name.to_ascii_lowercase().as_str() {
                // A malformed max-age counts as already stale (RFC 9111 §4.2.1).
                "max-age" => d.max_age = Some(seconds().unwrap_or(Duration::ZERO)),
                "s-maxage" => d.s_maxage = Some(seconds().unwrap_or(Duration::ZERO)),
                "no-store" => d.no_store = true,
                // `no-cache="field"` and `private="field"` name fields a shared cache would
                // have to strip; treating them as the unqualified directive is the safe reading.
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "stale-while-revalidate" => d.stale_while_revalidate = seconds(),
                _ => {}
            }
        }
        // HTTP/1.0 `Pragma: no-cache` on a request without Cache-Control (RFC 9111 §5.4).
        if !headers.contains_key(header::CACHE_CONTROL)
            && list_items(headers, &header::PRAGMA).any(|p| p.eq_ignore_ascii_case("no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1), minus 206, which
/// would need range merging.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Why a response is not stored (for debugging and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
}

/// The facts about a request that storing depends on.
pub struct RequestFacts {
    pub method: Method,
    pub authorization: bool,
    pub no_store: bool,
}

/// How a stored response ages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    pub lifetime: Duration,
    /// Age when stored: the larger of its `Age` and what `Date` says (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// How long after going stale it may still be served while one request refreshes it.
    pub stale_while_revalidate: Duration,
    /// `must-revalidate`/`no-cache`: never served stale; `no-cache`: validated before each use.
    pub must_revalidate: bool,
    pub no_cache: bool,
}

/// Whether a shared cache may store this response, and if so its freshness.
pub fn storable(
    req: &RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    default_ttl: Duration,
    default_swr: Duration,
    now: SystemTime,
) -> Result<Freshness, NotStored> {
    if req.method != Method::GET || status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::Status);
    }
    let cc = Directives::parse(headers);
    if req.no_store || cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    // RFC 9111 §3.5: a response to an authenticated request is shared only when it says so.
    if req.authorization && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if list_items(headers, &header::VARY).any(|v| v == "*") {
        return Err(NotStored::VaryStar);
    }
    let date = headers.get(header::DATE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    let explicit = cc.s_maxage.or(cc.max_age).or_else(|| {
        let expires = headers.get(header::EXPIRES)?;
        // An invalid Expires, such as "0", means already expired (RFC 9111 §5.3).
        let Some(expires) = expires.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
            return Some(Duration::ZERO);
        };
        Some(expires.duration_since(date.unwrap_or(now)).unwrap_or(Duration::ZERO))
    });
    let lifetime = match explicit {
        Some(l) => l,
        None if heuristically_cacheable(status) || cc.public => default_ttl,
        None => Duration::ZERO,
    };
    let validators = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    // Nothing fresh to serve and nothing to revalidate with: storing would only cost memory.
    if (lifetime.is_zero() || cc.no_cache) && !validators {
        return Err(NotStored::NoFreshness);
    }
    let age_header = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = date.and_then(|d| now.duration_since(d).ok()).unwrap_or(Duration::ZERO);
    Ok(Freshness {
        lifetime: if cc.no_cache { Duration::ZERO } else { lifetime },
        initial_age: age_header.max(apparent),
        stale_while_revalidate: cc.stale_while_revalidate.unwrap_or(default_swr),
        must_revalidate: cc.must_revalidate || cc.no_cache,
        no_cache: cc.no_cache,
    })
}

/// Whether `If-None-Match` (weak comparison, RFC 9110 §13.1.2) matches `etag`.
pub fn none_match(if_none_match: &HeaderMap, etag: Option<&http::HeaderValue>) -> bool {
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else { return false };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = strip(etag);
    list_items(if_none_match, &header::IF_NONE_MATCH).any(|t| t == "*" || strip(t) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        m
    }

    fn get() -> RequestFacts {
        RequestFacts { method: Method::GET, authorization: false, no_store: false }
    }

    fn store(req: &RequestFacts, status: u16, headers: &[(&str, &str)]) -> Result<Freshness, NotStored> {
        let status = StatusCode::from_u16(status).expect("status");
        storable(req, status, &h(headers), Duration::ZERO, Duration::from_secs(10), SystemTime::now())
    }

    #[test]
    fn freshness_comes_from_s_maxage_then_max_age_then_expires() {
        let f = store(&get(), 200, &[("cache-control", "max-age=60, s-maxage=120")]).expect("stored");
        assert_eq!(f.lifetime, Duration::from_secs(120));
        let f = store(&get(), 200, &[("cache-control", "max-age=60")]).expect("stored");
        assert_eq!(f.lifetime, Duration::from_secs(60));
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(300));
        let f = store(&get(), 200, &[("date", &date), ("expires", &expires)]).expect("stored");
        assert!(f.lifetime >= Duration::from_secs(299) && f.lifetime <= Duration::from_secs(300));
        assert_eq!(store(&get(), 200, &[("expires", "0")]), Err(NotStored::NoFreshness));
        assert_eq!(store(&get(), 200, &[]), Err(NotStored::NoFreshness), "default_ttl 0: no heuristic freshness");
    }

    #[test]
    fn shared_cache_rules_refuse_what_must_not_be_shared() {
        assert_eq!(store(&get(), 200, &[("cache-control", "private, max-age=60")]), Err(NotStored::Private));
        assert_eq!(store(&get(), 200, &[("cache-control", "no-store")]), Err(NotStored::NoStore));
        assert_eq!(
            store(&get(), 200, &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        assert_eq!(store(&get(), 200, &[("cache-control", "max-age=60"), ("vary", "*")]), Err(NotStored::VaryStar));
        assert_eq!(store(&get(), 206, &[("cache-control", "max-age=60")]), Err(NotStored::Status));
        let auth = RequestFacts { method: Method::GET, authorization: true, no_store: false };
        assert_eq!(store(&auth, 200, &[("cache-control", "max-age=60")]), Err(NotStored::Authorization));
        assert!(store(&auth, 200, &[("cache-control", "public, max-age=60")]).is_ok());
        assert!(store(&auth, 200, &[("cache-control", "s-maxage=60")]).is_ok());
        let head = RequestFacts { method: Method::HEAD, authorization: false, no_store: false };
        assert_eq!(store(&head, 200, &[("cache-control", "max-age=60")]), Err(NotStored::Status));
    }

    #[test]
    fn no_cache_with_a_validator_is_stored_stale_and_must_revalidate() {
        let f = store(&get(), 200, &[("cache-control", "no-cache"), ("etag", "\"a\"")]).expect("stored");
        assert_eq!(f.lifetime, Duration::ZERO);
        assert!(f.must_revalidate && f.no_cache);
        assert_eq!(store(&get(), 200, &[("cache-control", "no-cache")]), Err(NotStored::NoFreshness));
    }

    #[test]
    fn age_counts_from_the_age_header_or_the_date() {
        let f = store(&get(), 200, &[("cache-control", "max-age=600"), ("age", "30")]).expect("stored");
        assert_eq!(f.initial_age, Duration::from_secs(30));
        let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(90));
        let f = store(&get(), 200, &[("cache-control", "max-age=600"), ("date", &date)]).expect("stored");
        assert!(f.initial_age >= Duration::from_secs(89));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag: http::HeaderValue = "W/\"v1\"".parse().expect("etag");
        assert!(none_match(&h(&[("if-none-match", "\"v0\", \"v1\"")]), Some(&etag)));
        assert!(none_match(&h(&[("if-none-match", "*")]), Some(&etag)));
        assert!(!none_match(&h(&[("if-none-match", "\"v2\"")]), Some(&etag)));
        assert!(!none_match(&h(&[]), Some(&etag)));
    }
}
