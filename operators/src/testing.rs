//! Test helpers: canned model replies and a driver that runs an operator's calls to completion.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::model::{ModelReply, ModelRequest, ModelResponse, Prompt, Step, Usage};
use crate::{Operator, Output};

/// A successful reply with these sample texts.
pub fn reply(texts: Vec<String>) -> ModelResponse {
    Ok(ModelReply {
        texts,
        embeddings: Vec::new(),
        model: "canned".into(),
        usage: Usage::default(),
        latency_ms: 0.0,
        cached: false,
    })
}

/// A successful embedding reply.
pub fn embeddings(vectors: Vec<Vec<f32>>) -> ModelResponse {
    Ok(ModelReply {
        texts: Vec::new(),
        embeddings: vectors,
        model: "canned-embedder".into(),
        usage: Usage::default(),
        latency_ms: 0.0,
        cached: false,
    })
}

/// The last user message of a chat request (the whole prompt otherwise).
pub fn user_text(request: &ModelRequest) -> String {
    match &request.prompt {
        Prompt::Chat(messages) => {
            messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default()
        }
        Prompt::Completion(text) => text.clone(),
        Prompt::Embed(inputs) => inputs.join("\n"),
    }
}

/// Runs `batch` through `op`, answering every request with `answer`, and returns the output and the number
/// of calls (engine round trips).
pub fn drive(
    op: &mut dyn Operator,
    batch: RecordBatch,
    mut answer: impl FnMut(&ModelRequest) -> ModelResponse,
) -> (Output, usize) {
    let mut step = op.start(1, batch).expect("start");
    let mut calls = 0;
    loop {
        match step {
            Step::Emit(output) => return (output, calls),
            Step::Call(requests) => {
                calls += 1;
                let responses = requests.iter().map(&mut answer).collect();
                step = op.resume(1, responses).expect("resume");
            }
        }
    }
}

/// A batch of Utf8 columns; the first column is named `id`.
pub fn string_batch(columns: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
    let fields: Vec<Field> = columns.iter().map(|(name, _)| Field::new(*name, DataType::Utf8, true)).collect();
    let arrays: Vec<ArrayRef> =
        columns.iter().map(|(_, values)| Arc::new(StringArray::from(values.clone())) as ArrayRef).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch")
}

/// The values of a Utf8 column.
pub fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
    let array = crate::string_column(batch, column).expect("string column");
    (0..array.len()).map(|i| (!array.is_null(i)).then(|| array.value(i).to_string())).collect()
}

/// The values of a Float64 column.
pub fn floats(batch: &RecordBatch, column: &str) -> Vec<Option<f64>> {
    let array = batch.column_by_name(column).expect("column");
    let array = array.as_any().downcast_ref::<arrow::array::Float64Array>().expect("Float64");
    (0..array.len()).map(|i| (!array.is_null(i)).then(|| array.value(i))).collect()
}
