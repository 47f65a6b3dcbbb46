//! Several workers (`workers: N`): N threads, each with its own event loop, all accepting on
//! every listener; each keeps its own idle upstream connections. The real binary, since the
//! workers are made by `ferroway run`.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::Response;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WORKERS: usize = 3;

/// `upstream`: more keys of the one upstream, as `single_route` takes them.
fn config(backend: std::net::SocketAddr, upstream: &str) -> String {
    format!(
        "workers: {WORKERS}\nlisteners: [{{ name: public, address: 127.0.0.1:0 }}]\naccess_log: {{ output: off }}\n{}",
        single_route(backend, upstream, ALL)
    )
}

/// The names of the process's threads (what `top -H` shows).
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Sends `count` keep-alive requests on one new client connection; the bodies read back.
async fn requests_on_one_connection(addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut answers = Vec::new();
    for _ in 0..count {
        s.write_all(b"GET / HTTP/1.1\r\nHost: workers.test\r\n\r\n").await.expect("write");
        let mut seen = Vec::new();
        assert!(read_until(&mut s, &mut seen, b"\r\n\r\nok").await, "{}", String::from_utf8_lossy(&seen));
        answers.push(String::from_utf8_lossy(&seen).into_owned());
    }
    answers
}

#[tokio::test]
async fn every_worker_accepts_and_pools_its_own_upstream_connections() {
    let backend = Backend::text("ok").await;
    let gw = GatewayProcess::start(&config(backend.addr, ""));
    let names = thread_names(gw.child.id());
    for i in 1..WORKERS {
        assert!(names.contains(&format!("ferroway-w{i}")), "worker {i} runs: {names:?}");
    }

    // One request at a time, each on a new client connection, whichever worker accepts it:
    // each worker opens at most one upstream connection and then reuses it.
    for _ in 0..60 {
        let answer = requests_on_one_connection(gw.addr, 1).await;
        assert!(answer[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", answer[0]);
    }
    let opened = backend.connections.load(Ordering::SeqCst);
    assert!((1..=WORKERS).contains(&opened), "{opened} upstream connections for 60 sequential requests");

    // Many connections at once, several requests each: every one answered.
    let clients: Vec<_> = (0..24).map(|_| tokio::spawn(requests_on_one_connection(gw.addr, 5))).collect();
    for c in clients {
        let answers = c.await.expect("client");
        assert_eq!(answers.len(), 5);
        assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 200 OK\r\n")), "{answers:?}");
    }
    assert_eq!(backend.requests().len(), 60 + 24 * 5);
}

#[tokio::test]
async fn max_idle_per_target_is_shared_among_the_workers() {
    // Nine requests held at the backend until all nine have arrived, each on its own client
    // connection (spread over the workers by the kernel), so the gateway opens nine upstream
    // connections. `max_idle_per_target: 3` over three workers keeps one per worker: at most
    // three stay idle, whichever workers the clients reached, and the rest close.
    const BURST: usize = 9;
    let backend = HeldBurst::start(BURST).await;
    let gw = GatewayProcess::start(&config(backend.addr, ", max_idle_per_target: 3"));
    let clients: Vec<_> = (0..BURST).map(|_| tokio::spawn(requests_on_one_connection(gw.addr, 1))).collect();
    for c in clients {
        let answer = c.await.expect("client");
        assert!(answer[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", answer[0]);
    }
    assert_eq!(backend.opened(), BURST);
    let closed = backend.wait_closed(BURST - 3).await;
    assert!(closed, "{} idle upstream connections kept, want at most 3", BURST - backend.closed());
}

#[tokio::test]
async fn sigterm_drains_the_requests_in_flight_on_every_worker() {
    let (release, released) = tokio::sync::watch::channel(false);
    let held = Arc::new(tokio::sync::watch::channel(0usize).0);
    let counting = held.clone();
    let backend = Backend::serve(move |_| {
        let mut released = released.clone();
        let held = counting.clone();
        async move {
            held.send_modify(|n| *n += 1);
            let _ = released.wait_for(|r| *r).await;
            Response::new(full("ok"))
        }
    })
    .await;
    let gw = GatewayProcess::start(&config(backend.addr, ""));
    let clients: Vec<_> = (0..12).map(|_| tokio::spawn(requests_on_one_connection(gw.addr, 1))).collect();
    let mut count = held.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(10), count.wait_for(|n| *n == 12)).await;
    assert!(reached.is_ok_and(|r| r.is_ok()), "the twelve requests reach the backend");
    gw.signal("TERM");
    gw.wait_for_log("draining in-flight requests", 1);
    release.send_replace(true);
    for c in clients {
        let answer = c.await.expect("client");
        assert!(answer[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", answer[0]);
    }
    let mut gw = gw;
    let exit = tokio::task::spawn_blocking(move || gw.child.wait()).await.expect("join").expect("wait");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[tokio::test]
async fn a_listener_added_by_a_reload_is_served_by_every_worker() {
    let backend = Backend::text("ok").await;
    let gw = GatewayProcess::start(&config(backend.addr, ""));
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let second = free.local_addr().expect("addr");
    drop(free);
    let yaml = config(backend.addr, "").replace(
        "listeners: [{ name: public, address: 127.0.0.1:0 }]",
        &format!("listeners: [{{ name: public, address: 127.0.0.1:0 }}, {{ name: second, address: {second} }}]"),
    );
    std::fs::write(&gw.config, yaml).expect("write");
    gw.signal("HUP");
    gw.wait_for_log("config reloaded", 1);
    let clients: Vec<_> = (0..12).map(|_| tokio::spawn(requests_on_one_connection(second, 3))).collect();
    for c in clients {
        assert!(c.await.expect("client").iter().all(|a| a.starts_with("HTTP/1.1 200 OK\r\n")));
    }
}

/// Each worker has its own socket of the listener's address; a second gateway on the same
/// address is still refused it, as with one worker.
#[tokio::test]
async fn a_second_gateway_on_the_same_address_is_refused() {
    let backend = Backend::text("ok").await;
    let first = GatewayProcess::start(&config(backend.addr, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("second.yaml");
    let yaml = config(backend.addr, "").replace("127.0.0.1:0", &first.addr.to_string());
    std::fs::write(&path, yaml).expect("write");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferroway"))
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(!out.status.success(), "the second gateway started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind"), "{stderr}");
    assert_eq!(requests_on_one_connection(first.addr, 1).await.len(), 1, "the first one still serves");
}

#[tokio::test]
async fn idle_connections_are_parked_and_woken_on_every_worker() {
    const CONNS: usize = 12;
    let backend = Backend::text("ok").await;
    let yaml = format!(
        "{}admin: {{ address: 127.0.0.1:0 }}\nlimits: {{ keepalive_park_after: 50ms }}\n",
        config(backend.addr, "")
    );
    let gw = GatewayProcess::start(&yaml);
    gw.wait_for_log("\"listener\":\"admin\"", 1);
    let admin: std::net::SocketAddr = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("\"listener\":\"admin\""))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["address"].as_str()?.parse().ok())
        .expect("the admin listener's address");
    let parked = || async move { metric(admin, "ferroway_client_connections_parked").await as usize };

    // The kernel spreads the connections over the workers; each parks its own.
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: workers.test\r\n\r\n").await.expect("write");
        let mut seen = Vec::new();
        assert!(read_until(&mut s, &mut seen, b"\r\n\r\nok").await);
        conns.push(s);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while parked().await != CONNS {
        assert!(tokio::time::Instant::now() < deadline, "{} of {CONNS} parked", parked().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each comes back on its own worker's event loop and is answered.
    for s in &mut conns {
        s.write_all(b"GET / HTTP/1.1\r\nHost: workers.test\r\n\r\n").await.expect("write");
        let mut seen = Vec::new();
        assert!(read_until(s, &mut seen, b"\r\n\r\nok").await, "{}", String::from_utf8_lossy(&seen));
    }
    assert_eq!(backend.requests().len(), 2 * CONNS);
}
