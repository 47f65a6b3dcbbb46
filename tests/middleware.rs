//! The middleware chain as a client and an upstream see it: order and early answers, CORS,
//! header rules, security headers, IP rules behind trusted proxies, and API keys.

mod support;

use http::{Method, Request, Response, StatusCode};
use support::*;

/// What `printf %s KEY | sha256sum` prints: the form the config takes.
fn key_hash(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn config(backend: &Backend, middleware: &str, chain: &str) -> String {
    format!(
        "middleware:\n{middleware}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [{chain}] }}]\n",
        backend.addr
    )
}

fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full("")).expect("request")
}

#[tokio::test]
async fn an_early_answer_stops_the_chain_and_the_upstream_sees_nothing() {
    let backend = Backend::recording(|_| {
        let mut r = Response::new(full("ok"));
        r.headers_mut().insert("server", "backend/1.0".parse().expect("value"));
        r
    })
    .await;
    let middleware = format!(
        "  web-cors: {{ cors: {{ allow_origins: [\"https://app.example.com\"], expose_headers: [x-request-id] }} }}\n  keys: {{ api_key: {{ keys: [{{ id: mobile, key_sha256: \"{}\" }}] }} }}\n  add-headers:\n    headers:\n      request: {{ set: {{ x-gateway: ferroway }} }}\n      response: {{ set: {{ x-served-by: ferroway }}, remove: [server] }}",
        key_hash("let-me-in")
    );
    let gw = gateway(&config(&backend, &middleware, "web-cors, keys, add-headers")).await;
    let origin = ("origin", "https://app.example.com");

    let refused = send(request(Method::GET, &gw.url("/x"), &[origin])).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(backend.requests().is_empty(), "the upstream saw a refused request");
    // Response hooks of the middleware that ran still apply; those that did not run, do not.
    assert_eq!(refused.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert!(refused.header("x-request-id").is_some());
    assert_eq!(refused.header("x-served-by"), None);
    assert_eq!(refused.json()["error"], "authentication required");

    let wrong = send(request(Method::GET, &gw.url("/x"), &[origin, ("x-api-key", "guess")])).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(backend.requests().is_empty());

    let ok = send(request(Method::GET, &gw.url("/x"), &[origin, ("x-api-key", "let-me-in")])).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(backend.last().headers["x-gateway"], "ferroway");
    assert_eq!(ok.header("x-served-by"), Some("ferroway"));
    assert_eq!(ok.header("server"), None);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(ok.header("access-control-expose-headers"), Some("x-request-id"));
    assert!(ok.headers.get_all("vary").iter().any(|v| v == "Origin"));
}

/// A response hook sees what the hooks that ran before it added, and what the upstream sent
/// under a name it replaces is gone, whether the response goes back as lines (HTTP/1.1 both
/// ways, where the hooks' fields become lines) or in a map (an HTTP/2 client). Header rules
/// run last here: they remove CORS's Vary and the rate limit's RateLimit, and replace CORS's
/// Allow-Origin; the RateLimit-Policy no hook names stays.
#[tokio::test]
async fn a_later_response_hook_sees_and_replaces_what_an_earlier_one_added() {
    let backend = Backend::recording(|_| {
        let mut r = Response::new(full("ok"));
        r.headers_mut().insert("vary", "Accept-Encoding".parse().expect("value"));
        r
    })
    .await;
    let middleware = "  rules: { headers: { response: { remove: [vary, ratelimit], set: { access-control-allow-origin: \"https://override.example\" } } } }\n  web-cors: { cors: { allow_origins: [\"https://app.example.com\"] } }\n  limit: { rate_limit: { rate: 1000/s, burst: 1000 } }";
    let gw = gateway(&config(&backend, middleware, "rules, web-cors, limit")).await;
    for client in [client(), h2_client()] {
        let req = request(Method::GET, &gw.url("/x"), &[("origin", "https://app.example.com")]);
        let got = send_with(&client, req).await;
        assert_eq!(got.status, StatusCode::OK);
        let all = |name: &str| {
            got.headers.get_all(name).iter().map(|v| v.to_str().unwrap_or("?").to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(all("vary"), Vec::<String>::new(), "{:?}: {:?}", got.version, got.headers);
        assert_eq!(all("ratelimit"), Vec::<String>::new(), "{:?}", got.version);
        assert_eq!(all("access-control-allow-origin"), ["https://override.example"], "{:?}", got.version);
        assert_eq!(all("ratelimit-policy").len(), 1, "{:?}", got.version);
    }
}

#[tokio::test]
async fn preflight_is_answered_without_touching_upstream_even_behind_auth() {
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    // The issue's order: auth before CORS. A preflight carries no credentials, so auth lets it
    // through to the CORS middleware, which answers it.
    let middleware = format!(
        "  keys: {{ api_key: {{ keys: [{{ id: web, key_sha256: \"{}\" }}] }} }}\n  web-cors:\n    cors:\n      allow_origins: [\"https://app.example.com\", \"https://*.example.org\"]\n      allow_methods: [GET, POST, PUT, DELETE]\n      allow_headers: [authorization, content-type]\n      allow_credentials: true\n      max_age: 10m",
        key_hash("k")
    );
    let gw = gateway(&config(&backend, &middleware, "keys, web-cors")).await;
    let preflight = |origin: &'static str| {
        request(
            Method::OPTIONS,
            &gw.url("/api/items"),
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type"),
            ],
        )
    };

    let got = send(preflight("https://shop.example.org")).await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(got.header("access-control-allow-origin"), Some("https://shop.example.org"));
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(got.header("access-control-allow-methods"), Some("GET, POST, PUT, DELETE"));
    assert_eq!(got.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert_eq!(got.header("access-control-max-age"), Some("600"));
    assert!(got.headers.get_all("vary").iter().any(|v| v == "Origin"));
    assert!(got.body.is_empty());

    // Not a real subdomain, not the same scheme: answered, but with no CORS headers.
    for origin in ["https://evilexample.org", "http://shop.example.org", "https://example.org.evil.com"] {
        let got = send(preflight(origin)).await;
        assert_eq!(got.status, StatusCode::NO_CONTENT);
        assert_eq!(got.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(got.header("access-control-allow-methods"), None, "{origin}");
    }
    assert!(backend.requests().is_empty(), "a preflight reached the upstream");

    // A plain OPTIONS without the preflight headers is an ordinary request: auth applies.
    let got = send(request(Method::OPTIONS, &gw.url("/api/items"), &[("origin", "https://app.example.com")])).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn star_is_never_sent_with_credentials_and_other_origins_get_nothing() {
    let backend = Backend::text("ok").await;
    let middleware = "  open: { cors: { allow_origins: [\"*\"] } }\n  creds: { cors: { allow_origins: [\"*\"], allow_credentials: true } }\n  strict: { cors: { allow_origins: [\"https://a.test\"] } }";
    let cfg = format!(
        "middleware:\n{middleware}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes:\n  - {{ name: open, upstream: up, match: {{ path: /open }}, middleware: [open] }}\n  - {{ name: creds, upstream: up, match: {{ path: /creds }}, middleware: [creds] }}\n  - {{ name: strict, upstream: up, match: {{ path: /strict }}, middleware: [strict] }}\n",
        backend.addr
    );
    let gw = gateway(&cfg).await;
    let origin = [("origin", "https://b.test")];
    let open = send(request(Method::GET, &gw.url("/open"), &origin)).await;
    assert_eq!(open.header("access-control-allow-origin"), Some("*"));
    let creds = send(request(Method::GET, &gw.url("/creds"), &origin)).await;
    assert_eq!(creds.header("access-control-allow-origin"), Some("https://b.test"));
    assert_eq!(creds.header("access-control-allow-credentials"), Some("true"));
    assert!(creds.headers.get_all("vary").iter().any(|v| v == "Origin"));
    let strict = send(request(Method::GET, &gw.url("/strict"), &origin)).await;
    assert_eq!(strict.status, StatusCode::OK);
    assert_eq!(strict.header("access-control-allow-origin"), None);
    assert_eq!(strict.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn header_rules_set_append_and_remove_with_variables() {
    let backend = Backend::recording(|_| {
        let mut r = Response::new(full("ok"));
        r.headers_mut().insert("x-powered-by", "php".parse().expect("value"));
        r.headers_mut().insert("x-frame-options", "SAMEORIGIN".parse().expect("value"));
        r
    })
    .await;
    let middleware = "  rules:\n    headers:\n      request:\n        set: { x-client: \"${client_ip}\", x-trace: \"id=${request_id};route=${route}\" }\n        append: { x-tag: second }\n        remove: [x-internal-debug]\n      response:\n        set: { strict-transport-security: \"max-age=31536000\" }\n        append: { x-served: \"${route}\" }\n        remove: [x-powered-by]\n  secure: { security_headers: {} }";
    let gw = gateway(&config(&backend, middleware, "rules, secure")).await;
    let got = send(request(
        Method::GET,
        &gw.url("/h"),
        &[("x-internal-debug", "1"), ("x-tag", "first"), ("x-request-id", "abc-123"), ("x-client", "spoofed")],
    ))
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = backend.last();
    assert_eq!(seen.headers["x-client"], "127.0.0.1");
    assert_eq!(seen.headers["x-trace"], "id=abc-123;route=r");
    let tags: Vec<_> = seen.headers.get_all("x-tag").iter().map(|v| v.to_str().expect("ascii")).collect();
    assert_eq!(tags, ["first", "second"]);
    assert!(!seen.headers.contains_key("x-internal-debug"));
    assert_eq!(got.header("strict-transport-security"), Some("max-age=31536000"));
    assert_eq!(got.header("x-powered-by"), None);
    assert_eq!(got.header("x-served"), Some("r"));
    // Security headers fill in what the application did not set, and never override it.
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(got.header("referrer-policy"), Some("strict-origin-when-cross-origin"));
    assert_eq!(got.header("x-frame-options"), Some("SAMEORIGIN"));
}

#[tokio::test]
async fn ip_rules_allow_and_deny_and_a_denied_client_never_reaches_the_upstream() {
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    let cfg = format!(
        "middleware:\n  local: {{ ip_filter: {{ allow: [127.0.0.1/32, \"::1\"] }} }}\n  nolocal: {{ ip_filter: {{ allow: [127.0.0.0/8], deny: [127.0.0.1] }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes:\n  - {{ name: a, upstream: up, match: {{ path: /a }}, middleware: [local] }}\n  - {{ name: b, upstream: up, match: {{ path: /b }}, middleware: [nolocal] }}\n",
        backend.addr
    );
    let gw = gateway(&cfg).await;
    assert_eq!(get(&gw.url("/a")).await.status, StatusCode::OK);
    let before = backend.requests().len();
    let denied = get(&gw.url("/b")).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.json()["error"], "forbidden");
    assert_eq!(backend.requests().len(), before);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let backend = Backend::text("ok").await;
    let route = |trusted: &str| {
        format!(
            "{trusted}middleware:\n  office: {{ ip_filter: {{ allow: [10.0.0.0/8, \"2001:db8::/32\"] }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [office] }}]\n",
            backend.addr
        )
    };
    let xff = |gw: &TestGateway, v: &'static str| send(request(Method::GET, &gw.url("/"), &[("x-forwarded-for", v)]));

    // Loopback is not trusted: whatever it claims, the client is 127.0.0.1.
    let untrusted = gateway(&route("")).await;
    assert_eq!(xff(&untrusted, "10.1.2.3").await.status, StatusCode::FORBIDDEN);

    let trusted = gateway(&route("trusted_proxies: [127.0.0.0/8]\n")).await;
    assert_eq!(xff(&trusted, "10.1.2.3").await.status, StatusCode::OK);
    assert_eq!(xff(&trusted, "2001:db8::7").await.status, StatusCode::OK);
    // The right-most untrusted entry decides; what it prepended is not believed.
    assert_eq!(xff(&trusted, "10.1.2.3, 203.0.113.5").await.status, StatusCode::FORBIDDEN);
    assert_eq!(xff(&trusted, "203.0.113.5, 10.1.2.3").await.status, StatusCode::OK);
    // No header from a trusted proxy: the proxy itself is the client.
    assert_eq!(get(&trusted.url("/")).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_matched_api_key_id_reaches_the_access_log() {
    let backend = Backend::text("ok").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let cfg = format!(
        "access_log: {{ output: {} }}\nmiddleware:\n  keys: {{ api_key: {{ header: x-key, keys: [{{ id: mobile, key_sha256: \"{}\" }}, {{ id: web, key_sha256: \"{}\" }}] }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [keys] }}]\n",
        log.display(),
        key_hash("m-key"),
        key_hash("w-key"),
        backend.addr
    );
    let gw = gateway(&cfg).await;
    assert_eq!(send(request(Method::GET, &gw.url("/"), &[("x-key", "w-key")])).await.status, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            assert_eq!(v["consumer"], "web");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn path_filter_denies_every_spelling_of_a_denied_path_with_404_and_the_upstream_sees_nothing() {
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    let gw = gateway(&config(
        &backend,
        "  block: { path_filter: { deny: [\"/internal/**\", \"/**/.git/**\", \"/**/*.env\"] } }",
        "block",
    ))
    .await;
    let denied = [
        "/internal",
        "/internal/",
        "/internal/users/1",
        "/%69nternal/x",
        "/public/../internal/x",
        "//internal/x",
        "/./internal/x",
        "/.git/config",
        "/app/.git/HEAD",
        "/app/%2Egit/HEAD",
        "/prod.env",
        "/conf/prod.env",
        "/conf/prod%2Eenv",
    ];
    for path in denied {
        let answer =
            raw_exchange(gw.addr, format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    assert!(backend.requests().is_empty(), "no denied request reached the upstream");
    for path in ["/internals", "/public/internal/x", "/git/config", "/env", "/prod.env.txt", "/Internal/x"] {
        assert_eq!(get(&gw.url(path)).await.status, StatusCode::OK, "{path} is not denied");
    }
    assert_eq!(backend.requests().len(), 6);
}
