//! Route lookup cost against table size: `cargo bench --bench routing`.
//!
//! Builds tables of 1, 100 and 10 000 routes (exact paths, prefixes and per-host routes) and
//! times lookups of the same requests in each. The figure to read is the ratio between sizes:
//! lookup walks the request path's segments, so it should not grow with the route count.

use std::hint::black_box;
use std::time::Instant;

use ferroway::config::{HostPattern, PathSpec};
use ferroway::routing::{RouteSpec, Router};
use http::{HeaderMap, Method};

fn table(n: usize) -> Router<usize> {
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        let (host, path) = match i % 3 {
            0 => (None, PathSpec::Prefix(format!("/svc{i}/api"))),
            1 => (None, PathSpec::Exact(format!("/exact/{i}"))),
            _ => (Some(HostPattern::Exact(format!("h{i}.example.com"))), PathSpec::Prefix("/".into())),
        };
        specs.push(RouteSpec { host, path, methods: None, headers: Vec::new(), value: i });
    }
    // The routes the lookups below hit, present in every table.
    specs.push(RouteSpec {
        host: None,
        path: PathSpec::Prefix("/api/users".into()),
        methods: None,
        headers: Vec::new(),
        value: n,
    });
    specs.push(RouteSpec {
        host: None,
        path: PathSpec::Exact("/health".into()),
        methods: None,
        headers: Vec::new(),
        value: n + 1,
    });
    Router::new(specs).unwrap_or_else(|e| panic!("table: {e}"))
}

fn time_lookups(r: &Router<usize>) -> f64 {
    let headers = HeaderMap::new();
    let requests = [("api.example.com", "/api/users/42/orders"), ("x", "/health"), ("x", "/nothing/here/at/all")];
    const N: usize = 200_000;
    let start = Instant::now();
    for i in 0..N {
        let (host, path) = requests[i % requests.len()];
        black_box(r.lookup(black_box(host), black_box(path), &Method::GET, &headers));
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() {
    let mut baseline = None;
    for n in [1, 100, 10_000] {
        let r = table(n);
        let mut runs: Vec<f64> = (0..7).map(|_| time_lookups(&r)).collect();
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        let base = *baseline.get_or_insert(median);
        println!("{n:>6} routes: {median:7.1} ns/lookup (median of 7; {:.2}x the 1-route table)", median / base);
    }
}
