//! CORS as the Fetch standard defines it: preflights from allowed origins are answered here
//! (204, never forwarded); actual requests from allowed origins get the allow headers on their
//! response; other origins get no CORS headers at all. `*` is never sent with credentials:
//! the request's own origin is echoed instead, with `Vary: Origin`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::{Answer, Cx, Fields, Middleware, Req, ResponseFields, Step};
use crate::config::{CorsDef, OriginPattern};

pub struct Cors {
    origins: Vec<OriginPattern>,
    any: bool,
    credentials: bool,
    methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// Fetch §4.8: a preflight is an OPTIONS request with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(req: &Req<'_>) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn join<T: AsRef<str>>(items: &[T]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    let s: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    HeaderValue::from_str(&s.join(", ")).ok()
}

impl Cors {
    pub fn new(def: &CorsDef) -> Cors {
        let methods: Vec<&str> = def.allow_methods.iter().map(Method::as_str).collect();
        Cors {
            any: def.allow_origins.contains(&OriginPattern::Any),
            origins: def.allow_origins.clone(),
            credentials: def.allow_credentials,
            methods: join(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: join(&def.allow_headers),
            expose_headers: join(&def.expose_headers),
            max_age: def.max_age.map(|d| HeaderValue::from(d.as_secs())),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else { return false };
        // Compared without case rather than lower-cased into a new string: the patterns are
        // lower-case, and this runs on every request that has an Origin.
        let ends_with = |s: &str, suffix: &str| {
            s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        self.origins.iter().any(|p| match p {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains { scheme, suffix, port } => {
                let Some(rest) = origin
                    .get(..scheme.len())
                    .filter(|s| s.eq_ignore_ascii_case(scheme))
                    .and_then(|_| origin[scheme.len()..].strip_prefix("://"))
                else {
                    return false;
                };
                let (host, host_port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (h, &rest[h.len()..][..p.len() + 1]),
                    None => (rest, ""),
                };
                // `a.example.org` matches `.example.org`; `example.org` and `evilexample.org`
                // do not, and nothing after the host but the configured port is accepted.
                host_port == port
                    && host.len() > suffix.len()
                    && ends_with(host, suffix)
                    && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && !host.starts_with('.')
                    && !host.contains("..")
            }
        })
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any && !self.credentials { HeaderValue::from_static("*") } else { origin.clone() }
    }
}

impl Middleware for Cors {
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(vec![header::ORIGIN, header::ACCESS_CONTROL_REQUEST_METHOD, header::ACCESS_CONTROL_REQUEST_HEADERS])
    }

    /// Its Access-Control fields are inserted, over any the upstream sent; Vary is appended.
    fn response_fields(&self) -> ResponseFields {
        let touched = vec![
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ];
        ResponseFields::Names { touched, replaced: Vec::new() }
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        cx.origin = req.headers.get(header::ORIGIN).filter(|o| self.allows(o)).cloned();
        if cx.preflight {
            // Answered here whether or not the origin is allowed: the upstream has no business
            // with a preflight this middleware owns, and a refused one simply lacks the headers.
            return Step::Answer(Answer::plain(StatusCode::NO_CONTENT, HeaderMap::new(), bytes::Bytes::new()));
        }
        Step::Next
    }

    fn answers_preflights(&self) -> bool {
        true
    }

    fn response(&self, cx: &Cx, _status: StatusCode, h: &mut Fields<'_>) {
        // The answer depends on Origin unless it is a plain `*`.
        if !self.any || self.credentials {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if cx.preflight {
            h.append(
                header::VARY,
                HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
            );
        }
        let Some(origin) = &cx.origin else { return };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if cx.preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            if let Some(v) = &self.allow_headers {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if let Some(v) = &self.max_age {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
        } else if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[OriginPattern], credentials: bool) -> Cors {
        Cors::new(&CorsDef {
            allow_origins: origins.to_vec(),
            allow_methods: vec![Method::GET],
            allow_headers: vec![],
            expose_headers: vec![],
            allow_credentials: credentials,
            max_age: None,
        })
    }

    #[test]
    fn wildcard_origins_match_only_real_subdomains() {
        let c = cors(
            &[OriginPattern::Subdomains { scheme: "https".into(), suffix: ".example.org".into(), port: String::new() }],
            false,
        );
        let ok = |o: &str| c.allows(&HeaderValue::from_str(o).expect("test origin"));
        assert!(ok("https://a.example.org"));
        assert!(ok("https://a.b.example.org"));
        assert!(ok("https://A.Example.org"));
        assert!(ok("HTTPS://A.EXAMPLE.ORG"), "scheme and host compare without case");
        assert!(!ok("https://example.org"));
        assert!(!ok("https://evilexample.org"));
        assert!(!ok("https://a.example.org.evil.com"));
        assert!(!ok("http://a.example.org"));
        assert!(!ok("https://a.example.org:8443"));
        assert!(!ok("https://.example.org"));
        assert!(!ok("null"));
    }

    #[test]
    fn exact_origins_compare_without_case() {
        let c = cors(&[OriginPattern::Exact("https://app.example.com".into())], false);
        let ok = |o: &str| c.allows(&HeaderValue::from_str(o).expect("test origin"));
        assert!(ok("https://app.example.com"));
        assert!(ok("https://App.Example.COM"));
        assert!(!ok("https://app.example.com.evil"));
        assert!(!ok("https://app.example.co"));
    }

    #[test]
    fn star_with_credentials_echoes_the_origin() {
        let origin = HeaderValue::from_static("https://x.test");
        assert_eq!(cors(&[OriginPattern::Any], true).allow_origin_value(&origin), origin);
        assert_eq!(cors(&[OriginPattern::Any], false).allow_origin_value(&origin), "*");
    }
}
