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
