//! The rejects table: every dropped record, with the node that dropped it and why.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use sdg_operators::columns;
use sdg_operators::{OpError, Reject};

use super::json_rows;

/// Longest `record` kept per reject: enough to recognise the row without copying huge texts.
const MAX_RECORD_CHARS: usize = 4096;

/// One reject before it is batched.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRow {
    pub id: String,
    pub node: String,
    pub reason: String,
    pub source_path: Option<String>,
    /// The dropped row as JSON (truncated), when there was a row.
    pub record: Option<String>,
}

/// The schema of `rejects/` parts.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(columns::ID, DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new(columns::SOURCE_PATH, DataType::Utf8, true),
        Field::new("record", DataType::Utf8, true),
    ]))
}

/// Batches reject rows.
pub fn to_batch(rows: &[RejectRow]) -> RecordBatch {
    let mut ids = StringBuilder::new();
    let mut nodes = StringBuilder::new();
    let mut reasons = StringBuilder::new();
    let mut paths = StringBuilder::new();
    let mut records = StringBuilder::new();
    for row in rows {
        ids.append_value(&row.id);
        nodes.append_value(&row.node);
        reasons.append_value(&row.reason);
        paths.append_option(row.source_path.as_deref());
        records.append_option(row.record.as_deref());
    }
    // Five builders for five fields: cannot mismatch.
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(ids.finish()),
            Arc::new(nodes.finish()),
            Arc::new(reasons.finish()),
            Arc::new(paths.finish()),
            Arc::new(records.finish()),
        ],
    )
    .unwrap_or_else(|_| RecordBatch::new_empty(schema()))
}

/// Turns an operator's rejects (row indices into `input`) into reject rows of node `node`.
pub fn from_operator(node: &str, input: &RecordBatch, rejects: &[Reject]) -> Result<Vec<RejectRow>, OpError> {
    let ids = text_column(input, columns::ID);
    let paths = text_column(input, columns::SOURCE_PATH);
    rejects
        .iter()
        .map(|reject| {
            let mut record = json_rows::row_to_json(input, reject.row)?.to_string();
            if record.chars().count() > MAX_RECORD_CHARS {
                record = record.chars().take(MAX_RECORD_CHARS).collect::<String>() + "…";
            }
            Ok(RejectRow {
                id: ids.map(|a| a.value(reject.row).to_string()).unwrap_or_else(|| format!("row-{}", reject.row)),
                node: node.to_string(),
                reason: reject.reason.clone(),
                source_path: paths.map(|a| a.value(reject.row).to_string()),
                record: Some(record),
            })
        })
        .collect()
}

/// The journal key of a reject: a record id names a row, not the node that dropped it, so both count.
pub fn reject_key(node: &str, id: &str) -> String {
    format!("{node}\u{0}{id}")
}

/// A string column by name, when the batch has one.
pub fn text_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name)?.as_any().downcast_ref::<StringArray>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_rejects_keep_id_path_reason_and_record() {
        let input = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("source_path", DataType::Utf8, false),
                Field::new("text", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec!["x.txt", "y.txt"])),
                Arc::new(StringArray::from(vec!["one", "two"])),
            ],
        )
        .unwrap();
        let rows = from_operator("f", &input, &[Reject { row: 1, reason: "too short".into() }]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, "b");
        assert_eq!(rows[0].source_path.as_deref(), Some("y.txt"));
        assert_eq!(rows[0].record.as_deref(), Some(r#"{"id":"b","source_path":"y.txt","text":"two"}"#));
        let batch = to_batch(&rows);
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), schema());
    }
}
