//! The `cache` middleware against the real gateway and a real backend: RFC 9111 storing and
//! freshness, Vary, revalidation with 304, coalescing, stale-while-revalidate, memory bound,
//! purge, poisoning defences, and its place beside `compress`.
//!
//! The backend sets response headers from the query (`?h=cache-control:max-age=60&h=etag:"a"`)
//! and answers a body naming how many requests it has served, so a hit shows as an old number.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use support::*;

struct Origin {
    backend: Backend,
    served: Arc<AtomicUsize>,
    /// While `true`, requests whose query has `block` wait.
    gate: tokio::sync::watch::Sender<bool>,
}

fn decode_query(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(x) = v.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn origin() -> Origin {
    let served = Arc::new(AtomicUsize::new(0));
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let gate_rx = Arc::new(gate_rx);
    let count = served.clone();
    let backend = Backend::serve(move |req: Request<hyper::body::Incoming>| {
        let count = count.clone();
        let mut gate = (*gate_rx).clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let query = req.uri().query().unwrap_or("").to_owned();
            if query.split('&').any(|kv| kv == "block") {
                let _ = gate.wait_for(|open| *open).await;
            }
            let mut status = StatusCode::OK;
            let mut size = 0usize;
            let mut headers = Vec::new();
            for kv in query.split('&') {
                match kv.split_once('=') {
                    Some(("h", v)) => {
                        let v = decode_query(v);
                        if let Some((name, value)) = v.split_once(':') {
                            headers.push((name.to_owned(), value.to_owned()));
                        }
                    }
                    Some(("size", v)) => size = v.parse().unwrap_or(0),
                    Some(("status", v)) => {
                        status = StatusCode::from_u16(v.parse().unwrap_or(200)).unwrap_or(StatusCode::OK)
                    }
                    _ => {}
                }
            }
            // Revalidation: a matching If-None-Match gets 304 when the query says `etag304`.
            let inm = req.headers().get("if-none-match").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let etag = headers.iter().find(|(k, _)| k == "etag").map(|(_, v)| v.clone());
            if query.contains("etag304") && inm.is_some() && inm == etag {
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                for (k, v) in &headers {
                    r.headers_mut()
                        .append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("v"));
                }
                r.headers_mut().insert("x-revalidated", "yes".parse().expect("v"));
                return r;
            }
            let lang = req.headers().get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let fwd_host =
                req.headers().get("x-forwarded-host").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let mut body = format!("n={n} lang={lang} host={fwd_host} path={}", req.uri().path());
            if size > body.len() {
                body.push_str(&"x".repeat(size - body.len()));
            }
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r.headers_mut().insert("content-type", "text/plain".parse().expect("ct"));
            for (k, v) in &headers {
                r.headers_mut()
                    .append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("v"));
            }
            r
        }
    })
    .await;
    Origin { backend, served, gate }
}

async fn cached_gateway(o: &Origin, cache: &str, chain: &str, extra_mw: &str) -> TestGateway {
    gateway(&format!(
        "admin: {{ address: 127.0.0.1:0 }}\nmiddleware:\n  c: {{ cache: {{ {cache} }} }}\n{extra_mw}upstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [{chain}] }}]\n",
        o.backend.addr
    ))
    .await
}

async fn req(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::builder().method(method).uri(gw.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(full("")).expect("request")).await
}

async fn get_h(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Got {
    req(gw, Method::GET, path, headers).await
}

fn x_cache(g: &Got) -> &str {
    g.header("x-cache").unwrap_or("-")
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age_and_x_cache() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c", "").await;
    let path = "/a?h=cache-control:max-age%3D60";
    let first = get_h(&gw, path, &[]).await;
    assert_eq!((first.status, x_cache(&first)), (StatusCode::OK, "MISS"));
    let second = get_h(&gw, path, &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body, "the stored body");
    assert!(second.header("age").is_some_and(|a| a.parse::<u64>().is_ok()));
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"), "the request id is per answer");
    let head = req(&gw, Method::HEAD, path, &[]).await;
    assert_eq!((x_cache(&head), head.body.len()), ("HIT", 0), "HEAD is answered from the GET entry");
    let other = get_h(&gw, "/a?h=cache-control:max-age%3D60&other", &[]).await;
    assert_eq!(x_cache(&other), "MISS", "the query is part of the key");
    assert_eq!(o.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn responses_a_shared_cache_must_not_store_are_fetched_every_time() {
    let o = origin().await;
    let gw = cached_gateway(&o, "default_ttl: 60s", "c", "").await;
    let cases: [(&str, &[(&str, &str)]); 7] = [
        ("/ns?h=cache-control:no-store", &[]),
        ("/pv?h=cache-control:private,max-age%3D60", &[]),
        ("/ck?h=cache-control:max-age%3D60&h=set-cookie:a%3Db", &[]),
        ("/vs?h=cache-control:max-age%3D60&h=vary:*", &[]),
        ("/au?h=cache-control:max-age%3D60", &[("authorization", "Bearer x")]),
        ("/rq?h=cache-control:max-age%3D60", &[("cache-control", "no-store")]),
        ("/account.css?h=cache-control:private", &[]),
    ];
    for (path, headers) in cases {
        let before = o.served.load(Ordering::SeqCst);
        for _ in 0..2 {
            let got = get_h(&gw, path, headers).await;
            assert_eq!(got.status, StatusCode::OK, "{path}");
        }
        assert_eq!(o.served.load(Ordering::SeqCst) - before, 2, "{path} is never served from the cache");
    }
    // With `public`, a response to an authenticated request may be shared.
    let path = "/pub?h=cache-control:public,max-age%3D60";
    get_h(&gw, path, &[("authorization", "Bearer x")]).await;
    assert_eq!(x_cache(&get_h(&gw, path, &[("authorization", "Bearer y")]).await), "HIT");
    // default_ttl applies to a storable response that states no freshness.
    get_h(&gw, "/plain", &[]).await;
    assert_eq!(x_cache(&get_h(&gw, "/plain", &[]).await), "HIT");
}

#[tokio::test]
async fn a_response_varying_on_accept_language_is_cached_per_language() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c", "").await;
    let path = "/v?h=cache-control:max-age%3D60&h=vary:accept-language";
    let en = get_h(&gw, path, &[("accept-language", "en")]).await;
    let fr = get_h(&gw, path, &[("accept-language", "fr")]).await;
    assert!(en.text().contains("lang=en") && fr.text().contains("lang=fr"));
    let en2 = get_h(&gw, path, &[("accept-language", "en")]).await;
    let fr2 = get_h(&gw, path, &[("accept-language", "fr")]).await;
    assert_eq!((x_cache(&en2), en2.body.clone()), ("HIT", en.body.clone()));
    assert_eq!((x_cache(&fr2), fr2.body.clone()), ("HIT", fr.body.clone()));
    assert_eq!(o.served.load(Ordering::SeqCst), 2, "one fetch per language");
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c", "").await;
    // Stale on arrival (age 5 > max-age 1), with an ETag the origin answers 304 to.
    let path = "/r?h=cache-control:max-age%3D1&h=age:5&h=etag:%22v1%22&etag304";
    let first = get_h(&gw, path, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    let second = get_h(&gw, path, &[]).await;
    assert_eq!(second.status, StatusCode::OK, "the client gets the entry, not the 304");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("x-revalidated"), Some("yes"), "the 304's fields are merged in");
    assert_eq!(o.served.load(Ordering::SeqCst), 2, "the second request was a conditional one");
    // The client's own matching If-None-Match on a fresh entry gets 304 from the cache.
    let fresh = "/f?h=cache-control:max-age%3D60&h=etag:%22v2%22";
    get_h(&gw, fresh, &[]).await;
    let not_modified = get_h(&gw, fresh, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((not_modified.status, not_modified.body.len()), (StatusCode::NOT_MODIFIED, 0));
}

#[tokio::test]
async fn a_hundred_concurrent_misses_reach_the_upstream_once() {
    let o = origin().await;
    let gw = Arc::new(cached_gateway(&o, "", "c", "").await);
    let path = "/burst?h=cache-control:max-age%3D60&block";
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { get_h(&gw, path, &[]).await }));
    }
    // The first request reaches the origin and waits there; then let it answer.
    while o.served.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    o.gate.send_replace(true);
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let got = t.await.expect("task");
        assert_eq!(got.status, StatusCode::OK);
        bodies.insert(got.body);
    }
    assert_eq!(o.served.load(Ordering::SeqCst), 1, "one upstream request for a hundred clients");
    assert_eq!(bodies.len(), 1);
}

#[tokio::test]
async fn while_one_request_refreshes_a_stale_entry_others_get_it_stale() {
    let o = origin().await;
    let gw = Arc::new(cached_gateway(&o, "stale_while_revalidate: 10s", "c", "").await);
    // Stale on arrival, within its stale-while-revalidate window.
    let path = "/swr?h=cache-control:max-age%3D1&h=age:3&block";
    o.gate.send_replace(true);
    let first = get_h(&gw, path, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    o.gate.send_replace(false);
    // The refresher waits at the origin...
    let refresher = {
        let gw = gw.clone();
        tokio::spawn(async move { get_h(&gw, path, &[]).await })
    };
    while o.served.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...while another client gets the stale entry at once.
    let stale = get_h(&gw, path, &[]).await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.body, first.body);
    o.gate.send_replace(true);
    let refreshed = refresher.await.expect("task");
    assert_eq!(x_cache(&refreshed), "MISS");
    assert_ne!(refreshed.body, first.body, "a fresh answer from the origin");
    assert_eq!(o.served.load(Ordering::SeqCst), 2, "the stale answer did not reach the origin");
}

#[tokio::test]
async fn memory_stays_within_max_size_and_large_objects_stream_through_uncached() {
    let o = origin().await;
    let gw = cached_gateway(&o, "max_size: 1MiB, max_object_size: 64KiB", "c", "").await;
    for i in 0..60 {
        let got = get_h(&gw, &format!("/fill/{i}?h=cache-control:max-age%3D60&size=50000"), &[]).await;
        assert_eq!(got.body.len(), 50_000);
    }
    let admin = gw.running.control.admin_address().expect("admin");
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferroway_cache_bytes{middleware=\"c\"} "))
        .and_then(|v| v.parse().ok())
        .expect("ferroway_cache_bytes");
    assert!(bytes <= 1 << 20, "{bytes} bytes held past max_size");
    assert!(metrics.contains("ferroway_cache_requests_total{middleware=\"c\",result=\"hit\"}"));
    promtool_check(&metrics);
    assert!(bytes > 0);
    let big = "/big?h=cache-control:max-age%3D60&size=100000";
    let before = o.served.load(Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(get_h(&gw, big, &[]).await.body.len(), 100_000, "streamed whole");
    }
    assert_eq!(o.served.load(Ordering::SeqCst) - before, 2, "larger than max_object_size: not stored");
}

#[tokio::test]
async fn purge_by_prefix_and_unsafe_methods_invalidate() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c", "").await;
    let q = "?h=cache-control:max-age%3D60";
    for p in ["/api/items/1", "/api/items/2", "/other"] {
        get_h(&gw, &format!("{p}{q}"), &[]).await;
    }
    let admin = gw.running.control.admin_address().expect("admin");
    let purged =
        send(Request::post(format!("http://{admin}/cache/purge?prefix=/api/items")).body(full("")).expect("r")).await;
    assert_eq!(purged.status, StatusCode::OK);
    assert_eq!(purged.json()["purged"], 2);
    assert_eq!(x_cache(&get_h(&gw, &format!("/api/items/1{q}"), &[]).await), "MISS");
    assert_eq!(x_cache(&get_h(&gw, &format!("/other{q}"), &[]).await), "HIT");
    let bad = send(Request::post(format!("http://{admin}/cache/purge")).body(full("")).expect("r")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // A successful POST to a path drops its entries.
    req(&gw, Method::POST, &format!("/other{q}"), &[]).await;
    assert_eq!(x_cache(&get_h(&gw, &format!("/other{q}"), &[]).await), "MISS");
}

#[tokio::test]
async fn unkeyed_request_headers_never_change_a_cached_body() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c", "").await;
    let path = "/home?h=cache-control:max-age%3D60";
    let poisoned = get_h(&gw, path, &[("host", "shop.test"), ("x-forwarded-host", "evil.test")]).await;
    assert!(!poisoned.text().contains("evil"), "the client's X-Forwarded-Host never reaches the origin");
    let later = get_h(&gw, path, &[("host", "shop.test")]).await;
    assert_eq!(x_cache(&later), "HIT");
    assert!(later.text().contains("host=shop.test"), "{}", later.text());
}

#[tokio::test]
async fn cached_before_compress_each_coding_is_its_own_variant() {
    let o = origin().await;
    let gw = cached_gateway(&o, "", "c, z", "  z: { compress: { min_size: 0 } }\n").await;
    let path = "/doc?h=cache-control:max-age%3D60&size=5000";
    let gz = get_h(&gw, path, &[("accept-encoding", "gzip")]).await;
    let plain = get_h(&gw, path, &[]).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(plain.header("content-encoding"), None);
    let gz2 = get_h(&gw, path, &[("accept-encoding", "gzip")]).await;
    let plain2 = get_h(&gw, path, &[]).await;
    assert_eq!((x_cache(&gz2), gz2.header("content-encoding")), ("HIT", Some("gzip")));
    assert_eq!(gz2.body, gz.body);
    assert_eq!((x_cache(&plain2), plain2.body.len()), ("HIT", 5000));
    assert_eq!(o.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_must_revalidate_entry_is_never_served_stale() {
    let o = origin().await;
    let gw = Arc::new(cached_gateway(&o, "stale_while_revalidate: 10s", "c", "").await);
    let path = "/mr?h=cache-control:max-age%3D1,must-revalidate&h=age:3&block";
    o.gate.send_replace(true);
    get_h(&gw, path, &[]).await;
    o.gate.send_replace(false);
    let spawn = |gw: Arc<TestGateway>| tokio::spawn(async move { get_h(&gw, path, &[]).await });
    let refresher = spawn(gw.clone());
    while o.served.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = spawn(gw.clone());
    o.gate.send_replace(true);
    let (refreshed, waited) = (refresher.await.expect("task"), waiter.await.expect("task"));
    assert_eq!(x_cache(&refreshed), "MISS");
    assert_ne!(x_cache(&waited), "STALE", "must-revalidate: never stale");
    // The origin's answers are stale on arrival (age 3 > max-age 1), so the waiter, released
    // by the refresh, fetches for itself rather than take a stale one.
    assert!(!waited.text().starts_with("n=1 "), "never the stale entry: {}", waited.text());
}
