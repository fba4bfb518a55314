//! JSONL: one document per non-blank line, read lazily with a bounded line buffer.
//!
//! A line longer than `Limits::max_record_bytes` is skipped without ever being held in memory; a line that is
//! not a JSON object with a string text field is a [`RecordError`]; either way the next line is still read.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use super::{Document, DocumentStream, FieldMapping, FormatError, Limits, RecordError, over_record_limit};

pub(super) fn open(path: &Path, mapping: &FieldMapping, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let file = File::open(path)?;
    Ok(Box::new(JsonlRows {
        lines: BoundedLines::new(BufReader::new(file), limits.max_record_bytes),
        mapping: mapping.clone(),
        line_number: 0,
        finished: false,
    }))
}

/// A line read by [`BoundedLines`].
#[derive(Debug, PartialEq)]
enum Line {
    /// The bytes of the line, without its `\n` (or `\r\n`).
    Complete(Vec<u8>),
    /// The line was longer than the limit; its bytes were skipped, not stored.
    TooLong,
}

/// Splits a byte stream into lines, never buffering more than `max_bytes` of one line.
struct BoundedLines<R> {
    reader: R,
    max_bytes: u64,
}

impl<R: BufRead> BoundedLines<R> {
    fn new(reader: R, max_bytes: u64) -> Self {
        BoundedLines { reader, max_bytes }
    }

    fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut too_long = false;
        let mut read_any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|&byte| byte == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            if !too_long {
                if (line.len() + content.len()) as u64 > self.max_bytes {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(content);
                }
            }
            let used = content.len() + usize::from(newline.is_some());
            self.reader.consume(used);
            if newline.is_some() {
                break;
            }
        }
        if too_long {
            return Ok(Some(Line::TooLong));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(Line::Complete(line)))
    }
}

struct JsonlRows<R> {
    lines: BoundedLines<R>,
    mapping: FieldMapping,
    /// 1-based number of the last line read.
    line_number: u64,
    finished: bool,
}

impl<R: BufRead> Iterator for JsonlRows<R> {
    type Item = Result<Document, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(error) => {
                    // A read error leaves the position unknown: report it once and stop.
                    self.finished = true;
                    return Some(Err(self.error_at(self.line_number + 1, format!("cannot read the file: {error}"))));
                }
            };
            self.line_number += 1;
            let bytes = match line {
                Line::TooLong => {
                    let reason = over_record_limit("line", self.lines.max_bytes);
                    return Some(Err(self.error_at(self.line_number, reason)));
                }
                Line::Complete(bytes) => bytes,
            };
            let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
                Some(rest) if self.line_number == 1 => rest,
                _ => &bytes[..],
            };
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(error) => {
                    let reason = format!("not valid UTF-8 (first bad byte at column {})", error.valid_up_to() + 1);
                    return Some(Err(self.error_at(self.line_number, reason)));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(self.document(text).map_err(|reason| self.error_at(self.line_number, reason)));
        }
        None
    }
}

impl<R> JsonlRows<R> {
    fn error_at(&self, line: u64, reason: String) -> RecordError {
        RecordError { locator: format!("line {line}"), reason }
    }

    fn document(&self, line: &str) -> Result<Document, String> {
        let mut object = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(other) => return Err(format!("expected a JSON object, found {}", json_kind(&other))),
            Err(error) => return Err(format!("invalid JSON: {error}")),
        };
        let field = &self.mapping.text;
        let text = match object.remove(field) {
            Some(Value::String(text)) => text,
            Some(other) => return Err(format!("field \"{field}\" is {}, not a string", json_kind(&other))),
            None => return Err(format!("no \"{field}\" field")),
        };
        if text.trim().is_empty() {
            return Err(format!("field \"{field}\" is empty"));
        }
        let mut document = Document {
            text,
            id_hint: self.mapping.id.as_ref().and_then(|id| field_string(&object, id)),
            extra: self.mapping.keep.iter().map(|name| field_string(&object, name)).collect(),
            ..Document::default()
        };
        document.meta.insert("line".to_string(), self.line_number.into());
        Ok(document)
    }
}

/// A field as a string column value: strings as they are, other values as compact JSON, null or missing as none.
fn field_string(object: &Map<String, Value>, name: &str) -> Option<String> {
    match object.get(name)? {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::formats::{Format, open as open_file};

    fn read_jsonl(contents: &[u8], mapping: &FieldMapping, limits: &Limits) -> Vec<Result<Document, RecordError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, contents).unwrap();
        open_file(&path, Format::Jsonl, mapping, limits).unwrap().collect()
    }

    fn record_error(line: u64, reason: &str) -> Result<Document, RecordError> {
        Err(RecordError { locator: format!("line {line}"), reason: reason.to_string() })
    }

    #[test]
    fn each_line_is_a_document_with_id_extra_and_line_number() {
        let mapping = FieldMapping {
            text: "body".to_string(),
            id: Some("key".to_string()),
            keep: vec!["topic".to_string(), "score".to_string(), "tags".to_string(), "absent".to_string()],
        };
        let results = read_jsonl(
            b"\xEF\xBB\xBF{\"body\": \"Coral reefs.\", \"key\": \"r1\", \"topic\": \"sea\", \"score\": 0.5, \"tags\": [\"a\", 1]}\r\n\
              \n   \n{\"body\": \"Kelp forests.\", \"key\": 7, \"topic\": null}",
            &mapping,
            &Limits::default(),
        );
        let documents: Vec<Document> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].text, "Coral reefs.");
        assert_eq!(documents[0].id_hint.as_deref(), Some("r1"));
        assert_eq!(
            documents[0].extra,
            [Some("sea".to_string()), Some("0.5".to_string()), Some("[\"a\",1]".to_string()), None]
        );
        assert_eq!(documents[0].meta["line"], 1);
        assert_eq!(documents[1].text, "Kelp forests.");
        assert_eq!(documents[1].id_hint.as_deref(), Some("7"));
        assert_eq!(documents[1].extra, [None, None, None, None]);
        assert_eq!(documents[1].meta["line"], 4);
    }

    #[test]
    fn bad_lines_are_record_errors_and_good_lines_still_count() {
        let results = read_jsonl(
            b"{\"text\": \"one\"}\nnot json at all\n[1, 2]\n{\"title\": \"no text\"}\n{\"text\": 42}\n\
              {\"text\": \"caf\xE9\"}\n{\"text\": \"  \"}\n{\"text\": \"two\"}\n",
            &FieldMapping::default(),
            &Limits::default(),
        );
        let expected_errors = [
            record_error(2, "invalid JSON: expected ident at line 1 column 2"),
            record_error(3, "expected a JSON object, found an array"),
            record_error(4, "no \"text\" field"),
            record_error(5, "field \"text\" is a number, not a string"),
            record_error(6, "not valid UTF-8 (first bad byte at column 14)"),
            record_error(7, "field \"text\" is empty"),
        ];
        assert_eq!(results.len(), 8);
        assert_eq!(results[0].as_ref().unwrap().text, "one");
        assert_eq!(&results[1..7], &expected_errors);
        assert_eq!(results[7].as_ref().unwrap().text, "two");
        assert_eq!(results[7].as_ref().unwrap().meta["line"], 8);
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_next_line_is_read() {
        let long_line = format!("{{\"text\": \"{}\"}}", "x".repeat(200));
        let contents = format!("{{\"text\": \"short\"}}\n{long_line}\n{{\"text\": \"after\"}}\n");
        let limits = Limits { max_record_bytes: 64, ..Limits::default() };
        let results = read_jsonl(contents.as_bytes(), &FieldMapping::default(), &limits);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().text, "short");
        assert_eq!(results[1], record_error(2, "line is longer than max_record_mb allows (64 bytes)"));
        assert_eq!(results[2].as_ref().unwrap().text, "after");
        assert_eq!(results[2].as_ref().unwrap().meta["line"], 3);
    }

    #[test]
    fn the_line_buffer_never_grows_past_the_limit() {
        // A 1-byte read buffer forces the over-long line to arrive in many pieces.
        let contents = format!("{}\nok\n{}", "y".repeat(1000), "z".repeat(11));
        let mut lines = BoundedLines::new(BufReader::with_capacity(1, contents.as_bytes()), 10);
        assert_eq!(lines.next_line().unwrap(), Some(Line::TooLong));
        assert_eq!(lines.next_line().unwrap(), Some(Line::Complete(b"ok".to_vec())));
        assert_eq!(lines.next_line().unwrap(), Some(Line::TooLong));
        assert_eq!(lines.next_line().unwrap(), None);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read() {
        let limits = Limits { max_record_bytes: 15, ..Limits::default() };
        let results = read_jsonl(b"{\"text\": \"abc\"}", &FieldMapping::default(), &limits);
        assert_eq!(results[0].as_ref().unwrap().text, "abc");
    }

    #[test]
    fn an_empty_file_is_refused_and_a_blank_one_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.jsonl");
        std::fs::write(&path, b"").unwrap();
        let error = open_file(&path, Format::Jsonl, &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert!(matches!(error, FormatError::Empty { format: "jsonl" }), "{error:?}");
        assert!(read_jsonl(b"\n  \n", &FieldMapping::default(), &Limits::default()).is_empty());
    }

    #[test]
    fn a_gigabyte_line_is_skipped_with_a_bounded_buffer() {
        // 1 GiB of one line, streamed in (never stored): the reader keeps at most the limit.
        struct Endless(u64);
        impl io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = (buf.len() as u64).min(self.0) as usize;
                buf[..n].fill(b'a');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let source = io::Read::chain(Endless(1 << 30), &b"\n{\"text\": \"after\"}\n"[..]);
        let mut lines = BoundedLines::new(BufReader::with_capacity(1 << 20, source), 16 << 20);
        assert_eq!(lines.next_line().unwrap(), Some(Line::TooLong));
        assert_eq!(lines.next_line().unwrap(), Some(Line::Complete(b"{\"text\": \"after\"}".to_vec())));
    }
}
