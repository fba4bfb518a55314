//! Pure (sans-IO) dataflow operators for sdg.
//!
//! An operator turns Arrow [`RecordBatch`]es into record batches. It never opens a file or a socket; the
//! engine (`sdg` crate) owns all I/O, scheduling, exchange between workers and commits. This keeps every
//! operator unit-testable with plain batches.
//!
//! The contract:
//! - [`Operator::output_schema`] is called at plan time with the upstream schema, so a graph whose columns
//!   do not line up is refused before any work starts.
//! - [`Operator::process`] turns one input batch into an [`Output`]: the rows that go on, and the input rows
//!   that were dropped, each with a reason (they end in the run's `rejects/`).
//! - [`Operator::shape`] declares how the engine must run the operator: whether it calls models, where its
//!   rows are exchanged between workers and in which order its batches arrive. The engine matches on it to
//!   pick the shell; it infers nothing. A shape with [`Exchange::ByKey`] gets its keys from
//!   [`Operator::router`].

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;

pub mod answer;
pub mod chunk;
pub mod columns;
pub mod compare;
pub mod dedup;
pub mod evol_instruct;
pub mod filter;
pub mod generate;
pub mod json_extract;
pub mod lang;
pub mod model;
pub mod project;
pub mod prompt;
pub mod protect;
pub mod rewrite;
pub mod sample;
pub mod score;
pub mod self_instruct;
pub mod shingles;
pub mod task;
#[cfg(test)]
pub(crate) mod testing;
pub mod text_hash;
pub mod translate;
pub mod verify_score;
pub mod verify_vote;
pub mod vote;

/// Errors of an operator: at plan time (schema, settings) or on a batch.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("input has no column `{column}` (this node needs it as {expected})")]
    MissingColumn { column: String, expected: String },
    #[error("column `{column}` is {found}, but this node needs {expected}")]
    ColumnType { column: String, found: DataType, expected: String },
    #[error("`{key}`: {message}")]
    InvalidSetting { key: String, message: String },
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("engine protocol: {0}")]
    Protocol(String),
}

impl OpError {
    pub fn setting(key: impl Into<String>, message: impl Into<String>) -> Self {
        OpError::InvalidSetting { key: key.into(), message: message.into() }
    }
}

/// One dropped input row: its index in the input batch and why it was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub row: usize,
    pub reason: String,
}

/// What an operator made of one input batch.
#[derive(Debug)]
pub struct Output {
    /// Rows that go on downstream (schema = `output_schema`).
    pub rows: RecordBatch,
    /// Input rows that were dropped, with the reason.
    pub rejects: Vec<Reject>,
}

/// Routes rows to workers by a 64-bit key: rows with equal keys meet on the same worker.
pub trait Router: Send {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, OpError>;
}

/// A pure batch-to-batch operator. See the crate docs for the contract.
pub trait Operator: Send {
    /// The output schema for `input`, or why `input` does not fit this operator.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError>;

    /// Turns one input batch into output rows and rejects (operators that need no model).
    fn process(&mut self, batch: RecordBatch) -> Result<Output, OpError> {
        let _ = batch;
        Err(OpError::Protocol("this operator needs model calls; the engine must use start/resume".into()))
    }

    /// Starts a batch: emit now, or ask for model calls first. `pending` names the batch in `resume`.
    fn start(&mut self, pending: model::PendingId, batch: RecordBatch) -> Result<model::Step, OpError> {
        let _ = pending;
        self.process(batch).map(model::Step::Emit)
    }

    /// Continues batch `pending` with one response per request of the last `Call`, in request order.
    fn resume(
        &mut self,
        pending: model::PendingId,
        responses: Vec<model::ModelResponse>,
    ) -> Result<model::Step, OpError> {
        let _ = responses;
        Err(OpError::Protocol(format!("resume({pending}) on an operator that made no model call")))
    }

    /// Names of the model endpoints this operator calls (checked against `models:` at plan time).
    fn endpoints(&self) -> Vec<String> {
        Vec::new()
    }

    /// How the engine runs this operator (see [`Shape`]). The default is a pure stream operator.
    fn shape(&self) -> Shape {
        Shape::stream()
    }

    /// The key function of a shape whose exchange is [`Exchange::ByKey`] (`None` otherwise).
    fn router(&self) -> Option<Box<dyn Router>> {
        None
    }
}

/// Whether an operator's batches go through [`Operator::process`] or through model calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// `process`: batch in, rows and rejects out.
    Pure,
    /// `start` / `resume`: the engine performs the model requests in between.
    Models,
}

/// Where rows go between workers before the operator sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// They stay on the worker that holds them.
    Local,
    /// Rows with equal keys meet on one worker; the text says what the key is (shown by `sdg plan`), and
    /// [`Operator::router`] computes it.
    ByKey(String),
    /// Every row goes to one worker: the operator keeps state over the whole run.
    OneWorker,
}

/// In which order batches reach the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As they arrive.
    Arrival,
    /// One timestamp at a time, in timestamp order, once the timestamp is complete; rows sorted by `id`.
    /// A model operator of this order has one timestamp's calls in flight at a time, so its decisions do
    /// not depend on reply timing or on the number of workers.
    Time,
}

/// How the engine must run an operator, declared by the operator and matched (not inferred) by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub calls: Calls,
    pub exchange: Exchange,
    pub order: Order,
}

impl Shape {
    /// A pure operator over batches as they come, on the worker that holds them.
    pub fn stream() -> Shape {
        Shape { calls: Calls::Pure, exchange: Exchange::Local, order: Order::Arrival }
    }

    /// A model operator over batches as they come, on the worker that holds them.
    pub fn model() -> Shape {
        Shape { calls: Calls::Models, ..Shape::stream() }
    }

    /// The same shape with rows exchanged by `exchange` first.
    pub fn exchanged(self, exchange: Exchange) -> Shape {
        Shape { exchange, ..self }
    }

    /// The same shape with batches in time order (see [`Order::Time`]).
    pub fn in_time_order(self) -> Shape {
        Shape { order: Order::Time, ..self }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls = match self.calls {
            Calls::Pure => "pure",
            Calls::Models => "model",
        };
        let order = match self.order {
            Order::Arrival => "stream",
            Order::Time => "time-ordered",
        };
        write!(f, "{calls}, {order}")
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::Local => f.write_str("none (rows stay on their worker)"),
            Exchange::ByKey(key) => write!(f, "by {key}"),
            Exchange::OneWorker => f.write_str("all rows to one worker"),
        }
    }
}

/// The named column of `batch` as UTF-8 strings, or a typed error.
pub fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, OpError> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| OpError::MissingColumn { column: name.to_string(), expected: "a string column".to_string() })?;
    array.as_any().downcast_ref::<StringArray>().ok_or_else(|| OpError::ColumnType {
        column: name.to_string(),
        found: array.data_type().clone(),
        expected: "Utf8".to_string(),
    })
}

/// Checks at plan time that `schema` has `name` with type `expected`.
pub fn require_column(schema: &Schema, name: &str, expected: &DataType) -> Result<(), OpError> {
    let field = schema
        .field_with_name(name)
        .map_err(|_| OpError::MissingColumn { column: name.to_string(), expected: expected.to_string() })?;
    if field.data_type() != expected {
        return Err(OpError::ColumnType {
            column: name.to_string(),
            found: field.data_type().clone(),
            expected: expected.to_string(),
        });
    }
    Ok(())
}

/// Keeps the rows of `batch` whose index is in `keep` (sorted ascending).
pub fn take_rows(batch: &RecordBatch, keep: &[u32]) -> Result<RecordBatch, OpError> {
    let indices = arrow::array::UInt32Array::from(keep.to_vec());
    Ok(arrow::compute::take_record_batch(batch, &indices)?)
}

/// An empty batch of `schema`.
pub fn empty_batch(schema: &SchemaRef) -> RecordBatch {
    RecordBatch::new_empty(Arc::clone(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt32Array;
    use arrow::datatypes::Field;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::UInt32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["a", "b", "c"])), Arc::new(UInt32Array::from(vec![1, 2, 3]))],
        )
        .unwrap()
    }

    #[test]
    fn string_column_reports_missing_and_mistyped_columns() {
        let b = batch();
        assert_eq!(string_column(&b, "id").unwrap().value(1), "b");
        assert!(matches!(string_column(&b, "nope"), Err(OpError::MissingColumn { .. })));
        assert!(matches!(string_column(&b, "n"), Err(OpError::ColumnType { .. })));
    }

    #[test]
    fn require_column_checks_type() {
        let b = batch();
        assert!(require_column(&b.schema(), "id", &DataType::Utf8).is_ok());
        assert!(require_column(&b.schema(), "n", &DataType::Utf8).is_err());
        assert!(require_column(&b.schema(), "x", &DataType::Utf8).is_err());
    }

    #[test]
    fn take_rows_keeps_selected_rows_in_order() {
        let kept = take_rows(&batch(), &[0, 2]).unwrap();
        assert_eq!(kept.num_rows(), 2);
        assert_eq!(string_column(&kept, "id").unwrap().value(1), "c");
    }
}
