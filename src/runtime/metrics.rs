//! Per-node counters, shared between a worker (which adds) and the progress display (which reads).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters of one node on one worker.
#[derive(Debug)]
pub struct NodeCounters {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    pub busy_nanos: AtomicU64,
    pub text_bytes_in: AtomicU64,
    pub model_calls: AtomicU64,
    /// Requests handed to the model service; those not answered yet are in flight.
    pub requests_sent: AtomicU64,
    pub cache_hits: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Source files finished (sources only).
    pub files_done: AtomicU64,
    /// Rows a sink skipped because an earlier process of this run committed them (resume).
    pub already_committed: AtomicU64,
    /// Model call latencies (not cached): a log-scale histogram, see [`latency_bucket`].
    pub latency_buckets: Vec<AtomicU64>,
}

impl Default for NodeCounters {
    fn default() -> Self {
        NodeCounters {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            text_bytes_in: AtomicU64::new(0),
            model_calls: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            already_committed: AtomicU64::new(0),
            latency_buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Histogram buckets: four per doubling, from 1 ms to about 18 hours.
pub const LATENCY_BUCKETS: usize = 96;

/// The bucket of a latency: `4 * log2(ms)`, so each bucket spans ~19%.
pub fn latency_bucket(ms: f64) -> usize {
    ((ms.max(1.0).log2() * 4.0) as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
fn bucket_upper_ms(bucket: usize) -> f64 {
    2f64.powf((bucket + 1) as f64 / 4.0)
}

/// The `q` quantile (0..1) of a latency histogram, as its bucket's upper bound; 0 when empty.
pub fn histogram_quantile(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_ms(bucket);
        }
    }
    bucket_upper_ms(buckets.len() - 1)
}

impl NodeCounters {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        let _ = self;
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn busy(&self, elapsed: Duration) {
        self.busy_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NodeStats {
        NodeStats {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            busy_s: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            text_bytes_in: self.text_bytes_in.load(Ordering::Relaxed),
            model_calls: self.model_calls.load(Ordering::Relaxed),
            in_flight: self
                .requests_sent
                .load(Ordering::Relaxed)
                .saturating_sub(self.model_calls.load(Ordering::Relaxed)),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            already_committed: self.already_committed.load(Ordering::Relaxed),
            latency_p50_ms: 0.0,
            latency_p95_ms: 0.0,
            latency_histogram: self.latency_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// Counters of every node on one worker, indexed like the plan's nodes.
#[derive(Debug)]
pub struct WorkerCounters {
    pub nodes: Vec<NodeCounters>,
}

impl WorkerCounters {
    pub fn new(nodes: usize) -> Arc<Self> {
        Arc::new(WorkerCounters { nodes: (0..nodes).map(|_| NodeCounters::default()).collect() })
    }
}

/// A node's totals, as written in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub rows_in: u64,
    pub rows_out: u64,
    pub rejected: u64,
    pub batches: u64,
    /// Time spent inside the node's operator, summed over workers.
    pub busy_s: f64,
    pub text_bytes_in: u64,
    /// Model requests this node made (answered from the cache or not) and the tokens spent on it
    /// (cached answers cost nothing this run).
    #[serde(default)]
    pub model_calls: u64,
    /// Requests sent and not answered yet (live progress; 0 once a run ends).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub in_flight: u64,
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Source files read to the end (sources only).
    #[serde(default)]
    pub files_done: u64,
    /// Rows a sink found already committed by an earlier process of a resumed run, and skipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub already_committed: u64,
    /// Latency of this node's model calls that were not cached (bucket upper bounds, ~19% resolution).
    #[serde(default)]
    pub latency_p50_ms: f64,
    #[serde(default)]
    pub latency_p95_ms: f64,
    /// The histogram behind the percentiles; carried between workers, left out of the manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_histogram: Vec<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl NodeStats {
    pub fn merge(&mut self, other: &NodeStats) {
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.rejected += other.rejected;
        self.batches += other.batches;
        self.busy_s += other.busy_s;
        self.text_bytes_in += other.text_bytes_in;
        self.model_calls += other.model_calls;
        self.in_flight += other.in_flight;
        self.cache_hits += other.cache_hits;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.files_done += other.files_done;
        self.already_committed += other.already_committed;
        if self.latency_histogram.len() < other.latency_histogram.len() {
            self.latency_histogram.resize(other.latency_histogram.len(), 0);
        }
        for (mine, theirs) in self.latency_histogram.iter_mut().zip(&other.latency_histogram) {
            *mine += theirs;
        }
        self.latency_p50_ms = histogram_quantile(&self.latency_histogram, 0.50);
        self.latency_p95_ms = histogram_quantile(&self.latency_histogram, 0.95);
    }
}

/// Sums one node over all workers of this process (for the progress display).
pub fn process_totals(workers: &[Arc<WorkerCounters>], node: usize) -> NodeStats {
    let mut total = NodeStats::default();
    for worker in workers {
        total.merge(&worker.nodes[node].snapshot());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_merged_histogram() {
        let a = WorkerCounters::new(1);
        let b = WorkerCounters::new(1);
        for ms in [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0] {
            a.nodes[0].latency_buckets[latency_bucket(ms)].fetch_add(1, Ordering::Relaxed);
        }
        b.nodes[0].latency_buckets[latency_bucket(1000.0)].fetch_add(1, Ordering::Relaxed);
        let total = process_totals(&[a, b], 0);
        assert!((10.0..12.0).contains(&total.latency_p50_ms), "{}", total.latency_p50_ms);
        assert!((1000.0..1200.0).contains(&total.latency_p95_ms), "{}", total.latency_p95_ms);
        assert_eq!(histogram_quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn totals_sum_over_workers() {
        let workers = vec![WorkerCounters::new(2), WorkerCounters::new(2)];
        for w in &workers {
            let n = &w.nodes[1];
            n.add(&n.rows_in, 5);
            n.add(&n.rejected, 1);
        }
        let total = process_totals(&workers, 1);
        assert_eq!((total.rows_in, total.rejected), (10, 2));
        let untouched = process_totals(&workers, 0);
        assert_eq!((untouched.rows_in, untouched.rows_out, untouched.rejected), (0, 0, 0));
        assert!(untouched.latency_histogram.iter().all(|&n| n == 0));
        assert_eq!(untouched.latency_p50_ms, 0.0);
    }
}
