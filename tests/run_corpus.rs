//! `sdg run` on a mixed-format corpus: Parquet out, rejects for bad files, a manifest whose counts add up.

mod common;

use std::path::Path;

use common::{manifest, read_parquet_dir, run_in, stderr, strings, write};
use sdg::testkit;

fn mixed_corpus(root: &Path) {
    let c = root.join("corpus");
    write(
        &c,
        "plain.txt",
        "Plain text about tides: the moon's gravity raises two bulges of water on opposite sides of the earth.",
    );
    write(
        &c,
        "notes/guide.md",
        "# Guide\n\nMarkdown paragraph on glaciers, which carve valleys into a U shape as they move.",
    );
    write(
        &c,
        "page.html",
        "<html><head><title>Volcanoes</title><script>var hidden = 1;</script></head><body><p>Volcanoes form where magma reaches the surface.</p></body></html>",
    );
    testkit::write_pdf(&c.join("report.pdf"), &["First page on deserts and dunes.", "Second page on oases."]).unwrap();
    testkit::write_docx(&c.join("memo.docx"), &["Memo about river deltas and sediment."]).unwrap();
    write(
        &c,
        "rows/items.jsonl",
        "{\"text\": \"JSONL row on coral reefs.\", \"topic\": \"sea\"}\nnot json at all\n{\"text\": \"JSONL row on kelp forests.\", \"topic\": \"sea\"}\n",
    );
    write(&c, "rows/table.csv", "text,topic\n\"CSV row on mountain ranges.\",land\n");
    testkit::write_parquet(
        &c.join("rows/frame.parquet"),
        &[("text", vec![Some("Parquet row on wetlands."), None]), ("topic", vec![Some("land"), Some("x")])],
    )
    .unwrap();
    testkit::write_corrupt_pdf(&c.join("broken.pdf")).unwrap();
    testkit::write_binary_txt(&c.join("binary.txt")).unwrap();
}

const CONFIG: &str = "run: {batch_rows: 2, partitions: 2}\nnodes:\n  - {id: docs, kind: ingest, paths: [corpus], fields: {keep: [topic]}}\n  - {id: out, kind: sink, input: docs}\n";

#[test]
fn a_mixed_corpus_lands_in_parquet_and_bad_files_in_rejects() {
    let dir = tempfile::tempdir().unwrap();
    mixed_corpus(dir.path());
    write(dir.path(), "graph.yaml", CONFIG);
    let output = run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--workers", "2", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));

    let data = read_parquet_dir(&dir.path().join("out/data"));
    let texts: Vec<String> = strings(&data, "text").into_iter().flatten().collect();
    for expected in [
        "moon's gravity",
        "glaciers",
        "Volcanoes form where magma",
        "deserts and dunes",
        "Second page on oases",
        "river deltas",
        "coral reefs",
        "kelp forests",
        "mountain ranges",
        "wetlands",
    ] {
        assert!(texts.iter().any(|t| t.contains(expected)), "missing {expected:?} in {texts:#?}");
    }
    assert!(!texts.iter().any(|t| t.contains("var hidden")), "script text is not document text");
    assert_eq!(texts.len(), 10, "{texts:#?}");

    let formats: std::collections::BTreeSet<String> = strings(&data, "format").into_iter().flatten().collect();
    let expected: std::collections::BTreeSet<String> =
        ["csv", "docx", "html", "jsonl", "md", "parquet", "pdf", "txt"].iter().map(|s| s.to_string()).collect();
    assert_eq!(formats, expected);
    let paths = strings(&data, "source_path");
    assert!(paths.iter().flatten().all(|p| p.starts_with("corpus/")), "{paths:?}");
    let topics: Vec<Option<String>> = strings(&data, "topic");
    assert_eq!(topics.iter().filter(|t| t.as_deref() == Some("sea")).count(), 2);
    let ids = strings(&data, "id");
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique");

    let rejects = read_parquet_dir(&dir.path().join("out/rejects"));
    let rejected: Vec<(String, String)> = strings(&rejects, "source_path")
        .into_iter()
        .zip(strings(&rejects, "reason"))
        .map(|(p, r)| (p.unwrap_or_default(), r.unwrap_or_default()))
        .collect();
    let reason_for = |path: &str| {
        rejected
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{path} not rejected: {rejected:#?}"))
    };
    assert!(reason_for("corpus/broken.pdf").contains("pdf"), "{rejected:?}");
    assert!(reason_for("corpus/binary.txt").contains("binary"), "{rejected:?}");
    assert!(reason_for("corpus/rows/items.jsonl").contains("line 2"), "{rejected:?}");
    assert!(reason_for("corpus/rows/frame.parquet").contains("row 2"), "{rejected:?}");
    assert_eq!(rejected.len(), 4, "{rejected:#?}");
    assert!(strings(&rejects, "node").iter().all(|n| n.as_deref() == Some("docs")));

    let m = manifest(&dir.path().join("out"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["nodes"]["docs"]["rows_out"], 10);
    assert_eq!(m["nodes"]["docs"]["rejected"], 4);
    assert_eq!(m["nodes"]["docs"]["files_done"], 10, "every file read to the end, bad ones included");
    assert_eq!(m["nodes"]["out"]["rows_out"], 10);
    assert_eq!(m["outputs"]["out"]["rows"], 10);
    assert_eq!(m["rejects"]["rows"], 4);
    assert_eq!(m["workers"], 2);
    let parts = m["outputs"]["out"]["parts"].as_array().unwrap();
    for part in parts {
        let path = dir.path().join("out").join(part["path"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), part["bytes"].as_u64().unwrap());
    }
}

#[test]
fn parquet_parts_are_zstd_compressed_and_carry_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    common::text_corpus(&dir.path().join("corpus"), 3, 5);
    write(
        dir.path(),
        "graph.yaml",
        "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs, columns: [id, text], rename: {text: content}}\n",
    );
    let output = run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
    for part in common::parts(&dir.path().join("out/data")) {
        let file = std::fs::File::open(&part).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        let meta = reader.metadata();
        let column = meta.row_group(0).column(0);
        assert!(matches!(column.compression(), parquet::basic::Compression::ZSTD(_)));
        let names: Vec<String> =
            meta.file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
        assert_eq!(names, vec!["id", "content"]);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("part-") && n.ends_with(".parquet")), "{names:?}");
}

#[test]
fn a_second_run_into_the_same_folder_needs_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    common::text_corpus(&dir.path().join("corpus"), 1, 2);
    write(
        dir.path(),
        "graph.yaml",
        "nodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs}\n",
    );
    assert!(run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--quiet"]).status.success());
    let again = run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--quiet"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a run"), "{}", stderr(&again));
    let forced = run_in(dir.path(), &["run", "graph.yaml", "-o", "out", "--quiet", "--overwrite"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
}
