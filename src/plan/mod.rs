//! Graph building and checking: ids, edges, cycles, settings and schemas between nodes, all before any
//! work is done. Then `explain`, `dot` and `mermaid` renderings of the resolved graph.

pub mod render;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use sdg_operators::Operator;
use sdg_operators::chunk::Chunker;
use sdg_operators::dedup::Dedup;
use sdg_operators::evol_instruct::EvolInstruct;
use sdg_operators::filter::RowFilter;
use sdg_operators::generate::Generate;
use sdg_operators::project::Project;
use sdg_operators::rewrite::Rewrite;
use sdg_operators::score::Score;
use sdg_operators::self_instruct::SelfInstruct;
use sdg_operators::translate::Translate;
use sdg_operators::vote::Vote;

use crate::config::{Config, ConfigError, Diagnostic, NodeConfig, NodeSpec, de};

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
            let schema = match output_schema(&spec, input_schema.as_ref()) {
                Ok(schema) => schema,
                Err(message) => {
                    let upstream = inputs.first().map(|&u| nodes[u].id.as_str()).unwrap_or("");
                    diagnostics.push(node_diag(node, format!("does not fit its input `{upstream}`: {message}")));
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
                lineage,
            });
        }
        if !config.nodes.iter().any(|n| n.kind == "sink") && !config.nodes.is_empty() {
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

/// A fresh operator instance for a transform node (`None` for sources and sinks).
pub fn instantiate(spec: &NodeSpec) -> Result<Option<Box<dyn Operator>>, String> {
    let op: Box<dyn Operator> = match spec {
        NodeSpec::Ingest(_) | NodeSpec::Hub(_) | NodeSpec::Passages(_) => return Ok(None),
        NodeSpec::Sink(sink) => Box::new(Project::new(sink.project())),
        NodeSpec::Chunk(s) => Box::new(Chunker::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Filter(s) => Box::new(RowFilter::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Dedup(s) => Box::new(Dedup::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Generate(g) => Box::new(Generate::new(g.spec.clone(), g.demos.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Vote(s) => Box::new(Vote::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Score(s) => Box::new(Score::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::Rewrite(s) => Box::new(Rewrite::new(s.as_ref().clone()).map_err(|e| e.to_string())?),
        NodeSpec::Translate(s) => Box::new(Translate::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::EvolInstruct(s) => Box::new(EvolInstruct::new(s.clone()).map_err(|e| e.to_string())?),
        NodeSpec::SelfInstruct(s) => Box::new(SelfInstruct::new(s.clone()).map_err(|e| e.to_string())?),
    };
    Ok(Some(op))
}

fn output_schema(spec: &NodeSpec, input: Option<&SchemaRef>) -> Result<SchemaRef, String> {
    match (spec, input) {
        (NodeSpec::Ingest(ingest), _) => Ok(ingest.schema()),
        (NodeSpec::Hub(hub), _) => Ok(hub.ingest(Path::new(".")).schema()),
        (NodeSpec::Passages(passages), _) => Ok(passages.ingest(Path::new(".")).schema()),
        (_, Some(input)) => match instantiate(spec)? {
            Some(op) => op.output_schema(input).map_err(|e| e.to_string()),
            None => Err("internal: no operator".to_string()),
        },
        (_, None) => Err("needs an input".to_string()),
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
        let is_source = matches!(node.kind.as_str(), "ingest" | "hub" | "passages");
        if is_source && !node.inputs.is_empty() {
            diagnostics.push(node_diag(node, "is a source and takes no `input`".to_string()));
        }
        if !is_source && node.inputs.is_empty() && !node.kind.is_empty() {
            diagnostics.push(node_diag(node, "needs an `input` (the id of an upstream node)".to_string()));
        }
        for (input, &(line, col)) in node.inputs.iter().zip(&node.input_positions) {
            match first.get(input.as_str()) {
                Some(&upstream) => {
                    if config.nodes[upstream].kind == "sink" {
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
