//! `translate`: translates chosen columns into one or more languages with an LLM, without truncation and
//! without damaging what must survive verbatim.
//!
//! Each text is split into segments of at most `max_chars` (on paragraph, line, sentence or word
//! boundaries; see [`crate::protect::split_segments`]) and each segment is masked: answer tags, `####`
//! markers, numbers, LaTeX, code, URLs and template placeholders become tokens `⟦n⟧` that the model must copy.
//! A translated segment whose tokens do not all come back exactly once is asked again (`retries`), then the
//! row's translation into that language fails. Segments are joined with their original whitespace.
//!
//! Quality gate: the language of the output (whatlang, protected spans removed) must be the target with at
//! least `gate.min_confidence`; with `gate.back_translation`, the translation is translated back and its
//! embedding must be within `threshold` cosine of the original's. A failure sends the input row to rejects
//! with the language and the scores; the row's other languages are unaffected.
//!
//! Each input row becomes one row per language (id `stable_id(id, "translate", language)`, `translation_of`
//! = the input id), plus the original row itself with `keep_original` (the default).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use minijinja::value::Value;
use serde::Deserialize;

use crate::answer::cosine;
use crate::columns::{ID, stable_id};
use crate::lang::lang_from_code;
use crate::model::{ModelRequest, ModelResponse, PendingId, Prompt, Sampling, Step};
use crate::prompt::{ChatTemplate, text_cell};
use crate::protect::{detect_language, mask, same_language, split_segments, strip_protected, unmask};
use crate::task::{PendingTasks, Poll, RowOrReject, RowTask, derive_seed};
use crate::{OpError, Operator, Output, Reject, Shape, require_column, string_column, take_rows};

/// The language of the row (the target, or the source language on original rows).
pub const LANGUAGE: &str = "language";
/// The input row a translated row comes from (null on original rows).
pub const TRANSLATION_OF: &str = "translation_of";
/// whatlang's confidence that the output is in the target language (null on original rows).
pub const TRANSLATE_LANGUAGE_CONFIDENCE: &str = "translate_language_confidence";
/// Cosine similarity between the original and the back-translation (null when not measured).
pub const TRANSLATE_BACK_SIMILARITY: &str = "translate_back_similarity";
/// Segments sent for the row's translation.
pub const TRANSLATE_SEGMENTS: &str = "translate_segments";

/// The default translation prompt. Variables: `text`, `language`, `language_name`, `source_language_name`.
pub const DEFAULT_PROMPT: &str = "Translate the text below from {{ source_language_name }} into {{ language_name }}. \
Copy every placeholder such as ⟦0⟧ exactly as it is, in the place where it belongs in the translation. \
Reply with the translation only.\n\n{{ text }}";

/// Settings of a `translate` node.
///
/// ```yaml
/// translate:
///   model: teacher
///   columns: [question, answer]
///   languages: [fr, ar]           # ISO 639-1 (or 639-3) codes that whatlang knows
///   source_language: en
///   prompt: "..."                 # optional; see DEFAULT_PROMPT
///   max_chars: 1500               # segment size; long text is split, never cut
///   retries: 1                    # re-asks for a segment whose placeholders came back wrong
///   keep_original: true
///   gate:
///     min_confidence: 0.5         # language ID of the output; 0 disables the check
///     back_translation: {model: embedder, threshold: 0.8}   # optional
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranslateSpec {
    pub model: String,
    pub columns: Vec<String>,
    pub languages: Vec<String>,
    #[serde(default = "default_source")]
    pub source_language: String,
    #[serde(default = "default_prompt")]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_true")]
    pub keep_original: bool,
    #[serde(default)]
    pub gate: Gate,
}

fn default_source() -> String {
    "en".into()
}

fn default_prompt() -> String {
    DEFAULT_PROMPT.into()
}

fn default_max_chars() -> usize {
    1500
}

fn default_retries() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

/// The quality gate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Gate {
    pub min_confidence: f64,
    pub back_translation: Option<BackTranslation>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { min_confidence: 0.5, back_translation: None }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackTranslation {
    /// The embedding endpoint.
    pub model: String,
    #[serde(default = "default_back_threshold")]
    pub threshold: f32,
}

fn default_back_threshold() -> f32 {
    0.8
}

#[derive(Debug)]
struct TranslateCore {
    spec: TranslateSpec,
    template: ChatTemplate,
}

const TEMPLATE_VARS: [&str; 4] = ["text", "language", "language_name", "source_language_name"];

fn language_name(code: &str) -> String {
    lang_from_code(code).map_or_else(|| code.to_string(), |lang| lang.eng_name().to_string())
}

impl TranslateCore {
    /// A request translating one masked segment into `language`.
    fn request(&self, row: usize, id: &str, text: &str, language: &str, attempt: u32) -> Result<ModelRequest, String> {
        let vars = [
            ("text", Value::from(text)),
            ("language", Value::from(language)),
            ("language_name", Value::from(language_name(language))),
            ("source_language_name", Value::from(language_name(&self.spec.source_language))),
        ];
        let messages = self.template.render(None, &vars)?;
        let salt = format!("translate\u{0}{language}\u{0}{text}\u{0}{attempt}");
        // The first attempt keeps the configured seed (or none) so equal segments share a cache entry; retries
        // need a different request, else the cache hands back the same broken text.
        let seed = if attempt == 0 { self.spec.seed } else { Some(derive_seed(self.spec.seed, id, &salt)) };
        Ok(ModelRequest {
            endpoint: self.spec.model.clone(),
            prompt: Prompt::Chat(messages),
            sampling: Sampling {
                n: 1,
                temperature: self.spec.temperature,
                max_tokens: self.spec.max_tokens,
                seed,
                ..Sampling::default()
            },
            row,
        })
    }
}

/// One segment: its masked text, the spans, and the whitespace around it that is kept as is.
#[derive(Debug, Clone)]
struct Segment {
    lead: String,
    masked: String,
    spans: Vec<String>,
    trail: String,
    attempts: u32,
    done: Option<String>,
}

impl Segment {
    fn of(text: &str) -> Segment {
        let body = text.trim();
        let start = text.len() - text.trim_start().len();
        let end = start + body.len();
        let masked = mask(body);
        Segment {
            lead: text[..start].to_string(),
            masked: masked.text,
            spans: masked.spans,
            trail: text[end..].to_string(),
            attempts: 0,
            done: if body.is_empty() { Some(String::new()) } else { None },
        }
    }
}

/// The texts of one translation pass (forward or back): segments per column (`None` for null cells).
#[derive(Debug)]
struct Pass {
    language: String,
    columns: Vec<Option<Vec<Segment>>>,
}

impl Pass {
    fn new(texts: &[Option<String>], language: &str, max_chars: usize) -> Pass {
        let columns = texts
            .iter()
            .map(|text| text.as_ref().map(|t| split_segments(t, max_chars).iter().map(|s| Segment::of(s)).collect()))
            .collect();
        Pass { language: language.to_string(), columns }
    }

    fn pending(&mut self) -> impl Iterator<Item = &mut Segment> {
        self.columns.iter_mut().flatten().flatten().filter(|s| s.done.is_none())
    }

    fn segments(&self) -> usize {
        self.columns.iter().flatten().map(Vec::len).sum()
    }

    fn joined(&self) -> Vec<Option<String>> {
        self.columns
            .iter()
            .map(|column| {
                column.as_ref().map(|segments| {
                    segments
                        .iter()
                        .map(|s| format!("{}{}{}", s.lead, s.done.as_deref().unwrap_or_default(), s.trail))
                        .collect()
                })
            })
            .collect()
    }
}

enum Phase {
    Forward,
    Back,
    Embed,
    Finished,
}

/// A translated row.
#[derive(Debug)]
struct Translated {
    values: Vec<Option<String>>,
    confidence: f64,
    back_similarity: Option<f64>,
    segments: u32,
}

/// One row's translation into one language.
struct TranslateTask {
    core: Arc<TranslateCore>,
    row: usize,
    id: String,
    originals: Vec<Option<String>>,
    forward: Pass,
    back: Option<Pass>,
    translated: Vec<Option<String>>,
    confidence: f64,
    phase: Phase,
}

type TaskOut = Result<Translated, String>;

impl TranslateTask {
    fn finish(&mut self, out: TaskOut) -> Poll<TaskOut> {
        self.phase = Phase::Finished;
        Poll::Done(out)
    }

    fn fail(&mut self, why: String) -> Poll<TaskOut> {
        let language = self.forward.language.clone();
        self.finish(Err(format!("{language}: {why}")))
    }

    /// Requests for every unfinished segment of the current pass.
    fn requests(&mut self) -> Result<Vec<ModelRequest>, String> {
        let (row, core) = (self.row, Arc::clone(&self.core));
        let id = self.id.clone();
        let pass = match self.phase {
            Phase::Back => self.back.as_mut().ok_or("no back-translation pass")?,
            _ => &mut self.forward,
        };
        let language = pass.language.clone();
        pass.pending().map(|segment| core.request(row, &id, &segment.masked, &language, segment.attempts)).collect()
    }

    /// Takes the replies of the current pass; `Err` names segments that failed for good.
    fn absorb(&mut self, responses: Vec<ModelResponse>) -> Result<(), String> {
        let retries = self.core.spec.retries;
        let pass = match self.phase {
            Phase::Back => self.back.as_mut().ok_or("no back-translation pass")?,
            _ => &mut self.forward,
        };
        for (segment, response) in pass.pending().zip(responses) {
            let text = match response {
                Ok(reply) => reply.texts.into_iter().next().unwrap_or_default(),
                Err(error) => return Err(format!("model call failed: {error}")),
            };
            match unmask(text.trim(), &segment.spans) {
                Ok(restored) if !restored.trim().is_empty() => segment.done = Some(restored),
                Ok(_) if segment.attempts < retries => segment.attempts += 1,
                Ok(_) => return Err("the model returned an empty translation".into()),
                Err(_) if segment.attempts < retries => segment.attempts += 1,
                Err(error) => {
                    return Err(format!("{error} (after {} attempts)", segment.attempts + 1));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, responses: Vec<ModelResponse>) -> Poll<TaskOut> {
        if let Err(why) = self.absorb(responses) {
            return self.fail(why);
        }
        match self.requests() {
            Ok(requests) if !requests.is_empty() => return Poll::Need(requests),
            Ok(_) => {}
            Err(why) => return self.fail(why),
        }
        match self.phase {
            Phase::Forward => self.gate_language(),
            Phase::Back => self.ask_embeddings(),
            Phase::Embed | Phase::Finished => self.fail("translation pass out of order".into()),
        }
    }

    /// The language check, then the back-translation pass when configured.
    fn gate_language(&mut self) -> Poll<TaskOut> {
        self.translated = self.forward.joined();
        let text: String = self.translated.iter().flatten().map(|t| strip_protected(t)).collect::<Vec<_>>().join("\n");
        let wanted = self.forward.language.clone();
        let min = self.core.spec.gate.min_confidence;
        if min > 0.0 && !text.trim().is_empty() {
            match detect_language(&text) {
                Some((found, confidence)) if same_language(&found, &wanted) && confidence >= min => {
                    self.confidence = confidence;
                }
                Some((found, confidence)) => {
                    return self.fail(format!(
                        "language check failed: detected {found} with confidence {confidence:.2} (want {wanted} >= {min})"
                    ));
                }
                None => return self.fail("language check failed: the language could not be detected".into()),
            }
        } else {
            self.confidence = detect_language(&text)
                .filter(|(found, _)| same_language(found, &wanted))
                .map_or(0.0, |(_, confidence)| confidence);
        }
        if self.core.spec.gate.back_translation.is_none() {
            let out = self.result(None);
            return self.finish(Ok(out));
        }
        self.back = Some(Pass::new(&self.translated, &self.core.spec.source_language, self.core.spec.max_chars));
        self.phase = Phase::Back;
        self.step(Vec::new())
    }

    fn ask_embeddings(&mut self) -> Poll<TaskOut> {
        let Some(back) = &self.back else { return self.fail("no back-translation pass".into()) };
        let Some(settings) = &self.core.spec.gate.back_translation else {
            return self.fail("no back-translation settings".into());
        };
        let backs = back.joined();
        let mut texts = Vec::new();
        for (original, back) in self.originals.iter().zip(&backs) {
            if let (Some(original), Some(back)) = (original, back) {
                texts.push(original.clone());
                texts.push(back.clone());
            }
        }
        self.phase = Phase::Embed;
        Poll::Need(vec![ModelRequest {
            endpoint: settings.model.clone(),
            prompt: Prompt::Embed(texts),
            sampling: Sampling { n: 1, ..Sampling::default() },
            row: self.row,
        }])
    }

    fn on_embeddings(&mut self, responses: Vec<ModelResponse>) -> Poll<TaskOut> {
        let reply = match responses.into_iter().next() {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => return self.fail(format!("embedding call failed: {error}")),
            None => return self.fail("no response to the embedding request".into()),
        };
        if reply.embeddings.len() % 2 != 0 {
            return self.fail(format!("the embedder returned {} vectors for pairs", reply.embeddings.len()));
        }
        // The weakest column decides: one badly translated field spoils the record.
        let similarity =
            reply.embeddings.chunks(2).map(|pair| f64::from(cosine(&pair[0], &pair[1]))).fold(f64::INFINITY, f64::min);
        let similarity = if similarity.is_finite() { similarity } else { 1.0 };
        let threshold = self.core.spec.gate.back_translation.as_ref().map_or(0.0, |b| f64::from(b.threshold));
        if similarity < threshold {
            return self.fail(format!(
                "back-translation similarity {similarity:.3} below {threshold} (language confidence {:.2})",
                self.confidence
            ));
        }
        let out = self.result(Some(similarity));
        self.finish(Ok(out))
    }

    fn result(&self, back_similarity: Option<f64>) -> Translated {
        let segments = self.forward.segments() + self.back.as_ref().map_or(0, Pass::segments);
        Translated {
            values: self.translated.clone(),
            confidence: self.confidence,
            back_similarity,
            segments: segments as u32,
        }
    }
}

impl RowTask for TranslateTask {
    type Out = TaskOut;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<TaskOut> {
        match self.phase {
            Phase::Forward | Phase::Back => self.step(responses),
            Phase::Embed => self.on_embeddings(responses),
            Phase::Finished => Poll::Done(Err("the translation already finished".into())),
        }
    }
}

/// The `translate` operator. See the module docs.
#[derive(Debug)]
pub struct Translate {
    core: Arc<TranslateCore>,
    pending: PendingTasks<RowOrReject<TranslateTask>>,
}

impl Translate {
    pub fn new(spec: TranslateSpec) -> Result<Self, OpError> {
        if spec.model.trim().is_empty() {
            return Err(OpError::setting("model", "must name an endpoint"));
        }
        if spec.columns.is_empty() {
            return Err(OpError::setting("columns", "name at least one column to translate"));
        }
        for (i, column) in spec.columns.iter().enumerate() {
            if column == ID || spec.columns[..i].contains(column) {
                return Err(OpError::setting(
                    "columns",
                    format!("`{column}` cannot be translated (or is listed twice)"),
                ));
            }
        }
        if spec.languages.is_empty() {
            return Err(OpError::setting("languages", "name at least one target language"));
        }
        for (i, language) in spec.languages.iter().chain([&spec.source_language]).enumerate() {
            let key = if i < spec.languages.len() { "languages" } else { "source_language" };
            if lang_from_code(language).is_none() {
                return Err(OpError::setting(key, format!("`{language}` is not a language code whatlang knows")));
            }
        }
        for (i, language) in spec.languages.iter().enumerate() {
            if spec.languages[..i].iter().any(|l| same_language(l, language)) {
                return Err(OpError::setting("languages", format!("`{language}` is listed twice")));
            }
            if same_language(language, &spec.source_language) {
                return Err(OpError::setting("languages", format!("`{language}` is the source language")));
            }
        }
        if spec.max_chars < 16 {
            return Err(OpError::setting("max_chars", "must be at least 16"));
        }
        if !(0.0..=1.0).contains(&spec.gate.min_confidence) {
            return Err(OpError::setting("gate.min_confidence", "must be in [0, 1]"));
        }
        if let Some(back) = &spec.gate.back_translation
            && (back.model.trim().is_empty() || !(back.threshold > -1.0 && back.threshold <= 1.0))
        {
            return Err(OpError::setting(
                "gate.back_translation",
                "needs an embedding `model` and a threshold in (-1, 1]",
            ));
        }
        let template = ChatTemplate::new(spec.system.as_deref(), &spec.prompt, &TEMPLATE_VARS, "")?;
        if let Some(var) = template.column_vars().first() {
            return Err(OpError::setting(
                "prompt",
                format!("unknown variable `{var}`; the prompt may use {}", TEMPLATE_VARS.join(", ")),
            ));
        }
        Ok(Translate { core: Arc::new(TranslateCore { spec, template }), pending: PendingTasks::default() })
    }

    fn emit(&self, batch: RecordBatch, results: Vec<TaskOut>) -> Result<Output, OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let languages = &self.core.spec.languages;
        let per_row = languages.len();
        let ids = string_column(&batch, ID)?;
        // (input row, language index or None for the original, translation)
        let mut rows: Vec<(usize, Option<usize>, Option<Translated>)> = Vec::new();
        let mut rejects = Vec::new();
        let mut results = results.into_iter();
        for row in 0..batch.num_rows() {
            if self.core.spec.keep_original && !ids.is_null(row) {
                rows.push((row, None, None));
            }
            let mut failures = Vec::new();
            for language in 0..per_row {
                match results.next() {
                    Some(Ok(translated)) => rows.push((row, Some(language), Some(translated))),
                    Some(Err(reason)) => failures.push(reason),
                    None => return Err(OpError::Protocol("fewer translation results than tasks".into())),
                }
            }
            if !failures.is_empty() {
                failures.dedup();
                rejects.push(Reject { row, reason: failures.join("; ") });
            }
        }
        let take: Vec<u32> = rows.iter().map(|(row, _, _)| *row as u32).collect();
        let taken = take_rows(&batch, &take)?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let array: ArrayRef = if name == ID {
                Arc::new(StringArray::from_iter_values(rows.iter().map(|(row, language, _)| match language {
                    None => ids.value(*row).to_string(),
                    Some(l) => stable_id(&[ids.value(*row).as_bytes(), b"translate", languages[*l].as_bytes()]),
                })))
            } else if let Some(column) = self.core.spec.columns.iter().position(|c| c == name) {
                let old = string_column(&taken, name)?;
                Arc::new(StringArray::from_iter(rows.iter().enumerate().map(
                    |(i, (_, _, translated))| match translated {
                        Some(t) => t.values[column].clone(),
                        None => (!old.is_null(i)).then(|| old.value(i).to_string()),
                    },
                )))
            } else if name == LANGUAGE {
                Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, language, _)| match language {
                    None => self.core.spec.source_language.as_str(),
                    Some(l) => languages[*l].as_str(),
                })))
            } else if name == TRANSLATION_OF {
                Arc::new(StringArray::from_iter(
                    rows.iter().map(|(row, language, _)| language.map(|_| ids.value(*row).to_string())),
                ))
            } else if name == TRANSLATE_LANGUAGE_CONFIDENCE {
                Arc::new(Float64Array::from_iter(rows.iter().map(|(_, _, t)| t.as_ref().map(|t| t.confidence))))
            } else if name == TRANSLATE_BACK_SIMILARITY {
                Arc::new(Float64Array::from_iter(
                    rows.iter().map(|(_, _, t)| t.as_ref().and_then(|t| t.back_similarity)),
                ))
            } else if name == TRANSLATE_SEGMENTS {
                Arc::new(UInt32Array::from_iter(rows.iter().map(|(_, _, t)| t.as_ref().map(|t| t.segments))))
            } else {
                let column = taken.column_by_name(name).ok_or_else(|| OpError::MissingColumn {
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

const WRITTEN: [&str; 5] =
    [LANGUAGE, TRANSLATION_OF, TRANSLATE_LANGUAGE_CONFIDENCE, TRANSLATE_BACK_SIMILARITY, TRANSLATE_SEGMENTS];

impl Operator for Translate {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        require_column(input, ID, &DataType::Utf8)?;
        for column in &self.core.spec.columns {
            require_column(input, column, &DataType::Utf8)?;
        }
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| !WRITTEN.contains(&f.name().as_str()))
            .map(|f| {
                // A translated column may be null where the original was.
                if self.core.spec.columns.contains(f.name()) {
                    f.as_ref().clone().with_nullable(true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        fields.extend([
            Field::new(LANGUAGE, DataType::Utf8, false),
            Field::new(TRANSLATION_OF, DataType::Utf8, true),
            Field::new(TRANSLATE_LANGUAGE_CONFIDENCE, DataType::Float64, true),
            Field::new(TRANSLATE_BACK_SIMILARITY, DataType::Float64, true),
            Field::new(TRANSLATE_SEGMENTS, DataType::UInt32, true),
        ]);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn start(&mut self, pending: PendingId, batch: RecordBatch) -> Result<Step, OpError> {
        self.output_schema(&batch.schema())?;
        let ids = string_column(&batch, ID)?;
        let spec = &self.core.spec;
        let mut tasks = Vec::with_capacity(batch.num_rows() * spec.languages.len());
        for row in 0..batch.num_rows() {
            let originals: Vec<Option<String>> = spec.columns.iter().map(|c| text_cell(&batch, c, row)).collect();
            for language in &spec.languages {
                if ids.is_null(row) {
                    tasks.push(RowOrReject::Rejected("null id".into()));
                    continue;
                }
                let mut task = TranslateTask {
                    core: Arc::clone(&self.core),
                    row,
                    id: ids.value(row).to_string(),
                    forward: Pass::new(&originals, language, spec.max_chars),
                    originals: originals.clone(),
                    back: None,
                    translated: Vec::new(),
                    confidence: 0.0,
                    phase: Phase::Forward,
                };
                // Nothing to translate (all null): the gate decides on empty text, which passes.
                if task.forward.segments() == 0 {
                    task.translated = originals.clone();
                }
                tasks.push(RowOrReject::Run(Box::new(task)));
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
        let mut endpoints = vec![self.core.spec.model.clone()];
        if let Some(back) = &self.core.spec.gate.back_translation
            && !endpoints.contains(&back.model)
        {
            endpoints.push(back.model.clone());
        }
        endpoints
    }

    fn shape(&self) -> Shape {
        Shape::model()
    }
}

/// A complete config that uses `translate` (paths relative to the repository's `configs/`; `sdg kinds translate`).
pub const EXAMPLE: &str = r#"# Translates each glossary definition into French; a translation that is not French is rejected.
models:
  teacher: {base_url: "http://127.0.0.1:8000/v1", model: teacher-model}
nodes:
  - {id: terms, kind: ingest, paths: [sample-corpus/tables/glossary.csv]}
  - {id: french, kind: translate, input: terms, model: teacher, columns: [text], languages: [fr]}
  - {id: out, kind: sink, input: french}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{drive, embeddings, floats, reply, string_batch, strings, user_text};

    const QUESTION: &str = "Tom buys 12 apples at the market and eats 5 of them on the way home. \
How many apples does he have left when he arrives?";
    const FRENCH: &str = "Tom achète ⟦0⟧ pommes au marché et en mange ⟦1⟧ sur le chemin du retour. \
Combien de pommes lui reste-t-il quand il arrive à la maison ?";

    fn op(settings: serde_json::Value) -> Translate {
        let mut base =
            serde_json::json!({"model": "translator", "columns": ["question", "answer"], "languages": ["fr"]});
        base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        Translate::new(serde_json::from_value(base).unwrap()).unwrap()
    }

    fn batch() -> RecordBatch {
        string_batch(&[
            ("id", vec![Some("a")]),
            ("question", vec![Some(QUESTION)]),
            ("answer", vec![Some("<answer>7</answer>")]),
        ])
    }

    /// The text to translate inside the prompt (after the blank line that ends the instructions).
    fn segment(request: &ModelRequest) -> String {
        let text = user_text(request);
        text.split_once("\n\n").map(|(_, s)| s.to_string()).unwrap_or(text)
    }

    /// A translator that knows one sentence in French and copies placeholders-only text.
    fn translator(request: &ModelRequest) -> ModelResponse {
        let text = segment(request);
        if text.starts_with("Tom buys") { reply(vec![FRENCH.to_string()]) } else { reply(vec![text]) }
    }

    #[test]
    fn translates_with_numbers_and_tags_intact_and_keeps_the_original() {
        let mut translate = op(serde_json::json!({}));
        let mut prompts = Vec::new();
        let (out, calls) = drive(&mut translate, batch(), |request| {
            prompts.push(user_text(request));
            translator(request)
        });
        assert_eq!(calls, 1);
        assert!(prompts[0].contains("from English into French"), "{}", prompts[0]);
        assert!(prompts.iter().all(|p| !p.contains("12") && !p.contains("<answer>")), "protected spans are masked");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let rows = &out.rows;
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(strings(rows, LANGUAGE), [Some("en".to_string()), Some("fr".to_string())]);
        let question = strings(rows, "question")[1].clone().unwrap();
        assert!(question.starts_with("Tom achète 12 pommes") && question.contains("en mange 5 sur"), "{question}");
        assert_eq!(strings(rows, "answer")[1].as_deref(), Some("<answer>7</answer>"));
        assert_eq!(strings(rows, TRANSLATION_OF), [None, Some("a".to_string())]);
        let ids = strings(rows, ID);
        assert_eq!(ids[0].as_deref(), Some("a"));
        assert_eq!(ids[1], Some(stable_id(&[b"a", b"translate", b"fr"])));
        assert!(floats(rows, TRANSLATE_LANGUAGE_CONFIDENCE)[1].unwrap() > 0.5);
    }

    #[test]
    fn lost_placeholders_are_retried_then_rejected_with_the_reason() {
        let mut translate = op(serde_json::json!({"keep_original": false}));
        let mut attempts = Vec::new();
        let (out, calls) = drive(&mut translate, batch(), |request| {
            attempts.push(request.sampling.seed);
            if segment(request).starts_with("Tom buys") && attempts.len() < 3 {
                return reply(vec![FRENCH.replace("⟦1⟧", "cinq")]);
            }
            translator(request)
        });
        assert_eq!(calls, 2, "one retry for the broken segment");
        assert_ne!(attempts[0], attempts[2], "the retry is a different request");
        assert_eq!(out.rows.num_rows(), 1);

        let mut translate = op(serde_json::json!({"keep_original": false, "retries": 2}));
        let (out, calls) = drive(&mut translate, batch(), |request| {
            if segment(request).starts_with("Tom buys") {
                return reply(vec![FRENCH.replace("⟦1⟧", "cinq")]);
            }
            translator(request)
        });
        assert_eq!(calls, 3);
        assert_eq!(out.rows.num_rows(), 0);
        assert!(out.rejects[0].reason.starts_with("fr: placeholder ⟦1⟧ missing"), "{:?}", out.rejects);
        assert!(out.rejects[0].reason.contains("after 3 attempts"), "{:?}", out.rejects);
    }

    #[test]
    fn output_in_the_wrong_language_fails_the_gate_with_scores() {
        let mut translate = op(serde_json::json!({"languages": ["fr", "de"]}));
        let (out, _) = drive(&mut translate, batch(), translator);
        // French passes; the "German" output is French too.
        assert_eq!(strings(&out.rows, LANGUAGE), [Some("en".to_string()), Some("fr".to_string())]);
        assert_eq!(out.rejects.len(), 1);
        let reason = &out.rejects[0].reason;
        assert!(reason.starts_with("de: language check failed: detected fr with confidence"), "{reason}");
    }

    #[test]
    fn long_text_is_split_into_segments_and_joined_without_loss() {
        let paragraph = "The river flows slowly through the green valley, and the farmers watch the water rise.";
        let long: String = (0..60).map(|i| format!("{paragraph} Day {i}.\n\n")).collect();
        let input =
            string_batch(&[("id", vec![Some("a")]), ("question", vec![Some(long.as_str())]), ("answer", vec![None])]);
        let mut translate =
            op(serde_json::json!({"keep_original": false, "max_chars": 400, "gate": {"min_confidence": 0.0}}));
        let mut segments = 0;
        let (out, _) = drive(&mut translate, input, |request| {
            segments += 1;
            let text = segment(request);
            assert!(text.chars().count() <= 400, "segment of {} chars", text.chars().count());
            reply(vec![text.to_uppercase()])
        });
        assert!(segments >= 10, "{segments} segments");
        let question = strings(&out.rows, "question")[0].clone().unwrap();
        assert_eq!(question, long.to_uppercase(), "every segment comes back, in order");
        assert_eq!(strings(&out.rows, "answer"), [None], "null stays null");
    }

    #[test]
    fn back_translation_similarity_gates_the_row() {
        for (similar, kept) in [(true, 1), (false, 0)] {
            let mut translate = op(serde_json::json!({
                "keep_original": false,
                "gate": {"back_translation": {"model": "embedder", "threshold": 0.8}},
            }));
            let mut passes = Vec::new();
            let (out, calls) = drive(&mut translate, batch(), |request| match &request.prompt {
                Prompt::Embed(inputs) => {
                    assert_eq!(inputs.len(), 4, "original and back-translation of both columns");
                    assert_eq!(inputs[0], QUESTION);
                    let far = if similar { vec![1.0, 0.1] } else { vec![0.0, 1.0] };
                    embeddings(vec![vec![1.0, 0.0], far, vec![1.0, 0.0], vec![1.0, 0.0]])
                }
                _ => {
                    passes.push(user_text(request).contains("into English"));
                    if segment(request).starts_with("Tom achète") {
                        return reply(vec![
                            "Tom buys ⟦0⟧ apples at the market and eats ⟦1⟧ on the way back. How many are left?".into(),
                        ]);
                    }
                    translator(request)
                }
            });
            assert_eq!(calls, 3, "forward, back, embeddings");
            assert!(passes.contains(&true) && passes.contains(&false));
            assert_eq!(out.rows.num_rows(), kept);
            if similar {
                assert!(floats(&out.rows, TRANSLATE_BACK_SIMILARITY)[0].unwrap() > 0.99);
            } else {
                assert!(
                    out.rejects[0].reason.contains("back-translation similarity 0.000 below 0.8"),
                    "{:?}",
                    out.rejects
                );
            }
        }
    }

    #[test]
    fn settings_are_checked() {
        for (settings, key) in [
            (serde_json::json!({"languages": []}), "languages"),
            (serde_json::json!({"languages": ["xx"]}), "languages"),
            (serde_json::json!({"languages": ["fr", "fra"]}), "languages"),
            (serde_json::json!({"languages": ["en"]}), "source language"),
            (serde_json::json!({"columns": ["id"]}), "columns"),
            (serde_json::json!({"prompt": "{{ nope }}"}), "nope"),
            (serde_json::json!({"max_chars": 3}), "max_chars"),
        ] {
            let mut base = serde_json::json!({"model": "t", "columns": ["question"], "languages": ["fr"]});
            base.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
            let err = Translate::new(serde_json::from_value(base).unwrap()).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let translate = op(serde_json::json!({}));
        let no_answer = string_batch(&[("id", vec![Some("a")]), ("question", vec![Some("q")])]);
        assert!(translate.output_schema(&no_answer.schema()).is_err());
    }
}
