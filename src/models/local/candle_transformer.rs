//! The decoder of [`transformer`](super::transformer) written in candle tensor ops, so it runs on any candle
//! device: this is the CUDA path (`device: cuda`, built with `--features cuda`).
//!
//! The CPU path keeps its own kernels (panel-packed int8 matmuls, f16 KV cache read in place), which candle's
//! CPU ops do not match. On a GPU the weight matmuls are candle's quantized CUDA kernels and the rest are a
//! few dozen small ops per layer. The architecture (norms, biases, rope style, sliding windows, activations)
//! is read from the same [`Config`] as the CPU path, and the tests here check the two paths agree on the CPU.
//!
//! Rows of one sequence at consecutive positions form a run: a run writes its keys and values into its
//! sequence's cache with one copy and attends with one pair of matmuls (causal mask inside the run).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, Module, Tensor};

use super::LocalError;
use super::transformer::{Arch, Config, Decoder, Logits, RopeTable, Row, first_visible};

struct Layer {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    window: Option<usize>,
    /// Index into [`CandleTransformer::ropes`].
    rope: usize,
}

/// Cosine and sine tables, `[position, rope_dims / 2]`, on the device.
struct DeviceRope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

/// A sequence's keys and values per layer, each `[kv_heads, capacity, head_dim]` in f16 on the device.
/// Capacity grows by doubling; positions past the sequence's length hold stale values nobody reads.
pub struct CandleKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

pub struct CandleTransformer {
    pub config: Config,
    pub max_positions: usize,
    device: Device,
    embeddings: Arc<QTensor>,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    ropes: Vec<DeviceRope>,
    output_norm: Tensor,
    output: QMatMul,
    weight_bytes: usize,
}

impl CandleTransformer {
    /// Loads every tensor of `ct` from `reader` onto `device`. `max_positions` bounds the context.
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
        device: &Device,
    ) -> Result<CandleTransformer, LocalError> {
        let config = Config::from_gguf(ct)?;
        let max_positions = max_positions.min(config.context).max(1);
        let mut weight_bytes = 0;
        let mut tensor = |name: &str| -> Result<Arc<QTensor>, LocalError> {
            if !ct.tensor_infos.contains_key(name) {
                return Err(LocalError::Format(format!("GGUF has no tensor `{name}`")));
            }
            let tensor = ct.tensor(reader, name, device)?;
            weight_bytes += tensor.storage_size_in_bytes();
            Ok(Arc::new(tensor))
        };
        let has = |name: &str| ct.tensor_infos.contains_key(name);
        // Norm weights and biases: small, kept as f32 tensors.
        let vector = |t: Arc<QTensor>| -> Result<Tensor, LocalError> { Ok(t.dequantize(device)?.flatten_all()?) };

        let embeddings = tensor("token_embd.weight")?;
        let output = if has("output.weight") { tensor("output.weight")? } else { Arc::clone(&embeddings) };
        let output_norm = vector(tensor("output_norm.weight")?)?;
        let factors = if has("rope_freqs.weight") {
            Some(tensor("rope_freqs.weight")?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        let rope = |base: f32| -> Result<DeviceRope, LocalError> {
            let table = RopeTable::new(config.rope_dims, base, factors.as_deref(), max_positions);
            let half = config.rope_dims / 2;
            Ok(DeviceRope {
                cos: Tensor::from_vec(table.cos, (max_positions, half), device)?,
                sin: Tensor::from_vec(table.sin, (max_positions, half), device)?,
                interleaved: config.arch == Arch::Llama,
            })
        };
        let mut ropes = vec![rope(config.rope_base)?];
        if config.arch == Arch::Gemma3 {
            ropes.push(rope(config.rope_base_local)?);
        }

        let mut layers = Vec::with_capacity(config.layers);
        for index in 0..config.layers {
            let name = |part: &str| format!("blk.{index}.{part}");
            let mut matmul =
                |part: &str| -> Result<QMatMul, LocalError> { Ok(QMatMul::from_arc(tensor(&name(part))?)?) };
            let (q, k, v, o) = (
                matmul("attn_q.weight")?,
                matmul("attn_k.weight")?,
                matmul("attn_v.weight")?,
                matmul("attn_output.weight")?,
            );
            let (gate, up, down) = (matmul("ffn_gate.weight")?, matmul("ffn_up.weight")?, matmul("ffn_down.weight")?);
            let mut maybe = |part: &str| -> Result<Option<Tensor>, LocalError> {
                if has(&name(part)) { Ok(Some(vector(tensor(&name(part))?)?)) } else { Ok(None) }
            };
            let window = config.layer_window(index);
            layers.push(Layer {
                attn_norm: maybe("attn_norm.weight")?.ok_or_else(|| missing(&name("attn_norm.weight")))?,
                q,
                k,
                v,
                o,
                q_bias: maybe("attn_q.bias")?,
                k_bias: maybe("attn_k.bias")?,
                v_bias: maybe("attn_v.bias")?,
                q_norm: maybe("attn_q_norm.weight")?,
                k_norm: maybe("attn_k_norm.weight")?,
                post_attn_norm: maybe("post_attention_norm.weight")?,
                ffn_norm: maybe("ffn_norm.weight")?.ok_or_else(|| missing(&name("ffn_norm.weight")))?,
                post_ffn_norm: maybe("post_ffw_norm.weight")?,
                gate,
                up,
                down,
                rope: usize::from(window.is_some()),
                window,
            });
        }
        Ok(CandleTransformer {
            embed_scale: (config.arch == Arch::Gemma3).then(|| (config.hidden as f64).sqrt()),
            max_positions,
            device: device.clone(),
            embeddings,
            layers,
            ropes,
            output_norm,
            output: QMatMul::from_arc(output)?,
            weight_bytes,
            config,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn forward_rows(&self, rows: &[Row], caches: &mut [CandleKvCache]) -> Result<Logits, LocalError> {
        let config = &self.config;
        let (m, hd) = (rows.len(), config.head_dim);
        if m == 0 {
            return Ok(Logits::default());
        }
        if let Some(row) = rows.iter().find(|r| r.position >= self.max_positions) {
            return Err(LocalError::ContextFull { position: row.position, context: self.max_positions });
        }
        let runs = runs(rows);
        // Decoding rows attend together, padded to the longest span (see `DecodeBatch`): once for global
        // layers and once for sliding ones.
        let plan = |window| -> Result<_, LocalError> {
            let batch = DecodeBatch::plan(&runs, window, &self.device)?;
            let gather = row_gather(&runs, batch.as_ref(), &self.device)?;
            Ok((batch, gather))
        };
        let global = plan(None)?;
        let sliding = if config.sliding_window.is_some() { plan(config.sliding_window)? } else { (None, None) };
        for (i, run) in runs.iter().enumerate() {
            let padded = [&global.0, &sliding.0].into_iter().flatten().map(|b| b.end(i)).max().flatten();
            let end = padded.unwrap_or(0).max(run.end_position());
            caches[run.slot].reserve(config, end, self.max_positions, &self.device)?;
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let positions: Vec<u32> = rows.iter().map(|r| r.position as u32).collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        // Each row's cosines and sines, `[rows, 1, rope_dims / 2]`, per rope table: picked once for all layers.
        let half = config.rope_dims / 2;
        let angles: Vec<(Tensor, Tensor, bool)> = self
            .ropes
            .iter()
            .map(|rope| -> Result<_, LocalError> {
                let pick = |table: &Tensor| table.index_select(&positions, 0)?.reshape((m, 1, half));
                Ok((pick(&rope.cos)?, pick(&rope.sin)?, rope.interleaved))
            })
            .collect::<Result<_, _>>()?;
        let mut hidden = self.embeddings.embedding(&Tensor::new(ids.as_slice(), &self.device)?)?;
        if let Some(scale) = self.embed_scale {
            hidden = (hidden * scale)?;
        }
        // Each run's causal mask, and its mask on sliding-window layers: made once for all layers.
        let masks: Vec<Option<Tensor>> =
            runs.iter().map(|run| run.mask(None, &self.device)).collect::<Result<_, _>>()?;
        let window_masks: Vec<Option<Tensor>> = match config.sliding_window {
            Some(window) => runs.iter().map(|run| run.mask(Some(window), &self.device)).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let eps = config.eps;
        for (index, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&hidden, &layer.attn_norm, eps)?;
            let project = |w: &QMatMul, bias: &Option<Tensor>, heads: usize| -> Result<Tensor, LocalError> {
                let mut x = w.forward(&normed)?;
                if let Some(bias) = bias {
                    x = x.broadcast_add(bias)?;
                }
                Ok(x.reshape((m, heads, hd))?)
            };
            let mut q = project(&layer.q, &layer.q_bias, config.heads)?;
            let mut k = project(&layer.k, &layer.k_bias, config.kv_heads)?;
            let v = project(&layer.v, &layer.v_bias, config.kv_heads)?;
            if let Some(norm) = &layer.q_norm {
                q = candle_nn::ops::rms_norm(&q, norm, eps)?;
            }
            if let Some(norm) = &layer.k_norm {
                k = candle_nn::ops::rms_norm(&k, norm, eps)?;
            }
            let (cos, sin, interleaved) = &angles[layer.rope];
            let q = apply_rope(&q, cos, sin, *interleaved, config.rope_dims)?;
            let k = apply_rope(&k, cos, sin, *interleaved, config.rope_dims)?;

            // [t, kv_heads, hd] -> [kv_heads, t, hd] (a view when t is 1), written at each run's first position.
            let (k, v) = (k.to_dtype(DType::F16)?, v.to_dtype(DType::F16)?);
            for run in &runs {
                let (keys, values) = caches[run.slot].layer(index);
                for (x, into) in [(&k, keys), (&v, values)] {
                    let part = x.narrow(0, run.rows.start, run.len())?.transpose(0, 1)?;
                    let part = if part.is_contiguous() { part } else { part.contiguous()? };
                    into.slice_set(&part, 1, run.first_position)?;
                }
            }
            let (batch, gather) = if layer.window.is_some() { &sliding } else { &global };
            // The batched decoding rows first, then each other run, put back in row order by `gather`.
            let mut pieces = Vec::with_capacity(runs.len());
            if let Some(batch) = batch {
                pieces.push(self.attend_decoding(&q, &runs, batch, caches, index)?);
            }
            for (i, run) in runs.iter().enumerate() {
                if batch.as_ref().is_some_and(|b| b.contains(i)) {
                    continue;
                }
                let (keys, values) = caches[run.slot].layer(index);
                let mask = if layer.window.is_some() { &window_masks[i] } else { &masks[i] };
                pieces.push(self.attend(&q, run, keys, values, layer.window, mask.as_ref())?);
            }
            let attended = if pieces.len() == 1 { pieces.remove(0) } else { Tensor::cat(&pieces, 0)? };
            let attended = match gather {
                Some(gather) => attended.index_select(gather, 0)?,
                None => attended,
            };
            let mut out = layer.o.forward(&attended)?;
            if let Some(norm) = &layer.post_attn_norm {
                out = candle_nn::ops::rms_norm(&out, norm, eps)?;
            }
            hidden = (hidden + out)?;

            let normed = candle_nn::ops::rms_norm(&hidden, &layer.ffn_norm, eps)?;
            let gate = layer.gate.forward(&normed)?;
            let gate = match config.arch {
                Arch::Gemma3 => gate.gelu()?,
                _ => gate.silu()?,
            };
            let mut down = layer.down.forward(&(gate * layer.up.forward(&normed)?)?)?;
            if let Some(norm) = &layer.post_ffn_norm {
                down = candle_nn::ops::rms_norm(&down, norm, eps)?;
            }
            hidden = (hidden + down)?;
        }
        let wanted: Vec<u32> = rows.iter().enumerate().filter(|(_, r)| r.logits).map(|(i, _)| i as u32).collect();
        if wanted.is_empty() {
            return Ok(Logits::default());
        }
        let last = hidden.index_select(&Tensor::new(wanted.as_slice(), &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, eps)?;
        let logits = self.output.forward(&last)?.to_dtype(DType::F32)?;
        let vocab = logits.dim(1)?;
        Ok(Logits::new(logits.flatten_all()?.to_vec1::<f32>()?, vocab))
    }

    /// Attention of one run's query heads (rows `run.rows` of `q`, `[rows, heads, hd]`) over its sequence's
    /// cached positions; the result is `[run rows, heads * hd]`.
    fn attend(
        &self,
        q: &Tensor,
        run: &Run,
        keys: &Tensor,
        values: &Tensor,
        window: Option<usize>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, LocalError> {
        let config = &self.config;
        let (t, hd, kv_heads) = (run.len(), config.head_dim, config.kv_heads);
        let group = config.heads / kv_heads;
        let first = run.first_visible(window);
        let span = run.end_position() - first;
        // Query heads of one key/value head are adjacent: [t, heads, hd] -> [kv_heads, group * t, hd].
        let queries = q
            .narrow(0, run.rows.start, t)?
            .reshape((t, kv_heads, group, hd))?
            .permute((1, 2, 0, 3))?
            .reshape((kv_heads, group * t, hd))?;
        let keys = keys.narrow(1, first, span)?.to_dtype(DType::F32)?;
        let values = values.narrow(1, first, span)?.to_dtype(DType::F32)?;
        let scores = (queries.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => {
                scores.reshape((kv_heads, group, t, span))?.broadcast_add(mask)?.reshape((kv_heads, group * t, span))?
            }
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&values)?; // [kv_heads, group * t, hd]
        Ok(out.reshape((kv_heads, group, t, hd))?.permute((2, 0, 1, 3))?.reshape((t, config.heads * hd))?)
    }
}

impl CandleTransformer {
    /// Attention of the decoding rows of `batch` in one go: each sequence's cached keys and values from its
    /// first visible position, `batch.span` of them (a shorter sequence's extra positions are masked), stacked
    /// into `[rows, kv_heads, span, hd]`. The result is `[rows, heads * hd]` in `batch.runs` order.
    fn attend_decoding(
        &self,
        q: &Tensor,
        runs: &[Run],
        batch: &DecodeBatch,
        caches: &[CandleKvCache],
        layer: usize,
    ) -> Result<Tensor, LocalError> {
        let config = &self.config;
        let (rows, hd, kv_heads, span) = (batch.runs.len(), config.head_dim, config.kv_heads, batch.span);
        let group = config.heads / kv_heads;
        let mut keys = Vec::with_capacity(rows);
        let mut values = Vec::with_capacity(rows);
        for &(i, first) in &batch.runs {
            let (k, v) = caches[runs[i].slot].layer(layer);
            keys.push(k.narrow(1, first, span)?.unsqueeze(0)?);
            values.push(v.narrow(1, first, span)?.unsqueeze(0)?);
        }
        let keys = Tensor::cat(&keys, 0)?.to_dtype(DType::F32)?;
        let values = Tensor::cat(&values, 0)?.to_dtype(DType::F32)?;
        let queries = q.index_select(&batch.rows, 0)?.reshape((rows, kv_heads, group, hd))?;
        let scores = (queries.matmul(&keys.transpose(2, 3)?)? * (1.0 / (hd as f64).sqrt()))?;
        let weights = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&batch.mask)?)?;
        Ok(weights.matmul(&values)?.reshape((rows, config.heads * hd))?)
    }
}

/// Decoding rows (runs of one row) that attend together: each from its first visible position, over the same
/// number of positions, which every one of their caches must hold.
struct DecodeBatch {
    /// (run index, first position read).
    runs: Vec<(usize, usize)>,
    /// Positions read per row: the longest visible span among them.
    span: usize,
    /// On the device, made once per forward pass: the rows' indices into the pass's rows, and
    /// `[rows, 1, 1, span]` of 0 and -inf hiding each shorter row's extra positions.
    rows: Tensor,
    mask: Tensor,
}

impl DecodeBatch {
    /// The batch of `runs`' decoding rows under `window`, or `None` when fewer than two. No row reads past the
    /// last position of the batch: without a window every row starts at 0; with one, a row starts `window - 1`
    /// before its own position, and the span is at most the window.
    fn plan(runs: &[Run], window: Option<usize>, device: &Device) -> Result<Option<DecodeBatch>, LocalError> {
        let joined: Vec<(usize, usize)> =
            (0..runs.len()).filter(|&i| runs[i].len() == 1).map(|i| (i, runs[i].first_visible(window))).collect();
        let Some(span) = joined.iter().map(|&(i, first)| runs[i].end_position() - first).max() else {
            return Ok(None);
        };
        if joined.len() < 2 {
            return Ok(None);
        }
        let rows: Vec<u32> = joined.iter().map(|&(i, _)| runs[i].rows.start as u32).collect();
        let mask: Vec<f32> = joined
            .iter()
            .flat_map(|&(i, first)| {
                let seen = runs[i].end_position() - first;
                (0..span).map(move |j| if j < seen { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        Ok(Some(DecodeBatch {
            rows: Tensor::new(rows.as_slice(), device)?,
            mask: Tensor::from_vec(mask, (joined.len(), 1, 1, span), device)?,
            runs: joined,
            span,
        }))
    }

    fn contains(&self, run: usize) -> bool {
        self.runs.iter().any(|&(i, _)| i == run)
    }

    /// One past the last position run `run` reads, when it is in the batch.
    fn end(&self, run: usize) -> Option<usize> {
        self.runs.iter().find(|&&(i, _)| i == run).map(|&(_, first)| first + self.span)
    }
}

impl Decoder for CandleTransformer {
    type Cache = CandleKvCache;

    fn config(&self) -> &Config {
        &self.config
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self) -> CandleKvCache {
        CandleKvCache { layers: (0..self.config.layers).map(|_| None).collect() }
    }

    fn clear_cache(_cache: &mut CandleKvCache) {
        // Positions are written before they are read, so the tensors are simply reused.
    }

    fn fork_cache(&self, cache: &CandleKvCache) -> Result<CandleKvCache, LocalError> {
        cache.deep_copy()
    }

    fn forward(&self, rows: &[Row], caches: &mut [CandleKvCache]) -> Result<Logits, LocalError> {
        self.forward_rows(rows, caches)
    }
}

impl CandleKvCache {
    /// A copy with storage of its own: `slice_set` writes in place, so a fork must not share its parent's.
    fn deep_copy(&self) -> Result<CandleKvCache, LocalError> {
        let copy = |(k, v): &(Tensor, Tensor)| -> Result<(Tensor, Tensor), LocalError> { Ok((k.copy()?, v.copy()?)) };
        let layers = self.layers.iter().map(|layer| layer.as_ref().map(copy).transpose()).collect::<Result<_, _>>()?;
        Ok(CandleKvCache { layers })
    }

    /// Keys and values of `layer` (reserved).
    fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (keys, values) = self.layers[layer].as_ref().expect("reserved before the forward pass");
        (keys, values)
    }

    /// Makes room for positions `..end` in every layer.
    fn reserve(&mut self, config: &Config, end: usize, limit: usize, device: &Device) -> Result<(), LocalError> {
        for layer in &mut self.layers {
            let capacity = layer.as_ref().map_or(0, |(k, _)| k.dim(1).unwrap_or(0));
            if capacity >= end {
                continue;
            }
            let grown = end.next_power_of_two().max(64).min(limit.max(end));
            let shape = (config.kv_heads, grown, config.head_dim);
            let (keys, values) = (Tensor::zeros(shape, DType::F16, device)?, Tensor::zeros(shape, DType::F16, device)?);
            if let Some((old_keys, old_values)) = layer.as_ref() {
                keys.slice_set(old_keys, 1, 0)?;
                values.slice_set(old_values, 1, 0)?;
            }
            *layer = Some((keys, values));
        }
        Ok(())
    }
}

/// Consecutive rows of one sequence at consecutive positions.
struct Run {
    slot: usize,
    rows: std::ops::Range<usize>,
    first_position: usize,
}

impl Run {
    fn len(&self) -> usize {
        self.rows.len()
    }

    /// One past the run's last position.
    fn end_position(&self) -> usize {
        self.first_position + self.len()
    }

    /// The earliest position any row of the run may see.
    fn first_visible(&self, window: Option<usize>) -> usize {
        first_visible(self.first_position, window)
    }

    /// `[t, span]` of 0 and -inf: row `i` (position `first_position + i`) sees the positions up to its own and,
    /// on sliding layers, within the window. `None` when every row sees every position of the span.
    fn mask(&self, window: Option<usize>, device: &Device) -> Result<Option<Tensor>, LocalError> {
        let first = self.first_visible(window);
        let span = self.end_position() - first;
        let visible = |i: usize, j: usize| {
            let (row, key) = (self.first_position + i, first + j);
            key <= row && window.is_none_or(|w| key + w > row)
        };
        if (0..self.len()).all(|i| (0..span).all(|j| visible(i, j))) {
            return Ok(None);
        }
        let mask: Vec<f32> = (0..self.len())
            .flat_map(|i| (0..span).map(move |j| (i, j)))
            .map(|(i, j)| if visible(i, j) { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Ok(Some(Tensor::from_vec(mask, (self.len(), span), device)?))
    }
}

/// Attention's output comes as the rows of `batch` first, then each other run's rows: the index of every row
/// in that order, to put them back in row order, or `None` when they already are.
fn row_gather(runs: &[Run], batch: Option<&DecodeBatch>, device: &Device) -> Result<Option<Tensor>, LocalError> {
    let in_batch = |i: usize| batch.is_some_and(|b| b.contains(i));
    let order: Vec<usize> = batch
        .iter()
        .flat_map(|b| b.runs.iter().map(|&(i, _)| runs[i].rows.start))
        .chain((0..runs.len()).filter(|&i| !in_batch(i)).flat_map(|i| runs[i].rows.clone()))
        .collect();
    if order.iter().enumerate().all(|(at, &row)| at == row) {
        return Ok(None);
    }
    let mut from = vec![0u32; order.len()];
    order.iter().enumerate().for_each(|(at, &row)| from[row] = at as u32);
    Ok(Some(Tensor::new(from.as_slice(), device)?))
}

/// Splits `rows` into runs (see [`Run`]).
fn runs(rows: &[Row]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.slot == row.slot && run.end_position() == row.position => run.rows.end = index + 1,
            _ => runs.push(Run { slot: row.slot, rows: index..index + 1, first_position: row.position }),
        }
    }
    runs
}

/// Rotates the first `dims` dimensions of every head of `x` (`[rows, heads, hd]`), each row by its own `cos`
/// and `sin` (`[rows, 1, dims / 2]`).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool, dims: usize) -> Result<Tensor, LocalError> {
    let (rows, heads, hd) = x.dims3()?;
    // candle's rope kernels take [batch, heads, seq, dims] with per-batch tables: one row is one batch entry.
    let rotated_part = x.narrow(D::Minus1, 0, dims)?.reshape((rows, heads, 1, dims))?.contiguous()?;
    let rotated = if interleaved {
        candle_nn::rotary_emb::rope_i(&rotated_part, cos, sin)?
    } else {
        candle_nn::rotary_emb::rope(&rotated_part, cos, sin)?
    };
    let rotated = rotated.reshape((rows, heads, dims))?;
    if dims == hd { Ok(rotated) } else { Ok(Tensor::cat(&[&rotated, &x.narrow(D::Minus1, dims, hd - dims)?], 2)?) }
}

fn missing(name: &str) -> LocalError {
    LocalError::Format(format!("GGUF has no tensor `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(slot: usize, position: usize) -> Row {
        Row { slot, position, token: 0, logits: false }
    }

    #[test]
    fn runs_are_consecutive_positions_of_one_sequence() {
        let rows = [row(3, 7), row(0, 0), row(0, 1), row(0, 2), row(1, 5), row(0, 3), row(0, 9)];
        let runs = runs(&rows);
        let seen: Vec<(usize, std::ops::Range<usize>, usize)> =
            runs.iter().map(|r| (r.slot, r.rows.clone(), r.first_position)).collect();
        assert_eq!(seen, vec![(3, 0..1, 7), (0, 1..4, 0), (1, 4..5, 5), (0, 5..6, 3), (0, 6..7, 9)]);
    }

    fn visible(mask: Option<Tensor>, t: usize, span: usize) -> Vec<Vec<bool>> {
        match mask {
            None => vec![vec![true; span]; t],
            Some(mask) => {
                assert_eq!(mask.dims(), [t, span]);
                let rows = mask.to_vec2::<f32>().unwrap();
                rows.iter().map(|r| r.iter().map(|&v| v == 0.0).collect()).collect()
            }
        }
    }

    #[test]
    fn a_run_sees_up_to_each_row_and_within_the_window() {
        // Rows at positions 2, 3, 4: causal over positions 0..5.
        let run = Run { slot: 0, rows: 0..3, first_position: 2 };
        let causal = visible(run.mask(None, &Device::Cpu).unwrap(), 3, 5);
        assert_eq!(causal[0], [true, true, true, false, false]);
        assert_eq!(causal[2], [true; 5]);
        // A window of 2: position 2 sees 1..=2, position 4 sees 3..=4; the span starts at position 1.
        assert_eq!(run.first_visible(Some(2)), 1);
        let windowed = visible(run.mask(Some(2), &Device::Cpu).unwrap(), 3, 4);
        assert_eq!(windowed, [[true, true, false, false], [false, true, true, false], [false, false, true, true]]);
        // One decoding row sees its whole span: no mask at all.
        let single = Run { slot: 0, rows: 0..1, first_position: 9 };
        assert!(single.mask(None, &Device::Cpu).unwrap().is_none());
        assert!(single.mask(Some(4), &Device::Cpu).unwrap().is_none());
        assert_eq!(single.first_visible(Some(4)), 6);
    }

    #[test]
    fn decoding_rows_attend_together_over_the_longest_span() {
        // Three decoding rows (positions 9, 3 and 14) and a prompt chunk, which attends on its own.
        let rows = [row(0, 9), row(1, 3), row(2, 0), row(2, 1), row(3, 14)];
        let runs = runs(&rows);
        let global = DecodeBatch::plan(&runs, None, &Device::Cpu).unwrap().unwrap();
        // Spans 10, 4 and 15: every joined row reads 15 positions from 0.
        assert_eq!((global.runs.clone(), global.span), (vec![(0, 0), (1, 0), (3, 0)], 15));
        assert_eq!((global.end(1), global.end(2), global.contains(2)), (Some(15), None, false));
        assert_eq!(global.rows.to_vec1::<u32>().unwrap(), [0, 1, 4]);
        let seen: Vec<usize> = global
            .mask
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .chunks(15)
            .map(|row| row.iter().take_while(|&&v| v == 0.0).count())
            .collect();
        assert_eq!(seen, [10, 4, 15], "each row sees its own positions, the rest is -inf");
        // A window of 4: each row reads its last 4 positions (the row at 3 has only 4).
        let sliding = DecodeBatch::plan(&runs, Some(4), &Device::Cpu).unwrap().unwrap();
        assert_eq!((sliding.runs.clone(), sliding.span), (vec![(0, 6), (1, 0), (3, 11)], 4));
        // One decoding row alone has nothing to join.
        assert!(DecodeBatch::plan(&runs[..1], None, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn attention_rows_are_gathered_back_into_row_order() {
        // A prompt chunk (rows 0 and 1) before two decoding rows: attention yields rows 2, 3, 0, 1.
        let chunk_first = runs(&[row(2, 0), row(2, 1), row(0, 5), row(1, 7)]);
        let batch = DecodeBatch::plan(&chunk_first, None, &Device::Cpu).unwrap();
        let gather = row_gather(&chunk_first, batch.as_ref(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(gather.to_vec1::<u32>().unwrap(), [2, 3, 0, 1]);
        // Decoding rows first, as the engine orders them: already in place.
        let decoding_first = runs(&[row(0, 5), row(1, 7), row(2, 0), row(2, 1)]);
        let batch = DecodeBatch::plan(&decoding_first, None, &Device::Cpu).unwrap();
        assert!(row_gather(&decoding_first, batch.as_ref(), &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn a_forked_cache_does_not_share_storage_with_its_parent() {
        let mut parent = CandleKvCache { layers: vec![None] };
        let config = Config {
            arch: Arch::Llama,
            hidden: 8,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            rope_dims: 4,
            rope_base: 10_000.0,
            rope_base_local: 10_000.0,
            eps: 1e-6,
            context: 128,
            sliding_window: None,
            sliding_pattern: 1,
            vocab: 4,
        };
        parent.reserve(&config, 3, 128, &Device::Cpu).unwrap();
        let child = parent.deep_copy().unwrap();
        let ones = Tensor::ones((1, 1, 4), DType::F16, &Device::Cpu).unwrap();
        child.layers[0].as_ref().unwrap().0.slice_set(&ones, 1, 0).unwrap();
        let read = |cache: &CandleKvCache| {
            let keys = cache.layers[0].as_ref().unwrap().0.to_dtype(DType::F32).unwrap();
            keys.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
        };
        assert_eq!((read(&parent), read(&child)), (0.0, 1.0));
        // Growing keeps what was written.
        let mut grown = child.deep_copy().unwrap();
        grown.reserve(&config, 100, 128, &Device::Cpu).unwrap();
        assert_eq!(grown.layers[0].as_ref().unwrap().0.dim(1).unwrap(), 128);
        assert_eq!(read(&grown), 1.0);
    }
}
