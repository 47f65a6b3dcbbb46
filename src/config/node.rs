//! A YAML document as a tree of nodes that each remember where they were written.
//!
//! serde-saphyr does the parsing (panic-free, with `${VAR}` interpolation); this tree lets the
//! schema decoder report *every* problem with its line and column instead of stopping at the
//! first one, as a derived `Deserialize` would.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// 1-based line and column of a node in its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// What kind of YAML value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos { line: s.referenced.line() as u32, column: s.referenced.column() as u32 }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        let pos = pos_of(&spanned);
        Ok(Node { value: spanned.value, pos })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v).map(Value::Int).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(node) = seq.next_element::<Node>()? {
            items.push(node);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let node = map.next_value::<Node>()?;
            let pos = pos_of(&key);
            entries.push((Key { name: key.value.0, pos }, node));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key: YAML allows any scalar as a key; the config only uses text, so numbers and
/// booleans are read back as the text they were written as.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            Value::Null => Ok(KeyText(String::new())),
            Value::Seq(_) | Value::Map(_) => Err(de::Error::custom("a mapping key must be text")),
        }
    }
}

/// A YAML syntax or interpolation error, with where it happened when the parser knows.
#[derive(Debug)]
pub struct ParseError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses YAML text into a node tree, substituting `${VAR}` and `${VAR:-default}` from `env`.
pub fn parse(text: &str, env: std::collections::HashMap<String, String>) -> Result<Node, ParseError> {
    // YAML 1.2 Core booleans only: in YAML 1.1 `on`, `off`, `yes`, `no` are booleans, which
    // would turn the documented key `retry.on` into `true` (the "Norway problem").
    let options = serde_saphyr::options! {
        property_syntax: serde_saphyr::PropertySyntax::Braced,
        strict_booleans: true,
    }
    .with_properties(env);
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line() as u32, column: l.column() as u32 });
        let message = e.without_snippet().to_string();
        ParseError { pos, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_remember_positions() {
        let n = parse("a:\n  b: 5\n  c: [x, 'y']\n", Default::default()).expect("valid yaml");
        let Value::Map(top) = &n.value else { panic!("map") };
        assert_eq!(top[0].0.name, "a");
        assert_eq!(top[0].0.pos, Pos { line: 1, column: 1 });
        let Value::Map(inner) = &top[0].1.value else { panic!("map") };
        assert_eq!(inner[0].1.value, Value::Int(5));
        assert_eq!(inner[0].1.pos, Pos { line: 2, column: 6 });
        let Value::Seq(items) = &inner[1].1.value else { panic!("seq") };
        assert_eq!(items[1].pos, Pos { line: 3, column: 10 });
    }

    #[test]
    fn env_is_interpolated_with_defaults() {
        let env = [("PORT".to_string(), "9000".to_string())].into_iter().collect();
        let n = parse("a: ${PORT}\nb: ${NOPE:-x}\n", env).expect("valid yaml");
        let Value::Map(top) = &n.value else { panic!("map") };
        assert_eq!(top[0].1.value, Value::Int(9000));
        assert_eq!(top[1].1.value, Value::Str("x".into()));
    }

    #[test]
    fn unset_variable_is_an_error_with_position() {
        let e = parse("a: 1\nb: ${FERROWAY_SURELY_UNSET}\n", Default::default()).expect_err("unset");
        assert_eq!(e.pos.map(|p| p.line), Some(2));
    }

    #[test]
    fn only_yaml_1_2_spellings_are_booleans() {
        let n = parse("on: [connect_failure]\noutput: off\nflag: yes\nreal: true\n", Default::default()).expect("yaml");
        let Value::Map(top) = &n.value else { panic!("map") };
        assert_eq!(top[0].0.name, "on");
        assert_eq!(top[1].1.value, Value::Str("off".into()));
        assert_eq!(top[2].1.value, Value::Str("yes".into()));
        assert_eq!(top[3].1.value, Value::Bool(true));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3\n", Default::default()).expect_err("bad");
        assert!(e.pos.is_some(), "{e:?}");
    }
}
