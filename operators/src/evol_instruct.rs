//! `evol_instruct`: evolves each row's instruction over several rounds with a teacher model (Evol-Instruct,
//! as in WizardLM).
//!
//! Each round picks one evolution from the row's seed, weighted by `weights`: in-depth (`add_constraints`,
//! `deepen`, `concretize`, `increase_reasoning`, `complicate_input`) or in-breadth (`breadth`: a new, rarer
//! instruction in the same domain). The teacher answers `{"instruction": "..."}` (structured output).
//!
//! A round fails, and the next round starts again from the last good instruction, when (the WizardLM
//! elimination rules, adapted to need no extra model call):
//! - the call fails, the reply does not parse, or the instruction is empty;
//! - the reply is a refusal (`refusal_markers`, e.g. "sorry", "as an AI", "I cannot");
//! - it copies the prompt's wording (`copy_markers`, e.g. "#Rewritten Prompt#", "given prompt", "rewritten");
//! - it is shorter than `min_chars` or longer than `max_chars` characters;
//! - it is too similar to its parent: [`similarity`](crate::shingles::similarity) above `max_similarity`.
//!
//! A marker only counts when the parent instruction does not already contain it, so an instruction that is
//! legitimately about, say, an apology ("sorry") can still evolve.
//!
//! Every round is recorded in `evol_history` (JSON). With `emit: final` each input row gives one row with the
//! last good instruction; with `emit: all` each successful generation is its own row (what Evol-Instruct
//! datasets usually hold). An evolved row's id is `stable_id(parent id, "evol", generation)` and
//! `evol_parent_id` points at the input row. A row whose rounds all failed is kept as it came in
//! (`on_no_evolution: keep`, generation 0) or rejected with its history (`reject`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use minijinja::value::Value;
use serde::Deserialize;

use crate::columns::{ID, stable_id};
use crate::compare::preview;
use crate::json_extract::extract_json;
use crate::model::{ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::{ChatTemplate, text_cell};
use crate::shingles::Shingles;
use crate::task::{PendingTasks, Poll, RowOrReject, RowTask, derive_seed};
use crate::{OpError, Operator, Output, Reject, Shape, require_column, string_column};

/// The input row's id, on every output row.
pub const EVOL_PARENT_ID: &str = "evol_parent_id";
/// Successful rounds behind the row's instruction (0: the input instruction).
pub const EVOL_GENERATIONS: &str = "evol_generations";
/// Every round as JSON: `[{"round": 1, "method": "deepen", "outcome": "evolved", "instruction": "..."}, ...]`.
pub const EVOL_HISTORY: &str = "evol_history";

macro_rules! rules {
    () => {
        "\n\nThe new instruction must stand on its own: someone who never saw the original must understand it, \
and it must not mention that it was changed or refer to an earlier version. It must stay reasonable and \
answerable by a knowledgeable human.\n\nReply with JSON only: {\"instruction\": \"<the new instruction>\"}"
    };
}

/// Default template of `add_constraints`.
pub const DEFAULT_ADD_CONSTRAINTS: &str = concat!(
    "Make the instruction below more demanding by adding one more constraint or requirement: a limit, a \
condition, a required format or an intended audience. Keep everything it already asks for and add at most \
about 20 words.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// Default template of `deepen`.
pub const DEFAULT_DEEPEN: &str = concat!(
    "Make the instruction below go deeper: where it asks about a topic, widen or deepen what a good answer \
must cover (causes, trade-offs, edge cases, comparisons) instead of merely asking for more text. Add at most \
about 20 words.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// Default template of `concretize`.
pub const DEFAULT_CONCRETIZE: &str = concat!(
    "Make the instruction below more specific: replace general concepts with concrete ones (a named setting, \
precise quantities, a particular case) so that the answer has to deal with the specifics. Add at most about \
20 words.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// Default template of `increase_reasoning`.
pub const DEFAULT_INCREASE_REASONING: &str = concat!(
    "Change the instruction below so that answering it takes several explicit reasoning steps: if a single \
simple step answers it, turn it into a task that needs multi-step reasoning on the same subject. Add at most \
about 20 words.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// Default template of `complicate_input`.
pub const DEFAULT_COMPLICATE_INPUT: &str = concat!(
    "Make the instruction below harder by giving it concrete input to work on: data the answer must use, \
such as a short table, a code snippet, a JSON object, a formula or a passage, written out in full inside the \
instruction. Keep the task itself the same.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// Default template of `breadth`.
pub const DEFAULT_BREADTH: &str = concat!(
    "Taking the instruction below as inspiration, write a brand-new instruction in the same domain but on a \
rarer, more specialized topic. It should be about as long and as difficult as the original, and must not be \
a paraphrase of it.\n\nInstruction:\n{{ instruction }}",
    rules!()
);

/// An evolution, in the order in which weights are cumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    AddConstraints,
    Deepen,
    Concretize,
    IncreaseReasoning,
    ComplicateInput,
    Breadth,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::AddConstraints,
        Method::Deepen,
        Method::Concretize,
        Method::IncreaseReasoning,
        Method::ComplicateInput,
        Method::Breadth,
    ];

    /// The setting name (`weights`, `templates`) and the `method` in the history.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::AddConstraints => "add_constraints",
            Method::Deepen => "deepen",
            Method::Concretize => "concretize",
            Method::IncreaseReasoning => "increase_reasoning",
            Method::ComplicateInput => "complicate_input",
            Method::Breadth => "breadth",
        }
    }

    /// In-depth evolutions make the instruction harder; in-breadth makes a new one.
    pub fn is_in_depth(self) -> bool {
        self != Method::Breadth
    }

    fn default_template(self) -> &'static str {
        match self {
            Method::AddConstraints => DEFAULT_ADD_CONSTRAINTS,
            Method::Deepen => DEFAULT_DEEPEN,
            Method::Concretize => DEFAULT_CONCRETIZE,
            Method::IncreaseReasoning => DEFAULT_INCREASE_REASONING,
            Method::ComplicateInput => DEFAULT_COMPLICATE_INPUT,
            Method::Breadth => DEFAULT_BREADTH,
        }
    }
}

/// Settings of an `evol_instruct` node.
///
/// ```yaml
/// evol_instruct:
///   model: teacher                # endpoint that evolves the instructions
///   column: instruction           # the column evolved (default instruction)
///   output: null                  # column written (default: the same column)
///   generations: 3                # rounds per row
///   weights: {add_constraints: 1, deepen: 1, concretize: 1, increase_reasoning: 1, complicate_input: 1, breadth: 1}
///   templates: {deepen: "..."}    # minijinja overrides by method; variables: instruction, round, input columns
///   system: null                  # optional system template
///   temperature: 0.7
///   max_tokens: null
///   seed: 7                       # method choice and sampling seeds derive from it and the row id
///   max_similarity: 0.9           # a child this similar to its parent is a failed round
///   min_chars: 10
///   max_chars: 4000
///   copy_markers: ["given prompt", "rewritten prompt", "rewritten", ...]   # default: DEFAULT_COPY_MARKERS
///   refusal_markers: ["sorry", "as an ai", "i cannot", ...]               # default: DEFAULT_REFUSAL_MARKERS
///   emit: final                   # or all: one row per successful generation
///   on_no_evolution: keep         # or reject: rows whose every round failed
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvolInstructSpec {
    pub model: String,
    #[serde(default = "default_column")]
    pub column: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default = "default_generations")]
    pub generations: u32,
    #[serde(default)]
    pub weights: EvolWeights,
    #[serde(default)]
    pub templates: EvolTemplates,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_max_similarity")]
    pub max_similarity: f64,
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    #[serde(default = "default_copy_markers")]
    pub copy_markers: Vec<String>,
    #[serde(default = "default_refusal_markers")]
    pub refusal_markers: Vec<String>,
    #[serde(default)]
    pub emit: Emit,
    #[serde(default)]
    pub on_no_evolution: NoEvolution,
}

/// Relative weights of the evolutions (0 disables one).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvolWeights {
    pub add_constraints: f64,
    pub deepen: f64,
    pub concretize: f64,
    pub increase_reasoning: f64,
    pub complicate_input: f64,
    pub breadth: f64,
}

impl Default for EvolWeights {
    fn default() -> Self {
        EvolWeights {
            add_constraints: 1.0,
            deepen: 1.0,
            concretize: 1.0,
            increase_reasoning: 1.0,
            complicate_input: 1.0,
            breadth: 1.0,
        }
    }
}

impl EvolWeights {
    pub fn get(&self, method: Method) -> f64 {
        match method {
            Method::AddConstraints => self.add_constraints,
            Method::Deepen => self.deepen,
            Method::Concretize => self.concretize,
            Method::IncreaseReasoning => self.increase_reasoning,
            Method::ComplicateInput => self.complicate_input,
            Method::Breadth => self.breadth,
        }
    }
}

/// Template overrides by method; `None` keeps the default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvolTemplates {
    pub add_constraints: Option<String>,
    pub deepen: Option<String>,
    pub concretize: Option<String>,
    pub increase_reasoning: Option<String>,
    pub complicate_input: Option<String>,
    pub breadth: Option<String>,
}

impl EvolTemplates {
    pub fn get(&self, method: Method) -> &str {
        let custom = match method {
            Method::AddConstraints => &self.add_constraints,
            Method::Deepen => &self.deepen,
            Method::Concretize => &self.concretize,
            Method::IncreaseReasoning => &self.increase_reasoning,
            Method::ComplicateInput => &self.complicate_input,
            Method::Breadth => &self.breadth,
        };
        custom.as_deref().unwrap_or(method.default_template())
    }
}

/// What rows an evolved input row gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// One row: the last good instruction.
    #[default]
    Final,
    /// One row per successful generation.
    All,
}

/// What happens to a row whose every round failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoEvolution {
    /// The row as it came in (generation 0).
    #[default]
    Keep,
    Reject,
}

/// Wording of the evolution prompts that a reply should not copy (matched case-insensitively).
pub const DEFAULT_COPY_MARKERS: [&str; 8] = [
    "given prompt",
    "rewritten prompt",
    "created prompt",
    "given instruction",
    "rewritten instruction",
    "original instruction",
    "rewritten",
    "<the new instruction>",
];

/// Signs of a refusal (matched case-insensitively).
pub const DEFAULT_REFUSAL_MARKERS: [&str; 8] =
    ["sorry", "as an ai", "i cannot", "i can't", "i can\u{2019}t", "i can not", "i am unable", "i'm unable"];

fn default_column() -> String {
    "instruction".into()
}

fn default_generations() -> u32 {
    3
}

fn default_temperature() -> f32 {
    0.7
}

fn default_max_similarity() -> f64 {
    0.9
}

fn default_min_chars() -> usize {
    10
}

fn default_max_chars() -> usize {
    4000
}

fn default_copy_markers() -> Vec<String> {
    DEFAULT_COPY_MARKERS.iter().map(|m| m.to_string()).collect()
}

fn default_refusal_markers() -> Vec<String> {
    DEFAULT_REFUSAL_MARKERS.iter().map(|m| m.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------------
// The operator
// ---------------------------------------------------------------------------------------------------

const TEMPLATE_VARS: [&str; 2] = ["instruction", "round"];

/// The checked settings, shared by the row tasks.
#[derive(Debug)]
struct EvolCore {
    spec: EvolInstructSpec,
    /// (method, template, weight) for every method, in [`Method::ALL`] order.
    methods: Vec<(Method, ChatTemplate, f64)>,
    total_weight: f64,
    copy_markers: Vec<String>,
    refusal_markers: Vec<String>,
}

impl EvolCore {
    fn output_column(&self) -> &str {
        self.spec.output.as_deref().unwrap_or(&self.spec.column)
    }

    /// The evolution of round `round` of row `id`: a weighted draw from the row's seed.
    fn choose(&self, id: &str, round: u32) -> usize {
        let draw = derive_seed(self.spec.seed, id, &format!("evol-method{round}"));
        let mut left = draw as f64 / (1u64 << 53) as f64 * self.total_weight;
        let mut last = 0;
        for (i, (_, _, weight)) in self.methods.iter().enumerate() {
            if *weight <= 0.0 {
                continue;
            }
            if left < *weight {
                return i;
            }
            left -= weight;
            last = i;
        }
        // Rounding can leave a sliver past the last weight.
        last
    }

    /// The first marker found in `text` (lowercased) but not in `parent` (lowercased).
    fn marker<'a>(markers: &'a [String], text: &str, parent: &str) -> Option<&'a str> {
        markers.iter().find(|m| text.contains(m.as_str()) && !parent.contains(m.as_str())).map(String::as_str)
    }

    /// The evolved instruction in a reply, or why the round failed.
    fn check(&self, parent: &str, reply: &str) -> Result<String, String> {
        let parent_lower = parent.to_lowercase();
        let parsed = extract_json(reply)
            .ok()
            .and_then(|v| v.get("instruction").and_then(serde_json::Value::as_str).map(|s| s.trim().to_string()));
        let Some(instruction) = parsed else {
            if let Some(marker) = Self::marker(&self.refusal_markers, &reply.to_lowercase(), &parent_lower) {
                return Err(format!("refusal ({marker:?}): {}", preview(reply)));
            }
            return Err(format!("no `instruction` in the reply: {}", preview(reply)));
        };
        let shingles = Shingles::of(&instruction);
        if shingles.is_empty() {
            return Err("empty instruction".into());
        }
        let lower = instruction.to_lowercase();
        if let Some(marker) = Self::marker(&self.refusal_markers, &lower, &parent_lower) {
            return Err(format!("refusal ({marker:?}): {}", preview(&instruction)));
        }
        if let Some(marker) = Self::marker(&self.copy_markers, &lower, &parent_lower) {
            return Err(format!("copies the prompt's wording ({marker:?}): {}", preview(&instruction)));
        }
        let chars = instruction.chars().count();
        if chars < self.spec.min_chars {
            return Err(format!("too short ({chars} chars < min_chars {})", self.spec.min_chars));
        }
        if chars > self.spec.max_chars {
            return Err(format!("too long ({chars} chars > max_chars {})", self.spec.max_chars));
        }
        let similarity = shingles.similarity(&Shingles::of(parent));
        if similarity > self.spec.max_similarity {
            return Err(format!(
                "too similar to its parent (similarity {similarity:.2} > max_similarity {:.2})",
                self.spec.max_similarity
            ));
        }
        Ok(instruction)
    }
}

/// A successful round.
#[derive(Debug, Clone)]
struct Generation {
    instruction: String,
    /// History entries up to and including this round.
    history_len: usize,
}

/// What a row's evolution ended with.
#[derive(Debug)]
struct Evolved {
    original: String,
    generations: Vec<Generation>,
    history: Vec<serde_json::Value>,
}

type RowOut = Result<Evolved, String>;

struct EvolTask {
    core: Arc<EvolCore>,
    batch: RecordBatch,
    row: usize,
    id: String,
    original: String,
    current: String,
    round: u32,
    /// The method index of the round whose reply is awaited.
    waiting: Option<usize>,
    generations: Vec<Generation>,
    history: Vec<serde_json::Value>,
}

impl EvolTask {
    fn next_round(&mut self) -> Poll<RowOut> {
        let core = Arc::clone(&self.core);
        if self.round >= core.spec.generations {
            return Poll::Done(self.finish());
        }
        self.round += 1;
        let index = core.choose(&self.id, self.round);
        let (_, template, _) = &core.methods[index];
        let vars = [("instruction", Value::from(self.current.as_str())), ("round", Value::from(self.round))];
        let messages = match template.render(Some((&self.batch, self.row)), &vars) {
            Ok(messages) => messages,
            Err(error) => return Poll::Done(Err(format!("evolution prompt: {error}"))),
        };
        let spec = &core.spec;
        self.waiting = Some(index);
        Poll::Need(vec![ModelRequest {
            endpoint: spec.model.clone(),
            prompt: Prompt::Chat(messages),
            sampling: Sampling {
                n: 1,
                temperature: Some(spec.temperature),
                max_tokens: spec.max_tokens,
                seed: Some(derive_seed(spec.seed, &self.id, &format!("evol{}", self.round))),
                json_schema: Some(serde_json::json!({
                    "type": "object",
                    "properties": {"instruction": {"type": "string"}},
                    "required": ["instruction"],
                    "additionalProperties": false,
                })),
                ..Sampling::default()
            },
            row: self.row,
        }])
    }

    fn on_reply(&mut self, index: usize, responses: Vec<ModelResponse>) {
        let method = self.core.methods[index].0.as_str();
        let outcome = match responses.into_iter().next() {
            Some(Ok(reply)) => self.core.check(&self.current, reply.texts.first().map_or("", String::as_str)),
            Some(Err(error)) => Err(format!("model call failed: {error}")),
            None => Err("no response to the evolution request".into()),
        };
        match outcome {
            Ok(instruction) => {
                self.history.push(serde_json::json!({
                    "round": self.round, "method": method, "outcome": "evolved", "instruction": instruction,
                }));
                self.generations.push(Generation { instruction: instruction.clone(), history_len: self.history.len() });
                self.current = instruction;
            }
            Err(reason) => self.history.push(serde_json::json!({
                "round": self.round, "method": method, "outcome": "failed", "reason": reason,
            })),
        }
    }

    fn finish(&mut self) -> RowOut {
        let history = std::mem::take(&mut self.history);
        if self.generations.is_empty() && self.core.spec.on_no_evolution == NoEvolution::Reject {
            return Err(format!(
                "no evolution succeeded in {} rounds; history: {}",
                self.core.spec.generations,
                serde_json::Value::Array(history)
            ));
        }
        Ok(Evolved {
            original: std::mem::take(&mut self.original),
            generations: std::mem::take(&mut self.generations),
            history,
        })
    }
}

impl RowTask for EvolTask {
    type Out = RowOut;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<RowOut> {
        if let Some(index) = self.waiting.take() {
            self.on_reply(index, responses);
        }
        self.next_round()
    }
}

/// The `evol_instruct` operator. See the module docs.
#[derive(Debug)]
pub struct EvolInstruct {
    core: Arc<EvolCore>,
    pending: PendingTasks<RowOrReject<EvolTask>>,
}

const WRITTEN: [&str; 3] = [EVOL_PARENT_ID, EVOL_GENERATIONS, EVOL_HISTORY];

impl EvolInstruct {
    pub fn new(spec: EvolInstructSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.column.is_empty() || spec.column == ID {
            return Err(OpError::setting("column", "must name the instruction column"));
        }
        if let Some(output) = &spec.output
            && (output.is_empty() || output == ID || WRITTEN.contains(&output.as_str()))
        {
            return Err(OpError::setting("output", format!("`{output}` cannot be used as the output column")));
        }
        if spec.generations == 0 {
            return Err(OpError::setting("generations", "must be at least 1"));
        }
        if !(spec.temperature.is_finite() && spec.temperature >= 0.0) {
            return Err(OpError::setting("temperature", format!("{} is not a number >= 0", spec.temperature)));
        }
        if spec.max_tokens == Some(0) {
            return Err(OpError::setting("max_tokens", "must be at least 1"));
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
        let lowered = |key: &str, markers: &[String]| -> Result<Vec<String>, OpError> {
            markers
                .iter()
                .map(|m| {
                    let m = m.trim().to_lowercase();
                    if m.is_empty() { Err(OpError::setting(key, "markers cannot be blank")) } else { Ok(m) }
                })
                .collect()
        };
        let copy_markers = lowered("copy_markers", &spec.copy_markers)?;
        let refusal_markers = lowered("refusal_markers", &spec.refusal_markers)?;
        let mut methods = Vec::with_capacity(Method::ALL.len());
        let mut total_weight = 0.0;
        for method in Method::ALL {
            let weight = spec.weights.get(method);
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(OpError::setting(
                    format!("weights.{}", method.as_str()),
                    format!("{weight} is not a number >= 0"),
                ));
            }
            total_weight += weight;
            let template = ChatTemplate::new(spec.system.as_deref(), spec.templates.get(method), &TEMPLATE_VARS, "")
                .map_err(|e| match e {
                    OpError::InvalidSetting { key, message } if key == "prompt" => {
                        OpError::setting(format!("templates.{}", method.as_str()), message)
                    }
                    other => other,
                })?;
            methods.push((method, template, weight));
        }
        if total_weight <= 0.0 {
            return Err(OpError::setting("weights", "at least one evolution needs a weight above 0"));
        }
        Ok(EvolInstruct {
            core: Arc::new(EvolCore { spec, methods, total_weight, copy_markers, refusal_markers }),
            pending: PendingTasks::default(),
        })
    }

    fn emit(&self, batch: RecordBatch, results: Vec<RowOut>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let mut rejects = Vec::new();
        let mut sources: Vec<u32> = Vec::new();
        let mut new_ids = Vec::new();
        let mut parents = Vec::new();
        let mut instructions = Vec::new();
        let mut counts = Vec::new();
        let mut histories = Vec::new();
        for (row, result) in results.into_iter().enumerate() {
            let evolved = match result {
                Ok(evolved) => evolved,
                Err(reason) => {
                    rejects.push(Reject { row, reason });
                    continue;
                }
            };
            let parent = ids.value(row);
            let mut push = |id: String, instruction: String, generation: u32, history: &[serde_json::Value]| {
                sources.push(row as u32);
                new_ids.push(id);
                parents.push(parent.to_string());
                instructions.push(instruction);
                counts.push(generation);
                histories.push(serde_json::Value::Array(history.to_vec()).to_string());
            };
            let evolved_id = |generation: u32| stable_id(&[parent.as_bytes(), b"evol", &generation.to_le_bytes()]);
            let last = evolved.generations.len() as u32;
            match (self.core.spec.emit, evolved.generations.last()) {
                (_, None) => push(parent.to_string(), evolved.original, 0, &evolved.history),
                (Emit::Final, Some(generation)) => {
                    push(evolved_id(last), generation.instruction.clone(), last, &evolved.history)
                }
                (Emit::All, Some(_)) => {
                    for (generation, g) in (1u32..).zip(&evolved.generations) {
                        push(
                            evolved_id(generation),
                            g.instruction.clone(),
                            generation,
                            &evolved.history[..g.history_len],
                        );
                    }
                }
            }
        }
        let kept = crate::take_rows(&batch, &sources)?;
        let output = self.core.output_column();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let array: ArrayRef = if name == ID {
                Arc::new(StringArray::from(std::mem::take(&mut new_ids)))
            } else if name == output {
                Arc::new(StringArray::from(std::mem::take(&mut instructions)))
            } else if name == EVOL_PARENT_ID {
                Arc::new(StringArray::from(std::mem::take(&mut parents)))
            } else if name == EVOL_GENERATIONS {
                Arc::new(UInt32Array::from(std::mem::take(&mut counts)))
            } else if name == EVOL_HISTORY {
                Arc::new(StringArray::from(std::mem::take(&mut histories)))
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

impl Operator for EvolInstruct {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        require_column(input, &self.core.spec.column, &DataType::Utf8)?;
        for (method, template, _) in &self.core.methods {
            template.check_schema(input, &format!("a variable of the `{}` template", method.as_str()))?;
        }
        let output = self.core.output_column();
        let mut fields: Vec<Field> = Vec::with_capacity(input.fields().len() + 4);
        for field in input.fields() {
            let name = field.name().as_str();
            if WRITTEN.contains(&name) {
                continue;
            }
            if name == output {
                fields.push(Field::new(output, DataType::Utf8, field.is_nullable()));
            } else {
                fields.push(field.as_ref().clone());
            }
        }
        if input.column_with_name(output).is_none() {
            fields.push(Field::new(output, DataType::Utf8, false));
        }
        fields.extend([
            Field::new(EVOL_PARENT_ID, DataType::Utf8, false),
            Field::new(EVOL_GENERATIONS, DataType::UInt32, false),
            Field::new(EVOL_HISTORY, DataType::Utf8, false),
        ]);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn start(&mut self, pending: PendingId, batch: RecordBatch) -> Result<Step, OpError> {
        self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let column = &self.core.spec.column;
        let mut tasks = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                tasks.push(RowOrReject::Rejected("null id".into()));
                continue;
            }
            let Some(instruction) = text_cell(&batch, column, row) else {
                tasks.push(RowOrReject::Rejected(format!("`{column}` is null")));
                continue;
            };
            tasks.push(RowOrReject::Run(Box::new(EvolTask {
                core: Arc::clone(&self.core),
                batch: batch.clone(),
                row,
                id: ids.value(row).to_string(),
                original: instruction.clone(),
                current: instruction,
                round: 0,
                waiting: None,
                generations: Vec::new(),
                history: Vec::new(),
            })));
        }
        let advance = self.pending.start(pending, batch, tasks)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn resume(&mut self, pending: PendingId, responses: Vec<ModelResponse>) -> Result<Step, OpError> {
        let advance = self.pending.resume(pending, responses)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn endpoints(&self) -> Vec<String> {
        vec![self.core.spec.model.clone()]
    }

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `evol_instruct` (paths relative to the repository's `configs/`; `sdg kinds evol_instruct`).
pub const EXAMPLE: &str = r#"# One round of Evol-Instruct over the sample questions: each comes back deeper, more concrete or broader.
models:
  teacher: {base_url: "http://127.0.0.1:8000/v1", model: teacher-model}
nodes:
  - {id: seeds, kind: ingest, paths: [sample-corpus/tables/questions.jsonl]}
  - {id: evolved, kind: evol_instruct, input: seeds, model: teacher, column: text, generations: 1, seed: 4}
  - {id: out, kind: sink, input: evolved}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{drive, reply, string_batch, strings, user_text};

    /// Every method renders `round|instruction`, so canned replies can see what they evolve.
    fn evol(settings: serde_json::Value) -> EvolInstruct {
        let plain = "{{ round }}|{{ instruction }}";
        let mut base = serde_json::json!({
            "model": "teacher",
            "seed": 7,
            "templates": {
                "add_constraints": plain, "deepen": plain, "concretize": plain,
                "increase_reasoning": plain, "complicate_input": plain, "breadth": plain,
            },
        });
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        EvolInstruct::new(serde_json::from_value(base).unwrap()).unwrap()
    }

    fn batch(instructions: &[&str]) -> RecordBatch {
        let ids: Vec<String> = (0..instructions.len()).map(|i| format!("r{i}")).collect();
        string_batch(&[
            ("id", ids.iter().map(|s| Some(s.as_str())).collect()),
            ("instruction", instructions.iter().map(|s| Some(*s)).collect()),
        ])
    }

    fn json_reply(instruction: &str) -> ModelResponse {
        reply(vec![serde_json::json!({ "instruction": instruction }).to_string()])
    }

    /// (round, parent instruction) of a request rendered by the `round|instruction` templates.
    fn asked(request: &ModelRequest) -> (u32, String) {
        let text = user_text(request);
        let (round, instruction) = text.split_once('|').unwrap();
        (round.parse().unwrap(), instruction.to_string())
    }

    /// New clauses by round: different enough from the parent to pass.
    const CLAUSES: [&str; 3] = [
        "Then justify each step with a worked counterexample.",
        "Also compare two rival explanations in a short table.",
        "Finally, cite one historical experiment that settled the question.",
    ];

    /// Appends the round's clause.
    fn grow(request: &ModelRequest) -> ModelResponse {
        let (round, parent) = asked(request);
        json_reply(&format!("{parent} {}", CLAUSES[round as usize - 1]))
    }

    fn history(rows: &RecordBatch, row: usize) -> Vec<serde_json::Value> {
        let text = strings(rows, EVOL_HISTORY)[row].clone().unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap().as_array().unwrap().clone()
    }

    fn generations(rows: &RecordBatch) -> Vec<u32> {
        rows.column_by_name(EVOL_GENERATIONS).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().values().to_vec()
    }

    fn methods(rows: &RecordBatch) -> Vec<Vec<String>> {
        (0..rows.num_rows())
            .map(|row| history(rows, row).iter().map(|h| h["method"].as_str().unwrap().to_string()).collect())
            .collect()
    }

    const PARENT: &str = "Explain how vaccines train the immune system to recognize a virus.";

    #[test]
    fn evolves_for_each_round_with_structured_output_and_new_ids() {
        let mut op = evol(serde_json::json!({}));
        let mut seeds = Vec::new();
        let (out, calls) = drive(&mut op, batch(&[PARENT]), |request| {
            assert_eq!(request.endpoint, "teacher");
            let schema = request.sampling.json_schema.as_ref().unwrap();
            assert_eq!(schema["required"], serde_json::json!(["instruction"]));
            seeds.push(request.sampling.seed);
            grow(request)
        });
        assert_eq!(calls, 3);
        assert_eq!(seeds.len(), 3);
        assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2], "each round samples under its own seed");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(strings(rows, ID), [Some(stable_id(&[b"r0", b"evol", &3u32.to_le_bytes()]))]);
        assert_eq!(strings(rows, EVOL_PARENT_ID), [Some("r0".to_string())]);
        assert_eq!(generations(rows), [3]);
        let last = strings(rows, "instruction")[0].clone().unwrap();
        assert!(last.starts_with(PARENT) && last.ends_with(CLAUSES[2]), "{last}");
        let history = history(rows, 0);
        assert_eq!(history.len(), 3);
        assert!(history.iter().all(|h| h["outcome"] == "evolved"));
        assert_eq!(history[2]["instruction"], last.as_str());
        assert_eq!(op.endpoints(), ["teacher"]);
    }

    #[test]
    fn method_choice_is_deterministic_per_seed_and_follows_the_weights() {
        let instructions: Vec<String> = (0..12).map(|i| format!("{PARENT} (case {i})")).collect();
        let refs: Vec<&str> = instructions.iter().map(String::as_str).collect();
        let run = |settings: serde_json::Value| {
            let mut op = evol(settings);
            let (out, _) = drive(&mut op, batch(&refs), grow);
            methods(&out.rows)
        };
        let first = run(serde_json::json!({}));
        assert_eq!(first, run(serde_json::json!({})), "same seed, same methods");
        assert_ne!(first, run(serde_json::json!({"seed": 8})), "another seed, other methods");
        let used: std::collections::HashSet<&String> = first.iter().flatten().collect();
        assert!(used.len() >= 4, "36 draws over 6 methods use most of them: {used:?}");
        let only_breadth = run(serde_json::json!({"weights": {
            "add_constraints": 0, "deepen": 0, "concretize": 0, "increase_reasoning": 0, "complicate_input": 0,
        }}));
        assert!(only_breadth.iter().flatten().all(|m| m == "breadth"), "{only_breadth:?}");
        assert!(Method::Deepen.is_in_depth() && !Method::Breadth.is_in_depth());
    }

    #[test]
    fn each_elimination_rule_fails_the_round() {
        let cases: [(&str, &str, &str); 9] = [
            ("not json at all", "a", "no `instruction` in the reply"),
            ("{\"instruction\": \"  ?! \"}", "b", "empty instruction"),
            ("I'm sorry, but I cannot help with that.", "c", "refusal (\"sorry\")"),
            ("{\"instruction\": \"As an AI, I cannot rewrite this instruction safely.\"}", "d", "refusal"),
            ("{\"instruction\": \"#Rewritten Prompt#: Explain vaccines in detail.\"}", "e", "copies the prompt's"),
            ("{\"instruction\": \"Vaccines?\"}", "f", "too short (9 chars < min_chars 10)"),
            ("LONG", "g", "too long (301 chars > max_chars 300)"),
            ("SAME", "h", "too similar to its parent (similarity 1.00 > max_similarity 0.90)"),
            ("EDIT", "i", "too similar to its parent"),
        ];
        let instructions: Vec<String> = cases.iter().map(|(_, tag, _)| format!("{PARENT} [{tag}]")).collect();
        let refs: Vec<&str> = instructions.iter().map(String::as_str).collect();
        let mut op = evol(serde_json::json!({"generations": 1, "max_chars": 300}));
        let (out, _) = drive(&mut op, batch(&refs), |request| {
            let (_, parent) = asked(request);
            let case = cases.iter().find(|(_, tag, _)| parent.ends_with(&format!("[{tag}]"))).unwrap();
            match case.0 {
                "LONG" => json_reply(&"x".repeat(301)),
                "SAME" => json_reply(&parent.to_uppercase()),
                // A typo: the word sets differ, the character grams barely do.
                "EDIT" => json_reply(&parent.replace("vaccines", "vacines")),
                text => reply(vec![text.to_string()]),
            }
        });
        assert!(out.rejects.is_empty(), "kept as they came: {:?}", out.rejects);
        assert_eq!(generations(&out.rows), [0; 9]);
        assert_eq!(strings(&out.rows, ID), strings(&batch(&refs), ID), "unchanged rows keep their ids");
        assert_eq!(strings(&out.rows, "instruction"), strings(&batch(&refs), "instruction"));
        for (row, (_, _, reason)) in cases.iter().enumerate() {
            let history = history(&out.rows, row);
            assert_eq!(history[0]["outcome"], "failed");
            let got = history[0]["reason"].as_str().unwrap();
            assert!(got.starts_with(reason), "row {row}: {got}");
        }
    }

    #[test]
    fn markers_already_in_the_parent_do_not_count() {
        let parent = "Write a sorry note to a neighbour whose fence was damaged by your dog.";
        let mut op = evol(serde_json::json!({"generations": 1}));
        let (out, _) = drive(&mut op, batch(&[parent]), |_| {
            json_reply("Write a sorry note in rhyming verse, under 80 words, to a neighbour about a broken fence.")
        });
        assert_eq!(generations(&out.rows), [1], "{:?}", history(&out.rows, 0));
    }

    #[test]
    fn a_failed_round_keeps_the_last_good_instruction() {
        let mut op = evol(serde_json::json!({}));
        let mut parents = Vec::new();
        let (out, calls) = drive(&mut op, batch(&[PARENT]), |request| {
            let (round, parent) = asked(request);
            parents.push(parent);
            if round == 2 { reply(vec!["Sorry, I cannot do that.".into()]) } else { grow(request) }
        });
        assert_eq!(calls, 3);
        assert_eq!(parents[1], parents[2], "round 3 starts from round 1's instruction");
        assert!(parents[1].ends_with(CLAUSES[0]));
        assert_eq!(generations(&out.rows), [2]);
        assert_eq!(strings(&out.rows, ID), [Some(stable_id(&[b"r0", b"evol", &2u32.to_le_bytes()]))]);
        let outcomes: Vec<String> =
            history(&out.rows, 0).iter().map(|h| h["outcome"].as_str().unwrap().to_string()).collect();
        assert_eq!(outcomes, ["evolved", "failed", "evolved"]);
    }

    #[test]
    fn emit_all_gives_one_row_per_generation_with_lineage() {
        let mut op = evol(serde_json::json!({"emit": "all", "output": "evolved"}));
        let (out, _) = drive(&mut op, batch(&[PARENT, "Name three rivers in Africa and rank them."]), |request| {
            let (round, parent) = asked(request);
            if parent.starts_with("Name") && round == 1 { reply(vec!["nope".into()]) } else { grow(request) }
        });
        let rows = &out.rows;
        assert_eq!(generations(rows), [1, 2, 3, 1, 2], "r1's first round failed");
        let parents = strings(rows, EVOL_PARENT_ID);
        assert_eq!(parents.iter().flatten().filter(|p| *p == "r0").count(), 3);
        let ids = strings(rows, ID);
        assert_eq!(ids[3], Some(stable_id(&[b"r1", b"evol", &1u32.to_le_bytes()])), "numbered by success");
        assert_eq!(strings(rows, "instruction")[4].as_deref(), Some("Name three rivers in Africa and rank them."));
        let evolved = strings(rows, "evolved");
        assert!(evolved[1].as_deref().unwrap().starts_with(evolved[0].as_deref().unwrap()), "each builds on the last");
        let lens: Vec<usize> = (0..rows.num_rows()).map(|row| history(rows, row).len()).collect();
        assert_eq!(lens, [1, 2, 3, 2, 3], "each row's history ends at its own round");
        let schema = rows.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "instruction", "evolved", EVOL_PARENT_ID, EVOL_GENERATIONS, EVOL_HISTORY]);
    }

    #[test]
    fn rows_without_any_evolution_can_be_rejected() {
        let mut op = evol(serde_json::json!({"generations": 2, "on_no_evolution": "reject"}));
        let input = string_batch(&[
            ("id", vec![Some("a"), Some("b"), None]),
            ("instruction", vec![Some(PARENT), None, Some("x")]),
        ]);
        let (out, _) = drive(&mut op, input, |_| Err("server error 500".into()));
        assert_eq!(out.rows.num_rows(), 0);
        let reasons: Vec<(usize, &str)> = out.rejects.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert!(reasons[0].1.starts_with("no evolution succeeded in 2 rounds; history: "), "{reasons:?}");
        assert!(reasons[0].1.contains("model call failed: server error 500"), "{reasons:?}");
        assert_eq!(&reasons[1..], [(1, "`instruction` is null"), (2, "null id")]);
    }

    #[test]
    fn settings_that_cannot_evolve_are_refused() {
        let base = serde_json::json!({"model": "m"});
        let cases = [
            (serde_json::json!({"generations": 0}), "generations"),
            (serde_json::json!({"max_similarity": 1.5}), "max_similarity"),
            (serde_json::json!({"min_chars": 50, "max_chars": 20}), "max_chars"),
            (serde_json::json!({"column": "id"}), "column"),
            (serde_json::json!({"output": EVOL_HISTORY}), "output"),
            (serde_json::json!({"weights": {"deepen": -1.0}}), "weights.deepen"),
            (
                serde_json::json!({"weights": {"add_constraints": 0, "deepen": 0, "concretize": 0,
                    "increase_reasoning": 0, "complicate_input": 0, "breadth": 0}}),
                "weights",
            ),
            (serde_json::json!({"templates": {"concretize": "{{ oops"}}), "templates.concretize"),
            (serde_json::json!({"copy_markers": [" "]}), "copy_markers"),
            (serde_json::json!({"temperature": -1.0}), "temperature"),
        ];
        for (settings, key) in cases {
            let mut spec = base.clone();
            spec.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
            let err = EvolInstruct::new(serde_json::from_value(spec).unwrap()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("`{key}`")), "{key}: {err}");
        }
        for unknown in [
            serde_json::json!({"model": "m", "weights": {"deeper": 1}}),
            serde_json::json!({"model": "m", "rounds": 2}),
        ] {
            assert!(serde_json::from_value::<EvolInstructSpec>(unknown).is_err());
        }
        let op = evol(serde_json::json!({"templates": {"breadth": "{{ topic }}: {{ instruction }}"}}));
        let no_topic = batch(&[PARENT]).schema();
        assert!(matches!(op.output_schema(&no_topic), Err(OpError::MissingColumn { column, .. }) if column == "topic"));
        let no_instruction = string_batch(&[("id", vec![Some("a")])]).schema();
        assert!(evol(serde_json::json!({})).output_schema(&no_instruction).is_err());
    }

    #[test]
    fn default_templates_render_the_instruction_and_ask_for_json() {
        let op = EvolInstruct::new(serde_json::from_value(serde_json::json!({"model": "m"})).unwrap()).unwrap();
        for (method, template, weight) in &op.core.methods {
            assert_eq!(*weight, 1.0);
            let messages = template
                .render(None, &[("instruction", Value::from("Sort a list.")), ("round", Value::from(1))])
                .unwrap();
            let text = &messages[0].content;
            assert!(text.contains("Instruction:\nSort a list."), "{}: {text}", method.as_str());
            assert!(text.ends_with("{\"instruction\": \"<the new instruction>\"}"), "{}", method.as_str());
        }
    }
}
