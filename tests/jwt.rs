//! JWT auth against the real gateway: every algorithm family verifies, every kind of bad token
//! is refused with the right `WWW-Authenticate`, claims are forwarded only as configured, and a
//! JWKS key rotation takes effect without a restart.

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// A private key (PEM, for signing) and its public key (PEM, for the gateway).
struct KeyPair {
    private: String,
    public: String,
}

fn rsa_pair() -> &'static KeyPair {
    static PAIR: OnceLock<KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
        KeyPair {
            private: key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public: key.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        }
    })
}

fn rcgen_pair(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    let k = rcgen::KeyPair::generate_for(alg).expect("key");
    KeyPair { private: k.serialize_pem(), public: k.public_key_pem() }
}

fn encoding_key(alg: Algorithm, pair: Option<&KeyPair>) -> EncodingKey {
    match (alg, pair) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _) => EncodingKey::from_secret(SECRET.as_bytes()),
        (Algorithm::ES256 | Algorithm::ES384, Some(p)) => EncodingKey::from_ec_pem(p.private.as_bytes()).expect("ec"),
        (Algorithm::EdDSA, Some(p)) => EncodingKey::from_ed_pem(p.private.as_bytes()).expect("ed"),
        (_, Some(p)) => EncodingKey::from_rsa_pem(p.private.as_bytes()).expect("rsa"),
        (_, None) => unreachable!("asymmetric algorithms come with a key pair"),
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn good_claims() -> serde_json::Value {
    json!({ "sub": "alice", "iss": "https://auth.example.com", "aud": "api", "exp": now() + 600, "scope": ["read", "write"] })
}

async fn jwt_gateway(backend: &Backend, jwt: &str) -> TestGateway {
    gateway(&format!(
        "middleware:\n  auth:\n    jwt:\n{jwt}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: r, upstream: up, {ALL}, middleware: [auth] }}]\n",
        backend.addr
    ))
    .await
}

async fn bearer(gw: &TestGateway, token: &str) -> Got {
    send(
        Request::get(gw.url("/me")).header("authorization", format!("Bearer {token}")).body(full("")).expect("request"),
    )
    .await
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    let backend = Backend::text("ok").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ec256 = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ec384 = rcgen_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
    let ed = rcgen_pair(&rcgen::PKCS_ED25519);
    let cases: Vec<(Algorithm, Option<&KeyPair>)> = vec![
        (Algorithm::HS256, None),
        (Algorithm::HS384, None),
        (Algorithm::HS512, None),
        (Algorithm::RS256, Some(rsa_pair())),
        (Algorithm::RS384, Some(rsa_pair())),
        (Algorithm::RS512, Some(rsa_pair())),
        (Algorithm::PS256, Some(rsa_pair())),
        (Algorithm::ES256, Some(&ec256)),
        (Algorithm::ES384, Some(&ec384)),
        (Algorithm::EdDSA, Some(&ed)),
    ];
    for (i, (alg, pair)) in cases.into_iter().enumerate() {
        let source = match pair {
            None => format!("      secret: \"{SECRET}\""),
            Some(p) => {
                let file = dir.path().join(format!("key{i}.pem"));
                std::fs::write(&file, &p.public).expect("write key");
                format!("      public_key_file: {}", file.display())
            }
        };
        let gw = jwt_gateway(&backend, &format!("      algorithms: [{alg:?}]\n{source}")).await;
        let token = sign(alg, &encoding_key(alg, pair), None, &good_claims());
        assert_eq!(bearer(&gw, &token).await.status, StatusCode::OK, "{alg:?}");
        // The same token with its signature's last bytes changed.
        let mut bad = token.clone();
        bad.truncate(bad.len() - 4);
        bad.push_str(if token.ends_with("AAAA") { "BBBB" } else { "AAAA" });
        assert_eq!(bearer(&gw, &bad).await.status, StatusCode::UNAUTHORIZED, "{alg:?} with a bad signature");
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_token() {
    bad_tokens_are_refused(true).await;
}

#[tokio::test]
async fn bad_tokens_are_refused_without_the_verification_cache_too() {
    bad_tokens_are_refused(false).await;
}

async fn bad_tokens_are_refused(verify_cache: bool) {
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    let gw = jwt_gateway(
        &backend,
        &format!(
            "      algorithms: [HS256]\n      secret: \"{SECRET}\"\n      issuer: https://auth.example.com\n      audience: [api]\n      leeway: 5s\n      required_claims: [sub, exp]\n      verify_cache: {verify_cache}"
        ),
    )
    .await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let with = |patch: serde_json::Value| {
        let mut c = good_claims();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::HS256, &key, None, &c)
    };
    assert_eq!(bearer(&gw, &with(json!({}))).await.status, StatusCode::OK);

    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good_claims()));
    let cases = [
        ("alg none", unsigned),
        ("an algorithm outside the allow-list", sign(Algorithm::HS384, &key, None, &good_claims())),
        ("expired", with(json!({ "exp": now() - 60 }))),
        ("not yet valid", with(json!({ "nbf": now() + 600 }))),
        ("wrong issuer", with(json!({ "iss": "https://evil.example.com" }))),
        ("no issuer", with(json!({ "iss": null }))),
        ("wrong audience", with(json!({ "aud": "other" }))),
        ("missing required claim", with(json!({ "sub": null }))),
        ("malformed", "not.a.token".to_owned()),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!"),
                None,
                &good_claims(),
            ),
        ),
    ];
    for (what, token) in cases {
        let got = bearer(&gw, &token).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{what}");
        let www = got.header("www-authenticate").unwrap_or_default();
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{what}: {www}");
    }
    // A token that is not even text (obs-text in the field) is malformed too.
    let raw = raw_exchange(
        gw.addr,
        b"GET /me HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe.\xfd\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(raw.contains("www-authenticate: Bearer error=\"invalid_token\""), "{raw}");
    // Leeway: expired 3 s ago with 5 s allowed still passes.
    assert_eq!(bearer(&gw, &with(json!({ "exp": now() - 3 }))).await.status, StatusCode::OK);

    let missing = get(&gw.url("/me")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(backend.requests().len(), 2, "only the two good tokens reached the upstream");
}

#[tokio::test]
async fn an_rs256_public_key_used_as_an_hmac_secret_is_refused() {
    let backend = Backend::text("ok").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pub.pem");
    std::fs::write(&file, &rsa_pair().public).expect("write key");
    let gw =
        jwt_gateway(&backend, &format!("      algorithms: [RS256]\n      public_key_file: {}", file.display())).await;
    let good = sign(Algorithm::RS256, &encoding_key(Algorithm::RS256, Some(rsa_pair())), None, &good_claims());
    assert_eq!(bearer(&gw, &good).await.status, StatusCode::OK);
    // The classic key-confusion forgery: HS256 "signed" with the public key's PEM text.
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(rsa_pair().public.as_bytes()), None, &good_claims());
    assert_eq!(bearer(&gw, &forged).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn claims_are_forwarded_only_as_configured_and_client_copies_are_stripped() {
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    let gw = jwt_gateway(
        &backend,
        &format!(
            "      algorithms: [HS256]\n      secret: \"{SECRET}\"\n      forward_claims: {{ x-user-id: sub, x-scopes: scope, x-tenant: tenant }}\n      token_from: cookie:session"
        ),
    )
    .await;
    let token = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, &good_claims());
    // The second request finds the token verified (and its forwarded values made) already.
    for attempt in ["verified", "from the cache"] {
        let got = send(
            Request::get(gw.url("/me"))
                .header("cookie", format!("theme=dark; session={token}"))
                .header("x-user-id", "admin")
                .header("x-tenant", "someone-else")
                .body(full(""))
                .expect("request"),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{attempt}");
        let seen = backend.last();
        let users: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
        assert_eq!(users, ["alice"], "{attempt}");
        assert_eq!(seen.headers["x-scopes"], "read write", "{attempt}");
        // The token has no tenant claim: the client's copy is gone and nothing replaces it.
        assert!(!seen.headers.contains_key("x-tenant"), "{attempt}");
    }
}

/// A JWKS endpoint whose key set the test can change.
async fn jwks_server(set: Arc<Mutex<serde_json::Value>>) -> Backend {
    Backend::serve(move |_req| {
        let body = set.lock().expect("lock").to_string();
        async move {
            let mut r = Response::new(full(body));
            r.headers_mut().insert("content-type", "application/json".parse().expect("value"));
            r
        }
    })
    .await
}

fn jwk(pair: &KeyPair, kid: &str) -> serde_json::Value {
    let key = EncodingKey::from_ec_pem(pair.private.as_bytes()).expect("ec");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("json")
}

#[tokio::test]
async fn a_jwks_key_rotation_takes_effect_without_a_restart() {
    let backend = Backend::text("ok").await;
    let old = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let new = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let set = Arc::new(Mutex::new(json!({ "keys": [jwk(&old, "old")] })));
    let jwks = jwks_server(set.clone()).await;
    let gw = jwt_gateway(
        &backend,
        &format!(
            "      algorithms: [ES256]\n      jwks_url: http://{}/.well-known/jwks.json\n      jwks_refresh: 1s\n      jwks_refetch_cooldown: 200ms",
            jwks.addr
        ),
    )
    .await;
    let old_token = sign(Algorithm::ES256, &encoding_key(Algorithm::ES256, Some(&old)), Some("old"), &good_claims());
    let new_token = sign(Algorithm::ES256, &encoding_key(Algorithm::ES256, Some(&new)), Some("new"), &good_claims());
    // The first request waits for the first fetch instead of failing.
    assert_eq!(bearer(&gw, &old_token).await.status, StatusCode::OK);
    assert_eq!(bearer(&gw, &new_token).await.status, StatusCode::UNAUTHORIZED);

    *set.lock().expect("lock") = json!({ "keys": [jwk(&new, "new")] });
    // An unknown kid triggers a fetch (at most once per cooldown): the new key works without
    // waiting for the refresh period, and without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bearer(&gw, &new_token).await.status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the new kid never became valid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old kid is gone from the set, so its tokens (even ones verified and cached
    // before) stop working.
    while bearer(&gw, &old_token).await.status != StatusCode::UNAUTHORIZED {
        assert!(std::time::Instant::now() < deadline, "the old kid still works after the refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bearer(&gw, &new_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_picked_up_on_refresh() {
    let backend = Backend::text("ok").await;
    let old = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let new = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let set = Arc::new(Mutex::new(json!({ "keys": [jwk(&old, "main")] })));
    let jwks = jwks_server(set.clone()).await;
    let gw = jwt_gateway(
        &backend,
        &format!("      algorithms: [ES256]\n      jwks_url: http://{}/jwks.json\n      jwks_refresh: 1s", jwks.addr),
    )
    .await;
    let old_token = sign(Algorithm::ES256, &encoding_key(Algorithm::ES256, Some(&old)), Some("main"), &good_claims());
    let new_token = sign(Algorithm::ES256, &encoding_key(Algorithm::ES256, Some(&new)), Some("main"), &good_claims());
    assert_eq!(bearer(&gw, &old_token).await.status, StatusCode::OK);

    // Same kid, another key: the next periodic refresh must replace it.
    *set.lock().expect("lock") = json!({ "keys": [jwk(&new, "main")] });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bearer(&gw, &new_token).await.status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the replaced key was never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bearer(&gw, &old_token).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_jwks_is_fetched_over_https_verified_by_jwks_ca() {
    use support::pki::{Alg, Ca};
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("idp ca");
    let ca_file = ca.write(dir.path(), "idp-ca.pem");
    let key = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let set = json!({ "keys": [jwk(&key, "k1")] }).to_string();
    let tls = ca.leaf(&["localhost"], Alg::Ecdsa).server_config(&["http/1.1"], None);
    let idp = Backend::serve_tls(tls, move |_req| {
        let body = set.clone();
        async move { Response::new(full(body)) }
    })
    .await;
    let backend = Backend::text("ok").await;
    let token = sign(Algorithm::ES256, &encoding_key(Algorithm::ES256, Some(&key)), Some("k1"), &good_claims());
    let url = format!("https://localhost:{}/jwks.json", idp.addr.port());
    let trusted = jwt_gateway(
        &backend,
        &format!("      algorithms: [ES256]\n      jwks_url: {url}\n      jwks_ca: {}", ca_file.display()),
    )
    .await;
    assert_eq!(bearer(&trusted, &token).await.status, StatusCode::OK);
    // Without the IdP's CA the key set cannot be trusted, so no token verifies.
    let untrusted = jwt_gateway(&backend, &format!("      algorithms: [ES256]\n      jwks_url: {url}")).await;
    assert_eq!(bearer(&untrusted, &token).await.status, StatusCode::UNAUTHORIZED);
}
