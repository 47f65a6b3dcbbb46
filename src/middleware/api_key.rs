//! API keys: the config holds only SHA-256 hashes; a presented key is hashed and compared with
//! every configured hash in constant time (no early exit, so timing tells nothing about which
//! or how much matched). The matched key's id goes to logs and can key a rate limit.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Answer, Cx, Middleware, MiddlewareMetrics, Outcome, Req, ResponseFields, Step};
use crate::config::ApiKeyDef;
use crate::proxy::error::ErrorKind;

pub struct ApiKey {
    header: HeaderName,
    keys: Vec<(Arc<str>, [u8; 32])>,
    metrics: Arc<MiddlewareMetrics>,
}

impl ApiKey {
    pub fn new(def: &ApiKeyDef, metrics: Arc<MiddlewareMetrics>) -> ApiKey {
        ApiKey {
            header: def.header.clone(),
            keys: def.keys.iter().map(|(id, h)| (Arc::from(id.as_str()), *h)).collect(),
            metrics,
        }
    }

    fn find(&self, presented: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (id, hash) in &self.keys {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(id.clone());
            }
        }
        found
    }

    fn refuse(&self, cx: &mut Cx, outcome: Outcome) -> Step<'static> {
        self.metrics.count(outcome);
        cx.auth_failure = Some(outcome);
        let mut h = HeaderMap::new();
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
        Step::Answer(Answer::error(ErrorKind::Unauthorized, h))
    }
}

impl Middleware for ApiKey {
    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Appends
    }

    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(vec![self.header.clone()])
    }

    fn request<'a>(&'a self, cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        if cx.preflight_answered_later() {
            return Step::Next;
        }
        let Some(presented) = req.headers.get(&self.header) else { return self.refuse(cx, Outcome::Missing) };
        match self.find(presented.as_bytes()) {
            Some(id) => {
                self.metrics.count(Outcome::Authenticated);
                cx.api_key_id = Some(id);
                Step::Next
            }
            None => self.refuse(cx, Outcome::InvalidKey),
        }
    }
}
