//! BM25 over passages with tantivy, persisted in a folder that is swapped in whole once built.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::query::BooleanQuery;
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    TokenStream,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use super::{Hit, Passage, RetrieveError, fingerprint, io_err, sort_hits, unique_suffix};

/// Bump when the schema or the analyzer changes: old indexes then no longer match and are rebuilt.
const FORMAT_VERSION: &[u8] = b"sdg-bm25-v1";
/// Written last inside the temporary folder, so its presence in `dir` means the index there is complete.
const FINGERPRINT_FILE: &str = "sdg-fingerprint";
const ANALYZER: &str = "sdg_en";
const INDEX_FIELD: &str = "passage";
const TEXT_FIELD: &str = "text";
/// One indexing thread keeps doc ids in passage order and leaves the cores to the rest of the engine.
const WRITER_MEMORY_BYTES: usize = 64 << 20;

pub struct Bm25Index {
    // Kept so the searcher's segments stay open for the index's lifetime.
    _reader: IndexReader,
    searcher: Searcher,
    text: Field,
    analyzer: TextAnalyzer,
    /// Passage index per `[segment_ord][doc_id]`: segments are immutable, so this is computed once.
    passage_of: Vec<Vec<u32>>,
    len: usize,
    reused: bool,
}

impl std::fmt::Debug for Bm25Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Index").field("len", &self.len).field("reused", &self.reused).finish_non_exhaustive()
    }
}

/// English function words. Lucene's default list (tantivy's English one) keeps question words and pronouns,
/// so a question like "how do I ..." from a user or an LLM matched passages on "how" and "i".
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "both",
    "but",
    "by",
    "can",
    "could",
    "d",
    "did",
    "do",
    "does",
    "doing",
    "each",
    "for",
    "from",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "ll",
    "m",
    "may",
    "me",
    "might",
    "much",
    "must",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "of",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "re",
    "s",
    "shall",
    "she",
    "should",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "to",
    "too",
    "us",
    "ve",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// English analysis: split on non-alphanumerics, lowercase, fold accents, drop function words, stem.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(STOP_WORDS.iter().map(|w| w.to_string())))
        .filter(Stemmer::new(Language::English))
        .build()
}

fn schema() -> Schema {
    let mut builder = Schema::builder();
    builder.add_u64_field(INDEX_FIELD, FAST);
    // Frequencies without positions: BM25 needs no phrase matching.
    let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs);
    builder.add_text_field(TEXT_FIELD, TextOptions::default().set_indexing_options(indexing));
    builder.build()
}

/// Temporary siblings of `dir` are named from its file name, so leftovers of crashed builds can be found.
struct Siblings {
    parent: PathBuf,
    tmp_prefix: String,
    old_prefix: String,
}

impl Siblings {
    fn of(dir: &Path) -> Result<Self, RetrieveError> {
        let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| RetrieveError::IndexPath(dir.to_owned()))?;
        let parent = dir.parent().map(Path::to_owned).unwrap_or_default();
        Ok(Self { parent, tmp_prefix: format!(".{name}.tmp-"), old_prefix: format!(".{name}.old-") })
    }

    fn fresh(&self, prefix: &str) -> PathBuf {
        let dir = if self.parent.as_os_str().is_empty() { Path::new(".") } else { &self.parent };
        dir.join(format!("{prefix}{}", unique_suffix()))
    }

    /// Removes folders left by builds that crashed before their rename. Only one builder per `dir` is supported:
    /// a concurrent builder's temporary folder would be removed too.
    fn clean_leftovers(&self) {
        let dir = if self.parent.as_os_str().is_empty() { Path::new(".") } else { &self.parent };
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&self.tmp_prefix) || name.starts_with(&self.old_prefix) {
                let path = entry.path();
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover BM25 index folder");
                }
            }
        }
    }
}

impl Bm25Index {
    /// Opens the index in `dir` if its recorded fingerprint (blake3 over a format version and every passage id and
    /// text, in order) matches `passages`; otherwise builds it in a temporary sibling folder and renames it into
    /// place, so a crash never leaves a half index that would be reused.
    pub fn open_or_build(dir: &Path, passages: &[Passage]) -> Result<Self, RetrieveError> {
        let expected = fingerprint(FORMAT_VERSION, passages).to_hex();
        let siblings = Siblings::of(dir)?;
        siblings.clean_leftovers();
        let recorded = fs::read_to_string(dir.join(FINGERPRINT_FILE)).ok();
        if recorded.as_deref().map(str::trim) == Some(expected.as_str()) {
            match Self::open(dir, passages.len(), true) {
                Ok(index) => return Ok(index),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "BM25 index unreadable; rebuilding"),
            }
        }
        build(dir, &siblings, passages, expected.as_str())?;
        Self::open(dir, passages.len(), false)
    }

    /// True when opened from disk without rebuilding.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Number of indexed passages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn open(dir: &Path, expected_len: usize, reused: bool) -> Result<Self, RetrieveError> {
        let corrupt = |reason: String| RetrieveError::CorruptIndex { path: dir.to_owned(), reason };
        let index = Index::open_in_dir(dir)?;
        index.tokenizers().register(ANALYZER, analyzer());
        let schema = index.schema();
        let text = schema.get_field(TEXT_FIELD)?;
        let analyzer = index.tokenizer_for_field(text)?;
        let reader: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let searcher = reader.searcher();
        if searcher.num_docs() != expected_len as u64 {
            return Err(corrupt(format!("{} documents for {expected_len} passages", searcher.num_docs())));
        }
        let mut passage_of = Vec::with_capacity(searcher.segment_readers().len());
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().u64(INDEX_FIELD)?;
            let ids = (0..segment.max_doc())
                .map(|doc| match column.first(doc) {
                    Some(i) if (i as usize) < expected_len => Ok(i as u32),
                    other => Err(corrupt(format!("document {doc} maps to passage {other:?}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            passage_of.push(ids);
        }
        Ok(Self { _reader: reader, searcher, text, analyzer, passage_of, len: expected_len, reused })
    }

    /// Top `k` passages for free text. The query is analyzed like the passages and its terms are OR-ed, so any
    /// punctuation or operator words in user or LLM text are just text. Only hits with score > 0 are returned.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, RetrieveError> {
        let k = k.min(self.len);
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut seen = HashSet::new();
        let mut terms = Vec::new();
        let mut analyzer = self.analyzer.clone();
        analyzer.token_stream(query).process(&mut |token| {
            if seen.insert(token.text.clone()) {
                terms.push(Term::from_field_text(self.text, &token.text));
            }
        });
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new_multiterms_query(terms);
        let top = self.searcher.search(&query, &TopDocs::with_limit(k).order_by_score())?;
        let mut hits: Vec<Hit> = top
            .into_iter()
            .filter(|(score, _)| *score > 0.0 && score.is_finite())
            .filter_map(|(score, addr)| {
                let index = *self.passage_of.get(addr.segment_ord as usize)?.get(addr.doc_id as usize)?;
                Some(Hit { index: index as usize, score })
            })
            .collect();
        sort_hits(&mut hits);
        Ok(hits)
    }
}

/// Builds the index in a fresh temporary sibling, then swaps it into `dir` with renames.
fn build(dir: &Path, siblings: &Siblings, passages: &[Passage], fingerprint: &str) -> Result<(), RetrieveError> {
    if !siblings.parent.as_os_str().is_empty() {
        fs::create_dir_all(&siblings.parent).map_err(io_err("create", &siblings.parent))?;
    }
    let tmp = siblings.fresh(&siblings.tmp_prefix);
    fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    if let Err(e) = write_index(&tmp, passages, fingerprint) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // A rename cannot replace a non-empty folder: move the old index aside first. A crash in between leaves no
    // `dir` at all, which simply means a rebuild next time.
    let old = siblings.fresh(&siblings.old_prefix);
    let had_old = match fs::rename(dir, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(RetrieveError::Io { action: "move aside", path: dir.to_owned(), source: e });
        }
    };
    if let Err(e) = fs::rename(&tmp, dir) {
        let _ = fs::remove_dir_all(&tmp);
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(RetrieveError::Io { action: "move into place", path: dir.to_owned(), source: e });
    }
    if had_old && let Err(e) = fs::remove_dir_all(&old) {
        tracing::warn!(path = %old.display(), error = %e, "cannot remove the replaced BM25 index");
    }
    Ok(())
}

fn write_index(path: &Path, passages: &[Passage], fingerprint: &str) -> Result<(), RetrieveError> {
    let index = Index::create_in_dir(path, schema())?;
    index.tokenizers().register(ANALYZER, analyzer());
    let schema = index.schema();
    let passage = schema.get_field(INDEX_FIELD)?;
    let text = schema.get_field(TEXT_FIELD)?;
    let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
    for (i, p) in passages.iter().enumerate() {
        let mut doc = TantivyDocument::new();
        doc.add_u64(passage, i as u64);
        doc.add_text(text, &p.text);
        writer.add_document(doc)?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    let fp_path = path.join(FINGERPRINT_FILE);
    let file = fs::File::create(&fp_path).map_err(io_err("create", &fp_path))?;
    std::io::Write::write_all(&mut &file, fingerprint.as_bytes()).map_err(io_err("write", &fp_path))?;
    file.sync_all().map_err(io_err("sync", &fp_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passages() -> Vec<Passage> {
        vec![
            Passage::new("p0", "Tide tables predict high water at the harbour mouth."),
            Passage::new("p1", "The harbour master logs every trawler that enters after dusk."),
            Passage::new("p2", "Beekeepers smoke the hive before lifting the frames."),
            Passage::new("p3", "Queen bees are marked with a dot of paint on the thorax."),
            Passage::new("p4", "Résumé writing: keep it to one page, café owners say."),
        ]
    }

    #[test]
    fn reuses_matching_index_and_rebuilds_on_change() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("bm25");
        let mut ps = passages();
        let first = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(!first.reused());
        let hits = first.search("harbour trawler", 3).unwrap();
        assert_eq!(hits[0].index, 1);
        drop(first);

        let second = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(second.reused());
        assert_eq!(second.search("harbour trawler", 3).unwrap(), hits);
        drop(second);

        // Same texts under a different id still changes the fingerprint.
        ps[0].id = "renamed".into();
        let third = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(!third.reused());
        ps[2].text = "Trawler crews mend nets on the quay.".into();
        let fourth = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(!fourth.reused());
        assert!(fourth.search("trawler", 5).unwrap().iter().any(|h| h.index == 2));
        assert!(fourth.search("beekeepers", 5).unwrap().is_empty());
        // Only the index folder remains next to it: the replaced ones are gone.
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["bm25"]);
    }

    #[test]
    fn crashed_build_leftovers_are_ignored_and_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("idx");
        let ps = passages();
        // A crash mid-build: a temp folder holding a half index with a matching fingerprint, and no `idx`.
        let tmp = root.path().join(".idx.tmp-999-0-0");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join(FINGERPRINT_FILE), fingerprint(FORMAT_VERSION, &ps).to_hex().as_str()).unwrap();
        fs::write(tmp.join("meta.json"), "{ truncated").unwrap();
        let old = root.path().join(".idx.old-999-0-0");
        fs::create_dir(&old).unwrap();
        let unrelated = root.path().join(".other.tmp-1");
        fs::create_dir(&unrelated).unwrap();

        let index = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(!index.reused());
        assert_eq!(index.search("queen paint", 2).unwrap()[0].index, 3);
        assert!(!tmp.exists() && !old.exists());
        assert!(unrelated.exists(), "other folders are left alone");
    }

    #[test]
    fn index_without_fingerprint_or_with_garbage_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("idx");
        let ps = passages();
        drop(Bm25Index::open_or_build(&dir, &ps).unwrap());
        fs::remove_file(dir.join(FINGERPRINT_FILE)).unwrap();
        assert!(!Bm25Index::open_or_build(&dir, &ps).unwrap().reused());

        // Matching fingerprint but broken index files: rebuilt rather than failing.
        fs::write(dir.join("meta.json"), "not json").unwrap();
        let index = Bm25Index::open_or_build(&dir, &ps).unwrap();
        assert!(!index.reused());
        assert_eq!(index.search("hive frames", 1).unwrap()[0].index, 2);
    }

    #[test]
    fn hostile_queries_are_plain_text() {
        let root = tempfile::tempdir().unwrap();
        let index = Bm25Index::open_or_build(&root.path().join("bm25"), &passages()).unwrap();
        for q in [
            "AND OR NOT ( ) : \" * ~ ^",
            "",
            "   ",
            "🐝🐝 🌊",
            "text:harbour AND (bees OR \"queen",
            "+harbour -bees title:[a TO z] /regex/ {x} \\",
            "\u{0}\u{ffff}",
        ] {
            let hits = index.search(q, 5);
            assert!(hits.is_ok(), "{q:?}: {hits:?}");
        }
        assert!(index.search("AND OR NOT ( ) : \" * ~ ^", 5).unwrap().is_empty());
        // Operator syntax is read as words: `harbour` still matches.
        let hits = index.search("text:harbour AND (bees OR \"queen", 5).unwrap();
        let found: HashSet<usize> = hits.iter().map(|h| h.index).collect();
        assert!(found.contains(&0) && found.contains(&1) && found.contains(&3), "{hits:?}");
        assert!(hits.iter().all(|h| h.score > 0.0));
        // Accents fold and stems match across forms.
        assert_eq!(index.search("resume cafe", 5).unwrap()[0].index, 4);
        assert_eq!(index.search("beekeeper lifted frame", 5).unwrap()[0].index, 2);
    }

    #[test]
    fn unmatched_or_stopword_queries_return_nothing() {
        let root = tempfile::tempdir().unwrap();
        let index = Bm25Index::open_or_build(&root.path().join("bm25"), &passages()).unwrap();
        assert!(index.search("volcano magma eruption", 5).unwrap().is_empty());
        assert!(index.search("the and of", 5).unwrap().is_empty());
        assert!(index.search("harbour", 0).unwrap().is_empty());
        let hits = index.search("harbour", usize::MAX).unwrap();
        assert_eq!(hits.iter().map(|h| h.index).collect::<HashSet<_>>(), HashSet::from([0, 1]));
    }

    #[test]
    fn empty_corpus_builds_and_searches() {
        let root = tempfile::tempdir().unwrap();
        let index = Bm25Index::open_or_build(&root.path().join("e"), &[]).unwrap();
        assert!(index.is_empty());
        assert!(index.search("anything", 5).unwrap().is_empty());
        assert!(Bm25Index::open_or_build(&root.path().join("e"), &[]).unwrap().reused());
    }
}
