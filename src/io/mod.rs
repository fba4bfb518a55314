//! Sources and sinks: everything that touches files.

pub mod formats;
pub mod hub_datasets;
pub mod hub_push;
pub mod hub_source;
pub mod ingest;
pub mod json_rows;
pub mod passages_source;
pub mod rejects;
pub mod sink;
pub mod url_query;
