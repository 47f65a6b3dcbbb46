//! ACME against a real CA: pebble (Debian's package) on loopback, its validations pointed at
//! the gateway's listeners. The gateway starts without a certificate, obtains one, serves it
//! to a client that trusts only pebble's root, caches it, and renews one near its expiry.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use rustls::pki_types::CertificateDer;
use support::pebble::Pebble;
use support::pki::Ca;
use support::*;

const DOMAIN: &str = "api.ferroway.test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn client(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects until the gateway presents a certificate `accept` takes (by polling: the order
/// runs in the background), then makes one request on that connection. Returns the
/// certificate and the response.
async fn wait_for_certificate(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    accept: impl Fn(&CertificateDer<'static>) -> bool,
) -> (CertificateDer<'static>, Got) {
    let started = Instant::now();
    loop {
        if let Ok(stream) = tls_connect(addr, DOMAIN, client(roots)).await {
            let cert = peer_cert(&stream);
            if accept(&cert) {
                let req = Request::get("/hello").header("host", DOMAIN).body(full("")).expect("request");
                return (cert, send_tls(stream, req).await);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no acceptable certificate within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn acme_config(tls_port: u16, extra_listener: &str, acme: &str, backend: &str) -> String {
    format!(
        "listeners:\n{extra_listener}  - name: https\n    address: 127.0.0.1:{tls_port}\n    tls:\n      acme: {{ {acme} }}\n\
         admin: {{ address: 127.0.0.1:0 }}\n{}",
        single_route(backend, "", ALL)
    )
}

fn acme_keys(pebble: &Pebble, cache: &Path, challenge: &str) -> String {
    format!(
        "domains: [{DOMAIN}], email: ops@ferroway.test, directory: \"{}\", cache_dir: \"{}\", ca_roots: \"{}\", challenge: {challenge}",
        pebble.directory,
        cache.display(),
        pebble.https_ca.display()
    )
}

async fn metrics(gw: &TestGateway) -> String {
    let admin = gw.running.control.admin_address().expect("admin listener");
    get(&format!("http://{admin}/metrics")).await.text()
}

#[tokio::test]
async fn tls_alpn_01_obtains_a_certificate_serves_it_and_a_restart_serves_it_from_the_cache() {
    let backend = Backend::text("hello").await;
    let tls_port = free_port();
    let mut pebble = Pebble::start(free_port(), tls_port);
    let root = pebble.issuing_root().await;
    let cache = tempfile::tempdir().expect("cache dir");
    let yaml = acme_config(tls_port, "", &acme_keys(&pebble, cache.path(), "tls-alpn-01"), &backend.address());

    let gw = gateway(&yaml).await;
    let addr = gw.running.address("https").expect("https listener");
    let (issued, got) = wait_for_certificate(addr, std::slice::from_ref(&root), |_| true).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "hello");
    let text = metrics(&gw).await;
    assert!(
        text.contains(&format!("ferroway_acme_orders_total{{domain=\"{DOMAIN}\",outcome=\"ok\"}} 1")),
        "one order, counted"
    );
    assert!(text.contains("ferroway_acme_certificate_expiry_timestamp_seconds{domain="));
    promtool_check(&text);
    let cached: Vec<_> = walk(cache.path());
    assert!(cached.iter().any(|p| p.ends_with(".crt.pem")), "certificate cached: {cached:?}");
    assert!(cached.iter().any(|p| p.ends_with("account.json")), "account cached: {cached:?}");
    gw.running.shutdown().await;

    // The CA is gone; a restart serves the cached certificate at once.
    pebble.kill();
    let gw = gateway(&yaml).await;
    let stream = tls_connect(addr, DOMAIN, client(std::slice::from_ref(&root))).await.expect("handshake");
    assert_eq!(peer_cert(&stream), issued, "the cached certificate");
    let req = Request::get("/hello").header("host", DOMAIN).body(full("")).expect("request");
    assert_eq!(send_tls(stream, req).await.text(), "hello");
    gw.running.shutdown().await;
}

#[tokio::test]
async fn http_01_renews_a_cached_certificate_near_its_expiry_without_a_restart() {
    let backend = Backend::text("hello").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port);
    let root = pebble.issuing_root().await;
    let cache = tempfile::tempdir().expect("cache dir");

    // A certificate in the cache with one day of its ten left: due for renewal.
    let old_ca = Ca::new("previous ca");
    let old = old_ca.leaf_dated(&[DOMAIN], Duration::from_secs(9 * 86_400), Duration::from_secs(86_400));
    let (chain, key) =
        ferroway::server::acme::cached_certificate(cache.path(), &pebble.directory, &[DOMAIN.to_owned()]);
    std::fs::create_dir_all(chain.parent().expect("dir")).expect("mkdir");
    std::fs::write(&chain, &old.cert_pem).expect("write");
    std::fs::write(&key, &old.key_pem).expect("write");

    // http-01 is answered on the plain listener, which redirects everything else to https.
    let plain = format!("  - name: http\n    address: 127.0.0.1:{http_port}\n    redirect_to_https: true\n");
    let gw =
        gateway(&acme_config(tls_port, &plain, &acme_keys(&pebble, cache.path(), "http-01"), &backend.address())).await;
    let addr = gw.running.address("https").expect("https listener");
    let roots = [root, old_ca.der.clone()];

    let stream = tls_connect(addr, DOMAIN, client(&roots)).await.expect("the cached certificate is served at start");
    let first = peer_cert(&stream);
    let (renewed, got) = wait_for_certificate(addr, &roots, |c| *c != old.der).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(first == old.der || first == renewed, "only the cached or the renewed certificate is ever served");
    let only_pebble = client(&roots[..1]);
    assert!(tls_connect(addr, DOMAIN, only_pebble).await.is_ok(), "the renewed certificate chains to pebble's root");
    assert_ne!(std::fs::read(&chain).expect("cache"), old.cert_pem.as_bytes(), "the cache holds the renewed one");

    let got = get(&format!("http://127.0.0.1:{http_port}/.well-known/acme-challenge/unknown")).await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT, "unknown tokens are not answered");
    gw.running.shutdown().await;
}

fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}
