//! Header handling: hop-by-hop fields stop at the gateway both ways, forwarding headers are
//! added, Host follows `host_header`, and every exchange carries a request id.

mod support;

use http::{Request, Response, StatusCode};
use support::*;

fn config(backend: &Backend, host_header: &str) -> String {
    single_route(backend.addr, "", &format!("{ALL}, host_header: {host_header}"))
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let backend = Backend::recording(|_| {
        let mut r = Response::new(full("ok"));
        let h = r.headers_mut();
        h.insert("connection", "x-upstream-private".parse().expect("value"));
        h.insert("x-upstream-private", "secret".parse().expect("value"));
        h.insert("keep-alive", "timeout=5".parse().expect("value"));
        h.insert("proxy-authenticate", "Basic".parse().expect("value"));
        h.insert("upgrade", "h2c".parse().expect("value"));
        h.insert("x-end-to-end", "yes".parse().expect("value"));
        r
    })
    .await;
    let gw = gateway(&config(&backend, "preserve")).await;
    let req = Request::get(gw.url("/h"))
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "yes")
        .body(full(""))
        .expect("request");
    let got = send(req).await;
    let seen = backend.last();
    for name in [
        "x-client-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!seen.headers.contains_key(name), "{name} reached the upstream");
    }
    assert_eq!(seen.headers["x-end-to-end"], "yes");
    for name in ["x-upstream-private", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(!got.headers.contains_key(name), "{name} reached the client");
    }
    assert_eq!(got.header("x-end-to-end"), Some("yes"));
}

#[tokio::test]
async fn forwarding_headers_describe_the_client() {
    let backend = Backend::echo().await;
    let gw = gateway(&config(&backend, "preserve")).await;
    let req = Request::get(gw.url("/f"))
        .header("host", "api.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .body(full(""))
        .expect("request");
    send(req).await;
    let h = backend.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"api.example.com\"");
    assert_eq!(h["via"], "1.1 ferroway");
    assert_eq!(h["host"], "api.example.com");
}

/// The fields the proxy adds on the way up, as the backend got them (values of the
/// per-request ones replaced by their shape), sorted.
fn forwarding_seen(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = h
        .iter()
        .filter(|(n, _)| FORWARDING.iter().any(|(name, _)| n.as_str() == *name))
        .map(|(n, v)| {
            let v = v.to_str().expect("ascii");
            let shown = match n.as_str() {
                "x-request-id" => format!("{} hex digits", v.bytes().filter(u8::is_ascii_hexdigit).count()),
                "traceparent" => format!("{} bytes", v.len()),
                _ => v.to_owned(),
            };
            (n.as_str().to_owned(), shown)
        })
        .collect();
    seen.sort();
    seen
}

/// The fields the proxy adds on the way up for a request to `api.example.com` from 127.0.0.1
/// without any of its own, as `forwarding_seen` shows them.
const FORWARDING: [(&str, &str); 7] = [
    ("forwarded", "for=127.0.0.1;proto=http;host=\"api.example.com\""),
    ("traceparent", "55 bytes"),
    ("via", "1.1 ferroway"),
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-host", "api.example.com"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "32 hex digits"),
];

/// A request with none of the forwarding fields gets each once, with the same values, whether
/// the proxy wrote them as lines (no hook that names one of them, the own HTTP/1.1 client) or
/// into the request's map (a hook that may read any field, or an HTTP/2 upstream).
#[tokio::test]
async fn forwarding_fields_are_the_same_on_every_path() {
    let backend = Backend::echo().await;
    let gw = gateway(&format!(
        "middleware:\n  tag: {{ headers: {{ request: {{ set: {{ x-tagged: yes }} }} }} }}\n  hot: {{ cache: {{}} }}\n\
         upstreams:\n  up: {{ targets: [{{ address: {a} }}] }}\n  h2: {{ targets: [{{ address: {a} }}], protocol: h2c }}\n\
         routes:\n  - {{ name: bare, match: {{ path_prefix: /bare }}, upstream: up }}\n\
         \x20 - {{ name: tagged, match: {{ path_prefix: /tagged }}, upstream: up, middleware: [tag] }}\n\
         \x20 - {{ name: cached, match: {{ path_prefix: /cached }}, upstream: up, middleware: [hot] }}\n\
         \x20 - {{ name: two, match: {{ path_prefix: /two }}, upstream: h2 }}\n",
        a = backend.addr
    ))
    .await;
    let mut seen = Vec::new();
    for path in ["/bare", "/tagged", "/cached", "/two"] {
        send(Request::get(gw.url(path)).header("host", "api.example.com").body(full("")).expect("request")).await;
        seen.push(forwarding_seen(&backend.last().headers));
    }
    let expected: Vec<(String, String)> = FORWARDING.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    assert_eq!(seen[0], expected, "a route without middleware");
    assert_eq!(seen[1], expected, "a request hook that names other fields");
    assert_eq!(seen[2], expected, "a hook that may read any field (cache)");
    assert_eq!(backend.last().version, http::Version::HTTP_2);
    assert_eq!(seen[3], expected, "an HTTP/2 upstream");
}

/// A hook that names one of the proxy's fields sees and sets it in the request's map: the
/// backend gets the rule's value, once.
#[tokio::test]
async fn a_header_rule_replaces_a_forwarding_field() {
    let backend = Backend::echo().await;
    let gw = gateway(&format!(
        "middleware: {{ tls-off: {{ headers: {{ request: {{ set: {{ x-forwarded-proto: https }}, remove: [via] }} }} }} }}\n{}",
        single_route(backend.addr, "", &format!("{ALL}, middleware: [tls-off]"))
    ))
    .await;
    send(Request::get(gw.url("/")).body(full("")).expect("request")).await;
    let h = backend.last().headers;
    let proto: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto, ["https"]);
    assert!(!h.contains_key("via"), "{h:?}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

/// The response side: a header rule that removes the proxy's Via and sets X-Request-Id wins
/// over the proxy's own fields, on a response kept as lines (HTTP/1.1 both ways) and on one
/// in a map (an HTTP/2 client). Broke when the proxy wrote its two fields as lines.
#[tokio::test]
async fn a_response_header_rule_replaces_the_proxys_fields() {
    let backend = Backend::echo().await;
    let gw = gateway(&format!(
        "middleware: {{ rules: {{ headers: {{ response: {{ remove: [via], set: {{ x-request-id: fixed }} }} }} }} }}\n{}",
        single_route(backend.addr, "", &format!("{ALL}, middleware: [rules]"))
    ))
    .await;
    for client in [client(), h2_client()] {
        let got = send_with(&client, Request::get(gw.url("/")).body(full("")).expect("request")).await;
        assert_eq!(got.status, 200);
        assert!(!got.headers.contains_key("via"), "{:?}: {:?}", got.version, got.headers);
        let ids: Vec<_> = got.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["fixed"], "{:?}", got.version);
    }
}

#[tokio::test]
async fn host_header_follows_the_route_setting() {
    let backend = Backend::echo().await;
    for (setting, expected) in [
        ("preserve", "client.example".to_string()),
        ("upstream", backend.address()),
        ("internal.svc", "internal.svc".to_string()),
    ] {
        let gw = gateway(&config(&backend, setting)).await;
        send(Request::get(gw.url("/")).header("host", "client.example").body(full("")).expect("request")).await;
        assert_eq!(backend.last().headers["host"], expected.as_str(), "host_header: {setting}");
    }
}

/// To an HTTP/2 upstream (hyper's client) the target is the `:authority` and no Host goes up,
/// whatever `host_header` says (RFC 9113 §8.3.1); the client's host is in X-Forwarded-Host.
#[tokio::test]
async fn an_http2_upstream_gets_the_target_as_authority_and_no_host() {
    let backend = Backend::echo().await;
    for setting in ["preserve", "upstream", "internal.svc"] {
        let gw =
            gateway(&single_route(backend.addr, ", protocol: h2c", &format!("{ALL}, host_header: {setting}"))).await;
        send(Request::get(gw.url("/x?y=1")).header("host", "client.example").body(full("")).expect("request")).await;
        let seen = backend.last();
        assert_eq!(seen.version, http::Version::HTTP_2, "host_header: {setting}");
        assert_eq!(seen.uri, format!("http://{}/x?y=1", backend.address()), "host_header: {setting}");
        assert!(seen.headers.get("host").is_none(), "host_header: {setting}: {:?}", seen.headers.get("host"));
        assert_eq!(seen.headers["x-forwarded-host"], "client.example", "host_header: {setting}");
    }
}

#[tokio::test]
async fn a_valid_request_id_is_kept_end_to_end() {
    let backend = Backend::echo().await;
    let gw = gateway(&config(&backend, "preserve")).await;
    let got =
        send(Request::get(gw.url("/")).header("x-request-id", "trace-abc.123").body(full("")).expect("request")).await;
    assert_eq!(got.header("x-request-id"), Some("trace-abc.123"));
    assert_eq!(backend.last().headers["x-request-id"], "trace-abc.123");
}

#[tokio::test]
async fn an_invalid_or_missing_request_id_is_replaced_by_a_unique_one() {
    let backend = Backend::echo().await;
    let gw = gateway(&config(&backend, "preserve")).await;
    let too_long = "a".repeat(129);
    let mut ids = Vec::new();
    for incoming in [None, Some("has space"), Some(too_long.as_str())] {
        let mut req = Request::get(gw.url("/"));
        if let Some(id) = incoming {
            req = req.header("x-request-id", id);
        }
        let got = send(req.body(full("")).expect("request")).await;
        let id = got.header("x-request-id").expect("id returned").to_owned();
        assert_eq!(backend.last().headers["x-request-id"], id.as_str());
        assert!(Some(id.as_str()) != incoming && !id.is_empty() && id.len() <= 128);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are unique");
}

#[tokio::test]
async fn gateway_errors_carry_the_request_id_in_header_and_body() {
    let gw = gateway("upstreams: {}\nroutes: []\n").await;
    let got = send(
        Request::get(gw.url("/missing")).header("x-request-id", "rid-\"quoted\"").body(full("")).expect("request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.header("x-request-id"), Some("rid-\"quoted\""));
    let body = got.json();
    assert_eq!(body["request_id"], "rid-\"quoted\"");
    assert_eq!(body["error"], "no route matches this request");
    assert_eq!(got.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn trace_context_is_continued_or_started() {
    let backend = Backend::echo().await;
    let gw = gateway(&config(&backend, "preserve")).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(
        Request::get(gw.url("/"))
            .header("traceparent", incoming)
            .header("tracestate", "v=1")
            .body(full(""))
            .expect("req"),
    )
    .await;
    let h = backend.last().headers;
    let sent = h["traceparent"].to_str().expect("ascii").to_owned();
    assert_eq!(&sent[..36], &incoming[..36], "same trace");
    assert_ne!(&sent[36..52], &incoming[36..52], "the gateway's own span");
    assert_eq!(h["tracestate"], "v=1");

    send(Request::get(gw.url("/")).header("tracestate", "v=1").body(full("")).expect("req")).await;
    let h = backend.last().headers;
    let started = h["traceparent"].to_str().expect("ascii");
    assert_eq!(started.len(), 55);
    assert!(started.starts_with("00-") && started.ends_with("-01"));
    assert!(!h.contains_key("tracestate"), "tracestate without a valid traceparent is dropped");
}
