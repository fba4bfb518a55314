//! Text, Graphviz DOT and Mermaid renderings of a plan.

use std::fmt::Write;

use arrow::datatypes::Schema;

use super::Plan;

fn columns(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}{}", f.name(), f.data_type(), if f.is_nullable() { "?" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resolved graph for people: nodes in run order, their kinds, inputs and output columns.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph from {} (config {}), {} nodes",
        plan.config.origin.display(),
        &plan.config.hash[..12],
        plan.nodes.len()
    );
    let run = &plan.config.run;
    let _ = writeln!(
        out,
        "run: batch_rows={} batch_bytes={} window={} partitions={} seed={}",
        run.batch_rows, run.batch_bytes, run.window, run.partitions, run.seed
    );
    for node in &plan.nodes {
        let inputs: Vec<&str> = node.inputs.iter().map(|&i| plan.nodes[i].id.as_str()).collect();
        let from = if inputs.is_empty() { "(source)".to_string() } else { format!("<- {}", inputs.join(", ")) };
        let _ = writeln!(out, "\n{} [{}] {}", node.id, node.kind, from);
        let _ = writeln!(out, "  columns: {}", columns(&node.schema));
        let _ = writeln!(out, "  runs in: {}", execution(node));
    }
    out
}

/// How a node runs, the way an EXPLAIN shows it: the shell, the operator's declared shape and the exchange
/// of rows before it. Sinks route rows to the owner of their output bucket.
fn execution(node: &super::PlanNode) -> String {
    let shell = node.shell.name();
    match (&node.shape, node.shell) {
        (Some(shape), _) => format!("{shell} shell ({shape}); exchange: {}", shape.exchange),
        (None, super::Shell::Sink) => format!("{shell} shell; exchange: by output bucket (hash of `id`)"),
        (None, _) => format!("{shell} shell"),
    }
}

/// One short line of how a node runs, for the graph renderings.
fn execution_label(node: &super::PlanNode) -> String {
    match &node.shape {
        Some(shape) if shape.exchange != sdg_operators::Exchange::Local => {
            format!("{} | {}", node.shell.name(), shape.exchange)
        }
        _ => node.shell.name().to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph sdg {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for node in &plan.nodes {
        let cols: Vec<&str> = node.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n[{}]\\n{}\\n{}\"];",
            escape(&node.id),
            escape(&node.id),
            node.kind,
            escape(&execution_label(node)),
            escape(&cols.join(", "))
        );
    }
    for node in &plan.nodes {
        for &input in &node.inputs {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", escape(&plan.nodes[input].id), escape(&node.id));
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_id(index: usize) -> String {
    format!("n{index}")
}

/// Mermaid flowchart.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (i, node) in plan.nodes.iter().enumerate() {
        let label = format!("{}<br/>[{}]<br/>{}", node.id, node.kind, execution_label(node)).replace('"', "#quot;");
        let _ = writeln!(out, "  {}[\"{}\"]", mermaid_id(i), label);
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        for &input in &node.inputs {
            let _ = writeln!(out, "  {} --> {}", mermaid_id(input), mermaid_id(i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn plan() -> Plan {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c")).unwrap();
        let (config, diags) = Config::parse(
            "nodes:\n  - {id: docs, kind: ingest, paths: [c]}\n  - {id: out, kind: sink, input: docs, columns: [id]}\n",
            Path::new("g.yaml"),
            dir.path(),
        )
        .unwrap();
        Plan::build(config, diags).unwrap()
    }

    #[test]
    fn renders_every_format() {
        let plan = plan();
        let text = text(&plan);
        assert!(text.contains("docs [ingest] (source)"), "{text}");
        assert!(text.contains("out [sink] <- docs\n  columns: id: Utf8"), "{text}");
        let dot = dot(&plan);
        assert!(dot.starts_with("digraph sdg {"), "{dot}");
        assert!(dot.contains("\"docs\" -> \"out\";"), "{dot}");
        let mermaid = mermaid(&plan);
        // Each node's label names the shell it runs in (and any exchange before it).
        assert_eq!(
            mermaid,
            "flowchart LR\n  n0[\"docs<br/>[ingest]<br/>source\"]\n  n1[\"out<br/>[sink]<br/>sink\"]\n  n0 --> n1\n"
        );
        assert!(
            text.contains("out [sink] <- docs\n  columns: id: Utf8\n  runs in: sink shell; exchange: by output bucket")
        );
    }
}
