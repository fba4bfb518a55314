//! DOCX: the text of `word/document.xml` as one document, one paragraph per `w:p` separated by blank lines.
//! The `dc:title` of `docProps/core.xml`, when there is one, goes to `meta["title"]`.
//!
//! Archive members are streamed through a byte budget (`Limits::max_unpacked_bytes`), so a zip bomb is
//! refused after reading at most the budget, whatever its declared sizes say. The text pulled out of them
//! obeys the whole-document limit (`Limits::max_file_bytes`), and so does every single piece of XML (a text
//! node or a tag, which the XML reader holds whole): a bomb that unpacks to less than the budget still
//! cannot make one document bigger than a text file may be.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use quick_xml::Reader as XmlReader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, Event};
use zip::ZipArchive;
use zip::result::ZipError;

use super::whole_file::{one_document, read_bytes};
use super::{Document, DocumentStream, FormatError, Limits};

const FORMAT: &str = "docx";
const DOCUMENT_PART: &str = "word/document.xml";
const CORE_PROPERTIES_PART: &str = "docProps/core.xml";

/// Metadata is small; a larger core.xml is not worth reading.
const MAX_CORE_PROPERTIES_BYTES: u64 = 1 << 20;

/// Signature of an OLE compound file: what Word writes for a password-protected document (and for `.doc`).
const COMPOUND_FILE_SIGNATURE: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

pub(super) fn open(path: &Path, limits: &Limits) -> Result<DocumentStream, FormatError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limits.max_file_bytes {
        return Err(FormatError::TooLarge { format: FORMAT, size, limit: limits.max_file_bytes });
    }
    let mut signature = [0u8; 8];
    let signature_len = file.read(&mut signature)?;
    if signature[..signature_len] == *COMPOUND_FILE_SIGNATURE {
        return Err(compound_file_error(path, limits)?);
    }
    file.rewind()?;

    let mut archive =
        ZipArchive::new(BufReader::new(file)).map_err(|error| corrupt(format!("not a zip archive ({error})")))?;
    let mut budget = limits.max_unpacked_bytes;
    let text = {
        let part = archive.by_name(DOCUMENT_PART).map_err(|error| member_error(DOCUMENT_PART, error))?;
        if part.size() > budget {
            return Err(unpacks_too_large(DOCUMENT_PART, limits));
        }
        let mut reader = BudgetReader::new(part, budget).with_max_token(limits.max_file_bytes);
        let text = document_text(&mut reader, limits.max_file_bytes).map_err(|error| match error {
            TextError::TooLarge => text_too_large(limits),
            TextError::Xml(error) => xml_error(DOCUMENT_PART, error, &reader, limits),
        })?;
        budget -= reader.consumed;
        text
    };
    if text.is_empty() {
        return Err(FormatError::Empty { format: FORMAT });
    }
    let mut document = Document { text, ..Document::default() };
    // The title is a nicety: a missing or unreadable core.xml does not make the document unusable.
    if let Some(title) = core_title(&mut archive, budget.min(MAX_CORE_PROPERTIES_BYTES)) {
        document.meta.insert("title".to_string(), title.into());
    }
    Ok(one_document(document))
}

/// Reads a member up to a byte budget and fails (rather than truncating) once the member goes past it, or
/// once a run of bytes without `<` or `>` (one XML text node or tag) goes past `max_token`.
struct BudgetReader<R> {
    inner: R,
    budget: u64,
    consumed: u64,
    over_budget: bool,
    max_token: u64,
    /// Bytes since the last `<` or `>`.
    token: u64,
    token_too_long: bool,
}

impl<R> BudgetReader<R> {
    fn new(inner: R, budget: u64) -> Self {
        BudgetReader {
            inner,
            budget,
            consumed: 0,
            over_budget: false,
            max_token: u64::MAX,
            token: 0,
            token_too_long: false,
        }
    }

    fn with_max_token(mut self, max_token: u64) -> Self {
        self.max_token = max_token;
        self
    }
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.consumed += read as u64;
        if self.consumed > self.budget {
            self.over_budget = true;
            return Err(io::Error::other("archive member unpacks past its byte budget"));
        }
        for &byte in &buf[..read] {
            if byte == b'<' || byte == b'>' {
                self.token = 0;
            } else {
                self.token += 1;
                if self.token > self.max_token {
                    self.token_too_long = true;
                    return Err(io::Error::other("one XML text node or tag is past the text limit"));
                }
            }
        }
        Ok(read)
    }
}

/// Why the text of a part could not be read.
#[derive(Debug)]
enum TextError {
    Xml(quick_xml::Error),
    /// The text is longer than the limit.
    TooLarge,
}

impl From<quick_xml::Error> for TextError {
    fn from(error: quick_xml::Error) -> Self {
        TextError::Xml(error)
    }
}

/// Paragraph text of a WordprocessingML body, refused once it is longer than `max_text` bytes.
fn document_text<R: Read>(part: R, max_text: u64) -> Result<String, TextError> {
    let mut xml = XmlReader::from_reader(BufReader::new(part));
    let mut buf = Vec::new();
    // Paragraphs so far, separated by blank lines; the one being read.
    let mut text = String::new();
    let mut paragraph = String::new();
    // Depths of the elements whose content is not body text.
    let mut in_text_run = false;
    let mut tab_stops_depth = 0usize;
    let mut fallback_depth = 0usize;
    loop {
        match xml.read_event_into(&mut buf)? {
            Event::Start(element) => match element.local_name().into_inner() {
                "t" => in_text_run = fallback_depth == 0,
                // `w:tabs` lists tab stops of a paragraph style; its `w:tab` children are not tab characters.
                "tabs" => tab_stops_depth += 1,
                // `mc:Fallback` repeats the content of `mc:Choice` for older readers.
                "Fallback" => fallback_depth += 1,
                name => push_inline_break(&mut paragraph, name, tab_stops_depth + fallback_depth),
            },
            Event::Empty(element) => {
                push_inline_break(&mut paragraph, element.local_name().into_inner(), tab_stops_depth + fallback_depth)
            }
            Event::End(element) => match element.local_name().into_inner() {
                "t" => in_text_run = false,
                "tabs" => tab_stops_depth = tab_stops_depth.saturating_sub(1),
                "Fallback" => fallback_depth = fallback_depth.saturating_sub(1),
                "p" if fallback_depth == 0 => {
                    push_paragraph(&mut text, &paragraph);
                    paragraph.clear();
                }
                _ => {}
            },
            Event::Text(text) if in_text_run => paragraph.push_str(&text.xml10_content()),
            Event::CData(text) if in_text_run => paragraph.push_str(&text.xml10_content()),
            Event::GeneralRef(reference) if in_text_run => push_reference(&mut paragraph, &reference),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
        if (text.len() + paragraph.len()) as u64 > max_text {
            return Err(TextError::TooLarge);
        }
    }
    // Text after the last paragraph (malformed but readable) still counts.
    push_paragraph(&mut text, &paragraph);
    Ok(text)
}

/// Appends a paragraph that has text, after a blank line.
fn push_paragraph(text: &mut String, paragraph: &str) {
    let paragraph = paragraph.trim_end();
    if paragraph.trim_start().is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(paragraph);
}

/// `w:tab`, `w:br`, `w:cr` and `w:noBreakHyphen` stand for characters; `skipped_depth > 0` means not in body text.
fn push_inline_break(paragraph: &mut String, element: &str, skipped_depth: usize) {
    if skipped_depth > 0 {
        return;
    }
    match element {
        "tab" => paragraph.push('\t'),
        "br" | "cr" => paragraph.push('\n'),
        "noBreakHyphen" => paragraph.push('-'),
        _ => {}
    }
}

/// `&amp;`, `&#8217;` and friends; an unknown entity is kept as written.
fn push_reference(paragraph: &mut String, reference: &BytesRef<'_>) {
    match reference.resolve_char_ref() {
        Ok(Some(character)) => paragraph.push(character),
        _ => match resolve_predefined_entity(reference) {
            Some(resolved) => paragraph.push_str(resolved),
            None => {
                paragraph.push('&');
                paragraph.push_str(reference);
                paragraph.push(';');
            }
        },
    }
}

/// The `dc:title` of the core properties, if the part is there, small enough and has a non-blank title.
fn core_title<R: Read + Seek>(archive: &mut ZipArchive<R>, budget: u64) -> Option<String> {
    let part = archive.by_name(CORE_PROPERTIES_PART).ok()?;
    if part.size() > budget {
        return None;
    }
    let mut xml = XmlReader::from_reader(BufReader::new(BudgetReader::new(part, budget)));
    let mut buf = Vec::new();
    let mut in_title = false;
    let mut title = String::new();
    loop {
        match xml.read_event_into(&mut buf).ok()? {
            Event::Start(element) if element.local_name().into_inner() == "title" => in_title = true,
            Event::End(element) if element.local_name().into_inner() == "title" => break,
            Event::Text(text) if in_title => title.push_str(&text.xml10_content()),
            Event::GeneralRef(reference) if in_title => push_reference(&mut title, &reference),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

/// Word stores a password-protected document as an OLE compound file holding an `EncryptionInfo` stream.
fn compound_file_error(path: &Path, limits: &Limits) -> Result<FormatError, FormatError> {
    let bytes = read_bytes(path, FORMAT, limits.max_file_bytes)?;
    let stream_name: Vec<u8> = "EncryptionInfo".encode_utf16().flat_map(u16::to_le_bytes).collect();
    Ok(if bytes.windows(stream_name.len()).any(|window| window == stream_name) {
        FormatError::Encrypted { format: FORMAT }
    } else {
        corrupt("an OLE compound file (a legacy .doc?), not a zip archive".to_string())
    })
}

fn member_error(member: &str, error: ZipError) -> FormatError {
    match error {
        ZipError::FileNotFound => corrupt(format!("no {member} in the archive")),
        ZipError::UnsupportedArchive(ZipError::PASSWORD_REQUIRED) | ZipError::InvalidPassword => {
            FormatError::Encrypted { format: FORMAT }
        }
        other => corrupt(format!("cannot open {member} ({other})")),
    }
}

fn xml_error<R>(member: &str, error: quick_xml::Error, reader: &BudgetReader<R>, limits: &Limits) -> FormatError {
    if reader.over_budget {
        unpacks_too_large(member, limits)
    } else if reader.token_too_long {
        text_too_large(limits)
    } else {
        corrupt(format!("cannot read {member} ({error})"))
    }
}

fn unpacks_too_large(member: &str, limits: &Limits) -> FormatError {
    FormatError::UnpacksTooLarge { format: FORMAT, entry: member.to_string(), limit: limits.max_unpacked_bytes }
}

fn text_too_large(limits: &Limits) -> FormatError {
    FormatError::TextTooLarge { format: FORMAT, limit: limits.max_file_bytes }
}

fn corrupt(message: String) -> FormatError {
    FormatError::Corrupt { format: FORMAT, message }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::{SimpleFileOptions, ZipWriter};

    use super::*;
    use crate::io::formats::{FieldMapping, Format, open as open_file};
    use crate::testkit;

    fn read_docx(path: &Path, limits: &Limits) -> Result<Vec<Document>, FormatError> {
        let stream = open_file(path, Format::Docx, &FieldMapping::default(), limits)?;
        Ok(stream.map(|document| document.unwrap()).collect())
    }

    /// A DOCX whose document.xml is `body` inside `w:document/w:body`.
    fn write_docx_xml(path: &Path, body: &str) {
        let mut archive = ZipWriter::new(File::create(path).unwrap());
        archive.start_file(DOCUMENT_PART, SimpleFileOptions::default()).unwrap();
        write!(
            archive,
            r#"<?xml version="1.0"?><w:document xmlns:w="urn:w" xmlns:mc="urn:mc"><w:body>{body}</w:body></w:document>"#
        )
        .unwrap();
        archive.finish().unwrap();
    }

    #[test]
    fn paragraphs_are_separated_by_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.docx");
        testkit::write_docx(&path, &["Memo about river deltas & sediment.", "", "Name\tValue\nSecond line"]).unwrap();
        let documents = read_docx(&path, &Limits::default()).unwrap();
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].text, "Memo about river deltas & sediment.\n\nName\tValue\nSecond line");
        assert!(!documents[0].meta.contains_key("title"));
    }

    #[test]
    fn the_core_title_goes_to_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("titled.docx");
        testkit::write_docx_with_title(&path, &["Body."], Some("Deltas <and> Estuaries")).unwrap();
        let documents = read_docx(&path, &Limits::default()).unwrap();
        assert_eq!(documents[0].meta["title"], "Deltas <and> Estuaries");
    }

    #[test]
    fn tab_stops_fallbacks_and_deleted_text_are_not_body_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tricky.docx");
        write_docx_xml(
            &path,
            r#"<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>A</w:t></w:r><w:r><w:tab/><w:t>B&#8217;s</w:t></w:r><w:del><w:r><w:delText>gone</w:delText></w:r></w:del></w:p><w:p><mc:AlternateContent><mc:Choice><w:r><w:t>box</w:t></w:r></mc:Choice><mc:Fallback><w:p><w:r><w:t>box again</w:t></w:r></w:p></mc:Fallback></mc:AlternateContent></w:p>"#,
        );
        let documents = read_docx(&path, &Limits::default()).unwrap();
        assert_eq!(documents[0].text, "A\tB\u{2019}s\n\nbox");
    }

    #[test]
    fn a_zip_bomb_is_refused_after_reading_at_most_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.docx");
        testkit::write_zip_bomb_docx(&path, 8 << 20).unwrap();
        let limits = Limits { max_unpacked_bytes: 1 << 20, ..Limits::default() };
        let error = read_docx(&path, &limits).unwrap_err();
        match &error {
            FormatError::UnpacksTooLarge { format: "docx", entry, limit } => {
                assert_eq!(entry, DOCUMENT_PART);
                assert_eq!(*limit, 1 << 20);
            }
            other => panic!("expected UnpacksTooLarge, got {other:?}"),
        }
        assert_eq!(
            error.to_string(),
            "word/document.xml in the docx file unpacks to more than 1 MiB (a zip bomb, or a document too large to read)"
        );
    }

    #[test]
    fn the_budget_reader_stops_a_member_at_the_budget_whatever_its_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.docx");
        testkit::write_zip_bomb_docx(&path, 1 << 20).unwrap();
        let mut archive = ZipArchive::new(File::open(&path).unwrap()).unwrap();
        let part = archive.by_name(DOCUMENT_PART).unwrap();
        let declared = part.size();
        // Reading through the budget reader alone (no declared-size check) stops at the budget.
        let mut reader = BudgetReader::new(part, 64 * 1024);
        let error = document_text(&mut reader, u64::MAX).unwrap_err();
        assert!(reader.over_budget, "{error:?}");
        assert!(reader.consumed < declared);
    }

    #[test]
    fn not_a_zip_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.docx");
        std::fs::write(&path, "this is plain text, not a zip archive").unwrap();
        let error = read_docx(&path, &Limits::default()).unwrap_err();
        assert!(
            matches!(&error, FormatError::Corrupt { format: "docx", message } if message.starts_with("not a zip archive")),
            "{error:?}"
        );
    }

    #[test]
    fn a_zip_without_document_xml_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.docx");
        let mut archive = ZipWriter::new(File::create(&path).unwrap());
        archive.start_file("hello.txt", SimpleFileOptions::default()).unwrap();
        archive.write_all(b"hello").unwrap();
        archive.finish().unwrap();
        let error = read_docx(&path, &Limits::default()).unwrap_err();
        assert_eq!(error.to_string(), "corrupt docx file: no word/document.xml in the archive");
    }

    #[test]
    fn malformed_xml_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.docx");
        write_docx_xml(&path, "<w:p><w:r><w:t>unclosed</w:r></w:p>");
        let error = read_docx(&path, &Limits::default()).unwrap_err();
        assert!(
            matches!(&error, FormatError::Corrupt { format: "docx", message } if message.starts_with("cannot read word/document.xml")),
            "{error:?}"
        );
    }

    #[test]
    fn a_document_without_text_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blank.docx");
        testkit::write_docx(&path, &["", "  "]).unwrap();
        let error = read_docx(&path, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Empty { format: "docx" }), "{error:?}");
    }

    #[test]
    fn a_password_protected_document_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.docx");
        let mut bytes = COMPOUND_FILE_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0; 120]);
        bytes.extend("EncryptionInfo".encode_utf16().flat_map(u16::to_le_bytes));
        std::fs::write(&path, &bytes).unwrap();
        let error = read_docx(&path, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Encrypted { format: "docx" }), "{error:?}");

        let legacy = dir.path().join("legacy.docx");
        std::fs::write(&legacy, &bytes[..128]).unwrap();
        let error = read_docx(&legacy, &Limits::default()).unwrap_err();
        assert!(matches!(error, FormatError::Corrupt { format: "docx", .. }), "{error:?}");
    }

    #[test]
    fn a_bomb_under_the_unpacked_budget_is_refused_once_its_text_passes_the_file_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.docx");
        // 4 MiB of one text node, under the 8 MiB budget, over the 1 MiB whole-document limit.
        testkit::write_zip_bomb_docx(&path, 4 << 20).unwrap();
        let limits = Limits { max_file_bytes: 1 << 20, max_unpacked_bytes: 8 << 20, ..Limits::default() };
        let error = read_docx(&path, &limits).unwrap_err();
        assert!(matches!(error, FormatError::TextTooLarge { format: "docx", limit: 0x10_0000 }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the text of the docx file is larger than max_file_mb allows (1 MiB) once unpacked"
        );
    }

    #[test]
    fn text_of_many_paragraphs_is_held_to_the_limit_too() {
        let paragraphs: String =
            (0..100).map(|n| format!("<w:p><w:r><w:t>paragraph {n:04}</w:t></w:r></w:p>")).collect();
        let text = |max_text| document_text(paragraphs.as_bytes(), max_text);
        let whole = text(u64::MAX).unwrap();
        assert_eq!(whole.len(), 100 * 14 + 99 * 2);
        assert_eq!(text(whole.len() as u64).unwrap(), whole);
        assert!(matches!(text(whole.len() as u64 - 1), Err(TextError::TooLarge)));
    }

    #[test]
    fn the_token_guard_counts_bytes_between_angle_brackets() {
        let mut reader = BudgetReader::new(&b"<a>12345</a><b>123456</b>"[..], u64::MAX).with_max_token(5);
        let error = io::Read::read_to_end(&mut reader, &mut Vec::new()).unwrap_err();
        assert!(reader.token_too_long, "{error}");
        let mut fits = BudgetReader::new(&b"<a>12345</a>"[..], u64::MAX).with_max_token(5);
        assert!(io::Read::read_to_end(&mut fits, &mut Vec::new()).is_ok());
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.docx");
        testkit::write_docx(&path, &["Text."]).unwrap();
        let limits = Limits { max_file_bytes: 100, ..Limits::default() };
        let error = read_docx(&path, &limits).unwrap_err();
        assert!(matches!(error, FormatError::TooLarge { format: "docx", limit: 100, .. }), "{error:?}");
    }
}
