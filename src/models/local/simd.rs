//! The vector loops of attention, compiled twice: for the baseline target and with AVX2+FMA(+F16C), picked at
//! run time. The default x86_64 target only has SSE2, and these loops run once per cached position and head.

use super::qmatmul::Kernel;

/// The query heads that share one key/value head (grouped-query attention) attending over their sequence's
/// cached keys and values, which are f16 (half the bytes to read per position, as llama.cpp keeps them).
/// Position `i` of the span has its key at `keys[i * hd..][..hd]` and its value likewise (the cache keeps each
/// key/value head's positions contiguous). Each key and value is converted once for all the heads of the group.
pub struct GroupAttention<'a> {
    /// `[heads][hd]`.
    pub queries: &'a [f32],
    pub hd: usize,
    pub keys: &'a [u16],
    pub values: &'a [u16],
    pub span: usize,
    pub scale: f32,
}

impl GroupAttention<'_> {
    /// softmax(scale * q.k) . v of every head into `out` (`[heads][hd]`, overwritten), with the widest vectors
    /// [`Kernel::detect`] allows.
    pub fn run(&self, out: &mut [f32]) {
        self.run_with(Kernel::detect(), out)
    }

    /// [`GroupAttention::run`] with the vectors of `kernel` (one of [`Kernel::available`]): AVX-512 from
    /// `Avx512Vnni` on (for head sizes that are multiples of 16), AVX2 from `Avx2`, else scalar code.
    pub fn run_with(&self, kernel: Kernel, out: &mut [f32]) {
        let (hd, span) = (self.hd, self.span);
        let heads = self.queries.len() / hd;
        assert!(out.len() == self.queries.len() && self.queries.len() == heads * hd);
        assert!(span > 0 && span * hd <= self.keys.len().min(self.values.len()));
        assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
        let mut scores = vec![0.0f32; heads * span];
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(16) && kernel >= Kernel::Avx512Vnni {
            self.in_head_chunks(&mut scores, out, |chunk, scores, target| {
                // SAFETY: AVX-512 (F), FMA and F16C are present (`kernel` runs here) and the asserts above bound
                // every position's key and value and the queries and output.
                unsafe {
                    match target.len() / hd {
                        1 => chunk.run_avx512::<1, 8>(scores, target),
                        2 => chunk.run_avx512::<2, 4>(scores, target),
                        _ => chunk.run_avx512::<3, 4>(scores, target),
                    }
                }
            });
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(8) && kernel >= Kernel::Avx2 {
            self.in_head_chunks(&mut scores, out, |chunk, scores, target| {
                // SAFETY: AVX2, FMA and F16C are present (`kernel` runs here) and the asserts above bound every
                // position's key and value and the queries and output.
                unsafe {
                    match target.len() / hd {
                        1 => chunk.run_avx2::<1, 8>(scores, target),
                        2 => chunk.run_avx2::<2, 4>(scores, target),
                        _ => chunk.run_avx2::<3, 2>(scores, target),
                    }
                }
            });
            return;
        }
        let key = |i: usize| &self.keys[i * hd..(i + 1) * hd];
        for ((query, target), scores) in
            self.queries.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).zip(scores.chunks_exact_mut(span))
        {
            for (i, score) in scores.iter_mut().enumerate() {
                *score = key(i).iter().zip(query).map(|(&k, q)| f16_to_f32(k) * q).sum::<f32>() * self.scale;
            }
            softmax(scores);
            target.fill(0.0);
            for (i, &weight) in scores.iter().enumerate() {
                let value = &self.values[i * hd..(i + 1) * hd];
                target.iter_mut().zip(value).for_each(|(o, &v)| *o += weight * f16_to_f32(v));
            }
        }
    }

    /// Runs `kernel(chunk, scores, out)` over the heads in chunks of up to three (four as two and two), so that a
    /// chunk's sums stay in vector registers; every head's sums come out the same in any chunk.
    #[cfg(target_arch = "x86_64")]
    fn in_head_chunks(
        &self,
        scores: &mut [f32],
        out: &mut [f32],
        mut kernel: impl FnMut(&GroupAttention, &mut [f32], &mut [f32]),
    ) {
        let (hd, span) = (self.hd, self.span);
        let heads = self.queries.len() / hd;
        let mut first = 0;
        while first < heads {
            let count = match heads - first {
                4 => 2,
                left => left.min(3),
            };
            let chunk = GroupAttention { queries: &self.queries[first * hd..(first + count) * hd], ..*self };
            kernel(&chunk, &mut scores[..count * span], &mut out[first * hd..(first + count) * hd]);
            first += count;
        }
    }

    /// `G` heads at once; `scores` holds `G * span` values. Values are summed `W` vectors of a head at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2<const G: usize, const W: usize>(&self, scores: &mut [f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (hd, span) = (self.hd, self.span);
        let (keys, queries) = (self.keys.as_ptr(), self.queries.as_ptr());
        // Scores four positions at a time: each head's sums for four keys stay in registers, and one reduction
        // (three horizontal adds) gives the four scores, where a reduction per position costs as much as its
        // multiplies. A last partial four leaves the missing positions' sums at zero, so every position's score
        // is reduced the same way.
        // SAFETY (every load below): `run` checked that each of the `span` positions holds `hd` values, that the
        // queries and `out` hold G heads of `hd`, and `hd` is a multiple of 8.
        let values = self.values.as_ptr();
        // The first positions at once (their misses overlap instead of each stalling the first scores in turn),
        // then, four at a time, the four positions `AHEAD` of those being scored.
        prefetch_positions(keys, values, hd, 0..span.min(AHEAD));
        let mut i = 0;
        while i < span {
            let count = (span - i).min(4);
            prefetch_positions(keys, values, hd, (i + AHEAD).min(span)..(i + AHEAD + 4).min(span));
            let mut sums = [[_mm256_setzero_ps(); 4]; G];
            for d in (0..hd).step_by(8) {
                for p in 0..count {
                    let key = unsafe { _mm_loadu_si128(keys.add((i + p) * hd + d) as *const __m128i) };
                    let k = _mm256_cvtph_ps(key);
                    for (g, head) in sums.iter_mut().enumerate() {
                        head[p] = _mm256_fmadd_ps(k, unsafe { _mm256_loadu_ps(queries.add(g * hd + d)) }, head[p]);
                    }
                }
            }
            for (g, head) in sums.into_iter().enumerate() {
                store_four_scores(head, self.scale, &mut scores[g * span + i..g * span + i + count]);
            }
            i += count;
        }
        for head in scores.chunks_exact_mut(span) {
            softmax_avx2(head);
        }
        let mut start = 0;
        while start + W * 8 <= hd {
            unsafe { self.weigh_values_avx2::<G, W>(scores, out, start) };
            start += W * 8;
        }
        while start < hd {
            unsafe { self.weigh_values_avx2::<G, 1>(scores, out, start) };
            start += 8;
        }
    }

    /// Output dimensions `start..start + 8 * W` of every head: the values weighted by the heads' scores, summed
    /// over every position (all `G * W` sums in registers).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weigh_values_avx2<const G: usize, const W: usize>(&self, scores: &[f32], out: &mut [f32], start: usize) {
        use std::arch::x86_64::*;
        let (hd, span, values) = (self.hd, self.span, self.values.as_ptr());
        assert!(start + W * 8 <= hd && scores.len() == G * span && out.len() == G * hd);
        let mut sums = [[_mm256_setzero_ps(); W]; G];
        for i in 0..span {
            // SAFETY: as in `run_avx2`.
            let value = unsafe { values.add(i * hd + start) };
            let weights: [__m256; G] = std::array::from_fn(|g| _mm256_set1_ps(scores[g * span + i]));
            for j in 0..W {
                let v = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(value.add(j * 8) as *const __m128i) });
                for (head, weight) in sums.iter_mut().zip(&weights) {
                    head[j] = _mm256_fmadd_ps(*weight, v, head[j]);
                }
            }
        }
        for (g, head) in sums.iter().enumerate() {
            for (j, sum) in head.iter().enumerate() {
                // SAFETY: asserted above: `out` holds head `g`'s dimensions up to `start + 8 * W`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(g * hd + start + j * 8), *sum) };
            }
        }
    }

    /// [`GroupAttention::run_avx2`] with 16-lane vectors: `G` heads at once, values summed `W` vectors of a head
    /// at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn run_avx512<const G: usize, const W: usize>(&self, scores: &mut [f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (hd, span) = (self.hd, self.span);
        let (keys, queries, values) = (self.keys.as_ptr(), self.queries.as_ptr(), self.values.as_ptr());
        // SAFETY (every load below): `run_with` checked that each of the `span` positions holds `hd` values,
        // that the queries and `out` hold G heads of `hd`, and `hd` is a multiple of 16.
        // Prefetching as in `run_avx2`.
        prefetch_positions(keys, values, hd, 0..span.min(AHEAD));
        let mut i = 0;
        while i < span {
            let count = (span - i).min(4);
            prefetch_positions(keys, values, hd, (i + AHEAD).min(span)..(i + AHEAD + 4).min(span));
            let mut sums = [[_mm512_setzero_ps(); 4]; G];
            for d in (0..hd).step_by(16) {
                let q: [__m512; G] = std::array::from_fn(|g| unsafe { _mm512_loadu_ps(queries.add(g * hd + d)) });
                for p in 0..count {
                    let key = unsafe { _mm256_loadu_si256(keys.add((i + p) * hd + d) as *const __m256i) };
                    let k = _mm512_cvtph_ps(key);
                    for (head, q) in sums.iter_mut().zip(&q) {
                        head[p] = _mm512_fmadd_ps(k, *q, head[p]);
                    }
                }
            }
            for (g, head) in sums.into_iter().enumerate() {
                // Halves added, then reduced as in `run_avx2`.
                let halves = head.map(|s| {
                    _mm256_add_ps(
                        _mm512_castps512_ps256(s),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))),
                    )
                });
                store_four_scores(halves, self.scale, &mut scores[g * span + i..g * span + i + count]);
            }
            i += count;
        }
        for head in scores.chunks_exact_mut(span) {
            softmax_avx2(head);
        }
        let mut start = 0;
        while start + W * 16 <= hd {
            unsafe { self.weigh_values_avx512::<G, W>(scores, out, start) };
            start += W * 16;
        }
        while start < hd {
            unsafe { self.weigh_values_avx512::<G, 1>(scores, out, start) };
            start += 16;
        }
    }

    /// [`GroupAttention::weigh_values_avx2`] with 16-lane vectors: dimensions `start..start + 16 * W`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn weigh_values_avx512<const G: usize, const W: usize>(
        &self,
        scores: &[f32],
        out: &mut [f32],
        start: usize,
    ) {
        use std::arch::x86_64::*;
        let (hd, span, values) = (self.hd, self.span, self.values.as_ptr());
        assert!(start + W * 16 <= hd && scores.len() == G * span && out.len() == G * hd);
        let mut sums = [[_mm512_setzero_ps(); W]; G];
        for i in 0..span {
            // SAFETY: as in `run_avx512`.
            let value = unsafe { values.add(i * hd + start) };
            let weights: [__m512; G] = std::array::from_fn(|g| _mm512_set1_ps(scores[g * span + i]));
            for j in 0..W {
                let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(value.add(j * 16) as *const __m256i) });
                for (head, weight) in sums.iter_mut().zip(&weights) {
                    head[j] = _mm512_fmadd_ps(*weight, v, head[j]);
                }
            }
        }
        for (g, head) in sums.iter().enumerate() {
            for (j, sum) in head.iter().enumerate() {
                // SAFETY: asserted above: `out` holds head `g`'s dimensions up to `start + 16 * W`.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(g * hd + start + j * 16), *sum) };
            }
        }
    }
}

/// The first index of the largest value; NaNs never win, and 0 when no value beats minus infinity. With AVX2,
/// eight lanes keep their largest value and its first index: a loop comparing each value with the best so far
/// is a chain of dependent loads (49152 long for SmolLM2's logits) that compilers do not vectorize.
pub fn argmax(values: &[f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { argmax_avx2(values) };
    }
    argmax_from(values, 0, (f32::NEG_INFINITY, 0))
}

/// `best` (value, index) and then `values` from index `first` on: a value replaces the best only when larger.
fn argmax_from(values: &[f32], first: usize, mut best: (f32, usize)) -> usize {
    for (i, &value) in values.iter().enumerate() {
        if value > best.0 {
            best = (value, first + i);
        }
    }
    best.1
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn argmax_avx2(values: &[f32]) -> usize {
    use std::arch::x86_64::*;
    // Four independent accumulators of eight lanes: one would wait on its own compare and blend every step.
    const WAYS: usize = 4;
    let mut best = [_mm256_set1_ps(f32::NEG_INFINITY); WAYS];
    let mut best_index = [_mm256_setzero_si256(); WAYS];
    let mut index: [__m256i; WAYS] = std::array::from_fn(|w| {
        _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * w as i32))
    });
    let step = _mm256_set1_epi32(8 * WAYS as i32);
    let mut chunks = values.chunks_exact(8 * WAYS);
    for chunk in &mut chunks {
        for w in 0..WAYS {
            // SAFETY: the chunk holds 8 * WAYS values.
            let v = unsafe { _mm256_loadu_ps(chunk.as_ptr().add(8 * w)) };
            // Ordered: false for NaN.
            let larger = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best[w]);
            best[w] = _mm256_blendv_ps(best[w], v, larger);
            let indices = _mm256_blendv_ps(_mm256_castsi256_ps(best_index[w]), _mm256_castsi256_ps(index[w]), larger);
            best_index[w] = _mm256_castps_si256(indices);
            index[w] = _mm256_add_epi32(index[w], step);
        }
    }
    let (mut lanes, mut indices) = ([0.0f32; 8 * WAYS], [0i32; 8 * WAYS]);
    for w in 0..WAYS {
        // SAFETY: eight values each.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * w), best[w]);
            _mm256_storeu_si256(indices.as_mut_ptr().add(8 * w).cast(), best_index[w]);
        }
    }
    // The lanes' bests, the largest first and the earliest among equals; then the values after the chunks.
    let mut overall = (f32::NEG_INFINITY, 0usize);
    for (&value, &at) in lanes.iter().zip(&indices) {
        if value > overall.0 || (value == overall.0 && (at as usize) < overall.1) {
            overall = (value, at as usize);
        }
    }
    let done = values.len() - chunks.remainder().len();
    argmax_from(chunks.remainder(), done, overall)
}

/// One head's sums for four positions (eight lanes each) reduced together (three horizontal adds), scaled, into
/// `scores` (one to four of them: the sums of missing positions are zero and reduced the same way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn store_four_scores(sums: [std::arch::x86_64::__m256; 4], scale: f32, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let [s0, s1, s2, s3] = sums;
    let quad = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    let four = _mm_add_ps(_mm256_castps256_ps128(quad), _mm256_extractf128_ps(quad, 1));
    let mut lanes = [0.0f32; 4];
    // SAFETY: four floats.
    unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), _mm_mul_ps(four, _mm_set1_ps(scale))) };
    let count = scores.len();
    scores.copy_from_slice(&lanes[..count]);
}

/// Positions ahead of the ones being scored whose keys and values are prefetched.
const AHEAD: usize = 16;

/// Prefetches the keys (into L1) and values (into L2) of `positions`, `hd` values each. A step's caches are far
/// larger than the CPU caches, and the hardware prefetcher stops at every 4 KiB page; values go to L2 only, so
/// they do not push the keys out of L1 before the value sums read them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse")]
fn prefetch_positions(keys: *const u16, values: *const u16, hd: usize, positions: std::ops::Range<usize>) {
    use std::arch::x86_64::*;
    // 32 halves: a cache line.
    for at in (positions.start * hd..positions.end * hd).step_by(32) {
        // A prefetch never faults, and `wrapping_add` claims nothing about the address.
        _mm_prefetch::<_MM_HINT_T0>(keys.wrapping_add(at) as *const i8);
        _mm_prefetch::<_MM_HINT_T1>(values.wrapping_add(at) as *const i8);
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

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Appends silu(gate) * up (SwiGLU's gating, silu(x) = x / (1 + e^-x)) to `out`.
pub fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: AVX2 and FMA are present (checked at run time).
        return unsafe { silu_times_avx2(gate, up, out) };
    }
    for ((o, &g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_times_avx2(gate: &[f32], up: &[f32], target: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = target.chunks_exact_mut(8);
    for ((chunk, g), u) in (&mut chunks).zip(gate.chunks_exact(8)).zip(up.chunks_exact(8)) {
        // SAFETY: every chunk holds 8 values.
        let (g, u) = unsafe { (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) };
        let one = _mm256_set1_ps(1.0);
        let silu = _mm256_div_ps(g, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_mul_ps(silu, u)) };
    }
    let done = gate.len() / 8 * 8;
    for ((o, &g), u) in chunks.into_remainder().iter_mut().zip(&gate[done..]).zip(&up[done..]) {
        *o = silu(g) * u;
    }
}

/// An f32 as f16 bits, rounded to nearest even (what F16C does too).
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// `values` as f16 bits, as [`f32_to_f16`] gives them, eight at a time with F16C.
pub fn f32_to_f16_slice(values: &[f32], bits: &mut [u16]) {
    assert_eq!(values.len(), bits.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has F16C (checked at run time).
        unsafe { f32_to_f16_slice_f16c(values, bits) };
        return;
    }
    bits.iter_mut().zip(values).for_each(|(bits, &x)| *bits = f32_to_f16(x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn f32_to_f16_slice_f16c(values: &[f32], bits: &mut [u16]) {
    use std::arch::x86_64::*;
    let mut targets = bits.chunks_exact_mut(8);
    let mut sources = values.chunks_exact(8);
    for (target, source) in (&mut targets).zip(&mut sources) {
        // SAFETY: eight floats in, eight halves out.
        unsafe {
            let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(source.as_ptr()));
            _mm_storeu_si128(target.as_mut_ptr().cast(), halves);
        }
    }
    for (bits, &x) in targets.into_remainder().iter_mut().zip(sources.remainder()) {
        *bits = f32_to_f16(x);
    }
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
    fn argmax_agrees_with_the_plain_loop_at_every_length_and_tie() {
        for len in [1usize, 7, 8, 9, 16, 23, 100, 49152] {
            let mut values: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1009) as f32).collect();
            if len > 20 {
                values[len / 3] = f32::NAN;
                let top = values.iter().cloned().fold(f32::MIN, f32::max);
                values[len - 1] = top; // a tie after the chunks or in another lane
            }
            assert_eq!(argmax(&values), argmax_from(&values, 0, (f32::NEG_INFINITY, 0)), "len {len}");
        }
        assert_eq!(argmax(&[f32::NAN; 12]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 12]), 0);
        assert_eq!(argmax(&[]), 0);
        // Ties: within the leftover values, and between lanes of different accumulators and chunks.
        for (len, first, later) in [(20, 9, 18), (100, 40, 9 + 64), (100, 17, 33), (100, 70, 90)] {
            let mut ties = vec![0.0f32; len];
            ties[later] = 1.0;
            ties[first] = 1.0;
            assert_eq!(argmax(&ties), first, "len {len}, ties at {first} and {later}");
        }
    }

    #[test]
    fn converting_a_slice_to_f16_gives_each_value_s_bits() {
        // Ties between halves, subnormals, the largest half, overflow to infinity, and 4 left over after 8s.
        let mut values = vec![1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 6.0e-8, -3.0e-5, 65504.0, 65520.0, -1.0e9, 0.0];
        values.extend((0..36).map(|i| (i as f32 - 17.5) * 0.123_456));
        let mut bits = vec![0u16; values.len()];
        f32_to_f16_slice(&values, &mut bits);
        let one_by_one: Vec<u16> = values.iter().map(|&x| f32_to_f16(x)).collect();
        assert_eq!(bits, one_by_one);
        assert_eq!(bits[..2], [0x3C00, 0x3C02], "ties round to even");
        assert_eq!(bits[5], 0x7C00, "past the largest half is infinity");
    }

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
    fn group_attention_matches_a_float_reference_for_every_group_and_head_size() {
        let cache: Vec<f32> = (0..40 * 3 * 80).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
        let bits: Vec<u16> = cache.iter().map(|&x| f32_to_f16(x)).collect();
        // Spans with every remainder of the four positions scored together.
        // Head sizes: AVX-512 (multiples of 16), AVX2 only (of 8), scalar only.
        for (hd, offset, span) in [(64, 80, 37), (64, 0, 40), (80, 0, 3), (80, 160, 38), (6, 160, 39), (128, 0, 9)] {
            for heads in [1, 2, 3, 4, 5, 8] {
                let queries: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let bits = &bits;
                let cached = |i: usize, d: usize| f16_to_f32(bits[offset + i * hd + d]);
                let mut expected = Vec::new();
                for query in queries.chunks_exact(hd) {
                    let mut weights: Vec<f32> =
                        (0..span).map(|i| (0..hd).map(|d| cached(i, d) * query[d]).sum::<f32>() * scale).collect();
                    softmax(&mut weights);
                    // Values are the keys' cache here too.
                    expected.extend(
                        (0..hd).map(|d| weights.iter().enumerate().map(|(i, w)| w * cached(i, d)).sum::<f32>()),
                    );
                }
                let attention = GroupAttention {
                    queries: &queries,
                    hd,
                    keys: &bits[offset..],
                    values: &bits[offset..],
                    span,
                    scale,
                };
                for kernel in Kernel::available() {
                    let mut out = vec![9.0f32; heads * hd];
                    attention.run_with(kernel, &mut out);
                    for (got, want) in out.iter().zip(&expected) {
                        let case = format!("{kernel:?}, hd {hd}, span {span}, {heads} heads");
                        assert!((got - want).abs() < 1e-4, "{case}: {got} vs {want}");
                    }
                    // Each head alone gives the same values as in its group.
                    for (h, query) in queries.chunks_exact(hd).enumerate() {
                        let mut alone = vec![0.0f32; hd];
                        GroupAttention { queries: query, ..attention }.run_with(kernel, &mut alone);
                        assert_eq!(alone, out[h * hd..(h + 1) * hd]);
                    }
                }
            }
        }
    }
}
