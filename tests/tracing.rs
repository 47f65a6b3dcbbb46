//! OTLP span export against a real OTLP/HTTP receiver in the test (a hyper server decoding the
//! protobuf requests the exporter sends): each request's server span arrives with the trace
//! it continued, the gateway's own span id (the one the upstream saw as its parent), the
//! route, method and status.

mod support;

use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.clone())
}

/// Every span the receiver has been sent so far, with its service name.
fn received(receiver: &Backend) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for seen in receiver.requests() {
        assert_eq!(seen.uri, "/v1/traces");
        let Ok(export) = ExportTraceServiceRequest::decode(seen.body.as_ref()) else { continue };
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }
    spans
}

#[tokio::test]
async fn each_request_is_exported_as_a_server_span_with_its_route_and_status() {
    let receiver = Backend::recording(|_| Response::new(full(""))).await;
    let backend = Backend::recording(|_| Response::new(full("ok"))).await;
    let gw = gateway(&format!(
        "tracing: {{ otlp_endpoint: \"http://{}\", service_name: edge, export_interval: 100ms }}\nupstreams: {{ up: {{ targets: [{{ address: {} }}] }} }}\nroutes: [{{ name: users, upstream: up, match: {{ path_prefix: /users }} }}]\n",
        receiver.addr, backend.addr
    ))
    .await;
    let traced = send(
        Request::get(gw.url("/users/7"))
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .body(full(""))
            .expect("request"),
    )
    .await;
    assert_eq!(traced.status, StatusCode::OK);
    assert_eq!(get(&gw.url("/nowhere")).await.status, StatusCode::NOT_FOUND);
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    send(Request::get(gw.url("/users/8")).header("traceparent", unsampled).body(full("")).expect("r")).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = received(&receiver);
        if spans.len() >= 2 {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans did not arrive: {} so far", spans.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (service, span) = spans.iter().find(|(_, s)| hex(&s.trace_id) == TRACE).expect("the continued trace's span");
    assert_eq!(service, "edge");
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(span.name, "GET users");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(span, "http.route"), Some(Value::StringValue("users".into())));
    assert_eq!(attribute(span, "http.response.status_code"), Some(Value::IntValue(200)));
    assert_eq!(attribute(span, "http.request.method"), Some(Value::StringValue("GET".into())));
    assert_eq!(attribute(span, "url.path"), Some(Value::StringValue("/users/7".into())));
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    // The upstream saw the gateway's span as its parent.
    let upstream_parent = backend.requests()[0].headers["traceparent"].to_str().expect("ascii")[36..52].to_owned();
    assert_eq!(hex(&span.span_id), upstream_parent);

    let not_found = spans.iter().find(|(_, s)| attribute(s, "http.response.status_code") == Some(Value::IntValue(404)));
    let (_, not_found) = not_found.expect("the 404 has a span too");
    assert_eq!(not_found.name, "GET");
    assert!(attribute(not_found, "http.route").is_none());
    assert!(!spans.iter().any(|(_, s)| hex(&s.trace_id) == "1".repeat(32)), "an unsampled trace is not exported");
}
