//! `vote`: samples `n` answers per question at a temperature above zero and keeps the answer most of them
//! agree on (self-consistency).
//!
//! Each sample's final answer is extracted (see [`crate::answer`]) and the answers are grouped by the
//! `compare` method: `exact` (normalized, numbers within a tolerance), `semantic` (embeddings clustered by a
//! cosine threshold; the medoid of the largest cluster wins) or `judge` (an LLM picks among the distinct
//! candidates, with structured output). The row gets the winning full response (always one whose own answer
//! is the winning answer), the answer, the agreement (winning votes / samples asked) and the vote histogram.
//!
//! A row goes to rejects, with the reason, when: the model call fails; fewer than 2 samples have an answer;
//! the agreement is below `min_agreement`; the top answers tie (unless `ties: first`); the judge's reply does
//! not parse after a retry; or the winner disagrees with the `expected` column.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use minijinja::value::Value;
use serde::Deserialize;

use crate::answer::{self, AnswerSpec, Normalized, Winner};
use crate::columns::ID;
use crate::compare::{Comparator, CompareSpec, Method, parse_pick, preview, read_answer};
use crate::model::{ChatMessage, ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::{ChatTemplate, text_cell};
use crate::task::{PendingTasks, Poll, RowOrReject, RowTask, annotate, annotated_schema, derive_seed, split_results};
use crate::{OpError, Operator, Output, require_column, string_column};

/// The default question prompt: the answer ends up after `####`, which the default extractors find.
pub const DEFAULT_PROMPT: &str =
    "{{ question }}\n\nSolve the problem step by step. On the last line write the final answer as: #### <answer>";

/// Settings of a `vote` node.
///
/// ```yaml
/// vote:
///   model: teacher            # endpoint that answers
///   prompt: "{{ question }}\n\nEnd with: #### <answer>"   # minijinja over input columns (default: DEFAULT_PROMPT)
///   system: null              # optional system template
///   n: 8                      # samples per question (>= 2)
///   temperature: 0.8          # must be > 0: identical samples prove nothing
///   top_p: null
///   max_tokens: 1024
///   seed: 7                   # each row gets a seed derived from it and the row id
///   answer: {marker: "####"}  # extractor or list of extractors (default: tag, ####, \boxed, last number)
///   compare: {method: exact}  # or {method: semantic, model: embedder, threshold: 0.85} or {method: judge, model: m}
///   min_agreement: 0.5        # winning votes / n
///   ties: reject              # or `first`: the earliest of the tied answers wins
///   expected: null            # a column whose answer the winner must match (exact and semantic only)
///   escalate: {max_n: 16, step: 4, below: 0.5}   # optional: sample more while the vote is inconclusive
///   columns: {response: response, answer: answer, agreement: agreement, votes: votes}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VoteSpec {
    pub model: String,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_n")]
    pub n: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// How to find the final answer; `None` means the default chain (whole response for `semantic`).
    #[serde(default)]
    pub answer: Option<AnswerSpec>,
    #[serde(default)]
    pub compare: CompareSpec,
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    #[serde(default)]
    pub ties: Ties,
    #[serde(default)]
    pub expected: Option<String>,
    /// Adaptive sampling: more samples while the vote is inconclusive (exact method only).
    #[serde(default)]
    pub escalate: Option<Escalate>,
    #[serde(default)]
    pub columns: VoteColumns,
}

/// `escalate: {max_n: 16, step: 4, below: 0.5}`: while the top answers tie or the top share is below
/// `below`, ask `step` more samples, up to `max_n` in all. Cheap insurance: most questions stop at `n`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Escalate {
    pub max_n: u32,
    #[serde(default = "default_step")]
    pub step: u32,
    #[serde(default = "default_below")]
    pub below: f64,
}

fn default_step() -> u32 {
    4
}

fn default_below() -> f64 {
    0.5
}

fn default_prompt() -> String {
    DEFAULT_PROMPT.to_string()
}

fn default_n() -> u32 {
    8
}

fn default_temperature() -> f32 {
    0.8
}

fn default_min_agreement() -> f64 {
    0.5
}

/// What a tie between the top answers does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ties {
    /// The row goes to rejects: there is no majority to trust.
    #[default]
    Reject,
    /// The tied answer sampled first wins.
    First,
}

/// Names of the columns a vote writes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VoteColumns {
    pub response: String,
    pub answer: String,
    pub agreement: String,
    pub votes: String,
}

impl Default for VoteColumns {
    fn default() -> Self {
        VoteColumns {
            response: "response".into(),
            answer: "answer".into(),
            agreement: "agreement".into(),
            votes: "votes".into(),
        }
    }
}

/// How many samples were asked and parsed, written next to the vote columns.
pub const VOTE_SAMPLES: &str = "vote_samples";
pub const VOTE_PARSED: &str = "vote_parsed";
/// The model name the server reported for the samples.
pub const VOTE_MODEL: &str = "vote_model";

/// What a vote decided for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct VoteOutcome {
    /// A full response whose own answer is the winner.
    pub response: String,
    pub answer: String,
    /// Winning votes / samples asked.
    pub agreement: f64,
    /// Distinct answers (each group's representative) with their votes, most votes first.
    pub histogram: Vec<(String, u32)>,
    pub samples: u32,
    pub parsed: u32,
    pub model: String,
}

impl VoteOutcome {
    /// The histogram as JSON: `[{"answer": "42", "votes": 5}, ...]`.
    pub fn histogram_json(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .histogram
            .iter()
            .map(|(answer, votes)| serde_json::json!({"answer": answer, "votes": votes}))
            .collect();
        serde_json::Value::Array(items).to_string()
    }
}

/// The checked settings of a vote, shared by every row task (and by `rewrite`).
#[derive(Debug)]
pub struct VoteCore {
    pub spec: VoteSpec,
    template: ChatTemplate,
    comparator: Comparator,
}

impl VoteCore {
    pub fn new(spec: VoteSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.n < 2 {
            return Err(OpError::setting("n", "a vote needs at least 2 samples"));
        }
        if !(spec.temperature.is_finite() && spec.temperature > 0.0) {
            return Err(OpError::setting(
                "temperature",
                format!("{} must be > 0: samples at temperature 0 all agree and prove nothing", spec.temperature),
            ));
        }
        if let Some(p) = spec.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(OpError::setting("top_p", format!("{p} is not in (0, 1]")));
        }
        if spec.max_tokens == Some(0) {
            return Err(OpError::setting("max_tokens", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&spec.min_agreement) {
            return Err(OpError::setting("min_agreement", format!("{} is not in [0, 1]", spec.min_agreement)));
        }
        if let Some(escalate) = &spec.escalate {
            if spec.compare.method != Method::Exact {
                return Err(OpError::setting("escalate", "works with compare method `exact` only"));
            }
            if escalate.max_n <= spec.n || escalate.step == 0 || !(0.0..=1.0).contains(&escalate.below) {
                return Err(OpError::setting(
                    "escalate",
                    format!("needs max_n > n ({}), step >= 1 and below in [0, 1]", spec.n),
                ));
            }
        }
        if spec.expected.is_some() && spec.compare.method == Method::Judge {
            return Err(OpError::setting("expected", "needs compare method `exact` or `semantic`"));
        }
        let columns = &spec.columns;
        let names = [&columns.response, &columns.answer, &columns.agreement, &columns.votes];
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.as_str() == ID || names[..i].contains(name) {
                return Err(OpError::setting("columns", format!("`{name}` cannot be used as an output column")));
            }
        }
        let template = ChatTemplate::new(spec.system.as_deref(), &spec.prompt, &[], "")?;
        let comparator = Comparator::new(spec.compare.clone(), true)?;
        Ok(VoteCore { spec, template, comparator })
    }

    /// The prompt of one row; `question` overrides the column of that name (rewrite).
    pub fn messages(
        &self,
        batch: &RecordBatch,
        row: usize,
        question: Option<&str>,
    ) -> Result<Vec<ChatMessage>, String> {
        match question {
            Some(q) => self.template.render(Some((batch, row)), &[("question", Value::from(q))]),
            None => self.template.render(Some((batch, row)), &[]),
        }
    }

    pub fn check_schema(&self, input: &arrow::datatypes::Schema) -> Result<(), OpError> {
        self.template.check_schema(input, "a variable of the vote's `prompt` or `system` template")?;
        if let Some(expected) = &self.spec.expected {
            require_column(input, expected, &DataType::Utf8)?;
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        let mut endpoints = vec![self.spec.model.clone()];
        if let Some(model) = self.comparator.endpoint()
            && !endpoints.iter().any(|e| e == model)
        {
            endpoints.push(model.to_string());
        }
        endpoints
    }

    /// The final answer in one sample, as this vote reads it.
    fn answer_of(&self, text: &str) -> Option<String> {
        read_answer(self.spec.answer.as_ref(), self.spec.compare.method, text)
    }

    /// The output fields, in order.
    pub(crate) fn fields(&self) -> Vec<Field> {
        let c = &self.spec.columns;
        vec![
            Field::new(&c.response, DataType::Utf8, false),
            Field::new(&c.answer, DataType::Utf8, false),
            Field::new(&c.agreement, DataType::Float64, false),
            Field::new(&c.votes, DataType::Utf8, false),
            Field::new(VOTE_SAMPLES, DataType::UInt32, false),
            Field::new(VOTE_PARSED, DataType::UInt32, false),
            Field::new(VOTE_MODEL, DataType::Utf8, false),
        ]
    }
}

enum Phase {
    Sample,
    /// Waiting for the embeddings of the parsed answers (plus the expected answer, last, when set).
    Embed,
    /// Waiting for the judge's pick among the exact groups.
    Judge {
        groups: Vec<Vec<usize>>,
        attempt: u32,
    },
    Finished,
}

/// One question's vote, as a task (see [`crate::task`]).
pub struct VoteTask {
    core: Arc<VoteCore>,
    row: usize,
    id: String,
    /// The text the judge sees as the question: the last user message.
    messages: Vec<ChatMessage>,
    expected: Option<String>,
    phase: Phase,
    texts: Vec<String>,
    /// (sample index, extracted answer) of every sample with an answer.
    parsed: Vec<(usize, String)>,
    model: String,
}

impl VoteTask {
    /// A vote on `messages` (the rendered question) for the row `row` with id `id`; `salt` separates the
    /// seeds of different votes on one row (rewrite rounds).
    pub fn new(
        core: Arc<VoteCore>,
        row: usize,
        id: &str,
        messages: Vec<ChatMessage>,
        expected: Option<String>,
        salt: &str,
    ) -> Self {
        VoteTask {
            core,
            row,
            id: format!("{id}\u{0}{salt}"),
            messages,
            expected,
            phase: Phase::Sample,
            texts: Vec::new(),
            parsed: Vec::new(),
            model: String::new(),
        }
    }

    fn question(&self) -> &str {
        self.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str())
    }

    /// The first request asks `n` samples; each escalation asks `escalate.step` more under a new seed.
    fn sample_request(&self) -> ModelRequest {
        let spec = &self.core.spec;
        let (n, salt) = match (&spec.escalate, self.texts.len()) {
            (Some(escalate), asked) if asked > 0 => {
                let left = escalate.max_n as usize - asked;
                (escalate.step.min(left as u32), format!("vote+{asked}"))
            }
            _ => (spec.n, "vote".to_string()),
        };
        ModelRequest {
            endpoint: spec.model.clone(),
            prompt: Prompt::Chat(self.messages.clone()),
            sampling: Sampling {
                n,
                temperature: Some(spec.temperature),
                top_p: spec.top_p,
                max_tokens: spec.max_tokens,
                seed: Some(derive_seed(spec.seed, &self.id, &salt)),
                ..Sampling::default()
            },
            row: self.row,
        }
    }

    fn finish(&mut self, result: Result<VoteOutcome, String>) -> Poll<Result<VoteOutcome, String>> {
        self.phase = Phase::Finished;
        Poll::Done(result)
    }

    fn on_samples(&mut self, responses: Vec<ModelResponse>) -> Poll<Result<VoteOutcome, String>> {
        let reply = match responses.into_iter().next() {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return self.finish(Err(format!("model call failed: {error}"))),
            None => return self.finish(Err("no response to the vote's request".into())),
        };
        self.model = reply.model;
        let offset = self.texts.len();
        self.texts.extend(reply.texts);
        let core = Arc::clone(&self.core);
        let fresh: Vec<(usize, String)> = self.texts[offset..]
            .iter()
            .enumerate()
            .filter_map(|(i, text)| core.answer_of(text).map(|answer| (offset + i, answer)))
            .collect();
        self.parsed.extend(fresh);
        if let Some(escalate) = &core.spec.escalate
            && self.texts.len() < escalate.max_n as usize
            && self.inconclusive(escalate.below)
        {
            return Poll::Need(vec![self.sample_request()]);
        }
        if self.parsed.len() < 2 {
            let reason = format!(
                "only {} of {} samples had a parseable answer (a vote needs 2)",
                self.parsed.len(),
                self.texts.len()
            );
            return self.finish(Err(reason));
        }
        match core.spec.compare.method {
            Method::Exact => {
                let normalized: Vec<Normalized> = self.parsed.iter().map(|(_, a)| answer::normalize(a)).collect();
                let groups = answer::group_equivalent(&normalized, core.spec.compare.tolerance);
                let result = self.decide(&groups, None).and_then(|outcome| match &self.expected {
                    Some(expected) => {
                        let expected_answer = self.core.answer_of(expected).unwrap_or_else(|| expected.clone());
                        let same = answer::equivalent(
                            &answer::normalize(&expected_answer),
                            &answer::normalize(&outcome.answer),
                            core.spec.compare.tolerance,
                        );
                        if same { Ok(outcome) } else { Err(disagrees(&outcome.answer, &expected_answer)) }
                    }
                    None => Ok(outcome),
                });
                self.finish(result)
            }
            Method::Semantic => {
                let mut texts: Vec<String> = self.parsed.iter().map(|(_, a)| a.clone()).collect();
                if let Some(expected) = &self.expected {
                    texts.push(self.core.answer_of(expected).unwrap_or_else(|| expected.clone()));
                }
                self.phase = Phase::Embed;
                Poll::Need(vec![core.comparator.embed_request(texts, self.row)])
            }
            Method::Judge => {
                let normalized: Vec<Normalized> = self.parsed.iter().map(|(_, a)| answer::normalize(a)).collect();
                let groups = answer::group_equivalent(&normalized, core.spec.compare.tolerance);
                if groups.len() == 1 {
                    let result = self.decide(&groups, None);
                    return self.finish(result);
                }
                self.ask_judge(groups, 0)
            }
        }
    }

    /// Whether the exact vote so far has no clear winner: a tie at the top, or a top share below `below`.
    fn inconclusive(&self, below: f64) -> bool {
        let normalized: Vec<Normalized> = self.parsed.iter().map(|(_, a)| answer::normalize(a)).collect();
        let groups = answer::group_equivalent(&normalized, self.core.spec.compare.tolerance);
        match answer::winner(&groups) {
            None | Some(Winner::Tie(_)) => true,
            Some(Winner::Clear(index)) => (groups[index].len() as f64) < below * self.texts.len() as f64,
        }
    }

    fn ask_judge(&mut self, groups: Vec<Vec<usize>>, attempt: u32) -> Poll<Result<VoteOutcome, String>> {
        let candidates: Vec<String> = groups.iter().map(|g| self.parsed[g[0]].1.clone()).collect();
        let seed = derive_seed(self.core.spec.seed, &self.id, &format!("judge{attempt}"));
        match self.core.comparator.pick_request(self.question(), &candidates, self.row, seed) {
            Ok(request) => {
                self.phase = Phase::Judge { groups, attempt };
                Poll::Need(vec![request])
            }
            Err(error) => self.finish(Err(format!("judge prompt: {error}"))),
        }
    }

    fn on_embeddings(&mut self, responses: Vec<ModelResponse>) -> Poll<Result<VoteOutcome, String>> {
        let reply = match responses.into_iter().next() {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return self.finish(Err(format!("embedding call failed: {error}"))),
            None => return self.finish(Err("no response to the embedding request".into())),
        };
        let wanted = self.parsed.len() + usize::from(self.expected.is_some());
        if reply.embeddings.len() != wanted {
            let reason = format!("the embedder returned {} vectors for {wanted} texts", reply.embeddings.len());
            return self.finish(Err(reason));
        }
        let mut vectors = reply.embeddings;
        let expected_vector = if self.expected.is_some() { vectors.pop() } else { None };
        let threshold = self.core.spec.compare.threshold;
        let groups = answer::cluster_by_similarity(&vectors, threshold);
        let result = self.decide(&groups, Some(&vectors)).and_then(|outcome| match expected_vector {
            Some(expected) => {
                // The winner is the medoid; compare the expected answer with it.
                let winner_index = self.parsed.iter().position(|(_, a)| *a == outcome.answer).unwrap_or(0);
                let similarity = answer::cosine(&vectors[winner_index], &expected);
                if similarity >= threshold {
                    Ok(outcome)
                } else {
                    let expected_text = self.expected.clone().unwrap_or_default();
                    Err(format!(
                        "{} (cosine {similarity:.3} < {threshold})",
                        disagrees(&outcome.answer, &expected_text)
                    ))
                }
            }
            None => Ok(outcome),
        });
        self.finish(result)
    }

    fn on_judge(&mut self, responses: Vec<ModelResponse>) -> Poll<Result<VoteOutcome, String>> {
        let Phase::Judge { groups, attempt } = std::mem::replace(&mut self.phase, Phase::Finished) else {
            return self.finish(Err("judge reply out of order".into()));
        };
        let text = match responses.into_iter().next() {
            Some(Ok(reply)) => reply.texts.into_iter().next().unwrap_or_default(),
            Some(Err(error)) => return self.finish(Err(format!("judge call failed: {error}"))),
            None => return self.finish(Err("no response to the judge request".into())),
        };
        match parse_pick(&text, groups.len()) {
            Ok(choice) => {
                let result = self.outcome_for(&groups, choice, None);
                self.finish(result)
            }
            Err(_) if attempt == 0 => self.ask_judge(groups, 1),
            Err(error) => self.finish(Err(format!("judge reply unparseable after a retry: {error}"))),
        }
    }

    /// Picks the winning group (largest; ties per `ties`) and checks the agreement.
    fn decide(&self, groups: &[Vec<usize>], vectors: Option<&[Vec<f32>]>) -> Result<VoteOutcome, String> {
        let winner = match answer::winner(groups) {
            None => return Err("no answers to vote on".into()),
            Some(Winner::Clear(index)) => index,
            Some(Winner::Tie(tied)) => match self.core.spec.ties {
                Ties::First => tied[0],
                Ties::Reject => {
                    let names: Vec<String> =
                        tied.iter().map(|&g| format!("`{}`", self.parsed[groups[g][0]].1)).collect();
                    return Err(format!(
                        "tie between {} ({} votes each of {})",
                        names.join(" and "),
                        groups[tied[0]].len(),
                        self.texts.len()
                    ));
                }
            },
        };
        self.outcome_for(groups, winner, vectors)
    }

    fn outcome_for(
        &self,
        groups: &[Vec<usize>],
        winner: usize,
        vectors: Option<&[Vec<f32>]>,
    ) -> Result<VoteOutcome, String> {
        let representative = |group: &[usize]| match vectors {
            Some(vectors) => answer::medoid(group, vectors),
            None => group[0],
        };
        let mut histogram: Vec<(String, u32, usize)> =
            groups.iter().map(|g| (self.parsed[representative(g)].1.clone(), g.len() as u32, g[0])).collect();
        histogram.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let chosen = representative(&groups[winner]);
        let (sample, answer) = self.parsed[chosen].clone();
        let votes = groups[winner].len();
        let agreement = votes as f64 / self.texts.len() as f64;
        let histogram: Vec<(String, u32)> = histogram.into_iter().map(|(a, v, _)| (a, v)).collect();
        if agreement < self.core.spec.min_agreement {
            let summary: Vec<String> = histogram.iter().map(|(a, v)| format!("`{a}`: {v}")).collect();
            return Err(format!(
                "agreement {agreement:.2} below min_agreement {} (votes {}, {} of {} samples parsed)",
                self.core.spec.min_agreement,
                summary.join(", "),
                self.parsed.len(),
                self.texts.len()
            ));
        }
        Ok(VoteOutcome {
            response: self.texts[sample].clone(),
            answer,
            agreement,
            histogram,
            samples: self.texts.len() as u32,
            parsed: self.parsed.len() as u32,
            model: self.model.clone(),
        })
    }
}

fn disagrees(winner: &str, expected: &str) -> String {
    format!("the vote's answer {} disagrees with the expected answer {}", preview(winner), preview(expected))
}

impl RowTask for VoteTask {
    type Out = Result<VoteOutcome, String>;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Self::Out> {
        match self.phase {
            Phase::Sample if responses.is_empty() && self.texts.is_empty() => Poll::Need(vec![self.sample_request()]),
            Phase::Sample => self.on_samples(responses),
            Phase::Embed => self.on_embeddings(responses),
            Phase::Judge { .. } => self.on_judge(responses),
            Phase::Finished => Poll::Done(Err("the vote already finished".into())),
        }
    }
}

/// The `vote` operator. See the module docs.
#[derive(Debug)]
pub struct Vote {
    core: Arc<VoteCore>,
    pending: PendingTasks<RowOrReject<VoteTask>>,
}

impl Vote {
    pub fn new(spec: VoteSpec) -> Result<Self, OpError> {
        Ok(Vote { core: Arc::new(VoteCore::new(spec)?), pending: PendingTasks::default() })
    }

    fn emit(&self, batch: RecordBatch, results: Vec<Result<VoteOutcome, String>>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let (keep, rejects, outcomes) = split_results(results);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(|o| o.response.as_str()))),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(|o| o.answer.as_str()))),
            Arc::new(Float64Array::from_iter_values(outcomes.iter().map(|o| o.agreement))),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(VoteOutcome::histogram_json))),
            Arc::new(UInt32Array::from_iter_values(outcomes.iter().map(|o| o.samples))),
            Arc::new(UInt32Array::from_iter_values(outcomes.iter().map(|o| o.parsed))),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(|o| o.model.as_str()))),
        ];
        Ok(Output { rows: annotate(&batch, &keep, &schema, columns)?, rejects })
    }
}

impl Operator for Vote {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        self.core.check_schema(input)?;
        Ok(annotated_schema(input, &self.core.fields()))
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
            let expected = self.core.spec.expected.as_deref().and_then(|column| text_cell(&batch, column, row));
            if self.core.spec.expected.is_some() && expected.is_none() {
                tasks.push(RowOrReject::Rejected("the expected answer is null".into()));
                continue;
            }
            match self.core.messages(&batch, row, None) {
                Ok(messages) => tasks.push(RowOrReject::Run(Box::new(VoteTask::new(
                    Arc::clone(&self.core),
                    row,
                    ids.value(row),
                    messages,
                    expected,
                    "",
                )))),
                Err(reason) => tasks.push(RowOrReject::Rejected(reason)),
            }
        }
        let advance = self.pending.start(pending, batch, tasks)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn resume(&mut self, pending: PendingId, responses: Vec<ModelResponse>) -> Result<Step, OpError> {
        let advance = self.pending.resume(pending, responses)?;
        advance.into_step(|batch, results| self.emit(batch, results))
    }

    fn endpoints(&self) -> Vec<String> {
        self.core.endpoints()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{drive, embeddings, floats, reply, string_batch, strings, user_text};

    fn spec(settings: serde_json::Value) -> VoteSpec {
        let mut base = serde_json::json!({"model": "teacher", "prompt": "{{ question }}"});
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn questions(n: usize) -> RecordBatch {
        let ids: Vec<String> = (0..n).map(|i| format!("q{i}")).collect();
        let texts: Vec<String> = (0..n).map(|i| format!("question {i}")).collect();
        string_batch(&[
            ("id", ids.iter().map(|s| Some(s.as_str())).collect()),
            ("question", texts.iter().map(|s| Some(s.as_str())).collect()),
        ])
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn majority_wins_with_a_consistent_response_histogram_and_agreement() {
        let mut vote = Vote::new(spec(serde_json::json!({"n": 8}))).unwrap();
        let samples = texts(&[
            "so it is 41\n#### 41",
            "first try: 40... no. #### 42",
            "#### 42",
            "I think \\boxed{42}",
            "no idea",
            "#### 41",
            "<answer>42</answer>",
            "#### 42.",
        ]);
        let (out, calls) = drive(&mut vote, questions(1), |request| {
            assert_eq!(request.sampling.n, 8);
            assert_eq!(request.sampling.temperature, Some(0.8));
            assert!(request.sampling.seed.is_some());
            reply(samples.clone())
        });
        assert_eq!(calls, 1);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(strings(rows, "answer"), [Some("42".to_string())]);
        let response = strings(rows, "response")[0].clone().unwrap();
        assert_eq!(response, "first try: 40... no. #### 42", "the first sample whose answer won");
        assert_eq!(floats(rows, "agreement"), [Some(5.0 / 8.0)]);
        let histogram: serde_json::Value = serde_json::from_str(strings(rows, "votes")[0].as_deref().unwrap()).unwrap();
        assert_eq!(histogram, serde_json::json!([{"answer": "42", "votes": 5}, {"answer": "41", "votes": 2}]));
        let parsed = rows.column_by_name(VOTE_PARSED).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(parsed.value(0), 7);
    }

    #[test]
    fn thousands_separators_and_fractions_vote_together() {
        let mut vote = Vote::new(spec(serde_json::json!({"n": 4}))).unwrap();
        let (out, _) = drive(&mut vote, questions(2), |request| {
            if user_text(request) == "question 0" {
                reply(texts(&["#### 1,000", "#### 1000", "\\boxed{1000}", "#### 999"]))
            } else {
                reply(texts(&["\\boxed{\\frac{1}{2}}", "#### 0.5", "#### 1/2", "#### 2"]))
            }
        });
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(floats(&out.rows, "agreement"), [Some(0.75), Some(0.75)]);
        assert_eq!(strings(&out.rows, "answer"), [Some("1,000".to_string()), Some("\\frac{1}{2}".to_string())]);
    }

    #[test]
    fn ties_are_rejected_unless_first_is_asked() {
        let samples = texts(&["#### 1", "#### 2", "#### 2", "#### 1"]);
        let mut vote = Vote::new(spec(serde_json::json!({"n": 4}))).unwrap();
        let (out, _) = drive(&mut vote, questions(1), |_| reply(samples.clone()));
        assert_eq!(out.rows.num_rows(), 0);
        assert_eq!(out.rejects.len(), 1);
        assert!(out.rejects[0].reason.starts_with("tie between `1` and `2` (2 votes each of 4)"), "{:?}", out.rejects);

        let mut vote = Vote::new(spec(serde_json::json!({"n": 4, "ties": "first"}))).unwrap();
        let (out, _) = drive(&mut vote, questions(1), |_| reply(samples.clone()));
        assert_eq!(strings(&out.rows, "answer"), [Some("1".to_string())]);
        assert_eq!(strings(&out.rows, "response"), [Some("#### 1".to_string())]);
    }

    #[test]
    fn unparseable_low_agreement_and_failed_calls_become_rejects_without_aborting() {
        let mut vote =
            Vote::new(spec(serde_json::json!({"n": 4, "min_agreement": 0.75, "answer": {"tag": "answer"}}))).unwrap();
        let (out, _) = drive(&mut vote, questions(4), |request| match user_text(request).as_str() {
            "question 0" => reply(texts(&["<answer>7</answer>", "#### 7", "7", "<answer>7"])),
            "question 1" => reply(texts(&["<answer>7</answer>", "<answer>7</answer>", "<answer>8</answer>", "x"])),
            "question 2" => Err("server error 500 after 5 attempts".into()),
            _ => reply(texts(&["<answer>9</answer>"; 4])),
        });
        assert_eq!(strings(&out.rows, "id"), [Some("q3".to_string())]);
        let reasons: Vec<(usize, &str)> = out.rejects.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert_eq!(reasons[0], (0, "only 1 of 4 samples had a parseable answer (a vote needs 2)"));
        assert!(
            reasons[1].1.starts_with("agreement 0.50 below min_agreement 0.75 (votes `7`: 2, `8`: 1"),
            "{reasons:?}"
        );
        assert!(reasons[2].1.contains("model call failed: server error 500"), "{reasons:?}");
    }

    #[test]
    fn semantic_votes_cluster_embeddings_and_return_the_medoid() {
        let mut vote = Vote::new(spec(serde_json::json!({
            "n": 5, "compare": {"method": "semantic", "model": "embedder", "threshold": 0.9}
        })))
        .unwrap();
        let answers = texts(&["Paris", "It is Paris.", "Lyon", "The capital is Paris", "Marseille"]);
        let (out, calls) = drive(&mut vote, questions(1), |request| match &request.prompt {
            Prompt::Embed(inputs) => {
                assert_eq!(request.endpoint, "embedder");
                assert_eq!(inputs, &answers, "whole responses are embedded when no extractor is set");
                embeddings(vec![
                    vec![1.0, 0.0, 0.0],
                    vec![0.99, 0.141, 0.0],
                    vec![0.0, 1.0, 0.0],
                    vec![0.99, -0.141, 0.0],
                    vec![0.0, 0.0, 1.0],
                ])
            }
            _ => reply(answers.clone()),
        });
        assert_eq!(calls, 2);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(strings(&out.rows, "response"), [Some("Paris".to_string())], "the medoid of the Paris cluster");
        assert_eq!(floats(&out.rows, "agreement"), [Some(0.6)]);
        assert_eq!(vote.endpoints(), ["teacher", "embedder"]);
    }

    #[test]
    fn judge_picks_among_distinct_candidates_and_is_retried_once() {
        let settings =
            serde_json::json!({"n": 4, "min_agreement": 0.25, "compare": {"method": "judge", "model": "judge"}});
        let mut vote = Vote::new(spec(settings.clone())).unwrap();
        let samples = texts(&["#### 12", "#### 12", "#### 13", "#### 12.0"]);
        let mut judged = Vec::new();
        let (out, calls) = drive(&mut vote, questions(1), |request| {
            if request.endpoint == "judge" {
                judged.push(user_text(request));
                reply(texts(&["{\"choice\": 2}"]))
            } else {
                reply(samples.clone())
            }
        });
        assert_eq!(calls, 2);
        assert!(judged[0].contains("1. 12\n2. 13"), "{judged:?}");
        assert_eq!(strings(&out.rows, "answer"), [Some("13".to_string())]);
        assert_eq!(strings(&out.rows, "response"), [Some("#### 13".to_string())]);
        assert_eq!(floats(&out.rows, "agreement"), [Some(0.25)]);

        let mut vote = Vote::new(spec(settings)).unwrap();
        let mut judge_calls = 0;
        let (out, calls) = drive(&mut vote, questions(1), |request| {
            if request.endpoint == "judge" {
                judge_calls += 1;
                reply(texts(&["I prefer the first."]))
            } else {
                reply(samples.clone())
            }
        });
        assert_eq!((calls, judge_calls), (3, 2));
        assert!(out.rejects[0].reason.starts_with("judge reply unparseable after a retry"), "{:?}", out.rejects);
    }

    #[test]
    fn unanimous_answers_skip_the_judge() {
        let settings = serde_json::json!({"n": 3, "compare": {"method": "judge", "model": "judge"}});
        let mut vote = Vote::new(spec(settings)).unwrap();
        let (out, calls) = drive(&mut vote, questions(1), |request| {
            assert_ne!(request.endpoint, "judge");
            reply(texts(&["#### 5", "#### 5", "#### 5"]))
        });
        assert_eq!(calls, 1);
        assert_eq!(floats(&out.rows, "agreement"), [Some(1.0)]);
    }

    #[test]
    fn the_winner_must_match_the_expected_column() {
        let mut vote = Vote::new(spec(serde_json::json!({"n": 3, "expected": "answer"}))).unwrap();
        let batch = string_batch(&[
            ("id", vec![Some("a"), Some("b"), Some("c")]),
            ("question", vec![Some("x"), Some("y"), Some("z")]),
            ("answer", vec![Some("The total is 1,200."), Some("#### 7"), None]),
        ]);
        let (out, _) = drive(&mut vote, batch, |request| match user_text(request).as_str() {
            "x" => reply(texts(&["#### 1200", "#### 1200", "#### 3"])),
            _ => reply(texts(&["#### 8", "#### 8", "#### 8"])),
        });
        assert_eq!(strings(&out.rows, "id"), [Some("a".to_string())]);
        assert_eq!(strings(&out.rows, "answer"), [Some("1200".to_string())], "the vote's answer replaces the column");
        assert_eq!(out.rejects.len(), 2);
        assert!(out.rejects[0].reason.contains("disagrees with the expected answer"), "{:?}", out.rejects);
        assert_eq!(out.rejects[1].reason, "the expected answer is null");
    }

    #[test]
    fn settings_that_cannot_vote_are_refused() {
        for (settings, key) in [
            (serde_json::json!({"temperature": 0.0}), "temperature"),
            (serde_json::json!({"n": 1}), "n"),
            (serde_json::json!({"min_agreement": 1.5}), "min_agreement"),
            (serde_json::json!({"expected": "a", "compare": {"method": "judge", "model": "j"}}), "expected"),
            (serde_json::json!({"columns": {"answer": "id"}}), "columns"),
        ] {
            let err = Vote::new(spec(settings)).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = serde_json::from_value::<VoteSpec>(serde_json::json!({"model": "m", "temprature": 1.0})).unwrap_err();
        assert!(err.to_string().contains("temprature"), "{err}");
        let vote = Vote::new(spec(serde_json::json!({}))).unwrap();
        let input = questions(1).schema();
        let out = vote.output_schema(&input).unwrap();
        let names: Vec<&str> = out.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["id", "question", "response", "answer", "agreement", "votes", VOTE_SAMPLES, VOTE_PARSED, VOTE_MODEL]
        );
        let no_question = string_batch(&[("id", vec![Some("a")])]).schema();
        assert!(vote.output_schema(&no_question).is_err());
    }

    /// SplitMix64 for the simulation.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Runs the simulation with `settings` and returns (right answers, rows kept, samples asked).
    fn simulate(settings: serde_json::Value, questions_count: usize) -> (usize, usize, u64) {
        let mut vote = Vote::new(spec(settings)).unwrap();
        let mut asked = 0u64;
        let right = |q: usize| (q * 7919 % 1000) as i64;
        let (out, _) = drive(&mut vote, questions(questions_count), |request| {
            let q: usize = user_text(request).trim_start_matches("question ").parse().unwrap();
            let mut state = request.sampling.seed.unwrap();
            asked += u64::from(request.sampling.n);
            let samples = (0..request.sampling.n)
                .map(|_| {
                    let draw = splitmix(&mut state);
                    let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
                    let value = if unit < 0.6 { right(q) } else { right(q) + 1 + (splitmix(&mut state) % 4) as i64 };
                    format!("Let me think. The result is {value}.\n#### {value}")
                })
                .collect();
            reply(samples)
        });
        assert_eq!(out.rows.num_rows() + out.rejects.len(), questions_count);
        let ids = strings(&out.rows, "id");
        let answers = strings(&out.rows, "answer");
        let correct = ids
            .iter()
            .zip(&answers)
            .filter(|(id, answer)| {
                let q: usize = id.as_deref().unwrap()[1..].parse().unwrap();
                answer.as_deref() == Some(right(q).to_string().as_str())
            })
            .count();
        (correct, ids.len(), asked)
    }

    /// A noisy model: right 60% of the time, wrong answers spread over 4 values; n = 8; 1,000 questions.
    /// Plurality at a fixed n = 8 cannot reach 95% here (its Bayes limit is about 93%: ties and 3-vs-3 splits
    /// are coin flips), so the vote escalates inconclusive questions to at most 16 samples.
    #[test]
    fn simulated_noisy_model_votes_pick_the_right_answer_for_95_percent() {
        let total = 1000;
        let base = serde_json::json!({"n": 8, "seed": 2024, "ties": "first", "min_agreement": 0.0});
        let (fixed, _, fixed_asked) = simulate(base.clone(), total);
        let mut adaptive = base.clone();
        adaptive["escalate"] = serde_json::json!({"max_n": 16, "step": 4, "below": 0.5});
        let (right, kept, asked) = simulate(adaptive, total);
        let (strict_right, strict_kept, _) = simulate(serde_json::json!({"n": 8, "seed": 2024}), total);
        println!(
            "vote simulation (p=0.6, 4 wrong values, 1000 questions): n=8 plurality {fixed}/{total} right \
             ({:.1} samples/question); n=8 escalating to 16: {right}/{total} right ({:.2} samples/question); \
             defaults (min_agreement 0.5, ties rejected): {strict_kept} kept, {strict_right} of them right",
            fixed_asked as f64 / total as f64,
            asked as f64 / total as f64
        );
        assert_eq!(kept, total);
        assert!(right as f64 >= 0.95 * total as f64, "escalating vote: only {right}/{total}");
        assert!(fixed as f64 >= 0.90 * total as f64, "plurality: only {fixed}/{total}");
        assert!(strict_right as f64 >= 0.98 * strict_kept as f64, "defaults: {strict_right}/{strict_kept}");
    }

    #[test]
    fn escalation_asks_more_samples_only_while_inconclusive() {
        let settings = serde_json::json!({"n": 4, "escalate": {"max_n": 8, "step": 2}});
        let mut vote = Vote::new(spec(settings)).unwrap();
        let mut sizes = Vec::new();
        let (out, calls) = drive(&mut vote, questions(2), |request| {
            sizes.push((user_text(request), request.sampling.n, request.sampling.seed));
            match (user_text(request).as_str(), request.sampling.n) {
                ("question 0", 4) => reply(texts(&["#### 1", "#### 2", "#### 1", "#### 2"])),
                ("question 0", _) => reply(texts(&["#### 2", "#### 2"])),
                _ => reply(texts(&["#### 5", "#### 5", "#### 5", "#### 6"])),
            }
        });
        assert_eq!(calls, 2);
        assert_eq!(sizes.iter().filter(|(q, _, _)| q == "question 0").map(|(_, n, _)| *n).collect::<Vec<_>>(), [4, 2]);
        assert_ne!(sizes[0].2, sizes[2].2, "an escalation is a new request, not a cache hit");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(strings(&out.rows, "answer"), [Some("2".to_string()), Some("5".to_string())]);
        assert_eq!(floats(&out.rows, "agreement"), [Some(4.0 / 6.0), Some(0.75)]);
    }
}
