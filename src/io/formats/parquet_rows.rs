//! Parquet: one document per row, read one batch at a time with only the mapped columns, with `meta["row"]`
//! (1-based). The text column must hold strings; id and kept columns of any type are rendered as strings.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{Document, DocumentStream, FieldMapping, FormatError, Limits, RecordError, over_record_limit};

const FORMAT: &str = "parquet";

/// Rows per batch: large enough to amortize decoding, small enough to keep memory flat.
const BATCH_ROWS: usize = 1024;

pub(super) fn open(path: &Path, mapping: &FieldMapping, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)
        .map_err(|error| corrupt(format!("not a readable Parquet file ({error})")))?;
    let schema = builder.schema().clone();
    let text_index = schema.index_of(&mapping.text).map_err(|_| {
        unexpected_schema(format!("no \"{}\" column; the schema is {}", mapping.text, describe(&schema)))
    })?;
    let text_type = schema.field(text_index).data_type();
    if !holds_strings(text_type) {
        return Err(unexpected_schema(format!(
            "column \"{}\" is {text_type}, not a string; the schema is {}",
            mapping.text,
            describe(&schema)
        )));
    }
    let id_index = mapping.id.as_ref().and_then(|id| schema.index_of(id).ok());
    let keep_indices: Vec<Option<usize>> = mapping.keep.iter().map(|name| schema.index_of(name).ok()).collect();

    // Read only the mapped columns; projected batches hold them in schema order.
    let mut projected: Vec<usize> =
        std::iter::once(text_index).chain(id_index).chain(keep_indices.iter().flatten().copied()).collect();
    projected.sort_unstable();
    projected.dedup();
    let batch_column = |index: usize| projected.binary_search(&index).ok();
    let columns = BatchColumns {
        text: batch_column(text_index).unwrap_or(0),
        id: id_index.and_then(batch_column),
        keep: keep_indices.iter().map(|index| index.and_then(batch_column)).collect(),
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), projected.iter().copied());
    let batches = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|error| corrupt(format!("cannot read the row groups ({error})")))?;
    Ok(Box::new(ParquetRows {
        batches,
        columns,
        text_field: mapping.text.clone(),
        max_text_bytes: limits.max_record_bytes,
        pending: VecDeque::new(),
        rows_read: 0,
        finished: false,
    }))
}

/// A text column must decode to strings; dictionary-encoded strings count.
fn holds_strings(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => holds_strings(values),
        _ => false,
    }
}

fn describe(schema: &Schema) -> String {
    let fields: Vec<String> =
        schema.fields().iter().map(|field| format!("{}: {}", field.name(), field.data_type())).collect();
    format!("{{{}}}", fields.join(", "))
}

/// Where the mapped columns sit in a projected batch.
struct BatchColumns {
    text: usize,
    id: Option<usize>,
    keep: Vec<Option<usize>>,
}

struct ParquetRows {
    batches: ParquetRecordBatchReader,
    columns: BatchColumns,
    text_field: String,
    max_text_bytes: u64,
    /// Rows of the current batch not yet handed out.
    pending: VecDeque<Result<Document, RecordError>>,
    /// Rows in the batches read so far.
    rows_read: u64,
    finished: bool,
}

impl Iterator for ParquetRows {
    type Item = Result<Document, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(row);
            }
            if self.finished {
                return None;
            }
            match self.batches.next() {
                None => self.finished = true,
                Some(Ok(batch)) => {
                    let first_row = self.rows_read + 1;
                    self.rows_read += batch.num_rows() as u64;
                    match self.documents(&batch, first_row) {
                        Ok(rows) => self.pending = rows,
                        Err(reason) => self.pending.push_back(Err(row_error(first_row, reason))),
                    }
                }
                Some(Err(error)) => {
                    // A batch that fails to decode leaves no way to find the next one.
                    self.finished = true;
                    let reason = format!("cannot decode rows from here on ({error})");
                    return Some(Err(row_error(self.rows_read + 1, reason)));
                }
            }
        }
    }
}

impl ParquetRows {
    fn documents(
        &self,
        batch: &RecordBatch,
        first_row: u64,
    ) -> Result<VecDeque<Result<Document, RecordError>>, String> {
        // Large offsets, so no cast of a big batch can overflow.
        let texts: ArrayRef = cast(batch.column(self.columns.text), &DataType::LargeUtf8)
            .map_err(|error| format!("cannot read column \"{}\" as text ({error})", self.text_field))?;
        let texts = texts.as_string::<i64>();
        let options = FormatOptions::default();
        let formatter = |column: Option<usize>| -> Result<Option<(&dyn Array, ArrayFormatter<'_>)>, String> {
            let Some(column) = column else { return Ok(None) };
            let array = batch.column(column).as_ref();
            let formatter = ArrayFormatter::try_new(array, &options).map_err(|error| error.to_string())?;
            Ok(Some((array, formatter)))
        };
        let id = formatter(self.columns.id)?;
        let keep = self.columns.keep.iter().map(|column| formatter(*column)).collect::<Result<Vec<_>, _>>()?;
        let render = |cell: &Option<(&dyn Array, ArrayFormatter<'_>)>, index: usize| {
            cell.as_ref()
                .and_then(|(array, formatter)| (!array.is_null(index)).then(|| formatter.value(index).to_string()))
        };

        let mut rows = VecDeque::with_capacity(batch.num_rows());
        for index in 0..batch.num_rows() {
            let row = first_row + index as u64;
            if texts.is_null(index) {
                rows.push_back(Err(row_error(row, format!("column \"{}\" is null", self.text_field))));
                continue;
            }
            let text = texts.value(index);
            if text.len() as u64 > self.max_text_bytes {
                let reason = over_record_limit(&format!("column \"{}\"", self.text_field), self.max_text_bytes);
                rows.push_back(Err(row_error(row, reason)));
                continue;
            }
            if text.trim().is_empty() {
                rows.push_back(Err(row_error(row, format!("column \"{}\" is empty", self.text_field))));
                continue;
            }
            let mut document = Document {
                text: text.to_string(),
                id_hint: render(&id, index),
                extra: keep.iter().map(|cell| render(cell, index)).collect(),
                ..Document::default()
            };
            document.meta.insert("row".to_string(), row.into());
            rows.push_back(Ok(document));
        }
        Ok(rows)
    }
}

fn row_error(row: u64, reason: String) -> RecordError {
    RecordError { locator: format!("row {row}"), reason }
}

fn corrupt(message: String) -> FormatError {
    FormatError::Corrupt { format: FORMAT, message }
}

/// The file reads, but not as the field mapping asks (`fields.text` names a column it lacks, or not text).
fn unexpected_schema(message: String) -> FormatError {
    FormatError::Schema { format: FORMAT, message: format!("{message} (set `fields.text` to the text column)") }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray, StringViewArray};
    use arrow::datatypes::Field;

    use super::*;
    use crate::io::formats::{Format, open as open_file};
    use crate::testkit;

    fn read_parquet(path: &Path, mapping: &FieldMapping) -> Result<Vec<Result<Document, RecordError>>, FormatError> {
        Ok(open_file(path, Format::Parquet, mapping, &Limits::default())?.collect())
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> =
            columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), true)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|(_, array)| array).collect())
            .unwrap()
    }

    #[test]
    fn each_row_is_a_document_and_null_text_is_a_record_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frame.parquet");
        testkit::write_parquet(
            &path,
            &[
                ("topic", vec![Some("land"), Some("x"), None]),
                ("text", vec![Some("Parquet row on wetlands."), None, Some("Third row.")]),
                ("unused", vec![Some("u"), Some("u"), Some("u")]),
            ],
        )
        .unwrap();
        let mapping = FieldMapping { keep: vec!["topic".to_string(), "absent".to_string()], ..FieldMapping::default() };
        let results = read_parquet(&path, &mapping).unwrap();
        assert_eq!(results.len(), 3);
        let first = results[0].as_ref().unwrap();
        assert_eq!(first.text, "Parquet row on wetlands.");
        assert_eq!(first.extra, [Some("land".to_string()), None]);
        assert_eq!(first.meta["row"], 1);
        assert_eq!(
            results[1],
            Err(RecordError { locator: "row 2".to_string(), reason: "column \"text\" is null".to_string() })
        );
        let third = results[2].as_ref().unwrap();
        assert_eq!(third.text, "Third row.");
        assert_eq!(third.extra, [None, None]);
        assert_eq!(third.meta["row"], 3);
    }

    #[test]
    fn ids_and_kept_columns_of_other_types_are_rendered_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.parquet");
        testkit::write_parquet_batch(
            &path,
            &batch(vec![
                ("doc_id", Arc::new(Int64Array::from(vec![Some(41), None])) as ArrayRef),
                ("body", Arc::new(StringViewArray::from(vec!["first", "second"])) as ArrayRef),
                ("score", Arc::new(Int64Array::from(vec![Some(7), Some(8)])) as ArrayRef),
            ]),
        )
        .unwrap();
        let mapping =
            FieldMapping { text: "body".to_string(), id: Some("doc_id".to_string()), keep: vec!["score".to_string()] };
        let documents: Vec<Document> = read_parquet(&path, &mapping).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(documents[0].text, "first");
        assert_eq!(documents[0].id_hint.as_deref(), Some("41"));
        assert_eq!(documents[0].extra, [Some("7".to_string())]);
        assert_eq!(documents[1].id_hint, None);
        assert_eq!(documents[1].extra, [Some("8".to_string())]);
    }

    #[test]
    fn a_text_column_that_is_not_strings_is_an_unexpected_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numbers.parquet");
        testkit::write_parquet_batch(
            &path,
            &batch(vec![
                ("text", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
                ("note", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ]),
        )
        .unwrap();
        let error = read_parquet(&path, &FieldMapping::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unexpected parquet schema: column \"text\" is Int64, not a string; the schema is {text: Int64, note: Utf8} \
             (set `fields.text` to the text column)"
        );
    }

    #[test]
    fn a_missing_text_column_names_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        testkit::write_parquet(&path, &[("content", vec![Some("a")])]).unwrap();
        let error = read_parquet(&path, &FieldMapping::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unexpected parquet schema: no \"text\" column; the schema is {content: Utf8} (set `fields.text` to the text column)"
        );
    }

    #[test]
    fn a_file_that_is_not_parquet_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.parquet");
        std::fs::write(&path, "text\nnot parquet\n").unwrap();
        let error = read_parquet(&path, &FieldMapping::default()).unwrap_err();
        assert!(
            matches!(&error, FormatError::Corrupt { format: "parquet", message } if message.starts_with("not a readable Parquet file")),
            "{error:?}"
        );
    }

    #[test]
    fn many_rows_come_in_order_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.parquet");
        let texts: Vec<String> = (1..=2500).map(|n| format!("row {n}")).collect();
        testkit::write_parquet(&path, &[("text", texts.iter().map(|text| Some(text.as_str())).collect())]).unwrap();
        let documents: Vec<Document> =
            read_parquet(&path, &FieldMapping::default()).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(documents.len(), 2500);
        assert_eq!(documents[1024].text, "row 1025");
        assert_eq!(documents[1024].meta["row"], 1025);
        assert_eq!(documents[2499].meta["row"], 2500);
    }

    #[test]
    fn a_text_cell_over_the_limit_is_a_record_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.parquet");
        let long = "z".repeat(100);
        testkit::write_parquet(&path, &[("text", vec![Some(long.as_str()), Some("ok")])]).unwrap();
        let limits = Limits { max_record_bytes: 50, ..Limits::default() };
        let results: Vec<_> = open_file(&path, Format::Parquet, &FieldMapping::default(), &limits).unwrap().collect();
        assert_eq!(
            results[0],
            Err(RecordError {
                locator: "row 1".to_string(),
                reason: "column \"text\" is longer than max_record_mb allows (50 bytes)".to_string()
            })
        );
        assert_eq!(results[1].as_ref().unwrap().text, "ok");
    }
}
