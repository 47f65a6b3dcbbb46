use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::{HostPattern, PathSpec};

fn spec(
    host: Option<&str>,
    path: PathSpec,
    methods: Option<Vec<Method>>,
    headers: &[(&'static str, &'static str)],
    name: &'static str,
) -> RouteSpec<&'static str> {
    RouteSpec {
        host: host.map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(h.to_owned()),
        }),
        path,
        methods,
        headers: headers.iter().map(|(n, v)| (http::HeaderName::from_static(n), HeaderValue::from_static(v))).collect(),
        value: name,
    }
}

fn prefix(p: &str) -> PathSpec {
    PathSpec::Prefix(p.to_owned())
}

fn get<'a>(r: &'a Router<&'static str>, host: &str, path: &str) -> Option<&'a str> {
    r.lookup(host, path, &Method::GET, &HeaderMap::new()).copied()
}

#[test]
fn exact_beats_longer_prefix_beats_shorter_prefix_beats_regex() {
    let r = Router::new(vec![
        spec(None, PathSpec::Regex(compile_regex("^/api/.*$").expect("regex")), None, &[], "regex"),
        spec(None, prefix("/api"), None, &[], "short"),
        spec(None, prefix("/api/users"), None, &[], "long"),
        spec(None, PathSpec::Exact("/api/users/me".into()), None, &[], "exact"),
    ])
    .expect("router");
    assert_eq!(get(&r, "h", "/api/users/me"), Some("exact"));
    assert_eq!(get(&r, "h", "/api/users/1"), Some("long"));
    assert_eq!(get(&r, "h", "/api/users"), Some("long"));
    assert_eq!(get(&r, "h", "/api/other"), Some("short"));
    assert_eq!(get(&r, "h", "/other"), None);
}

#[test]
fn regex_used_when_no_path_or_prefix_matches() {
    let r = Router::new(vec![
        spec(None, PathSpec::Regex(compile_regex("^/v[0-9]+/items$").expect("regex")), None, &[], "items"),
        spec(None, prefix("/x"), None, &[], "x"),
    ])
    .expect("router");
    assert_eq!(get(&r, "h", "/v2/items"), Some("items"));
    assert_eq!(get(&r, "h", "/v2/items/1"), None);
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let r = Router::new(vec![spec(None, prefix("/api/users"), None, &[], "users")]).expect("router");
    assert_eq!(get(&r, "h", "/api/users"), Some("users"));
    assert_eq!(get(&r, "h", "/api/users/"), Some("users"));
    assert_eq!(get(&r, "h", "/api/users/1"), Some("users"));
    assert_eq!(get(&r, "h", "/api/usersX"), None);
    assert_eq!(get(&r, "h", "/api"), None);
}

#[test]
fn specific_host_beats_wildcard_beats_any() {
    let r = Router::new(vec![
        spec(None, prefix("/"), None, &[], "any"),
        spec(Some("*.example.com"), prefix("/"), None, &[], "wild"),
        spec(Some("*.eu.example.com"), prefix("/"), None, &[], "wild-eu"),
        spec(Some("api.example.com"), prefix("/"), None, &[], "api"),
    ])
    .expect("router");
    assert_eq!(get(&r, "api.example.com", "/x"), Some("api"));
    assert_eq!(get(&r, "www.example.com", "/x"), Some("wild"));
    assert_eq!(get(&r, "a.eu.example.com", "/x"), Some("wild-eu"));
    assert_eq!(get(&r, "example.com", "/x"), Some("any"));
    assert_eq!(get(&r, "other.org", "/x"), Some("any"));
}

#[test]
fn host_table_falls_through_to_less_specific_hosts_when_no_path_matches() {
    let r = Router::new(vec![
        spec(None, prefix("/"), None, &[], "fallback"),
        spec(Some("api.example.com"), prefix("/users"), None, &[], "users"),
    ])
    .expect("router");
    assert_eq!(get(&r, "api.example.com", "/users/1"), Some("users"));
    assert_eq!(get(&r, "api.example.com", "/orders"), Some("fallback"));
}

#[test]
fn methods_and_headers_narrow_a_path() {
    let r = Router::new(vec![
        spec(None, prefix("/api"), None, &[], "plain"),
        spec(None, prefix("/api"), Some(vec![Method::POST]), &[], "post"),
        spec(None, prefix("/api"), None, &[("x-canary", "true")], "canary"),
    ])
    .expect("router");
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("true"));
    assert_eq!(r.lookup("h", "/api", &Method::GET, &HeaderMap::new()), Some(&"plain"));
    assert_eq!(r.lookup("h", "/api", &Method::POST, &HeaderMap::new()), Some(&"post"));
    assert_eq!(r.lookup("h", "/api", &Method::POST, &canary), Some(&"canary"));
}

#[test]
fn a_method_mismatch_falls_back_to_a_shorter_prefix() {
    let r = Router::new(vec![
        spec(None, prefix("/"), None, &[], "root"),
        spec(None, prefix("/api"), Some(vec![Method::POST]), &[], "post"),
    ])
    .expect("router");
    assert_eq!(get(&r, "h", "/api"), Some("root"));
}

#[test]
fn ties_are_found() {
    let p = prefix("/api");
    let p2 = prefix("/api/");
    let get = [Method::GET];
    let post = [Method::POST];
    let none: &[(http::HeaderName, HeaderValue)] = &[];
    let ties =
        find_ties([(None, &p, Some(&get[..]), none), (None, &p, Some(&post[..]), none), (None, &p2, None, none)]);
    assert_eq!(ties, vec![(0, 2)]);
}

#[test]
fn hosts_are_lowercased_without_port() {
    assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert!(matches!(normalize_host("a.b"), std::borrow::Cow::Borrowed(_)));
}
