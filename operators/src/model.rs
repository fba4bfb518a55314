//! Model calls as data: what an operator asks for, and what the engine hands back.
//!
//! Operators never call a model. They return [`ModelRequest`]s from `start` or `resume`; the engine's model
//! service (one per endpoint, shared by every node) performs them with its budget, retries and cache, and
//! calls `resume` with one [`ModelResponse`] per request, in request order.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// What is asked of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Chat completion over messages.
    Chat(Vec<ChatMessage>),
    /// Legacy text completion.
    Completion(String),
    /// Embeddings of each input.
    Embed(Vec<String>),
}

impl Prompt {
    /// The texts sent to the model: message contents, the completion prompt, or the inputs to embed.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
            Prompt::Completion(text) => vec![text.as_str()],
            Prompt::Embed(inputs) => inputs.iter().map(String::as_str).collect(),
        }
    }
}

/// The seed of sample `k` of a request seeded with `seed`: its own stream, so samples differ and each is
/// reproducible alone. Sample 0 keeps the request's seed. A local model draws sample k of an `n`-sample
/// request from this seed, and `generate` with `request_per_sample` asks sample k with it, so both agree.
pub fn sample_seed(seed: u64, sample: u64) -> u64 {
    seed ^ sample.wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Sampling parameters. `None` leaves the server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Samples per prompt (`n`). Servers that ignore `n` are asked n times by the engine.
    pub n: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Sample among the k most likely tokens (local models; HTTP servers that accept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// A JSON schema the answer must follow (`response_format: json_schema`).
    pub json_schema: Option<serde_json::Value>,
}

/// A request an operator wants performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The endpoint's name in the config's `models:` section.
    pub endpoint: String,
    pub prompt: Prompt,
    pub sampling: Sampling,
    /// The input row this request serves (for rejects and provenance).
    pub row: usize,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A model's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReply {
    /// One text per sample (chat and completion).
    pub texts: Vec<String>,
    /// One vector per input (embeddings).
    pub embeddings: Vec<Vec<f32>>,
    /// The model name the server reported.
    pub model: String,
    pub usage: Usage,
    /// Wall time of the call, 0 when served from the cache.
    pub latency_ms: f64,
    pub cached: bool,
}

/// The outcome of one request: a reply, or why it finally failed (after the engine's retries).
pub type ModelResponse = Result<ModelReply, String>;

/// Identifies a batch whose model calls are in flight.
pub type PendingId = u64;

/// What an operator does next with a batch.
#[derive(Debug)]
pub enum Step {
    /// Done: rows and rejects.
    Emit(crate::Output),
    /// Perform these requests, then call `resume(pending, responses)`.
    Call(Vec<ModelRequest>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_seeds_differ_per_sample_and_keep_sample_zero() {
        assert_eq!(sample_seed(42, 0), 42);
        assert_ne!(sample_seed(42, 1), sample_seed(42, 2));
    }
}
