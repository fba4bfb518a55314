//! The `hub` source: rows sampled from Hugging Face Hub datasets, with their provenance.
//!
//! Before the run starts, the sample is drawn (seeded, streaming only the row groups it needs; see
//! [`super::hub_datasets`]) and written as Parquet into a folder keyed by the node's settings, so a re-run
//! reads the same rows without touching the Hub. The node then runs as an `ingest` of that folder: the text
//! field becomes `text`, kept fields stay as they are, and every row carries `hub_dataset`, `hub_config`,
//! `hub_split` and `hub_row` (its index in the split).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use super::formats::FieldMapping;
use super::hub_datasets::{HubClient, SampleOptions, block_on, sample_rows_with};
use super::ingest::IngestSpec;

/// Provenance columns every hub row carries.
pub const PROVENANCE: [&str; 4] = ["hub_dataset", "hub_config", "hub_split", "hub_row"];
/// `dataset/config/split/row`: the row's id seed, so a row keeps its id (and its cached model calls) when a
/// larger sample is drawn later.
pub const HUB_KEY: &str = "hub_key";

/// Settings of a `hub` node.
///
/// ```yaml
/// - id: rows
///   kind: hub
///   datasets: [openai/gsm8k]        # or `search: grade school math` (the first max_datasets hits)
///   rows: 1000
///   seed: 7
///   splits: [train]
///   fields: {text: question, keep: [question, answer]}
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubSourceSpec {
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Search the Hub for datasets when `datasets` is empty.
    #[serde(default)]
    pub search: Option<String>,
    #[serde(default = "default_max_datasets")]
    pub max_datasets: usize,
    pub rows: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    #[serde(default)]
    pub fields: FieldMapping,
}

fn default_max_datasets() -> usize {
    3
}

impl HubSourceSpec {
    /// Problems with the settings, as (key, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.datasets.is_empty() && self.search.as_deref().is_none_or(|s| s.trim().is_empty()) {
            problems.push(("datasets".to_string(), "name datasets, or give `search` words to find them".to_string()));
        }
        if self.rows == 0 {
            problems.push(("rows".to_string(), "must be at least 1".to_string()));
        }
        problems
    }

    /// The ingest this node becomes once its rows are on disk in `folder`.
    pub fn ingest(&self, folder: &Path) -> IngestSpec {
        let mut spec = IngestSpec::for_paths(vec![folder.to_path_buf()], folder);
        spec.include = vec!["*.parquet".to_string()];
        spec.fields = self.fields.clone();
        if spec.fields.id.is_none() {
            spec.fields.id = Some(HUB_KEY.to_string());
        }
        for name in PROVENANCE {
            if !spec.fields.keep.iter().any(|k| k == name) {
                spec.fields.keep.push(name.to_string());
            }
        }
        spec
    }

    /// A stable name for this sample: the settings' hash.
    fn key(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
    }

    /// Draws the sample into `root/<key>/` unless it is there, and returns the ingest that reads it.
    pub fn materialize(&self, root: &Path) -> Result<IngestSpec, String> {
        let folder = root.join(self.key());
        if folder.join("complete").exists() {
            return Ok(self.ingest(&folder));
        }
        let client = HubClient::from_env();
        let datasets = if self.datasets.is_empty() {
            let query = self.search.clone().unwrap_or_default();
            let found = block_on(client.search(&query, self.max_datasets)).map_err(|e| e.to_string())?;
            if found.is_empty() {
                return Err(format!("no dataset on {} matches `{query}`", client.endpoint()));
            }
            found.into_iter().map(|d| d.id).collect()
        } else {
            self.datasets.clone()
        };
        let options = SampleOptions { per_dataset: None, splits: self.splits.clone() };
        let sample = block_on(sample_rows_with(&client, &datasets, self.rows, self.seed, &options))
            .map_err(|e| e.to_string())?;
        // Written to a staging folder and renamed, so an interrupted draw is never mistaken for a sample.
        let staging = root.join(format!(".{}.staging-{}", self.key(), std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
        for group in &sample.groups {
            let rows = group.batch.num_rows();
            let keys =
                group.origins.iter().map(|o| format!("{}/{}/{}/{}", group.dataset, group.config, group.split, o.row));
            let provenance: [ArrayRef; 5] = [
                Arc::new(StringArray::from(vec![group.dataset.as_str(); rows])),
                Arc::new(StringArray::from(vec![group.config.as_str(); rows])),
                Arc::new(StringArray::from(vec![group.split.as_str(); rows])),
                Arc::new(StringArray::from_iter_values(group.origins.iter().map(|o| o.row.to_string()))),
                Arc::new(StringArray::from_iter_values(keys)),
            ];
            let mut fields: Vec<Field> = group
                .batch
                .schema()
                .fields()
                .iter()
                .filter(|f| !PROVENANCE.contains(&f.name().as_str()) && f.name() != HUB_KEY)
                .map(|f| f.as_ref().clone())
                .collect();
            let mut columns: Vec<ArrayRef> = fields
                .iter()
                .map(|f| Arc::clone(group.batch.column_by_name(f.name()).expect("field of the batch")))
                .collect();
            fields.extend(PROVENANCE.iter().chain([&HUB_KEY]).map(|name| Field::new(*name, DataType::Utf8, false)));
            columns.extend(provenance);
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())?;
            // Named by the group, not its position: a row's path (part of its id) stays put as samples grow.
            let group_key = format!("{}\u{0}{}\u{0}{}", group.dataset, group.config, group.split);
            let path = staging.join(format!("{}.parquet", &blake3::hash(group_key.as_bytes()).to_hex()[..16]));
            write_parquet(&path, &batch).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::fs::write(staging.join("complete"), b"").map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::rename(&staging, &folder).map_err(|e| format!("cannot place {}: {e}", folder.display()))?;
        Ok(self.ingest(&folder))
    }
}

/// Where hub samples are kept: beside the response cache, else in `fallback`.
pub fn samples_root(cache_dir: Option<&Path>, fallback: &Path) -> PathBuf {
    cache_dir.map_or_else(|| fallback.to_path_buf(), |dir| dir.join("hub-samples"))
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}
