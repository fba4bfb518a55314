//! The model service against a real local OpenAI-compatible server: cache, faults, credentials, secrets.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, manifest, read_parquet_dir, stderr, stdout, strings, write};

const KEY: &str = "sk-test-0123456789abcdef-secret";

fn questions(root: &Path, n: usize) {
    let lines: String = (0..n).map(|i| format!("{{\"text\": \"What is {i} plus {i}?\"}}\n")).collect();
    write(root, "corpus/questions.jsonl", &lines);
}

fn graph(root: &Path, server: &TestServer, extra_model: &str) {
    write(
        root,
        "graph.yaml",
        &format!(
            "run: {{batch_rows: 8, partitions: 2}}\nmodels:\n  teacher: {{base_url: \"{}\", model: test-model, max_concurrency: 32, api_key_env: SDG_TEST_KEY{extra_model}}}\nnodes:\n  - {{id: docs, kind: ingest, paths: [corpus]}}\n  - id: answers\n    kind: generate\n    input: docs\n    model: teacher\n    system: You are a careful math tutor.\n    prompt: \"Answer step by step: {{{{ text }}}}\"\n    temperature: 0.7\n    output: {{text: {{column: answer}}}}\n  - {{id: out, kind: sink, input: answers}}\n",
            server.url
        ),
    );
}

fn run(root: &Path, out: &str, cache: &Path, key: &str) -> std::process::Output {
    common::sdg()
        .current_dir(root)
        .env("SDG_TEST_KEY", key)
        .env("SDG_LOG", "info")
        .args(["run", "graph.yaml", "-o", out, "--quiet", "--workers", "2", "--cache-dir"])
        .arg(cache)
        .output()
        .unwrap()
}

#[test]
fn a_second_run_is_answered_from_the_cache_with_zero_requests() {
    let server = TestServer::start(&["--latency-ms", "20", "--api-key", KEY]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 40);
    graph(dir.path(), &server, "");
    let cache = dir.path().join("cache");
    let first = run(dir.path(), "first", &cache, KEY);
    assert!(first.status.success(), "{}", stderr(&first));
    let after_first = server.stats()["requests"].as_u64().unwrap();
    assert_eq!(after_first, 40, "one request per question");

    let second = run(dir.path(), "second", &cache, KEY);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(server.stats()["requests"].as_u64().unwrap(), after_first, "the re-run made no request");
    let m = manifest(&dir.path().join("second"));
    assert_eq!(m["models"]["teacher"]["cache_hits"], 40);
    assert_eq!(m["models"]["teacher"]["requests"], 0);
    assert_eq!(m["nodes"]["answers"]["model_calls"], 40, "per-node accounting");
    assert_eq!(m["nodes"]["answers"]["cache_hits"], 40);
    assert_eq!(m["nodes"]["answers"]["prompt_tokens"], 0, "cached answers spend nothing");
    let first = manifest(&dir.path().join("first"));
    let p50 = first["nodes"]["answers"]["latency_p50_ms"].as_f64().unwrap();
    assert!((20.0..200.0).contains(&p50), "per-node latency from the 20 ms server: {p50}");
    assert!(first["nodes"]["answers"].get("latency_histogram").is_none(), "the histogram stays internal");
    let first_tokens = first["nodes"]["answers"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        first_tokens,
        manifest(&dir.path().join("first"))["models"]["teacher"]["prompt_tokens"].as_u64().unwrap()
    );

    let a = read_parquet_dir(&dir.path().join("first/data"));
    let b = read_parquet_dir(&dir.path().join("second/data"));
    assert_eq!(strings(&a, "answer"), strings(&b, "answer"));
    assert_eq!(strings(&a, "answer").len(), 40);
    assert!(strings(&a, "answer").iter().flatten().all(|t| t.contains("####")), "answers come from the model");
    assert!(strings(&b, "gen_model").iter().flatten().all(|m| m == "test-model"));
}

#[test]
fn faults_are_retried_or_rejected_and_every_record_is_accounted_for() {
    let server = TestServer::start(&[
        "--latency-ms",
        "5",
        "--fail-500",
        "0.2",
        "--fail-429",
        "0.1",
        "--retry-after-s",
        "0",
        "--malformed",
        "0.05",
        "--fault-seed",
        "7",
    ]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 120);
    graph(dir.path(), &server, ", max_retries: 2");
    let output = run(dir.path(), "out", &dir.path().join("cache"), KEY);
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&dir.path().join("out"));
    let kept = m["outputs"]["out"]["rows"].as_u64().unwrap();
    let rejected = m["nodes"]["answers"]["rejected"].as_u64().unwrap();
    assert_eq!(kept + rejected, 120, "every question is in data/ or rejects/");
    assert!(kept > 90, "most succeed after retries: {kept}");
    assert!(m["models"]["teacher"]["retries"].as_u64().unwrap() > 10);
    let rejects = read_parquet_dir(&dir.path().join("out/rejects"));
    for reason in strings(&rejects, "reason").into_iter().flatten() {
        assert!(reason.starts_with("model call failed:") && reason.contains("after 3 attempts"), "{reason}");
    }
}

#[test]
fn a_wrong_key_stops_the_run_quickly_with_one_clear_error() {
    let server = TestServer::start(&["--latency-ms", "5", "--api-key", KEY]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 500);
    graph(dir.path(), &server, "");
    let started = Instant::now();
    let output = run(dir.path(), "out", &dir.path().join("cache"), "sk-wrong-key");
    assert!(started.elapsed() < Duration::from_secs(20), "stopped early");
    assert!(!output.status.success());
    let text = stdout(&output);
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(server.stats()["requests"].as_u64().unwrap() < 200, "no storm of requests after the first 401s");
    assert_eq!(manifest(&dir.path().join("out"))["status"], "failed");
}

#[test]
fn the_api_key_never_reaches_outputs_caches_or_logs() {
    // Faults make retries and rejects (whose reasons quote the server's errors); trace logging shows every
    // request the client makes; a killed and resumed run leaves state behind; a run against a server that
    // wants another key fails with the endpoint's error. None of it may carry the key.
    let server = TestServer::start(&["--latency-ms", "5", "--api-key", KEY, "--fail-500", "0.3", "--fail-429", "0.1"]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 30);
    graph(dir.path(), &server, "");
    let cache = dir.path().join("cache");
    let traced = |out: &str, cache: &Path, key: &str, extra: &[&str]| {
        common::sdg()
            .current_dir(dir.path())
            .env("SDG_TEST_KEY", key)
            .env("SDG_LOG", "trace")
            .args(["run", "graph.yaml", "-o", out, "--workers", "2", "--cache-dir"])
            .arg(cache)
            .args(extra)
            .output()
            .unwrap()
    };
    let mut logs = Vec::new();
    let mut killed = common::sdg()
        .current_dir(dir.path())
        .env("SDG_TEST_KEY", KEY)
        .env("SDG_LOG", "trace")
        .args(["run", "graph.yaml", "-o", "out", "--quiet", "--cache-dir"])
        .arg(&cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    killed.kill().unwrap();
    let killed = killed.wait_with_output().unwrap();
    logs.push(killed);
    let resumed = traced("out", &cache, KEY, &["--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    logs.push(resumed);
    let wrong_server = TestServer::start(&["--api-key", "sk-the-server-wants-this-one"]);
    graph(dir.path(), &wrong_server, "");
    // Its own cache: the replies above would answer every call (the key is not part of a cache key).
    let refused = traced("refused", &dir.path().join("cache-refused"), KEY, &[]);
    assert!(!refused.status.success());
    assert!(stdout(&refused).contains("refused the credentials"), "{}", stdout(&refused));
    logs.push(refused);
    for (i, output) in logs.iter().enumerate() {
        assert!(!output.stderr.is_empty() || i == 0, "trace logs were captured");
        for stream in [&output.stdout, &output.stderr] {
            assert!(
                !stream.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "the key leaked into the output of run {i}"
            );
        }
    }
    let mut files = 0;
    for folder in ["out", "refused", "cache", "cache-refused"] {
        for (path, bytes) in common::tree_bytes(&dir.path().join(folder)) {
            files += 1;
            let found = bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes());
            assert!(!found, "the key leaked into {folder}/{path}");
        }
    }
    assert!(files >= 6, "data, rejects, manifests, journals and the cache were searched: {files}");
}

#[test]
fn rate_limits_shrink_the_concurrency_and_a_dead_endpoint_opens_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 200);

    let busy = TestServer::start(&["--latency-ms", "20", "--fail-429", "0.3", "--retry-after-s", "0"]);
    graph(dir.path(), &busy, ", max_retries: 10");
    let output = run(dir.path(), "busy", &dir.path().join("cache-busy"), KEY);
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&dir.path().join("busy"));
    let lowest = m["models"]["teacher"]["concurrency_lowest"].as_u64().unwrap();
    assert!(lowest < 32, "429s shrank the limit below max_concurrency 32: {lowest}");
    assert_eq!(
        m["outputs"]["out"]["rows"].as_u64().unwrap() + m["nodes"]["answers"]["rejected"].as_u64().unwrap(),
        200
    );

    let dead = TestServer::start(&["--fail-500", "1.0"]);
    questions(dir.path(), 20);
    graph(dir.path(), &dead, ", max_retries: 1");
    let output = run(dir.path(), "dead", &dir.path().join("cache-dead"), KEY);
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&dir.path().join("dead"));
    assert!(m["models"]["teacher"]["breaker_opened"].as_u64().unwrap() >= 1, "{}", m["models"]);
    assert_eq!(m["nodes"]["answers"]["rejected"], 20, "every row is rejected, none lost");
}

#[test]
fn dry_run_estimates_without_sending_or_writing() {
    let server = TestServer::start(&["--latency-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 25);
    graph(dir.path(), &server, ", price_prompt_per_1k: 1.0, price_completion_per_1k: 2.0");
    let output = common::sdg()
        .current_dir(dir.path())
        .env("SDG_TEST_KEY", KEY)
        .args(["run", "graph.yaml", "-o", "out", "--quiet", "--dry-run", "--no-cache"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("dry run: no model request was sent"), "{text}");
    let row = text.lines().find(|l| l.starts_with("teacher")).unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[1], "25", "one request per question: {row}");
    let prompt_tokens: u64 = fields[3].parse().unwrap();
    assert!(prompt_tokens > 25 * 10, "system + prompt text counted: {row}");
    assert_eq!(fields[4], (25 * 256).to_string(), "max completion tokens: {row}");
    let cost: f64 = fields[5].parse().unwrap();
    assert!((cost - (prompt_tokens as f64 / 1000.0 + 25.0 * 256.0 * 2.0 / 1000.0)).abs() < 0.01, "{row}");
    assert_eq!(server.stats()["requests"], 0, "nothing sent");
    assert!(!dir.path().join("out").exists(), "nothing written");
}

#[test]
fn the_key_can_come_from_a_dotenv_file() {
    let server = TestServer::start(&["--latency-ms", "5", "--api-key", KEY]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 5);
    graph(dir.path(), &server, "");
    write(dir.path(), ".env", &format!("# secrets\nexport SDG_TEST_KEY=\"{KEY}\"\n"));
    let output = common::sdg()
        .current_dir(dir.path())
        .env_remove("SDG_TEST_KEY")
        .args(["run", "graph.yaml", "-o", "out", "--quiet", "--no-cache"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(manifest(&dir.path().join("out"))["outputs"]["out"]["rows"], 5);
}

#[test]
fn a_server_that_ignores_n_is_asked_once_per_sample() {
    let server = TestServer::start(&["--latency-ms", "5", "--ignore-n"]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 10);
    graph(dir.path(), &server, "");
    let text = std::fs::read_to_string(dir.path().join("graph.yaml")).unwrap();
    write(dir.path(), "graph.yaml", &text.replace("    temperature: 0.7\n", "    temperature: 0.7\n    n: 3\n"));
    let output = run(dir.path(), "out", &dir.path().join("cache"), KEY);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(server.stats()["requests"], 30, "one request for n=3, then two single-sample requests");
    let data = read_parquet_dir(&dir.path().join("out/data"));
    let answers = strings(&data, "answer");
    assert_eq!(answers.len(), 30, "three samples per question");
    // The extra samples carry new seeds, so a question's samples differ (two may collide on the test
    // server's two-digit answers, all three practically never).
    let mut per_question: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (parent, answer) in strings(&data, "parent_id").into_iter().zip(answers) {
        per_question.entry(parent.unwrap()).or_default().insert(answer.unwrap());
    }
    assert_eq!(per_question.len(), 10);
    assert!(per_question.values().all(|samples| samples.len() >= 2), "{per_question:?}");
}

#[test]
fn editing_one_node_reissues_only_its_calls() {
    let server = TestServer::start(&["--latency-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    questions(dir.path(), 12);
    let two_stage = |second_prompt: &str| {
        format!(
            "models:\n  teacher: {{base_url: \"{}\", model: test-model}}\nnodes:\n  - {{id: docs, kind: ingest, paths: [corpus]}}\n  - {{id: first, kind: generate, input: docs, model: teacher, prompt: \"Answer: {{{{ text }}}}\", output: {{text: {{column: answer}}}}}}\n  - {{id: second, kind: generate, input: first, model: teacher, prompt: \"{second_prompt} {{{{ answer }}}}\", output: {{text: {{column: critique}}}}}}\n  - {{id: out, kind: sink, input: second}}\n",
            server.url
        )
    };
    let cache = dir.path().join("cache");
    write(dir.path(), "graph.yaml", &two_stage("Check:"));
    assert!(run(dir.path(), "a", &cache, KEY).status.success());
    assert_eq!(server.stats()["requests"], 24);
    write(dir.path(), "graph.yaml", &two_stage("Double-check:"));
    let output = run(dir.path(), "b", &cache, KEY);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(server.stats()["requests"], 36, "only the edited node's 12 calls are sent again");
    let m = manifest(&dir.path().join("b"));
    assert_eq!(m["nodes"]["first"]["cache_hits"], 12);
    assert_eq!(m["nodes"]["second"]["cache_hits"], 0);
}
