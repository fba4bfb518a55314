//! Per-node counters, shared between a worker (which adds) and the progress display (which reads).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters of one node on one worker.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    pub busy_nanos: AtomicU64,
    pub text_bytes_in: AtomicU64,
    pub model_calls: AtomicU64,
    pub cache_hits: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Source files finished (sources only).
    pub files_done: AtomicU64,
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
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
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
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Source files read to the end (sources only).
    #[serde(default)]
    pub files_done: u64,
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
        self.cache_hits += other.cache_hits;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.files_done += other.files_done;
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
    fn totals_sum_over_workers() {
        let workers = vec![WorkerCounters::new(2), WorkerCounters::new(2)];
        for w in &workers {
            let n = &w.nodes[1];
            n.add(&n.rows_in, 5);
            n.add(&n.rejected, 1);
        }
        let total = process_totals(&workers, 1);
        assert_eq!((total.rows_in, total.rejected), (10, 2));
        assert_eq!(process_totals(&workers, 0), NodeStats::default());
    }
}
