//! `sdg-test-server`'s answer-key mode (`--skill`) and scripted replies (`--script`), over real HTTP.
//!
//! The expected answers are computed here from the rules in the server's module docs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

/// One HTTP/1.1 POST on a fresh connection; `path` is relative to `/v1`. Returns the status and JSON body.
fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let address = server.url.trim_start_matches("http://").trim_end_matches("/v1");
    let body = body.to_string();
    let mut stream = TcpStream::connect(address).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /v1{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reads the response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let text = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
    (status, json)
}

fn chat(server: &TestServer, body: &Value) -> Vec<String> {
    let (status, response) = post(server, "/chat/completions", body);
    assert_eq!(status, 200, "{response}");
    response["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["message"]["content"].as_str().expect("content").to_owned())
        .collect()
}

fn request(model: &str, system: &str, question: &str, n: u32, temperature: Option<f64>, seed: u64) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "n": n,
        "seed": seed,
    });
    if let Some(t) = temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// The digits after `#### ` in a plain answer.
fn digits(content: &str) -> u64 {
    content.rsplit_once("#### ").and_then(|(_, d)| d.parse().ok()).unwrap_or_else(|| panic!("no answer in {content:?}"))
}

fn first_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

/// `q`: the question's hash.
fn question_hash(question: &str) -> u64 {
    first_u64(blake3::hash(question.as_bytes()).as_bytes())
}

/// The documented draw: `(u, w)` for question `q`, model, seed `s` and draw index `j`.
fn draw(q: u64, model: &str, seed: u64, j: u64) -> (f64, u64) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&q.to_be_bytes());
    bytes.extend_from_slice(&seed.to_be_bytes());
    bytes.extend_from_slice(&j.to_be_bytes());
    bytes.extend_from_slice(model.as_bytes());
    let digest = blake3::hash(&bytes);
    let x = first_u64(digest.as_bytes());
    let w = first_u64(&digest.as_bytes()[8..]);
    ((x >> 11) as f64 / (1u64 << 53) as f64, w)
}

/// The documented skill `mixed`.
fn mixed_skill(q: u64) -> f64 {
    [0.0, 0.5, 1.0][((q >> 8) % 3) as usize]
}

/// The documented digits of sample `i`.
fn expected(question: &str, model: &str, p: f64, seed: u64, temperature: Option<f64>, i: u64) -> u64 {
    let q = question_hash(question);
    let r = q % 100;
    let j = if temperature.is_some_and(|t| t > 0.0) { i } else { 0 };
    let (u, w) = draw(q, model, seed, j);
    if u < p { r } else { (r + 1 + w % 4) % 100 }
}

const SKILLS: &[&str] =
    &["--skill", "strong=1.0", "--skill", "weak=0.0", "--skill", "mid=mixed", "--skill", "half=0.5"];

#[test]
fn strong_models_agree_on_the_right_answer() {
    let server = TestServer::start(SKILLS);
    let question = "What is 17 times 3?";
    let r = question_hash(question) % 100;
    let answers: Vec<u64> = chat(&server, &request("strong", "You are terse.", question, 8, Some(0.8), 7))
        .iter()
        .map(|c| digits(c))
        .collect();
    assert_eq!(answers, vec![r; 8]);
    // The question's hash ignores the system message, the seed and the temperature.
    for (system, seed, temperature) in [("Think step by step.", 7, Some(0.8)), ("", 99, None), ("x", 0, Some(1.3))] {
        let answers: Vec<u64> = chat(&server, &request("strong", system, question, 4, temperature, seed))
            .iter()
            .map(|c| digits(c))
            .collect();
        assert_eq!(answers, vec![r; 4], "{system:?} {seed} {temperature:?}");
    }
    // The plain shape is unchanged.
    let contents = chat(&server, &request("strong", "s", question, 2, Some(0.8), 7));
    assert_eq!(contents[1], format!("Answer 1 to [{question}]: #### {r}"));
}

#[test]
fn weak_models_are_always_wrong_within_four_values() {
    let server = TestServer::start(SKILLS);
    for question in ["What is 17 times 3?", "How many legs has a spider?", "Name the 10th prime."] {
        let r = question_hash(question) % 100;
        let wrong: Vec<u64> = (1..=4).map(|k| (r + k) % 100).collect();
        let contents = chat(&server, &request("weak", "You are terse.", question, 8, Some(0.8), 7));
        for (i, content) in contents.iter().enumerate() {
            let d = digits(content);
            assert_ne!(d, r, "{content}");
            assert!(wrong.contains(&d), "{d} not in {wrong:?}");
            assert_eq!(d, expected(question, "weak", 0.0, 7, Some(0.8), i as u64));
        }
    }
}

#[test]
fn greedy_samples_agree() {
    let server = TestServer::start(SKILLS);
    for model in ["half", "mid", "weak", "strong"] {
        for temperature in [Some(0.0), None, Some(-1.0)] {
            for question in ["What is 17 times 3?", "How many legs has a spider?", "Name the 10th prime."] {
                let answers: Vec<u64> = chat(&server, &request(model, "sys", question, 6, temperature, 3))
                    .iter()
                    .map(|c| digits(c))
                    .collect();
                let want = expected(question, model, skill_of(model, question), 3, temperature, 0);
                assert_eq!(answers, vec![want; 6], "{model} {temperature:?} {question}");
            }
        }
    }
}

fn skill_of(model: &str, question: &str) -> f64 {
    match model {
        "weak" => 0.0,
        "half" => 0.5,
        "mid" => mixed_skill(question_hash(question)),
        _ => 1.0,
    }
}

#[test]
fn unlisted_models_are_always_right() {
    let server = TestServer::start(SKILLS);
    for q in 0..20 {
        let question = format!("Unlisted question {q}?");
        let r = question_hash(&question) % 100;
        let answers: Vec<u64> =
            chat(&server, &request("other", "s", &question, 8, Some(1.0), q)).iter().map(|c| digits(c)).collect();
        assert_eq!(answers, vec![r; 8]);
        // No `model`: the server's `--model` (test-model), unlisted too.
        let body = json!({"messages": [{"role": "user", "content": question}], "n": 3, "temperature": 0.9});
        let answers: Vec<u64> = chat(&server, &body).iter().map(|c| digits(c)).collect();
        assert_eq!(answers, vec![r; 3]);
    }
}

#[test]
fn json_answers_and_legacy_completions_follow_the_answer_key() {
    let server = TestServer::start(SKILLS);
    let question = "Reply in JSON: what is 6 times 7?";
    let r = question_hash(question) % 100;
    for content in chat(&server, &request("strong", "s", question, 3, Some(0.8), 1)) {
        let object: Value = serde_json::from_str(&content).expect("JSON content");
        assert_eq!(object["answer"], r.to_string());
        assert!(object["question"].as_str().unwrap().starts_with("Q-"));
    }
    let prompts = ["What is 6 times 7?", "What is 5 times 8?"];
    let body = json!({"model": "half", "prompt": prompts, "n": 4, "temperature": 0.8, "seed": 5});
    let (status, response) = post(&server, "/completions", &body);
    assert_eq!(status, 200, "{response}");
    let choices = response["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 8);
    for (k, choice) in choices.iter().enumerate() {
        let (p, i) = (k / 4, k % 4);
        let text = choice["text"].as_str().unwrap();
        assert!(text.starts_with(&format!("Answer {i} to [{}]", prompts[p])), "{text}");
        assert_eq!(digits(text), expected(prompts[p], "half", 0.5, 5, Some(0.8), i as u64), "{text}");
    }
}

#[test]
fn pass_rate_matches_a_fixed_skill() {
    let server = TestServer::start(&["--skill", "noisy=0.6"]);
    let (mut right, mut total) = (0, 0);
    for q in 0..200 {
        let question = format!("Question number {q}: what is {q} plus {}?", q * 7 % 13);
        let r = question_hash(&question) % 100;
        let contents = chat(&server, &request("noisy", "Solve it.", &question, 8, Some(0.8), 11));
        for (i, content) in contents.iter().enumerate() {
            let d = digits(content);
            assert_eq!(d, expected(&question, "noisy", 0.6, 11, Some(0.8), i as u64), "{content}");
            right += usize::from(d == r);
            total += 1;
        }
    }
    let rate = right as f64 / total as f64;
    assert!((rate - 0.6).abs() <= 0.05, "{right} of {total} right");
}

#[test]
fn mixed_skill_sorts_questions_by_difficulty() {
    let server = TestServer::start(SKILLS);
    let mut levels = [0usize; 3];
    let (mut half_right, mut half_total) = (0, 0);
    for q in 0..60 {
        let question = format!("Mixed question {q}: how many?");
        let hash = question_hash(&question);
        let r = hash % 100;
        let level = ((hash >> 8) % 3) as usize;
        levels[level] += 1;
        let contents = chat(&server, &request("mid", "s", &question, 8, Some(0.8), 2));
        let right = contents.iter().filter(|c| digits(c) == r).count();
        for (i, content) in contents.iter().enumerate() {
            assert_eq!(digits(content), expected(&question, "mid", mixed_skill(hash), 2, Some(0.8), i as u64));
        }
        match level {
            0 => assert_eq!(right, 0, "{question}: unsolved"),
            2 => assert_eq!(right, 8, "{question}: solved"),
            _ => {
                half_right += right;
                half_total += 8;
            }
        }
    }
    assert!(levels.iter().all(|&count| count >= 5), "{levels:?}");
    let rate = half_right as f64 / half_total as f64;
    assert!((rate - 0.5).abs() <= 0.15, "{half_right} of {half_total} right at skill 0.5");
}

#[test]
fn bad_skill_values_are_command_line_errors() {
    for value in ["noequals", "m=1.5", "m=-0.1", "m=abc", "m=NaN", "=0.5"] {
        let output = Command::new(env!("CARGO_BIN_EXE_sdg-test-server"))
            .args(["--bind", "127.0.0.1:0", "--skill", value])
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--skill"), "{value}: {stderr}");
        assert!(output.stdout.is_empty(), "{value}");
    }
}

const SCRIPT: &str = r#"[
    {"contains": "Translate to German:", "model": "deutsch", "reply": "Hallo Welt"},
    {"contains": "Translate to", "reply": "Bonjour le monde"},
    {"contains": "Give JSON", "reply": "not json at all"}
]"#;

#[test]
fn scripted_replies_answer_every_sample_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let script = common::write(dir.path(), "script.json", SCRIPT);
    let server = TestServer::start(&["--script", script.to_str().unwrap()]);
    let plain = TestServer::start(&[]);

    let contents = chat(&server, &request("any", "s", "Translate to French: hello world", 5, Some(0.8), 1));
    assert_eq!(contents, vec!["Bonjour le monde"; 5]);
    // Usage as for other answers: 16 characters -> 4 tokens per choice.
    let (_, response) = post(&server, "/chat/completions", &request("any", "s", "Translate to X", 3, None, 1));
    assert_eq!(response["usage"]["completion_tokens"], 12);

    // A model-restricted rule only for its model; the next rule still matches for others.
    let german = "Translate to German: hello world";
    assert_eq!(chat(&server, &request("deutsch", "s", german, 2, Some(0.8), 1)), vec!["Hallo Welt"; 2]);
    assert_eq!(chat(&server, &request("english", "s", german, 2, Some(0.8), 1)), vec!["Bonjour le monde"; 2]);

    // Before json_schema and JSON prompts.
    let mut with_schema = request("any", "s", "Translate to French: cat", 3, Some(0.8), 1);
    with_schema["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "pair", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
    });
    assert_eq!(chat(&server, &with_schema), vec!["Bonjour le monde"; 3]);
    assert_eq!(chat(&server, &request("any", "s", "Give JSON please", 2, None, 1)), vec!["not json at all"; 2]);

    // Only the last user message is matched.
    let body = json!({"messages": [
        {"role": "system", "content": "Translate to French:"},
        {"role": "user", "content": "Translate to Spanish: dog"},
        {"role": "assistant", "content": "perro"},
        {"role": "user", "content": "thanks"},
    ], "n": 2, "temperature": 0.5});
    let unscripted = chat(&server, &body);
    assert_eq!(unscripted, chat(&plain, &body), "no rule: the normal content");
    assert!(unscripted[0].starts_with("Answer 0 to [thanks]: #### "), "{}", unscripted[0]);
    let mut with_schema = request("any", "s", "Describe a cat", 1, None, 1);
    with_schema["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "pair", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
    });
    assert_eq!(chat(&server, &with_schema), chat(&plain, &with_schema));

    // Legacy completions match each prompt on its own.
    let body = json!({"model": "deutsch", "prompt": ["Translate to German: one", "two"], "n": 2});
    let (status, response) = post(&server, "/completions", &body);
    assert_eq!(status, 200, "{response}");
    let texts: Vec<&str> =
        response["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(&texts[..2], ["Hallo Welt", "Hallo Welt"]);
    assert!(texts[2].starts_with("Answer 0 to [two]: #### ") && texts[3].starts_with("Answer 1 to [two]: #### "));

    let stats = server.stats();
    assert_eq!(stats["scripted"], 7, "{stats}");
    assert_eq!(stats["chat"], 8, "{stats}");
    assert_eq!(plain.stats()["scripted"], 0);
}

#[test]
fn scripts_come_before_the_answer_key() {
    let dir = tempfile::tempdir().unwrap();
    let script = common::write(dir.path(), "script.json", SCRIPT);
    let server = TestServer::start(&["--script", script.to_str().unwrap(), "--skill", "weak=0"]);
    assert_eq!(
        chat(&server, &request("weak", "s", "Translate to French: hi", 2, Some(0.8), 1)),
        vec!["Bonjour le monde"; 2]
    );
    let question = "What is 2+2?";
    let r = question_hash(question) % 100;
    let answers: Vec<u64> =
        chat(&server, &request("weak", "s", question, 4, Some(0.8), 1)).iter().map(|c| digits(c)).collect();
    assert!(answers.iter().all(|&d| d != r), "{answers:?}");
}

/// Runs the server with `args` until it exits (at most 20 s), returning its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sdg-test-server"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn invalid_scripts_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not-json.json", "[{\"contains\": "),
        ("not-a-list.json", r#"{"contains": "a", "reply": "b"}"#),
        ("no-reply.json", r#"[{"contains": "a"}]"#),
        ("unknown-key.json", r#"[{"contains": "a", "reply": "b", "modle": "m"}]"#),
    ];
    for (name, text) in cases {
        let path = common::write(dir.path(), name, text);
        let (code, stderr) = run_to_exit(&["--script", path.to_str().unwrap()]);
        assert!(code.is_some_and(|c| c != 0), "{name}: {code:?}");
        assert!(stderr.contains("invalid script"), "{name}: {stderr}");
    }
    let missing = dir.path().join("missing.json");
    let (code, stderr) = run_to_exit(&["--script", missing.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    assert!(stderr.contains("cannot read the script"), "{stderr}");
}
