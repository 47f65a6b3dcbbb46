//! The live dashboard in a real headless Chromium: under light load the page shows a route's
//! requests per second, and the number follows the load as it changes. A screenshot is left
//! in `target/tmp/dashboard.png`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::browser::Browser;
use support::*;

/// Sends requests at `per_second` (changeable) until dropped.
fn load(url: String, per_second: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        loop {
            let rate = per_second.load(Ordering::Relaxed).max(1);
            let req = http::Request::get(&url).body(full("")).expect("request");
            let _ = client.request(req).await;
            tokio::time::sleep(Duration::from_micros(1_000_000 / rate)).await;
        }
    })
}

async fn displayed_rps(page: &mut support::browser::Page) -> Option<f64> {
    let text = page.eval("document.querySelector('tr[data-route=\"users\"] .rps')?.textContent ?? null").await;
    text.as_str().and_then(|t| t.parse().ok())
}

#[tokio::test]
async fn the_dashboard_shows_live_changing_numbers_for_a_route() {
    let backend = Backend::text("hi").await;
    let dir = tempfile::tempdir().expect("dir");
    let gw = gateway_from_file(
        &dir.path().join("gw.yaml"),
        &format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\nwatch: false\nadmin: {{ address: 127.0.0.1:0 }}\nupstreams: {{ users: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: users, upstream: users, {ALL} }}]\n",
            backend.addr
        ),
    )
    .await;
    let admin = gw.running.control.admin_address().expect("admin");
    let page_html = get(&format!("http://{admin}/")).await;
    assert_eq!(page_html.status, StatusCode::OK);
    assert!(page_html.text().contains("<script>") && !page_html.text().contains("src=\"http"), "self-contained");

    let rate = Arc::new(AtomicU64::new(20));
    let traffic = load(gw.url("/users"), rate.clone());
    let browser = Browser::launch();
    let mut page = browser.page().await;
    page.navigate(&format!("http://{admin}/")).await;

    // The page polls once a second; wait (bounded) for a rate to show, then raise the load and
    // wait for the shown rate to follow.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(r) = displayed_rps(&mut page).await.filter(|r| *r > 0.0) {
            break r;
        }
        assert!(Instant::now() < deadline, "no request rate shown for route users");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    rate.store(200, Ordering::Relaxed);
    let raised = loop {
        if let Some(r) = displayed_rps(&mut page).await.filter(|r| *r > first * 2.0) {
            break r;
        }
        assert!(Instant::now() < deadline, "the shown rate did not follow the load (first {first})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(raised > first);
    let target_row = page.eval("document.querySelector('tr[data-target] .in-flight') !== null").await;
    assert_eq!(target_row, serde_json::Value::Bool(true), "the upstream target is listed");
    let p50 = page.eval("document.querySelector('tr[data-route=\"users\"] .p50').textContent").await;
    assert!(p50.as_str().is_some_and(|t| t.ends_with("ms") || t.ends_with(" s")), "{p50}");

    // A reload shows up in the list.
    let reloaded = send(http::Request::post(format!("http://{admin}/reload")).body(full("")).expect("r")).await;
    assert_eq!(reloaded.status, StatusCode::OK);
    loop {
        let shown = page.eval("document.getElementById('reloads').textContent").await;
        if shown.as_str().is_some_and(|t| t.contains("applied")) {
            break;
        }
        assert!(Instant::now() < deadline, "the reload is not listed: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, png).expect("write screenshot");
    traffic.abort();
}
