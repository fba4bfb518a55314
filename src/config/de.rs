//! A serde deserializer over the positioned YAML tree.
//!
//! Serde stops at the first error it sees, which would make users fix a config one mistake at a time. This
//! deserializer instead *records* unknown keys (with a did-you-mean taken from the field list serde hands
//! it) and goes on. A type error stops the value it is in, so [`decode`] reports it, then decodes again
//! with the bad value left out (as if it were not written), until no new error turns up: every bad value
//! of a node is reported in one pass. Every message carries line, column and key path.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::yaml::{Node, Value};

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    /// Key path, e.g. `nodes[2].max_tokens`.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn at(node: &Node, path: &str, message: impl Into<String>) -> Self {
        Diagnostic { line: node.line, col: node.col, path: path.to_string(), message: message.into() }
    }
}

/// Most type errors reported for one decoded node (each costs one more decoding pass).
const MAX_ERRORS_PER_NODE: usize = 32;

/// Decodes `node` as `T`. Problems go to `diagnostics`; `None` when the value could not be built (after
/// any type error, even when decoding without the bad values succeeded: that value is not what was written).
pub fn decode<T: DeserializeOwned>(node: &Node, path: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<T> {
    let mut found = Vec::new();
    // Key paths of the bad values found so far; later passes leave them out.
    let mut skipped: Vec<String> = Vec::new();
    let mut value = None;
    for _ in 0..MAX_ERRORS_PER_NODE {
        let recorded = RefCell::new(Vec::new());
        let deserializer = NodeDeserializer { node, path: path.to_string(), recorded: &recorded, skipped: &skipped };
        let result = T::deserialize(deserializer);
        found.extend(recorded.into_inner());
        match result {
            Ok(decoded) => {
                value = skipped.is_empty().then_some(decoded);
                break;
            }
            Err(error) => {
                let diagnostic = error.located.unwrap_or_else(|| Diagnostic::at(node, path, error.message));
                // A required setting missing because its bad value was left out: already reported.
                if !caused_by_skipping(&diagnostic, &skipped) {
                    found.push(diagnostic.clone());
                }
                match value_to_skip(&diagnostic.path, path, &skipped) {
                    Some(target) => skipped.push(target),
                    None => break,
                }
            }
        }
    }
    // Unknown keys are recorded outside-in, and again on every pass; report each once, in file order.
    found.sort();
    found.dedup();
    diagnostics.extend(found);
    value
}

/// The value to leave out in the next pass after an error at `at`: that value, or, when it was already left
/// out and its container still fails (it needs the value), the container. `None` once that would be the
/// decoded node itself: nothing more can be learnt.
fn value_to_skip(at: &str, root: &str, skipped: &[String]) -> Option<String> {
    let mut target = at;
    while skipped.iter().any(|path| path == target) {
        target = &target[..target.rfind(['.', '['])?];
    }
    (target.len() > root.len() && target.starts_with(root)).then(|| target.to_string())
}

/// True for serde's "missing field `x`" at a map whose `x` was left out after an error.
fn caused_by_skipping(diagnostic: &Diagnostic, skipped: &[String]) -> bool {
    let Some(rest) = diagnostic.message.strip_prefix("missing field `") else { return false };
    let field = rest.split('`').next().unwrap_or("");
    skipped.contains(&join(&diagnostic.path, field))
}

/// The best match for `unknown` among `candidates`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(unknown: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `unknown key `x``, plus a suggestion when one is close.
pub fn unknown_message(what: &str, unknown: &str, candidates: &[&str]) -> String {
    match did_you_mean(unknown, candidates.iter().copied()) {
        Some(best) => format!("unknown {what} `{unknown}`, did you mean `{best}`?"),
        None if candidates.is_empty() => format!("unknown {what} `{unknown}`"),
        None => format!("unknown {what} `{unknown}` (expected one of: {})", candidates.join(", ")),
    }
}

#[derive(Debug)]
pub struct DeError {
    message: String,
    located: Option<Diagnostic>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { message: msg.to_string(), located: None }
    }
}

impl DeError {
    fn locate(mut self, node: &Node, path: &str) -> Self {
        if self.located.is_none() {
            self.located = Some(Diagnostic::at(node, path, self.message.clone()));
        }
        self
    }
}

struct NodeDeserializer<'a> {
    node: &'a Node,
    path: String,
    recorded: &'a RefCell<Vec<Diagnostic>>,
    /// Key paths of values to leave out, as if they were not written (they had errors in an earlier pass).
    skipped: &'a [String],
}

impl<'a> NodeDeserializer<'a> {
    fn child(&self, node: &'a Node, path: String) -> Self {
        NodeDeserializer { node, path, recorded: self.recorded, skipped: self.skipped }
    }

    fn error(&self, message: impl Into<String>) -> DeError {
        let message = message.into();
        DeError { located: Some(Diagnostic::at(self.node, &self.path, message.clone())), message }
    }

    fn expected(&self, what: &str) -> DeError {
        self.error(format!("expected {what}, found {}", self.node.describe()))
    }

    fn scalar(&self, what: &str) -> Result<&'a str, DeError> {
        match &self.node.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.expected(what)),
        }
    }

    fn plain_scalar(&self, what: &str) -> Result<&'a str, DeError> {
        match &self.node.value {
            Value::Scalar { text, plain: true } => Ok(text),
            _ => Err(self.expected(what)),
        }
    }

    fn integer(&self) -> Result<i128, DeError> {
        let text = self.plain_scalar("an integer")?;
        parse_integer(text).ok_or_else(|| {
            if text.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit()) {
                self.error(format!("number `{text}` is too large"))
            } else {
                self.expected("an integer")
            }
        })
    }

    fn located<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|e| e.locate(self.node, &self.path))
    }
}

fn parse_integer(text: &str) -> Option<i128> {
    let cleaned = text.replace('_', "");
    let (negative, digits) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i128>().ok()?
    };
    Some(if negative { -value } else { value })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ => {
            let cleaned = text.replace('_', "");
            let looks_numeric = cleaned.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            if looks_numeric { cleaned.parse().ok() } else { None }
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

macro_rules! integer_method {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let value = self.integer()?;
            match <$ty>::try_from(value) {
                Ok(v) => self.located(visitor.$visit(v)),
                Err(_) => Err(self.error(format!("number {value} is out of range for {}", stringify!($ty)))),
            }
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDeserializer<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, plain: false } => visitor.visit_str(text),
            Value::Scalar { text, plain: true } => {
                if let Some(b) = parse_bool(text) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_integer(text) {
                    match i64::try_from(i) {
                        Ok(v) => visitor.visit_i64(v),
                        Err(_) => match u64::try_from(i) {
                            Ok(v) => visitor.visit_u64(v),
                            Err(_) => return Err(self.error(format!("number `{text}` is too large"))),
                        },
                    }
                } else if let Some(f) = parse_float(text) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
            Value::Seq(_) => return self.deserialize_seq(visitor),
            Value::Map(_) => return self.deserialize_map(visitor),
        };
        self.located(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.plain_scalar("true or false")?;
        match parse_bool(text) {
            Some(b) => self.located(visitor.visit_bool(b)),
            None => Err(self.expected("true or false")),
        }
    }

    integer_method!(deserialize_i8, visit_i8, i8);
    integer_method!(deserialize_i16, visit_i16, i16);
    integer_method!(deserialize_i32, visit_i32, i32);
    integer_method!(deserialize_i64, visit_i64, i64);
    integer_method!(deserialize_u8, visit_u8, u8);
    integer_method!(deserialize_u16, visit_u16, u16);
    integer_method!(deserialize_u32, visit_u32, u32);
    integer_method!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.plain_scalar("a number")?;
        match parse_float(text) {
            Some(f) if f.is_finite() || text.contains("inf") || text.contains("nan") || text.contains("NaN") => {
                self.located(visitor.visit_f64(f))
            }
            _ => Err(self.expected("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.scalar("a string")?;
        self.located(visitor.visit_str(text))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => self.located(visitor.visit_none()),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => self.located(visitor.visit_unit()),
            _ => Err(self.expected("nothing (null)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => {
                let access = SeqAccess { parent: &self, items: items.iter().enumerate() };
                let result = visitor.visit_seq(access);
                self.located(result)
            }
            _ => Err(self.expected("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_entries(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.visit_entries(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (tag_node, value) = match &self.node.value {
            Value::Scalar { .. } => (self.node, None),
            Value::Map(entries) if entries.len() == 1 => (&entries[0].0, Some(&entries[0].1)),
            _ => {
                return Err(self.expected(&format!(
                    "one of {} (a name, or a map with one of them as its only key)",
                    variants.join(", ")
                )));
            }
        };
        let Some(tag) = tag_node.as_str() else {
            return Err(self.expected("a name"));
        };
        if !variants.contains(&tag) {
            return Err(self.child(tag_node, self.path.clone()).error(unknown_message("variant", tag, variants)));
        }
        let path = match value {
            Some(_) => format!("{}.{tag}", self.path),
            None => self.path.clone(),
        };
        let result = visitor.visit_enum(EnumAccess { tag, value: value.map(|v| self.child(v, path)), node: self.node });
        self.located(result)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

impl<'a> NodeDeserializer<'a> {
    fn visit_entries<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries: &[(Node, Node)] = match &self.node.value {
            Value::Map(entries) => entries,
            Value::Null if fields.is_some() => &[],
            _ => return Err(self.expected("a map")),
        };
        let mut kept = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.recorded.borrow_mut().push(Diagnostic::at(
                    key,
                    &self.path,
                    format!("keys must be names, found {}", key.describe()),
                ));
                continue;
            };
            let path = join(&self.path, name);
            if !seen.insert(name) {
                self.recorded.borrow_mut().push(Diagnostic::at(key, &path, format!("duplicate key `{name}`")));
                continue;
            }
            if let Some(fields) = fields
                && !fields.is_empty()
                && !fields.contains(&name)
            {
                self.recorded.borrow_mut().push(Diagnostic::at(key, &path, unknown_message("key", name, fields)));
                continue;
            }
            if self.skipped.contains(&path) {
                continue;
            }
            kept.push((key, value, path));
        }
        let result = visitor.visit_map(MapAccess { parent: &self, entries: kept.into_iter(), pending: None });
        self.located(result)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

struct SeqAccess<'p, 'a, I> {
    parent: &'p NodeDeserializer<'a>,
    items: I,
}

impl<'de, 'p, 'a, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'de> for SeqAccess<'p, 'a, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        for (index, node) in self.items.by_ref() {
            let path = format!("{}[{index}]", self.parent.path);
            if self.parent.skipped.contains(&path) {
                continue;
            }
            return seed.deserialize(self.parent.child(node, path)).map(Some);
        }
        Ok(None)
    }
}

struct MapAccess<'p, 'a, I> {
    parent: &'p NodeDeserializer<'a>,
    entries: I,
    pending: Option<(&'a Node, String)>,
}

impl<'de, 'p, 'a, I: Iterator<Item = (&'a Node, &'a Node, String)>> de::MapAccess<'de> for MapAccess<'p, 'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value, path)) => {
                let key_de = self.parent.child(key, path.clone());
                self.pending = Some((value, path));
                seed.deserialize(key_de).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.pending.take() {
            Some((value, path)) => seed.deserialize(self.parent.child(value, path)),
            None => Err(self.parent.error("internal: value requested before key")),
        }
    }
}

struct EnumAccess<'a> {
    tag: &'a str,
    value: Option<NodeDeserializer<'a>>,
    node: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), DeError> {
        let tag: de::value::StrDeserializer<'_, DeError> = self.tag.into_deserializer();
        let variant = seed.deserialize(tag)?;
        Ok((variant, VariantAccess { value: self.value, node: self.node }))
    }
}

struct VariantAccess<'a> {
    value: Option<NodeDeserializer<'a>>,
    node: &'a Node,
}

impl<'a> VariantAccess<'a> {
    fn needs_value(self, what: &str) -> Result<NodeDeserializer<'a>, DeError> {
        self.value.ok_or_else(|| DeError {
            message: format!("this variant needs {what}"),
            located: Some(Diagnostic::at(self.node, "", format!("this variant needs {what}"))),
        })
    }
}

impl<'de, 'a> de::VariantAccess<'de> for VariantAccess<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            None => Ok(()),
            Some(value) if value.node.value == Value::Null => Ok(()),
            Some(value) => Err(value.error("this variant takes no settings")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self.needs_value("a value")?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self.needs_value("a list")?, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        self.needs_value("settings")?.visit_entries(Some(fields), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        size: u32,
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Circle,
        Square { side: f64 },
        Many(Vec<Shape>),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        shapes: Vec<Shape>,
        #[serde(default)]
        flag: bool,
    }

    fn run<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Diagnostic>) {
        let node = parse(text).unwrap();
        let mut diags = Vec::new();
        let value = decode(&node, "", &mut diags);
        (value, diags)
    }

    #[test]
    fn decodes_structs_enums_and_options() {
        let (value, diags) = run::<Outer>(
            "inner: {size: 3}\nshapes:\n  - circle\n  - square: {side: 2.5}\n  - many: [circle]\nflag: true\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let value = value.unwrap();
        assert_eq!(value.inner, Inner { size: 3, name: None });
        assert_eq!(value.shapes, vec![Shape::Circle, Shape::Square { side: 2.5 }, Shape::Many(vec![Shape::Circle])]);
        assert!(value.flag);
    }

    #[test]
    fn records_unknown_keys_with_suggestion_and_keeps_going() {
        let (value, diags) = run::<Outer>("inner: {size: 3, nmae: x}\nshapes: []\nflga: true\n");
        assert!(value.is_some(), "unknown keys alone do not stop decoding");
        assert_eq!(diags.len(), 2);
        assert_eq!(diags[0].path, "inner.nmae");
        assert_eq!(diags[0].message, "unknown key `nmae`, did you mean `name`?");
        assert_eq!((diags[1].line, diags[1].path.as_str()), (3, "flga"));
    }

    #[test]
    fn type_errors_name_line_and_path() {
        let (value, diags) = run::<Outer>("inner:\n  size: many\nshapes: []\n");
        assert!(value.is_none());
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].col), (2, 9));
        assert_eq!(diags[0].path, "inner.size");
        assert_eq!(diags[0].message, "expected an integer, found `many`");
    }

    #[test]
    fn every_bad_value_of_a_node_is_reported_in_one_pass() {
        let (value, diags) = run::<Outer>(
            "inner: {size: lots, name: [x]}\nshapes: [circle, {square: {side: wide}}, hexagon]\nflag: maybe\nextra: 1\n",
        );
        assert!(value.is_none());
        let found: Vec<(usize, &str, &str)> =
            diags.iter().map(|d| (d.line, d.path.as_str(), d.message.as_str())).collect();
        assert_eq!(
            found,
            [
                (1, "inner.size", "expected an integer, found `lots`"),
                (1, "inner.name", "expected a string, found a list"),
                (2, "shapes[1].square.side", "expected a number, found `wide`"),
                (2, "shapes[2]", "unknown variant `hexagon` (expected one of: circle, square, many)"),
                (3, "flag", "expected true or false, found `maybe`"),
                (4, "extra", "unknown key `extra` (expected one of: inner, shapes, flag)"),
            ]
        );
    }

    #[test]
    fn a_required_setting_with_a_bad_value_is_not_also_missing() {
        let (_, diags) = run::<Outer>("inner: {size: -1}\nshapes: []\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].path, "inner.size");
        assert_eq!(diags[0].message, "number -1 is out of range for u32");
    }

    #[test]
    fn out_of_range_and_huge_numbers_are_errors() {
        let (_, diags) = run::<Inner>("size: -1\n");
        assert!(diags[0].message.contains("out of range"), "{diags:?}");
        let (_, diags) = run::<Inner>("size: 99999999999999999999999999999999999999999999\n");
        assert!(diags[0].message.contains("too large"), "{diags:?}");
    }

    #[test]
    fn missing_fields_and_unknown_variants_are_located() {
        let (_, diags) = run::<Outer>("inner: {}\nshapes: []\n");
        assert_eq!(diags[0].path, "inner");
        assert!(diags[0].message.contains("missing field `size`"));
        let (_, diags) = run::<Outer>("inner: {size: 1}\nshapes: [cirlce]\n");
        assert_eq!(diags[0].path, "shapes[0]");
        assert_eq!(diags[0].message, "unknown variant `cirlce`, did you mean `circle`?");
    }

    #[test]
    fn quoted_numbers_are_strings() {
        let (_, diags) = run::<Inner>("size: \"3\"\n");
        assert_eq!(diags[0].message, "expected an integer, found string \"3\"");
    }
}
