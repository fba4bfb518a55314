//! Chat prompts rendered from a row's columns with minijinja: a system and a user template, compiled once.

use std::collections::{BTreeMap, HashSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use minijinja::value::Value;
use minijinja::{Environment, UndefinedBehavior};

use crate::OpError;
use crate::model::ChatMessage;

const SYSTEM: &str = "system";
const USER: &str = "prompt";

/// A compiled pair of chat templates whose variables are input columns (plus a few named extras).
pub struct ChatTemplate {
    env: Environment<'static>,
    has_system: bool,
    /// Variables that are neither extras nor globals: they must be input columns.
    column_vars: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("column_vars", &self.column_vars).finish()
    }
}

impl ChatTemplate {
    /// Compiles `system` (optional) and `prompt`. `extras` are variables the caller supplies at render time;
    /// `key_prefix` prefixes the setting names in errors (e.g. `judge.` for a nested template).
    pub fn new(system: Option<&str>, prompt: &str, extras: &[&str], key_prefix: &str) -> Result<Self, OpError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        if let Some(system) = system {
            env.add_template_owned(SYSTEM, system.to_string())
                .map_err(|e| OpError::setting(format!("{key_prefix}system"), format!("invalid template: {e}")))?;
        }
        env.add_template_owned(USER, prompt.to_string())
            .map_err(|e| OpError::setting(format!("{key_prefix}prompt"), format!("invalid template: {e}")))?;
        let globals: HashSet<String> = env.globals().map(|(name, _)| name.to_string()).collect();
        let mut column_vars = Vec::new();
        for name in [SYSTEM, USER] {
            let Ok(template) = env.get_template(name) else { continue };
            for var in template.undeclared_variables(false) {
                if !extras.contains(&var.as_str()) && !globals.contains(&var) && !column_vars.contains(&var) {
                    column_vars.push(var);
                }
            }
        }
        column_vars.sort();
        Ok(ChatTemplate { env, has_system: system.is_some(), column_vars })
    }

    /// The input columns the templates read.
    pub fn column_vars(&self) -> &[String] {
        &self.column_vars
    }

    /// Plan-time check that every column the templates read exists.
    pub fn check_schema(&self, input: &Schema, what: &str) -> Result<(), OpError> {
        for var in &self.column_vars {
            if input.column_with_name(var).is_none() {
                return Err(OpError::MissingColumn { column: var.clone(), expected: what.to_string() });
            }
        }
        Ok(())
    }

    /// Renders the messages of one row, with the column variables and `extras`.
    pub fn render(
        &self,
        batch: Option<(&RecordBatch, usize)>,
        extras: &[(&str, Value)],
    ) -> Result<Vec<ChatMessage>, String> {
        let mut context = BTreeMap::new();
        if let Some((batch, row)) = batch {
            for var in &self.column_vars {
                if let Some(column) = batch.column_by_name(var) {
                    let value =
                        cell_value(column.as_ref(), row).map_err(|e| format!("could not read column `{var}`: {e}"))?;
                    context.insert(var.clone(), value);
                }
            }
        }
        for (name, value) in extras {
            context.insert((*name).to_string(), value.clone());
        }
        let context = Value::from(context);
        let mut messages = Vec::with_capacity(2);
        for (name, role) in [(SYSTEM, "system"), (USER, "user")] {
            if name == SYSTEM && !self.has_system {
                continue;
            }
            let template = self.env.get_template(name).map_err(|e| format!("the `{name}` template is missing: {e}"))?;
            let content =
                template.render(&context).map_err(|e| format!("could not render the `{name}` template: {e}"))?;
            messages.push(ChatMessage::new(role, content));
        }
        Ok(messages)
    }
}

/// One cell as a template value: strings, numbers, booleans and lists as themselves, null as `none`, other
/// types as their Arrow display string.
pub fn cell_value(array: &dyn Array, row: usize) -> Result<Value, String> {
    if array.is_null(row) {
        return Ok(Value::from(()));
    }
    Ok(match array.data_type() {
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Value::from(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Value::from(array.as_string_view().value(row)),
        DataType::Boolean => Value::from(array.as_boolean().value(row)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => Value::from(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(row)),
        DataType::List(_) => list_value(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list_value(array.as_list::<i64>().value(row).as_ref())?,
        _ => Value::from(arrow::util::display::array_value_to_string(array, row).map_err(|e| e.to_string())?),
    })
}

fn list_value(values: &dyn Array) -> Result<Value, String> {
    let items = (0..values.len()).map(|i| cell_value(values, i)).collect::<Result<Vec<_>, _>>()?;
    Ok(Value::from(items))
}

/// The text of a Utf8 cell, `None` for null or a missing column.
pub fn text_cell(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch.column_by_name(column)?;
    let value = cell_value(array.as_ref(), row).ok()?;
    if value.is_none() {
        return None;
    }
    Some(value.as_str().map_or_else(|| value.to_string(), str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("question", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("2+2?"), None])), Arc::new(Int64Array::from(vec![4, 5]))],
        )
        .unwrap()
    }

    #[test]
    fn renders_columns_and_extras_and_finds_column_variables() {
        let t = ChatTemplate::new(Some("sys {{ mode }}"), "Q: {{ question }} ({{ n }})", &["mode"], "").unwrap();
        assert_eq!(t.column_vars(), ["n", "question"]);
        let b = batch();
        let messages = t.render(Some((&b, 0)), &[("mode", Value::from("harder"))]).unwrap();
        assert_eq!(messages, [ChatMessage::new("system", "sys harder"), ChatMessage::new("user", "Q: 2+2? (4)")]);
        assert!(t.check_schema(&b.schema(), "a template variable").is_ok());
        let other = Schema::new(vec![Field::new("question", DataType::Utf8, true)]);
        assert!(matches!(t.check_schema(&other, "x"), Err(OpError::MissingColumn { column, .. }) if column == "n"));
    }

    #[test]
    fn invalid_templates_name_their_key() {
        let err = ChatTemplate::new(None, "{{ oops", &[], "judge.").unwrap_err();
        assert!(err.to_string().contains("judge.prompt"), "{err}");
    }

    #[test]
    fn text_cell_reads_strings_numbers_and_nulls() {
        let b = batch();
        assert_eq!(text_cell(&b, "question", 0).as_deref(), Some("2+2?"));
        assert_eq!(text_cell(&b, "question", 1), None);
        assert_eq!(text_cell(&b, "n", 1).as_deref(), Some("5"));
        assert_eq!(text_cell(&b, "missing", 0), None);
    }
}
