//! The route table: host → path → method/header predicates, compiled once per snapshot.
//!
//! Precedence (documented in the README): a host-specific table is tried before wildcard hosts
//! (longest suffix first) and before routes with no host; within a table an exact path beats
//! the longest matching prefix, which beats shorter prefixes, which beat regexes (in file
//! order); among routes on the same path, more header predicates first, then routes that name
//! methods, then file order. Lookup cost grows with the path's segments, not the number of
//! routes. Routing never touches the network.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};

use crate::config::{HostPattern, PathSpec};

/// One route's match predicates and the value the table returns for it.
pub struct RouteSpec<R> {
    pub host: Option<HostPattern>,
    pub path: PathSpec,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub value: R,
}

struct Candidate<R> {
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    value: R,
}

impl<R> Candidate<R> {
    fn accepts(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self.headers.iter().all(|(n, v)| headers.get(n) == Some(v))
    }
}

fn first_accepting<'a, R>(cands: &'a [Candidate<R>], method: &Method, headers: &HeaderMap) -> Option<&'a R> {
    cands.iter().find(|c| c.accepts(method, headers)).map(|c| &c.value)
}

struct PrefixNode<R> {
    children: HashMap<Box<str>, PrefixNode<R>>,
    routes: Vec<Candidate<R>>,
}

impl<R> Default for PrefixNode<R> {
    fn default() -> Self {
        PrefixNode { children: HashMap::new(), routes: Vec::new() }
    }
}

impl<R> PrefixNode<R> {
    /// Deepest (longest) prefix first, by recursion so the lookup allocates nothing.
    fn lookup<'a>(
        &'a self,
        mut segments: std::str::Split<'_, char>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&'a R> {
        let deeper = segments
            .next()
            .filter(|s| !s.is_empty())
            .and_then(|seg| self.children.get(seg))
            .and_then(|child| child.lookup(segments, method, headers));
        deeper.or_else(|| first_accepting(&self.routes, method, headers))
    }
}

struct PathTable<R> {
    exact: HashMap<Box<str>, Vec<Candidate<R>>>,
    prefixes: PrefixNode<R>,
    regex_set: RegexSet,
    /// Sources of `regex_set`, in the same order as `regexes`.
    regex_sources: Vec<String>,
    regexes: Vec<Vec<Candidate<R>>>,
}

impl<R> Default for PathTable<R> {
    fn default() -> Self {
        PathTable {
            exact: HashMap::new(),
            prefixes: PrefixNode::default(),
            regex_set: RegexSet::empty(),
            regex_sources: Vec::new(),
            regexes: Vec::new(),
        }
    }
}

impl<R> PathTable<R> {
    fn lookup(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<&R> {
        if let Some(r) = self.exact.get(path).and_then(|c| first_accepting(c, method, headers)) {
            return Some(r);
        }
        if let Some(r) = self.prefixes.lookup(path[1..].split('/'), method, headers) {
            return Some(r);
        }
        if self.regexes.is_empty() {
            return None;
        }
        self.regex_set.matches(path).iter().find_map(|i| first_accepting(&self.regexes[i], method, headers))
    }
}

/// Segments of a normal prefix: `/api/users/` → `["api", "users"]`.
pub fn prefix_segments(prefix: &str) -> impl Iterator<Item = &str> {
    prefix.split('/').filter(|s| !s.is_empty())
}

pub struct Router<R> {
    exact_hosts: HashMap<Box<str>, PathTable<R>>,
    wildcard_hosts: HashMap<Box<str>, PathTable<R>>,
    any_host: PathTable<R>,
}

impl<R> Router<R> {
    /// Builds the table. Ties must have been rejected beforehand (see [`find_ties`]); among
    /// routes that remain equal the earlier one wins.
    pub fn new(specs: Vec<RouteSpec<R>>) -> Result<Self, regex::Error> {
        let mut exact_hosts: HashMap<Box<str>, PathTable<R>> = HashMap::new();
        let mut wildcard_hosts: HashMap<Box<str>, PathTable<R>> = HashMap::new();
        let mut any_host = PathTable::default();
        for spec in specs {
            let table = match &spec.host {
                Some(HostPattern::Exact(h)) => exact_hosts.entry(h.as_str().into()).or_default(),
                Some(HostPattern::Wildcard(suffix)) => wildcard_hosts.entry(suffix.as_str().into()).or_default(),
                None => &mut any_host,
            };
            let cand = Candidate { methods: spec.methods, headers: spec.headers, value: spec.value };
            let list = match &spec.path {
                PathSpec::Exact(p) => table.exact.entry(p.as_str().into()).or_default(),
                PathSpec::Prefix(p) => {
                    let mut node = &mut table.prefixes;
                    for seg in prefix_segments(p) {
                        node = node.children.entry(seg.into()).or_default();
                    }
                    &mut node.routes
                }
                PathSpec::Regex(re) => {
                    let i = match table.regex_sources.iter().position(|s| s == re.as_str()) {
                        Some(i) => i,
                        None => {
                            table.regex_sources.push(re.as_str().to_owned());
                            table.regexes.push(Vec::new());
                            table.regexes.len() - 1
                        }
                    };
                    &mut table.regexes[i]
                }
            };
            list.push(cand);
        }
        let finish = |table: &mut PathTable<R>| -> Result<(), regex::Error> {
            if !table.regex_sources.is_empty() {
                table.regex_set = regex::RegexSetBuilder::new(&table.regex_sources).size_limit(1 << 22).build()?;
            }
            sort_candidates_in(table);
            Ok(())
        };
        for t in exact_hosts.values_mut() {
            finish(t)?;
        }
        for t in wildcard_hosts.values_mut() {
            finish(t)?;
        }
        finish(&mut any_host)?;
        Ok(Router { exact_hosts, wildcard_hosts, any_host })
    }

    /// Finds the route for a request. `host` is lower-case without port; `path` is normal.
    pub fn lookup(&self, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> Option<&R> {
        if let Some(r) = self.exact_hosts.get(host).and_then(|t| t.lookup(path, method, headers)) {
            return Some(r);
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, then .example.com, …
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(r) = self.wildcard_hosts.get(suffix).and_then(|t| t.lookup(path, method, headers)) {
                    return Some(r);
                }
                rest = &rest[dot + 1..];
            }
        }
        self.any_host.lookup(path, method, headers)
    }
}

fn sort_candidates(list: &mut [Candidate<impl Sized>]) {
    // Stable: file order breaks the remaining ties.
    list.sort_by_key(|c| (std::cmp::Reverse(c.headers.len()), c.methods.is_none()));
}

fn sort_candidates_in<R>(table: &mut PathTable<R>) {
    table.exact.values_mut().for_each(|l| sort_candidates(l));
    table.regexes.iter_mut().for_each(|l| sort_candidates(l));
    fn walk<R>(n: &mut PrefixNode<R>) {
        sort_candidates(&mut n.routes);
        n.children.values_mut().for_each(walk);
    }
    walk(&mut table.prefixes);
}

/// The key under which two routes compete: same host, same kind of path, same path text.
fn tie_key(host: Option<&HostPattern>, path: &PathSpec) -> (Option<HostPattern>, u8, String) {
    let (kind, text) = match path {
        PathSpec::Exact(p) => (0, p.clone()),
        PathSpec::Prefix(p) => (1, prefix_segments(p).collect::<Vec<_>>().join("/")),
        PathSpec::Regex(re) => (2, re.as_str().to_owned()),
    };
    (host.cloned(), kind, text)
}

/// One route's predicates, as [`find_ties`] compares them.
pub type Predicates<'a> =
    (Option<&'a HostPattern>, &'a PathSpec, Option<&'a [Method]>, &'a [(HeaderName, HeaderValue)]);

/// Pairs `(earlier, later)` of routes that would match exactly the same requests with equal
/// precedence: same host and path, same header predicates, overlapping methods.
pub fn find_ties<'a>(specs: impl IntoIterator<Item = Predicates<'a>>) -> Vec<(usize, usize)> {
    let mut groups: HashMap<_, Vec<(usize, Predicates<'a>)>> = HashMap::new();
    let mut ties = Vec::new();
    for (i, (host, path, methods, headers)) in specs.into_iter().enumerate() {
        let group = groups.entry(tie_key(host, path)).or_default();
        for &(j, (_, _, other_methods, other_headers)) in group.iter() {
            let same_headers =
                headers.len() == other_headers.len() && headers.iter().all(|h| other_headers.contains(h));
            let overlap = match (methods, other_methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => true,
            };
            if same_headers && overlap {
                ties.push((j, i));
                break;
            }
        }
        group.push((i, (host, path, methods, headers)));
    }
    ties
}

pub fn compile_regex(source: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(source).size_limit(1 << 20).build()
}
