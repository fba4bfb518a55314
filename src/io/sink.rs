//! Sinks: Parquet (zstd) or JSONL parts, each committed by write, fsync, rename.
//!
//! Rows reach a sink bucketed by a hash of their id; each bucket writes its own sequence of parts,
//! `part-<bucket>-<seq>`, rotated every `rows_per_part` rows. A reader never sees a half-written part:
//! parts are written under a dot-name and renamed into place only once complete and synced.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

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
        }
    }

    /// Appends rows, committing a part each time one fills up.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
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
                let props = props.build();
                let writer = ArrowWriter::try_new(file, Arc::clone(&self.schema), Some(props))
                    .map_err(|source| SinkError::Parquet { path: temp.clone(), source })?;
                Encoder::Parquet(Box::new(writer))
            }
            SinkFormat::Jsonl => Encoder::Jsonl(BufWriter::with_capacity(1 << 20, file)),
        };
        Ok(OpenPart { temp, path, encoder, rows: 0 })
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
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
        std::fs::rename(&part.temp, &part.path).map_err(io(&part.path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        let name = part.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        self.committed.push(CommittedPart { path: format!("{}/{name}", self.relative_dir), rows: part.rows, bytes });
        Ok(())
    }
}

/// Makes a rename durable: the directory entry itself must reach the disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    sync_dir(dir)
}

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
