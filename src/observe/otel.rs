//! OTLP export of one server span per request (`tracing.otlp_endpoint`), with the
//! OpenTelemetry SDK's batch processor on the tokio runtime and the OTLP/HTTP (protobuf)
//! exporter speaking through hyper.
//!
//! The span's ids are the ones the request already carries: the trace continued from (or
//! started for) the client's `traceparent`, the gateway's own span id (what the upstream sees
//! as its parent), and the client's span as this span's parent. Only sampled traces (flag 01)
//! are exported. Attributes follow the HTTP semantic conventions: `http.request.method`,
//! `http.route`, `http.response.status_code`, `url.path`; a 5xx sets the span's status to
//! error. Export never blocks a request: spans queue (bounded; the oldest are dropped when
//! full) and go out in batches.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::cell::Cell;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::config::TracingDef;
use crate::proxy::trace::TraceIds;

thread_local! {
    /// The ids of the span being built on this thread (see [`RequestIds`]).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Gives the SDK the ids the request already uses: the SDK takes ids only from its id
/// generator, and the span is built synchronously on the thread that set them.
#[derive(Debug)]
struct RequestIds;

impl opentelemetry_sdk::trace::IdGenerator for RequestIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|n| n.get())
            .map_or_else(|| TraceId::from(crate::upstream::balance::random_u64() as u128 | 1), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(|n| n.get()).map_or_else(|| SpanId::from(crate::upstream::balance::random_u64() | 1), |(_, s)| s)
    }
}

pub struct Exporter {
    /// Both taken on drop (see there).
    provider: Option<SdkTracerProvider>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

impl Drop for Exporter {
    /// The SDK shuts the provider down when its last handle goes, waiting for the batch task;
    /// that task runs on the runtime, so the wait happens on a thread of its own, never on a
    /// runtime thread (which would wait for itself).
    fn drop(&mut self) {
        let (tracer, provider) = (self.tracer.take(), self.provider.take());
        let _ = std::thread::Builder::new().name("otlp-shutdown".into()).spawn(move || {
            drop(tracer);
            drop(provider);
        });
    }
}

/// What one finished request contributes to its span.
pub struct Finished<'a> {
    pub ids: TraceIds,
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub started: Instant,
}

impl Exporter {
    /// Must be called inside the tokio runtime (the batch processor runs on it).
    pub fn new(def: &TracingDef) -> Result<Arc<Exporter>, String> {
        let client = opentelemetry_http::hyper::HyperClient::with_default_connector(Duration::from_secs(10), None);
        let endpoint = format!("{}/v1/traces", def.otlp_endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default().with_scheduled_delay(def.export_interval).build(),
        )
        .build();
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(def.service_name.clone()).build();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(RequestIds)
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = Some(provider.tracer("ferroway"));
        Ok(Arc::new(Exporter { provider: Some(provider), tracer }))
    }

    pub fn record(&self, f: &Finished<'_>) {
        let Some(tracer) = self.tracer.as_ref().filter(|_| f.ids.sampled()) else { return };
        let end = SystemTime::now();
        let start = end.checked_sub(f.started.elapsed()).unwrap_or(end);
        let trace_id = TraceId::from(f.ids.trace);
        let parent = match f.ids.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from(p),
                TraceFlags::new(f.ids.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let name = match f.route {
            Some(route) => format!("{} {route}", f.method),
            None => f.method.to_owned(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", f.method.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
            KeyValue::new("url.path", f.path.to_owned()),
        ];
        if let Some(route) = f.route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        let builder =
            tracer.span_builder(name).with_kind(SpanKind::Server).with_start_time(start).with_attributes(attributes);
        NEXT_IDS.with(|n| n.set(Some((trace_id, SpanId::from(f.ids.span)))));
        let mut span = tracer.build_with_context(builder, &parent);
        NEXT_IDS.with(|n| n.set(None));
        if f.status >= 500 {
            span.set_status(Status::error(format!("HTTP {}", f.status)));
        }
        span.end_with_timestamp(end);
    }

    /// Sends what is queued (on shutdown). The flush waits for the batch task, which runs on
    /// the runtime, so the wait happens off it.
    pub async fn flush(self: &Arc<Self>) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.provider.as_ref().map(SdkTracerProvider::force_flush)).await;
    }
}
