//! sdg: synthesizes training data for LLMs on a timely dataflow of Arrow record batches.
//!
//! `config` turns YAML into typed values, `plan` checks the graph, `runtime` runs it on timely, `io` reads
//! sources and writes sinks, `run` owns the run directory and its manifest.

pub mod config;
pub mod export;
pub mod io;
pub mod job;
pub mod kinds;
pub mod models;
pub mod plan;
pub mod retrieve;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod testkit;
