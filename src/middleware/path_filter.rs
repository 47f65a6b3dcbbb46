//! `path_filter`: deny globs over the normalised path, answered 404 (the same answer as a path
//! no route serves, so the filter does not reveal what it hides) without touching the
//! upstream. Matching the normalised path means `/%69nternal/x`, `/a/../internal/x` and
//! `//internal/x` are all `/internal/x` here, as they are to routing. Matching is
//! case-sensitive, like paths.

use std::sync::Arc;

use http::HeaderName;

use super::{Answer, Cx, Middleware, MiddlewareMetrics, Outcome, Req, ResponseFields, Step};
use crate::config::PathFilterDef;
use crate::proxy::error::ErrorKind;

pub struct PathFilter {
    deny: globset::GlobSet,
    metrics: Arc<MiddlewareMetrics>,
}

impl PathFilter {
    pub fn new(def: &PathFilterDef, metrics: Arc<MiddlewareMetrics>) -> PathFilter {
        PathFilter { deny: def.set.clone(), metrics }
    }
}

impl Middleware for PathFilter {
    fn response_fields(&self) -> ResponseFields {
        ResponseFields::Appends
    }

    fn request_fields(&self) -> Option<Vec<HeaderName>> {
        Some(Vec::new())
    }

    fn request<'a>(&'a self, _cx: &'a mut Cx, req: &'a mut Req<'_>) -> Step<'a> {
        if self.deny.is_match(req.path) {
            self.metrics.count(Outcome::Denied);
            Step::Answer(Answer::from(ErrorKind::NoRoute))
        } else {
            self.metrics.count(Outcome::Allowed);
            Step::Next
        }
    }
}
