//! gRPC through the gateway with a real gRPC server and client (tonic's core, with a codec
//! for raw message bytes so no protobuf code generation is needed): unary and bidirectional
//! streaming calls over h2c and TLS with their trailers intact, and the gateway's own errors
//! delivered as gRPC statuses.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BufMut, Bytes};
use futures_util::Stream;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::pki::{Alg, Ca};
use support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::{Code, Status};

/// Messages as raw bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type MessageStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Unary: echoes the message, or fails with NOT_FOUND and a message when asked to.
#[derive(Clone)]
struct Unary;

impl tower_service::Service<tonic::Request<Bytes>> for Unary {
    type Response = tonic::Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let msg = req.into_inner();
            if &msg[..] == b"fail" {
                return Err(Status::not_found("no such thing: café"));
            }
            Ok(tonic::Response::new(msg))
        })
    }
}

/// Bidirectional streaming: echoes every message as it arrives.
#[derive(Clone)]
struct Echo;

impl tower_service::Service<tonic::Request<Streaming<Bytes>>> for Echo {
    type Response = tonic::Response<MessageStream>;
    type Error = Status;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let stream = futures_util::stream::unfold(req.into_inner(), |mut s| async move {
                match s.message().await {
                    Ok(Some(m)) => Some((Ok(m), s)),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), s)),
                }
            });
            Ok(tonic::Response::new(Box::pin(stream) as MessageStream))
        })
    }
}

/// A gRPC server (h2c, or TLS with `tls`); returns its address and a count of connections.
async fn grpc_backend(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> (String, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let addr = raw_backend(move |stream| {
        count.fetch_add(1, Ordering::SeqCst);
        let tls = tls.clone();
        async move {
            let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(match req.uri().path() {
                    "/test.Echo/Unary" => tonic::server::Grpc::new(Raw).unary(Unary, req).await,
                    "/test.Echo/Stream" => tonic::server::Grpc::new(Raw).streaming(Echo, req).await,
                    _ => Status::unimplemented("unknown method").into_http(),
                })
            });
            let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => h2.serve_connection(TokioIo::new(s), service).await,
                    Err(_) => return,
                },
                None => h2.serve_connection(TokioIo::new(stream), service).await,
            };
        }
    })
    .await;
    (addr.to_string(), connections)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn h2c_client(origin: &str) -> tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>> {
    let http = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    tonic::client::Grpc::with_origin(http, origin.parse().expect("origin"))
}

async fn unary<T>(client: &mut tonic::client::Grpc<T>, path: &'static str, msg: &'static [u8]) -> Result<Bytes, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    client.ready().await.map_err(|e| Status::unknown(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    client.unary(tonic::Request::new(Bytes::from_static(msg)), path, Raw).await.map(|r| r.into_inner())
}

async fn bidi<T>(client: &mut tonic::client::Grpc<T>, messages: Vec<Bytes>) -> Result<Vec<Bytes>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    client.ready().await.map_err(|e| Status::unknown(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Stream");
    let request = tonic::Request::new(futures_util::stream::iter(messages));
    let mut stream = client.streaming(request, path, Raw).await?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await? {
        got.push(m);
    }
    Ok(got)
}

#[tokio::test]
async fn unary_and_streaming_calls_pass_through_h2c_with_their_trailers() {
    let (backend, connections) = grpc_backend(None).await;
    let gw = gateway(&single_route(&backend, ", protocol: h2c", ALL)).await;
    let mut client = h2c_client(&gw.url(""));

    assert_eq!(unary(&mut client, "/test.Echo/Unary", b"hello").await.expect("unary"), Bytes::from_static(b"hello"));
    let failed = unary(&mut client, "/test.Echo/Unary", b"fail").await.expect_err("a status from the server");
    assert_eq!(failed.code(), Code::NotFound, "grpc-status from the server's trailers");
    assert_eq!(failed.message(), "no such thing: café", "grpc-message intact (percent-encoded on the wire)");

    let messages: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("message {i}"))).collect();
    assert_eq!(bidi(&mut client, messages.clone()).await.expect("stream"), messages);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "calls share one h2 connection");
}

#[tokio::test]
async fn the_gateways_own_errors_reach_a_grpc_client_as_grpc_statuses() {
    let (backend, _) = grpc_backend(None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let gw = gateway(&format!(
        "middleware:\n  internal: {{ ip_filter: {{ allow: [10.0.0.0/8] }} }}\n\
         upstreams:\n  live: {{ targets: [{{ address: \"{backend}\" }}], protocol: h2c }}\n  dead: {{ targets: [{{ address: \"{dead}\" }}], protocol: h2c }}\n\
         routes:\n\
         \x20 - {{ name: dead, match: {{ path_prefix: /dead.Service/ }}, upstream: dead }}\n\
         \x20 - {{ name: private, match: {{ path_prefix: /private.Service/ }}, upstream: live, middleware: [internal] }}\n\
         \x20 - {{ name: live, match: {{ path_prefix: /test.Echo/ }}, upstream: live }}\n"
    ))
    .await;
    let mut client = h2c_client(&gw.url(""));
    let status = unary(&mut client, "/dead.Service/Call", b"x").await.expect_err("no upstream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = unary(&mut client, "/private.Service/Call", b"x").await.expect_err("forbidden");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = unary(&mut client, "/nowhere.Service/Call", b"x").await.expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "no route matches this request");

    // What a gRPC client receives: HTTP 200, a trailers-only answer, no JSON body.
    let h2 = h2_client();
    let got = send_with(
        &h2,
        http::Request::post(gw.url("/dead.Service/Call"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(""))
            .expect("request"),
    )
    .await;
    assert_eq!(got.status, http::StatusCode::OK);
    assert_eq!(got.header("grpc-status"), Some("14"));
    assert_eq!(got.header("content-type"), Some("application/grpc"));
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn grpc_works_over_tls_on_both_sides() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let (backend, _) = grpc_backend(Some(ca.leaf(&["svc.internal"], Alg::Ecdsa).server_config(&["h2"], None))).await;
    let (cert, key) = ca.leaf(&["127.0.0.1"], Alg::Ecdsa).write(dir.path(), "gw");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let gw = gateway(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls: {{ certificates: [{{ cert: {}, key: {} }}] }}\n\
         upstreams: {{ up: {{ targets: [{{ address: \"{}\" }}], protocol: h2, tls: {{ server_name: svc.internal, ca: {} }} }} }}\n\
         routes: [{{ name: r, upstream: up, {ALL} }}]\n",
        cert.display(),
        key.display(),
        backend,
        ca_file.display()
    ))
    .await;
    // hyper-rustls sets ALPN itself.
    let tls = (*ca.client_config(&[], None)).clone();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http2().build();
    let http = Client::builder(TokioExecutor::new()).http2_only(true).build(https);
    let mut client = tonic::client::Grpc::with_origin(http, format!("https://{}", gw.addr).parse().expect("origin"));
    assert_eq!(
        unary(&mut client, "/test.Echo/Unary", b"over tls").await.expect("unary"),
        Bytes::from_static(b"over tls")
    );
    let status = unary(&mut client, "/test.Echo/Unary", b"fail").await.expect_err("status");
    assert_eq!(status.code(), Code::NotFound);
    let messages: Vec<Bytes> = (0..5).map(|i| Bytes::from(vec![i; 100_000])).collect();
    assert_eq!(bidi(&mut client, messages.clone()).await.expect("stream"), messages, "large messages stream whole");
}
