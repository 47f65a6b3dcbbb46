//! Rate limits against the real gateway: exact GCRA admission, the IETF headers, bounded
//! memory for per-key state, and one limit shared by two gateways through a real Redis that
//! goes away and comes back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferroway::middleware::rate_limit::LocalStore;
use ferroway::middleware::rate_limit::gcra::Gcra;
use http::{Request, StatusCode};
use support::*;

fn limited_config(backend: &Backend, limit: &str, extra: &str) -> String {
    format!(
        "{extra}middleware:\n  per-client: {{ rate_limit: {{ {limit} }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [per-client] }}]\n",
        backend.addr
    )
}

/// Sends `n` GETs over `conns` keep-alive connections at once; returns the statuses and a
/// sample 429 and 200.
async fn burst(url: &str, n: usize, conns: usize) -> (usize, Vec<Got>) {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, admitted) = (url.to_owned(), admitted.clone());
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut samples = Vec::new();
            for _ in 0..share {
                let got = send_with(&client, Request::get(&url).body(full("")).expect("request")).await;
                if got.status == StatusCode::OK {
                    admitted.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
                }
                if samples.len() < 2 && !samples.iter().any(|s: &Got| s.status == got.status) {
                    samples.push(got);
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("task"));
    }
    (admitted.load(Ordering::Relaxed) as usize, samples)
}

#[tokio::test]
async fn a_burst_gets_exactly_the_burst_then_the_refill_rate() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&limited_config(&backend, "rate: 100/s, burst: 200", "")).await;
    let start = Instant::now();
    let (admitted, samples) = burst(&gw.url("/"), 1000, 20).await;
    let took = start.elapsed().as_secs_f64();
    // 200 at once, plus what refilled (one per 10 ms) while the burst was being sent.
    let refilled = (took * 100.0).ceil() as usize;
    assert!((200..=200 + refilled + 1).contains(&admitted), "admitted {admitted} in {took:.3}s");

    let ok = samples.iter().find(|g| g.status == StatusCode::OK).expect("an admitted response");
    assert_eq!(ok.header("ratelimit-policy"), Some("\"per-client\";q=100;w=1"));
    assert!(ok.header("ratelimit").is_some_and(|v| v.starts_with("\"per-client\";r=")), "{:?}", ok.header("ratelimit"));
    let limited = samples.iter().find(|g| g.status == StatusCode::TOO_MANY_REQUESTS).expect("a limited response");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert!(limited.header("ratelimit").is_some_and(|v| v.contains(";r=0;")));
    assert_eq!(limited.json()["error"], "too many requests");

    // Then the refill rate: sequential requests for about a second get about 100 through.
    let client = client();
    let start = Instant::now();
    let mut refill = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let got = send_with(&client, Request::get(gw.url("/")).body(full("")).expect("request")).await;
        refill += usize::from(got.status == StatusCode::OK);
    }
    let took = start.elapsed().as_secs_f64();
    let expected = took * 100.0;
    assert!((refill as f64) <= expected + 2.0 && (refill as f64) >= expected - 5.0, "{refill} in {took:.3}s");
}

#[tokio::test]
async fn limits_keyed_on_a_header_are_separate_per_value() {
    let backend = Backend::text("ok").await;
    let gw = gateway(&limited_config(&backend, "key: \"header:x-tenant\", rate: 1/m, burst: 2", "")).await;
    let get_as = |tenant: &'static str| {
        send(Request::get(gw.url("/")).header("x-tenant", tenant).body(full("")).expect("request"))
    };
    for _ in 0..2 {
        assert_eq!(get_as("a").await.status, StatusCode::OK);
    }
    let refused = get_as("a").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(get_as("b").await.status, StatusCode::OK);
}

/// Resident memory of this test process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("rss pages");
    pages * 4096
}

#[test]
fn a_million_distinct_keys_stay_within_the_documented_memory_bound() {
    // The bound the local store documents: under 48 MiB for 1 000 000 live keys.
    let store = LocalStore::new(1_000_000);
    let gcra = Gcra::new(100, Duration::from_secs(1), 200);
    let before = rss();
    let mut now = 1_000_000_000;
    for i in 0u64..1_000_000 {
        store.decide(&gcra, store.key(0, &i.to_le_bytes()), now);
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < 48 << 20, "1M keys took {} MiB", grown >> 20);
    assert!(store.len() >= 990_000, "keys were dropped while live: {}", store.len());

    // Once their state has passed (here 2 s later), old keys make room for new ones instead
    // of adding to them, and beyond max_keys nothing more is held.
    now += 3_000_000_000;
    for i in 1_000_000u64..3_000_000 {
        store.decide(&gcra, store.key(0, &i.to_le_bytes()), now);
    }
    assert!(store.len() <= 1_000_000, "{} keys held", store.len());
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "3M keys over time took {} MiB", grown >> 20);
}

fn redis_config(backend: &Backend, redis: &RedisServer, admin: bool) -> String {
    let admin = if admin { "admin: { address: 127.0.0.1:0 }\n" } else { "" };
    format!(
        "{admin}redis: {{ url: \"{}\", timeout: 200ms }}\nmiddleware:\n  shared: {{ rate_limit: {{ key: route, rate: 100/s, burst: 100, store: redis }} }}\n  strict: {{ rate_limit: {{ key: route, rate: 1000/s, store: redis, on_store_error: deny }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes:\n  - {{ name: shared, upstream: up, match: {{ path: /shared }}, middleware: [shared] }}\n  - {{ name: strict, upstream: up, match: {{ path: /strict }}, middleware: [strict] }}\n",
        redis.url(),
        backend.addr
    )
}

#[tokio::test]
async fn two_gateways_enforce_one_limit_through_redis() {
    let backend = Backend::text("ok").await;
    let redis = RedisServer::start();
    let a = gateway(&redis_config(&backend, &redis, false)).await;
    let b = gateway(&redis_config(&backend, &redis, false)).await;
    let admitted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let run = Duration::from_secs(10);
    let mut tasks = Vec::new();
    // Four clients, two per gateway, each pacing ~250 requests a second: ten times the limit.
    for i in 0..4 {
        let url = if i % 2 == 0 { a.url("/shared") } else { b.url("/shared") };
        let (admitted, sent) = (admitted.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut tick = tokio::time::interval(Duration::from_millis(4));
            while start.elapsed() < run {
                tick.tick().await;
                let got = send_with(&client, Request::get(&url).body(full("")).expect("request")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                admitted.fetch_add(u64::from(got.status == StatusCode::OK), Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let took = start.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    // One combined limit: the burst plus the rate over the run, within 5%.
    let expected = 100.0 + 100.0 * took;
    assert!((admitted - expected).abs() <= expected * 0.05, "admitted {admitted}, expected {expected:.0} ±5%");
    assert!(sent.load(Ordering::Relaxed) as f64 > 3.0 * expected, "the load did not exceed the limit");
}

#[tokio::test]
async fn a_redis_outage_follows_on_store_error_and_service_resumes_by_itself() {
    let backend = Backend::text("ok").await;
    let mut redis = RedisServer::start();
    let gw = gateway(&redis_config(&backend, &redis, true)).await;
    assert_eq!(get(&gw.url("/strict")).await.status, StatusCode::OK);

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        // `allow`: served; `deny`: refused with 503. Neither waits long for a dead Redis.
        assert_eq!(get(&gw.url("/shared")).await.status, StatusCode::OK);
        let refused = get(&gw.url("/strict")).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.json()["error"], "rate limit cannot be checked right now");
        assert!(started.elapsed() < Duration::from_secs(2), "a decision waited {:?}", started.elapsed());
    }
    let admin = gw.running.control.admin_address().expect("admin listener");
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    assert!(
        metrics.contains("ferroway_ratelimit_decisions_total{middleware=\"strict\",decision=\"store_error_denied\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("ferroway_ratelimit_decisions_total{middleware=\"shared\",decision=\"store_error_allowed\"} 5")
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&gw.url("/strict")).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "service did not resume after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn limits_keyed_on_a_jwt_claim_or_an_api_key_follow_the_identity_not_the_address() {
    use jsonwebtoken::{EncodingKey, Header};
    let backend = Backend::text("ok").await;
    let secret = "0123456789abcdef0123456789abcdef-rate-limit";
    let hash = |k: &str| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let cfg = format!(
        "middleware:\n  auth: {{ jwt: {{ algorithms: [HS256], secret: \"{secret}\", required_claims: [sub] }} }}\n  keys: {{ api_key: {{ keys: [{{ id: one, key_sha256: \"{}\" }}, {{ id: two, key_sha256: \"{}\" }}] }} }}\n  by-user: {{ rate_limit: {{ key: \"claim:sub\", rate: 1/m, burst: 1 }} }}\n  by-key: {{ rate_limit: {{ key: api_key, rate: 1/m, burst: 1 }} }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes:\n  - {{ name: users, upstream: up, match: {{ path: /users }}, middleware: [auth, by-user] }}\n  - {{ name: keys, upstream: up, match: {{ path: /keys }}, middleware: [keys, by-key] }}\n",
        hash("k1"),
        hash("k2"),
        backend.addr
    );
    let gw = gateway(&cfg).await;
    let token = |sub: &str| {
        let claims = serde_json::json!({ "sub": sub, "exp": 4_000_000_000u64 });
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
    };
    let as_user = |sub: &str| {
        send(
            Request::get(gw.url("/users"))
                .header("authorization", format!("Bearer {}", token(sub)))
                .body(full(""))
                .expect("request"),
        )
    };
    assert_eq!(as_user("alice").await.status, StatusCode::OK);
    assert_eq!(as_user("alice").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(as_user("bob").await.status, StatusCode::OK);

    let with_key =
        |k: &'static str| send(Request::get(gw.url("/keys")).header("x-api-key", k).body(full("")).expect("request"));
    assert_eq!(with_key("k1").await.status, StatusCode::OK);
    assert_eq!(with_key("k1").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with_key("k2").await.status, StatusCode::OK);
}
