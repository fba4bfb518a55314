//! Retrieval over passages of the user's local documents: BM25 (tantivy, persisted on disk), brute-force cosine
//! search over embeddings (computed by a caller-supplied closure and cached on disk), and reciprocal rank fusion.
//!
//! Nothing here calls a model: query and passage vectors come in from the caller.

mod bm25;
mod dense;
mod embed_cache;
mod fusion;

use std::path::PathBuf;

use serde::Deserialize;

pub use bm25::Bm25Index;
pub use dense::DenseIndex;
pub use embed_cache::{PassageEmbedder, embed_passages_cached};
pub use fusion::reciprocal_rank_fusion;

/// One retrievable chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub id: String,
    pub text: String,
}

impl Passage {
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self { id: id.into(), text: text.into() }
    }
}

/// A retrieved passage: `index` points into the passages slice the index was built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("search index failed: {0}")]
    Index(Box<tantivy::TantivyError>),
    #[error("index path {0} does not name a folder")]
    IndexPath(PathBuf),
    #[error("index in {path} is inconsistent: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error("embedder returned {got} vectors for {expected} texts")]
    EmbedCount { expected: usize, got: usize },
    #[error("vector has dimension {got}, expected {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("embedder returned a non-finite value for passage {0}")]
    NonFinite(usize),
    #[error("dense retrieval needs {0}")]
    DenseUnavailable(&'static str),
    #[error("dense index has {dense} vectors but the BM25 index has {bm25} passages")]
    SizeMismatch { dense: usize, bm25: usize },
    #[error("invalid retrieve settings: {0}")]
    Settings(String),
}

impl From<tantivy::TantivyError> for RetrieveError {
    fn from(e: tantivy::TantivyError) -> Self {
        Self::Index(Box::new(e))
    }
}

fn io_err<'a>(action: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> RetrieveError + 'a {
    move |source| RetrieveError::Io { action, path: path.to_owned(), source }
}

/// blake3 over a format version and every passage id and text, in order; lengths are hashed too so that moving
/// bytes between fields or passages changes the fingerprint.
fn fingerprint(version: &[u8], passages: &[Passage]) -> blake3::Hash {
    fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let mut h = blake3::Hasher::new();
    field(&mut h, version);
    h.update(&(passages.len() as u64).to_le_bytes());
    for p in passages {
        field(&mut h, p.id.as_bytes());
        field(&mut h, p.text.as_bytes());
    }
    h.finalize()
}

/// Unique suffix for temporary siblings: the pid separates processes, the counter separates calls.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Sorts best first with a deterministic tie-break, so equal scores never reorder between runs.
fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrieveMode {
    Bm25,
    Dense,
    #[default]
    Hybrid,
}

impl std::fmt::Display for RetrieveMode {
    /// The names used in configs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bm25 => "bm25",
            Self::Dense => "dense",
            Self::Hybrid => "hybrid",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrieveSettings {
    #[serde(default)]
    pub mode: RetrieveMode,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// BM25 hits scoring below this are dropped before fusion.
    #[serde(default)]
    pub min_bm25: Option<f32>,
    /// Dense hits with a cosine below this are dropped before fusion.
    #[serde(default)]
    pub min_similarity: Option<f32>,
    #[serde(default = "default_rrf_k")]
    pub rrf_k: f32,
    /// Per-retriever depth before fusion (at least `top_k` is always used).
    #[serde(default = "default_candidates")]
    pub candidates: usize,
}

fn default_top_k() -> usize {
    5
}

fn default_rrf_k() -> f32 {
    60.0
}

/// Shallow on purpose: with deep lists almost every passage shows up in both, and RRF then rewards a middling
/// rank in both lists over a first place in one (on tests/retrieval.rs, hybrid recall@5 is 0.98 at 10 and 0.88
/// at 50).
fn default_candidates() -> usize {
    10
}

impl Default for RetrieveSettings {
    fn default() -> Self {
        Self {
            mode: RetrieveMode::default(),
            top_k: default_top_k(),
            min_bm25: None,
            min_similarity: None,
            rrf_k: default_rrf_k(),
            candidates: default_candidates(),
        }
    }
}

impl RetrieveSettings {
    pub fn validate(&self) -> Result<(), RetrieveError> {
        if !self.rrf_k.is_finite() || self.rrf_k < 0.0 {
            return Err(RetrieveError::Settings(format!("rrf_k must be a finite number >= 0, got {}", self.rrf_k)));
        }
        for (name, value) in [("min_bm25", self.min_bm25), ("min_similarity", self.min_similarity)] {
            if let Some(v) = value
                && !v.is_finite()
            {
                return Err(RetrieveError::Settings(format!("{name} must be finite, got {v}")));
            }
        }
        Ok(())
    }
}

/// BM25 plus optional dense retrieval over the same passages.
pub struct Retriever {
    bm25: Bm25Index,
    dense: Option<DenseIndex>,
}

impl Retriever {
    /// `dense`, when given, must hold one vector per passage of `bm25`, in the same order.
    pub fn new(bm25: Bm25Index, dense: Option<DenseIndex>) -> Result<Self, RetrieveError> {
        if let Some(d) = &dense
            && d.len() != bm25.len()
        {
            return Err(RetrieveError::SizeMismatch { dense: d.len(), bm25: bm25.len() });
        }
        Ok(Self { bm25, dense })
    }

    pub fn bm25(&self) -> &Bm25Index {
        &self.bm25
    }

    pub fn dense(&self) -> Option<&DenseIndex> {
        self.dense.as_ref()
    }

    /// Thresholds are applied to each retriever's hits BEFORE fusion, so irrelevant passages are dropped instead of
    /// padding the top-k with zero-score ones; fewer than `top_k` results is normal.
    ///
    /// `dense` mode needs a dense index and `query_vector`. `hybrid` fuses both with RRF (scores are fused scores);
    /// without a dense index it ranks by BM25 alone, still returning fused scores so their scale does not depend
    /// on which retrievers ran. A retriever with a dense index needs `query_vector` in hybrid mode too.
    pub fn retrieve(
        &self,
        query: &str,
        query_vector: Option<&[f32]>,
        settings: &RetrieveSettings,
    ) -> Result<Vec<Hit>, RetrieveError> {
        settings.validate()?;
        if settings.top_k == 0 {
            return Ok(Vec::new());
        }
        let depth = settings.candidates.max(settings.top_k);
        let lexical = || -> Result<Vec<Hit>, RetrieveError> {
            let mut hits = self.bm25.search(query, depth)?;
            if let Some(min) = settings.min_bm25 {
                hits.retain(|h| h.score >= min);
            }
            Ok(hits)
        };
        let semantic = |dense: &DenseIndex| -> Result<Vec<Hit>, RetrieveError> {
            let vector = query_vector.ok_or(RetrieveError::DenseUnavailable("a query vector"))?;
            if vector.len() != dense.dim() {
                return Err(RetrieveError::Dimension { expected: dense.dim(), got: vector.len() });
            }
            let mut hits = dense.search(vector, depth);
            if let Some(min) = settings.min_similarity {
                hits.retain(|h| h.score >= min);
            }
            Ok(hits)
        };
        let mut hits = match settings.mode {
            RetrieveMode::Bm25 => lexical()?,
            RetrieveMode::Dense => {
                semantic(self.dense.as_ref().ok_or(RetrieveError::DenseUnavailable("passage embeddings"))?)?
            }
            RetrieveMode::Hybrid => {
                let lexical = lexical()?;
                match &self.dense {
                    Some(dense) => reciprocal_rank_fusion(&[&lexical, &semantic(dense)?], settings.rrf_k),
                    None => reciprocal_rank_fusion(&[&lexical], settings.rrf_k),
                }
            }
        };
        hits.truncate(settings.top_k);
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Passage> {
        vec![
            Passage::new("a", "The lighthouse keeper trimmed the lamp wick every evening."),
            Passage::new("b", "Sourdough bread needs a lively starter and a long cold proof."),
            Passage::new("c", "Glaciers carve U-shaped valleys as they grind slowly downhill."),
            Passage::new("d", "A sourdough starter is flour and water colonised by wild yeast."),
        ]
    }

    /// Unit vectors pointing along one axis each, so dense results are predictable.
    fn axis_vectors(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                let mut v = vec![0.0; n];
                v[i] = 1.0;
                v
            })
            .collect()
    }

    #[test]
    fn fingerprint_depends_on_order_and_boundaries() {
        let a = vec![Passage::new("x", "ab"), Passage::new("y", "c")];
        let b = vec![Passage::new("x", "a"), Passage::new("y", "bc")];
        let c = vec![a[1].clone(), a[0].clone()];
        assert_ne!(fingerprint(b"v1", &a), fingerprint(b"v1", &b));
        assert_ne!(fingerprint(b"v1", &a), fingerprint(b"v1", &c));
        assert_ne!(fingerprint(b"v1", &a), fingerprint(b"v2", &a));
        assert_eq!(fingerprint(b"v1", &a), fingerprint(b"v1", &a.clone()));
    }

    #[test]
    fn settings_defaults_and_yaml_shape() {
        let s: RetrieveSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, RetrieveSettings::default());
        assert_eq!((s.mode, s.top_k, s.rrf_k, s.candidates), (RetrieveMode::Hybrid, 5, 60.0, 10));
        let s: RetrieveSettings = serde_json::from_str(r#"{"mode": "bm25", "min_bm25": 1.5}"#).unwrap();
        assert_eq!((s.mode, s.min_bm25), (RetrieveMode::Bm25, Some(1.5)));
        assert!(serde_json::from_str::<RetrieveSettings>(r#"{"topk": 3}"#).is_err());
        assert!(serde_json::from_str::<RetrieveSettings>(r#"{"mode": "sparse"}"#).is_err());
        let bad = RetrieveSettings { rrf_k: -1.0, ..Default::default() };
        assert!(matches!(bad.validate(), Err(RetrieveError::Settings(_))));
    }

    #[test]
    fn thresholds_drop_hits_before_fusion() {
        let dir = tempfile::tempdir().unwrap();
        let passages = corpus();
        let bm25 = Bm25Index::open_or_build(&dir.path().join("bm25"), &passages).unwrap();
        let retriever = Retriever::new(bm25, Some(DenseIndex::new(axis_vectors(4)))).unwrap();
        // Query vector close to passage c (index 2), a bit towards a (index 0).
        let qv = [0.3, 0.0, 0.95, 0.0];

        let all = RetrieveSettings { mode: RetrieveMode::Dense, ..Default::default() };
        let hits = retriever.retrieve("", Some(&qv), &all).unwrap();
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>()[..2], [2, 0]);
        assert_eq!(hits.len(), 4, "no threshold: every passage is a candidate");

        let strict = RetrieveSettings { min_similarity: Some(0.5), ..all.clone() };
        let hits = retriever.retrieve("", Some(&qv), &strict).unwrap();
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [2]);

        // Hybrid: BM25 finds the two sourdough passages; the dense threshold keeps only c, so nothing pads.
        let hybrid = RetrieveSettings { min_similarity: Some(0.5), ..Default::default() };
        let hits = retriever.retrieve("sourdough starter", Some(&qv), &hybrid).unwrap();
        let mut got = hits.iter().map(|h| h.index).collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, [1, 2, 3]);

        let lexical = RetrieveSettings { mode: RetrieveMode::Bm25, ..Default::default() };
        let scores = retriever.retrieve("sourdough starter", None, &lexical).unwrap();
        assert_eq!(scores.len(), 2);
        let cut = (scores[0].score + scores[1].score) / 2.0;
        let strict = RetrieveSettings { min_bm25: Some(cut), ..lexical };
        assert_eq!(retriever.retrieve("sourdough starter", None, &strict).unwrap(), scores[..1]);
    }

    #[test]
    fn modes_need_what_they_use() {
        let dir = tempfile::tempdir().unwrap();
        let passages = corpus();
        let bm25 = Bm25Index::open_or_build(&dir.path().join("bm25"), &passages).unwrap();
        let lexical_only = Retriever::new(bm25, None).unwrap();
        let dense = RetrieveSettings { mode: RetrieveMode::Dense, ..Default::default() };
        assert!(matches!(lexical_only.retrieve("x", Some(&[1.0]), &dense), Err(RetrieveError::DenseUnavailable(_))));
        // Hybrid without embeddings ranks by BM25 alone.
        let hits = lexical_only.retrieve("glaciers valleys", None, &RetrieveSettings::default()).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].index, 2);
        assert!((hits[0].score - 1.0 / 61.0).abs() < 1e-6);

        let bm25 = Bm25Index::open_or_build(&dir.path().join("bm25"), &passages).unwrap();
        assert!(matches!(
            Retriever::new(bm25, Some(DenseIndex::new(axis_vectors(3)))),
            Err(RetrieveError::SizeMismatch { dense: 3, bm25: 4 })
        ));
        let bm25 = Bm25Index::open_or_build(&dir.path().join("bm25"), &passages).unwrap();
        let both = Retriever::new(bm25, Some(DenseIndex::new(axis_vectors(4)))).unwrap();
        assert!(matches!(
            both.retrieve("x", Some(&[1.0, 0.0]), &dense),
            Err(RetrieveError::Dimension { expected: 4, got: 2 })
        ));
        assert!(matches!(
            both.retrieve("x", None, &RetrieveSettings::default()),
            Err(RetrieveError::DenseUnavailable(_))
        ));
        let zero = RetrieveSettings { top_k: 0, ..Default::default() };
        assert!(both.retrieve("sourdough", None, &zero).unwrap().is_empty());
    }
}
