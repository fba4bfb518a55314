//! `sdg export`: every training format, splits by a hash of the id, category filters, and a dataset card
//! compared with a golden file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{TestServer, assert_golden, read_parquet_dir, read_parquet_file, run_in, stderr, stdout, strings, write};

/// A generate -> vote -> score run on the test server (no faults, so its accounting is the same every time).
fn run(root: &Path, server: &TestServer) {
    for i in 0..24 {
        write(
            &root.join("corpus"),
            &format!("p{i:02}.txt"),
            &format!("Passage {i}: the orchard has {} apple trees and {} pear trees.", i + 4, 2 * i + 1),
        );
    }
    write(root, "graph.yaml", &common::verified_qa_graph(&server.url, "batch_rows: 8, partitions: 2", 8, 1, ""));
    let output = run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_format_is_written_per_split_with_a_card() {
    let server = TestServer::start(&["--skill", "student-model=mixed"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run(root, &server);
    let data = read_parquet_dir(&root.join("out/data"));
    let ids: Vec<String> = strings(&data, "id").into_iter().flatten().collect();
    assert_eq!(ids.len(), 24);
    // The run's own card describes data/ as it is.
    let run_card = std::fs::read_to_string(root.join("out/README.md")).unwrap();
    assert!(run_card.contains("- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet"));
    assert!(run_card.contains("| learnable |") && run_card.contains("## Config"), "{run_card}");

    let export = run_in(
        root,
        &["export", "out", "--splits", "train=0.5,validation=0.25,test=0.25", "--system", "You are a careful tutor."],
    );
    assert!(export.status.success(), "{}", stderr(&export));
    assert!(stdout(&export).contains("README.md (dataset card)"), "{}", stdout(&export));
    let out = root.join("out/export");

    // The same records in every format, each in the split its id names.
    let mut split_of_id: BTreeMap<String, String> = BTreeMap::new();
    for split in ["train", "validation", "test"] {
        let path = out.join(format!("verl-rl/{split}.parquet"));
        if !path.exists() {
            continue;
        }
        let batches = read_parquet_file(&path);
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let json = sdg::io::json_rows::row_to_json(batch, row).unwrap();
                assert_eq!(json["extra_info"]["split"], split);
                assert_eq!(json["prompt"][0]["role"], "system");
                assert_eq!(json["prompt"][1]["role"], "user");
                assert_eq!(json["reward_model"]["style"], "rule");
                split_of_id.insert(json["extra_info"]["id"].as_str().unwrap().to_string(), split.to_string());
            }
        }
        assert_eq!(
            jsonl(&out.join(format!("alpaca/{split}.jsonl"))).len(),
            jsonl(&out.join(format!("sharegpt/{split}.jsonl"))).len()
        );
        for row in jsonl(&out.join(format!("jsonl/{split}.jsonl"))) {
            assert_eq!(split_of_id.get(row["id"].as_str().unwrap()).map(String::as_str), Some(split));
        }
    }
    assert_eq!(split_of_id.keys().cloned().collect::<BTreeSet<_>>(), ids.iter().cloned().collect());
    let used: BTreeSet<&String> = split_of_id.values().collect();
    assert!(used.len() >= 2, "24 records land in more than one split: {split_of_id:?}");

    // A second export into another folder puts every record in the same split.
    let again = run_in(
        root,
        &["export", "out", "-o", "again", "--format", "messages", "--splits", "train=0.5,validation=0.25,test=0.25"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    for (id, split) in &split_of_id {
        let path = root.join(format!("again/messages/{split}.parquet"));
        let batches = read_parquet_file(&path);
        assert!(strings(&batches, "id").iter().flatten().any(|i| i == id), "{id} moved out of {split}");
    }

    // The card, with the server's random address (and so the config hash) taken out.
    let hash = common::manifest(&root.join("out"))["config_hash"].as_str().unwrap()[..12].to_string();
    let card = std::fs::read_to_string(out.join("README.md"))
        .unwrap()
        .replace(&server.url, "http://SERVER/v1")
        .replace(&hash, "CONFIGHASH");
    assert_golden("dataset_card.md", &card);
}

#[test]
fn a_category_filter_keeps_only_those_records_and_bad_settings_are_refused() {
    let server = TestServer::start(&["--skill", "student-model=mixed"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run(root, &server);
    let data = read_parquet_dir(&root.join("out/data"));
    let learnable = strings(&data, "category").iter().filter(|c| c.as_deref() == Some("learnable")).count();
    assert!(learnable > 0 && learnable < 24, "mixed skill gives several categories: {learnable}");

    let export = run_in(root, &["export", "out", "--category", "learnable", "--format", "alpaca"]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(jsonl(&root.join("out/export/alpaca/train.jsonl")).len(), learnable);
    assert!(!root.join("out/export/verl-rl").exists(), "only the asked format");

    for (args, message) in [
        (vec!["--format", "verl"], "unknown export format"),
        (vec!["--splits", "train=0.7,test=0.2"], "sum to 1"),
        (vec!["--prompt-column", "nope"], "no text column `nope`"),
    ] {
        let output = run_in(root, &[&["export", "out", "-o", "bad"][..], &args[..]].concat());
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr(&output).contains(message), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn a_config_export_section_exports_after_the_run() {
    let server = TestServer::start(&["--skill", "student-model=mixed"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run(root, &server);
    let graph = std::fs::read_to_string(root.join("graph.yaml")).unwrap();
    let with_export = format!(
        "{graph}export:\n  formats: [verl-rl, messages]\n  splits: {{train: 0.75, test: 0.25}}\n  ability: arithmetic\n"
    );
    write(root, "graph.yaml", &with_export);
    let output = run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet", "--overwrite"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("exported train"), "{}", stdout(&output));
    let export = root.join("out/export");
    assert!(export.join("verl-rl/train.parquet").exists() && export.join("messages/test.parquet").exists());
    assert!(!export.join("alpaca").exists(), "only the formats asked for");
    let batches = read_parquet_file(&export.join("verl-rl/train.parquet"));
    assert!(strings(&batches, "ability").iter().all(|a| a.as_deref() == Some("arithmetic")));

    // A bad export section is a config error before anything runs.
    write(root, "bad.yaml", &format!("{graph}export:\n  formats: [verl]\n"));
    let bad = run_in(root, &["validate", "bad.yaml"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("export.formats[0]") && stderr(&bad).contains("unknown export format"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn push_to_hub_uploads_the_export_as_a_dataset_repo() {
    let server = TestServer::start(&["--skill", "student-model=mixed"]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    run(root, &server);
    let hub_root = tempfile::tempdir().unwrap();
    let hub = common::TestHub::start(hub_root.path(), &["--token", "hf_test_push_token"]);
    let push = |token: &str| {
        common::sdg()
            .current_dir(root)
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_TOKEN", token)
            .args(["export", "out", "--format", "verl-rl", "--format", "messages", "--push-to-hub", "acme/orchard"])
            .output()
            .unwrap()
    };
    let refused = push("hf_wrong");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("401") && !stderr(&refused).contains("hf_wrong"), "{}", stderr(&refused));
    let output = push("hf_test_push_token");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("pushed 3 files to acme/orchard"), "{}", stdout(&output));
    // The repo holds the export's files, byte for byte.
    let uploaded: BTreeMap<String, Vec<u8>> = common::tree_bytes(hub_root.path());
    for file in ["README.md", "verl-rl/train.parquet", "messages/train.parquet"] {
        let local = std::fs::read(root.join("out/export").join(file)).unwrap();
        let found = uploaded.iter().find(|(path, _)| path.ends_with(&format!("acme/orchard/{file}")));
        let (path, bytes) =
            found.unwrap_or_else(|| panic!("{file} not on the hub: {:?}", uploaded.keys().collect::<Vec<_>>()));
        assert!(bytes == &local, "{path} differs");
    }
}
