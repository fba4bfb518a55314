//! Sources and sinks: everything that touches files.

pub mod atomic;
pub mod formats;
pub mod hub_client;
pub mod hub_datasets;
pub mod hub_push;
pub mod hub_source;
pub mod ingest;
pub mod json_rows;
pub mod passages_source;
pub mod rejects;
pub mod retry;
pub mod sink;
pub mod url_query;
