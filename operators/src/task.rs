//! Per-row model work as small state machines, run side by side over one batch.
//!
//! A [`RowTask`] is polled with the responses to the requests it asked for last (none on the first poll)
//! and answers with more requests or its result. [`TaskSet`] runs the tasks of one batch together: it
//! concatenates their requests into one engine call and hands each task back exactly its own responses.
//! Tasks compose: `rewrite` runs a `vote` task and then a `score` task inside its own.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::OpError;
use crate::model::{ModelRequest, ModelResponse, PendingId};

/// What a task needs next.
#[derive(Debug)]
pub enum Poll<T> {
    /// Perform these requests (never empty), then poll again with their responses in order.
    Need(Vec<ModelRequest>),
    Done(T),
}

/// One row's model-driven computation.
pub trait RowTask: Send {
    type Out: Send;
    /// Advances with the responses to the last `Need` (empty on the first poll).
    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Self::Out>;
}

enum Slot<T: RowTask> {
    Running { task: T, waiting: usize },
    Done(T::Out),
}

/// The tasks of one batch, advanced together.
pub struct TaskSet<T: RowTask> {
    slots: Vec<Slot<T>>,
}

impl<T: RowTask> TaskSet<T> {
    /// Polls every task once; returns the set and the requests of all tasks.
    pub fn start(tasks: Vec<T>) -> (Self, Vec<ModelRequest>) {
        let mut set = TaskSet { slots: Vec::with_capacity(tasks.len()) };
        let mut requests = Vec::new();
        for mut task in tasks {
            let slot = match task.poll(Vec::new()) {
                Poll::Need(asked) => {
                    let waiting = asked.len();
                    requests.extend(asked);
                    Slot::Running { task, waiting }
                }
                Poll::Done(out) => Slot::Done(out),
            };
            set.slots.push(slot);
        }
        (set, requests)
    }

    /// Hands each running task its responses (in the order of the last requests) and collects the next ones.
    pub fn resume(&mut self, responses: Vec<ModelResponse>) -> Result<Vec<ModelRequest>, OpError> {
        let expected: usize =
            self.slots.iter().map(|slot| if let Slot::Running { waiting, .. } = slot { *waiting } else { 0 }).sum();
        if responses.len() != expected {
            return Err(OpError::Protocol(format!("got {} responses for {expected} requests", responses.len())));
        }
        let mut responses = responses.into_iter();
        let mut requests = Vec::new();
        for slot in &mut self.slots {
            let Slot::Running { task, waiting } = slot else { continue };
            let own: Vec<ModelResponse> = responses.by_ref().take(*waiting).collect();
            match task.poll(own) {
                Poll::Need(asked) => {
                    *waiting = asked.len();
                    requests.extend(asked);
                }
                Poll::Done(out) => *slot = Slot::Done(out),
            }
        }
        Ok(requests)
    }

    /// The results, in task order, once no request is outstanding.
    pub fn finish(self) -> Result<Vec<T::Out>, OpError> {
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(out) => Ok(out),
                Slot::Running { .. } => Err(OpError::Protocol("a task is still waiting for responses".into())),
            })
            .collect()
    }
}

/// A row's task, or the reason the row was rejected before any model call (null id, a prompt that did not
/// render, ...): every task-driven operator starts its rows this way.
pub enum RowOrReject<T> {
    Run(Box<T>),
    Rejected(String),
}

impl<T, O> RowTask for RowOrReject<T>
where
    T: RowTask<Out = Result<O, String>>,
    O: Send,
{
    type Out = Result<O, String>;

    fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Self::Out> {
        match self {
            RowOrReject::Run(task) => task.poll(responses),
            RowOrReject::Rejected(reason) => Poll::Done(Err(std::mem::take(reason))),
        }
    }
}

/// Splits per-row results into the kept row indices, the rejects and the kept outcomes, in row order.
pub fn split_results<O>(results: Vec<Result<O, String>>) -> (Vec<u32>, Vec<crate::Reject>, Vec<O>) {
    let mut keep = Vec::new();
    let mut rejects = Vec::new();
    let mut outcomes = Vec::new();
    for (row, result) in results.into_iter().enumerate() {
        match result {
            Ok(outcome) => {
                keep.push(row as u32);
                outcomes.push(outcome);
            }
            Err(reason) => rejects.push(crate::Reject { row, reason }),
        }
    }
    (keep, rejects, outcomes)
}

/// Batches whose tasks are in flight, by pending id: the bookkeeping every task-driven operator shares.
pub struct PendingTasks<T: RowTask> {
    batches: HashMap<PendingId, (RecordBatch, TaskSet<T>)>,
}

impl<T: RowTask> std::fmt::Debug for PendingTasks<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingTasks({} batches)", self.batches.len())
    }
}

impl<T: RowTask> Default for PendingTasks<T> {
    fn default() -> Self {
        PendingTasks { batches: HashMap::new() }
    }
}

/// What a task-driven operator does next with a batch.
pub enum Advance<T> {
    Call(Vec<ModelRequest>),
    /// Every task is done: the input batch and the results, one per task.
    Done(RecordBatch, Vec<T>),
}

impl<T> Advance<T> {
    /// The operator's next step: the call, or the finished batch and its results turned into output by `emit`.
    pub fn into_step(
        self,
        emit: impl FnOnce(RecordBatch, Vec<T>) -> Result<crate::Output, OpError>,
    ) -> Result<crate::model::Step, OpError> {
        match self {
            Advance::Call(requests) => Ok(crate::model::Step::Call(requests)),
            Advance::Done(batch, results) => emit(batch, results).map(crate::model::Step::Emit),
        }
    }
}

impl<T: RowTask> PendingTasks<T> {
    /// Starts the tasks of `batch` under `pending`.
    pub fn start(&mut self, pending: PendingId, batch: RecordBatch, tasks: Vec<T>) -> Result<Advance<T::Out>, OpError> {
        if self.batches.contains_key(&pending) {
            return Err(OpError::Protocol(format!("start({pending}) while batch {pending} is still pending")));
        }
        let (set, requests) = TaskSet::start(tasks);
        if requests.is_empty() {
            return Ok(Advance::Done(batch, set.finish()?));
        }
        self.batches.insert(pending, (batch, set));
        Ok(Advance::Call(requests))
    }

    /// Continues batch `pending` with the responses to its last call.
    pub fn resume(&mut self, pending: PendingId, responses: Vec<ModelResponse>) -> Result<Advance<T::Out>, OpError> {
        let Some((batch, mut set)) = self.batches.remove(&pending) else {
            return Err(OpError::Protocol(format!("resume({pending}) for a batch that is not pending")));
        };
        let requests = set.resume(responses).map_err(|e| OpError::Protocol(format!("resume({pending}): {e}")))?;
        if requests.is_empty() {
            return Ok(Advance::Done(batch, set.finish()?));
        }
        self.batches.insert(pending, (batch, set));
        Ok(Advance::Call(requests))
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The input schema with `fields` appended; an input column of the same name as a new one is dropped, so an
/// annotating node can run again downstream (its columns then describe the last run).
pub fn annotated_schema(input: &Schema, fields: &[Field]) -> SchemaRef {
    let written: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    let mut out: Vec<Field> =
        input.fields().iter().filter(|f| !written.contains(&f.name().as_str())).map(|f| f.as_ref().clone()).collect();
    out.extend(fields.iter().cloned());
    Arc::new(Schema::new_with_metadata(out, input.metadata().clone()))
}

/// The rows `keep` of `batch` with `columns` (one value per kept row) set as in [`annotated_schema`].
pub fn annotate(
    batch: &RecordBatch,
    keep: &[u32],
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch, OpError> {
    let kept = crate::take_rows(batch, keep)?;
    let added = columns.len();
    let base = schema.fields().len() - added;
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in &schema.fields()[..base] {
        let column = kept.column_by_name(field.name()).ok_or_else(|| OpError::MissingColumn {
            column: field.name().clone(),
            expected: "an input column".to_string(),
        })?;
        arrays.push(Arc::clone(column));
    }
    arrays.extend(columns);
    Ok(RecordBatch::try_new(Arc::clone(schema), arrays)?)
}

/// Derives a per-purpose seed from a base seed, a row id and a salt, so that different calls of one row
/// (votes, student answers, rewrite rounds, retries) never share a cache entry by accident.
pub fn derive_seed(base: Option<u64>, id: &str, salt: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&base.unwrap_or(0).to_le_bytes());
    hasher.update(&(id.len() as u64).to_le_bytes());
    hasher.update(id.as_bytes());
    hasher.update(salt.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    // Stay below 2^53 so the seed survives JSON numbers in any client.
    u64::from_le_bytes(bytes) >> 11
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelReply, Prompt, Sampling, Usage};

    /// Asks `rounds` times for one echo request, then returns the texts it got.
    struct Echo {
        row: usize,
        rounds: usize,
        seen: Vec<String>,
    }

    fn request(row: usize, text: String) -> ModelRequest {
        ModelRequest { endpoint: "m".into(), prompt: Prompt::Completion(text), sampling: Sampling::default(), row }
    }

    impl RowTask for Echo {
        type Out = Vec<String>;
        fn poll(&mut self, responses: Vec<ModelResponse>) -> Poll<Vec<String>> {
            for response in responses {
                self.seen.push(response.map(|r| r.texts.join("|")).unwrap_or_else(|e| format!("error {e}")));
            }
            if self.seen.len() == self.rounds {
                return Poll::Done(std::mem::take(&mut self.seen));
            }
            Poll::Need(vec![request(self.row, format!("{}:{}", self.row, self.seen.len()))])
        }
    }

    fn answer(requests: &[ModelRequest]) -> Vec<ModelResponse> {
        requests
            .iter()
            .map(|r| {
                let Prompt::Completion(text) = &r.prompt else { unreachable!() };
                Ok(ModelReply {
                    texts: vec![text.clone()],
                    embeddings: Vec::new(),
                    model: "m".into(),
                    usage: Usage::default(),
                    latency_ms: 0.0,
                    cached: false,
                })
            })
            .collect()
    }

    #[test]
    fn tasks_of_different_lengths_get_their_own_responses() {
        let tasks = vec![
            Echo { row: 0, rounds: 0, seen: vec![] },
            Echo { row: 1, rounds: 1, seen: vec![] },
            Echo { row: 2, rounds: 3, seen: vec![] },
        ];
        let mut pending = PendingTasks::default();
        let mut step = pending
            .start(
                7,
                arrow::array::RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::empty())),
                tasks,
            )
            .unwrap();
        let mut calls = 0;
        let results = loop {
            match step {
                Advance::Call(requests) => {
                    calls += 1;
                    step = pending.resume(7, answer(&requests)).unwrap();
                }
                Advance::Done(_, results) => break results,
            }
        };
        assert_eq!(calls, 3);
        assert!(pending.is_empty());
        assert_eq!(results[0], Vec::<String>::new());
        assert_eq!(results[1], ["1:0"]);
        assert_eq!(results[2], ["2:0", "2:1", "2:2"]);
    }

    #[test]
    fn wrong_response_counts_and_unknown_batches_are_protocol_errors() {
        let mut pending = PendingTasks::default();
        let batch = arrow::array::RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        let step = pending.start(1, batch.clone(), vec![Echo { row: 0, rounds: 1, seen: vec![] }]).unwrap();
        assert!(matches!(step, Advance::Call(ref r) if r.len() == 1));
        assert!(pending.start(1, batch, vec![]).is_err());
        assert!(pending.resume(2, vec![]).is_err());
        assert!(pending.resume(1, vec![]).is_err());
    }

    #[test]
    fn derived_seeds_differ_by_salt_and_id_and_fit_in_53_bits() {
        let a = derive_seed(Some(1), "row", "vote");
        assert_eq!(a, derive_seed(Some(1), "row", "vote"));
        assert_ne!(a, derive_seed(Some(1), "row", "score"));
        assert_ne!(a, derive_seed(Some(1), "row2", "vote"));
        assert_ne!(a, derive_seed(Some(2), "row", "vote"));
        assert!(a < 1 << 53);
    }
}
