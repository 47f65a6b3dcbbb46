//! TLS termination (SNI, ALPN, versions, mTLS, certificate reload, redirects) and TLS, h2 and
//! h2c to upstreams, with real rustls clients and servers and certificates made by rcgen.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Version};
use support::pki::{Alg, Ca};
use support::*;

fn https_request(host: &str, path: &str) -> Request<Body> {
    Request::get(format!("https://{host}{path}")).header("host", host).body(full("")).expect("request")
}

/// A gateway with one TLS listener over `tls_yaml` (the `tls:` mapping, indented 6) in front
/// of `backend`.
async fn tls_gateway(tls_yaml: &str, backend: &Backend, extra: &str) -> TestGateway {
    gateway(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n{tls_yaml}\n{}{extra}",
        single_route(backend.address(), "", ALL)
    ))
    .await
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let api = ca.leaf(&["api.test"], Alg::Rsa);
    let apps = ca.leaf(&["www.test", "*.apps.test"], Alg::Ecdsa);
    let (api_cert, api_key) = api.write(dir.path(), "api");
    let (apps_cert, apps_key) = apps.write(dir.path(), "apps");
    let backend = Backend::echo().await;
    let gw = tls_gateway(
        &format!(
            "      certificates:\n        - {{ cert: {}, key: {} }}\n        - {{ cert: {}, key: {} }}",
            path(&api_cert),
            path(&api_key),
            path(&apps_cert),
            path(&apps_key)
        ),
        &backend,
        "",
    )
    .await;

    let both = ca.client_config(&["h2", "http/1.1"], None);
    let s = tls_connect(gw.addr, "api.test", both.clone()).await.expect("handshake");
    assert_eq!(peer_cert(&s), api.der, "the RSA certificate for api.test");
    let got = send_tls(s, https_request("api.test", "/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2, "ALPN chose h2");
    assert_eq!(backend.last().headers["x-forwarded-proto"], "https");

    let h1 = ca.client_config(&["http/1.1"], None);
    let s = tls_connect(gw.addr, "shop.apps.test", h1).await.expect("handshake");
    assert_eq!(peer_cert(&s), apps.der, "the ECDSA wildcard certificate");
    let got = send_tls(s, https_request("shop.apps.test", "/y")).await;
    assert_eq!((got.status, got.version), (StatusCode::OK, Version::HTTP_11));

    let s = tls_connect(gw.addr, "www.test", both).await.expect("handshake");
    assert_eq!(peer_cert(&s), apps.der);

    // A plain-text client on the TLS port gets no HTTP answer.
    let answer = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let (cert, key) = ca.leaf(&["api.test"], Alg::Ecdsa).write(dir.path(), "api");
    let backend = Backend::echo().await;
    let gw = tls_gateway(
        &format!("      certificates: [{{ cert: {}, key: {} }}]\n      min_version: \"1.3\"", path(&cert), path(&key)),
        &backend,
        "",
    )
    .await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    assert!(tls_connect(gw.addr, "api.test", Arc::new(tls12)).await.is_err(), "TLS 1.2 is refused");
    let s = tls_connect(gw.addr, "api.test", ca.client_config(&["http/1.1"], None)).await.expect("TLS 1.3");
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(gw.running.gateway.metrics().tls_handshake_failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_and_exposes_its_subject() {
    let dir = tempfile::tempdir().expect("dir");
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("clients ca");
    let (cert, key) = server_ca.leaf(&["api.test"], Alg::Ecdsa).write(dir.path(), "api");
    let clients = client_ca.write(dir.path(), "clients-ca.pem");
    let backend = Backend::echo().await;
    let gw = gateway(&format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: {}, key: {} }}]\n      client_auth: {{ ca: {}, required: true }}\n\
         middleware:\n  subject:\n    headers:\n      request: {{ set: {{ x-client-subject: \"${{client_cert_subject}}\" }} }}\n\
         upstreams:\n  app:\n    targets: [{{ address: \"{}\" }}]\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: app, middleware: [subject] }}\n\
         access_log: {{ output: {} }}\n",
        path(&cert),
        path(&key),
        path(&clients),
        backend.address(),
        path(&dir.path().join("access.log"))
    ))
    .await;

    // Without a certificate, or with one from another CA: no request gets through.
    assert!(refused(gw.addr, server_ca.client_config(&["http/1.1"], None)).await, "refused without a certificate");
    let stranger = server_ca.leaf(&["mallory"], Alg::Ecdsa);
    let config = server_ca.client_config(&["http/1.1"], Some(&stranger));
    assert!(refused(gw.addr, config).await, "a foreign certificate is refused");
    assert!(backend.requests().is_empty());

    let client = client_ca.leaf(&["client-one"], Alg::Ecdsa);
    let config = server_ca.client_config(&["h2"], Some(&client));
    let s = tls_connect(gw.addr, "api.test", config).await.expect("handshake");
    let mut forged = https_request("api.test", "/");
    forged.headers_mut().insert("x-client-subject", "CN=admin".parse().expect("value"));
    let got = send_tls(s, forged).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        backend.last().headers["x-client-subject"],
        "CN=client-one",
        "the verified subject, not the client's copy"
    );
    // The access log has the subject and the TLS version (written by a background thread).
    let log = dir.path().join("access.log");
    let mut line = None;
    for _ in 0..500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(first) = text.lines().next() {
            line = Some(serde_json::from_str::<serde_json::Value>(first).expect("JSON line"));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let line = line.expect("an access-log line within 5 s");
    assert_eq!(line["client_cert_subject"], "CN=client-one");
    assert_eq!(line["tls"], "TLSv1.3");
}

/// Whether the gateway refuses a request from a client with `config`: at the handshake, or
/// (TLS 1.3 reports a refused client certificate after the client's side is done) on the
/// first request.
async fn refused(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let Ok(s) = tls_connect(addr, "api.test", config).await else { return true };
    let io = hyper_util::rt::TokioIo::new(s);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Body>(io).await else { return true };
    tokio::spawn(conn);
    sender.send_request(https_request("api.test", "/")).await.is_err()
}

#[test]
fn check_names_each_certificate_or_key_that_cannot_be_used() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let (a_cert, _a_key) = ca.leaf(&["a.test"], Alg::Ecdsa).write(dir.path(), "a");
    let (_b_cert, b_key) = ca.leaf(&["b.test"], Alg::Ecdsa).write(dir.path(), "b");
    let not_pem = dir.path().join("junk.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "listeners:\n  - name: https\n    address: 127.0.0.1:8443\n    tls:\n      certificates:\n\
         \x20       - {{ cert: {a}, key: {bk} }}\n\
         \x20       - {{ cert: {junk}, key: {bk} }}\n\
         \x20       - {{ cert: {missing}, key: {bk} }}\n\
         \x20     min_version: \"1.1\"\n\
         \x20 - name: http\n    address: 127.0.0.1:8080\n    redirect_to_https: true\n\
         upstreams: {{ app: {{ targets: [{{ address: 127.0.0.1:9000 }}], protocol: h2 }} }}\n\
         routes: [{{ name: r, match: {{ path_prefix: / }}, upstream: app }}]\n",
        a = path(&a_cert),
        bk = path(&b_key),
        junk = path(&not_pem),
        missing = path(&missing),
    );
    let err = ferroway::config::load_str(&yaml, Path::new("gw.yaml"), Default::default()).expect_err("invalid");
    let text = err.to_string();
    let line = |n: u32, needle: &str| {
        assert!(
            err.problems.iter().any(|p| p.pos.line == n && p.message.contains(needle)),
            "no problem on line {n} mentioning {needle:?}:\n{text}"
        );
    };
    line(6, &format!("{} is not the private key of the certificate in {}", path(&b_key), path(&a_cert)));
    line(7, &format!("{} holds no PEM certificate", path(&not_pem)));
    line(8, &format!("cannot read {}", path(&missing)));
    line(9, "invalid TLS version \"1.1\"; expected \"1.2\" or \"1.3\"");
    line(13, "`protocol: h2` negotiates over TLS");
    assert_eq!(err.problems.len(), 5, "{text}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_dropping_open_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let first = ca.leaf(&["api.test"], Alg::Ecdsa);
    let (cert, key) = first.write(dir.path(), "api");
    let backend = Backend::echo().await;
    let config = dir.path().join("gw.yaml");
    let gw = gateway_from_file(
        &config,
        &format!(
            "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: {}, key: {} }}]\naccess_log: {{ output: off }}\n{}",
            path(&cert),
            path(&key),
            single_route(backend.address(), "", ALL)
        ),
    )
    .await;
    let _watch = gw.running.control.watch_config().expect("watch").expect("a file to watch");

    // An open HTTP/2 connection made with the first certificate.
    let s = tls_connect(gw.addr, "api.test", ca.client_config(&["h2"], None)).await.expect("handshake");
    assert_eq!(peer_cert(&s), first.der);
    let (mut open, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
            .await
            .expect("h2");
    tokio::spawn(conn);
    assert_eq!(open.send_request(https_request("api.test", "/1")).await.expect("first").status(), StatusCode::OK);

    // cert-manager style: new files renamed over the old ones.
    let second = ca.leaf(&["api.test"], Alg::Rsa);
    let staged = tempfile::tempdir_in(dir.path()).expect("staging");
    let (new_cert, new_key) = second.write(staged.path(), "api");
    std::fs::rename(new_key, &key).expect("rename key");
    std::fs::rename(new_cert, &cert).expect("rename cert");

    let start = Instant::now();
    loop {
        let s = tls_connect(gw.addr, "api.test", ca.client_config(&["h2"], None)).await.expect("handshake");
        if peer_cert(&s) == second.der {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open.send_request(https_request("api.test", "/2")).await.expect("still open").status(),
        StatusCode::OK,
        "the connection made before the change keeps working"
    );
}

#[tokio::test]
async fn plain_listener_redirects_to_the_https_one() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("test ca");
    let (cert, key) = ca.leaf(&["api.test"], Alg::Ecdsa).write(dir.path(), "api");
    let backend = Backend::echo().await;
    // The redirect names the TLS listener's configured port, so it needs a real one: a port
    // the system just handed out.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let gw = gateway(&format!(
        "listeners:\n  - name: http\n    address: 127.0.0.1:0\n    redirect_to_https: true\n  - name: https\n    address: 127.0.0.1:{port}\n    tls:\n      certificates: [{{ cert: {}, key: {} }}]\n{}",
        path(&cert),
        path(&key),
        single_route(backend.address(), "", ALL)
    ))
    .await;
    let got = send(
        Request::post(gw.url("/a/b?c=1&d")).header("host", "api.test:8080").body(full("payload")).expect("request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(got.header("location"), Some(format!("https://api.test:{port}/a/b?c=1&d").as_str()));
    let got = send(Request::get(gw.url("/")).header("host", "evil@api.test").body(full("")).expect("request")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "no userinfo in a redirect target");
    assert!(backend.requests().is_empty(), "nothing is proxied in clear text");
}

/// A TLS backend for `svc.internal` that reports the HTTP version it was spoken to in.
async fn tls_backend(ca: &Ca, alpn: &[&str], client_ca: Option<&Ca>) -> Backend {
    let leaf = ca.leaf(&["svc.internal"], Alg::Ecdsa);
    Backend::serve_tls(leaf.server_config(alpn, client_ca), |req: Request<hyper::body::Incoming>| async move {
        Response::new(full(format!("{:?}", req.version())))
    })
    .await
}

#[tokio::test]
async fn tls_upstreams_are_verified_by_their_ca_and_name() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("internal ca");
    let ca_file = ca.write(dir.path(), "internal-ca.pem");
    let other = Ca::new("other ca").write(dir.path(), "other-ca.pem");
    let h1 = tls_backend(&ca, &["http/1.1"], None).await;
    let h2 = tls_backend(&ca, &["h2"], None).await;
    let auto = tls_backend(&ca, &["h2", "http/1.1"], None).await;
    let gw = gateway(&format!(
        "upstreams:\n\
         \x20 h1: {{ targets: [{{ address: \"{}\" }}], tls: {{ server_name: svc.internal, ca: {ca} }} }}\n\
         \x20 h2: {{ targets: [{{ address: \"{}\" }}], protocol: h2, tls: {{ server_name: svc.internal, ca: {ca} }} }}\n\
         \x20 auto: {{ targets: [{{ address: \"{}\" }}], protocol: auto, tls: {{ server_name: svc.internal, ca: {ca} }} }}\n\
         \x20 untrusted: {{ targets: [{{ address: \"{}\" }}], tls: {{ server_name: svc.internal, ca: {other} }} }}\n\
         \x20 wrong-name: {{ targets: [{{ address: \"{}\" }}], tls: {{ server_name: other.internal, ca: {ca} }} }}\n\
         routes:\n\
         \x20 - {{ name: h1, match: {{ path_prefix: /h1 }}, upstream: h1 }}\n\
         \x20 - {{ name: h2, match: {{ path_prefix: /h2 }}, upstream: h2 }}\n\
         \x20 - {{ name: auto, match: {{ path_prefix: /auto }}, upstream: auto }}\n\
         \x20 - {{ name: untrusted, match: {{ path_prefix: /untrusted }}, upstream: untrusted }}\n\
         \x20 - {{ name: wrong-name, match: {{ path_prefix: /wrong-name }}, upstream: wrong-name }}\n",
        h1.address(),
        h2.address(),
        auto.address(),
        h1.address(),
        h1.address(),
        ca = path(&ca_file),
        other = path(&other),
    ))
    .await;
    assert_eq!(get(&gw.url("/h1")).await.text(), "HTTP/1.1");
    assert_eq!(get(&gw.url("/h2")).await.text(), "HTTP/2.0");
    assert_eq!(get(&gw.url("/auto")).await.text(), "HTTP/2.0", "ALPN prefers h2");
    assert_eq!(get(&gw.url("/untrusted")).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&gw.url("/wrong-name")).await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_gateway_presents_its_client_certificate_to_an_mtls_upstream() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("internal ca");
    let ca_file = ca.write(dir.path(), "internal-ca.pem");
    let clients = Ca::new("gateway clients");
    let (cert, key) = clients.leaf(&["gateway"], Alg::Ecdsa).write(dir.path(), "gateway");
    let backend = tls_backend(&ca, &["http/1.1"], Some(&clients)).await;
    let gw = gateway(&format!(
        "upstreams:\n\
         \x20 with: {{ targets: [{{ address: \"{b}\" }}], tls: {{ server_name: svc.internal, ca: {ca}, client_cert: {cert}, client_key: {key} }} }}\n\
         \x20 without: {{ targets: [{{ address: \"{b}\" }}], tls: {{ server_name: svc.internal, ca: {ca} }} }}\n\
         routes:\n\
         \x20 - {{ name: with, match: {{ path_prefix: /with/ }}, upstream: with }}\n\
         \x20 - {{ name: without, match: {{ path_prefix: /without/ }}, upstream: without }}\n",
        b = backend.address(),
        ca = path(&ca_file),
        cert = path(&cert),
        key = path(&key),
    ))
    .await;
    assert_eq!(get(&gw.url("/with/")).await.status, StatusCode::OK);
    assert_eq!(get(&gw.url("/without/")).await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_h2c_upstream_multiplexes_many_requests_on_one_connection() {
    let backend = Backend::serve(|req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Response::new(full(format!("{:?}", req.version())))
    })
    .await;
    let gw = gateway(&format!(
        "upstreams:\n  app: {{ targets: [{{ address: \"{}\" }}], protocol: h2c }}\nroutes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]\n",
        backend.address()
    ))
    .await;
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let url = gw.url(&format!("/{i}"));
        calls.spawn(async move { send_with(&client, Request::get(url).body(full("")).expect("request")).await });
    }
    while let Some(got) = calls.join_next().await {
        let got = got.expect("task");
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "HTTP/2.0"));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "one HTTP/2 connection carried all 50 requests");
}

/// A certificate from a mounted Kubernetes Secret (what cert-manager renews): `api.pem ->
/// ..data/api.pem`, `..data -> ..v1`. A renewal writes `..v2` and renames a new `..data` link
/// over the old one; no event names the certificate's own path.
#[cfg(unix)]
#[tokio::test]
async fn a_certificate_renewed_in_a_secret_mount_is_served() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("dir");
    let mount = dir.path().join("secret");
    std::fs::create_dir_all(mount.join("..v1")).expect("mkdir");
    let ca = Ca::new("test ca");
    let first = ca.leaf(&["api.test"], Alg::Ecdsa);
    first.write(&mount.join("..v1"), "api");
    symlink("..v1", mount.join("..data")).expect("symlink");
    for name in ["api.pem", "api-key.pem"] {
        symlink(format!("..data/{name}"), mount.join(name)).expect("symlink");
    }
    let backend = Backend::echo().await;
    let gw = gateway_from_file(
        &dir.path().join("gw.yaml"),
        &format!(
            "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: {}, key: {} }}]\naccess_log: {{ output: off }}\n{}",
            path(&mount.join("api.pem")),
            path(&mount.join("api-key.pem")),
            single_route(backend.address(), "", ALL)
        ),
    )
    .await;
    let _watch = gw.running.control.watch_config().expect("watch").expect("a file to watch");
    let mut reloads = gw.running.control.reloads();
    let served = || async {
        let s = tls_connect(gw.addr, "api.test", ca.client_config(&["h2"], None)).await.expect("handshake");
        peer_cert(&s)
    };
    assert_eq!(served().await, first.der);

    let second = ca.leaf(&["api.test"], Alg::Rsa);
    std::fs::create_dir(mount.join("..v2")).expect("mkdir");
    second.write(&mount.join("..v2"), "api");
    symlink("..v2", mount.join("..data_tmp")).expect("symlink");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("rename");
    let renewed = async {
        while served().await != second.der {
            reloads.changed().await.expect("the gateway is running");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), renewed).await.expect("the renewed certificate was never served");
}
