//! One service per process for every model endpoint: concurrency budget, retries with backoff, the cache
//! and accounting. It runs on its own tokio runtime beside the timely workers, which hand it requests and
//! get responses back through a callback (so a worker never blocks on the network).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sdg_operators::model::{ModelReply, ModelRequest, ModelResponse, Prompt, Sampling};

use super::cache::{self, ResponseCache};
use super::client::{Answer, CallError, OpenAiClient};
use super::limiter::{AdaptiveLimit, CircuitBreaker, RateBudget};
use super::local::embed::Embedder;
use super::local::{LlmOptions, LocalLlm};
use super::spec::{ModelSpec, Provider};
use crate::io::retry::{Jitter, Retrier, RetryPolicy, Step, Stop};

/// What one endpoint did during a run (in the manifest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    pub retries: u64,
    /// Requests that finally failed (their rows went to rejects).
    pub failures: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    /// From the configured prices; 0 when none.
    pub cost: f64,
    /// The lowest concurrency the adaptive limit went down to (it starts at `max_concurrency`).
    #[serde(default)]
    pub concurrency_lowest: u64,
    /// Times the circuit breaker paused calls after a run of failures.
    #[serde(default)]
    pub breaker_opened: u64,
}

impl EndpointStats {
    /// Adds another process's figures. Percentiles cannot be merged exactly: the larger is kept.
    pub fn merge(&mut self, other: &EndpointStats) {
        self.requests += other.requests;
        self.retries += other.retries;
        self.failures += other.failures;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost += other.cost;
        self.latency_p50_ms = self.latency_p50_ms.max(other.latency_p50_ms);
        self.latency_p95_ms = self.latency_p95_ms.max(other.latency_p95_ms);
        self.latency_p99_ms = self.latency_p99_ms.max(other.latency_p99_ms);
        self.concurrency_lowest = match (self.concurrency_lowest, other.concurrency_lowest) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        self.breaker_opened += other.breaker_opened;
    }
}

/// What performs an endpoint's calls.
enum Backend {
    Http(Box<OpenAiClient>),
    Llm {
        llm: Arc<LocalLlm>,
        identity: String,
    },
    Embedder {
        embedder: Arc<Embedder>,
        identity: String,
    },
    /// A local model not loaded because nothing will be asked of it (`--dry-run`).
    Unloaded(String),
}

impl Backend {
    /// Names the model in cache keys: the served model name, or the local file with its size, so that
    /// swapping the weights never serves stale answers.
    fn model(&self) -> &str {
        match self {
            Backend::Http(client) => client.model(),
            Backend::Llm { identity, .. } | Backend::Embedder { identity, .. } | Backend::Unloaded(identity) => {
                identity
            }
        }
    }

    async fn call(&self, prompt: &Prompt, sampling: &Sampling, n: u32) -> Result<Answer, CallError> {
        match self {
            Backend::Http(client) => client.call(prompt, sampling, n).await,
            Backend::Llm { llm, .. } => match llm.generate(prompt, sampling, n).await {
                Ok(reply) => Ok(Answer { reply, slow_down: false }),
                Err(error) => Err(CallError::Fatal(error.to_string())),
            },
            Backend::Embedder { embedder, identity } => {
                let Prompt::Embed(inputs) = prompt else {
                    return Err(CallError::Fatal("this model embeds text; use a chat or completion model".into()));
                };
                let (embedder, inputs, started) = (Arc::clone(embedder), inputs.clone(), std::time::Instant::now());
                // Model code never runs on the runtime's threads.
                let vectors = tokio::task::spawn_blocking(move || {
                    let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    embedder.embed(&texts)
                })
                .await
                .map_err(|e| CallError::Fatal(format!("embedding task failed: {e}")))?
                .map_err(|e| CallError::Fatal(e.to_string()))?;
                let reply = ModelReply {
                    texts: Vec::new(),
                    embeddings: vectors,
                    model: identity.clone(),
                    usage: Default::default(),
                    latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                    cached: false,
                };
                Ok(Answer { reply, slow_down: false })
            }
            Backend::Unloaded(identity) => Err(CallError::Fatal(format!("{identity} is not loaded"))),
        }
    }
}

/// Loads the local model `spec` names, fetching it into the model store when it is missing.
fn load_local(name: &str, spec: &ModelSpec) -> Result<Backend, String> {
    let path = super::store::resolve(&spec.model, spec.file.as_deref()).map_err(|e| format!("model `{name}`: {e}"))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let identity =
        format!("local:{}:{size}", path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()));
    if path.is_dir() {
        let device = super::local::candle_device(spec.device).map_err(|e| format!("model `{name}`: {e}"))?;
        let embedder = Embedder::load_on(&path, &device).map_err(|e| format!("model `{name}`: {e}"))?;
        return Ok(Backend::Embedder { embedder: Arc::new(embedder), identity });
    }
    let options = LlmOptions {
        threads: spec.threads.unwrap_or_else(super::local::default_threads),
        max_batch: spec.max_batch,
        context: spec.context,
        chat_template: spec.chat_template.clone(),
        tokenizer: spec.tokenizer.clone(),
        backend: super::local::Backend::for_device(spec.device).map_err(|e| format!("model `{name}`: {e}"))?,
    };
    let started = std::time::Instant::now();
    let llm = LocalLlm::load(&path, &options).map_err(|e| format!("model `{name}` ({}): {e}", path.display()))?;
    tracing::info!(
        model = name,
        path = %path.display(),
        architecture = %llm.architecture,
        context = llm.context,
        weights_mib = llm.weight_bytes / (1 << 20),
        seconds = started.elapsed().as_secs_f64(),
        "local model loaded"
    );
    Ok(Backend::Llm { llm: Arc::new(llm), identity })
}

struct Endpoint {
    spec: ModelSpec,
    /// Counts prompt tokens for dry-run estimates.
    tokenizer: Option<tokenizers::Tokenizer>,
    client: Backend,
    limit: AdaptiveLimit,
    breaker: CircuitBreaker,
    budget: RateBudget,
    /// `max_retries` under the shared retry policy, jittered by the service's one sequence.
    retry: Retrier,
    stats: Mutex<EndpointStats>,
    latencies: Mutex<Vec<f32>>,
}

/// The model port of a run.
pub struct ModelService {
    runtime: tokio::runtime::Runtime,
    endpoints: HashMap<String, Arc<Endpoint>>,
    cache: Option<Arc<ResponseCache>>,
    /// Set when an endpoint refuses our credentials: every later call fails at once and the run stops.
    fatal: Arc<Mutex<Option<String>>>,
}

impl ModelService {
    /// Builds clients for `specs` and loads local models; `cache_path` enables the persistent response cache.
    pub fn new(specs: &BTreeMap<String, ModelSpec>, cache_path: Option<&Path>) -> Result<Self, String> {
        Self::build(specs, cache_path, true)
    }

    /// As [`new`](Self::new) for `--dry-run`: local models are not loaded (nor fetched).
    pub fn new_for_estimates(specs: &BTreeMap<String, ModelSpec>, cache_path: Option<&Path>) -> Result<Self, String> {
        Self::build(specs, cache_path, false)
    }

    fn build(specs: &BTreeMap<String, ModelSpec>, cache_path: Option<&Path>, load: bool) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sdg-models")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the model runtime: {e}"))?;
        let mut endpoints = HashMap::new();
        // One jitter sequence for the whole service, so endpoints failing together spread their retries too.
        let jitter = Jitter::seeded(0x9E37_79B9_7F4A_7C15);
        for (name, spec) in specs {
            let client = match spec.provider {
                Provider::Openai => {
                    let key = spec.api_key().map_err(|e| format!("model `{name}`: {e}"))?;
                    Backend::Http(Box::new(OpenAiClient::new(spec, key).map_err(|e| format!("model `{name}`: {e}"))?))
                }
                Provider::Local if load => load_local(name, spec)?,
                Provider::Local => Backend::Unloaded(format!("local:{}", spec.model)),
            };
            let tokenizer = match &spec.tokenizer {
                None => None,
                Some(file) => Some(
                    tokenizers::Tokenizer::from_file(file)
                        .map_err(|e| format!("model `{name}`: cannot load tokenizer {}: {e}", file.display()))?,
                ),
            };
            endpoints.insert(
                name.clone(),
                Arc::new(Endpoint {
                    spec: spec.clone(),
                    tokenizer,
                    client,
                    limit: AdaptiveLimit::new(spec.max_concurrency),
                    breaker: CircuitBreaker::default(),
                    budget: RateBudget::new(spec.rpm, spec.tpm),
                    retry: model_retrier(spec.max_retries, jitter.clone()),
                    stats: Mutex::new(EndpointStats::default()),
                    latencies: Mutex::new(Vec::new()),
                }),
            );
        }
        let cache = match cache_path {
            Some(path) => Some(Arc::new(ResponseCache::open(path).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(ModelService { runtime, endpoints, cache, fatal: Arc::new(Mutex::new(None)) })
    }

    /// Performs `requests` concurrently; `done` gets one response per request, in order.
    pub fn submit<F>(&self, requests: Vec<ModelRequest>, done: F)
    where
        F: FnOnce(Vec<ModelResponse>) + Send + 'static,
    {
        let handles: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let endpoint = self.endpoints.get(&request.endpoint).cloned();
                let cache = self.cache.clone();
                let fatal = Arc::clone(&self.fatal);
                self.runtime.spawn(async move {
                    match endpoint {
                        None => Err(format!("no model endpoint named `{}`", request.endpoint)),
                        Some(endpoint) => perform(&endpoint, &request, cache.as_deref(), &fatal).await,
                    }
                })
            })
            .collect();
        self.runtime.spawn(async move {
            let mut responses = Vec::with_capacity(handles.len());
            for handle in handles {
                responses.push(handle.await.unwrap_or_else(|e| Err(format!("model task failed: {e}"))));
            }
            done(responses);
        });
    }

    /// Records what `requests` would cost, without sending anything (`--dry-run`): cached ones are free,
    /// the others one request each,
    /// prompt tokens counted with the endpoint's tokenizer (else characters / 4), completion tokens at
    /// `max_tokens` (else 256) per sample.
    pub fn estimate(&self, requests: &[ModelRequest]) {
        for request in requests {
            let Some(endpoint) = self.endpoints.get(&request.endpoint) else { continue };
            if let Some(cache) = &self.cache
                && cache.get(&cache::key(endpoint.client.model(), &request.prompt, &request.sampling)).is_some()
            {
                count(endpoint, |s| s.cache_hits += 1);
                continue;
            }
            let prompt_tokens: u64 = request
                .prompt
                .texts()
                .iter()
                .map(|t| match &endpoint.tokenizer {
                    Some(tokenizer) => tokenizer.encode_fast(*t, true).map_or(t.len() / 4, |e| e.len()) as u64,
                    None => (t.chars().count() / 4).max(1) as u64,
                })
                .sum();
            let completion_tokens = completion_allowance(&request.sampling, request.sampling.n.max(1));
            count(endpoint, |s| {
                s.requests += 1;
                s.prompt_tokens += prompt_tokens;
                s.completion_tokens += completion_tokens;
            });
        }
    }

    /// Why the run must stop (an endpoint refused our credentials), if it must.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Per-endpoint accounting so far.
    pub fn stats(&self) -> BTreeMap<String, EndpointStats> {
        self.endpoints
            .iter()
            .map(|(name, endpoint)| {
                let mut stats = endpoint.stats.lock().map(|s| s.clone()).unwrap_or_default();
                let mut latencies = endpoint.latencies.lock().map(|l| l.clone()).unwrap_or_default();
                latencies.sort_by(f32::total_cmp);
                let pick = |q: f64| {
                    if latencies.is_empty() {
                        0.0
                    } else {
                        latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64
                    }
                };
                stats.latency_p50_ms = pick(0.50);
                stats.latency_p95_ms = pick(0.95);
                stats.latency_p99_ms = pick(0.99);
                stats.concurrency_lowest = endpoint.limit.lowest() as u64;
                stats.breaker_opened = endpoint.breaker.opened();
                stats.cost = stats.prompt_tokens as f64 / 1000.0 * endpoint.spec.price_prompt_per_1k.unwrap_or(0.0)
                    + stats.completion_tokens as f64 / 1000.0 * endpoint.spec.price_completion_per_1k.unwrap_or(0.0);
                (name.clone(), stats)
            })
            .collect()
    }

    /// Makes every cached reply durable.
    pub fn flush(&self) {
        if let Some(cache) = &self.cache
            && let Err(error) = cache.flush()
        {
            tracing::warn!(%error, "could not write the response cache");
        }
    }
}

fn count(endpoint: &Endpoint, update: impl FnOnce(&mut EndpointStats)) {
    if let Ok(mut stats) = endpoint.stats.lock() {
        update(&mut stats);
    }
}

/// The shared retry policy for a model endpoint: `max_retries` retries after the first attempt, waiting
/// 250 ms doubling up to 30 s, jittered 50-150%, or the server's `Retry-After` (up to 120 s) when it gave one.
fn model_retrier(max_retries: u32, jitter: Jitter) -> Retrier {
    let policy = RetryPolicy {
        attempts: max_retries.saturating_add(1),
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(30),
    };
    policy.retrier().with_jitter(jitter).with_max_retry_after(Duration::from_secs(120))
}

async fn perform(
    endpoint: &Endpoint,
    request: &ModelRequest,
    cache: Option<&ResponseCache>,
    fatal: &Mutex<Option<String>>,
) -> ModelResponse {
    // Hashing the canonical request costs a serialization: only when there is a cache to ask.
    let key = cache.map(|_| cache::key(endpoint.client.model(), &request.prompt, &request.sampling));
    if let Some(mut reply) = cache.zip(key.as_ref()).and_then(|(c, k)| c.get(k)) {
        count(endpoint, |s| s.cache_hits += 1);
        reply.cached = true;
        reply.latency_ms = 0.0;
        return Ok(reply);
    }
    count(endpoint, |s| s.cache_misses += 1);
    let n = request.sampling.n.max(1);
    let mut reply = call_with_retries(endpoint, request, &request.sampling, n, fatal).await?;
    // A server that ignores `n` gets asked again, one sample at a time, with distinct seeds.
    let mut extra = 0u64;
    while (reply.texts.len() as u32) < n && !matches!(request.prompt, sdg_operators::model::Prompt::Embed(_)) {
        extra += 1;
        let sampling = Sampling {
            n: 1,
            seed: Some(request.sampling.seed.unwrap_or(0).wrapping_add(extra)),
            ..request.sampling.clone()
        };
        let more = call_with_retries(endpoint, request, &sampling, 1, fatal).await?;
        reply.texts.extend(more.texts);
        reply.usage.prompt_tokens += more.usage.prompt_tokens;
        reply.usage.completion_tokens += more.usage.completion_tokens;
        reply.latency_ms += more.latency_ms;
        if extra > n as u64 * 2 {
            return Err(format!("the server returned fewer than {n} samples"));
        }
    }
    reply.texts.truncate(n as usize);
    if let Some((cache, key)) = cache.zip(key) {
        cache.put(key, &reply);
    }
    Ok(reply)
}

/// Tokens a request may use, for the TPM budget: prompt characters / 4 plus the completion allowance.
fn estimate_tokens(request: &ModelRequest, sampling: &Sampling, n: u32) -> u32 {
    let chars: usize = request.prompt.texts().iter().map(|t| t.len()).sum();
    u32::try_from(chars as u64 / 4 + completion_allowance(sampling, n)).unwrap_or(u32::MAX)
}

/// Completion tokens a request may use: `max_tokens` (else 256) per sample.
fn completion_allowance(sampling: &Sampling, n: u32) -> u64 {
    sampling.max_tokens.unwrap_or(256) as u64 * n as u64
}

/// One model call under the endpoint's retry policy: retryable failures are counted as retries and tried
/// again; a refused credential stops every later call.
async fn call_with_retries(
    endpoint: &Endpoint,
    request: &ModelRequest,
    sampling: &Sampling,
    n: u32,
    fatal: &Mutex<Option<String>>,
) -> Result<ModelReply, String> {
    let attempt = |_| call_once(endpoint, request, sampling, n, fatal);
    let on_retry = |message: &String, attempt: u32, _wait| {
        count(endpoint, |s| s.retries += 1);
        tracing::debug!(attempt = attempt - 1, %message, "retrying model call");
    };
    match endpoint.retry.run(attempt, on_retry).await {
        Ok(reply) => Ok(reply),
        Err(Stop::Failed(message)) => Err(message),
        Err(Stop::Exhausted { reason, attempts }) => {
            count(endpoint, |s| s.failures += 1);
            Err(format!("{reason} (after {attempts} attempts)"))
        }
    }
}

/// One attempt: admission (fatal flag, breaker, budget, concurrency slot), the call, and what it tells the
/// limit and the breaker.
async fn call_once(
    endpoint: &Endpoint,
    request: &ModelRequest,
    sampling: &Sampling,
    n: u32,
    fatal: &Mutex<Option<String>>,
) -> Step<ModelReply, String, String> {
    if let Some(reason) = fatal.lock().ok().and_then(|f| f.clone()) {
        return Step::Done(Err(format!("not sent: {reason}")));
    }
    let paused = endpoint.breaker.wait();
    if !paused.is_zero() {
        tokio::time::sleep(paused).await;
    }
    endpoint.budget.admit(estimate_tokens(request, sampling, n)).await;
    let result = {
        let _slot = match endpoint.limit.acquire().await {
            Ok(slot) => slot,
            Err(message) => return Step::Done(Err(message)),
        };
        count(endpoint, |s| s.requests += 1);
        endpoint.client.call(&request.prompt, sampling, n).await
    };
    match &result {
        Ok(answer) => {
            if answer.slow_down {
                endpoint.limit.overloaded();
            } else {
                endpoint.limit.succeeded();
            }
            endpoint.breaker.succeeded();
        }
        Err(CallError::Retryable { overload, .. }) => {
            endpoint.breaker.failed();
            if *overload {
                endpoint.limit.overloaded();
            }
        }
        Err(_) => {}
    }
    match result.map(|answer| answer.reply) {
        Ok(reply) => {
            count(endpoint, |s| {
                s.prompt_tokens += reply.usage.prompt_tokens;
                s.completion_tokens += reply.usage.completion_tokens;
            });
            if let Ok(mut latencies) = endpoint.latencies.lock() {
                latencies.push(reply.latency_ms as f32);
            }
            Step::Done(Ok(reply))
        }
        Err(CallError::Retryable { message, retry_after, .. }) => Step::Retry { reason: message, retry_after },
        Err(CallError::Auth(message)) => {
            count(endpoint, |s| s.failures += 1);
            let reason = format!("model endpoint refused the credentials ({message}); check api_key_env");
            if let Ok(mut fatal) = fatal.lock() {
                fatal.get_or_insert(reason.clone());
            }
            Step::Done(Err(reason))
        }
        Err(error) => {
            count(endpoint, |s| s.failures += 1);
            Step::Done(Err(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_honours_retry_after() {
        let retry = model_retrier(40, Jitter::seeded(1));
        // Retry `k` (0-based) follows attempt `k + 1`.
        let backoff = |retries: u32, retry_after| retry.delay(retries + 1, retry_after);
        let first = backoff(0, None);
        assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(375), "{first:?}");
        let later = backoff(5, None);
        assert!(later >= Duration::from_secs(4), "{later:?}");
        assert!(backoff(30, None) <= Duration::from_secs(30));
        assert_eq!(backoff(0, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(backoff(0, Some(Duration::from_secs(600))), Duration::from_secs(120), "Retry-After is capped");
        assert_eq!(retry.policy().attempts, 41, "max_retries after the first attempt");
    }
}
