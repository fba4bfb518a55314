//! The vector loops of attention, compiled twice: for the baseline target and with AVX2+FMA(+F16C), picked at
//! run time. The default x86_64 target only has SSE2, and these loops run once per cached position and head.

/// One query head attending over its sequence's cached keys and values, which are f16 (half the bytes to read
/// per position, as llama.cpp keeps them). Position `i` of the span has its key at `keys[i * stride..][..hd]`
/// and its value likewise (the slices start at the head's offset). `scores` is scratch of `span` values.
pub struct HeadAttention<'a> {
    pub query: &'a [f32],
    pub keys: &'a [u16],
    pub values: &'a [u16],
    pub stride: usize,
    pub span: usize,
    pub scale: f32,
}

impl HeadAttention<'_> {
    /// softmax(scale * q.k) . v into `out` (`hd` values, overwritten).
    pub fn run(&self, scores: &mut Vec<f32>, out: &mut [f32]) {
        let hd = self.query.len();
        debug_assert_eq!(out.len(), hd);
        assert!(self.span > 0 && (self.span - 1) * self.stride + hd <= self.keys.len().min(self.values.len()));
        scores.clear();
        scores.resize(self.span, 0.0);
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(8) && has_f16c() {
            // SAFETY: AVX2, FMA and F16C are present (checked at run time) and the assert above bounds every
            // position's key and value.
            return unsafe { self.run_avx2(scores, out) };
        }
        let key = |i: usize| &self.keys[i * self.stride..i * self.stride + hd];
        for (i, score) in scores.iter_mut().enumerate() {
            *score = key(i).iter().zip(self.query).map(|(&k, q)| f16_to_f32(k) * q).sum::<f32>() * self.scale;
        }
        softmax(scores);
        out.fill(0.0);
        for (i, &weight) in scores.iter().enumerate() {
            let value = &self.values[i * self.stride..i * self.stride + hd];
            out.iter_mut().zip(value).for_each(|(o, &v)| *o += weight * f16_to_f32(v));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2(&self, scores: &mut [f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let hd = self.query.len();
        let (keys, values, query) = (self.keys.as_ptr(), self.values.as_ptr(), self.query.as_ptr());
        // SAFETY (every load below): `run` checked that each of the `span` positions holds `hd` values, and
        // `hd` is a multiple of 8.
        for (i, score) in scores.iter_mut().enumerate() {
            let key = unsafe { keys.add(i * self.stride) };
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut d = 0;
            while d < hd {
                let k = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(key.add(d) as *const __m128i) });
                even = _mm256_fmadd_ps(k, unsafe { _mm256_loadu_ps(query.add(d)) }, even);
                std::mem::swap(&mut even, &mut odd);
                d += 8;
            }
            *score = horizontal_sum(_mm256_add_ps(even, odd)) * self.scale;
        }
        softmax_avx2(scores);
        // Eight vectors of output at a time (64 dims), summed over every position.
        let mut start = 0;
        while start < hd {
            let width = (hd - start).min(64) / 8;
            let mut sums = [_mm256_setzero_ps(); 8];
            for (i, &weight) in scores.iter().enumerate() {
                let value = unsafe { values.add(i * self.stride + start) };
                let weight = _mm256_set1_ps(weight);
                for (j, sum) in sums.iter_mut().enumerate().take(width) {
                    let v = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(value.add(j * 8) as *const __m128i) });
                    *sum = _mm256_fmadd_ps(weight, v, *sum);
                }
            }
            let target = &mut out[start..start + width * 8];
            for (j, sum) in sums.iter().enumerate().take(width) {
                // SAFETY: `target` holds `width` vectors.
                unsafe { _mm256_storeu_ps(target.as_mut_ptr().add(j * 8), *sum) };
            }
            start += width * 8;
        }
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inverse);
}

/// [`softmax`] with vector exponentials ([`exp_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut chunks = x.chunks_exact_mut(8);
    let mut sums = _mm256_setzero_ps();
    for chunk in &mut chunks {
        // SAFETY: the chunk holds 8 values.
        let e = exp_avx2(_mm256_sub_ps(unsafe { _mm256_loadu_ps(chunk.as_ptr()) }, _mm256_set1_ps(max)));
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), e) };
        sums = _mm256_add_ps(sums, e);
    }
    let mut sum = horizontal_sum(sums);
    for v in chunks.into_remainder() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inverse);
}

/// e^x per lane, within 2 ulp over the f32 range (Cephes' expf: 2^n times a degree-5 polynomial on
/// [-ln2/2, ln2/2]); inputs below -87.3 give ~0, as the softmax wants.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_54)), _mm256_set1_ps(88.376_26));
    // n = round(x / ln 2), r = x - n ln 2 with ln 2 split in two for precision.
    let n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let two_n =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    _mm256_mul_ps(p, two_n)
}

/// An f32 as f16 bits, rounded to nearest even (what F16C does too).
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Whether the AVX2 kernels (AVX2, FMA and F16C) run on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| has_avx2() && is_x86_feature_detected!("f16c"))
}

/// The sum of a vector's eight lanes.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let high = _mm256_extractf128_ps(v, 1);
    let quad = _mm_add_ps(high, _mm256_castps256_ps128(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

/// Sum of `a[i] * b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { dot_avx2(a, b) };
    }
    dot_with::<false>(a, b)
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    y.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `FUSED` uses fused multiply-add, which is one instruction with FMA and a slow library call without it.
#[inline(always)]
fn multiply_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn dot_with<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums let the compiler keep a full vector register of partial sums.
    let mut sums = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            sums[i] = multiply_add::<FUSED>(x[i], y[i], sums[i]);
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_with::<true>(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 2.0, 3.0, -1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[3] < 1e-30);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_a_few_ulp_of_libm() {
        if !has_f16c() {
            return;
        }
        let mut x = -87.0f32;
        while x < 88.0 {
            let lanes: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 0.013);
            // SAFETY: AVX2 checked above.
            let got: [f32; 8] =
                unsafe { std::mem::transmute(exp_avx2(std::arch::x86_64::_mm256_loadu_ps(lanes.as_ptr()))) };
            for (value, exp) in lanes.iter().zip(got) {
                let want = value.exp();
                assert!((exp - want).abs() <= want * 4e-7, "exp({value}) = {exp}, libm {want}");
            }
            x += 0.37;
        }
        let mut scores = vec![1.0, 2.0, 3.0, -1000.0, 0.5, 0.25, -2.0, 4.0, 1.5, 2.5];
        let mut reference = scores.clone();
        unsafe { softmax_avx2(&mut scores) };
        softmax(&mut reference);
        for (a, b) in scores.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn dot_matches_a_plain_loop_at_every_length() {
        for len in [0, 1, 7, 8, 9, 64, 67] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - expected).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn head_attention_matches_a_float_reference_for_vector_and_odd_head_sizes() {
        let (stride, span) = (3 * 80, 37);
        let cache: Vec<f32> = (0..span * stride).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
        let bits: Vec<u16> = cache.iter().map(|&x| f32_to_f16(x)).collect();
        for (hd, offset) in [(64, 80), (80, 0), (6, 160)] {
            let query: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let bits = &bits;
            let head = |i: usize| (0..hd).map(move |d| f16_to_f32(bits[i * stride + offset + d]));
            let mut weights: Vec<f32> =
                (0..span).map(|i| head(i).zip(&query).map(|(k, q)| k * q).sum::<f32>() * scale).collect();
            softmax(&mut weights);
            // Values are the keys' cache here too.
            let expected: Vec<f32> = (0..hd)
                .map(|d| weights.iter().enumerate().map(|(i, w)| w * f16_to_f32(bits[i * stride + offset + d])).sum())
                .collect();
            let attention =
                HeadAttention { query: &query, keys: &bits[offset..], values: &bits[offset..], stride, span, scale };
            let (mut scores, mut out) = (Vec::new(), vec![9.0f32; hd]);
            attention.run(&mut scores, &mut out);
            for (got, want) in out.iter().zip(&expected) {
                assert!((got - want).abs() < 1e-4, "hd {hd}: {got} vs {want}");
            }
        }
    }
}
