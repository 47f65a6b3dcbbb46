//! Target health: active checks take targets out of rotation and back; passive ejection reacts
//! to real failures without waiting for a check; a pool with no healthy target answers 503 at
//! once; health state survives a reload that keeps the upstream.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use support::*;

/// A backend answering its name, whose `/healthz` answers 200 or 503 as `healthy` says.
async fn checked(name: &'static str, healthy: Arc<AtomicBool>) -> Backend {
    Backend::serve(move |req| {
        let healthy = healthy.clone();
        async move {
            let mut r = Response::new(full(name));
            if req.uri().path() == "/healthz" && !healthy.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await
}

/// Polls `cond` until it holds (readiness, not a fixed sleep), for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bodies(url: &str, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send_with(&c, http::Request::get(url).body(full("")).expect("req")).await.text());
    }
    out
}

#[tokio::test]
async fn an_unhealthy_target_leaves_rotation_and_comes_back() {
    let (a_ok, b_ok) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (a, b) = (checked("a", a_ok.clone()).await, checked("b", b_ok.clone()).await);
    let gw = gateway(&format!(
        "upstreams:\n  pool:\n    targets: [{{ address: {} }}, {{ address: {} }}]\n    health_check: {{ path: /healthz, interval: 50ms, timeout: 40ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\n\
         routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: pool }}]\n",
        a.address(),
        b.address()
    ))
    .await;
    let url = gw.url("/x");
    assert!(bodies(&url, 4).await.contains(&"b".to_string()));
    b_ok.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { bodies(&url, 4).await.iter().all(|s| s == "a") }).await;
    b_ok.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { bodies(&url, 4).await.contains(&"b".to_string()) }).await;
}

#[tokio::test]
async fn a_pool_with_no_healthy_target_answers_503_at_once() {
    let down = Arc::new(AtomicBool::new(false));
    let a = checked("a", down.clone()).await;
    let gw = gateway(&format!(
        "upstreams:\n  pool:\n    targets: [{{ address: {} }}]\n    health_check: {{ path: /healthz, interval: 30ms, timeout: 20ms, unhealthy_threshold: 1 }}\n\
         routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: pool }}]\n",
        a.address()
    ))
    .await;
    eventually(Duration::from_secs(5), || async { get(&gw.url("/")).await.status == StatusCode::SERVICE_UNAVAILABLE })
        .await;
    let got = get(&gw.url("/")).await;
    assert_eq!(got.json()["error"], "no healthy upstream target");
}

#[tokio::test]
async fn consecutive_failures_eject_a_target_without_waiting_for_a_check() {
    let a = Backend::text("a").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let yaml = |route: &str| {
        format!(
            "upstreams:\n  pool:\n    targets: [{{ address: {} }}, {{ address: {dead} }}]\n    passive_health: {{ consecutive_failures: 3, ejection_time: 60s, max_ejected_percent: 50 }}\n\
             routes: [{{ name: {route}, match: {{ path_prefix: / }}, upstream: pool }}]\n",
            a.address()
        )
    };
    let gw = gateway(&yaml("all")).await;
    let c = client();
    let mut failures = 0;
    for _ in 0..20 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        if got.status == StatusCode::BAD_GATEWAY {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "the dead target is ejected after exactly its third consecutive failure");

    // A reload that keeps the upstream unchanged keeps its ejection.
    let config = ferroway::config::load_str(
        &format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\n{}",
            yaml("renamed")
        ),
        Path::new("reload.yaml"),
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    gw.running.gateway.reload(&config).expect("reload");
    for _ in 0..10 {
        let got = send_with(&c, http::Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_target_back_from_unhealthy_ramps_up_under_slow_start() {
    let (a_ok, b_ok) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (a, b) = (checked("a", a_ok.clone()).await, checked("b", b_ok.clone()).await);
    let gw = gateway(&format!(
        "upstreams:\n  pool:\n    targets: [{{ address: {} }}, {{ address: {} }}]\n    slow_start: 60s\n    health_check: {{ path: /healthz, interval: 30ms, timeout: 30ms, healthy_threshold: 1, unhealthy_threshold: 2 }}\n\
         routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: pool }}]\n",
        a.address(),
        b.address()
    ))
    .await;
    let url = gw.url("/x");
    // Before any trouble, round robin splits evenly: slow start applies only to a comeback.
    let before = bodies(&url, 100).await.iter().filter(|s| *s == "b").count();
    assert!(before >= 40, "b got {before} of 100 before any trouble");
    b_ok.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { bodies(&url, 4).await.iter().all(|s| s == "a") }).await;
    b_ok.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async { bodies(&url, 20).await.contains(&"b".to_string()) }).await;
    // Seconds into a 60 s ramp, `b` takes about 10% of its round-robin turns: ~5% overall.
    let after = bodies(&url, 200).await.iter().filter(|s| *s == "b").count();
    assert!(after < 40, "b got {after} of 200 right after coming back");
}
