//! Distillation from a teacher alone, on the test model server: evol-instruct evolves seed instructions
//! with lineage, and self-instruct grows a pool that refuses near-duplicates, independent of worker count.

mod common;

use common::{TestServer, read_parquet_dir, run_in, stderr, strings, write};

#[test]
fn evol_instruct_evolves_seeds_with_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let seeds: String = ["Explain photosynthesis to a child.", "Write a haiku about rain.", "Sort a list in Python."]
        .iter()
        .map(|s| format!("{}\n", serde_json::json!({ "instruction": s })))
        .collect();
    write(&root.join("seeds"), "seeds.jsonl", &seeds);
    let server = TestServer::start(&[]);
    write(
        root,
        "graph.yaml",
        &format!(
            "models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\nnodes:\n  - {{id: seeds, kind: ingest, paths: [seeds], fields: {{text: instruction}}}}\n  - {{id: evolved, kind: evol_instruct, input: seeds, model: teacher, column: text, generations: 2, seed: 4, emit: all}}\n  - {{id: out, kind: sink, input: evolved}}\n",
            server.url
        ),
    );
    let output = run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let rows: usize = data.iter().map(|b| b.num_rows()).sum();
    // Two successful generations per seed; the server's structured answers are new text every round.
    assert_eq!(rows, 6, "{:?}", strings(&read_parquet_dir(&root.join("out/rejects")), "reason"));
    let texts = strings(&data, "text");
    assert!(texts.iter().flatten().all(|t| t.starts_with("instruction-")), "{texts:?}");
    let histories = strings(&data, "evol_history");
    for history in histories.iter().flatten() {
        let rounds: serde_json::Value = serde_json::from_str(history).unwrap();
        assert!(rounds.as_array().is_some_and(|r| !r.is_empty()), "{history}");
    }
    assert_eq!(strings(&data, "evol_parent_id").iter().flatten().count(), 6);
}

#[test]
fn self_instruct_pool_rejects_repeats_whatever_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let slots: String = (0..6).map(|i| format!("{}\n", serde_json::json!({ "slot": format!("slot {i}") }))).collect();
    write(&root.join("slots"), "slots.jsonl", &slots);
    // Every call gets the same four candidates: the first slot's are accepted, later ones are repeats.
    let reply = serde_json::json!({"instructions": [
        "List three uses of copper in electrical engineering.",
        "Describe how a suspension bridge carries its load.",
        "Translate the phrase 'good morning' into Spanish and Italian.",
        "Summarize the causes of the French Revolution in two sentences.",
    ]})
    .to_string();
    write(root, "script.json", &serde_json::json!([{"contains": "", "reply": reply}]).to_string());
    let server = TestServer::start(&["--script", root.join("script.json").to_str().unwrap()]);
    write(
        root,
        "graph.yaml",
        &format!(
            "models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\nnodes:\n  - {{id: slots, kind: ingest, paths: [slots], fields: {{text: slot}}}}\n  - id: pool\n    kind: self_instruct\n    input: slots\n    model: teacher\n    seed: 1\n    new_per_call: 4\n    seeds: [\"Give three tips for staying healthy.\", \"Write a short poem about the sea.\"]\n  - {{id: out, kind: sink, input: pool}}\n",
            server.url
        ),
    );
    let mut results = Vec::new();
    for workers in ["1", "3"] {
        let out = format!("out{workers}");
        let output = run_in(root, &["run", "graph.yaml", "-o", &out, "--quiet", "--workers", workers]);
        assert!(output.status.success(), "{}", stderr(&output));
        let data = read_parquet_dir(&root.join(&out).join("data"));
        let mut instructions: Vec<String> = strings(&data, "instruction").into_iter().flatten().collect();
        instructions.sort();
        let rejects = read_parquet_dir(&root.join(&out).join("rejects"));
        let reasons = strings(&rejects, "reason");
        assert_eq!(instructions.len(), 4, "{reasons:?}");
        assert_eq!(reasons.len(), 5, "five slots yield nothing new: {reasons:?}");
        assert!(reasons.iter().flatten().all(|r| r.contains("too similar")), "{reasons:?}");
        results.push(instructions);
    }
    assert_eq!(results[0], results[1]);
}

/// The pool is state: slots must be decided in their source order, whatever order their replies come back
/// in. Two slots (two files, so two timestamps) get near-duplicate instructions; the first slot's reply is
/// slow. In time order the first slot's instruction joins the pool and the second's is refused as too
/// similar. Before the engine honoured `self_instruct`'s declared order, the fast second reply won.
#[test]
fn self_instruct_decides_slots_in_source_order_whatever_the_reply_timing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("slots"), "a.jsonl", "{\"slot\": \"alpha\"}\n");
    write(&root.join("slots"), "b.jsonl", "{\"slot\": \"beta\"}\n");
    let first = "Describe the water cycle in three short steps for a young child.";
    let second = "Describe the water cycle in three short steps for a young kid.";
    let reply = |text: &str| serde_json::json!({"instructions": [text]}).to_string();
    let script = serde_json::json!([
        {"contains": "Slot alpha", "reply": reply(first), "delay_ms": 1500},
        {"contains": "Slot beta", "reply": reply(second)},
    ]);
    write(root, "script.json", &script.to_string());
    let server = TestServer::start(&["--script", root.join("script.json").to_str().unwrap()]);
    write(
        root,
        "graph.yaml",
        &format!(
            "models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\nnodes:\n  - {{id: slots, kind: ingest, paths: [slots], fields: {{text: slot}}}}\n  - id: pool\n    kind: self_instruct\n    input: slots\n    model: teacher\n    seed: 1\n    prompt: \"Slot {{{{ text }}}}: write {{{{ n }}}} new instructions like {{{{ examples | join(', ') }}}} as JSON.\"\n    seeds: [\"Give three tips for staying healthy.\", \"Write a short poem about the sea.\"]\n  - {{id: out, kind: sink, input: pool}}\n",
            server.url
        ),
    );
    let output = run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "1", "--no-cache"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out").join("data"));
    let instructions: Vec<String> = strings(&data, "instruction").into_iter().flatten().collect();
    assert_eq!(instructions, vec![first.to_string()]);
    let rejects = read_parquet_dir(&root.join("out").join("rejects"));
    let reasons: Vec<String> = strings(&rejects, "reason").into_iter().flatten().collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("too similar"), "{reasons:?}");
}
