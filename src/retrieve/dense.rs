//! Brute-force cosine search: one contiguous row-major buffer and a dot product per passage, which is fast enough
//! up to ~1e5 passages and has no index to build or go stale.

use super::{Hit, sort_hits};

pub struct DenseIndex {
    /// Unit-length rows of `dim` floats, one per passage.
    rows: Vec<f32>,
    dim: usize,
    len: usize,
}

impl std::fmt::Debug for DenseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseIndex").field("len", &self.len).field("dim", &self.dim).finish_non_exhaustive()
    }
}

/// Scales to unit length in place; a zero or non-finite vector becomes all zeros, which always scores 0.
fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm.is_finite() && norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// Eight independent accumulators let the compiler vectorize the reduction without fast-math.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for ((s, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            *s += xi * yi;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl DenseIndex {
    /// Vectors are (re)normalized, so cosine is a dot product. The first vector sets the dimension; a vector of
    /// another length is stored as zeros (scoring 0, below any real match) and logged.
    pub fn new(vectors: Vec<Vec<f32>>) -> Self {
        let dim = vectors.first().map_or(0, Vec::len);
        let len = vectors.len();
        let mut rows = Vec::with_capacity(dim * len);
        for (i, mut v) in vectors.into_iter().enumerate() {
            if v.len() == dim {
                normalize(&mut v);
                rows.extend_from_slice(&v);
            } else {
                tracing::warn!(passage = i, dim = v.len(), expected = dim, "embedding of the wrong size is ignored");
                rows.resize(rows.len() + dim, 0.0);
            }
        }
        Self { rows, dim, len }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Top `k` passages by cosine similarity, best first (ties by index). A query of the wrong dimension, or with
    /// zero length, has no hits.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let k = k.min(self.len);
        if k == 0 || self.dim == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        if q.iter().all(|&x| x == 0.0) {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = self
            .rows
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(index, row)| Hit { index, score: dot(row, &q) })
            .filter(|h| h.score.is_finite())
            .collect();
        // Partial selection first: sorting all rows would cost n log n for a handful of hits.
        if k < hits.len() {
            hits.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            hits.truncate(k);
        }
        sort_hits(&mut hits);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_cosine_and_breaks_ties_by_index() {
        let index = DenseIndex::new(vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 2.0, 0.0], // not unit length: normalized on the way in
            vec![1.0, 1.0, 0.0],
            vec![0.0, 5.0, 0.0],
            vec![0.0, 0.0, 0.0],
        ]);
        let hits = index.search(&[0.0, 3.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [1, 3, 2]);
        assert!((hits[0].score - 1.0).abs() < 1e-6 && (hits[2].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(index.search(&[0.0, 1.0, 0.0], 100).len(), 5);
        assert!(index.search(&[0.0, 1.0], 3).is_empty());
        assert!(index.search(&[0.0, 0.0, 0.0], 3).is_empty());
        assert!(index.search(&[0.0, 1.0, 0.0], 0).is_empty());
    }

    #[test]
    fn matches_naive_top_k_on_many_rows() {
        // Deterministic pseudo-random vectors with an odd dimension to exercise the dot product's tail.
        let mut state = 0x2545f491u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) - 0.5
        };
        let vectors: Vec<Vec<f32>> = (0..500).map(|_| (0..21).map(|_| next()).collect()).collect();
        let query: Vec<f32> = (0..21).map(|_| next()).collect();
        let index = DenseIndex::new(vectors.clone());
        let cos = |a: &[f32], b: &[f32]| {
            let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            d / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
        };
        let mut naive: Vec<(usize, f32)> = vectors.iter().map(|v| cos(v, &query)).enumerate().collect();
        naive.sort_by(|a, b| b.1.total_cmp(&a.1));
        let hits = index.search(&query, 10);
        assert_eq!(
            hits.iter().map(|h| h.index).collect::<Vec<_>>(),
            naive[..10].iter().map(|n| n.0).collect::<Vec<_>>()
        );
        for (h, n) in hits.iter().zip(&naive) {
            assert!((h.score - n.1).abs() < 1e-5);
        }
    }

    #[test]
    fn wrong_sized_rows_score_zero() {
        let index = DenseIndex::new(vec![vec![1.0, 0.0], vec![1.0], vec![0.5, 0.5]]);
        assert_eq!((index.len(), index.dim()), (3, 2));
        let hits = index.search(&[1.0, 0.0], 3);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [0, 2, 1]);
        assert_eq!(hits[2].score, 0.0);
        assert!(DenseIndex::new(Vec::new()).search(&[], 3).is_empty());
    }
}
