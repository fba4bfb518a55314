//! Training-ready exports of a run directory (`sdg export`): verl RL and SFT Parquet, OpenAI-style
//! `messages` (TRL, `datasets`), alpaca, sharegpt and plain JSONL; deterministic splits by a hash of the
//! record id; category filters; and a Hugging Face dataset card.
//!
//! Rows stream from the run's committed parts to one writer per (format, split): memory does not grow with
//! the size of the run.

pub mod card;
pub mod formats;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::io::rejects::text_column;
use crate::run::manifest::Manifest;
pub use formats::ExportFormat;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Settings(String),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub formats: Vec<ExportFormat>,
    /// Split names and their shares, in order (shares sum to 1).
    pub splits: Vec<(String, f64)>,
    /// Keep only rows whose `category` is one of these (empty: all rows).
    pub categories: Vec<String>,
    /// A system message put first in every conversation.
    pub system: Option<String>,
    /// The column that holds the prompt (the user turn).
    pub prompt_column: String,
    /// The column that holds the full response (the assistant turn); `None`: `response`, else the answer.
    pub response_column: Option<String>,
    /// The column that holds the reference answer (verl's `ground_truth`).
    pub answer_column: String,
    /// verl's `data_source` when a row has no Hub dataset of its own.
    pub data_source: String,
    /// verl's `ability`.
    pub ability: String,
    /// A `tokenizer.json` for the dataset card's token counts (default: an estimate, bytes / 4).
    pub tokenizer: Option<PathBuf>,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            formats: ExportFormat::ALL.to_vec(),
            splits: vec![("train".to_string(), 1.0)],
            categories: Vec::new(),
            system: None,
            prompt_column: "question".to_string(),
            response_column: None,
            answer_column: "answer".to_string(),
            data_source: "sdg".to_string(),
            ability: "general".to_string(),
            tokenizer: None,
        }
    }
}

/// The `export:` section of a config: what `sdg run` exports into `OUT/export` after a completed run
/// (the same settings as `sdg export`'s flags).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Formats to write (default: all six).
    #[serde(default)]
    pub formats: Vec<String>,
    /// Split shares by name (default: all in `train`).
    #[serde(default)]
    pub splits: BTreeMap<String, f64>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub prompt_column: Option<String>,
    #[serde(default)]
    pub response_column: Option<String>,
    #[serde(default)]
    pub answer_column: Option<String>,
    #[serde(default)]
    pub data_source: Option<String>,
    #[serde(default)]
    pub ability: Option<String>,
    /// Folder inside the run directory.
    #[serde(default = "default_export_dir")]
    pub dir: String,
}

fn default_export_dir() -> String {
    "export".to_string()
}

impl ExportConfig {
    /// The settings, or the problems as (key, message).
    pub fn settings(&self) -> Result<ExportSettings, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut settings = ExportSettings::default();
        if !self.formats.is_empty() {
            settings.formats = Vec::new();
            for (i, name) in self.formats.iter().enumerate() {
                match ExportFormat::parse(name) {
                    Ok(format) => settings.formats.push(format),
                    Err(message) => problems.push((format!("formats[{i}]"), message)),
                }
            }
        }
        if !self.splits.is_empty() {
            // Written in the order train, validation, test, then the others by name.
            let order = |name: &str| ["train", "validation", "test"].iter().position(|n| *n == name).unwrap_or(3);
            let mut names: Vec<&String> = self.splits.keys().collect();
            names.sort_by_key(|n| (order(n), n.to_string()));
            let text: Vec<String> = names.iter().map(|n| format!("{n}={}", self.splits[*n])).collect();
            match parse_splits(&text.join(",")) {
                Ok(splits) => settings.splits = splits,
                Err(e) => problems.push(("splits".to_string(), e.to_string())),
            }
        }
        let plain = self.dir.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if self.dir.is_empty()
            || self.dir.starts_with('.')
            || !plain
            || matches!(self.dir.as_str(), "data" | "rejects" | "state")
        {
            problems.push(("dir".to_string(), format!("`{}` is not a plain folder name of its own", self.dir)));
        }
        settings.categories = self.categories.clone();
        settings.system = self.system.clone();
        settings.response_column = self.response_column.clone();
        for (value, target) in [
            (&self.prompt_column, &mut settings.prompt_column),
            (&self.answer_column, &mut settings.answer_column),
            (&self.data_source, &mut settings.data_source),
            (&self.ability, &mut settings.ability),
        ] {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        if problems.is_empty() { Ok(settings) } else { Err(problems) }
    }
}

/// Parses `train=0.8,validation=0.1,test=0.1`: names are plain, shares positive and summing to 1.
pub fn parse_splits(text: &str) -> Result<Vec<(String, f64)>, ExportError> {
    let bad = |m: String| ExportError::Settings(format!("splits `{text}`: {m}"));
    let mut splits: Vec<(String, f64)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, share) = item.split_once('=').ok_or_else(|| bad(format!("`{item}` is not NAME=SHARE")))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad(format!("`{name}` is not a plain split name")));
        }
        let share: f64 = share.trim().parse().map_err(|_| bad(format!("`{share}` is not a number")))?;
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(format!("the share of `{name}` must be in (0, 1]")));
        }
        if splits.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("`{name}` appears twice")));
        }
        splits.push((name.to_string(), share));
    }
    let total: f64 = splits.iter().map(|(_, s)| s).sum();
    if splits.is_empty() || (total - 1.0).abs() > 1e-6 {
        return Err(bad(format!("shares must sum to 1 (they sum to {total})")));
    }
    Ok(splits)
}

/// The split of a record: a hash of its id placed on the cumulative shares. Stable across runs, machines
/// and exports, so a record never moves between train and test.
pub fn split_of(id: &str, splits: &[(String, f64)]) -> usize {
    let hash = blake3::hash(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let u = (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    let mut cumulative = 0.0;
    for (i, (_, share)) in splits.iter().enumerate() {
        cumulative += share;
        if u < cumulative {
            return i;
        }
    }
    splits.len() - 1
}

/// One record as the exporters see it.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub response: &'a str,
    pub answer: &'a str,
    pub source: Option<&'a str>,
    pub hub_dataset: Option<&'a str>,
    pub category: Option<&'a str>,
    pub pass_rate: Option<f64>,
}

/// The columns of a batch that records are read from.
struct Columns<'a> {
    id: &'a StringArray,
    prompt: &'a StringArray,
    response: &'a StringArray,
    answer: Option<&'a StringArray>,
    source: Option<&'a StringArray>,
    hub_dataset: Option<&'a StringArray>,
    category: Option<&'a StringArray>,
    pass_rate: Option<&'a Float64Array>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch, settings: &ExportSettings) -> Result<Columns<'a>, String> {
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        let required = |name: &str| {
            text_column(batch, name)
                .ok_or_else(|| format!("the data has no text column `{name}` (columns: {})", names.join(", ")))
        };
        let response_name = match &settings.response_column {
            Some(name) => name.clone(),
            None if text_column(batch, "response").is_some() => "response".to_string(),
            None => settings.answer_column.clone(),
        };
        Ok(Columns {
            id: required("id")?,
            prompt: required(&settings.prompt_column)?,
            response: required(&response_name)?,
            answer: text_column(batch, &settings.answer_column),
            source: text_column(batch, "source_path"),
            hub_dataset: text_column(batch, "hub_dataset"),
            category: text_column(batch, "category"),
            pass_rate: batch.column_by_name("pass_rate").and_then(|c| c.as_any().downcast_ref::<Float64Array>()),
        })
    }

    fn record(&self, row: usize) -> Option<Record<'a>> {
        let text = |a: &'a StringArray| (!a.is_null(row)).then(|| a.value(row));
        let response = text(self.response)?;
        Some(Record {
            id: text(self.id)?,
            prompt: text(self.prompt)?,
            response,
            answer: self.answer.and_then(text).unwrap_or(response),
            source: self.source.and_then(text),
            hub_dataset: self.hub_dataset.and_then(text),
            category: self.category.and_then(text),
            pass_rate: self.pass_rate.and_then(|a| (!a.is_null(row)).then(|| a.value(row))),
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// Rows per split, in the order of the settings' splits.
    pub rows_per_split: Vec<(String, u64)>,
    /// Files written, relative to the export folder.
    pub files: Vec<String>,
    /// Bytes of each written file, by (format, split name).
    pub bytes: BTreeMap<(ExportFormat, String), u64>,
    /// Rows left out: no prompt or response, or another category.
    pub skipped_incomplete: u64,
    pub skipped_category: u64,
    pub stats: card::Stats,
}

impl ExportReport {
    /// Rows per split, as `train 90, validation 5, test 5`.
    pub fn split_summary(&self) -> String {
        let splits: Vec<String> = self.rows_per_split.iter().map(|(name, n)| format!("{name} {n}")).collect();
        splits.join(", ")
    }
}

enum Writer {
    Parquet(Box<ArrowWriter<File>>),
    Jsonl(BufWriter<File>),
}

/// Exports the committed data of `run_dir` into `out` (one folder per format, a file per split) and writes
/// the dataset card `out/README.md`.
pub fn export(run_dir: &Path, out: &Path, settings: &ExportSettings) -> Result<ExportReport, ExportError> {
    if settings.formats.is_empty() {
        return Err(ExportError::Settings("no export format given".to_string()));
    }
    let (manifest, report) = scan(run_dir, Some(out), settings)?;
    let card = card::render(&manifest, settings, &report);
    let card_path = out.join("README.md");
    crate::io::atomic::write_atomically(&card_path, card.as_bytes()).map_err(io_error(&card_path))?;
    Ok(report)
}

/// Writes the dataset card of a run itself, `run_dir/README.md`, describing its `data/` as it is.
pub fn write_run_card(run_dir: &Path) -> Result<(), ExportError> {
    let settings = ExportSettings { formats: Vec::new(), ..Default::default() };
    let (manifest, report) = scan(run_dir, None, &settings)?;
    let card = card::render(&manifest, &settings, &report);
    let card_path = run_dir.join("README.md");
    crate::io::atomic::write_atomically(&card_path, card.as_bytes()).map_err(io_error(&card_path))
}

/// Reads the run's committed data once: writes the formats of `settings` into `out` (when given) and
/// gathers what the card reports.
fn scan(
    run_dir: &Path,
    out: Option<&Path>,
    settings: &ExportSettings,
) -> Result<(Manifest, ExportReport), ExportError> {
    let manifest_path = run_dir.join("manifest.json");
    let mut manifest = Manifest::read(&manifest_path).map_err(io_error(&manifest_path))?;
    // Manifests written before the config text was kept: read it from where it came from.
    if manifest.config.is_empty() {
        manifest.config = match manifest.config_origin.as_str() {
            "<embedded>" => crate::config::EMBEDDED_DEFAULT.to_string(),
            origin => std::fs::read_to_string(origin).unwrap_or_default(),
        };
    }
    let mut parts: Vec<PathBuf> = Vec::new();
    for output in manifest.outputs.values() {
        for part in &output.parts {
            if !part.path.ends_with(".parquet") {
                return Err(ExportError::Settings(format!(
                    "{}: export reads Parquet sinks; this sink writes {}",
                    output.dir, part.path
                )));
            }
            parts.push(run_dir.join(&part.path));
        }
    }
    parts.sort();
    let tokenizer =
        match &settings.tokenizer {
            Some(path) => Some(tokenizers::Tokenizer::from_file(path).map_err(|e| ExportError::Io {
                path: path.clone(),
                message: format!("cannot load the tokenizer: {e}"),
            })?),
            None => None,
        };
    if let Some(out) = out {
        std::fs::create_dir_all(out).map_err(io_error(out))?;
        // Files of an earlier export (a split that is empty now) must not linger beside the new ones.
        for format in &settings.formats {
            let dir = out.join(format.name());
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
        }
    }
    let mut writers: BTreeMap<(ExportFormat, usize), Writer> = BTreeMap::new();
    let mut report = ExportReport {
        rows_per_split: settings.splits.iter().map(|(n, _)| (n.clone(), 0)).collect(),
        ..Default::default()
    };
    let mut stats = card::StatsBuilder::new(tokenizer);
    for part in &parts {
        let file = File::open(part).map_err(io_error(part))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| ExportError::Io { path: part.clone(), message: e.to_string() })?;
        for batch in reader {
            let batch = batch.map_err(|e| ExportError::Io { path: part.clone(), message: e.to_string() })?;
            let columns =
                Columns::of(&batch, settings).map_err(|m| ExportError::Io { path: part.clone(), message: m })?;
            if !settings.categories.is_empty() && columns.category.is_none() {
                return Err(ExportError::Settings(
                    "a category filter needs a `category` column (a `score` node makes one)".to_string(),
                ));
            }
            let mut by_split: Vec<Vec<(usize, Record)>> = vec![Vec::new(); settings.splits.len()];
            for row in 0..batch.num_rows() {
                let Some(record) = columns.record(row) else {
                    report.skipped_incomplete += 1;
                    continue;
                };
                if !settings.categories.is_empty()
                    && !record.category.is_some_and(|c| settings.categories.iter().any(|k| k == c))
                {
                    report.skipped_category += 1;
                    continue;
                }
                by_split[split_of(record.id, &settings.splits)].push((row, record));
            }
            for (split, records) in by_split.iter().enumerate() {
                if records.is_empty() {
                    continue;
                }
                let (name, count) = &mut report.rows_per_split[split];
                let first_index = *count;
                *count += records.len() as u64;
                for (_, record) in records {
                    stats.add(record, settings.system.as_deref());
                }
                let Some(out) = out else { continue };
                for &format in &settings.formats {
                    let writer = match writers.entry((format, split)) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            let relative = format!("{}/{name}.{}", format.name(), format.extension());
                            let path = out.join(&relative);
                            report.files.push(relative);
                            e.insert(open_writer(&path, format, settings)?)
                        }
                    };
                    write_records(writer, format, settings, name, first_index, records, &batch)
                        .map_err(|message| ExportError::Io { path: out.join(format.name()), message })?;
                }
            }
        }
    }
    for ((format, split), writer) in writers {
        let path = out.unwrap_or(run_dir).join(format!(
            "{}/{}.{}",
            format.name(),
            settings.splits[split].0,
            format.extension()
        ));
        match writer {
            Writer::Parquet(writer) => {
                writer.close().map_err(|e| ExportError::Io { path: path.clone(), message: e.to_string() })?;
            }
            Writer::Jsonl(mut writer) => writer.flush().map_err(io_error(&path))?,
        }
        let size = std::fs::metadata(&path).map_err(io_error(&path))?.len();
        report.bytes.insert((format, settings.splits[split].0.clone()), size);
    }
    report.files.sort();
    report.stats = stats.finish();
    Ok((manifest, report))
}

fn open_writer(path: &Path, format: ExportFormat, settings: &ExportSettings) -> Result<Writer, ExportError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let file = File::create(path).map_err(io_error(path))?;
    Ok(match format.schema(settings.system.is_some()) {
        Some(schema) => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                    "sdg.schema".to_string(),
                    format.schema_doc().to_string(),
                )]))
                .build();
            let writer = ArrowWriter::try_new(file, schema, Some(props))
                .map_err(|e| ExportError::Io { path: path.to_path_buf(), message: e.to_string() })?;
            Writer::Parquet(Box::new(writer))
        }
        None => Writer::Jsonl(BufWriter::with_capacity(1 << 20, file)),
    })
}

fn write_records(
    writer: &mut Writer,
    format: ExportFormat,
    settings: &ExportSettings,
    split: &str,
    first_index: u64,
    records: &[(usize, Record)],
    batch: &RecordBatch,
) -> Result<(), String> {
    match writer {
        Writer::Parquet(writer) => {
            let built = formats::parquet_batch(format, settings, split, first_index, records)?;
            writer.write(&built).map_err(|e| e.to_string())
        }
        Writer::Jsonl(writer) => {
            for (row, record) in records {
                let value = match format {
                    ExportFormat::Jsonl => crate::io::json_rows::row_to_json(batch, *row).map_err(|e| e.to_string())?,
                    _ => formats::json_record(format, settings, record),
                };
                serde_json::to_writer(&mut *writer, &value).map_err(|e| e.to_string())?;
                writer.write_all(b"\n").map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_parse_and_refuse_bad_shares() {
        let splits = parse_splits("train=0.8, validation=0.1,test=0.1").unwrap();
        assert_eq!(splits.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["train", "validation", "test"]);
        for bad in ["train=0.8", "train=1.2", "a b=1", "train", "train=0.5,train=0.5", ""] {
            assert!(parse_splits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_of_is_stable_and_follows_the_shares() {
        let splits = parse_splits("train=0.8,validation=0.1,test=0.1").unwrap();
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            counts[split_of(&format!("record-{i}"), &splits)] += 1;
        }
        assert!((7_700..8_300).contains(&counts[0]), "{counts:?}");
        assert!((800..1_200).contains(&counts[1]) && (800..1_200).contains(&counts[2]), "{counts:?}");
        assert_eq!(split_of("abc", &splits), split_of("abc", &splits));
        // Growing the test share only moves records out of the last splits' neighbours, never reshuffles.
        assert_eq!(split_of("record-1", &parse_splits("train=1").unwrap()), 0);
    }
}
