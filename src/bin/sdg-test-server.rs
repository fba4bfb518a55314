//! `sdg-test-server`: an OpenAI-compatible HTTP server with deterministic answers and injected faults.
//!
//! Tests and benchmarks of sdg's model service start it as a separate process and talk to it over HTTP.
//! On start it prints exactly one line to stdout, `listening on http://HOST:PORT` (the real port when
//! port 0 was asked), and it runs until SIGTERM or SIGINT.
//!
//! # Routes
//! - `POST /v1/chat/completions`: OpenAI chat request (`model`, `messages`, `n`, `temperature`, `top_p`,
//!   `max_tokens`, `stop`, `seed`, `response_format`; `top_p`, `max_tokens` and `stop` are accepted and
//!   ignored, `stream: true` is refused with 400).
//! - `POST /v1/completions`: legacy completions; `prompt` is a string or a list of strings. Choice
//!   `p * n + i` is sample `i` of prompt `p`, answered as if the prompt were the only (user) message.
//! - `POST /v1/embeddings`: `input` is a string or a list of strings; each gets a 16-dimensional unit vector.
//! - `GET /v1/models`: `{"object":"list","data":[{"id": MODEL, ...}]}`.
//! - `GET /stats`: counters as JSON (see [`Stats`]); `POST /reset` zeroes them and returns the zeroed stats.
//! - `POST /hold`: answers that are ready wait (are not sent) until `POST /release`; `POST /release?discard=1`
//!   answers the waiting ones with 503 instead, uncounted. A crash test holds the answers for a moment
//!   before it kills the client, so the kill never lands between an answer's last byte and the client
//!   reading it: the one window no client can close.
//!
//! When `--api-key KEY` is set, every `/v1/*` request must carry `Authorization: Bearer KEY`, or it gets
//! 401 with an OpenAI-style error (`code: invalid_api_key`). `/stats` and `/reset` never need a key.
//!
//! # The content rule (what a test can predict)
//! For a chat request, let `canon` be the bytes
//! `{"messages":M,"seed":S,"temperature":T}` where `M` is the request's `messages` array written as
//! compact JSON with every object's keys sorted, `S` the seed or `null`, `T` the temperature as
//! serde_json writes an `f64` (e.g. `0.7`, `0.0`) or `null`. Let `h` be the first 8 bytes of
//! `blake3(canon)` read as a big-endian `u64`, and `HASH` = `format!("{h:016x}")`. For the sample with
//! index `i` (0-based), the answer digits are
//! - `h % 100` when the temperature is absent or `<= 0` (all samples agree), else
//! - `(h % 100 + i) % 100` (samples differ by index),
//!
//! written in decimal without padding. The content of sample `i` is then, first match wins:
//! 1. `response_format.type == "json_schema"`: a JSON object with the keys of
//!    `response_format.json_schema.schema.properties` (in the request's order), each with the string
//!    value `"<key>-<HASH>-<i>"` (`{}` when the schema has no properties);
//! 2. `response_format.type == "json_object"`, or the last `user` message contains `JSON`
//!    (case-sensitive): `{"question":"Q-<HASH>-<i>","answer":"<digits>"}`;
//! 3. otherwise plain text: `Answer <i> to [<first 40 chars of the last user message>]: #### <digits>`.
//!
//! A message's text is its `content` string, or the concatenated `text` of its content parts; the
//! last user message is empty when there is none. `finish_reason` is always `"stop"`.
//! Usage: `prompt_tokens = max(1, prompt_chars / 4)` with `prompt_chars` the total characters of all
//! messages' texts; `completion_tokens` = the sum over choices of `max(1, content_chars / 4)`.
//! A prompt longer than `--max-context` characters gets 400 with code `context_length_exceeded`.
//!
//! # Answer-key mode (`--skill MODEL=P`)
//! With at least one `--skill`, the server is in answer-key mode: the `<digits>` of rules 2 and 3 (chat
//! and legacy completions alike) follow an answer key instead of `h`, so that samples can agree and a
//! model has a pass rate. The shapes, `HASH`, `<i>` and the json_schema values (rule 1) do not change.
//! For sample `i`:
//! - `q` (the question): the first 8 bytes of `blake3(L)` read as a big-endian `u64`, with `L` the UTF-8
//!   bytes of the last user message's text (for legacy completions: the prompt string). It does not
//!   depend on the seed, the temperature, the other messages or the model.
//! - The right answer is `r = q % 100`.
//! - `M` (the model): the request's `model` string; when absent or `null`, the server's `--model`.
//! - The skill `p` of `M`: from `--skill M=P` (a later `--skill` for the same name wins), where `P` is
//!   a number in `[0, 1]`, or the word `mixed`: a per-question skill, `p = [0.0, 0.5, 1.0][(q >> 8) % 3]`.
//!   A model without `--skill` has `p = 1.0`.
//! - The draw: `j = i` when the temperature is `> 0`, else `j = 0` (all samples agree); `s` = the seed,
//!   or 0 when absent. `d = blake3(q.to_be_bytes() ++ s.to_be_bytes() ++ (j as u64).to_be_bytes() ++ M)`
//!   (three 8-byte big-endian integers, then the UTF-8 bytes of `M`, nothing in between). `x` = bytes
//!   `0..8` of `d` and `w` = bytes `8..16` of `d`, each read as a big-endian `u64`;
//!   `u = (x >> 11) as f64 / 2^53` in `[0, 1)`.
//! - The digits: `r` when `u < p` (right), else `(r + 1 + w % 4) % 100` (wrong: one of the 4 values
//!   after `r`, never `r`). So `p = 1.0` is always right and `p = 0.0` always wrong.
//!
//! A `--skill` value without `=`, with an empty name, or with a `P` that is neither a number in `[0, 1]`
//! nor `mixed` is a command-line error (exit status 2).
//!
//! # Scripted replies (`--script FILE`)
//! `FILE` is a JSON array of rules `{"contains": STRING, "reply": STRING, "model": STRING, "delay_ms": N}`
//! (`model` and `delay_ms` optional; other keys are an error). A chat answer decided by a rule with
//! `delay_ms` waits that long more before it is sent (after `--latency-ms`), so a test can make replies
//! come back in an order of its choosing. It is read at start: an unreadable or invalid file makes the
//! server print a message on stderr and exit with status 2 before it listens. For a chat request, the
//! rules are tried in file order; the first whose `contains` is a substring of the last user message's
//! text (case-sensitive; `""` matches every request) and whose `model`, when given, equals `M` (the
//! request's `model`, else `--model`) decides the content of every choice: its `reply`, verbatim. This
//! comes before rules 1-3 (json_schema included) and before the answer key. For legacy completions each
//! prompt is matched on its own, with the prompt string as the last user message. Usage is counted as
//! for any other content. `/stats` counts in `scripted` the requests where at least one choice was
//! scripted (faulted ones included, as in `requests`).
//!
//! Embeddings: the 64-byte blake3 XOF output of the input's UTF-8 bytes gives 16 little-endian `u32`s,
//! each mapped to `u / u32::MAX * 2 - 1`, and the vector is scaled to unit length.
//!
//! # Faults
//! A `/v1/*` POST that passes the key check and parses is the `k`-th (0-based, since start or the last
//! `/reset`) fault-eligible request. `u` = the `k`-th output of splitmix64 seeded with `--fault-seed`,
//! taken as `(x >> 11) / 2^53` in `[0, 1)`. With the rates as cumulative thresholds, in this order:
//! `hang` (no answer for an hour), `fail-500` (500, `{"error":{"message":"injected","type":"server_error"}}`),
//! `fail-429` (429 with `Retry-After: <retry-after-s>` and `x-ratelimit-remaining-requests: 0`),
//! `malformed` (200 with the body `{"choices": [`), `truncated` (200 with the first half of the normal
//! body). Each rate is the exact fraction of such requests that get that fault; the rates must sum to at
//! most 1. Faults answer at once; every other answer waits `--latency-ms` first. Normal answers carry
//! `x-ratelimit-limit-requests: 10000` and `x-ratelimit-remaining-requests: 10000 - in_flight`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The server shares 2 cores with the engine under test: keep allocation cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests per window that the server claims to allow (only reported in headers).
const RATE_LIMIT_REQUESTS: u64 = 10_000;
/// Largest `n` a request may ask for.
const MAX_N: u32 = 128;
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 20;
/// Dimension of the embeddings.
const EMBEDDING_DIM: usize = 16;
/// How long a hung request waits: longer than any client timeout.
const HANG: Duration = Duration::from_secs(3600);

const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");

/// An OpenAI-compatible HTTP server with deterministic answers and injected faults, for tests.
#[derive(Debug, Parser)]
#[command(name = "sdg-test-server", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Delay before every non-fault answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Model name reported by /v1/models and used when a request names none.
    #[arg(long, default_value = "test-model")]
    model: String,
    /// Require `Authorization: Bearer KEY` on /v1/* routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_500: f64,
    /// Fraction of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_429: f64,
    /// Retry-After seconds sent with 429 answers.
    #[arg(long, default_value_t = 1)]
    retry_after_s: u64,
    /// Fraction of requests answered 200 with invalid JSON.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    malformed: f64,
    /// Fraction of requests answered 200 with the first half of the normal body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    truncated: f64,
    /// Fraction of requests never answered (the server waits an hour).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    hang: f64,
    /// Answer one choice whatever `n` asks.
    #[arg(long)]
    ignore_n: bool,
    /// Seed of the fault sequence.
    #[arg(long, default_value_t = 0)]
    fault_seed: u64,
    /// Longest prompt accepted, in characters; longer prompts get 400 `context_length_exceeded`.
    #[arg(long, default_value_t = 8000)]
    max_context: usize,
    /// `MODEL=P`: the pass rate of MODEL in answer-key mode, a number in [0, 1] or `mixed` (repeatable).
    #[arg(long, value_name = "MODEL=P", value_parser = parse_skill)]
    skill: Vec<SkillArg>,
    /// JSON file of scripted replies: `[{"contains": ..., "reply": ..., "model": ...}]`.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
}

/// How often a model answers right in answer-key mode.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Skill {
    /// Right with this probability on every question.
    Fixed(f64),
    /// Per question: 0.0, 0.5 or 1.0 by `(q >> 8) % 3`.
    Mixed,
}

impl Skill {
    /// The probability of a right answer to question `q`.
    fn pass_rate(self, q: u64) -> f64 {
        match self {
            Skill::Fixed(p) => p,
            Skill::Mixed => [0.0, 0.5, 1.0][(q >> 8) as usize % 3],
        }
    }
}

/// One `--skill MODEL=P`.
#[derive(Clone, Debug)]
struct SkillArg {
    model: String,
    skill: Skill,
}

fn parse_skill(text: &str) -> Result<SkillArg, String> {
    let (model, value) = text.rsplit_once('=').ok_or_else(|| format!("`{text}` is not MODEL=P"))?;
    if model.is_empty() {
        return Err(format!("`{text}` names no model"));
    }
    let skill = if value == "mixed" {
        Skill::Mixed
    } else {
        let p: f64 = value.parse().map_err(|_| format!("`{value}` is neither a number in [0, 1] nor `mixed`"))?;
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("`{value}` is not a pass rate in [0, 1]"));
        }
        Skill::Fixed(p)
    };
    Ok(SkillArg { model: model.to_owned(), skill })
}

/// One rule of the `--script` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptRule {
    contains: String,
    reply: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    delay_ms: u64,
}

fn load_script(path: &Path) -> Result<Vec<ScriptRule>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read the script {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("invalid script {}: {e}", path.display()))
}

/// The content rules that come from the command line: scripted replies and the answer key.
struct Rules {
    script: Vec<ScriptRule>,
    /// `None` outside answer-key mode; else the skills by model name (a later `--skill` wins).
    skills: Option<HashMap<String, Skill>>,
}

impl Rules {
    /// The first script rule matching `last_user` for `model`.
    fn scripted(&self, last_user: &str, model: &str) -> Option<&ScriptRule> {
        self.script
            .iter()
            .find(|rule| last_user.contains(&rule.contains) && rule.model.as_deref().is_none_or(|m| m == model))
    }

    /// The answer key of `last_user` for `model`, in answer-key mode.
    fn answer_key(&self, last_user: &str, model: &str, seed: Option<u64>, sampled: bool) -> Option<AnswerKey> {
        let skills = self.skills.as_ref()?;
        let q = first_u64(blake3::hash(last_user.as_bytes()).as_bytes());
        let p = skills.get(model).map_or(1.0, |skill| skill.pass_rate(q));
        Some(AnswerKey { q, p, seed: seed.unwrap_or(0), sampled, model: model.to_owned() })
    }
}

/// The answer key of one prompt for one model (see the module docs).
struct AnswerKey {
    q: u64,
    p: f64,
    seed: u64,
    sampled: bool,
    model: String,
}

impl AnswerKey {
    fn digits(&self, index: u32) -> u64 {
        let right = self.q % 100;
        let j = if self.sampled { u64::from(index) } else { 0 };
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.q.to_be_bytes());
        hasher.update(&self.seed.to_be_bytes());
        hasher.update(&j.to_be_bytes());
        hasher.update(self.model.as_bytes());
        let digest = hasher.finalize();
        let x = first_u64(digest.as_bytes());
        let w = first_u64(&digest.as_bytes()[8..]);
        if unit_interval(x) < self.p { right } else { (right + 1 + w % 4) % 100 }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("`{text}` is not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) { Ok(rate) } else { Err(format!("`{text}` is not a fraction in [0, 1]")) }
}

/// Request counters. All are zeroed by `POST /reset` except `in_flight`, which is a gauge;
/// `max_in_flight` restarts from the current `in_flight`.
#[derive(Default)]
struct Stats {
    /// POSTs to /v1/chat/completions, /v1/completions and /v1/embeddings, faulted ones included.
    requests: AtomicU64,
    chat: AtomicU64,
    completions: AtomicU64,
    embeddings: AtomicU64,
    fault_500: AtomicU64,
    fault_429: AtomicU64,
    malformed: AtomicU64,
    truncated: AtomicU64,
    hang: AtomicU64,
    fault_401: AtomicU64,
    fault_400: AtomicU64,
    /// Requests with at least one scripted choice (`--script`).
    scripted: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Index of the next fault-eligible request (position in the splitmix64 sequence).
    fault_draws: AtomicU64,
    /// Clean answers per distinct request body (by a hash of it): a client that re-sends a request it was
    /// already answered shows up here with a count above 1.
    answered: std::sync::Mutex<HashMap<u64, Answered>>,
    started: std::sync::OnceLock<std::time::Instant>,
}

/// The clean answers to one distinct request body.
#[derive(Default)]
struct Answered {
    times: u64,
    /// Milliseconds since the server started, per answer (for reporting repeats).
    at_ms: Vec<u64>,
    /// The start of the request body, to recognise it in a report.
    head: String,
}

#[derive(Serialize)]
struct StatsView {
    requests: u64,
    chat: u64,
    completions: u64,
    embeddings: u64,
    faults: FaultsView,
    in_flight: u64,
    max_in_flight: u64,
    scripted: u64,
    /// Clean (not faulted) answers, and how many distinct request bodies they answered.
    answered: u64,
    answered_distinct: u64,
    /// Request bodies answered more than once, and the most times one was answered.
    answered_more_than_once: u64,
    max_answers_per_request: u64,
    /// The requests answered more than once: the body's start and when each answer was sent.
    repeated: Vec<Value>,
    /// Milliseconds since the server started (the clock of `at_ms`).
    now_ms: u64,
}

#[derive(Serialize)]
struct FaultsView {
    #[serde(rename = "500")]
    fault_500: u64,
    #[serde(rename = "429")]
    fault_429: u64,
    malformed: u64,
    truncated: u64,
    hang: u64,
    #[serde(rename = "401")]
    fault_401: u64,
    #[serde(rename = "400")]
    fault_400: u64,
}

impl Stats {
    fn view(&self) -> StatsView {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (counts, repeated): (Vec<u64>, Vec<Value>) = self
            .answered
            .lock()
            .map(|a| {
                let counts = a.values().map(|x| x.times).collect();
                let repeated = a
                    .values()
                    .filter(|x| x.times > 1)
                    .map(|x| serde_json::json!({"body": x.head, "at_ms": x.at_ms}))
                    .collect();
                (counts, repeated)
            })
            .unwrap_or_default();
        StatsView {
            now_ms: self.started.get().map_or(0, |s| s.elapsed().as_millis() as u64),
            repeated,
            answered: counts.iter().sum(),
            answered_distinct: counts.len() as u64,
            answered_more_than_once: counts.iter().filter(|&&n| n > 1).count() as u64,
            max_answers_per_request: counts.iter().copied().max().unwrap_or(0),
            requests: load(&self.requests),
            chat: load(&self.chat),
            completions: load(&self.completions),
            embeddings: load(&self.embeddings),
            faults: FaultsView {
                fault_500: load(&self.fault_500),
                fault_429: load(&self.fault_429),
                malformed: load(&self.malformed),
                truncated: load(&self.truncated),
                hang: load(&self.hang),
                fault_401: load(&self.fault_401),
                fault_400: load(&self.fault_400),
            },
            in_flight: load(&self.in_flight),
            max_in_flight: load(&self.max_in_flight),
            scripted: load(&self.scripted),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.chat,
            &self.completions,
            &self.embeddings,
            &self.fault_500,
            &self.fault_429,
            &self.malformed,
            &self.truncated,
            &self.hang,
            &self.fault_401,
            &self.fault_400,
            &self.scripted,
            &self.fault_draws,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Ok(mut answered) = self.answered.lock() {
            answered.clear();
        }
        self.max_in_flight.store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Counts a model request as in flight until dropped (also when the client goes away).
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the server answers a fault-eligible request with, before looking at its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Hang,
    Status500,
    Status429,
    Malformed,
    Truncated,
}

/// The server's configuration and counters, shared by all handlers.
struct Server {
    /// `(held, discards)`: whether ready answers wait, and how many times waiting answers were discarded.
    hold: tokio::sync::watch::Sender<(bool, u64)>,
    args: Args,
    /// `Bearer KEY`, when a key is required.
    expected_authorization: Option<Vec<u8>>,
    /// `--script` and `--skill`.
    rules: Rules,
    stats: Stats,
}

impl Server {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        match &self.expected_authorization {
            None => true,
            Some(expected) => headers.get(AUTHORIZATION).is_some_and(|v| v.as_bytes() == expected.as_slice()),
        }
    }

    fn draw_fault(&self) -> Fault {
        let k = self.stats.fault_draws.fetch_add(1, Ordering::Relaxed);
        let u = unit_interval(splitmix64_nth(self.args.fault_seed, k));
        let a = &self.args;
        let mut threshold = 0.0;
        for (rate, fault) in [
            (a.hang, Fault::Hang),
            (a.fail_500, Fault::Status500),
            (a.fail_429, Fault::Status429),
            (a.malformed, Fault::Malformed),
            (a.truncated, Fault::Truncated),
        ] {
            threshold += rate;
            if u < threshold {
                return fault;
            }
        }
        Fault::None
    }

    fn remaining_requests(&self) -> u64 {
        RATE_LIMIT_REQUESTS.saturating_sub(self.stats.in_flight.load(Ordering::Relaxed))
    }

    /// Answers a parsed request: draws a fault, applies latency, and sends `body` (or its fault).
    /// `request` (a hash of the request body) counts the clean answers per distinct request.
    async fn answer(&self, request: (u64, String), body: Vec<u8>) -> Response {
        let stats = &self.stats;
        match self.draw_fault() {
            Fault::None => {
                if self.args.latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(self.args.latency_ms)).await;
                }
                let mut hold = self.hold.subscribe();
                let discards = hold.borrow().1;
                while hold.borrow_and_update().0 {
                    if hold.changed().await.is_err() {
                        break;
                    }
                }
                if hold.borrow().1 != discards {
                    return error_response(StatusCode::SERVICE_UNAVAILABLE, "discarded", "server_error", None);
                }
                // Counted once the answer is about to be sent: a client that went away during the latency
                // dropped this future, and was not answered.
                let at_ms = stats.started.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64;
                if let Ok(mut answered) = stats.answered.lock() {
                    let entry = answered.entry(request.0).or_default();
                    entry.times += 1;
                    entry.at_ms.push(at_ms);
                    entry.head = request.1;
                }
                let remaining = self.remaining_requests();
                let mut response = json_response(StatusCode::OK, body);
                let headers = response.headers_mut();
                headers.insert(LIMIT_HEADER, HeaderValue::from(RATE_LIMIT_REQUESTS));
                headers.insert(REMAINING_HEADER, HeaderValue::from(remaining));
                response
            }
            Fault::Hang => {
                stats.hang.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(HANG).await;
                error_response(StatusCode::GATEWAY_TIMEOUT, "hung", "server_error", None)
            }
            Fault::Status500 => {
                stats.fault_500.fetch_add(1, Ordering::Relaxed);
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    br#"{"error":{"message":"injected","type":"server_error"}}"#.to_vec(),
                )
            }
            Fault::Status429 => {
                stats.fault_429.fetch_add(1, Ordering::Relaxed);
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "injected rate limit",
                    "rate_limit_error",
                    Some("rate_limit_exceeded"),
                );
                let headers = response.headers_mut();
                headers.insert(RETRY_AFTER, HeaderValue::from(self.args.retry_after_s));
                headers.insert(LIMIT_HEADER, HeaderValue::from(RATE_LIMIT_REQUESTS));
                headers.insert(REMAINING_HEADER, HeaderValue::from_static("0"));
                response
            }
            Fault::Malformed => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                json_response(StatusCode::OK, br#"{"choices": ["#.to_vec())
            }
            Fault::Truncated => {
                stats.truncated.fetch_add(1, Ordering::Relaxed);
                let mut body = body;
                body.truncate(body.len() / 2);
                json_response(StatusCode::OK, body)
            }
        }
    }

    fn unauthorized(&self) -> Response {
        self.stats.fault_401.fetch_add(1, Ordering::Relaxed);
        error_response(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )
    }

    fn bad_request(&self, error: BadRequest) -> Response {
        self.stats.fault_400.fetch_add(1, Ordering::Relaxed);
        error_response(StatusCode::BAD_REQUEST, &error.message, "invalid_request_error", error.code)
    }
}

/// A request the server refuses with 400.
struct BadRequest {
    message: String,
    code: Option<&'static str>,
}

impl BadRequest {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: None }
    }

    fn context_length(chars: usize, max: usize) -> Self {
        Self {
            message: format!(
                "This model's maximum context length is {max} characters, \
                 but the prompt has {chars} characters."
            ),
            code: Some("context_length_exceeded"),
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        error: ErrorDetail<'a>,
    }
    #[derive(Serialize)]
    struct ErrorDetail<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        param: Option<&'a str>,
        code: Option<&'a str>,
    }
    let body = ErrorBody { error: ErrorDetail { message, kind, param: None, code } };
    json_response(status, to_json(&body))
}

/// Serializes a response value; our response types always serialize.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// The `k`-th (0-based) output of splitmix64 seeded with `seed`.
fn splitmix64_nth(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps 64 random bits to `[0, 1)`.
fn unit_interval(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes `value` as compact JSON with every object's keys sorted.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (j, (key, item)) in entries.into_iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&to_json(key));
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (j, item) in items.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(&to_json(scalar)),
    }
}

/// `h` of the content rule: the first 8 bytes of blake3 over the canonical (messages, seed, temperature).
fn request_hash(messages: &Value, temperature: Option<f64>, seed: Option<u64>) -> u64 {
    let mut canon = Vec::with_capacity(256);
    canon.extend_from_slice(br#"{"messages":"#);
    write_canonical(messages, &mut canon);
    canon.extend_from_slice(br#","seed":"#);
    canon.extend_from_slice(&to_json(&seed));
    canon.extend_from_slice(br#","temperature":"#);
    canon.extend_from_slice(&to_json(&temperature));
    canon.push(b'}');
    first_u64(blake3::hash(&canon).as_bytes())
}

/// The first 8 bytes of `bytes` (at least 8) as a big-endian `u64`.
fn first_u64(bytes: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first)
}

/// The text of a message's `content`: a string, or the concatenated `text` of its parts.
fn message_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// How the content of every choice of one request is shaped.
enum ContentShape {
    /// The reply of a `--script` rule, verbatim.
    Scripted(String),
    /// Keys of the requested JSON schema's `properties`.
    Schema(Vec<String>),
    QuestionAnswer,
    Plain {
        excerpt: String,
    },
}

/// Everything the content rule needs about one prompt.
struct Prompt {
    hash: u64,
    sampled: bool,
    shape: ContentShape,
    /// The answer key, in answer-key mode.
    key: Option<AnswerKey>,
}

impl Prompt {
    /// `model` is the request's model, or the server's when the request names none.
    fn new(
        rules: &Rules,
        model: &str,
        messages: &Value,
        last_user: &str,
        temperature: Option<f64>,
        seed: Option<u64>,
        response_format: Option<&Value>,
    ) -> Self {
        let sampled = temperature.is_some_and(|t| t > 0.0);
        let format_type = response_format.and_then(|f| f.get("type")).and_then(Value::as_str);
        let scripted = rules.scripted(last_user, model).map(|rule| ContentShape::Scripted(rule.reply.clone()));
        let shape = scripted.unwrap_or_else(|| match format_type {
            Some("json_schema") => {
                let keys = response_format
                    .and_then(|f| f.pointer("/json_schema/schema/properties"))
                    .and_then(Value::as_object)
                    .map(|props| props.keys().cloned().collect())
                    .unwrap_or_default();
                ContentShape::Schema(keys)
            }
            Some("json_object") => ContentShape::QuestionAnswer,
            _ if last_user.contains("JSON") => ContentShape::QuestionAnswer,
            _ => ContentShape::Plain { excerpt: last_user.chars().take(40).collect() },
        });
        let key = match shape {
            ContentShape::QuestionAnswer | ContentShape::Plain { .. } => {
                rules.answer_key(last_user, model, seed, sampled)
            }
            ContentShape::Scripted(_) | ContentShape::Schema(_) => None,
        };
        Self { hash: request_hash(messages, temperature, seed), sampled, shape, key }
    }

    fn is_scripted(&self) -> bool {
        matches!(self.shape, ContentShape::Scripted(_))
    }

    fn digits(&self, index: u32) -> u64 {
        if let Some(key) = &self.key {
            return key.digits(index);
        }
        let base = self.hash % 100;
        if self.sampled { (base + u64::from(index)) % 100 } else { base }
    }

    fn content(&self, index: u32) -> String {
        let hash = self.hash;
        match &self.shape {
            ContentShape::Scripted(reply) => reply.clone(),
            ContentShape::Schema(keys) => {
                let object: serde_json::Map<String, Value> =
                    keys.iter().map(|key| (key.clone(), Value::String(format!("{key}-{hash:016x}-{index}")))).collect();
                Value::Object(object).to_string()
            }
            ContentShape::QuestionAnswer => {
                format!(r#"{{"question":"Q-{hash:016x}-{index}","answer":"{}"}}"#, self.digits(index))
            }
            ContentShape::Plain { excerpt } => {
                format!("Answer {index} to [{excerpt}]: #### {}", self.digits(index))
            }
        }
    }
}

fn tokens(chars: usize) -> u64 {
    (chars / 4).max(1) as u64
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Value,
    n: Option<u32>,
    temperature: Option<f64>,
    seed: Option<u64>,
    response_format: Option<Value>,
    #[serde(default)]
    stream: bool,
}

#[derive(Serialize)]
struct ChatResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Value,
    n: Option<u32>,
    temperature: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

#[derive(Serialize)]
struct CompletionResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    text: String,
    finish_reason: &'static str,
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
}

#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: [f32; EMBEDDING_DIM],
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest::new(format!("invalid request body: {e}")))
}

/// The number of samples to answer: `n` (default 1), or 1 with `--ignore-n`.
fn samples(n: Option<u32>, ignore_n: bool) -> Result<u32, BadRequest> {
    let n = n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(BadRequest::new(format!("n must be in 1..={MAX_N}, got {n}")));
    }
    Ok(if ignore_n { 1 } else { n })
}

/// A list of strings, or one string, from `prompt` or `input`.
fn string_list(value: &Value, field: &str) -> Result<Vec<String>, BadRequest> {
    let invalid = || BadRequest::new(format!("`{field}` must be a string or a list of strings"));
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid)).collect()
        }
        _ => Err(invalid()),
    }
}

/// A chat answer, and the extra wait its script rule asks for.
fn chat_body(server: &Server, body: &[u8], id: u64) -> Result<(Vec<u8>, Duration), BadRequest> {
    let request: ChatRequest = parse(body)?;
    if request.stream {
        return Err(BadRequest::new("streaming is not supported"));
    }
    let messages = request
        .messages
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| BadRequest::new("`messages` must be a non-empty list"))?;
    let mut prompt_chars = 0;
    let mut last_user = String::new();
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| BadRequest::new("every message needs a string `role`"))?;
        let text = message_text(message.get("content"));
        prompt_chars += text.chars().count();
        if role == "user" {
            last_user = text;
        }
    }
    if prompt_chars > server.args.max_context {
        return Err(BadRequest::context_length(prompt_chars, server.args.max_context));
    }
    let n = samples(request.n, server.args.ignore_n)?;
    let model = request.model.as_deref().unwrap_or(&server.args.model);
    let prompt = Prompt::new(
        &server.rules,
        model,
        &request.messages,
        &last_user,
        request.temperature,
        request.seed,
        request.response_format.as_ref(),
    );
    if prompt.is_scripted() {
        server.stats.scripted.fetch_add(1, Ordering::Relaxed);
    }
    let delay = Duration::from_millis(server.rules.scripted(&last_user, model).map_or(0, |rule| rule.delay_ms));
    let mut completion_tokens = 0;
    let choices = (0..n)
        .map(|index| {
            let content = prompt.content(index);
            completion_tokens += tokens(content.chars().count());
            ChatChoice { index, message: AssistantMessage { role: "assistant", content }, finish_reason: "stop" }
        })
        .collect();
    let prompt_tokens = tokens(prompt_chars);
    let body = to_json(&ChatResponse {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion",
        created: now_unix(),
        model,
        choices,
        usage: Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens },
    });
    Ok((body, delay))
}

fn completion_body(server: &Server, body: &[u8], id: u64) -> Result<Vec<u8>, BadRequest> {
    let request: CompletionRequest = parse(body)?;
    if request.stream {
        return Err(BadRequest::new("streaming is not supported"));
    }
    let prompts = string_list(&request.prompt, "prompt")?;
    let n = samples(request.n, server.args.ignore_n)?;
    let model = request.model.as_deref().unwrap_or(&server.args.model);
    let mut scripted = false;
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    let mut choices = Vec::with_capacity(prompts.len() * n as usize);
    for (p, text) in prompts.into_iter().enumerate() {
        let chars = text.chars().count();
        if chars > server.args.max_context {
            return Err(BadRequest::context_length(chars, server.args.max_context));
        }
        prompt_tokens += tokens(chars);
        let messages = serde_json::json!([{ "role": "user", "content": text }]);
        let prompt = Prompt::new(&server.rules, model, &messages, &text, request.temperature, request.seed, None);
        scripted |= prompt.is_scripted();
        for i in 0..n {
            let text = prompt.content(i);
            completion_tokens += tokens(text.chars().count());
            choices.push(CompletionChoice { index: p as u32 * n + i, text, finish_reason: "stop" });
        }
    }
    if scripted {
        server.stats.scripted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(to_json(&CompletionResponse {
        id: format!("cmpl-{id}"),
        object: "text_completion",
        created: now_unix(),
        model,
        choices,
        usage: Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens },
    }))
}

/// A deterministic unit vector for `text` (see the module docs).
fn embed(text: &str) -> [f32; EMBEDDING_DIM] {
    let mut bytes = [0u8; EMBEDDING_DIM * 4];
    blake3::Hasher::new().update(text.as_bytes()).finalize_xof().fill(&mut bytes);
    let mut raw = [0f64; EMBEDDING_DIM];
    for (value, chunk) in raw.iter_mut().zip(bytes.chunks_exact(4)) {
        let u = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        *value = f64::from(u) / f64::from(u32::MAX) * 2.0 - 1.0;
    }
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut vector = [0f32; EMBEDDING_DIM];
    if norm > 0.0 {
        for (out, value) in vector.iter_mut().zip(raw) {
            *out = (value / norm) as f32;
        }
    } else {
        vector[0] = 1.0;
    }
    vector
}

fn embedding_body(server: &Server, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let request: EmbeddingRequest = parse(body)?;
    let inputs = string_list(&request.input, "input")?;
    let mut prompt_tokens = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, text) in inputs.iter().enumerate() {
        let chars = text.chars().count();
        if chars > server.args.max_context {
            return Err(BadRequest::context_length(chars, server.args.max_context));
        }
        prompt_tokens += tokens(chars);
        data.push(Embedding { object: "embedding", index, embedding: embed(text) });
    }
    Ok(to_json(&EmbeddingResponse {
        object: "list",
        data,
        model: request.model.as_deref().unwrap_or(&server.args.model),
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    }))
}

/// The model routes.
#[derive(Clone, Copy)]
enum Route {
    Chat,
    Completions,
    Embeddings,
}

/// Shared path of the three model routes: count, check the key, parse, then answer or fault.
async fn handle_model_request(server: &Server, route: Route, headers: &HeaderMap, body: &[u8]) -> Response {
    let stats = &server.stats;
    let id = stats.requests.fetch_add(1, Ordering::Relaxed);
    let route_counter = match route {
        Route::Chat => &stats.chat,
        Route::Completions => &stats.completions,
        Route::Embeddings => &stats.embeddings,
    };
    route_counter.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::enter(stats);
    if !server.authorized(headers) {
        return server.unauthorized();
    }
    let answer = match route {
        Route::Chat => chat_body(server, body, id),
        Route::Completions => completion_body(server, body, id).map(|answer| (answer, Duration::ZERO)),
        Route::Embeddings => embedding_body(server, body).map(|answer| (answer, Duration::ZERO)),
    };
    match answer {
        Ok((answer, delay)) => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let request = {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut hasher);
                hasher.finish()
            };
            let head: String = String::from_utf8_lossy(&body[..body.len().min(160)]).into_owned();
            server.answer((request, head), answer).await
        }
        Err(error) => server.bad_request(error),
    }
}

async fn chat(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    handle_model_request(&server, Route::Chat, &headers, &body).await
}

async fn completions(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    handle_model_request(&server, Route::Completions, &headers, &body).await
}

async fn embeddings(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    handle_model_request(&server, Route::Embeddings, &headers, &body).await
}

async fn models(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if !server.authorized(&headers) {
        return server.unauthorized();
    }
    let body = serde_json::json!({
        "object": "list",
        "data": [{
            "id": server.args.model,
            "object": "model",
            "created": 0,
            "owned_by": "sdg-test-server",
        }],
    });
    json_response(StatusCode::OK, to_json(&body))
}

async fn stats(State(server): State<Arc<Server>>) -> Response {
    json_response(StatusCode::OK, to_json(&server.stats.view()))
}

async fn reset(State(server): State<Arc<Server>>) -> Response {
    server.stats.reset();
    json_response(StatusCode::OK, to_json(&server.stats.view()))
}

async fn hold(State(server): State<Arc<Server>>) -> Response {
    server.hold.send_modify(|state| state.0 = true);
    json_response(StatusCode::OK, b"{\"held\":true}".to_vec())
}

async fn release(
    State(server): State<Arc<Server>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let discard = query.is_some_and(|q| q.split('&').any(|kv| kv == "discard=1" || kv == "discard=true"));
    server.hold.send_modify(|state| {
        state.0 = false;
        if discard {
            state.1 += 1;
        }
    });
    json_response(StatusCode::OK, b"{\"held\":false}".to_vec())
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/hold", post(hold))
        .route("/release", post(release))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(server)
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn serve(server: Arc<Server>) -> std::io::Result<()> {
    use std::io::Write as _;

    let listener = bind(server.args.bind)?;
    let local = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}")?;
        stdout.flush()?;
    }
    let listener = listener.tap_io(|stream| {
        // Accepted sockets usually inherit TCP_NODELAY; set it anyway.
        let _ = stream.set_nodelay(true);
    });
    tokio::select! {
        served = axum::serve(listener, router(server)) => served,
        () = shutdown_signal() => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let total = args.hang + args.fail_500 + args.fail_429 + args.malformed + args.truncated;
    if total > 1.0 {
        eprintln!("sdg-test-server: the fault rates sum to {total}, more than 1");
        return std::process::ExitCode::from(2);
    }
    let script = match args.script.as_deref().map(load_script).transpose() {
        Ok(script) => script.unwrap_or_default(),
        Err(e) => {
            eprintln!("sdg-test-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let skills = (!args.skill.is_empty()).then(|| args.skill.iter().map(|s| (s.model.clone(), s.skill)).collect());
    let rules = Rules { script, skills };
    let expected_authorization = args.api_key.as_ref().map(|key| format!("Bearer {key}").into_bytes());
    let (hold, _) = tokio::sync::watch::channel((false, 0));
    let server = Arc::new(Server { hold, args, expected_authorization, rules, stats: Stats::default() });
    let _ = server.stats.started.set(std::time::Instant::now());
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sdg-test-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(server));
    // Hung requests must not hold the exit.
    runtime.shutdown_background();
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdg-test-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
