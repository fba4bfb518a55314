//! PDF: one document per page that has text, with `meta["page"]` (1-based).
//!
//! The PDF parser can panic on malformed input, so every call into it runs under `catch_unwind` and a panic
//! becomes an error (the default panic hook still prints its message to stderr; it is global, so it is left
//! alone). Pages are extracted one by one: a page that fails is a [`RecordError`] and the others still count.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use pdf_extract::{Document as PdfDocument, Error as PdfError, OutputError, PlainTextOutput};

use super::whole_file::read_bytes;
use super::{Document, DocumentStream, FormatError, Limits, RecordError};

const FORMAT: &str = "pdf";

pub(super) fn open(path: &Path, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let bytes = read_bytes(path, FORMAT, limits.max_file_bytes)?;
    let pdf = load(&bytes)?;
    drop(bytes);
    // The loader already opened what an empty user password opens; what is still encrypted needs a password.
    if pdf.is_encrypted() {
        return Err(FormatError::Encrypted { format: FORMAT });
    }
    let page_numbers: Vec<u32> = catch_unwind(AssertUnwindSafe(|| pdf.get_pages().into_keys().collect()))
        .map_err(|panic| corrupt(format!("the page tree cannot be read: {}", panic_message(&*panic))))?;

    let mut results = Vec::with_capacity(page_numbers.len());
    let mut failures = 0usize;
    let mut texts = 0usize;
    for page in page_numbers {
        match page_text(&pdf, page) {
            Ok(text) => {
                let text = text.trim();
                if !text.is_empty() {
                    texts += 1;
                    let mut document = Document { text: text.to_string(), ..Document::default() };
                    document.meta.insert("page".to_string(), page.into());
                    results.push(Ok(document));
                }
            }
            Err(reason) => {
                failures += 1;
                results.push(Err(RecordError { locator: format!("page {page}"), reason }));
            }
        }
    }
    if texts == 0 {
        return Err(match results.into_iter().find_map(Result::err) {
            Some(first) => {
                corrupt(format!("no page could be read ({failures} failed; {}: {})", first.locator, first.reason))
            }
            None => FormatError::Empty { format: FORMAT },
        });
    }
    Ok(Box::new(results.into_iter()))
}

fn load(bytes: &[u8]) -> Result<PdfDocument, FormatError> {
    match catch_unwind(AssertUnwindSafe(|| PdfDocument::load_mem(bytes))) {
        Ok(Ok(pdf)) => Ok(pdf),
        Ok(Err(PdfError::Decryption(_) | PdfError::InvalidPassword)) => Err(FormatError::Encrypted { format: FORMAT }),
        Ok(Err(error)) => Err(corrupt(error.to_string())),
        Err(panic) => Err(corrupt(format!("the PDF parser failed: {}", panic_message(&*panic)))),
    }
}

/// The text of one page (1-based), or why it could not be read.
fn page_text(pdf: &PdfDocument, page: u32) -> Result<String, String> {
    let extracted = catch_unwind(AssertUnwindSafe(|| {
        let mut text = String::new();
        pdf_extract::output_doc_page(pdf, &mut PlainTextOutput::new(&mut text), page)?;
        Ok::<String, OutputError>(text)
    }));
    match extracted {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(error)) => Err(error.to_string()),
        Err(panic) => Err(format!("the PDF parser failed: {}", panic_message(&*panic))),
    }
}

fn corrupt(message: String) -> FormatError {
    FormatError::Corrupt { format: FORMAT, message }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::formats::{FieldMapping, Format, open as open_file};
    use crate::testkit;

    fn read_pdf(path: &Path, limits: &Limits) -> Result<Vec<Result<Document, RecordError>>, FormatError> {
        Ok(open_file(path, Format::Pdf, &FieldMapping::default(), limits)?.collect())
    }

    #[test]
    fn each_page_is_a_document_with_its_page_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.pdf");
        testkit::write_pdf(&path, &["First page on deserts and dunes.", "Second page on oases."]).unwrap();
        let documents: Vec<Document> =
            read_pdf(&path, &Limits::default()).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].text, "First page on deserts and dunes.");
        assert_eq!(documents[0].meta["page"], 1);
        assert_eq!(documents[1].text, "Second page on oases.");
        assert_eq!(documents[1].meta["page"], 2);
        assert_eq!(documents[1].id_hint, None);
    }

    #[test]
    fn blank_pages_are_skipped_but_keep_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gaps.pdf");
        testkit::write_pdf(&path, &["", "Only the second page has text.", " "]).unwrap();
        let documents: Vec<Document> =
            read_pdf(&path, &Limits::default()).unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].text, "Only the second page has text.");
        assert_eq!(documents[0].meta["page"], 2);
    }

    #[test]
    fn a_pdf_without_text_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blank.pdf");
        testkit::write_pdf(&path, &["", ""]).unwrap();
        let error = read_pdf(&path, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Empty { format: "pdf" }), "{error:?}");
    }

    #[test]
    fn a_corrupt_pdf_is_refused_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pdf");
        testkit::write_corrupt_pdf(&path).unwrap();
        let error = read_pdf(&path, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Corrupt { format: "pdf", .. }), "{error:?}");
        assert!(error.to_string().starts_with("corrupt pdf file: "), "{error}");
    }

    #[test]
    fn a_truncated_pdf_is_refused_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.pdf");
        testkit::write_pdf(&whole, &["Some text that will be cut off."]).unwrap();
        let bytes = std::fs::read(&whole).unwrap();
        for keep in [bytes.len() / 4, bytes.len() / 2, bytes.len() - 40] {
            let cut = dir.path().join("cut.pdf");
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            match read_pdf(&cut, &Limits::default()) {
                Err(FormatError::Corrupt { format: "pdf", .. } | FormatError::Empty { .. }) => {}
                // A parser that recovers the page from a cut file is fine too, if the text is right.
                Ok(results) => assert_eq!(results[0].as_ref().unwrap().text, "Some text that will be cut off."),
                Err(other) => panic!("unexpected error for a cut at {keep}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_page_the_extractor_panics_on_is_a_record_error_and_the_other_pages_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed.pdf");
        // `Tj` before any `Tf` makes pdf-extract panic (no current font).
        let good: &[u8] = b"BT /F1 12 Tf 72 760 Td (Readable page.) Tj ET";
        testkit::write_pdf_with_raw_pages(&path, &[good, b"BT (no font) Tj ET", good]).unwrap();
        let results = read_pdf(&path, &Limits::default()).unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().text, "Readable page.");
        let failure = results[1].as_ref().unwrap_err();
        assert_eq!(failure.locator, "page 2");
        assert!(failure.reason.starts_with("the PDF parser failed: "), "{failure:?}");
        assert_eq!(results[2].as_ref().unwrap().meta["page"], 3);
    }

    #[test]
    fn a_pdf_whose_every_page_fails_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unreadable.pdf");
        testkit::write_pdf_with_raw_pages(&path, &[b"BT (no font) Tj ET", b"BT /F9 12 Tf (x) Tj ET"]).unwrap();
        let error = read_pdf(&path, &Limits::default()).unwrap_err();
        match &error {
            FormatError::Corrupt { format: "pdf", message } => {
                assert!(
                    message.starts_with("no page could be read (2 failed; page 1: the PDF parser failed: "),
                    "{message}"
                )
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_pdf_that_needs_a_password_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.pdf");
        testkit::write_encrypted_pdf(&path, &["Secret page."], "hunter2").unwrap();
        let error = read_pdf(&path, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Encrypted { format: "pdf" }), "{error:?}");
        assert_eq!(error.to_string(), "encrypted pdf file");
    }

    #[test]
    fn a_pdf_encrypted_with_an_empty_user_password_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner-only.pdf");
        testkit::write_encrypted_pdf(&path, &["Readable by anyone."], "").unwrap();
        let results = read_pdf(&path, &Limits::default()).unwrap();
        assert_eq!(results[0].as_ref().unwrap().text, "Readable by anyone.");
    }

    #[test]
    fn a_pdf_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.pdf");
        testkit::write_pdf(&path, &["Page."]).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let limits = Limits { max_file_bytes: size - 1, ..Limits::default() };
        let error = read_pdf(&path, &limits).unwrap_err();
        assert!(matches!(error, FormatError::TooLarge { format: "pdf", .. }), "{error:?}");
    }
}
