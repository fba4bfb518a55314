//! Structured output for local models. A JSON schema becomes a character-level validator that the sampler
//! consults before it takes a token, so a reply always parses as JSON of the requested shape, as an API's
//! `response_format: json_schema` does. Small models rarely write valid JSON unaided; with this they do.
//!
//! The schema subset covers what structured output is used for: objects (keys written in the schema's
//! order, all of them), arrays, strings (with `enum`), numbers, integers, booleans, null, and "anything"
//! (`{}`, `anyOf`, ...) as free JSON. Whitespace between tokens is allowed but runs of it are capped, so a
//! model cannot stall in indentation.

use serde_json::Value as Json;

/// Consecutive whitespace characters allowed outside strings.
const MAX_WHITESPACE_RUN: u8 = 12;

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Any,
    String {
        options: Option<Vec<String>>,
    },
    Number {
        integer: bool,
    },
    Boolean,
    Null,
    /// Items' shape (an index into the table).
    Array(usize),
    /// Keys (JSON-escaped) and each value's shape, written in this order.
    Object(Vec<(String, usize)>),
    /// An object with any keys.
    AnyObject,
}

/// A compiled schema: the shapes as a table, the root first.
#[derive(Debug, Clone)]
pub struct Guide {
    shapes: Vec<Shape>,
    /// The fewest characters that write a value of each shape (`""`, `0`, `{"key":""}`, ...).
    shortest: Vec<usize>,
}

impl Guide {
    /// Compiles `schema`; keywords outside the subset make that part free JSON.
    pub fn from_schema(schema: &Json) -> Guide {
        let mut guide = Guide { shapes: Vec::new(), shortest: Vec::new() };
        guide.compile(schema, 0);
        // A shape's children come after it in the table, so walking backwards sees them first.
        guide.shortest = vec![0; guide.shapes.len()];
        for index in (0..guide.shapes.len()).rev() {
            guide.shortest[index] = match &guide.shapes[index] {
                Shape::Any | Shape::Number { .. } => 1,
                Shape::String { options: None } | Shape::Array(_) | Shape::AnyObject => 2,
                Shape::String { options: Some(options) } => {
                    2 + options.iter().map(|o| o.chars().count()).min().unwrap_or(0)
                }
                Shape::Boolean | Shape::Null => 4,
                Shape::Object(keys) => 1 + (0..keys.len()).map(|k| 1 + guide.pair_length(keys, k)).sum::<usize>(),
            };
        }
        guide
    }

    /// The fewest characters that write a value of shape `index` (`usize::MAX`: any JSON).
    fn shortest(&self, index: usize) -> usize {
        self.shortest.get(index).copied().unwrap_or(1)
    }

    /// The fewest characters of key `k`'s `"key":value`.
    fn pair_length(&self, keys: &[(String, usize)], k: usize) -> usize {
        keys[k].0.chars().count() + 3 + self.shortest(keys[k].1)
    }

    /// The fewest characters that close an object after key `k`'s value: the later pairs and `}`.
    fn object_tail(&self, keys: &[(String, usize)], k: usize) -> usize {
        1 + (k + 1..keys.len()).map(|j| 1 + self.pair_length(keys, j)).sum::<usize>()
    }

    fn compile(&mut self, schema: &Json, depth: usize) -> usize {
        let index = self.shapes.len();
        self.shapes.push(Shape::Any);
        if depth > 32 {
            return index;
        }
        let shape = match schema {
            Json::Object(map) => {
                if let Some(Json::Array(options)) = map.get("enum") {
                    let strings: Option<Vec<String>> = options.iter().map(|o| o.as_str().map(str::to_string)).collect();
                    match strings {
                        Some(strings) if !strings.is_empty() => Shape::String { options: Some(strings) },
                        _ => Shape::Any,
                    }
                } else {
                    let kind = match map.get("type") {
                        Some(Json::String(kind)) => Some(kind.as_str()),
                        // `["string", "null"]`: the first type that is not null.
                        Some(Json::Array(kinds)) => {
                            kinds.iter().filter_map(Json::as_str).find(|k| *k != "null").or(Some("null"))
                        }
                        _ => None,
                    };
                    match kind {
                        Some("string") => Shape::String { options: None },
                        Some("number") => Shape::Number { integer: false },
                        Some("integer") => Shape::Number { integer: true },
                        Some("boolean") => Shape::Boolean,
                        Some("null") => Shape::Null,
                        Some("array") => {
                            let items = map.get("items").cloned().unwrap_or(Json::Object(Default::default()));
                            Shape::Array(self.compile(&items, depth + 1))
                        }
                        Some("object") | None if map.get("properties").is_some_and(|p| p.is_object()) => {
                            let properties = map["properties"].as_object().expect("checked above");
                            if properties.is_empty() {
                                Shape::AnyObject
                            } else {
                                let mut keys = Vec::new();
                                for (key, value) in properties {
                                    let escaped = serde_json::to_string(key).expect("a string serializes");
                                    let child = self.compile(value, depth + 1);
                                    keys.push((escaped[1..escaped.len() - 1].to_string(), child));
                                }
                                Shape::Object(keys)
                            }
                        }
                        Some("object") => Shape::AnyObject,
                        _ => Shape::Any,
                    }
                }
            }
            _ => Shape::Any,
        };
        self.shapes[index] = shape;
        index
    }

    /// The state before the first character.
    pub fn start(&self) -> GuideState {
        GuideState { stack: vec![Frame::Value(0)], whitespace: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Number {
    Sign,
    Zero,
    Int,
    Dot,
    Fraction,
    Exponent,
    ExponentSign,
    ExponentDigits,
}

impl Number {
    fn can_end(&self) -> bool {
        matches!(self, Number::Zero | Number::Int | Number::Fraction | Number::ExponentDigits)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    /// A value of this shape comes next.
    Value(usize),
    /// These characters must come next, in order (a key, `true`, ...).
    Literal(Vec<char>, usize),
    /// Inside a string: what was written (kept only for enums) and the escape state.
    Str {
        options: Option<usize>,
        written: String,
        escape: Escape,
    },
    Number {
        integer: bool,
        at: Number,
    },
    /// A fixed-key object: the key index and where within that key-value pair we are.
    Object {
        shape: usize,
        key: usize,
        at: Pair,
    },
    AnyObject {
        at: Pair,
    },
    /// An array: after `[` (`first`), after an item, or after a comma.
    Array {
        items: usize,
        at: Item,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Escape {
    None,
    Backslash,
    /// Hex digits still due after `\u`.
    Unicode(u8),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pair {
    /// Just after `{` of an object with any keys, which may also close at once.
    Open,
    BeforeKey,
    AfterKey,
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    First,
    AfterValue,
    AfterComma,
}

/// Where a reply is within the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct GuideState {
    stack: Vec<Frame>,
    whitespace: u8,
}

impl GuideState {
    /// True once a whole value was written (a bare number at the root also counts, as it may end here).
    pub fn is_complete(&self) -> bool {
        match self.stack.as_slice() {
            [] => true,
            [Frame::Number { at, .. }] => at.can_end(),
            _ => false,
        }
    }

    /// The fewest characters that still complete the value from here. Each is a token at most (vocabularies
    /// hold every ASCII character alone), so a reply whose closing length never exceeds its tokens left
    /// always ends as valid JSON inside its token budget.
    pub fn closing_length(&self, guide: &Guide) -> usize {
        self.stack.iter().map(|frame| frame_closing_length(guide, frame)).sum()
    }

    /// The state after `text`, or `None` when `text` cannot continue a valid reply. Empty text (control
    /// tokens) never can.
    pub fn after(&self, guide: &Guide, text: &str) -> Option<GuideState> {
        if text.is_empty() {
            return None;
        }
        let mut next = self.clone();
        for c in text.chars() {
            if !next.push(guide, c) {
                return None;
            }
        }
        Some(next)
    }

    fn space(&mut self, c: char) -> Option<bool> {
        if matches!(c, ' ' | '\n' | '\t' | '\r') {
            self.whitespace += 1;
            return Some(self.whitespace <= MAX_WHITESPACE_RUN);
        }
        self.whitespace = 0;
        None
    }

    fn push(&mut self, guide: &Guide, c: char) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else { return false };
            match top {
                Frame::Literal(chars, at) => {
                    if chars[*at] != c {
                        return false;
                    }
                    *at += 1;
                    if *at == chars.len() {
                        self.stack.pop();
                    }
                    return true;
                }
                Frame::Str { options, written, escape } => {
                    match *escape {
                        Escape::Backslash => {
                            *escape = match c {
                                'u' => Escape::Unicode(4),
                                '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Escape::None,
                                _ => return false,
                            };
                        }
                        Escape::Unicode(left) => {
                            if !c.is_ascii_hexdigit() {
                                return false;
                            }
                            *escape = if left > 1 { Escape::Unicode(left - 1) } else { Escape::None };
                        }
                        Escape::None => match c {
                            '"' => {
                                let done = match options {
                                    Some(shape) => enum_options(guide, *shape).iter().any(|o| o == written),
                                    None => true,
                                };
                                if done {
                                    self.stack.pop();
                                }
                                return done;
                            }
                            '\\' if options.is_none() => *escape = Escape::Backslash,
                            c if (c as u32) < 0x20 => return false,
                            c => {
                                if let Some(shape) = options {
                                    written.push(c);
                                    if !enum_options(guide, *shape).iter().any(|o| o.starts_with(written.as_str())) {
                                        return false;
                                    }
                                }
                            }
                        },
                    }
                    return true;
                }
                Frame::Number { integer, at } => {
                    let integer = *integer;
                    let next = match (&at, c) {
                        (Number::Sign, '0') => Some(Number::Zero),
                        (Number::Sign, '1'..='9') => Some(Number::Int),
                        (Number::Int, '0'..='9') => Some(Number::Int),
                        (Number::Zero | Number::Int, '.') if !integer => Some(Number::Dot),
                        (Number::Zero | Number::Int | Number::Fraction, 'e' | 'E') if !integer => {
                            Some(Number::Exponent)
                        }
                        (Number::Dot | Number::Fraction, '0'..='9') => Some(Number::Fraction),
                        (Number::Exponent, '+' | '-') => Some(Number::ExponentSign),
                        (Number::Exponent | Number::ExponentSign | Number::ExponentDigits, '0'..='9') => {
                            Some(Number::ExponentDigits)
                        }
                        _ => None,
                    };
                    match next {
                        Some(next) => {
                            *at = next;
                            return true;
                        }
                        // The number ended: the character belongs to what holds it.
                        None if at.can_end() => {
                            self.stack.pop();
                            continue;
                        }
                        None => return false,
                    }
                }
                Frame::Value(shape) => {
                    let shape = *shape;
                    if let Some(ok) = self.space(c) {
                        return ok;
                    }
                    self.stack.pop();
                    return self.open(guide, shape, c);
                }
                Frame::Object { shape, key, at } => {
                    let (shape, key_index, pair) = (*shape, *key, *at);
                    if let Some(ok) = self.space(c) {
                        return ok;
                    }
                    let Shape::Object(keys) = &guide.shapes[shape] else { return false };
                    match (pair, c) {
                        (Pair::BeforeKey, '"') => {
                            let mut rest: Vec<char> = keys[key_index].0.chars().collect();
                            rest.push('"');
                            self.set_pair(Pair::AfterKey);
                            self.stack.push(Frame::Literal(rest, 0));
                        }
                        (Pair::AfterKey, ':') => {
                            self.set_pair(Pair::AfterValue);
                            self.stack.push(Frame::Value(keys[key_index].1));
                        }
                        (Pair::AfterValue, ',') if key_index + 1 < keys.len() => {
                            if let Some(Frame::Object { key, at, .. }) = self.stack.last_mut() {
                                *key += 1;
                                *at = Pair::BeforeKey;
                            }
                        }
                        (Pair::AfterValue, '}') if key_index + 1 == keys.len() => {
                            self.stack.pop();
                        }
                        _ => return false,
                    }
                    return true;
                }
                Frame::AnyObject { at } => {
                    let pair = *at;
                    if let Some(ok) = self.space(c) {
                        return ok;
                    }
                    match (pair, c) {
                        (Pair::Open, '}') => {
                            self.stack.pop();
                        }
                        (Pair::Open | Pair::BeforeKey, '"') => {
                            self.set_pair(Pair::AfterKey);
                            self.stack.push(Frame::Str { options: None, written: String::new(), escape: Escape::None });
                        }
                        (Pair::AfterKey, ':') => {
                            self.set_pair(Pair::AfterValue);
                            self.stack.push(Frame::Value(usize::MAX));
                        }
                        (Pair::AfterValue, ',') => self.set_pair(Pair::BeforeKey),
                        (Pair::AfterValue, '}') => {
                            self.stack.pop();
                        }
                        _ => return false,
                    }
                    return true;
                }
                Frame::Array { items, at } => {
                    let (items, item) = (*items, *at);
                    if let Some(ok) = self.space(c) {
                        return ok;
                    }
                    match (item, c) {
                        (Item::First | Item::AfterValue, ']') => {
                            self.stack.pop();
                            return true;
                        }
                        (Item::AfterValue, ',') => {
                            self.set_item(Item::AfterComma);
                            return true;
                        }
                        (Item::First | Item::AfterComma, _) => {
                            self.set_item(Item::AfterValue);
                            self.stack.push(Frame::Value(items));
                            // The character opens the item.
                            continue;
                        }
                        _ => return false,
                    }
                }
            }
        }
    }

    fn set_item(&mut self, item: Item) {
        if let Some(Frame::Array { at, .. }) = self.stack.last_mut() {
            *at = item;
        }
    }

    fn set_pair(&mut self, pair: Pair) {
        match self.stack.last_mut() {
            Some(Frame::Object { at, .. } | Frame::AnyObject { at }) => *at = pair,
            _ => unreachable!("only called on object frames"),
        }
    }

    /// Opens a value of shape `index` (`usize::MAX`: any JSON) with its first character.
    fn open(&mut self, guide: &Guide, index: usize, c: char) -> bool {
        let any = Shape::Any;
        let shape = guide.shapes.get(index).unwrap_or(&any);
        let literal = |rest: &str| Frame::Literal(rest.chars().collect(), 0);
        let text = |options: Option<usize>| Frame::Str { options, written: String::new(), escape: Escape::None };
        let number = |integer: bool, at: Number| Frame::Number { integer, at };
        let frame = match (shape, c) {
            (Shape::String { options }, '"') => text(options.as_ref().map(|_| index)),
            (Shape::Any, '"') => text(None),
            (Shape::Number { integer }, '-') => number(*integer, Number::Sign),
            (Shape::Number { integer }, '0') => number(*integer, Number::Zero),
            (Shape::Number { integer }, '1'..='9') => number(*integer, Number::Int),
            (Shape::Any, '-') => number(false, Number::Sign),
            (Shape::Any, '0') => number(false, Number::Zero),
            (Shape::Any, '1'..='9') => number(false, Number::Int),
            (Shape::Boolean | Shape::Any, 't') => literal("rue"),
            (Shape::Boolean | Shape::Any, 'f') => literal("alse"),
            (Shape::Null | Shape::Any, 'n') => literal("ull"),
            (Shape::Array(items), '[') => Frame::Array { items: *items, at: Item::First },
            (Shape::Any, '[') => Frame::Array { items: usize::MAX, at: Item::First },
            (Shape::Object(_), '{') => Frame::Object { shape: index, key: 0, at: Pair::BeforeKey },
            (Shape::AnyObject | Shape::Any, '{') => Frame::AnyObject { at: Pair::Open },
            _ => return false,
        };
        self.stack.push(frame);
        true
    }
}

/// The characters that finish `frame` alone; the frames below it count their own.
fn frame_closing_length(guide: &Guide, frame: &Frame) -> usize {
    match frame {
        Frame::Value(shape) => guide.shortest(*shape),
        Frame::Literal(chars, at) => chars.len() - at,
        Frame::Str { options, written, escape } => match escape {
            // One escape character, then the closing quote.
            Escape::Backslash => 2,
            Escape::Unicode(left) => *left as usize + 1,
            Escape::None => match options {
                Some(shape) => {
                    let written_length = written.chars().count();
                    let rest = enum_options(guide, *shape)
                        .iter()
                        .filter(|o| o.starts_with(written.as_str()))
                        .map(|o| o.chars().count() - written_length)
                        .min()
                        .unwrap_or(0);
                    rest + 1
                }
                None => 1,
            },
        },
        Frame::Number { at, .. } => usize::from(!at.can_end()),
        Frame::Object { shape, key, at } => {
            let Shape::Object(keys) = &guide.shapes[*shape] else { return 0 };
            let tail = guide.object_tail(keys, *key);
            match at {
                Pair::Open | Pair::BeforeKey => guide.pair_length(keys, *key) + tail,
                // The key's literal above counts its own rest; then `:` and the value.
                Pair::AfterKey => 1 + guide.shortest(keys[*key].1) + tail,
                Pair::AfterValue => tail,
            }
        }
        Frame::AnyObject { at } => match at {
            Pair::Open | Pair::AfterValue => 1,
            // After a comma: `"":0}`.
            Pair::BeforeKey => 5,
            // The key's string above counts its quote; then `:0}`.
            Pair::AfterKey => 3,
        },
        Frame::Array { items, at } => match at {
            Item::First | Item::AfterValue => 1,
            Item::AfterComma => guide.shortest(*items) + 1,
        },
    }
}

fn enum_options(guide: &Guide, shape: usize) -> &[String] {
    match guide.shapes.get(shape) {
        Some(Shape::String { options: Some(options) }) => options,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The state after `text`, fed one character at a time as single-character tokens would be.
    fn feed(guide: &Guide, text: &str) -> Option<GuideState> {
        let mut state = guide.start();
        for c in text.chars() {
            state = state.after(guide, &c.to_string())?;
        }
        Some(state)
    }

    fn complete(guide: &Guide, text: &str) -> bool {
        feed(guide, text).is_some_and(|s| s.is_complete())
    }

    fn qa() -> Guide {
        Guide::from_schema(&json!({"type": "object", "properties": {"question": {"type": "string"},
            "answer": {"type": "string"}}, "required": ["question", "answer"]}))
    }

    #[test]
    fn an_object_is_written_with_its_keys_in_order() {
        let guide = qa();
        assert!(complete(&guide, r#"{"question": "Why \"this\"?", "answer": "Because \u00e9."}"#));
        assert!(complete(&guide, "{\n  \"question\":\"a\",\n  \"answer\":\"b\"\n}"));
        assert!(feed(&guide, r#"{"answer""#).is_none(), "keys come in the schema's order");
        assert!(feed(&guide, r#"{"question": "a"}"#).is_none(), "every key is written");
        assert!(feed(&guide, r#"{"question": "a", "answer": "b", "#).is_none(), "no extra keys");
        assert!(feed(&guide, "{\"question\": \"two\nlines\"").is_none(), "raw control characters are not JSON");
        assert!(feed(&guide, r#"{"question": "a\q"#).is_none(), "unknown escape");
        assert!(!complete(&guide, r#"{"question": "a", "answer": "b""#));
        assert!(feed(&guide, r#"{"question": "a", "answer": "b"} "#).is_none(), "nothing after the value");
        assert!(feed(&guide, "Sure! {").is_none(), "no prose before the value");
    }

    #[test]
    fn multi_character_tokens_are_checked_whole() {
        let guide = qa();
        let state = guide.start().after(&guide, "{\"").unwrap();
        assert!(state.after(&guide, "question\": \"").is_some());
        assert!(state.after(&guide, "answer").is_none());
        assert!(state.after(&guide, "").is_none(), "control tokens decode to nothing");
    }

    #[test]
    fn enums_numbers_booleans_and_arrays() {
        let guide = Guide::from_schema(&json!({"type": "object", "properties": {
            "verdict": {"enum": ["yes", "no"]}, "score": {"type": "integer"}, "weight": {"type": "number"},
            "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": ["string", "null"]}}}));
        assert!(complete(
            &guide,
            r#"{"verdict": "no", "score": -12, "weight": 0.5e-3, "ok": false, "tags": ["a", "b"], "note": "x"}"#
        ));
        assert!(complete(&guide, r#"{"verdict":"yes","score":0,"weight":3,"ok":true,"tags":[],"note":"y"}"#));
        assert!(feed(&guide, r#"{"verdict": "ya"#).is_none(), "not a prefix of an option");
        assert!(feed(&guide, r#"{"verdict": "ye""#).is_none(), "not a whole option");
        assert!(feed(&guide, r#"{"verdict": "no", "score": 1.5"#).is_none(), "an integer has no fraction");
        assert!(feed(&guide, r#"{"verdict": "no", "score": 01"#).is_none(), "no leading zeros");
        assert!(feed(&guide, r#"{"verdict": "no", "score": 1, "weight": 2, "ok": maybe"#).is_none());
        assert!(feed(&guide, r#"{"verdict": "no", "score": 1, "weight": 2, "ok": true, "tags": ["a",]"#).is_none());
    }

    #[test]
    fn a_free_schema_takes_any_json_and_a_root_number_may_end() {
        let guide = Guide::from_schema(&json!({}));
        assert!(complete(&guide, r#"{"a": [1, {"b": null}, "c"], "d": {"e": -2.5E+3}, "f": true}"#));
        assert!(complete(&guide, "[]"));
        assert!(complete(&guide, "{}"));
        assert!(feed(&guide, r#"{"a": 1,}"#).is_none());
        assert!(feed(&guide, r#"{"a" 1}"#).is_none());
        let number = Guide::from_schema(&json!({"type": "number"}));
        assert!(complete(&number, "42"));
        assert!(!complete(&number, "4."));
        let list = Guide::from_schema(&json!({"type": "object", "properties": {"examples": {"type": "array",
            "items": {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}}}}));
        assert!(complete(
            &list,
            r#"{"examples": [{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"}]}"#
        ));
    }

    /// Walks from `state` to a complete value, each character one that brings the closing length down by one.
    fn close_shortest(guide: &Guide, mut state: GuideState) -> Option<String> {
        let alphabet: Vec<char> = (' '..='~').collect();
        let mut written = String::new();
        while !state.is_complete() {
            let length = state.closing_length(guide);
            let (c, next) = alphabet.iter().find_map(|&c| {
                let next = state.after(guide, &c.to_string())?;
                (next.closing_length(guide) + 1 == length).then_some((c, next))
            })?;
            written.push(c);
            state = next;
        }
        Some(written)
    }

    /// At every prefix of valid replies the closing length can be met exactly, character by character, and
    /// never exceeds what the reply itself still wrote.
    #[test]
    fn the_closing_length_is_the_shortest_way_to_a_complete_value() {
        let shapes = json!({"type": "object", "properties": {
            "verdict": {"enum": ["yes", "no"]}, "score": {"type": "integer"}, "weight": {"type": "number"},
            "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": ["string", "null"]}}});
        let cases = [
            (qa(), r#"{"question": "Why \"this\"?", "answer": "Because \u00e9 é."}"#),
            (
                Guide::from_schema(&shapes),
                r#"{"verdict": "no", "score": -12, "weight": 0.5e-3, "ok": false, "tags": ["a", "b"], "note": "x"}"#,
            ),
            (Guide::from_schema(&json!({})), r#"{"a": [1, {"b": null}, "c"], "d": {"e": -2.5E+3}, "f": true}"#),
        ];
        for (guide, reply) in &cases {
            let characters: Vec<char> = reply.chars().collect();
            for cut in 0..=characters.len() {
                let prefix: String = characters[..cut].iter().collect();
                let state = feed(guide, &prefix).unwrap_or_else(|| panic!("{prefix}: not a valid prefix"));
                let length = state.closing_length(guide);
                assert!(length <= characters.len() - cut, "{prefix}: {length}");
                let closing = close_shortest(guide, state).unwrap_or_else(|| panic!("{prefix}: no way to close"));
                assert_eq!(closing.chars().count(), length, "{prefix}{closing}");
                assert!(complete(guide, &format!("{prefix}{closing}")));
            }
        }
        assert_eq!(close_shortest(&qa(), qa().start()).unwrap(), r#"{"question":"","answer":""}"#);
        let guide = Guide::from_schema(&shapes);
        let closing = close_shortest(&guide, feed(&guide, r#"{"verdict": "y"#).unwrap()).unwrap();
        assert_eq!(closing, r#"es","score":0,"weight":0,"ok":true,"tags":[],"note":""}"#);
    }

    #[test]
    fn whitespace_runs_are_capped() {
        let guide = qa();
        assert!(feed(&guide, &format!("{}{{", " ".repeat(12))).is_some());
        assert!(feed(&guide, &" ".repeat(13)).is_none());
        // Inside strings whitespace is content.
        assert!(feed(&guide, &format!("{{\"question\": \"{}", " ".repeat(100))).is_some());
    }
}
