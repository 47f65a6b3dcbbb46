//! Header rules (set, append, remove on the request going upstream and the response going
//! back, with `${request_id}`, `${client_ip}`, `${route}` and `${client_cert_subject}` in
//! values) and the security
//! headers a browser acts on.

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue, StatusCode};

use super::{Cx, Fields, Middleware, Req, ResponseFields, Step};
use crate::config::{self, HeaderRulesDef, SecurityHeadersDef, Template, TemplatePart};

struct Rules {
    set: Vec<(HeaderName, Template)>,
    append: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
}

impl Rules {
    fn new(def: &config::HeaderRules) -> Rules {
        Rules { set: def.set.clone(), append: def.append.clone(), remove: def.remove.clone() }
    }

    /// Removals first, so `remove: [x]` with `set: {x: …}` leaves the set value.
    fn apply(&self, cx: &Cx, h: &mut Fields<'_>) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, t) in &self.set {
            // A value that cannot be rendered still replaces the sender's copy.
            match render(t, cx) {
                Some(v) => h.insert(name.clone(), v),
                None => h.remove(name),
            };
        }
        for (name, t) in &self.append {
            if let Some(v) = render(t, cx) {
                h.append(name.clone(), v);
            }
        }
    }
}

fn render(t: &Template, cx: &Cx) -> Option<HeaderValue> {
    match t {
        Template::Fixed(v) => Some(v.clone()),
        Template::Parts(parts) => {
            let mut s = String::with_capacity(64);
            for p in parts {
                match p {
                    TemplatePart::Text(t) => s.push_str(t),
                    TemplatePart::RequestId => s.push_str(cx.request_id.to_str().unwrap_or("-")),
                    TemplatePart::ClientIp => {
                        let _ = write!(s, "{}", cx.client_ip);
                    }
                    TemplatePart::Route => s.push_str(&cx.route),
                    TemplatePart::ClientCertSubject => s.push_str(cx.client_cert_subject.as_deref().unwrap_or("")),
                }
            }
            // Bytes, not str: a certificate subject may hold UTF-8 (obs-text in a field value).
            HeaderValue::from_bytes(s.as_bytes()).ok()
        }
    }
}

pub struct HeaderRules {
    request: Rules,
    response: Rules,
}

impl HeaderRules {
    pub fn new(def: &HeaderRulesDef) -> HeaderRules {
        HeaderRules { request: Rules::new(&def.request), response: Rules::new(&def.response) }
    }
}

impl Middleware for HeaderRules {
    /// The request rules' names (templates read the chain's context, never a field).
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        let r = &self.request;
        Some(r.remove.iter().chain(r.set.iter().chain(&r.append).map(|(n, _)| n)).cloned().collect())
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        self.request.apply(cx, &mut Fields::new(req.headers));
        Step::Next
    }

    fn response(&self, cx: &Cx, _status: StatusCode, headers: &mut Fields<'_>) {
        self.response.apply(cx, headers);
    }

    /// Removals and sets replace whatever the upstream sent (a value that cannot be rendered
    /// removes it); appends follow it.
    fn response_fields(&self) -> ResponseFields {
        let r = &self.response;
        if r.remove.is_empty() && r.set.is_empty() {
            return ResponseFields::Appends;
        }
        let replaced = r.remove.iter().chain(r.set.iter().map(|(n, _)| n)).cloned().collect();
        ResponseFields::Names { touched: Vec::new(), replaced }
    }
}

pub struct SecurityHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    pub fn new(def: &SecurityHeadersDef) -> SecurityHeaders {
        SecurityHeaders { headers: def.headers.clone() }
    }
}

impl Middleware for SecurityHeaders {
    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(Vec::new())
    }

    fn request<'a>(&'a self, _cx: &'a mut Cx, _req: &'a mut Req<'_>) -> Step<'a> {
        Step::Next
    }

    /// Added where the upstream set none: an application's own policy wins.
    fn response(&self, _cx: &Cx, _status: StatusCode, h: &mut Fields<'_>) {
        for (name, value) in &self.headers {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
    }

    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Names { touched: self.headers.iter().map(|(n, _)| n.clone()).collect(), replaced: Vec::new() }
    }
}
