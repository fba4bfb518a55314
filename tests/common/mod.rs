//! Helpers shared by the integration tests: run the real `sdg` binary, read its outputs back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The `sdg` binary built for these tests.
/// Each call gets its own response cache, so no test is answered from another's (or a developer's) cache;
/// tests about the cache pass `--cache-dir` themselves.
pub fn sdg() -> Command {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cache = std::env::temp_dir().join(format!("sdg-test-cache-{}-{call}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_sdg"));
    command.env("SDG_LOG", "error").env("SDG_CACHE_DIR", cache);
    command
}

/// Runs `sdg` with `args` in `dir`, returning its output.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    sdg().current_dir(dir).args(args).output().expect("sdg starts")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Every Parquet part under `dir`, in name order.
pub fn parts(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

/// All rows of all Parquet parts under `dir`.
pub fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    parts(dir).iter().flat_map(|path| read_parquet_file(path)).collect()
}

/// All rows of one Parquet file.
pub fn read_parquet_file(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("valid parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// Compares `actual` with `tests/golden/NAME`; `SDG_BLESS=1` rewrites the golden file.
pub fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden")).join(name);
    if std::env::var_os("SDG_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(actual, expected, "golden {} differs (SDG_BLESS=1 to update)", path.display());
}

/// `n` one-line passages under `root/corpus` (`q00.txt`, ...), each with two numbers to ask about.
pub fn caravan_corpus(root: &Path, n: usize) {
    for i in 0..n {
        write(
            &root.join("corpus"),
            &format!("q{i:02}.txt"),
            &format!(
                "Passage {i}: a caravan of {} camels walks {} kilometres across the dunes each day.",
                i + 3,
                i * 7 + 11
            ),
        );
    }
}

/// A generate -> vote -> score graph over `corpus/` on the test server at `url` (models `teacher-model` and
/// `student-model`): rows with `question`, `response`, `answer`, `agreement`, `pass_rate` and `category`.
/// `run` is the `run:` mapping, `concurrency` each model's `max_concurrency`, `sink` extra sink settings.
pub fn verified_qa_graph(url: &str, run: &str, concurrency: usize, seed: u64, sink: &str) -> String {
    format!(
        r#"run: {{{run}}}
models:
  teacher: {{base_url: "{url}", model: teacher-model, max_concurrency: {concurrency}}}
  student: {{base_url: "{url}", model: student-model, max_concurrency: {concurrency}}}
nodes:
  - {{id: docs, kind: ingest, paths: [corpus]}}
  - id: qa
    kind: generate
    input: docs
    model: teacher
    prompt: "Write one word problem about this passage, as JSON with question and answer: {{{{ text }}}}"
    output: {{json: {{columns: [question, answer]}}}}
  - id: verified
    kind: vote
    input: qa
    model: teacher
    n: 4
    seed: {seed}
    answer: {{marker: '####'}}
  - id: scored
    kind: score
    input: verified
    model: student
    k: 4
    seed: {seed}
    answer: {{marker: '####'}}
  - {{id: out, kind: sink, input: scored{sink}}}
"#
    )
}

/// Values of a string column across batches.
pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let array = b
                .column_by_name(column)
                .unwrap_or_else(|| panic!("column {column}"))
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("string column")
                .clone();
            (0..array.len()).map(|i| (!array.is_null(i)).then(|| array.value(i).to_string())).collect::<Vec<_>>()
        })
        .collect()
}

/// Reads a whole folder tree as relative path -> bytes (for byte-identical comparisons).
pub fn tree_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        out.insert(rel, std::fs::read(&entry).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The manifest of a run directory.
pub fn manifest(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("manifest.json")).expect("manifest.json exists");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A text corpus of `files` files with `paragraphs` distinct English paragraphs each.
pub fn text_corpus(dir: &Path, files: usize, paragraphs: usize) {
    for f in 0..files {
        let mut text = String::new();
        for p in 0..paragraphs {
            // Every sentence names its paragraph, so no two chunks anywhere are equal.
            let n = f * 1000 + p;
            text.push_str(&format!(
                "Paragraph {n} explains how the engine keeps its output deterministic. \
                 Every record of paragraph {n} carries a stable id derived from its path and content. \
                 Sinks sort the rows of paragraph {n} by id before writing parts.\n\n"
            ));
        }
        write(dir, &format!("doc-{f:03}.txt"), &text);
    }
}

/// The OpenAI-compatible test server (`sdg-test-server`), killed on drop.
pub struct TestServer {
    pub url: String,
    child: std::process::Child,
}

impl TestServer {
    /// Starts the server with extra flags (`--latency-ms`, `--fail-500`, ...) on a free port.
    pub fn start(args: &[&str]) -> TestServer {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdg-test-server"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("test server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("first line");
        let base = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
        TestServer { url: format!("{base}/v1"), child }
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.send("GET", "/stats")
    }

    /// Sends a bodiless request to a control route (`/hold`, `/release?discard=1`, `/reset`) and returns
    /// the JSON it answers.
    pub fn send(&self, method: &str, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let address = self.url.trim_start_matches("http://").trim_end_matches("/v1");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split("\r\n\r\n").nth(1).expect("body");
        serde_json::from_str(body).expect("stats JSON")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sdg-test-hub` (a Hugging Face Hub REST server over a folder), killed when dropped.
pub struct TestHub {
    child: std::process::Child,
    pub url: String,
}

impl TestHub {
    /// Serves `root` with extra flags (`--fail-first`, `--token`, ...) on a free port.
    pub fn start(root: &Path, args: &[&str]) -> TestHub {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdg-test-hub"))
            .arg("--root")
            .arg(root)
            .args(["--port", "0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sdg-test-hub starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
        let url = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
        TestHub { child, url }
    }

    /// `GET /stats` over a plain HTTP/1.1 connection.
    pub fn stats(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let address = self.url.strip_prefix("http://").expect("http url");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        write!(stream, "GET /stats HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        let body = response.split_once("\r\n\r\n").expect("body").1;
        serde_json::from_str(body).expect("stats json")
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a one-split Hub dataset repo (`datasets/<repo>/data/train-00000-of-00001.parquet`) under `hub_root`,
/// as `sdg-test-hub` serves it.
pub fn hub_dataset(hub_root: &Path, repo: &str, columns: &[(&str, Vec<Option<&str>>)]) {
    let file = hub_root.join("datasets").join(repo).join("data/train-00000-of-00001.parquet");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    sdg::testkit::write_parquet(&file, columns).unwrap();
}
