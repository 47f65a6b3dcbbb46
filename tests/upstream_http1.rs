//! The gateway's own HTTP/1.1 upstream client, on the wire: what a raw upstream receives for
//! each kind of request body, how each kind of response framing is read, which answers are
//! bad gateways, and when a pooled connection is reused, replaced or given up. Each case
//! asserts what the client sent, what the upstream received, and what the client got back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A raw upstream that reads each request up to `end` (the end of its head, or of its chunked
/// body), reports the bytes, and answers with `answer`; connections accepted are counted.
async fn upstream(
    end: &'static [u8],
    answer: &'static [u8],
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = raw_backend(move |mut s| {
        let tx = tx.clone();
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                let mut seen = Vec::new();
                if !read_until(&mut s, &mut seen, end).await {
                    return;
                }
                let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, rx, accepted)
}

async fn raw_request(gw: &TestGateway, bytes: &[u8]) -> String {
    raw_exchange(gw.addr, bytes).await
}

#[tokio::test]
async fn a_bodiless_request_reaches_the_upstream_as_one_head_without_framing_fields() {
    let (addr, mut seen, _) = upstream(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let got =
        raw_request(&gw, b"GET /a/b?x=%2F&y HTTP/1.1\r\nHost: api.test\r\nX-Custom: 1\r\nConnection: close\r\n\r\n")
            .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"), "{got}");
    let head = seen.recv().await.expect("the upstream got a request");
    assert!(head.starts_with("GET /a/b?x=%2F&y HTTP/1.1\r\n"), "the target is forwarded byte for byte: {head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nhost: api.test\r\n") && lower.contains("\r\nx-custom: 1\r\n"), "{head}");
    assert!(!lower.contains("content-length") && !lower.contains("transfer-encoding"), "no body, no framing: {head}");
    assert!(!lower.contains("connection: close"), "the client's hop-by-hop fields stay on its hop: {head}");
}

#[tokio::test]
async fn a_chunked_upload_reaches_the_upstream_chunked_with_its_trailers() {
    let (addr, mut seen, _) =
        upstream(b"x-checksum: 42\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let got = raw_request(
        &gw,
        b"POST /up HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let sent = seen.recv().await.expect("the upstream got a request");
    let (head, body) = sent.split_once("\r\n\r\n").expect("a head");
    assert!(head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    let chunks = body.replace("\r\n", "|");
    assert_eq!(chunks, "5|hello|6| world|0|x-checksum: 42||", "the client's chunks, then its trailer");
}

#[tokio::test]
async fn a_sized_upload_reaches_the_upstream_with_its_length() {
    let (addr, mut seen, _) = upstream(b"hello world", b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let got =
        raw_request(&gw, b"PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world")
            .await;
    assert!(got.starts_with("HTTP/1.1 201 Created\r\n"), "{got}");
    let sent = seen.recv().await.expect("the upstream got a request");
    assert!(sent.to_ascii_lowercase().contains("\r\ncontent-length: 11\r\n"), "{sent}");
    assert!(sent.ends_with("\r\n\r\nhello world"), "{sent}");
}

#[tokio::test]
async fn informational_answers_before_the_final_one_are_not_forwarded() {
    let (addr, _seen, _) = upstream(
        b"\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let got = get(&gw.url("/")).await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"));
    assert!(got.header("link").is_none(), "the 103's fields are not the final answer's");
}

#[tokio::test]
async fn a_response_without_a_length_runs_until_the_upstream_closes_and_its_connection_is_not_reused() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = raw_backend(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            if read_head(&mut s).await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ").await;
                let _ = s.write_all(b"until close").await;
            }
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for _ in 0..2 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "hello until close"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a close-delimited response ends its connection");
}

#[tokio::test]
async fn a_chunked_response_ends_with_its_last_chunk_whenever_that_arrives_and_not_when_it_never_does() {
    // The upstream's end: with the last data in one write, after the client has seen the data,
    // or never (the upstream closes after the data).
    let release = Arc::new(tokio::sync::Notify::new());
    let later = release.clone();
    let addr = raw_backend(move |mut s| {
        let later = later.clone();
        async move {
            let mut head = Vec::new();
            if !read_until(&mut s, &mut head, b"\r\n\r\n").await {
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
            if head.starts_with("GET /together ") {
                let _ = s.write_all(&[&start[..], b"0\r\n\r\n"].concat()).await;
            } else if head.starts_with("GET /later ") {
                let _ = s.write_all(start).await;
                later.notified().await;
                let _ = s.write_all(b"0\r\n\r\n").await;
            } else {
                let _ = s.write_all(start).await;
            }
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");

    let got = raw_exchange(gw.addr, request("/together").as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got:?}");

    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(request("/later").as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    assert!(read_until(&mut s, &mut seen, b"hello\r\n").await, "the chunk comes before the end");
    release.notify_one();
    assert!(read_until(&mut s, &mut seen, b"0\r\n\r\n").await, "{:?}", String::from_utf8_lossy(&seen));
    assert!(String::from_utf8_lossy(&seen).ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));

    let got = raw_exchange(gw.addr, request("/cut").as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("5\r\nhello\r\n"), "{got:?}");
}

#[tokio::test]
async fn responses_whose_length_cannot_be_known_are_bad_gateways() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        let (addr, _seen, _) = upstream(b"\r\n\r\n", answer).await;
        let gw = gateway(&single_route(addr, "", ALL)).await;
        let got = get(&gw.url("/")).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(answer));
        assert_eq!(got.json()["error"], "upstream sent an invalid response");
    }
}

#[tokio::test]
async fn an_oversized_response_head_is_a_bad_gateway() {
    let addr = raw_backend(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let field = format!("x-big: {}\r\n", "a".repeat(1000));
            for _ in 0..100 {
                if s.write_all(field.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_response_with_a_coding_and_a_length_is_read_by_the_coding_and_its_connection_dropped() {
    let (addr, _seen, accepted) = upstream(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for _ in 0..2 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"));
        assert!(got.header("content-length").is_none(), "the misleading length is not passed on");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection framed two ways is not reused");
}

#[tokio::test]
async fn bytes_after_a_response_are_never_read_as_the_next_response() {
    // The upstream sends more than its length: a desync that must not answer the next request.
    let (addr, _seen, accepted) = upstream(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    )
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for _ in 0..3 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "a connection with stray bytes is closed, not pooled");
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (addr, _seen, accepted) = upstream(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    for _ in 0..20 {
        // A new client connection each time: reuse is the gateway's, not the client's.
        let got = get(&gw.url("/")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// An upstream whose first connection answers once and then closes when the next request
/// arrives, unanswered (it timed the connection out just as the gateway reused it); later
/// connections answer normally. Returns the address and how many requests it read.
async fn closes_on_reuse() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = requests.clone();
    let addr = raw_backend(move |mut s| {
        let seen = seen.clone();
        let first = first.swap(false, Ordering::SeqCst);
        async move {
            let mut answered = 0;
            loop {
                let mut head = Vec::new();
                if !read_until(&mut s, &mut head, b"\r\n\r\n").await {
                    return;
                }
                seen.fetch_add(1, Ordering::SeqCst);
                if first && answered == 1 {
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                answered += 1;
            }
        }
    })
    .await;
    (addr, requests)
}

#[tokio::test]
async fn an_idempotent_request_on_a_pooled_connection_closed_under_it_is_sent_again_on_a_new_one() {
    let (addr, requests) = closes_on_reuse().await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    let got = get(&gw.url("/")).await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"), "{}", got.text());
    assert_eq!(requests.load(Ordering::SeqCst), 3, "the second request was read twice: once unanswered");
}

#[tokio::test]
async fn a_post_on_a_pooled_connection_closed_under_it_is_not_sent_twice() {
    let (addr, requests) = closes_on_reuse().await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    let post = http::Request::post(gw.url("/")).body(full("pay once")).expect("req");
    let got = send(post).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "the upstream may have acted on it: {}", got.text());
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_upload_is_answered_through() {
    let addr = raw_backend(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
                .await;
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").await.expect("write");
    s.write_all(&[b'a'; 16 << 10]).await.expect("write");
    let mut seen = Vec::new();
    assert!(read_until(&mut s, &mut seen, b"nope").await, "{}", String::from_utf8_lossy(&seen));
    assert!(seen.starts_with(b"HTTP/1.1 413 "), "{}", String::from_utf8_lossy(&seen));
}

#[tokio::test]
async fn head_and_304_answers_leave_their_connection_reusable() {
    // A HEAD's length is the GET's and no body follows; a 304 has no body either. A client
    // that waited for those bytes would hang, one that read on would take the next response
    // for a body.
    let addr = scripted_backend(|head| {
        if head.starts_with(b"HEAD ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        } else if head.starts_with(b"GET /cond ") {
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1000\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
    })
    .await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // Count the gateway's upstream connections through a counting front of the backend.
    let front = raw_backend(move |mut client| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            if let Ok(mut server) = TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
    })
    .await;
    let gw = gateway(&single_route(front, "", ALL)).await;
    let c = client();
    for _ in 0..2 {
        let head = send_with(&c, http::Request::head(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((head.status, head.header("content-length")), (StatusCode::OK, Some("1000")));
        let cond = send_with(&c, http::Request::get(gw.url("/cond")).body(full("")).expect("req")).await;
        assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
        let get = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((get.status, get.text().as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one upstream connection carried all six");
}

#[tokio::test]
async fn an_upstream_that_says_close_gets_a_new_connection_for_the_next_request() {
    let (addr, _seen, accepted) =
        upstream(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for _ in 0..3 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// The fields of a response as a client sees them on the wire: each `name: value` line after
/// the status line, the request id's and Date's values blanked (they differ per response).
fn fields_of(got: &str) -> Vec<String> {
    let head = got.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .map(|line| match line.split_once(": ") {
            Some((name @ ("x-request-id" | "date"), _)) => format!("{name}: …"),
            _ => line.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn a_plain_response_reaches_the_client_with_the_same_fields_whether_or_not_a_middleware_reads_them() {
    // Without a response hook on the route, the upstream's fields are written out as lines,
    // never parsed into a map; with one that reads any field (compression), they go through
    // the map. The client cannot tell.
    let (addr, _seen, accepted) = upstream(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: Raw/1\r\nX-Mixed-Case: Some Value\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
    )
    .await;
    let yaml = format!(
        "middleware:\n  zip: {{ compress: {{}} }}\nupstreams: {{ up: {{ targets: [{{ address: {addr} }}] }} }}\nroutes:\n  - {{ name: bare, upstream: up, match: {{ path_prefix: /bare }} }}\n  - {{ name: hooked, upstream: up, match: {{ path_prefix: /hooked }}, middleware: [zip] }}\n"
    );
    let gw = gateway(&yaml).await;
    let bare = raw_request(&gw, b"GET /bare HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let hooked = raw_request(&gw, b"GET /hooked HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(bare.starts_with("HTTP/1.1 200 OK\r\n") && bare.ends_with("\r\n\r\nhello"), "{bare}");
    assert!(hooked.ends_with("\r\n\r\nhello"), "{hooked}");
    let fields = fields_of(&bare);
    let mut sorted = fields.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "connection: close",
            "content-length: 5",
            "date: …",
            "server: Raw/1",
            "set-cookie: a=1",
            "set-cookie: b=2",
            "via: 1.1 ferroway",
            "x-mixed-case: Some Value",
            "x-request-id: …",
        ],
        "the upstream's end-to-end fields, names in lower case, without its Connection and Keep-Alive: {bare}"
    );
    let a = fields.iter().position(|f| f == "set-cookie: a=1");
    let b = fields.iter().position(|f| f == "set-cookie: b=2");
    assert!(a < b, "repeated fields keep their order: {bare}");
    let mut through_map = fields_of(&hooked);
    through_map.sort();
    assert_eq!(sorted, through_map, "the same fields through the map: {hooked}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "both answers came over one pooled connection");
}

#[tokio::test]
async fn an_upstream_date_is_kept_and_one_is_added_where_it_sent_none() {
    let (addr, _seen, _) =
        upstream(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let got = raw_request(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let dates: Vec<&str> = got.split("\r\n").filter(|l| l.to_ascii_lowercase().starts_with("date:")).collect();
    assert_eq!(dates, ["date: Sun, 06 Nov 1994 08:49:37 GMT"], "{got}");
}

#[tokio::test]
async fn the_client_gets_the_gateway_request_id_alone_whatever_the_upstream_answers_with() {
    // An upstream that echoes the id it was sent, or sends one of its own: the gateway's id
    // replaces it, on a route whose response stays lines (no hooks, or hooks that only
    // append) as on one that goes through the map (compression reads every field).
    let addr =
        scripted_backend(|_| b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-own\r\nContent-Length: 2\r\n\r\nok").await;
    let yaml = format!(
        "middleware:\n  zip: {{ compress: {{}} }}\n  limit: {{ rate_limit: {{ rate: 1000/s }} }}\nupstreams: {{ up: {{ targets: [{{ address: {addr} }}] }} }}\nroutes:\n  - {{ name: bare, upstream: up, match: {{ path_prefix: /bare }} }}\n  - {{ name: limited, upstream: up, match: {{ path_prefix: /limited }}, middleware: [limit] }}\n  - {{ name: hooked, upstream: up, match: {{ path_prefix: /hooked }}, middleware: [zip] }}\n"
    );
    let gw = gateway(&yaml).await;
    for path in ["/bare", "/limited", "/hooked"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Request-Id: client-id-1\r\nConnection: close\r\n\r\n");
        let got = raw_request(&gw, req.as_bytes()).await;
        let ids: Vec<&str> =
            got.split("\r\n").filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:")).collect();
        assert_eq!(ids, ["x-request-id: client-id-1"], "{path}: {got}");
    }
}

#[tokio::test]
async fn response_hooks_see_and_change_the_same_fields_whether_or_not_the_rest_stay_unparsed() {
    // CORS inserts its Access-Control fields over any the upstream sent; header rules remove
    // and set fields whatever the upstream sent, and append to them. An upstream that sends
    // an Access-Control field has its response parsed; one that does not, not: both answers
    // carry the hooks' fields once, and the rules' removals and sets, in either case.
    let addr = scripted_backend(|head| {
        if head.starts_with(b"GET /with-cors ") {
            b"HTTP/1.1 200 OK\r\nServer: Raw/1\r\nX-Set: upstream\r\nX-Added: upstream\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nServer: Raw/1\r\nX-Set: upstream\r\nX-Added: upstream\r\nContent-Length: 2\r\n\r\nok"
        }
    })
    .await;
    let yaml = format!(
        "middleware:\n  cors: {{ cors: {{ allow_origins: [\"https://app.example.com\"] }} }}\n  rules: {{ headers: {{ response: {{ remove: [server], set: {{ x-set: gateway }}, append: {{ x-added: gateway }} }} }} }}\n{}",
        single_route(addr, "", &format!("{ALL}, middleware: [cors, rules]"))
    );
    let gw = gateway(&yaml).await;
    for path in ["/with-cors", "/plain"] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example.com\r\nConnection: close\r\n\r\n");
        let got = raw_request(&gw, request.as_bytes()).await;
        let mut fields = fields_of(&got);
        fields.sort();
        assert_eq!(
            fields,
            [
                "access-control-allow-origin: https://app.example.com",
                "connection: close",
                "content-length: 2",
                "date: …",
                "vary: Origin",
                "via: 1.1 ferroway",
                "x-added: gateway",
                "x-added: upstream",
                "x-request-id: …",
                "x-set: gateway",
            ],
            "{path}: {got}"
        );
        assert!(got.ends_with("\r\n\r\nok"), "{got}");
    }
}

#[tokio::test]
async fn security_headers_fill_in_once_whether_or_not_the_upstream_sent_its_own() {
    // The hook sets a field only where the upstream sent none: an upstream that sends one has
    // its response parsed and keeps its value; one that does not keeps its lines and gets the
    // default. Either way the client sees the field once.
    let addr = scripted_backend(|head| {
        if head.starts_with(b"GET /own ") {
            b"HTTP/1.1 200 OK\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 2\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
    })
    .await;
    let yaml = format!(
        "middleware:\n  secure: {{ security_headers: {{}} }}\n{}",
        single_route(addr, "", &format!("{ALL}, middleware: [secure]"))
    );
    let gw = gateway(&yaml).await;
    for (path, want) in [("/own", "x-frame-options: SAMEORIGIN"), ("/none", "x-frame-options: DENY")] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let got = raw_request(&gw, request.as_bytes()).await;
        let frames: Vec<String> = fields_of(&got).into_iter().filter(|f| f.starts_with("x-frame-options:")).collect();
        assert_eq!(frames, [want], "{path}: {got}");
    }
}
