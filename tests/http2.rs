//! HTTP/2 abuse from a raw-frame client (the attacks need frames no well-behaved client
//! library sends): a rapid-reset flood and a CONTINUATION flood are cut off with GOAWAY, and
//! other connections are served meanwhile.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://a/`: indexed :method GET, :scheme http, :path /, and :authority as a
/// literal without indexing.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'];

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
async fn until_goaway(s: &mut TcpStream) -> Option<u32> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            if head[3] == GOAWAY && payload.len() >= 8 {
                return Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the gateway ends the connection in time")
}

async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
    s
}

async fn still_serves(gw: &TestGateway) {
    let got = send_with(&h2_client(), http::Request::get(gw.url("/")).body(full("")).expect("request")).await;
    assert_eq!(got.status, StatusCode::OK, "other connections are served");
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off_with_goaway() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&single_route(backend.address(), "", ALL)).await;
    let mut s = open(gw.addr).await;
    let mut flood = Vec::new();
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, GET_BLOCK));
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    // The gateway may close while the flood is still being written.
    let _ = s.write_all(&flood).await;
    let code = until_goaway(&mut s).await;
    assert!(matches!(code, None | Some(0xb)), "GOAWAY ENHANCE_YOUR_CALM or a closed connection, got {code:?}");
    assert!(backend.requests().len() < 1_000, "most reset streams never reached the backend");
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_with_goaway() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&single_route(backend.address(), "", ALL)).await;
    let mut s = open(gw.addr).await;
    // One header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // full of 100-byte literal fields, 8 MiB in all.
    let mut field = vec![0x00, 4];
    field.extend_from_slice(b"x-aa");
    field.push(100);
    field.extend_from_slice(&[b'v'; 100]);
    let chunk: Vec<u8> = field.iter().copied().cycle().take(field.len() * 150).collect();
    let _ = s.write_all(&frame(HEADERS, END_STREAM, 1, GET_BLOCK)).await;
    let mut sent = 0usize;
    while sent < 8 << 20 {
        if s.write_all(&frame(CONTINUATION, 0, 1, &chunk)).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let code = until_goaway(&mut s).await;
    assert!(code.is_none_or(|c| c != 0), "a GOAWAY with an error code or a closed connection, got {code:?}");
    assert!(backend.requests().is_empty());
    still_serves(&gw).await;
}

/// Backpressure end to end: an h2 client that stops reading (its stream window stays shut)
/// makes the gateway stop reading the upstream, so the backend's writes block; the gateway
/// holds a bounded amount, not the body. Once the client reads again, every byte arrives.
#[tokio::test]
async fn a_client_that_stops_reading_stops_the_upstream_instead_of_filling_the_gateway() {
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BODY: usize = 256 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let backend = raw_backend(move |mut s| {
        let count = count.clone();
        async move {
            if !read_head(&mut s).await {
                return;
            }
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            while count.load(Ordering::SeqCst) < BODY {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
                count.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
    })
    .await;
    let gw = gateway(&single_route(backend, "", ALL)).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/big", gw.addr)).body(full("")).expect("request");
    let resp = sender.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);

    // Wait until the backend is blocked: its count stops moving (polled, bounded).
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let stalled = written.load(Ordering::SeqCst);
    // Kernel socket buffers on loopback (both ends of the upstream connection) hold a few
    // MiB; the client's window holds 64 KiB. Anything near the body size means buffering.
    assert!(stalled < 32 << 20, "the backend wrote {stalled} bytes to a client that reads nothing");

    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, BODY, "every byte arrives once the client reads");
}
