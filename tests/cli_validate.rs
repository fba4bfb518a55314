//! `sdg validate` and `sdg plan` as a user runs them.

mod common;

use std::path::Path;

use common::{assert_golden, run_in, stderr, stdout};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

#[test]
fn validate_reports_every_error_with_file_line_and_key() {
    let output = run_in(fixtures(), &["validate", "bad.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).is_empty());
    assert_golden("bad.yaml.stderr", &stderr(&output));
}

#[test]
fn validate_accepts_a_good_config() {
    let output = run_in(fixtures(), &["validate", "good.yaml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("good.yaml: ok (3 nodes, 2 edges, config "), "{}", stdout(&output));
}

#[test]
fn validate_reports_yaml_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "broken.yaml", "nodes:\n  - {id: a, kind: ingest\n");
    let output = run_in(dir.path(), &["validate", "broken.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.starts_with("broken.yaml:"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
}

#[test]
fn plan_prints_text_dot_and_mermaid() {
    let text = stdout(&run_in(fixtures(), &["plan", "good.yaml"]));
    assert!(text.contains("docs [ingest] (source)"), "{text}");
    assert!(text.contains("chunks [chunk] <- docs"), "{text}");
    assert!(text.contains("out [sink] <- chunks\n  columns: id: Utf8, doc_id: Utf8, text: Utf8"), "{text}");

    let dot = stdout(&run_in(fixtures(), &["plan", "good.yaml", "--format", "dot"]));
    assert!(dot.starts_with("digraph sdg {"), "{dot}");
    assert!(dot.contains("\"docs\" -> \"chunks\";") && dot.contains("\"chunks\" -> \"out\";"), "{dot}");

    let mermaid = stdout(&run_in(fixtures(), &["plan", "good.yaml", "--format", "mermaid"]));
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("n0 --> n1") && mermaid.contains("n1 --> n2"), "{mermaid}");
}

#[test]
fn run_refuses_an_invalid_config_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures().join("bad.yaml");
    let out = dir.path().join("out");
    let output = common::sdg().args(["run", config.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("nothing was run"));
    assert!(!out.exists(), "no run directory is created for an invalid config");
}

/// Every example in `configs/` stays valid as the code changes.
#[test]
fn every_shipped_config_validates() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let output = common::sdg().args(["validate", path.to_str().unwrap()]).output().unwrap();
            assert!(output.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} configs");
}

/// A build without the `cuda` feature refuses `device: cuda` at validation, naming the file, line and key,
/// instead of running the model on the CPU behind the user's back.
#[cfg(not(feature = "cuda"))]
#[test]
fn validate_refuses_a_cuda_device_in_a_build_without_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let config = "models:\n  teacher:\n    provider: local\n    model: smollm2-135m-instruct\n    device: cuda\nnodes:\n  \
                  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs, columns: [id, text]}\n";
    common::write(dir.path(), "gpu.yaml", config);
    std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
    let output = run_in(dir.path(), &["validate", "gpu.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("gpu.yaml:5") && err.contains("device") && err.contains("--features cuda"), "{err}");
}
