//! Compliance of the table of kinds (`src/kinds.rs`): every kind has an example config that validates and
//! runs with the standard per-node counters, a README section, and (for operators) a file that imports no
//! other operator's file. A new kind that lacks one of these fails here.

mod common;

use std::path::{Path, PathBuf};

use common::{TestHub, TestServer, manifest, run_in, stderr};
use sdg::kinds::{KINDS, Role};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The node of `kind` in its own example (the first one of that kind).
fn node_of<'a>(config: &'a sdg::config::Config, kind: &str) -> &'a sdg::config::NodeConfig {
    config.nodes.iter().find(|n| n.kind == kind).unwrap_or_else(|| panic!("the example of `{kind}` has no such node"))
}

#[test]
fn every_example_validates_and_uses_its_kind() {
    assert!(KINDS.len() >= 15, "{} kinds", KINDS.len());
    for kind in KINDS {
        let origin = PathBuf::from(format!("<example of {}>", kind.name));
        let (config, diagnostics) = sdg::config::Config::parse(kind.example, &origin, &repo().join("configs"))
            .unwrap_or_else(|e| panic!("{e}"));
        let config = match sdg::plan::Plan::build(config, diagnostics) {
            Ok(plan) => plan.config,
            Err(error) => panic!("the example of `{}` does not validate:\n{error}", kind.name),
        };
        node_of(&config, kind.name);
        assert!(!kind.summary.is_empty() && !kind.summary.contains('\n'), "{}", kind.name);
    }
}

#[test]
fn every_kind_has_a_readme_section() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with("### ")).collect();
    for kind in KINDS {
        let named = format!("`{}`", kind.name);
        assert!(headings.iter().any(|h| h.contains(&named)), "the README has no `### ` section naming {named}");
    }
}

#[test]
fn sdg_kinds_lists_the_table_and_prints_examples() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), &["kinds"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    for kind in KINDS {
        assert!(listed.lines().any(|l| l.split_whitespace().next() == Some(kind.name)), "{listed}");
    }
    let output = run_in(dir.path(), &["kinds", "sample"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), sdg::kinds::find("sample").unwrap().example);
    let output = run_in(dir.path(), &["kinds", "smaple"]);
    assert!(!output.status.success());
}

/// A Hub with the dataset the `hub` example names: `openai/gsm8k`, 30 rows of question and `#### answer`.
fn example_hub(root: &Path) -> TestHub {
    let questions: Vec<String> = (0..30).map(|i| format!("What is {i} plus {}?", i * 2)).collect();
    let answers: Vec<String> = (0..30).map(|i| format!("{i} + {} = {}\n#### {}", i * 2, i * 3, i * 3)).collect();
    common::hub_dataset(
        root,
        "openai/gsm8k",
        &[
            ("question", questions.iter().map(|q| Some(q.as_str())).collect()),
            ("answer", answers.iter().map(|a| Some(a.as_str())).collect()),
        ],
    );
    TestHub::start(root, &[])
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs every example (model endpoints on the test server, the Hub on the test hub) and checks that the
/// kind's node reports the standard counters: rows in (or out, for a source), batches, and every row
/// accounted for as out or rejected.
#[test]
fn every_example_runs_and_its_node_counts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The examples' paths are relative to configs/: give them a copy of what they read.
    copy_tree(&repo().join("configs"), root);
    let server = TestServer::start(&["--skill", "teacher-model=1.0", "--skill", "student-model=mixed"]);
    let hub = example_hub(&root.join("hub"));
    for kind in KINDS {
        let text = kind.example.replace("http://127.0.0.1:8000/v1", &server.url);
        let file = format!("example-{}.yaml", kind.name);
        std::fs::write(root.join(&file), &text).unwrap();
        let out = format!("out-{}", kind.name);
        let output = common::sdg()
            .current_dir(root)
            .env("HF_ENDPOINT", &hub.url)
            .args(["run", &file, "-o", &out, "--quiet", "--no-cache", "--workers", "2"])
            .output()
            .unwrap();
        assert!(output.status.success(), "the example of `{}` failed:\n{}", kind.name, stderr(&output));
        let (config, _) = sdg::config::Config::parse(&text, Path::new(&file), root).unwrap();
        let id = &node_of(&config, kind.name).id;
        let found = manifest(&root.join(&out));
        let counters = &found["nodes"][id.as_str()];
        let count =
            |key: &str| counters[key].as_u64().unwrap_or_else(|| panic!("`{}`: no {key} in {counters}", kind.name));
        for key in ["rows_in", "rows_out", "rejected", "batches", "model_calls", "prompt_tokens", "completion_tokens"] {
            count(key);
        }
        assert!(counters["busy_s"].is_number(), "{counters}");
        assert!(count("batches") > 0, "`{}` saw no batch: {counters}", kind.name);
        match kind.role {
            Role::Source => assert!(count("rows_out") > 0, "`{}` made no row: {counters}", kind.name),
            Role::Transform | Role::Sink => {
                assert!(count("rows_in") > 0, "`{}` got no row: {counters}", kind.name);
                assert!(count("rows_out") + count("rejected") > 0, "`{}`: {counters}", kind.name);
            }
        }
        if kind.example_shape().is_some_and(|s| s.calls == sdg_operators::Calls::Models) {
            assert!(count("model_calls") > 0, "`{}` calls models but made no call: {counters}", kind.name);
        }
    }
}

/// An operator file (one with `impl Operator for`) never imports another operator file: what operators
/// share lives in shared modules.
#[test]
fn no_operator_file_imports_another() {
    let dir = repo().join("operators/src");
    let files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    let is_operator = |text: &str| text.contains("impl Operator for") || text.contains("impl crate::Operator for");
    let operators: Vec<&str> = files.iter().filter(|(_, t)| is_operator(t)).map(|(n, _)| n.as_str()).collect();
    assert!(operators.len() >= 12, "{operators:?}");
    let mut found = Vec::new();
    for (name, text) in files.iter().filter(|(_, t)| is_operator(t)) {
        for other in operators.iter().filter(|o| **o != name.as_str()) {
            for pattern in [format!("crate::{other}::"), format!("crate::{other};"), format!("crate::{{{other}")] {
                if text.contains(&pattern) {
                    found.push(format!("{name}.rs uses {pattern}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "operator files import each other: {found:?}");
}
