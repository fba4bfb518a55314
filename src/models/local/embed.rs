//! Sentence embeddings from a BERT-family encoder on the CPU (candle), in the sentence-transformers layout:
//! `config.json`, `model.safetensors`, `tokenizer.json`, optional `1_Pooling/config.json` and
//! `sentence_bert_config.json`. Vectors are pooled (mean or CLS) and L2-normalized.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Texts per forward pass: large enough to keep the matmuls efficient, small enough that padding stays cheap.
const DEFAULT_BATCH_SIZE: usize = 32;
/// Batches tokenized and length-sorted together; bounds the memory held for token ids on huge inputs.
const WINDOW_BATCHES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid JSON in {path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("cannot load tokenizer {path}: {source}")]
    Tokenizer { path: PathBuf, source: tokenizers::Error },
    #[error("cannot load weights {path}: {source}")]
    Weights { path: PathBuf, source: candle_core::Error },
    #[error("unsupported model in {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("tokenization failed: {0}")]
    Tokenize(tokenizers::Error),
    #[error("model forward failed: {0}")]
    Forward(#[from] candle_core::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the token vectors, padding excluded.
    Mean,
    /// The vector of the first (`[CLS]`) token.
    Cls,
}

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    dim: usize,
    max_len: usize,
    pad_id: u32,
    batch_size: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read(path: &Path) -> Result<String, EmbedError> {
    std::fs::read_to_string(path).map_err(|source| EmbedError::Read { path: path.to_owned(), source })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    serde_json::from_str(&read(path)?).map_err(|source| EmbedError::Json { path: path.to_owned(), source })
}

/// Reads an optional sentence-transformers file: absent is `None`, unreadable or malformed is an error.
fn read_optional_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, EmbedError> {
    if path.exists() { read_json(path).map(Some) } else { Ok(None) }
}

fn pooling_from(path: &Path, cfg: &PoolingConfig, hidden_size: usize) -> Result<Pooling, EmbedError> {
    let unsupported = |reason: String| EmbedError::Unsupported { path: path.to_owned(), reason };
    if let Some(dim) = cfg.word_embedding_dimension
        && dim != hidden_size
    {
        return Err(unsupported(format!("word_embedding_dimension {dim} differs from hidden_size {hidden_size}")));
    }
    if cfg.pooling_mode_max_tokens || cfg.pooling_mode_mean_sqrt_len_tokens {
        return Err(unsupported("only CLS or mean pooling is supported".into()));
    }
    match (cfg.pooling_mode_cls_token, cfg.pooling_mode_mean_tokens) {
        (true, true) => Err(unsupported("concatenated CLS and mean pooling is not supported".into())),
        (true, false) => Ok(Pooling::Cls),
        _ => Ok(Pooling::Mean),
    }
}

impl Embedder {
    /// Loads the model from a sentence-transformers directory (see the module docs).
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        Embedder::load_on(dir, &Device::Cpu)
    }

    /// As [`load`](Self::load), computing on `device` (a GPU with `--features cuda`).
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config: Config = read_json(&config_path)?;

        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = match read_optional_json::<PoolingConfig>(&pooling_path)? {
            Some(cfg) => pooling_from(&pooling_path, &cfg, config.hidden_size)?,
            None => Pooling::Mean,
        };

        // sentence-transformers truncates at max_seq_length (256 for MiniLM), not at the position table size.
        let sbert_path = dir.join("sentence_bert_config.json");
        let max_len = read_optional_json::<SentenceBertConfig>(&sbert_path)?
            .and_then(|c| c.max_seq_length)
            .map_or(config.max_position_embeddings, |n| n.min(config.max_position_embeddings));

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|source| EmbedError::Tokenizer { path: tokenizer_path.clone(), source })?;
        let special = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_len <= special {
            let reason = format!("max sequence length {max_len} leaves no room beside {special} special tokens");
            return Err(EmbedError::Unsupported { path: sbert_path, reason });
        }
        // tokenizer.json often ships fixed padding and a shorter truncation (128 for MiniLM); we pad per batch.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|source| EmbedError::Tokenizer { path: tokenizer_path.clone(), source })?;

        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "file not found");
            return Err(EmbedError::Read { path: weights_path, source });
        }
        // SAFETY: the file is mapped read-only; the model directory must not be rewritten while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, device) }
            .map_err(|source| EmbedError::Weights { path: weights_path.clone(), source })?;
        let model =
            BertModel::load(vb, &config).map_err(|source| EmbedError::Weights { path: weights_path, source })?;

        let pad_id = u32::try_from(config.pad_token_id).map_err(|_| EmbedError::Unsupported {
            path: config_path,
            reason: format!("pad_token_id {} out of range", config.pad_token_id),
        })?;
        Ok(Self { model, tokenizer, pooling, dim: config.hidden_size, max_len, pad_id, batch_size: DEFAULT_BATCH_SIZE })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Tokens per text after truncation, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Texts per forward pass (default 32); 0 is taken as 1.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Embeds `texts` into L2-normalized vectors, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let window_len = self.batch_size * WINDOW_BATCHES;
        let mut out = vec![Vec::new(); texts.len()];
        for (w, window) in texts.chunks(window_len).enumerate() {
            let encodings = self.tokenizer.encode_batch(window.to_vec(), true).map_err(EmbedError::Tokenize)?;
            // Length-sorted batches pad little; the original index puts each vector back in place.
            let mut order: Vec<usize> = (0..encodings.len()).collect();
            order.sort_by_key(|&i| encodings[i].get_ids().len());
            for batch in order.chunks(self.batch_size) {
                let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
                let vectors = self.forward(&ids)?;
                for (&i, v) in batch.iter().zip(vectors) {
                    out[w * window_len + i] = v;
                }
            }
        }
        Ok(out)
    }

    /// One padded forward pass over token id sequences; returns one normalized vector per sequence.
    fn forward(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch = seqs.len();
        let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; batch * seq_len];
        let mut mask = vec![0f32; batch * seq_len];
        for (row, seq) in seqs.iter().enumerate() {
            ids[row * seq_len..row * seq_len + seq.len()].copy_from_slice(seq);
            mask[row * seq_len..row * seq_len + seq.len()].fill(1.0);
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (batch, seq_len), device)?;
        let type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (batch, seq_len), device)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.i((.., 0))?,
            Pooling::Mean => {
                let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
                // Every sequence holds at least [CLS] and [SEP]; the clamp only guards odd tokenizers.
                let counts = mask.sum_keepdim(1)?.clamp(1e-9, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let mut vectors = pooled.to_vec2::<f32>()?;
        for v in &mut vectors {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(vectors)
    }
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// The all-MiniLM-L6-v2 directory: `SDG_TEST_MINILM`, then the model store, then the shared copy.
    fn minilm_dir() -> PathBuf {
        crate::testkit::catalog_model("all-minilm-l6-v2")
    }

    fn embedder() -> &'static Embedder {
        static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
        EMBEDDER.get_or_init(|| Embedder::load(&minilm_dir()).expect("load all-MiniLM-L6-v2"))
    }

    fn embed_one(text: &str) -> Vec<f32> {
        embedder().embed(&[text]).unwrap().pop().unwrap()
    }

    #[test]
    fn embedder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Embedder>();
    }

    #[test]
    fn loads_minilm_config() {
        let e = embedder();
        assert_eq!(e.dim(), 384);
        assert_eq!(e.pooling(), Pooling::Mean);
        assert_eq!(e.max_len(), 256, "sentence_bert_config.json max_seq_length");
    }

    #[test]
    fn paraphrase_close_unrelated_far() {
        let v = embedder()
            .embed(&[
                "The cat sits on the mat.",
                "A cat is sitting on a mat.",
                "Quarterly revenue rose by 12 percent in Europe.",
            ])
            .unwrap();
        let para = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        println!("paraphrase cosine = {para:.4}, unrelated cosine = {unrelated:.4}");
        assert!(para > 0.7, "paraphrase cosine {para}");
        assert!(unrelated < 0.3, "unrelated cosine {unrelated}");
    }

    #[test]
    fn unit_length_dim_and_deterministic() {
        let texts = ["Hello world.", "Synthetic data for language models.", "x"];
        let a = embedder().embed(&texts).unwrap();
        let b = embedder().embed(&texts).unwrap();
        assert_eq!(a, b, "two calls gave different vectors");
        for v in &a {
            assert_eq!(v.len(), 384);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
    }

    #[test]
    fn batch_and_padding_do_not_change_vectors() {
        let short = "A short sentence.";
        let long = "This passage is much longer than the short one, so its batch is padded heavily. ".repeat(4);
        let alone = embed_one(short);
        // The short text shares a batch with long ones and is padded from 6 to ~80 tokens.
        let batched = embedder().embed(&[long.as_str(), short, long.as_str()]).unwrap();
        let sim = cosine(&alone, &batched[1]);
        println!("alone vs padded batch cosine = {sim:.7}");
        assert!(sim > 0.9999, "cosine {sim}");
        assert!(cosine(&batched[0], &batched[2]) > 0.9999);
    }

    #[test]
    fn output_order_is_input_order_across_batches() {
        let small = Embedder::load(&minilm_dir()).unwrap().with_batch_size(2);
        // Lengths decrease, so the length sort reverses the order and spreads the texts over three batches.
        let texts = [
            "Rivers flow into the sea near the old harbour town.",
            "Stocks fell sharply today.",
            "Bread rises.",
            "Hi",
            "",
        ];
        let batched = small.embed(&texts).unwrap();
        assert_eq!(batched.len(), texts.len());
        for (text, v) in texts.iter().zip(&batched) {
            let sim = cosine(v, &embed_one(text));
            assert!(sim > 0.9999, "{text:?}: cosine {sim}");
        }
    }

    #[test]
    fn empty_input_and_empty_string() {
        assert!(embedder().embed(&[]).unwrap().is_empty());
        let v = embed_one("");
        assert_eq!(v.len(), 384);
        assert!(v.iter().all(|x| x.is_finite()));
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn very_long_text_is_truncated() {
        let long = "word ".repeat(5000);
        let e = embedder();
        let tokens = e.tokenizer.encode(long.as_str(), true).unwrap().len();
        assert_eq!(tokens, e.max_len(), "truncated to max_seq_length, special tokens included");
        let v = e.embed(&[long.as_str()]).unwrap();
        assert_eq!(v[0].len(), 384);
        assert!(v[0].iter().all(|x| x.is_finite()));
    }

    #[test]
    fn matches_numpy_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/minilm_fox.json");
        let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let text = golden["text"].as_str().unwrap();
        let expected: Vec<f32> =
            golden["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let got = embed_one(text);
        let sim = cosine(&got, &expected);
        let max_diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("reference cosine = {sim:.7}, max abs diff = {max_diff:.2e}");
        assert!(sim > 0.999, "cosine {sim}");
        assert!(max_diff < 1e-3, "max abs diff {max_diff}");
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Embedder::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("config.json"), "{err}");

        std::fs::copy(minilm_dir().join("config.json"), dir.path().join("config.json")).unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), r#"{"pooling_mode_max_tokens": true}"#).unwrap();
        let err = Embedder::load(dir.path()).err().unwrap();
        assert!(matches!(err, EmbedError::Unsupported { .. }) && err.to_string().contains("1_Pooling"), "{err}");

        std::fs::write(dir.path().join("1_Pooling/config.json"), r#"{"pooling_mode_cls_token": true}"#).unwrap();
        let err = Embedder::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");

        std::fs::copy(minilm_dir().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        let err = Embedder::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
