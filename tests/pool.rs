//! Upstream connection pool hygiene: idle connections are closed after `idle`, and a pooled
//! connection the upstream has closed never costs a client its request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let closed = Arc::new(AtomicUsize::new(0));
    let seen_closed = closed.clone();
    let addr = raw_backend(move |mut s| {
        let closed = seen_closed.clone();
        async move {
            while read_head(&mut s).await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
            // The gateway closed this keep-alive connection.
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let gw = gateway(&single_route(addr, ", timeouts: { idle: 300ms }", ALL)).await;
    let start = Instant::now();
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the idle upstream connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(300), "closed before the idle timeout");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused_for_a_failing_request() {
    // Answers as if keeping the connection alive, then closes it at once: the classic race
    // behind "connection reset" errors in proxies that reuse such connections blindly.
    let addr = raw_backend(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        }
    })
    .await;
    let gw = gateway(&single_route(addr, "", ALL)).await;
    let c = client();
    for i in 0..30 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {}", got.text());
    }
}

#[tokio::test]
async fn pool_and_health_figures_are_exposed_for_metrics() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&single_route(backend.addr, ", timeouts: { idle: 300ms }", ALL)).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await.status,
            StatusCode::OK
        );
    }
    let view = || gw.running.gateway.snapshot().upstreams[0].view();
    let t = view().targets[0].clone();
    assert_eq!(t.address.as_ref(), backend.address());
    assert!(t.healthy && !t.ejected);
    assert_eq!((t.in_flight, t.open_connections, t.idle_connections), (0, 1, 1), "{t:?}");
    assert!(t.ewma_latency > Duration::ZERO);
    assert_eq!(view().pending, 0);
    // The pooled connection closes after `idle`, and the count follows.
    let start = Instant::now();
    while view().targets[0].open_connections != 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the open-connection count never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_idle_per_target_bounds_the_connections_kept_after_a_burst() {
    // The first five requests are held until all five have arrived, so the gateway must open
    // five upstream connections; with `max_idle_per_target: 2`, three of them close once their
    // answers are done and two stay for reuse.
    const BURST: usize = 5;
    let backend = HeldBurst::start(BURST).await;
    let gw = gateway(&single_route(backend.addr, ", max_idle_per_target: 2", ALL)).await;
    let c = client();
    let burst = (0..BURST).map(|_| send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")));
    for got in futures_util::future::join_all(burst).await {
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert_eq!(backend.opened(), BURST);
    assert!(backend.wait_closed(BURST - 2).await, "the surplus idle connections were never closed");
    // The two kept connections serve the next requests: nothing new is opened.
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(backend.opened(), BURST);
    assert_eq!(backend.closed(), BURST - 2);
}
