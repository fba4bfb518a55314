//! A YAML tree that remembers where every node came from, so config errors can name the line.
//!
//! Aliases are expanded while loading, under a node budget: an "anchors bomb" (each alias doubling the
//! document) is refused instead of eating memory. Nesting is capped too, and the tree is built from the
//! parser's events in a loop (the parser's own `load` recurses once per level), so a deeply nested
//! document is refused instead of overflowing the stack.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Most nodes a config may expand to, aliases included. Real configs are a few hundred.
pub const MAX_NODES: usize = 100_000;

/// Deepest nesting of lists and maps a config may have. Real configs nest fewer than ten levels.
pub const MAX_DEPTH: usize = 128;

/// A value and where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// `plain` is false for quoted and block scalars: `"123"` is a string, `123` may be a number.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The value under `key` when this is a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".to_string(),
            Value::Scalar { text, plain } => {
                let shown: String = text.chars().take(40).collect();
                let ellipsis = if text.chars().count() > 40 { "…" } else { "" };
                if *plain { format!("`{shown}{ellipsis}`") } else { format!("string \"{shown}{ellipsis}\"") }
            }
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a map".to_string(),
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Null | Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
        }
    }
}

/// Why a document could not be loaded as YAML.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses one YAML document (the first, when there are more). An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: match e.info() {
                // The scanner's own cap on `[` and `{` nesting.
                "recursion limit exceeded" => {
                    "lists and maps are nested deeper than 255 levels of brackets".to_string()
                }
                info => info.to_string(),
            },
        })?;
        let last = matches!(event, Event::DocumentEnd | Event::StreamEnd);
        builder.on_event(event, mark);
        if let Some(error) = builder.error.take() {
            return Err(error);
        }
        if last {
            break;
        }
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Null, line: 1, col: 1 }))
}

enum Open {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
    error: Option<YamlError>,
}

impl TreeBuilder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { line: mark.line(), col: mark.col() + 1, message });
        }
    }

    fn count(&mut self, n: usize, mark: Marker) -> bool {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            let at = match self.path() {
                path if path.is_empty() => String::new(),
                path => format!("at `{path}` "),
            };
            self.fail(
                mark,
                format!("the document {at}expands to more than {MAX_NODES} nodes (an alias bomb: anchors that repeat anchors?)"),
            );
            return false;
        }
        true
    }

    /// Opens a list or map, unless that nests the document too deep.
    fn open(&mut self, open: Open, mark: Marker) {
        if self.stack.len() >= MAX_DEPTH {
            let at = match self.path() {
                path if path.is_empty() => String::new(),
                path => format!(" at `{path}`"),
            };
            self.fail(mark, format!("lists and maps are nested deeper than {MAX_DEPTH} levels{at}"));
            return;
        }
        if self.count(1, mark) {
            self.stack.push(open);
        }
    }

    /// Key path of the next value, e.g. `nodes[2].paths`: where an error is.
    fn path(&self) -> String {
        let mut path = String::new();
        for open in &self.stack {
            match open {
                Open::Seq(Node { value: Value::Seq(items), .. }, _) => path.push_str(&format!("[{}]", items.len())),
                Open::Map(_, _, Some(key)) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key.as_str().unwrap_or("?"));
                }
                _ => {}
            }
        }
        path
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, pending_key)) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let (line, col) = (mark.line(), mark.col() + 1);
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                if !self.count(1, mark) {
                    return;
                }
                let plain = style == TScalarStyle::Plain;
                let value = if plain && is_null(&text) { Value::Null } else { Value::Scalar { text, plain } };
                self.finish(Node { value, line, col }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.open(Open::Seq(Node { value: Value::Seq(Vec::new()), line, col }, anchor), mark)
            }
            Event::MappingStart(anchor, _) => {
                self.open(Open::Map(Node { value: Value::Map(Vec::new()), line, col }, anchor, None), mark)
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, anchor, _)) => self.finish(node, anchor),
                None => self.fail(mark, "unbalanced collection end".to_string()),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    if self.count(node.size(), mark) {
                        self.finish(node, 0);
                    }
                }
                None => self.fail(mark, "alias to an unknown anchor".to_string()),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_styles() {
        let doc = parse("a: 1\nb:\n  - \"2\"\n  - ~\n").unwrap();
        let a = doc.get("a").unwrap();
        assert_eq!((a.line, a.col), (1, 4));
        assert_eq!(a.value, Value::Scalar { text: "1".into(), plain: true });
        let Value::Seq(items) = &doc.get("b").unwrap().value else { panic!("b is a list") };
        assert_eq!(items[0].line, 3);
        assert_eq!(items[0].value, Value::Scalar { text: "2".into(), plain: false });
        assert_eq!(items[1].value, Value::Null);
    }

    #[test]
    fn expands_aliases() {
        let doc = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(doc.get("other").unwrap().get("x").unwrap().as_str(), Some("1"));
    }

    #[test]
    fn refuses_an_alias_bomb() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let error = parse(&text).unwrap_err();
        assert!(error.message.contains("more than"), "{error}");
        // a4 is the first anchor past the budget: 10^5 scalars and more.
        assert!(error.message.contains("at `a4["), "{error}");
        assert_eq!(error.line, 5, "{error}");
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        // Block lists nest without the flow-level limit of the scanner; a recursive loader would overflow.
        let text = format!("a:\n  b:\n    {}x\n", "- ".repeat(200_000));
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.message,
            format!(
                "lists and maps are nested deeper than {MAX_DEPTH} levels at `a.b[0]{}`",
                "[0]".repeat(MAX_DEPTH - 3)
            )
        );
        let flow = format!("a: {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let error = parse(&flow).unwrap_err();
        assert!(error.message.starts_with("lists and maps are nested deeper than "), "{error}");
        let fits = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn reads_only_the_first_document() {
        let doc = parse("a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(doc.get("a").unwrap().as_str(), Some("1"));
        assert!(doc.get("b").is_none());
        assert_eq!(parse("# only a comment\n").unwrap().value, Value::Null);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let error = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.line >= 1);
        assert!(!error.message.is_empty());
    }
}
