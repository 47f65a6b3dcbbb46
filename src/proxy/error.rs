//! The gateway's own answers: one kind per cause, and the one place that maps a kind to its
//! status, metric/log label and message. The match has no wildcard arm on purpose, so a new
//! kind cannot silently become a 500.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    BadPath,
    HeadersTooLarge,
    BodyTooLarge,
    ClientBodyError,
    ClientBodyTimeout,
    NoRoute,
    UpstreamConnectRefused,
    UpstreamConnectTimeout,
    UpstreamResponseTimeout,
    UpstreamReset,
    UpstreamBadResponse,
    NoHealthyTarget,
    UpstreamSaturated,
    /// No credentials, or credentials that did not verify (JWT, API key).
    Unauthorized,
    /// The client's address is not allowed on this route.
    Forbidden,
    RateLimited,
    /// The shared rate-limit store could not decide and `on_store_error: deny` applies.
    RateLimitUnavailable,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::BadPath | ErrorKind::ClientBodyError => StatusCode::BAD_REQUEST,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::UpstreamConnectRefused | ErrorKind::UpstreamReset | ErrorKind::UpstreamBadResponse => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::UpstreamConnectTimeout | ErrorKind::UpstreamResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoHealthyTarget | ErrorKind::UpstreamSaturated | ErrorKind::RateLimitUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether the upstream (not the client or the config) caused this, for passive health.
    pub fn is_upstream_failure(self) -> bool {
        match self {
            ErrorKind::UpstreamConnectRefused
            | ErrorKind::UpstreamConnectTimeout
            | ErrorKind::UpstreamResponseTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamBadResponse => true,
            ErrorKind::BadRequest
            | ErrorKind::BadPath
            | ErrorKind::HeadersTooLarge
            | ErrorKind::BodyTooLarge
            | ErrorKind::ClientBodyError
            | ErrorKind::ClientBodyTimeout
            | ErrorKind::NoRoute
            | ErrorKind::NoHealthyTarget
            | ErrorKind::UpstreamSaturated
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::RateLimited
            | ErrorKind::RateLimitUnavailable => false,
        }
    }

    /// Stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::BadPath => "bad_path",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::ClientBodyError => "client_body_error",
            ErrorKind::ClientBodyTimeout => "client_body_timeout",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::UpstreamConnectRefused => "upstream_connect_failed",
            ErrorKind::UpstreamConnectTimeout => "upstream_connect_timeout",
            ErrorKind::UpstreamResponseTimeout => "upstream_response_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamBadResponse => "upstream_bad_response",
            ErrorKind::NoHealthyTarget => "no_healthy_target",
            ErrorKind::UpstreamSaturated => "circuit_open",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::RateLimitUnavailable => "rate_limit_store_unavailable",
        }
    }

    /// The gRPC status a gRPC client gets instead (the status codes of the gRPC core spec,
    /// `doc/statuscodes.md`), chosen for what happened, not only from the HTTP status.
    pub fn grpc_status(self) -> u8 {
        const INTERNAL: u8 = 13;
        const DEADLINE_EXCEEDED: u8 = 4;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNAUTHENTICATED: u8 = 16;
        const PERMISSION_DENIED: u8 = 7;
        match self {
            ErrorKind::BadRequest | ErrorKind::BadPath | ErrorKind::ClientBodyError => INTERNAL,
            ErrorKind::HeadersTooLarge | ErrorKind::BodyTooLarge | ErrorKind::RateLimited => RESOURCE_EXHAUSTED,
            ErrorKind::ClientBodyTimeout | ErrorKind::UpstreamResponseTimeout => DEADLINE_EXCEEDED,
            ErrorKind::NoRoute => UNIMPLEMENTED,
            ErrorKind::UpstreamConnectRefused
            | ErrorKind::UpstreamConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamBadResponse
            | ErrorKind::NoHealthyTarget
            | ErrorKind::UpstreamSaturated
            | ErrorKind::RateLimitUnavailable => UNAVAILABLE,
            ErrorKind::Unauthorized => UNAUTHENTICATED,
            ErrorKind::Forbidden => PERMISSION_DENIED,
        }
    }

    /// What the client is told, in its JSON body's `error` field.
    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "malformed request",
            ErrorKind::BadPath => "request path is malformed or ambiguous",
            ErrorKind::HeadersTooLarge => "request headers too large",
            ErrorKind::BodyTooLarge => "request body too large",
            ErrorKind::ClientBodyError => "request body could not be read",
            ErrorKind::ClientBodyTimeout => "request body arrived too slowly",
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::UpstreamConnectRefused => "upstream connection failed",
            ErrorKind::UpstreamConnectTimeout => "upstream connect timed out",
            ErrorKind::UpstreamResponseTimeout => "upstream response timed out",
            ErrorKind::UpstreamReset => "upstream closed the connection",
            ErrorKind::UpstreamBadResponse => "upstream sent an invalid response",
            ErrorKind::NoHealthyTarget => "no healthy upstream target",
            ErrorKind::UpstreamSaturated => "upstream has too many pending requests",
            ErrorKind::Unauthorized => "authentication required",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "too many requests",
            ErrorKind::RateLimitUnavailable => "rate limit cannot be checked right now",
        }
    }
}

/// `{"error": "...", "request_id": "..."}`. Messages are fixed ASCII; the request id may come
/// from the client (any visible ASCII, quotes included), so it goes through a JSON encoder.
pub fn json_body(kind: ErrorKind, request_id: &str) -> bytes::Bytes {
    let mut s = String::with_capacity(64 + request_id.len());
    s.push_str("{\"error\":\"");
    s.push_str(kind.message());
    s.push_str("\",\"request_id\":");
    s.push_str(&serde_json::Value::from(request_id).to_string());
    s.push_str("}\n");
    bytes::Bytes::from(s)
}
