//! A decoder-only transformer over GGUF weights, built for batched generation.
//!
//! Every forward pass takes a list of rows, each one token of one sequence at its position. Prompts being
//! prefilled and sequences being decoded share each weight matmul (the quantized kernels reuse a loaded weight
//! block across the rows of a tile), while attention reads each sequence's own KV cache. Rows are numerically
//! independent of each other, so a sequence decodes to the same tokens alone or in any batch.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{Device, Module, Tensor};

use super::LocalError;
use super::qmatmul::{QMatrix, RowMatrix};
use super::simd::{self, GroupAttention};
use super::team::Team;

/// The model families this engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, Mistral-style dense models.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Qwen3: per-head q/k RMSNorm.
    Qwen3,
    /// Gemma 3: scaled embeddings, sandwich norms, q/k norms, GELU, sliding-window layers.
    Gemma3,
}

impl Arch {
    fn parse(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
}

/// How rotary embeddings pair a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeStyle {
    /// (x[2i], x[2i+1]): llama GGUFs, whose q/k weights the converter permuted.
    Interleaved,
    /// (x[i], x[i + d/2]): Qwen and Gemma.
    Halves,
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_dims: usize,
    pub rope_base: f32,
    /// Gemma 3's sliding-window layers use their own base.
    pub rope_base_local: f32,
    pub eps: f32,
    /// The context the model was trained for.
    pub context: usize,
    pub sliding_window: Option<usize>,
    /// Every `sliding_pattern`-th layer is global, the others slide (Gemma 3).
    pub sliding_pattern: usize,
    pub vocab: usize,
}

impl Config {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Config, LocalError> {
        let arch_name = meta_str(ct, "general.architecture")?;
        let arch = Arch::parse(&arch_name).ok_or_else(|| {
            LocalError::Unsupported(format!(
                "architecture `{arch_name}` (supported: llama, mistral, qwen2, qwen3, gemma3)"
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden = meta_usize(ct, &key("embedding_length"))?;
        let heads = meta_usize(ct, &key("attention.head_count"))?;
        let kv_heads = meta_usize(ct, &key("attention.head_count_kv")).unwrap_or(heads);
        let head_dim = meta_usize(ct, &key("attention.key_length")).unwrap_or(hidden / heads);
        let vocab = match ct.metadata.get("tokenizer.ggml.tokens") {
            Some(gguf_file::Value::Array(tokens)) => tokens.len(),
            _ => meta_usize(ct, &key("vocab_size"))?,
        };
        let config = Config {
            arch,
            hidden,
            layers: meta_usize(ct, &key("block_count"))?,
            heads,
            kv_heads,
            head_dim,
            rope_dims: meta_usize(ct, &key("rope.dimension_count")).unwrap_or(head_dim),
            rope_base: meta_f32(ct, &key("rope.freq_base")).unwrap_or(10_000.0),
            rope_base_local: meta_f32(ct, &key("rope.local_freq_base")).unwrap_or(10_000.0),
            eps: meta_f32(ct, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            context: meta_usize(ct, &key("context_length")).unwrap_or(2048),
            sliding_window: match arch {
                Arch::Gemma3 => meta_usize(ct, &key("attention.sliding_window")).ok(),
                _ => None,
            },
            sliding_pattern: meta_usize(ct, &key("attention.sliding_window_type")).unwrap_or(6).max(1),
            vocab,
        };
        if config.heads == 0 || config.kv_heads == 0 || !config.heads.is_multiple_of(config.kv_heads) {
            return Err(LocalError::Unsupported(format!(
                "{} attention heads over {} key/value heads",
                config.heads, config.kv_heads
            )));
        }
        if config.rope_dims > config.head_dim || !config.rope_dims.is_multiple_of(2) {
            return Err(LocalError::Unsupported(format!("rope over {} of {} dims", config.rope_dims, head_dim)));
        }
        Ok(config)
    }

    fn rope_style(&self) -> RopeStyle {
        match self.arch {
            Arch::Llama => RopeStyle::Interleaved,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeStyle::Halves,
        }
    }

    /// The window of layer `index` (Gemma 3's sliding layers), `None` for a layer that sees every position.
    pub fn layer_window(&self, index: usize) -> Option<usize> {
        self.sliding_window.filter(|_| !(index + 1).is_multiple_of(self.sliding_pattern))
    }

    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

pub(crate) fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, LocalError> {
    ct.metadata.get(key).ok_or_else(|| LocalError::Format(format!("GGUF metadata has no `{key}`")))
}

pub(crate) fn meta_str(ct: &gguf_file::Content, key: &str) -> Result<String, LocalError> {
    meta(ct, key)?.to_string().cloned().map_err(|e| LocalError::Format(format!("`{key}`: {e}")))
}

pub(crate) fn meta_usize(ct: &gguf_file::Content, key: &str) -> Result<usize, LocalError> {
    let value = meta(ct, key)?;
    let number = match value {
        gguf_file::Value::U8(v) => *v as u64,
        gguf_file::Value::U16(v) => *v as u64,
        gguf_file::Value::U32(v) => *v as u64,
        gguf_file::Value::U64(v) => *v,
        gguf_file::Value::I8(v) => (*v).max(0) as u64,
        gguf_file::Value::I16(v) => (*v).max(0) as u64,
        gguf_file::Value::I32(v) => (*v).max(0) as u64,
        gguf_file::Value::I64(v) => (*v).max(0) as u64,
        other => return Err(LocalError::Format(format!("`{key}` is {other:?}, not an integer"))),
    };
    usize::try_from(number).map_err(|_| LocalError::Format(format!("`{key}` = {number} is too large")))
}

fn meta_f32(ct: &gguf_file::Content, key: &str) -> Result<f32, LocalError> {
    match meta(ct, key)? {
        gguf_file::Value::F32(v) => Ok(*v),
        gguf_file::Value::F64(v) => Ok(*v as f32),
        other => Err(LocalError::Format(format!("`{key}` is {other:?}, not a float"))),
    }
}

/// A weight matrix `[out, in]`, kept quantized.
struct Linear {
    weight: Weight,
    inputs: usize,
    outputs: usize,
}

enum Weight {
    /// Q4_1, Q8_0, Q5_0, Q5_1: our kernels (candle runs the last three with scalar code, and none of them
    /// shares a weight load across rows).
    Blocks(QMatrix),
    /// Q4_0, the K-quants and float tensors: candle's kernels.
    Candle(QMatMul),
}

impl Linear {
    fn new(tensor: Arc<QTensor>) -> Result<Linear, LocalError> {
        let matrix = QMatrix::from_qtensor(&tensor)?;
        Linear::from_parts(tensor, matrix)
    }

    /// `tensor` on our kernels when `matrix` (its conversion) is there, else on candle's.
    fn from_parts(tensor: Arc<QTensor>, matrix: Option<QMatrix>) -> Result<Linear, LocalError> {
        Ok(match matrix {
            Some(matrix) => Linear::blocks(matrix),
            None => {
                let (outputs, inputs) = tensor.shape().dims2()?;
                Linear { weight: Weight::Candle(QMatMul::from_arc(tensor)?), inputs, outputs }
            }
        })
    }

    fn blocks(matrix: QMatrix) -> Linear {
        Linear { inputs: matrix.inputs, outputs: matrix.outputs, weight: Weight::Blocks(matrix) }
    }

    /// `x` is `[rows, inputs]`, the result `[rows, outputs]`.
    fn forward(&self, x: &[f32], rows: usize, threads: &Threads) -> Result<Vec<f32>, LocalError> {
        debug_assert_eq!(x.len(), rows * self.inputs);
        match &self.weight {
            Weight::Blocks(matrix) => Ok(matrix.forward(x, rows, Some(&threads.team))),
            Weight::Candle(weight) => {
                let input = Tensor::from_slice(x, (rows, self.inputs), &Device::Cpu)?;
                threads.team.rest();
                let output = threads.candle.install(|| weight.forward(&input))?;
                debug_assert_eq!(output.dims(), [rows, self.outputs]);
                Ok(output.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    fn bytes(&self) -> usize {
        match &self.weight {
            Weight::Blocks(matrix) => matrix.bytes(),
            Weight::Candle(QMatMul::QTensor(t)) => t.storage_size_in_bytes(),
            Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }
}

/// Weight matrices that read the same input (q, k, v; gate, up). When our kernels run all of them they are
/// joined into one matrix: the input is quantized once and the threads are dispatched once, which is a good
/// part of a small model's decoding step.
struct Projections {
    linears: Vec<Linear>,
    /// Each part's outputs.
    widths: Vec<usize>,
    /// Where each part starts in an output row.
    offsets: Vec<usize>,
    /// Outputs per row, all parts.
    total: usize,
}

impl Projections {
    fn new(tensors: Vec<Arc<QTensor>>) -> Result<Projections, LocalError> {
        let mut widths = Vec::with_capacity(tensors.len());
        let mut matrices = Vec::with_capacity(tensors.len());
        for tensor in &tensors {
            widths.push(tensor.shape().dims2()?.0);
            matrices.push(RowMatrix::from_qtensor(tensor)?);
        }
        // Joined before packing, so each weight is packed once.
        let linears = if matrices.iter().all(Option::is_some) {
            match RowMatrix::concat(matrices.into_iter().flatten().collect()) {
                Ok(whole) => vec![Linear::blocks(whole.pack())],
                Err(parts) => parts.into_iter().map(|part| Linear::blocks(part.pack())).collect(),
            }
        } else {
            let packed = matrices.into_iter().map(|m| m.map(RowMatrix::pack));
            tensors.into_iter().zip(packed).map(|(t, m)| Linear::from_parts(t, m)).collect::<Result<_, _>>()?
        };
        let offsets = widths.iter().scan(0, |start, &w| Some(std::mem::replace(start, *start + w))).collect();
        Ok(Projections { linears, total: widths.iter().sum(), widths, offsets })
    }

    /// Every part's output for `x` (`[rows, inputs]`), side by side in each row.
    fn forward(&self, x: &[f32], rows: usize, threads: &Threads) -> Result<Projected<'_>, LocalError> {
        let data = if self.linears.len() == 1 {
            self.linears[0].forward(x, rows, threads)?
        } else {
            let parts: Vec<Vec<f32>> =
                self.linears.iter().map(|linear| linear.forward(x, rows, threads)).collect::<Result<_, _>>()?;
            let mut data = Vec::with_capacity(rows * self.total);
            for r in 0..rows {
                for (part, &width) in parts.iter().zip(&self.widths) {
                    data.extend_from_slice(&part[r * width..(r + 1) * width]);
                }
            }
            data
        };
        Ok(Projected { data, layout: self })
    }

    /// Where part `part` lies in an output row.
    fn range(&self, part: usize) -> std::ops::Range<usize> {
        self.offsets[part]..self.offsets[part] + self.widths[part]
    }

    fn inputs(&self) -> usize {
        self.linears[0].inputs
    }

    fn bytes(&self) -> usize {
        self.linears.iter().map(Linear::bytes).sum()
    }
}

/// The outputs of [`Projections`]: `[rows][total]`, each row holding every part's outputs in order.
struct Projected<'a> {
    data: Vec<f32>,
    layout: &'a Projections,
}

impl Projected<'_> {
    fn range(&self, row: usize, part: usize) -> std::ops::Range<usize> {
        let within = self.layout.range(part);
        row * self.layout.total + within.start..row * self.layout.total + within.end
    }

    fn part(&self, row: usize, part: usize) -> &[f32] {
        &self.data[self.range(row, part)]
    }
}

/// Cosine and sine of every (position, frequency): `[position][dims / 2]` each.
pub(crate) struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// `factors` divide the frequencies (llama 3's long-context `rope_freqs`).
    pub fn new(dims: usize, base: f32, factors: Option<&[f32]>, positions: usize) -> RopeTable {
        let half = dims / 2;
        let inverse: Vec<f64> = (0..half)
            .map(|i| {
                let frequency = 1.0 / (base as f64).powf(2.0 * i as f64 / dims as f64);
                frequency / factors.and_then(|f| f.get(i)).map_or(1.0, |&f| f as f64)
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for position in 0..positions {
            for frequency in &inverse {
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { cos, sin }
    }
}

/// The rotary embedding of a layer: its angles and how it pairs a head's dimensions.
struct Rope {
    dims: usize,
    style: RopeStyle,
    angles: RopeTable,
}

impl Rope {
    fn new(dims: usize, base: f32, factors: Option<&[f32]>, style: RopeStyle, positions: usize) -> Rope {
        Rope { dims, style, angles: RopeTable::new(dims, base, factors, positions) }
    }

    /// Rotates one head vector in place for `position`.
    fn apply(&self, head: &mut [f32], position: usize) {
        let half = self.dims / 2;
        let cos = &self.angles.cos[position * half..(position + 1) * half];
        let sin = &self.angles.sin[position * half..(position + 1) * half];
        match self.style {
            RopeStyle::Interleaved => {
                for i in 0..half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
            RopeStyle::Halves => {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v.
    qkv: Projections,
    o: Linear,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
    /// gate and up.
    gate_up: Projections,
    down: Linear,
    /// Positions a query may look back (itself included), for sliding-window layers.
    window: Option<usize>,
    rope: Arc<Rope>,
}

/// A model the generation engine can drive: our CPU [`Transformer`], or the candle-ops one on a GPU.
pub trait Decoder: Send + Sync + 'static {
    /// One sequence's keys and values.
    type Cache: Send;

    fn config(&self) -> &Config;

    /// Positions a sequence may reach.
    fn max_positions(&self) -> usize;

    fn new_cache(&self) -> Self::Cache;

    /// Readies a cache for another sequence.
    fn clear_cache(cache: &mut Self::Cache);

    /// A copy of `cache` for a sequence that goes on from the same prompt (`n` samples of one prompt).
    fn fork_cache(&self, cache: &Self::Cache) -> Result<Self::Cache, LocalError>;

    /// Runs `rows` through the model, writing their keys and values into `caches[row.slot]`, and returns the
    /// logits of the rows that asked for them, in row order. A sequence's rows come in position order.
    fn forward(&self, rows: &[Row], caches: &mut [Self::Cache]) -> Result<Logits, LocalError>;
}

impl Decoder for Transformer {
    type Cache = KvCache;

    fn config(&self) -> &Config {
        &self.config
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.layers, self.config.kv_heads)
    }

    fn clear_cache(cache: &mut KvCache) {
        cache.clear();
    }

    fn fork_cache(&self, cache: &KvCache) -> Result<KvCache, LocalError> {
        Ok(cache.clone())
    }

    fn forward(&self, rows: &[Row], caches: &mut [KvCache]) -> Result<Logits, LocalError> {
        self.forward_rows(rows, caches)
    }
}

/// The logits rows of a forward pass, `[rows][vocab]` in one buffer as the output matmul wrote them (a copy
/// per row would move megabytes per batched step).
#[derive(Debug, Clone, Default)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
}

impl Logits {
    /// Rows of `vocab` logits, one after another in `data`.
    pub fn new(data: Vec<f32>, vocab: usize) -> Logits {
        assert!(vocab > 0 && data.len().is_multiple_of(vocab), "{} logits are not rows of {vocab}", data.len());
        Logits { data, vocab }
    }

    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.vocab.max(1))
    }
}

impl<'a> IntoIterator for &'a Logits {
    type Item = &'a [f32];
    type IntoIter = std::slice::ChunksExact<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One token of one sequence in a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The sequence's KV cache.
    pub slot: usize,
    pub position: usize,
    pub token: u32,
    /// Whether the caller wants this row's next-token logits.
    pub logits: bool,
}

/// Keys and values of one sequence, per layer and key/value head, each `[position][head_dim]`, as f16 bits:
/// attention reads every cached position of every layer for every new token, so bytes per position are what
/// batched decoding pays for (llama.cpp keeps its cache in f16 too), and one head's positions lie in one run
/// of memory, which an attention task reads front to back.
#[derive(Clone)]
pub struct KvCache {
    /// `[layer * kv_heads + kv_head]`.
    keys: Vec<Vec<u16>>,
    values: Vec<Vec<u16>>,
    kv_heads: usize,
}

impl KvCache {
    pub fn new(layers: usize, kv_heads: usize) -> KvCache {
        let streams = layers * kv_heads;
        KvCache { keys: vec![Vec::new(); streams], values: vec![Vec::new(); streams], kv_heads }
    }

    /// Forgets every position (the slot is reused by another sequence; the memory is kept).
    pub fn clear(&mut self) {
        self.keys.iter_mut().chain(self.values.iter_mut()).for_each(Vec::clear);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.capacity() * 2).sum()
    }

    /// The keys and values of one layer's key/value head, `[position][head_dim]`.
    fn head(&self, layer: usize, kv_head: usize) -> (&[u16], &[u16]) {
        let stream = layer * self.kv_heads + kv_head;
        (&self.keys[stream], &self.values[stream])
    }

    /// Stores a position's keys and values (`[kv_head][head_dim]` each).
    fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) {
        let hd = key.len() / self.kv_heads;
        for head in 0..self.kv_heads {
            let stream = layer * self.kv_heads + head;
            let part = head * hd..(head + 1) * hd;
            for (store, row) in [(&mut self.keys[stream], &key[part.clone()]), (&mut self.values[stream], &value[part])]
            {
                let end = (position + 1) * hd;
                if store.len() < end {
                    store.resize(end, 0);
                }
                simd::f32_to_f16_slice(row, &mut store[position * hd..end]);
            }
        }
    }
}

/// The loaded model.
pub struct Transformer {
    pub config: Config,
    embeddings: Arc<QTensor>,
    /// Gemma multiplies embeddings by sqrt(hidden).
    embed_scale: Option<f32>,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Linear,
    /// Positions the rope tables cover.
    pub max_positions: usize,
    threads: Threads,
}

/// The threads a forward pass computes on.
struct Threads {
    /// This thread and its helpers run our parallel loops (matmuls, attention).
    team: Team,
    /// candle's operations (weights of types our kernels do not run) run on this pool, which has as many threads.
    candle: rayon::ThreadPool,
}

impl Transformer {
    /// Loads every tensor of `ct` from `reader`. `max_positions` bounds the context (and the rope tables).
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
        threads: usize,
    ) -> Result<Transformer, LocalError> {
        let config = Config::from_gguf(ct)?;
        let device = Device::Cpu;
        let mut tensor = |name: &str| -> Result<Arc<QTensor>, LocalError> {
            if !ct.tensor_infos.contains_key(name) {
                return Err(LocalError::Format(format!("GGUF has no tensor `{name}`")));
            }
            Ok(Arc::new(ct.tensor(reader, name, &device)?))
        };
        let optional = |name: &str| ct.tensor_infos.contains_key(name);
        let max_positions = max_positions.min(config.context).max(1);

        let embeddings = tensor("token_embd.weight")?;
        let output = if optional("output.weight") { tensor("output.weight")? } else { Arc::clone(&embeddings) };
        let output_norm = vector(&*tensor("output_norm.weight")?)?;
        let factors = if optional("rope_freqs.weight") { Some(vector(&*tensor("rope_freqs.weight")?)?) } else { None };
        let style = config.rope_style();
        let global_rope =
            Arc::new(Rope::new(config.rope_dims, config.rope_base, factors.as_deref(), style, max_positions));
        let local_rope = match config.arch {
            Arch::Gemma3 => {
                Arc::new(Rope::new(config.rope_dims, config.rope_base_local, factors.as_deref(), style, max_positions))
            }
            _ => Arc::clone(&global_rope),
        };

        let mut layers = Vec::with_capacity(config.layers);
        for index in 0..config.layers {
            let name = |part: &str| format!("blk.{index}.{part}");
            let mut maybe = |part: &str| -> Result<Option<Vec<f32>>, LocalError> {
                let full = name(part);
                if ct.tensor_infos.contains_key(&full) { Ok(Some(vector(&*tensor(&full)?)?)) } else { Ok(None) }
            };
            let q_bias = maybe("attn_q.bias")?;
            let k_bias = maybe("attn_k.bias")?;
            let v_bias = maybe("attn_v.bias")?;
            let q_norm = maybe("attn_q_norm.weight")?;
            let k_norm = maybe("attn_k_norm.weight")?;
            let post_attn_norm = maybe("post_attention_norm.weight")?;
            let post_ffn_norm = maybe("post_ffw_norm.weight")?;
            let window = config.layer_window(index);
            layers.push(Layer {
                attn_norm: vector(&*tensor(&name("attn_norm.weight"))?)?,
                qkv: Projections::new(vec![
                    tensor(&name("attn_q.weight"))?,
                    tensor(&name("attn_k.weight"))?,
                    tensor(&name("attn_v.weight"))?,
                ])?,
                o: Linear::new(tensor(&name("attn_output.weight"))?)?,
                q_bias,
                k_bias,
                v_bias,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: vector(&*tensor(&name("ffn_norm.weight"))?)?,
                post_ffn_norm,
                gate_up: Projections::new(vec![tensor(&name("ffn_gate.weight"))?, tensor(&name("ffn_up.weight"))?])?,
                down: Linear::new(tensor(&name("ffn_down.weight"))?)?,
                rope: if window.is_some() { Arc::clone(&local_rope) } else { Arc::clone(&global_rope) },
                window,
            });
        }
        let check = |(outputs, inputs): (usize, usize), expected: (usize, usize), what: &str| {
            if (outputs, inputs) != expected {
                Err(LocalError::Format(format!("{what} is [{outputs}, {inputs}], expected {expected:?}")))
            } else {
                Ok(())
            }
        };
        if let Some(layer) = layers.first() {
            let qkv_inputs = layer.qkv.inputs();
            check((layer.qkv.widths[0], qkv_inputs), (config.q_dim(), config.hidden), "attn_q")?;
            check((layer.qkv.widths[1], qkv_inputs), (config.kv_dim(), config.hidden), "attn_k")?;
            check((layer.o.outputs, layer.o.inputs), (config.hidden, config.q_dim()), "attn_output")?;
        }
        let output = Linear::new(output)?;
        check((output.outputs, output.inputs), (config.vocab, config.hidden), "output")?;
        let cannot_start =
            |e: &dyn std::fmt::Display| LocalError::Unsupported(format!("cannot start model threads: {e}"));
        let team = Team::new(threads, "sdg-llm").map_err(|e| cannot_start(&e))?;
        let candle = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("sdg-candle-{i}"))
            .build()
            .map_err(|e| cannot_start(&e))?;
        Ok(Transformer {
            embed_scale: (config.arch == Arch::Gemma3).then(|| (config.hidden as f32).sqrt()),
            config,
            embeddings,
            layers,
            output_norm,
            output,
            max_positions,
            threads: Threads { team, candle },
        })
    }

    fn forward_rows(&self, rows: &[Row], caches: &mut [KvCache]) -> Result<Logits, LocalError> {
        let config = &self.config;
        let m = rows.len();
        if m == 0 {
            return Ok(Logits::default());
        }
        if let Some(row) = rows.iter().find(|r| r.position >= self.max_positions) {
            return Err(LocalError::ContextFull { position: row.position, context: self.max_positions });
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut hidden = self.embeddings.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(scale) = self.embed_scale {
            hidden.iter_mut().for_each(|x| *x *= scale);
        }
        let (h, hd) = (config.hidden, config.head_dim);
        let mut normed = vec![0.0f32; m * h];
        for (index, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&hidden, &layer.attn_norm, config.eps, &mut normed);
            // Parts 0, 1 and 2 of each row: q, k and v.
            let mut qkv = layer.qkv.forward(&normed, m, &self.threads)?;
            // Biases, q and k norms and rope, rows spread over the team; then the keys and values go to the
            // caches (rows of one sequence share its cache).
            let layout = &layer.qkv;
            self.threads.team.for_each_chunk_mut(&mut qkv.data, layout.total, |r, row| {
                for (part, bias) in [&layer.q_bias, &layer.k_bias, &layer.v_bias].into_iter().enumerate() {
                    if let Some(bias) = bias {
                        simd::add_assign(&mut row[layout.range(part)], bias);
                    }
                }
                for (part, norm) in [(0, &layer.q_norm), (1, &layer.k_norm)] {
                    for head in row[layout.range(part)].chunks_exact_mut(hd) {
                        if let Some(norm) = norm {
                            rms_norm_in_place(head, norm, config.eps);
                        }
                        layer.rope.apply(head, rows[r].position);
                    }
                }
            });
            for (r, row) in rows.iter().enumerate() {
                caches[row.slot].write(index, row.position, qkv.part(r, 1), qkv.part(r, 2));
            }
            let attended = self.attention(rows, &qkv, caches, index, layer.window);
            let mut out = layer.o.forward(&attended, m, &self.threads)?;
            if let Some(norm) = &layer.post_attn_norm {
                rms_norm_rows_in_place(&mut out, norm, config.eps);
            }
            simd::add_assign(&mut hidden, &out);

            rms_norm_rows(&hidden, &layer.ffn_norm, config.eps, &mut normed);
            // Parts 0 and 1 of each row: gate and up.
            let gate_up = layer.gate_up.forward(&normed, m, &self.threads)?;
            let width = layer.gate_up.widths[0];
            let mut gated = vec![0.0f32; m * width];
            self.threads.team.for_each_chunk_mut(&mut gated, width, |r, out| {
                let (gate, up) = (gate_up.part(r, 0), gate_up.part(r, 1));
                match config.arch {
                    Arch::Gemma3 => {
                        out.iter_mut().zip(gate.iter().zip(up)).for_each(|(o, (&g, u))| *o = gelu_tanh(g) * u)
                    }
                    _ => simd::silu_times(gate, up, out),
                }
            });
            let mut down = layer.down.forward(&gated, m, &self.threads)?;
            if let Some(norm) = &layer.post_ffn_norm {
                rms_norm_rows_in_place(&mut down, norm, config.eps);
            }
            simd::add_assign(&mut hidden, &down);
        }
        let wanted: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| r.logits).map(|(i, _)| i).collect();
        if wanted.is_empty() {
            return Ok(Logits::default());
        }
        let mut last = Vec::with_capacity(wanted.len() * h);
        for &r in &wanted {
            last.extend_from_slice(&hidden[r * h..(r + 1) * h]);
        }
        rms_norm_rows_in_place(&mut last, &self.output_norm, config.eps);
        Ok(Logits::new(self.output.forward(&last, wanted.len(), &self.threads)?, config.vocab))
    }

    /// Scaled dot-product attention of every row's query heads over its own sequence's cached positions
    /// (causal: up to and including the row's position; within the window on sliding layers).
    /// `qkv` holds each row's queries as part 0.
    fn attention(
        &self,
        rows: &[Row],
        qkv: &Projected,
        caches: &[KvCache],
        layer: usize,
        window: Option<usize>,
    ) -> Vec<f32> {
        let config = &self.config;
        let (hd, q_dim) = (config.head_dim, config.q_dim());
        let group = config.heads / config.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0.0f32; rows.len() * q_dim];
        // One task per row and key/value head: the query heads sharing that key/value head are adjacent, so the
        // task owns one contiguous piece of the output, and even a single decoding row spreads over the threads.
        let work = |(task, out_heads): (usize, &mut [f32])| {
            let (r, kv_head) = (task / config.kv_heads, task % config.kv_heads);
            let row = rows[r];
            let first = first_visible(row.position, window);
            let (keys, values) = caches[row.slot].head(layer, kv_head);
            GroupAttention {
                queries: &qkv.part(r, 0)[kv_head * group * hd..(kv_head + 1) * group * hd],
                hd,
                keys: &keys[first * hd..],
                values: &values[first * hd..],
                span: row.position + 1 - first,
                scale,
            }
            .run(out_heads);
        };
        // Threads pay off once the rows look back over enough positions.
        let positions: usize = rows.iter().map(|r| r.position + 1).sum();
        if positions * config.heads * hd < 1 << 14 {
            out.chunks_exact_mut(group * hd).enumerate().for_each(work);
        } else {
            self.threads.team.for_each_chunk_mut(&mut out, group * hd, |task, out_heads| work((task, out_heads)));
        }
        out
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let quantized = |t: &QTensor| t.storage_size_in_bytes();
        let mut total = quantized(&self.embeddings);
        for layer in &self.layers {
            total += layer.qkv.bytes() + layer.o.bytes() + layer.gate_up.bytes() + layer.down.bytes();
        }
        total + self.output.bytes()
    }
}

/// The earliest position a query at `position` sees: 0, or with a window the last `window` positions.
pub(crate) fn first_visible(position: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (position + 1).saturating_sub(w))
}

/// A small tensor (norm weights, biases) as floats.
fn vector(tensor: &QTensor) -> Result<Vec<f32>, LocalError> {
    if !matches!(tensor.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) && tensor.rank() != 1 {
        return Err(LocalError::Format(format!("expected a vector, got {:?} {:?}", tensor.dtype(), tensor.shape())));
    }
    Ok(tensor.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = 1.0 / (simd::dot(x, x) / x.len() as f32 + eps).sqrt();
    x.iter_mut().zip(weight).for_each(|(v, w)| *v = *v * scale * w);
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_rows_in_place(out, weight, eps);
}

fn rms_norm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        rms_norm_in_place(row, weight, eps);
    }
}

/// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotations_preserve_length_and_position_zero_is_identity() {
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let rope = Rope::new(8, 10_000.0, None, style, 16);
            let original = vec![0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 0.1, 3.0];
            let mut head = original.clone();
            rope.apply(&mut head, 0);
            assert_eq!(head, original);
            rope.apply(&mut head, 7);
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
            assert!((norm(&head) - norm(&original)).abs() < 1e-4);
            assert_ne!(head, original);
        }
    }

    #[test]
    fn rope_pairs_differ_between_styles() {
        // Position 1 with the first frequency (1 rad): interleaved rotates (x0, x1), halves rotates (x0, x2).
        let mut interleaved = vec![1.0, 0.0, 0.0, 0.0];
        Rope::new(4, 10_000.0, None, RopeStyle::Interleaved, 2).apply(&mut interleaved, 1);
        assert!((interleaved[1] - 1f32.sin()).abs() < 1e-6 && interleaved[2] == 0.0);
        let mut halves = vec![1.0, 0.0, 0.0, 0.0];
        Rope::new(4, 10_000.0, None, RopeStyle::Halves, 2).apply(&mut halves, 1);
        assert!((halves[2] - 1f32.sin()).abs() < 1e-6 && halves[1] == 0.0);
    }

    #[test]
    fn activations_match_reference_values() {
        let mut gated = [0.0; 9];
        simd::silu_times(&[1.0; 9], &[2.0; 9], &mut gated);
        assert!(gated.iter().all(|g| (g - 2.0 * 0.731_058_6).abs() < 1e-6), "{gated:?}");
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) - -0.003_637_4).abs() < 1e-5);
    }

    #[test]
    fn rms_norm_scales_to_unit_mean_square() {
        let mut x = vec![3.0, 4.0];
        rms_norm_in_place(&mut x, &[1.0, 2.0], 0.0);
        let rms = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / rms).abs() < 1e-6 && (x[1] - 8.0 / rms).abs() < 1e-6);
    }
}
