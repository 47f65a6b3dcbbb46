//! The config as operators see it: the YAML document after `${ENV}` substitution, as JSON, with
//! secrets redacted (for `GET /config`), and what changes between two such documents (for
//! `ferroway check --against`).

use serde_json::{Map, Value as Json};

use super::node::{Node, Value};

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: &[&str] = &["secret", "token", "password", "passphrase", "key_sha256"];
const REDACTED: &str = "<redacted>";

/// The document as JSON, secrets replaced by `<redacted>` and passwords in URLs
/// (`redis://user:pass@host`) masked.
pub fn redacted(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(mask_url_password(s)),
        Value::Seq(items) => Json::Array(items.iter().map(redacted).collect()),
        Value::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let secret = SECRET_KEYS.iter().any(|s| k.name.eq_ignore_ascii_case(s));
                let value = if secret { hide(v) } else { redacted(v) };
                map.insert(k.name.clone(), value);
            }
            Json::Object(map)
        }
    }
}

/// A secret's place kept (a list of keys stays a list) with every scalar hidden.
fn hide(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Seq(items) => Json::Array(items.iter().map(hide).collect()),
        Value::Map(entries) => Json::Object(entries.iter().map(|(k, v)| (k.name.clone(), hide(v))).collect()),
        _ => Json::String(REDACTED.into()),
    }
}

fn mask_url_password(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:{REDACTED}@{host}{path}")
        }
        None => s.to_owned(),
    }
}

/// What a reload from `old` to `new` would change: `+ route orders`, `- upstream legacy`,
/// `~ middleware auth`, `~ limits`. Named things are compared one by one; other top-level
/// keys as a whole.
pub fn diff(old: &Json, new: &Json) -> Vec<String> {
    let mut out = Vec::new();
    let empty = Map::new();
    let (o, n) = (old.as_object().unwrap_or(&empty), new.as_object().unwrap_or(&empty));
    for (key, what) in [("listeners", "listener"), ("routes", "route")] {
        diff_named(&mut out, what, &named_list(o.get(key)), &named_list(n.get(key)));
    }
    for (key, what) in [("upstreams", "upstream"), ("middleware", "middleware")] {
        diff_named(&mut out, what, &named_map(o.get(key)), &named_map(n.get(key)));
    }
    let mut others: Vec<&String> = o.keys().chain(n.keys()).collect();
    others.sort();
    others.dedup();
    for key in others {
        if ["listeners", "routes", "upstreams", "middleware"].contains(&key.as_str()) {
            continue;
        }
        match (o.get(key), n.get(key)) {
            (None, Some(_)) => out.push(format!("+ {key}")),
            (Some(_), None) => out.push(format!("- {key}")),
            (Some(a), Some(b)) if a != b => out.push(format!("~ {key}")),
            _ => {}
        }
    }
    out
}

fn named_list(v: Option<&Json>) -> Vec<(String, Json)> {
    v.and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = item.get("name").and_then(Json::as_str).map_or_else(|| format!("#{i}"), str::to_owned);
                    (name, item.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn named_map(v: Option<&Json>) -> Vec<(String, Json)> {
    v.and_then(Json::as_object).map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn diff_named(out: &mut Vec<String>, what: &str, old: &[(String, Json)], new: &[(String, Json)]) {
    for (name, value) in new {
        match old.iter().find(|(n, _)| n == name) {
            None => out.push(format!("+ {what} {name}")),
            Some((_, before)) if before != value => out.push(format!("~ {what} {name}")),
            Some(_) => {}
        }
    }
    for (name, _) in old {
        if !new.iter().any(|(n, _)| n == name) {
            out.push(format!("- {what} {name}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Json {
        redacted(&super::super::node::parse(yaml, Default::default()).expect("yaml"))
    }

    #[test]
    fn secrets_and_url_passwords_are_redacted() {
        let d = doc(
            "admin: { token: abc }\nmiddleware:\n  a: { jwt: { secret: s3cr3t, algorithms: [HS256] } }\n  k: { api_key: { keys: [{ id: m, key_sha256: ff }] } }\nredis: { url: \"redis://user:pw@10.0.0.1:6379/0\" }\n",
        );
        let text = d.to_string();
        for hidden in ["abc", "s3cr3t", "\"ff\"", "pw@"] {
            assert!(!text.contains(hidden), "{hidden} leaked: {text}");
        }
        assert_eq!(d["redis"]["url"], "redis://user:<redacted>@10.0.0.1:6379/0");
        assert_eq!(d["middleware"]["a"]["jwt"]["algorithms"][0], "HS256", "the rest stays");
        assert_eq!(d["middleware"]["k"]["api_key"]["keys"][0]["id"], "m");
    }

    #[test]
    fn diff_names_what_was_added_removed_and_changed() {
        let old = doc(
            "listeners: [{ name: p, address: 127.0.0.1:1 }]\nupstreams: { a: { targets: [] }, b: { targets: [] } }\nroutes: [{ name: r1, upstream: a }, { name: r2, upstream: b }]\nlimits: { max_request_body: 1MiB }\n",
        );
        let new = doc(
            "listeners: [{ name: p, address: 127.0.0.1:1 }]\nupstreams: { a: { targets: [x] }, c: { targets: [] } }\nroutes: [{ name: r1, upstream: a }, { name: r3, upstream: c }]\nlimits: { max_request_body: 2MiB }\n",
        );
        assert_eq!(
            diff(&old, &new),
            ["+ route r3", "- route r2", "~ upstream a", "+ upstream c", "- upstream b", "~ limits"]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
