//! `rewrite`: moves questions into the target difficulty band. A `solved` question is rewritten harder and an
//! `unsolved` one easier by the teacher; each rewrite is re-verified by a vote (which also gives the new
//! reference answer) and re-scored against the student, for up to `rounds` rounds, until it lands in the
//! target band. Rows already in the band pass through unchanged.
//!
//! Every round is recorded in `rewrite_history` (JSON): direction, the new question, the vote's answer and
//! agreement, the pass rate and category, or why the round failed. A round that fails (unparseable rewrite,
//! failed vote) does not move the question; the next round starts again from the last good version. A row
//! that never lands goes to rejects with its history (`on_exhausted: reject`, the default) or is kept as it
//! came in (`on_exhausted: keep`).
//!
//! A rewritten row gets a new id, `stable_id(parent id, "rewrite", round)`, and `rewrite_parent_id` points
//! at the input row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use minijinja::value::Value;
use serde::Deserialize;

use crate::columns::{ID, stable_id};
use crate::compare::preview;
use crate::json_extract::extract_json;
use crate::model::{ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::{ChatTemplate, text_cell};
use crate::task::{PendingTasks, Poll, RowOrReject, RowTask, derive_seed, split_results};
use crate::verify_score::{
    Category, SCORE_K, SCORE_MODEL, STUDENT_ANSWERS, ScoreCore, ScoreOutcome, ScoreSpec, ScoreTask, answers_column,
};
use crate::verify_vote::{VOTE_MODEL, VOTE_PARSED, VOTE_SAMPLES, VoteCore, VoteOutcome, VoteSpec, VoteTask};
use crate::{OpError, Operator, Output, Shape, require_column, string_column};

/// The input row's id, on every output row.
pub const REWRITE_PARENT_ID: &str = "rewrite_parent_id";
/// Rounds it took (0: passed through unchanged).
pub const REWRITE_ROUND: &str = "rewrite_round";
/// `harder`, `easier` or `none`.
pub const REWRITE_DIRECTION: &str = "rewrite_direction";
/// Every round as JSON.
pub const REWRITE_HISTORY: &str = "rewrite_history";

/// The default prompt for making a question harder.
pub const DEFAULT_HARDER: &str = "Rewrite the problem below so that it is harder: it should need more reasoning \
steps or a subtler insight, while staying self-contained, unambiguous and solvable with a single final answer.\n\n\
Problem:\n{{ question }}\n\nReply with JSON only: {\"question\": \"<the new problem>\"}";

/// The default prompt for making a question easier.
pub const DEFAULT_EASIER: &str = "Rewrite the problem below so that it is easier: fewer reasoning steps, \
clearer wording, or a helpful intermediate hint, while staying self-contained with a single final answer.\n\n\
Problem:\n{{ question }}\n\nReply with JSON only: {\"question\": \"<the new problem>\"}";

/// Settings of a `rewrite` node.
///
/// ```yaml
/// rewrite:
///   model: teacher               # rewrites the question
///   question: question           # the column rewritten
///   rounds: 2                    # at most this many rewrite-verify-score rounds
///   target: learnable            # the band to land in
///   harder: "..."                # minijinja; variables: question, answer, round (default DEFAULT_HARDER)
///   easier: "..."
///   temperature: 0.7
///   seed: 7
///   on_exhausted: reject         # or keep (the row as it came in)
///   vote: {model: teacher, n: 8} # re-verification: the vote settings (its answer becomes the new reference)
///   score: {model: student, k: 8}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    pub model: String,
    #[serde(default = "default_question")]
    pub question: String,
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    #[serde(default = "default_target")]
    pub target: Category,
    #[serde(default = "default_harder")]
    pub harder: String,
    #[serde(default = "default_easier")]
    pub easier: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub on_exhausted: Exhausted,
    pub vote: VoteSpec,
    pub score: ScoreSpec,
}

fn default_question() -> String {
    "question".into()
}

fn default_rounds() -> u32 {
    2
}

fn default_target() -> Category {
    Category::Learnable
}

fn default_harder() -> String {
    DEFAULT_HARDER.into()
}

fn default_easier() -> String {
    DEFAULT_EASIER.into()
}

fn default_temperature() -> f32 {
    0.7
}

/// What happens to a row that is still outside the band after the last round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    #[default]
    Reject,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Harder,
    Easier,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Harder => "harder",
            Direction::Easier => "easier",
        }
    }
}

/// The checked settings, shared by the row tasks.
#[derive(Debug)]
struct RewriteCore {
    spec: RewriteSpec,
    harder: ChatTemplate,
    easier: ChatTemplate,
    vote: Arc<VoteCore>,
    score: Arc<ScoreCore>,
}

const TEMPLATE_VARS: [&str; 3] = ["question", "answer", "round"];

/// A version of the question that passed vote and score.
#[derive(Debug, Clone)]
struct Version {
    question: String,
    vote: Option<VoteOutcome>,
    score: Option<ScoreOutcome>,
    category: Category,
    answer: String,
}

/// What a row's rewrite ended with.
#[derive(Debug)]
struct Landed {
    version: Version,
    round: u32,
    direction: Option<Direction>,
    history: Vec<serde_json::Value>,
}

enum Phase {
    Start,
    Rewrite { direction: Direction },
    Vote { direction: Direction, question: String, task: Box<VoteTask> },
    Score { direction: Direction, question: String, vote: VoteOutcome, task: Box<ScoreTask> },
    Finished,
}

struct RewriteTask {
    core: Arc<RewriteCore>,
    batch: RecordBatch,
    row: usize,
    id: String,
    round: u32,
    current: Version,
    /// Round of the current version (0: the input).
    current_round: u32,
    last_direction: Option<Direction>,
    input_category: Category,
    history: Vec<serde_json::Value>,
    phase: Phase,
}

type RowOut = Result<Landed, String>;

impl RewriteTask {
    fn finish(&mut self, out: RowOut) -> Poll<RowOut> {
        self.phase = Phase::Finished;
        Poll::Done(out)
    }

    /// Starts the next round, or ends the row when it is in the band or out of rounds.
    fn next_round(&mut self) -> Poll<RowOut> {
        let target = self.core.spec.target;
        if self.current.category == target {
            let landed = Landed {
                version: self.current.clone(),
                round: self.current_round,
                direction: self.last_direction,
                history: std::mem::take(&mut self.history),
            };
            return self.finish(Ok(landed));
        }
        if self.round >= self.core.spec.rounds {
            let history = serde_json::Value::Array(self.history.clone()).to_string();
            return match self.core.spec.on_exhausted {
                Exhausted::Reject => self.finish(Err(format!(
                    "still {} after {} rewrite rounds (target {}); history: {history}",
                    self.current.category.as_str(),
                    self.core.spec.rounds,
                    target.as_str()
                ))),
                Exhausted::Keep => {
                    let landed = Landed {
                        version: self.original(),
                        round: 0,
                        direction: None,
                        history: std::mem::take(&mut self.history),
                    };
                    self.finish(Ok(landed))
                }
            };
        }
        self.round += 1;
        // Which way to go depends on where the question is now and where the band lies.
        let direction =
            if difficulty(self.current.category) < difficulty(target) { Direction::Harder } else { Direction::Easier };
        let template = match direction {
            Direction::Harder => &self.core.harder,
            Direction::Easier => &self.core.easier,
        };
        let vars = [
            ("question", Value::from(self.current.question.as_str())),
            ("answer", Value::from(self.current.answer.as_str())),
            ("round", Value::from(self.round)),
        ];
        let messages = match template.render(Some((&self.batch, self.row)), &vars) {
            Ok(messages) => messages,
            Err(error) => return self.finish(Err(format!("rewrite prompt: {error}"))),
        };
        let spec = &self.core.spec;
        let request = ModelRequest {
            endpoint: spec.model.clone(),
            prompt: Prompt::Chat(messages),
            sampling: Sampling {
                n: 1,
                temperature: Some(spec.temperature),
                max_tokens: spec.max_tokens,
                seed: Some(derive_seed(spec.seed, &self.id, &format!("rewrite{}", self.round))),
                json_schema: Some(serde_json::json!({
                    "type": "object",
                    "properties": {"question": {"type": "string"}},
                    "required": ["question"],
                    "additionalProperties": false,
                })),
                ..Sampling::default()
            },
            row: self.row,
        };
        self.phase = Phase::Rewrite { direction };
        Poll::Need(vec![request])
    }

    /// The input row as a version (for `on_exhausted: keep`).
    fn original(&self) -> Version {
        let batch = &self.batch;
        let question = text_cell(batch, &self.core.spec.question, self.row).unwrap_or_default();
        let answer = text_cell(batch, &self.core.vote.spec.columns.answer, self.row).unwrap_or_default();
        Version { question, vote: None, score: None, category: self.input_category, answer }
    }

    fn failed_round(&mut self, direction: Direction, reason: String) -> Poll<RowOut> {
        self.history.push(serde_json::json!({
            "round": self.round, "direction": direction.as_str(), "outcome": "failed", "reason": reason,
        }));
        self.next_round()
    }

    fn on_rewrite(&mut self, direction: Direction, responses: Vec<ModelResponse>) -> Poll<RowOut> {
        let text = match responses.into_iter().next() {
            Some(Ok(reply)) => reply.texts.into_iter().next().unwrap_or_default(),
            Some(Err(error)) => return self.failed_round(direction, format!("rewrite call failed: {error}")),
            None => return self.failed_round(direction, "no response to the rewrite request".into()),
        };
        let question = match extract_json(&text) {
            Ok(value) => value.get("question").and_then(serde_json::Value::as_str).map(str::trim).map(str::to_string),
            Err(_) => None,
        };
        let Some(question) = question.filter(|q| !q.is_empty()) else {
            return self.failed_round(direction, format!("no `question` in the rewrite: {}", preview(&text)));
        };
        let salt = format!("rewrite{}", self.round);
        let messages = match self.core.vote.messages(&self.batch, self.row, Some(&question)) {
            Ok(messages) => messages,
            Err(error) => return self.finish(Err(format!("vote prompt: {error}"))),
        };
        let mut task = Box::new(VoteTask::new(Arc::clone(&self.core.vote), self.row, &self.id, messages, None, &salt));
        match task.poll(Vec::new()) {
            Poll::Need(requests) => {
                self.phase = Phase::Vote { direction, question, task };
                Poll::Need(requests)
            }
            Poll::Done(result) => self.on_vote_done(direction, question, result),
        }
    }

    fn on_vote_done(
        &mut self,
        direction: Direction,
        question: String,
        result: Result<VoteOutcome, String>,
    ) -> Poll<RowOut> {
        let vote = match result {
            Ok(vote) => vote,
            Err(reason) => {
                self.history.push(serde_json::json!({
                    "round": self.round, "direction": direction.as_str(), "question": question,
                    "outcome": "failed", "reason": format!("vote: {reason}"),
                }));
                return self.next_round();
            }
        };
        let salt = format!("rewrite{}", self.round);
        let messages = match self.core.score.messages(&self.batch, self.row, Some(&question)) {
            Ok(messages) => messages,
            Err(error) => return self.finish(Err(format!("score prompt: {error}"))),
        };
        let mut task =
            Box::new(ScoreTask::new(Arc::clone(&self.core.score), self.row, &self.id, messages, &vote.answer, &salt));
        match task.poll(Vec::new()) {
            Poll::Need(requests) => {
                self.phase = Phase::Score { direction, question, vote, task };
                Poll::Need(requests)
            }
            Poll::Done(result) => self.on_score_done(direction, question, vote, result),
        }
    }

    fn on_score_done(
        &mut self,
        direction: Direction,
        question: String,
        vote: VoteOutcome,
        result: Result<ScoreOutcome, String>,
    ) -> Poll<RowOut> {
        let score = match result {
            Ok(score) => score,
            Err(reason) => {
                self.history.push(serde_json::json!({
                    "round": self.round, "direction": direction.as_str(), "question": question,
                    "outcome": "failed", "reason": format!("score: {reason}"),
                }));
                return self.next_round();
            }
        };
        self.history.push(serde_json::json!({
            "round": self.round, "direction": direction.as_str(), "question": question, "answer": vote.answer,
            "agreement": vote.agreement, "pass_rate": score.pass_rate, "category": score.category.as_str(),
            "outcome": if score.category == self.core.spec.target { "landed" } else { "moved" },
        }));
        self.current = Version {
            question,
            answer: vote.answer.clone(),
            category: score.category,
            vote: Some(vote),
            score: Some(score),
        };
        self.current_round = self.round;
        self.last_direction = Some(direction);
        self.next_round()
    }
}

/// Orders the bands from easiest (solved) to hardest (unsolved).
fn difficulty(category: Category) -> u8 {
    match category {
        Category::Solved => 0,
        Category::Learnable => 1,
        Category::Unsolved => 2,
    }
}

impl RowTask for RewriteTask {
    type Out = RowOut;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<RowOut> {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Start => self.next_round(),
            Phase::Rewrite { direction } => self.on_rewrite(direction, responses),
            Phase::Vote { direction, question, mut task } => match task.poll(responses) {
                Poll::Need(requests) => {
                    self.phase = Phase::Vote { direction, question, task };
                    Poll::Need(requests)
                }
                Poll::Done(result) => self.on_vote_done(direction, question, result),
            },
            Phase::Score { direction, question, vote, mut task } => match task.poll(responses) {
                Poll::Need(requests) => {
                    self.phase = Phase::Score { direction, question, vote, task };
                    Poll::Need(requests)
                }
                Poll::Done(result) => self.on_score_done(direction, question, vote, result),
            },
            Phase::Finished => Poll::Done(Err("the rewrite already finished".into())),
        }
    }
}

/// The `rewrite` operator. See the module docs.
#[derive(Debug)]
pub struct Rewrite {
    core: Arc<RewriteCore>,
    pending: PendingTasks<RowOrReject<RewriteTask>>,
}

impl Rewrite {
    pub fn new(spec: RewriteSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.rounds == 0 {
            return Err(OpError::setting("rounds", "must be at least 1"));
        }
        if !(spec.temperature.is_finite() && spec.temperature >= 0.0) {
            return Err(OpError::setting("temperature", format!("{} is not a number >= 0", spec.temperature)));
        }
        if spec.question.is_empty() || spec.question == ID {
            return Err(OpError::setting("question", "must name the question column"));
        }
        let harder = ChatTemplate::new(spec.system.as_deref(), &spec.harder, &TEMPLATE_VARS, "harder.")?;
        let easier = ChatTemplate::new(spec.system.as_deref(), &spec.easier, &TEMPLATE_VARS, "easier.")?;
        let vote = Arc::new(VoteCore::new(spec.vote.clone()).map_err(|e| nest("vote", e))?);
        let score = Arc::new(ScoreCore::new(spec.score.clone()).map_err(|e| nest("score", e))?);
        Ok(Rewrite {
            core: Arc::new(RewriteCore { spec, harder, easier, vote, score }),
            pending: PendingTasks::default(),
        })
    }

    /// The columns a rewritten row gets new values in, besides `id` and the question.
    fn verified_fields(&self) -> Vec<Field> {
        let mut fields = self.core.vote.fields();
        fields.extend(self.core.score.fields());
        fields
    }

    fn category_column(&self) -> &str {
        &self.core.score.spec.columns.category
    }

    fn emit(&self, batch: RecordBatch, results: Vec<RowOut>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let (keep, rejects, landed) = split_results(results);
        let kept = crate::take_rows(&batch, &keep)?;
        let parent_ids = string_column(&kept, ID)?;
        let changed: Vec<bool> = landed.iter().map(|l| l.round > 0).collect();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let array: ArrayRef = match name {
                ID => Arc::new(StringArray::from_iter_values(landed.iter().enumerate().map(|(i, l)| {
                    if l.round == 0 {
                        parent_ids.value(i).to_string()
                    } else {
                        stable_id(&[parent_ids.value(i).as_bytes(), b"rewrite", &l.round.to_le_bytes()])
                    }
                }))),
                REWRITE_PARENT_ID => {
                    Arc::new(StringArray::from_iter_values((0..landed.len()).map(|i| parent_ids.value(i))))
                }
                REWRITE_ROUND => Arc::new(UInt32Array::from_iter_values(landed.iter().map(|l| l.round))),
                REWRITE_DIRECTION => Arc::new(StringArray::from_iter_values(
                    landed
                        .iter()
                        .map(|l| if l.round == 0 { "none" } else { l.direction.map_or("none", Direction::as_str) }),
                )),
                REWRITE_HISTORY => Arc::new(StringArray::from_iter_values(
                    landed.iter().map(|l| serde_json::Value::Array(l.history.clone()).to_string()),
                )),
                _ => {
                    let fresh = self.fresh_values(name, &landed);
                    match (fresh, kept.column_by_name(name)) {
                        (Some(fresh), Some(old)) => {
                            let mask = arrow::array::BooleanArray::from(changed.clone());
                            arrow::compute::kernels::zip::zip(&mask, &fresh, old)?
                        }
                        (Some(fresh), None) => fresh,
                        (None, Some(old)) => Arc::clone(old),
                        (None, None) => {
                            return Err(OpError::Protocol(format!("no values for output column `{name}`")));
                        }
                    }
                }
            };
            arrays.push(array);
        }
        Ok(Output { rows: RecordBatch::try_new(schema, arrays)?, rejects })
    }

    /// New values of a rewritten column (null for rows that passed through), or `None` for other columns.
    fn fresh_values(&self, name: &str, landed: &[Landed]) -> Option<ArrayRef> {
        let vote = &self.core.vote.spec.columns;
        let score = &self.core.score.spec.columns;
        let versions: Vec<Option<&Version>> =
            landed.iter().map(|l| if l.round > 0 { Some(&l.version) } else { None }).collect();
        let votes = || versions.iter().map(|v| v.and_then(|v| v.vote.as_ref()));
        let scores = || versions.iter().map(|v| v.and_then(|v| v.score.as_ref()));
        let array: ArrayRef = if name == self.core.spec.question {
            Arc::new(StringArray::from_iter(versions.iter().map(|v| v.map(|v| v.question.as_str()))))
        } else if name == vote.response {
            Arc::new(StringArray::from_iter(votes().map(|v| v.map(|v| v.response.as_str()))))
        } else if name == vote.answer {
            Arc::new(StringArray::from_iter(votes().map(|v| v.map(|v| v.answer.as_str()))))
        } else if name == vote.agreement {
            Arc::new(Float64Array::from_iter(votes().map(|v| v.map(|v| v.agreement))))
        } else if name == vote.votes {
            Arc::new(StringArray::from_iter(votes().map(|v| v.map(VoteOutcome::histogram_json))))
        } else if name == VOTE_SAMPLES {
            Arc::new(UInt32Array::from_iter(votes().map(|v| v.map(|v| v.samples))))
        } else if name == VOTE_PARSED {
            Arc::new(UInt32Array::from_iter(votes().map(|v| v.map(|v| v.parsed))))
        } else if name == VOTE_MODEL {
            Arc::new(StringArray::from_iter(votes().map(|v| v.map(|v| v.model.as_str()))))
        } else if name == score.pass_rate {
            Arc::new(Float64Array::from_iter(scores().map(|s| s.map(|s| s.pass_rate))))
        } else if name == score.category {
            Arc::new(StringArray::from_iter(scores().map(|s| s.map(|s| s.category.as_str()))))
        } else if name == SCORE_K {
            Arc::new(UInt32Array::from_iter(scores().map(|s| s.map(|s| s.k))))
        } else if name == SCORE_MODEL {
            Arc::new(StringArray::from_iter(scores().map(|s| s.map(|s| s.model.as_str()))))
        } else if name == STUDENT_ANSWERS {
            let empty: Vec<Option<String>> = Vec::new();
            let lists: Vec<&[Option<String>]> =
                scores().map(|s| s.map_or(empty.as_slice(), |s| s.answers.as_slice())).collect();
            answers_column(&lists)
        } else {
            return None;
        };
        Some(array)
    }
}

/// Prefixes a nested section's setting key (`vote.n`).
fn nest(section: &str, error: OpError) -> OpError {
    match error {
        OpError::InvalidSetting { key, message } => {
            OpError::InvalidSetting { key: format!("{section}.{key}"), message }
        }
        other => other,
    }
}

fn parse_category(text: &str) -> Option<Category> {
    match text.trim() {
        "solved" => Some(Category::Solved),
        "learnable" => Some(Category::Learnable),
        "unsolved" => Some(Category::Unsolved),
        _ => None,
    }
}

impl Operator for Rewrite {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        require_column(input, &self.core.spec.question, &DataType::Utf8)?;
        require_column(input, self.category_column(), &DataType::Utf8)?;
        require_column(input, &self.core.vote.spec.columns.answer, &DataType::Utf8)?;
        self.core.harder.check_schema(input, "a variable of the `harder` template")?;
        self.core.easier.check_schema(input, "a variable of the `easier` template")?;
        self.core.vote.check_schema(input)?;
        self.core.score.check_schema(input, false)?;
        let verified = self.verified_fields();
        let mut fields: Vec<Field> = Vec::with_capacity(input.fields().len() + verified.len() + 4);
        for field in input.fields() {
            if let Some(ours) = verified.iter().find(|f| f.name() == field.name())
                && ours.data_type() != field.data_type()
            {
                return Err(OpError::ColumnType {
                    column: field.name().clone(),
                    found: field.data_type().clone(),
                    expected: ours.data_type().to_string(),
                });
            }
            if [REWRITE_PARENT_ID, REWRITE_ROUND, REWRITE_DIRECTION, REWRITE_HISTORY].contains(&field.name().as_str()) {
                continue;
            }
            fields.push(field.as_ref().clone());
        }
        for field in verified {
            if input.column_with_name(field.name()).is_none() {
                fields.push(field.with_nullable(true));
            }
        }
        fields.extend([
            Field::new(REWRITE_PARENT_ID, DataType::Utf8, false),
            Field::new(REWRITE_ROUND, DataType::UInt32, false),
            Field::new(REWRITE_DIRECTION, DataType::Utf8, false),
            Field::new(REWRITE_HISTORY, DataType::Utf8, false),
        ]);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn start(&mut self, pending: PendingId, batch: RecordBatch) -> Result<Step, OpError> {
        self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let mut tasks = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                tasks.push(RowOrReject::Rejected("null id".into()));
                continue;
            }
            let category = text_cell(&batch, self.category_column(), row);
            let Some(category) = category.as_deref().and_then(parse_category) else {
                tasks.push(RowOrReject::Rejected(format!(
                    "`{}` is {:?}, not solved, learnable or unsolved",
                    self.category_column(),
                    category
                )));
                continue;
            };
            let (Some(question), Some(answer)) = (
                text_cell(&batch, &self.core.spec.question, row),
                text_cell(&batch, &self.core.vote.spec.columns.answer, row),
            ) else {
                tasks.push(RowOrReject::Rejected("the question or its answer is null".into()));
                continue;
            };
            tasks.push(RowOrReject::Run(Box::new(RewriteTask {
                core: Arc::clone(&self.core),
                batch: batch.clone(),
                row,
                id: ids.value(row).to_string(),
                round: 0,
                current: Version { question, vote: None, score: None, category, answer },
                current_round: 0,
                last_direction: None,
                input_category: category,
                history: Vec::new(),
                phase: Phase::Start,
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
        let mut endpoints = vec![self.core.spec.model.clone()];
        for endpoint in self.core.vote.endpoints().into_iter().chain(self.core.score.endpoints()) {
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        endpoints
    }

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `rewrite` (paths relative to the repository's `configs/`; `sdg kinds rewrite`).
pub const EXAMPLE: &str = r#"# A teacher writes one question and its short answer about each glossary entry, as structured output;
# questions the student solves are made harder, those it cannot solve easier, and each is checked again.
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
  - {id: scored, kind: score, input: qa, model: student, k: 4}
  - id: balanced
    kind: rewrite
    input: scored
    model: teacher
    rounds: 1
    vote: {model: teacher, n: 4}
    score: {model: student, k: 4}
  - {id: out, kind: sink, input: balanced}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{drive, floats, reply, string_batch, strings, user_text};

    fn rewrite(settings: serde_json::Value) -> Rewrite {
        let mut base = serde_json::json!({
            "model": "writer",
            "vote": {"model": "teacher", "prompt": "{{ question }}", "n": 4},
            "score": {"model": "student", "prompt": "{{ question }}", "k": 4},
        });
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        Rewrite::new(serde_json::from_value(base).unwrap()).unwrap()
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn batch() -> RecordBatch {
        string_batch(&[
            ("id", vec![Some("a"), Some("b"), Some("c"), Some("d")]),
            ("question", vec![Some("qa"), Some("qb"), Some("qc"), Some("qd")]),
            ("answer", vec![Some("1"), Some("2"), Some("3"), Some("4")]),
            ("category", vec![Some("learnable"), Some("solved"), Some("unsolved"), Some("hard")]),
        ])
    }

    /// The writer makes `q` into `q+` (harder) or `q-` (easier); round 1 of `qc` is unparseable. The teacher
    /// always agrees on 9. The student solves `qb+` half the time, and never solves anything from `qc`.
    fn answer(request: &ModelRequest) -> ModelResponse {
        let text = user_text(request);
        match request.endpoint.as_str() {
            "writer" => {
                let question = text.lines().find(|l| l.starts_with('q')).unwrap_or_default().to_string();
                if question == "qc" && text.contains("round 1") {
                    return reply(texts(&["Sorry, I cannot."]));
                }
                let mark = if text.contains("harder") { "+" } else { "-" };
                reply(vec![serde_json::json!({"question": format!("{question}{mark}")}).to_string()])
            }
            "teacher" => reply(texts(&["#### 9"; 4])),
            _ if text == "qb+" => reply(texts(&["#### 9", "#### 8", "#### 9", "#### 1"])),
            _ => reply(texts(&["#### 0"; 4])),
        }
    }

    #[test]
    fn rows_move_into_the_band_with_lineage_or_are_rejected_with_history() {
        let mut op = rewrite(serde_json::json!({
            "rounds": 2,
            "harder": "harder round {{ round }}:\n{{ question }}",
            "easier": "easier round {{ round }}:\n{{ question }}",
        }));
        let (out, _) = drive(&mut op, batch(), answer);
        let rows = &out.rows;
        assert_eq!(strings(rows, REWRITE_PARENT_ID), [Some("a".to_string()), Some("b".to_string())]);
        let ids = strings(rows, ID);
        assert_eq!(ids[0].as_deref(), Some("a"), "a row in the band keeps its id");
        assert_eq!(ids[1], Some(stable_id(&[b"b", b"rewrite", &1u32.to_le_bytes()])));
        assert_eq!(strings(rows, "question"), [Some("qa".to_string()), Some("qb+".to_string())]);
        assert_eq!(strings(rows, "answer"), [Some("1".to_string()), Some("9".to_string())], "the vote's answer");
        assert_eq!(strings(rows, "category"), [Some("learnable".to_string()), Some("learnable".to_string())]);
        assert_eq!(floats(rows, "pass_rate"), [None, Some(0.5)], "absent input columns are null on passed rows");
        assert_eq!(strings(rows, REWRITE_DIRECTION), [Some("none".to_string()), Some("harder".to_string())]);
        let rounds = rows.column_by_name(REWRITE_ROUND).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(rounds.values().to_vec(), [0, 1]);
        let history: serde_json::Value =
            serde_json::from_str(strings(rows, REWRITE_HISTORY)[1].as_deref().unwrap()).unwrap();
        assert_eq!(history[0]["outcome"], "landed");
        assert_eq!(history[0]["agreement"], 1.0);

        let reasons: Vec<(usize, &str)> = out.rejects.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, 2);
        assert!(reasons[0].1.starts_with("still unsolved after 2 rewrite rounds (target learnable)"), "{reasons:?}");
        assert!(reasons[0].1.contains("no `question` in the rewrite"), "round 1 failed: {reasons:?}");
        assert!(reasons[0].1.contains("\"question\":\"qc-\""), "round 2 moved: {reasons:?}");
        assert_eq!(reasons[1], (3, "`category` is Some(\"hard\"), not solved, learnable or unsolved"));
    }

    #[test]
    fn exhausted_rows_can_be_kept_as_they_came() {
        let mut op = rewrite(serde_json::json!({"rounds": 1, "on_exhausted": "keep"}));
        let input = string_batch(&[
            ("id", vec![Some("c")]),
            ("question", vec![Some("qc")]),
            ("answer", vec![Some("3")]),
            ("category", vec![Some("unsolved")]),
        ]);
        let (out, _) = drive(&mut op, input, answer);
        assert!(out.rejects.is_empty());
        assert_eq!(strings(&out.rows, "question"), [Some("qc".to_string())]);
        assert_eq!(strings(&out.rows, "category"), [Some("unsolved".to_string())]);
        assert_eq!(strings(&out.rows, REWRITE_DIRECTION), [Some("none".to_string())]);
        let history: serde_json::Value =
            serde_json::from_str(strings(&out.rows, REWRITE_HISTORY)[0].as_deref().unwrap()).unwrap();
        assert_eq!(history[0]["direction"], "easier");
        assert_eq!(history[0]["category"], "unsolved");
    }

    #[test]
    fn nested_settings_errors_name_their_section() {
        let spec: RewriteSpec = serde_json::from_value(serde_json::json!({
            "model": "w", "vote": {"model": "t", "n": 1}, "score": {"model": "s"},
        }))
        .unwrap();
        let err = Rewrite::new(spec).unwrap_err();
        assert!(err.to_string().contains("vote.n"), "{err}");
        let op = rewrite(serde_json::json!({}));
        assert_eq!(op.endpoints(), ["writer", "teacher", "student"]);
        let no_category =
            string_batch(&[("id", vec![Some("a")]), ("question", vec![Some("q")]), ("answer", vec![Some("1")])]);
        assert!(op.output_schema(&no_category.schema()).is_err());
    }
}
