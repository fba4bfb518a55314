//! The same config gives byte-identical `data/` with 1 worker, 2 workers, and 2 processes.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;

use common::{run_in, stderr, tree_bytes, write};

const GRAPH: &str = "run: {batch_rows: 7, window: 2, partitions: 3}\nnodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: chunks, kind: chunk, input: docs, max_tokens: 180, overlap: 30}\n  - {id: long, kind: filter, input: chunks, where: {len: {column: text, min: 40}}}\n  - {id: unique, kind: dedup, input: long}\n  - {id: out, kind: sink, input: unique, rows_per_part: 50}\n";

fn corpus(root: &Path) {
    common::text_corpus(&root.join("corpus"), 9, 12);
    // Duplicates across files, so dedup decisions cross workers.
    let dup = "This exact paragraph appears in two different files and must be kept only once by dedup.\n";
    write(root, "corpus/dup-a.txt", dup);
    write(root, "corpus/dup-b.txt", dup);
    write(root, "graph.yaml", GRAPH);
}

fn run(root: &Path, out: &str, workers: &str) {
    let output = run_in(root, &["run", "graph.yaml", "-o", out, "--workers", workers, "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn one_and_two_workers_write_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    run(dir.path(), "one", "1");
    run(dir.path(), "two", "2");
    let one = tree_bytes(&dir.path().join("one/data"));
    let two = tree_bytes(&dir.path().join("two/data"));
    assert!(one.len() >= 3, "several parts: {:?}", one.keys().collect::<Vec<_>>());
    assert_eq!(one.keys().collect::<Vec<_>>(), two.keys().collect::<Vec<_>>());
    assert!(one == two, "part contents differ between 1 and 2 workers");
    assert_eq!(tree_bytes(&dir.path().join("one/rejects")), tree_bytes(&dir.path().join("two/rejects")));
    let m = common::manifest(&dir.path().join("two"));
    assert_eq!(m["nodes"]["unique"]["rejected"], 1, "the cross-file duplicate is removed once");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_processes_give_the_same_records_as_one() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    run(dir.path(), "single", "1");
    let hostfile = dir.path().join("hosts.txt");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let spawn = |index: &str| {
        common::sdg()
            .current_dir(dir.path())
            .args(["run", "graph.yaml", "-o", "cluster", "--workers", "1", "--processes", "2", "--process", index])
            .arg("--hostfile")
            .arg(&hostfile)
            .arg("--quiet")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("0");
    let second = spawn("1");
    let a = first.wait_with_output().unwrap();
    let b = second.wait_with_output().unwrap();
    assert!(a.status.success(), "process 0: {}", stderr(&a));
    assert!(b.status.success(), "process 1: {}", stderr(&b));

    let single = common::read_parquet_dir(&dir.path().join("single/data"));
    let cluster = common::read_parquet_dir(&dir.path().join("cluster/data"));
    let rows = |batches: &[arrow::array::RecordBatch]| {
        let mut rows: Vec<(Option<String>, Option<String>)> =
            common::strings(batches, "id").into_iter().zip(common::strings(batches, "text")).collect();
        rows.sort();
        rows
    };
    let expected = rows(&single);
    assert!(expected.len() > 50, "a real corpus: {} rows", expected.len());
    assert_eq!(rows(&cluster), expected);
    assert_eq!(tree_bytes(&dir.path().join("single/data")), tree_bytes(&dir.path().join("cluster/data")));
    let m = common::manifest(&dir.path().join("cluster"));
    assert_eq!(m["processes"], 2);
    assert_eq!(m["outputs"]["out"]["rows"].as_u64().unwrap() as usize, expected.len());
}
