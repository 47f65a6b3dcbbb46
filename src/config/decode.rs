//! Decoding the spanned YAML tree into typed config, collecting every problem with its place.
//!
//! Hand-written rather than `#[derive(Deserialize)]` because serde stops at the first error,
//! and `ferroway check` must list all of them (each with line, column and key path) at once.
//! Decoding never panics and never touches the network or the file system.

use std::fmt;
use std::time::Duration;

use super::node::{Key, Node, Pos, Value};

/// One thing wrong with a config, located in its file.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub pos: Pos,
    /// Key path such as `routes[0].match.path_prefix` (empty for the document itself).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.pos.line, self.pos.column, self.message)
        } else {
            write!(f, "{}:{}: {}: {}", self.pos.line, self.pos.column, self.path, self.message)
        }
    }
}

/// The problems found so far; decoding goes on after each so all are reported together.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.0.push(Problem { pos, path: path.to_owned(), message: message.into() });
    }
}

/// A decoded value that keeps where it was written, for checks made after decoding
/// (cross references, ambiguity) to point at the right line.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
    pub path: String,
}

/// `parent.key` for mapping keys, `parent[i]` for list items.
pub fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

pub fn item_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Types that can be read from a node. `None` means a problem was recorded.
pub trait Decode: Sized {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self>;
}

/// Reads the fields of one mapping: unknown keys are reported (with a near name when there is
/// one) as soon as the reader is made, missing required keys when they are asked for.
pub struct Fields<'a> {
    node: &'a Node,
    entries: &'a [(Key, Node)],
    path: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(node: &'a Node, path: &'a str, known: &[&str], problems: &mut Problems) -> Option<Self> {
        let entries: &[(Key, Node)] = match &node.value {
            Value::Map(entries) => entries,
            // An empty `key:` is YAML null: treat it as an empty mapping.
            Value::Null => &[],
            _ => {
                problems.add(node.pos, path, format!("expected a mapping, found {}", node.kind()));
                return None;
            }
        };
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                let message = match did_you_mean(&key.name, known) {
                    Some(near) => format!("unknown key `{}`; did you mean `{near}`?", key.name),
                    None => format!("unknown key `{}`; expected one of: {}", key.name, known.join(", ")),
                };
                problems.add(key.pos, &child_path(path, &key.name), message);
            }
        }
        Some(Fields { node, entries, path })
    }

    pub fn node(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, n)| n)
    }

    pub fn has(&self, key: &str) -> bool {
        self.node(key).is_some()
    }

    /// An optional field; a present `null` counts as absent.
    pub fn opt<T: Decode>(&self, key: &str, problems: &mut Problems) -> Option<T> {
        let node = self.node(key)?;
        if node.value == Value::Null {
            return None;
        }
        T::decode(node, &child_path(self.path, key), problems)
    }

    pub fn req<T: Decode>(&self, key: &str, problems: &mut Problems) -> Option<T> {
        match self.node(key) {
            Some(node) if node.value != Value::Null => T::decode(node, &child_path(self.path, key), problems),
            _ => {
                problems.add(self.node.pos, self.path, format!("missing required key `{key}`"));
                None
            }
        }
    }

    pub fn pos(&self) -> Pos {
        self.node.pos
    }

    pub fn path(&self) -> &str {
        self.path
    }
}

/// The closest known name within a small edit distance, for "did you mean".
pub fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

impl Decode for String {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            // `port: ${PORT}` or `secret: 1234` arrive as numbers; text fields take their spelling.
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => {
                problems.add(node.pos, path, format!("expected a string, found {}", node.kind()));
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                problems.add(node.pos, path, format!("expected true or false, found {}", node.kind()));
                None
            }
        }
    }
}

impl Decode for u32 {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        match node.value {
            Value::Int(i) if (0..=i64::from(u32::MAX)).contains(&i) => Some(i as u32),
            _ => {
                problems.add(node.pos, path, format!("expected a whole number ≥ 0, found {}", node.kind()));
                None
            }
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        let Value::Seq(items) = &node.value else {
            problems.add(node.pos, path, format!("expected a list, found {}", node.kind()));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match T::decode(item, &item_path(path, i), problems) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// A mapping from names to values, in file order (names are unique: the YAML parser rejects
/// duplicate keys).
impl<T: Decode> Decode for Vec<(Located<String>, T)> {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        let entries: &[(Key, Node)] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                problems.add(node.pos, path, format!("expected a mapping, found {}", node.kind()));
                return None;
            }
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (key, value) in entries {
            let p = child_path(path, &key.name);
            match T::decode(value, &p, problems) {
                Some(v) => out.push((Located { value: key.name.clone(), pos: key.pos, path: p }, v)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

impl<T: Decode> Decode for Located<T> {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        T::decode(node, path, problems).map(|value| Located { value, pos: node.pos, path: path.to_owned() })
    }
}

/// Parses a string node with `parse`, reporting `expected` when it fails.
pub fn parse_str<T>(
    node: &Node,
    path: &str,
    problems: &mut Problems,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let text = String::decode(node, path, problems)?;
    match parse(&text) {
        Ok(v) => Some(v),
        Err(why) => {
            problems.add(node.pos, path, format!("{why}; expected {expected}"));
            None
        }
    }
}

/// A value from a small vocabulary (`header:NAME`, `client_ip`, …) read by `parse`; anything
/// else is reported as `invalid WHAT "value"; expected EXPECTED`.
pub fn one_of<T>(
    v: &Located<String>,
    problems: &mut Problems,
    what: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let parsed = parse(&v.value);
    if parsed.is_none() {
        problems.add(v.pos, &v.path, format!("invalid {what} {:?}; expected {expected}", v.value));
    }
    parsed
}

/// HTTP methods, any case; each bad one is reported and skipped.
pub fn methods(list: &[Located<String>], problems: &mut Problems) -> Vec<http::Method> {
    list.iter()
        .filter_map(|m| match http::Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                problems.add(m.pos, &m.path, format!("invalid HTTP method {:?}", m.value));
                None
            }
        })
        .collect()
}

/// A duration written the humantime way: `250ms`, `5s`, `2m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Reads a duration, or says why it is not one.
    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e})"))
    }
}

impl Decode for Dur {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        parse_str(node, path, problems, "a duration such as 250ms, 5s or 2m", |s| Dur::parse(s).map(Dur))
    }
}

/// A size in bytes: a plain number, or with a unit `B`, `KiB`, `MiB`, `GiB` (also `KB`, `MB`,
/// `GB` as powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Decode for ByteSize {
    fn decode(node: &Node, path: &str, problems: &mut Problems) -> Option<Self> {
        if let Value::Int(i) = node.value
            && i >= 0
        {
            return Some(ByteSize(i as u64));
        }
        parse_str(node, path, problems, "a size such as 512KiB, 10MiB or 1GiB", ByteSize::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("10MiB"), Ok(ByteSize(10 << 20)));
        assert_eq!(ByteSize::parse("32KiB"), Ok(ByteSize(32 << 10)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert!(ByteSize::parse("10 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }

    #[test]
    fn near_names_are_suggested() {
        let known = ["listeners", "upstreams", "routes", "limits", "admin"];
        assert_eq!(did_you_mean("upstream", &known), Some("upstreams"));
        assert_eq!(did_you_mean("rootes", &known), Some("routes"));
        assert_eq!(did_you_mean("zzz", &known), None);
    }
}
