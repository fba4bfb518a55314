//! The `passages` source: the chunks of a document corpus most relevant to a set of queries.
//!
//! Before the run starts, the corpus is read and chunked, a BM25 index (tantivy, persisted and reused while the
//! corpus is unchanged) and optionally a dense index (a local embedder, vectors cached) are built, and each
//! query keeps its top-k chunks above the score thresholds: irrelevant chunks are dropped, not padded in.
//! The selected chunks are written as Parquet beside the response cache and read like any file source. Every
//! row keeps its chunk id, document id, original source path, and the query, score and rank that chose it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use sdg_operators::Operator;
use sdg_operators::chunk::{ChunkSpec, Chunker};
use sdg_operators::columns;

use super::formats::FieldMapping;
use super::ingest::{FileReader, IngestSpec, discover};
use crate::retrieve::{Bm25Index, DenseIndex, Passage, RetrieveSettings, Retriever, embed_passages_cached};

/// Columns every passage row carries besides `text`.
pub const KEPT: [&str; 7] =
    ["passage_id", "doc_id", "passage_source", "chunk_ordinal", "retrieval_query", "retrieval_score", "retrieval_rank"];

/// Settings of a `passages` node.
///
/// ```yaml
/// - id: passages
///   kind: passages
///   paths: [corpus]
///   queries: ["tidal forces", "how glaciers carve valleys"]
///   chunk: {max_tokens: 1200, overlap: 120}
///   retrieval: {mode: hybrid, top_k: 5, min_bm25: 1.0, min_similarity: 0.3}
///   embedder: all-minilm-l6-v2       # a local embedder (catalog name or folder); without one, BM25 only
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassagesSpec {
    pub paths: Vec<PathBuf>,
    pub queries: Vec<String>,
    #[serde(default = "default_chunk")]
    pub chunk: ChunkSettings,
    #[serde(default)]
    pub retrieval: Option<RetrievalSettings>,
    #[serde(default)]
    pub embedder: Option<String>,
    /// The folder relative paths were resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Chunk size and overlap (characters).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunkSettings {
    pub max_tokens: usize,
    #[serde(default)]
    pub overlap: usize,
}

fn default_chunk() -> ChunkSettings {
    ChunkSettings { max_tokens: 1200, overlap: 120 }
}

/// The retrieval settings as written (mirrors [`RetrieveSettings`], which is not serializable).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrievalSettings {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_bm25: Option<f32>,
    #[serde(default)]
    pub min_similarity: Option<f32>,
}

impl PassagesSpec {
    pub fn resolved(mut self, base_dir: &Path) -> Self {
        self.paths = self.paths.iter().map(|p| if p.is_absolute() { p.clone() } else { base_dir.join(p) }).collect();
        self.base_dir = base_dir.to_path_buf();
        self
    }

    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.paths.is_empty() {
            problems.push(("paths".into(), "name at least one file or folder".into()));
        }
        if self.queries.iter().all(|q| q.trim().is_empty()) {
            problems.push(("queries".into(), "give at least one query to retrieve passages for".into()));
        }
        if let Err(e) = self.settings() {
            problems.push(("retrieval".into(), e));
        }
        problems
    }

    /// The retrieval settings, defaulting to BM25 alone when no embedder is configured.
    fn settings(&self) -> Result<RetrieveSettings, String> {
        let written = self.retrieval.clone().unwrap_or(RetrievalSettings {
            mode: None,
            top_k: None,
            min_bm25: None,
            min_similarity: None,
        });
        let mode = written.mode.unwrap_or_else(|| if self.embedder.is_some() { "hybrid" } else { "bm25" }.into());
        let mut value = serde_json::json!({"mode": mode});
        if let Some(k) = written.top_k {
            value["top_k"] = k.into();
        }
        if let Some(min) = written.min_bm25 {
            value["min_bm25"] = f64::from(min).into();
        }
        if let Some(min) = written.min_similarity {
            value["min_similarity"] = f64::from(min).into();
        }
        let settings: RetrieveSettings = serde_json::from_value(value).map_err(|e| e.to_string())?;
        settings.validate().map_err(|e| e.to_string())?;
        if self.embedder.is_none() && mode != "bm25" {
            return Err(format!("mode `{mode}` needs an `embedder`"));
        }
        Ok(settings)
    }

    /// The ingest this node becomes once its passages are written to `folder`.
    pub fn ingest(&self, folder: &Path) -> IngestSpec {
        let mut spec = IngestSpec::for_paths(vec![folder.to_path_buf()], folder);
        spec.include = vec!["*.parquet".to_string()];
        spec.fields = FieldMapping {
            text: columns::TEXT.to_string(),
            id: Some("passage_id".to_string()),
            keep: KEPT.iter().map(|s| s.to_string()).collect(),
        };
        spec
    }

    fn key(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        blake3::hash(format!("{text}{}", self.base_dir.display()).as_bytes()).to_hex()[..16].to_string()
    }

    /// Reads, chunks, indexes and retrieves into `root/<key>/`, and returns the ingest that reads the result.
    pub fn materialize(&self, node: &str, root: &Path) -> Result<IngestSpec, String> {
        let settings = self.settings()?;
        let folder = root.join(self.key());
        std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        // Read and chunk the corpus with the same code the graph uses.
        let corpus = IngestSpec::for_paths(self.paths.clone(), &self.base_dir);
        let discovery = discover(&corpus, node);
        let chunk_spec: ChunkSpec = serde_json::from_value(
            serde_json::json!({"max_tokens": self.chunk.max_tokens, "overlap": self.chunk.overlap}),
        )
        .map_err(|e| e.to_string())?;
        let mut chunker = Chunker::new(chunk_spec).map_err(|e| e.to_string())?;
        let mut chunks: Vec<RecordBatch> = Vec::new();
        for file in discovery.files {
            let mut reader = FileReader::open(&corpus, node, file);
            while let Some(read) = reader.next_batch(256, 4 << 20) {
                if read.rows.num_rows() > 0 {
                    chunks.push(chunker.process(read.rows).map_err(|e| e.to_string())?.rows);
                }
            }
        }
        let mut passages = Vec::new();
        let mut origin = Vec::new();
        for (b, batch) in chunks.iter().enumerate() {
            let ids = sdg_operators::string_column(batch, columns::ID).map_err(|e| e.to_string())?;
            let texts = sdg_operators::string_column(batch, columns::TEXT).map_err(|e| e.to_string())?;
            for row in 0..batch.num_rows() {
                passages.push(Passage::new(ids.value(row), texts.value(row)));
                origin.push((b, row));
            }
        }
        if passages.is_empty() {
            return Err("the corpus has no text to retrieve from".to_string());
        }
        let bm25 = Bm25Index::open_or_build(&folder.join("bm25"), &passages).map_err(|e| e.to_string())?;
        let (dense, query_vectors) = match &self.embedder {
            None => (None, vec![None; self.queries.len()]),
            Some(name) => {
                let dir = crate::models::store::resolve(name, None).map_err(|e| e.to_string())?;
                let embedder = crate::models::local::embed::Embedder::load(&dir).map_err(|e| e.to_string())?;
                let embed = |texts: &[&str]| embedder.embed(texts).map_err(|e| e.to_string());
                let vectors =
                    embed_passages_cached(&folder.join("dense"), name, &passages, &embed).map_err(|e| e.to_string())?;
                let queries: Vec<&str> = self.queries.iter().map(String::as_str).collect();
                let query_vectors = embed(&queries)?.into_iter().map(Some).collect();
                (Some(DenseIndex::new(vectors)), query_vectors)
            }
        };
        let retriever = Retriever::new(bm25, dense).map_err(|e| e.to_string())?;
        // Each passage is kept once, for the query that ranked it best.
        let mut chosen: BTreeMap<usize, (usize, f32, usize)> = BTreeMap::new();
        for (q, query) in self.queries.iter().enumerate() {
            let hits = retriever.retrieve(query, query_vectors[q].as_deref(), &settings).map_err(|e| e.to_string())?;
            for (rank, hit) in hits.iter().enumerate() {
                let better = chosen.get(&hit.index).is_none_or(|&(_, _, r)| rank < r);
                if better {
                    chosen.insert(hit.index, (q, hit.score, rank));
                }
            }
        }
        let column = |name: &str, values: Vec<String>| -> (Field, ArrayRef) {
            (Field::new(name, DataType::Utf8, false), Arc::new(StringArray::from(values)) as ArrayRef)
        };
        let cell = |index: usize, name: &str| -> String {
            let (b, row) = origin[index];
            match chunks[b].column_by_name(name) {
                Some(array) if !array.is_null(row) => {
                    arrow::util::display::array_value_to_string(array.as_ref(), row).unwrap_or_default()
                }
                _ => String::new(),
            }
        };
        let picked: Vec<usize> = chosen.keys().copied().collect();
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = [
            column(columns::TEXT, picked.iter().map(|&i| passages[i].text.clone()).collect()),
            column("passage_id", picked.iter().map(|&i| passages[i].id.clone()).collect()),
            column("doc_id", picked.iter().map(|&i| cell(i, columns::DOC_ID)).collect()),
            column("passage_source", picked.iter().map(|&i| cell(i, columns::SOURCE_PATH)).collect()),
            column("chunk_ordinal", picked.iter().map(|&i| cell(i, columns::CHUNK_ORDINAL)).collect()),
            column("retrieval_query", picked.iter().map(|i| self.queries[chosen[i].0].clone()).collect()),
            column("retrieval_score", picked.iter().map(|i| format!("{:.4}", chosen[i].1)).collect()),
            column("retrieval_rank", picked.iter().map(|i| (chosen[i].2 + 1).to_string()).collect()),
        ]
        .into_iter()
        .unzip();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())?;
        let selected = folder.join("selected");
        let _ = std::fs::remove_dir_all(&selected);
        std::fs::create_dir_all(&selected).map_err(|e| e.to_string())?;
        let path = selected.join("passages.parquet");
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| e.to_string())?;
        writer.write(&batch).map_err(|e| e.to_string())?;
        writer.close().map_err(|e| e.to_string())?;
        tracing::info!(node, chunks = passages.len(), selected = picked.len(), "passages retrieved");
        Ok(self.ingest(&selected))
    }
}
