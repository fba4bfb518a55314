//! Quantized weight matmul for the CPU. Activations are quantized per row into 32-value int8 blocks with an f32
//! scale; weights stay in blocks of 32 as well, in one of two forms:
//! - **nibbles**: Q4_1 exactly as GGUF stores it (4-bit values, f16 scale and offset per block), 20 bytes per
//!   block, so decoding reads no more weight bytes than llama.cpp does;
//! - **int8**: Q8_0, and Q5_0/Q5_1 requantized (int8 steps are finer than theirs, so nothing is lost).
//!
//! Decoding a single sequence is bound by memory bandwidth, so weight bytes are what counts there; batched
//! decoding and prefill are bound by arithmetic, so a tile of up to eight activation rows shares every weight
//! load and unpack. Products are summed in integers per block. Rows stay numerically independent of each other.

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor};
use std::ops::Range;

use rayon::prelude::*;

use super::LocalError;
use super::simd::f16_to_f32;
#[cfg(target_arch = "x86_64")]
use super::simd::{has_f16c, horizontal_sum};

const BLOCK: usize = 32;
/// Activation rows that share every weight load and unpack (a kernel call takes 1, 2, 3, 4 or 8).
const TILE: usize = 8;
/// Block scales are read eight at a time, so every row's scale arrays are padded to a multiple of eight.
const GROUP: usize = 8;

/// A `[outputs, inputs]` weight matrix in quantized blocks.
pub struct QMatrix {
    pub outputs: usize,
    pub inputs: usize,
    blocks: usize,
    /// `blocks` rounded up to `GROUP`: the row stride of the per-block scale arrays (padding is zero).
    stride: usize,
    weights: Weights,
}

enum Weights {
    /// value = scale * q with q in -127..=127. `scales` is `[outputs][stride]`, `quants` `[outputs][blocks][32]`.
    Int8 { scales: Vec<f32>, quants: Vec<i8> },
    /// value = d * q + m with q in 0..=15, as GGUF's Q4_1: byte i of a block holds element i in its low nibble
    /// and element i + 16 in its high nibble. `d` and `m` are f16 bits `[outputs][stride]`, `quants`
    /// `[outputs][blocks][16]`.
    Nibbles { d: Vec<u16>, m: Vec<u16>, quants: Vec<u8> },
}

/// Activation rows in int8 blocks.
struct Q8Rows {
    blocks: usize,
    stride: usize,
    /// `[rows][stride]`, zero in the padding.
    scales: Vec<f32>,
    /// scale * (sum of the block's values), `[rows][stride]`: what a weight offset `m` multiplies.
    sums: Vec<f32>,
    /// `[rows][blocks][32]`.
    quants: Vec<i8>,
}

/// One activation row's blocks, as a kernel reads them.
#[derive(Clone, Copy)]
struct RowRef<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

impl Q8Rows {
    fn row(&self, r: usize) -> RowRef<'_> {
        let width = self.blocks * BLOCK;
        RowRef {
            quants: &self.quants[r * width..(r + 1) * width],
            scales: &self.scales[r * self.stride..(r + 1) * self.stride],
            sums: &self.sums[r * self.stride..(r + 1) * self.stride],
        }
    }
}

impl QMatrix {
    /// Takes over a GGUF weight of a type these kernels run; `None` for other types or an input width that is
    /// not a multiple of 32 (candle's kernels run those).
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<QMatrix>, LocalError> {
        let (outputs, inputs) = tensor.shape().dims2()?;
        if !inputs.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        match tensor.dtype() {
            GgmlDType::Q4_1 => Ok(Some(QMatrix::from_q4_1_bytes(&tensor.data()?, outputs, inputs)?)),
            GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let values = tensor.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(Some(QMatrix::from_f32(&values, outputs, inputs)))
            }
            _ => Ok(None),
        }
    }

    /// From GGUF Q4_1 blocks (`d: f16, m: f16, qs: [u8; 16]`, little-endian), row after row.
    fn from_q4_1_bytes(bytes: &[u8], outputs: usize, inputs: usize) -> Result<QMatrix, LocalError> {
        const BLOCK_BYTES: usize = 20;
        let blocks = inputs / BLOCK;
        if bytes.len() != outputs * blocks * BLOCK_BYTES {
            return Err(LocalError::Format(format!(
                "Q4_1 tensor [{outputs}, {inputs}] holds {} bytes, expected {}",
                bytes.len(),
                outputs * blocks * BLOCK_BYTES
            )));
        }
        let stride = blocks.next_multiple_of(GROUP);
        let mut d = vec![0u16; outputs * stride];
        let mut m = vec![0u16; outputs * stride];
        let mut quants = Vec::with_capacity(outputs * blocks * BLOCK / 2);
        for (index, block) in bytes.chunks_exact(BLOCK_BYTES).enumerate() {
            let at = index / blocks * stride + index % blocks;
            d[at] = u16::from_le_bytes([block[0], block[1]]);
            m[at] = u16::from_le_bytes([block[2], block[3]]);
            quants.extend_from_slice(&block[4..]);
        }
        Ok(QMatrix { outputs, inputs, blocks, stride, weights: Weights::Nibbles { d, m, quants } })
    }

    /// From float weights `[outputs, inputs]`, as int8 blocks.
    pub fn from_f32(values: &[f32], outputs: usize, inputs: usize) -> QMatrix {
        assert!(inputs.is_multiple_of(BLOCK) && values.len() == outputs * inputs);
        let rows = quantize(values, outputs, inputs);
        QMatrix {
            outputs,
            inputs,
            blocks: rows.blocks,
            stride: rows.stride,
            weights: Weights::Int8 { scales: rows.scales, quants: rows.quants },
        }
    }

    /// One matrix whose outputs are those of `parts` in order (q, k and v, say), so one pass quantizes the
    /// input once and one thread dispatch covers them all. `None` unless every part has the same inputs and form.
    pub fn concat(parts: Vec<QMatrix>) -> Result<QMatrix, Vec<QMatrix>> {
        let same = parts.windows(2).all(|pair| {
            pair[0].inputs == pair[1].inputs
                && std::mem::discriminant(&pair[0].weights) == std::mem::discriminant(&pair[1].weights)
        });
        if parts.is_empty() || !same {
            return Err(parts);
        }
        let mut parts = parts.into_iter();
        let mut whole = parts.next().expect("not empty");
        for part in parts {
            whole.outputs += part.outputs;
            match (&mut whole.weights, part.weights) {
                (Weights::Int8 { scales, quants }, Weights::Int8 { scales: s, quants: q }) => {
                    scales.extend(s);
                    quants.extend(q);
                }
                (Weights::Nibbles { d, m, quants }, Weights::Nibbles { d: d2, m: m2, quants: q }) => {
                    d.extend(d2);
                    m.extend(m2);
                    quants.extend(q);
                }
                _ => unreachable!("forms checked above"),
            }
        }
        Ok(whole)
    }

    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Int8 { scales, quants } => quants.len() + scales.len() * 4,
            Weights::Nibbles { d, m, quants } => quants.len() + (d.len() + m.len()) * 2,
        }
    }

    /// `x` is `[rows, inputs]`, the result `[rows, outputs]`. Outputs are split over `pool` when given.
    pub fn forward(&self, x: &[f32], rows: usize, pool: Option<&rayon::ThreadPool>) -> Vec<f32> {
        debug_assert_eq!(x.len(), rows * self.inputs);
        let activations = quantize(x, rows, self.inputs);
        let mut out = vec![0.0f32; rows * self.outputs];
        let shared = SharedOut { ptr: out.as_mut_ptr(), rows, outputs: self.outputs };
        // Writes outputs `columns` of every row, a tile of rows at a time.
        let fill = |columns: Range<usize>| {
            let mut first = 0;
            while first < rows {
                let count = tile_rows(rows - first);
                let tile = Tile { out: &shared, first };
                match count {
                    1 => self.tile::<1>(columns.clone(), &activations, tile),
                    2 => self.tile::<2>(columns.clone(), &activations, tile),
                    3 => self.tile::<3>(columns.clone(), &activations, tile),
                    4 => self.tile::<4>(columns.clone(), &activations, tile),
                    _ => self.tile::<TILE>(columns.clone(), &activations, tile),
                }
                first += count;
            }
        };
        match pool.filter(|p| p.current_num_threads() > 1) {
            None => fill(0..self.outputs),
            Some(pool) => {
                // A few ranges per thread keeps them busy when one is preempted. The ranges are disjoint, so
                // every output element is written by exactly one thread.
                let chunk = self.outputs.div_ceil(pool.current_num_threads() * 4).max(16);
                pool.install(|| {
                    (0..self.outputs.div_ceil(chunk))
                        .into_par_iter()
                        .for_each(|i| fill(i * chunk..((i + 1) * chunk).min(self.outputs)))
                });
            }
        }
        out
    }

    /// Dot products of weight rows `columns` with the `R` activation rows from `tile.first`.
    fn tile<const R: usize>(&self, columns: Range<usize>, activations: &Q8Rows, mut tile: Tile) {
        assert!(columns.end <= self.outputs && tile.first + R <= activations.scales.len() / self.stride);
        assert!(columns.end <= tile.out.outputs && tile.first + R <= tile.out.rows);
        let rows: [RowRef; R] = std::array::from_fn(|r| activations.row(tile.first + r));
        let (blocks, stride) = (self.blocks, self.stride);
        match &self.weights {
            Weights::Int8 { scales, quants } => {
                let weights = Int8View { scales, quants, blocks, stride };
                #[cfg(target_arch = "x86_64")]
                if has_f16c() {
                    // SAFETY: AVX2, FMA and F16C are present (checked at run time); the asserts above and the
                    // matrix's construction keep every access in bounds.
                    return unsafe { int8_tile_avx2(&weights, columns, &rows, &mut tile) };
                }
                int8_tile_portable(&weights, columns, &rows, &mut tile)
            }
            Weights::Nibbles { d, m, quants } => {
                let weights = NibbleView { d, m, quants, blocks, stride };
                #[cfg(target_arch = "x86_64")]
                if has_f16c() {
                    // SAFETY: as above.
                    return unsafe { nibble_tile_avx2(&weights, columns, &rows, &mut tile) };
                }
                nibble_tile_portable(&weights, columns, &rows, &mut tile)
            }
        }
    }
}

/// Rows in the next tile: full tiles, then a half one, then what is left (each count has its own kernel).
fn tile_rows(remaining: usize) -> usize {
    match remaining {
        r if r >= TILE => TILE,
        r if r >= 4 => 4,
        r => r,
    }
}

/// The `[rows][outputs]` result, written by several threads at once, each only at the columns of its own range.
struct SharedOut {
    ptr: *mut f32,
    rows: usize,
    outputs: usize,
}

// SAFETY: `forward` hands each thread a disjoint range of columns, so no element is written by two threads, and
// the buffer outlives the threads' scope.
unsafe impl Sync for SharedOut {}

/// Where a kernel writes: the tile's rows start at row `first` of `out`.
struct Tile<'a> {
    out: &'a SharedOut,
    first: usize,
}

impl Tile<'_> {
    #[inline(always)]
    fn store<const R: usize>(&mut self, column: usize, sums: [f32; R]) {
        assert!(column < self.out.outputs && self.first + R <= self.out.rows);
        for (r, sum) in sums.into_iter().enumerate() {
            // SAFETY: in bounds (asserted), and only this tile's thread writes this column (see `SharedOut`).
            unsafe { *self.out.ptr.add((self.first + r) * self.out.outputs + column) = sum };
        }
    }
}

/// An int8 weight matrix's arrays.
struct Int8View<'a> {
    scales: &'a [f32],
    quants: &'a [i8],
    blocks: usize,
    stride: usize,
}

/// A nibble weight matrix's arrays.
struct NibbleView<'a> {
    d: &'a [u16],
    m: &'a [u16],
    quants: &'a [u8],
    blocks: usize,
    stride: usize,
}

fn int8_tile_portable<const R: usize>(w: &Int8View, columns: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    for column in columns {
        let mut sums = [0.0f32; R];
        for b in 0..w.blocks {
            let weights = &w.quants[(column * w.blocks + b) * BLOCK..][..BLOCK];
            for (sum, row) in sums.iter_mut().zip(rows) {
                let a = &row.quants[b * BLOCK..(b + 1) * BLOCK];
                let dot: i32 = weights.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum();
                *sum += dot as f32 * w.scales[column * w.stride + b] * row.scales[b];
            }
        }
        tile.store(column, sums);
    }
}

fn nibble_tile_portable<const R: usize>(w: &NibbleView, columns: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    for column in columns {
        let mut sums = [0.0f32; R];
        for b in 0..w.blocks {
            let packed = &w.quants[(column * w.blocks + b) * BLOCK / 2..][..BLOCK / 2];
            let (d, m) = (f16_to_f32(w.d[column * w.stride + b]), f16_to_f32(w.m[column * w.stride + b]));
            for (sum, row) in sums.iter_mut().zip(rows) {
                let a = &row.quants[b * BLOCK..(b + 1) * BLOCK];
                let dot: i32 = packed
                    .iter()
                    .enumerate()
                    .map(|(i, &byte)| (byte & 0x0F) as i32 * a[i] as i32 + (byte >> 4) as i32 * a[i + BLOCK / 2] as i32)
                    .sum();
                *sum += dot as f32 * d * row.scales[b] + m * row.sums[b];
            }
        }
        tile.store(column, sums);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int8_tile_avx2<const R: usize>(w: &Int8View, columns: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let (blocks, stride) = (w.blocks, w.stride);
    for column in columns {
        // SAFETY (every load below): the caller checked `column` < outputs and that the rows exist; a weight row
        // holds `blocks` blocks of 32 bytes and `stride` scales, an activation row likewise.
        let quants = unsafe { w.quants.as_ptr().add(column * blocks * BLOCK) };
        let scales = unsafe { w.scales.as_ptr().add(column * stride) };
        // One accumulator per row, whatever the tile size, so a row sums in the same order alone or in a batch.
        let mut sum = [_mm256_setzero_ps(); R];
        // Weight scale times row scale for the blocks of the current group.
        let mut combined = [[0.0f32; GROUP]; R];
        // A macro, not a closure, so the intrinsics compile inside this AVX2 function.
        macro_rules! block {
            ($group:expr, $i:expr) => {{
                let b = $group + $i;
                let w = unsafe { _mm256_loadu_si256(quants.add(b * BLOCK) as *const __m256i) };
                // maddubs multiplies unsigned by signed bytes: |w| times a with w's sign moved onto a.
                let w_abs = _mm256_sign_epi8(w, w);
                for r in 0..R {
                    let a = unsafe { _mm256_loadu_si256(rows[r].quants.as_ptr().add(b * BLOCK) as *const __m256i) };
                    let products = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w));
                    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                    sum[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(combined[r][$i]), sum[r]);
                }
            }};
        }
        let mut group = 0;
        while group < blocks {
            let w_scales = unsafe { _mm256_loadu_ps(scales.add(group)) };
            for r in 0..R {
                let row_scales = unsafe { _mm256_loadu_ps(rows[r].scales.as_ptr().add(group)) };
                unsafe { _mm256_storeu_ps(combined[r].as_mut_ptr(), _mm256_mul_ps(w_scales, row_scales)) };
            }
            // The index is also the block's offset in the group.
            #[allow(clippy::needless_range_loop)]
            for i in 0..GROUP.min(blocks - group) {
                block!(group, i);
            }
            group += GROUP;
        }
        tile.store(column, std::array::from_fn::<f32, R, _>(|r| horizontal_sum(sum[r])));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_tile_avx2<const R: usize>(w: &NibbleView, columns: Range<usize>, rows: &[RowRef; R], tile: &mut Tile) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let low_nibbles = _mm_set1_epi8(0x0F);
    let (blocks, stride) = (w.blocks, w.stride);
    for column in columns {
        // SAFETY (every load below): as in `int8_tile_avx2`, with 16-byte weight blocks.
        let quants = unsafe { w.quants.as_ptr().add(column * blocks * BLOCK / 2) };
        let (d, m) = unsafe { (w.d.as_ptr().add(column * stride), w.m.as_ptr().add(column * stride)) };
        // One accumulator per row, whatever the tile size, so a row sums in the same order alone or in a batch.
        let mut sum = [_mm256_setzero_ps(); R];
        let mut combined = [[0.0f32; GROUP]; R];
        macro_rules! block {
            ($group:expr, $i:expr) => {{
                let b = $group + $i;
                let packed = unsafe { _mm_loadu_si128(quants.add(b * BLOCK / 2) as *const __m128i) };
                let low = _mm_and_si128(packed, low_nibbles);
                let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
                // Elements 0..16 from the low nibbles, 16..32 from the high ones; all in 0..=15, which is what
                // maddubs wants as its unsigned operand.
                let w = _mm256_set_m128i(high, low);
                for r in 0..R {
                    let a = unsafe { _mm256_loadu_si256(rows[r].quants.as_ptr().add(b * BLOCK) as *const __m256i) };
                    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones));
                    sum[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(combined[r][$i]), sum[r]);
                }
            }};
        }
        let mut group = 0;
        while group < blocks {
            let d8 = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(d.add(group) as *const __m128i) });
            let m8 = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(m.add(group) as *const __m128i) });
            for r in 0..R {
                let row_scales = unsafe { _mm256_loadu_ps(rows[r].scales.as_ptr().add(group)) };
                unsafe { _mm256_storeu_ps(combined[r].as_mut_ptr(), _mm256_mul_ps(d8, row_scales)) };
                // The offsets' share, m * scale * sum(a), for the whole group at once; padding lanes are zero.
                let row_sums = unsafe { _mm256_loadu_ps(rows[r].sums.as_ptr().add(group)) };
                sum[r] = _mm256_fmadd_ps(m8, row_sums, sum[r]);
            }
            // The index is also the block's offset in the group.
            #[allow(clippy::needless_range_loop)]
            for i in 0..GROUP.min(blocks - group) {
                block!(group, i);
            }
            group += GROUP;
        }
        tile.store(column, std::array::from_fn::<f32, R, _>(|r| horizontal_sum(sum[r])));
    }
}

/// Rows of `width` floats as int8 blocks: scale = max |x| / 127 per block, values rounded half to even.
fn quantize(values: &[f32], rows: usize, width: usize) -> Q8Rows {
    let blocks = width / BLOCK;
    let stride = blocks.next_multiple_of(GROUP);
    let mut scales = vec![0.0f32; rows * stride];
    let mut sums = vec![0.0f32; rows * stride];
    let mut quants = vec![0i8; rows * width];
    for (index, (source, target)) in values.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).enumerate() {
        let source: &[f32; BLOCK] = source.try_into().expect("a whole block");
        let target: &mut [i8; BLOCK] = target.try_into().expect("a whole block");
        #[cfg(target_arch = "x86_64")]
        let (scale, sum) = if has_f16c() {
            // SAFETY: AVX2 is present (checked at run time).
            unsafe { quantize_block_avx2(source, target) }
        } else {
            quantize_block(source, target)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (scale, sum) = quantize_block(source, target);
        let at = index / blocks * stride + index % blocks;
        scales[at] = scale;
        sums[at] = scale * sum as f32;
    }
    Q8Rows { blocks, stride, scales, sums, quants }
}

/// One block's int8 values; returns its scale and the sum of the values.
fn quantize_block(source: &[f32; BLOCK], target: &mut [i8; BLOCK]) -> (f32, i32) {
    let max = source.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in target.iter_mut().zip(source) {
        *q = (v * inverse).round_ties_even() as i8;
        sum += *q as i32;
    }
    (scale, sum)
}

/// [`quantize_block`] with AVX2: the same values (products rounded half to even by the conversion).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn quantize_block_avx2(source: &[f32; BLOCK], target: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: the arrays hold 32 values.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(source.as_ptr().add(i * 8)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = |x| _mm256_andnot_ps(sign, x);
    let max8 = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
    let max4 = _mm_max_ps(_mm256_extractf128_ps(max8, 1), _mm256_castps256_ps128(max8));
    let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    let max = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
    let scale = max / 127.0;
    let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let q: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse)));
    let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let total4 = _mm_add_epi32(_mm256_extracti128_si256(total, 1), _mm256_castsi256_si128(total));
    let total2 = _mm_add_epi32(total4, _mm_shuffle_epi32(total4, 0b01_00_11_10));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(total2, _mm_shuffle_epi32(total2, 0b00_00_00_01)));
    // The packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: as above.
    unsafe { _mm256_storeu_si256(target.as_mut_ptr() as *mut __m256i, ordered) };
    (scale, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(outputs: usize, inputs: usize, seed: u32) -> Vec<f32> {
        (0..outputs * inputs)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn float_matmul(x: &[f32], rows: usize, weights: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
        (0..rows)
            .flat_map(|r| {
                (0..outputs).map(move |c| (0..inputs).map(|i| x[r * inputs + i] * weights[c * inputs + i]).sum())
            })
            .collect()
    }

    fn q4_1(outputs: usize, inputs: usize, seed: u32) -> (QTensor, Vec<f32>) {
        use candle_core::quantized::GgmlDType;
        let tensor = candle_core::Tensor::from_vec(matrix(outputs, inputs, seed), (outputs, inputs), &Device::Cpu);
        let q4 = QTensor::quantize(&tensor.unwrap(), GgmlDType::Q4_1).unwrap();
        let floats = q4.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q4, floats)
    }

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 0.05 + e.abs() * 0.02, "{what}: {g} vs {e}");
        }
    }

    #[test]
    fn int8_matches_float_matmul_within_quantization_error_for_every_row_count() {
        let (outputs, inputs) = (37, 96);
        let weights = matrix(outputs, inputs, 1);
        let q = QMatrix::from_f32(&weights, outputs, inputs);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for rows in [1, 3, 4, 5, 9] {
            let x = matrix(rows, inputs, 7);
            let expected = float_matmul(&x, rows, &weights, outputs, inputs);
            for pool in [None, Some(&pool)] {
                assert_close(&q.forward(&x, rows, pool), &expected, &format!("rows {rows}"));
            }
        }
    }

    #[test]
    fn q4_1_weights_kept_as_nibbles_match_their_float_values() {
        // 320 inputs: ten blocks, so one full group of eight scales and a partial one.
        let (outputs, inputs) = (24, 320);
        let (q4, weights) = q4_1(outputs, inputs, 13);
        let matrix4 = QMatrix::from_qtensor(&q4).unwrap().unwrap();
        assert!(matches!(matrix4.weights, Weights::Nibbles { .. }));
        assert_eq!(matrix4.bytes(), outputs * (inputs / 2 + 2 * 2 * 16));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for rows in [1, 2, 3, 4, 5, 9, 16, 23] {
            let x = matrix(rows, inputs, 17);
            let expected = float_matmul(&x, rows, &weights, outputs, inputs);
            for pool in [None, Some(&pool)] {
                assert_close(&matrix4.forward(&x, rows, pool), &expected, &format!("rows {rows}"));
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_result_alone_or_in_any_tile_and_thread_split() {
        let (outputs, inputs) = (50, 64);
        let (q4, _) = q4_1(outputs, inputs, 3);
        // 13 rows: tiles of 8, 4 and 1.
        let x = matrix(13, inputs, 11);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for q in [
            QMatrix::from_f32(&matrix(outputs, inputs, 3), outputs, inputs),
            QMatrix::from_qtensor(&q4).unwrap().unwrap(),
        ] {
            let all = q.forward(&x, 13, Some(&pool));
            for r in 0..13 {
                let alone = q.forward(&x[r * inputs..(r + 1) * inputs], 1, None);
                assert_eq!(alone, all[r * outputs..(r + 1) * outputs].to_vec());
            }
        }
    }

    /// Outputs of the first `R` activation rows by the dispatched kernel and by the portable one.
    fn dispatched_and_portable<const R: usize>(q: &QMatrix, activations: &Q8Rows) -> (Vec<f32>, Vec<f32>) {
        let width = q.outputs;
        let mut dispatched = vec![0.0f32; R * width];
        let out = SharedOut { ptr: dispatched.as_mut_ptr(), rows: R, outputs: width };
        q.tile::<R>(0..width, activations, Tile { out: &out, first: 0 });
        let rows: [RowRef; R] = std::array::from_fn(|r| activations.row(r));
        let mut portable = vec![0.0f32; R * width];
        let out = SharedOut { ptr: portable.as_mut_ptr(), rows: R, outputs: width };
        let mut tile = Tile { out: &out, first: 0 };
        let (blocks, stride) = (q.blocks, q.stride);
        match &q.weights {
            Weights::Int8 { scales, quants } => {
                int8_tile_portable(&Int8View { scales, quants, blocks, stride }, 0..width, &rows, &mut tile)
            }
            Weights::Nibbles { d, m, quants } => {
                nibble_tile_portable(&NibbleView { d, m, quants, blocks, stride }, 0..width, &rows, &mut tile)
            }
        }
        (dispatched, portable)
    }

    #[test]
    fn portable_and_simd_kernels_agree_for_every_tile_size() {
        let (outputs, inputs) = (5, 288);
        let activations = quantize(&matrix(TILE, inputs, 9), TILE, inputs);
        let (q4, _) = q4_1(outputs, inputs, 5);
        for q in [
            QMatrix::from_f32(&matrix(outputs, inputs, 5), outputs, inputs),
            QMatrix::from_qtensor(&q4).unwrap().unwrap(),
        ] {
            for (dispatched, portable) in [
                dispatched_and_portable::<1>(&q, &activations),
                dispatched_and_portable::<2>(&q, &activations),
                dispatched_and_portable::<3>(&q, &activations),
                dispatched_and_portable::<4>(&q, &activations),
                dispatched_and_portable::<TILE>(&q, &activations),
            ] {
                for (a, b) in portable.iter().zip(&dispatched) {
                    assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_quantization_agree_to_the_bit() {
        let mut values = matrix(40, BLOCK, 21);
        // Scale 1 and values halfway between integers: both round them to even.
        values[..BLOCK]
            .copy_from_slice(&std::array::from_fn::<f32, BLOCK, _>(|i| if i == 0 { 127.0 } else { i as f32 - 16.5 }));
        values[BLOCK..2 * BLOCK].fill(0.0);
        for (source, _) in values.chunks_exact(BLOCK).zip(0..) {
            let source: &[f32; BLOCK] = source.try_into().unwrap();
            let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
            let portable = quantize_block(source, &mut a);
            #[cfg(target_arch = "x86_64")]
            if has_f16c() {
                let simd = unsafe { quantize_block_avx2(source, &mut b) };
                assert_eq!((portable, a), (simd, b));
            }
            let max = source.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.iter().map(|&q| q as i32).sum::<i32>(), portable.1);
            assert!(max == 0.0 || a.iter().any(|&q| q.abs() == 127));
        }
        let mut halves = [0i8; BLOCK];
        quantize_block(values[..BLOCK].try_into().unwrap(), &mut halves);
        assert_eq!(halves[1..5], [-16, -14, -14, -12]);
    }

    #[test]
    fn concatenated_matrices_give_their_parts_outputs_side_by_side() {
        let inputs = 64;
        let parts: Vec<(QTensor, Vec<f32>)> = [(8, 1), (3, 2), (5, 3)].map(|(o, s)| q4_1(o, inputs, s)).into();
        let x = matrix(3, inputs, 4);
        let separate: Vec<Vec<f32>> =
            parts.iter().map(|(t, _)| QMatrix::from_qtensor(t).unwrap().unwrap().forward(&x, 3, None)).collect();
        let whole = QMatrix::concat(parts.iter().map(|(t, _)| QMatrix::from_qtensor(t).unwrap().unwrap()).collect())
            .ok()
            .unwrap();
        assert_eq!(whole.outputs, 16);
        let fused = whole.forward(&x, 3, None);
        for r in 0..3 {
            let expected: Vec<f32> =
                separate.iter().zip([8, 3, 5]).flat_map(|(s, o)| s[r * o..(r + 1) * o].to_vec()).collect();
            assert_eq!(fused[r * 16..(r + 1) * 16], expected[..]);
        }
        // Different forms stay apart.
        let mixed = vec![
            QMatrix::from_qtensor(&parts[0].0).unwrap().unwrap(),
            QMatrix::from_f32(&matrix(2, inputs, 1), 2, inputs),
        ];
        assert_eq!(QMatrix::concat(mixed).err().map(|parts| parts.len()), Some(2));
    }
}
