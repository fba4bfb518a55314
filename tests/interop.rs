//! Interop: an `sdg export` is read by the real clients its users train with. A generate -> vote -> score run
//! is exported in every format and handed to `tests/interop/check_exports.py`, which loads it with
//! `datasets` and `pyarrow`, checks the Arrow types verl reads and renders the conversations with a Hugging
//! Face tokenizer's chat template. The examples in `train/` are checked to name only columns the export
//! writes.
//!
//! Needs Python's pyarrow, datasets, transformers and jinja2. `.ci/run` installs them; when they are missing the test
//! installs them itself (pip, into the target folder, so `cargo test` works on a fresh machine), and when
//! that fails it fails and says so: it never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, read_parquet_dir, stderr, stdout, write};

const QUESTIONS: usize = 40;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The columns each export format writes (the `sdg export` contract). Nested fields as `parent.child`.
fn contract_columns() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    BTreeMap::from([
        (
            "verl-rl",
            BTreeSet::from([
                "data_source",
                "prompt",
                "ability",
                "reward_model",
                "reward_model.ground_truth",
                "reward_model.style",
                "extra_info",
                "extra_info.index",
                "extra_info.split",
                "extra_info.id",
            ]),
        ),
        (
            "verl-sft",
            BTreeSet::from([
                "messages",
                "prompt",
                "response",
                "extra_info",
                "extra_info.index",
                "extra_info.split",
                "extra_info.id",
            ]),
        ),
        ("messages", BTreeSet::from(["id", "messages"])),
        ("alpaca", BTreeSet::from(["instruction", "input", "output"])),
        ("sharegpt", BTreeSet::from(["conversations"])),
    ])
}

/// One column a training example names, and where.
#[derive(Debug)]
struct ColumnReference {
    file: String,
    format: String,
    column: String,
}

/// The export format a training file reads: the `<format>/` folder its data paths name, or the config its
/// `load_dataset(EXPORT_DIR, "<format>")` asks for.
fn formats_read(text: &str) -> BTreeSet<String> {
    let folder =
        regex::Regex::new(r"/(verl-rl|verl-sft|messages|alpaca|sharegpt|jsonl)/[a-z]+\.(?:parquet|jsonl)").unwrap();
    let config = regex::Regex::new(r#"load_dataset\(\s*[\w.]+\s*,\s*"([\w-]+)""#).unwrap();
    folder.captures_iter(text).chain(config.captures_iter(text)).map(|c| c[1].to_string()).collect()
}

/// Every column the files in `train/` name: verl's `data.*_key=COLUMN` overrides (commented ones too, they
/// are alternatives a user switches to), and TRL's `select_columns([...])` / `dataset_text_field=`.
fn column_references(train: &Path) -> Vec<ColumnReference> {
    let key = regex::Regex::new(r#"\bdata\.(?:[\w.]+\.)?(\w+_key)=["']?([\w.-]+)"#).unwrap();
    let select = regex::Regex::new(r#"(?:select_columns|remove_columns)\(\s*\[([^\]]*)\]"#).unwrap();
    let text_field = regex::Regex::new(r#"dataset_text_field\s*=\s*["']([\w.-]+)["']"#).unwrap();
    let quoted = regex::Regex::new(r#"["']([\w.-]+)["']"#).unwrap();
    let mut references = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(train).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".sh") || name.ends_with(".py")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let formats = formats_read(&text);
        let mut columns = Vec::new();
        for c in key.captures_iter(&text) {
            // Keys that name something other than a column.
            if !matches!(&c[1], "tools_key" | "enable_thinking_key" | "image_key" | "video_key") {
                columns.push(c[2].to_string());
            }
        }
        for c in select.captures_iter(&text) {
            columns.extend(quoted.captures_iter(&c[1]).map(|q| q[1].to_string()));
        }
        columns.extend(text_field.captures_iter(&text).map(|c| c[1].to_string()));
        if columns.is_empty() {
            continue;
        }
        assert_eq!(formats.len(), 1, "{name} must read exactly one export format, reads {formats:?}");
        let format = formats.into_iter().next().unwrap();
        references.extend(columns.into_iter().map(|column| ColumnReference {
            file: name.clone(),
            format: format.clone(),
            column,
        }));
    }
    references
}

/// The column paths (`a`, `a.b`) of a Parquet folder's schema.
fn parquet_columns(dir: &Path) -> BTreeSet<String> {
    let batches = read_parquet_dir(dir);
    let schema = batches.first().unwrap_or_else(|| panic!("{} has rows", dir.display())).schema();
    let mut columns = BTreeSet::new();
    for field in schema.fields() {
        columns.insert(field.name().clone());
        if let arrow::datatypes::DataType::Struct(children) = field.data_type() {
            for child in children {
                columns.insert(format!("{}.{}", field.name(), child.name()));
            }
        }
    }
    columns
}

#[test]
fn training_examples_name_only_columns_the_export_writes() {
    let references = column_references(&repo().join("train"));
    let contract = contract_columns();
    for reference in &references {
        let columns =
            contract.get(reference.format.as_str()).unwrap_or_else(|| panic!("{reference:?}: unknown format"));
        assert!(
            columns.contains(reference.column.as_str()),
            "{} names column `{}` of {}, which writes {columns:?}",
            reference.file,
            reference.column,
            reference.format
        );
    }
    // The parse found what each example reads, so this test cannot pass by finding nothing.
    let found: BTreeSet<(String, String)> = references.iter().map(|r| (r.file.clone(), r.column.clone())).collect();
    for expected in [
        ("verl_sft.sh", "prompt"),
        ("verl_sft.sh", "response"),
        ("verl_sft.sh", "messages"),
        ("verl_grpo.sh", "prompt"),
        ("verl_grpo.sh", "data_source"),
        ("trl_sft.py", "messages"),
    ] {
        assert!(
            found.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not found in {found:?}"
        );
    }
    // The data paths name files the export writes: `<format>/<split>.<parquet|jsonl>`.
    let path = regex::Regex::new(r"/(verl-rl|verl-sft|messages|alpaca|sharegpt|jsonl)/(\w+)\.(\w+)").unwrap();
    for name in ["verl_sft.sh", "verl_grpo.sh"] {
        let text = std::fs::read_to_string(repo().join("train").join(name)).unwrap();
        let paths: Vec<_> = path.captures_iter(&text).collect();
        assert!(!paths.is_empty(), "{name} names no export file");
        for c in paths {
            let extension = if ["verl-rl", "verl-sft", "messages"].contains(&&c[1]) { "parquet" } else { "jsonl" };
            assert!(["train", "validation", "test"].contains(&&c[2]) && &c[3] == extension, "{name}: {}", &c[0]);
        }
    }
    // verl's reward function gets `reward_model.ground_truth` and `extra_info`: the ones it reads exist.
    let reward = std::fs::read_to_string(repo().join("train/reward.py")).unwrap();
    assert!(reward.contains("def compute_score(data_source, solution_str, ground_truth, extra_info=None)"));
    for field in regex::Regex::new(r#"extra_info\[["'](\w+)["']\]|extra_info\.get\(["'](\w+)["']"#)
        .unwrap()
        .captures_iter(&reward)
    {
        let field = field.get(1).or(field.get(2)).unwrap().as_str();
        assert!(
            contract["verl-rl"].contains(format!("extra_info.{field}").as_str()),
            "reward.py reads extra_info.{field}"
        );
    }
}

/// The `PYTHONPATH` under which pyarrow, datasets and transformers import: none when the interpreter has
/// them, else a folder in the target directory that pip fills once.
fn python_clients() -> Option<PathBuf> {
    let imports = |path: Option<&Path>| {
        let mut probe = Command::new("python3");
        probe.args(["-c", "import pyarrow, datasets, transformers, jinja2"]);
        if let Some(path) = path {
            probe.env("PYTHONPATH", path);
        }
        probe.output()
    };
    match imports(None) {
        Ok(output) if output.status.success() => return None,
        Ok(_) => {}
        Err(error) => panic!("the interop test needs python3 with pyarrow, datasets and transformers ({error})"),
    }
    let site = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop-python");
    if !imports(Some(&site)).is_ok_and(|o| o.status.success()) {
        let install = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&site)
            .args(["pyarrow", "datasets", "transformers", "jinja2"])
            .output()
            .expect("pip starts");
        assert!(
            install.status.success() && imports(Some(&site)).is_ok_and(|o| o.status.success()),
            "the interop test needs Python's pyarrow, datasets and transformers, and installing them failed: run \
             `python3 -m pip install pyarrow datasets transformers jinja2` (.ci/run does)\n{}",
            stderr(&install)
        );
    }
    Some(site)
}

fn corpus(root: &Path) {
    common::caravan_corpus(root, QUESTIONS);
}

/// generate -> vote -> score: rows with `question`, `response`, `answer` and `category`.
fn graph(root: &Path, server: &TestServer) {
    write(root, "graph.yaml", &common::verified_qa_graph(&server.url, "batch_rows: 8, partitions: 2", 8, 5, ""));
}

#[test]
fn every_export_format_is_read_by_pyarrow_datasets_and_a_chat_template() {
    let python_path = python_clients();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    corpus(root);
    let server = TestServer::start(&["--skill", "student-model=mixed"]);
    graph(root, &server);

    let run = common::run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet"]);
    assert!(run.status.success(), "sdg run failed\n{}\n{}", stdout(&run), stderr(&run));
    let data = read_parquet_dir(&root.join("out/data"));
    let rows: usize = data.iter().map(|b| b.num_rows()).sum();
    assert!(rows >= QUESTIONS / 2, "the run kept {rows} rows");
    for column in ["question", "response", "answer", "category"] {
        assert!(data[0].column_by_name(column).is_some(), "the run writes `{column}`");
    }

    // The defaults, and a system message (which every conversation then starts with).
    let splits = "train=0.8,validation=0.1,test=0.1";
    let system = "You are a careful tutor. End with the final answer after ####.";
    for (args, export_dir, expected_system) in [
        (vec!["export", "out", "--splits", splits], "out/export", None),
        (
            vec!["export", "out", "-o", "out/export-system", "--splits", splits, "--system", system],
            "out/export-system",
            Some(system),
        ),
    ] {
        let export = common::run_in(root, &args);
        assert!(export.status.success(), "sdg {args:?} failed\n{}\n{}", stdout(&export), stderr(&export));
        let mut check = Command::new("python3");
        if let Some(path) = &python_path {
            check.env("PYTHONPATH", path);
        }
        let check = check
            .arg(repo().join("tests/interop/check_exports.py"))
            .arg(root.join(export_dir))
            .arg("--reward")
            .arg(repo().join("train/reward.py"))
            .args(expected_system.map(|text| ["--system", text]).into_iter().flatten())
            .env("HF_HOME", root.join("hf-home"))
            .output()
            .expect("python3 starts");
        println!("{}", stdout(&check));
        eprintln!("{}", stderr(&check));
        assert!(
            check.status.success(),
            "check_exports.py {export_dir} failed:\n{}\n{}",
            stdout(&check),
            stderr(&check)
        );
    }
    // The training examples name columns of this very export, not only of the contract.
    for reference in column_references(&repo().join("train")) {
        if !["verl-rl", "verl-sft", "messages"].contains(&reference.format.as_str()) {
            continue;
        }
        let columns = parquet_columns(&root.join("out/export").join(&reference.format));
        assert!(
            columns.contains(&reference.column),
            "train/{} names `{}`, but the exported {} has {columns:?}",
            reference.file,
            reference.column,
            reference.format
        );
    }
}
