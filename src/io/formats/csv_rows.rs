//! CSV with a header row: one document per data row, read lazily, with `meta["row"]` (1-based data row).
//!
//! A missing text column makes the whole file unusable; a bad row (wrong field count, invalid UTF-8, empty
//! text) is a [`RecordError`] and the next row is still read. Rows are size-guarded: a row over
//! `Limits::max_record_bytes` is a `RecordError`, and a row so long that holding it would break the memory
//! bound (the limit plus one read buffer) stops the file there, because a CSV row cannot be skipped without
//! parsing its quotes.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use csv::{ByteRecord, ErrorKind, ReaderBuilder};

use super::{Document, DocumentStream, FieldMapping, FormatError, Limits, RecordError, over_record_limit};

const FORMAT: &str = "csv";

/// Capacity of the CSV reader's buffer; also the slack the size guard allows past the row limit.
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub(super) fn open(path: &Path, mapping: &FieldMapping, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let guard = RowSizeGuard {
        inner: File::open(path)?,
        delivered: 0,
        row_start: 0,
        max_row_bytes: limits.max_record_bytes.saturating_add(READ_BUFFER_BYTES as u64),
        tripped: false,
    };
    let mut reader = ReaderBuilder::new().has_headers(true).buffer_capacity(READ_BUFFER_BYTES).from_reader(guard);
    let headers = reader.byte_headers().cloned();
    let headers = match headers {
        Ok(headers) => headers,
        Err(_) if reader.get_ref().tripped => {
            return Err(corrupt(over_record_limit("the header row", limits.max_record_bytes)));
        }
        Err(error) if error.is_io_error() => return Err(FormatError::Io(io::Error::other(error))),
        Err(error) => return Err(corrupt(format!("cannot read the header row ({error})"))),
    };
    let column = |name: &str| headers.iter().position(|header| header == name.as_bytes());
    let Some(text_column) = column(&mapping.text) else {
        let names: Vec<String> =
            headers.iter().map(|header| format!("\"{}\"", String::from_utf8_lossy(header))).collect();
        let message = if names.is_empty() {
            format!("no \"{}\" column: the file has no header row", mapping.text)
        } else {
            format!(
                "no \"{}\" column; the columns are {} (set `fields.text` to the text column)",
                mapping.text,
                names.join(", ")
            )
        };
        return Err(FormatError::Schema { format: FORMAT, message });
    };
    let id_column = mapping.id.as_deref().map(column);
    let keep_columns: Vec<Option<usize>> = mapping.keep.iter().map(|name| column(name)).collect();
    let row_start = reader.position().byte();
    reader.get_mut().row_start = row_start;
    Ok(Box::new(CsvRows {
        reader,
        record: ByteRecord::new(),
        text_field: mapping.text.clone(),
        text_column,
        id_column: id_column.flatten(),
        keep_columns,
        max_record_bytes: limits.max_record_bytes,
        row: 0,
        finished: false,
    }))
}

/// Fails a read once the row being parsed has taken more than `max_row_bytes` from the file, so a row
/// without an end (an unclosed quote, a missing newline) cannot grow the CSV reader's record buffer forever.
struct RowSizeGuard<R> {
    inner: R,
    /// Bytes handed to the CSV reader so far.
    delivered: u64,
    /// File offset where the row being parsed starts.
    row_start: u64,
    max_row_bytes: u64,
    tripped: bool,
}

impl<R: Read> Read for RowSizeGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.delivered.saturating_sub(self.row_start) > self.max_row_bytes {
            self.tripped = true;
            return Err(io::Error::other("CSV row is over the size limit"));
        }
        let read = self.inner.read(buf)?;
        self.delivered += read as u64;
        Ok(read)
    }
}

struct CsvRows<R: Read> {
    reader: csv::Reader<RowSizeGuard<R>>,
    record: ByteRecord,
    text_field: String,
    text_column: usize,
    id_column: Option<usize>,
    keep_columns: Vec<Option<usize>>,
    max_record_bytes: u64,
    /// 1-based number of the last data row read.
    row: u64,
    finished: bool,
}

impl<R: Read> Iterator for CsvRows<R> {
    type Item = Result<Document, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let read = self.reader.read_byte_record(&mut self.record);
        let row_start = self.reader.position().byte();
        self.reader.get_mut().row_start = row_start;
        match read {
            Ok(false) => {
                self.finished = true;
                None
            }
            Ok(true) => {
                self.row += 1;
                Some(self.document().map_err(|reason| self.error(reason)))
            }
            Err(error) => {
                self.row += 1;
                let reason = if self.reader.get_ref().tripped {
                    // The parser stopped mid-row and cannot find the next row boundary on its own.
                    self.finished = true;
                    format!("{}; the rest of the file is not read", over_record_limit("row", self.max_record_bytes))
                } else {
                    match error.kind() {
                        ErrorKind::UnequalLengths { expected_len, len, .. } => {
                            format!("row has {len} fields, the header has {expected_len}")
                        }
                        ErrorKind::Io(io_error) => {
                            self.finished = true;
                            format!("cannot read the file: {io_error}")
                        }
                        _ => error.to_string(),
                    }
                };
                Some(Err(self.error(reason)))
            }
        }
    }
}

impl<R: Read> CsvRows<R> {
    fn error(&self, reason: String) -> RecordError {
        RecordError { locator: format!("row {}", self.row), reason }
    }

    fn document(&self) -> Result<Document, String> {
        if self.record.as_slice().len() as u64 > self.max_record_bytes {
            return Err(over_record_limit("row", self.max_record_bytes));
        }
        let field = |column: usize| -> Result<Option<String>, String> {
            match self.record.get(column) {
                None => Ok(None),
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => Ok(Some(text.to_string())),
                    Err(error) => Err(format!(
                        "field {} is not valid UTF-8 (first bad byte at offset {})",
                        column + 1,
                        error.valid_up_to()
                    )),
                },
            }
        };
        let text = field(self.text_column)?.unwrap_or_default();
        if text.trim().is_empty() {
            return Err(format!("column \"{}\" is empty", self.text_field));
        }
        let id_hint = match self.id_column {
            Some(column) => field(column)?,
            None => None,
        };
        let extra = self
            .keep_columns
            .iter()
            .map(|column| match column {
                Some(column) => field(*column),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut document = Document { text, id_hint, extra, ..Document::default() };
        document.meta.insert("row".to_string(), self.row.into());
        Ok(document)
    }
}

fn corrupt(message: String) -> FormatError {
    FormatError::Corrupt { format: FORMAT, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::formats::{Format, open as open_file};

    fn open_csv(contents: &[u8], mapping: &FieldMapping, limits: &Limits) -> Result<DocumentStream, FormatError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        std::fs::write(&path, contents).unwrap();
        // The stream holds the open file, so the directory can go.
        open_file(&path, Format::Csv, mapping, limits)
    }

    fn row_error(row: u64, reason: &str) -> Result<Document, RecordError> {
        Err(RecordError { locator: format!("row {row}"), reason: reason.to_string() })
    }

    #[test]
    fn each_row_is_a_document_with_id_extra_and_row_number() {
        let mapping = FieldMapping {
            text: "body".to_string(),
            id: Some("key".to_string()),
            keep: vec!["topic".to_string(), "absent".to_string()],
        };
        let documents: Vec<Document> = open_csv(
            b"\xEF\xBB\xBFkey,body,topic\nk1,\"Mountain ranges, \"\"old\"\" and new.\",land\r\nk2,\"Two\nlines\",\n",
            &mapping,
            &Limits::default(),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].text, "Mountain ranges, \"old\" and new.");
        assert_eq!(documents[0].id_hint.as_deref(), Some("k1"));
        assert_eq!(documents[0].extra, [Some("land".to_string()), None]);
        assert_eq!(documents[0].meta["row"], 1);
        assert_eq!(documents[1].text, "Two\nlines");
        assert_eq!(documents[1].extra, [Some(String::new()), None]);
        assert_eq!(documents[1].meta["row"], 2);
    }

    #[test]
    fn a_missing_text_column_names_the_columns_there_are() {
        let error = open_csv(b"title,topic\nA,b\n", &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert_eq!(
            error.to_string(),
            "unexpected csv schema: no \"text\" column; the columns are \"title\", \"topic\" \
             (set `fields.text` to the text column)"
        );
        let error = open_csv(b"\n", &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert_eq!(error.to_string(), "unexpected csv schema: no \"text\" column: the file has no header row");
        let error = open_csv(b"", &FieldMapping::default(), &Limits::default()).err().unwrap();
        assert_eq!(error.to_string(), "empty csv file");
    }

    #[test]
    fn bad_rows_are_record_errors_and_good_rows_still_count() {
        let results: Vec<_> = open_csv(
            b"text,topic\ngood one,a\ntoo,many,fields\n\xFFbad,b\n,c\ngood two,d\n",
            &FieldMapping::default(),
            &Limits::default(),
        )
        .unwrap()
        .collect();
        assert_eq!(results.len(), 5);
        assert_eq!(results[0].as_ref().unwrap().text, "good one");
        assert_eq!(results[1], row_error(2, "row has 3 fields, the header has 2"));
        assert_eq!(results[2], row_error(3, "field 1 is not valid UTF-8 (first bad byte at offset 0)"));
        assert_eq!(results[3], row_error(4, "column \"text\" is empty"));
        assert_eq!(results[4].as_ref().unwrap().text, "good two");
        assert_eq!(results[4].as_ref().unwrap().meta["row"], 5);
    }

    #[test]
    fn a_row_over_the_limit_is_a_record_error() {
        let limits = Limits { max_record_bytes: 16, ..Limits::default() };
        let contents = format!("text\nshort\n{}\nafter\n", "x".repeat(40));
        let results: Vec<_> = open_csv(contents.as_bytes(), &FieldMapping::default(), &limits).unwrap().collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().text, "short");
        assert_eq!(results[1], row_error(2, "row is longer than max_record_mb allows (16 bytes)"));
        assert_eq!(results[2].as_ref().unwrap().text, "after");
    }

    #[test]
    fn a_row_that_never_ends_stops_the_file_without_growing_memory() {
        let limits = Limits { max_record_bytes: 16, ..Limits::default() };
        // An unclosed quote makes the rest of the file one row, far past the limit and the read buffer.
        let contents = format!("text\nfirst\n\"{}\n", "y".repeat(4 * READ_BUFFER_BYTES));
        let results: Vec<_> = open_csv(contents.as_bytes(), &FieldMapping::default(), &limits).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().unwrap().text, "first");
        assert_eq!(
            results[1],
            row_error(2, "row is longer than max_record_mb allows (16 bytes); the rest of the file is not read")
        );
    }
}
