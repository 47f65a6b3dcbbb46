//! Operations: reloads that drop nothing and change nothing when invalid, listeners bound and
//! closed by reload, the admin endpoints, SIGHUP, and a graceful shutdown.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use support::*;

fn two_backends_config(a: &Backend, b: &Backend, route_to: &str, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\nadmin: {{ address: 127.0.0.1:0 }}\n\
         upstreams:\n  a: {{ targets: [{{ address: {} }}] }}\n  b: {{ targets: [{{ address: {} }}] }}\n\
         routes: [{{ name: v, match: {{ path_prefix: / }}, upstream: {route_to} }}]\n{extra}",
        a.address(),
        b.address()
    )
}

/// Two backends answering "a" and "b", and a gateway running from a config file that routes
/// everything to one of them.
struct Fixture {
    a: Backend,
    b: Backend,
    gw: TestGateway,
    path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let (a, b) = (Backend::text("a").await, Backend::text("b").await);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.yaml");
        let gw = gateway_from_file(&path, &two_backends_config(&a, &b, "a", "")).await;
        Fixture { a, b, gw, path, dir }
    }
}

async fn admin(gw: &TestGateway, method: Method, path: &str) -> Got {
    let addr = gw.running.control.admin_address().expect("admin listener");
    send(Request::builder().method(method).uri(format!("http://{addr}{path}")).body(full("")).expect("req")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_drop_nothing_and_take_effect_at_once() {
    let f = Fixture::new().await;
    let (a, b, gw, path) = (&f.a, &f.b, &f.gw, &f.path);

    // Steady load over many keep-alive connections until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (url, stop, ok, failed) = (gw.url("/"), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.request(Request::get(&url).body(full("")).expect("req")).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let probe = client();
    for i in 0..20 {
        // Pace the reloads over five seconds of load.
        tokio::time::sleep(Duration::from_millis(250)).await;
        if i % 5 == 4 {
            std::fs::write(path, "listeners: [ { name: public, address: nope } ]\nroutes: 7\n").expect("write");
            let err = gw.running.control.reload_from_file().await.expect_err("invalid config is refused");
            assert!(err.to_string().contains("gw.yaml:1:"), "{err}");
            continue;
        }
        let target = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(path, two_backends_config(a, b, target, "")).expect("write");
        gw.running.control.reload_from_file().await.expect("reload");
        // The very next request already takes the new route (well within 100 ms).
        let got = send_with(&probe, Request::get(gw.url("/")).body(full("")).expect("req")).await;
        assert_eq!(got.text(), target, "reload {i}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert!(started.elapsed() >= Duration::from_secs(5));
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok >= 2000, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} requests failed during reloads ({ok} succeeded)");
}

#[tokio::test]
async fn an_invalid_reload_through_the_admin_api_reports_and_changes_nothing() {
    let f = Fixture::new().await;
    let (a, b, gw, path) = (&f.a, &f.b, &f.gw, &f.path);
    std::fs::write(path, two_backends_config(a, b, "missing", "")).expect("write");
    let got = admin(gw, Method::POST, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = got.json();
    assert_eq!(body["status"], "failed");
    let errors = body["errors"].to_string();
    assert!(errors.contains("gw.yaml:7:") && errors.contains("unknown upstream \\\"missing\\\""), "{errors}");
    assert_eq!(get(&gw.url("/")).await.text(), "a", "the old config keeps serving");
    std::fs::write(path, two_backends_config(a, b, "b", "")).expect("write");
    let got = admin(gw, Method::POST, "/reload").await;
    assert_eq!(got.json()["status"], "reloaded");
    assert_eq!(get(&gw.url("/")).await.text(), "b");
}

#[tokio::test]
async fn reload_binds_new_listeners_closes_removed_ones_and_refuses_an_unbindable_port() {
    let f = Fixture::new().await;
    let (a, b, gw, path) = (&f.a, &f.b, &f.gw, &f.path);
    let second = "listeners: [{ name: public, address: 127.0.0.1:0 }, { name: extra, address: 127.0.0.1:0 }]\n";
    let with_extra =
        two_backends_config(a, b, "a", "").replacen("listeners: [{ name: public, address: 127.0.0.1:0 }]\n", second, 1);
    std::fs::write(path, &with_extra).expect("write");
    let summary = gw.running.control.reload_from_file().await.expect("reload");
    assert_eq!(summary.listeners_added, ["extra"]);
    let extra = gw.running.address("extra").expect("extra listener");
    assert_eq!(get(&format!("http://{extra}/")).await.text(), "a");

    // A port already taken fails the whole reload: the route change does not happen either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let clash = two_backends_config(a, b, "b", "").replacen(
        "listeners: [{ name: public, address: 127.0.0.1:0 }]\n",
        &format!(
            "listeners: [{{ name: public, address: 127.0.0.1:0 }}, {{ name: clash, address: {} }}]\n",
            taken.local_addr().expect("addr")
        ),
        1,
    );
    std::fs::write(path, &clash).expect("write");
    let err = gw.running.control.reload_from_file().await.expect_err("port in use");
    assert!(err.to_string().contains("listener clash: cannot bind"), "{err}");
    assert_eq!(get(&gw.url("/")).await.text(), "a");
    assert!(gw.running.address("extra").is_some());

    // Dropping `extra` from the config closes it.
    std::fs::write(path, two_backends_config(a, b, "a", "")).expect("write");
    let summary = gw.running.control.reload_from_file().await.expect("reload");
    assert_eq!(summary.listeners_removed, ["extra"]);
    let start = Instant::now();
    while tokio::net::TcpStream::connect(extra).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(5), "the removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_reports_health_readiness_and_upstreams_and_honours_its_token() {
    let f = Fixture::new().await;
    let (a, b, gw) = (&f.a, &f.b, &f.gw);
    assert_eq!(admin(gw, Method::GET, "/healthz").await.status, StatusCode::OK);
    assert_eq!(admin(gw, Method::GET, "/ready").await.json()["ready"], true);
    get(&gw.url("/")).await;
    let ups = admin(gw, Method::GET, "/upstreams").await.json();
    let first = &ups["upstreams"][0];
    assert_eq!(first["name"], "a");
    assert_eq!(first["targets"][0]["address"], a.address());
    assert_eq!(first["targets"][0]["open_connections"], 1);
    assert_eq!(admin(gw, Method::GET, "/nothing").await.status, StatusCode::NOT_FOUND);
    assert_eq!(admin(gw, Method::DELETE, "/ready").await.status, StatusCode::METHOD_NOT_ALLOWED);

    // With a token, requests without it are refused.
    let with_token = two_backends_config(a, b, "a", "")
        .replace("admin: { address: 127.0.0.1:0 }", "admin: { address: 127.0.0.1:0, token: s3cret }");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let gw2 = gateway_from_file(&dir2.path().join("gw.yaml"), &with_token).await;
    assert_eq!(admin(&gw2, Method::GET, "/healthz").await.status, StatusCode::UNAUTHORIZED);
    let addr = gw2.running.control.admin_address().expect("admin");
    let authed = send(
        Request::get(format!("http://{addr}/healthz"))
            .header("authorization", "Bearer s3cret")
            .body(full(""))
            .expect("req"),
    )
    .await;
    assert_eq!(authed.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_turns_503_when_a_routed_upstream_has_no_available_target() {
    let a = Backend::text("a").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\nadmin: {{ address: 127.0.0.1:0 }}\n\
         upstreams:\n  live: {{ targets: [{{ address: {} }}] }}\n  gone:\n    targets: [{{ address: {dead} }}]\n    health_check: {{ path: /h, interval: 30ms, timeout: 30ms, unhealthy_threshold: 1 }}\n\
         routes: [{{ name: v, match: {{ path_prefix: / }}, upstream: live }}, {{ name: g, match: {{ path_prefix: /g }}, upstream: gone }}]\n",
        a.address()
    );
    let gw = gateway_from_file(&dir.path().join("gw.yaml"), &yaml).await;
    let start = Instant::now();
    loop {
        let got = admin(&gw, Method::GET, "/ready").await;
        if got.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(got.json()["upstreams"][0], "gone");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never became unready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let slow = Backend::serve(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full(vec![b'x'; 100_000]))
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\nadmin: {{ address: 127.0.0.1:0 }}\n{}",
        single_route(slow.addr, "", ALL)
    );
    let gw = gateway_from_file(&dir.path().join("gw.yaml"), &yaml).await;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Wait until the request has reached the backend, then shut down.
    let start = Instant::now();
    while slow.connections.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::task::yield_now().await;
    }
    let control = gw.running.control.clone();
    let admin_addr = control.admin_address().expect("admin");
    let shutdown = tokio::spawn({
        let control = control.clone();
        async move { control.shutdown().await }
    });
    // Readiness turns 503 at once, and the listener stops accepting.
    let start = Instant::now();
    loop {
        let ready = get(&format!("http://{admin_addr}/ready")).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(start.elapsed() < Duration::from_secs(5), "new connections still accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = in_flight.await.expect("request task");
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 100_000, "the in-flight response arrived whole");
    assert_eq!(shutdown.await.expect("shutdown task"), 0, "nothing had to be cut");
}

/// Waits (10 s at most) until `/` answers `body`, checking again after each reload that
/// `reloads` (taken before the change was made) sees.
async fn answers_with(gw: &TestGateway, reloads: &mut tokio::sync::watch::Receiver<u64>, body: &str, what: &str) {
    let landed = async {
        while get(&gw.url("/")).await.text() != body {
            reloads.changed().await.expect("the gateway is running");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), landed).await.unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test]
async fn a_changed_config_file_is_reloaded_by_itself() {
    let f = Fixture::new().await;
    let (a, b, gw, path) = (&f.a, &f.b, &f.gw, &f.path);
    let _watch = gw.running.control.watch_config().expect("watch").expect("a file to watch");
    let mut reloads = gw.running.control.reloads();
    // Replace the file the way editors and ConfigMaps do: write beside it, rename over it.
    let tmp = f.dir.path().join(".gw.yaml.tmp");
    std::fs::write(&tmp, two_backends_config(a, b, "b", "")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
    answers_with(gw, &mut reloads, "b", "the file change was never picked up").await;
}

/// A mounted Kubernetes ConfigMap: `gw.yaml -> ..data/gw.yaml` and `..data -> ..v1`. An update
/// writes `..v2`, points `..data_tmp` at it and renames that over `..data`: no event names
/// `gw.yaml` itself.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_update_swapping_its_data_link_is_reloaded_by_itself() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Backend::text("a").await, Backend::text("b").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).expect("mkdir");
    symlink("..v1", d.join("..data")).expect("symlink");
    symlink("..data/gw.yaml", d.join("gw.yaml")).expect("symlink");
    let gw = gateway_from_file(&d.join("gw.yaml"), &two_backends_config(&a, &b, "a", "")).await;
    assert_eq!(get(&gw.url("/")).await.text(), "a");
    let _watch = gw.running.control.watch_config().expect("watch").expect("a file to watch");
    let mut reloads = gw.running.control.reloads();

    std::fs::create_dir(d.join("..v2")).expect("mkdir");
    std::fs::write(d.join("..v2/gw.yaml"), two_backends_config(&a, &b, "b", "")).expect("write");
    symlink("..v2", d.join("..data_tmp")).expect("symlink");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("rename");
    std::fs::remove_dir_all(d.join("..v1")).expect("rm");
    answers_with(&gw, &mut reloads, "b", "the ConfigMap update was never picked up").await;

    // The next update is seen too: the watch follows the link to its new target.
    std::fs::create_dir(d.join("..v3")).expect("mkdir");
    std::fs::write(d.join("..v3/gw.yaml"), two_backends_config(&a, &b, "a", "")).expect("write");
    symlink("..v3", d.join("..data_tmp")).expect("symlink");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("rename");
    answers_with(&gw, &mut reloads, "a", "the second ConfigMap update was never picked up").await;
}

/// A config that is a symlink to a file elsewhere, edited in place there.
#[cfg(unix)]
#[tokio::test]
async fn a_symlinked_config_edited_at_its_target_is_reloaded_by_itself() {
    let (a, b) = (Backend::text("a").await, Backend::text("b").await);
    let (links, real) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let target = real.path().join("real.yaml");
    std::fs::write(&target, "").expect("write");
    std::os::unix::fs::symlink(&target, links.path().join("gw.yaml")).expect("symlink");
    let gw = gateway_from_file(&links.path().join("gw.yaml"), &two_backends_config(&a, &b, "a", "")).await;
    let _watch = gw.running.control.watch_config().expect("watch").expect("a file to watch");
    let mut reloads = gw.running.control.reloads();
    std::fs::write(&target, two_backends_config(&a, &b, "b", "")).expect("write");
    answers_with(&gw, &mut reloads, "b", "the edit at the link's target was never picked up").await;
}

#[test]
fn watching_can_be_turned_off() {
    let c = ferroway::config::load_str(
        "listeners: [{ name: a, address: 127.0.0.1:0 }]\nwatch: false\n",
        Path::new("w.yaml"),
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.watch);
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_bounded_labels() {
    let f = Fixture::new().await;
    let (gw, path) = (&f.gw, &f.path);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/some/path?q=1")).await.status, StatusCode::OK);
    }
    let odd = send(Request::builder().method("BREW").uri(gw.url("/x")).body(full("")).expect("req")).await;
    assert_eq!(odd.status, StatusCode::OK);
    std::fs::write(path, "routes: [").expect("write");
    assert!(gw.running.control.reload_from_file().await.is_err());

    let got = admin(gw, Method::GET, "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = got.text();
    for line in [
        "ferroway_requests_total{route=\"v\",method=\"GET\",status_class=\"2xx\"} 3",
        "ferroway_requests_total{route=\"v\",method=\"other\",status_class=\"2xx\"} 1",
        "ferroway_request_duration_seconds_count{route=\"v\"} 4",
        "ferroway_reloads_total{outcome=\"failed\"} 1",
        "ferroway_upstream_connections_open{upstream=\"a\",target=\"",
        "ferroway_upstream_target_healthy{upstream=\"a\",target=\"",
        "ferroway_upstream_request_duration_seconds_count{upstream=\"a\",target=\"",
        "ferroway_upstream_retries_total{upstream=\"a\",cause=\"reset\"} 0",
        "ferroway_build_info{version=\"",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("/some/path") && !text.contains("BREW"), "request data never becomes a label");
    promtool_check(&text);
}
