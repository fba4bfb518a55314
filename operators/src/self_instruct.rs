//! `self_instruct`: grows a pool of instructions from a few seeds (Self-Instruct). Each input row is a slot:
//! one request that shows `per_prompt` instructions from the pool (`from_generated` of them machine-made,
//! once there are any) and asks for `new_per_call` new ones as `{"instructions": [...]}`.
//!
//! Every candidate is checked, in order, against the whole pool: it is dropped when it does not parse, is
//! empty, is shorter than `min_chars` or longer than `max_chars` characters, or is too similar to any pooled
//! instruction ([`crate::shingles::Shingles::similarity`]: the larger of the word-set and the
//! character-4-gram Jaccard similarity, above `max_similarity`; the paper uses ROUGE-L, which needs the longest
//! common subsequence of every pair, while Jaccard sets can be indexed). Accepted candidates join the pool at
//! once, so later candidates of the same reply, and of later slots, are checked against them.
//!
//! Accepted candidates become rows: the slot's columns, the instruction in `column`, the id
//! `stable_id(slot id, "self-instruct", candidate index)`, `self_instruct_parent_id` (the slot's id) and
//! `self_instruct_pool_size` (how many instructions the candidate was checked against). A slot that yields
//! nothing goes to rejects with a summary ("8 candidates: 6 too similar to the pool, 2 unparseable").
//!
//! The pool is state over the whole run, so the operator's [`Operator::shape`] sends every slot to one
//! worker and asks for time order: the engine hands it one timestamp at a time, rows sorted by `id`, with
//! one timestamp's calls in flight at a time, so what gets accepted depends neither on reply timing nor on
//! the number of workers. Within a timestamp it does not rely on batches resuming in order: a batch's
//! prompts show the pool as it was when the batch started (the snapshot is rendered into its requests), and
//! its candidates are checked in `resume` against the pool as it is then, in row order and candidate order.
//! A batch that finishes after a later one is still checked against everything accepted before it, so no
//! near-duplicate gets in whatever the order.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use minijinja::value::Value;
use serde::Deserialize;

use crate::columns::{ID, stable_id};
use crate::compare::preview;
use crate::json_extract::extract_json;
use crate::model::{ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::ChatTemplate;
use crate::shingles::{Shingles, jaccard};
use crate::task::{PendingTasks, Poll, RowTask, annotated_schema, derive_seed};
use crate::{Exchange, OpError, Operator, Output, Reject, Shape, require_column, string_column};

/// The slot row's id, on every output row.
pub const SELF_INSTRUCT_PARENT_ID: &str = "self_instruct_parent_id";
/// How many instructions (seeds included) the row's instruction was checked against.
pub const SELF_INSTRUCT_POOL_SIZE: &str = "self_instruct_pool_size";

/// The default prompt; variables: `examples` (instructions from the pool), `n` (`new_per_call`).
pub const DEFAULT_PROMPT: &str = "Come up with {{ n }} new, diverse task instructions for an AI assistant. \
Here are some existing instructions, to show the style only:\n\n\
{% for example in examples %}{{ loop.index }}. {{ example }}\n{% endfor %}\n\
Requirements:\n\
- Do not repeat or paraphrase the examples; vary the verbs, the topics and the kinds of task (open questions, \
writing, classification, editing, reasoning, coding, advice).\n\
- Each instruction is one to three sentences, self-contained and answerable in text by a language model \
(no images, audio or browsing).\n\
- If a task needs input (a passage, data, code), include it in the instruction.\n\n\
Reply with JSON only: {\"instructions\": [\"...\", \"...\"]}";

/// Settings of a `self_instruct` node.
///
/// ```yaml
/// self_instruct:
///   model: teacher          # endpoint that writes instructions
///   seeds: ["Give three tips for staying healthy.", "..."]   # the initial pool (the engine may read a file)
///   per_prompt: 6           # pool instructions shown per prompt
///   from_generated: 2       # of which machine-generated, once the pool has some
///   new_per_call: 8         # instructions asked per slot (later ones in a reply are ignored)
///   max_similarity: 0.7     # against every instruction in the pool
///   min_chars: 10
///   max_chars: 2000
///   seed: 7                 # demo sampling and sampling seeds derive from it and the slot id
///   temperature: 0.8
///   max_tokens: null
///   prompt: "..."           # minijinja; variables: examples, n, slot columns (default DEFAULT_PROMPT)
///   system: null
///   column: instruction     # the output column
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfInstructSpec {
    pub model: String,
    /// The seed instructions; must not be empty by the time the operator is built.
    #[serde(default)]
    pub seeds: Vec<String>,
    #[serde(default = "default_per_prompt")]
    pub per_prompt: usize,
    #[serde(default = "default_from_generated")]
    pub from_generated: usize,
    #[serde(default = "default_new_per_call")]
    pub new_per_call: usize,
    #[serde(default = "default_max_similarity")]
    pub max_similarity: f64,
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_column")]
    pub column: String,
}

fn default_per_prompt() -> usize {
    6
}

fn default_from_generated() -> usize {
    2
}

fn default_new_per_call() -> usize {
    8
}

fn default_max_similarity() -> f64 {
    0.7
}

fn default_min_chars() -> usize {
    10
}

fn default_max_chars() -> usize {
    2000
}

fn default_temperature() -> f32 {
    0.8
}

fn default_prompt() -> String {
    DEFAULT_PROMPT.into()
}

fn default_column() -> String {
    "instruction".into()
}

// ---------------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------------

/// A prefix-filter index for "Jaccard above t" lookups: with tokens in one global order (hash order), two
/// sets with Jaccard >= t share at least ceil(t * |A|) tokens, so their smallest common token lies in the
/// first |A| - ceil(t * |A|) + 1 tokens of each. Only those prefixes are indexed and probed, which keeps a
/// lookup far below a scan of the whole pool while missing no pair above the threshold.
#[derive(Debug)]
struct PrefixIndex {
    threshold: f64,
    postings: HashMap<u64, Vec<u32>>,
}

impl PrefixIndex {
    fn new(threshold: f64) -> Self {
        PrefixIndex { threshold, postings: HashMap::new() }
    }

    fn prefix(&self, set: &[u64]) -> usize {
        if set.is_empty() {
            return 0;
        }
        // The epsilon keeps t * len = 3.0000000001 from asking for a 4th common token.
        let common = ((self.threshold * set.len() as f64) - 1e-9).ceil().max(1.0) as usize;
        set.len() - common.min(set.len()) + 1
    }

    fn insert(&mut self, id: u32, set: &[u64]) {
        for token in &set[..self.prefix(set)] {
            self.postings.entry(*token).or_default().push(id);
        }
    }

    fn candidates(&self, set: &[u64], out: &mut Vec<u32>) {
        for token in &set[..self.prefix(set)] {
            if let Some(ids) = self.postings.get(token) {
                out.extend_from_slice(ids);
            }
        }
    }
}

/// The seeds followed by the accepted instructions, indexed for similarity lookups.
#[derive(Debug)]
struct Pool {
    texts: Vec<String>,
    shingles: Vec<Shingles>,
    seeds: usize,
    threshold: f64,
    words: PrefixIndex,
    grams: PrefixIndex,
}

impl Pool {
    fn new(seeds: &[String], threshold: f64) -> Self {
        let mut pool = Pool {
            texts: Vec::new(),
            shingles: Vec::new(),
            seeds: seeds.len(),
            threshold,
            words: PrefixIndex::new(threshold),
            grams: PrefixIndex::new(threshold),
        };
        for seed in seeds {
            pool.add(seed.clone(), Shingles::of(seed));
        }
        pool
    }

    fn len(&self) -> usize {
        self.texts.len()
    }

    fn add(&mut self, text: String, shingles: Shingles) {
        let id = self.texts.len() as u32;
        self.words.insert(id, shingles.words());
        self.grams.insert(id, shingles.grams());
        self.texts.push(text);
        self.shingles.push(shingles);
    }

    /// The most similar pooled instruction above the threshold (the first on ties), with its similarity.
    fn closest(&self, shingles: &Shingles) -> Option<(usize, f64)> {
        let mut ids = Vec::new();
        self.words.candidates(shingles.words(), &mut ids);
        self.grams.candidates(shingles.grams(), &mut ids);
        ids.sort_unstable();
        ids.dedup();
        let mut best: Option<(usize, f64)> = None;
        for id in ids {
            let id = id as usize;
            let other = &self.shingles[id];
            // Either measure above the threshold is enough; both were found through their own index.
            let similarity = jaccard(shingles.words(), other.words()).max(jaccard(shingles.grams(), other.grams()));
            if similarity > self.threshold && best.is_none_or(|(_, b)| similarity > b) {
                best = Some((id, similarity));
            }
        }
        best
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

/// `k` distinct indices in `0..len`, in sampled order (partial Fisher-Yates).
fn sample_indices(len: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..len).collect();
    let k = k.min(len);
    for i in 0..k {
        let j = i + (rng.next() % (len - i) as u64) as usize;
        indices.swap(i, j);
    }
    indices.truncate(k);
    indices
}

// ---------------------------------------------------------------------------------------------------
// Candidates
// ---------------------------------------------------------------------------------------------------

/// Why a candidate was dropped, in the order the summary lists ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Similar,
    TooShort,
    TooLong,
    Empty,
    Unparseable,
    Extra,
}

impl Fault {
    const ALL: [Fault; 6] =
        [Fault::Similar, Fault::TooShort, Fault::TooLong, Fault::Empty, Fault::Unparseable, Fault::Extra];

    fn label(self) -> &'static str {
        match self {
            Fault::Similar => "too similar to the pool",
            Fault::TooShort => "too short",
            Fault::TooLong => "too long",
            Fault::Empty => "empty",
            Fault::Unparseable => "unparseable",
            Fault::Extra => "over new_per_call",
        }
    }
}

/// "8 candidates: 6 too similar to the pool, 2 unparseable" (most frequent first).
fn summary(total: usize, faults: &[usize; 6]) -> String {
    if total == 0 {
        return "the reply listed no instructions".into();
    }
    let mut counts: Vec<(usize, Fault)> =
        Fault::ALL.iter().map(|f| (faults[*f as usize], *f)).filter(|(n, _)| *n > 0).collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.0));
    let parts: Vec<String> = counts.iter().map(|(n, f)| format!("{n} {}", f.label())).collect();
    let noun = if total == 1 { "candidate" } else { "candidates" };
    format!("{total} {noun}: {}", parts.join(", "))
}

/// The instructions in a reply: `{"instructions": [...]}` or a bare list; items are strings (a leading
/// "3." or "3)" is dropped) or objects with an `instruction` string; anything else is `None`.
fn parse_candidates(reply: &str) -> Result<Vec<Option<String>>, String> {
    let value = extract_json(reply)?;
    let items = match &value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(object) => match object.get("instructions") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err("no `instructions` list".into()),
        },
        _ => return Err("not an object or a list".into()),
    };
    Ok(items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(text) => Some(strip_number(text.trim()).to_string()),
            serde_json::Value::Object(object) => object
                .get("instruction")
                .and_then(serde_json::Value::as_str)
                .map(|t| strip_number(t.trim()).to_string()),
            _ => None,
        })
        .collect())
}

/// `text` without a leading list number such as "3. " or "12) ".
fn strip_number(text: &str) -> &str {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return text;
    }
    let rest = &text[digits..];
    match rest.strip_prefix('.').or_else(|| rest.strip_prefix(')')) {
        Some(after) if after.starts_with(char::is_whitespace) => after.trim_start(),
        _ => text,
    }
}

// ---------------------------------------------------------------------------------------------------
// The operator
// ---------------------------------------------------------------------------------------------------

/// One slot's request, then its reply text (or why there is none).
enum SlotTask {
    Ask(Option<Box<ModelRequest>>),
    Rejected(String),
}

impl RowTask for SlotTask {
    type Out = Result<String, String>;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Self::Out> {
        match self {
            SlotTask::Rejected(reason) => Poll::Done(Err(std::mem::take(reason))),
            SlotTask::Ask(request) => match request.take() {
                Some(request) => Poll::Need(vec![*request]),
                None => Poll::Done(match responses.into_iter().next() {
                    Some(Ok(reply)) => Ok(reply.texts.into_iter().next().unwrap_or_default()),
                    Some(Err(error)) => Err(format!("model call failed: {error}")),
                    None => Err("no response to the slot's request".into()),
                }),
            },
        }
    }
}

/// The `self_instruct` operator. See the module docs.
#[derive(Debug)]
pub struct SelfInstruct {
    spec: SelfInstructSpec,
    template: ChatTemplate,
    pool: Pool,
    pending: PendingTasks<SlotTask>,
}

const TEMPLATE_VARS: [&str; 2] = ["examples", "n"];

impl SelfInstruct {
    pub fn new(spec: SelfInstructSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.seeds.is_empty() {
            return Err(OpError::setting("seeds", "needs at least one seed instruction"));
        }
        if let Some(blank) = spec.seeds.iter().position(|s| s.trim().is_empty()) {
            return Err(OpError::setting("seeds", format!("seed {blank} is blank")));
        }
        if spec.per_prompt == 0 {
            return Err(OpError::setting("per_prompt", "must be at least 1"));
        }
        if spec.from_generated > spec.per_prompt {
            return Err(OpError::setting(
                "from_generated",
                format!("{} is more than per_prompt ({})", spec.from_generated, spec.per_prompt),
            ));
        }
        if spec.new_per_call == 0 {
            return Err(OpError::setting("new_per_call", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&spec.max_similarity) {
            return Err(OpError::setting("max_similarity", format!("{} is not in [0, 1]", spec.max_similarity)));
        }
        if spec.max_chars == 0 || spec.min_chars > spec.max_chars {
            return Err(OpError::setting(
                "max_chars",
                format!("needs max_chars >= 1 and min_chars ({}) <= max_chars ({})", spec.min_chars, spec.max_chars),
            ));
        }
        if !(spec.temperature.is_finite() && spec.temperature >= 0.0) {
            return Err(OpError::setting("temperature", format!("{} is not a number >= 0", spec.temperature)));
        }
        if let Some(p) = spec.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(OpError::setting("top_p", format!("{p} is not in (0, 1]")));
        }
        if spec.max_tokens == Some(0) {
            return Err(OpError::setting("max_tokens", "must be at least 1"));
        }
        let column = spec.column.as_str();
        if column.is_empty() || [ID, SELF_INSTRUCT_PARENT_ID, SELF_INSTRUCT_POOL_SIZE].contains(&column) {
            return Err(OpError::setting("column", format!("`{column}` cannot be used as the output column")));
        }
        let template = ChatTemplate::new(spec.system.as_deref(), &spec.prompt, &TEMPLATE_VARS, "")?;
        let pool = Pool::new(&spec.seeds, spec.max_similarity);
        Ok(SelfInstruct { spec, template, pool, pending: PendingTasks::default() })
    }

    /// The pool: the seeds, then every accepted instruction in acceptance order.
    pub fn pool(&self) -> &[String] {
        &self.pool.texts
    }

    /// The machine-generated part of the pool.
    pub fn generated(&self) -> &[String] {
        &self.pool.texts[self.pool.seeds..]
    }

    /// The pool instructions shown to slot `id`: seeds first, then machine-generated ones; the same for the
    /// same (seed, id, pool).
    fn examples(&self, id: &str) -> Vec<String> {
        let seeds = self.pool.seeds;
        let generated = self.pool.len() - seeds;
        let per_prompt = self.spec.per_prompt;
        // Seeds fill what the generated part cannot give yet, and generated ones fill a short seed list.
        let from_seeds = (per_prompt - self.spec.from_generated.min(generated)).min(seeds);
        let from_generated = (per_prompt - from_seeds).min(generated);
        let mut rng = SplitMix64(derive_seed(self.spec.seed, id, "self-instruct-demos"));
        let mut examples: Vec<String> =
            sample_indices(seeds, from_seeds, &mut rng).into_iter().map(|i| self.pool.texts[i].clone()).collect();
        examples.extend(
            sample_indices(generated, from_generated, &mut rng).into_iter().map(|i| self.pool.texts[seeds + i].clone()),
        );
        examples
    }

    fn request(&self, batch: &RecordBatch, row: usize, id: &str) -> Result<ModelRequest, String> {
        let examples: Vec<Value> = self.examples(id).into_iter().map(Value::from).collect();
        let vars = [("examples", Value::from(examples)), ("n", Value::from(self.spec.new_per_call))];
        let messages = self.template.render(Some((batch, row)), &vars)?;
        let spec = &self.spec;
        Ok(ModelRequest {
            endpoint: spec.model.clone(),
            prompt: Prompt::Chat(messages),
            sampling: Sampling {
                n: 1,
                temperature: Some(spec.temperature),
                top_p: spec.top_p,
                max_tokens: spec.max_tokens,
                seed: Some(derive_seed(spec.seed, id, "self-instruct")),
                json_schema: Some(serde_json::json!({
                    "type": "object",
                    "properties": {"instructions": {"type": "array", "items": {"type": "string"}}},
                    "required": ["instructions"],
                    "additionalProperties": false,
                })),
                ..Sampling::default()
            },
            row,
        })
    }

    /// A candidate that may join the pool, with its shingles, or why not.
    fn judge(&self, index: usize, candidate: Option<&str>) -> Result<Shingles, Fault> {
        if index >= self.spec.new_per_call {
            return Err(Fault::Extra);
        }
        let text = candidate.ok_or(Fault::Unparseable)?;
        let shingles = Shingles::of(text);
        if shingles.is_empty() {
            return Err(Fault::Empty);
        }
        let chars = text.chars().count();
        if chars < self.spec.min_chars {
            return Err(Fault::TooShort);
        }
        if chars > self.spec.max_chars {
            return Err(Fault::TooLong);
        }
        if self.pool.closest(&shingles).is_some() {
            return Err(Fault::Similar);
        }
        Ok(shingles)
    }

    /// Checks the batch's candidates against the pool as it is now, row by row, and emits the accepted ones.
    fn emit(&mut self, batch: RecordBatch, results: Vec<Result<String, String>>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let mut rejects = Vec::new();
        let mut sources: Vec<u32> = Vec::new();
        let mut new_ids = Vec::new();
        let mut parents = Vec::new();
        let mut instructions = Vec::new();
        let mut pool_sizes: Vec<u32> = Vec::new();
        for (row, result) in results.into_iter().enumerate() {
            let reply = match result {
                Ok(reply) => reply,
                Err(reason) => {
                    rejects.push(Reject { row, reason });
                    continue;
                }
            };
            let candidates = match parse_candidates(&reply) {
                Ok(candidates) => candidates,
                Err(error) => {
                    rejects.push(Reject { row, reason: format!("unparseable reply ({error}): {}", preview(&reply)) });
                    continue;
                }
            };
            let slot = ids.value(row);
            let mut faults = [0usize; 6];
            let mut accepted = 0;
            for (index, candidate) in candidates.iter().enumerate() {
                match self.judge(index, candidate.as_deref()) {
                    Err(fault) => faults[fault as usize] += 1,
                    Ok(shingles) => {
                        let text = candidate.clone().unwrap_or_default();
                        sources.push(row as u32);
                        new_ids.push(stable_id(&[slot.as_bytes(), b"self-instruct", &(index as u32).to_le_bytes()]));
                        parents.push(slot.to_string());
                        pool_sizes.push(self.pool.len() as u32);
                        instructions.push(text.clone());
                        self.pool.add(text, shingles);
                        accepted += 1;
                    }
                }
            }
            if accepted == 0 {
                rejects.push(Reject { row, reason: summary(candidates.len(), &faults) });
            }
        }
        let kept = crate::take_rows(&batch, &sources)?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let array: ArrayRef = if name == ID {
                Arc::new(StringArray::from(std::mem::take(&mut new_ids)))
            } else if name == self.spec.column {
                Arc::new(StringArray::from(std::mem::take(&mut instructions)))
            } else if name == SELF_INSTRUCT_PARENT_ID {
                Arc::new(StringArray::from(std::mem::take(&mut parents)))
            } else if name == SELF_INSTRUCT_POOL_SIZE {
                Arc::new(UInt32Array::from(std::mem::take(&mut pool_sizes)))
            } else {
                let column = kept.column_by_name(name).ok_or_else(|| OpError::MissingColumn {
                    column: name.to_string(),
                    expected: "an input column".to_string(),
                })?;
                Arc::clone(column)
            };
            arrays.push(array);
        }
        Ok(Output { rows: RecordBatch::try_new(schema, arrays)?, rejects })
    }
}

impl Operator for SelfInstruct {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        self.template.check_schema(input, "a variable of the `prompt` or `system` template")?;
        Ok(annotated_schema(
            input,
            &[
                Field::new(&self.spec.column, DataType::Utf8, false),
                Field::new(SELF_INSTRUCT_PARENT_ID, DataType::Utf8, false),
                Field::new(SELF_INSTRUCT_POOL_SIZE, DataType::UInt32, false),
            ],
        ))
    }

    fn start(&mut self, pending: PendingId, batch: RecordBatch) -> Result<Step, OpError> {
        self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let tasks = (0..batch.num_rows())
            .map(|row| {
                if ids.is_null(row) {
                    return SlotTask::Rejected("null id".into());
                }
                match self.request(&batch, row, ids.value(row)) {
                    Ok(request) => SlotTask::Ask(Some(Box::new(request))),
                    Err(error) => SlotTask::Rejected(format!("prompt: {error}")),
                }
            })
            .collect();
        let advance = self.pending.start(pending, batch, tasks)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn resume(&mut self, pending: PendingId, responses: Vec<ModelResponse>) -> Result<Step, OpError> {
        let advance = self.pending.resume(pending, responses)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn endpoints(&self) -> Vec<String> {
        vec![self.spec.model.clone()]
    }

    /// One pool for the whole run: every slot goes to one worker, in time order.
    fn shape(&self) -> Shape {
        Shape::model().exchanged(Exchange::OneWorker).in_time_order()
    }
}

/// A complete config that uses `self_instruct` (paths relative to the repository's `configs/`; `sdg kinds self_instruct`).
pub const EXAMPLE: &str = r#"# Grows a pool of instructions from two seeds: each input row is one request for new ones, and a new one
# too similar to the pool is refused.
models:
  teacher: {base_url: "http://127.0.0.1:8000/v1", model: teacher-model}
nodes:
  - {id: slots, kind: ingest, paths: [sample-corpus/tables/questions.jsonl]}
  - id: pool
    kind: self_instruct
    input: slots
    model: teacher
    seed: 1
    seeds: ["Give three tips for staying healthy.", "Write a short poem about the sea."]
  - {id: out, kind: sink, input: pool}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{drive, reply, string_batch, strings, user_text};

    const SEEDS: [&str; 5] = [
        "Give three tips for staying healthy during winter.",
        "Translate the sentence 'Where is the train station?' into French.",
        "Explain the difference between weather and climate to a ten-year-old.",
        "Write a haiku about the first snow of the year.",
        "Classify the following animals as mammals or reptiles: gecko, whale, bat, iguana.",
    ];

    fn op(settings: serde_json::Value) -> SelfInstruct {
        let mut base = serde_json::json!({"model": "teacher", "seeds": SEEDS, "seed": 3});
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        SelfInstruct::new(serde_json::from_value(base).unwrap()).unwrap()
    }

    fn slots(ids: &[&str]) -> RecordBatch {
        string_batch(&[("id", ids.iter().map(|id| Some(*id)).collect())])
    }

    fn listed(items: &[&str]) -> ModelResponse {
        reply(vec![serde_json::json!({ "instructions": items }).to_string()])
    }

    fn pool_sizes(rows: &RecordBatch) -> Vec<u32> {
        let column = rows.column_by_name(SELF_INSTRUCT_POOL_SIZE).unwrap();
        column.as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec()
    }

    fn owned(items: &[&str]) -> Vec<Option<String>> {
        items.iter().map(|s| Some(s.to_string())).collect()
    }

    /// The numbered examples of a default prompt.
    fn examples_in(request: &ModelRequest) -> Vec<String> {
        user_text(request)
            .lines()
            .filter_map(|line| {
                let (number, rest) = line.split_once(". ")?;
                number.parse::<usize>().ok().map(|_| rest.to_string())
            })
            .collect()
    }

    const BATCH_ONE: [&str; 4] = [
        "Compose a limerick about a forgetful robot who loses its keys.",
        "List five household uses of baking soda besides cooking.",
        "Describe how a bill becomes law in the United States Congress.",
        "Suggest a name for a bakery that specializes in sourdough bread.",
    ];

    #[test]
    fn the_pool_grows_across_batches_and_prompts_show_generated_examples() {
        let mut op = op(serde_json::json!({"per_prompt": 3, "from_generated": 1, "new_per_call": 2}));
        let (out, calls) = drive(&mut op, slots(&["s0", "s1"]), |request| {
            assert_eq!(request.endpoint, "teacher");
            assert_eq!(request.sampling.json_schema.as_ref().unwrap()["required"], serde_json::json!(["instructions"]));
            let examples = examples_in(request);
            assert_eq!(examples.len(), 3, "no generated examples yet: three seeds");
            assert!(examples.iter().all(|e| SEEDS.contains(&e.as_str())), "{examples:?}");
            if request.row == 0 { listed(&BATCH_ONE[..2]) } else { listed(&BATCH_ONE[2..]) }
        });
        assert_eq!(calls, 1);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(strings(rows, "instruction"), owned(&BATCH_ONE));
        assert_eq!(strings(rows, SELF_INSTRUCT_PARENT_ID), owned(&["s0", "s0", "s1", "s1"]));
        assert_eq!(strings(rows, ID)[1], Some(stable_id(&[b"s0", b"self-instruct", &1u32.to_le_bytes()])));
        assert_eq!(pool_sizes(rows), [5, 6, 7, 8]);
        assert_eq!(op.generated(), BATCH_ONE);

        let fresh = "Draft a polite email declining a job offer after accepting another one.";
        let (out, _) = drive(&mut op, slots(&["s2"]), |request| {
            let examples = examples_in(request);
            assert_eq!(examples.len(), 3);
            assert_eq!(examples.iter().filter(|e| BATCH_ONE.contains(&e.as_str())).count(), 1, "{examples:?}");
            // A near-copy of an accepted instruction from the first batch, then a new one.
            listed(&["List five household uses for baking soda besides cooking!", fresh])
        });
        assert_eq!(strings(&out.rows, "instruction"), owned(&[fresh]));
        assert_eq!(strings(&out.rows, ID), [Some(stable_id(&[b"s2", b"self-instruct", &1u32.to_le_bytes()]))]);
        assert_eq!(pool_sizes(&out.rows), [9]);
        assert_eq!(op.pool().len(), 10);
    }

    #[test]
    fn near_duplicates_of_seeds_and_of_earlier_candidates_are_rejected() {
        let mut op = op(serde_json::json!({}));
        let new_a = "Outline a weekly study plan for learning basic Spanish in three months.";
        let new_b = "Explain why the sky appears red at sunset using the physics of scattering.";
        let new_c = "Write a short dialogue between a customer and a barista about oat milk.";
        let (out, _) = drive(&mut op, slots(&["a", "b"]), |request| {
            if request.row == 0 {
                listed(&[
                    "Give three tips for staying HEALTHY during the winter.",
                    new_a,
                    "Outline a weekly study plan for learning basic Spanish in 3 months.",
                    new_b,
                ])
            } else {
                // Reordered words of a candidate accepted for the slot before.
                listed(&["In three months, outline a weekly study plan for learning basic Spanish.", new_c])
            }
        });
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(strings(&out.rows, "instruction"), owned(&[new_a, new_b, new_c]));
        assert_eq!(strings(&out.rows, SELF_INSTRUCT_PARENT_ID), owned(&["a", "a", "b"]));
        let ids = strings(&out.rows, ID);
        assert_eq!(ids[2], Some(stable_id(&[b"b", b"self-instruct", &1u32.to_le_bytes()])), "index in the reply");
    }

    #[test]
    fn a_later_finishing_batch_is_checked_against_everything_accepted_before() {
        let mut op = op(serde_json::json!({}));
        let shared = "Summarize the plot of a famous opera in exactly four sentences.";
        let Step::Call(first) = op.start(1, slots(&["x"])).unwrap() else { panic!("expected a call") };
        let Step::Call(second) = op.start(2, slots(&["y"])).unwrap() else { panic!("expected a call") };
        assert_eq!((first.len(), second.len()), (1, 1));
        let Step::Emit(out) = op.resume(2, vec![listed(&[shared])]).unwrap() else { panic!("expected rows") };
        assert_eq!(strings(&out.rows, "instruction"), owned(&[shared]));
        let Step::Emit(out) = op.resume(1, vec![listed(&[&shared.to_uppercase()])]).unwrap() else {
            panic!("expected rows")
        };
        assert_eq!(out.rows.num_rows(), 0);
        assert_eq!(out.rejects, [Reject { row: 0, reason: "1 candidate: 1 too similar to the pool".into() }]);
        assert!(op.resume(1, vec![]).is_err(), "batch 1 is done");
    }

    #[test]
    fn unparseable_replies_and_empty_slots_go_to_rejects_with_a_summary() {
        let mut op = op(serde_json::json!({"new_per_call": 8}));
        let ids = ["p", "q", "r", "s", "t", "u"];
        let (out, _) = drive(&mut op, slots(&ids), |request| match request.row {
            0 => reply(vec!["Here are some ideas: write a poem.".into()]),
            1 => {
                let mut items: Vec<serde_json::Value> = SEEDS.iter().map(|s| serde_json::json!(s)).collect();
                items.push(serde_json::json!(SEEDS[0].to_lowercase()));
                items.extend([serde_json::json!(42), serde_json::json!({"task": "x"})]);
                reply(vec![serde_json::json!({ "instructions": items }).to_string()])
            }
            2 => Err("server error 500".into()),
            3 => listed(&[]),
            4 => reply(vec![
                "```json\n[\"1. Plan a three-day hiking trip in the Scottish Highlands.\", \"Hi\", \"!!\"]\n```".into(),
            ]),
            _ => listed(&["Tiny", &"y".repeat(2001)]),
        });
        assert_eq!(
            strings(&out.rows, "instruction"),
            owned(&["Plan a three-day hiking trip in the Scottish Highlands."])
        );
        assert_eq!(strings(&out.rows, SELF_INSTRUCT_PARENT_ID), owned(&["t"]));
        let reasons: Vec<(usize, &str)> = out.rejects.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert_eq!(reasons[0].0, 0);
        assert!(reasons[0].1.starts_with("unparseable reply (no JSON object or array in the reply)"), "{reasons:?}");
        assert_eq!(reasons[1], (1, "8 candidates: 6 too similar to the pool, 2 unparseable"));
        assert_eq!(reasons[2], (2, "model call failed: server error 500"));
        assert_eq!(reasons[3], (3, "the reply listed no instructions"));
        assert_eq!(reasons[4], (5, "2 candidates: 1 too short, 1 too long"));
    }

    #[test]
    fn candidates_beyond_new_per_call_are_ignored() {
        let mut op = op(serde_json::json!({"new_per_call": 1}));
        let (out, _) = drive(&mut op, slots(&["a"]), |_| listed(&[SEEDS[1], BATCH_ONE[0]]));
        assert_eq!(out.rejects[0].reason, "2 candidates: 1 too similar to the pool, 1 over new_per_call");
    }

    #[test]
    fn demos_are_sampled_deterministically_from_the_seed_and_slot_id() {
        let ids = ["a", "b", "c", "d", "e", "f"];
        let prompts = |settings: serde_json::Value| -> Vec<String> {
            let mut op = op(settings);
            let Step::Call(requests) = op.start(1, slots(&ids)).unwrap() else { panic!("expected a call") };
            requests.iter().map(user_text).collect()
        };
        let settings = serde_json::json!({"per_prompt": 2});
        let first = prompts(settings.clone());
        assert_eq!(first, prompts(settings), "same seed and ids, same demos");
        assert!(first.iter().any(|p| p != &first[0]), "slots see different demos");
        assert_ne!(first, prompts(serde_json::json!({"per_prompt": 2, "seed": 4})), "another seed, other demos");
        let all = prompts(serde_json::json!({"per_prompt": 9}));
        assert_eq!(all[0].matches("\n5. ").count(), 1, "a short seed list is shown whole");
        assert!(all[0].contains("Come up with 8 new, diverse task instructions"), "{}", all[0]);
    }

    /// Deterministic texts over a small vocabulary, so that many pairs are near each other.
    fn random_texts(count: usize, state: u64) -> Vec<String> {
        let vocabulary = [
            "write", "a", "poem", "about", "the", "sea", "explain", "how", "rain", "forms", "list", "three", "uses",
            "of", "salt", "describe", "winter", "city", "night", "short", "story",
        ];
        let mut rng = SplitMix64(state);
        (0..count)
            .map(|_| {
                let words = 3 + (rng.next() % 6) as usize;
                let picked: Vec<&str> =
                    (0..words).map(|_| vocabulary[(rng.next() % vocabulary.len() as u64) as usize]).collect();
                picked.join(" ")
            })
            .collect()
    }

    #[test]
    fn the_prefix_index_finds_every_pair_a_full_scan_finds() {
        for threshold in [0.0, 0.3, 0.5, 0.7, 0.9, 1.0] {
            let texts = random_texts(300, 11);
            let mut pool = Pool::new(&texts[..1], threshold);
            let mut found = 0;
            for text in &texts[1..] {
                let shingles = Shingles::of(text);
                let scan = pool
                    .shingles
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, shingles.similarity(s)))
                    .filter(|(_, s)| *s > threshold)
                    .fold(None, |best: Option<(usize, f64)>, (i, s)| match best {
                        Some((_, b)) if b >= s => best,
                        _ => Some((i, s)),
                    });
                assert_eq!(pool.closest(&shingles), scan, "threshold {threshold}, text {text:?}");
                found += usize::from(scan.is_some());
                pool.add(text.clone(), shingles);
            }
            assert!(threshold > 0.7 || found >= 10, "threshold {threshold}: only {found} similar texts");
        }
    }

    #[test]
    fn settings_that_cannot_grow_a_pool_are_refused() {
        let cases = [
            (serde_json::json!({"seeds": []}), "seeds"),
            (serde_json::json!({"seeds": ["ok instruction", "  "]}), "seeds"),
            (serde_json::json!({"per_prompt": 0}), "per_prompt"),
            (serde_json::json!({"per_prompt": 2, "from_generated": 3}), "from_generated"),
            (serde_json::json!({"new_per_call": 0}), "new_per_call"),
            (serde_json::json!({"max_similarity": 1.2}), "max_similarity"),
            (serde_json::json!({"min_chars": 5, "max_chars": 4}), "max_chars"),
            (serde_json::json!({"column": SELF_INSTRUCT_POOL_SIZE}), "column"),
            (serde_json::json!({"prompt": "{% for x in examples %}"}), "prompt"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
        ];
        for (settings, key) in cases {
            let mut spec = serde_json::json!({"model": "m", "seeds": SEEDS});
            spec.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
            let err = SelfInstruct::new(serde_json::from_value(spec).unwrap()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("`{key}`")), "{key}: {err}");
        }
        let typo = serde_json::json!({"model": "m", "seeds": SEEDS, "per_promt": 3});
        assert!(serde_json::from_value::<SelfInstructSpec>(typo).is_err());

        let op = op(serde_json::json!({"prompt": "{{ topic }}: {{ examples | join(', ') }} ({{ n }})"}));
        assert_eq!(op.shape(), Shape::model().exchanged(Exchange::OneWorker).in_time_order());
        assert!(op.router().is_none());
        assert_eq!(op.endpoints(), ["teacher"]);
        let missing = op.output_schema(&slots(&["a"]).schema());
        assert!(matches!(missing, Err(OpError::MissingColumn { column, .. }) if column == "topic"));
        let with_topic =
            string_batch(&[("id", vec![Some("a")]), ("topic", vec![Some("cooking")]), ("instruction", vec![None])]);
        let schema = op.output_schema(&with_topic.schema()).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "topic", "instruction", SELF_INSTRUCT_PARENT_ID, SELF_INSTRUCT_POOL_SIZE]);
        assert_eq!(strip_number("12) Do it"), "Do it");
        assert_eq!(strip_number("2.5 liters of water"), "2.5 liters of water");
    }
}
