//! A run's committed Parquet, read for the web UI: filtered pages of rows, one record with its lineage,
//! and the rejects. Parts are streamed batch by batch, so a page costs one pass and memory for one batch.

use std::path::Path;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value, json};

pub use crate::io::url_query::form_pairs;

/// What the data table asks for.
#[derive(Debug, Default, Clone)]
pub struct RowQuery {
    pub offset: usize,
    pub limit: usize,
    pub category: Option<String>,
    pub source: Option<String>,
    pub min_agreement: Option<f64>,
    pub min_pass_rate: Option<f64>,
    pub max_pass_rate: Option<f64>,
    /// Case-insensitive substring over the text columns.
    pub text: Option<String>,
}

impl RowQuery {
    /// From a URL query string (`offset=0&limit=50&q=...`).
    pub fn parse(query: &str) -> RowQuery {
        let mut parsed = RowQuery { limit: 50, ..Default::default() };
        for (key, value) in form_pairs(query) {
            let number = value.parse::<f64>().ok();
            let text = (!value.is_empty()).then(|| value.clone());
            match key.as_str() {
                "offset" => parsed.offset = value.parse().unwrap_or(0),
                "limit" => parsed.limit = value.parse::<usize>().unwrap_or(50).clamp(1, 500),
                "category" => parsed.category = text,
                "source" => parsed.source = text,
                "min_agreement" => parsed.min_agreement = number,
                "min_pass_rate" => parsed.min_pass_rate = number,
                "max_pass_rate" => parsed.max_pass_rate = number,
                "q" => parsed.text = text.map(|t| t.to_lowercase()),
                _ => {}
            }
        }
        parsed
    }

    fn keeps(&self, row: &Map<String, Value>) -> bool {
        let number = |key: &str| row.get(key).and_then(Value::as_f64);
        if let Some(category) = &self.category
            && row.get("category").and_then(Value::as_str) != Some(category.as_str())
        {
            return false;
        }
        if let Some(source) = &self.source
            && source_of(row).as_deref() != Some(source.as_str())
        {
            return false;
        }
        if let Some(min) = self.min_agreement
            && number("agreement").is_none_or(|a| a < min)
        {
            return false;
        }
        if let Some(min) = self.min_pass_rate
            && number("pass_rate").is_none_or(|p| p < min)
        {
            return false;
        }
        if let Some(max) = self.max_pass_rate
            && number("pass_rate").is_none_or(|p| p > max)
        {
            return false;
        }
        if let Some(text) = &self.text {
            return row.values().any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(text.as_str())));
        }
        true
    }
}

/// Where a row came from: its Hub dataset, else its source file.
fn source_of(row: &Map<String, Value>) -> Option<String> {
    ["hub_dataset", "passage_source", "source_path"]
        .iter()
        .find_map(|key| row.get(*key).and_then(Value::as_str).map(str::to_string))
}

/// The folders a run's sinks write to, from its manifest (`data` before there is one).
fn sink_dirs(out: &Path) -> Vec<String> {
    let manifest = super::runs::read_json(&out.join("manifest.json"));
    let dirs: Vec<String> = manifest
        .as_ref()
        .and_then(|m| m["outputs"].as_object())
        .map(|outputs| outputs.values().filter_map(|o| o["dir"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if dirs.is_empty() { vec!["data".to_string()] } else { dirs }
}

/// Every row of the parts committed in the run's folders `dirs`, one batch at a time.
fn for_each_row(
    out: &Path,
    dirs: &[String],
    mut visit: impl FnMut(&RecordBatch, Map<String, Value>) -> bool,
) -> Result<(), String> {
    let mut parts = Vec::new();
    for dir in dirs {
        let committed = crate::io::sink::committed_parts(out, dir, crate::io::sink::SinkFormat::Parquet)
            .map_err(|e| format!("{}: {e}", out.join(dir).display()))?;
        parts.extend(committed.into_iter().map(|part| out.join(part.path)));
    }
    for part in parts {
        let file = std::fs::File::open(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(1024).build())
            .map_err(|e| format!("{}: {e}", part.display()))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("{}: {e}", part.display()))?;
            for row in 0..batch.num_rows() {
                let value = crate::io::json_rows::row_to_json(&batch, row).map_err(|e| e.to_string())?;
                let Value::Object(object) = value else { continue };
                if !visit(&batch, object) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// One page of a run's data, with the total that matches and the filter choices.
pub fn page(out: &Path, query: &RowQuery) -> Result<Value, String> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let mut total = 0usize;
    let mut categories = std::collections::BTreeSet::new();
    let mut sources = std::collections::BTreeSet::new();
    for_each_row(out, &sink_dirs(out), |batch, row| {
        if columns.is_empty() {
            columns = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        }
        if let Some(category) = row.get("category").and_then(Value::as_str) {
            categories.insert(category.to_string());
        }
        if let Some(source) = source_of(&row) {
            sources.insert(source);
        }
        if query.keeps(&row) {
            if total >= query.offset && rows.len() < query.limit {
                rows.push(Value::Object(row));
            }
            total += 1;
        }
        true
    })?;
    Ok(json!({"columns": columns, "rows": rows, "total": total, "categories": categories, "sources": sources}))
}

/// One record and its lineage: the passage it was grounded in, the vote's samples, the student's answers,
/// the rewrites, and the provenance columns.
pub fn record(out: &Path, id: &str) -> Result<Option<Value>, String> {
    let mut found = None;
    for_each_row(out, &sink_dirs(out), |_, row| {
        if row.get("id").and_then(Value::as_str) == Some(id) {
            found = Some(row);
            return false;
        }
        true
    })?;
    let Some(row) = found else { return Ok(None) };
    let pick = |keys: &[&str]| keys.iter().find_map(|k| row.get(*k).filter(|v| !v.is_null()).cloned());
    let matching = |test: &dyn Fn(&str) -> bool| -> Value {
        let found: Map<String, Value> =
            row.iter().filter(|(k, v)| test(k) && !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
        if found.is_empty() { Value::Null } else { Value::Object(found) }
    };
    let lineage = json!({
        "passage": pick(&["passage", "text"]),
        "votes": pick(&["vote_samples", "vote_answers", "vote_responses"]).or_else(|| {
            Some(matching(&|k| k.starts_with("vote_") || k == "agreement" || k == "response")).filter(|v| !v.is_null())
        }),
        "student_answers": pick(&["score_samples", "student_answers", "score_answers"]).or_else(|| {
            Some(matching(&|k| k.starts_with("score_") || k == "pass_rate" || k == "category")).filter(|v| !v.is_null())
        }),
        "rewrites": Some(matching(&|k| k.starts_with("rewrite") || k.starts_with("original_"))).filter(|v| !v.is_null()),
        "provenance": matching(&|k| {
            k == "id" || k == "parent_id" || k == "doc_id" || k.starts_with("gen_") || k.starts_with("hub_")
                || k.starts_with("passage_") || k.starts_with("retrieval_") || k == "source_path" || k.starts_with("chunk_")
        }),
    });
    Ok(Some(json!({"record": row, "lineage": lineage})))
}

/// A page of the rejects, with an optional text search.
pub fn rejects(out: &Path, offset: usize, limit: usize, text: Option<&str>) -> Result<Value, String> {
    let text = text.map(str::to_lowercase);
    let mut rows = Vec::new();
    let mut total = 0usize;
    for_each_row(out, &[crate::runtime::REJECTS.to_string()], |_, row| {
        let keep = text
            .as_ref()
            .is_none_or(|t| row.values().any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(t.as_str()))));
        if keep {
            if total >= offset && rows.len() < limit {
                rows.push(Value::Object(row));
            }
            total += 1;
        }
        true
    })?;
    Ok(json!({"rows": rows, "total": total}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_and_bounded() {
        let q = RowQuery::parse("offset=10&limit=9999&category=learnable&q=Heart%20Rate+x&min_pass_rate=0.25&x=%zz");
        assert_eq!((q.offset, q.limit), (10, 500));
        assert_eq!(q.category.as_deref(), Some("learnable"));
        assert_eq!(q.text.as_deref(), Some("heart rate x"));
        assert_eq!(q.min_pass_rate, Some(0.25));
    }

    #[test]
    fn filters_combine() {
        let row: Map<String, Value> = serde_json::from_value(json!({"category": "learnable", "pass_rate": 0.5,
            "agreement": 0.75, "question": "What is the Nile?", "source_path": "a.txt"}))
        .unwrap();
        let all = RowQuery { limit: 10, ..Default::default() };
        assert!(all.keeps(&row));
        assert!(RowQuery { text: Some("nile".into()), ..all.clone() }.keeps(&row));
        assert!(!RowQuery { text: Some("danube".into()), ..all.clone() }.keeps(&row));
        assert!(!RowQuery { category: Some("solved".into()), ..all.clone() }.keeps(&row));
        assert!(RowQuery { source: Some("a.txt".into()), ..all.clone() }.keeps(&row));
        assert!(!RowQuery { min_agreement: Some(0.8), ..all.clone() }.keeps(&row));
        assert!(!RowQuery { max_pass_rate: Some(0.4), ..all.clone() }.keeps(&row));
        assert!(RowQuery { min_pass_rate: Some(0.5), max_pass_rate: Some(0.5), ..all }.keeps(&row));
    }
}
