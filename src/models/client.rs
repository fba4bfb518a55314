//! One request to an OpenAI-compatible server, with its failure sorted into retryable or fatal.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sdg_operators::model::{ModelReply, Prompt, Sampling, Usage};

use super::spec::ModelSpec;
use crate::io::retry::{self, Class, Outcome, RetryStatuses};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// 408, 409, 429, 5xx ([`RetryStatuses::OPENAI`]), timeout, connection reset, truncated or malformed
    /// body: worth another try.
    /// `overload` marks the failures that say "slow down" (429, timeouts), which shrink the concurrency.
    Retryable { message: String, retry_after: Option<Duration>, overload: bool },
    /// 400 (context length, bad request), 404: this request will never succeed.
    Fatal(String),
    /// 401/403: no request to this endpoint will succeed; the run stops.
    Auth(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Retryable { message, .. } | CallError::Fatal(message) | CallError::Auth(message) => {
                f.write_str(message)
            }
        }
    }
}

/// A successful call: the reply, and whether the server asked us to slow down.
#[derive(Debug)]
pub struct Answer {
    pub reply: ModelReply,
    pub slow_down: bool,
}

/// An HTTP client for one endpoint. Clones share the connection pool.
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    /// Parsed once: parsing a URL per request shows up in profiles at thousands of requests per second.
    chat_url: reqwest::Url,
    completions_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    model: String,
    api_key: Option<String>,
}

impl OpenAiClient {
    pub fn new(spec: &ModelSpec, api_key: Option<String>) -> Result<Self, String> {
        // Any TLS provider must be installed once per process before the first client is built.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(spec.timeout_s))
            .pool_max_idle_per_host(spec.max_concurrency)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let base = spec.base_url.trim_end_matches('/');
        let url = |route: &str| {
            reqwest::Url::parse(&format!("{base}/{route}")).map_err(|e| format!("bad base_url `{base}`: {e}"))
        };
        Ok(OpenAiClient {
            http,
            chat_url: url("chat/completions")?,
            completions_url: url("completions")?,
            embeddings_url: url("embeddings")?,
            model: spec.model.clone(),
            api_key,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The request body for `prompt` with `n` samples.
    fn body(&self, prompt: &Prompt, sampling: &Sampling, n: u32) -> (String, Value) {
        let mut body = match prompt {
            Prompt::Chat(messages) => {
                json!({"model": self.model, "messages": messages})
            }
            Prompt::Completion(text) => json!({"model": self.model, "prompt": text}),
            Prompt::Embed(inputs) => return ("embeddings".into(), json!({"model": self.model, "input": inputs})),
        };
        let object = body.as_object_mut().expect("built as an object");
        if n > 1 {
            object.insert("n".into(), json!(n));
        }
        for (key, value) in [
            ("temperature", sampling.temperature.map(|v| json!(v))),
            ("top_p", sampling.top_p.map(|v| json!(v))),
            ("top_k", sampling.top_k.map(|v| json!(v))),
            ("max_tokens", sampling.max_tokens.map(|v| json!(v))),
            ("seed", sampling.seed.map(|v| json!(v))),
        ] {
            if let Some(value) = value {
                object.insert(key.into(), value);
            }
        }
        if !sampling.stop.is_empty() {
            object.insert("stop".into(), json!(sampling.stop));
        }
        if let Some(schema) = &sampling.json_schema {
            object.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                    "strict": strict_compatible(schema)}}),
            );
        }
        let route = if matches!(prompt, Prompt::Chat(_)) { "chat/completions" } else { "completions" };
        (route.into(), body)
    }

    /// Performs one request asking for `n` samples.
    /// Performs one request asking for `n` samples. `Answer::slow_down` is set when the server's
    /// `x-ratelimit-remaining-requests` header says its request budget is spent.
    pub async fn call(&self, prompt: &Prompt, sampling: &Sampling, n: u32) -> Result<Answer, CallError> {
        let (route, body) = self.body(prompt, sampling, n);
        let started = Instant::now();
        let url = match route.as_str() {
            "chat/completions" => &self.chat_url,
            "embeddings" => &self.embeddings_url,
            _ => &self.completions_url,
        };
        let mut request = self.http.post(url.clone()).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| transport_error("request failed", e))?;
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        let slow_down = response
            .headers()
            .get("x-ratelimit-remaining-requests")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0");
        let bytes = response.bytes().await.map_err(|e| transport_error("body cut short", e))?;
        if !status.is_success() {
            let detail = error_detail(&bytes);
            let message = format!("HTTP {}: {detail}", status.as_u16());
            return Err(match retry::classify(Outcome::Status(status.as_u16()), RetryStatuses::OPENAI) {
                Class::Auth => CallError::Auth(message),
                Class::Retry { overload } => CallError::Retryable { message, retry_after, overload },
                Class::Success | Class::Fatal => CallError::Fatal(message),
            });
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| CallError::Retryable {
            message: format!("malformed response body: {e}"),
            retry_after: None,
            overload: false,
        })?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let reply = parse_reply(&value, &self.model, latency_ms).map_err(|message| CallError::Retryable {
            message,
            retry_after: None,
            overload: false,
        })?;
        Ok(Answer { reply, slow_down })
    }
}

/// The message of an OpenAI-style error body, or the start of the body. Never includes request headers.
fn error_detail(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes)
        && let Some(message) = value.pointer("/error/message").and_then(Value::as_str)
    {
        return message.to_string();
    }
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string()
}

/// A failure without an answer (connection, timeout, body cut short): retried, and a timeout says "slow
/// down", as the shared policy sorts them.
fn transport_error(what: &str, error: reqwest::Error) -> CallError {
    let overload = match retry::classify(Outcome::Transport { timeout: error.is_timeout() }, RetryStatuses::OPENAI) {
        Class::Retry { overload } => overload,
        _ => false,
    };
    CallError::Retryable { overload, message: format!("{what}: {}", describe(error)), retry_after: None }
}

fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        format!("cannot connect ({})", error.without_url())
    } else {
        error.without_url().to_string()
    }
}

/// Reads choices, embeddings and usage out of a response.
fn parse_reply(value: &Value, fallback_model: &str, latency_ms: f64) -> Result<ModelReply, String> {
    let model = value.get("model").and_then(Value::as_str).unwrap_or(fallback_model).to_string();
    let usage = Usage {
        prompt_tokens: value.pointer("/usage/prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: value.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    };
    if let Some(data) = value.get("data").and_then(Value::as_array) {
        let embeddings = data
            .iter()
            .map(|item| {
                item.get("embedding")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
                    .ok_or_else(|| "embedding item without `embedding`".to_string())
            })
            .collect::<Result<Vec<Vec<f32>>, String>>()?;
        return Ok(ModelReply { texts: vec![], embeddings, model, usage, latency_ms, cached: false });
    }
    let choices = value.get("choices").and_then(Value::as_array).ok_or("response has no `choices`")?;
    let mut indexed: Vec<(u64, String)> = choices
        .iter()
        .enumerate()
        .map(|(i, choice)| {
            let text = choice
                .pointer("/message/content")
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str)
                .ok_or_else(|| "choice without text".to_string())?;
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            Ok((index, text.to_string()))
        })
        .collect::<Result<_, String>>()?;
    indexed.sort_by_key(|(index, _)| *index);
    Ok(ModelReply {
        texts: indexed.into_iter().map(|(_, t)| t).collect(),
        embeddings: vec![],
        model,
        usage,
        latency_ms,
        cached: false,
    })
}

/// Whether OpenAI's strict structured output accepts `schema`: every object closed
/// (`additionalProperties: false`) with all its properties required. Strict mode refuses other schemas
/// with a 400, so those are sent as a non-strict hint.
fn strict_compatible(schema: &Value) -> bool {
    let Some(map) = schema.as_object() else { return true };
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map_or(Vec::new(), |r| r.iter().filter_map(Value::as_str).collect());
        if map.get("additionalProperties") != Some(&Value::Bool(false))
            || properties.keys().any(|k| !required.contains(&k.as_str()))
            || !properties.values().all(strict_compatible)
        {
            return false;
        }
    }
    map.get("items").is_none_or(strict_compatible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chat_choices_in_index_order_and_usage() {
        let value = json!({"model": "m1", "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "b"}},
            {"index": 0, "message": {"role": "assistant", "content": "a"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        let reply = parse_reply(&value, "x", 1.0).unwrap();
        assert_eq!(reply.texts, vec!["a", "b"]);
        assert_eq!(reply.model, "m1");
        assert_eq!(reply.usage, Usage { prompt_tokens: 7, completion_tokens: 3 });
    }

    #[test]
    fn parses_completions_and_embeddings_and_refuses_garbage() {
        let reply = parse_reply(&json!({"choices": [{"text": "t"}]}), "x", 0.0).unwrap();
        assert_eq!((reply.texts, reply.model.as_str()), (vec!["t".to_string()], "x"));
        let reply = parse_reply(&json!({"data": [{"embedding": [0.5, 0.25]}]}), "x", 0.0).unwrap();
        assert_eq!(reply.embeddings, vec![vec![0.5f32, 0.25]]);
        assert!(parse_reply(&json!({"nothing": 1}), "x", 0.0).is_err());
    }

    #[test]
    fn body_carries_sampling_and_schema() {
        let spec = spec_for("http://127.0.0.1:1/v1/".into());
        let client = OpenAiClient::new(&spec, None).unwrap();
        let sampling = Sampling {
            n: 3,
            temperature: Some(0.5),
            stop: vec!["\n".into()],
            seed: Some(9),
            json_schema: Some(json!({"type": "object"})),
            ..Default::default()
        };
        let (route, body) = client.body(&Prompt::Chat(vec![]), &sampling, 3);
        assert_eq!(route, "chat/completions");
        assert_eq!(body["n"], 3);
        assert_eq!(body["seed"], 9);
        assert_eq!(body["stop"], json!(["\n"]));
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert!(body.get("top_p").is_none());
    }

    #[test]
    fn strict_mode_only_for_schemas_strict_mode_accepts() {
        let closed = json!({"type": "object", "additionalProperties": false, "required": ["a", "b"],
            "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "object",
                "additionalProperties": false, "required": ["c"], "properties": {"c": {"type": "number"}}}}}});
        assert!(strict_compatible(&closed));
        let mut open_item = closed.clone();
        open_item["properties"]["b"]["items"]["additionalProperties"] = json!(true);
        assert!(!strict_compatible(&open_item));
        let mut optional = closed.clone();
        optional["required"] = json!(["a"]);
        assert!(!strict_compatible(&optional));
        assert!(strict_compatible(&json!({"type": "string"})));
    }

    /// A one-shot HTTP server on a std socket: answers the first request with `response`.
    fn one_shot(response: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            stream.write_all(response.as_bytes()).unwrap();
        });
        format!("http://{address}/v1")
    }

    fn spec_for(base_url: String) -> ModelSpec {
        serde_json::from_value(
            json!({"base_url": base_url, "model": "m", "max_concurrency": 1, "timeout_s": 5.0, "max_retries": 0}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_exhausted_request_budget_header_asks_to_slow_down() {
        let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}"#;
        let response = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-ratelimit-remaining-requests: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let client = OpenAiClient::new(&spec_for(one_shot(response)), None).unwrap();
        let answer = client.call(&Prompt::Chat(vec![]), &Sampling::default(), 1).await.unwrap();
        assert!(answer.slow_down);
        assert_eq!(answer.reply.texts, vec!["ok"]);
    }

    #[tokio::test]
    async fn statuses_are_sorted_into_retryable_fatal_and_auth() {
        for (status, expect) in [
            ("429 Too Many Requests", "retry"),
            ("503 Unavailable", "retry"),
            ("400 Bad Request", "fatal"),
            ("401 Unauthorized", "auth"),
        ] {
            let response = Box::leak(
                format!("HTTP/1.1 {status}\r\nretry-after: 2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .into_boxed_str(),
            );
            let client = OpenAiClient::new(&spec_for(one_shot(response)), Some("sk-never-shown".into())).unwrap();
            let error = client.call(&Prompt::Chat(vec![]), &Sampling::default(), 1).await.unwrap_err();
            match (expect, &error) {
                ("retry", CallError::Retryable { retry_after, overload, .. }) => {
                    assert_eq!(*retry_after, Some(Duration::from_secs(2)));
                    assert_eq!(*overload, status.starts_with("429"));
                }
                ("fatal", CallError::Fatal(_)) | ("auth", CallError::Auth(_)) => {}
                _ => panic!("{status}: {error:?}"),
            }
            assert!(!error.to_string().contains("sk-never-shown"));
        }
    }
}
