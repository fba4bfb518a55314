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
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::ID;
use crate::model::{ModelResponse, PendingId, Step};
use crate::prompt::text_cell;
use crate::task::{PendingTasks, RowOrReject, annotate, annotated_schema, split_results};
use crate::verify_vote::{VoteCore, VoteOutcome, VoteTask};
use crate::{OpError, Operator, Output, Shape, require_column, string_column};

pub use crate::verify_vote::{Escalate, Ties, VoteColumns, VoteSpec};

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

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `vote` (paths relative to the repository's `configs/`; `sdg kinds vote`).
pub const EXAMPLE: &str = r#"# A teacher writes one question and its short answer about each glossary entry, as structured output;
# the teacher answers each question 4 times, and a row is kept when 3 answers agree with its answer.
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
  - {id: verified, kind: vote, input: qa, model: teacher, n: 4, min_agreement: 0.75}
  - {id: out, kind: sink, input: verified}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Prompt;
    use crate::testing::{drive, embeddings, floats, reply, string_batch, strings, user_text};
    use crate::verify_vote::{VOTE_MODEL, VOTE_PARSED, VOTE_SAMPLES};

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
