//! Upstream pools: the targets of one named upstream, how a target is picked, and the pooled
//! keep-alive connections to them.
//!
//! An `Upstream` outlives config reloads while its definition is unchanged (see [`Registry`]),
//! so its connections and counters are not reset by unrelated edits. Picking a target is a
//! single atomic increment; no lock is taken on the request path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::HeaderValue;
use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, UpstreamDef};
use crate::proxy::body::RequestBody;

pub struct Target {
    /// `host:port` as written in the config: the access log's `upstream_target`.
    pub address: Arc<str>,
    pub authority: Authority,
    /// The value sent as Host when a route says `host_header: upstream`.
    pub host_value: HeaderValue,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub timeouts: Timeouts,
    pub client: Client<HttpConnector, RequestBody>,
    next: AtomicUsize,
    def: UpstreamDef,
}

impl Upstream {
    fn new(name: &str, def: &UpstreamDef) -> Result<Upstream, String> {
        let targets = def
            .targets
            .iter()
            .map(|t| {
                let authority =
                    Authority::try_from(t.address.as_str()).map_err(|e| format!("target {}: {e}", t.address))?;
                let host_value = HeaderValue::from_str(&t.address).map_err(|e| format!("target {}: {e}", t.address))?;
                Ok(Target { address: t.address.as_str().into(), authority, host_value })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(def.timeouts.connect));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(def.timeouts.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_preserve_header_case(false)
            .build(connector);
        Ok(Upstream {
            name: name.into(),
            targets,
            timeouts: def.timeouts,
            client,
            next: AtomicUsize::new(0),
            def: def.clone(),
        })
    }

    /// Round robin over the targets.
    pub fn pick_target(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        &self.targets[i]
    }
}

/// Upstreams by name, shared between snapshots while their definition does not change.
/// Only consulted while compiling a snapshot, never per request.
#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Arc<str>, Weak<Upstream>>>,
}

impl Registry {
    /// The running upstream for `name` if its definition is unchanged, else a new one.
    pub fn get_or_create(&self, name: &str, def: &UpstreamDef) -> Result<Arc<Upstream>, String> {
        if def.targets.is_empty() {
            return Err(format!("upstream {name} has no targets"));
        }
        // Poisoning only means another compile panicked; the map itself is still consistent.
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = live.get(name).and_then(Weak::upgrade)
            && existing.def == *def
        {
            return Ok(existing);
        }
        let fresh = Arc::new(Upstream::new(name, def)?);
        live.insert(name.into(), Arc::downgrade(&fresh));
        Ok(fresh)
    }
}
