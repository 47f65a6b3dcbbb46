//! Retries: replay-safe requests move to another target after a retryable failure; unsafe ones
//! do not; the budget keeps retries a bounded share of traffic; a killed target costs clients
//! nothing; slow clients get 408.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use support::*;

/// A backend answering `status` with its name, counting the requests it gets.
async fn answering(name: &'static str, status: StatusCode) -> (Backend, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let b = Backend::recording(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full(name));
        *r.status_mut() = status;
        r
    })
    .await;
    (b, hits)
}

fn pool(targets: &[String], upstream_extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("{{ address: {a} }}")).collect();
    format!(
        "upstreams: {{ up: {{ targets: [{}], {upstream_extra} }} }}\nroutes: [{{ name: r, upstream: up, {ALL} }}]\n",
        list.join(", ")
    )
}

fn dead_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string()
}

async fn request(gw: &TestGateway, method: Method, body: &'static [u8]) -> Got {
    send(Request::builder().method(method).uri(gw.url("/")).body(full(body)).expect("request")).await
}

#[tokio::test]
async fn a_refused_target_is_retried_elsewhere_and_the_client_never_sees_it() {
    let (ok, _) = answering("ok", StatusCode::OK).await;
    let gw = gateway(&pool(&[dead_address(), ok.address()], "retry: { attempts: 3, on: [connect_failure] }")).await;
    for _ in 0..10 {
        assert_eq!(request(&gw, Method::GET, b"").await.status, StatusCode::OK);
        // Even a POST: its connection was never made, so it never reached the dead target.
        assert_eq!(request(&gw, Method::POST, b"form").await.status, StatusCode::OK);
    }
    assert!(ok.requests().iter().filter(|s| s.method == Method::POST).all(|s| &s.body[..] == b"form"));
}

#[tokio::test]
async fn retries_go_to_a_different_target_each_time() {
    let (a, ha) = answering("a", StatusCode::SERVICE_UNAVAILABLE).await;
    let (b, hb) = answering("b", StatusCode::SERVICE_UNAVAILABLE).await;
    let (c, hc) = answering("c", StatusCode::SERVICE_UNAVAILABLE).await;
    let gw = gateway(&pool(&[a.address(), b.address(), c.address()], "retry: { attempts: 3, on: [503] }")).await;
    let got = request(&gw, Method::GET, b"").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "the last answer is passed on when tries run out");
    let hits = [ha.load(Ordering::SeqCst), hb.load(Ordering::SeqCst), hc.load(Ordering::SeqCst)];
    assert_eq!(hits, [1, 1, 1], "three tries, three different targets");
    let view = gw.running.gateway.snapshot().upstreams[0].view();
    assert_eq!(view.retries, [("connect_failure", 0), ("reset", 0), ("timeout", 0), ("status", 2)]);
}

#[tokio::test]
async fn a_lone_target_is_retried_on_itself() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let flaky = Backend::recording(move |_| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full(if n == 0 { "busy" } else { "ok" }));
        if n == 0 {
            *r.status_mut() = StatusCode::BAD_GATEWAY;
        }
        r
    })
    .await;
    let gw =
        gateway(&pool(&[flaky.address()], "retry: { attempts: 2, on: [502], backoff: { base: 1ms, max: 5ms } }")).await;
    let got = request(&gw, Method::GET, b"").await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_that_reached_the_upstream_is_replayed_only_if_idempotent() {
    let (busy, busy_hits) = answering("busy", StatusCode::SERVICE_UNAVAILABLE).await;
    let (ok, ok_hits) = answering("ok", StatusCode::OK).await;
    let gw = gateway(&pool(&[busy.address(), ok.address()], "balance: round_robin, retry: { attempts: 2, on: [503] }"))
        .await;
    // Round robin starts on `busy`: the POST gets its 503, the PUT (idempotent) moves on.
    let post = request(&gw, Method::POST, b"order").await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    let _ = request(&gw, Method::GET, b"").await; // lands on `ok`; round robin is back at `busy`
    let put = request(&gw, Method::PUT, b"state").await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(busy_hits.load(Ordering::SeqCst), 2);
    assert_eq!(ok_hits.load(Ordering::SeqCst), 2);
    assert_eq!(&ok.last().body[..], b"state", "the replayed body arrives whole");
}

#[tokio::test]
async fn a_body_larger_than_the_replay_bound_is_streamed_and_not_retried() {
    let (busy, busy_hits) = answering("busy", StatusCode::SERVICE_UNAVAILABLE).await;
    let (ok, ok_hits) = answering("ok", StatusCode::OK).await;
    let gw =
        gateway(&pool(&[busy.address(), ok.address()], "retry: { attempts: 2, on: [503], max_replay_body: 1KiB }"))
            .await;
    static BIG: [u8; 4096] = [7u8; 4096];
    let got = request(&gw, Method::PUT, &BIG).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((busy_hits.load(Ordering::SeqCst), ok_hits.load(Ordering::SeqCst)), (1, 0));
    assert_eq!(busy.last().body.len(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_keeps_retries_a_small_share_when_every_target_fails() {
    let (a, ha) = answering("a", StatusCode::SERVICE_UNAVAILABLE).await;
    let (b, hb) = answering("b", StatusCode::SERVICE_UNAVAILABLE).await;
    let (c, hc) = answering("c", StatusCode::SERVICE_UNAVAILABLE).await;
    let gw = gateway(&pool(
        &[a.address(), b.address(), c.address()],
        "retry: { attempts: 3, on: [503], budget: 20%, backoff: { base: 1ms, max: 2ms } }",
    ))
    .await;
    let start = Instant::now();
    let n = 400;
    let c1 = client();
    for _ in 0..n {
        send_with(&c1, Request::get(gw.url("/")).body(full("")).expect("req")).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let upstream = ha.load(Ordering::SeqCst) + hb.load(Ordering::SeqCst) + hc.load(Ordering::SeqCst);
    // Without a budget this would be 3 × 400. Allowed: 20% of requests, the 30 starting
    // tokens, and the floor of 3 per second.
    let bound = n as f64 * 1.2 + 30.0 + 3.0 * secs + 3.0;
    assert!((upstream as f64) <= bound, "{upstream} upstream requests for {n} client requests (bound {bound:.0})");
    assert!(upstream > n, "some retries happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_load_costs_clients_nothing() {
    let (a, b, c) = (Backend::text("a").await, Backend::text("b").await, Backend::text("c").await);
    let gw = gateway(&pool(
        &[a.address(), b.address(), c.address()],
        "retry: { attempts: 3, on: [connect_failure, reset, timeout, 502, 503, 504], backoff: { base: 1ms, max: 10ms } }, \
         passive_health: { consecutive_failures: 3, ejection_time: 30s }",
    ))
    .await;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = gw.url("/");
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut errors = Vec::new();
            for _ in 0..1250 {
                let got = send_with(&c, Request::get(&url).body(full("")).expect("req")).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if got.status != StatusCode::OK {
                    errors.push(got.status);
                }
            }
            errors
        }));
    }
    // Kill one target once a fifth of the load has gone through.
    while sent.load(Ordering::SeqCst) < 2000 {
        tokio::task::yield_now().await;
    }
    b.kill();
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.expect("client task"));
    }
    assert_eq!(sent.load(Ordering::SeqCst), 10_000);
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
}

#[tokio::test]
async fn a_client_that_uploads_too_slowly_gets_408() {
    let backend = Backend::echo().await;
    let gw = gateway(&(single_route(backend.addr, "", ALL) + "limits: { client_body_timeout: 300ms }\n")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b").await.expect("write");
    let mut answer = Vec::new();
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request body arrived too slowly"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(backend.requests().iter().all(|r| r.body.len() < 100), "the upstream never got a whole body");
}
