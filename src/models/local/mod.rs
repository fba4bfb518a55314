//! Models run in-process with candle: GGUF LLMs (`provider: local`) and BERT-family embedders. They sit
//! behind the same service as HTTP endpoints, so the cache, accounting, budgets and provenance apply as is.
//!
//! An LLM runs on a thread of its own ([`engine`]), fed through a channel; callers await a oneshot reply, so
//! neither timely workers nor the tokio runtime ever run model code.

pub mod candle_transformer;
pub mod embed;
pub mod engine;
pub mod guided;
pub mod qmatmul;
pub mod sampler;
pub mod simd;
pub mod team;
pub mod template;
pub mod tokenizer;
pub mod transformer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file;

use sdg_operators::model::{ModelReply, Prompt, Sampling, Usage};

use candle_transformer::CandleTransformer;
use engine::{GenerateJob, Generated, Limits};
use sampler::SamplerSettings;
use template::ChatTemplate;
use tokenizer::TextTokenizer;
use transformer::{Decoder, Transformer};

/// Why a local model failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad model file: {0}")]
    Format(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Prompt(String),
    #[error("the prompt has {tokens} tokens; the context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("position {position} is past the context of {context}")]
    ContextFull { position: usize, context: usize },
    #[error("the local model has stopped")]
    Stopped,
}

/// How to run a local LLM.
#[derive(Debug, Clone)]
pub struct LlmOptions {
    /// Threads for attention (the matmul threads follow `CANDLE_NUM_THREADS`, see [`configure_threads`]).
    pub threads: usize,
    pub max_batch: usize,
    /// Context length cap (the model's own when larger is asked).
    pub context: usize,
    /// A Jinja chat template file that replaces the GGUF's.
    pub chat_template: Option<PathBuf>,
    /// A `tokenizer.json` that replaces the one rebuilt from the GGUF.
    pub tokenizer: Option<PathBuf>,
    /// What computes.
    pub backend: Backend,
}

/// What computes a local LLM.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// Our CPU kernels ([`transformer`]).
    #[default]
    CpuKernels,
    /// candle's tensor ops on a device ([`candle_transformer`]): a GPU, or the CPU to check them.
    Candle(candle_core::Device),
}

impl Backend {
    /// The backend for a model spec's `device`.
    pub fn for_device(device: crate::models::spec::Device) -> Result<Backend, LocalError> {
        match device {
            crate::models::spec::Device::Cpu => Ok(Backend::CpuKernels),
            crate::models::spec::Device::Cuda => candle_device(device).map(Backend::Candle),
        }
    }
}

/// The candle device for a model spec's `device`.
pub fn candle_device(device: crate::models::spec::Device) -> Result<candle_core::Device, LocalError> {
    match device {
        crate::models::spec::Device::Cpu => Ok(candle_core::Device::Cpu),
        crate::models::spec::Device::Cuda => candle_core::Device::new_cuda(0).map_err(|e| {
            LocalError::Unsupported(format!(
                "`device: cuda` needs sdg built with `--features cuda`, an NVIDIA GPU and its driver: {e}"
            ))
        }),
    }
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            threads: default_threads(),
            max_batch: 16,
            context: 4096,
            chat_template: None,
            tokenizer: None,
            backend: Backend::CpuKernels,
        }
    }
}

/// Physical parallelism of this machine.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the thread count of candle's matmul pool, which it reads once, at its first matmul. Call it before
/// starting other threads (the environment is process-wide); an explicit `CANDLE_NUM_THREADS` wins.
pub fn configure_threads(threads: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called from `main` before any other thread exists (see the call site).
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", threads.max(1).to_string()) };
    }
}

/// Starts the generation thread of `model`.
fn start_engine<M: Decoder>(
    model: Arc<M>,
    tokenizer: Arc<TextTokenizer>,
    limits: Limits,
    path: &Path,
) -> Result<crossbeam_channel::Sender<GenerateJob>, LocalError> {
    let (sender, receiver) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("sdg-local-llm".into())
        .spawn(move || engine::run(model, tokenizer, limits, receiver))
        .map_err(|source| LocalError::Io { path: path.to_path_buf(), source })?;
    Ok(sender)
}

/// A loaded GGUF LLM with its generation thread.
pub struct LocalLlm {
    jobs: crossbeam_channel::Sender<GenerateJob>,
    pub tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    /// The model file, for provenance.
    pub path: PathBuf,
    pub architecture: String,
    pub context: usize,
    pub weight_bytes: usize,
}

impl LocalLlm {
    pub fn load(path: &Path, options: &LlmOptions) -> Result<LocalLlm, LocalError> {
        let io = |source| LocalError::Io { path: path.to_path_buf(), source };
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| LocalError::Format(format!("{} is not a readable GGUF file: {e}", path.display())))?;
        let tokenizer_file = options.tokenizer.clone().or_else(|| Some(path.with_file_name("tokenizer.json")));
        let tokenizer = Arc::new(TextTokenizer::load(&content, tokenizer_file.as_deref())?);
        let template_text = match &options.chat_template {
            Some(file) => Some((
                file.display().to_string(),
                std::fs::read_to_string(file).map_err(|source| LocalError::Io { path: file.clone(), source })?,
            )),
            None => match content.metadata.get("tokenizer.chat_template") {
                Some(gguf_file::Value::String(text)) => Some(("GGUF tokenizer.chat_template".into(), text.clone())),
                _ => None,
            },
        };
        let has_gemma_turns = tokenizer.encode("<start_of_turn>", true).map(|ids| ids.len() == 1).unwrap_or(false);
        let template = ChatTemplate::new(template_text, has_gemma_turns, &tokenizer.bos_text, &tokenizer.eos_text)?;
        let architecture = transformer::meta_str(&content, "general.architecture")?;
        let limits = Limits { max_batch: options.max_batch.max(1), prefill_chunk: 512 };
        let (sender, context, weight_bytes) = match &options.backend {
            Backend::CpuKernels => {
                let model = Arc::new(Transformer::load(&content, &mut file, options.context, options.threads)?);
                let (context, bytes) = (model.max_positions, model.weight_bytes());
                (start_engine(model, Arc::clone(&tokenizer), limits, path)?, context, bytes)
            }
            Backend::Candle(device) => {
                let model = Arc::new(CandleTransformer::load(&content, &mut file, options.context, device)?);
                let (context, bytes) = (model.max_positions, model.weight_bytes());
                (start_engine(model, Arc::clone(&tokenizer), limits, path)?, context, bytes)
            }
        };
        Ok(LocalLlm {
            jobs: sender,
            tokenizer,
            template,
            path: path.to_path_buf(),
            architecture,
            context,
            weight_bytes,
        })
    }

    /// The token ids the model sees for `prompt`: a chat rendered through the template, or a completion
    /// prompt after the BOS token when the model wants one.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, LocalError> {
        match prompt {
            Prompt::Chat(messages) => self.tokenizer.encode(&self.template.render(messages)?, true),
            Prompt::Completion(text) => {
                let mut ids: Vec<u32> = self.tokenizer.bos.filter(|_| self.tokenizer.add_bos).into_iter().collect();
                ids.extend(self.tokenizer.encode(text, false)?);
                Ok(ids)
            }
            Prompt::Embed(_) => Err(LocalError::Prompt("this model generates text; use an embedding model".into())),
        }
    }

    /// The rendered chat prompt, for inspection.
    pub fn render_chat(&self, messages: &[sdg_operators::model::ChatMessage]) -> Result<String, LocalError> {
        self.template.render(messages)
    }

    /// Generates `n` samples for `prompt`.
    pub async fn generate(&self, prompt: &Prompt, sampling: &Sampling, n: u32) -> Result<ModelReply, LocalError> {
        let started = Instant::now();
        let receiver = self.submit(self.prompt_ids(prompt)?, sampling, n, false)?;
        let generated = receiver.await.map_err(|_| LocalError::Stopped)??;
        Ok(self.reply(generated, started))
    }

    /// As [`generate`](Self::generate), blocking the calling thread (benchmarks, tests).
    pub fn generate_blocking(
        &self,
        prompt_ids: Vec<u32>,
        sampling: &Sampling,
        n: u32,
    ) -> Result<Generated, LocalError> {
        self.submit(prompt_ids, sampling, n, false)?.blocking_recv().map_err(|_| LocalError::Stopped)?
    }

    /// Generates exactly `sampling.max_tokens` tokens per sample, through end-of-text (benchmarks).
    pub fn generate_exact(&self, prompt_ids: Vec<u32>, sampling: &Sampling, n: u32) -> Result<Generated, LocalError> {
        self.submit(prompt_ids, sampling, n, true)?.blocking_recv().map_err(|_| LocalError::Stopped)?
    }

    fn submit(
        &self,
        prompt: Vec<u32>,
        sampling: &Sampling,
        n: u32,
        ignore_eos: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Generated, LocalError>>, LocalError> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let job = GenerateJob {
            prompt,
            n: n.max(1) as usize,
            max_tokens: sampling.max_tokens.unwrap_or(256).max(1) as usize,
            stop: sampling.stop.clone(),
            sampler: SamplerSettings {
                temperature: sampling.temperature.unwrap_or(0.0),
                top_k: sampling.top_k.unwrap_or(0) as usize,
                top_p: sampling.top_p.unwrap_or(1.0),
                seed: sampling.seed.unwrap_or(0),
            },
            ignore_eos,
            guide: sampling.json_schema.as_ref().map(|schema| Arc::new(guided::Guide::from_schema(schema))),
            reply,
        };
        self.jobs.send(job).map_err(|_| LocalError::Stopped)?;
        Ok(receiver)
    }

    fn reply(&self, generated: Generated, started: Instant) -> ModelReply {
        ModelReply {
            texts: generated.texts,
            embeddings: Vec::new(),
            model: self.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            usage: Usage { prompt_tokens: generated.prompt_tokens, completion_tokens: generated.completion_tokens },
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            cached: false,
        }
    }
}
