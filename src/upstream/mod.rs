//! Upstream pools: the targets of one named upstream, how a target is picked, and the pooled
//! keep-alive connections to them.
//!
//! An `Upstream` outlives config reloads while its definition is unchanged (see [`Registry`]),
//! so its connections and counters are not reset by unrelated edits. Picking a target takes
//! atomics only; no lock is taken on the request path.

pub mod balance;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};

use http::uri::Authority;
use http::{HeaderMap, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use self::balance::{Ring, RoundRobin, TargetStats};
use crate::config::{Balance, HashOn, Timeouts, UpstreamDef};
use crate::proxy::body::RequestBody;

pub struct Target {
    /// `host:port` as written in the config: the access log's `upstream_target`.
    pub address: Arc<str>,
    pub authority: Authority,
    /// The value sent as Host when a route says `host_header: upstream`.
    pub host_value: HeaderValue,
    pub stats: Arc<TargetStats>,
}

enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest { weights: Vec<u32>, rotate: AtomicUsize },
    P2cEwma { weights: Vec<u32> },
    ConsistentHash { ring: Ring, on: HashOn },
    Random { cumulative: Vec<u64> },
}

/// What a balancer may look at in a request.
pub struct PickInput<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub path: &'a str,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub timeouts: Timeouts,
    pub client: Client<HttpConnector, RequestBody>,
    balancer: Balancer,
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
                Ok(Target { address: t.address.as_str().into(), authority, host_value, stats: Arc::default() })
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
        let weights: Vec<u32> = def.targets.iter().map(|t| t.weight).collect();
        let balancer = match def.balance {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            Balance::LeastRequest => Balancer::LeastRequest { weights, rotate: AtomicUsize::new(0) },
            Balance::P2cEwma => Balancer::P2cEwma { weights },
            Balance::ConsistentHash => {
                let points: Vec<(&str, u32)> = def.targets.iter().map(|t| (t.address.as_str(), t.weight)).collect();
                let on = def.hash_on.clone().unwrap_or(HashOn::ClientIp);
                Balancer::ConsistentHash { ring: Ring::new(&points), on }
            }
            Balance::Random => {
                let cumulative = weights
                    .iter()
                    .scan(0u64, |acc, &w| {
                        *acc += u64::from(w);
                        Some(*acc)
                    })
                    .collect();
                Balancer::Random { cumulative }
            }
        };
        Ok(Upstream { name: name.into(), targets, timeouts: def.timeouts, client, balancer, def: def.clone() })
    }

    /// The target for one request, by the upstream's balancer.
    pub fn pick_target(&self, input: &PickInput<'_>) -> &Target {
        let stats = |i: usize| &*self.targets[i].stats;
        let i = match &self.balancer {
            Balancer::RoundRobin(rr) => rr.pick(),
            Balancer::LeastRequest { weights, rotate } => balance::pick_least_request(stats, weights, rotate),
            Balancer::P2cEwma { weights } => balance::pick_p2c_ewma(stats, weights),
            Balancer::ConsistentHash { ring, on } => ring.pick(&hash_key(on, input)),
            Balancer::Random { cumulative } => balance::pick_random(cumulative),
        };
        &self.targets[i.min(self.targets.len() - 1)]
    }
}

/// The bytes `consistent_hash` hashes for a request. A missing header or cookie hashes as
/// empty, so such requests still land on one stable target.
fn hash_key(on: &HashOn, input: &PickInput<'_>) -> Vec<u8> {
    match on {
        HashOn::Header(name) => input.headers.get(name).map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => cookie(input.headers, name).map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
        HashOn::ClientIp => match input.client_ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        },
        HashOn::Path => input.path.as_bytes().to_vec(),
    }
}

/// The value of cookie `name` (RFC 6265 §4.2.1: `Cookie: a=1; b=2`, possibly in several fields).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
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
