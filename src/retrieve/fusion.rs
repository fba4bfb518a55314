//! Reciprocal rank fusion: combines ranked lists by rank alone, so BM25 scores and cosines need no calibration.

use std::collections::HashMap;

use super::{Hit, sort_hits};

/// score(d) = sum over lists of 1 / (k + rank), rank 1-based; sorted by fused score desc, ties by index asc.
/// A passage listed twice in one list counts once, at its best rank.
pub fn reciprocal_rank_fusion(lists: &[&[Hit]], k: f32) -> Vec<Hit> {
    let mut fused: HashMap<usize, f32> = HashMap::new();
    for list in lists {
        let mut seen = std::collections::HashSet::new();
        for (rank, hit) in list.iter().enumerate() {
            if seen.insert(hit.index) {
                *fused.entry(hit.index).or_default() += 1.0 / (k + (rank + 1) as f32);
            }
        }
    }
    let mut hits: Vec<Hit> = fused.into_iter().map(|(index, score)| Hit { index, score }).collect();
    sort_hits(&mut hits);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(indices: &[usize]) -> Vec<Hit> {
        // Scores are deliberately on different scales: only ranks matter.
        indices.iter().enumerate().map(|(r, &index)| Hit { index, score: 100.0 - r as f32 }).collect()
    }

    fn order(hits: &[Hit]) -> Vec<usize> {
        hits.iter().map(|h| h.index).collect()
    }

    #[test]
    fn fuses_by_rank() {
        let a = list(&[7, 3, 5]);
        let b = list(&[3, 9, 7]);
        let fused = reciprocal_rank_fusion(&[&a, &b], 60.0);
        // 3: 1/62 + 1/61, 7: 1/61 + 1/63, 9: 1/62, 5: 1/63.
        assert_eq!(order(&fused), [3, 7, 9, 5]);
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-7);
        assert!((fused[3].score - 1.0 / 63.0).abs() < 1e-7);
    }

    #[test]
    fn ties_break_by_index_and_duplicates_count_once() {
        // 4 and 2 swap ranks between lists: equal fused scores, lower index first.
        let a = list(&[4, 2]);
        let b = list(&[2, 4]);
        assert_eq!(order(&reciprocal_rank_fusion(&[&a, &b], 60.0)), [2, 4]);
        let dup = list(&[1, 1, 0]);
        let fused = reciprocal_rank_fusion(&[&dup], 0.0);
        assert_eq!(order(&fused), [1, 0]);
        assert_eq!(fused[0].score, 1.0);
        assert!((fused[1].score - 1.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn small_k_rewards_the_top_more() {
        // Passage 2 is third in both lists, 1 and 9 are first in one each. With k = 0 a single first place
        // (1/1) beats two third places (2/3); with k = 60 it does not (1/61 < 2/63).
        let a = list(&[1, 7, 2]);
        let b = list(&[9, 8, 2]);
        assert_eq!(reciprocal_rank_fusion(&[&a, &b], 0.0)[0].index, 1);
        assert_eq!(reciprocal_rank_fusion(&[&a, &b], 60.0)[0].index, 2);
        assert!(reciprocal_rank_fusion(&[], 60.0).is_empty());
    }
}
