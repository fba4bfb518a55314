//! How answers are compared, shared by `vote` (which answers agree) and `score` (which student answers match
//! the reference): `exact` after normalization, `semantic` by embedding similarity, or `judge` by an LLM.
//!
//! This module builds the model requests of the `semantic` and `judge` methods and parses their replies; the
//! operators decide when to make them.

use minijinja::value::Value;
use serde::Deserialize;

use crate::OpError;
use crate::answer::{AnswerSpec, DEFAULT_TOLERANCE, extract};
use crate::json_extract::extract_json;
use crate::model::{ModelRequest, Prompt, Sampling};
use crate::prompt::ChatTemplate;

/// The comparison method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Normalized text equality, numbers within `tolerance`.
    #[default]
    Exact,
    /// Cosine similarity of embeddings (from `model`, an embedding endpoint) at least `threshold`.
    Semantic,
    /// An LLM (`model`) decides, answering with structured output.
    Judge,
}

/// `compare:` settings.
///
/// ```yaml
/// compare: {method: exact, tolerance: 1.0e-6}          # the default
/// compare: {method: semantic, model: embedder, threshold: 0.85}
/// compare: {method: judge, model: teacher}             # optional `prompt` template
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    #[serde(default)]
    pub method: Method,
    /// Relative tolerance for numbers: `|a - b| <= tolerance * max(1, |a|, |b|)`.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The embedding endpoint (`semantic`) or the judge's endpoint (`judge`).
    #[serde(default)]
    pub model: Option<String>,
    /// Least cosine similarity of two answers that count as the same (`semantic`).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Template of the judge's prompt (`judge`); see [`DEFAULT_PICK_PROMPT`] and [`DEFAULT_MATCH_PROMPT`].
    #[serde(default)]
    pub prompt: Option<String>,
}

fn default_tolerance() -> f64 {
    DEFAULT_TOLERANCE
}

fn default_threshold() -> f32 {
    0.85
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            method: Method::Exact,
            tolerance: DEFAULT_TOLERANCE,
            model: None,
            threshold: default_threshold(),
            prompt: None,
        }
    }
}

/// The judge's prompt when `vote` asks it to pick among distinct candidate answers.
pub const DEFAULT_PICK_PROMPT: &str = "Several solutions to the question below reached different final answers.\n\
Question:\n{{ question }}\n\nCandidate final answers:\n\
{% for c in candidates %}{{ loop.index }}. {{ c }}\n{% endfor %}\n\
Which candidate is correct? Reply with JSON only: {\"choice\": N}, where N is the candidate's number.";

/// The judge's prompt when `score` asks which student answers match the reference.
pub const DEFAULT_MATCH_PROMPT: &str = "Question:\n{{ question }}\n\nReference answer: {{ reference }}\n\n\
Student answers:\n{% for a in answers %}{{ loop.index }}. {{ a }}\n{% endfor %}\n\
For each student answer, in order, say whether it means the same as the reference answer. \
Reply with JSON only: {\"correct\": [true or false, one per student answer]}.";

/// The compiled comparator.
#[derive(Debug)]
pub struct Comparator {
    pub spec: CompareSpec,
    judge: Option<ChatTemplate>,
}

impl Comparator {
    /// Checks the settings; `pick` chooses the judge's default prompt (vote) over the match prompt (score).
    pub fn new(spec: CompareSpec, pick: bool) -> Result<Self, OpError> {
        if !(spec.tolerance.is_finite() && spec.tolerance >= 0.0) {
            return Err(OpError::setting("compare.tolerance", format!("{} is not a number >= 0", spec.tolerance)));
        }
        if !(spec.threshold > -1.0 && spec.threshold <= 1.0) {
            return Err(OpError::setting("compare.threshold", format!("{} is not in (-1, 1]", spec.threshold)));
        }
        let needs_model = spec.method != Method::Exact;
        match (&spec.model, needs_model) {
            (None, true) => {
                return Err(OpError::setting("compare.model", "names the endpoint this method calls; it is required"));
            }
            (Some(_), false) => {
                return Err(OpError::setting("compare.model", "`exact` calls no model; remove `model`"));
            }
            (Some(model), true) if model.trim().is_empty() => {
                return Err(OpError::setting("compare.model", "must name an endpoint"));
            }
            _ => {}
        }
        if spec.prompt.is_some() && spec.method != Method::Judge {
            return Err(OpError::setting("compare.prompt", "only the `judge` method has a prompt"));
        }
        let judge = if spec.method == Method::Judge {
            let (default, extras): (&str, &[&str]) = if pick {
                (DEFAULT_PICK_PROMPT, &["question", "candidates"])
            } else {
                (DEFAULT_MATCH_PROMPT, &["question", "reference", "answers"])
            };
            let template = ChatTemplate::new(None, spec.prompt.as_deref().unwrap_or(default), extras, "compare.")?;
            if let Some(column) = template.column_vars().first() {
                return Err(OpError::setting(
                    "compare.prompt",
                    format!("unknown variable `{column}`; the judge's prompt may use {}", extras.join(", ")),
                ));
            }
            Some(template)
        } else {
            None
        };
        Ok(Comparator { spec, judge })
    }

    /// The endpoint this comparator calls, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.spec.model.as_deref()
    }

    /// A request embedding `texts` (semantic method).
    pub fn embed_request(&self, texts: Vec<String>, row: usize) -> ModelRequest {
        ModelRequest {
            endpoint: self.spec.model.clone().unwrap_or_default(),
            prompt: Prompt::Embed(texts),
            sampling: Sampling { n: 1, ..Sampling::default() },
            row,
        }
    }

    /// A judge request to pick the correct one of `candidates` (vote).
    pub fn pick_request(
        &self,
        question: &str,
        candidates: &[String],
        row: usize,
        seed: u64,
    ) -> Result<ModelRequest, String> {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"choice": {"type": "integer", "minimum": 1, "maximum": candidates.len()}},
            "required": ["choice"],
            "additionalProperties": false,
        });
        self.judge_request(
            &[("question", Value::from(question)), ("candidates", Value::from(candidates.to_vec()))],
            schema,
            row,
            seed,
        )
    }

    /// A judge request asking which `answers` match `reference` (score).
    pub fn match_request(
        &self,
        question: &str,
        reference: &str,
        answers: &[String],
        row: usize,
        seed: u64,
    ) -> Result<ModelRequest, String> {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"correct": {
                "type": "array", "items": {"type": "boolean"},
                "minItems": answers.len(), "maxItems": answers.len()
            }},
            "required": ["correct"],
            "additionalProperties": false,
        });
        let vars = [
            ("question", Value::from(question)),
            ("reference", Value::from(reference)),
            ("answers", Value::from(answers.to_vec())),
        ];
        self.judge_request(&vars, schema, row, seed)
    }

    fn judge_request(
        &self,
        vars: &[(&str, Value)],
        schema: serde_json::Value,
        row: usize,
        seed: u64,
    ) -> Result<ModelRequest, String> {
        let template = self.judge.as_ref().ok_or("the judge method is not configured")?;
        let messages = template.render(None, vars)?;
        Ok(ModelRequest {
            endpoint: self.spec.model.clone().unwrap_or_default(),
            prompt: Prompt::Chat(messages),
            sampling: Sampling {
                n: 1,
                temperature: Some(0.0),
                max_tokens: Some(256),
                seed: Some(seed),
                json_schema: Some(schema),
                ..Sampling::default()
            },
            row,
        })
    }
}

/// The final answer in a response: by the configured extractors, else the default chain, except that
/// `semantic` compares whole responses when no extractor is configured.
pub fn read_answer(answer: Option<&AnswerSpec>, method: Method, text: &str) -> Option<String> {
    match (answer, method) {
        (Some(spec), _) => extract(text, spec.extractors()),
        (None, Method::Semantic) => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
        (None, _) => extract(text, AnswerSpec::default().extractors()),
    }
}

/// The judge's pick as a 0-based index into `count` candidates.
pub fn parse_pick(text: &str, count: usize) -> Result<usize, String> {
    let value = extract_json(text)?;
    let choice = match value.get("choice") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("no integer `choice` in {}", preview(text)))?;
    match usize::try_from(choice) {
        Ok(choice) if (1..=count).contains(&choice) => Ok(choice - 1),
        _ => Err(format!("choice {choice} is not between 1 and {count}")),
    }
}

/// The judge's verdicts, one per answer.
pub fn parse_matches(text: &str, count: usize) -> Result<Vec<bool>, String> {
    let value = extract_json(text)?;
    let list = value
        .get("correct")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("no `correct` list in {}", preview(text)))?;
    if list.len() != count {
        return Err(format!("`correct` has {} verdicts for {count} answers", list.len()));
    }
    list.iter()
        .map(|v| match v {
            serde_json::Value::Bool(b) => Ok(*b),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(format!("verdict {other} is not a boolean")),
        })
        .collect()
}

/// The start of a reply, for error messages.
pub fn preview(text: &str) -> String {
    const CHARS: usize = 120;
    let mut out: String = text.chars().take(CHARS).collect();
    if text.chars().count() > CHARS {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: serde_json::Value) -> CompareSpec {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn settings_are_checked() {
        assert!(Comparator::new(CompareSpec::default(), true).is_ok());
        let err = Comparator::new(spec(serde_json::json!({"method": "semantic"})), true).unwrap_err();
        assert!(err.to_string().contains("compare.model"), "{err}");
        let err = Comparator::new(spec(serde_json::json!({"model": "m"})), true).unwrap_err();
        assert!(err.to_string().contains("exact"), "{err}");
        let err =
            Comparator::new(spec(serde_json::json!({"method": "judge", "model": "m", "prompt": "{{ nope }}"})), true)
                .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = Comparator::new(spec(serde_json::json!({"tolerance": -1.0})), true).unwrap_err();
        assert!(err.to_string().contains("tolerance"), "{err}");
        assert!(serde_json::from_value::<CompareSpec>(serde_json::json!({"methd": "exact"})).is_err());
    }

    #[test]
    fn judge_requests_carry_candidates_and_a_schema() {
        let c = Comparator::new(spec(serde_json::json!({"method": "judge", "model": "judge"})), true).unwrap();
        let request = c.pick_request("2+2?", &["4".into(), "5".into()], 3, 9).unwrap();
        assert_eq!(request.endpoint, "judge");
        assert_eq!(request.row, 3);
        let Prompt::Chat(messages) = &request.prompt else { panic!("chat expected") };
        assert!(messages[0].content.contains("1. 4\n2. 5"), "{}", messages[0].content);
        assert_eq!(request.sampling.json_schema.as_ref().unwrap()["properties"]["choice"]["maximum"], 2);
        assert_eq!(request.sampling.seed, Some(9));

        let c = Comparator::new(spec(serde_json::json!({"method": "judge", "model": "judge"})), false).unwrap();
        let request = c.match_request("2+2?", "4", &["four".into(), "5".into()], 0, 1).unwrap();
        let Prompt::Chat(messages) = &request.prompt else { panic!("chat expected") };
        assert!(messages[0].content.contains("Reference answer: 4"), "{}", messages[0].content);
        assert_eq!(request.sampling.json_schema.as_ref().unwrap()["properties"]["correct"]["minItems"], 2);
    }

    #[test]
    fn judge_replies_are_parsed_strictly() {
        assert_eq!(parse_pick("{\"choice\": 2}", 3), Ok(1));
        assert_eq!(parse_pick("Sure! ```json\n{\"choice\": \"1\"}\n```", 3), Ok(0));
        assert!(parse_pick("{\"choice\": 4}", 3).unwrap_err().contains("between 1 and 3"));
        assert!(parse_pick("{\"choice\": 0}", 3).is_err());
        assert!(parse_pick("the second one", 3).is_err());
        assert_eq!(parse_matches("{\"correct\": [true, false, \"true\"]}", 3), Ok(vec![true, false, true]));
        assert!(parse_matches("{\"correct\": [true]}", 2).unwrap_err().contains("1 verdicts for 2"));
        assert!(parse_matches("{\"correct\": [1, 0]}", 2).is_err());
    }
}
