//! Drawing a run's sources before the graph starts: Hub samples and retrieved passages become `ingest`
//! nodes over the files they were drawn into. Their model calls (dataset judging, query writing) go through
//! one model service with the run's cache and retry rules.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sdg_operators::model::ModelRequest;

use crate::config::NodeSpec;
use crate::models::service::ModelService;
use crate::models::{EndpointStats, ModelSpec};
use crate::plan::Plan;

/// Why a source could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum DrawError {
    #[error("node `{node}`: {message}")]
    Node { node: String, message: String },
    #[error("cannot make a staging folder: {0}")]
    Staging(std::io::Error),
}

/// Model calls made before the run. One service serves them all: it is built on first use with only the
/// endpoints the drawing nodes name (a local model is loaded once, not once per call), and dropped before
/// the engine opens the response cache itself.
struct DrawModels {
    specs: BTreeMap<String, ModelSpec>,
    cache: Option<PathBuf>,
    service: OnceCell<ModelService>,
}

impl DrawModels {
    fn new(plan: &Plan, cache_dir: Option<&Path>) -> Self {
        let endpoints: Vec<String> = plan
            .nodes
            .iter()
            .flat_map(|node| match &node.spec {
                NodeSpec::Hub(hub) => hub.endpoints(),
                NodeSpec::Passages(passages) => passages.endpoints(),
                _ => Vec::new(),
            })
            .collect();
        let specs = plan
            .config
            .models
            .iter()
            .filter(|(name, _)| endpoints.contains(name))
            .map(|(name, spec)| (name.clone(), spec.clone()))
            .collect();
        DrawModels { specs, cache: cache_dir.map(|dir| dir.join("responses.redb")), service: OnceCell::new() }
    }

    /// What the calls made so far cost, per endpoint (empty when none was made).
    fn stats(&self) -> BTreeMap<String, EndpointStats> {
        self.service.get().map(ModelService::stats).unwrap_or_default()
    }

    fn ask(&self, request: ModelRequest) -> Result<String, String> {
        let service = match self.service.get() {
            Some(service) => service,
            None => {
                let built = ModelService::new(&self.specs, self.cache.as_deref())?;
                self.service.get_or_init(|| built)
            }
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        service.submit(vec![request], move |responses| {
            let _ = sender.send(responses);
        });
        let responses = receiver.recv().map_err(|e| e.to_string())?;
        service.flush();
        match responses.into_iter().next() {
            Some(Ok(reply)) => Ok(reply.texts.into_iter().next().unwrap_or_default()),
            Some(Err(error)) => Err(format!("the pre-run model call failed: {error}")),
            None => Err("the pre-run model call got no reply".to_string()),
        }
    }
}

/// Draws every Hub and passages source of `plan` (cached beside the response cache, or in a staging folder
/// that lives as long as the returned guard) and turns it into an `ingest` node. Returns what the model
/// calls cost, per endpoint.
pub fn draw_sources(
    plan: &mut Plan,
    cache_dir: Option<&Path>,
) -> Result<(BTreeMap<String, EndpointStats>, tempfile::TempDir), DrawError> {
    let staging = tempfile::tempdir().map_err(DrawError::Staging)?;
    let samples = crate::io::hub_source::samples_root(cache_dir, staging.path());
    let models = DrawModels::new(plan, cache_dir);
    for node in &mut plan.nodes {
        let drawn = match &node.spec {
            NodeSpec::Hub(hub) => hub
                .materialize(&samples, &|request| models.ask(request))
                .map_err(|e| format!("cannot read the Hub datasets: {e}")),
            NodeSpec::Passages(passages) => {
                let reply = match passages.extraction_request() {
                    None => None,
                    Some(request) => Some(
                        models.ask(request).map_err(|message| DrawError::Node { node: node.id.clone(), message })?,
                    ),
                };
                passages
                    .all_queries(reply.as_deref())
                    .and_then(|queries| passages.materialize(&node.id, &samples.join("passages"), &queries))
                    .map_err(|e| format!("cannot retrieve passages: {e}"))
            }
            _ => continue,
        };
        match drawn {
            Ok(ingest) => node.spec = NodeSpec::Ingest(ingest),
            Err(message) => return Err(DrawError::Node { node: node.id.clone(), message }),
        }
    }
    Ok((models.stats(), staging))
}
