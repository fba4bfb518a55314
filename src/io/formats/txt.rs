//! Plain text and Markdown: the whole file is one document, kept as written (less a UTF-8 BOM).

use std::path::Path;

use super::whole_file::{decode_text, one_document, read_bytes};
use super::{Document, DocumentStream, Format, FormatError, Limits};

pub(super) fn open(path: &Path, format: Format, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let name = format.name();
    let text = decode_text(read_bytes(path, name, limits.max_file_bytes)?, name)?;
    if text.trim().is_empty() {
        return Err(FormatError::Empty { format: name });
    }
    Ok(one_document(Document { text, ..Document::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::formats::{FieldMapping, open as open_file};

    fn read(path: &Path, format: Format, limits: &Limits) -> Result<Vec<Document>, FormatError> {
        let stream = open_file(path, format, &FieldMapping::default(), limits)?;
        Ok(stream.map(|document| document.unwrap()).collect())
    }

    #[test]
    fn a_text_file_is_one_document_without_its_bom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tides.txt");
        std::fs::write(&path, "\u{feff}Tides rise twice a day.\nThe moon pulls.\n").unwrap();
        let documents = read(&path, Format::Txt, &Limits::default()).unwrap();
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].text, "Tides rise twice a day.\nThe moon pulls.\n");
        assert_eq!(documents[0].id_hint, None);
        assert!(documents[0].meta.is_empty());
    }

    #[test]
    fn markdown_is_kept_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guide.md");
        std::fs::write(&path, "# Guide\n\nGlaciers carve *U-shaped* valleys.").unwrap();
        let documents = read(&path, Format::Md, &Limits::default()).unwrap();
        assert_eq!(documents[0].text, "# Guide\n\nGlaciers carve *U-shaped* valleys.");
    }

    #[test]
    fn binary_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary.txt");
        crate::testkit::write_binary_txt(&path).unwrap();
        let error = read(&path, Format::Txt, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Binary { format: "txt" }), "{error:?}");
        assert_eq!(error.to_string(), "binary content in a txt file");
    }

    #[test]
    fn invalid_utf8_reports_the_offset_of_the_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.txt");
        std::fs::write(&path, b"caf\xE9 au lait").unwrap();
        let error = read(&path, Format::Txt, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::InvalidUtf8 { offset: 3 }), "{error:?}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.md");
        std::fs::write(&path, "x".repeat(101)).unwrap();
        let limits = Limits { max_file_bytes: 100, ..Limits::default() };
        let error = read(&path, Format::Md, &limits).unwrap_err();
        assert!(matches!(error, FormatError::TooLarge { format: "md", size: 101, limit: 100 }), "{error:?}");
        let at_limit = dir.path().join("fits.md");
        std::fs::write(&at_limit, "x".repeat(100)).unwrap();
        assert_eq!(read(&at_limit, Format::Md, &limits).unwrap()[0].text.len(), 100);
    }

    #[test]
    fn an_empty_or_blank_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let error = read(&empty, Format::Txt, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Empty { format: "txt" }), "{error:?}");
        assert_eq!(error.to_string(), "empty txt file");
        let blank = dir.path().join("blank.txt");
        std::fs::write(&blank, "\u{feff} \n\t\n").unwrap();
        assert!(matches!(read(&blank, Format::Txt, &Limits::default()), Err(FormatError::Empty { .. })));
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = read(&dir.path().join("nope.txt"), Format::Txt, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Io(_)), "{error:?}");
    }
}
