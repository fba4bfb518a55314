//! Graph building and checking: ids, edges, cycles, settings and schemas between nodes, all before any
//! work is done. Then `explain`, `dot` and `mermaid` renderings of the resolved graph.

pub mod render;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use sdg_operators::{Calls, Exchange, Operator, Order, Shape};

use crate::config::{Config, ConfigError, Diagnostic, NodeConfig, NodeSpec, de};
use crate::kinds::{Built, Role};

/// A node of the checked graph.
#[derive(Debug, Clone)]
pub struct PlanNode {
    pub id: String,
    pub kind: String,
    pub spec: NodeSpec,
    /// Indices of upstream nodes in `Plan::nodes`.
    pub inputs: Vec<usize>,
    /// Schema of the rows this node receives (`None` for sources).
    pub input_schema: Option<SchemaRef>,
    /// Schema of the rows this node emits (for a sink: the rows it writes).
    pub schema: SchemaRef,
    /// How the operator asked to be run (`None` for sources and sinks).
    pub shape: Option<Shape>,
    /// The runtime shell that runs it, matched from the role and shape.
    pub shell: Shell,
    /// A hash of everything this node's output depends on: its settings, the model endpoints it names, the
    /// run seed and its inputs' lineages. A resumed run with an edited config re-runs the nodes whose
    /// lineage changed.
    pub lineage: String,
}

/// A checked graph, nodes in topological order (every node after its inputs).
#[derive(Debug, Clone)]
pub struct Plan {
    pub config: Arc<Config>,
    pub nodes: Vec<PlanNode>,
}

impl Plan {
    /// Loads, parses and checks a config file; every problem is reported at once.
    pub fn from_file(path: &Path) -> Result<Plan, ConfigError> {
        let (config, diagnostics) = Config::load(path)?;
        Plan::build(config, diagnostics)
    }

    /// Checks `config`, adding graph problems to those already found while parsing.
    pub fn build(config: Config, mut diagnostics: Vec<Diagnostic>) -> Result<Plan, ConfigError> {
        let order = graph_order(&config, &mut diagnostics);
        let models: Vec<&str> = config.models.keys().map(String::as_str).collect();
        let mut nodes: Vec<PlanNode> = Vec::new();
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for &i in &order {
            let node = &config.nodes[i];
            settings_problems(node, &models, &mut diagnostics);
            let Some(spec) = node.spec.clone() else { continue };
            let inputs: Option<Vec<usize>> = node.inputs.iter().map(|id| index_of.get(id.as_str()).copied()).collect();
            // An upstream that failed is already reported; its schema is unknown, so skip this one.
            let Some(inputs) = inputs else { continue };
            let input_schema = match inputs.as_slice() {
                [] => None,
                [first, rest @ ..] => {
                    let schema = Arc::clone(&nodes[*first].schema);
                    for &other in rest {
                        if nodes[other].schema != schema {
                            diagnostics.push(node_diag(
                                node,
                                format!(
                                    "inputs `{}` and `{}` have different columns; a node's inputs must share one schema",
                                    nodes[*first].id, nodes[other].id
                                ),
                            ));
                        }
                    }
                    Some(schema)
                }
            };
            let (schema, shape) = match output_schema(&spec, input_schema.as_ref()) {
                Ok(found) => found,
                Err(message) => {
                    let upstream = inputs.first().map(|&u| nodes[u].id.as_str()).unwrap_or("");
                    diagnostics.push(node_diag(node, format!("does not fit its input `{upstream}`: {message}")));
                    continue;
                }
            };
            let role = crate::kinds::find(&node.kind).map_or(Role::Transform, |k| k.role);
            let shell = match shell_for(role, shape.as_ref()) {
                Ok(shell) => shell,
                Err(message) => {
                    diagnostics.push(node_diag(node, message));
                    continue;
                }
            };
            let upstream: Vec<&str> = inputs.iter().map(|&u| nodes[u].lineage.as_str()).collect();
            let lineage = lineage_of(&config, &node.kind, &spec, &upstream);
            index_of.insert(node.id.as_str(), nodes.len());
            nodes.push(PlanNode {
                id: node.id.clone(),
                kind: node.kind.clone(),
                spec,
                inputs,
                input_schema,
                schema,
                shape,
                shell,
                lineage,
            });
        }
        let is_sink = |n: &NodeConfig| crate::kinds::find(&n.kind).is_some_and(|k| k.role == Role::Sink);
        if !config.nodes.iter().any(is_sink) && !config.nodes.is_empty() {
            diagnostics.push(Diagnostic {
                line: config.nodes[0].line,
                col: config.nodes[0].col,
                path: "nodes".to_string(),
                message: "the graph has no `sink` node, so nothing would be written".to_string(),
            });
        }
        if !diagnostics.is_empty() {
            diagnostics.sort();
            diagnostics.dedup();
            return Err(ConfigError { origin: config.origin.clone(), diagnostics });
        }
        Ok(Plan { config: Arc::new(config), nodes })
    }

    pub fn node(&self, id: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Indices of the nodes that read `index`.
    pub fn consumers(&self, index: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&n| self.nodes[n].inputs.contains(&index)).collect()
    }
}

/// The timely shell a node runs in: the runtime matches on it, and `sdg plan` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// Reads files into batches, with backpressure.
    Source,
    /// A pure operator on batches as they arrive (after the exchange, if any).
    Stream,
    /// A pure operator on one complete timestamp at a time, rows sorted by id.
    Ordered,
    /// A model operator: `start`, the model service, `resume`; capabilities held while calls are in flight.
    Model,
    /// A model operator on one complete timestamp at a time, with only that timestamp's calls in flight.
    OrderedModel,
    /// Writes parts of its output buckets, in time order.
    Sink,
}

impl Shell {
    pub fn name(self) -> &'static str {
        match self {
            Shell::Source => "source",
            Shell::Stream => "stream",
            Shell::Ordered => "ordered",
            Shell::Model => "model",
            Shell::OrderedModel => "ordered-model",
            Shell::Sink => "sink",
        }
    }
}

/// The shell for a node of `role` whose operator declared `shape`, or why none fits.
pub fn shell_for(role: Role, shape: Option<&Shape>) -> Result<Shell, String> {
    match (role, shape) {
        (Role::Source, _) => Ok(Shell::Source),
        (Role::Sink, _) => Ok(Shell::Sink),
        (Role::Transform, None) => Err("internal: a transform without an operator".to_string()),
        (Role::Transform, Some(shape)) => Ok(match (shape.calls, shape.order) {
            (Calls::Pure, Order::Arrival) => Shell::Stream,
            (Calls::Pure, Order::Time) => Shell::Ordered,
            (Calls::Models, Order::Arrival) => Shell::Model,
            (Calls::Models, Order::Time) => Shell::OrderedModel,
        }),
    }
}

/// A fresh operator instance for a transform node, or a sink's projection (`None` for sources).
pub fn instantiate(spec: &NodeSpec) -> Result<Option<Box<dyn Operator>>, String> {
    Ok(match spec.build()? {
        Built::Source(_) => None,
        Built::Operator(op) => Some(op),
    })
}

/// Whether an operator's declared shape is one the engine can run as declared: a keyed exchange needs the
/// key function, and a model shape needs endpoints (a pure one none).
fn check_shape(op: &dyn Operator, shape: &Shape) -> Result<(), String> {
    match (&shape.exchange, op.router().is_some()) {
        (Exchange::ByKey(key), false) => {
            return Err(format!("internal: its shape exchanges rows by {key}, but the operator has no router"));
        }
        (Exchange::Local | Exchange::OneWorker, true) => {
            return Err(format!("internal: its shape ({}) has a router it would never use", shape.exchange));
        }
        _ => {}
    }
    match (shape.calls, op.endpoints().is_empty()) {
        (Calls::Models, true) => Err("internal: a model shape, but the operator names no endpoint".to_string()),
        (Calls::Pure, false) => Err("internal: it names model endpoints, but its shape is pure".to_string()),
        _ => Ok(()),
    }
}

/// The node's output schema, and its operator's shape (sources: none; sinks: none, they run in the sink
/// shell whatever their projection declares).
fn output_schema(spec: &NodeSpec, input: Option<&SchemaRef>) -> Result<(SchemaRef, Option<Shape>), String> {
    match (spec.build()?, input) {
        (Built::Source(schema), _) => Ok((schema, None)),
        (Built::Operator(op), Some(input)) => {
            let schema = op.output_schema(input).map_err(|e| e.to_string())?;
            if matches!(spec, NodeSpec::Sink(_)) {
                return Ok((schema, None));
            }
            let shape = op.shape();
            check_shape(op.as_ref(), &shape)?;
            Ok((schema, Some(shape)))
        }
        (Built::Operator(_), None) => Err("needs an input".to_string()),
    }
}

fn settings_problems(node: &NodeConfig, models: &[&str], diagnostics: &mut Vec<Diagnostic>) {
    let problems = match &node.spec {
        Some(NodeSpec::Ingest(spec)) => spec.check(),
        Some(NodeSpec::Hub(spec)) => {
            let mut problems = spec.check();
            for endpoint in spec.endpoints().into_iter().filter(|e| !models.contains(&e.as_str())) {
                problems.push(("judge.model".to_string(), de::unknown_message("model", &endpoint, models)));
            }
            problems
        }
        Some(NodeSpec::Passages(spec)) => {
            let mut problems = spec.check();
            for endpoint in spec.endpoints().into_iter().filter(|e| !models.contains(&e.as_str())) {
                problems.push(("extract.model".to_string(), de::unknown_message("model", &endpoint, models)));
            }
            problems
        }
        Some(NodeSpec::Sink(spec)) => spec.check(),
        Some(spec) => match instantiate(spec) {
            Ok(Some(op)) => op
                .endpoints()
                .into_iter()
                .filter(|name| !models.contains(&name.as_str()))
                .map(|name| {
                    let message = if models.is_empty() {
                        format!("model `{name}` is not defined: add it under `models:`")
                    } else {
                        de::unknown_message("model", &name, models)
                    };
                    ("model".to_string(), message)
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(message) => vec![(String::new(), message)],
        },
        None => Vec::new(),
    };
    for (key, message) in problems {
        let path = if key.is_empty() { node.path.clone() } else { format!("{}.{key}", node.path) };
        let top_key = key.split(['.', '[']).next().unwrap_or("");
        let (line, col) = node.position_of(top_key);
        diagnostics.push(Diagnostic { line, col, path, message });
    }
}

fn node_diag(node: &NodeConfig, message: String) -> Diagnostic {
    Diagnostic {
        line: node.line,
        col: node.col,
        path: node.path.clone(),
        message: format!("node `{}` {message}", node.id),
    }
}

/// Checks ids, edges and arity; returns node indices in topological order (cycles left out, reported).
fn graph_order(config: &Config, diagnostics: &mut Vec<Diagnostic>) -> Vec<usize> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, node) in config.nodes.iter().enumerate() {
        if let Some(&earlier) = first.get(node.id.as_str()) {
            diagnostics.push(Diagnostic {
                line: node.line,
                col: node.col,
                path: format!("{}.id", node.path),
                message: format!(
                    "duplicate node id `{}` (first defined at line {})",
                    node.id, config.nodes[earlier].line
                ),
            });
        } else {
            first.insert(node.id.as_str(), i);
        }
    }
    let ids: Vec<&str> = first.keys().copied().collect();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); config.nodes.len()];
    for (i, node) in config.nodes.iter().enumerate() {
        let is_source = crate::kinds::find(&node.kind).is_some_and(|k| k.role == Role::Source);
        if is_source && !node.inputs.is_empty() {
            diagnostics.push(node_diag(node, "is a source and takes no `input`".to_string()));
        }
        if !is_source && node.inputs.is_empty() && !node.kind.is_empty() {
            diagnostics.push(node_diag(node, "needs an `input` (the id of an upstream node)".to_string()));
        }
        for (input, &(line, col)) in node.inputs.iter().zip(&node.input_positions) {
            match first.get(input.as_str()) {
                Some(&upstream) => {
                    if crate::kinds::find(&config.nodes[upstream].kind).is_some_and(|k| k.role == Role::Sink) {
                        diagnostics.push(Diagnostic {
                            line,
                            col,
                            path: format!("{}.input", node.path),
                            message: format!("`{input}` is a sink and has no output to read"),
                        });
                    }
                    edges[i].push(upstream);
                }
                None => diagnostics.push(Diagnostic {
                    line,
                    col,
                    path: format!("{}.input", node.path),
                    message: de::unknown_message("input node", input, &ids).replacen(
                        "unknown input node",
                        "no node named",
                        1,
                    ),
                }),
            }
        }
    }
    // Kahn's algorithm, visiting in config order so the plan order is stable.
    let n = config.nodes.len();
    let mut remaining: Vec<usize> = edges.iter().map(|e| e.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while let Some(next) = (0..n).find(|&i| !done[i] && remaining[i] == 0) {
        done[next] = true;
        order.push(next);
        for (i, ups) in edges.iter().enumerate() {
            remaining[i] -= ups.iter().filter(|&&u| u == next).count();
        }
    }
    for (i, node) in config.nodes.iter().enumerate() {
        if !done[i] && edges[i].iter().all(|&u| u < n) {
            let in_cycle = reaches(&edges, i, i);
            if in_cycle {
                diagnostics.push(node_diag(node, "is part of a cycle; the graph must flow one way".to_string()));
            }
        }
    }
    order
}

/// Whether `target` is reachable upstream from `from`.
fn reaches(edges: &[Vec<usize>], from: usize, target: usize) -> bool {
    let mut stack = edges[from].clone();
    let mut seen = vec![false; edges.len()];
    while let Some(n) = stack.pop() {
        if n == target {
            return true;
        }
        if !std::mem::replace(&mut seen[n], true) {
            stack.extend(&edges[n]);
        }
    }
    false
}

/// The lineage hash of a node (see [`PlanNode::lineage`]). Settings are hashed through their `Debug` form,
/// which is deterministic for these types (no hash maps). A model counts when its name appears quoted in the
/// settings: that can over-count (a prompt quoting a model's name), which only re-runs more, never less.
fn lineage_of(config: &Config, kind: &str, spec: &NodeSpec, upstream: &[&str]) -> String {
    let settings = format!("{spec:?}");
    let mut hasher = blake3::Hasher::new();
    for part in [kind, settings.as_str(), &config.run.seed.to_string()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for (name, model) in &config.models {
        if settings.contains(&format!("{name:?}")) {
            let model = format!("{name}={model:?}");
            hasher.update(&(model.len() as u64).to_le_bytes());
            hasher.update(model.as_bytes());
        }
    }
    for input in upstream {
        hasher.update(input.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Plan, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        let (config, diags) = Config::parse(text, Path::new("g.yaml"), dir.path()).unwrap();
        Plan::build(config, diags)
    }

    fn messages(error: ConfigError) -> Vec<String> {
        error.diagnostics.into_iter().map(|d| format!("{}: {}", d.line, d.message)).collect()
    }

    #[test]
    fn a_linear_graph_resolves_schemas_in_order() {
        let plan = check(
            "nodes:\n  - {id: out, kind: sink, input: chunks, columns: [id, text]}\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: chunks, kind: chunk, input: docs}\n",
        )
        .unwrap();
        let ids: Vec<_> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, vec!["docs", "chunks", "out"]);
        assert_eq!(plan.nodes[2].schema.fields().len(), 2);
        assert!(plan.nodes[1].schema.field_with_name("chunk_ordinal").is_ok());
    }

    #[test]
    fn reports_duplicates_dangling_inputs_and_cycles_together() {
        let errors = messages(
            check(
                "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: a, kind: filter, input: b, where: {len: {column: text, min: 1}}}\n  - {id: b, kind: filter, input: a, where: {len: {column: text, min: 1}}}\n  - {id: out, kind: sink, input: chnks}\n",
            )
            .unwrap_err(),
        );
        assert!(errors.contains(&"3: duplicate node id `docs` (first defined at line 2)".to_string()), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("4: node `a` is part of a cycle")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("5: node `b` is part of a cycle")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("6: no node named `chnks`")), "{errors:?}");
    }

    #[test]
    fn reports_schema_mismatches() {
        let errors = messages(
            check(
                "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: keep, kind: filter, input: docs, where: {range: {column: chunk_tokens, min: 5}}}\n  - {id: out, kind: sink, input: keep}\n",
            )
            .unwrap_err(),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("3: node `keep` does not fit its input `docs`"), "{errors:?}");
        assert!(errors[0].contains("chunk_tokens"), "{errors:?}");
    }

    #[test]
    fn a_graph_without_sink_is_refused() {
        let errors = messages(check("nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n").unwrap_err());
        assert!(errors[0].contains("no `sink`"), "{errors:?}");
    }
}
