//! The `compress` middleware as a client sees it: each algorithm decoded by an independent
//! decoder and compared byte for byte, negotiation by q-values, the headers a compressed
//! response must change, the responses it must leave alone, and streaming (a paused upstream's
//! bytes reach the client before the body ends).

mod support;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use support::*;

/// ~200 KiB of text that compresses well but not trivially.
fn text() -> String {
    (0..4000).map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n")).collect()
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).expect("brotli");
        }
        "zstd" => out = zstd::decode_all(bytes).expect("zstd"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// A backend answering by path: `/text` (text, strong ETag, ranges), `/small`, `/png`,
/// `/encoded` (already gzip), `/partial` (206), `/no-transform`.
async fn backend() -> Backend {
    Backend::serve(|req: Request<hyper::body::Incoming>| async move {
        let (ct, body, extra): (&str, Bytes, &[(&str, &str)]) = match req.uri().path() {
            "/text" => ("text/plain; charset=utf-8", text().into(), &[("etag", "\"v1\""), ("accept-ranges", "bytes")]),
            "/json" => ("application/json", text().into(), &[("vary", "origin")]),
            "/small" => ("text/plain", Bytes::from_static(b"tiny"), &[]),
            "/png" => ("image/png", text().into(), &[]),
            "/encoded" => ("text/plain", text().into(), &[("content-encoding", "gzip")]),
            "/partial" => ("text/plain", text().into(), &[("content-range", "bytes 0-1023/999999")]),
            "/no-transform" => ("text/plain", text().into(), &[("cache-control", "public, no-transform")]),
            _ => ("text/plain", Bytes::from_static(b"?"), &[]),
        };
        let status = if req.uri().path() == "/partial" { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut().insert("content-type", ct.parse().expect("ct"));
        for (k, v) in extra {
            r.headers_mut().insert(*k, v.parse().expect("value"));
        }
        r
    })
    .await
}

async fn gateway_with(backend: &Backend, compress: &str) -> TestGateway {
    gateway(&format!(
        "middleware:\n  zip: {{ compress: {{ {compress} }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [zip] }}]\n",
        backend.addr
    ))
    .await
}

async fn fetch(gw: &TestGateway, method: Method, path: &str, accept: Option<&str>) -> Got {
    let mut b = Request::builder().method(method).uri(gw.url(path));
    if let Some(a) = accept {
        b = b.header("accept-encoding", a);
    }
    send(b.body(full("")).expect("request")).await
}

fn vary_has_accept_encoding(h: &HeaderMap) -> bool {
    h.get_all("vary").iter().any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding")))
}

#[tokio::test]
async fn each_algorithm_round_trips_byte_for_byte_with_the_headers_a_transformed_body_needs() {
    let b = backend().await;
    let gw = gateway_with(&b, "min_size: 1KiB").await;
    for coding in ["br", "zstd", "gzip"] {
        let got = fetch(&gw, Method::GET, "/text", Some(coding)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-encoding"), Some(coding));
        assert!(got.header("content-length").is_none(), "{coding}: no Content-Length of the plain body");
        assert!(got.header("accept-ranges").is_none(), "{coding}: ranges would address the compressed bytes");
        assert_eq!(got.header("etag"), Some("W/\"v1\""), "{coding}: the strong ETag is weakened");
        assert!(vary_has_accept_encoding(&got.headers));
        assert!(got.body.len() < text().len() / 4, "{coding}: {} bytes", got.body.len());
        assert_eq!(decode(coding, &got.body), text().as_bytes(), "{coding} decodes to the upstream's bytes");
    }
    // An existing Vary is extended, not replaced.
    let got = fetch(&gw, Method::GET, "/json", Some("gzip")).await;
    let vary: Vec<_> = got.headers.get_all("vary").iter().map(|v| v.to_str().unwrap_or("").to_owned()).collect();
    assert!(vary.iter().any(|v| v.contains("origin")) && vary_has_accept_encoding(&got.headers), "{vary:?}");
    assert_eq!(decode("gzip", &got.body), text().as_bytes());
}

#[tokio::test]
async fn the_client_q_values_choose_and_the_configured_order_breaks_ties() {
    let b = backend().await;
    let gw = gateway_with(&b, "algorithms: [zstd, gzip]").await;
    let cases = [
        (Some("gzip;q=0.5, zstd;q=0.4"), Some("gzip")),
        (Some("gzip, zstd"), Some("zstd")),
        (Some("br"), None),
        (Some("*;q=0.2, zstd;q=0"), Some("gzip")),
        (Some("identity;q=0, *;q=0"), None),
        (Some("gzip;q=0"), None),
        (None, None),
    ];
    for (accept, expected) in cases {
        let got = fetch(&gw, Method::GET, "/text", accept).await;
        assert_eq!(got.header("content-encoding"), expected, "Accept-Encoding: {accept:?}");
        assert!(vary_has_accept_encoding(&got.headers), "{accept:?}: the answer depends on it either way");
        let plain = match expected {
            Some(c) => decode(c, &got.body),
            None => got.body.to_vec(),
        };
        assert_eq!(plain, text().as_bytes(), "{accept:?}");
    }
}

#[tokio::test]
async fn responses_that_must_not_be_compressed_pass_unchanged() {
    let b = backend().await;
    let gw = gateway_with(&b, "min_size: 1KiB").await;
    for path in ["/small", "/png", "/encoded", "/partial", "/no-transform"] {
        let got = fetch(&gw, Method::GET, path, Some("gzip, br, zstd")).await;
        let encoding = got.header("content-encoding");
        if path == "/encoded" {
            assert_eq!(encoding, Some("gzip"), "the upstream's own encoding stays");
        } else {
            assert_eq!(encoding, None, "{path}");
        }
        let expected = if path == "/small" { b"tiny".to_vec() } else { text().into_bytes() };
        assert_eq!(got.body.to_vec(), expected, "{path}: the upstream's bytes");
    }
    let head = fetch(&gw, Method::HEAD, "/text", Some("gzip")).await;
    assert_eq!(head.header("content-encoding"), None, "HEAD is left alone");
}

/// The upstream sends a first part, then pauses until the test has seen that part decoded
/// at the client: the encoder flushed at the pause instead of waiting for the body's end.
#[tokio::test]
async fn a_paused_upstream_is_flushed_so_a_stream_is_not_held_back() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let release_rx = Arc::new(release_rx);
    let b = Backend::serve(move |_req| {
        let mut release = (*release_rx).clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from(format!("event: first\n{}\n\n", "x".repeat(3000)))).await;
                let _ = release.wait_for(|r| *r).await;
                let _ = tx.send(Bytes::from_static(b"event: second\n\n")).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(b)), rx))
            });
            let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-type", "text/event-stream".parse().expect("ct"));
            r
        }
    })
    .await;
    let gw = gateway_with(&b, "algorithms: [gzip]").await;
    let resp = client()
        .request(Request::get(gw.url("/events")).header("accept-encoding", "gzip").body(full("")).expect("request"))
        .await
        .expect("response");
    assert_eq!(resp.headers().get("content-encoding").map(|v| v.as_bytes()), Some(&b"gzip"[..]));
    let mut body = resp.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut released = false;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("a frame in time");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.expect("frame").into_data() {
            std::io::Write::write_all(&mut decoder, &data).expect("decode");
            std::io::Write::flush(&mut decoder).expect("flush");
        }
        let so_far = String::from_utf8_lossy(decoder.get_ref()).into_owned();
        if !released && so_far.contains("event: first") {
            assert!(!so_far.contains("second"));
            released = true;
            release_tx.send_replace(true);
        }
    }
    assert!(released, "the first part arrived before the upstream finished");
    let all = decoder.finish().expect("gzip stream ends cleanly");
    assert!(String::from_utf8_lossy(&all).ends_with("event: second\n\n"));
}
