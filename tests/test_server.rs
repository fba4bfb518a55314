//! The `sdg-test-server` binary: started as a real process, spoken to over real HTTP/1.1 on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `sdg-test-server`, killed when dropped.
struct TestServer {
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl TestServer {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdg-test-server"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sdg-test-server starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reads the first line");
        // Owns the child from here on, so a failed start still kills it.
        let mut server = Self { addr: String::new(), child };
        let addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert_ne!(addr, "127.0.0.1:0", "the real port is printed");
        server.addr = addr;
        server
    }

    fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.request("POST", path, &[], &body.to_string(), None)
    }

    fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> HttpResponse {
        self.request("POST", path, headers, &body.to_string(), None)
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], "", None)
    }

    fn stats(&self) -> Value {
        let response = self.get("/stats");
        assert_eq!(response.status, 200);
        response.json()
    }

    /// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        read_timeout: Option<Duration>,
    ) -> HttpResponse {
        let mut stream = TcpStream::connect(&self.addr).expect("connects");
        stream.set_read_timeout(Some(read_timeout.unwrap_or(Duration::from_secs(30)))).expect("sets a timeout");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("sends the head");
        stream.write_all(body.as_bytes()).expect("sends the body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("reads the response");
        HttpResponse::parse(&raw)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct HttpResponse {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> Self {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
        let head = std::str::from_utf8(&raw[..split]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok());
        if let Some(length) = length {
            assert_eq!(body.len(), length, "the body has its announced length");
            body.truncate(length);
        }
        Self { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.text()))
    }
}

fn chat_request(prompt: &str, n: u32, temperature: f64) -> Value {
    json!({
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": prompt},
        ],
        "n": n,
        "temperature": temperature,
        "seed": 7,
    })
}

fn contents(response: &Value) -> Vec<String> {
    response["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["message"]["content"].as_str().expect("content").to_owned())
        .collect()
}

/// The digits after `#### ` in a plain-text answer.
fn final_answer(content: &str) -> &str {
    content.rsplit_once("#### ").map(|(_, digits)| digits).unwrap_or_else(|| panic!("no final answer in {content:?}"))
}

#[test]
fn chat_returns_n_choices_with_usage() {
    let server = TestServer::start(&[]);
    let response = server.post("/v1/chat/completions", &chat_request("What is 2+2?", 3, 0.0));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-ratelimit-limit-requests"), Some("10000"));
    assert!(response.header("x-ratelimit-remaining-requests").is_some());
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "test-model");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["created"].as_u64().is_some());
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["finish_reason"], "stop");
        let content = choice["message"]["content"].as_str().unwrap();
        assert!(content.starts_with(&format!("Answer {i} to [What is 2+2?]: #### ")), "{content}");
        assert!(final_answer(content).parse::<u8>().is_ok_and(|d| d < 100));
    }
    // "You are terse." + "What is 2+2?" = 26 characters -> 6 prompt tokens.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 6);
    let completion: u64 = contents(&body).iter().map(|c| (c.chars().count() as u64 / 4).max(1)).sum();
    assert_eq!(usage["completion_tokens"], completion);
    assert_eq!(usage["total_tokens"], 6 + completion);
}

#[test]
fn identical_requests_give_identical_content() {
    let server = TestServer::start(&[]);
    let request = chat_request("Name a prime.", 4, 0.0);
    let first = contents(&server.post("/v1/chat/completions", &request).json());
    let second = contents(&server.post("/v1/chat/completions", &request).json());
    assert_eq!(first, second);
    // Greedy samples agree on the answer.
    let answers: Vec<&str> = first.iter().map(|c| final_answer(c)).collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // Another seed is another request.
    let mut reseeded = request.clone();
    reseeded["seed"] = json!(8);
    let third = contents(&server.post("/v1/chat/completions", &reseeded).json());
    assert_eq!(third.len(), 4);
    assert_ne!(first, third);
}

#[test]
fn sampled_choices_differ_by_index() {
    let server = TestServer::start(&[]);
    let request = chat_request("Name a prime.", 4, 0.8);
    let body = server.post("/v1/chat/completions", &request).json();
    let answers: Vec<u64> = contents(&body).iter().map(|c| final_answer(c).parse().unwrap()).collect();
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(*answer, (answers[0] + i as u64) % 100, "{answers:?}");
    }
    assert_eq!(
        contents(&server.post("/v1/chat/completions", &request).json()),
        contents(&body),
        "sampling is deterministic too"
    );
}

#[test]
fn json_prompts_give_parseable_json() {
    let server = TestServer::start(&[]);
    let body = server
        .post("/v1/chat/completions", &chat_request("Reply in JSON with a question and an answer.", 2, 0.0))
        .json();
    let parsed: Vec<Value> =
        contents(&body).iter().map(|c| serde_json::from_str(c).expect("the content is JSON")).collect();
    for (i, object) in parsed.iter().enumerate() {
        let question = object["question"].as_str().unwrap();
        assert!(question.starts_with("Q-") && question.ends_with(&format!("-{i}")));
        assert!(object["answer"].as_str().unwrap().parse::<u8>().is_ok());
    }
    assert_eq!(parsed[0]["answer"], parsed[1]["answer"]);

    let mut with_schema = chat_request("Write a pair.", 1, 0.0);
    with_schema["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "pair", "schema": {
            "type": "object",
            "properties": {"instruction": {"type": "string"}, "response": {"type": "string"}},
        }},
    });
    let body = server.post("/v1/chat/completions", &with_schema).json();
    let object: Value = serde_json::from_str(&contents(&body)[0]).expect("the content is JSON");
    let object = object.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["instruction", "response"]);
    for (key, value) in object {
        let value = value.as_str().unwrap();
        assert!(value.starts_with(&format!("{key}-")) && value.ends_with("-0"), "{value}");
    }
}

#[test]
fn api_key_is_required_when_set() {
    let server = TestServer::start(&["--api-key", "sk-test"]);
    let request = chat_request("hi", 1, 0.0);
    for headers in [&[][..], &[("Authorization", "Bearer wrong")][..]] {
        let response = server.post_with("/v1/chat/completions", headers, &request);
        assert_eq!(response.status, 401);
        let error = response.json();
        assert_eq!(error["error"]["code"], "invalid_api_key");
        assert!(error["error"]["message"].is_string());
    }
    let response = server.post_with("/v1/chat/completions", &[("Authorization", "Bearer sk-test")], &request);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.stats()["faults"]["401"], 2);
}

#[test]
fn fail_500_answers_500() {
    let server = TestServer::start(&["--fail-500", "1.0", "--latency-ms", "5000"]);
    let started = Instant::now();
    let response = server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0));
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["error"]["type"], "server_error");
    assert!(started.elapsed() < Duration::from_secs(5), "faults skip latency");
    assert_eq!(server.stats()["faults"]["500"], 1);
}

#[test]
fn fail_429_answers_429_with_retry_after() {
    let server = TestServer::start(&["--fail-429", "1.0", "--retry-after-s", "3"]);
    let response = server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0));
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("3"));
    assert_eq!(response.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(response.json()["error"].is_object());
}

#[test]
fn malformed_answers_an_unparseable_body() {
    let server = TestServer::start(&["--malformed", "1.0"]);
    let response = server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0));
    assert_eq!(response.status, 200);
    assert!(serde_json::from_slice::<Value>(&response.body).is_err());
    assert_eq!(server.stats()["faults"]["malformed"], 1);
}

#[test]
fn truncated_answers_half_a_body() {
    let server = TestServer::start(&["--truncated", "1.0"]);
    let response = server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0));
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with(r#"{"id":"#), "{}", response.text());
    assert!(serde_json::from_slice::<Value>(&response.body).is_err());
    assert_eq!(server.stats()["faults"]["truncated"], 1);
}

#[test]
fn hang_never_answers() {
    let server = TestServer::start(&["--hang", "1.0"]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let body = chat_request("hi", 1, 0.0).to_string();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let error = stream.read(&mut buf).expect_err("no answer within 500 ms");
    assert!(matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    let stats = server.stats();
    assert_eq!(stats["faults"]["hang"], 1);
    assert_eq!(stats["in_flight"], 1);
}

#[test]
fn fault_sequence_follows_the_seed() {
    let run = |seed: &str| -> Vec<u16> {
        let server = TestServer::start(&["--fail-500", "0.5", "--fault-seed", seed]);
        (0..40).map(|_| server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0)).status).collect()
    };
    let first = run("3");
    assert_eq!(first, run("3"), "the same seed gives the same faults");
    let failures = first.iter().filter(|s| **s == 500).count();
    assert!((8..=32).contains(&failures), "{failures} of 40 failed");
    assert!(first.iter().all(|s| *s == 200 || *s == 500));
}

#[test]
fn ignore_n_answers_one_choice() {
    let server = TestServer::start(&["--ignore-n"]);
    let body = server.post("/v1/chat/completions", &chat_request("hi", 4, 0.7)).json();
    assert_eq!(body["choices"].as_array().unwrap().len(), 1);
}

#[test]
fn long_prompts_and_bad_bodies_get_400() {
    let server = TestServer::start(&["--max-context", "100"]);
    let response = server.post("/v1/chat/completions", &chat_request(&"x".repeat(101), 1, 0.0));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["code"], "context_length_exceeded");
    let response = server.request("POST", "/v1/chat/completions", &[], "{not json", None);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    assert_eq!(server.stats()["faults"]["400"], 2);
}

#[test]
fn stats_count_requests_and_reset_zeroes_them() {
    let server = TestServer::start(&[]);
    server.post("/v1/chat/completions", &chat_request("a", 1, 0.0));
    server.post("/v1/chat/completions", &chat_request("b", 1, 0.0));
    server.post("/v1/completions", &json!({"prompt": "c"}));
    server.post("/v1/embeddings", &json!({"input": "d"}));
    let stats = server.stats();
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["chat"], 2);
    assert_eq!(stats["completions"], 1);
    assert_eq!(stats["embeddings"], 1);
    assert_eq!(stats["in_flight"], 0);
    assert!(stats["max_in_flight"].as_u64().unwrap() >= 1);
    for key in ["500", "429", "malformed", "truncated", "hang", "401", "400"] {
        assert_eq!(stats["faults"][key], 0, "{key}");
    }
    let reset = server.request("POST", "/reset", &[], "", None);
    assert_eq!(reset.status, 200);
    let stats = server.stats();
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["chat"], 0);
    assert_eq!(stats["max_in_flight"], 0);
}

#[test]
fn latency_is_applied() {
    let server = TestServer::start(&["--latency-ms", "300"]);
    let started = Instant::now();
    let response = server.post("/v1/chat/completions", &chat_request("hi", 1, 0.0));
    assert_eq!(response.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn legacy_completions_follow_the_same_rule() {
    let server = TestServer::start(&[]);
    let body = server.post("/v1/completions", &json!({"prompt": ["one", "two"], "n": 2})).json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (k, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], k);
        let prompt = if k < 2 { "one" } else { "two" };
        let text = choice["text"].as_str().unwrap();
        assert!(text.starts_with(&format!("Answer {} to [{prompt}]: #### ", k % 2)), "{text}");
        assert_eq!(choice["finish_reason"], "stop");
    }
    // The prompt is answered as if it were the only user message.
    let chat =
        server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "one"}], "n": 1})).json();
    assert_eq!(contents(&chat)[0], choices[0]["text"].as_str().unwrap());
}

#[test]
fn embeddings_are_deterministic_unit_vectors() {
    let server = TestServer::start(&[]);
    let body = server.post("/v1/embeddings", &json!({"input": ["alpha", "beta", "alpha"]})).json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vectors: Vec<Vec<f64>> = data
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i);
            assert_eq!(item["object"], "embedding");
            item["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
        })
        .collect();
    for vector in &vectors {
        assert_eq!(vector.len(), 16);
        let norm: f64 = vector.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
}

#[test]
fn models_lists_the_model() {
    let server = TestServer::start(&["--model", "tiny"]);
    let response = server.get("/v1/models");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["data"][0]["id"], "tiny");
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let server = TestServer::start(&[]);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = chat_request("hi", 1, 0.0).to_string();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..3 {
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut length = None;
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut answer = vec![0u8; length.expect("a content-length")];
        reader.read_exact(&mut answer).unwrap();
        assert!(serde_json::from_slice::<Value>(&answer).is_ok());
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server() {
    let mut server = TestServer::start(&["--hang", "1.0"]);
    // A hung request must not hold the exit.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let body = chat_request("hi", 1, 0.0).to_string();
    write!(stream, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats()["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
