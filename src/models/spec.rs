//! `models:` entries of a config.

use serde::{Deserialize, Serialize};

/// Which API an endpoint speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Any OpenAI-compatible server: OpenAI, vLLM, SGLang, Ollama, llama.cpp server.
    #[default]
    Openai,
    /// A model run in-process with candle: a GGUF LLM or a BERT-family embedder.
    Local,
}

/// Where a local model computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU; needs sdg built with `--features cuda`.
    Cuda,
}

/// One named model endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub provider: Provider,
    /// e.g. `http://127.0.0.1:8000/v1` (`provider: openai`).
    #[serde(default)]
    pub base_url: String,
    /// The model name sent to the server; for `provider: local`, a catalog name (`sdg models list`), a path
    /// to a `.gguf` file or an embedder folder, or a Hugging Face repo id (`owner/name`, with `file`).
    pub model: String,
    /// The file to take from a Hugging Face repo (`provider: local`).
    #[serde(default)]
    pub file: Option<String>,
    /// Threads of a local model (default: every core).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Sequences a local LLM decodes together.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Context length of a local LLM (capped at the model's own).
    #[serde(default = "default_context")]
    pub context: usize,
    /// A Jinja chat template file replacing the model's own (local LLMs).
    #[serde(default)]
    pub chat_template: Option<std::path::PathBuf>,
    #[serde(default)]
    pub device: Device,
    /// Environment variable holding the API key (read at run time, never written anywhere).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once, shared by every node and worker of the process.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries of a retryable failure (429, 5xx, timeout, reset, malformed body) before the row is rejected.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Requests per minute, shared by every node (optional).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt estimate + max_tokens), shared by every node (optional).
    #[serde(default)]
    pub tpm: Option<u32>,
    /// A `tokenizer.json` for this model, used by `--dry-run` to count prompt tokens (else characters / 4).
    #[serde(default)]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Optional prices, per 1,000 tokens, for cost accounting.
    #[serde(default)]
    pub price_prompt_per_1k: Option<f64>,
    #[serde(default)]
    pub price_completion_per_1k: Option<f64>,
}

fn default_max_batch() -> usize {
    16
}
fn default_context() -> usize {
    4096
}
fn default_concurrency() -> usize {
    64
}
fn default_timeout() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    6
}

impl ModelSpec {
    /// Settings problems, as (key, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match self.provider {
            Provider::Openai => {
                if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
                    problems.push(("base_url".into(), format!("`{}` is not an http(s) URL", self.base_url)));
                }
            }
            Provider::Local => {
                if !self.base_url.is_empty() {
                    problems.push(("base_url".into(), "a local model has no base_url".into()));
                }
                if let Err(message) = super::store::check_model_reference(&self.model, self.file.as_deref()) {
                    problems.push(("model".into(), message));
                }
                if self.max_batch == 0 {
                    problems.push(("max_batch".into(), "must be at least 1".into()));
                }
                if self.context < 16 {
                    problems.push(("context".into(), "must be at least 16 tokens".into()));
                }
                if self.threads == Some(0) {
                    problems.push(("threads".into(), "must be at least 1".into()));
                }
                if self.device == Device::Cuda && !cfg!(feature = "cuda") {
                    problems.push(("device".into(), "this sdg was built without CUDA (`--features cuda`)".into()));
                }
            }
        }
        if self.max_concurrency == 0 {
            problems.push(("max_concurrency".into(), "must be at least 1".into()));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            problems.push(("timeout_s".into(), "must be a positive number of seconds".into()));
        }
        problems
    }

    /// The API key from the environment, or else from a `.env` file in the current folder.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let Some(var) = &self.api_key_env else { return Ok(None) };
        if let Ok(value) = std::env::var(var) {
            return Ok(Some(value));
        }
        let from_file = std::fs::read_to_string(".env").ok().and_then(|text| dotenv_value(&text, var));
        from_file.map(Some).ok_or_else(|| format!("environment variable {var} (api_key_env) is not set, nor in ./.env"))
    }
}

/// The value of `name` in `.env` text: `NAME=value` lines, optional `export`, optional quotes, `#` comments.
fn dotenv_value(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=')?;
        if key.trim() != name {
            return None;
        }
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_are_read_with_export_quotes_and_comments() {
        let text = "# keys\nOTHER=1\nexport OPENAI_API_KEY=\"sk-abc\"\nPLAIN = v2 \n";
        assert_eq!(dotenv_value(text, "OPENAI_API_KEY").as_deref(), Some("sk-abc"));
        assert_eq!(dotenv_value(text, "PLAIN").as_deref(), Some("v2"));
        assert_eq!(dotenv_value(text, "MISSING"), None);
        assert_eq!(dotenv_value("#OPENAI_API_KEY=x", "OPENAI_API_KEY"), None);
    }
}
