//! The dataset card (`README.md` of an export), in Hugging Face's format: YAML front matter with one config
//! per format (so `datasets.load_dataset(DIR, "verl-rl")` works), features and splits; then counts per
//! category and source, token lengths, the models and what they cost, three examples and the config.
//!
//! Everything in it is derived from the data and the manifest, never from timings, so the same run gives
//! the same card.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::datatypes::DataType;

use super::{ExportFormat, ExportReport, ExportSettings, Record};
use crate::run::manifest::Manifest;

/// Length statistics of one text field, in tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lengths {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

/// What the card reports about the exported records.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub categories: BTreeMap<String, u64>,
    pub sources: BTreeMap<String, u64>,
    pub prompt_tokens: Lengths,
    pub response_tokens: Lengths,
    /// `tokenizer.json` used, or `None` for the bytes / 4 estimate.
    pub tokenizer: Option<String>,
    /// The first three records, as conversations.
    pub examples: Vec<serde_json::Value>,
}

/// Collects [`Stats`] while an export streams. Token counts are kept per record (8 bytes each): the
/// percentiles need them all.
pub struct StatsBuilder {
    tokenizer: Option<tokenizers::Tokenizer>,
    stats: Stats,
    prompt: Vec<u32>,
    response: Vec<u32>,
}

impl StatsBuilder {
    pub fn new(tokenizer: Option<tokenizers::Tokenizer>) -> Self {
        StatsBuilder { tokenizer, stats: Stats::default(), prompt: Vec::new(), response: Vec::new() }
    }

    fn tokens(&self, text: &str) -> u32 {
        match &self.tokenizer {
            Some(tokenizer) => tokenizer.encode(text, false).map_or(0, |e| e.len() as u32),
            None => text.len().div_ceil(4) as u32,
        }
    }

    pub fn add(&mut self, record: &Record, system: Option<&str>) {
        *self.stats.categories.entry(record.category.unwrap_or("(none)").to_string()).or_default() += 1;
        let source = record.hub_dataset.map(str::to_string).unwrap_or_else(|| match record.source {
            // Per folder of the corpus: per-file counts would be as long as the corpus.
            Some(path) => match path.rsplit_once('/') {
                Some((folder, _)) => format!("{folder}/"),
                None => path.to_string(),
            },
            None => "(none)".to_string(),
        });
        *self.stats.sources.entry(source).or_default() += 1;
        self.prompt.push(self.tokens(record.prompt));
        self.response.push(self.tokens(record.response));
        if self.stats.examples.len() < 3 {
            let turns: Vec<serde_json::Value> = super::formats::conversation(record, system, true)
                .into_iter()
                .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
                .collect();
            self.stats.examples.push(serde_json::json!({"id": record.id, "messages": turns}));
        }
    }

    pub fn finish(mut self) -> Stats {
        self.stats.prompt_tokens = lengths(&mut self.prompt);
        self.stats.response_tokens = lengths(&mut self.response);
        self.stats.tokenizer = self.tokenizer.as_ref().map(|_| "the given tokenizer".to_string());
        self.stats
    }
}

fn lengths(values: &mut [u32]) -> Lengths {
    if values.is_empty() {
        return Lengths::default();
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] as u64;
    Lengths {
        min: values[0] as u64,
        mean: values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64,
        p50: at(0.5),
        p95: at(0.95),
        max: values[values.len() - 1] as u64,
    }
}

/// The `features` of a format in the card's `dataset_info`, as YAML lines (indented by 4). The Parquet
/// formats' come from their Arrow schema, so the card cannot disagree with the files.
fn features(format: ExportFormat) -> String {
    if let Some(schema) = format.schema(false) {
        let mut yaml = String::new();
        for field in schema.fields() {
            feature_yaml(&mut yaml, field.name(), field.data_type(), "  ");
        }
        return yaml;
    }
    match format {
        ExportFormat::Alpaca => {
            "  - name: instruction\n    dtype: string\n  - name: input\n    dtype: string\n  - name: output\n    dtype: string\n"
        }
        ExportFormat::ShareGpt => {
            "  - name: conversations\n    list:\n    - name: from\n      dtype: string\n    - name: value\n      dtype: string\n"
        }
        // The run's own columns: left for `datasets` to infer.
        _ => "",
    }
    .to_string()
}

/// One feature in `datasets`' YAML: a dtype, a `struct:` of features, or a `list:` of a struct's features.
fn feature_yaml(yaml: &mut String, name: &str, data_type: &DataType, indent: &str) {
    let _ = writeln!(yaml, "{indent}- name: {name}");
    let fields = match data_type {
        DataType::Struct(fields) => {
            let _ = writeln!(yaml, "{indent}  struct:");
            fields
        }
        DataType::List(item) => match item.data_type() {
            DataType::Struct(fields) => {
                let _ = writeln!(yaml, "{indent}  list:");
                fields
            }
            other => {
                let _ = writeln!(yaml, "{indent}  sequence: {}", dtype(other));
                return;
            }
        },
        other => {
            let _ = writeln!(yaml, "{indent}  dtype: {}", dtype(other));
            return;
        }
    };
    for field in fields {
        feature_yaml(yaml, field.name(), field.data_type(), &format!("{indent}  "));
    }
}

fn dtype(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Boolean => "bool",
        _ => "string",
    }
}

/// The formats the front matter lists (all of one file type: Parquet when any) and the others.
fn listed_formats(formats: &[ExportFormat]) -> (Vec<ExportFormat>, Vec<ExportFormat>) {
    let parquet = formats.iter().any(|f| f.extension() == "parquet");
    formats.iter().partition(|f| (f.extension() == "parquet") == parquet)
}

/// The card's text.
pub fn render(manifest: &Manifest, settings: &ExportSettings, report: &ExportReport) -> String {
    let mut card = String::new();
    let splits: Vec<&(String, u64)> = report.rows_per_split.iter().filter(|(_, n)| *n > 0).collect();
    let total: u64 = splits.iter().map(|(_, n)| n).sum();
    // Front matter. A run's own card describes its sink folders as they are: one config each.
    card.push_str("---\nconfigs:\n");
    for (i, output) in manifest.outputs.values().filter(|_| settings.formats.is_empty()).enumerate() {
        let name = if i == 0 { "default".to_string() } else { output.dir.clone() };
        let _ = writeln!(
            card,
            "- config_name: {name}\n  data_files:\n  - split: train\n    path: {}/*.parquet",
            output.dir
        );
    }
    // `datasets` picks one builder (Parquet or JSON) for all configs of a card, from the first one: the card
    // lists the Parquet formats when there are any, and the body tells how to load the others.
    let (listed, unlisted) = listed_formats(&settings.formats);
    for (i, format) in listed.iter().enumerate() {
        let _ = writeln!(card, "- config_name: {}", format.name());
        if i == 0 {
            card.push_str("  default: true\n");
        }
        card.push_str("  data_files:\n");
        for (split, _) in &splits {
            let _ = writeln!(card, "  - split: {split}\n    path: {}/{split}.{}", format.name(), format.extension());
        }
    }
    if !listed.is_empty() {
        card.push_str("dataset_info:\n");
    }
    for format in &listed {
        let _ = writeln!(card, "- config_name: {}", format.name());
        let features = features(*format);
        if !features.is_empty() {
            card.push_str("  features:\n");
            card.push_str(&features);
        }
        card.push_str("  splits:\n");
        for (split, rows) in &splits {
            let bytes = report.bytes.get(&(*format, split.clone())).copied().unwrap_or(0);
            let _ = writeln!(card, "  - name: {split}\n    num_bytes: {bytes}\n    num_examples: {rows}");
        }
    }
    card.push_str("tags:\n- synthetic\n- sdg\n");
    let size = match total {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        _ => "n>1M",
    };
    let _ = writeln!(card, "size_categories:\n- {size}\n---\n");

    // Body.
    let _ = writeln!(card, "# Synthetic dataset made by sdg\n");
    let made = format!(
        "{total} records, made by sdg {} from the config below (hash `{}`)",
        manifest.sdg_version,
        &manifest.config_hash[..12.min(manifest.config_hash.len())]
    );
    let config_name = match listed.first() {
        Some(format) => {
            let names: Vec<String> = settings.formats.iter().map(|f| format!("`{}`", f.name())).collect();
            let _ = writeln!(card, "{made}, exported as {}.\n", names.join(", "));
            format.name()
        }
        None => {
            let _ = writeln!(card, "{made}. `sdg export` turns it into verl, TRL, alpaca or sharegpt files.\n");
            "default"
        }
    };
    card.push_str("```python\nfrom datasets import load_dataset\n");
    let _ = writeln!(card, "ds = load_dataset(\"path/to/this/folder\", \"{config_name}\")");
    for format in &unlisted {
        let files: Vec<String> = splits
            .iter()
            .map(|(split, _)| format!("\"{split}\": \"path/to/this/folder/{}/{split}.jsonl\"", format.name()))
            .collect();
        let _ = writeln!(
            card,
            "{} = load_dataset(\"json\", data_files={{{}}})",
            format.name().replace('-', "_"),
            files.join(", ")
        );
    }
    card.push_str("```\n\n");
    if !settings.formats.is_empty() {
        card.push_str("## Splits\n\nBy a hash of each record's id: a record stays in its split on every export.\n\n");
        card.push_str("| split | share | records |\n| --- | ---: | ---: |\n");
        for ((name, share), (_, rows)) in settings.splits.iter().zip(&report.rows_per_split) {
            let _ = writeln!(card, "| {name} | {share} | {rows} |");
        }
    }
    if !settings.categories.is_empty() {
        let _ = writeln!(card, "\nOnly records of category {} were exported.", settings.categories.join(", "));
    }
    if report.skipped_incomplete > 0 || report.skipped_category > 0 {
        let _ = writeln!(
            card,
            "\nLeft out: {} records without a prompt or response, {} of other categories.",
            report.skipped_incomplete, report.skipped_category
        );
    }
    let counts = |card: &mut String, title: &str, counts: &BTreeMap<String, u64>| {
        let _ = writeln!(card, "\n## Records per {title}\n\n| {title} | records |\n| --- | ---: |");
        for (name, n) in counts {
            let _ = writeln!(card, "| {name} | {n} |");
        }
    };
    counts(&mut card, "category", &report.stats.categories);
    counts(&mut card, "source", &report.stats.sources);
    let unit = match &report.stats.tokenizer {
        Some(_) => "tokens (the given tokenizer)",
        None => "tokens (estimated: UTF-8 bytes / 4)",
    };
    let _ = writeln!(
        card,
        "\n## Lengths\n\nIn {unit}.\n\n| field | min | mean | p50 | p95 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for (name, l) in [("prompt", &report.stats.prompt_tokens), ("response", &report.stats.response_tokens)] {
        let _ = writeln!(card, "| {name} | {} | {:.1} | {} | {} | {} |", l.min, l.mean, l.p50, l.p95, l.max);
    }
    card.push_str("\n## Models and cost\n\nModel calls of the run (cached answers cost nothing).\n\n");
    card.push_str("| endpoint | model | requests | cache hits | prompt tokens | completion tokens | cost |\n");
    card.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    // The endpoints' models, from the config the run was made with.
    let specs =
        crate::config::Config::parse(&manifest.config, std::path::Path::new("config"), std::path::Path::new("."))
            .map(|(config, _)| config.models)
            .unwrap_or_default();
    let mut cost = 0.0;
    for (name, stats) in &manifest.models {
        cost += stats.cost;
        let model = specs.get(name).map_or_else(String::new, |spec| match spec.provider {
            crate::models::spec::Provider::Local => format!("{} (local)", spec.file.as_deref().unwrap_or(&spec.model)),
            crate::models::spec::Provider::Openai => spec.model.clone(),
        });
        let _ = writeln!(
            card,
            "| {name} | {model} | {} | {} | {} | {} | {:.4} |",
            stats.requests, stats.cache_hits, stats.prompt_tokens, stats.completion_tokens, stats.cost
        );
    }
    let _ = writeln!(card, "\nTotal cost: {cost:.4}. Sampling parameters of each node are in the config below.");
    card.push_str("\n## Examples\n\n");
    for example in &report.stats.examples {
        let _ = writeln!(card, "```json\n{}\n```\n", serde_json::to_string_pretty(example).unwrap_or_default());
    }
    card.push_str("## Config\n\n```yaml\n");
    card.push_str(manifest.config.trim_end());
    card.push_str("\n```\n");
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_percentiles_of_sorted_values() {
        let mut values: Vec<u32> = (1..=100).rev().collect();
        let l = lengths(&mut values);
        assert_eq!((l.min, l.p50, l.p95, l.max), (1, 51, 95, 100));
        assert_eq!(l.mean, 50.5);
        assert_eq!(lengths(&mut []), Lengths::default());
    }
}
