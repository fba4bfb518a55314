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
use sdg_operators::model::{ChatMessage, ModelRequest, Prompt, Sampling};

use crate::retrieve::{Bm25Index, DenseIndex, Passage, RetrieveSettings, Retriever, embed_passages_cached};

/// Columns every passage row carries besides `text`.
pub const KEPT: [&str; 7] =
    ["passage_id", "doc_id", "passage_source", "chunk_ordinal", "retrieval_query", "retrieval_score", "retrieval_rank"];

/// A complete config that uses `passages` (paths relative to the repository's `configs/`).
pub const EXAMPLE: &str = "\
# The sample corpus's chunks that BM25 ranks for two queries, with the query, score and rank of each.
nodes:
  - id: passages
    kind: passages
    paths: [sample-corpus]
    queries: [\"beta blockers and asthma\", \"compound interest over ten years\"]
    chunk: {max_tokens: 200, overlap: 20}
    retrieval: {mode: bm25, top_k: 2}
  - {id: out, kind: sink, input: passages}
";

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
    #[serde(default)]
    pub queries: Vec<String>,
    /// Queries written by a model from a description of the task (added to `queries`).
    #[serde(default)]
    pub extract: Option<QueryExtraction>,
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

/// `extract: {model: teacher, count: 5, topic: "..."}`: the model proposes search queries (and keywords) for
/// the topic, as structured output; nothing it writes is ever evaluated.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryExtraction {
    pub model: String,
    #[serde(default = "default_query_count")]
    pub count: usize,
    pub topic: String,
    /// Words always added as a query of their own (the task's domain words).
    #[serde(default)]
    pub keywords: Vec<String>,
}

fn default_query_count() -> usize {
    5
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
        if self.queries.iter().all(|q| q.trim().is_empty()) && self.extract.is_none() {
            problems.push(("queries".into(), "give queries, or `extract` to have a model write them".into()));
        }
        if let Some(extract) = &self.extract
            && (extract.count == 0 || extract.topic.trim().is_empty())
        {
            problems.push(("extract".into(), "needs a topic and count >= 1".into()));
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

    /// The model endpoints this node calls before the run.
    pub fn endpoints(&self) -> Vec<String> {
        self.extract.iter().map(|e| e.model.clone()).collect()
    }

    /// The request asking `extract.model` for queries.
    pub fn extraction_request(&self) -> Option<ModelRequest> {
        let extract = self.extract.as_ref()?;
        let prompt = format!(
            "We are building training data about this topic:\n{}\n\nWrite {} short search queries that would find \
             the passages of a document collection most useful for it, and the key terms of the topic. \
             Reply with JSON only: {{\"queries\": [\"...\"], \"keywords\": [\"...\"]}}",
            extract.topic, extract.count
        );
        Some(ModelRequest {
            endpoint: extract.model.clone(),
            prompt: Prompt::Chat(vec![ChatMessage::new("user", prompt)]),
            sampling: Sampling {
                n: 1,
                temperature: Some(0.0),
                max_tokens: Some(512),
                seed: Some(0),
                json_schema: Some(serde_json::json!({
                    "type": "object",
                    "properties": {
                        "queries": {"type": "array", "items": {"type": "string"}},
                        "keywords": {"type": "array", "items": {"type": "string"}}
                    },
                    "required": ["queries"]
                })),
                ..Sampling::default()
            },
            row: 0,
        })
    }

    /// The queries to retrieve for: the written ones, the keywords, and those in the model's reply.
    pub fn all_queries(&self, reply: Option<&str>) -> Result<Vec<String>, String> {
        let mut queries: Vec<String> = self.queries.iter().filter(|q| !q.trim().is_empty()).cloned().collect();
        if let Some(extract) = &self.extract {
            if !extract.keywords.is_empty() {
                queries.push(extract.keywords.join(" "));
            }
            let text = reply.ok_or("the query model gave no reply")?;
            let value = sdg_operators::json_extract::extract_json(text)
                .map_err(|e| format!("the query model's reply is not JSON: {e}"))?;
            let strings = |key: &str| -> Vec<String> {
                value
                    .get(key)
                    .and_then(serde_json::Value::as_array)
                    .map(|items| items.iter().filter_map(|v| v.as_str()).map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default()
            };
            let proposed: Vec<String> =
                strings("queries").into_iter().filter(|q| !q.is_empty()).take(extract.count).collect();
            if proposed.is_empty() {
                return Err("the query model proposed no queries".to_string());
            }
            queries.extend(proposed);
            let keywords = strings("keywords");
            if !keywords.is_empty() {
                queries.push(keywords.join(" "));
            }
        }
        queries.dedup();
        Ok(queries)
    }

    /// Reads, chunks, indexes and retrieves into `root/<key>/` for `queries`, and returns the ingest that reads
    /// the result.
    pub fn materialize(&self, node: &str, root: &Path, queries: &[String]) -> Result<IngestSpec, String> {
        let settings = self.settings()?;
        let folder = root.join(self.key());
        let selected_name = format!("selected-{}", &blake3::hash(queries.join("\u{0}").as_bytes()).to_hex()[..16]);
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
            None => (None, vec![None; queries.len()]),
            Some(name) => {
                let dir = crate::models::store::resolve(name, None).map_err(|e| e.to_string())?;
                let embedder = crate::models::local::embed::Embedder::load(&dir).map_err(|e| e.to_string())?;
                let embed = |texts: &[&str]| embedder.embed(texts).map_err(|e| e.to_string());
                let vectors =
                    embed_passages_cached(&folder.join("dense"), name, &passages, &embed).map_err(|e| e.to_string())?;
                let queries: Vec<&str> = queries.iter().map(String::as_str).collect();
                let query_vectors = embed(&queries)?.into_iter().map(Some).collect();
                (Some(DenseIndex::new(vectors)), query_vectors)
            }
        };
        let retriever = Retriever::new(bm25, dense).map_err(|e| e.to_string())?;
        // Each passage is kept once, for the query that ranked it best.
        let mut chosen: BTreeMap<usize, (usize, f32, usize)> = BTreeMap::new();
        for (q, query) in queries.iter().enumerate() {
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
            column("retrieval_query", picked.iter().map(|i| queries[chosen[i].0].clone()).collect()),
            column("retrieval_score", picked.iter().map(|i| format!("{:.4}", chosen[i].1)).collect()),
            column("retrieval_rank", picked.iter().map(|i| (chosen[i].2 + 1).to_string()).collect()),
        ]
        .into_iter()
        .unzip();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())?;
        let selected = folder.join(selected_name);
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
