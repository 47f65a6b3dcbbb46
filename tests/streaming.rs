//! Bodies stream through the gateway in both directions: a 1 GiB download and a 1 GiB upload
//! pass with the gateway process's peak memory staying small.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use support::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 << 10;

/// A generated body of `len` bytes, produced chunk by chunk (never held whole).
struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(len: u64) -> Self {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        Generated { left: len, chunk: Bytes::from(chunk) }
    }
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Reads a body to its end, counting bytes without keeping them.
async fn drain(mut body: impl HttpBody<Data = Bytes, Error = impl std::fmt::Debug> + Unpin) -> u64 {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_down_and_up_in_little_memory() {
    let backend = Backend::serve(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            let received = drain(req.into_body()).await;
            Response::new(full(received.to_string()))
        } else {
            Response::new(Generated::new(GIB).boxed())
        }
    })
    .await;
    let gw = GatewayProcess::start(&format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\n\
         access_log: {{ output: off }}\n\
         upstreams: {{ big: {{ targets: [{{ address: {} }}] }} }}\n\
         routes: [{{ name: big, match: {{ path_prefix: / }}, upstream: big, limits: {{ max_request_body: 2GiB }} }}]\n",
        backend.address()
    ));
    let c = client();

    let resp = c
        .request(Request::get(format!("http://{}/download", gw.addr)).body(full("")).expect("request"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    assert_eq!(drain(resp.into_body()).await, GIB);

    let upload =
        Request::post(format!("http://{}/upload", gw.addr)).body(Generated::new(GIB).boxed()).expect("request");
    let got = send_with(&c, upload).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), GIB.to_string());

    let peak = gw.peak_rss();
    assert!(peak < 64 << 20, "gateway peak RSS {} MiB", peak >> 20);
}

/// 3 MiB of bytes that differ from offset to offset, so a misplaced or lost piece shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

#[tokio::test]
async fn a_long_body_moved_socket_to_socket_arrives_whole_and_its_connection_is_reused() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    const LEN: usize = 3 << 20;
    let body = Arc::new(pattern(LEN));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (b, count) = (body.clone(), accepted.clone());
    let addr = raw_backend(move |mut s| {
        let body = b.clone();
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            while read_head(&mut s).await {
                // The head and the body's first 100 000 bytes in one write, so the gateway reads
                // some of the body with the head; the rest in uneven pieces.
                let mut first = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").into_bytes();
                first.extend_from_slice(&body[..100_000]);
                if s.write_all(&first).await.is_err() {
                    return;
                }
                for piece in body[100_000..].chunks(777_777) {
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for _ in 0..3 {
        let got = send_with(&c, Request::get(gw.url("/big")).body(full("")).expect("request")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.len(), LEN);
        assert!(got.body[..] == body[..], "the body arrives byte for byte");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the upstream connection is pooled after each body");
}

#[tokio::test]
async fn an_upstream_that_dies_in_a_long_body_cuts_the_client_response() {
    use tokio::io::AsyncWriteExt;
    let addr = raw_backend(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 4 << 20).as_bytes()).await;
            let _ = s.write_all(&pattern(1 << 20)).await;
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let resp = client().request(Request::get(gw.url("/big")).body(full("")).expect("request")).await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    let read = resp.into_body().collect().await;
    assert!(read.is_err(), "a body cut short must not look complete");
}

/// A raw upstream that answers every request with `body` (text, with a length) and counts the
/// requests it read.
async fn long_text(
    body: std::sync::Arc<Vec<u8>>,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let addr = raw_backend(move |mut s| {
        let (body, seen) = (body.clone(), seen.clone());
        async move {
            while read_head(&mut s).await {
                seen.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&body).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, requests)
}

#[tokio::test]
async fn a_long_body_a_middleware_reads_is_not_spliced_past_it() {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    // Long enough to be spliced if nothing read it: the cache must still see every byte to
    // store it, and compression must still encode it.
    let text: Vec<u8> = b"every line of this text compresses well\n".repeat(8 << 10);
    let body = std::sync::Arc::new(text);
    let (addr, requests) = long_text(body.clone()).await;
    let gw = gateway(&format!(
        "upstreams: {{ up: {{ targets: [{{ address: {addr} }}] }} }}\n\
         middleware: {{ hot: {{ cache: {{ max_object_size: 1MiB }} }}, zip: {{ compress: {{ algorithms: [gzip] }} }} }}\n\
         routes:\n\
         - {{ name: cached, match: {{ path_prefix: /c }}, upstream: up, middleware: [hot] }}\n\
         - {{ name: zipped, match: {{ path_prefix: /z }}, upstream: up, middleware: [zip] }}\n"
    ))
    .await;
    let c = client();
    for expected in ["MISS", "HIT"] {
        let got = send_with(&c, Request::get(gw.url("/c")).body(full("")).expect("request")).await;
        assert_eq!(got.header("x-cache"), Some(expected));
        assert!(got.body[..] == body[..], "the cached body arrives whole ({expected})");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the second request is answered from the cache");

    let req = Request::get(gw.url("/z")).header("accept-encoding", "gzip").body(full("")).expect("request");
    let got = send_with(&c, req).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&got.body[..]).read_to_end(&mut plain).expect("gunzip");
    assert!(plain == body[..], "the compressed body decodes to the upstream's");
}
