//! The demo's promises: `examples/demo.yaml` in front of the demo's sample backends behaves as
//! the curl lines `ferroway demo` prints say. The demo itself binds fixed ports, so this runs the
//! same config and backends on ephemeral ones.

mod support;

use http::{Method, Request, StatusCode, Version};
use support::*;

#[tokio::test]
async fn the_demo_config_does_what_its_curl_lines_say() {
    let mut yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.yaml")).expect("demo.yaml");
    for (name, fixed) in ferroway::demo::BACKENDS {
        let local = "127.0.0.1:0".parse().expect("addr");
        let addr = ferroway::demo::start_backend(name, local).await.expect("demo backend");
        assert!(yaml.contains(fixed), "demo.yaml names {fixed}");
        yaml = yaml.replace(fixed, &addr.to_string());
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    yaml = yaml.replace("127.0.0.1:9009", &closed.to_string()).replace("127.0.0.1:8080", "127.0.0.1:0");
    yaml = yaml.replace("output: stderr", "output: off").replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = gateway(&yaml).await;

    for line in ["/api/users/42", "/api/orders?id=7", "/nowhere", "/broken"] {
        assert!(ferroway::demo::CURL_LINES.contains(line), "the demo prints a line for {line}");
    }
    // Prefix stripped, and round robin over the two users backends.
    let first = get(&gw.url("/api/users/42")).await.json();
    let second = get(&gw.url("/api/users/42")).await.json();
    assert_eq!(first["path"], "/42");
    let mut backends = [first["backend"].as_str().unwrap_or(""), second["backend"].as_str().unwrap_or("")];
    backends.sort();
    assert_eq!(backends, ["users-1", "users-2"]);
    // Query passed through; HTTP/2 on the same port.
    let orders = get(&gw.url("/api/orders?id=7")).await.json();
    assert_eq!((orders["backend"].as_str(), orders["query"].as_str()), (Some("orders"), Some("id=7")));
    let h2 = send_with(&h2_client(), Request::get(gw.url("/api/orders")).body(full("")).expect("req")).await;
    assert_eq!((h2.version, h2.status), (Version::HTTP_2, StatusCode::OK));
    // The gateway's own answers.
    assert_eq!(get(&gw.url("/nowhere")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&gw.url("/broken")).await.status, StatusCode::BAD_GATEWAY);
    let delete =
        send(Request::builder().method(Method::DELETE).uri(gw.url("/api/orders")).body(full("")).expect("req")).await;
    assert_eq!(delete.status, StatusCode::NOT_FOUND);
}
