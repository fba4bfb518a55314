//! Readers for the document formats that `ingest` understands.
//!
//! Each reader turns one file into a stream of [`Document`]s. Whole-document formats (txt, md, html, docx)
//! yield one document; pdf yields one per page; row formats (jsonl, csv, parquet) yield one per row and are
//! read incrementally, so a large file never sits in memory at once.
//!
//! Failures come at two levels: a [`FormatError`] means the whole file is unusable (corrupt, encrypted,
//! binary, empty, too large); a [`RecordError`] inside the stream means one record is (a bad JSON line), and
//! the rest of the file still counts. Neither ever aborts a run: the engine turns both into reject rows.

mod csv_rows;
mod docx;
mod html;
mod jsonl;
mod parquet_rows;
mod pdf;
mod txt;
mod whole_file;

use std::path::Path;

use serde::Deserialize;

/// A format `ingest` can read, picked from the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Txt,
    Md,
    Html,
    Pdf,
    Docx,
    Jsonl,
    Csv,
    Parquet,
}

impl Format {
    /// The format for a path's extension (case-insensitive), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => Format::Txt,
            "md" | "markdown" => Format::Md,
            "html" | "htm" | "xhtml" => Format::Html,
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            _ => return None,
        })
    }

    /// The name written in the `format` column.
    pub fn name(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Md => "md",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// How the fields of a row (jsonl, csv, parquet) map to document columns.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Field holding the text. Default `text`.
    #[serde(default = "default_text_field")]
    pub text: String,
    /// Field holding a record id, used (with the path) as the stable-id seed instead of the row number.
    #[serde(default)]
    pub id: Option<String>,
    /// More fields kept as string columns of the same name (null when a row lacks them).
    #[serde(default)]
    pub keep: Vec<String>,
}

fn default_text_field() -> String {
    "text".to_string()
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping { text: default_text_field(), id: None, keep: Vec::new() }
    }
}

/// Size guards that keep memory bounded on hostile inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest whole-document file (txt, md, html, pdf, docx) read into memory.
    pub max_file_bytes: u64,
    /// Largest single record (a JSONL line, a CSV row, a text cell).
    pub max_record_bytes: u64,
    /// Largest total uncompressed size read out of a DOCX archive (zip-bomb guard).
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_file_bytes: 64 << 20, max_record_bytes: 16 << 20, max_unpacked_bytes: 256 << 20 }
    }
}

/// One document (or page, or row) read from a file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub text: String,
    /// The value of the mapped `id` field, when the mapping has one and the row has it.
    pub id_hint: Option<String>,
    /// Where in the file this came from and what else is known: `page`, `row`, `line`, `title`, ...
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Values of `FieldMapping::keep`, in that order.
    pub extra: Vec<Option<String>>,
}

/// The whole file could not be read. Each message is a sentence a user can act on: what is wrong, and for
/// a limit, which `ingest` setting sets it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{format} file is too large ({}; max_file_mb allows {})", human_bytes(*size), human_bytes(*limit))]
    TooLarge { format: &'static str, size: u64, limit: u64 },
    #[error("binary content in a {format} file")]
    Binary { format: &'static str },
    #[error("not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("encrypted {format} file")]
    Encrypted { format: &'static str },
    #[error("corrupt {format} file: {message}")]
    Corrupt { format: &'static str, message: String },
    /// A row file that is readable but does not have the columns the field mapping asks for.
    #[error("unexpected {format} schema: {message}")]
    Schema { format: &'static str, message: String },
    /// The file is readable but holds no text (empty, whitespace only, or only markup).
    #[error("empty {format} file")]
    Empty { format: &'static str },
    /// An archive member expands past `Limits::max_unpacked_bytes` (a zip bomb, or just a huge document).
    #[error(
        "{entry} in the {format} file unpacks to more than {} (a zip bomb, or a document too large to read)",
        human_bytes(*limit)
    )]
    UnpacksTooLarge { format: &'static str, entry: String, limit: u64 },
    /// The text an archive unpacks to (or one piece of its markup) is over the whole-document limit.
    #[error("the text of the {format} file is larger than max_file_mb allows ({}) once unpacked", human_bytes(*limit))]
    TextTooLarge { format: &'static str, limit: u64 },
}

/// Why a record over `Limits::max_record_bytes` was refused: `line is longer than max_record_mb allows (16 MiB)`.
pub(crate) fn over_record_limit(what: &str, limit: u64) -> String {
    format!("{what} is longer than max_record_mb allows ({})", human_bytes(limit))
}

/// A byte count as people read it: `64 MiB`, `1.5 MiB`, `12 KiB`, `100 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    match bytes {
        1 => "1 byte".to_string(),
        _ if bytes >= MIB && bytes.is_multiple_of(MIB) => format!("{} MiB", bytes / MIB),
        _ if bytes >= MIB => format!("{:.1} MiB", bytes as f64 / MIB as f64),
        _ if bytes >= KIB && bytes.is_multiple_of(KIB) => format!("{} KiB", bytes / KIB),
        _ => format!("{bytes} bytes"),
    }
}

/// One record inside a readable file could not be read; the rest of the file still counts.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    /// Where: `line 17`, `row 3`, `page 2`.
    pub locator: String,
    pub reason: String,
}

/// The documents of one file, read lazily.
pub type DocumentStream = Box<dyn Iterator<Item = Result<Document, RecordError>> + Send>;

/// Opens `path` as `format`. Row formats use `mapping`; all formats obey `limits`. An empty file (no bytes
/// at all) is refused in every format.
pub fn open(
    path: &Path,
    format: Format,
    mapping: &FieldMapping,
    limits: &Limits,
) -> Result<DocumentStream, FormatError> {
    if std::fs::metadata(path)?.len() == 0 {
        return Err(FormatError::Empty { format: format.name() });
    }
    match format {
        Format::Txt | Format::Md => txt::open(path, format, limits),
        Format::Html => html::open(path, limits),
        Format::Pdf => pdf::open(path, limits),
        Format::Docx => docx::open(path, limits),
        Format::Jsonl => jsonl::open(path, mapping, limits),
        Format::Csv => csv_rows::open(path, mapping, limits),
        Format::Parquet => parquet_rows::open(path, mapping, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_like_people_write_them() {
        assert_eq!(human_bytes(1), "1 byte");
        assert_eq!(human_bytes(100), "100 bytes");
        assert_eq!(human_bytes(12 << 10), "12 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1 << 30), "1024 MiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    }

    #[test]
    fn a_limit_message_names_the_setting() {
        let error = FormatError::TooLarge { format: "txt", size: 1 << 30, limit: 64 << 20 };
        assert_eq!(error.to_string(), "txt file is too large (1024 MiB; max_file_mb allows 64 MiB)");
    }

    #[test]
    fn an_empty_file_is_refused_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        for format in [
            Format::Txt,
            Format::Md,
            Format::Html,
            Format::Pdf,
            Format::Docx,
            Format::Jsonl,
            Format::Csv,
            Format::Parquet,
        ] {
            let path = dir.path().join(format!("empty.{}", format.name()));
            std::fs::write(&path, b"").unwrap();
            let error = open(&path, format, &FieldMapping::default(), &Limits::default()).err();
            assert_eq!(error.map(|e| e.to_string()), Some(format!("empty {} file", format.name())));
        }
    }
}
