//! `dedup`: global, streaming removal of exact and near-duplicate records.
//!
//! Both modes work on a normalized text (see [`normalize`]): Unicode lowercase, punctuation stripped,
//! whitespace runs collapsed to one space, trimmed.
//!
//! - Exact: a 128-bit BLAKE3 hash of the normalized text, mapped to the id of the record that was kept.
//! - Near: MinHash over word n-gram shingles, then LSH banding ([`lsh_params`]); a record is a near
//!   duplicate when one of its band hashes belongs to a kept record.
//!
//! The state holds hashes and ids only (never texts), so memory grows by a fixed amount per kept record:
//! about 32 bytes for exact, and about 32 bytes per band for near. The first occurrence (in the order the
//! engine delivers rows: time order, see [`Operator::shape`]) is kept; the others are rejected with the kept id in
//! the reason.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;

use crate::columns::{ID, TEXT};
use crate::text_hash::{K0, K1, K2, content_hash, fmix64, fold_mul, hash64, normalize, normalize_into, splitmix64};
use crate::{Exchange, OpError, Operator, Output, Reject, Router, Shape, require_column, string_column, take_rows};

/// Settings of a `dedup` node.
///
/// ```yaml
/// dedup:
///   column: text        # default "text"
///   exact: true         # default true
///   near:               # optional; `near: {}` takes every default
///     threshold: 0.8    # Jaccard similarity, in (0, 1)
///     num_perm: 128     # MinHash permutations
///     shingle: 5        # words per shingle
///     seed: 0
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    /// The text column to compare.
    #[serde(default = "default_column")]
    pub column: String,
    /// Remove records whose normalized text equals a kept record's.
    #[serde(default = "default_exact")]
    pub exact: bool,
    /// Remove records whose estimated Jaccard similarity to a kept record is above a threshold.
    #[serde(default)]
    pub near: Option<NearDedupSpec>,
}

impl Default for DedupSpec {
    fn default() -> Self {
        DedupSpec { column: default_column(), exact: default_exact(), near: None }
    }
}

/// Settings of near-duplicate removal (MinHash + LSH).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NearDedupSpec {
    /// Jaccard similarity of shingle sets above which two texts are duplicates, in (0, 1).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Number of MinHash permutations (signature length).
    #[serde(default = "default_num_perm")]
    pub num_perm: usize,
    /// Words per shingle; texts with fewer words are one shingle.
    #[serde(default = "default_shingle")]
    pub shingle: usize,
    /// Seed of the permutations.
    #[serde(default)]
    pub seed: u64,
}

impl Default for NearDedupSpec {
    fn default() -> Self {
        NearDedupSpec {
            threshold: default_threshold(),
            num_perm: default_num_perm(),
            shingle: default_shingle(),
            seed: 0,
        }
    }
}

fn default_column() -> String {
    TEXT.to_string()
}
fn default_exact() -> bool {
    true
}
fn default_threshold() -> f64 {
    0.8
}
fn default_num_perm() -> usize {
    128
}
fn default_shingle() -> usize {
    5
}

/// The largest `num_perm` accepted (the band index is a `u16`, and choosing the bands costs
/// `O(num_perm log num_perm)` integrations).
pub const MAX_NUM_PERM: usize = 1024;

impl DedupSpec {
    /// Checks the settings; the error names the offending key.
    pub fn validate(&self) -> Result<(), OpError> {
        if self.column.is_empty() {
            return Err(OpError::setting("column", "must name a column"));
        }
        if !self.exact && self.near.is_none() {
            return Err(OpError::setting("exact", "is false and `near` is not set: turn on at least one of them"));
        }
        if let Some(near) = &self.near {
            // `!(x > 0 && x < 1)` also refuses NaN.
            if !(near.threshold > 0.0 && near.threshold < 1.0) {
                return Err(OpError::setting("near.threshold", format!("must be in (0, 1), got {}", near.threshold)));
            }
            if near.num_perm == 0 || near.num_perm > MAX_NUM_PERM {
                return Err(OpError::setting(
                    "near.num_perm",
                    format!("must be in 1..={MAX_NUM_PERM}, got {}", near.num_perm),
                ));
            }
            if near.shingle == 0 {
                return Err(OpError::setting("near.shingle", "must be at least 1"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Shingles
// ---------------------------------------------------------------------------------------------------

/// Hashes of the word `shingle`-grams of a normalized text (words separated by single spaces), in text
/// order, into a reused buffer. A text with fewer than `shingle` words (the empty text included) is one
/// shingle. Each shingle is hashed as its text, e.g. `"the quick brown"`.
pub fn shingle_hashes(normalized: &str, shingle: usize, words: &mut Vec<(usize, usize)>, out: &mut Vec<u64>) {
    out.clear();
    words.clear();
    let mut start = 0;
    for (i, b) in normalized.bytes().enumerate() {
        if b == b' ' {
            words.push((start, i));
            start = i + 1;
        }
    }
    if !normalized.is_empty() {
        words.push((start, normalized.len()));
    }
    let shingle = shingle.max(1);
    if words.len() < shingle {
        out.push(hash64(normalized.as_bytes()));
        return;
    }
    let bytes = normalized.as_bytes();
    out.extend((0..=words.len() - shingle).map(|i| hash64(&bytes[words[i].0..words[i + shingle - 1].1])));
}

// ---------------------------------------------------------------------------------------------------
// MinHash
// ---------------------------------------------------------------------------------------------------

/// The Mersenne prime 2^61 - 1.
const MERSENNE_61: u64 = (1 << 61) - 1;

/// `(a * x + b) mod (2^61 - 1)` for `a, b, x < 2^61 - 1`, branch-free.
#[inline(always)]
fn mul_add_mod61(a: u64, x: u64, b: u64) -> u64 {
    let t = (a as u128) * (x as u128) + (b as u128);
    let r = ((t as u64) & MERSENNE_61) + ((t >> 61) as u64); // < 2^62
    let r = (r & MERSENNE_61) + (r >> 61); // <= 2^61
    r.min(r.wrapping_sub(MERSENNE_61))
}

/// MinHash over 64-bit element hashes with `num_perm` universal hash functions
/// `h_i(x) = (a_i * x + b_i) mod (2^61 - 1)`, `a_i, b_i` drawn from splitmix64 seeded with `seed`.
#[derive(Debug, Clone)]
pub struct MinHasher {
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    pub fn new(num_perm: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut a = Vec::with_capacity(num_perm);
        let mut b = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            a.push(1 + splitmix64(&mut state) % (MERSENNE_61 - 1));
            b.push(splitmix64(&mut state) % MERSENNE_61);
        }
        MinHasher { a, b }
    }

    pub fn num_perm(&self) -> usize {
        self.a.len()
    }

    /// The signature of the set `hashes` (duplicates do not matter) into a reused buffer of length
    /// `num_perm`. An empty set gives `u64::MAX` everywhere.
    ///
    /// The elements must be well-mixed hashes (as [`shingle_hashes`] gives): linear hashes are not
    /// min-wise independent on structured sets, so raw consecutive integers bias the estimate (for
    /// `0..1000` vs `100..1100` it comes out near 0.71 instead of 0.82).
    pub fn signature_into(&self, hashes: &[u64], out: &mut Vec<u64>) {
        out.clear();
        out.resize(self.a.len(), u64::MAX);
        for &h in hashes {
            // Reduce into [0, p) so that x < p as the modular arithmetic requires.
            let x = (h & MERSENNE_61) + (h >> 61);
            let x = x.min(x.wrapping_sub(MERSENNE_61));
            for ((slot, &a), &b) in out.iter_mut().zip(&self.a).zip(&self.b) {
                *slot = (*slot).min(mul_add_mod61(a, x, b));
            }
        }
    }

    /// The signature of the set `hashes`.
    pub fn signature(&self, hashes: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        self.signature_into(hashes, &mut out);
        out
    }
}

/// The MinHash signature of `text` as near dedup sees it: normalized, shingled by `spec.shingle`, hashed
/// with `spec.num_perm` permutations seeded by `spec.seed`. Allocates; [`Dedup`] reuses buffers instead.
pub fn minhash_signature(text: &str, spec: &NearDedupSpec) -> Vec<u64> {
    let normalized = normalize(text);
    let mut words = Vec::new();
    let mut hashes = Vec::new();
    shingle_hashes(&normalized, spec.shingle, &mut words, &mut hashes);
    MinHasher::new(spec.num_perm, spec.seed).signature(&hashes)
}

/// The estimated Jaccard similarity of two signatures: the fraction of positions where they agree
/// (0 for empty signatures; a length mismatch counts the extra positions as disagreements).
pub fn jaccard_estimate(a: &[u64], b: &[u64]) -> f64 {
    let len = a.len().max(b.len());
    if len == 0 {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / len as f64
}

// ---------------------------------------------------------------------------------------------------
// LSH banding
// ---------------------------------------------------------------------------------------------------

/// The probability that two sets with Jaccard similarity `s` share at least one band, with `bands`
/// bands of `rows` rows each (the LSH "S-curve"): `1 - (1 - s^rows)^bands`.
pub fn lsh_candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

/// Simpson's rule on `[lo, hi]`.
fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    const STEPS: usize = 128; // even
    let h = (hi - lo) / STEPS as f64;
    let mut sum = f(lo) + f(hi);
    for i in 1..STEPS {
        let weight = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += weight * f(lo + i as f64 * h);
    }
    sum * h / 3.0
}

/// Bands and rows per band (`bands * rows <= num_perm`) that minimize the equally weighted areas of
/// false positives (`∫_0^t P(s) ds`) and false negatives (`∫_t^1 1 - P(s) ds`), `P` being
/// [`lsh_candidate_probability`] and `t` the threshold. Ties keep the first pair found (fewest bands).
pub fn lsh_params(threshold: f64, num_perm: usize) -> (usize, usize) {
    let num_perm = num_perm.max(1);
    let mut best = (1, num_perm);
    let mut best_error = f64::INFINITY;
    for bands in 1..=num_perm {
        for rows in 1..=num_perm / bands {
            let false_pos = integrate(|s| lsh_candidate_probability(s, bands, rows), 0.0, threshold);
            let false_neg = integrate(|s| 1.0 - lsh_candidate_probability(s, bands, rows), threshold, 1.0);
            let error = 0.5 * false_pos + 0.5 * false_neg;
            if error < best_error {
                best_error = error;
                best = (bands, rows);
            }
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------

/// A hasher for keys that are already uniform hashes (BLAKE3 output, band hashes): a light mix is
/// enough, and much cheaper than SipHash.
#[derive(Default)]
struct PrehashedKeyHasher(u64);

impl Hasher for PrehashedKeyHasher {
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fold_mul(self.0 ^ hash64(bytes), K1);
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(K0);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

type PrehashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PrehashedKeyHasher>>;

/// The LSH index of near dedup, with the buffers reused from row to row.
struct NearIndex {
    minhasher: MinHasher,
    shingle: usize,
    threshold: f64,
    bands: usize,
    rows: usize,
    index: PrehashedMap<(u16, u64), u128>,
    words: Vec<(usize, usize)>,
    shingles: Vec<u64>,
    signature: Vec<u64>,
    band_keys: Vec<(u16, u64)>,
}

impl NearIndex {
    fn new(spec: &NearDedupSpec) -> Self {
        let (bands, rows) = lsh_params(spec.threshold, spec.num_perm);
        NearIndex {
            minhasher: MinHasher::new(spec.num_perm, spec.seed),
            shingle: spec.shingle,
            threshold: spec.threshold,
            bands,
            rows,
            index: PrehashedMap::default(),
            words: Vec::new(),
            shingles: Vec::new(),
            signature: Vec::new(),
            band_keys: Vec::with_capacity(bands),
        }
    }

    /// Computes the band keys of `normalized` into `self.band_keys`.
    fn compute_band_keys(&mut self, normalized: &str) {
        shingle_hashes(normalized, self.shingle, &mut self.words, &mut self.shingles);
        self.minhasher.signature_into(&self.shingles, &mut self.signature);
        self.band_keys.clear();
        for (band, values) in self.signature.chunks_exact(self.rows).take(self.bands).enumerate() {
            let mut h = K2 ^ (band as u64).wrapping_mul(K0);
            for &v in values {
                h = fold_mul(v ^ K1, h ^ K2);
            }
            self.band_keys.push((band as u16, fmix64(h)));
        }
    }

    /// The kept record that shares a band with the current band keys (the lowest band wins).
    fn find(&self) -> Option<u128> {
        self.band_keys.iter().find_map(|key| self.index.get(key).copied())
    }

    fn insert(&mut self, kept: u128) {
        for &key in &self.band_keys {
            self.index.entry(key).or_insert(kept);
        }
    }
}

/// Global deduplication (exact and/or near), keeping the first occurrence.
pub struct Dedup {
    column: String,
    exact: Option<PrehashedMap<u128, u128>>,
    near: Option<NearIndex>,
    /// Ids that are not 32 lowercase hex chars are kept as a hash; their text is stored here (only for
    /// kept records) so that reasons name them.
    named_ids: HashMap<u128, String>,
    normalized: String,
}

enum Decision {
    Keep,
    Drop(String),
}

impl Dedup {
    /// Validates `spec` and builds the operator (chooses the LSH bands when near dedup is on).
    pub fn new(spec: DedupSpec) -> Result<Self, OpError> {
        spec.validate()?;
        Ok(Dedup {
            exact: spec.exact.then(PrehashedMap::default),
            near: spec.near.as_ref().map(NearIndex::new),
            column: spec.column,
            named_ids: HashMap::new(),
            normalized: String::new(),
        })
    }

    /// `(bands, rows)` of the LSH index, when near dedup is on.
    pub fn lsh(&self) -> Option<(usize, usize)> {
        self.near.as_ref().map(|n| (n.bands, n.rows))
    }

    /// Number of records kept so far (the size of the state, in records).
    pub fn kept(&self) -> usize {
        match (&self.exact, &self.near) {
            (Some(exact), _) => exact.len(),
            (None, Some(near)) => near.index.len() / near.bands.max(1),
            (None, None) => 0,
        }
    }

    fn intern_id(&mut self, id: &str) -> u128 {
        match parse_hex_id(id) {
            Some(value) => value,
            None => {
                let value = content_hash(id); // a hash of the id text
                self.named_ids.entry(value).or_insert_with(|| id.to_string());
                value
            }
        }
    }

    fn render_id(&self, id: u128) -> String {
        match self.named_ids.get(&id) {
            Some(name) => name.clone(),
            None => format!("{id:032x}"),
        }
    }

    fn decide(&mut self, id: &str, text: &str) -> Decision {
        normalize_into(text, &mut self.normalized);
        let content = self.exact.as_ref().map(|_| content_hash(&self.normalized));
        if let (Some(seen), Some(hash)) = (&self.exact, content)
            && let Some(&kept) = seen.get(&hash)
        {
            return Decision::Drop(format!("exact duplicate of {}", self.render_id(kept)));
        }
        if let Some(near) = &mut self.near {
            near.compute_band_keys(&self.normalized);
            if let Some(kept) = near.find() {
                let threshold = near.threshold;
                return Decision::Drop(format!("near duplicate of {} (threshold {threshold})", self.render_id(kept)));
            }
        }
        let kept = self.intern_id(id);
        if let (Some(seen), Some(hash)) = (&mut self.exact, content) {
            seen.insert(hash, kept);
        }
        if let Some(near) = &mut self.near {
            near.insert(kept);
        }
        Decision::Keep
    }
}

/// `Some(value)` for a 32-char lowercase hex id (the form of [`crate::columns::stable_id`]).
fn parse_hex_id(id: &str) -> Option<u128> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

impl Operator for Dedup {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        require_column(input, &self.column, &DataType::Utf8)?;
        Ok(SchemaRef::clone(input))
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, OpError> {
        let ids = string_column(&batch, ID)?;
        let texts = string_column(&batch, &self.column)?;
        let n = batch.num_rows();
        let mut keep: Vec<u32> = Vec::with_capacity(n);
        let mut rejects = Vec::new();
        for row in 0..n {
            if texts.is_null(row) {
                rejects.push(Reject { row, reason: "null text".to_string() });
                continue;
            }
            if ids.is_null(row) {
                rejects.push(Reject { row, reason: "null id".to_string() });
                continue;
            }
            match self.decide(ids.value(row), texts.value(row)) {
                Decision::Keep => keep.push(row as u32),
                Decision::Drop(reason) => rejects.push(Reject { row, reason }),
            }
        }
        let rows = if keep.len() == n { batch } else { take_rows(&batch, &keep)? };
        Ok(Output { rows, rejects })
    }

    /// Exact only: rows meet by content hash, so the work spreads over every worker. Near: LSH bands of
    /// one record point at many different records, so no per-row key partitions the index; every row
    /// goes to one worker, which decides (correct and worker-count independent, but not parallel). Both
    /// keep the first occurrence in time order, so the kept record does not depend on arrival timing.
    fn shape(&self) -> Shape {
        let exchange = if self.near.is_some() {
            Exchange::OneWorker
        } else {
            Exchange::ByKey(format!("content hash of `{}`", self.column))
        };
        Shape::stream().exchanged(exchange).in_time_order()
    }

    fn router(&self) -> Option<Box<dyn Router>> {
        if self.near.is_some() {
            return None;
        }
        Some(Box::new(ContentRouter { column: self.column.clone() }))
    }
}

/// Routes rows of exact [`Dedup`] by content: key = the low 64 bits of [`content_hash`] of the normalized
/// `column` (0 for nulls).
pub struct ContentRouter {
    pub column: String,
}

impl Router for ContentRouter {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, OpError> {
        let texts = string_column(batch, &self.column)?;
        let mut normalized = String::new();
        Ok((0..batch.num_rows())
            .map(|row| {
                if texts.is_null(row) {
                    return 0;
                }
                normalize_into(texts.value(row), &mut normalized);
                content_hash(&normalized) as u64
            })
            .collect())
    }
}

/// A complete config that uses `dedup` (paths relative to the repository's `configs/`; `sdg kinds dedup`).
pub const EXAMPLE: &str = r#"# Drops the copy of the pharmacology note: exact duplicates after normalization, and near ones (MinHash).
nodes:
  - {id: docs, kind: ingest, paths: [sample-corpus/notes]}
  - {id: unique, kind: dedup, input: docs, near: {threshold: 0.8}}
  - {id: out, kind: sink, input: unique}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::stable_id;
    use arrow::array::{StringArray, UInt32Array};
    use arrow::datatypes::{Field, Schema};
    use std::collections::HashSet;
    use std::sync::Arc;

    fn hex_id(i: usize) -> String {
        stable_id(&[b"doc", i.to_string().as_bytes()])
    }

    fn batch(ids: &[&str], texts: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("text", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(StringArray::from(texts.to_vec()))],
        )
        .unwrap()
    }

    fn kept_ids(out: &Output) -> Vec<String> {
        let ids = string_column(&out.rows, "id").unwrap();
        (0..ids.len()).map(|i| ids.value(i).to_string()).collect()
    }

    fn exact() -> Dedup {
        Dedup::new(DedupSpec::default()).unwrap()
    }

    fn near(threshold: f64) -> Dedup {
        Dedup::new(DedupSpec {
            exact: false,
            near: Some(NearDedupSpec { threshold, ..NearDedupSpec::default() }),
            ..DedupSpec::default()
        })
        .unwrap()
    }

    /// `n` pseudo-words from a 400-word vocabulary, deterministic in `seed`.
    fn words(seed: u64, n: usize) -> Vec<String> {
        const SYLLABLES: [&str; 20] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "da", "fo", "gu", "he", "ji", "ko", "pa", "qi", "ze",
            "wu", "xo",
        ];
        let mut state = seed;
        (0..n)
            .map(|_| {
                let r = splitmix64(&mut state);
                let a = (r % 20) as usize;
                let b = ((r >> 8) % 20) as usize;
                let c = ((r >> 16) % 20) as usize;
                format!("{}{}{}", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c])
            })
            .collect()
    }

    #[test]
    fn dedup_exact_removes_case_whitespace_and_punctuation_variants() {
        let (a, b, c, d) = (hex_id(1), hex_id(2), hex_id(3), hex_id(4));
        let mut op = exact();
        let out = op
            .process(batch(
                &[&a, &b, &c, &d],
                &[Some("Hello, world!"), Some("  hello   WORLD "), Some("something else"), Some("HELLO world.")],
            ))
            .unwrap();
        assert_eq!(kept_ids(&out), vec![a.clone(), c]);
        let reason = format!("exact duplicate of {a}");
        assert_eq!(out.rejects, vec![Reject { row: 1, reason: reason.clone() }, Reject { row: 3, reason },]);
    }

    #[test]
    fn dedup_exact_keeps_distinct_texts_and_passes_the_batch_through() {
        let ids: Vec<String> = (0..5).map(hex_id).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let texts = ["one", "two", "three", "one two", "two one"];
        let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(*t)).collect();
        let input = batch(&id_refs, &texts);
        let out = exact().process(input.clone()).unwrap();
        assert!(out.rejects.is_empty());
        assert_eq!(out.rows, input);
    }

    #[test]
    fn dedup_state_persists_across_batches() {
        let (a, b, c) = (hex_id(1), hex_id(2), hex_id(3));
        let mut op = exact();
        let first = op.process(batch(&[&a], &[Some("The same text.")])).unwrap();
        assert_eq!(kept_ids(&first), vec![a.clone()]);
        let second = op.process(batch(&[&b, &c], &[Some("the same text"), Some("new text")])).unwrap();
        assert_eq!(kept_ids(&second), vec![c]);
        assert_eq!(second.rejects, vec![Reject { row: 0, reason: format!("exact duplicate of {a}") }]);
        assert_eq!(op.kept(), 2);
    }

    #[test]
    fn dedup_names_non_hex_ids_and_rejects_null_text() {
        let mut op = exact();
        let out = op.process(batch(&["doc-1", "doc-2", "doc-3"], &[Some("abc def"), None, Some("ABC, def!")])).unwrap();
        assert_eq!(kept_ids(&out), vec!["doc-1"]);
        assert_eq!(
            out.rejects,
            vec![
                Reject { row: 1, reason: "null text".to_string() },
                Reject { row: 2, reason: "exact duplicate of doc-1".to_string() },
            ]
        );
        // A 32-char id with uppercase hex is not in canonical form: it is named verbatim too.
        let upper = hex_id(9).to_uppercase();
        let mut op = exact();
        let out = op.process(batch(&[&upper, &hex_id(10)], &[Some("x y"), Some("x  y")])).unwrap();
        assert_eq!(out.rejects[0].reason, format!("exact duplicate of {upper}"));
    }

    #[test]
    fn dedup_near_removes_a_copy_with_three_words_changed_and_keeps_unrelated_text() {
        let original = words(1, 300);
        let mut edited = original.clone();
        for i in [150, 152, 154] {
            edited[i] = "changed".to_string();
        }
        let unrelated = words(2, 300);
        let (original, edited, unrelated) = (original.join(" "), edited.join(" "), unrelated.join(" "));
        let (a, b, c) = (hex_id(1), hex_id(2), hex_id(3));
        let mut op = near(0.8);
        let out = op.process(batch(&[&a, &b, &c], &[Some(&original), Some(&edited), Some(&unrelated)])).unwrap();
        assert_eq!(kept_ids(&out), vec![a.clone(), c]);
        assert_eq!(out.rejects, vec![Reject { row: 1, reason: format!("near duplicate of {a} (threshold 0.8)") }]);
        // The estimate agrees: the pair is well above the threshold, the unrelated text far below.
        let spec = NearDedupSpec::default();
        let sig = |t: &str| minhash_signature(t, &spec);
        assert!(jaccard_estimate(&sig(&original), &sig(&edited)) > 0.85);
        assert!(jaccard_estimate(&sig(&original), &sig(&unrelated)) < 0.1);
    }

    #[test]
    fn dedup_near_keeps_a_pair_with_half_the_words_changed_at_threshold_0_9() {
        let original = words(3, 300);
        let replacements = words(4, 300);
        let edited: Vec<String> = original
            .iter()
            .zip(&replacements)
            .enumerate()
            .map(|(i, (o, r))| if i % 2 == 0 { o.clone() } else { r.clone() })
            .collect();
        let (original, edited) = (original.join(" "), edited.join(" "));
        let mut op = near(0.9);
        let out = op.process(batch(&[&hex_id(1), &hex_id(2)], &[Some(&original), Some(&edited)])).unwrap();
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(out.rows.num_rows(), 2);
    }

    #[test]
    fn dedup_exact_is_checked_before_near() {
        let text = words(5, 50).join(" ");
        let upper = text.to_uppercase();
        let mut op = Dedup::new(DedupSpec { near: Some(NearDedupSpec::default()), ..DedupSpec::default() }).unwrap();
        let (a, b) = (hex_id(1), hex_id(2));
        let out = op.process(batch(&[&a, &b], &[Some(&text), Some(&upper)])).unwrap();
        assert_eq!(out.rejects, vec![Reject { row: 1, reason: format!("exact duplicate of {a}") }]);
    }

    #[test]
    fn dedup_minhash_estimate_is_within_0_1_of_true_jaccard() {
        let hasher = MinHasher::new(256, 7);
        // A = [0, 1000), B = [offset, offset + 1000): J = (1000 - offset) / (1000 + offset).
        for offset in [0u64, 100, 250, 500, 800, 1000] {
            let a: Vec<u64> = (0u64..1000).map(|x| hash64(&x.to_le_bytes())).collect();
            let b: Vec<u64> = (offset..offset + 1000).map(|x| hash64(&x.to_le_bytes())).collect();
            let truth = (1000 - offset) as f64 / (1000 + offset) as f64;
            let estimate = jaccard_estimate(&hasher.signature(&a), &hasher.signature(&b));
            assert!((estimate - truth).abs() <= 0.1, "offset {offset}: {estimate} vs {truth}");
        }
        assert_eq!(jaccard_estimate(&[], &[]), 0.0);
    }

    #[test]
    fn dedup_mul_add_mod61_matches_u128_arithmetic() {
        let mut state = 42;
        for _ in 0..10_000 {
            let a = splitmix64(&mut state) % MERSENNE_61;
            let x = splitmix64(&mut state) % MERSENNE_61;
            let b = splitmix64(&mut state) % MERSENNE_61;
            let expected = ((a as u128 * x as u128 + b as u128) % MERSENNE_61 as u128) as u64;
            assert_eq!(mul_add_mod61(a, x, b), expected);
        }
        let p = MERSENNE_61 - 1;
        assert_eq!(mul_add_mod61(p, p, p), ((p as u128 * p as u128 + p as u128) % MERSENNE_61 as u128) as u64);
    }

    #[test]
    fn dedup_shingles_are_word_ngrams_or_the_whole_short_text() {
        let (mut words, mut out) = (Vec::new(), Vec::new());
        shingle_hashes("a b c d", 2, &mut words, &mut out);
        assert_eq!(out, vec![hash64(b"a b"), hash64(b"b c"), hash64(b"c d")]);
        shingle_hashes("a b", 5, &mut words, &mut out);
        assert_eq!(out, vec![hash64(b"a b")]);
        shingle_hashes("", 5, &mut words, &mut out);
        assert_eq!(out, vec![hash64(b"")]);
    }

    #[test]
    fn dedup_lsh_params_are_sane_for_the_default_threshold() {
        let (bands, rows) = lsh_params(0.8, 128);
        assert!(bands * rows <= 128 && bands >= 1 && rows >= 1, "{bands}x{rows}");
        let at_threshold = lsh_candidate_probability(0.8, bands, rows);
        assert!((0.3..=0.95).contains(&at_threshold), "P(0.8) = {at_threshold}");
        // The S-curve separates: low similarity rarely collides, high similarity almost always does.
        assert!(lsh_candidate_probability(0.5, bands, rows) < 0.05);
        assert!(lsh_candidate_probability(0.95, bands, rows) > 0.99);
        // A higher threshold needs more rows per band.
        let (_, rows_high) = lsh_params(0.95, 128);
        let (_, rows_low) = lsh_params(0.5, 128);
        assert!(rows_low < rows && rows < rows_high);
        assert_eq!(near(0.8).lsh(), Some((bands, rows)));
    }

    #[test]
    fn dedup_is_deterministic_whatever_the_batching() {
        let base: Vec<String> = (0..40).map(|i| words(100 + i % 13, 60).join(" ")).collect();
        let texts: Vec<String> =
            base.iter().enumerate().map(|(i, t)| if i % 3 == 0 { t.to_uppercase() } else { t.clone() }).collect();
        let ids: Vec<String> = (0..40).map(hex_id).collect();
        let run = |chunk: usize| -> Vec<String> {
            let mut op =
                Dedup::new(DedupSpec { near: Some(NearDedupSpec::default()), ..DedupSpec::default() }).unwrap();
            let mut kept = Vec::new();
            for start in (0..40).step_by(chunk) {
                let end = (start + chunk).min(40);
                let id_refs: Vec<&str> = ids[start..end].iter().map(String::as_str).collect();
                let text_refs: Vec<Option<&str>> = texts[start..end].iter().map(|t| Some(t.as_str())).collect();
                kept.extend(kept_ids(&op.process(batch(&id_refs, &text_refs)).unwrap()));
            }
            kept
        };
        let whole = run(40);
        assert_eq!(whole.len(), 13);
        assert_eq!(whole, run(40));
        assert_eq!(whole, run(7));
        assert_eq!(whole, run(1));
    }

    #[test]
    fn dedup_router_keys_meet_for_equal_normalized_texts() {
        let input =
            batch(&["a", "b", "c", "d"], &[Some("Hello, World"), Some("hello   world!!"), Some("goodbye"), None]);
        let router = exact().router().unwrap();
        let keys = router.keys(&input).unwrap();
        assert_eq!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_eq!(keys[0], content_hash("hello world") as u64);
        assert_eq!(keys[3], 0);
        assert!(near(0.8).router().is_none());
        assert_eq!(
            exact().shape(),
            Shape::stream().exchanged(Exchange::ByKey("content hash of `text`".into())).in_time_order()
        );
        assert_eq!(near(0.8).shape(), Shape::stream().exchanged(Exchange::OneWorker).in_time_order());
    }

    #[test]
    fn dedup_output_schema_checks_columns() {
        let op = exact();
        let good = batch(&["a"], &[Some("x")]).schema();
        assert_eq!(op.output_schema(&good).unwrap(), good);
        let no_text = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        assert!(matches!(op.output_schema(&no_text), Err(OpError::MissingColumn { .. })));
        let typed = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::UInt32, false),
        ]));
        assert!(matches!(op.output_schema(&typed), Err(OpError::ColumnType { .. })));
        let no_id = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        assert!(op.output_schema(&no_id).is_err());
        let mistyped = RecordBatch::try_new(
            typed,
            vec![Arc::new(StringArray::from(vec!["a"])), Arc::new(UInt32Array::from(vec![1]))],
        )
        .unwrap();
        assert!(exact().process(mistyped).is_err());
    }

    #[test]
    fn dedup_settings_are_validated() {
        let spec: DedupSpec = serde_json::from_str(r#"{"column": "body", "exact": false, "near": {}}"#).unwrap();
        assert_eq!(spec.column, "body");
        assert_eq!(spec.near, Some(NearDedupSpec::default()));
        assert!(Dedup::new(spec).is_ok());
        let defaults: DedupSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, DedupSpec::default());
        assert!(serde_json::from_str::<DedupSpec>(r#"{"exactly": true}"#).is_err());
        assert!(serde_json::from_str::<DedupSpec>(r#"{"near": {"treshold": 0.5}}"#).is_err());

        let err = |spec: DedupSpec| match Dedup::new(spec) {
            Err(OpError::InvalidSetting { key, .. }) => key,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(err(DedupSpec { exact: false, ..DedupSpec::default() }), "exact");
        let with_near = |near: NearDedupSpec| DedupSpec { near: Some(near), ..DedupSpec::default() };
        for threshold in [0.0, 1.0, 1.5, -0.2, f64::NAN] {
            let spec = with_near(NearDedupSpec { threshold, ..NearDedupSpec::default() });
            assert_eq!(err(spec), "near.threshold");
        }
        for num_perm in [0, MAX_NUM_PERM + 1] {
            let spec = with_near(NearDedupSpec { num_perm, ..NearDedupSpec::default() });
            assert_eq!(err(spec), "near.num_perm");
        }
        let spec = with_near(NearDedupSpec { shingle: 0, ..NearDedupSpec::default() });
        assert_eq!(err(spec), "near.shingle");
        assert_eq!(err(DedupSpec { column: String::new(), ..DedupSpec::default() }), "column");
    }

    #[test]
    fn dedup_state_keeps_hashes_not_texts() {
        let mut op = Dedup::new(DedupSpec { near: Some(NearDedupSpec::default()), ..DedupSpec::default() }).unwrap();
        let texts: Vec<String> = (0..20).map(|i| words(200 + i, 500).join(" ")).collect();
        let ids: Vec<String> = (0..20).map(hex_id).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let text_refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
        op.process(batch(&id_refs, &text_refs)).unwrap();
        let (bands, _) = op.lsh().unwrap();
        assert_eq!(op.kept(), 20);
        assert_eq!(op.near.as_ref().unwrap().index.len(), 20 * bands);
        assert!(op.named_ids.is_empty());
        let unique: HashSet<u128> = op.exact.as_ref().unwrap().values().copied().collect();
        assert_eq!(unique.len(), 20);
    }
}
