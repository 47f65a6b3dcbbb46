//! Route definitions: the match (path, host, methods, headers), the upstream it names, and
//! how the request is rewritten; read from the YAML tree with every problem reported.

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::decode::{ByteSize, Decode, Fields, Located, Problems};
use super::node::Node;

#[derive(Debug)]
pub struct RouteDef {
    pub name: Located<String>,
    pub matcher: MatchDef,
    pub upstream: Located<String>,
    pub strip_prefix: Option<Located<bool>>,
    pub host_header: HostHeader,
    pub limits: RouteLimits,
    /// Middleware names, run in this order.
    pub middleware: Vec<Located<String>>,
}

#[derive(Debug)]
pub struct MatchDef {
    pub path: Located<PathSpec>,
    pub host: Option<Located<HostPattern>>,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone)]
pub enum PathSpec {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com`: this host only (lower-cased).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored as the suffix with its dot).
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostHeader {
    /// The client's Host (or HTTP/2 :authority) goes upstream unchanged.
    Preserve,
    /// The target's `host:port`.
    Upstream,
    Literal(HeaderValue),
}

pub(super) fn decode_route(node: &Node, path: &str, p: &mut Problems) -> Option<RouteDef> {
    const KEYS: &[&str] = &["name", "match", "upstream", "strip_prefix", "host_header", "limits", "middleware"];
    let f = Fields::new(node, path, KEYS, p)?;
    let name = f.req("name", p);
    let matcher = f.req("match", p);
    let upstream = f.req("upstream", p);
    let strip_prefix = f.opt("strip_prefix", p);
    let host_header = f.opt("host_header", p).unwrap_or(HostHeader::Preserve);
    let limits = f.opt("limits", p).unwrap_or_default();
    let middleware = f.opt("middleware", p).unwrap_or_default();
    Some(RouteDef {
        name: name?,
        matcher: matcher?,
        upstream: upstream?,
        strip_prefix,
        host_header,
        limits,
        middleware,
    })
}

impl Decode for MatchDef {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        const PATH_KEYS: [&str; 3] = ["path", "path_prefix", "path_regex"];
        let f = Fields::new(node, path, &["path", "path_prefix", "path_regex", "host", "methods", "headers"], p)?;
        let given: Vec<&str> = PATH_KEYS.into_iter().filter(|k| f.has(k)).collect();
        if given.len() > 1 {
            p.add(
                f.pos(),
                path,
                format!("give only one of path, path_prefix, path_regex (found {})", given.join(" and ")),
            );
        }
        let spec = match given.first().copied() {
            Some(key) => {
                let text: Located<String> = f.req(key, p)?;
                let spec = match key {
                    "path" => check_route_path(&text, p).map(PathSpec::Exact),
                    "path_prefix" => check_route_path(&text, p).map(PathSpec::Prefix),
                    _ => match crate::routing::compile_regex(&text.value) {
                        Ok(re) => Some(PathSpec::Regex(re)),
                        Err(e) => {
                            p.add(text.pos, &text.path, format!("invalid regular expression: {e}"));
                            None
                        }
                    },
                }?;
                Located { value: spec, pos: text.pos, path: text.path }
            }
            // No path predicate: the route matches every path.
            None => Located { value: PathSpec::Prefix("/".into()), pos: f.pos(), path: path.to_owned() },
        };
        let host = f.opt::<Located<String>>("host", p).and_then(|h| {
            let pattern = parse_host_pattern(&h.value);
            if pattern.is_none() {
                p.add(
                    h.pos,
                    &h.path,
                    format!(
                        "invalid host {:?}; expected a host name such as api.example.com or *.example.com",
                        h.value
                    ),
                );
            }
            pattern.map(|value| Located { value, pos: h.pos, path: h.path })
        });
        let methods = f.opt::<Vec<Located<String>>>("methods", p).map(|ms| super::decode::methods(&ms, p));
        let headers = f
            .opt::<Vec<(Located<String>, Located<String>)>>("headers", p)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.value;
                let n = HeaderName::from_bytes(name.as_bytes());
                let v = HeaderValue::from_str(&value.value);
                match (n, v) {
                    (Ok(n), Ok(v)) => Some((n, v)),
                    (Err(_), _) => {
                        p.add(value.pos, &value.path, format!("invalid header name {name:?}"));
                        None
                    }
                    (_, Err(_)) => {
                        p.add(value.pos, &value.path, "invalid header value (visible ASCII expected)");
                        None
                    }
                }
            })
            .collect();
        Some(MatchDef { path: spec, host, methods, headers })
    }
}

/// Route paths must already be in normal form, or no request could ever match them.
fn check_route_path(text: &Located<String>, p: &mut Problems) -> Option<String> {
    match crate::routing::normalize_path(text.value.as_bytes()) {
        Ok(normal) if normal == text.value => Some(normal.into_owned()),
        Ok(normal) => {
            p.add(
                text.pos,
                &text.path,
                format!("path {:?} is not in normal form; did you mean {normal:?}?", text.value),
            );
            None
        }
        Err(e) => {
            p.add(
                text.pos,
                &text.path,
                format!("invalid path {:?}: {e}; expected an absolute path such as /api/users", text.value),
            );
            None
        }
    }
}

fn parse_host_pattern(s: &str) -> Option<HostPattern> {
    let s = s.to_ascii_lowercase();
    let (wild, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s.as_str()),
    };
    let ok = !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    match (ok, wild) {
        (false, _) => None,
        (true, true) => Some(HostPattern::Wildcard(format!(".{name}"))),
        (true, false) => Some(HostPattern::Exact(name.to_owned())),
    }
}

impl Decode for HostHeader {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let s = String::decode(node, path, p)?;
        match s.as_str() {
            "preserve" => Some(HostHeader::Preserve),
            "upstream" => Some(HostHeader::Upstream),
            literal => match HeaderValue::from_str(literal) {
                Ok(v) if !literal.is_empty() => Some(HostHeader::Literal(v)),
                _ => {
                    p.add(
                        node.pos,
                        path,
                        format!("invalid host_header {s:?}; expected preserve, upstream, or a host name"),
                    );
                    None
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteLimits {
    pub max_request_body: Option<u64>,
}

impl Decode for RouteLimits {
    fn decode(node: &Node, path: &str, p: &mut Problems) -> Option<Self> {
        let f = Fields::new(node, path, &["max_request_body"], p)?;
        Some(RouteLimits { max_request_body: f.opt::<ByteSize>("max_request_body", p).map(|b| b.0) })
    }
}
