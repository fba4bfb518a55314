//! The model service: one port for every model call. Operators describe requests; this module performs
//! them with a shared concurrency budget per endpoint, retries, a persistent response cache and accounting.

pub mod cache;
pub mod client;
pub mod limiter;
pub mod local;
pub mod service;
pub mod spec;
pub mod store;

pub use service::{EndpointStats, ModelService};
pub use spec::ModelSpec;
