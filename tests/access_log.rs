//! The access log: one JSON line per request, written when the response ends.

mod support;

use http::{Request, StatusCode};
use support::*;

#[tokio::test]
async fn each_request_writes_one_json_line_with_its_facts() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{ output: {} }}\nupstreams: {{ u: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: users, match: {{ path_prefix: /users }}, upstream: u }}]\n",
        log.display(),
        backend.address()
    );
    let gw = gateway(&yaml).await;
    let ok =
        send(Request::post(gw.url("/users/1?x=y")).header("x-request-id", "log-me").body(full("12345")).expect("req"))
            .await;
    assert_eq!(ok.status, StatusCode::OK);
    let miss = get(&gw.url("/nope")).await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND);
    // None of the forwarding fields from the client: the proxy's go up as lines.
    assert_eq!(get(&gw.url("/users/2")).await.status, StatusCode::OK);
    let sent = backend.last().headers["traceparent"].to_str().expect("ascii").to_owned();

    // Lines are written by a background thread: wait until all three are there.
    let lines = wait_for_lines(&log, 3).await;
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(first["request_id"], "log-me");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["uri"], "/users/1?x=y");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "users");
    assert_eq!(first["upstream_target"], backend.address());
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], 5);
    assert!(first["duration_ms"].as_f64().is_some());
    assert!(first["upstream_duration_ms"].as_f64().is_some());
    assert_eq!(first["trace_id"].as_str().map(str::len), Some(32), "the trace id sent upstream is logged");
    assert_eq!(first["retries"], 0);
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON line");
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "no_route");
    assert_eq!(second["request_id"], miss.header("x-request-id").expect("id"));
    let third: serde_json::Value = serde_json::from_str(&lines[2]).expect("JSON line");
    assert_eq!(third["trace_id"], sent[3..35], "the trace id sent upstream as a line is logged");
}

async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} access-log lines did not appear");
}

#[tokio::test]
async fn the_combined_format_and_reopening_after_logrotate() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {{ output: {}, format: combined }}\n{}",
        log.display(),
        single_route(backend.addr, "", "match: { path_prefix: /users }")
    );
    let gw = gateway(&yaml).await;
    let req = Request::get(gw.url("/users/1?x=y"))
        .header("referer", "https://app.example/")
        .header("user-agent", "test \"agent\"")
        .body(full(""))
        .expect("req");
    assert_eq!(send(req).await.status, StatusCode::OK);
    let lines = wait_for_lines(&log, 1).await;
    let line = &lines[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.ends_with("] \"GET /users/1?x=y HTTP/1.1\" 200 - \"https://app.example/\" \"test \\\"agent\\\"\""),
        "{line}"
    );

    // logrotate moves the file, then signals; new lines go to a new file at the old path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    gw.running.gateway.access_log.reopen();
    get(&gw.url("/users/2")).await;
    let fresh = wait_for_lines(&log, 1).await;
    assert!(fresh[0].contains("/users/2"), "{fresh:?}");
    assert_eq!(std::fs::read_to_string(&rotated).expect("rotated").lines().count(), 1);
}

#[tokio::test]
async fn a_template_picks_the_fields_and_auth_refusals_say_why() {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let secret = "a-secret-of-at-least-thirty-two-bytes!!";
    let yaml = format!(
        "access_log: {{ output: {}, format: template, template: \"{{client}} {{method}} {{uri}} {{status}} {{route}} [{{decision}}] {{user_agent}} {{{{literal}}}}\" }}\nmiddleware: {{ auth: {{ jwt: {{ algorithms: [HS256], secret: \"{secret}\" }} }} }}\nupstreams: {{ u: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: users, match: {{ path_prefix: /users }}, upstream: u, middleware: [auth] }}]\n",
        log.display(),
        backend.address()
    );
    let gw = gateway(&yaml).await;
    // An expired HS256 token (exp in 2001).
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "x", "exp": 1_000_000_000 }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    let refused = send(
        Request::get(gw.url("/users/1"))
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "probe/1")
            .body(full(""))
            .expect("req"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let lines = wait_for_lines(&log, 1).await;
    assert_eq!(lines[0], "127.0.0.1 GET /users/1 401 users [auth_failed:expired] probe/1 {literal}");
}
