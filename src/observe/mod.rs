//! Observability: the access log now; metrics and tracing join it here.

pub mod access_log;
pub mod metrics;
pub mod otel;
