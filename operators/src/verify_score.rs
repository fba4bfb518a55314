//! The student pass rate shared by `score` and `rewrite`: [`ScoreSpec`], [`ScoreCore`] and the row task [`ScoreTask`].

use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use minijinja::value::Value;
use serde::Deserialize;

use crate::answer::{self, AnswerSpec};
use crate::columns::ID;
use crate::compare::{Comparator, CompareSpec, Method, parse_matches, read_answer};
use crate::model::{ChatMessage, ModelRequest, ModelResponse, Prompt, Sampling};
use crate::prompt::ChatTemplate;
use crate::task::{Poll, RowTask, derive_seed};
use crate::verify_vote::DEFAULT_PROMPT;
use crate::{OpError, require_column};

/// Settings of a `score` node.
///
/// ```yaml
/// score:
///   model: student            # the target model: any endpoint, local or HTTP
///   prompt: "{{ question }}"  # minijinja over input columns (default: the vote's prompt)
///   k: 8                      # student samples per question
///   temperature: 0.7          # > 0 when k > 1
///   reference: answer         # column holding the reference answer
///   answer: {marker: "####"}  # how to find the student's answer (default chain)
///   compare: {method: exact}  # or semantic / judge, as for vote
///   bands: {unsolved_max: 0.0, solved_min: 1.0}   # pass rate <= unsolved_max: unsolved; >= solved_min: solved
///   keep_answers: false       # also write the student's answers (list column `student_answers`)
///   seed: 7
///   columns: {pass_rate: pass_rate, category: category}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    pub model: String,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_k")]
    pub k: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_reference")]
    pub reference: String,
    #[serde(default)]
    pub answer: Option<AnswerSpec>,
    #[serde(default)]
    pub compare: CompareSpec,
    #[serde(default)]
    pub bands: Bands,
    #[serde(default)]
    pub keep_answers: bool,
    #[serde(default)]
    pub columns: ScoreColumns,
}

fn default_prompt() -> String {
    DEFAULT_PROMPT.to_string()
}

fn default_k() -> u32 {
    8
}

fn default_temperature() -> f32 {
    0.7
}

fn default_reference() -> String {
    "answer".to_string()
}

/// Pass-rate bounds of the categories.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Bands {
    /// At or below: `unsolved`.
    pub unsolved_max: f64,
    /// At or above: `solved`.
    pub solved_min: f64,
}

impl Default for Bands {
    fn default() -> Self {
        Bands { unsolved_max: 0.0, solved_min: 1.0 }
    }
}

impl Bands {
    pub fn category(&self, pass_rate: f64) -> Category {
        if pass_rate <= self.unsolved_max {
            Category::Unsolved
        } else if pass_rate >= self.solved_min {
            Category::Solved
        } else {
            Category::Learnable
        }
    }
}

/// Where a question falls for the student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Solved,
    Learnable,
    Unsolved,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Solved => "solved",
            Category::Learnable => "learnable",
            Category::Unsolved => "unsolved",
        }
    }
}

/// Names of the columns a score writes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreColumns {
    pub pass_rate: String,
    pub category: String,
}

impl Default for ScoreColumns {
    fn default() -> Self {
        ScoreColumns { pass_rate: "pass_rate".into(), category: "category".into() }
    }
}

/// Student samples asked and the student's reported model name.
pub const SCORE_K: &str = "score_k";
pub const SCORE_MODEL: &str = "score_model";
/// The student's extracted answers (null where none was found), with `keep_answers`.
pub const STUDENT_ANSWERS: &str = "student_answers";

/// What a score measured for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutcome {
    pub pass_rate: f64,
    pub correct: u32,
    pub k: u32,
    pub category: Category,
    pub answers: Vec<Option<String>>,
    pub model: String,
}

/// The checked settings of a score, shared by every row task (and by `rewrite`).
#[derive(Debug)]
pub struct ScoreCore {
    pub spec: ScoreSpec,
    template: ChatTemplate,
    comparator: Comparator,
}

impl ScoreCore {
    pub fn new(spec: ScoreSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.k == 0 {
            return Err(OpError::setting("k", "must be at least 1"));
        }
        if !(spec.temperature.is_finite() && spec.temperature >= 0.0) || (spec.k > 1 && spec.temperature == 0.0) {
            return Err(OpError::setting(
                "temperature",
                format!("{} must be > 0 when k > 1: identical samples measure nothing", spec.temperature),
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
        let Bands { unsolved_max, solved_min } = spec.bands;
        if !(0.0..=1.0).contains(&unsolved_max) || !(0.0..=1.0).contains(&solved_min) || unsolved_max >= solved_min {
            return Err(OpError::setting(
                "bands",
                format!("need 0 <= unsolved_max < solved_min <= 1, found {unsolved_max} and {solved_min}"),
            ));
        }
        let c = &spec.columns;
        if c.pass_rate.is_empty() || c.category.is_empty() || c.pass_rate == c.category || c.pass_rate == ID {
            return Err(OpError::setting("columns", "needs two distinct, non-empty names other than `id`"));
        }
        let template = ChatTemplate::new(spec.system.as_deref(), &spec.prompt, &[], "")?;
        let comparator = Comparator::new(spec.compare.clone(), false)?;
        Ok(ScoreCore { spec, template, comparator })
    }

    /// The student's prompt for one row; `question` overrides the column of that name (rewrite).
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

    pub fn check_schema(&self, input: &arrow::datatypes::Schema, check_reference: bool) -> Result<(), OpError> {
        self.template.check_schema(input, "a variable of the score's `prompt` or `system` template")?;
        if check_reference {
            require_column(input, &self.spec.reference, &DataType::Utf8)?;
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

    fn answer_of(&self, text: &str) -> Option<String> {
        read_answer(self.spec.answer.as_ref(), self.spec.compare.method, text)
    }

    pub(crate) fn fields(&self) -> Vec<Field> {
        let mut fields = vec![
            Field::new(&self.spec.columns.pass_rate, DataType::Float64, false),
            Field::new(&self.spec.columns.category, DataType::Utf8, false),
            Field::new(SCORE_K, DataType::UInt32, false),
            Field::new(SCORE_MODEL, DataType::Utf8, false),
        ];
        if self.spec.keep_answers {
            fields.push(Field::new(
                STUDENT_ANSWERS,
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                false,
            ));
        }
        fields
    }
}

enum Phase {
    Sample,
    Embed,
    Judge { attempt: u32 },
    Finished,
}

/// One question's score, as a task.
pub struct ScoreTask {
    core: Arc<ScoreCore>,
    row: usize,
    id: String,
    messages: Vec<ChatMessage>,
    /// The reference answer (extracted when it is a full response).
    reference: String,
    phase: Phase,
    answers: Vec<Option<String>>,
    model: String,
}

impl ScoreTask {
    /// A score of `messages` against `reference` for row `row`; `salt` separates seeds of rewrite rounds.
    pub fn new(
        core: Arc<ScoreCore>,
        row: usize,
        id: &str,
        messages: Vec<ChatMessage>,
        reference: &str,
        salt: &str,
    ) -> Self {
        let reference = core.answer_of(reference).unwrap_or_else(|| reference.trim().to_string());
        ScoreTask {
            core,
            row,
            id: format!("{id}\u{0}{salt}"),
            messages,
            reference,
            phase: Phase::Sample,
            answers: Vec::new(),
            model: String::new(),
        }
    }

    fn finish(&mut self, result: Result<ScoreOutcome, String>) -> Poll<Result<ScoreOutcome, String>> {
        self.phase = Phase::Finished;
        Poll::Done(result)
    }

    fn outcome(&self, verdicts: &[bool]) -> ScoreOutcome {
        let k = self.answers.len() as u32;
        let correct = verdicts.iter().filter(|&&v| v).count() as u32;
        let pass_rate = if k == 0 { 0.0 } else { f64::from(correct) / f64::from(k) };
        ScoreOutcome {
            pass_rate,
            correct,
            k,
            category: self.core.spec.bands.category(pass_rate),
            answers: self.answers.clone(),
            model: self.model.clone(),
        }
    }

    /// The parsed answers, with their sample indices.
    fn parsed(&self) -> Vec<(usize, String)> {
        self.answers.iter().enumerate().filter_map(|(i, a)| a.clone().map(|a| (i, a))).collect()
    }

    fn judge(&mut self, attempt: u32) -> Poll<Result<ScoreOutcome, String>> {
        let parsed: Vec<String> = self.parsed().into_iter().map(|(_, a)| a).collect();
        let question = self.messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
        let seed = derive_seed(self.core.spec.seed, &self.id, &format!("judge{attempt}"));
        match self.core.comparator.match_request(question, &self.reference, &parsed, self.row, seed) {
            Ok(request) => {
                self.phase = Phase::Judge { attempt };
                Poll::Need(vec![request])
            }
            Err(error) => self.finish(Err(format!("judge prompt: {error}"))),
        }
    }

    fn on_samples(&mut self, responses: Vec<ModelResponse>) -> Poll<Result<ScoreOutcome, String>> {
        let reply = match responses.into_iter().next() {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return self.finish(Err(format!("student call failed: {error}"))),
            None => return self.finish(Err("no response to the student's request".into())),
        };
        self.model = reply.model;
        self.answers = reply.texts.iter().map(|t| self.core.answer_of(t)).collect();
        let parsed = self.parsed();
        if parsed.is_empty() {
            let outcome = self.outcome(&[]);
            return self.finish(Ok(outcome));
        }
        match self.core.spec.compare.method {
            Method::Exact => {
                let reference = answer::normalize(&self.reference);
                let tolerance = self.core.spec.compare.tolerance;
                let verdicts: Vec<bool> = parsed
                    .iter()
                    .map(|(_, a)| answer::equivalent(&answer::normalize(a), &reference, tolerance))
                    .collect();
                let outcome = self.outcome(&verdicts);
                self.finish(Ok(outcome))
            }
            Method::Semantic => {
                let mut texts = vec![self.reference.clone()];
                texts.extend(parsed.into_iter().map(|(_, a)| a));
                self.phase = Phase::Embed;
                Poll::Need(vec![self.core.comparator.embed_request(texts, self.row)])
            }
            Method::Judge => self.judge(0),
        }
    }

    fn on_embeddings(&mut self, responses: Vec<ModelResponse>) -> Poll<Result<ScoreOutcome, String>> {
        let reply = match responses.into_iter().next() {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return self.finish(Err(format!("embedding call failed: {error}"))),
            None => return self.finish(Err("no response to the embedding request".into())),
        };
        let wanted = self.parsed().len() + 1;
        if reply.embeddings.len() != wanted {
            return self
                .finish(Err(format!("the embedder returned {} vectors for {wanted} texts", reply.embeddings.len())));
        }
        let threshold = self.core.spec.compare.threshold;
        let verdicts: Vec<bool> =
            reply.embeddings[1..].iter().map(|v| answer::cosine(v, &reply.embeddings[0]) >= threshold).collect();
        let outcome = self.outcome(&verdicts);
        self.finish(Ok(outcome))
    }

    fn on_judge(&mut self, attempt: u32, responses: Vec<ModelResponse>) -> Poll<Result<ScoreOutcome, String>> {
        let text = match responses.into_iter().next() {
            Some(Ok(reply)) => reply.texts.into_iter().next().unwrap_or_default(),
            Some(Err(error)) => return self.finish(Err(format!("judge call failed: {error}"))),
            None => return self.finish(Err("no response to the judge request".into())),
        };
        match parse_matches(&text, self.parsed().len()) {
            Ok(verdicts) => {
                let outcome = self.outcome(&verdicts);
                self.finish(Ok(outcome))
            }
            Err(_) if attempt == 0 => self.judge(1),
            Err(error) => self.finish(Err(format!("judge reply unparseable after a retry: {error}"))),
        }
    }

    fn sample_request(&self) -> ModelRequest {
        let spec = &self.core.spec;
        ModelRequest {
            endpoint: spec.model.clone(),
            prompt: Prompt::Chat(self.messages.clone()),
            sampling: Sampling {
                n: spec.k,
                temperature: Some(spec.temperature),
                top_p: spec.top_p,
                max_tokens: spec.max_tokens,
                seed: Some(derive_seed(spec.seed, &self.id, "score")),
                ..Sampling::default()
            },
            row: self.row,
        }
    }
}

impl RowTask for ScoreTask {
    type Out = Result<ScoreOutcome, String>;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Self::Out> {
        match self.phase {
            Phase::Sample if responses.is_empty() && self.answers.is_empty() => Poll::Need(vec![self.sample_request()]),
            Phase::Sample => self.on_samples(responses),
            Phase::Embed => self.on_embeddings(responses),
            Phase::Judge { attempt } => self.on_judge(attempt, responses),
            Phase::Finished => Poll::Done(Err("the score already finished".into())),
        }
    }
}

/// The student's answers as a list column (null items where no answer was found).
pub fn answers_column(outcomes: &[&[Option<String>]]) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new()).with_field(Field::new_list_field(DataType::Utf8, true));
    for answers in outcomes {
        for answer in *answers {
            builder.values().append_option(answer.as_deref());
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}
