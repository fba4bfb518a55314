//! Filter and dedup drop rows into `rejects/` with their reasons; a JSONL sink writes selected, renamed columns.

mod common;

use common::{manifest, read_parquet_dir, run_in, stderr, strings, write};

#[test]
fn filter_and_dedup_rejects_carry_reasons_and_jsonl_sink_writes_objects() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("corpus");
    write(&c, "a.txt", "The first document talks about river deltas and the sediment they carry to the sea.");
    write(&c, "b.txt", "The FIRST document talks about river deltas, and the sediment they carry to the sea!");
    write(&c, "c.txt", "Too short.");
    write(
        &c,
        "d.txt",
        "Ein deutscher Absatz über Flussdeltas und die Sedimente, die sie ins Meer tragen, wird gefiltert.",
    );
    write(
        dir.path(),
        "graph.yaml",
        "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - id: clean\n    kind: filter\n    input: docs\n    where: {all: [{len: {column: text, min: 20}}, {language: {column: text, is: [en]}}]}\n  - {id: unique, kind: dedup, input: clean}\n  - {id: out, kind: sink, input: unique, format: jsonl, columns: [id, text, source_path], rename: {text: content}}\n",
    );
    let output = run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("out/data")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
    }
    assert_eq!(lines.len(), 1, "{lines:?}");
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["id", "content", "source_path"]);
    assert!(lines[0]["content"].as_str().unwrap().contains("river deltas"));

    let rejects = read_parquet_dir(&dir.path().join("out/rejects"));
    let mut found: Vec<(String, String, String)> = strings(&rejects, "node")
        .into_iter()
        .zip(strings(&rejects, "source_path"))
        .zip(strings(&rejects, "reason"))
        .map(|((n, p), r)| (n.unwrap(), p.unwrap(), r.unwrap()))
        .collect();
    found.sort();
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].0, "clean");
    assert_eq!(found[0].1, "corpus/c.txt");
    assert_eq!(found[0].2, "len(text) = 10 < min 20");
    assert_eq!(found[1].1, "corpus/d.txt");
    assert!(found[1].2.starts_with("language(text) = de"), "{found:?}");
    assert_eq!(found[2].0, "unique");
    let kept_id = lines[0]["id"].as_str().unwrap();
    assert_eq!(found[2].2, format!("exact duplicate of {kept_id}"));
    // The reject keeps the dropped row itself, as JSON.
    let records = strings(&rejects, "record");
    assert!(records.iter().flatten().any(|r| r.contains("Too short.")));

    let m = manifest(&dir.path().join("out"));
    assert_eq!(m["nodes"]["clean"]["rows_in"], 4);
    assert_eq!(m["nodes"]["clean"]["rejected"], 2);
    assert_eq!(m["nodes"]["unique"]["rejected"], 1);
    assert_eq!(m["outputs"]["out"]["rows"], 1);
}
