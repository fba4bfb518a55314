//! `sample`: keeps a seeded Bernoulli sample of rows. A row is kept when a hash of the seed and its key
//! column falls below `fraction`, so the same rows are kept whatever the batch sizes, the number of workers
//! or processes, and the order rows arrive in; a larger fraction keeps a superset of a smaller one with the
//! same seed. Rows left out go to rejects with the reason, like any other dropped row.

use serde::Deserialize;

use crate::{OpError, Operator, Output, Reject, require_column, string_column, take_rows};
use arrow::datatypes::{DataType, SchemaRef};

/// A complete config that uses `sample` (paths relative to the repository's `configs/`).
pub const EXAMPLE: &str = "\
# Keeps about half of the sample corpus's chunks: the same half on every run with this seed.
nodes:
  - {id: docs, kind: ingest, paths: [sample-corpus/notes]}
  - {id: chunks, kind: chunk, input: docs, max_tokens: 64}
  - {id: half, kind: sample, input: chunks, fraction: 0.5, seed: 7}
  - {id: out, kind: sink, input: half}
";

/// Settings of a `sample` node.
///
/// ```yaml
/// fraction: 0.1   # share of rows kept, in (0, 1]
/// seed: 7         # another seed keeps another sample
/// key: id         # the string column whose value decides (default `id`)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    pub fraction: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    crate::columns::ID.to_string()
}

/// The `sample` operator.
#[derive(Debug)]
pub struct Sampler {
    spec: SampleSpec,
    /// Rows whose draw is below this are kept: `fraction` of the u64 range.
    threshold: u64,
}

impl Sampler {
    pub fn new(spec: SampleSpec) -> Result<Sampler, OpError> {
        if !(spec.fraction > 0.0 && spec.fraction <= 1.0) {
            return Err(OpError::setting("fraction", format!("must be in (0, 1], found {}", spec.fraction)));
        }
        // 1.0 keeps every row: the threshold is the whole range.
        let threshold = if spec.fraction >= 1.0 { u64::MAX } else { (spec.fraction * u64::MAX as f64) as u64 };
        Ok(Sampler { spec, threshold })
    }

    /// The row's draw: a hash of the seed and the key, uniform over u64.
    fn draw(&self, key: &str) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.spec.seed.to_le_bytes());
        hasher.update(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

impl Operator for Sampler {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, &self.spec.key, &DataType::Utf8)?;
        Ok(input.clone())
    }

    fn process(&mut self, batch: arrow::array::RecordBatch) -> Result<Output, OpError> {
        let keys = string_column(&batch, &self.spec.key)?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut rejects = Vec::new();
        for row in 0..batch.num_rows() {
            // A null key is never drawn: there is nothing stable to hash.
            if !arrow::array::Array::is_null(keys, row) && self.draw(keys.value(row)) <= self.threshold {
                keep.push(row as u32);
            } else {
                let reason = format!("not in the sample (fraction {}, seed {})", self.spec.fraction, self.spec.seed);
                rejects.push(Reject { row, reason });
            }
        }
        Ok(Output { rows: take_rows(&batch, &keep)?, rejects })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{string_batch, strings};

    fn sampler(fraction: f64, seed: u64) -> Sampler {
        Sampler::new(SampleSpec { fraction, seed, key: "id".into() }).unwrap()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("row-{i}")).collect()
    }

    fn kept(op: &mut Sampler, ids: &[String]) -> Vec<String> {
        let refs: Vec<Option<&str>> = ids.iter().map(|id| Some(id.as_str())).collect();
        let out = op.process(string_batch(&[("id", refs)])).unwrap();
        assert_eq!(out.rows.num_rows() + out.rejects.len(), ids.len());
        strings(&out.rows, "id").into_iter().flatten().collect()
    }

    #[test]
    fn keeps_about_the_fraction_and_the_same_rows_however_batched() {
        let all = ids(4000);
        let whole = kept(&mut sampler(0.25, 7), &all);
        assert!((900..1100).contains(&whole.len()), "{}", whole.len());
        let mut pieces = Vec::new();
        let mut op = sampler(0.25, 7);
        for chunk in all.chunks(333).rev() {
            pieces.extend(kept(&mut op, chunk));
        }
        pieces.sort();
        let mut sorted = whole.clone();
        sorted.sort();
        assert_eq!(pieces, sorted);
    }

    #[test]
    fn another_seed_keeps_another_sample_and_a_larger_fraction_a_superset() {
        let all = ids(1000);
        let a = kept(&mut sampler(0.3, 1), &all);
        let b = kept(&mut sampler(0.3, 2), &all);
        assert_ne!(a, b);
        let larger = kept(&mut sampler(0.6, 1), &all);
        assert!(a.iter().all(|id| larger.contains(id)));
        assert_eq!(kept(&mut sampler(1.0, 1), &all).len(), 1000);
    }

    #[test]
    fn bad_fractions_and_missing_keys_are_refused() {
        for fraction in [0.0, -0.5, 1.5, f64::NAN] {
            let error = Sampler::new(SampleSpec { fraction, seed: 0, key: "id".into() }).unwrap_err();
            assert!(error.to_string().contains("fraction"), "{error}");
        }
        let op = Sampler::new(SampleSpec { fraction: 0.5, seed: 0, key: "topic".into() }).unwrap();
        assert!(op.output_schema(&string_batch(&[("id", vec![Some("a")])]).schema()).is_err());
    }
}
