//! `sdg::io::hub_push` against a real Hub server (`sdg-test-hub`) over HTTP: a folder pushed as a dataset
//! repo reads back byte for byte through the download routes and the dataset reader, Parquet goes through
//! LFS (whole and in parts), a second push replaces files (and prunes when asked), a wrong token fails
//! clearly without showing it, and the server refuses paths that leave the repo.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::TestHub;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sdg::io::hub_datasets::{HubClient, block_on};
use sdg::io::hub_push::{HubPushError, PushOptions, PushReport, PushedFile, push_folder, push_folder_with};

const TOKEN: &str = "hf_test_write_token";

/// Writes `rows` rows (`id`, `text`) starting at `first` as uncompressed Parquet.
fn write_parquet(path: &Path, first: i64, rows: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ids: Vec<i64> = (first..first + rows).collect();
    let texts: Vec<String> = ids.iter().map(|id| format!("row {id}: {}", "synthetic data ".repeat(8))).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(texts))];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = WriterProperties::builder().set_compression(Compression::UNCOMPRESSED).build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn write(folder: &Path, path: &str, text: &str) {
    let path = folder.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// One HTTP/1.1 request over a fresh connection: the status and the body.
fn http(hub: &TestHub, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let address = hub.url.strip_prefix("http://").expect("http url");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, response[split + 4..].to_vec())
}

/// A file of a dataset repo as the download route serves it.
fn download(hub: &TestHub, repo: &str, path: &str) -> (u16, Vec<u8>) {
    http(hub, "GET", &format!("/datasets/{repo}/resolve/main/{path}"), Some(TOKEN), b"")
}

/// Checks that every file of `folder` named in the report downloads back with the same bytes.
fn assert_round_trip(hub: &TestHub, report: &PushReport, folder: &Path) {
    for file in &report.files {
        let (status, bytes) = download(hub, &report.repo, &file.path);
        assert_eq!(status, 200, "{}", file.path);
        assert_eq!(bytes, std::fs::read(folder.join(&file.path)).unwrap(), "{} differs", file.path);
    }
}

fn stat(hub: &TestHub, key: &str) -> u64 {
    hub.stats()[key].as_u64().unwrap_or_else(|| panic!("stat {key}"))
}

fn pushed(path: &str, folder: &Path, lfs: bool) -> PushedFile {
    PushedFile { path: path.to_string(), size: std::fs::metadata(folder.join(path)).unwrap().len(), lfs }
}

#[test]
fn a_pushed_folder_reads_back_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path();
    write(out, "README.md", "---\nlicense: apache-2.0\n---\n# A dataset made with sdg\n");
    write_parquet(&out.join("data/train-00000-of-00001.parquet"), 0, 40);
    write_parquet(&out.join("data/test-00000-of-00001.parquet"), 1000, 10);
    write(out, "data/extra.jsonl", "{\"id\":1,\"text\":\"one\"}\n{\"id\":2,\"text\":\"two\"}\n");
    write(out, ".hidden", "not pushed");
    write(out, "data/.part-7.parquet.tmp", "half written");
    write(out, ".state/keys", "not pushed");
    let hub = TestHub::start(root.path(), &["--token", TOKEN]);

    let report = push_folder(&hub.url, Some(TOKEN), "acme/pushed", out, "Upload from sdg", false).unwrap();

    assert!(report.created);
    assert_eq!((report.repo.as_str(), report.revision.as_str()), ("acme/pushed", "main"));
    assert_eq!(
        report.files,
        [
            pushed("README.md", out, false),
            pushed("data/extra.jsonl", out, false),
            pushed("data/test-00000-of-00001.parquet", out, true),
            pushed("data/train-00000-of-00001.parquet", out, true),
        ],
        "files in path order, Parquet through LFS, dot-names skipped"
    );
    assert!(report.ignored.is_empty() && report.deleted.is_empty());
    assert_eq!(report.commit_url, format!("{}/datasets/acme/pushed/commit/{}", hub.url, report.commit_oid));
    assert_round_trip(&hub, &report, out);
    for hidden in [".hidden", "data/.part-7.parquet.tmp", ".state/keys"] {
        assert_eq!(download(&hub, "acme/pushed", hidden).0, 404, "{hidden} was not pushed");
    }

    // The repo's info names the commit the push made.
    let (status, info) = http(&hub, "GET", "/api/datasets/acme/pushed", Some(TOKEN), b"");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["sha"], report.commit_oid.as_str());

    // The dataset reader finds the pushed Parquet files, their splits and their rows.
    let client = HubClient::with_endpoint(&hub.url, Some(TOKEN.to_string()));
    let files = block_on(client.parquet_files("acme/pushed")).unwrap();
    let splits: Vec<(&str, &str)> = files.iter().map(|f| (f.config.as_str(), f.split.as_str())).collect();
    assert_eq!(splits, [("default", "test"), ("default", "train")]);
    let rows: Vec<u64> = files.iter().map(|f| block_on(client.open(f)).unwrap().num_rows()).collect();
    assert_eq!(rows, [10, 40]);

    let stats = hub.stats();
    assert_eq!(stats["repos_created"], 1);
    assert_eq!(stats["commits"], 1);
    assert_eq!(stats["files_committed"], 4);
    assert_eq!(stats["lfs_objects_uploaded"], 2);
    assert_eq!(stats["lfs_parts_uploaded"], 0, "whole uploads without --lfs-chunk-size");
    assert_eq!(stats["unauthorized_requests"], 0);
    let sizes: u64 = report.files.iter().map(|f| f.size).sum();
    assert_eq!(stats["bytes_received"], sizes, "every byte arrived once");
}

#[test]
fn a_wrong_or_missing_token_fails_clearly_without_showing_it() {
    let root = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    write(folder.path(), "README.md", "# card\n");
    let hub = TestHub::start(root.path(), &["--token", TOKEN]);

    let wrong = "hf_wrong_secret_123";
    let error = push_folder(&hub.url, Some(wrong), "acme/private-set", folder.path(), "m", true).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, HubPushError::Unauthorized { status: 401, .. }), "{text}");
    assert!(text.contains(&format!("{}/api/repos/create", hub.url)), "names the URL: {text}");
    assert!(text.contains("401") && text.contains("Invalid credentials"), "status and the Hub's message: {text}");
    assert!(text.contains("token was not accepted"), "{text}");
    for shown in [text.clone(), format!("{error:?}")] {
        assert!(!shown.contains(wrong) && !shown.contains(TOKEN), "the token leaked: {shown}");
    }

    let error = push_folder(&hub.url, None, "acme/private-set", folder.path(), "m", true).unwrap_err().to_string();
    assert!(error.contains("401") && error.contains("set HF_TOKEN"), "{error}");

    assert!(!root.path().join("datasets").exists(), "no repo was created");
    assert_eq!(stat(&hub, "unauthorized_requests"), 2, "one refused call each: nothing after the refusal");

    // A folder with nothing to push fails before any request.
    let empty = tempfile::tempdir().unwrap();
    write(empty.path(), ".only-hidden", "x");
    let error = push_folder(&hub.url, Some(TOKEN), "acme/empty", empty.path(), "m", false).unwrap_err();
    assert!(matches!(error, HubPushError::EmptyFolder { .. }), "{error}");
    let error = push_folder(&hub.url, Some(TOKEN), "not-an-id", folder.path(), "m", false).unwrap_err();
    assert!(matches!(error, HubPushError::BadRepoId(_)), "{error}");
    assert_eq!(stat(&hub, "repos_created"), 0);
}

#[test]
fn pushing_again_replaces_files_and_prune_deletes_stale_ones() {
    let root = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path();
    let hub = TestHub::start(root.path(), &["--token", TOKEN]);
    let repo = "acme/twice";

    write(out, "README.md", "# version 1\n");
    write_parquet(&out.join("data/train.parquet"), 0, 30);
    write(out, "data/old.jsonl", "{\"id\":0}\n");
    let first = push_folder(&hub.url, Some(TOKEN), repo, out, "First", false).unwrap();
    assert!(first.created);
    assert_round_trip(&hub, &first, out);
    let first_train = std::fs::read(out.join("data/train.parquet")).unwrap();

    // Same names, new contents; one file gone, one new.
    write(out, "README.md", "# version 2, longer\n");
    write_parquet(&out.join("data/train.parquet"), 500, 35);
    std::fs::remove_file(out.join("data/old.jsonl")).unwrap();
    write(out, "data/new.jsonl", "{\"id\":9}\n");
    let second = push_folder(&hub.url, Some(TOKEN), repo, out, "Second", false).unwrap();
    assert!(!second.created, "the existing repo (409) is reused");
    assert_ne!(second.commit_oid, first.commit_oid);
    assert_round_trip(&hub, &second, out);
    assert_ne!(download(&hub, repo, "data/train.parquet").1, first_train, "the Parquet file was replaced");
    assert_eq!(download(&hub, repo, "data/old.jsonl"), (200, b"{\"id\":0}\n".to_vec()), "kept without prune");
    assert_eq!(stat(&hub, "lfs_objects_uploaded"), 2);

    // With prune, what the folder lacks goes; unchanged LFS objects are not sent again.
    let options = PushOptions { message: "Third".into(), prune: true, ..PushOptions::default() };
    let third = push_folder_with(&hub.url, Some(TOKEN), repo, out, &options).unwrap();
    assert_eq!(third.deleted, ["data/old.jsonl"]);
    assert_eq!(download(&hub, repo, "data/old.jsonl").0, 404);
    assert_round_trip(&hub, &third, out);
    assert_eq!(stat(&hub, "lfs_objects_uploaded"), 2, "the Hub already had the Parquet bytes");
    assert_eq!(stat(&hub, "commits"), 3);

    let mut listed: Vec<String> = walkdir::WalkDir::new(root.path().join("datasets/acme/twice"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root.path().join("datasets/acme/twice")).unwrap().display().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, ["README.md", "data/new.jsonl", "data/train.parquet"]);
}

#[test]
fn large_lfs_files_go_up_in_parts() {
    let root = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path();
    write_parquet(&out.join("data/train.parquet"), 0, 200);
    std::fs::create_dir_all(out.join("copy")).unwrap();
    std::fs::copy(out.join("data/train.parquet"), out.join("copy/train.parquet")).unwrap();
    let size = std::fs::metadata(out.join("data/train.parquet")).unwrap().len();
    assert!(size > 3 * 4096, "the file spans several parts: {size} bytes");
    let hub = TestHub::start(root.path(), &["--token", TOKEN, "--lfs-chunk-size", "4096"]);

    let report = push_folder(&hub.url, Some(TOKEN), "acme/parts", out, "Parts", false).unwrap();

    assert_eq!(report.files.iter().filter(|f| f.lfs).count(), 2);
    assert_round_trip(&hub, &report, out);
    assert_eq!(stat(&hub, "lfs_objects_uploaded"), 1, "two files with the same bytes are one object");
    assert_eq!(stat(&hub, "lfs_parts_uploaded"), size.div_ceil(4096));
    assert!(!root.path().join(".lfs/parts").read_dir().is_ok_and(|mut d| d.next().is_some()), "parts cleaned up");
}

#[test]
fn the_server_refuses_paths_that_leave_the_repo() {
    let root = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    write(folder.path(), "README.md", "# card\n");
    let hub = TestHub::start(root.path(), &["--token", TOKEN]);
    push_folder(&hub.url, Some(TOKEN), "acme/safe", folder.path(), "First", false).unwrap();

    let header = r#"{"key":"header","value":{"summary":"escape","description":""}}"#;
    for path in ["../../escape.txt", "data/../../../escape.txt", "/tmp/escape.txt", ".convert-parquet/x.parquet"] {
        let file =
            serde_json::json!({ "key": "file", "value": { "content": "eA==", "path": path, "encoding": "base64" } });
        let body = format!("{header}\n{file}\n");
        let (status, answer) = http(&hub, "POST", "/api/datasets/acme/safe/commit/main", Some(TOKEN), body.as_bytes());
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&answer));
    }
    assert!(!root.path().join("escape.txt").exists() && !root.path().join("datasets/escape.txt").exists());
    assert_eq!(stat(&hub, "commits"), 1, "only the push committed");

    // Commits want the token too.
    let body = format!("{header}\n");
    assert_eq!(http(&hub, "POST", "/api/datasets/acme/safe/commit/main", None, body.as_bytes()).0, 401);
    // And a repo that does not exist is the Hub's 404.
    assert_eq!(http(&hub, "POST", "/api/datasets/acme/nope/commit/main", Some(TOKEN), body.as_bytes()).0, 404);
}
