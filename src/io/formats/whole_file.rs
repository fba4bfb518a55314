//! Guards shared by the whole-document readers: bounded reads, binary sniffing, strict UTF-8 decoding.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{Document, DocumentStream, FormatError};

/// How much of the start of a file is sniffed for binary content.
const SNIFF_BYTES: usize = 8 * 1024;

/// A text file whose sniffed start is more than this share (in percent) of control bytes is binary.
const MAX_CONTROL_PERCENT: usize = 10;

const UTF8_BOM: &str = "\u{feff}";

/// Reads a whole file, refusing it from its metadata before a byte is read when it is over `max_bytes`.
pub(super) fn read_bytes(path: &Path, format: &'static str, max_bytes: u64) -> Result<Vec<u8>, FormatError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > max_bytes {
        return Err(FormatError::TooLarge { format, size, limit: max_bytes });
    }
    // The file can grow between the metadata call and the read: never read more than the limit plus one byte.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    let read = bytes.len() as u64;
    if read > max_bytes {
        return Err(FormatError::TooLarge { format, size: read, limit: max_bytes });
    }
    Ok(bytes)
}

/// Decodes a text file: refuses binary content and invalid UTF-8 (never a lossy decode), strips a UTF-8 BOM.
pub(super) fn decode_text(bytes: Vec<u8>, format: &'static str) -> Result<String, FormatError> {
    // UTF-16 text is full of NULs; say what it really is instead of calling it binary.
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(FormatError::InvalidUtf8 { offset: 0 });
    }
    if looks_binary(&bytes[..bytes.len().min(SNIFF_BYTES)]) {
        return Err(FormatError::Binary { format });
    }
    // Decode before stripping the BOM so that the reported offset counts from the start of the file.
    let text = String::from_utf8(bytes)
        .map_err(|error| FormatError::InvalidUtf8 { offset: error.utf8_error().valid_up_to() })?;
    Ok(match text.strip_prefix(UTF8_BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// True when `sample` holds a NUL byte or too many control bytes to be text.
pub(super) fn looks_binary(sample: &[u8]) -> bool {
    if sample.contains(&0) {
        return true;
    }
    let control = sample
        .iter()
        .filter(|&&byte| (byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B)) || byte == 0x7F)
        .count();
    control * 100 > sample.len() * MAX_CONTROL_PERCENT
}

/// A stream holding exactly one document.
pub(super) fn one_document(document: Document) -> DocumentStream {
    Box::new(std::iter::once(Ok(document)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_tabs_and_newlines_is_not_binary() {
        assert!(!looks_binary(b"a\tb\r\nc\x0cd"));
    }

    #[test]
    fn nul_bytes_or_many_control_bytes_are_binary() {
        assert!(looks_binary(b"abc\0def"));
        assert!(looks_binary(b"\x01\x02\x03abcdefg"));
        assert!(!looks_binary(b"\x01abcdefghijklmnopqrstuvwxyz"));
    }

    #[test]
    fn the_bom_is_stripped_and_offsets_count_from_the_file_start() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFhello".to_vec(), "txt").unwrap(), "hello");
        match decode_text(b"\xEF\xBB\xBFab\xFFcd".to_vec(), "txt") {
            Err(FormatError::InvalidUtf8 { offset }) => assert_eq!(offset, 5),
            other => panic!("expected InvalidUtf8, got {other:?}"),
        }
    }

    #[test]
    fn utf16_is_reported_as_invalid_utf8() {
        match decode_text(b"\xFF\xFEh\0i\0".to_vec(), "txt") {
            Err(FormatError::InvalidUtf8 { offset }) => assert_eq!(offset, 0),
            other => panic!("expected InvalidUtf8, got {other:?}"),
        }
    }
}
