//! Exactly once through SIGKILL: a graph of model calls is killed at 10 seeded random instants and resumed
//! each time; the final `data/` and `rejects/` equal an uninterrupted run's, and the model server answered
//! no request twice.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use common::{TestServer, manifest, read_parquet_dir, stderr, stdout, write};

const QUESTIONS: usize = 48;

fn corpus(root: &Path) {
    common::caravan_corpus(root, QUESTIONS);
}

/// generate -> vote -> score: three model calls per record, parts of 4 rows.
fn graph(root: &Path, server: &TestServer) {
    let graph =
        common::verified_qa_graph(&server.url, "batch_rows: 3, partitions: 3, window: 2", 4, 5, ", rows_per_part: 4");
    write(root, "graph.yaml", &graph);
}

fn start_server() -> TestServer {
    TestServer::start(&["--latency-ms", "25", "--fail-500", "0.05", "--skill", "student-model=mixed"])
}

fn spawn(root: &Path, out: &str, cache: &Path, resume: bool) -> Child {
    let mut command = common::sdg();
    command.current_dir(root).args(["run", "graph.yaml", "-o", out, "--quiet", "--workers", "2", "--cache-dir"]);
    command.arg(cache);
    if resume {
        command.arg("--resume");
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sdg starts")
}

/// Every row of every part, as canonical JSON, sorted: the set of records with their full content. The two
/// columns that describe the circumstances of a model call rather than the record are left out: its
/// measured latency (differs between any two runs) and whether it came from the response cache.
fn rows(dir: &Path) -> Vec<String> {
    let batches: Vec<RecordBatch> = read_parquet_dir(dir);
    let mut rows: Vec<String> = batches
        .iter()
        .flat_map(|batch| {
            (0..batch.num_rows()).map(|r| {
                let mut row = sdg::io::json_rows::row_to_json(batch, r).unwrap();
                if let Some(object) = row.as_object_mut() {
                    object.retain(|key, _| !key.ends_with("_latency_ms") && !key.ends_with("_cached"));
                }
                row.to_string()
            })
        })
        .collect();
    rows.sort();
    rows
}

fn ids(dir: &Path) -> Vec<String> {
    let batches = read_parquet_dir(dir);
    common::strings(&batches, "id").into_iter().flatten().collect()
}

/// A small deterministic generator for the kill instants (splitmix64).
struct Seeded(u64);

impl Seeded {
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

#[test]
fn sigkill_at_ten_random_points_then_resume_gives_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    corpus(root);

    // The reference: one uninterrupted run, on its own server and cache.
    let reference_server = start_server();
    graph(root, &reference_server);
    let started = Instant::now();
    let reference = spawn(root, "reference", &root.join("cache-reference"), false).wait_with_output().unwrap();
    let full_run = started.elapsed();
    assert!(reference.status.success(), "{}\n{}", stdout(&reference), stderr(&reference));
    let expected_rows = rows(&root.join("reference/data"));
    let expected_rejects = rows(&root.join("reference/rejects"));
    assert!(expected_rows.len() >= QUESTIONS / 2, "{} rows", expected_rows.len());
    let reference_stats = reference_server.stats();
    assert_eq!(reference_stats["answered_more_than_once"], 0, "{reference_stats:#}");

    // The crash run: killed at 10 seeded random points, spread over the run by progress (the share of the
    // reference's answers the server has given so far), each followed by a random 0-15 ms so the kill lands
    // at an arbitrary instant of the stream of answers, startup and commits. Resumed after each kill.
    let total = reference_stats["answered"].as_u64().unwrap() as f64;
    let server = start_server();
    graph(root, &server);
    let cache = root.join("cache-crash");
    let mut random = Seeded(20_261_129);
    let mut points: Vec<f64> = (0..10).map(|_| 0.05 + 0.85 * random.next_unit()).collect();
    points.sort_by(f64::total_cmp);
    let mut kills = Vec::new();
    for (attempt, point) in points.iter().enumerate() {
        let threshold = (point * total) as u64;
        let extra = Duration::from_micros((random.next_unit() * 15_000.0) as u64);
        let mut child = spawn(root, "crash", &cache, attempt > 0);
        let started = Instant::now();
        let mut exited = false;
        while server.stats()["answered"].as_u64().unwrap() < threshold {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "attempt {attempt} made no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(extra);
        // Answers already sent get 200 ms to be read; answers not yet sent wait. The kill then cannot land
        // between the server sending an answer and sdg reading it, which no client can guard against.
        server.send("POST", "/hold");
        std::thread::sleep(Duration::from_millis(200));
        exited |= child.try_wait().unwrap().is_some();
        // SIGKILL: no handler runs, nothing is flushed.
        child.kill().unwrap();
        child.wait().unwrap();
        // The answers that waited were for the dead process: nobody reads them, they are not counted.
        server.send("POST", "/release?discard=1");
        let stats = server.stats();
        let answered = stats["answered"].as_u64().unwrap();
        kills.push((threshold, started.elapsed().as_millis(), !exited, answered));
        // Whatever is visible after a kill is complete and readable.
        let _ = read_parquet_dir(&root.join("crash/data"));
        let visible = ids(&root.join("crash/data"));
        let unique: BTreeSet<&String> = visible.iter().collect();
        assert_eq!(unique.len(), visible.len(), "no duplicate ids after attempt {attempt}");
    }
    let last = spawn(root, "crash", &cache, true).wait_with_output().unwrap();
    assert!(last.status.success(), "{}\n{}", stdout(&last), stderr(&last));
    println!("reference run {full_run:?}, {total} answers; kills (threshold, after ms, killed, answered): {kills:?}");
    assert!(kills.iter().all(|k| k.2), "every attempt was killed mid-run: {kills:?}");
    let m = manifest(&root.join("crash"));
    assert_eq!(m["status"], "completed");
    assert!(m["resumes"].as_u64().unwrap() >= 1, "{m:#}");

    // Exactly once: the same records with the same content, no duplicates, no gaps.
    let got_rows = rows(&root.join("crash/data"));
    assert_eq!(got_rows.len(), expected_rows.len(), "row count");
    let differing: Vec<(&String, &String)> =
        got_rows.iter().zip(&expected_rows).filter(|(a, b)| a != b).take(2).collect();
    assert!(differing.is_empty(), "the resumed run's rows differ from the uninterrupted run's: {differing:#?}");
    assert_eq!(rows(&root.join("crash/rejects")), expected_rejects, "rejects");
    assert_eq!(m["outputs"]["out"]["rows"].as_u64().unwrap() as usize, expected_rows.len());

    // No model request was answered twice, and every one the reference needed was answered once.
    let stats = server.stats();
    println!("server: {stats:#}");
    assert_eq!(stats["answered_more_than_once"], 0, "{stats:#}");
    assert_eq!(stats["answered_distinct"], reference_stats["answered_distinct"], "{stats:#}");
}

#[test]
fn resume_refuses_a_changed_config_unless_forced_and_then_reruns_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    corpus(root);
    let server = start_server();
    graph(root, &server);
    let cache = root.join("cache");
    let first = spawn(root, "out", &cache, false).wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let before = rows(&root.join("out/data"));

    // Same config, completed: nothing to do, nothing sent.
    let answered = server.stats()["answered"].as_u64().unwrap();
    let again = spawn(root, "out", &cache, true).wait_with_output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("nothing to do"), "{}", stdout(&again));
    assert_eq!(server.stats()["answered"].as_u64().unwrap(), answered);

    // A run without --resume or --overwrite is refused and points at both.
    let plain = common::sdg().current_dir(root).args(["run", "graph.yaml", "-o", "out", "--quiet"]).output().unwrap();
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("--resume") && stderr(&plain).contains("--overwrite"), "{}", stderr(&plain));

    // Edit the last model node: --resume refuses and names it.
    let text = std::fs::read_to_string(root.join("graph.yaml")).unwrap();
    std::fs::write(root.join("graph.yaml"), text.replace("    k: 4\n", "    k: 6\n")).unwrap();
    let refused = spawn(root, "out", &cache, true).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("different config") && message.contains("scored") && message.contains("--force"),
        "{message}"
    );
    assert!(!message.contains("verified"), "upstream nodes did not change: {message}");
    assert_eq!(rows(&root.join("out/data")), before, "a refused resume touches nothing");

    // --force: only `scored` (and the sink after it) runs again; generate and vote are answered from the cache.
    let stats_before = server.stats();
    let forced = common::sdg()
        .current_dir(root)
        .args(["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "2", "--resume", "--force", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(forced.status.success(), "{}", stderr(&forced));
    let m = manifest(&root.join("out"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["nodes"]["qa"]["cache_hits"], m["nodes"]["qa"]["model_calls"], "{m:#}");
    assert_eq!(m["nodes"]["verified"]["cache_hits"], m["nodes"]["verified"]["model_calls"], "{m:#}");
    let new_calls = server.stats()["answered"].as_u64().unwrap() - stats_before["answered"].as_u64().unwrap();
    let scored_rows = m["nodes"]["scored"]["rows_in"].as_u64().unwrap();
    assert_eq!(new_calls, scored_rows, "one new call per record, all from the edited node: {m:#}");
    let after = rows(&root.join("out/data"));
    assert_eq!(after.len(), before.len());
    assert!(after.iter().all(|r| r.contains("\"pass_rate\"")), "rows were written again by the edited node");
}

/// 40 small documents and, in the middle of the sort order, one of 1 MB that no part can hold under a
/// 256 KB file-size limit (hex text: zstd shrinks it to about half, still over the limit).
fn corpus_with_one_huge_document(root: &Path) {
    for i in 0..40 {
        write(&root.join("corpus"), &format!("d{i:02}.txt"), &format!("Document {i} is about the number {}.", i * 31));
    }
    let mut hex = String::with_capacity(1_000_000);
    let mut random = Seeded(99);
    while hex.len() < 1_000_000 {
        hex.push_str(&format!("{:016x} ", (random.next_unit() * u64::MAX as f64) as u64));
    }
    write(&root.join("corpus"), "d20-huge.txt", &hex);
    write(
        root,
        "graph.yaml",
        "run: {batch_rows: 4, window: 1, partitions: 1}\nnodes:\n  - {id: docs, kind: ingest, paths: [corpus]}\n  - {id: out, kind: sink, input: docs, rows_per_part: 5}\n",
    );
}

#[test]
fn a_write_that_fails_ends_the_run_with_a_clear_error_and_keeps_what_was_committed() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    corpus_with_one_huge_document(root);
    let mut command = common::sdg();
    command.current_dir(root).args(["run", "graph.yaml", "-o", "out", "--quiet", "--workers", "1"]);
    // SAFETY: setrlimit is async-signal-safe; it only limits the child's file sizes (like a full disk for
    // any file that would grow past 256 KB).
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256 * 1024, rlim_max: 256 * 1024 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let failed = command.output().unwrap();
    assert!(!failed.status.success(), "the run must fail");
    let report = format!("{}{}", stdout(&failed), stderr(&failed));
    assert!(report.contains("File too large") && report.contains("sink `out`"), "{report}");
    assert!(report.contains("--resume"), "the way on is named: {report}");
    let m = manifest(&root.join("out"));
    assert_eq!(m["status"], "failed");
    // Every part that is visible is complete; no temp file is left.
    let committed = rows(&root.join("out/data"));
    assert!(!committed.is_empty(), "parts before the huge document were committed");
    let hidden: Vec<String> = std::fs::read_dir(root.join("out/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");

    // With room again, --resume finishes: the records of an uninterrupted run, each once.
    let resumed = common::run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet", "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let reference = common::run_in(root, &["run", "graph.yaml", "-o", "reference", "--quiet"]);
    assert!(reference.status.success(), "{}", stderr(&reference));
    assert_eq!(rows(&root.join("out/data")), rows(&root.join("reference/data")));
    assert!(committed.iter().all(|row| rows(&root.join("out/data")).contains(row)));
}

#[test]
fn an_output_folder_that_cannot_be_created_is_a_clear_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    corpus_with_one_huge_document(root);
    // `out` is a file: nothing can be written under it.
    write(root, "out", "not a folder");
    let output = common::run_in(root, &["run", "graph.yaml", "-o", "out", "--quiet"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("out") && (message.contains("Not a directory") || message.contains("File exists")),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(root.join("out")).unwrap(), "not a folder");
}
