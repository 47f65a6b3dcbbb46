//! Load balancing through the gateway: how requests spread over an upstream's targets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, Response};
use support::*;

async fn named(name: &'static str) -> Backend {
    Backend::text(name).await
}

async fn slow(name: &'static str, delay: Duration) -> Backend {
    Backend::serve(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(name))
    })
    .await
}

fn upstream_yaml(targets: &[(&Backend, u32)], extra: &str) -> String {
    let list: Vec<String> =
        targets.iter().map(|(b, w)| format!("{{ address: {}, weight: {w} }}", b.address())).collect();
    format!(
        "upstreams: {{ pool: {{ targets: [{}], {extra} }} }}\nroutes: [{{ name: all, match: {{ path_prefix: / }}, upstream: pool }}]\n",
        list.join(", ")
    )
}

/// Sends `n` GETs from `parallel` concurrent clients and counts answers by body.
async fn spread(
    url: &str,
    n: usize,
    parallel: usize,
    header: Option<(&'static str, String)>,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let url = url.to_owned();
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            for _ in 0..n / parallel {
                let mut req = Request::get(&url);
                if let Some((name, value)) = &header {
                    req = req.header(*name, value);
                }
                seen.push(send_with(&c, req.body(full("")).expect("request")).await.text());
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for body in t.await.expect("client task") {
            *counts.entry(body).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_within_one_percent() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let gw = gateway(&upstream_yaml(&[(&a, 1), (&b, 1), (&c, 1)], "balance: round_robin")).await;
    let counts = spread(&gw.url("/"), 10_000, 8, None).await;
    for name in ["a", "b", "c"] {
        let n = counts[name];
        assert!((3300..=3367).contains(&n), "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_give_seventy_five_percent() {
    let (a, b) = (named("a").await, named("b").await);
    let gw = gateway(&upstream_yaml(&[(&a, 3), (&b, 1)], "balance: round_robin")).await;
    let counts = spread(&gw.url("/"), 4_000, 4, None).await;
    assert!((2920..=3080).contains(&counts["a"]), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_little_to_a_slow_target() {
    let s = slow("slow", Duration::from_millis(300)).await;
    let (f1, f2) = (slow("fast1", Duration::from_millis(5)).await, slow("fast2", Duration::from_millis(5)).await);
    let gw = gateway(&upstream_yaml(&[(&s, 1), (&f1, 1), (&f2, 1)], "balance: least_request")).await;
    let counts = spread(&gw.url("/"), 240, 12, None).await;
    let slow_share = counts.get("slow").copied().unwrap_or(0);
    assert!(slow_share * 10 < 240, "slow target got {slow_share} of 240: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_prefers_the_faster_target() {
    let s = slow("slow", Duration::from_millis(50)).await;
    let f = slow("fast", Duration::from_millis(5)).await;
    let gw = gateway(&upstream_yaml(&[(&s, 1), (&f, 1)], "balance: p2c_ewma")).await;
    let counts = spread(&gw.url("/"), 200, 4, None).await;
    let fast = counts.get("fast").copied().unwrap_or(0);
    assert!(fast >= 160, "fast target got {fast} of 200: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_target_and_remaps_little_when_one_goes() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let three =
        gateway(&upstream_yaml(&[(&a, 1), (&b, 1), (&c, 1)], "balance: consistent_hash, hash_on: header:x-user-id"))
            .await;
    let two = gateway(&upstream_yaml(&[(&a, 1), (&b, 1)], "balance: consistent_hash, hash_on: header:x-user-id")).await;
    let c1 = client();
    let mut moved = 0;
    let mut on_c = 0;
    for k in 0..600 {
        let get = |url: String| {
            let c1 = c1.clone();
            async move {
                send_with(&c1, Request::get(url).header("x-user-id", format!("user-{k}")).body(full("")).expect("req"))
                    .await
                    .text()
            }
        };
        let first = get(three.url("/")).await;
        assert_eq!(get(three.url("/")).await, first, "the same key stays on one target");
        let after = get(two.url("/")).await;
        if first == "c" {
            on_c += 1;
        } else if after != first {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "keys of the remaining targets do not move");
    assert!((120..=280).contains(&on_c), "about a third of keys were on the removed target: {on_c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_target_are_capped_and_excess_waiters_get_503_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, p2) = (now.clone(), peak.clone());
    let backend = Backend::serve(move |_req| {
        let (now, peak) = (n2.clone(), p2.clone());
        async move {
            let c = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(c, Ordering::SeqCst);
            // Long enough that all five requests arrive while the first two are in flight.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("ok"))
        }
    })
    .await;
    let gw = gateway(&upstream_yaml(
        &[(&backend, 1)],
        "max_connections_per_target: 2, circuit_breaker: { max_pending: 1 }, timeouts: { connect: 5s }",
    ))
    .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = gw.url("/");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let got = t.await.expect("task");
        match got.status {
            http::StatusCode::OK => ok += 1,
            http::StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(got.json()["error"], "upstream has too many pending requests");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (3, 2), "2 in flight + 1 waiting are served; the rest are refused");
    assert_eq!(peak.load(Ordering::SeqCst), 2, "the upstream never saw more than 2 at once");
}

/// Hashing on X-Forwarded-For: the field the proxy appends the client to. Its value is the
/// client's address (no client copy here), so clients spread over the targets and each stays
/// on one; the field is in the request's map when the target is chosen, not only in the lines
/// the proxy writes after it.
#[tokio::test]
async fn hashing_on_x_forwarded_for_keeps_each_client_on_one_target() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let gw = gateway(&upstream_yaml(
        &[(&a, 1), (&b, 1), (&c, 1)],
        "balance: consistent_hash, hash_on: header:x-forwarded-for",
    ))
    .await;
    // One request from 127.0.0.`n`; the target's name.
    let from = |n: u8| {
        let addr = gw.addr;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, n], 0))).expect("bind a loopback address");
            let mut s = socket.connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: hash.test\r\nConnection: close\r\n\r\n").await.expect("write");
            // `Connection: close`: the answer ends where the connection does.
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
                .await
                .expect("answered in time")
                .expect("read");
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
            answer.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned()
        }
    };
    let mut targets = std::collections::HashSet::new();
    for n in 1..=30 {
        let first = from(n).await;
        assert_eq!(from(n).await, first, "client 127.0.0.{n} stays on one target");
        targets.insert(first);
    }
    assert!(targets.len() >= 2, "thirty clients all on {targets:?}");
}
