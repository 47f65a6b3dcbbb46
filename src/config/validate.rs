//! Checks across the whole config: names are unique, references resolve, routes do not tie.
//! Each problem points at the definition that is wrong, never only at the one it clashes with.

use std::collections::HashMap;

use super::decode::{Located, Problems, did_you_mean};
use super::middleware::{LimitKey, LimitStore, MiddlewareKind};
use super::route::PathSpec;
use super::schema::Config;

/// Records `name` in `seen`, reporting it when an earlier `what` already took it.
fn unique_name<'a>(seen: &mut HashMap<&'a str, u32>, name: &'a Located<String>, what: &str, p: &mut Problems) {
    if let Some(line) = seen.insert(name.value.as_str(), name.pos.line) {
        p.add(name.pos, &name.path, format!("duplicate {what} name {:?} (first defined on line {line})", name.value));
    }
}

pub(super) fn validate(config: &Config, p: &mut Problems) {
    let mut listener_names = HashMap::new();
    let mut listener_addrs = HashMap::new();
    for l in &config.listeners {
        unique_name(&mut listener_names, &l.name, "listener", p);
        // Port 0 means "any free port": two of those never clash.
        if l.address.value.port() == 0 {
            continue;
        }
        if let Some(line) = listener_addrs.insert(l.address.value, l.address.pos.line) {
            p.add(
                l.address.pos,
                &l.address.path,
                format!("address {} is already used by the listener on line {line}", l.address.value),
            );
        }
    }
    let has_tls = config.listeners.iter().any(|l| l.tls.is_some());
    for l in &config.listeners {
        if let Some(r) = &l.redirect_to_https {
            if l.tls.is_some() {
                p.add(
                    r.pos,
                    &r.path,
                    "this listener already serves TLS; redirect_to_https belongs on a plain HTTP listener",
                );
            } else if !has_tls {
                p.add(r.pos, &r.path, "redirect_to_https needs a listener with `tls:` to redirect to");
            }
        }
    }
    let has_plain = config.listeners.iter().any(|l| l.tls.is_none());
    for acme in config.listeners.iter().filter_map(|l| l.tls.as_ref()?.acme.as_ref()) {
        if acme.value.challenge == super::AcmeChallenge::Http01 && !has_plain {
            p.add(
                acme.pos,
                &acme.path,
                "the http-01 challenge is answered on a plain HTTP listener (port 80), and this config has none; add one or use `challenge: tls-alpn-01`",
            );
        }
    }
    if let Some(admin) = &config.admin
        && let Some(line) = listener_addrs.get(&admin.address.value)
    {
        p.add(
            admin.address.pos,
            &admin.address.path,
            format!("the admin address must differ from every listener's (line {line} uses it)"),
        );
    }

    let mut middleware_names = HashMap::new();
    for m in &config.middleware {
        unique_name(&mut middleware_names, &m.name, "middleware", p);
        if let MiddlewareKind::RateLimit(rl) = &m.kind
            && rl.store == LimitStore::Redis
            && config.redis.is_none()
        {
            p.add(m.name.pos, &m.name.path, "store: redis needs a top-level `redis: { url: redis://host:port }`");
        }
    }
    let known: Vec<&str> = config.middleware_names.iter().map(String::as_str).collect();
    for r in &config.routes {
        let mut listed: Vec<&MiddlewareKind> = Vec::new();
        for (i, name) in r.middleware.iter().enumerate() {
            if r.middleware[..i].iter().any(|n| n.value == name.value) {
                p.add(name.pos, &name.path, format!("middleware {:?} is listed twice in this route", name.value));
                continue;
            }
            let Some(def) = config.middleware.iter().find(|m| m.name.value == name.value) else {
                if known.contains(&name.value.as_str()) {
                    continue; // its definition's problems are already reported
                }
                let hint = match did_you_mean(&name.value, &known) {
                    Some(near) => format!("; did you mean {near:?}?"),
                    None if known.is_empty() => "; no middleware is defined (add it under `middleware:`)".to_owned(),
                    None => format!("; defined middleware: {}", known.join(", ")),
                };
                p.add(name.pos, &name.path, format!("unknown middleware {:?}{hint}", name.value));
                continue;
            };
            // A limit keyed on a claim or an API key needs the middleware that finds it to run first.
            if let MiddlewareKind::RateLimit(rl) = &def.kind {
                let needs = match rl.key {
                    LimitKey::Claim(_) => Some(("jwt", "claim:")),
                    LimitKey::ApiKey => Some(("api_key", "api_key")),
                    _ => None,
                };
                if let Some((kind, what)) = needs
                    && !listed.iter().any(|k| k.label() == kind)
                {
                    p.add(
                        name.pos,
                        &name.path,
                        format!(
                            "rate limit {:?} is keyed on {what} but no {kind} middleware runs before it in this route",
                            name.value
                        ),
                    );
                }
            }
            listed.push(&def.kind);
        }
    }

    let upstream_names: Vec<&str> = config.upstreams.iter().map(|(n, _)| n.value.as_str()).collect();
    let mut route_names = HashMap::new();
    for r in &config.routes {
        unique_name(&mut route_names, &r.name, "route", p);
        if !upstream_names.contains(&r.upstream.value.as_str()) {
            let hint = match did_you_mean(&r.upstream.value, &upstream_names) {
                Some(near) => format!("; did you mean {near:?}?"),
                None if upstream_names.is_empty() => {
                    "; no upstreams are defined (add them under `upstreams:`)".to_owned()
                }
                None => format!("; defined upstreams: {}", upstream_names.join(", ")),
            };
            p.add(r.upstream.pos, &r.upstream.path, format!("unknown upstream {:?}{hint}", r.upstream.value));
        }
        if let Some(strip) = &r.strip_prefix
            && strip.value
            && !matches!(r.matcher.path.value, PathSpec::Prefix(_))
        {
            p.add(strip.pos, &strip.path, "strip_prefix needs a `path_prefix` match");
        }
    }

    let ties = crate::routing::find_ties(config.routes.iter().map(|r| {
        let m = &r.matcher;
        (m.host.as_ref().map(|h| &h.value), &m.path.value, m.methods.as_deref(), m.headers.as_slice())
    }));
    for (first, second) in ties {
        let (a, b) = (&config.routes[first], &config.routes[second]);
        p.add(
            b.matcher.path.pos,
            &b.matcher.path.path,
            format!(
                "route {:?} matches exactly the same requests as route {:?} (line {}); make their host, path, methods or headers differ",
                b.name.value, a.name.value, a.name.pos.line
            ),
        );
    }
}
