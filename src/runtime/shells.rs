//! Timely operators around sdg's pieces: the source shell (with backpressure), the transform shells
//! (streaming or time-ordered), the router, and the sink shell.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use timely::communication::Pull;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::Message;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::generic::operator::{Operator as TimelyOperator, source};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::progress::frontier::MutableAntichain;

use sdg_operators::columns;
use sdg_operators::model::{ModelResponse, PendingId, Step};
use sdg_operators::{Operator, Router};

use super::batch::{Lane, Packet};
use super::metrics::WorkerCounters;
use crate::io::ingest::{FileReader, IngestSpec, SourceFile};
use crate::io::rejects::{self, RejectRow};
use crate::io::sink::{BucketWriter, CommittedPart, PartSettings};

pub type PacketStream<'s> = Stream<'s, u64, Vec<Packet>>;
type Builder = CapacityContainerBuilder<Vec<Packet>>;

/// Batches of one file share a timestamp range: `file_ordinal << FILE_SHIFT | batch_in_file`.
pub const FILE_SHIFT: u32 = 24;

/// What a worker's source reads and how fast it may go.
pub struct SourceSettings {
    pub node: usize,
    pub node_id: String,
    pub spec: IngestSpec,
    /// (global file ordinal, file) for the files this worker reads, ascending.
    pub files: Vec<(usize, SourceFile)>,
    /// Discovery problems (given to one worker only).
    pub problems: Vec<RejectRow>,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub window: usize,
    pub probe: ProbeHandle<u64>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<WorkerCounters>,
}

/// Reads files into batches. A new batch is read only while fewer than `window` of this worker's batches
/// are still upstream of the sinks (the probe), which bounds memory whatever the corpus size.
pub fn ingest_source<'s>(scope: Scope<'s, u64>, settings: SourceSettings) -> PacketStream<'s> {
    let name = format!("ingest:{}", settings.node_id);
    source::<_, Builder, _, _>(scope, &name, move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability: Option<Capability<u64>> = Some(capability);
        let mut files: VecDeque<(usize, SourceFile)> = settings.files.into();
        let mut problems = settings.problems;
        let mut reader: Option<(usize, FileReader, u64)> = None;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let counters = Arc::clone(&settings.counters);
        let node = settings.node;
        move |output| {
            let Some(cap) = capability.as_mut() else { return };
            if settings.stop.load(Ordering::Relaxed) {
                capability = None;
                return;
            }
            let started = Instant::now();
            let c = &counters.nodes[node];
            if !problems.is_empty() {
                let batch = rejects::to_batch(&problems);
                c.add(&c.rejected, problems.len() as u64);
                problems.clear();
                output.session(&*cap).give(Packet::rejects(batch));
            }
            while let Some(&t) = in_flight.front() {
                if settings.probe.less_equal(&t) {
                    break;
                }
                in_flight.pop_front();
            }
            if in_flight.len() >= settings.window {
                // Wait for the sinks; poll again shortly rather than spin.
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            loop {
                if reader.is_none() {
                    match files.pop_front() {
                        Some((ordinal, file)) => {
                            reader = Some((ordinal, FileReader::open(&settings.spec, &settings.node_id, file), 0));
                        }
                        None => {
                            capability = None;
                            return;
                        }
                    }
                }
                let Some((ordinal, file_reader, batch_index)) = reader.as_mut() else { return };
                match file_reader.next_batch(settings.batch_rows, settings.batch_bytes) {
                    None => {
                        reader = None;
                        c.add(&c.files_done, 1);
                    }
                    Some(read) => {
                        let time = ((*ordinal as u64) << FILE_SHIFT) | (*batch_index).min((1 << FILE_SHIFT) - 1);
                        *batch_index += 1;
                        cap.downgrade(&time);
                        let mut session = output.session(&*cap);
                        let rows = read.rows.num_rows() as u64;
                        if rows > 0 {
                            c.add(&c.rows_out, rows);
                            if let Some(text) = read.rows.column_by_name(columns::TEXT) {
                                c.add(&c.text_bytes_in, text.to_data().buffers().get(1).map_or(0, |b| b.len()) as u64);
                            }
                            session.give(Packet::rows(read.rows));
                        }
                        if !read.rejects.is_empty() {
                            c.add(&c.rejected, read.rejects.len() as u64);
                            session.give(Packet::rejects(rejects::to_batch(&read.rejects)));
                        }
                        drop(session);
                        c.add(&c.batches, 1);
                        c.busy(started.elapsed());
                        in_flight.push_back(time);
                        // Nothing later from this worker can be at `time`: let it pass the sinks.
                        cap.downgrade(&(time + 1));
                        activator.activate();
                        return;
                    }
                }
            }
        }
    })
}

/// A plan node's operator on one worker, with what it needs to count and name its rejects.
pub struct NodeOperator {
    pub op: Box<dyn Operator>,
    pub node: usize,
    pub node_id: String,
    pub counters: Arc<WorkerCounters>,
}

impl NodeOperator {
    /// Applies the operator to a batch, turning failures of the whole batch into rejects of every row.
    fn apply(&mut self, batch: RecordBatch) -> Vec<Packet> {
        apply(self.op.as_mut(), &self.node_id, batch, &self.counters.nodes[self.node])
    }
}

fn apply(op: &mut dyn Operator, node_id: &str, batch: RecordBatch, c: &super::metrics::NodeCounters) -> Vec<Packet> {
    let started = Instant::now();
    c.add(&c.rows_in, batch.num_rows() as u64);
    c.add(&c.batches, 1);
    let result = op.process(batch.clone());
    let out = packets_of(node_id, &batch, result, c);
    c.busy(started.elapsed());
    out
}

/// The packets an operator's output makes: rows downstream, rejects (built from the input batch) aside.
/// A failure of the whole batch rejects every row of it, with the error.
fn packets_of(
    node_id: &str,
    batch: &RecordBatch,
    result: Result<sdg_operators::Output, sdg_operators::OpError>,
    c: &super::metrics::NodeCounters,
) -> Vec<Packet> {
    let mut out = Vec::with_capacity(2);
    let reject_rows = match result {
        Ok(output) => {
            if output.rows.num_rows() > 0 {
                c.add(&c.rows_out, output.rows.num_rows() as u64);
                out.push(Packet::rows(output.rows));
            }
            rejects::from_operator(node_id, batch, &output.rejects)
        }
        Err(error) => {
            let all: Vec<sdg_operators::Reject> = (0..batch.num_rows())
                .map(|row| sdg_operators::Reject { row, reason: format!("batch failed: {error}") })
                .collect();
            rejects::from_operator(node_id, batch, &all)
        }
    };
    match reject_rows {
        Ok(rows) if !rows.is_empty() => {
            c.add(&c.rejected, rows.len() as u64);
            out.push(Packet::rejects(rejects::to_batch(&rows)));
        }
        Ok(_) => {}
        Err(error) => tracing::error!(node = node_id, %error, "could not record rejects"),
    }
    out
}

/// A batch's next step, with the capability and input it belongs to.
type PendingStep = (PendingId, Capability<u64>, RecordBatch, Result<Step, sdg_operators::OpError>);

/// What a model shell needs to hand requests to the model service and be woken with the answers.
struct ModelPort {
    service: Arc<crate::models::ModelService>,
    sender: std::sync::mpsc::Sender<(PendingId, Vec<ModelResponse>)>,
    activator: Arc<timely::scheduling::activate::SyncActivator>,
    dry_run: bool,
}

/// Where a batch stands after one of its steps.
enum Advanced {
    /// Its requests went to the model service; the capability is held until they are answered.
    Waiting(PendingId, Capability<u64>, RecordBatch),
    /// Done: these packets go out at the capability's time.
    Emit(Capability<u64>, Vec<Packet>),
    /// A dry run counted its requests; it goes no further (there are no answers to continue with).
    Counted,
}

impl ModelPort {
    /// Performs one step of a batch: submits its calls, or turns its output into packets.
    fn advance(&self, node: &NodeOperator, (id, cap, batch, step): PendingStep) -> Advanced {
        let c = &node.counters.nodes[node.node];
        match step {
            Ok(Step::Call(requests)) if self.dry_run => {
                c.add(&c.model_calls, requests.len() as u64);
                self.service.estimate(&requests);
                Advanced::Counted
            }
            Ok(Step::Call(requests)) => {
                c.add(&c.requests_sent, requests.len() as u64);
                let sender = self.sender.clone();
                let activator = Arc::clone(&self.activator);
                self.service.submit(requests, move |responses| {
                    // The worker may be gone after a failure; nothing to deliver to then.
                    if sender.send((id, responses)).is_ok() {
                        let _ = activator.activate();
                    }
                });
                Advanced::Waiting(id, cap, batch)
            }
            Ok(Step::Emit(emitted)) => Advanced::Emit(cap, packets_of(&node.node_id, &batch, Ok(emitted), c)),
            Err(error) => Advanced::Emit(cap, packets_of(&node.node_id, &batch, Err(error), c)),
        }
    }
}

impl NodeOperator {
    /// Starts a batch: the operator's first step for it.
    fn start(&mut self, id: PendingId, batch: RecordBatch) -> Result<Step, sdg_operators::OpError> {
        let c = &self.counters.nodes[self.node];
        c.add(&c.rows_in, batch.num_rows() as u64);
        c.add(&c.batches, 1);
        let started = Instant::now();
        let step = self.op.start(id, batch);
        c.busy(started.elapsed());
        step
    }

    /// Counts a batch's answers and hands them to the operator: its next step.
    fn resume(&mut self, id: PendingId, responses: Vec<ModelResponse>) -> Result<Step, sdg_operators::OpError> {
        let c = &self.counters.nodes[self.node];
        for reply in responses.iter().flatten() {
            c.add(&c.model_calls, 1);
            if reply.cached {
                c.add(&c.cache_hits, 1);
            } else {
                c.add(&c.prompt_tokens, reply.usage.prompt_tokens);
                c.add(&c.completion_tokens, reply.usage.completion_tokens);
                c.add(&c.latency_buckets[super::metrics::latency_bucket(reply.latency_ms)], 1);
            }
        }
        c.add(&c.model_calls, responses.iter().filter(|r| r.is_err()).count() as u64);
        let started = Instant::now();
        let step = self.op.resume(id, responses);
        c.busy(started.elapsed());
        step
    }
}

/// A transform whose operator calls models: `start` may ask for calls, which the model service performs
/// off the worker thread; the batch's capability is held until `resume` emits, so downstream frontiers
/// (and the sources' backpressure) account for calls in flight.
pub fn model_transform<'s>(
    input: PacketStream<'s>,
    mut node: NodeOperator,
    service: Arc<crate::models::ModelService>,
    dry_run: bool,
) -> PacketStream<'s> {
    let name = format!("model:{}", node.node_id);
    let worker = input.scope().worker();
    input.unary::<Builder, _, _, _>(Pipeline, &name, move |_, info| {
        let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
        let (sender, receiver) = std::sync::mpsc::channel::<(PendingId, Vec<ModelResponse>)>();
        let port = ModelPort { service, sender, activator, dry_run };
        let mut pending: HashMap<PendingId, (Capability<u64>, RecordBatch)> = HashMap::new();
        let mut next_id: PendingId = 0;
        move |input, output| {
            let mut steps: Vec<PendingStep> = Vec::new();
            input.for_each(|cap, data| {
                for packet in data.drain(..) {
                    let id = next_id;
                    next_id += 1;
                    let step = node.start(id, packet.batch.clone());
                    match cap.retain_least(output.output_index()) {
                        Some(retained) => steps.push((id, retained, packet.batch, step)),
                        None => tracing::error!(node = node.node_id.as_str(), "batch without a time"),
                    }
                }
            });
            while let Ok((id, responses)) = receiver.try_recv() {
                if let Some((cap, batch)) = pending.remove(&id) {
                    let step = node.resume(id, responses);
                    steps.push((id, cap, batch, step));
                }
            }
            for step in steps {
                match port.advance(&node, step) {
                    Advanced::Waiting(id, cap, batch) => {
                        pending.insert(id, (cap, batch));
                    }
                    Advanced::Emit(cap, packets) => output.session(&cap).give_iterator(packets.into_iter()),
                    Advanced::Counted => {}
                }
            }
        }
    })
}

/// A model operator that must see timestamps in order: one complete timestamp at a time, rows sorted by id,
/// and the next one starts only once every call of the current one is answered and its rows are out. Its
/// decisions (a pool that grows, say) then depend neither on reply timing nor on the number of workers.
pub fn ordered_model_transform<'s>(
    input: PacketStream<'s>,
    mut node: NodeOperator,
    service: Arc<crate::models::ModelService>,
    dry_run: bool,
) -> PacketStream<'s> {
    let exchange = Exchange::new(|packet: &Packet| packet.dest);
    let name = format!("ordered-model:{}", node.node_id);
    let worker = input.scope().worker();
    input.unary_frontier::<Builder, _, _, _>(exchange, &name, move |_, info| {
        let activator = Arc::new(worker.sync_activator_for(info.address.to_vec()));
        let (sender, receiver) = std::sync::mpsc::channel::<(PendingId, Vec<ModelResponse>)>();
        let port = ModelPort { service, sender, activator, dry_run };
        let mut stash = TimeStash::default();
        let mut in_flight: Option<(PendingId, Capability<u64>, RecordBatch)> = None;
        let mut next_id: PendingId = 0;
        move |(input, frontier), output| {
            stash.absorb(input, output.output_index());
            loop {
                let step = match in_flight.take() {
                    Some((id, cap, batch)) => match receiver.try_recv() {
                        Ok((answered, responses)) if answered == id => {
                            let step = node.resume(id, responses);
                            (id, cap, batch, step)
                        }
                        Ok(_) => {
                            tracing::error!(node = node.node_id.as_str(), "answer for a batch not in flight");
                            in_flight = Some((id, cap, batch));
                            continue;
                        }
                        Err(_) => {
                            in_flight = Some((id, cap, batch));
                            break;
                        }
                    },
                    None => {
                        let Some((cap, batches)) = stash.pop_complete(frontier) else { break };
                        let merged = match sorted_by_id(batches) {
                            Ok(Some(merged)) => merged,
                            Ok(None) => continue,
                            Err(error) => {
                                tracing::error!(node = node.node_id.as_str(), %error, "could not merge batches");
                                continue;
                            }
                        };
                        let id = next_id;
                        next_id += 1;
                        let step = node.start(id, merged.clone());
                        (id, cap, merged, step)
                    }
                };
                match port.advance(&node, step) {
                    Advanced::Waiting(id, cap, batch) => in_flight = Some((id, cap, batch)),
                    Advanced::Emit(cap, packets) => output.session(&cap).give_iterator(packets.into_iter()),
                    Advanced::Counted => {}
                }
            }
        }
    })
}

/// A streaming transform: each batch is processed as it arrives, on the worker that holds it.
pub fn transform<'s>(input: PacketStream<'s>, mut node: NodeOperator) -> PacketStream<'s> {
    let name = format!("op:{}", node.node_id);
    input.unary::<Builder, _, _, _>(Pipeline, &name, move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for packet in data.drain(..) {
                    session.give_iterator(node.apply(packet.batch).into_iter());
                }
            });
        }
    })
}

/// Concatenates batches and sorts rows by `id`, so the result does not depend on arrival order.
pub fn sorted_by_id(batches: Vec<RecordBatch>) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else { return Ok(None) };
    let merged = concat_batches(&first.schema(), &batches)?;
    let Some(ids) = merged.column_by_name(columns::ID) else { return Ok(Some(merged)) };
    let order = sort_to_indices(ids.as_ref(), None, None)?;
    Ok(Some(take_record_batch(&merged, &order)?))
}

/// Batches held per timestamp, each time with a capability so the frontier after the operator does not
/// pass it until the batches are handled.
#[derive(Default)]
struct TimeStash {
    pending: BTreeMap<u64, (Capability<u64>, Vec<RecordBatch>)>,
}

impl TimeStash {
    /// Takes everything waiting at the operator's input.
    fn absorb<P: Pull<Message<u64, Vec<Packet>>>>(
        &mut self,
        input: &mut InputHandleCore<u64, Vec<Packet>, P>,
        output: usize,
    ) {
        input.for_each(|cap, data| {
            let Some(&time) = cap.least() else { return };
            if let Some(retained) = cap.retain_least(output) {
                let entry = self.pending.entry(time).or_insert_with(|| (retained, Vec::new()));
                entry.1.extend(data.drain(..).map(|p| p.batch));
            }
        });
    }

    /// The earliest held time once the input frontier has passed it, with its batches.
    fn pop_complete(&mut self, frontier: &MutableAntichain<u64>) -> Option<(Capability<u64>, Vec<RecordBatch>)> {
        let (&time, _) = self.pending.first_key_value()?;
        if frontier.frontier().less_equal(&time) {
            return None;
        }
        self.pending.remove(&time)
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A stateful transform that must see timestamps in order: batches wait until their time is complete,
/// then go through the operator in time order, rows sorted by id.
pub fn ordered_transform<'s>(input: PacketStream<'s>, mut node: NodeOperator) -> PacketStream<'s> {
    let exchange = Exchange::new(|packet: &Packet| packet.dest);
    let name = format!("ordered:{}", node.node_id);
    input.unary_frontier::<Builder, _, _, _>(exchange, &name, move |_, _| {
        let mut stash = TimeStash::default();
        move |(input, frontier), output| {
            stash.absorb(input, output.output_index());
            while let Some((cap, batches)) = stash.pop_complete(frontier) {
                let merged = match sorted_by_id(batches) {
                    Ok(Some(merged)) => merged,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::error!(node = node.node_id.as_str(), %error, "could not merge batches");
                        continue;
                    }
                };
                let mut session = output.session(&cap);
                session.give_iterator(node.apply(merged).into_iter());
            }
        }
    })
}

/// Splits each batch by `router`'s keys into one packet per destination worker.
pub fn route<'s>(input: PacketStream<'s>, router: Box<dyn Router>, peers: usize, name: &str) -> PacketStream<'s> {
    input.unary::<Builder, _, _, _>(Pipeline, &format!("route:{name}"), move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut session = output.session(&cap);
                for packet in data.drain(..) {
                    match split_by_key(&packet.batch, router.as_ref(), peers) {
                        Ok(parts) => session.give_iterator(parts.into_iter().map(|(dest, batch)| Packet {
                            lane: Lane::Rows,
                            dest,
                            batch,
                        })),
                        Err(error) => {
                            // Keys could not be computed: keep the rows here rather than lose them.
                            tracing::warn!(%error, "routing failed; batch stays on this worker");
                            session.give(packet);
                        }
                    }
                }
            });
        }
    })
}

fn split_by_key(
    batch: &RecordBatch,
    router: &dyn Router,
    peers: usize,
) -> Result<Vec<(u64, RecordBatch)>, sdg_operators::OpError> {
    let keys = router.keys(batch)?;
    let mut by_dest: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (row, key) in keys.iter().enumerate() {
        by_dest.entry(key % peers as u64).or_default().push(row as u32);
    }
    if by_dest.len() == 1 {
        let dest = by_dest.into_keys().next().unwrap_or(0);
        return Ok(vec![(dest, batch.clone())]);
    }
    by_dest.into_iter().map(|(dest, rows)| Ok((dest, take_record_batch(batch, &UInt32Array::from(rows))?))).collect()
}

/// Sends every row to worker 0 (operators whose state spans the whole run: [`sdg_operators::Exchange::OneWorker`]).
pub struct OneWorkerRouter;

impl Router for OneWorkerRouter {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, sdg_operators::OpError> {
        Ok(vec![0; batch.num_rows()])
    }
}

/// Keeps rows on the worker that holds them (for ordered operators that need no exchange).
pub struct StayRouter {
    pub worker: u64,
}

impl Router for StayRouter {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, sdg_operators::OpError> {
        Ok(vec![self.worker; batch.num_rows()])
    }
}

/// The output bucket of a record id: stable across runs, platforms and worker counts.
pub fn bucket_of(id: &str, partitions: u32) -> u32 {
    let hash = blake3::hash(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % partitions.max(1) as u64) as u32
}

/// Routes rows to the worker that owns their output bucket.
pub struct BucketRouter {
    pub partitions: u32,
}

impl Router for BucketRouter {
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, sdg_operators::OpError> {
        let ids = sdg_operators::string_column(batch, columns::ID)?;
        Ok((0..ids.len()).map(|i| bucket_of(ids.value(i), self.partitions) as u64).collect())
    }
}

/// What the sinks of one worker did, read after the dataflow ends.
#[derive(Debug, Default)]
pub struct SinkReport {
    pub parts: BTreeMap<String, Vec<CommittedPart>>,
    pub errors: Vec<String>,
    pub finished: usize,
}

/// Where and how a sink shell writes.
pub struct SinkSettings {
    pub node: usize,
    pub node_id: String,
    pub run_dir: std::path::PathBuf,
    pub dir: String,
    pub part: PartSettings,
    pub partitions: u32,
    pub project: Option<Box<dyn Operator>>,
    /// Rejects are keyed by node and id (a record id alone names a row, not the node that dropped it).
    pub keyed_by_node: bool,
    pub report: Rc<RefCell<SinkReport>>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<WorkerCounters>,
}

/// Writes rows (already routed to the bucket owner) in time order, sorted by id within a time, so the
/// parts are byte-identical whatever the number of workers. Holds a capability per pending time so the
/// probe after it tells the sources what is really written.
pub fn sink<'s>(input: PacketStream<'s>, settings: SinkSettings) -> PacketStream<'s> {
    let exchange = Exchange::new(|packet: &Packet| packet.dest);
    let name = format!("sink:{}", settings.node_id);
    input.unary_frontier::<Builder, _, _, _>(exchange, &name, move |_, _| {
        let mut settings = settings;
        let mut stash = TimeStash::default();
        let mut writers: HashMap<u32, BucketWriter> = HashMap::new();
        let mut finished = false;
        move |(input, frontier), output| {
            stash.absorb(input, output.output_index());
            while let Some((_cap, batches)) = stash.pop_complete(frontier) {
                if let Err(error) = write_time(&mut settings, &mut writers, batches) {
                    fail(&settings, error);
                }
            }
            if frontier.frontier().is_empty() && stash.is_empty() && !finished {
                finished = true;
                let mut buckets: Vec<u32> = writers.keys().copied().collect();
                buckets.sort_unstable();
                let mut parts = Vec::new();
                // After a write error an open part may hold half a batch: it is dropped (its temp file
                // removed), not committed; a resume writes those rows again.
                let failed = !settings.report.borrow().errors.is_empty();
                for bucket in buckets {
                    if let Some(mut writer) = writers.remove(&bucket) {
                        if !failed && let Err(error) = writer.finish() {
                            fail(&settings, error.to_string());
                        }
                        parts.append(&mut writer.committed);
                    }
                }
                let mut report = settings.report.borrow_mut();
                report.parts.entry(settings.node_id.clone()).or_default().extend(parts);
                report.finished += 1;
            }
        }
    })
}

fn fail(settings: &SinkSettings, error: String) {
    tracing::error!(sink = settings.node_id.as_str(), %error, "sink failed; stopping the run");
    settings.report.borrow_mut().errors.push(format!("sink `{}`: {error}", settings.node_id));
    settings.stop.store(true, Ordering::Relaxed);
}

fn write_time(
    settings: &mut SinkSettings,
    writers: &mut HashMap<u32, BucketWriter>,
    batches: Vec<RecordBatch>,
) -> Result<(), String> {
    let started = Instant::now();
    let Some(merged) = sorted_by_id(batches).map_err(|e| e.to_string())? else { return Ok(()) };
    let c = &settings.counters.nodes[settings.node];
    c.add(&c.rows_in, merged.num_rows() as u64);
    c.add(&c.batches, 1);
    if !settings.report.borrow().errors.is_empty() {
        // After a write error nothing more is written; rows are counted as not written.
        return Ok(());
    }
    let ids: StringArray = match merged.column_by_name(columns::ID) {
        Some(ids) => ids.as_any().downcast_ref::<StringArray>().cloned().ok_or("`id` is not a string column")?,
        None => return Err("rows have no `id` column".to_string()),
    };
    let keys: Vec<String> = if settings.keyed_by_node {
        let nodes = merged
            .column_by_name("node")
            .and_then(|n| n.as_any().downcast_ref::<StringArray>().cloned())
            .ok_or("rejects have no `node` column")?;
        (0..ids.len()).map(|row| crate::io::rejects::reject_key(nodes.value(row), ids.value(row))).collect()
    } else {
        (0..ids.len()).map(|row| ids.value(row).to_string()).collect()
    };
    let projected = match settings.project.as_mut() {
        Some(project) => project.process(merged).map_err(|e| e.to_string())?.rows,
        None => merged,
    };
    let mut by_bucket: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for row in 0..ids.len() {
        by_bucket.entry(bucket_of(ids.value(row), settings.partitions)).or_default().push(row as u32);
    }
    for (bucket, rows) in by_bucket {
        let part = take_record_batch(&projected, &UInt32Array::from(rows.clone())).map_err(|e| e.to_string())?;
        let part_keys: Vec<String> = rows.iter().map(|&r| keys[r as usize].clone()).collect();
        let writer = match writers.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                BucketWriter::resumable(&settings.run_dir, &settings.dir, bucket, part.schema(), settings.part.clone())
                    .map_err(|e| e.to_string())?,
            ),
        };
        let skipped = writer.write_keyed(&part, &part_keys).map_err(|e| e.to_string())?;
        c.add(&c.rows_out, (part.num_rows() - skipped) as u64);
        c.add(&c.already_committed, skipped as u64);
    }
    c.busy(started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(ids.to_vec()))],
        )
        .unwrap()
    }

    #[test]
    fn sorted_by_id_is_independent_of_arrival_order() {
        let a = sorted_by_id(vec![batch(&["c", "a"]), batch(&["b"])]).unwrap().unwrap();
        let b = sorted_by_id(vec![batch(&["b"]), batch(&["a", "c"])]).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0), "a");
        assert!(sorted_by_id(vec![]).unwrap().is_none());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket_of("abc", 4), bucket_of("abc", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[bucket_of(&format!("id{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }

    #[test]
    fn split_by_key_groups_rows_per_destination() {
        let b = batch(&["a", "b", "c", "d"]);
        struct Alternate;
        impl Router for Alternate {
            fn keys(&self, batch: &RecordBatch) -> Result<Vec<u64>, sdg_operators::OpError> {
                Ok((0..batch.num_rows() as u64).collect())
            }
        }
        let parts = split_by_key(&b, &Alternate, 2).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, 0);
        assert_eq!(parts[0].1.num_rows(), 2);
        assert_eq!(parts[1].1.num_rows(), 2);
    }
}
