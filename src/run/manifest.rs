//! `manifest.json`: what ran, on what config, with what result.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::sink::CommittedPart;
use crate::runtime::metrics::NodeStats;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Interrupted,
    Failed,
}

/// A node as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    pub id: String,
    pub kind: String,
    pub inputs: Vec<String>,
    pub columns: Vec<String>,
}

/// What one sink wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub dir: String,
    pub rows: u64,
    pub bytes: u64,
    pub parts: Vec<CommittedPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub sdg_version: String,
    pub status: RunStatus,
    pub config_hash: String,
    pub config_origin: String,
    /// The config text (for a recipe: the recipe as written), so the run can be reproduced and described.
    #[serde(default)]
    pub config: String,
    pub started_at_unix: u64,
    pub elapsed_s: f64,
    pub workers: usize,
    pub processes: usize,
    pub graph: Vec<GraphNode>,
    /// Per-node counts, summed over workers and processes.
    pub nodes: BTreeMap<String, NodeStats>,
    /// Per-sink outputs.
    pub outputs: BTreeMap<String, OutputSummary>,
    pub rejects: OutputSummary,
    /// Errors that ended the run early (a sink that could not write, ...).
    pub errors: Vec<String>,
    /// Per model endpoint: requests, retries, cache hits and misses, tokens, latency percentiles, cost.
    #[serde(default)]
    pub models: BTreeMap<String, crate::models::EndpointStats>,
    /// Per node, the hash of what its output depends on (`sdg run --resume --force` re-runs the changed ones).
    #[serde(default)]
    pub lineage: BTreeMap<String, String>,
    /// How many times this run was resumed (`sdg run --resume`).
    #[serde(default)]
    pub resumes: u32,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        crate::io::sink::write_atomic(path, &bytes)
    }

    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            sdg_version: "0.1.0".into(),
            status: RunStatus::Completed,
            config_hash: "abc".into(),
            config_origin: "x.yaml".into(),
            config: "nodes: []\n".into(),
            started_at_unix: 1,
            elapsed_s: 0.5,
            workers: 2,
            processes: 1,
            graph: vec![GraphNode {
                id: "docs".into(),
                kind: "ingest".into(),
                inputs: vec![],
                columns: vec!["id".into()],
            }],
            nodes: [("docs".to_string(), NodeStats { rows_out: 3, ..Default::default() })].into(),
            outputs: BTreeMap::new(),
            rejects: OutputSummary::default(),
            errors: vec![],
            models: BTreeMap::new(),
            lineage: [("docs".to_string(), "00ff".to_string())].into(),
            resumes: 1,
        };
        let path = dir.path().join("manifest.json");
        manifest.write(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), manifest);
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"status\": \"completed\""));
    }
}
