//! The self-consistency vote shared by `vote` and `rewrite`: [`VoteSpec`], [`VoteCore`] and the row task [`VoteTask`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use minijinja::value::Value;
use serde::Deserialize;

use crate::answer::{self, AnswerSpec, Normalized, Winner};
use crate::columns::ID;
use crate::compare::{Comparator, CompareSpec, Method, parse_pick, preview, read_answer};
use crate::model::{ChatMessage, ModelRequest, ModelResponse, Prompt, Sampling};
use crate::prompt::ChatTemplate;
use crate::task::{Poll, RowTask, derive_seed};
use crate::{OpError, require_column};

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
