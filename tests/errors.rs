//! The gateway's own answers: each failure has its documented status and a JSON body with the
//! request id, and nothing is half-forwarded.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokio::io::AsyncWriteExt;

fn route_to(addr: impl std::fmt::Display, timeouts: &str, limits: &str) -> String {
    single_route(addr, &format!(", timeouts: {{ {timeouts} }}"), ALL) + limits
}

fn assert_gateway_error(got: &Got, status: StatusCode, error: &str) {
    assert_eq!(got.status, status, "{}", got.text());
    let body = got.json();
    assert_eq!(body["error"], error);
    assert_eq!(body["request_id"], got.header("x-request-id").expect("request id header"));
}

#[tokio::test]
async fn no_route_is_404() {
    let gw = gateway("routes: []\n").await;
    assert_gateway_error(&get(&gw.url("/nothing")).await, StatusCode::NOT_FOUND, "no route matches this request");
}

#[tokio::test]
async fn a_refused_connection_is_502() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let gw = gateway(&route_to(free, "connect: 1s", "")).await;
    assert_gateway_error(&get(&gw.url("/")).await, StatusCode::BAD_GATEWAY, "upstream connection failed");
}

#[tokio::test]
async fn an_upstream_reset_is_502() {
    let addr = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        drop(s);
    })
    .await;
    let gw = gateway(&route_to(addr, "connect: 1s", "")).await;
    assert_gateway_error(&get(&gw.url("/")).await, StatusCode::BAD_GATEWAY, "upstream closed the connection");
}

#[tokio::test]
async fn an_invalid_upstream_response_is_502() {
    let addr = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"this is not http\r\n\r\n").await;
    })
    .await;
    let gw = gateway(&route_to(addr, "connect: 1s", "")).await;
    assert_gateway_error(&get(&gw.url("/")).await, StatusCode::BAD_GATEWAY, "upstream sent an invalid response");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_after_the_header_timeout() {
    let addr = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let gw = gateway(&route_to(addr, "connect: 1s, response_header: 300ms", "")).await;
    let start = Instant::now();
    assert_gateway_error(&get(&gw.url("/")).await, StatusCode::GATEWAY_TIMEOUT, "upstream response timed out");
    assert!(start.elapsed() < Duration::from_secs(10), "the timeout fired");
}

#[tokio::test]
async fn an_upstream_that_never_accepts_is_504_after_the_connect_timeout() {
    // A listener with a full accept queue: the kernel drops further SYNs, so connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("connect failed: {e}"),
            Err(_) => break, // this SYN was dropped: the queue is full
        }
        assert!(held.len() < 64, "the accept queue never filled");
    }
    let gw = gateway(&route_to(addr, "connect: 300ms, response_header: 20s", "")).await;
    assert_gateway_error(&get(&gw.url("/")).await, StatusCode::GATEWAY_TIMEOUT, "upstream connect timed out");
    drop(listener);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_and_not_forwarded() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "limits: { max_request_body: 1KiB }\n")).await;
    let got = send(Request::post(gw.url("/up")).body(full(vec![b'x'; 2048])).expect("request")).await;
    assert_gateway_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    assert!(backend.requests().is_empty());
    let ok = send(Request::post(gw.url("/up")).body(full(vec![b'x'; 1024])).expect("request")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "limits: { max_request_body: 1KiB }\n")).await;
    // Chunked, so the size is only known by counting.
    let mut req = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let got = raw_exchange(gw.addr, &req).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("request body too large"), "{got}");
    assert!(backend.requests().iter().all(|s| s.body.len() <= 1024), "no complete over-limit body was forwarded");
}

#[tokio::test]
async fn a_route_may_raise_or_lower_the_body_limit() {
    let backend = Backend::echo().await;
    let yaml = format!(
        "upstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\n\
         routes:\n  - {{ name: big, match: {{ path_prefix: /big }}, upstream: up, limits: {{ max_request_body: 8KiB }} }}\n  - {{ name: small, match: {{ path_prefix: / }}, upstream: up }}\n\
         limits: {{ max_request_body: 1KiB }}\n",
        backend.address()
    );
    let gw = gateway(&yaml).await;
    assert_eq!(
        send(Request::post(gw.url("/big")).body(full(vec![1u8; 4096])).expect("req")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(Request::post(gw.url("/small")).body(full(vec![1u8; 4096])).expect("req")).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn headers_over_the_limit_are_431() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "limits: { max_header_bytes: 4KiB }\n")).await;
    let got = send(Request::get(gw.url("/")).header("x-big", "v".repeat(5000)).body(full("")).expect("request")).await;
    assert_gateway_error(&got, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request headers too large");
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "")).await;
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let got = raw_exchange(gw.addr, raw).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{:?} -> {got}", String::from_utf8_lossy(raw));
    }
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn an_upstream_dying_mid_body_aborts_the_client_response() {
    let addr = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part").await;
        drop(s);
    })
    .await;
    let gw = gateway(&route_to(addr, "connect: 1s", "")).await;
    let resp =
        client().request(Request::get(gw.url("/")).body(full("")).expect("request")).await.expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.into_body().collect().await.is_err(), "a truncated body must not look complete");
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "")).await;
    for raw in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    ] {
        let got = raw_exchange(gw.addr, raw).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{:?} -> {got}", String::from_utf8_lossy(raw));
        assert!(got.contains("malformed request"), "{got}");
    }
    // HTTP/1.0 may omit Host.
    let got = raw_exchange(gw.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(backend.requests().len(), 1);
}

#[tokio::test]
async fn a_request_with_both_content_length_and_chunked_is_not_smuggled() {
    let backend = Backend::echo().await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s", "")).await;
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; the upstream must see one
    // framing only, and the bytes after the chunked body must not become a second request.
    let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let got = raw_exchange(gw.addr, raw).await;
    // One answer, then the connection is closed: the trailing bytes are never read as a request.
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert!(got.starts_with("HTTP/1.1 200") && got.contains("connection: close"), "{got}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, http::Method::POST);
    assert!(seen[0].body.is_empty());
    assert!(!seen[0].headers.contains_key("content-length"), "{seen:?}");
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_does_not_hold_the_client_forever() {
    let addr = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nsome of it").await;
        // Then silence, with the connection left open.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let gw = gateway(&route_to(addr, "connect: 1s, idle: 300ms", "")).await;
    let start = Instant::now();
    let resp =
        client().request(Request::get(gw.url("/")).body(full("")).expect("request")).await.expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the stalled body is aborted, not ended cleanly and not waited on forever");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn every_request_on_a_pooled_upstream_connection_gets_its_own_response_timeout() {
    let backend = Backend::serve(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        http::Response::new(full("fast"))
    })
    .await;
    let gw = gateway(&route_to(backend.address(), "connect: 1s, response_header: 300ms", "")).await;
    let client = client();
    let fetch = |path: &'static str| send_with(&client, Request::get(gw.url(path)).body(full("")).expect("request"));
    assert_eq!(fetch("/fast").await.status, StatusCode::OK);
    // The first request's deadline passes while its connection waits in the pool: the next
    // request on it is timed from its own start, not failed by the old deadline.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fetch("/fast").await.status, StatusCode::OK);
    assert_eq!(backend.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one pooled connection");
    let start = Instant::now();
    assert_gateway_error(&fetch("/slow").await, StatusCode::GATEWAY_TIMEOUT, "upstream response timed out");
    assert!(start.elapsed() < Duration::from_secs(10), "the timeout fired");
    assert_eq!(fetch("/fast").await.status, StatusCode::OK);
}
