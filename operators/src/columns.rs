//! Well-known column names shared by sources, operators and sinks.

/// Stable record id: hex of a content hash, unique within a run.
pub const ID: &str = "id";
/// The record's text.
pub const TEXT: &str = "text";
/// Path of the source file, relative to the ingest root.
pub const SOURCE_PATH: &str = "source_path";
/// Source format: txt, md, html, pdf, docx, jsonl, csv, parquet.
pub const FORMAT: &str = "format";
/// Per-record metadata as a JSON object (page number, row number, title, ...).
pub const META: &str = "meta";
/// Chunk columns.
pub const DOC_ID: &str = "doc_id";
pub const CHUNK_ORDINAL: &str = "chunk_ordinal";
pub const CHUNK_START: &str = "chunk_start";
pub const CHUNK_END: &str = "chunk_end";
pub const CHUNK_TOKENS: &str = "chunk_tokens";

/// A stable id: the first 16 bytes of BLAKE3 over the parts, separated so that ("ab","c") != ("a","bc").
pub fn stable_id(parts: &[&[u8]]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let hash = hasher.finalize();
    let mut out = String::with_capacity(32);
    for byte in &hash.as_bytes()[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_id_is_deterministic_and_separates_parts() {
        let a = stable_id(&[b"ab", b"c"]);
        assert_eq!(a, stable_id(&[b"ab", b"c"]));
        assert_ne!(a, stable_id(&[b"a", b"bc"]));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
