//! WebSocket and other HTTP/1.1 upgrades through the gateway, with a real WebSocket server and
//! client (tokio-tungstenite): piping both ways, middleware before the upgrade, idle timeout,
//! a refused upgrade staying plain HTTP, and no request smuggled past routing.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server; counts the handshakes it completed.
async fn ws_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let upgraded = Arc::new(AtomicUsize::new(0));
    let count = upgraded.clone();
    let addr = raw_backend(move |stream| {
        let count = count.clone();
        async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, upgraded)
}

#[tokio::test]
async fn websocket_messages_flow_both_ways_through_the_gateway() {
    let (backend, _) = ws_echo().await;
    let gw = gateway(&single_route(backend, "", ALL)).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr)).await.expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.expect("send");
        assert_eq!(ws.next().await.expect("echo").expect("frame"), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("frame").into_data().to_vec(), big, "a 1 MiB frame whole");
    ws.close(None).await.expect("close");
}

/// An upgraded connection has no HTTP-level goodbye, so shutdown treats it as in flight: it
/// counts as an open client connection, keeps working while the gateway drains, and is cut
/// (and counted as cut) when `shutdown_timeout` runs out.
#[tokio::test]
async fn an_open_websocket_is_drained_like_a_request_and_cut_at_the_shutdown_timeout() {
    let (backend, _) = ws_echo().await;
    let gw = gateway(&format!("shutdown_timeout: 1s\n{}", single_route(backend, "", ALL))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr)).await.expect("upgrade");
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("frame"), Message::text("before"));
    assert_eq!(gw.running.control.open_connections(), 1, "the upgraded connection counts as open");

    let control = gw.running.control.clone();
    let shutdown = tokio::spawn(async move { control.shutdown().await });
    ws.send(Message::text("during")).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("frame"), Message::text("during"), "served while draining");
    assert_eq!(shutdown.await.expect("shutdown"), 1, "cut at the timeout, and counted");
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the tunnel ends");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}

#[tokio::test]
async fn the_route_middleware_decides_before_the_upgrade() {
    let (backend, upgraded) = ws_echo().await;
    let gw = gateway(&format!(
        "middleware:\n  internal: {{ ip_filter: {{ allow: [10.0.0.0/8] }} }}\nupstreams: {{ up: {{ targets: [{{ address: {backend} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [internal] }}]\n"
    ))
    .await;
    match tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::FORBIDDEN),
        other => panic!("expected a 403 instead of an upgrade, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(upgraded.load(Ordering::SeqCst), 0, "the backend never saw the upgrade");
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed() {
    let (backend, _) = ws_echo().await;
    let gw = gateway(&single_route(backend, ", timeouts: { upgrade_idle: 300ms }", ALL)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr)).await.expect("upgrade");
    ws.send(Message::text("still here")).await.expect("send");
    assert!(ws.next().await.expect("echo").is_ok());
    // Nothing more either way: the gateway closes the pipe, and the client sees the end.
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed within the bound");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "no more messages, only the end: {ended:?}");
}

/// Writes a request and reads one response head plus its declared body.
async fn exchange(s: &mut TcpStream, request: &str) -> String {
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("answer").expect("read");
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_refused_upgrade_stays_http_and_the_next_request_is_routed() {
    // A plain HTTP backend: it answers 200 to the upgrade request instead of switching.
    let backend = Backend::text("plain answer").await;
    let gw = gateway(&format!(
        "upstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, match: {{ path_prefix: /public }} }}]\n",
        backend.address()
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let first = exchange(
        &mut s,
        "GET /public/ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.ends_with("plain answer"), "{first}");
    // The smuggling attempt: a second request on the same connection for a path no route
    // allows. It must be parsed and routed by the gateway, not piped to the backend.
    let second = exchange(&mut s, "GET /internal/secrets HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
    assert_eq!(backend.requests().len(), 1, "only the first request reached the backend");
}

#[tokio::test]
async fn a_switch_the_client_did_not_ask_for_is_a_bad_gateway() {
    let backend = raw_backend(|mut s| async move {
        if read_head(&mut s).await {
            let _ =
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: evil\r\n\r\n").await;
        }
    })
    .await;
    let gw = gateway(&single_route(backend, "", ALL)).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::BAD_GATEWAY);
}

/// Reads an HTTP head; returns it and whatever bytes came after it.
async fn head_and_rest(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("head").expect("read");
        assert!(n > 0, "closed before the head ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
    }
}

/// Frames as a fuzzing client sends them, valid and not: every opcode (reserved ones too),
/// RSV bits, masked and unmasked, fragments, invalid UTF-8, control frames with long payloads,
/// and lengths at each encoding boundary (125, 126, 65535, 65536).
fn frames(rng: &mut impl rand::Rng, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let lengths = [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000];
    for _ in 0..count {
        let first = rng.r#gen::<u8>(); // FIN, RSV1-3 and opcode all random
        let len = if rng.gen_bool(0.3) { lengths[rng.gen_range(0..lengths.len())] } else { rng.gen_range(0..300) };
        let masked = rng.gen_bool(0.8);
        out.push(first);
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=65_535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&rng.r#gen::<[u8; 4]>());
        }
        out.extend((0..len).map(|_| rng.r#gen::<u8>()));
    }
    out
}

/// Writes `bytes` in random-sized pieces, then closes the write side.
async fn write_chunked(mut w: impl tokio::io::AsyncWrite + Unpin, bytes: &[u8], seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.gen_range(1..=16_384).min(bytes.len() - at);
        w.write_all(&bytes[at..at + n]).await.expect("write");
        at += n;
    }
    w.shutdown().await.expect("shutdown");
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin, mut into: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut into)).await.expect("in time").expect("read");
    into
}

/// The property a conformance suite run through a proxy checks, stated directly: after the
/// 101, the gateway is byte-transparent both ways, whatever the frames are (the endpoints,
/// not the proxy, judge them), including frames the client sent before the 101 arrived, and
/// each side's close (FIN) reaches the other. Autobahn|Testsuite itself needs Python 2.7,
/// which this platform no longer has.
#[tokio::test]
async fn after_the_switch_every_byte_passes_unchanged_both_ways() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6455);
    let from_client = frames(&mut rng, 300);
    let from_server = Arc::new(frames(&mut rng, 300));
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let got_tx = Arc::new(std::sync::Mutex::new(Some(got_tx)));
    let script = from_server.clone();
    let backend = raw_backend(move |mut s| {
        let (script, got_tx) = (script.clone(), got_tx.clone());
        async move {
            let (head, early) = head_and_rest(&mut s).await;
            let key = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().starts_with("sec-websocket-key:").then(|| l[18..].trim().to_owned()))
                .expect("key");
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            s.write_all(answer.as_bytes()).await.expect("101");
            let (r, w) = s.into_split();
            let (received, ()) = tokio::join!(read_all(r, early), write_chunked(w, &script, 2));
            if let Some(tx) = got_tx.lock().expect("lock").take() {
                let _ = tx.send(received);
            }
        }
    })
    .await;
    let gw = gateway(&single_route(backend, "", ALL)).await;

    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let request = "GET /chat HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // The request head and the first frames in one write: they must not be lost or parsed.
    let mut first = request.as_bytes().to_vec();
    first.extend_from_slice(&from_client[..1000]);
    s.write_all(&first).await.expect("write");
    let (head, early) = head_and_rest(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (r, w) = s.into_split();
    let (received, ()) = tokio::join!(read_all(r, early), write_chunked(w, &from_client[1000..], 1));
    assert!(received == *from_server, "client got {} bytes of the server's {}", received.len(), from_server.len());
    let at_server = got_rx.await.expect("backend finished");
    assert!(at_server == from_client, "server got {} bytes of the client's {}", at_server.len(), from_client.len());
}
