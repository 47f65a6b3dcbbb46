//! Allow and deny lists of networks (IPv4 and IPv6) checked against the client address; a
//! denied client gets 403 and the upstream sees nothing. Deny wins over allow; with an allow
//! list, anything not in it is denied.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::{Answer, Cx, Middleware, MiddlewareMetrics, Outcome, Req, ResponseFields, Step};
use crate::config::IpFilterDef;
use crate::proxy::error::ErrorKind;

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    metrics: Arc<MiddlewareMetrics>,
}

impl IpFilter {
    pub fn new(def: &IpFilterDef, metrics: Arc<MiddlewareMetrics>) -> IpFilter {
        IpFilter { allow: def.allow.clone(), deny: def.deny.clone(), metrics }
    }

    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

impl Middleware for IpFilter {
    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Appends
    }

    /// The client address comes from the chain's context (read before the proxy's hop).
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(Vec::new())
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, _req: &'a mut Req<'_>) -> Step<'a> {
        if self.admits(cx.client_ip) {
            self.metrics.count(Outcome::Allowed);
            Step::Next
        } else {
            self.metrics.count(Outcome::Denied);
            Step::Answer(Answer::error(ErrorKind::Forbidden, HeaderMap::new()))
        }
    }
}
