//! Forwarding: what the client sends reaches the upstream, what the upstream answers reaches
//! the client, bodies stream both ways and upstream connections are pooled.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use support::*;

fn one_route(backend: &Backend) -> String {
    single_route(backend.addr, "", ALL)
}

#[tokio::test]
async fn method_path_query_headers_and_body_reach_the_upstream() {
    let backend = Backend::echo().await;
    let gw = gateway(&one_route(&backend)).await;
    let req = Request::put(gw.url("/api/items/7?b=%20x&a=1&a=2&empty=&raw=%zz"))
        .header("x-custom", "v1")
        .header("content-type", "application/octet-stream")
        .body(full(&b"payload \x00\xff bytes"[..]))
        .expect("request");
    let got = send(req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"payload \x00\xff bytes");
    let seen = backend.last();
    assert_eq!(seen.method, http::Method::PUT);
    assert_eq!(seen.uri, "/api/items/7?b=%20x&a=1&a=2&empty=&raw=%zz");
    assert_eq!(seen.headers["x-custom"], "v1");
    assert_eq!(seen.headers["content-type"], "application/octet-stream");
    assert_eq!(&seen.body[..], b"payload \x00\xff bytes");
}

#[tokio::test]
async fn status_headers_and_body_come_back_unchanged() {
    let backend = Backend::recording(|_| {
        let mut r = Response::new(full("teapot body"));
        *r.status_mut() = StatusCode::IM_A_TEAPOT;
        r.headers_mut().insert("x-answer", "42".parse().expect("value"));
        r.headers_mut().append("set-cookie", "a=1".parse().expect("value"));
        r.headers_mut().append("set-cookie", "b=2".parse().expect("value"));
        r
    })
    .await;
    let gw = gateway(&one_route(&backend)).await;
    let direct = get(&format!("http://{}/x", backend.addr)).await;
    let via = get(&gw.url("/x")).await;
    assert_eq!(via.status, direct.status);
    assert_eq!(via.body, direct.body);
    assert_eq!(via.header("x-answer"), Some("42"));
    let cookies: Vec<_> = via.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    // Beyond the documented additions (via, x-request-id), the client cannot tell.
    let mut extra: Vec<_> =
        via.headers.keys().filter(|k| !direct.headers.contains_key(*k)).map(|k| k.as_str()).collect();
    extra.sort();
    assert_eq!(extra, ["via", "x-request-id"]);
}

#[tokio::test]
async fn trailers_pass_through_to_http1_and_http2_clients() {
    let backend = Backend::serve(|_req| async {
        let frames = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"chunk"))),
            Ok(http_body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", "0".parse().expect("value"));
                t
            })),
        ];
        let body = http_body_util::StreamBody::new(futures_stream(frames));
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut().insert("trailer", "grpc-status".parse().expect("value"));
        r
    })
    .await;
    let gw = gateway(&one_route(&backend)).await;
    for client in [client(), h2_client()] {
        let req = Request::get(gw.url("/t")).header("te", "trailers").body(full("")).expect("request");
        let got = send_with(&client, req).await;
        assert_eq!(&got.body[..], b"chunk", "{:?}", got.version);
        let trailers = got.trailers.unwrap_or_else(|| panic!("trailers arrive over {:?}", got.version));
        assert_eq!(trailers["grpc-status"], "0");
    }
}

type Frames = Vec<Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>;

fn futures_stream(
    frames: Frames,
) -> impl futures_core::Stream<Item = Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> + Send
{
    struct Iter(std::vec::IntoIter<Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>);
    impl futures_core::Stream for Iter {
        type Item = Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(frames.into_iter())
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&one_route(&backend)).await;
    let c = client();
    for _ in 0..100 {
        let got = send_with(&c, Request::get(gw.url("/ping")).body(full("")).expect("request")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    let opened = backend.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 2, "100 sequential requests opened {opened} upstream connections");
}

#[tokio::test]
async fn http1_and_http2_prior_knowledge_share_one_port() {
    let backend = Backend::echo().await;
    let gw = gateway(&one_route(&backend)).await;
    let h1 = get(&gw.url("/v")).await;
    assert_eq!(h1.version, Version::HTTP_11);
    let h2 = send_with(&h2_client(), Request::post(gw.url("/v")).body(full("over h2")).expect("request")).await;
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(&h2.body[..], b"over h2");
    // The upstream speaks HTTP/1.1 and still learns the host the client asked for.
    let seen = backend.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], gw.addr.to_string());
    assert_eq!(seen.headers["via"], "2 ferroway");
}

/// Body pieces on both sides of the size up to which the gateway copies a piece behind its head
/// or chunk-size line so that both leave in one write (4 KiB, `crate::send::COALESCE`), and one
/// far above it.
const PIECES: [usize; 7] = [1, 4093, 4094, 4096, 4097, 70_000, 3];

fn piece(index: usize, len: usize) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(index as u8)).collect::<Vec<u8>>().into()
}

fn pieces() -> Frames {
    PIECES.iter().enumerate().map(|(i, &n)| Ok(http_body::Frame::data(piece(i, n)))).collect()
}

#[tokio::test]
async fn streamed_bodies_arrive_whole_whatever_the_size_of_their_pieces() {
    let expected: Vec<u8> = PIECES.iter().enumerate().flat_map(|(i, &n)| piece(i, n)).collect();
    // Down: the backend streams without a length, so the gateway sends it on chunked.
    let backend = Backend::serve(|_req| async {
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(futures_stream(pieces()))))
    })
    .await;
    let gw = gateway(&one_route(&backend)).await;
    let got = get(&gw.url("/down")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert!(got.body == expected, "the body as the backend sent it ({} of {} bytes)", got.body.len(), expected.len());
    // Up: the client sends the same pieces chunked; the upstream gets every byte.
    let echo = Backend::echo().await;
    let gw = gateway(&one_route(&echo)).await;
    let upload = BodyExt::boxed(http_body_util::StreamBody::new(futures_stream(pieces())));
    let got = send(Request::post(gw.url("/up")).body(upload).expect("request")).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = echo.last();
    assert_eq!(seen.headers.get("transfer-encoding").map(|v| v.as_bytes()), Some(&b"chunked"[..]));
    assert!(
        seen.body == expected,
        "the upload as the client sent it ({} of {} bytes)",
        seen.body.len(),
        expected.len()
    );
    assert!(got.body == expected, "and echoed back whole");
}
