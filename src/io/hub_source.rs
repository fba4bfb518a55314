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
use sdg_operators::model::{ChatMessage, ModelRequest, Prompt, Sampling};

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
    /// A model judges each dataset from a few rows (relevance and quality) and names its question and answer
    /// fields, which are renamed to `fields.text` and the first kept field.
    #[serde(default)]
    pub judge: Option<DatasetJudge>,
}

/// `judge: {model: teacher, topic: "...", min_score: 6, preview_rows: 3, map_fields: true}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetJudge {
    pub model: String,
    pub topic: String,
    /// Least relevance and quality (0 to 10) a dataset needs.
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    #[serde(default = "default_preview_rows")]
    pub preview_rows: usize,
    #[serde(default = "default_true")]
    pub map_fields: bool,
}

fn default_min_score() -> f64 {
    6.0
}

fn default_preview_rows() -> usize {
    3
}

fn default_true() -> bool {
    true
}

/// What the judge said of one dataset.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Judgment {
    pub dataset: String,
    pub relevance: f64,
    pub quality: f64,
    pub question_field: Option<String>,
    pub answer_field: Option<String>,
    pub kept: bool,
    pub reason: String,
}

/// Asks a model one question before the run; returns the reply text.
pub type Ask<'a> = dyn Fn(ModelRequest) -> Result<String, String> + 'a;

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

    /// The model endpoints this node calls before the run.
    pub fn endpoints(&self) -> Vec<String> {
        self.judge.iter().map(|j| j.model.clone()).collect()
    }

    /// Judges `datasets` from a few rows each; returns the judgments in order.
    fn judge_datasets(
        &self,
        judge: &DatasetJudge,
        client: &HubClient,
        datasets: &[String],
        ask: &Ask,
    ) -> Result<Vec<Judgment>, String> {
        let mut judgments = Vec::new();
        for dataset in datasets {
            let preview = block_on(sample_rows_with(
                client,
                std::slice::from_ref(dataset),
                judge.preview_rows.max(1),
                self.seed,
                &SampleOptions { per_dataset: None, splits: self.splits.clone() },
            ))
            .map_err(|e| e.to_string())?;
            let Some(group) = preview.groups.first() else { continue };
            let columns: Vec<String> = group.batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            let rows = preview_rows(&group.batch);
            let prompt = format!(
                "We need training data for this topic:\n{}\n\nDataset `{dataset}` has the columns {columns:?}. A few rows:\n{rows}\n\
                 Rate the dataset's relevance to the topic and its quality, each from 0 to 10, and name the column \
                 that holds the question (input) and the column that holds the answer (output). Reply with JSON \
                 only: {{\"relevance\": N, \"quality\": N, \"question_field\": \"...\", \"answer_field\": \"...\"}}",
                judge.topic
            );
            let request = ModelRequest {
                endpoint: judge.model.clone(),
                prompt: Prompt::Chat(vec![ChatMessage::new("user", prompt)]),
                sampling: Sampling {
                    n: 1,
                    temperature: Some(0.0),
                    max_tokens: Some(256),
                    seed: Some(self.seed),
                    json_schema: Some(serde_json::json!({"type": "object", "properties": {
                        "relevance": {"type": "number"}, "quality": {"type": "number"},
                        "question_field": {"type": "string"}, "answer_field": {"type": "string"}},
                        "required": ["relevance", "quality", "question_field", "answer_field"]})),
                    ..Sampling::default()
                },
                row: 0,
            };
            let reply = ask(request)?;
            judgments.push(read_judgment(dataset, &reply, &columns, judge));
        }
        Ok(judgments)
    }

    /// Draws the sample into `root/<key>/` unless it is there, and returns the ingest that reads it.
    pub fn materialize(&self, root: &Path, ask: &Ask) -> Result<IngestSpec, String> {
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
        // Judged datasets: only those good enough, each with its question and answer fields.
        let mut renames: std::collections::HashMap<String, Vec<(String, String)>> = std::collections::HashMap::new();
        let datasets = match &self.judge {
            None => datasets,
            Some(judge) => {
                let judgments = self.judge_datasets(judge, &client, &datasets, ask)?;
                std::fs::create_dir_all(root).map_err(|e| e.to_string())?;
                let record = serde_json::to_vec_pretty(&judgments).map_err(|e| e.to_string())?;
                let _ = std::fs::write(root.join(format!("{}-judgments.json", self.key())), record);
                for j in &judgments {
                    tracing::info!(dataset = %j.dataset, relevance = j.relevance, quality = j.quality, kept = j.kept, "{}", j.reason);
                }
                let kept: Vec<String> = judgments.iter().filter(|j| j.kept).map(|j| j.dataset.clone()).collect();
                if kept.is_empty() {
                    let reasons: Vec<String> =
                        judgments.iter().map(|j| format!("{}: {}", j.dataset, j.reason)).collect();
                    return Err(format!("no dataset passed the judge ({})", reasons.join("; ")));
                }
                if judge.map_fields {
                    let answer_name = self.fields.keep.iter().find(|k| **k != self.fields.text).cloned();
                    for j in judgments.iter().filter(|j| j.kept) {
                        let mut pairs = Vec::new();
                        if let Some(q) = &j.question_field {
                            pairs.push((q.clone(), self.fields.text.clone()));
                        }
                        if let (Some(a), Some(name)) = (&j.answer_field, &answer_name) {
                            pairs.push((a.clone(), name.clone()));
                        }
                        renames.insert(j.dataset.clone(), pairs);
                    }
                }
                kept
            }
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
            // Mapped fields take their canonical names; a column already using such a name steps aside.
            let pairs = renames.get(&group.dataset).cloned().unwrap_or_default();
            let targets: Vec<&str> = pairs.iter().map(|(_, to)| to.as_str()).collect();
            let mut fields = Vec::new();
            let mut columns: Vec<ArrayRef> = Vec::new();
            for field in group.batch.schema().fields() {
                let name = field.name().as_str();
                if PROVENANCE.contains(&name) || name == HUB_KEY {
                    continue;
                }
                let renamed = pairs.iter().find(|(from, _)| from == name).map(|(_, to)| to.as_str());
                let name = match renamed {
                    Some(to) => to.to_string(),
                    None if targets.contains(&name) => format!("original_{name}"),
                    None => name.to_string(),
                };
                fields.push(Field::new(name, field.data_type().clone(), field.is_nullable()));
                columns.push(Arc::clone(group.batch.column_by_name(field.name()).expect("field of the batch")));
            }
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

/// A few rows as JSON lines for a prompt, long values cut.
fn preview_rows(batch: &RecordBatch) -> String {
    let mut out = String::new();
    for row in 0..batch.num_rows().min(5) {
        let mut object = serde_json::Map::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let value = arrow::util::display::array_value_to_string(column.as_ref(), row).unwrap_or_default();
            let value: String = value.chars().take(300).collect();
            object.insert(field.name().clone(), serde_json::Value::String(value));
        }
        out.push_str(&serde_json::Value::Object(object).to_string());
        out.push('\n');
    }
    out
}

/// Reads the judge's reply; fields it names must be columns of the dataset.
fn read_judgment(dataset: &str, reply: &str, columns: &[String], judge: &DatasetJudge) -> Judgment {
    let mut judgment = Judgment {
        dataset: dataset.to_string(),
        relevance: 0.0,
        quality: 0.0,
        question_field: None,
        answer_field: None,
        kept: false,
        reason: String::new(),
    };
    let value = match sdg_operators::json_extract::extract_json(reply) {
        Ok(value) => value,
        Err(e) => {
            judgment.reason = format!("the judge's reply is not JSON: {e}");
            return judgment;
        }
    };
    let number = |key: &str| value.get(key).and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()));
    let (Some(relevance), Some(quality)) = (number("relevance"), number("quality")) else {
        judgment.reason = "the judge gave no relevance or quality score".to_string();
        return judgment;
    };
    judgment.relevance = relevance;
    judgment.quality = quality;
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    judgment.question_field = field("question_field");
    judgment.answer_field = field("answer_field");
    if judge.map_fields {
        let named: Vec<String> =
            [&judgment.question_field, &judgment.answer_field].into_iter().flatten().cloned().collect();
        if let Some(name) = named.iter().find(|name| !columns.contains(name)) {
            judgment.reason = format!("the judge named `{name}`, which is not a column ({columns:?})");
            return judgment;
        }
        if judgment.question_field.is_none() {
            judgment.reason = "the judge named no question field".to_string();
            return judgment;
        }
    }
    judgment.kept = relevance.min(quality) >= judge.min_score;
    judgment.reason = if judgment.kept {
        format!("kept: relevance {relevance}, quality {quality}")
    } else {
        format!("below {}: relevance {relevance}, quality {quality}", judge.min_score)
    };
    judgment
}

/// A complete config that uses `hub` (paths relative to the repository's `configs/`; `sdg kinds hub`).
pub const EXAMPLE: &str = r#"# 20 rows of GSM8K's train split, with their provenance (HF_ENDPOINT and HF_TOKEN are honoured).
nodes:
  - id: rows
    kind: hub
    datasets: [openai/gsm8k]
    rows: 20
    seed: 7
    splits: [train]
    fields: {text: question, keep: [question, answer]}
  - {id: out, kind: sink, input: rows}
"#;
