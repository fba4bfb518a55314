//! `filter`: keeps the rows that satisfy a declarative predicate; the others go to rejects with a reason
//! that names the failing predicate and the value it saw.
//!
//! Predicates are compiled once in [`RowFilter::new`] (regexes, language codes) and checked against the
//! upstream schema at plan time. A predicate on a null value fails, so `not` of it passes.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use regex::Regex;
use serde::Deserialize;
use whatlang::Lang;

use crate::lang::{lang_code, lang_from_code};
use crate::{OpError, Operator, Output, Reject, require_column, string_column, take_rows};

/// Settings of a `filter` node.
///
/// ```yaml
/// filter:
///   where:
///     all:
///       - len: {column: text, min: 200, max: 20000}
///       - regex: {column: text, pattern: "lorem ipsum", negate: true}
///       - language: {column: text, is: [en, fra], min_confidence: 0.5}
///       - range: {column: chunk_tokens, min: 32}
///       - any:
///           - equals: {column: format, value: md}
///           - not: {equals: {column: format, value: html}}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The predicate a row must satisfy to be kept.
    #[serde(rename = "where")]
    pub predicate: Predicate,
}

/// A condition on the columns of one row.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Predicate {
    /// Length in characters of a Utf8 column, within inclusive bounds.
    Len(LenPredicate),
    /// A Utf8 column matches (or, with `negate`, does not match) a regular expression.
    Regex(RegexPredicate),
    /// The detected language of a Utf8 column is one of a list.
    Language(LanguagePredicate),
    /// A numeric column is within inclusive bounds.
    Range(RangePredicate),
    /// A Utf8 column equals a value.
    Equals(EqualsPredicate),
    /// Every predicate holds (an empty list is refused).
    All(Vec<Predicate>),
    /// At least one predicate holds (an empty list is refused).
    Any(Vec<Predicate>),
    /// The predicate does not hold.
    Not(Box<Predicate>),
}

/// `len: {column, min?, max?}`: character count, inclusive bounds; at least one bound.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LenPredicate {
    pub column: String,
    #[serde(default)]
    pub min: Option<usize>,
    #[serde(default)]
    pub max: Option<usize>,
}

/// `regex: {column, pattern, negate?}`: `regex` crate syntax, unanchored search.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegexPredicate {
    pub column: String,
    pub pattern: String,
    /// Keep the rows that do NOT match.
    #[serde(default)]
    pub negate: bool,
}

/// `language: {column, is, min_confidence?}`: ISO 639-1 ("en") or 639-3 ("eng") codes, detected by whatlang.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LanguagePredicate {
    pub column: String,
    pub is: Vec<String>,
    /// Lowest detection confidence accepted, in [0, 1].
    #[serde(default)]
    pub min_confidence: f64,
}

/// `range: {column, min?, max?}`: any integer, float or decimal column (compared as f64), inclusive bounds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RangePredicate {
    pub column: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// `equals: {column, value}`: exact Utf8 equality.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EqualsPredicate {
    pub column: String,
    pub value: String,
}

/// A predicate ready to run: regexes compiled, language codes resolved.
#[derive(Debug)]
enum Check {
    Len { column: String, min: Option<usize>, max: Option<usize> },
    Regex { column: String, regex: Regex, negate: bool },
    Language { column: String, want: Vec<Lang>, codes: Vec<String>, min_confidence: f64 },
    Range { column: String, min: Option<f64>, max: Option<f64> },
    Equals { column: String, value: String },
    All(Vec<Check>),
    Any(Vec<Check>),
    Not(Box<Check>),
}

/// Per row: `None` when the row passes, `Some(reason)` when it fails.
type Verdicts = Vec<Option<String>>;

impl Check {
    /// Compiles `predicate`; `key` is its path in the settings (for error messages).
    fn compile(predicate: &Predicate, key: &str) -> Result<Check, OpError> {
        let column_of = |column: &str, key: &str| {
            if column.is_empty() {
                Err(OpError::setting(format!("{key}.column"), "must not be empty"))
            } else {
                Ok(column.to_string())
            }
        };
        Ok(match predicate {
            Predicate::Len(p) => {
                let key = format!("{key}.len");
                let column = column_of(&p.column, &key)?;
                match (p.min, p.max) {
                    (None, None) => return Err(OpError::setting(key, "needs `min`, `max` or both")),
                    (Some(min), Some(max)) if min > max => {
                        return Err(OpError::setting(key, format!("min {min} is greater than max {max}")));
                    }
                    _ => {}
                }
                Check::Len { column, min: p.min, max: p.max }
            }
            Predicate::Regex(p) => {
                let key = format!("{key}.regex");
                let column = column_of(&p.column, &key)?;
                let regex = Regex::new(&p.pattern).map_err(|e| {
                    OpError::setting(format!("{key}.pattern"), format!("invalid regex /{}/: {e}", p.pattern))
                })?;
                Check::Regex { column, regex, negate: p.negate }
            }
            Predicate::Language(p) => {
                let key = format!("{key}.language");
                let column = column_of(&p.column, &key)?;
                if p.is.is_empty() {
                    return Err(OpError::setting(format!("{key}.is"), "needs at least one language code"));
                }
                let want =
                    p.is.iter()
                        .map(|code| {
                            lang_from_code(code).ok_or_else(|| {
                            OpError::setting(
                                format!("{key}.is"),
                                format!(
                                    "unknown language code `{code}` (use ISO 639-1 like `en` or ISO 639-3 like `eng`; \
                                     known: {})",
                                    Lang::all().iter().map(|l| lang_code(*l)).collect::<Vec<_>>().join(", ")
                                ),
                            )
                        })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                if !(0.0..=1.0).contains(&p.min_confidence) {
                    return Err(OpError::setting(
                        format!("{key}.min_confidence"),
                        format!("{} is not in [0, 1]", p.min_confidence),
                    ));
                }
                Check::Language { column, want, codes: p.is.clone(), min_confidence: p.min_confidence }
            }
            Predicate::Range(p) => {
                let key = format!("{key}.range");
                let column = column_of(&p.column, &key)?;
                if p.min.is_some_and(f64::is_nan) || p.max.is_some_and(f64::is_nan) {
                    return Err(OpError::setting(key, "bounds must be numbers, not NaN"));
                }
                match (p.min, p.max) {
                    (None, None) => return Err(OpError::setting(key, "needs `min`, `max` or both")),
                    (Some(min), Some(max)) if min > max => {
                        return Err(OpError::setting(key, format!("min {min} is greater than max {max}")));
                    }
                    _ => {}
                }
                Check::Range { column, min: p.min, max: p.max }
            }
            Predicate::Equals(p) => {
                let key = format!("{key}.equals");
                Check::Equals { column: column_of(&p.column, &key)?, value: p.value.clone() }
            }
            Predicate::All(children) | Predicate::Any(children) => {
                let (name, all) = match predicate {
                    Predicate::All(_) => ("all", true),
                    _ => ("any", false),
                };
                if children.is_empty() {
                    return Err(OpError::setting(format!("{key}.{name}"), "needs at least one predicate"));
                }
                let compiled = children
                    .iter()
                    .enumerate()
                    .map(|(i, child)| Check::compile(child, &format!("{key}.{name}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if all { Check::All(compiled) } else { Check::Any(compiled) }
            }
            Predicate::Not(child) => Check::Not(Box::new(Check::compile(child, &format!("{key}.not"))?)),
        })
    }

    /// Checks at plan time that every referenced column exists with a fitting type.
    fn check_schema(&self, schema: &Schema) -> Result<(), OpError> {
        match self {
            Check::Len { column, .. }
            | Check::Regex { column, .. }
            | Check::Language { column, .. }
            | Check::Equals { column, .. } => require_column(schema, column, &DataType::Utf8),
            Check::Range { column, .. } => {
                let field = schema.field_with_name(column).map_err(|_| OpError::MissingColumn {
                    column: column.clone(),
                    expected: "a numeric column".to_string(),
                })?;
                if field.data_type().is_numeric() {
                    Ok(())
                } else {
                    Err(OpError::ColumnType {
                        column: column.clone(),
                        found: field.data_type().clone(),
                        expected: "a numeric type (integer, float or decimal)".to_string(),
                    })
                }
            }
            Check::All(children) | Check::Any(children) => children.iter().try_for_each(|c| c.check_schema(schema)),
            Check::Not(child) => child.check_schema(schema),
        }
    }

    /// A short human-readable form, used in the reasons of `not`.
    fn describe(&self) -> String {
        match self {
            Check::Len { column, min, max } => format!("len({column}) {}", bounds(min, max)),
            Check::Regex { column, regex, negate } => {
                format!("regex({column}) {}/{}/", if *negate { "!" } else { "" }, regex.as_str())
            }
            Check::Language { column, codes, min_confidence, .. } => {
                let mut text = format!("language({column}) in [{}]", codes.join(", "));
                if *min_confidence > 0.0 {
                    text.push_str(&format!(" with confidence >= {min_confidence}"));
                }
                text
            }
            Check::Range { column, min, max } => format!("range({column}) {}", bounds(min, max)),
            Check::Equals { column, value } => format!("equals({column}) = {value:?}"),
            Check::All(children) => {
                format!("all({})", children.iter().map(Check::describe).collect::<Vec<_>>().join(", "))
            }
            Check::Any(children) => {
                format!("any({})", children.iter().map(Check::describe).collect::<Vec<_>>().join(", "))
            }
            Check::Not(child) => format!("not({})", child.describe()),
        }
    }

    /// Evaluates the predicate on every row of `batch`.
    fn evaluate(&self, batch: &RecordBatch) -> Result<Verdicts, OpError> {
        match self {
            Check::Len { column, min, max } => {
                let values = string_column(batch, column)?;
                Ok(values
                    .iter()
                    .map(|value| {
                        let Some(value) = value else { return Some(format!("len({column}) is null")) };
                        let len = value.chars().count();
                        out_of_bounds(len, min, max).map(|why| format!("len({column}) = {len} {why}"))
                    })
                    .collect())
            }
            Check::Regex { column, regex, negate } => {
                let values = string_column(batch, column)?;
                Ok(values
                    .iter()
                    .map(|value| {
                        let Some(value) = value else { return Some(format!("regex({column}) is null")) };
                        match (regex.is_match(value), negate) {
                            (true, false) | (false, true) => None,
                            (false, false) => Some(format!("regex({column}) /{}/ did not match", regex.as_str())),
                            (true, true) => Some(format!("regex({column}) /{}/ matched (negate)", regex.as_str())),
                        }
                    })
                    .collect())
            }
            Check::Language { column, want, codes, min_confidence } => {
                let values = string_column(batch, column)?;
                Ok(values
                    .iter()
                    .map(|value| {
                        let Some(value) = value else { return Some(format!("language({column}) is null")) };
                        let Some(info) = whatlang::detect(value) else {
                            return Some(format!("language({column}): language not detected"));
                        };
                        let (lang, confidence) = (info.lang(), info.confidence());
                        if !want.contains(&lang) {
                            Some(format!(
                                "language({column}) = {} ({confidence:.2}), want one of [{}]",
                                lang_code(lang),
                                codes.join(", ")
                            ))
                        } else if confidence < *min_confidence {
                            Some(format!(
                                "language({column}) = {} ({confidence:.2}), want confidence >= {min_confidence}",
                                lang_code(lang)
                            ))
                        } else {
                            None
                        }
                    })
                    .collect())
            }
            Check::Range { column, min, max } => {
                let array = batch.column_by_name(column).ok_or_else(|| OpError::MissingColumn {
                    column: column.clone(),
                    expected: "a numeric column".to_string(),
                })?;
                if !array.data_type().is_numeric() {
                    return Err(OpError::ColumnType {
                        column: column.clone(),
                        found: array.data_type().clone(),
                        expected: "a numeric type (integer, float or decimal)".to_string(),
                    });
                }
                let cast = arrow::compute::cast(array, &DataType::Float64)?;
                let values = cast.as_any().downcast_ref::<Float64Array>().ok_or_else(|| OpError::ColumnType {
                    column: column.clone(),
                    found: cast.data_type().clone(),
                    expected: "Float64 after cast".to_string(),
                })?;
                Ok(values
                    .iter()
                    .map(|value| {
                        let Some(value) = value else { return Some(format!("range({column}) is null")) };
                        if value.is_nan() {
                            return Some(format!("range({column}) = NaN is not a number"));
                        }
                        out_of_bounds(value, min, max).map(|why| format!("range({column}) = {value} {why}"))
                    })
                    .collect())
            }
            Check::Equals { column, value: want } => {
                let values = string_column(batch, column)?;
                Ok(values
                    .iter()
                    .map(|value| match value {
                        None => Some(format!("equals({column}) is null")),
                        Some(value) if value == want => None,
                        Some(value) => Some(format!("equals({column}) = {value:?}, want {want:?}")),
                    })
                    .collect())
            }
            Check::All(children) => {
                let mut verdicts = vec![None; batch.num_rows()];
                for child in children {
                    for (verdict, child_verdict) in verdicts.iter_mut().zip(child.evaluate(batch)?) {
                        if verdict.is_none() {
                            *verdict = child_verdict;
                        }
                    }
                }
                Ok(verdicts)
            }
            Check::Any(children) => {
                let mut failures: Vec<Option<Vec<String>>> = vec![Some(Vec::new()); batch.num_rows()];
                for child in children {
                    for (failure, child_verdict) in failures.iter_mut().zip(child.evaluate(batch)?) {
                        match (failure.as_mut(), child_verdict) {
                            (Some(reasons), Some(reason)) => reasons.push(reason),
                            (Some(_), None) => *failure = None,
                            (None, _) => {}
                        }
                    }
                }
                Ok(failures.into_iter().map(|f| f.map(|reasons| format!("none of: {}", reasons.join("; ")))).collect())
            }
            Check::Not(child) => {
                let description = child.describe();
                Ok(child
                    .evaluate(batch)?
                    .into_iter()
                    .map(|verdict| match verdict {
                        Some(_) => None,
                        None => Some(format!("not({description}) matched")),
                    })
                    .collect())
            }
        }
    }
}

/// `in [min, max]`, `>= min` or `<= max`.
fn bounds<T: std::fmt::Display>(min: &Option<T>, max: &Option<T>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("in [{min}, {max}]"),
        (Some(min), None) => format!(">= {min}"),
        (None, Some(max)) => format!("<= {max}"),
        (None, None) => "any".to_string(),
    }
}

/// Why `value` is outside the inclusive bounds, or `None` when it is inside.
fn out_of_bounds<T: PartialOrd + std::fmt::Display>(value: T, min: &Option<T>, max: &Option<T>) -> Option<String> {
    if let Some(min) = min
        && value < *min
    {
        return Some(format!("< min {min}"));
    }
    if let Some(max) = max
        && value > *max
    {
        return Some(format!("> max {max}"));
    }
    None
}

/// Keeps the rows that satisfy a predicate. See the module docs.
#[derive(Debug)]
pub struct RowFilter {
    spec: FilterSpec,
    check: Check,
}

impl RowFilter {
    /// Compiles the predicate: regexes, language codes, bounds.
    pub fn new(spec: FilterSpec) -> Result<Self, OpError> {
        let check = Check::compile(&spec.predicate, "where")?;
        Ok(RowFilter { spec, check })
    }

    /// The settings this filter was built with.
    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }
}

impl Operator for RowFilter {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        self.check.check_schema(input)?;
        Ok(Arc::clone(input))
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Output, OpError> {
        if u32::try_from(batch.num_rows()).is_err() {
            return Err(OpError::Arrow(arrow::error::ArrowError::ComputeError(format!(
                "a batch of {} rows is too large to filter (row indices are u32)",
                batch.num_rows()
            ))));
        }
        let verdicts = self.check.evaluate(&batch)?;
        let mut keep = Vec::with_capacity(verdicts.len());
        let mut rejects = Vec::new();
        for (row, verdict) in verdicts.into_iter().enumerate() {
            match verdict {
                None => keep.push(row as u32),
                Some(reason) => rejects.push(Reject { row, reason }),
            }
        }
        let rows = if rejects.is_empty() { batch } else { take_rows(&batch, &keep)? };
        Ok(Output { rows, rejects })
    }
}

/// A complete config that uses `filter` (paths relative to the repository's `configs/`; `sdg kinds filter`).
pub const EXAMPLE: &str = r#"# Keeps the English rows of at least 40 characters; the others go to rejects with the rule they failed.
nodes:
  - {id: docs, kind: ingest, paths: [sample-corpus/tables]}
  - id: clean
    kind: filter
    input: docs
    where: {all: [{len: {column: text, min: 40}}, {language: {column: text, is: [en]}}]}
  - {id: out, kind: sink, input: clean}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int64Array, StringArray, UInt32Array};
    use arrow::datatypes::Field;

    const ENGLISH: &str = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.";
    const FRENCH: &str = "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde.";
    const GERMAN: &str =
        "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer von der Veranda zusieht.";

    /// Columns: id, text (nullable), format, chunk_tokens (UInt32), score (Float32, nullable), n (Int64).
    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
            Field::new("format", DataType::Utf8, true),
            Field::new("chunk_tokens", DataType::UInt32, false),
            Field::new("score", DataType::Float32, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
                Arc::new(StringArray::from(vec![Some(ENGLISH), Some(FRENCH), Some(GERMAN), Some("12345"), None])),
                Arc::new(StringArray::from(vec![Some("md"), Some("html"), Some("md"), None, Some("txt")])),
                Arc::new(UInt32Array::from(vec![3, 5, 10, 11, 7])),
                Arc::new(Float32Array::from(vec![Some(0.5), Some(1.5), None, Some(-2.0), Some(f32::NAN)])),
                Arc::new(Int64Array::from(vec![-5, 0, 5, 10, 1_000_000])),
            ],
        )
        .unwrap()
    }

    fn filter(predicate: Predicate) -> RowFilter {
        RowFilter::new(FilterSpec { predicate }).unwrap()
    }

    /// Runs `predicate` over [`batch`]: the kept ids and the rejects as `(row, reason)`.
    fn run(predicate: Predicate) -> (Vec<String>, Vec<(usize, String)>) {
        let mut op = filter(predicate);
        let input = batch();
        assert_eq!(op.output_schema(&input.schema()).unwrap(), input.schema());
        let out = op.process(input).unwrap();
        let ids = string_column(&out.rows, "id").unwrap().iter().map(|v| v.unwrap().to_string()).collect();
        (ids, out.rejects.into_iter().map(|r| (r.row, r.reason)).collect())
    }

    fn len(column: &str, min: Option<usize>, max: Option<usize>) -> Predicate {
        Predicate::Len(LenPredicate { column: column.into(), min, max })
    }

    fn regex(column: &str, pattern: &str, negate: bool) -> Predicate {
        Predicate::Regex(RegexPredicate { column: column.into(), pattern: pattern.into(), negate })
    }

    fn language(column: &str, is: &[&str], min_confidence: f64) -> Predicate {
        Predicate::Language(LanguagePredicate {
            column: column.into(),
            is: is.iter().map(|s| s.to_string()).collect(),
            min_confidence,
        })
    }

    fn range(column: &str, min: Option<f64>, max: Option<f64>) -> Predicate {
        Predicate::Range(RangePredicate { column: column.into(), min, max })
    }

    fn equals(column: &str, value: &str) -> Predicate {
        Predicate::Equals(EqualsPredicate { column: column.into(), value: value.into() })
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn reasons(list: &[(usize, &str)]) -> Vec<(usize, String)> {
        list.iter().map(|(row, reason)| (*row, reason.to_string())).collect()
    }

    #[test]
    fn len_keeps_rows_within_bounds() {
        let (kept, rejects) = run(len("format", Some(3), Some(3)));
        assert_eq!(kept, ids(&["e"]));
        assert_eq!(
            rejects,
            reasons(&[
                (0, "len(format) = 2 < min 3"),
                (1, "len(format) = 4 > max 3"),
                (2, "len(format) = 2 < min 3"),
                (3, "len(format) is null"),
            ])
        );
        let (kept, rejects) = run(len("text", None, Some(85)));
        assert_eq!(kept, ids(&["a", "d"]));
        assert_eq!(rejects[0], (1, format!("len(text) = {} > max 85", FRENCH.chars().count())));
        assert_eq!(rejects[2], (4, "len(text) is null".to_string()));
    }

    #[test]
    fn len_counts_characters_not_bytes() {
        // "über" and "während": German has multi-byte characters.
        assert!(GERMAN.len() > GERMAN.chars().count());
        let chars = GERMAN.chars().count();
        let (kept, _) = run(len("text", Some(chars), Some(chars)));
        assert_eq!(kept, ids(&["c"]));
    }

    #[test]
    fn regex_matches_and_negates() {
        let (kept, rejects) = run(regex("text", r"^\d+$", false));
        assert_eq!(kept, ids(&["d"]));
        assert_eq!(
            rejects,
            reasons(&[
                (0, r"regex(text) /^\d+$/ did not match"),
                (1, r"regex(text) /^\d+$/ did not match"),
                (2, r"regex(text) /^\d+$/ did not match"),
                (4, "regex(text) is null"),
            ])
        );
        let (kept, rejects) = run(regex("text", r"^\d+$", true));
        assert_eq!(kept, ids(&["a", "b", "c"]));
        assert_eq!(rejects, reasons(&[(3, r"regex(text) /^\d+$/ matched (negate)"), (4, "regex(text) is null")]));
    }

    #[test]
    fn language_detects_and_names_the_language_found() {
        let (kept, rejects) = run(language("text", &["en", "fra"], 0.0));
        assert_eq!(kept, ids(&["a", "b"]));
        let german = whatlang::detect(GERMAN).unwrap();
        assert_eq!(german.lang(), Lang::Deu);
        assert_eq!(
            rejects,
            vec![
                (2, format!("language(text) = de ({:.2}), want one of [en, fra]", german.confidence())),
                (3, "language(text): language not detected".to_string()),
                (4, "language(text) is null".to_string()),
            ]
        );
        // 3-letter and upper-case codes work too.
        let (kept, _) = run(language("text", &["DEU"], 0.0));
        assert_eq!(kept, ids(&["c"]));
    }

    #[test]
    fn language_reason_text_is_exact() {
        let (_, rejects) = run(language("text", &["en", "fr"], 0.0));
        assert_eq!(rejects[0].1, "language(text) = de (1.00), want one of [en, fr]");
    }

    #[test]
    fn language_min_confidence_rejects_unsure_detections() {
        let short = "ok";
        let info = whatlang::detect(short).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let input = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![ENGLISH, short]))]).unwrap();
        let code = lang_code(info.lang());
        let mut op = filter(language("text", &["en", code], 0.5));
        let out = op.process(input).unwrap();
        assert!(info.confidence() < 0.5, "whatlang is too sure about {short:?}");
        assert_eq!(
            out.rejects,
            vec![Reject {
                row: 1,
                reason: format!("language(text) = {code} ({:.2}), want confidence >= 0.5", info.confidence()),
            }]
        );
    }

    #[test]
    fn range_casts_any_numeric_type() {
        let (kept, rejects) = run(range("chunk_tokens", Some(5.0), Some(10.0)));
        assert_eq!(kept, ids(&["b", "c", "e"]));
        assert_eq!(
            rejects,
            reasons(&[(0, "range(chunk_tokens) = 3 < min 5"), (3, "range(chunk_tokens) = 11 > max 10")])
        );
        let (kept, rejects) = run(range("n", None, Some(5.0)));
        assert_eq!(kept, ids(&["a", "b", "c"]));
        assert_eq!(rejects, reasons(&[(3, "range(n) = 10 > max 5"), (4, "range(n) = 1000000 > max 5")]));
        let (kept, rejects) = run(range("score", Some(0.0), None));
        assert_eq!(kept, ids(&["a", "b"]));
        assert_eq!(
            rejects,
            reasons(&[
                (2, "range(score) is null"),
                (3, "range(score) = -2 < min 0"),
                (4, "range(score) = NaN is not a number"),
            ])
        );
    }

    #[test]
    fn equals_compares_strings() {
        let (kept, rejects) = run(equals("format", "md"));
        assert_eq!(kept, ids(&["a", "c"]));
        assert_eq!(
            rejects,
            reasons(&[
                (1, r#"equals(format) = "html", want "md""#),
                (3, "equals(format) is null"),
                (4, r#"equals(format) = "txt", want "md""#),
            ])
        );
    }

    #[test]
    fn all_reports_the_first_failing_child() {
        let (kept, rejects) = run(Predicate::All(vec![range("chunk_tokens", Some(5.0), None), equals("format", "md")]));
        assert_eq!(kept, ids(&["c"]));
        assert_eq!(
            rejects,
            reasons(&[
                (0, "range(chunk_tokens) = 3 < min 5"),
                (1, r#"equals(format) = "html", want "md""#),
                (3, "equals(format) is null"),
                (4, r#"equals(format) = "txt", want "md""#),
            ])
        );
    }

    #[test]
    fn any_reports_every_failing_child() {
        let (kept, rejects) = run(Predicate::Any(vec![equals("format", "md"), range("n", Some(10.0), None)]));
        assert_eq!(kept, ids(&["a", "c", "d", "e"]));
        assert_eq!(rejects, reasons(&[(1, r#"none of: equals(format) = "html", want "md"; range(n) = 0 < min 10"#)]));
    }

    #[test]
    fn not_inverts_and_describes_what_matched() {
        let (kept, rejects) = run(Predicate::Not(Box::new(equals("format", "md"))));
        assert_eq!(kept, ids(&["b", "d", "e"]));
        assert_eq!(
            rejects,
            reasons(&[(0, r#"not(equals(format) = "md") matched"#), (2, r#"not(equals(format) = "md") matched"#)])
        );
    }

    #[test]
    fn nested_predicates_combine() {
        // Keep markdown rows or rows with few tokens, but never numeric-only texts.
        let predicate = Predicate::All(vec![
            Predicate::Any(vec![equals("format", "md"), range("chunk_tokens", None, Some(5.0))]),
            Predicate::Not(Box::new(Predicate::All(vec![regex("text", r"^\d+$", false), len("text", Some(1), None)]))),
        ]);
        let (kept, rejects) = run(predicate);
        assert_eq!(kept, ids(&["a", "b", "c"]));
        assert_eq!(
            rejects,
            reasons(&[
                (3, r"none of: equals(format) is null; range(chunk_tokens) = 11 > max 5"),
                (4, r#"none of: equals(format) = "txt", want "md"; range(chunk_tokens) = 7 > max 5"#),
            ])
        );
        let (_, rejects) = run(Predicate::Not(Box::new(Predicate::All(vec![
            regex("text", r"^\d+$", false),
            len("text", Some(1), Some(10)),
        ]))));
        assert_eq!(rejects, reasons(&[(3, r"not(all(regex(text) /^\d+$/, len(text) in [1, 10])) matched")]));
    }

    #[test]
    fn kept_rows_keep_their_order_and_columns() {
        let mut op = filter(range("n", Some(0.0), None));
        let out = op.process(batch()).unwrap();
        assert_eq!(out.rows.schema(), batch().schema());
        let n = out.rows.column_by_name("n").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.values().to_vec(), vec![0, 5, 10, 1_000_000]);
    }

    #[test]
    fn plan_refuses_missing_and_mistyped_columns() {
        let schema = batch().schema();
        let plan = |predicate| filter(predicate).output_schema(&schema);
        match plan(len("body", Some(1), None)) {
            Err(OpError::MissingColumn { column, .. }) => assert_eq!(column, "body"),
            other => panic!("{other:?}"),
        }
        match plan(regex("n", "x", false)) {
            Err(OpError::ColumnType { column, .. }) => assert_eq!(column, "n"),
            other => panic!("{other:?}"),
        }
        match plan(range("format", Some(1.0), None)) {
            Err(OpError::ColumnType { column, .. }) => assert_eq!(column, "format"),
            other => panic!("{other:?}"),
        }
        // Columns nested deep inside combinators are checked too.
        match plan(Predicate::Any(vec![
            equals("format", "md"),
            Predicate::Not(Box::new(language("lang", &["en"], 0.0))),
        ])) {
            Err(OpError::MissingColumn { column, .. }) => assert_eq!(column, "lang"),
            other => panic!("{other:?}"),
        }
        let err = plan(range("missing", Some(1.0), None)).unwrap_err();
        assert!(err.to_string().contains("`missing`"), "{err}");
    }

    #[test]
    fn invalid_settings_are_refused() {
        let refused = |predicate: Predicate| RowFilter::new(FilterSpec { predicate }).unwrap_err().to_string();
        let err = refused(regex("text", "(unclosed", false));
        assert!(
            err.contains("where.regex.pattern") && err.contains("/(unclosed/") && err.contains("unclosed group"),
            "{err}"
        );
        let err = refused(Predicate::All(vec![equals("format", "md"), language("text", &["en", "xx"], 0.0)]));
        assert!(err.contains("where.all[1].language.is") && err.contains("`xx`"), "{err}");
        assert!(refused(language("text", &[], 0.0)).contains("at least one"));
        assert!(refused(language("text", &["en"], 1.5)).contains("min_confidence"));
        assert!(refused(len("text", Some(10), Some(5))).contains("greater than max"));
        assert!(refused(len("text", None, None)).contains("needs"));
        assert!(refused(range("n", Some(f64::NAN), None)).contains("NaN"));
        assert!(refused(Predicate::Any(vec![])).contains("where.any"));
    }

    #[test]
    fn spec_deserializes_from_the_documented_shape() {
        let json = r#"{"where": {"all": [
            {"len": {"column": "text", "min": 20}},
            {"regex": {"column": "text", "pattern": "^\\d+$", "negate": true}},
            {"language": {"column": "text", "is": ["en", "fra"], "min_confidence": 0.5}},
            {"range": {"column": "chunk_tokens", "min": 5, "max": 10.5}},
            {"any": [{"equals": {"column": "format", "value": "md"}}, {"not": {"equals": {"column": "format", "value": "html"}}}]}
        ]}}"#;
        let spec: FilterSpec = serde_json::from_str(json).unwrap();
        let expected = FilterSpec {
            predicate: Predicate::All(vec![
                len("text", Some(20), None),
                regex("text", r"^\d+$", true),
                language("text", &["en", "fra"], 0.5),
                range("chunk_tokens", Some(5.0), Some(10.5)),
                Predicate::Any(vec![equals("format", "md"), Predicate::Not(Box::new(equals("format", "html")))]),
            ]),
        };
        assert_eq!(spec, expected);
        assert!(RowFilter::new(spec).is_ok());
        assert!(serde_json::from_str::<FilterSpec>(r#"{"where": {"len": {"column": "text", "mn": 1}}}"#).is_err());
        assert!(serde_json::from_str::<FilterSpec>(r#"{"where": {"length": {"column": "text"}}}"#).is_err());
        assert!(serde_json::from_str::<FilterSpec>(r#"{"predicate": {"len": {"column": "text"}}}"#).is_err());
    }
}
