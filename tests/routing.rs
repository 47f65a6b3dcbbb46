//! Routing end to end: precedence, segment-boundary prefixes, prefix stripping, and path
//! normalisation (ambiguous paths are refused and never forwarded).

mod support;

use http::{Request, StatusCode};
use support::*;

async fn named(name: &'static str) -> Backend {
    Backend::text(name).await
}

#[tokio::test]
async fn requests_go_to_the_most_specific_route() {
    let (exact, long, short, regex, host, canary) = (
        named("exact").await,
        named("long").await,
        named("short").await,
        named("regex").await,
        named("host").await,
        named("canary").await,
    );
    let yaml = format!(
        "upstreams:\n  exact: {{ targets: [{{ address: {} }}] }}\n  long: {{ targets: [{{ address: {} }}] }}\n  short: {{ targets: [{{ address: {} }}] }}\n  regex: {{ targets: [{{ address: {} }}] }}\n  host: {{ targets: [{{ address: {} }}] }}\n  canary: {{ targets: [{{ address: {} }}] }}\n\
         routes:\n\
         \x20 - {{ name: regex, match: {{ path_regex: '^/api/v[0-9]+/items$' }}, upstream: regex }}\n\
         \x20 - {{ name: short, match: {{ path_prefix: /api }}, upstream: short }}\n\
         \x20 - {{ name: long, match: {{ path_prefix: /api/users }}, upstream: long }}\n\
         \x20 - {{ name: exact, match: {{ path: /api/users/me }}, upstream: exact }}\n\
         \x20 - {{ name: host, match: {{ path_prefix: /api, host: '*.example.com' }}, upstream: host }}\n\
         \x20 - {{ name: canary, match: {{ path_prefix: /api, headers: {{ x-canary: 'true' }} }}, upstream: canary }}\n",
        exact.address(),
        long.address(),
        short.address(),
        regex.address(),
        host.address(),
        canary.address()
    );
    let gw = gateway(&yaml).await;
    for (path, expected) in [
        ("/api/users/me", "exact"),
        ("/api/users/42", "long"),
        ("/api/users", "long"),
        ("/api/usersX", "short"),
        ("/api/orders", "short"),
        ("/api/v2/items", "short"),
        ("/v2/items", "none"),
    ] {
        let got = get(&gw.url(path)).await;
        let answer = if got.status == StatusCode::NOT_FOUND { "none".to_string() } else { got.text() };
        assert_eq!(answer, expected, "{path}");
    }
    let by_host =
        send(Request::get(gw.url("/api/users/me")).header("host", "eu.example.com").body(full("")).expect("req")).await;
    assert_eq!(by_host.text(), "host");
    let by_header = send(Request::get(gw.url("/api/x")).header("x-canary", "true").body(full("")).expect("req")).await;
    assert_eq!(by_header.text(), "canary");
}

#[tokio::test]
async fn a_regex_route_catches_what_no_prefix_does() {
    let regex = named("regex").await;
    let yaml = single_route(regex.addr, "", "match: { path_regex: '^/v[0-9]+/items$' }");
    let gw = gateway(&yaml).await;
    assert_eq!(get(&gw.url("/v2/items")).await.text(), "regex");
    assert_eq!(get(&gw.url("/v2/items/1")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn strip_prefix_removes_the_matched_prefix_and_keeps_the_query() {
    let backend = Backend::echo().await;
    let yaml = single_route(backend.addr, "", "match: { path_prefix: /api/users }, strip_prefix: true");
    let gw = gateway(&yaml).await;
    for (path, upstream_sees) in
        [("/api/users/42?x=1", "/42?x=1"), ("/api/users", "/"), ("/api/users/", "/"), ("/api/users?q", "/?q")]
    {
        get(&gw.url(path)).await;
        assert_eq!(backend.last().uri, upstream_sees, "{path}");
    }
}

#[tokio::test]
async fn routing_and_the_upstream_see_the_normalised_path() {
    let backend = Backend::echo().await;
    let yaml = single_route(backend.addr, "", "match: { path_prefix: /public }");
    let gw = gateway(&yaml).await;
    for (path, upstream_sees) in [
        ("/public/./a//b", "/public/a/b"),
        ("/public/%61bc?x=%2F", "/public/abc?x=%2F"),
        ("/admin/../public/x", "/public/x"),
        ("/public/%2e%2e/public/y", "/public/y"),
    ] {
        let got = get(&gw.url(path)).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(backend.last().uri, upstream_sees, "{path}");
    }
    // Escaping to a path no route allows is a miss, not a leak.
    assert_eq!(get(&gw.url("/public/../admin")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ambiguous_paths_get_400_and_are_never_forwarded() {
    let backend = Backend::echo().await;
    let yaml = single_route(backend.addr, "", ALL);
    let gw = gateway(&yaml).await;
    for path in ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%00b", "/..", "/a/../../etc/passwd", "/bad%zzescape"] {
        let got =
            raw_exchange(gw.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{path}: {got}");
        assert!(got.contains("\"request_id\""), "{path}: {got}");
    }
    assert!(backend.requests().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn methods_narrow_a_route() {
    let backend = Backend::echo().await;
    let yaml = single_route(backend.addr, "", "match: { path: /only-get, methods: [GET] }");
    let gw = gateway(&yaml).await;
    assert_eq!(get(&gw.url("/only-get")).await.status, StatusCode::OK);
    let post = send(Request::post(gw.url("/only-get")).body(full("x")).expect("req")).await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
}
