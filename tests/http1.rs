//! The gateway's own HTTP/1.1 server codec, on the wire: pipelining, `Expect: 100-continue`,
//! chunked bodies, HTTP/1.0 keep-alive, the connection timeouts, and the answers to heads that
//! cannot be read. Raw TCP on the client side, so every byte the gateway writes is checked.

mod support;

use std::time::Duration;

use http::Response;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that answers every request with its path and the body it received.
async fn path_and_body() -> Backend {
    Backend::recording(|s| {
        let body = format!("{} {}", s.uri, String::from_utf8_lossy(&s.body));
        Response::new(full(body))
    })
    .await
}

async fn gw_for(backend: &Backend, extra: &str) -> TestGateway {
    gateway(&(single_route(backend.address(), "", ALL) + extra)).await
}

/// Whether the server closes the connection within 10 s (reading and dropping anything sent).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "").await;
    let raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let got = raw_exchange(gw.addr, raw).await;
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{got}");
    let a = got.find("/a ").expect("/a answered");
    let b = got.find("/b xyz").expect("/b answered with its body");
    let c = got.find("/c hi").expect("/c answered with its chunked body");
    let d = got.find("/d ").expect("/d answered");
    assert!(a < b && b < c && c < d, "answers in request order: {got}");
    assert!(got.contains("connection: close"), "the last one closes: {got}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    assert!(read_until(&mut s, &mut seen, b"\r\n\r\n").await, "an interim answer arrives before the body");
    assert!(seen.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{}", String::from_utf8_lossy(&seen));
    s.write_all(b"hello").await.expect("write body");
    assert!(read_until(&mut s, &mut seen, b"/up hello").await, "{}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).contains("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn chunked_request_bodies_are_decoded_with_extensions_and_trailers() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "").await;
    let raw = b"POST /ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n";
    let got = raw_exchange(gw.addr, raw).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(backend.last().body, "hello world");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "").await;
    for body in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n", "5\nhello\r\n0\r\n\r\n"] {
        let raw = format!("POST /ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let got = raw_exchange(gw.addr, raw.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{body:?}: {got}");
        assert!(got.contains("connection: close"), "{body:?}: {got}");
    }
}

#[tokio::test]
async fn unreadable_heads_get_a_json_answer_and_the_connection_closes() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "limits: { max_header_bytes: 1KiB }\n").await;
    let long = "a".repeat(20 << 10);
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        ("a field without a colon", "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_owned(), 400),
        ("a bad method token", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), 400),
        ("an unknown version", "GET / HTTP/3.0\r\nHost: x\r\n\r\n".to_owned(), 400),
        ("a head past the limit", format!("GET / HTTP/1.1\r\nHost: x\r\nx-long: {long}\r\n\r\n"), 431),
        ("too many fields", format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        ("an unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned(), 400),
        (
            "two different lengths",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_owned(),
            400,
        ),
        ("a signed length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc".to_owned(), 400),
    ];
    for (what, raw, status) in cases {
        let got = raw_exchange(gw.addr, raw.as_bytes()).await;
        assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {got}");
        assert!(got.contains("connection: close\r\n"), "{what}: {got}");
        let (head, body) = got.split_once("\r\n\r\n").expect("a head and a body");
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        let id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("a request id");
        assert_eq!(json["request_id"], id, "{what}");
    }
    assert!(backend.requests().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn http10_clients_keep_the_connection_only_when_they_ask() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "").await;
    // No keep-alive asked: the answer says close, and the connection ends.
    let got = raw_exchange(gw.addr, b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("/old "), "{got}");

    // Asked: the answer says keep-alive, and a second request goes over the same connection.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut seen = Vec::new();
    s.write_all(b"GET /one HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"/one ").await, "{}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).contains("connection: keep-alive\r\n"));
    s.write_all(b"GET /two HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"/two ").await, "{}", String::from_utf8_lossy(&seen));
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_for_http11_and_ended_by_close_for_http10() {
    let upstream = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await;
    let gw = gateway(&single_route(upstream, "", ALL)).await;
    let got = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    let got = raw_exchange(gw.addr, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}

#[tokio::test]
async fn idle_connections_close_after_keepalive_timeout() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "limits: { keepalive_timeout: 200ms }\n").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut seen = Vec::new();
    s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"/k ").await);
    assert!(closed_by_server(&mut s).await, "the idle connection is closed");
    // A connection that never sends a byte is closed the same way.
    let mut quiet = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(closed_by_server(&mut quiet).await);
}

#[tokio::test]
async fn a_request_longer_than_the_keepalive_timeout_keeps_its_connection() {
    // The backend answers after twice the keep-alive timeout, so the connection's idle timer
    // runs out while a request is in flight: the connection still serves the next request, and
    // the idle time after that is counted afresh.
    let backend = Backend::serve(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        Response::new(full(req.uri().path().to_string()))
    })
    .await;
    let gw = gw_for(&backend, "limits: { keepalive_timeout: 200ms }\n").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut seen = Vec::new();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"/slow").await, "the slow request is answered");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"/next").await, "the connection outlived the slow request");
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    let idle = tokio::time::Instant::now();
    assert!(closed_by_server(&mut s).await, "then it closes when idle");
    assert!(idle.elapsed() >= Duration::from_millis(150), "after a whole idle period: {:?}", idle.elapsed());
}

#[tokio::test]
async fn each_idle_wait_gets_the_whole_keepalive_timeout() {
    // Requests 200 ms apart on a 300 ms keep-alive timeout: the third comes after the first
    // idle wait's deadline has passed, and the connection must still be open for it (the idle
    // timer runs to the deadline it was set for and is then set again for the later one).
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "limits: { keepalive_timeout: 300ms, keepalive_park_after: off }\n").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut seen = Vec::new();
    for path in ["/a", "/b", "/c"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
        assert!(
            read_until(&mut s, &mut seen, format!("{path} ").as_bytes()).await,
            "{path} answered on the same connection"
        );
        if path != "/c" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let idle = tokio::time::Instant::now();
    assert!(closed_by_server(&mut s).await, "then it closes when idle");
    assert!(idle.elapsed() >= Duration::from_millis(250), "after a whole idle period: {:?}", idle.elapsed());
}

#[tokio::test]
async fn a_head_that_stalls_is_cut_after_client_header_timeout() {
    let backend = path_and_body().await;
    let gw = gw_for(&backend, "limits: { client_header_timeout: 200ms }\n").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    assert!(closed_by_server(&mut s).await, "a slow head is not waited on for ever");
    assert!(backend.requests().is_empty());
}

#[tokio::test]
async fn an_upgrade_carries_bytes_sent_right_after_the_request() {
    // The upstream switches and echoes; the client sends its first frame in the same write as
    // the request, so those bytes sit in the gateway's buffer when the connection switches.
    let upstream = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await;
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let gw = gateway(&single_route(upstream, "", ALL)).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nearly bytes")
        .await
        .expect("write");
    let mut seen = Vec::new();
    assert!(read_until(&mut s, &mut seen, b"early bytes").await, "{}", String::from_utf8_lossy(&seen));
    assert!(seen.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"), "{}", String::from_utf8_lossy(&seen));
    s.write_all(b" and later ones").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"and later ones").await);
}

#[tokio::test]
async fn a_head_request_gets_the_length_but_no_body() {
    let backend = Backend::text("twelve bytes").await;
    let gw = gw_for(&backend, "").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut seen = Vec::new();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_until(&mut s, &mut seen, b"twelve bytes").await, "{}", String::from_utf8_lossy(&seen));
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert_eq!(text.matches("twelve bytes").count(), 1, "only the GET has a body: {text}");
    assert_eq!(text.matches("content-length: 12\r\n").count(), 2, "{text}");
}
