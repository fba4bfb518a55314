//! Sinks: Parquet (zstd) or JSONL parts, each committed by write, fsync, rename.
//!
//! Rows reach a sink bucketed by a hash of their id; each bucket writes its own sequence of parts,
//! `part-<bucket>-<seq>`, rotated every `rows_per_part` rows. A reader never sees a half-written part:
//! parts are written under a dot-name and renamed into place only once complete and synced.
//!
//! The engine's sinks also journal the keys (record ids) of every part in `state/parts/<dir>/<part>.keys`,
//! written and synced before the part is renamed into place. A resumed run reads the journal of the parts
//! that made it, skips those records, and goes on numbering after them: exactly once, whenever the
//! previous process died.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use super::atomic::write_atomically;
use super::json_rows;

/// Output file format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    #[default]
    Parquet,
    Jsonl,
}

impl SinkFormat {
    pub fn extension(self) -> &'static str {
        match self {
            SinkFormat::Parquet => "parquet",
            SinkFormat::Jsonl => "jsonl",
        }
    }
}

/// Settings of a `sink` node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(default)]
    pub format: SinkFormat,
    /// Folder inside the run directory.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// Columns to write, in order (default: all).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Renames, old -> new.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Rows per committed part.
    #[serde(default = "default_rows_per_part")]
    pub rows_per_part: usize,
    /// Rows per Parquet row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// zstd level for Parquet (1-22).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
}

fn default_dir() -> String {
    "data".to_string()
}
fn default_rows_per_part() -> usize {
    100_000
}
fn default_row_group_rows() -> usize {
    16_384
}
fn default_zstd_level() -> i32 {
    3
}

impl SinkSpec {
    /// Settings problems, as (key, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let dir_ok = !self.dir.is_empty()
            && self.dir.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !self.dir.starts_with('.')
            && !matches!(self.dir.as_str(), "rejects" | "state");
        if !dir_ok {
            problems.push((
                "dir".to_string(),
                format!("`{}` is not a plain folder name (letters, digits, - _ .; not `rejects` or `state`)", self.dir),
            ));
        }
        if self.rows_per_part == 0 {
            problems.push(("rows_per_part".to_string(), "must be at least 1".to_string()));
        }
        if self.row_group_rows == 0 {
            problems.push(("row_group_rows".to_string(), "must be at least 1".to_string()));
        }
        if ZstdLevel::try_new(self.zstd_level).is_err() {
            problems.push(("zstd_level".to_string(), "must be between 1 and 22".to_string()));
        }
        problems
    }

    pub fn project(&self) -> sdg_operators::project::ProjectSpec {
        sdg_operators::project::ProjectSpec { columns: self.columns.clone(), rename: self.rename.clone() }
    }
}

/// How parts are written.
#[derive(Debug, Clone)]
pub struct PartSettings {
    pub format: SinkFormat,
    pub rows_per_part: usize,
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

impl From<&SinkSpec> for PartSettings {
    fn from(spec: &SinkSpec) -> Self {
        PartSettings {
            format: spec.format,
            rows_per_part: spec.rows_per_part,
            row_group_rows: spec.row_group_rows,
            zstd_level: spec.zstd_level,
        }
    }
}

/// A part that was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedPart {
    /// Path relative to the run directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("cannot encode a row for {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("cannot resume into {path}: {message}")]
    Resume { path: PathBuf, message: String },
}

enum Encoder {
    Parquet(Box<ArrowWriter<File>>),
    Jsonl(BufWriter<File>),
}

/// One part being written.
struct OpenPart {
    temp: PathBuf,
    path: PathBuf,
    encoder: Encoder,
    rows: u64,
    /// Keys of the rows in this part, when journaled.
    keys: Vec<u128>,
}

/// The journal of a bucket's committed keys.
struct Journal {
    dir: PathBuf,
    /// Keys of the records committed by earlier processes of this run.
    done: HashSet<u128>,
}

/// The journal key of a record key: 128 bits of BLAKE3 (collisions are out of reach at any row count).
pub fn journal_key(key: &str) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The folder that holds the key journals of sink folder `relative_dir`.
pub fn journal_dir(run_dir: &Path, relative_dir: &str) -> PathBuf {
    run_dir.join("state").join("parts").join(relative_dir)
}

/// The parts of one bucket of one sink.
pub struct BucketWriter {
    dir: PathBuf,
    relative_dir: String,
    bucket: u32,
    seq: u32,
    schema: SchemaRef,
    settings: PartSettings,
    open: Option<OpenPart>,
    pub committed: Vec<CommittedPart>,
    journal: Option<Journal>,
}

impl Drop for BucketWriter {
    /// A part still open here was never committed (a write failed): its temp file goes, so a failed run
    /// leaves only complete parts behind.
    fn drop(&mut self) {
        if let Some(part) = self.open.take() {
            drop(part.encoder);
            let _ = std::fs::remove_file(&part.temp);
        }
    }
}

impl BucketWriter {
    /// `run_dir/relative_dir` receives this bucket's parts.
    pub fn new(run_dir: &Path, relative_dir: &str, bucket: u32, schema: SchemaRef, settings: PartSettings) -> Self {
        BucketWriter {
            dir: run_dir.join(relative_dir),
            relative_dir: relative_dir.to_string(),
            bucket,
            seq: 0,
            schema,
            settings,
            open: None,
            committed: Vec::new(),
            journal: None,
        }
    }

    /// A writer that journals keys and picks up after the parts this bucket already committed: their keys
    /// are skipped by `write_keyed`, and new parts are numbered after them. Leftovers of a killed process
    /// (temp parts, journals of parts never renamed) are removed.
    pub fn resumable(
        run_dir: &Path,
        relative_dir: &str,
        bucket: u32,
        schema: SchemaRef,
        settings: PartSettings,
    ) -> Result<Self, SinkError> {
        let mut writer = BucketWriter::new(run_dir, relative_dir, bucket, schema, settings);
        let journal_dir = journal_dir(run_dir, relative_dir);
        let fail = |path: &Path, message: String| SinkError::Resume { path: path.to_path_buf(), message };
        let prefix = format!("part-{bucket:05}-");
        let extension = format!(".{}", writer.settings.format.extension());
        let mut done = HashSet::new();
        let mut committed = Vec::new();
        for name in file_names(&writer.dir).map_err(|e| fail(&writer.dir, e.to_string()))? {
            if name.starts_with(&format!(".{prefix}")) && name.ends_with(".tmp") {
                let temp = writer.dir.join(&name);
                std::fs::remove_file(&temp).map_err(|e| fail(&temp, e.to_string()))?;
                continue;
            }
            let Some(seq) = name.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(&extension)) else {
                continue;
            };
            let Ok(seq) = seq.parse::<u32>() else { continue };
            let keys_path = journal_dir.join(format!("{name}.keys"));
            let bytes = std::fs::read(&keys_path).map_err(|e| {
                fail(&keys_path, format!("{e}: the part {name} has no key journal; run again with --overwrite"))
            })?;
            done.extend(bytes.chunks_exact(16).map(|c| u128::from_le_bytes(c.try_into().unwrap_or([0; 16]))));
            committed.push(name);
            writer.seq = writer.seq.max(seq + 1);
        }
        // Journals of parts that never got renamed into place: the crash came between the two renames.
        for name in file_names(&journal_dir).map_err(|e| fail(&journal_dir, e.to_string()))? {
            if let Some(part) = name.strip_suffix(".keys")
                && part.starts_with(&prefix)
                && !committed.iter().any(|n| n == part)
            {
                let orphan = journal_dir.join(&name);
                std::fs::remove_file(&orphan).map_err(|e| fail(&orphan, e.to_string()))?;
            }
        }
        writer.journal = Some(Journal { dir: journal_dir, done });
        Ok(writer)
    }

    /// Keys already committed by an earlier process of this run.
    pub fn already_committed(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.done.len())
    }

    /// Appends the rows whose key (one per row) is not committed yet; returns how many were skipped.
    pub fn write_keyed(&mut self, batch: &RecordBatch, keys: &[String]) -> Result<usize, SinkError> {
        let hashed: Vec<u128> = keys.iter().map(|k| journal_key(k)).collect();
        let done = self.journal.as_ref().map(|j| &j.done);
        let fresh: Vec<u32> = (0..batch.num_rows())
            .filter(|&row| done.is_none_or(|d| !d.contains(&hashed[row])))
            .map(|r| r as u32)
            .collect();
        let skipped = batch.num_rows() - fresh.len();
        if skipped == 0 {
            self.write_rows(batch, Some(&hashed))?;
        } else if !fresh.is_empty() {
            let indices = arrow::array::UInt32Array::from(fresh.clone());
            let kept = arrow::compute::take_record_batch(batch, &indices)
                .map_err(|e| SinkError::Encode { path: self.dir.clone(), message: e.to_string() })?;
            let kept_keys: Vec<u128> = fresh.iter().map(|&r| hashed[r as usize]).collect();
            self.write_rows(&kept, Some(&kept_keys))?;
        }
        Ok(skipped)
    }

    /// Appends rows, committing a part each time one fills up.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.write_rows(batch, None)
    }

    fn write_rows(&mut self, batch: &RecordBatch, keys: Option<&[u128]>) -> Result<(), SinkError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.open.is_none() {
                self.open = Some(self.start_part()?);
            }
            let Some(part) = self.open.as_mut() else { break };
            let room = self.settings.rows_per_part - part.rows as usize;
            let take = room.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            match &mut part.encoder {
                Encoder::Parquet(writer) => {
                    writer.write(&slice).map_err(|source| SinkError::Parquet { path: part.temp.clone(), source })?
                }
                Encoder::Jsonl(writer) => {
                    for row in 0..slice.num_rows() {
                        let value = json_rows::row_to_json(&slice, row)
                            .map_err(|e| SinkError::Encode { path: part.temp.clone(), message: e.to_string() })?;
                        serde_json::to_writer(&mut *writer, &value)
                            .map_err(std::io::Error::from)
                            .and_then(|_| writer.write_all(b"\n"))
                            .map_err(|source| SinkError::Io { path: part.temp.clone(), source })?;
                    }
                }
            }
            if let Some(keys) = keys {
                part.keys.extend_from_slice(&keys[offset..offset + take]);
            }
            part.rows += take as u64;
            offset += take;
            if part.rows as usize >= self.settings.rows_per_part {
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Commits the open part, if any.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        self.commit()
    }

    fn start_part(&mut self) -> Result<OpenPart, SinkError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let name = format!("part-{:05}-{:05}.{}", self.bucket, self.seq, self.settings.format.extension());
        self.seq += 1;
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp).map_err(io(&temp))?;
        let encoder = match self.settings.format {
            SinkFormat::Parquet => {
                let level = ZstdLevel::try_new(self.settings.zstd_level).unwrap_or_default();
                let mut props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(level))
                    .set_max_row_group_row_count(Some(self.settings.row_group_rows));
                // Ids and texts are (nearly) all distinct: a dictionary only costs time before it is
                // abandoned. Low-cardinality columns (source_path, format, doc_id) keep theirs.
                for field in self.schema.fields() {
                    if matches!(field.name().as_str(), "id" | "text") {
                        props = props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
                    }
                }
                let props = props
                    .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                        "sdg.schema".to_string(),
                        schema_doc(&self.schema).to_string(),
                    )]))
                    .build();
                let writer = ArrowWriter::try_new(file, Arc::clone(&self.schema), Some(props))
                    .map_err(|source| SinkError::Parquet { path: temp.clone(), source })?;
                Encoder::Parquet(Box::new(writer))
            }
            SinkFormat::Jsonl => Encoder::Jsonl(BufWriter::with_capacity(1 << 20, file)),
        };
        Ok(OpenPart { temp, path, encoder, rows: 0, keys: Vec::new() })
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
        let temp = part.temp.clone();
        let committed = self.commit_part(part);
        if committed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        committed
    }

    fn commit_part(&mut self, part: OpenPart) -> Result<(), SinkError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkError::Io { path, source }
        };
        let file = match part.encoder {
            Encoder::Parquet(writer) => {
                writer.into_inner().map_err(|source| SinkError::Parquet { path: part.temp.clone(), source })?
            }
            Encoder::Jsonl(writer) => {
                writer.into_inner().map_err(|e| SinkError::Io { path: part.temp.clone(), source: e.into_error() })?
            }
        };
        file.sync_all().map_err(io(&part.temp))?;
        let bytes = file.metadata().map_err(io(&part.temp))?.len();
        drop(file);
        let name = part.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        // The journal first: a part that is visible always has its keys recorded.
        if let Some(journal) = &self.journal {
            std::fs::create_dir_all(&journal.dir).map_err(io(&journal.dir))?;
            let keys_path = journal.dir.join(format!("{name}.keys"));
            let bytes: Vec<u8> = part.keys.iter().flat_map(|k| k.to_le_bytes()).collect();
            write_atomically(&keys_path, &bytes).map_err(io(&keys_path))?;
        }
        std::fs::rename(&part.temp, &part.path).map_err(io(&part.path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.committed.push(CommittedPart { path: format!("{}/{name}", self.relative_dir), rows: part.rows, bytes });
        Ok(())
    }
}

/// The role of an output column in sdg's output schema (v1), by its name: `core` (the record itself),
/// `verification` (votes, scores, categories, rewrites, translations), `provenance` (where it came from and
/// how it was made) or `user` (a column the config kept or named).
pub fn column_role(name: &str) -> &'static str {
    const CORE: &[&str] = &["id", "text", "question", "answer", "response", "instruction", "language"];
    const VERIFICATION: &[&str] = &["agreement", "votes", "pass_rate", "category", "student_answers"];
    const VERIFICATION_PREFIXES: &[&str] = &["vote_", "score_", "rewrite_", "translate_", "translation_"];
    const PROVENANCE: &[&str] = &["source_path", "format", "meta", "doc_id", "parent_id", "sample_index"];
    const PROVENANCE_PREFIXES: &[&str] = &["chunk_", "gen_", "hub_", "passage_", "retrieval_", "evol_", "judge_"];
    if CORE.contains(&name) {
        "core"
    } else if VERIFICATION.contains(&name) || VERIFICATION_PREFIXES.iter().any(|p| name.starts_with(p)) {
        "verification"
    } else if PROVENANCE.contains(&name) || PROVENANCE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        "provenance"
    } else {
        "user"
    }
}

/// The `sdg.schema` metadata of a part: schema version and each column's role.
pub fn schema_doc(schema: &Schema) -> serde_json::Value {
    let columns: serde_json::Map<String, serde_json::Value> =
        schema.fields().iter().map(|f| (f.name().clone(), serde_json::json!(column_role(f.name())))).collect();
    serde_json::json!({"version": 1, "columns": columns})
}

/// The parts committed in sink folder `relative_dir` (by this process or an earlier one), with their row
/// counts from the key journal, sorted by path.
pub fn committed_parts(run_dir: &Path, relative_dir: &str, format: SinkFormat) -> std::io::Result<Vec<CommittedPart>> {
    let dir = run_dir.join(relative_dir);
    let journal = journal_dir(run_dir, relative_dir);
    let extension = format!(".{}", format.extension());
    let mut parts = Vec::new();
    for name in file_names(&dir)? {
        if !(name.starts_with("part-") && name.ends_with(&extension)) {
            continue;
        }
        let bytes = std::fs::metadata(dir.join(&name))?.len();
        let rows = std::fs::metadata(journal.join(format!("{name}.keys"))).map_or(0, |m| m.len() / 16);
        parts.push(CommittedPart { path: format!("{relative_dir}/{name}"), rows, bytes });
    }
    Ok(parts)
}

/// Names of the entries of `dir`, sorted (none when it does not exist).
pub(crate) fn file_names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry?.file_name().to_string_lossy().to_string());
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Makes a rename durable: the directory entry itself must reach the disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The one atomic-write helper, under its old name for callers not yet switched to
/// [`crate::io::atomic::write_atomically`].
pub use crate::io::atomic::write_atomically as write_atomic;

/// A complete config that uses `sink` (paths relative to the repository's `configs/`; `sdg kinds sink`).
pub const EXAMPLE: &str = r#"# Writes the glossary as JSON Lines: three columns, with `term` renamed to `name`.
nodes:
  - {id: terms, kind: ingest, paths: [sample-corpus/tables/glossary.csv], fields: {text: text, keep: [term]}}
  - {id: out, kind: sink, input: terms, format: jsonl, columns: [id, term, text], rename: {term: name}}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from((0..n).map(|i| format!("id{i}")).collect::<Vec<_>>())),
                Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn settings(format: SinkFormat, rows_per_part: usize) -> PartSettings {
        PartSettings { format, rows_per_part, row_group_rows: 4, zstd_level: 3 }
    }

    #[test]
    fn parquet_parts_rotate_commit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(25);
        let mut writer = BucketWriter::new(dir.path(), "data", 3, b.schema(), settings(SinkFormat::Parquet, 10));
        writer.write(&b).unwrap();
        assert_eq!(writer.committed.len(), 2, "two full parts are committed before finish");
        writer.finish().unwrap();
        let names: Vec<_> = writer.committed.iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            names,
            vec!["data/part-00003-00000.parquet", "data/part-00003-00001.parquet", "data/part-00003-00002.parquet"]
        );
        let mut total = 0;
        for part in &writer.committed {
            let file = File::open(dir.path().join(&part.path)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            assert!(reader.metadata().num_row_groups() >= 2, "row groups of 4 rows");
            // Parquet records the codec, not the level.
            assert!(matches!(reader.metadata().row_group(0).column(0).compression(), Compression::ZSTD(_)));
            total += reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum::<usize>();
        }
        assert_eq!(total, 25);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temp files remain");
    }

    fn keys(n: i64) -> Vec<String> {
        (0..n).map(|i| format!("id{i}")).collect()
    }

    #[test]
    fn a_resumed_writer_skips_committed_keys_and_numbers_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(12);
        let mut first =
            BucketWriter::resumable(dir.path(), "data", 1, b.schema(), settings(SinkFormat::Parquet, 5)).unwrap();
        // The first 7 rows: one part committed (5 rows), two rows in an open part when the process "dies".
        assert_eq!(first.write_keyed(&b.slice(0, 7), &keys(7)[..7]).unwrap(), 0);
        assert_eq!(first.committed.len(), 1);
        std::mem::forget(first);
        // A crash between the journal's rename and the part's: a journal without its part.
        let journals = journal_dir(dir.path(), "data");
        std::fs::write(journals.join("part-00001-00007.parquet.keys"), [0u8; 16]).unwrap();
        assert!(
            std::fs::read_dir(dir.path().join("data"))
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
        );

        let mut second =
            BucketWriter::resumable(dir.path(), "data", 1, b.schema(), settings(SinkFormat::Parquet, 5)).unwrap();
        assert_eq!(second.already_committed(), 5);
        assert_eq!(second.write_keyed(&b, &keys(12)).unwrap(), 5, "the committed rows are skipped");
        second.finish().unwrap();
        let names: Vec<&str> = second.committed.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(names, vec!["data/part-00001-00001.parquet", "data/part-00001-00002.parquet"]);
        let parts = committed_parts(dir.path(), "data", SinkFormat::Parquet).unwrap();
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 12, "every row once");
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!journals.join("part-00001-00007.parquet.keys").exists(), "the orphan journal is gone");
    }

    #[test]
    fn a_part_without_a_journal_cannot_be_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(3);
        let mut plain = BucketWriter::new(dir.path(), "data", 0, b.schema(), settings(SinkFormat::Parquet, 5));
        plain.write(&b).unwrap();
        plain.finish().unwrap();
        let error =
            BucketWriter::resumable(dir.path(), "data", 0, b.schema(), settings(SinkFormat::Parquet, 5)).err().unwrap();
        assert!(error.to_string().contains("--overwrite"), "{error}");
    }

    #[test]
    fn parquet_parts_carry_the_column_roles_in_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(2);
        let mut writer = BucketWriter::new(dir.path(), "data", 0, b.schema(), settings(SinkFormat::Parquet, 10));
        writer.write(&b).unwrap();
        writer.finish().unwrap();
        let file = File::open(dir.path().join(&writer.committed[0].path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let metadata = reader.metadata().file_metadata().key_value_metadata().unwrap();
        let doc = metadata.iter().find(|kv| kv.key == "sdg.schema").and_then(|kv| kv.value.clone()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["columns"]["id"], "core");
        assert_eq!(doc["columns"]["n"], "user");
        assert_eq!(column_role("vote_samples"), "verification");
        assert_eq!(column_role("gen_model"), "provenance");
    }

    #[test]
    fn jsonl_parts_hold_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let b = batch(3);
        let mut writer = BucketWriter::new(dir.path(), "out", 0, b.schema(), settings(SinkFormat::Jsonl, 100));
        writer.write(&b).unwrap();
        assert!(writer.committed.is_empty(), "nothing is visible before the part is complete");
        writer.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("out/part-00000-00000.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(text.lines().next().unwrap(), r#"{"id":"id0","n":0}"#);
    }

    #[test]
    fn spec_checks_folder_names_and_bounds() {
        let mut spec: SinkSpec = serde_json::from_str("{}").unwrap();
        assert!(spec.check().is_empty());
        spec.dir = "../x".into();
        spec.rows_per_part = 0;
        let keys: Vec<_> = spec.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["dir", "rows_per_part"]);
    }

    #[test]
    fn write_atomic_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    }
}
