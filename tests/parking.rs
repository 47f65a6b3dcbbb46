//! Parked connections (`limits.keepalive_park_after`): a plain HTTP/1.1 connection idle that
//! long gives up its task and buffers, and is served again, the same as before, when the client
//! sends on it; the keep-alive timeout, the client's close and the drain still end it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: parking.test\r\n\r\n";

async fn parking_gateway(backend: &Backend, limits: &str) -> TestGateway {
    gateway(&format!(
        "admin: {{ address: 127.0.0.1:0 }}\nlimits: {{ {limits} }}\n{}",
        single_route(backend.addr, "", ALL)
    ))
    .await
}

/// A gauge of `/metrics`.
async fn gauge(gw: &TestGateway, name: &str) -> u64 {
    metric(gw.running.control.admin_address().expect("admin listener"), name).await
}

/// Waits (10 s at most) until the gauge reads `want`.
async fn wait_gauge(gw: &TestGateway, name: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = gauge(gw, name).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stays {now}, want {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PARKED: &str = "ferroway_client_connections_parked";
const OPEN: &str = "ferroway_client_connections";

/// Sends one request on `s` and reads its whole answer (the backend's body is "hello").
async fn exchange(s: &mut TcpStream) -> String {
    s.write_all(REQUEST).await.expect("write");
    read_answer(s).await
}

async fn read_answer(s: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    assert!(read_until(s, &mut seen, b"\r\n\r\nhello").await, "an answer: {}", String::from_utf8_lossy(&seen));
    String::from_utf8_lossy(&seen).into_owned()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// A backend answering "hello", a gateway with `limits` in front of it, and a client
/// connection that made one request and is now parked.
async fn one_parked(limits: &str) -> (Backend, TestGateway, TcpStream) {
    let backend = Backend::text("hello").await;
    let gw = parking_gateway(&backend, limits).await;
    let mut s = connect(gw.addr).await;
    exchange(&mut s).await;
    wait_gauge(&gw, PARKED, 1).await;
    (backend, gw, s)
}

/// Reads until the gateway closes `s` (10 s at most); true if it closed with nothing more sent.
async fn closed_by_gateway(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    matches!(read, Ok(Ok(0)))
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_served_again_each_time_its_client_sends() {
    let backend = Backend::text("hello").await;
    let gw = parking_gateway(&backend, "keepalive_park_after: 50ms").await;
    let mut s = connect(gw.addr).await;
    let first = exchange(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    for round in 0..3 {
        wait_gauge(&gw, PARKED, 1).await;
        assert_eq!(gauge(&gw, OPEN).await, 1, "a parked connection is still open");
        let again = exchange(&mut s).await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "round {round}: {again}");
        assert!(again.contains("\r\nx-request-id: ") || again.contains("\r\nX-Request-Id: "), "{again}");
    }
    // The upstream saw four ordinary requests, forwarded for this client.
    let seen = backend.requests();
    assert_eq!(seen.len(), 4);
    for r in &seen {
        assert_eq!(r.uri, "/hello");
        assert_eq!(r.headers.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"127.0.0.1"[..]));
        assert_eq!(r.headers.get("host").map(|v| v.as_bytes()), Some(&b"parking.test"[..]));
    }
}

#[tokio::test]
async fn a_request_head_split_across_the_wake_up_is_read_whole() {
    let (_backend, gw, mut s) = one_parked("keepalive_park_after: 50ms").await;
    // The first bytes wake it; the rest of the head comes once it is served again.
    let (head, rest) = REQUEST.split_at(10);
    s.write_all(head).await.expect("write");
    wait_gauge(&gw, PARKED, 0).await;
    s.write_all(rest).await.expect("write");
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_its_keepalive_timeout() {
    let (_backend, gw, mut s) = one_parked("keepalive_park_after: 50ms, keepalive_timeout: 400ms").await;
    // The gateway closes it: the client reads the end of the stream, with nothing before it.
    assert!(closed_by_gateway(&mut s).await);
    wait_gauge(&gw, OPEN, 0).await;
    assert_eq!(gauge(&gw, PARKED).await, 0);
}

#[tokio::test]
async fn a_parked_connection_its_client_closes_is_let_go() {
    let (backend, gw, s) = one_parked("keepalive_park_after: 50ms").await;
    drop(s);
    wait_gauge(&gw, OPEN, 0).await;
    assert_eq!(gauge(&gw, PARKED).await, 0);
    assert_eq!(backend.requests().len(), 1, "the close is no request");
}

#[tokio::test]
async fn many_parked_connections_each_wake_to_their_own_request() {
    const N: usize = 40;
    let backend = Backend::recording(|seen| http::Response::new(full(seen.uri.clone()))).await;
    let gw = parking_gateway(&backend, "keepalive_park_after: 50ms").await;
    let mut conns = Vec::new();
    for i in 0..N {
        let mut s = connect(gw.addr).await;
        s.write_all(format!("GET /first/{i} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes()).await.expect("write");
        assert!(read_head(&mut s).await);
        conns.push(s);
    }
    wait_gauge(&gw, PARKED, N as u64).await;
    // Every connection again at once, each with its own path: each answer is its own.
    let answers = futures_util::future::join_all(conns.iter_mut().enumerate().map(|(i, s)| async move {
        s.write_all(format!("GET /again/{i} HTTP/1.1\r\nHost: p\r\n\r\n").as_bytes()).await.expect("write");
        let mut seen = Vec::new();
        read_until(s, &mut seen, format!("/again/{i}").as_bytes()).await
    }))
    .await;
    assert!(answers.iter().all(|ok| *ok), "{answers:?}");
    assert_eq!(gauge(&gw, OPEN).await, N as u64);
}

#[tokio::test]
async fn shutdown_closes_parked_connections_without_waiting_for_them() {
    let (_backend, gw, mut s) = one_parked("keepalive_park_after: 50ms").await;
    let control = gw.running.control.clone();
    let cut = tokio::time::timeout(Duration::from_secs(10), control.shutdown()).await;
    assert_eq!(cut.ok(), Some(0), "shutdown ends at once, with nothing to cut");
    assert!(closed_by_gateway(&mut s).await);
}

#[tokio::test]
async fn with_parking_off_an_idle_connection_keeps_its_task() {
    let backend = Backend::text("hello").await;
    let gw = parking_gateway(&backend, "keepalive_park_after: off").await;
    // Beside it, a gateway that parks after the default second. The connection to the first
    // is made first: when the second's parks, it has been idle longer than the default.
    let gw_parking = parking_gateway(&backend, "keepalive_park_after: 1s").await;
    let mut kept = connect(gw.addr).await;
    exchange(&mut kept).await;
    let mut parked = connect(gw_parking.addr).await;
    exchange(&mut parked).await;
    wait_gauge(&gw_parking, PARKED, 1).await;
    assert_eq!(gauge(&gw, PARKED).await, 0, "idle longer than the default, and not parked");
    let got = send_with(&client(), http::Request::get(gw.url("/")).body(full("")).expect("request")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(exchange(&mut kept).await.starts_with("HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn a_reload_turns_parking_on_for_connections_that_go_idle_after_it() {
    let backend = Backend::text("hello").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.yaml");
    let yaml = |limits: &str| {
        format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\n\
             admin: {{ address: 127.0.0.1:0 }}\nlimits: {{ {limits} }}\n{}",
            single_route(backend.addr, "", ALL)
        )
    };
    let gw = gateway_from_file(&path, &yaml("keepalive_park_after: off")).await;
    std::fs::write(&path, yaml("keepalive_park_after: 50ms")).expect("write config");
    gw.running.control.reload_from_file().await.expect("the reload applies");
    let mut s = connect(gw.addr).await;
    exchange(&mut s).await;
    wait_gauge(&gw, PARKED, 1).await;
    assert!(exchange(&mut s).await.starts_with("HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn shutdown_closes_unparked_idle_connections_at_once_after_any_number_of_requests() {
    let backend = Backend::text("hello").await;
    let gw = parking_gateway(&backend, "keepalive_park_after: off").await;
    // One connection idle after its first request, one after its third: the drain's wake-up
    // reaches both (the later idle waits check it without polling it again).
    let mut once = connect(gw.addr).await;
    exchange(&mut once).await;
    let mut thrice = connect(gw.addr).await;
    for _ in 0..3 {
        exchange(&mut thrice).await;
    }
    let control = gw.running.control.clone();
    let cut = tokio::time::timeout(Duration::from_secs(10), control.shutdown()).await;
    assert_eq!(cut.ok(), Some(0), "shutdown ends at once, with nothing to cut");
    for s in [&mut once, &mut thrice] {
        assert!(closed_by_gateway(s).await);
    }
}
