//! `chunk`: splits each document into token-bounded chunks, one output row per chunk.
//!
//! Splitting is done by text-splitter's [`TextSplitter`], which keeps the largest semantic units that fit:
//! paragraphs first, then lines, sentences, words, graphemes. Chunk sizes are counted in characters, or in
//! tokens of a Hugging Face `tokenizer.json` when one is configured. Chunks are trimmed of surrounding
//! whitespace; their byte offsets point at the trimmed text, so `text[chunk_start..chunk_end]` is the chunk.
//!
//! Every input column is carried to each chunk of its document, except two: `id` becomes the chunk id
//! (`stable_id(doc_id, ordinal)`) and the text column becomes the chunk text. The document id moves to
//! `doc_id`, and `chunk_ordinal`, `chunk_start`, `chunk_end`, `chunk_tokens` are appended.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use text_splitter::{Characters, ChunkConfig, TextSplitter, TryChunkSizer};
use tokenizers::Tokenizer;

use crate::columns::{CHUNK_END, CHUNK_ORDINAL, CHUNK_START, CHUNK_TOKENS, DOC_ID, ID, stable_id};
use crate::{OpError, Operator, Output, Reject, require_column, string_column};

/// Columns this operator appends, in order.
const APPENDED: [&str; 5] = [DOC_ID, CHUNK_ORDINAL, CHUNK_START, CHUNK_END, CHUNK_TOKENS];

/// Settings of a `chunk` node.
///
/// ```yaml
/// chunk:
///   column: text                 # default "text"
///   max_tokens: 512              # default 512, > 0
///   overlap: 64                  # default 0, < max_tokens
///   tokenizer: models/tokenizer.json   # optional; without it sizes are counted in characters
///   min_chars: 1                 # default 1; shorter (trimmed) chunks are dropped
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunkSpec {
    /// The text column to split.
    #[serde(default = "default_column")]
    pub column: String,
    /// Largest chunk, in tokens (or characters without a tokenizer).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Tokens (or characters) that consecutive chunks may share; less than `max_tokens`.
    #[serde(default)]
    pub overlap: usize,
    /// A Hugging Face `tokenizer.json`; `None` counts characters.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Chunks whose trimmed text has fewer characters are not emitted.
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
}

fn default_column() -> String {
    crate::columns::TEXT.to_string()
}

fn default_max_tokens() -> usize {
    512
}

fn default_min_chars() -> usize {
    1
}

impl Default for ChunkSpec {
    fn default() -> Self {
        ChunkSpec {
            column: default_column(),
            max_tokens: default_max_tokens(),
            overlap: 0,
            tokenizer: None,
            min_chars: default_min_chars(),
        }
    }
}

/// Counts tokens with a Hugging Face tokenizer, reporting failures instead of panicking (text-splitter's
/// own sizer for `Tokenizer` panics on text the tokenizer cannot encode).
#[derive(Clone)]
struct TokenCounter(Arc<Tokenizer>);

impl TokenCounter {
    fn count(&self, text: &str) -> Result<usize, tokenizers::Error> {
        Ok(self.0.encode_fast(text, false)?.get_ids().len())
    }
}

impl TryChunkSizer for TokenCounter {
    type Error = tokenizers::Error;

    fn try_size(&self, chunk: &str) -> Result<usize, Self::Error> {
        self.count(chunk)
    }
}

/// The configured splitter: by characters or by tokens.
enum Splitter {
    Chars(TextSplitter<Characters>),
    Tokens { splitter: TextSplitter<TokenCounter>, counter: TokenCounter },
}

/// One chunk of a document: byte offsets of the trimmed chunk text (end exclusive) and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    start: usize,
    end: usize,
    tokens: usize,
}

impl Piece {
    fn shifted(self, by: usize) -> Piece {
        Piece { start: self.start + by, end: self.end + by, tokens: self.tokens }
    }
}

/// Chunks per splitting window. text-splitter re-scans the rest of its input for every chunk, which is
/// quadratic on long documents; feeding it windows of this many chunks keeps the cost linear.
const WINDOW_CHUNKS: usize = 16;

impl Splitter {
    /// The chunks of `text`, in order, with their sizes; `Err` says why `text` could not be split.
    ///
    /// Long texts are split window by window: every chunk of a window but the last is kept (the last may
    /// be cut short by the window's edge), and the next window starts where that last chunk started. The
    /// splitter only looks ahead about one chunk, so this gives the chunks a single pass would.
    fn split(&self, text: &str, window_bytes: usize) -> Result<Vec<Piece>, String> {
        let mut pieces = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let mut end = (pos + window_bytes).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let found = self.split_whole(&text[pos..end])?;
            if end == text.len() || found.len() < 2 {
                let rest = if end == text.len() { found } else { self.split_whole(&text[pos..])? };
                pieces.extend(rest.into_iter().map(|p| p.shifted(pos)));
                break;
            }
            let (last, kept) = found.split_last().ok_or("internal: no chunk")?;
            pieces.extend(kept.iter().map(|p| p.shifted(pos)));
            pos += last.start;
        }
        Ok(pieces)
    }

    fn split_whole(&self, text: &str) -> Result<Vec<Piece>, String> {
        match self {
            Splitter::Chars(splitter) => Ok(splitter
                .chunk_indices(text)
                .map(|(start, chunk)| Piece { start, end: start + chunk.len(), tokens: chunk.chars().count() })
                .collect()),
            Splitter::Tokens { splitter, counter } => splitter
                .try_chunk_indices(text)
                .map(|item| {
                    let (start, chunk) = item.map_err(|e| format!("tokenizer failed: {e}"))?;
                    let tokens = counter.count(chunk).map_err(|e| format!("tokenizer failed: {e}"))?;
                    Ok(Piece { start, end: start + chunk.len(), tokens })
                })
                .collect(),
        }
    }
}

/// Splits documents into chunks. See the module docs.
pub struct Chunker {
    spec: ChunkSpec,
    splitter: Splitter,
    /// Bytes per splitting window: room for `WINDOW_CHUNKS` full chunks (4 bytes per char, or a generous
    /// 16 bytes per token).
    window_bytes: usize,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Chunker {
    /// Checks the settings and loads the tokenizer, if any.
    pub fn new(spec: ChunkSpec) -> Result<Self, OpError> {
        if spec.column.is_empty() {
            return Err(OpError::setting("column", "must not be empty"));
        }
        if spec.column == ID || APPENDED.contains(&spec.column.as_str()) {
            return Err(OpError::setting(
                "column",
                format!("`{}` is written by this node and cannot be the text to split", spec.column),
            ));
        }
        if spec.max_tokens == 0 {
            return Err(OpError::setting("max_tokens", "must be greater than 0"));
        }
        if spec.overlap >= spec.max_tokens {
            return Err(OpError::setting(
                "overlap",
                format!("{} must be less than max_tokens ({})", spec.overlap, spec.max_tokens),
            ));
        }
        let config = ChunkConfig::new(spec.max_tokens)
            .with_overlap(spec.overlap)
            .map_err(|e| OpError::setting("overlap", e.to_string()))?;
        let splitter = match &spec.tokenizer {
            None => Splitter::Chars(TextSplitter::new(config)),
            Some(path) => {
                let mut tokenizer = Tokenizer::from_file(path)
                    .map_err(|e| OpError::setting("tokenizer", format!("cannot load {}: {e}", path.display())))?;
                // Sizes must count every token of the chunk: no truncation, no padding.
                tokenizer
                    .with_truncation(None)
                    .map_err(|e| OpError::setting("tokenizer", format!("cannot disable truncation: {e}")))?;
                tokenizer.with_padding(None);
                let counter = TokenCounter(Arc::new(tokenizer));
                Splitter::Tokens { splitter: TextSplitter::new(config.with_sizer(counter.clone())), counter }
            }
        };
        let bytes_per_unit = if spec.tokenizer.is_some() { 16 } else { 4 };
        let window_bytes = spec.max_tokens.saturating_mul(bytes_per_unit).saturating_mul(WINDOW_CHUNKS).max(16 << 10);
        Ok(Chunker { spec, splitter, window_bytes })
    }

    /// The settings this chunker was built with.
    pub fn spec(&self) -> &ChunkSpec {
        &self.spec
    }
}

/// The chunks of one batch, column by column.
#[derive(Default)]
struct ChunkRows<'a> {
    source_rows: Vec<u32>,
    ids: Vec<String>,
    texts: Vec<&'a str>,
    doc_ids: Vec<&'a str>,
    ordinals: Vec<u32>,
    starts: Vec<u64>,
    ends: Vec<u64>,
    tokens: Vec<u32>,
}

impl Operator for Chunker {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        require_column(input, &self.spec.column, &DataType::Utf8)?;
        for name in APPENDED {
            if input.column_with_name(name).is_some() {
                return Err(OpError::setting(
                    "input",
                    format!(
                        "already has column `{name}`: these documents were chunked before (chunking twice is a config mistake)"
                    ),
                ));
            }
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend([
            Field::new(DOC_ID, DataType::Utf8, false),
            Field::new(CHUNK_ORDINAL, DataType::UInt32, false),
            Field::new(CHUNK_START, DataType::UInt64, false),
            Field::new(CHUNK_END, DataType::UInt64, false),
            Field::new(CHUNK_TOKENS, DataType::UInt32, false),
        ]);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, OpError> {
        let input_schema = batch.schema();
        let schema = self.output_schema(&input_schema)?;
        let doc_ids = string_column(&batch, ID)?;
        let texts = string_column(&batch, &self.spec.column)?;
        if u32::try_from(batch.num_rows()).is_err() {
            return Err(OpError::Arrow(arrow::error::ArrowError::ComputeError(format!(
                "a batch of {} rows is too large to chunk (row indices are u32)",
                batch.num_rows()
            ))));
        }
        let mut rejects = Vec::new();
        let mut out = ChunkRows::default();

        for row in 0..batch.num_rows() {
            if doc_ids.is_null(row) {
                rejects.push(Reject { row, reason: "null id".to_string() });
                continue;
            }
            if texts.is_null(row) {
                rejects.push(Reject { row, reason: "null text".to_string() });
                continue;
            }
            let doc_id = doc_ids.value(row);
            let text = texts.value(row);
            let pieces = match self.splitter.split(text, self.window_bytes) {
                Ok(pieces) => pieces,
                Err(reason) => {
                    rejects.push(Reject { row, reason });
                    continue;
                }
            };
            if pieces.is_empty() {
                rejects.push(Reject { row, reason: "no text to chunk".to_string() });
                continue;
            }
            let kept: Vec<Piece> = pieces
                .into_iter()
                .filter(|p| text[p.start..p.end].trim().chars().count() >= self.spec.min_chars)
                .collect();
            if kept.is_empty() {
                rejects.push(Reject {
                    row,
                    reason: format!("no chunk has at least {} characters (min_chars)", self.spec.min_chars),
                });
                continue;
            }
            if u32::try_from(kept.len()).is_err() {
                rejects.push(Reject { row, reason: format!("{} chunks do not fit a u32 ordinal", kept.len()) });
                continue;
            }
            for (ordinal, piece) in (0u32..).zip(kept) {
                out.source_rows.push(row as u32);
                out.ids.push(stable_id(&[doc_id.as_bytes(), &ordinal.to_le_bytes()]));
                out.texts.push(&text[piece.start..piece.end]);
                out.doc_ids.push(doc_id);
                out.ordinals.push(ordinal);
                out.starts.push(piece.start as u64);
                out.ends.push(piece.end as u64);
                out.tokens.push(u32::try_from(piece.tokens).unwrap_or(u32::MAX));
            }
        }

        let indices = UInt32Array::from(out.source_rows);
        let id_index = input_schema.index_of(ID)?;
        let text_index = input_schema.index_of(&self.spec.column)?;
        // Repeat the document's other columns per chunk; never copy the document text itself, which
        // would cost (chunks x document length) per document.
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + APPENDED.len());
        for (index, column) in batch.columns().iter().enumerate() {
            if index == id_index {
                columns.push(Arc::new(StringArray::from(std::mem::take(&mut out.ids))));
            } else if index == text_index {
                columns.push(Arc::new(StringArray::from(std::mem::take(&mut out.texts))));
            } else {
                columns.push(arrow::compute::take(column.as_ref(), &indices, None)?);
            }
        }
        columns.push(Arc::new(StringArray::from(out.doc_ids)));
        columns.push(Arc::new(UInt32Array::from(out.ordinals)));
        columns.push(Arc::new(UInt64Array::from(out.starts)));
        columns.push(Arc::new(UInt64Array::from(out.ends)));
        columns.push(Arc::new(UInt32Array::from(out.tokens)));
        Ok(Output { rows: RecordBatch::try_new(schema, columns)?, rejects })
    }
}

/// A complete config that uses `chunk` (paths relative to the repository's `configs/`; `sdg kinds chunk`).
pub const EXAMPLE: &str = r#"# Splits the sample corpus's documents into chunks of at most 200 tokens, 20 of them shared with the next.
nodes:
  - {id: docs, kind: ingest, paths: [sample-corpus/notes]}
  - {id: chunks, kind: chunk, input: docs, max_tokens: 200, overlap: 20}
  - {id: out, kind: sink, input: chunks}
"#;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;

    use super::*;
    use crate::columns::{SOURCE_PATH, TEXT};

    /// A batch of documents `(id, text)` with two extra columns to carry: `source_path` and `n`.
    fn docs(rows: &[(&str, Option<&str>)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(SOURCE_PATH, DataType::Utf8, false),
            Field::new(ID, DataType::Utf8, false),
            Field::new(TEXT, DataType::Utf8, true),
            Field::new("n", DataType::UInt32, false),
        ]));
        let paths: Vec<String> = rows.iter().map(|(id, _)| format!("{id}.txt")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(paths)),
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(UInt32Array::from((0..rows.len() as u32).map(|i| i * 10).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn chunker(max_tokens: usize, overlap: usize) -> Chunker {
        Chunker::new(ChunkSpec { max_tokens, overlap, ..Default::default() }).unwrap()
    }

    /// One output chunk, read back from the output batch.
    #[derive(Debug)]
    struct Row {
        id: String,
        text: String,
        doc_id: String,
        ordinal: u32,
        start: usize,
        end: usize,
        tokens: u32,
    }

    fn rows(batch: &RecordBatch) -> Vec<Row> {
        let u32s = |name| batch.column_by_name(name).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().clone();
        let u64s = |name| batch.column_by_name(name).unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
        let (ids, texts, doc_ids) = (
            string_column(batch, ID).unwrap(),
            string_column(batch, TEXT).unwrap(),
            string_column(batch, DOC_ID).unwrap(),
        );
        let (ordinals, tokens, starts, ends) =
            (u32s(CHUNK_ORDINAL), u32s(CHUNK_TOKENS), u64s(CHUNK_START), u64s(CHUNK_END));
        (0..batch.num_rows())
            .map(|i| Row {
                id: ids.value(i).to_string(),
                text: texts.value(i).to_string(),
                doc_id: doc_ids.value(i).to_string(),
                ordinal: ordinals.value(i),
                start: starts.value(i) as usize,
                end: ends.value(i) as usize,
                tokens: tokens.value(i),
            })
            .collect()
    }

    /// Prose with sentences and paragraphs, about 1,500 characters.
    fn prose() -> String {
        let sentences = [
            "The river runs cold in spring.",
            "Farmers wait for the thaw before they plant.",
            "Some years the flood comes early and the fields drown.",
            "Nobody remembers a year without rain.",
            "The old mill still turns, though no one grinds grain there now.",
        ];
        (0..4)
            .map(|p| (0..5).map(|s| sentences[(p + s) % sentences.len()]).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
            .repeat(2)
    }

    /// One long "sentence" of words, so the splitter works at word level.
    fn words(count: usize) -> String {
        let pool = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];
        (0..count).map(|i| pool[i % pool.len()]).collect::<Vec<_>>().join(" ")
    }

    /// A WordLevel tokenizer with the Whitespace pre-tokenizer (`\w+|[^\w\s]+`): one token per word or
    /// punctuation run, unknown words map to [UNK].
    fn tokenizer_file() -> tempfile::NamedTempFile {
        let json = r#"{
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "the": 1, "river": 2, "runs": 3, "cold": 4, ".": 5}, "unk_token": "[UNK]"}
        }"#;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(json.as_bytes()).unwrap();
        file
    }

    #[test]
    fn chunks_never_exceed_max_chars_and_offsets_slice_back() {
        let text = prose();
        let out = chunker(100, 0).process(docs(&[("d1", Some(&text))])).unwrap();
        assert!(out.rejects.is_empty());
        let rows = rows(&out.rows);
        assert!(rows.len() > 10, "expected many chunks, got {}", rows.len());
        for (i, row) in rows.iter().enumerate() {
            assert!(row.tokens <= 100, "chunk {i} has {} chars", row.tokens);
            assert_eq!(row.tokens as usize, row.text.chars().count());
            assert_eq!(&text[row.start..row.end], row.text);
            assert_eq!(row.ordinal as usize, i);
            assert_eq!(row.text, row.text.trim());
        }
    }

    #[test]
    fn chunks_never_exceed_max_tokens_of_a_tokenizer() {
        let file = tokenizer_file();
        let mut op = Chunker::new(ChunkSpec {
            max_tokens: 12,
            tokenizer: Some(file.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        let text = prose();
        let out = op.process(docs(&[("d1", Some(&text))])).unwrap();
        let rows = rows(&out.rows);
        assert!(rows.len() > 5);
        let token = regex::Regex::new(r"\w+|[^\w\s]+").unwrap();
        for row in &rows {
            let expected = token.find_iter(&row.text).count();
            assert_eq!(row.tokens as usize, expected, "chunk {:?}", row.text);
            assert!(row.tokens <= 12, "chunk {:?} has {} tokens", row.text, row.tokens);
            assert_eq!(&text[row.start..row.end], row.text);
        }
        // Sizes really are tokens: chunks are much longer than 12 characters.
        assert!(rows.iter().any(|r| r.text.chars().count() > 40));
    }

    #[test]
    fn consecutive_chunks_overlap_when_asked() {
        let text = words(120);
        let out = chunker(40, 15).process(docs(&[("d1", Some(&text))])).unwrap();
        let rows = rows(&out.rows);
        assert!(rows.len() > 5);
        for pair in rows.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            assert!(next.start < prev.end, "{prev:?} then {next:?} do not overlap");
            assert!(next.start > prev.start, "{prev:?} then {next:?} do not advance");
            let shared = &text[next.start..prev.end];
            assert!(!shared.trim().is_empty(), "{prev:?} and {next:?} share only whitespace");
            assert!(shared.chars().count() <= 15, "shared {shared:?} is longer than the overlap");
            assert!(next.text.starts_with(shared.trim_start()));
        }
        assert!(rows.iter().all(|r| r.tokens <= 40));
    }

    #[test]
    fn consecutive_chunks_do_not_overlap_without_overlap() {
        let text = words(120);
        let out = chunker(40, 0).process(docs(&[("d1", Some(&text))])).unwrap();
        let rows = rows(&out.rows);
        assert!(rows.len() > 5);
        for pair in rows.windows(2) {
            assert!(pair[1].start >= pair[0].end, "{:?} then {:?} overlap", pair[0], pair[1]);
        }
        // Nothing is lost: the chunks, joined with spaces, are the text.
        let joined = rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(" ");
        assert_eq!(joined, text);
    }

    #[test]
    fn paragraph_boundaries_are_preferred() {
        let first = "The river runs cold in spring. Farmers wait.";
        let second = "Nobody remembers a year. The mill still turns.";
        let text = format!("{first}\n\n{second}");
        assert!(first.len() < 60 && second.len() < 60 && text.len() > 60);
        let out = chunker(60, 0).process(docs(&[("d1", Some(&text))])).unwrap();
        let texts: Vec<String> = rows(&out.rows).into_iter().map(|r| r.text).collect();
        assert_eq!(texts, vec![first.to_string(), second.to_string()]);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let text = prose();
        let input = docs(&[("d1", Some(&text)), ("d2", Some(&text))]);
        let first = rows(&chunker(120, 0).process(input.clone()).unwrap().rows);
        let second = rows(&chunker(120, 0).process(input).unwrap().rows);
        let ids: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, second.iter().map(|r| r.id.as_str()).collect::<Vec<_>>());
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "chunk ids collide");
        for row in &first {
            assert_eq!(row.id, stable_id(&[row.doc_id.as_bytes(), &row.ordinal.to_le_bytes()]));
        }
        // Same text in two documents: same chunks, different ids.
        let d1: Vec<_> = first.iter().filter(|r| r.doc_id == "d1").collect();
        let d2: Vec<_> = first.iter().filter(|r| r.doc_id == "d2").collect();
        assert_eq!(d1.len(), d2.len());
        assert!(d1.iter().zip(&d2).all(|(a, b)| a.text == b.text && a.id != b.id));
    }

    #[test]
    fn document_columns_are_carried_in_place() {
        let text = prose();
        let input = docs(&[("d1", Some(&text)), ("d2", Some("A short one."))]);
        let mut op = chunker(200, 0);
        let expected_schema = op.output_schema(&input.schema()).unwrap();
        let out = op.process(input).unwrap().rows;
        assert_eq!(out.schema(), expected_schema);
        let schema = out.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            vec![SOURCE_PATH, ID, TEXT, "n", DOC_ID, CHUNK_ORDINAL, CHUNK_START, CHUNK_END, CHUNK_TOKENS]
        );
        let paths = string_column(&out, SOURCE_PATH).unwrap();
        let ns = out.column_by_name("n").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        let doc_ids = string_column(&out, DOC_ID).unwrap();
        for i in 0..out.num_rows() {
            let doc = doc_ids.value(i);
            assert_eq!(paths.value(i), format!("{doc}.txt"));
            assert_eq!(ns.value(i), if doc == "d1" { 0 } else { 10 });
        }
        assert_eq!(doc_ids.iter().filter(|d| *d == Some("d2")).count(), 1);
        assert_eq!(doc_ids.value(out.num_rows() - 1), "d2");
    }

    #[test]
    fn empty_and_null_texts_are_rejected() {
        let input = docs(&[("a", Some("")), ("b", Some("  \n\n ")), ("c", None), ("d", Some("Hello there."))]);
        let out = chunker(50, 0).process(input).unwrap();
        assert_eq!(
            out.rejects,
            vec![
                Reject { row: 0, reason: "no text to chunk".into() },
                Reject { row: 1, reason: "no text to chunk".into() },
                Reject { row: 2, reason: "null text".into() },
            ]
        );
        let rows = rows(&out.rows);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].doc_id.as_str(), rows[0].text.as_str()), ("d", "Hello there."));
    }

    #[test]
    fn short_chunks_are_dropped_by_min_chars() {
        let text = "Tiny.\n\nThis paragraph is long enough to keep around.";
        let mut op = Chunker::new(ChunkSpec { max_tokens: 48, min_chars: 10, ..Default::default() }).unwrap();
        let out = op.process(docs(&[("d1", Some(text)), ("d2", Some("Tiny."))])).unwrap();
        let rows = rows(&out.rows);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].text, "This paragraph is long enough to keep around.");
        assert_eq!(rows[0].ordinal, 0);
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].row, 1);
        assert!(out.rejects[0].reason.contains("min_chars"), "{}", out.rejects[0].reason);
    }

    #[test]
    fn settings_are_validated() {
        let refused = |spec: ChunkSpec, key: &str| match Chunker::new(spec) {
            Err(OpError::InvalidSetting { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected a `{key}` error, got {other:?}"),
        };
        refused(ChunkSpec { max_tokens: 10, overlap: 10, ..Default::default() }, "overlap");
        refused(ChunkSpec { max_tokens: 10, overlap: 11, ..Default::default() }, "overlap");
        refused(ChunkSpec { max_tokens: 0, ..Default::default() }, "max_tokens");
        refused(ChunkSpec { column: ID.into(), ..Default::default() }, "column");
        refused(ChunkSpec { tokenizer: Some("/nonexistent/tokenizer.json".into()), ..Default::default() }, "tokenizer");
        assert!(Chunker::new(ChunkSpec { max_tokens: 10, overlap: 9, ..Default::default() }).is_ok());
    }

    #[test]
    fn spec_deserializes_with_defaults_and_refuses_unknown_keys() {
        let spec: ChunkSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, ChunkSpec::default());
        assert_eq!((spec.column.as_str(), spec.max_tokens, spec.overlap, spec.min_chars), ("text", 512, 0, 1));
        let spec: ChunkSpec =
            serde_json::from_str(r#"{"max_tokens": 256, "overlap": 32, "tokenizer": "tok.json", "column": "body"}"#)
                .unwrap();
        assert_eq!(spec.tokenizer, Some(PathBuf::from("tok.json")));
        assert_eq!((spec.max_tokens, spec.overlap, spec.column.as_str()), (256, 32, "body"));
        assert!(serde_json::from_str::<ChunkSpec>(r#"{"max_token": 5}"#).is_err());
    }

    #[test]
    fn plan_refuses_missing_columns_and_chunking_twice() {
        let op = chunker(100, 0);
        let input = docs(&[("d1", Some("Some text."))]);
        let chunked = op.output_schema(&input.schema()).unwrap();
        assert!(matches!(op.output_schema(&chunked), Err(OpError::InvalidSetting { .. })));
        let no_text = Arc::new(Schema::new(vec![Field::new(ID, DataType::Utf8, false)]));
        assert!(matches!(op.output_schema(&no_text), Err(OpError::MissingColumn { .. })));
        let wrong = Arc::new(Schema::new(vec![
            Field::new(ID, DataType::Utf8, false),
            Field::new(TEXT, DataType::UInt32, false),
        ]));
        assert!(matches!(op.output_schema(&wrong), Err(OpError::ColumnType { .. })));
    }

    #[test]
    fn windowed_splitting_gives_the_chunks_of_a_single_pass() {
        let mut text = String::new();
        for p in 0..400 {
            text.push_str(&format!(
                "Paragraph {p} has a first sentence. And a second one, a little longer than the first.\n"
            ));
            if p % 3 == 0 {
                text.push('\n');
            }
        }
        for overlap in [0, 15] {
            let chunker = Chunker::new(ChunkSpec { max_tokens: 120, overlap, ..ChunkSpec::default() }).unwrap();
            let whole = chunker.splitter.split_whole(&text).unwrap();
            assert!(whole.len() > 100);
            for window in [1 << 10, 4 << 10, 64 << 10] {
                assert_eq!(chunker.splitter.split(&text, window).unwrap(), whole, "window {window}, overlap {overlap}");
            }
        }
    }
}
