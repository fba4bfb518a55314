//! Ctrl-C (SIGINT) and SIGTERM stop a run cleanly: committed parts stay readable, the manifest says
//! `interrupted`, no temp files are left, and the exit code is 130.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{manifest, parts, read_parquet_dir, write};

fn big_corpus(root: &Path) {
    common::text_corpus(&root.join("corpus"), 600, 40);
    write(
        root,
        "graph.yaml",
        "run: {batch_rows: 16, window: 2, partitions: 2}\nnodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: chunks, kind: chunk, input: docs, max_tokens: 120, overlap: 20}\n  - {id: out, kind: sink, input: chunks, rows_per_part: 50}\n",
    );
}

/// Starts a run into `out` and returns once it has committed two parts.
fn start_and_wait_for_parts(root: &Path) -> std::process::Child {
    let child = common::sdg()
        .current_dir(root)
        .args(["run", "graph.yaml", "-o", "out", "--workers", "2", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while parts(&root.join("out/data")).len() < 2 {
        assert!(Instant::now() < deadline, "no part committed within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn interrupt_with(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    big_corpus(dir.path());
    let child = start_and_wait_for_parts(dir.path());
    let data = dir.path().join("out/data");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "stderr: {}", String::from_utf8_lossy(&output.stderr));

    let m = manifest(&dir.path().join("out"));
    assert_eq!(m["status"], "interrupted");
    let written = m["outputs"]["out"]["rows"].as_u64().unwrap();
    let total_chunks_if_finished = 600 * 40; // at least one chunk per paragraph
    assert!(written > 0 && (written as usize) < total_chunks_if_finished, "stopped early: {written} rows");
    // Every part on disk is complete and listed; no temp files remain.
    let rows: usize = read_parquet_dir(&data).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, written);
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let m = resume_to_the_uninterrupted_output(dir.path());
    assert_eq!(m["status"], "completed");
    assert_eq!(m["resumes"], 1);
    assert_eq!(m["nodes"]["out"]["already_committed"].as_u64().unwrap(), written, "{m:#}");
}

/// `--resume` finishes the job in `root/out`: the same records as a run that was never interrupted (made into
/// `root/reference`), each once. Returns the resumed run's manifest.
fn resume_to_the_uninterrupted_output(root: &Path) -> serde_json::Value {
    let resumed = common::run_in(root, &["run", "graph.yaml", "-o", "out", "--workers", "2", "--quiet", "--resume"]);
    assert!(resumed.status.success(), "{}", common::stderr(&resumed));
    let reference = common::run_in(root, &["run", "graph.yaml", "-o", "reference", "--quiet"]);
    assert!(reference.status.success(), "{}", common::stderr(&reference));
    assert_eq!(sorted_rows(&root.join("out/data")), sorted_rows(&root.join("reference/data")));
    manifest(&root.join("out"))
}

/// Every row under `dir` as JSON, sorted.
fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut rows: Vec<String> = read_parquet_dir(dir)
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(|r| sdg::io::json_rows::row_to_json(b, r).unwrap().to_string()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_the_run_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    big_corpus(dir.path());
    let child = start_and_wait_for_parts(dir.path());
    let data = dir.path().join("out/data");
    // SAFETY: sending signals to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(5));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    // Whatever is visible is complete.
    let _ = read_parquet_dir(&data);

    assert_eq!(resume_to_the_uninterrupted_output(dir.path())["status"], "completed");
}

#[test]
fn sigint_drains_commits_and_marks_the_run_interrupted() {
    interrupt_with(libc::SIGINT);
}

#[test]
fn sigterm_does_the_same() {
    interrupt_with(libc::SIGTERM);
}
