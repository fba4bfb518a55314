//! `score`: measures how hard a question is for the target ("student") model. The student answers `k` times
//! at a temperature above zero; each answer is compared with the reference answer by the `compare` method
//! (see [`crate::compare`]), and the pass rate (correct / k, pass@k-style sampling) sorts the row into
//! `solved`, `learnable` or `unsolved` by the configured bands.
//!
//! Student samples without a parseable answer count as wrong. A row goes to rejects when its reference is
//! null, the student's call fails, or the judge's reply does not parse after a retry.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::ID;
use crate::model::{ModelResponse, PendingId, Step};
use crate::prompt::text_cell;
use crate::task::{PendingTasks, RowOrReject, annotate, annotated_schema, split_results};
use crate::verify_score::{ScoreCore, ScoreOutcome, ScoreTask, answers_column};
use crate::{OpError, Operator, Output, Shape, require_column, string_column};

pub use crate::verify_score::{Bands, Category, ScoreColumns, ScoreSpec};

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

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `score` (paths relative to the repository's `configs/`; `sdg kinds score`).
pub const EXAMPLE: &str = r#"# A teacher writes one question and its short answer about each glossary entry, as structured output;
# the student answers each 4 times: its pass rate makes the row solved, learnable or unsolved.
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
  - {id: out, kind: sink, input: scored}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Prompt;
    use crate::testing::{drive, embeddings, floats, reply, string_batch, strings, user_text};
    use crate::verify_score::STUDENT_ANSWERS;

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
