//! The `task:` recipe: expands into a graph, `sdg plan --eject` writes it out as an editable config that
//! validates and plans to the same graph, and the local recipe runs end to end on the test model server.

mod common;

use common::{TestServer, manifest, read_parquet_dir, run_in, stderr, stdout, strings, write};

/// Six short geography passages; the corpus written is `d<i>.txt` for each chosen index, in order.
const GEOGRAPHY: [&str; 6] = [
    "The Nile flows north through eleven countries before it reaches the Mediterranean Sea near Alexandria.",
    "Mount Kilimanjaro rises almost six thousand metres above the plains of northern Tanzania.",
    "The Danube passes through four capital cities on its way from the Black Forest to the Black Sea.",
    "Lake Baikal in Siberia holds about a fifth of the unfrozen fresh water on the surface of the Earth.",
    "The Atacama Desert in Chile is one of the driest places on Earth, with some stations never recording rain.",
    "Iceland sits on the Mid-Atlantic Ridge, where the North American and Eurasian plates drift apart.",
];

fn write_corpus(root: &std::path::Path, which: &[usize]) {
    for (i, &passage) in which.iter().enumerate() {
        write(&root.join("corpus"), &format!("d{i}.txt"), GEOGRAPHY[passage]);
    }
}

/// Two arithmetic demos, one JSON object a line.
const DEMOS: [&str; 2] = [
    "{\"question\": \"A shop sells 3 pens for 2 dollars. How much do 12 pens cost?\", \"answer\": \"#### 8\"}",
    "{\"question\": \"Tom reads 15 pages a day. How many pages does he read in a week?\", \"answer\": \"#### 105\"}",
];

/// Writes the first `demos` demos and starts the test server scripted to answer every request for new
/// examples with the same three.
fn examples_server(root: &std::path::Path, demos: usize) -> TestServer {
    write(root, "demos.jsonl", &(DEMOS[..demos].join("\n") + "\n"));
    let examples = serde_json::json!({"examples": [
        {"question": "A baker makes 24 rolls an hour. How many rolls does she make in 5 hours?", "answer": "#### 120"},
        {"question": "Anna has 45 stickers and gives away 17. How many does she keep?", "answer": "#### 28"},
        {"question": "A train travels 60 km an hour for 3 hours. How far does it go?", "answer": "#### 180"},
    ]});
    let rules = serde_json::json!([{"contains": "Here is one example", "reply": examples.to_string()}]);
    write(root, "script.json", &rules.to_string());
    TestServer::start(&[
        "--skill",
        "teacher-model=1.0",
        "--skill",
        "student-model=mixed",
        "--script",
        root.join("script.json").to_str().unwrap(),
    ])
}

fn recipe(server: &TestServer, vote: &str) -> String {
    format!(
        r#"# A local-documents recipe.
run: {{batch_rows: 8, partitions: 2}}

task:
  name: passages-qa
  domain: geography
  instruction: "Write a question about the passage with a short numeric answer; {{braces}} stay literal."
  output_instruction: Reason step by step.
  answer: {{marker: '####'}}
  num_samples: 6
  source: local
  local: {{paths: [corpus], min_chars: 40}}
  seed: 5
  verify: {{vote: {{n: 4{vote}}}, score: {{k: 4}}}}

models:
  teacher: {{base_url: "{url}", model: teacher-model}}
  student: {{base_url: "{url}", model: student-model}}
"#,
        url = server.url
    )
}

#[test]
fn a_task_expands_ejects_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_corpus(root, &[0, 1, 2, 3, 4, 5]);
    let server = TestServer::start(&["--skill", "teacher-model=1.0", "--skill", "student-model=mixed"]);
    write(root, "recipe.yaml", &recipe(&server, ""));

    let plan = run_in(root, &["plan", "recipe.yaml"]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let graph = stdout(&plan);
    for node in ["docs", "chunks", "passages", "unique", "qa", "verified", "scored", "out"] {
        assert!(graph.contains(node), "{node} missing from:\n{graph}");
    }

    let eject = run_in(root, &["plan", "recipe.yaml", "--eject", "graph.yaml"]);
    assert!(eject.status.success(), "{}", stderr(&eject));
    let ejected = std::fs::read_to_string(root.join("graph.yaml")).unwrap();
    assert!(ejected.contains("nodes:") && !ejected.contains("\ntask:"), "{ejected}");
    assert!(ejected.contains("models:") && ejected.contains("run:"), "the rest of the config is kept:\n{ejected}");
    assert!(ejected.contains("{% raw %}"), "user text stays literal in templates:\n{ejected}");
    let replan = run_in(root, &["plan", "graph.yaml"]);
    assert!(replan.status.success(), "{}", stderr(&replan));
    // Everything but the header line (file name and config hash) is the same graph.
    let body = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&stdout(&replan)), body(&graph), "the ejected graph plans the same");
    let again = run_in(root, &["plan", "graph.yaml", "--eject", "x.yaml"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already a graph"), "{}", stderr(&again));

    // The test server's generator answers are placeholders, so the vote (which must agree with the
    // generator's answer by default) rejects every row, with the reason.
    let output = run_in(root, &["run", "recipe.yaml", "-o", "checked", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rejects = read_parquet_dir(&root.join("checked/rejects"));
    let reasons = strings(&rejects, "reason");
    assert_eq!(reasons.len(), 6);
    assert!(reasons.iter().flatten().all(|r| r.contains("disagrees with the expected answer")), "{reasons:?}");
    // A local corpus is read whole: the shortfall is reported, not retried.
    let top_up = &manifest(&root.join("checked"))["top_up"];
    assert_eq!(
        (top_up["met"].as_bool(), top_up["attempts"].as_array().map(Vec::len)),
        (Some(false), Some(1)),
        "{top_up}"
    );
    assert!(stderr(&output).contains("0 of the 6 records asked for: the corpus was read whole"), "{}", stderr(&output));

    write(root, "recipe.yaml", &recipe(&server, ", match_generated: false"));
    let output = run_in(root, &["run", "recipe.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let rejects = read_parquet_dir(&root.join("out/rejects"));
    let rows: usize = data.iter().map(|b| b.num_rows()).sum();
    let rejected: usize = rejects.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows + rejected, 6, "every passage is in data or rejects");
    assert!(rows > 0);
    for column in [
        "question",
        "answer",
        "response",
        "agreement",
        "pass_rate",
        "category",
        "parent_id",
        "gen_model",
        "source_path",
    ] {
        assert!(data[0].column_by_name(column).is_some(), "{column} missing");
    }
    for category in strings(&data, "category") {
        assert!(matches!(category.as_deref(), Some("solved" | "learnable" | "unsolved")), "{category:?}");
    }
    let m = manifest(&root.join("out"));
    assert_eq!(m["nodes"]["qa"]["rows_out"], 6);
}

#[test]
fn task_errors_point_at_the_task() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        "task:\n  name: x\n  instruction: y\n  num_samples: 3\n  source: local\n  verify: {rewrite: {rounds: 1}}\n  local: {paths: [c]}\n",
    );
    let output = run_in(dir.path(), &["validate", "bad.yaml"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("task.verify.rewrite") && message.contains("needs `verify.vote`"), "{message}");

    write(
        dir.path(),
        "both.yaml",
        "task:\n  name: x\n  instruction: y\n  num_samples: 3\n  source: local\nnodes: []\n",
    );
    let message = stderr(&run_in(dir.path(), &["validate", "both.yaml"]));
    assert!(message.contains("either `task`"), "{message}");

    write(dir.path(), "typo.yaml", "task:\n  name: x\n  instrution: y\n  num_samples: 3\n  source: local\n");
    let message = stderr(&run_in(dir.path(), &["validate", "typo.yaml"]));
    assert!(message.contains("typo.yaml:3:") && message.contains("instrution"), "{message}");
}

/// `source: distill`: each demo asks the teacher for batches of new examples; near-duplicates are removed
/// before the vote. The test server's teacher is scripted to return the same three examples every call, so
/// exactly three distinct records survive.
#[test]
fn a_distill_task_generates_from_demos_and_removes_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = examples_server(root, 2);
    write(
        root,
        "distill.yaml",
        &format!(
            "task:\n  name: math\n  instruction: Grade-school word problems.\n  demos: demos.jsonl\n  num_samples: 6\n  \
             source: distill\n  distill: {{per_call: 3}}\n  seed: 2\n  verify: {{vote: {{n: 4, match_generated: false}}}}\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let output = run_in(root, &["run", "distill.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let mut questions: Vec<String> = strings(&data, "question").into_iter().flatten().collect();
    questions.sort();
    assert_eq!(questions.len(), 3, "{questions:?}");
    assert!(questions[0].starts_with("A baker"), "{questions:?}");
    assert!(strings(&data, "parent_id").iter().all(Option::is_some), "rows keep their demo as parent");
    let m = manifest(&root.join("out"));
    let candidates = m["nodes"]["qa"]["rows_out"].as_u64().unwrap();
    assert_eq!(m["nodes"]["fresh"]["rejected"].as_u64().unwrap(), candidates - 3, "{m:#}");
    // Only 3 distinct examples exist, fewer than the 6 asked: the recipe draws more, a bounded number of
    // times, then says so. (The first attempt: 6 x 1.5 = 9 examples from 2 demos at 3 per call = 2 calls each.)
    let top_up = &m["top_up"];
    assert_eq!(top_up["met"], false, "{top_up}");
    let attempts = top_up["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{top_up}");
    assert!(attempts.iter().all(|a| a["records"] == 3), "{top_up}");
    assert!(stderr(&output).contains("3 of the 6 records asked for after 4 attempts"), "{}", stderr(&output));
}

/// `source: web`: rows are sampled from a Hub dataset (a local Hub server here), keep their provenance and
/// their ground-truth answers verbatim, and go through the vote and score.
#[test]
fn a_web_task_samples_hub_rows_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let hub_root = root.join("hub");
    let questions: Vec<String> = (0..40).map(|i| format!("What is {i} plus {}?", i * 3)).collect();
    let answers: Vec<String> = (0..40).map(|i| format!("{i} + {} = {}\n#### {}", i * 3, i * 4, i * 4)).collect();
    common::hub_dataset(
        &hub_root,
        "acme/sums",
        &[
            ("question", questions.iter().map(|q| Some(q.as_str())).collect()),
            ("answer", answers.iter().map(|a| Some(a.as_str())).collect()),
        ],
    );
    let hub = common::TestHub::start(&hub_root, &[]);
    let server = TestServer::start(&["--skill", "teacher-model=1.0", "--skill", "student-model=mixed"]);
    write(
        root,
        "web.yaml",
        &format!(
            "task:\n  name: sums\n  instruction: Arithmetic word problems.\n  num_samples: 10\n  source: web\n  \
             web: {{datasets: [acme/sums]}}\n  seed: 3\n  verify: {{vote: {{n: 4, match_generated: false}}, score: {{k: 4}}}}\n\
             models:\n  teacher: {{base_url: \"{url}\", model: teacher-model}}\n  student: {{base_url: \"{url}\", model: student-model}}\n",
            url = server.url
        ),
    );
    let cache = root.join("cache");
    let run = |out: &str| {
        common::sdg()
            .current_dir(root)
            .env("HF_ENDPOINT", &hub.url)
            .args(["run", "web.yaml", "-o", out, "--quiet", "--workers", "2", "--cache-dir"])
            .arg(&cache)
            .output()
            .unwrap()
    };
    let output = run("out");
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let rejects = read_parquet_dir(&root.join("out/rejects"));
    let kept: usize = data.iter().map(|b| b.num_rows()).sum();
    let rejected: usize = rejects.iter().map(|b| b.num_rows()).sum();
    assert_eq!(kept + rejected, 15, "10 wanted x 1.5 oversampling, every row accounted for");
    assert!(kept > 0);
    let datasets = strings(&data, "hub_dataset");
    assert!(datasets.iter().all(|d| d.as_deref() == Some("acme/sums")), "{datasets:?}");
    assert!(strings(&data, "hub_split").iter().all(|s| s.as_deref() == Some("train")));
    // The ground truth is the dataset's own answer for that row, verbatim; the vote's answer sits beside it.
    let rows = strings(&data, "hub_row");
    let truths = strings(&data, "answer");
    let asked = strings(&data, "question");
    for ((row, truth), question) in rows.iter().zip(&truths).zip(&asked) {
        let index: usize = row.as_deref().unwrap().parse().unwrap();
        assert_eq!(truth.as_deref(), Some(answers[index].as_str()));
        assert_eq!(question.as_deref(), Some(questions[index].as_str()));
    }
    assert!(data[0].column_by_name("vote_answer").is_some() && data[0].column_by_name("category").is_some());

    // More samples wanted: the seeded draw extends the first one, so the rows already verified are answered
    // from the response cache.
    let text = std::fs::read_to_string(root.join("web.yaml")).unwrap().replace("num_samples: 10", "num_samples: 14");
    write(root, "web.yaml", &text);
    let requests_before = server.stats()["requests"].as_u64().unwrap();
    let output = run("more");
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&root.join("more"));
    let hits =
        m["models"]["teacher"]["cache_hits"].as_u64().unwrap() + m["models"]["student"]["cache_hits"].as_u64().unwrap();
    let sent = server.stats()["requests"].as_u64().unwrap() - requests_before;
    println!("second run: {hits} calls from the cache, {sent} sent");
    assert!(hits >= 15, "the first run's rows are reused: {hits} cache hits, {sent} sent");

    // `reformat`: the teacher rewrites the questions; the original stays in `text`, the answer is untouched.
    let text = std::fs::read_to_string(root.join("web.yaml"))
        .unwrap()
        .replace("web: {datasets: [acme/sums]}", "web: {datasets: [acme/sums], reformat: true}");
    write(root, "web.yaml", &text);
    let output = run("reformatted");
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("reformatted/data"));
    let rows = strings(&data, "hub_row");
    assert!(!rows.is_empty());
    let (asked, originals, truths) = (strings(&data, "question"), strings(&data, "text"), strings(&data, "answer"));
    for (i, row) in rows.iter().enumerate() {
        let index: usize = row.as_deref().unwrap().parse().unwrap();
        assert_eq!(originals[i].as_deref(), Some(questions[index].as_str()), "the original question is kept");
        assert_ne!(asked[i].as_deref(), Some(questions[index].as_str()), "the question was rewritten");
        assert_eq!(truths[i].as_deref(), Some(answers[index].as_str()), "the answer stays verbatim");
    }
}

/// `local` with queries: only the passages retrieved for the queries are asked about (hybrid BM25 + MiniLM,
/// thresholds drop the rest), and every row says which query chose it.
#[test]
fn a_local_task_with_queries_asks_only_about_retrieved_passages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_corpus(root, &[0, 1, 2, 3, 4, 5]);
    let server = TestServer::start(&["--skill", "teacher-model=1.0"]);
    write(
        root,
        "retrieve.yaml",
        &format!(
            "task:\n  name: rivers\n  instruction: Questions about rivers.\n  num_samples: 2\n  source: local\n  \
             local:\n    paths: [corpus]\n    min_chars: 40\n    queries: [\"rivers that flow into a sea\"]\n    \
             embedder: all-minilm-l6-v2\n    retrieval: {{top_k: 2, min_similarity: 0.3}}\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let plan = stdout(&run_in(root, &["plan", "retrieve.yaml"]));
    assert!(plan.contains("chunks [passages]"), "{plan}");
    let output = run_in(root, &["run", "retrieve.yaml", "-o", "out", "--quiet", "--workers", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let mut sources: Vec<String> = strings(&data, "passage_source").into_iter().flatten().collect();
    sources.sort();
    assert_eq!(sources, ["corpus/d0.txt", "corpus/d2.txt"], "the Nile and the Danube");
    assert!(strings(&data, "retrieval_query").iter().all(|q| q.as_deref() == Some("rivers that flow into a sea")));
    assert!(strings(&data, "question").iter().all(Option::is_some));
}

/// `extract_queries`: the teacher writes the retrieval queries from the task (structured output), and the
/// passages retrieved for them are the ones asked about.
#[test]
fn the_teacher_can_write_the_retrieval_queries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_corpus(root, &[0, 1, 2, 4]);
    let reply = serde_json::json!({"queries": ["which river reaches the sea", "Black Sea"], "keywords": ["Danube"]});
    let rules = serde_json::json!([{"contains": "search queries", "reply": reply.to_string()}]);
    write(root, "script.json", &rules.to_string());
    let server =
        TestServer::start(&["--skill", "teacher-model=1.0", "--script", root.join("script.json").to_str().unwrap()]);
    write(
        root,
        "extract.yaml",
        &format!(
            "task:\n  name: rivers\n  domain: rivers\n  instruction: Questions about rivers and seas.\n  num_samples: 2\n  \
             source: local\n  local: {{paths: [corpus], min_chars: 40, extract_queries: 2, retrieval: {{top_k: 1}}}}\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let output = run_in(root, &["run", "extract.yaml", "-o", "out", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let data = read_parquet_dir(&root.join("out/data"));
    let mut sources: Vec<String> = strings(&data, "passage_source").into_iter().flatten().collect();
    sources.sort();
    sources.dedup();
    assert_eq!(sources, ["corpus/d0.txt", "corpus/d2.txt"], "{:?}", strings(&data, "retrieval_query"));
    let queries: Vec<String> = strings(&data, "retrieval_query").into_iter().flatten().collect();
    assert!(
        queries.iter().all(|q| ["which river reaches the sea", "Black Sea", "rivers", "Danube"].contains(&q.as_str())),
        "{queries:?}"
    );
}

/// `num_samples` is met: when the vote drops rows, the recipe draws more and runs again (cached rows are
/// free), up to a bounded number of attempts recorded in the manifest.
#[test]
fn a_recipe_tops_up_until_num_samples_survive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let hub_root = root.join("hub");
    let questions: Vec<String> = (0..60).map(|i| format!("Question number {i}: what is {i} times 7?")).collect();
    common::hub_dataset(
        &hub_root,
        "acme/products",
        &[("question", questions.iter().map(|q| Some(q.as_str())).collect()), ("answer", vec![Some("#### 0"); 60])],
    );
    let hub = common::TestHub::start(&hub_root, &[]);
    // A teacher that never, sometimes or always knows the answer: votes on a third of the questions fail.
    let server = TestServer::start(&["--skill", "teacher-model=mixed"]);
    write(
        root,
        "web.yaml",
        &format!(
            "task:\n  name: products\n  instruction: Multiplication.\n  num_samples: 10\n  source: web\n  \
             web: {{datasets: [acme/products], oversample: 1.0}}\n  seed: 1\n  \
             verify: {{vote: {{n: 4, match_generated: false, min_agreement: 0.75}}}}\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let output = common::sdg()
        .current_dir(root)
        .env("HF_ENDPOINT", &hub.url)
        .args(["run", "web.yaml", "-o", "out", "--quiet"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&root.join("out"));
    let top_up = &m["top_up"];
    println!("{top_up:#}");
    assert_eq!(top_up["met"], true, "{top_up}");
    let attempts = top_up["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2 && attempts.len() <= 4, "{top_up}");
    assert!(attempts[0]["records"].as_u64().unwrap() < 10, "the first attempt falls short: {top_up}");
    let data = read_parquet_dir(&root.join("out/data"));
    let rows: usize = data.iter().map(|b| b.num_rows()).sum();
    assert!(rows >= 10, "{rows}");
    assert_eq!(rows as u64, attempts.last().unwrap()["records"].as_u64().unwrap());
    // Every attempt after the first re-asks nothing it asked before.
    let stats = server.stats();
    let sent = stats["requests"].as_u64().unwrap();
    let rows_drawn = m["nodes"]["rows"]["rows_out"].as_u64().unwrap();
    assert_eq!(sent, rows_drawn, "one vote call per distinct row drawn over all attempts");
}

/// `web.judge`: the teacher rates each dataset from a few rows and names its question and answer columns; the
/// irrelevant dataset is dropped and the relevant one's `problem` / `solution` become `question` / `answer`.
#[test]
fn the_teacher_judges_datasets_and_maps_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let hub_root = root.join("hub");
    let problems: Vec<String> = (0..20).map(|i| format!("Problem {i}: add {i} and {}.", i + 1)).collect();
    let solutions: Vec<String> = (0..20).map(|i| format!("#### {}", 2 * i + 1)).collect();
    common::hub_dataset(
        &hub_root,
        "acme/sums",
        &[
            ("problem", problems.iter().map(|q| Some(q.as_str())).collect()),
            ("solution", solutions.iter().map(|a| Some(a.as_str())).collect()),
        ],
    );
    common::hub_dataset(
        &hub_root,
        "acme/poems",
        &[("title", vec![Some("Autumn"); 20]), ("verse", vec![Some("Leaves fall."); 20])],
    );
    let rules = serde_json::json!([
        {"contains": "Dataset `acme/sums`", "reply": "{\"relevance\": 9, \"quality\": 8, \"question_field\": \"problem\", \"answer_field\": \"solution\"}"},
        {"contains": "Dataset `acme/poems`", "reply": "{\"relevance\": 1, \"quality\": 7, \"question_field\": \"title\", \"answer_field\": \"verse\"}"},
    ]);
    write(root, "script.json", &rules.to_string());
    let hub = common::TestHub::start(&hub_root, &[]);
    let server =
        TestServer::start(&["--skill", "teacher-model=1.0", "--script", root.join("script.json").to_str().unwrap()]);
    write(
        root,
        "judged.yaml",
        &format!(
            "task:\n  name: sums\n  domain: arithmetic\n  instruction: Addition problems.\n  num_samples: 6\n  source: web\n  \
             web: {{datasets: [acme/sums, acme/poems], judge: {{min_score: 6}}}}\n  seed: 2\n  \
             verify: {{vote: {{n: 4, match_generated: false}}}}\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let output = common::sdg()
        .current_dir(root)
        .env("HF_ENDPOINT", &hub.url)
        .args(["run", "judged.yaml", "-o", "out", "--quiet"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    // The judging calls, made before the run, are in the manifest's accounting with the run's own.
    let m = manifest(&root.join("out"));
    let attempts = m["top_up"]["attempts"].as_array().map_or(1, |a| a.len());
    let teacher = &m["models"]["teacher"];
    let asked = teacher["cache_hits"].as_u64().unwrap() + teacher["cache_misses"].as_u64().unwrap();
    let judged_and_verified =
        m["nodes"].as_object().unwrap().values().map(|n| n["model_calls"].as_u64().unwrap()).sum::<u64>() + 2;
    assert_eq!(asked, judged_and_verified, "2 judge calls + the nodes' calls ({attempts} attempts): {m:#}");
    if attempts == 1 {
        assert_eq!(teacher["requests"], server.stats()["requests"], "every request the server saw: {m:#}");
    }
    let data = read_parquet_dir(&root.join("out/data"));
    assert!(!data.is_empty());
    assert!(strings(&data, "hub_dataset").iter().all(|d| d.as_deref() == Some("acme/sums")));
    for ((question, answer), row) in
        strings(&data, "question").iter().zip(strings(&data, "answer")).zip(strings(&data, "hub_row"))
    {
        let index: usize = row.unwrap().parse().unwrap();
        assert_eq!(question.as_deref(), Some(problems[index].as_str()));
        assert_eq!(answer.as_deref(), Some(solutions[index].as_str()), "the ground truth, verbatim");
    }
}

/// A larger or smaller `num_samples` re-runs the local and distill recipes from the response cache: the
/// local graph does not depend on it, and distill asks each of its samples in a request of its own, so the
/// calls of a smaller run are a prefix of a larger one's.
#[test]
fn a_changed_num_samples_reuses_the_cache_for_local_and_distill() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_corpus(root, &[0, 1, 2, 3, 4, 5]);
    // The teacher writes the same three examples whenever asked for new ones.
    let server = examples_server(root, 2);
    let cache = root.join("cache");
    let run = |config: &str, out: &str| {
        let output = common::sdg()
            .current_dir(root)
            .args(["run", config, "-o", out, "--quiet", "--workers", "2", "--cache-dir"])
            .arg(&cache)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let m = manifest(&root.join(out));
        let endpoint = |name: &str, key: &str| m["models"][name][key].as_u64().unwrap_or(0);
        let hits = endpoint("teacher", "cache_hits") + endpoint("student", "cache_hits");
        let misses = endpoint("teacher", "cache_misses") + endpoint("student", "cache_misses");
        (hits, misses)
    };

    write(root, "local.yaml", &recipe(&server, ", match_generated: false"));
    let (_, first) = run("local.yaml", "local-6");
    assert!(first > 0);
    let text = std::fs::read_to_string(root.join("local.yaml")).unwrap().replace("num_samples: 6", "num_samples: 3");
    write(root, "local.yaml", &text);
    let before = server.stats()["requests"].as_u64().unwrap();
    let (hits, misses) = run("local.yaml", "local-3");
    println!("local: first run {first} calls; num_samples 6 -> 3: {hits} from the cache, {misses} sent");
    assert_eq!((misses, server.stats()["requests"].as_u64().unwrap() - before), (0, 0));
    assert!(hits >= first, "{hits} < {first}");

    let distill = |num_samples: usize| {
        format!(
            "task:\n  name: math\n  instruction: Grade-school word problems.\n  demos: demos.jsonl\n  num_samples: {num_samples}\n  \
             source: distill\n  distill: {{per_call: 1, overgenerate: 1}}\n  seed: 2\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        )
    };
    // 2 wanted from 2 demos at 1 per call: 1 call per demo; then 3 wanted: 2 calls per demo, the first cached.
    // (Each reply holds the same 3 examples, so 3 distinct records survive dedup: both are met at once.)
    write(root, "distill.yaml", &distill(2));
    let (hits, first) = run("distill.yaml", "distill-2");
    assert_eq!((hits, first), (0, 2));
    write(root, "distill.yaml", &distill(3));
    let (hits, misses) = run("distill.yaml", "distill-3");
    println!("distill: first run {first} calls; num_samples 2 -> 3: {hits} from the cache, {misses} sent");
    assert_eq!((hits, misses), (2, 2), "the first run's calls are reused, only the new ones are sent");
}

/// `distill.evolve`: the new questions go through Evol-Instruct rounds and the teacher answers the evolved
/// ones; each row keeps its evolution lineage.
#[test]
fn a_distill_task_can_evolve_its_questions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = examples_server(root, 1);
    write(
        root,
        "evolve.yaml",
        &format!(
            "task:\n  name: math\n  instruction: Grade-school word problems.\n  demos: demos.jsonl\n  num_samples: 2\n  \
             source: distill\n  distill: {{per_call: 2, evolve: 1}}\n  seed: 4\n\
             models:\n  teacher: {{base_url: \"{}\", model: teacher-model}}\n",
            server.url
        ),
    );
    let output = run_in(root, &["run", "evolve.yaml", "-o", "out", "--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let m = manifest(&root.join("out"));
    assert!(m["nodes"]["evolved"]["model_calls"].as_u64().unwrap() > 0, "{m:#}");
    assert!(m["nodes"]["answered"]["model_calls"].as_u64().unwrap() > 0, "{m:#}");
    let data = read_parquet_dir(&root.join("out/data"));
    let questions: Vec<String> = strings(&data, "question").into_iter().flatten().collect();
    assert!(!questions.is_empty());
    let scripted = ["A baker makes 24 rolls", "Anna has 45 stickers", "A train travels 60 km"];
    assert!(questions.iter().all(|q| !scripted.iter().any(|s| q.starts_with(s))), "evolved: {questions:?}");
    assert!(strings(&data, "evol_parent_id").iter().all(Option::is_some), "each row points at its parent");
    // The answers were written for the evolved questions (the test server quotes the prompt it answers).
    let answers: Vec<String> = strings(&data, "answer").into_iter().flatten().collect();
    for (question, answer) in questions.iter().zip(&answers) {
        assert!(answer.contains(question.as_str()), "{answer:?} does not answer {question:?}");
    }
}
