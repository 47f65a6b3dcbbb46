//! `ferroway demo`: sample backends that answer with what they received, so the demo's curl
//! lines show routing, load spreading and forwarding headers. Not used on any request path.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The demo's backends: name and address, as `examples/demo.yaml` expects them.
pub const BACKENDS: [(&str, &str); 3] =
    [("users-1", "127.0.0.1:9001"), ("users-2", "127.0.0.1:9002"), ("orders", "127.0.0.1:9003")];

/// Starts one sample backend on `addr`; it runs until the process ends.
pub async fn start_backend(name: &'static str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                service_fn(move |req: Request<Incoming>| async move { Ok::<_, Infallible>(describe(name, &req)) });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

fn describe(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": header("host"),
        "x_request_id": header("x-request-id"),
        "x_forwarded_for": header("x-forwarded-for"),
        "forwarded": header("forwarded"),
        "via": header("via"),
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

pub const CURL_LINES: &str = "\
Try:
  curl -s localhost:8080/api/users/42            # route `users`, prefix stripped: the backend sees /42
  curl -s localhost:8080/api/users/42            # again: round robin moves to the other users backend
  curl -s 'localhost:8080/api/orders?id=7'       # route `orders`, query passed through as is
  curl -s --http2-prior-knowledge localhost:8080/api/orders   # HTTP/2 (h2c) on the same port
  curl -si localhost:8080/nowhere                # 404: no route; JSON body with the request id
  curl -si localhost:8080/broken                 # 502: the upstream refuses connections
  curl -si -X DELETE localhost:8080/api/orders   # 404: route `orders` takes GET and POST only
Live dashboard: http://127.0.0.1:9901/ (admin listener; metrics at /metrics)
Ctrl-C stops the gateway and the backends.";
