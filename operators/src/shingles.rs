//! Word and character-gram shingle sets of normalized texts, and their Jaccard [`similarity`] (how close
//! two instructions are).

use crate::text_hash::{hash64, normalize};

/// Character n-gram length of [`similarity`].
pub const GRAM_CHARS: usize = 4;

/// The word set and the character-[`GRAM_CHARS`]-gram set of a text after [`normalize`], as sorted, distinct
/// 64-bit hashes (sorted hash order is also the global token order of a prefix-filter index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shingles {
    words: Vec<u64>,
    grams: Vec<u64>,
}

impl Shingles {
    pub fn of(text: &str) -> Self {
        let normalized = normalize(text);
        let mut words: Vec<u64> =
            normalized.split(' ').filter(|w| !w.is_empty()).map(|w| hash64(w.as_bytes())).collect();
        words.sort_unstable();
        words.dedup();
        let bounds: Vec<usize> = normalized.char_indices().map(|(i, _)| i).chain([normalized.len()]).collect();
        let chars = bounds.len() - 1;
        let mut grams: Vec<u64> = if chars == 0 {
            Vec::new()
        } else if chars < GRAM_CHARS {
            // A text shorter than one gram is its own single gram.
            vec![hash64(normalized.as_bytes())]
        } else {
            bounds.windows(GRAM_CHARS + 1).map(|w| hash64(&normalized.as_bytes()[w[0]..w[GRAM_CHARS]])).collect()
        };
        grams.sort_unstable();
        grams.dedup();
        Shingles { words, grams }
    }

    /// Nothing left after normalization (only punctuation or whitespace).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn grams(&self) -> &[u64] {
        &self.grams
    }

    /// The larger of the word-set and the character-gram Jaccard similarities: words catch reordered
    /// copies, grams catch small edits inside words (inflections, typos).
    pub fn similarity(&self, other: &Shingles) -> f64 {
        jaccard(&self.words, &other.words).max(jaccard(&self.grams, &other.grams))
    }
}

/// Jaccard similarity of two sorted, distinct sets (1 for two empty sets).
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let common = overlap(a, b);
    common as f64 / (a.len() + b.len() - common) as f64
}

/// Size of the intersection of two sorted, distinct sets.
fn overlap(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}

/// [`Shingles::similarity`] of two texts, in [0, 1].
pub fn similarity(a: &str, b: &str) -> f64 {
    Shingles::of(a).similarity(&Shingles::of(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_combines_words_and_character_grams() {
        const PARENT: &str = "Explain how vaccines train the immune system to recognize a virus.";
        assert_eq!(similarity("Write a poem.", "write a POEM!"), 1.0);
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("abc", "xyz"), 0.0);
        let reordered = similarity("cats chase small mice at night", "at night small mice chase cats");
        assert_eq!(reordered, 1.0, "same words");
        let evolved = similarity(PARENT, &format!("{PARENT} Compare mRNA and viral-vector vaccines in a table."));
        assert!(evolved < 0.7, "{evolved}");
        assert!(Shingles::of("?!").is_empty());
    }
}
