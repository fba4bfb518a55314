//! `generate`: renders a chat prompt from each row's columns with minijinja templates and asks a model
//! endpoint for completions; the replies become new columns (text, or keys of a JSON object), and with
//! `n > 1` or a JSON list one input row fans out into several output rows.
//!
//! The operator is sans-IO: `start` renders the prompts and returns the requests; `resume` parses the
//! replies. Replies that do not parse (JSON modes) are asked again, only for the samples that failed, with
//! the seed bumped by the attempt number so that the engine's response cache does not hand back the same
//! bad text. A row whose request failed, whose prompt did not render, or whose reply still does not parse
//! after `max_parse_retries` retries goes to rejects with the reason.
//!
//! Output rows repeat their input row's columns, except `id`, which becomes
//! `stable_id(input id, sample_index, item_index)`. A column this node writes (the generated columns and the
//! provenance columns) replaces an input column of the same name, so generate nodes chain: the provenance
//! then describes the last generation, and `parent_id` points at the previous node's output row.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, ListBuilder, RecordBatch, StringArray, StringBuilder, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use minijinja::value::{Serde, Value};
use serde::Deserialize;
use serde_json::Map;

use crate::columns::{ID, stable_id};
use crate::json_extract::extract_json;
use crate::model::{ChatMessage, ModelReply, ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::ChatTemplate;
use crate::{OpError, Operator, Output, Reject, Shape, require_column, string_column};

/// The input row's id.
pub const PARENT_ID: &str = "parent_id";
/// The model name the server reported.
pub const GEN_MODEL: &str = "gen_model";
/// BLAKE3 (hex, first 16 chars) of the rendered messages as JSON.
pub const GEN_PROMPT_HASH: &str = "gen_prompt_hash";
/// The request's [`Sampling`] as JSON.
pub const GEN_PARAMS: &str = "gen_params";
/// The seed the request carried (null when none).
pub const GEN_SEED: &str = "gen_seed";
/// Prompt tokens of the request that produced the row (shared by the rows of one request).
pub const GEN_PROMPT_TOKENS: &str = "gen_prompt_tokens";
/// Completion tokens of the request that produced the row (shared by the rows of one request).
pub const GEN_COMPLETION_TOKENS: &str = "gen_completion_tokens";
/// Wall time of the request in milliseconds (0 when served from the cache).
pub const GEN_LATENCY_MS: &str = "gen_latency_ms";
/// Whether the reply came from the response cache.
pub const GEN_CACHED: &str = "gen_cached";
/// Which of the `n` samples the row comes from.
pub const SAMPLE_INDEX: &str = "sample_index";

/// Provenance columns appended after the generated columns, in order.
const PROVENANCE: [&str; 10] = [
    PARENT_ID,
    GEN_MODEL,
    GEN_PROMPT_HASH,
    GEN_PARAMS,
    GEN_SEED,
    GEN_PROMPT_TOKENS,
    GEN_COMPLETION_TOKENS,
    GEN_LATENCY_MS,
    GEN_CACHED,
    SAMPLE_INDEX,
];

/// Template variables that are not input columns.
const DEMOS_VAR: &str = "demos";
const ROW_VAR: &str = "row";

/// How many characters of an unparseable reply a reject reason quotes.
const RAW_PREVIEW_CHARS: usize = 200;

/// Settings of a `generate` node.
///
/// ```yaml
/// generate:
///   model: teacher                  # endpoint name in `models:`
///   system: "You write exam questions about {{ topic }}."   # optional minijinja template
///   prompt: |                       # minijinja template; variables: every input column, `demos`, `row`
///     {% for d in demos %}Q: {{ d.question }}
///     A: {{ d.answer }}
///     {% endfor %}Passage: {{ text }}
///   demos: demos.jsonl              # optional; JSONL of objects, read by the engine
///   demos_k: 3                      # default 0; demos sampled per prompt (seeded by `seed` and the row id)
///   n: 2                            # default 1; samples per prompt
///   temperature: 0.7                # optional; also top_p, top_k, max_tokens
///   stop: ["\n\n"]                  # default []
///   seed: 42                        # optional; each row gets seed + hash(row id)
///   output: {json: {columns: [question, answer]}}   # or {text: {column: generated}} (default),
///                                                   # or {json_list: {columns: [question, answer]}}
///   samples: rows                   # default rows (one output row per sample); `list` (text output only)
///   json_schema: {type: object}     # optional; passed to the server as structured output
///   max_parse_retries: 2            # default 2
///   request_per_sample: false       # true: one request per sample (seed derived from the sample index),
///                                   # so a larger `n` later reuses every cached sample
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// The endpoint's name in the config's `models:` section.
    pub model: String,
    /// Template of the system message; none when absent.
    #[serde(default)]
    pub system: Option<String>,
    /// Template of the user message.
    pub prompt: String,
    /// JSONL file of demo objects; the engine reads it (see [`parse_demos_jsonl`]) and hands the objects to
    /// [`Generate::new`].
    #[serde(default)]
    pub demos: Option<PathBuf>,
    /// Demos sampled (without replacement) per prompt.
    #[serde(default)]
    pub demos_k: usize,
    /// Samples per prompt.
    #[serde(default = "default_n")]
    pub n: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Base seed for demo sampling and model sampling.
    #[serde(default)]
    pub seed: Option<u64>,
    /// What the reply becomes.
    #[serde(default)]
    pub output: OutputMode,
    /// What `n > 1` samples become.
    #[serde(default)]
    pub samples: SamplesMode,
    /// A JSON schema the answer must follow (structured output).
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    /// Retries for samples whose reply does not parse (JSON modes).
    #[serde(default = "default_max_parse_retries")]
    pub max_parse_retries: u32,
    /// One request per sample instead of one asking `n`: the prompt is paid per sample, but each sample is
    /// cached on its own, so raising `n` later (a recipe's larger `num_samples`) reuses the cached ones.
    #[serde(default)]
    pub request_per_sample: bool,
}

fn default_n() -> u32 {
    1
}

fn default_max_parse_retries() -> u32 {
    2
}

fn default_text_column() -> String {
    "generated".to_string()
}

/// What a reply becomes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputMode {
    /// The reply text into one Utf8 column.
    Text {
        #[serde(default = "default_text_column")]
        column: String,
    },
    /// The reply as a JSON object; each listed key into a Utf8 column (non-strings as compact JSON, `null`
    /// as null). A missing key is a parse failure.
    Json { columns: Vec<String> },
    /// The reply as a non-empty JSON array of objects (or an object with a single key holding such an
    /// array, as structured output requires an object at the top); each object becomes an output row.
    JsonList { columns: Vec<String> },
}

impl Default for OutputMode {
    fn default() -> Self {
        OutputMode::Text { column: default_text_column() }
    }
}

/// What `n` samples of one prompt become.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplesMode {
    /// One output row; the first sample in the text column, all of them in `<column>_samples`
    /// (`List<Utf8>`). Text output only.
    List,
    /// Each sample becomes its own output row (`sample_index` tells which).
    #[default]
    Rows,
}

/// Parses demos given as JSON Lines: one object per non-blank line. Errors name the 1-based line.
pub fn parse_demos_jsonl(text: &str) -> Result<Vec<Map<String, serde_json::Value>>, OpError> {
    let mut demos = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(object)) => demos.push(object),
            Ok(other) => {
                return Err(OpError::setting(
                    "demos",
                    format!("line {line_no}: expected a JSON object, found {}", json_kind(&other)),
                ));
            }
            Err(e) => return Err(OpError::setting("demos", format!("line {line_no}: invalid JSON: {e}"))),
        }
    }
    Ok(demos)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// SplitMix64: a tiny, well-mixed deterministic generator (enough for picking demos).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A stable 64-bit hash of a row id.
fn id_hash(id: &str) -> u64 {
    let hash = blake3::hash(id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

/// `k` distinct indices in `0..len`, in sampled order (partial Fisher-Yates).
fn sample_indices(len: usize, k: usize, state: u64) -> Vec<usize> {
    let mut rng = SplitMix64(state);
    let mut indices: Vec<usize> = (0..len).collect();
    let k = k.min(len);
    for i in 0..k {
        let span = (len - i) as u64;
        let j = i + (rng.next() % span) as usize;
        indices.swap(i, j);
    }
    indices.truncate(k);
    indices
}

/// What one reply (to one request) tells about the rows it produced.
#[derive(Debug)]
struct ReplyInfo {
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    latency_ms: f64,
    cached: bool,
    seed: Option<u64>,
    params: String,
}

/// One parsed sample: its items (one per output row; each the generated column values) and, in list mode,
/// every sample text.
#[derive(Debug)]
struct Sample {
    items: Vec<Vec<Option<String>>>,
    all_texts: Option<Vec<String>>,
    reply: Arc<ReplyInfo>,
}

/// Why the last attempt of a row did not yield all samples.
#[derive(Debug)]
struct ParseFailure {
    error: String,
    raw: String,
}

/// A row whose generation is under way (or done).
#[derive(Debug)]
struct RowWork {
    id: String,
    messages: Vec<ChatMessage>,
    prompt_hash: String,
    /// The row's seed before retries: `seed + hash(id)`, or none.
    seed: Option<u64>,
    /// Parse retries asked so far.
    retries: u32,
    /// One slot per sample (one slot in list mode); `None` until a reply fills it.
    slots: Vec<Option<Sample>>,
    failure: Option<ParseFailure>,
}

impl RowWork {
    fn missing(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect()
    }
}

#[derive(Debug)]
enum RowStatus {
    Active(Box<RowWork>),
    Rejected(String),
}

/// One request in flight: the row it serves, what it asked, and which slots its texts fill.
#[derive(Debug)]
struct Flight {
    row: usize,
    sampling: Sampling,
    slots: Vec<usize>,
}

/// A batch whose model calls are in flight.
#[derive(Debug)]
struct PendingBatch {
    batch: RecordBatch,
    schema: SchemaRef,
    rows: Vec<RowStatus>,
    flights: Vec<Flight>,
}

/// The `generate` operator. See the module docs.
pub struct Generate {
    spec: GenerateSpec,
    templates: ChatTemplate,
    demos: Vec<Value>,
    /// Names of the generated columns (the text column, or the JSON keys).
    generated: Vec<String>,
    /// `<column>_samples` in list mode.
    list_column: Option<String>,
    pending: HashMap<PendingId, PendingBatch>,
}

impl std::fmt::Debug for Generate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generate")
            .field("spec", &self.spec)
            .field("demos", &self.demos.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Generate {
    /// Checks the settings, compiles the templates and takes the demo objects (see [`parse_demos_jsonl`]).
    pub fn new(spec: GenerateSpec, demos: Vec<Map<String, serde_json::Value>>) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.n == 0 {
            return Err(OpError::setting("n", "must be at least 1"));
        }
        if let Some(t) = spec.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(OpError::setting("temperature", format!("{t} is not a number >= 0")));
        }
        if let Some(p) = spec.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(OpError::setting("top_p", format!("{p} is not in (0, 1]")));
        }
        if spec.max_tokens == Some(0) {
            return Err(OpError::setting("max_tokens", "must be at least 1"));
        }
        if spec.demos_k > demos.len() {
            return Err(OpError::setting(
                "demos_k",
                format!("asks for {} demos per prompt, but only {} demos were given", spec.demos_k, demos.len()),
            ));
        }

        let (generated, key) = match &spec.output {
            OutputMode::Text { column } => (vec![column.clone()], "output.text.column"),
            OutputMode::Json { columns } => (columns.clone(), "output.json.columns"),
            OutputMode::JsonList { columns } => (columns.clone(), "output.json_list.columns"),
        };
        if generated.is_empty() {
            return Err(OpError::setting(key, "needs at least one column"));
        }
        let list_column = match (spec.samples, &spec.output) {
            (SamplesMode::Rows, _) => None,
            (SamplesMode::List, OutputMode::Text { column }) => Some(format!("{column}_samples")),
            (SamplesMode::List, _) => {
                return Err(OpError::setting("samples", "`list` is only for `output: text`; JSON output uses `rows`"));
            }
        };
        let mut seen = HashSet::new();
        for name in generated.iter().chain(list_column.iter()) {
            if name.is_empty() {
                return Err(OpError::setting(key, "column names must not be empty"));
            }
            if name == ID || PROVENANCE.contains(&name.as_str()) {
                return Err(OpError::setting(key, format!("`{name}` is a column this node writes itself")));
            }
            if !seen.insert(name.as_str()) {
                return Err(OpError::setting(key, format!("column `{name}` is listed twice")));
            }
        }

        let templates = ChatTemplate::new(spec.system.as_deref(), &spec.prompt, &[DEMOS_VAR, ROW_VAR], "")?;
        let demos = demos.iter().map(|d| Value::from(Serde(d))).collect();
        Ok(Generate { spec, templates, demos, generated, list_column, pending: HashMap::new() })
    }

    /// The settings this operator was built from.
    pub fn spec(&self) -> &GenerateSpec {
        &self.spec
    }

    /// Names this node writes: generated columns, the list column and provenance.
    fn written(&self) -> impl Iterator<Item = &str> {
        self.generated.iter().map(String::as_str).chain(self.list_column.as_deref()).chain(PROVENANCE)
    }

    fn is_json(&self) -> bool {
        !matches!(self.spec.output, OutputMode::Text { .. })
    }

    /// The demos for the row with this id: `demos_k` of them, the same for the same (seed, id).
    fn demos_for(&self, id: &str) -> Vec<Value> {
        if self.spec.demos_k == 0 {
            return Vec::new();
        }
        let state = self.spec.seed.unwrap_or(0) ^ id_hash(id).rotate_left(17);
        sample_indices(self.demos.len(), self.spec.demos_k, state).into_iter().map(|i| self.demos[i].clone()).collect()
    }

    /// Renders the chat messages of one row.
    fn render(&self, batch: &RecordBatch, row: usize, id: &str) -> Result<Vec<ChatMessage>, String> {
        self.templates
            .render(Some((batch, row)), &[(DEMOS_VAR, Value::from(self.demos_for(id))), (ROW_VAR, Value::from(row))])
    }

    /// The sampling of a request for `work` asking `n` samples. Retries bump the seed by the attempt number;
    /// a retry without a configured seed gets `hash(id) + attempt`, so the response cache cannot answer it
    /// with the text that failed.
    fn sampling(&self, work: &RowWork, n: u32) -> Sampling {
        let seed = match (work.seed, work.retries) {
            (Some(seed), retries) => Some(seed.wrapping_add(u64::from(retries))),
            (None, 0) => None,
            (None, retries) => Some(id_hash(&work.id).wrapping_add(u64::from(retries))),
        };
        Sampling {
            n,
            temperature: self.spec.temperature,
            top_p: self.spec.top_p,
            top_k: self.spec.top_k,
            max_tokens: self.spec.max_tokens,
            stop: self.spec.stop.clone(),
            seed,
            json_schema: self.spec.json_schema.clone(),
        }
    }

    /// The next requests (and what each asks) for every active row that still misses samples.
    fn flights(&self, rows: &[RowStatus]) -> (Vec<Flight>, Vec<ModelRequest>) {
        let mut flights = Vec::new();
        let mut requests = Vec::new();
        for (row, status) in rows.iter().enumerate() {
            let RowStatus::Active(work) = status else { continue };
            let missing = work.missing();
            if missing.is_empty() {
                continue;
            }
            if self.spec.request_per_sample && self.list_column.is_none() {
                for slot in missing {
                    let mut sampling = self.sampling(work, 1);
                    // Sample k's own seed, whatever n is.
                    let base = sampling.seed.unwrap_or_else(|| id_hash(&work.id));
                    sampling.seed = Some(crate::model::sample_seed(base, slot as u64));
                    requests.push(ModelRequest {
                        endpoint: self.spec.model.clone(),
                        prompt: Prompt::Chat(work.messages.clone()),
                        sampling: sampling.clone(),
                        row,
                    });
                    flights.push(Flight { row, sampling, slots: vec![slot] });
                }
                continue;
            }
            let n = if self.list_column.is_some() { self.spec.n } else { missing.len() as u32 };
            let sampling = self.sampling(work, n);
            requests.push(ModelRequest {
                endpoint: self.spec.model.clone(),
                prompt: Prompt::Chat(work.messages.clone()),
                sampling: sampling.clone(),
                row,
            });
            flights.push(Flight { row, sampling, slots: missing });
        }
        (flights, requests)
    }

    /// Parses one sample text into items, each the values of the generated columns.
    fn parse_sample(&self, text: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        match &self.spec.output {
            OutputMode::Text { .. } => Ok(vec![vec![Some(text.to_string())]]),
            OutputMode::Json { columns } => match extract_json(text)? {
                serde_json::Value::Object(object) => Ok(vec![object_values(&object, columns)?]),
                other => Err(format!("expected a JSON object, found {}", json_kind(&other))),
            },
            OutputMode::JsonList { columns } => {
                let items = match extract_json(text)? {
                    serde_json::Value::Array(items) => items,
                    serde_json::Value::Object(mut object) if object.len() == 1 => {
                        match object.values_mut().next().map(std::mem::take) {
                            Some(serde_json::Value::Array(items)) => items,
                            _ => return Err("expected a JSON array of objects, found an object".to_string()),
                        }
                    }
                    other => return Err(format!("expected a JSON array of objects, found {}", json_kind(&other))),
                };
                if items.is_empty() {
                    return Err("expected a non-empty JSON array of objects, found an empty array".to_string());
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        serde_json::Value::Object(object) => {
                            object_values(object, columns).map_err(|e| format!("item {i}: {e}"))
                        }
                        other => Err(format!("item {i} is {}, not an object", json_kind(other))),
                    })
                    .collect()
            }
        }
    }

    /// Fills the slots of `flight` from `reply`; records the first failure.
    fn absorb(&self, work: &mut RowWork, flight: &Flight, reply: ModelReply) {
        let info = Arc::new(ReplyInfo {
            model: reply.model,
            prompt_tokens: reply.usage.prompt_tokens,
            completion_tokens: reply.usage.completion_tokens,
            latency_ms: reply.latency_ms,
            cached: reply.cached,
            seed: flight.sampling.seed,
            params: serde_json::to_string(&flight.sampling).unwrap_or_default(),
        });
        work.failure = None;
        if self.list_column.is_some() {
            match reply.texts.first() {
                Some(first) => {
                    work.slots[0] = Some(Sample {
                        items: vec![vec![Some(first.clone())]],
                        all_texts: Some(reply.texts.clone()),
                        reply: info,
                    });
                }
                None => work.failure = Some(ParseFailure { error: "the reply has no text".into(), raw: String::new() }),
            }
            return;
        }
        for (j, &slot) in flight.slots.iter().enumerate() {
            let outcome = match reply.texts.get(j) {
                Some(text) => self.parse_sample(text).map_err(|error| ParseFailure { error, raw: preview(text) }),
                None => Err(ParseFailure {
                    error: format!("the reply has {} texts for {} samples", reply.texts.len(), flight.slots.len()),
                    raw: String::new(),
                }),
            };
            match outcome {
                Ok(items) => work.slots[slot] = Some(Sample { items, all_texts: None, reply: Arc::clone(&info) }),
                Err(failure) => {
                    work.failure.get_or_insert(failure);
                }
            }
        }
    }

    /// Asks again for rows that miss samples, or rejects them when their retries are spent.
    fn retry_or_reject(&self, rows: &mut [RowStatus]) {
        for status in rows.iter_mut() {
            let RowStatus::Active(work) = status else { continue };
            if work.missing().is_empty() {
                continue;
            }
            if work.retries < self.spec.max_parse_retries {
                work.retries += 1;
                continue;
            }
            let attempts = work.retries + 1;
            let failure = work
                .failure
                .take()
                .unwrap_or(ParseFailure { error: "no sample was produced".to_string(), raw: String::new() });
            let reason = if self.is_json() {
                format!("could not parse JSON after {attempts} attempts: {}; raw: {}", failure.error, failure.raw)
            } else {
                format!("incomplete reply after {attempts} attempts: {}", failure.error)
            };
            *status = RowStatus::Rejected(reason);
        }
    }

    /// Builds the output of a finished batch.
    fn emit(&self, state: PendingBatch) -> Result<Output, OpError> {
        let PendingBatch { batch, schema, rows, .. } = state;
        let mut rejects = Vec::new();
        let mut out = OutputRows::new(self.generated.len());
        for (row, status) in rows.into_iter().enumerate() {
            match status {
                RowStatus::Rejected(reason) => rejects.push(Reject { row, reason }),
                RowStatus::Active(work) => {
                    let mut work = *work;
                    let slots = std::mem::take(&mut work.slots);
                    for (sample_index, slot) in (0u32..).zip(slots) {
                        let Some(sample) = slot else {
                            return Err(OpError::Protocol(format!("row {row} was emitted with a missing sample")));
                        };
                        for (item_index, values) in (0u32..).zip(sample.items) {
                            out.push(
                                row,
                                &work,
                                sample_index,
                                item_index,
                                values,
                                sample.all_texts.as_deref(),
                                &sample.reply,
                            );
                        }
                    }
                }
            }
        }
        let written: HashSet<&str> = self.written().collect();
        let rows = out.into_batch(&batch, &schema, &written, self.list_column.is_some())?;
        Ok(Output { rows, rejects })
    }
}

/// The values of `columns` in a JSON object: strings as-is, `null` as null, others as compact JSON.
fn object_values(object: &Map<String, serde_json::Value>, columns: &[String]) -> Result<Vec<Option<String>>, String> {
    columns
        .iter()
        .map(|column| match object.get(column) {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Null) => Ok(None),
            Some(other) => Ok(Some(other.to_string())),
            None => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                Err(format!("missing key `{column}` (the object has: {})", keys.join(", ")))
            }
        })
        .collect()
}

/// The item field of the `<column>_samples` list column.
fn list_item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Utf8, true))
}

/// The first characters of a reply, for reject reasons.
fn preview(text: &str) -> String {
    text.chars().take(RAW_PREVIEW_CHARS).collect()
}

/// Output rows collected column by column.
struct OutputRows {
    source_rows: Vec<u32>,
    ids: Vec<String>,
    generated: Vec<Vec<Option<String>>>,
    lists: Vec<Vec<String>>,
    parent_ids: Vec<String>,
    models: Vec<String>,
    prompt_hashes: Vec<String>,
    params: Vec<String>,
    seeds: Vec<Option<u64>>,
    prompt_tokens: Vec<u64>,
    completion_tokens: Vec<u64>,
    latencies: Vec<f64>,
    cached: Vec<bool>,
    sample_indexes: Vec<u32>,
}

impl OutputRows {
    fn new(generated_columns: usize) -> Self {
        OutputRows {
            source_rows: Vec::new(),
            ids: Vec::new(),
            generated: vec![Vec::new(); generated_columns],
            lists: Vec::new(),
            parent_ids: Vec::new(),
            models: Vec::new(),
            prompt_hashes: Vec::new(),
            params: Vec::new(),
            seeds: Vec::new(),
            prompt_tokens: Vec::new(),
            completion_tokens: Vec::new(),
            latencies: Vec::new(),
            cached: Vec::new(),
            sample_indexes: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        row: usize,
        work: &RowWork,
        sample_index: u32,
        item_index: u32,
        values: Vec<Option<String>>,
        all_texts: Option<&[String]>,
        reply: &ReplyInfo,
    ) {
        self.source_rows.push(row as u32);
        self.ids.push(stable_id(&[work.id.as_bytes(), &sample_index.to_le_bytes(), &item_index.to_le_bytes()]));
        for (column, value) in self.generated.iter_mut().zip(values) {
            column.push(value);
        }
        if let Some(texts) = all_texts {
            self.lists.push(texts.to_vec());
        }
        self.parent_ids.push(work.id.clone());
        self.models.push(reply.model.clone());
        self.prompt_hashes.push(work.prompt_hash.clone());
        self.params.push(reply.params.clone());
        self.seeds.push(reply.seed);
        self.prompt_tokens.push(reply.prompt_tokens);
        self.completion_tokens.push(reply.completion_tokens);
        self.latencies.push(reply.latency_ms);
        self.cached.push(reply.cached);
        self.sample_indexes.push(sample_index);
    }

    /// The output batch: input columns taken per output row (with `id` replaced and written names dropped),
    /// then generated columns, the list column and provenance, in the order of `schema`.
    fn into_batch(
        self,
        input: &RecordBatch,
        schema: &SchemaRef,
        written: &HashSet<&str>,
        with_list: bool,
    ) -> Result<RecordBatch, OpError> {
        let indices = UInt32Array::from(self.source_rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let ids: ArrayRef = Arc::new(StringArray::from(self.ids));
        for (field, column) in input.schema().fields().iter().zip(input.columns()) {
            if field.name() == ID {
                columns.push(Arc::clone(&ids));
            } else if !written.contains(field.name().as_str()) {
                columns.push(arrow::compute::take(column.as_ref(), &indices, None)?);
            }
        }
        for values in self.generated {
            columns.push(Arc::new(StringArray::from(values)));
        }
        if with_list {
            let mut builder = ListBuilder::new(StringBuilder::new()).with_field(list_item_field());
            for texts in &self.lists {
                for text in texts {
                    builder.values().append_value(text);
                }
                builder.append(true);
            }
            columns.push(Arc::new(builder.finish()));
        }
        columns.push(Arc::new(StringArray::from(self.parent_ids)));
        columns.push(Arc::new(StringArray::from(self.models)));
        columns.push(Arc::new(StringArray::from(self.prompt_hashes)));
        columns.push(Arc::new(StringArray::from(self.params)));
        columns.push(Arc::new(UInt64Array::from(self.seeds)));
        columns.push(Arc::new(UInt64Array::from(self.prompt_tokens)));
        columns.push(Arc::new(UInt64Array::from(self.completion_tokens)));
        columns.push(Arc::new(Float64Array::from(self.latencies)));
        columns.push(Arc::new(BooleanArray::from(self.cached)));
        columns.push(Arc::new(UInt32Array::from(self.sample_indexes)));
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

impl Operator for Generate {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        self.templates.check_schema(input, "a variable of the `prompt` or `system` template")?;
        let written: HashSet<&str> = self.written().collect();
        let mut fields: Vec<Field> = Vec::with_capacity(input.fields().len() + self.generated.len() + PROVENANCE.len());
        for field in input.fields() {
            if field.name() == ID {
                fields.push(Field::new(ID, DataType::Utf8, false));
            } else if !written.contains(field.name().as_str()) {
                fields.push(field.as_ref().clone());
            }
        }
        let nullable_generated = self.is_json();
        for name in &self.generated {
            fields.push(Field::new(name, DataType::Utf8, nullable_generated));
        }
        if let Some(list) = &self.list_column {
            fields.push(Field::new(list, DataType::List(list_item_field()), false));
        }
        fields.extend([
            Field::new(PARENT_ID, DataType::Utf8, false),
            Field::new(GEN_MODEL, DataType::Utf8, false),
            Field::new(GEN_PROMPT_HASH, DataType::Utf8, false),
            Field::new(GEN_PARAMS, DataType::Utf8, false),
            Field::new(GEN_SEED, DataType::UInt64, true),
            Field::new(GEN_PROMPT_TOKENS, DataType::UInt64, false),
            Field::new(GEN_COMPLETION_TOKENS, DataType::UInt64, false),
            Field::new(GEN_LATENCY_MS, DataType::Float64, false),
            Field::new(GEN_CACHED, DataType::Boolean, false),
            Field::new(SAMPLE_INDEX, DataType::UInt32, false),
        ]);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn start(&mut self, pending: PendingId, batch: RecordBatch) -> Result<Step, OpError> {
        if self.pending.contains_key(&pending) {
            return Err(OpError::Protocol(format!("start({pending}) while batch {pending} is still pending")));
        }
        let schema = self.output_schema(&batch.schema())?;
        if u32::try_from(batch.num_rows()).is_err() {
            return Err(OpError::Protocol(format!(
                "a batch of {} rows is too large (row indices are u32)",
                batch.num_rows()
            )));
        }
        let ids = string_column(&batch, ID)?;
        let slots = if self.list_column.is_some() { 1 } else { self.spec.n as usize };
        let mut rows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                rows.push(RowStatus::Rejected("null id".to_string()));
                continue;
            }
            let id = ids.value(row);
            match self.render(&batch, row, id) {
                Ok(messages) => {
                    let rendered = serde_json::to_string(&messages).unwrap_or_default();
                    let prompt_hash = blake3::hash(rendered.as_bytes()).to_hex()[..16].to_string();
                    let seed = self.spec.seed.map(|s| s.wrapping_add(id_hash(id)));
                    rows.push(RowStatus::Active(Box::new(RowWork {
                        id: id.to_string(),
                        messages,
                        prompt_hash,
                        seed,
                        retries: 0,
                        slots: (0..slots).map(|_| None).collect(),
                        failure: None,
                    })));
                }
                Err(reason) => rows.push(RowStatus::Rejected(reason)),
            }
        }
        let (flights, requests) = self.flights(&rows);
        let state = PendingBatch { batch, schema, rows, flights };
        if requests.is_empty() {
            return self.emit(state).map(Step::Emit);
        }
        self.pending.insert(pending, state);
        Ok(Step::Call(requests))
    }

    fn resume(&mut self, pending: PendingId, responses: Vec<ModelResponse>) -> Result<Step, OpError> {
        let Some(mut state) = self.pending.remove(&pending) else {
            return Err(OpError::Protocol(format!("resume({pending}) for a batch that is not pending")));
        };
        if responses.len() != state.flights.len() {
            return Err(OpError::Protocol(format!(
                "resume({pending}) got {} responses for {} requests",
                responses.len(),
                state.flights.len()
            )));
        }
        let flights = std::mem::take(&mut state.flights);
        for (flight, response) in flights.iter().zip(responses) {
            let status = &mut state.rows[flight.row];
            let RowStatus::Active(work) = status else { continue };
            match response {
                Ok(reply) => self.absorb(work, flight, reply),
                Err(error) => *status = RowStatus::Rejected(format!("model call failed: {error}")),
            }
        }
        self.retry_or_reject(&mut state.rows);
        let (flights, requests) = self.flights(&state.rows);
        if requests.is_empty() {
            return self.emit(state).map(Step::Emit);
        }
        state.flights = flights;
        self.pending.insert(pending, state);
        Ok(Step::Call(requests))
    }

    fn endpoints(&self) -> Vec<String> {
        vec![self.spec.model.clone()]
    }

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `generate` (paths relative to the repository's `configs/`; `sdg kinds generate`).
pub const EXAMPLE: &str = r#"# A teacher writes one question and its short answer about each glossary entry, as structured output.
models:
  teacher: {base_url: "http://127.0.0.1:8000/v1", model: teacher-model}
  student: {base_url: "http://127.0.0.1:8000/v1", model: student-model}
nodes:
  - {id: terms, kind: ingest, paths: [sample-corpus/tables/glossary.csv]}
  - id: qa
    kind: generate
    input: terms
    model: teacher
    prompt: "Write one exam question about this definition, and its short answer, as JSON: {{ text }}"
    output: {json: {columns: [question, answer]}}
  - {id: out, kind: sink, input: qa}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::array::{Int64Array, ListArray};
    use arrow::datatypes::{Float64Type, UInt32Type, UInt64Type};
    use serde_json::json;

    use crate::model::Usage;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, true),
            Field::new("level", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(StringArray::from(vec!["t0", "t1", "t2"])),
                Arc::new(StringArray::from(vec![Some("math"), None, Some("art")])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap()
    }

    fn spec(settings: serde_json::Value) -> GenerateSpec {
        serde_json::from_value(settings).unwrap()
    }

    fn generator(settings: serde_json::Value) -> Generate {
        Generate::new(spec(settings), Vec::new()).unwrap()
    }

    fn reply(texts: &[&str]) -> ModelResponse {
        Ok(ModelReply {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            embeddings: Vec::new(),
            model: "teacher-v1".to_string(),
            usage: Usage { prompt_tokens: 11, completion_tokens: 7 },
            latency_ms: 12.5,
            cached: false,
        })
    }

    fn calls(step: Step) -> Vec<ModelRequest> {
        match step {
            Step::Call(requests) => requests,
            Step::Emit(out) => panic!("expected a call, got an emit of {} rows", out.rows.num_rows()),
        }
    }

    fn emitted(step: Step) -> Output {
        match step {
            Step::Emit(out) => out,
            Step::Call(requests) => panic!("expected an emit, got {} requests", requests.len()),
        }
    }

    fn user_text(request: &ModelRequest) -> &str {
        match &request.prompt {
            Prompt::Chat(messages) => &messages.last().unwrap().content,
            other => panic!("not a chat prompt: {other:?}"),
        }
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        let array = string_column(batch, column).unwrap();
        (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i).to_string())).collect()
    }

    fn all(batch: &RecordBatch, column: &str) -> Vec<String> {
        strings(batch, column).into_iter().map(|v| v.unwrap()).collect()
    }

    fn demos(count: usize) -> Vec<Map<String, serde_json::Value>> {
        (0..count)
            .map(|i| match json!({"q": format!("q{i}"), "a": i}) {
                serde_json::Value::Object(map) => map,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn renders_columns_system_and_demos() {
        let mut op = Generate::new(
            spec(json!({
                "model": "teacher",
                "system": "You teach {{ topic if topic is not none else 'anything' }}.",
                "prompt": "{% for d in demos %}[{{ d.q }}={{ d.a }}]{% endfor %}\
                           {{ text }} level={{ level }} row={{ row }}",
                "demos_k": 2,
                "seed": 7,
            })),
            demos(2),
        )
        .unwrap();
        let requests = calls(op.start(1, batch()).unwrap());
        assert_eq!(requests.len(), 3);
        let Prompt::Chat(messages) = &requests[0].prompt else { panic!("not chat") };
        assert_eq!(messages[0], ChatMessage::new("system", "You teach math."));
        assert_eq!(messages[1].role, "user");
        let Prompt::Chat(second) = &requests[1].prompt else { panic!("not chat") };
        assert_eq!(second[0].content, "You teach anything.", "a null column renders as none");
        // Both demos appear (k = 2 of 2), in some order, then the row's columns.
        let text = user_text(&requests[2]);
        assert!(text.ends_with("t2 level=3 row=2"), "{text}");
        assert!(text.contains("[q0=0]") && text.contains("[q1=1]"), "{text}");
        assert_eq!(requests[0].endpoint, "teacher");
        assert_eq!(requests[1].row, 1);
    }

    #[test]
    fn demos_sampling_is_deterministic_and_respects_k() {
        let settings =
            json!({"model": "m", "prompt": "{% for d in demos %}{{ d.q }};{% endfor %}", "demos_k": 3, "seed": 1});
        let prompts = |settings: serde_json::Value| -> Vec<String> {
            let mut op = Generate::new(spec(settings), demos(10)).unwrap();
            calls(op.start(0, batch()).unwrap()).iter().map(|r| user_text(r).to_string()).collect()
        };
        let first = prompts(settings.clone());
        for prompt in &first {
            let picked: Vec<&str> = prompt.split(';').filter(|s| !s.is_empty()).collect();
            assert_eq!(picked.len(), 3, "{prompt}");
            assert_eq!(picked.iter().collect::<HashSet<_>>().len(), 3, "sampled with replacement: {prompt}");
        }
        assert_eq!(first, prompts(settings.clone()), "reruns pick the same demos");
        assert!(first.iter().collect::<HashSet<_>>().len() > 1, "rows should get different demos: {first:?}");
        let other_seed = prompts(
            json!({"model": "m", "prompt": "{% for d in demos %}{{ d.q }};{% endfor %}", "demos_k": 3, "seed": 2}),
        );
        assert_ne!(first, other_seed);

        let too_many = Generate::new(spec(json!({"model": "m", "prompt": "x", "demos_k": 3})), demos(2));
        assert!(matches!(too_many, Err(OpError::InvalidSetting { key, .. }) if key == "demos_k"));
        assert_eq!(sample_indices(5, 5, 9).into_iter().collect::<HashSet<_>>().len(), 5);
    }

    #[test]
    fn parse_demos_jsonl_names_the_line() {
        let good = parse_demos_jsonl("{\"q\": \"a\"}\n\n  {\"q\": \"b\", \"n\": 2}\n").unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(good[1]["n"], json!(2));

        let bad = parse_demos_jsonl("{\"q\": 1}\n\n{\"q\": \n").unwrap_err().to_string();
        assert!(bad.contains("line 3") && bad.contains("invalid JSON"), "{bad}");
        let not_object = parse_demos_jsonl("{\"q\": 1}\n[1, 2]\n").unwrap_err().to_string();
        assert_eq!(not_object, "`demos`: line 2: expected a JSON object, found an array");
    }

    #[test]
    fn text_mode_emits_rows_with_provenance() {
        let mut op =
            generator(json!({"model": "teacher", "prompt": "Q about {{ text }}", "seed": 5, "temperature": 0.5}));
        let requests = calls(op.start(3, batch()).unwrap());
        assert_eq!(requests[0].sampling.n, 1);
        assert_eq!(requests[0].sampling.temperature, Some(0.5));
        let seeds: Vec<_> = requests.iter().map(|r| r.sampling.seed.unwrap()).collect();
        assert_eq!(seeds[0], 5u64.wrapping_add(id_hash("a")));
        assert_eq!(seeds.iter().collect::<HashSet<_>>().len(), 3, "rows get different seeds");

        let out = emitted(op.resume(3, vec![reply(&["g0"]), reply(&["g1"]), reply(&["g2"])]).unwrap());
        assert!(out.rejects.is_empty());
        let rows = &out.rows;
        assert_eq!(rows.schema(), op.output_schema(&batch().schema()).unwrap());
        assert_eq!(all(rows, "generated"), ["g0", "g1", "g2"]);
        assert_eq!(all(rows, "text"), ["t0", "t1", "t2"]);
        assert_eq!(strings(rows, "topic"), [Some("math".into()), None, Some("art".into())]);
        assert_eq!(all(rows, PARENT_ID), ["a", "b", "c"]);
        let ids = all(rows, ID);
        assert_eq!(ids[0], stable_id(&[b"a", &0u32.to_le_bytes(), &0u32.to_le_bytes()]));
        assert_eq!(all(rows, GEN_MODEL), ["teacher-v1"; 3]);
        let hashes = all(rows, GEN_PROMPT_HASH);
        assert_eq!(hashes[0].len(), 16);
        let expected = serde_json::to_string(&vec![ChatMessage::new("user", "Q about t0")]).unwrap();
        assert_eq!(hashes[0], blake3::hash(expected.as_bytes()).to_hex()[..16]);
        let params: Sampling = serde_json::from_str(&all(rows, GEN_PARAMS)[1]).unwrap();
        assert_eq!(params, requests[1].sampling);
        let gen_seeds = rows.column_by_name(GEN_SEED).unwrap().as_primitive::<UInt64Type>();
        assert_eq!(gen_seeds.value(2), seeds[2]);
        let prompt_tokens = rows.column_by_name(GEN_PROMPT_TOKENS).unwrap().as_primitive::<UInt64Type>();
        let completion = rows.column_by_name(GEN_COMPLETION_TOKENS).unwrap().as_primitive::<UInt64Type>();
        assert_eq!((prompt_tokens.value(0), completion.value(0)), (11, 7));
        assert_eq!(rows.column_by_name(GEN_LATENCY_MS).unwrap().as_primitive::<Float64Type>().value(1), 12.5);
        assert!(!rows.column_by_name(GEN_CACHED).unwrap().as_boolean().value(0));
        assert_eq!(
            rows.column_by_name(SAMPLE_INDEX).unwrap().as_primitive::<UInt32Type>().values().to_vec(),
            [0, 0, 0]
        );

        // Reruns send the same requests.
        let mut again =
            generator(json!({"model": "teacher", "prompt": "Q about {{ text }}", "seed": 5, "temperature": 0.5}));
        assert_eq!(calls(again.start(0, batch()).unwrap()), requests);
    }

    #[test]
    fn rows_mode_fans_out_samples_with_distinct_ids() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}", "n": 3}));
        let requests = calls(op.start(0, batch()).unwrap());
        assert!(requests.iter().all(|r| r.sampling.n == 3 && r.sampling.seed.is_none()));
        let out = emitted(
            op.resume(0, vec![reply(&["a0", "a1", "a2"]), reply(&["b0", "b1", "b2"]), reply(&["c0", "c1", "c2"])])
                .unwrap(),
        );
        let rows = &out.rows;
        assert_eq!(rows.num_rows(), 9);
        assert_eq!(all(rows, "generated"), ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]);
        let samples = rows.column_by_name(SAMPLE_INDEX).unwrap().as_primitive::<UInt32Type>();
        assert_eq!(samples.values().to_vec(), [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!(all(rows, PARENT_ID), ["a", "a", "a", "b", "b", "b", "c", "c", "c"]);
        let ids = all(rows, ID);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 9, "ids collide: {ids:?}");
        assert_eq!(ids[4], stable_id(&[b"b", &1u32.to_le_bytes(), &0u32.to_le_bytes()]));
        assert!(rows.column_by_name(GEN_SEED).unwrap().is_null(0));
    }

    #[test]
    fn list_mode_keeps_samples_in_one_row() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}", "n": 2, "samples": "list",
                   "output": {"text": {"column": "answer"}}}));
        let requests = calls(op.start(0, batch()).unwrap());
        assert!(requests.iter().all(|r| r.sampling.n == 2));
        let out =
            emitted(op.resume(0, vec![reply(&["a0", "a1"]), reply(&["b0", "b1"]), reply(&["c0", "c1"])]).unwrap());
        let rows = &out.rows;
        assert_eq!(rows.num_rows(), 3);
        assert_eq!(all(rows, "answer"), ["a0", "b0", "c0"]);
        let list = rows.column_by_name("answer_samples").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
        let second = list.value(1);
        let second = second.as_string::<i32>();
        assert_eq!((second.value(0), second.value(1)), ("b0", "b1"));
        assert_eq!(rows.schema(), op.output_schema(&batch().schema()).unwrap());
    }

    #[test]
    fn json_mode_maps_keys_to_columns() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}",
                   "output": {"json": {"columns": ["question", "answer", "meta"]}}}));
        calls(op.start(0, batch()).unwrap());
        let out = emitted(
            op.resume(
                0,
                vec![
                    reply(&[r#"{"question": "Why?", "answer": "Because.", "meta": {"k": [1, 2]}}"#]),
                    reply(&[r#"{"question": "How?", "answer": 42, "meta": null, "extra": true}"#]),
                    reply(&[r#"{"question": "Who?", "answer": "Me", "meta": "x"}"#]),
                ],
            )
            .unwrap(),
        );
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(all(rows, "question"), ["Why?", "How?", "Who?"]);
        assert_eq!(all(rows, "answer"), ["Because.", "42", "Me"]);
        assert_eq!(strings(rows, "meta"), [Some(r#"{"k":[1,2]}"#.into()), None, Some("x".into())]);
        assert!(rows.column_by_name("generated").is_none());
    }

    #[test]
    fn json_list_fans_out_items() {
        let mut op =
            generator(json!({"model": "m", "prompt": "{{ text }}", "output": {"json_list": {"columns": ["q"]}}}));
        calls(op.start(0, batch()).unwrap());
        let out = emitted(
            op.resume(
                0,
                vec![
                    reply(&[r#"[{"q": "a1"}, {"q": "a2"}, {"q": "a3"}]"#]),
                    reply(&[r#"{"items": [{"q": "b1"}]}"#]),
                    reply(&["Here you go:\n```json\n[{\"q\": \"c1\"}, {\"q\": \"c2\"}]\n```\nEnjoy!"]),
                ],
            )
            .unwrap(),
        );
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(all(rows, "q"), ["a1", "a2", "a3", "b1", "c1", "c2"]);
        assert_eq!(all(rows, PARENT_ID), ["a", "a", "a", "b", "c", "c"]);
        let ids = all(rows, ID);
        assert_eq!(ids[1], stable_id(&[b"a", &0u32.to_le_bytes(), &1u32.to_le_bytes()]));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6);
    }

    #[test]
    fn unparseable_reply_is_retried_only_for_bad_rows_then_rejected_with_raw_text() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}", "seed": 100, "max_parse_retries": 2,
                               "output": {"json": {"columns": ["q"]}}}));
        let first = calls(op.start(9, batch()).unwrap());
        let step = op
            .resume(9, vec![reply(&[r#"{"q": "ok"}"#]), reply(&["I cannot do that."]), reply(&[r#"{"nope": 1}"#])])
            .unwrap();
        let second = calls(step);
        assert_eq!(second.iter().map(|r| r.row).collect::<Vec<_>>(), [1, 2], "only the bad rows are asked again");
        assert_eq!(second[0].sampling.seed, first[1].sampling.seed.map(|s| s + 1));
        assert_eq!(second[1].sampling.seed, first[2].sampling.seed.map(|s| s + 1));
        assert_eq!(second[0].prompt, first[1].prompt);

        // Row 2 recovers; row 1 keeps failing.
        let third = calls(op.resume(9, vec![reply(&["still prose"]), reply(&[r#"{"q": "fixed"}"#])]).unwrap());
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].row, 1);
        assert_eq!(third[0].sampling.seed, first[1].sampling.seed.map(|s| s + 2));
        let long = format!("nothing {}", "x".repeat(300));
        let out = emitted(op.resume(9, vec![reply(&[&long])]).unwrap());
        assert_eq!(all(&out.rows, "q"), ["ok", "fixed"]);
        assert_eq!(all(&out.rows, PARENT_ID), ["a", "c"]);
        let gen_seeds = out.rows.column_by_name(GEN_SEED).unwrap().as_primitive::<UInt64Type>();
        assert_eq!(gen_seeds.value(1), first[2].sampling.seed.unwrap() + 1, "gen_seed is the seed of the reply used");
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].row, 1);
        let reason = &out.rejects[0].reason;
        assert!(reason.starts_with("could not parse JSON after 3 attempts: no JSON object"), "{reason}");
        assert!(reason.ends_with(&format!("raw: {}", &long[..200])), "{reason}");
        assert!(op.pending.is_empty());
    }

    #[test]
    fn retries_ask_only_for_the_missing_samples() {
        let mut op =
            generator(json!({"model": "m", "prompt": "{{ text }}", "n": 3, "output": {"json": {"columns": ["q"]}}}));
        let batch = take_first_row(batch());
        let first = calls(op.start(0, batch).unwrap());
        assert_eq!(first[0].sampling.seed, None);
        let second = calls(op.resume(0, vec![reply(&[r#"{"q": "s0"}"#, "bad", r#"{"q": "s2"}"#])]).unwrap());
        assert_eq!(second[0].sampling.n, 1);
        assert_eq!(second[0].sampling.seed, Some(id_hash("a") + 1), "a retry always carries a fresh seed");
        let out = emitted(op.resume(0, vec![reply(&[r#"{"q": "s1"}"#])]).unwrap());
        assert_eq!(all(&out.rows, "q"), ["s0", "s1", "s2"]);
        let samples = out.rows.column_by_name(SAMPLE_INDEX).unwrap().as_primitive::<UInt32Type>();
        assert_eq!(samples.values().to_vec(), [0, 1, 2]);
    }

    fn take_first_row(batch: RecordBatch) -> RecordBatch {
        crate::take_rows(&batch, &[0]).unwrap()
    }

    #[test]
    fn failed_request_and_render_errors_reject_the_row() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}"}));
        calls(op.start(0, batch()).unwrap());
        let out =
            emitted(op.resume(0, vec![reply(&["x"]), Err("HTTP 500 after 3 retries".into()), reply(&["z"])]).unwrap());
        assert_eq!(all(&out.rows, PARENT_ID), ["a", "c"]);
        assert_eq!(out.rejects, vec![Reject { row: 1, reason: "model call failed: HTTP 500 after 3 retries".into() }]);

        // Printing an undefined attribute fails the row, not the batch.
        let mut op = Generate::new(
            spec(json!({"model": "m", "prompt": "{% set d = demos[0] %}{{ d.q }}{{ d.missing }}", "demos_k": 1})),
            demos(1),
        )
        .unwrap();
        let out = emitted(op.start(0, batch()).unwrap());
        assert_eq!(out.rows.num_rows(), 0);
        assert_eq!(out.rejects.len(), 3);
        assert!(
            out.rejects[0].reason.starts_with("could not render the `prompt` template"),
            "{}",
            out.rejects[0].reason
        );
    }

    #[test]
    fn output_schema_refuses_a_prompt_referencing_a_missing_column() {
        let schema = batch().schema();
        let typo = generator(json!({"model": "m", "prompt": "{{ txet }} {{ row }} {% for d in demos %}{% endfor %}"}));
        match typo.output_schema(&schema) {
            Err(OpError::MissingColumn { column, .. }) => assert_eq!(column, "txet"),
            other => panic!("expected a missing column, got {other:?}"),
        }
        let in_system = generator(json!({"model": "m", "system": "{{ persona }}", "prompt": "{{ text }}"}));
        let refused = in_system.output_schema(&schema);
        assert!(matches!(refused, Err(OpError::MissingColumn { column, .. }) if column == "persona"));
        // Globals, loop variables and set variables are not columns.
        let fine = generator(json!({"model": "m",
                   "prompt": "{% set x = 1 %}{% for i in range(2) %}{{ loop.index }}{{ x }}{% endfor %}\
                              {{ text }}{{ topic }}"}));
        let out = fine.output_schema(&schema).unwrap();
        let names: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "text",
                "topic",
                "level",
                "generated",
                PARENT_ID,
                GEN_MODEL,
                GEN_PROMPT_HASH,
                GEN_PARAMS,
                GEN_SEED,
                GEN_PROMPT_TOKENS,
                GEN_COMPLETION_TOKENS,
                GEN_LATENCY_MS,
                GEN_CACHED,
                SAMPLE_INDEX
            ]
        );
        let no_id = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        assert!(matches!(fine.output_schema(&no_id), Err(OpError::MissingColumn { column, .. }) if column == "id"));
    }

    #[test]
    fn generate_nodes_chain_by_replacing_written_columns() {
        let mut first =
            generator(json!({"model": "m", "prompt": "{{ text }}", "output": {"text": {"column": "question"}}}));
        calls(first.start(0, batch()).unwrap());
        let questions = emitted(first.resume(0, vec![reply(&["q0"]), reply(&["q1"]), reply(&["q2"])]).unwrap()).rows;
        let mut second =
            generator(json!({"model": "m", "prompt": "{{ question }}", "output": {"text": {"column": "answer"}}}));
        let schema = second.output_schema(&questions.schema()).unwrap();
        let count = |name: &str| schema.fields().iter().filter(|f| f.name() == name).count();
        assert_eq!((count(PARENT_ID), count("question"), count("answer")), (1, 1, 1));
        let requests = calls(second.start(0, questions.clone()).unwrap());
        assert_eq!(user_text(&requests[1]), "q1");
        let answers = emitted(second.resume(0, vec![reply(&["a0"]), reply(&["a1"]), reply(&["a2"])]).unwrap()).rows;
        assert_eq!(all(&answers, PARENT_ID), all(&questions, ID));
        assert_eq!(all(&answers, "question"), ["q0", "q1", "q2"]);
    }

    #[test]
    fn endpoints_returns_the_model() {
        assert_eq!(generator(json!({"model": "teacher", "prompt": "x"})).endpoints(), ["teacher"]);
    }

    #[test]
    fn pending_state_is_cleaned_after_emit_and_protocol_errors_are_refused() {
        let mut op = generator(json!({"model": "m", "prompt": "{{ text }}"}));
        calls(op.start(1, batch()).unwrap());
        calls(op.start(2, batch()).unwrap());
        assert_eq!(op.pending.len(), 2);
        assert!(matches!(op.start(1, batch()), Err(OpError::Protocol(_))));
        emitted(op.resume(1, vec![reply(&["x"]), reply(&["y"]), reply(&["z"])]).unwrap());
        assert_eq!(op.pending.keys().collect::<Vec<_>>(), [&2]);
        assert!(matches!(op.resume(1, vec![]), Err(OpError::Protocol(_))));
        assert!(matches!(op.resume(2, vec![reply(&["x"])]), Err(OpError::Protocol(_))));
        assert!(op.pending.is_empty());
        // A batch with nothing to ask emits at once and keeps no state.
        let empty = crate::empty_batch(&batch().schema());
        assert_eq!(emitted(op.start(3, empty).unwrap()).rows.num_rows(), 0);
        assert!(op.pending.is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let bad = |settings: serde_json::Value| Generate::new(spec(settings), Vec::new()).unwrap_err().to_string();
        let err = bad(json!({"model": "m", "prompt": "{{ text "}));
        assert!(err.starts_with("`prompt`: invalid template"), "{err}");
        let err = bad(json!({"model": "m", "system": "{% if %}", "prompt": "x"}));
        assert!(err.starts_with("`system`: invalid template"), "{err}");
        assert!(bad(json!({"model": "m", "prompt": "x", "n": 0})).starts_with("`n`"));
        assert!(bad(json!({"model": "", "prompt": "x"})).starts_with("`model`"));
        assert!(
            bad(json!({"model": "m", "prompt": "x", "output": {"json": {"columns": []}}})).contains("at least one")
        );
        assert!(
            bad(json!({"model": "m", "prompt": "x", "output": {"json": {"columns": ["a", "a"]}}})).contains("twice")
        );
        assert!(
            bad(json!({"model": "m", "prompt": "x", "output": {"json": {"columns": ["parent_id"]}}}))
                .contains("writes itself")
        );
        assert!(
            bad(json!({"model": "m", "prompt": "x", "samples": "list", "output": {"json": {"columns": ["a"]}}}))
                .starts_with("`samples`")
        );

        let parsed = spec(json!({"model": "m", "prompt": "p"}));
        assert_eq!(parsed.n, 1);
        assert_eq!(parsed.max_parse_retries, 2);
        assert_eq!(parsed.samples, SamplesMode::Rows);
        assert_eq!(parsed.output, OutputMode::Text { column: "generated".into() });
        let text_default = spec(json!({"model": "m", "prompt": "p", "output": {"text": {}}}));
        assert_eq!(text_default.output, OutputMode::default());
        assert!(
            serde_json::from_value::<GenerateSpec>(json!({"model": "m", "prompt": "p", "tempreature": 1})).is_err()
        );
        assert!(
            serde_json::from_value::<GenerateSpec>(
                json!({"model": "m", "prompt": "p", "output": {"text": {"colum": "x"}}})
            )
            .is_err()
        );
        let full =
            spec(json!({"model": "m", "prompt": "p", "json_schema": {"type": "object"}, "stop": ["\n"], "top_p": 0.9,
                   "max_tokens": 64, "seed": 3}));
        let mut op = Generate::new(full, Vec::new()).unwrap();
        let requests = calls(op.start(0, batch()).unwrap());
        let sampling = &requests[0].sampling;
        assert_eq!(sampling.json_schema, Some(json!({"type": "object"})));
        assert_eq!(
            (sampling.stop.clone(), sampling.top_p, sampling.max_tokens),
            (vec!["\n".to_string()], Some(0.9), Some(64))
        );
    }

    #[test]
    fn request_per_sample_asks_each_sample_alone_so_a_larger_n_extends_the_cached_ones() {
        let requests = |n: u32| {
            let mut op = Generate::new(
                spec(json!({"model": "m", "prompt": "p", "n": n, "seed": 5, "request_per_sample": true})),
                Vec::new(),
            )
            .unwrap();
            calls(op.start(0, batch()).unwrap())
        };
        let three = requests(3);
        let rows = batch().num_rows();
        assert_eq!(three.len(), 3 * rows);
        assert!(three.iter().all(|r| r.sampling.n == 1));
        let seeds: std::collections::HashSet<_> = three.iter().map(|r| (r.row, r.sampling.seed)).collect();
        assert_eq!(seeds.len(), three.len(), "each sample of a row has its own seed");
        let five = requests(5);
        assert_eq!(five.len(), 5 * rows);
        assert!(three.iter().all(|r| five.contains(r)), "n = 5 asks the same first three samples again");
    }
}
