//! `score`: measures how hard a question is for the target ("student") model. The student answers `k` times
//! at a temperature above zero; each answer is compared with the reference answer by the `compare` method
//! (see [`crate::compare`]), and the pass rate (correct / k, pass@k-style sampling) sorts the row into
//! `solved`, `learnable` or `unsolved` by the configured bands.
//!
//! Student samples without a parseable answer count as wrong. A row goes to rejects when its reference is
//! null, the student's call fails, or the judge's reply does not parse after a retry.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, ListBuilder, StringArray, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use minijinja::value::Value;
use serde::Deserialize;

use crate::answer::{self, AnswerSpec};
use crate::columns::ID;
use crate::compare::{Comparator, CompareSpec, Method, parse_matches, read_answer};
use crate::model::{ChatMessage, ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::{ChatTemplate, text_cell};
use crate::task::{PendingTasks, Poll, RowOrReject, RowTask, annotate, annotated_schema, derive_seed, split_results};
use crate::vote::DEFAULT_PROMPT;
use crate::{OpError, Operator, Output, require_column, string_column};

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

/// The `score` operator. See the module docs.
#[derive(Debug)]
pub struct Score {
    core: Arc<ScoreCore>,
    pending: PendingTasks<RowOrReject<ScoreTask>>,
}

impl Score {
    pub fn new(spec: ScoreSpec) -> Result<Self, OpError> {
        Ok(Score { core: Arc::new(ScoreCore::new(spec)?), pending: PendingTasks::default() })
    }

    fn emit(&self, batch: RecordBatch, results: Vec<Result<ScoreOutcome, String>>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let (keep, rejects, outcomes) = split_results(results);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from_iter_values(outcomes.iter().map(|o| o.pass_rate))),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(|o| o.category.as_str()))),
            Arc::new(UInt32Array::from_iter_values(outcomes.iter().map(|o| o.k))),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(|o| o.model.as_str()))),
        ];
        if self.core.spec.keep_answers {
            let lists: Vec<&[Option<String>]> = outcomes.iter().map(|o| o.answers.as_slice()).collect();
            columns.push(answers_column(&lists));
        }
        Ok(Output { rows: annotate(&batch, &keep, &schema, columns)?, rejects })
    }
}

impl Operator for Score {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        self.core.check_schema(input, true)?;
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
            let Some(reference) = text_cell(&batch, &self.core.spec.reference, row) else {
                tasks.push(RowOrReject::Rejected(format!("the reference `{}` is null", self.core.spec.reference)));
                continue;
            };
            match self.core.messages(&batch, row, None) {
                Ok(messages) => tasks.push(RowOrReject::Run(Box::new(ScoreTask::new(
                    Arc::clone(&self.core),
                    row,
                    ids.value(row),
                    messages,
                    &reference,
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

    fn spec(settings: serde_json::Value) -> ScoreSpec {
        let mut base = serde_json::json!({"model": "student", "prompt": "{{ question }}"});
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pass_rate_and_category_come_from_matches_with_the_reference() {
        let mut score = Score::new(spec(serde_json::json!({"k": 4, "keep_answers": true}))).unwrap();
        let batch = string_batch(&[
            ("id", vec![Some("a"), Some("b"), Some("c"), Some("d")]),
            ("question", vec![Some("qa"), Some("qb"), Some("qc"), Some("qd")]),
            ("answer", vec![Some("Step 1... #### 1,000"), Some("0.5"), Some("7"), None]),
        ]);
        let (out, calls) = drive(&mut score, batch, |request| {
            assert_eq!(request.endpoint, "student");
            assert_eq!(request.sampling.n, 4);
            match user_text(request).as_str() {
                "qa" => reply(texts(&["#### 1000", "#### 1000", "\\boxed{1000}", "#### 1000.0"])),
                "qb" => reply(texts(&["\\boxed{\\frac{1}{2}}", "#### 1/3", "no answer here", "#### 0.50"])),
                _ => reply(texts(&["#### 8", "#### 9", "#### 8", "unsure"])),
            }
        });
        assert_eq!(calls, 1);
        assert_eq!(strings(&out.rows, "id"), ["a", "b", "c"].map(|s| Some(s.to_string())));
        assert_eq!(floats(&out.rows, "pass_rate"), [Some(1.0), Some(0.5), Some(0.0)]);
        assert_eq!(strings(&out.rows, "category"), ["solved", "learnable", "unsolved"].map(|s| Some(s.to_string())));
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].reason, "the reference `answer` is null");
        let answers = out.rows.column_by_name(STUDENT_ANSWERS).unwrap();
        let list = answers.as_any().downcast_ref::<arrow::array::ListArray>().unwrap();
        let second = list.value(1);
        let second = second.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(second.len(), 4);
        assert!(second.is_null(2), "an unparseable sample is a null answer");
    }

    #[test]
    fn semantic_and_judge_comparisons_and_failed_students() {
        let settings = serde_json::json!({
            "k": 3, "answer": {"marker": "####"}, "compare": {"method": "semantic", "model": "emb", "threshold": 0.9}
        });
        let mut score = Score::new(spec(settings)).unwrap();
        let batch =
            string_batch(&[("id", vec![Some("a")]), ("question", vec![Some("q")]), ("answer", vec![Some("Paris")])]);
        let (out, calls) = drive(&mut score, batch.clone(), |request| match &request.prompt {
            Prompt::Embed(inputs) => {
                assert_eq!(inputs, &texts(&["Paris", "Paris", "Lyon"]), "the reference first, then parsed answers");
                embeddings(vec![vec![1.0, 0.0], vec![0.995, 0.0998], vec![0.0, 1.0]])
            }
            _ => reply(texts(&["#### Paris", "#### Lyon", "I don't know"])),
        });
        assert_eq!(calls, 2);
        assert_eq!(floats(&out.rows, "pass_rate"), [Some(1.0 / 3.0)]);

        let settings = serde_json::json!({"k": 2, "compare": {"method": "judge", "model": "judge"}});
        let mut score = Score::new(spec(settings)).unwrap();
        let (out, _) = drive(&mut score, batch.clone(), |request| match request.endpoint.as_str() {
            "judge" => {
                assert!(user_text(request).contains("Reference answer: Paris"));
                reply(texts(&["{\"correct\": [true, true]}"]))
            }
            _ => reply(texts(&["#### paris, France", "#### Paris"])),
        });
        assert_eq!(strings(&out.rows, "category"), [Some("solved".to_string())]);

        let mut score = Score::new(spec(serde_json::json!({"k": 2}))).unwrap();
        let (out, _) = drive(&mut score, batch, |_| Err("timed out after 3 attempts".into()));
        assert_eq!(out.rows.num_rows(), 0);
        assert!(out.rejects[0].reason.starts_with("student call failed: timed out"), "{:?}", out.rejects);
    }

    #[test]
    fn bands_and_settings_are_checked() {
        let bands = Bands { unsolved_max: 0.2, solved_min: 0.8 };
        assert_eq!(bands.category(0.0), Category::Unsolved);
        assert_eq!(bands.category(0.2), Category::Unsolved);
        assert_eq!(bands.category(0.25), Category::Learnable);
        assert_eq!(bands.category(0.8), Category::Solved);
        for (settings, key) in [
            (serde_json::json!({"k": 0}), "k"),
            (serde_json::json!({"k": 4, "temperature": 0.0}), "temperature"),
            (serde_json::json!({"bands": {"unsolved_max": 0.6, "solved_min": 0.5}}), "bands"),
            (serde_json::json!({"columns": {"pass_rate": "x", "category": "x"}}), "columns"),
        ] {
            let err = Score::new(spec(settings)).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(Score::new(spec(serde_json::json!({"k": 1, "temperature": 0.0}))).is_ok(), "greedy pass@1 is fine");
        let score = Score::new(spec(serde_json::json!({}))).unwrap();
        let no_reference = string_batch(&[("id", vec![Some("a")]), ("question", vec![Some("q")])]).schema();
        let err = score.output_schema(&no_reference).unwrap_err();
        assert!(err.to_string().contains("answer"), "{err}");
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A student with a known accuracy per question; k = 8; bands 0.2 / 0.8. The true band of a question is
    /// its accuracy's band.
    #[test]
    fn simulated_student_lands_90_percent_of_questions_in_their_true_band() {
        let accuracies = [0.0, 0.02, 0.4, 0.5, 0.6, 0.98, 1.0];
        let count = 700;
        let bands = Bands { unsolved_max: 0.2, solved_min: 0.8 };
        let settings = serde_json::json!({"k": 8, "seed": 11, "bands": {"unsolved_max": 0.2, "solved_min": 0.8}});
        let mut score = Score::new(spec(settings)).unwrap();
        let ids: Vec<String> = (0..count).map(|i| format!("q{i}")).collect();
        let questions: Vec<String> = (0..count).map(|i| format!("{i}")).collect();
        let batch = string_batch(&[
            ("id", ids.iter().map(|s| Some(s.as_str())).collect()),
            ("question", questions.iter().map(|s| Some(s.as_str())).collect()),
            ("answer", vec![Some("42"); count]),
        ]);
        let (out, _) = drive(&mut score, batch, |request| {
            let q: usize = user_text(request).parse().unwrap();
            let accuracy = accuracies[q % accuracies.len()];
            let mut state = request.sampling.seed.unwrap();
            let samples = (0..request.sampling.n)
                .map(|_| {
                    let unit = (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                    if unit < accuracy {
                        "#### 42".to_string()
                    } else {
                        format!("#### {}", 43 + splitmix(&mut state) % 5)
                    }
                })
                .collect();
            reply(samples)
        });
        let categories = strings(&out.rows, "category");
        let right = (0..count)
            .filter(|&q| categories[q].as_deref() == Some(bands.category(accuracies[q % accuracies.len()]).as_str()))
            .count();
        println!("score simulation: {right}/{count} questions in their true band at k=8 (bands 0.2/0.8)");
        assert!(right as f64 >= 0.9 * count as f64, "{right}/{count}");
    }
}
