//! Int8 weight matmul for the CPU: weights as 32-value blocks of i8 with an f32 scale (Q8_0 precision), the
//! activations quantized the same way per row, products summed in integers per block.
//!
//! candle's Q8_0 kernel converts two f16 scales per block through a function call and reads each weight once
//! per activation row; here scales are f32 up front and a tile of up to four rows shares every weight load,
//! which is what batched decoding and prefill need. Rows stay numerically independent of each other.

use candle_core::Device;
use candle_core::quantized::QTensor;
use rayon::prelude::*;

use super::LocalError;

const BLOCK: usize = 32;
/// Activation rows that share one pass over a weight column.
const TILE: usize = 4;

/// A `[outputs, inputs]` weight matrix in int8 blocks.
pub struct Q8Matrix {
    pub outputs: usize,
    pub inputs: usize,
    blocks: usize,
    /// `[outputs][blocks]`.
    scales: Vec<f32>,
    /// `[outputs][blocks][32]`.
    quants: Vec<i8>,
}

/// Activation rows in int8 blocks.
struct Q8Rows {
    blocks: usize,
    scales: Vec<f32>,
    quants: Vec<i8>,
}

impl Q8Matrix {
    /// Requantizes a GGUF weight; `None` when its input width is not a multiple of 32.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Q8Matrix>, LocalError> {
        let (outputs, inputs) = tensor.shape().dims2()?;
        if !inputs.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let values = tensor.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(Q8Matrix::from_f32(&values, outputs, inputs)))
    }

    /// From float weights `[outputs, inputs]` (tests).
    pub fn from_f32(values: &[f32], outputs: usize, inputs: usize) -> Q8Matrix {
        assert!(inputs.is_multiple_of(BLOCK) && values.len() == outputs * inputs);
        let rows = quantize(values, outputs, inputs);
        Q8Matrix { outputs, inputs, blocks: rows.blocks, scales: rows.scales, quants: rows.quants }
    }

    pub fn bytes(&self) -> usize {
        self.quants.len() + self.scales.len() * 4
    }

    /// `x` is `[rows, inputs]`, the result `[rows, outputs]`. Columns are split over `pool` when given.
    pub fn forward(&self, x: &[f32], rows: usize, pool: Option<&rayon::ThreadPool>) -> Vec<f32> {
        debug_assert_eq!(x.len(), rows * self.inputs);
        let activations = quantize(x, rows, self.inputs);
        let mut out = vec![0.0f32; rows * self.outputs];
        let columns = |range: std::ops::Range<usize>| -> Vec<f32> {
            let width = range.len();
            let mut part = vec![0.0f32; rows * width];
            for (c, column) in range.enumerate() {
                let mut first = 0;
                while first < rows {
                    let count = TILE.min(rows - first);
                    let sums = self.dot_tile(column, &activations, first, count);
                    for (r, sum) in sums.iter().take(count).enumerate() {
                        part[(first + r) * width + c] = *sum;
                    }
                    first += count;
                }
            }
            part
        };
        let place = |out: &mut [f32], start: usize, part: &[f32]| {
            let width = part.len() / rows.max(1);
            for r in 0..rows {
                out[r * self.outputs + start..r * self.outputs + start + width]
                    .copy_from_slice(&part[r * width..(r + 1) * width]);
            }
        };
        match pool.filter(|p| p.current_num_threads() > 1) {
            None => place(&mut out, 0, &columns(0..self.outputs)),
            Some(pool) => {
                // A few chunks per thread keeps them busy when one is preempted.
                let chunk = self.outputs.div_ceil(pool.current_num_threads() * 4).max(16);
                let starts: Vec<usize> = (0..self.outputs).step_by(chunk).collect();
                let parts: Vec<Vec<f32>> =
                    pool.install(|| starts.par_iter().map(|&s| columns(s..(s + chunk).min(self.outputs))).collect());
                for (start, part) in starts.iter().zip(&parts) {
                    place(&mut out, *start, part);
                }
            }
        }
        out
    }

    /// Dot products of weight row `column` with activation rows `first..first + count` (count <= TILE).
    fn dot_tile(&self, column: usize, activations: &Q8Rows, first: usize, count: usize) -> [f32; TILE] {
        let blocks = self.blocks;
        let weights = &self.quants[column * blocks * BLOCK..(column + 1) * blocks * BLOCK];
        let scales = &self.scales[column * blocks..(column + 1) * blocks];
        let row = |r: usize| {
            let r = first + r.min(count - 1);
            (
                &activations.quants[r * blocks * BLOCK..(r + 1) * blocks * BLOCK],
                &activations.scales[r * blocks..(r + 1) * blocks],
            )
        };
        let rows = [row(0), row(1), row(2), row(3)];
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 and FMA are present (checked at run time); every slice holds `blocks` blocks.
            // One kernel per row count, so a single decoding row does a single row's work.
            let mut out = [0.0f32; TILE];
            match count {
                1 => out[..1].copy_from_slice(&unsafe { dot_tile_avx2::<1>(weights, scales, &rows, blocks) }),
                2 => out[..2].copy_from_slice(&unsafe { dot_tile_avx2::<2>(weights, scales, &rows, blocks) }),
                3 => out[..3].copy_from_slice(&unsafe { dot_tile_avx2::<3>(weights, scales, &rows, blocks) }),
                _ => out = unsafe { dot_tile_avx2::<TILE>(weights, scales, &rows, blocks) },
            }
            return out;
        }
        dot_tile_portable(weights, scales, &rows, blocks)
    }
}

fn dot_tile_portable(weights: &[i8], scales: &[f32], rows: &[(&[i8], &[f32]); TILE], blocks: usize) -> [f32; TILE] {
    let mut sums = [0.0f32; TILE];
    for b in 0..blocks {
        let w = &weights[b * BLOCK..(b + 1) * BLOCK];
        for (sum, (quants, row_scales)) in sums.iter_mut().zip(rows) {
            let a = &quants[b * BLOCK..(b + 1) * BLOCK];
            let dot: i32 = w.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum();
            *sum += dot as f32 * scales[b] * row_scales[b];
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2<const R: usize>(
    weights: &[i8],
    scales: &[f32],
    rows: &[(&[i8], &[f32]); TILE],
    blocks: usize,
) -> [f32; R] {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    // Two accumulators per row (even and odd blocks) hide the multiply-add latency when R is small; the loop is
    // unrolled by hand so both stay in registers.
    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    // A macro, not a closure, so the intrinsics compile inside this AVX2 function.
    macro_rules! block {
        ($b:expr, $acc:ident) => {{
            let b = $b;
            // SAFETY: each slice holds `blocks` blocks of 32 bytes, and b < blocks.
            let w = unsafe { _mm256_loadu_si256(weights.as_ptr().add(b * BLOCK) as *const __m256i) };
            // maddubs multiplies unsigned by signed bytes: |w| times a with w's sign moved onto a.
            let w_abs = _mm256_sign_epi8(w, w);
            let w_scale = scales[b];
            for r in 0..R {
                let (quants, row_scales) = rows[r];
                let a = unsafe { _mm256_loadu_si256(quants.as_ptr().add(b * BLOCK) as *const __m256i) };
                let products = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                $acc[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(w_scale * row_scales[b]), $acc[r]);
            }
        }};
    }
    let mut b = 0;
    while b + 1 < blocks {
        block!(b, even);
        block!(b + 1, odd);
        b += 2;
    }
    if b < blocks {
        block!(b, even);
    }
    let mut out = [0.0f32; R];
    for (r, o) in out.iter_mut().enumerate() {
        let a = _mm256_add_ps(even[r], odd[r]);
        let high = _mm256_extractf128_ps(a, 1);
        let quad = _mm_add_ps(high, _mm256_castps256_ps128(a));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        *o = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
    }
    out
}

/// Rows of `width` floats as int8 blocks: scale = max |x| / 127 per block.
fn quantize(values: &[f32], rows: usize, width: usize) -> Q8Rows {
    let blocks = width / BLOCK;
    let mut scales = Vec::with_capacity(rows * blocks);
    let mut quants = vec![0i8; rows * width];
    for (source, target) in values.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
        let max = source.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, v) in target.iter_mut().zip(source) {
            *q = (v * inverse).round() as i8;
        }
        scales.push(scale);
    }
    Q8Rows { blocks, scales, quants }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(outputs: usize, inputs: usize, seed: u32) -> Vec<f32> {
        (0..outputs * inputs)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_float_matmul_within_quantization_error_for_every_row_count() {
        let (outputs, inputs) = (37, 96);
        let weights = matrix(outputs, inputs, 1);
        let q = Q8Matrix::from_f32(&weights, outputs, inputs);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for rows in [1, 3, 4, 5, 9] {
            let x = matrix(rows, inputs, 7);
            let expected: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let x = &x;
                    let weights = &weights;
                    (0..outputs).map(move |c| (0..inputs).map(|i| x[r * inputs + i] * weights[c * inputs + i]).sum())
                })
                .collect();
            for pool in [None, Some(&pool)] {
                let got = q.forward(&x, rows, pool);
                for (g, e) in got.iter().zip(&expected) {
                    assert!((g - e).abs() < 0.05 + e.abs() * 0.02, "rows {rows}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_result_alone_or_in_any_tile_and_thread_split() {
        let (outputs, inputs) = (50, 64);
        let q = Q8Matrix::from_f32(&matrix(outputs, inputs, 3), outputs, inputs);
        let x = matrix(7, inputs, 11);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let all = q.forward(&x, 7, Some(&pool));
        for r in 0..7 {
            let alone = q.forward(&x[r * inputs..(r + 1) * inputs], 1, None);
            assert_eq!(alone, all[r * outputs..(r + 1) * outputs].to_vec());
        }
    }

    #[test]
    fn q4_1_weights_requantized_to_int8_match_their_float_values() {
        use candle_core::quantized::GgmlDType;
        let (outputs, inputs) = (24, 64);
        let floats = matrix(outputs, inputs, 13);
        let tensor = candle_core::Tensor::from_vec(floats, (outputs, inputs), &Device::Cpu).unwrap();
        let q4 = QTensor::quantize(&tensor, GgmlDType::Q4_1).unwrap();
        let weights = q4.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let matrix4 = Q8Matrix::from_qtensor(&q4).unwrap().unwrap();
        for rows in [1, 2, 5] {
            let x = matrix(rows, inputs, 17);
            let got = matrix4.forward(&x, rows, None);
            for r in 0..rows {
                for c in 0..outputs {
                    let expected: f32 = (0..inputs).map(|i| x[r * inputs + i] * weights[c * inputs + i]).sum();
                    let value = got[r * outputs + c];
                    assert!((value - expected).abs() < 0.05 + expected.abs() * 0.02, "{value} vs {expected}");
                }
            }
        }
    }

    #[test]
    fn portable_and_simd_kernels_agree() {
        let (outputs, inputs) = (4, 128);
        let q = Q8Matrix::from_f32(&matrix(outputs, inputs, 5), outputs, inputs);
        let activations = quantize(&matrix(4, inputs, 9), 4, inputs);
        let blocks = inputs / BLOCK;
        let row = |r: usize| {
            (&activations.quants[r * inputs..(r + 1) * inputs], &activations.scales[r * blocks..(r + 1) * blocks])
        };
        let rows = [row(0), row(1), row(2), row(3)];
        let portable = dot_tile_portable(&q.quants[..inputs], &q.scales[..blocks], &rows, blocks);
        let dispatched = q.dot_tile(0, &activations, 0, 4);
        for (a, b) in portable.iter().zip(dispatched) {
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}
