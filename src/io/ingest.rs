//! `ingest`: finds documents on disk and turns them into record batches.
//!
//! Discovery is deterministic (sorted walk) and done once per process; files are then dealt to workers by
//! ordinal. Every batch gets the timestamp `file_ordinal << 24 | batch_in_file`, which does not depend on
//! the number of workers: that is what lets sinks write byte-identical output with 1 or N workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use sdg_operators::columns::{self, stable_id};

use super::formats::{self, Document, DocumentStream, FieldMapping, Format, Limits};
use super::rejects::RejectRow;

/// A complete config that uses `ingest` (paths relative to the repository's `configs/`).
pub const EXAMPLE: &str = "\
# Reads the sample corpus's notes and tables: one row per document, or per row of a CSV or JSONL file.
nodes:
  - {id: docs, kind: ingest, paths: [sample-corpus]}
  - {id: out, kind: sink, input: docs, columns: [id, text, source_path]}
";

/// Settings of an `ingest` node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Files or folders (walked recursively), relative to the config file.
    pub paths: Vec<PathBuf>,
    /// Globs (relative to each folder) a file must match. Default: every supported format.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs that drop a file even when included.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field mapping for row formats (jsonl, csv, parquet).
    #[serde(default)]
    pub fields: FieldMapping,
    /// Follow symbolic links (loops are detected and rejected).
    #[serde(default)]
    pub follow_links: bool,
    /// Largest whole-document file, in MiB.
    #[serde(default = "default_max_file_mb")]
    pub max_file_mb: u64,
    /// Largest single record (JSONL line, CSV row), in MiB.
    #[serde(default = "default_max_record_mb")]
    pub max_record_mb: u64,
    /// The folder relative paths were resolved against; `source_path` is written relative to it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_max_file_mb() -> u64 {
    64
}

fn default_max_record_mb() -> u64 {
    16
}

/// Largest `max_file_mb` / `max_record_mb`: 1 TiB. A larger figure is a typo, and would overflow in bytes.
const MAX_LIMIT_MB: u64 = 1 << 20;

impl IngestSpec {
    /// An ingest of `paths` with every other setting at its default; `source_path` is relative to `base_dir`.
    pub fn for_paths(paths: Vec<PathBuf>, base_dir: &Path) -> Self {
        IngestSpec {
            paths,
            include: Vec::new(),
            exclude: Vec::new(),
            fields: FieldMapping::default(),
            follow_links: false,
            max_file_mb: default_max_file_mb(),
            max_record_mb: default_max_record_mb(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    /// Anchors relative paths at `base_dir`.
    pub fn resolved(mut self, base_dir: &Path) -> Self {
        self.paths = self.paths.iter().map(|p| crate::config::resolve(base_dir, p)).collect();
        self.base_dir = base_dir.to_path_buf();
        self
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_file_bytes: self.max_file_mb.saturating_mul(1 << 20),
            max_record_bytes: self.max_record_mb.saturating_mul(1 << 20),
            ..Limits::default()
        }
    }

    /// Checks what can be checked before any file is read: globs compile, paths exist.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.paths.is_empty() {
            problems.push(("paths".to_string(), "needs at least one file or folder".to_string()));
        }
        for path in &self.paths {
            if !path.exists() {
                problems.push(("paths".to_string(), format!("{} does not exist", path.display())));
            }
        }
        for (key, value) in [("max_file_mb", self.max_file_mb), ("max_record_mb", self.max_record_mb)] {
            if !(1..=MAX_LIMIT_MB).contains(&value) {
                problems.push((key.to_string(), format!("must be between 1 and {MAX_LIMIT_MB} (MiB), found {value}")));
            }
        }
        for (key, globs) in [("include", &self.include), ("exclude", &self.exclude)] {
            for glob in globs {
                if let Err(e) = Glob::new(glob) {
                    problems.push((key.to_string(), format!("bad glob `{glob}`: {e}")));
                }
            }
        }
        problems
    }

    /// The output schema: fixed document columns plus the kept row fields.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(columns::ID, DataType::Utf8, false),
            Field::new(columns::SOURCE_PATH, DataType::Utf8, false),
            Field::new(columns::FORMAT, DataType::Utf8, false),
            Field::new(columns::TEXT, DataType::Utf8, false),
            Field::new(columns::META, DataType::Utf8, false),
        ];
        for name in &self.fields.keep {
            fields.push(Field::new(name, DataType::Utf8, true));
        }
        Arc::new(Schema::new(fields))
    }
}

/// A file found by discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path as written in `source_path`: relative to the config folder when below it.
    pub display: String,
    pub format: Format,
}

/// What discovery found: files to read, and problems that become rejects.
#[derive(Debug, Default)]
pub struct Discovery {
    pub files: Vec<SourceFile>,
    pub problems: Vec<RejectRow>,
}

/// Walks the configured paths, in sorted order.
pub fn discover(spec: &IngestSpec, node: &str) -> Discovery {
    let mut found = Discovery::default();
    let include = build_globs(&spec.include);
    let exclude = build_globs(&spec.exclude);
    for root in &spec.paths {
        if root.is_file() {
            let display = display_path(&spec.base_dir, root);
            match Format::from_path(root) {
                Some(format) => found.files.push(SourceFile { path: root.clone(), display, format }),
                None => found.problems.push(problem(node, &display, "unsupported file format (by extension)")),
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(root).follow_links(spec.follow_links).sort_by_file_name();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    let at = error
                        .path()
                        .map(|p| display_path(&spec.base_dir, p))
                        .unwrap_or_else(|| display_path(&spec.base_dir, root));
                    let reason = if error.loop_ancestor().is_some() || is_link_loop(&error) {
                        "symbolic link loop".to_string()
                    } else {
                        format!("cannot read: {error}")
                    };
                    found.problems.push(problem(node, &at, &reason));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
            let included = match &include {
                Some(set) => set.is_match(relative),
                None => Format::from_path(entry.path()).is_some(),
            };
            if !included || exclude.as_ref().is_some_and(|set| set.is_match(relative)) {
                continue;
            }
            let display = display_path(&spec.base_dir, entry.path());
            match Format::from_path(entry.path()) {
                Some(format) => found.files.push(SourceFile { path: entry.path().to_path_buf(), display, format }),
                None => found.problems.push(problem(node, &display, "unsupported file format (by extension)")),
            }
        }
    }
    found
}

/// True when the walk failed on a link that leads to itself (`a -> a`, or `a -> b -> a`): the OS gives up
/// with ELOOP. A link to a folder above it is found by walkdir itself (`loop_ancestor`).
fn is_link_loop(error: &walkdir::Error) -> bool {
    #[cfg(unix)]
    {
        error.io_error().and_then(std::io::Error::raw_os_error) == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

fn build_globs(globs: &[String]) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        // Bad globs were reported by `check` before the run.
        if let Ok(glob) = Glob::new(glob) {
            builder.add(glob);
        }
    }
    builder.build().ok()
}

fn display_path(base_dir: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(base_dir).unwrap_or(path);
    relative.to_string_lossy().replace('\\', "/")
}

fn problem(node: &str, display: &str, reason: &str) -> RejectRow {
    RejectRow {
        id: stable_id(&[display.as_bytes(), reason.as_bytes()]),
        node: node.to_string(),
        reason: reason.to_string(),
        source_path: Some(display.to_string()),
        record: None,
    }
}

/// Reads one file as a sequence of batches of at most `batch_rows` rows / `batch_bytes` text bytes.
pub struct FileReader {
    file: SourceFile,
    node: String,
    schema: SchemaRef,
    keep: usize,
    stream: Option<DocumentStream>,
    /// Problems found so far that belong to the next batch.
    rejects: Vec<RejectRow>,
    ordinal: usize,
}

/// One batch read from a file: documents and the rows that were rejected while reading.
pub struct ReadBatch {
    pub rows: RecordBatch,
    pub rejects: Vec<RejectRow>,
}

impl FileReader {
    pub fn open(spec: &IngestSpec, node: &str, file: SourceFile) -> FileReader {
        let mut rejects = Vec::new();
        let stream = match formats::open(&file.path, file.format, &spec.fields, &spec.limits()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                rejects.push(problem(node, &file.display, &error.to_string()));
                None
            }
        };
        FileReader {
            file,
            node: node.to_string(),
            schema: spec.schema(),
            keep: spec.fields.keep.len(),
            stream,
            rejects,
            ordinal: 0,
        }
    }

    /// The next batch, or `None` when the file is done. Rejected records count toward the batch limits like
    /// documents, so a file of millions of bad lines is not held at once; a batch holds at least one record,
    /// whatever the limits say (a limit of 0 must not read a file as empty).
    pub fn next_batch(&mut self, batch_rows: usize, batch_bytes: usize) -> Option<ReadBatch> {
        let mut docs: Vec<Document> = Vec::new();
        let mut bytes = 0usize;
        if let Some(stream) = self.stream.as_mut() {
            loop {
                let records = docs.len() + self.rejects.len();
                if records > 0 && (records >= batch_rows || bytes >= batch_bytes) {
                    break;
                }
                match stream.next() {
                    None => {
                        self.stream = None;
                        break;
                    }
                    Some(Ok(doc)) => {
                        bytes += doc.text.len();
                        docs.push(doc);
                    }
                    Some(Err(error)) => {
                        let reason = format!("{}: {}", error.locator, error.reason);
                        bytes += reason.len();
                        self.rejects.push(RejectRow {
                            id: stable_id(&[self.file.display.as_bytes(), error.locator.as_bytes()]),
                            node: self.node.clone(),
                            reason,
                            source_path: Some(self.file.display.clone()),
                            record: None,
                        });
                    }
                }
            }
        }
        if docs.is_empty() && self.rejects.is_empty() {
            return None;
        }
        let rows = self.batch_of(&docs);
        Some(ReadBatch { rows, rejects: std::mem::take(&mut self.rejects) })
    }

    fn batch_of(&mut self, docs: &[Document]) -> RecordBatch {
        let mut ids = StringBuilder::new();
        let mut paths = StringBuilder::new();
        let mut formats = StringBuilder::new();
        let mut texts = StringBuilder::new();
        let mut metas = StringBuilder::new();
        let mut extras: Vec<StringBuilder> = (0..self.keep).map(|_| StringBuilder::new()).collect();
        let display = self.file.display.as_bytes();
        for doc in docs {
            self.ordinal += 1;
            let id = match &doc.id_hint {
                Some(hint) => stable_id(&[display, b"id", hint.as_bytes()]),
                None if doc.meta.is_empty() => stable_id(&[display, doc.text.as_bytes()]),
                None => {
                    let locator = serde_json::Value::Object(doc.meta.clone()).to_string();
                    stable_id(&[display, locator.as_bytes(), doc.text.as_bytes()])
                }
            };
            ids.append_value(id);
            paths.append_value(&self.file.display);
            formats.append_value(self.file.format.name());
            texts.append_value(&doc.text);
            metas.append_value(serde_json::Value::Object(doc.meta.clone()).to_string());
            for (builder, value) in extras.iter_mut().zip(doc.extra.iter()) {
                builder.append_option(value.as_deref());
            }
            for builder in extras.iter_mut().skip(doc.extra.len()) {
                builder.append_null();
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(paths.finish()),
            Arc::new(formats.finish()),
            Arc::new(texts.finish()),
            Arc::new(metas.finish()),
        ];
        columns.extend(extras.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        // The columns match the schema by construction.
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(&self.schema)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &Path) -> IngestSpec {
        IngestSpec::for_paths(vec![root.to_path_buf()], root.parent().unwrap())
    }

    #[test]
    fn discovery_is_sorted_filtered_and_relative() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::fs::write(root.join("a.md"), "a").unwrap();
        std::fs::write(root.join("sub/c.jsonl"), "{}").unwrap();
        std::fs::write(root.join("skip.bin"), "x").unwrap();
        let mut s = spec(&root);
        let found = discover(&s, "docs");
        let names: Vec<_> = found.files.iter().map(|f| f.display.as_str()).collect();
        assert_eq!(names, vec!["corpus/a.md", "corpus/b.txt", "corpus/sub/c.jsonl"]);
        assert!(found.problems.is_empty());

        s.exclude = vec!["sub/**".into()];
        s.include = vec!["*.txt".into(), "sub/*".into()];
        let names: Vec<_> = discover(&s, "docs").files.into_iter().map(|f| f.display).collect();
        assert_eq!(names, vec!["corpus/b.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_become_problems() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(&root, root.join("d/loop")).unwrap();
        let mut s = spec(&root);
        s.follow_links = true;
        let found = discover(&s, "docs");
        assert_eq!(found.files.len(), 1);
        assert_eq!(found.problems.len(), 1);
        assert_eq!(found.problems[0].reason, "symbolic link loop");
    }

    #[cfg(unix)]
    #[test]
    fn links_to_themselves_are_loops_too() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("self.txt", root.join("self.txt")).unwrap();
        std::os::unix::fs::symlink("pong.md", root.join("ping.md")).unwrap();
        std::os::unix::fs::symlink("ping.md", root.join("pong.md")).unwrap();
        let mut s = spec(&root);
        s.follow_links = true;
        let found = discover(&s, "docs");
        assert_eq!(found.files.len(), 1);
        let problems: Vec<(&str, &str)> =
            found.problems.iter().map(|p| (p.source_path.as_deref().unwrap(), p.reason.as_str())).collect();
        assert_eq!(
            problems,
            [
                ("corpus/ping.md", "symbolic link loop"),
                ("corpus/pong.md", "symbolic link loop"),
                ("corpus/self.txt", "symbolic link loop")
            ]
        );
        // Not following links, they are not read at all.
        s.follow_links = false;
        let found = discover(&s, "docs");
        assert_eq!((found.files.len(), found.problems.len()), (1, 0));
    }

    #[test]
    fn size_limits_must_be_sane() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.max_file_mb = u64::MAX;
        s.max_record_mb = 0;
        let problems = s.check();
        assert_eq!(
            problems,
            [
                ("max_file_mb".to_string(), format!("must be between 1 and 1048576 (MiB), found {}", u64::MAX)),
                ("max_record_mb".to_string(), "must be between 1 and 1048576 (MiB), found 0".to_string()),
            ]
        );
        assert_eq!(s.limits().max_file_bytes, u64::MAX, "never wraps around");
    }

    #[test]
    fn reader_batches_rows_and_gives_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(&root).unwrap();
        let lines: String = (0..5).map(|i| format!("{{\"text\": \"row {i}\"}}\n")).collect();
        std::fs::write(root.join("rows.jsonl"), format!("{lines}not json\n")).unwrap();
        let s = spec(&root);
        let file = discover(&s, "docs").files.remove(0);
        let mut reader = FileReader::open(&s, "docs", file.clone());
        let first = reader.next_batch(2, usize::MAX).unwrap();
        assert_eq!(first.rows.num_rows(), 2);
        let mut total = first.rows.num_rows();
        let mut rejects = first.rejects.len();
        while let Some(batch) = reader.next_batch(2, usize::MAX) {
            total += batch.rows.num_rows();
            rejects += batch.rejects.len();
        }
        assert_eq!((total, rejects), (5, 1));
        let again = FileReader::open(&s, "docs", file).next_batch(2, usize::MAX).unwrap();
        assert_eq!(again.rows.column(0), first.rows.column(0), "ids are stable");
    }

    #[test]
    fn zero_batch_limits_still_read_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("rows.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        let s = spec(&root);
        let file = discover(&s, "docs").files.remove(0);
        let mut reader = FileReader::open(&s, "docs", file);
        let mut sizes = Vec::new();
        while let Some(batch) = reader.next_batch(0, 0) {
            sizes.push(batch.rows.num_rows());
        }
        assert_eq!(sizes, [1, 1]);
    }

    #[test]
    fn bad_records_count_toward_the_batch_limit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("rows.jsonl"), "bad\n".repeat(10)).unwrap();
        let s = spec(&root);
        let file = discover(&s, "docs").files.remove(0);
        let mut reader = FileReader::open(&s, "docs", file);
        let mut sizes = Vec::new();
        while let Some(batch) = reader.next_batch(4, usize::MAX) {
            sizes.push((batch.rows.num_rows(), batch.rejects.len()));
        }
        assert_eq!(sizes, [(0, 4), (0, 4), (0, 2)]);
    }
}
