//! Runs a plan on timely dataflow: one dataflow per worker, sources with backpressure, exchange by stable
//! keys, sinks that commit parts atomically, and a manifest at the end.

pub mod batch;
pub mod metrics;
pub mod shells;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use timely::WorkerConfig;
use timely::communication::Config as CommunicationConfig;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::Partition;
use timely::dataflow::operators::{Concatenate, Exchange as _, Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::config::NodeSpec;
use crate::io::ingest::{self, Discovery};
use crate::io::sink::{CommittedPart, PartSettings, SinkFormat};
use crate::models::{EndpointStats, ModelService};
use crate::plan::{Plan, Shell, instantiate};
use crate::run::manifest::{GraphNode, Manifest, OutputSummary, RunStatus};
use crate::run::{RunDir, RunDirError};
use batch::{Lane, Packet};
use metrics::{NodeStats, WorkerCounters};
use sdg_operators::Exchange;
use shells::{PacketStream, SinkReport};

/// How to run: where to write, and how many workers and processes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Worker threads in this process.
    pub workers: usize,
    /// Processes in the cluster (1 = this one only).
    pub processes: usize,
    /// This process's index in the cluster.
    pub process: usize,
    /// One `host:port` per line, a line per process (required when `processes > 1`).
    pub hostfile: Option<PathBuf>,
    /// Replace the outputs of an earlier run in `out`.
    pub overwrite: bool,
    /// Go on with the run in `out` (same config): committed records are kept and not written again.
    pub resume: bool,
    /// With `resume`: accept a changed config, re-running the changed nodes and their descendants.
    pub force: bool,
    /// Where model responses are cached across runs; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Send no model request: count what would be sent (requests, tokens, cost) instead.
    pub dry_run: bool,
}

/// The response cache folder when none is configured: `$SDG_CACHE_DIR`, else the user cache folder.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SDG_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sdg")
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("cannot read hostfile {path}: {source}")]
    Hostfile { path: PathBuf, source: std::io::Error },
    #[error("hostfile {path} lists {found} addresses, but --processes is {expected}")]
    HostCount { path: PathBuf, found: usize, expected: usize },
    #[error("--processes {0} needs a --hostfile with one host:port per process")]
    NoHostfile(usize),
    #[error("--process {process} is out of range for --processes {processes}")]
    ProcessIndex { process: usize, processes: usize },
    #[error("timely could not start: {0}")]
    Timely(String),
    #[error("a worker failed: {0}")]
    Worker(String),
    #[error("model service: {0}")]
    Models(String),
    #[error("cannot write the manifest {path}: {source}")]
    Manifest { path: PathBuf, source: std::io::Error },
}

/// What one worker reports at the end (sent to worker 0 through a small dataflow).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WorkerReport {
    nodes: Vec<NodeStats>,
    parts: BTreeMap<String, Vec<CommittedPart>>,
    errors: Vec<String>,
    /// The process's model service accounting (sent by one worker per process).
    #[serde(default)]
    models: BTreeMap<String, EndpointStats>,
}

/// A run about to start. Its counters can be watched (progress display) while `run` works.
pub struct Engine {
    plan: Arc<Plan>,
    options: RunOptions,
    counters: Vec<Arc<WorkerCounters>>,
    discoveries: Arc<Vec<Option<Discovery>>>,
}

/// The id of the pseudo-sink that writes rejects.
pub const REJECTS: &str = "rejects";

impl Engine {
    /// Prepares a run: counters, and discovery of the input files (once per process; every process walks
    /// the same sorted tree).
    pub fn new(plan: Plan, options: RunOptions) -> Engine {
        let workers = options.workers.max(1);
        // One slot per plan node, plus one for the rejects sink.
        let counters = (0..workers).map(|_| WorkerCounters::new(plan.nodes.len() + 1)).collect();
        let discoveries = Arc::new(
            plan.nodes
                .iter()
                .map(|n| match &n.spec {
                    NodeSpec::Ingest(spec) => Some(ingest::discover(spec, &n.id)),
                    _ => None,
                })
                .collect(),
        );
        Engine { plan: Arc::new(plan), options, counters, discoveries }
    }

    /// Files each node will read (0 for nodes that are not sources), for progress and ETA.
    pub fn files_to_read(&self) -> Vec<u64> {
        self.discoveries.iter().map(|d| d.as_ref().map_or(0, |d| d.files.len() as u64)).collect()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Counters of this process's workers, for a progress display.
    pub fn counters(&self) -> Vec<Arc<WorkerCounters>> {
        self.counters.clone()
    }

    /// Runs to the end (or until `stop` is set), writes the manifest (process 0) and returns it.
    pub fn run(self, stop: Arc<AtomicBool>) -> Result<Manifest, RunError> {
        let started = Instant::now();
        let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let options = self.options.clone();
        let run_dir = RunDir::new(&options.out);
        // Sink nodes: id, folder, format.
        let sinks: Vec<(String, String, SinkFormat)> = self
            .plan
            .nodes
            .iter()
            .filter_map(|n| match &n.spec {
                NodeSpec::Sink(s) => Some((n.id.clone(), s.dir.clone(), s.format)),
                _ => None,
            })
            .collect();
        let mut resumes = 0;
        if options.process == 0 {
            // From the start the folder is bound to this config: a killed run leaves this `running`
            // manifest, which `--resume` checks against. Written only once the folder is ready.
            let mut running = build_manifest(
                &self.plan,
                &[],
                RunStatus::Running,
                started_at_unix,
                Duration::ZERO,
                options.workers.max(1),
                options.processes.max(1),
            );
            let dirs: Vec<(String, String)> = sinks.iter().map(|(id, dir, _)| (id.clone(), dir.clone())).collect();
            if options.resume {
                let previous =
                    run_dir.prepare_resume(&dirs, &self.plan.config.hash, &running.lineage, options.force)?;
                if let Some(previous) = previous {
                    resumes = previous.resumes + 1;
                    if !previous.changed.is_empty() {
                        tracing::info!(nodes = previous.changed.join(", "), "config changed: these nodes run again");
                    }
                }
            } else {
                let dirs: Vec<String> = dirs.into_iter().map(|(_, dir)| dir).collect();
                run_dir.prepare(&dirs, options.overwrite)?;
            }
            if !options.dry_run {
                running.resumes = resumes;
                let path = run_dir.manifest();
                running.write(&path).map_err(|source| RunError::Manifest { path, source })?;
            }
        } else {
            std::fs::create_dir_all(&options.out)
                .map_err(|source| RunDirError::Io { path: options.out.clone(), source })?;
        }
        let communication = communication(&options)?;
        // Discovery once per process; every process walks the same sorted tree.
        let discoveries = Arc::clone(&self.discoveries);
        let models: Option<Arc<ModelService>> = if self.plan.config.models.is_empty() {
            None
        } else {
            let cache = options.cache_dir.as_ref().map(|dir| dir.join("responses.redb"));
            let specs = &self.plan.config.models;
            let service = if options.dry_run {
                ModelService::new_for_estimates(specs, cache.as_deref())
            } else {
                ModelService::new(specs, cache.as_deref())
            };
            Some(Arc::new(service.map_err(RunError::Models)?))
        };
        // An endpoint that refuses our credentials stops the run: sources stop reading, calls fail fast.
        let watch_done = Arc::new(AtomicBool::new(false));
        let watcher = models.clone().map(|service| {
            let stop = Arc::clone(&stop);
            let done = Arc::clone(&watch_done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if service.fatal().is_some() {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        let service = models.clone();
        let manifest_slot: Arc<Mutex<Option<Manifest>>> = Arc::new(Mutex::new(None));
        let plan = Arc::clone(&self.plan);
        let counters = self.counters.clone();
        let threads = options.workers.max(1);
        let slot = Arc::clone(&manifest_slot);
        let worker_stop = Arc::clone(&stop);
        let config = timely::Config { communication, worker: WorkerConfig::default() };
        let guards = timely::execute(config, move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let local = Arc::clone(&counters[index % threads]);
            let shared = WorkerShared {
                plan: &plan,
                discoveries: &discoveries,
                out: &options.out,
                stop: &worker_stop,
                models: models.as_ref(),
                dry_run: options.dry_run,
            };
            let mut report = run_worker(worker, &shared, &local);
            if index % threads == 0
                && let Some(service) = &models
            {
                report.models = service.stats();
                report.errors.extend(service.fatal());
            }
            let reports = gather_reports(worker, report);
            if index == 0 {
                let status = if reports.iter().any(|r| !r.errors.is_empty()) {
                    RunStatus::Failed
                } else if worker_stop.load(Ordering::Relaxed) {
                    RunStatus::Interrupted
                } else {
                    RunStatus::Completed
                };
                let manifest = build_manifest(
                    &plan,
                    &reports,
                    status,
                    started_at_unix,
                    started.elapsed(),
                    threads,
                    peers / threads,
                );
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(manifest);
                }
            }
        })
        .map_err(RunError::Timely)?;
        let joined: Result<Vec<()>, String> = guards.join().into_iter().collect();
        watch_done.store(true, Ordering::Relaxed);
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
        joined.map_err(RunError::Worker)?;
        let manifest = manifest_slot.lock().ok().and_then(|mut m| m.take());
        match manifest {
            Some(mut manifest) => {
                // A refused credential was reported by the workers (errors, status failed).
                if let Some(service) = &service {
                    service.flush();
                }
                manifest.resumes = resumes;
                // Parts committed by earlier processes of a resumed run count too.
                for (id, summary) in manifest.outputs.iter_mut() {
                    let format = sinks.iter().find(|(sink, _, _)| sink == id).map(|(_, _, f)| *f).unwrap_or_default();
                    add_committed(summary, &run_dir.root, format);
                }
                add_committed(&mut manifest.rejects, &run_dir.root, SinkFormat::Parquet);
                let path = run_dir.manifest();
                manifest.write(&path).map_err(|source| RunError::Manifest { path, source })?;
                Ok(manifest)
            }
            // Processes other than 0 do not write the manifest; they return an empty summary.
            None => Ok(build_manifest(
                &self.plan,
                &[],
                RunStatus::Completed,
                started_at_unix,
                started.elapsed(),
                threads,
                self.options.processes,
            )),
        }
    }
}

/// Adds the parts found in the sink's folder that the workers did not report (committed by an earlier
/// process of a resumed run), and recounts rows and bytes.
fn add_committed(summary: &mut OutputSummary, out: &Path, format: SinkFormat) {
    let Ok(found) = crate::io::sink::committed_parts(out, &summary.dir, format) else { return };
    for part in found {
        if !summary.parts.iter().any(|p| p.path == part.path) {
            summary.parts.push(part);
        }
    }
    summary.parts.sort_by(|a, b| a.path.cmp(&b.path));
    summary.rows = summary.parts.iter().map(|p| p.rows).sum();
    summary.bytes = summary.parts.iter().map(|p| p.bytes).sum();
}

fn communication(options: &RunOptions) -> Result<CommunicationConfig, RunError> {
    let threads = options.workers.max(1);
    if options.processes <= 1 {
        return Ok(if threads == 1 { CommunicationConfig::Thread } else { CommunicationConfig::Process(threads) });
    }
    if options.process >= options.processes {
        return Err(RunError::ProcessIndex { process: options.process, processes: options.processes });
    }
    let path = options.hostfile.clone().ok_or(RunError::NoHostfile(options.processes))?;
    let text = std::fs::read_to_string(&path).map_err(|source| RunError::Hostfile { path: path.clone(), source })?;
    let addresses: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    if addresses.len() != options.processes {
        return Err(RunError::HostCount { path, found: addresses.len(), expected: options.processes });
    }
    Ok(CommunicationConfig::Cluster { threads, process: options.process, addresses, report: false, zerocopy: false })
}

/// Builds and runs this worker's dataflow; returns what it did.
/// What every worker of a process shares.
struct WorkerShared<'a> {
    plan: &'a Plan,
    discoveries: &'a [Option<Discovery>],
    out: &'a Path,
    stop: &'a Arc<AtomicBool>,
    models: Option<&'a Arc<ModelService>>,
    dry_run: bool,
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    shared: &WorkerShared<'_>,
    counters: &Arc<WorkerCounters>,
) -> WorkerReport {
    let WorkerShared { plan, discoveries, out, stop, models, dry_run } = *shared;
    let index = worker.index();
    let peers = worker.peers();
    let probe: ProbeHandle<u64> = ProbeHandle::new();
    let sink_report = Rc::new(RefCell::new(SinkReport::default()));
    let mut sinks_here = 0usize;
    let mut build_errors = Vec::new();
    let run = &plan.config.run;
    worker.dataflow::<u64, _, _>(|scope| {
        let mut outputs: Vec<Option<PacketStream>> = vec![None; plan.nodes.len()];
        let mut rejects: Vec<PacketStream> = Vec::new();
        for (i, node) in plan.nodes.iter().enumerate() {
            let input = || {
                let streams: Vec<PacketStream> = node.inputs.iter().filter_map(|&u| outputs[u].clone()).collect();
                scope.concatenate(streams)
            };
            let produced = match &node.spec {
                NodeSpec::Ingest(spec) => {
                    let files = discoveries[i]
                        .as_ref()
                        .map(|d| {
                            d.files
                                .iter()
                                .cloned()
                                .enumerate()
                                .filter(|(ordinal, _)| ordinal % peers == index)
                                .collect()
                        })
                        .unwrap_or_default();
                    let problems = match (&discoveries[i], index) {
                        (Some(d), 0) => d.problems.clone(),
                        _ => Vec::new(),
                    };
                    Some(shells::ingest_source(
                        scope,
                        shells::SourceSettings {
                            node: i,
                            node_id: node.id.clone(),
                            spec: spec.clone(),
                            files,
                            problems,
                            batch_rows: run.batch_rows,
                            batch_bytes: run.batch_bytes,
                            window: run.window.max(1),
                            probe: probe.clone(),
                            stop: Arc::clone(stop),
                            counters: Arc::clone(counters),
                        },
                    ))
                }
                NodeSpec::Sink(spec) => {
                    let project = match instantiate(&node.spec) {
                        Ok(op) => op,
                        Err(error) => {
                            build_errors.push(format!("node `{}`: {error}", node.id));
                            None
                        }
                    };
                    let routed = shells::route(
                        input(),
                        Box::new(shells::BucketRouter { partitions: run.partitions }),
                        peers,
                        &node.id,
                    );
                    sinks_here += 1;
                    shells::sink(
                        routed,
                        shells::SinkSettings {
                            node: i,
                            node_id: node.id.clone(),
                            run_dir: out.to_path_buf(),
                            dir: spec.dir.clone(),
                            part: PartSettings::from(spec),
                            partitions: run.partitions,
                            project,
                            keyed_by_node: false,
                            report: Rc::clone(&sink_report),
                            stop: Arc::clone(stop),
                            counters: Arc::clone(counters),
                        },
                    )
                    .probe_with(&probe);
                    None
                }
                spec => match instantiate(spec) {
                    Ok(Some(op)) => {
                        let shape = op.shape();
                        // The exchange the operator declared; `None` keeps rows where they are.
                        let router: Option<Box<dyn sdg_operators::Router>> = match &shape.exchange {
                            Exchange::Local => None,
                            Exchange::OneWorker => Some(Box::new(shells::OneWorkerRouter)),
                            Exchange::ByKey(_) => op.router(),
                        };
                        let node_op = shells::NodeOperator {
                            op,
                            node: i,
                            node_id: node.id.clone(),
                            counters: Arc::clone(counters),
                        };
                        let exchanged = |router: Option<Box<dyn sdg_operators::Router>>| match router {
                            Some(router) => {
                                shells::route(input(), router, peers, &node.id).exchange(|packet: &Packet| packet.dest)
                            }
                            None => input(),
                        };
                        // The time-ordered shells exchange by `dest` themselves, so rows stay put unless routed.
                        let routed = |router: Option<Box<dyn sdg_operators::Router>>| {
                            let router =
                                router.unwrap_or_else(|| Box::new(shells::StayRouter { worker: index as u64 }));
                            shells::route(input(), router, peers, &node.id)
                        };
                        let stream = match (node.shell, models) {
                            (Shell::Stream, _) => shells::transform(exchanged(router), node_op),
                            (Shell::Ordered, _) => shells::ordered_transform(routed(router), node_op),
                            (Shell::Model, Some(service)) => {
                                shells::model_transform(exchanged(router), node_op, Arc::clone(service), dry_run)
                            }
                            (Shell::OrderedModel, Some(service)) => {
                                shells::ordered_model_transform(routed(router), node_op, Arc::clone(service), dry_run)
                            }
                            (Shell::Model | Shell::OrderedModel, None) => {
                                build_errors.push(format!("node `{}` calls a model, but none is configured", node.id));
                                return;
                            }
                            (Shell::Source | Shell::Sink, _) => {
                                build_errors.push(format!("internal: node `{}` is not a transform", node.id));
                                return;
                            }
                        };
                        Some(stream)
                    }
                    Ok(None) => None,
                    Err(error) => {
                        build_errors.push(format!("node `{}`: {error}", node.id));
                        None
                    }
                },
            };
            if let Some(stream) = produced {
                let (rows, rejected) = split_lanes(stream);
                outputs[i] = rows;
                rejects.extend(rejected);
            }
        }
        let all_rejects = scope.concatenate(rejects);
        let routed =
            shells::route(all_rejects, Box::new(shells::BucketRouter { partitions: run.partitions }), peers, REJECTS);
        sinks_here += 1;
        shells::sink(
            routed,
            shells::SinkSettings {
                node: plan.nodes.len(),
                node_id: REJECTS.to_string(),
                run_dir: out.to_path_buf(),
                dir: REJECTS.to_string(),
                part: PartSettings {
                    format: SinkFormat::Parquet,
                    rows_per_part: 100_000,
                    row_group_rows: 16_384,
                    zstd_level: 3,
                },
                partitions: run.partitions,
                project: None,
                keyed_by_node: true,
                report: Rc::clone(&sink_report),
                stop: Arc::clone(stop),
                counters: Arc::clone(counters),
            },
        )
        .probe_with(&probe);
    });
    while !probe.done() || sink_report.borrow().finished < sinks_here {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    let mut sink_report = sink_report.take();
    sink_report.errors.extend(build_errors);
    WorkerReport {
        nodes: counters.nodes.iter().map(|c| c.snapshot()).collect(),
        parts: sink_report.parts,
        errors: sink_report.errors,
        models: BTreeMap::new(),
    }
}

/// Splits a node's output into its rows lane and its rejects lane.
fn split_lanes<'s>(stream: PacketStream<'s>) -> (Option<PacketStream<'s>>, Option<PacketStream<'s>>) {
    let mut lanes = stream.partition::<CapacityContainerBuilder<Vec<Packet>>, _, _>(2, |packet: Packet| {
        (if packet.lane == Lane::Rows { 0 } else { 1 }, packet)
    });
    let rejected = lanes.pop();
    let rows = lanes.pop();
    (rows, rejected)
}

/// Sends every worker's report to worker 0, which gets them all back (others get an empty list).
fn gather_reports(worker: &mut timely::worker::Worker, report: WorkerReport) -> Vec<WorkerReport> {
    let collected: Rc<RefCell<Vec<WorkerReport>>> = Rc::new(RefCell::new(Vec::new()));
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<String>>> = InputHandle::new();
    let probe: ProbeHandle<u64> = ProbeHandle::new();
    let sink = Rc::clone(&collected);
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .exchange(|_| 0)
            .inspect(move |json: &String| {
                if let Ok(report) = serde_json::from_str(json) {
                    sink.borrow_mut().push(report);
                }
            })
            .probe_with(&probe);
    });
    input.send(serde_json::to_string(&report).unwrap_or_default());
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    collected.take()
}

fn build_manifest(
    plan: &Plan,
    reports: &[WorkerReport],
    status: RunStatus,
    started_at_unix: u64,
    elapsed: Duration,
    workers: usize,
    processes: usize,
) -> Manifest {
    let mut nodes: BTreeMap<String, NodeStats> = BTreeMap::new();
    let mut outputs: BTreeMap<String, OutputSummary> = BTreeMap::new();
    let mut rejects = OutputSummary { dir: REJECTS.to_string(), ..Default::default() };
    for node in &plan.nodes {
        nodes.insert(node.id.clone(), NodeStats::default());
        if let NodeSpec::Sink(spec) = &node.spec {
            outputs.insert(node.id.clone(), OutputSummary { dir: spec.dir.clone(), ..Default::default() });
        }
    }
    let mut errors = Vec::new();
    let mut models: BTreeMap<String, EndpointStats> = BTreeMap::new();
    for report in reports {
        for (node, stats) in plan.nodes.iter().zip(&report.nodes) {
            if let Some(total) = nodes.get_mut(&node.id) {
                total.merge(stats);
            }
        }
        for (sink, parts) in &report.parts {
            let summary = if sink == REJECTS { Some(&mut rejects) } else { outputs.get_mut(sink) };
            if let Some(summary) = summary {
                summary.rows += parts.iter().map(|p| p.rows).sum::<u64>();
                summary.bytes += parts.iter().map(|p| p.bytes).sum::<u64>();
                summary.parts.extend(parts.iter().cloned());
            }
        }
        errors.extend(report.errors.iter().cloned());
        for (name, stats) in &report.models {
            models.entry(name.clone()).or_default().merge(stats);
        }
    }
    for stats in nodes.values_mut() {
        stats.latency_histogram.clear();
    }
    for summary in outputs.values_mut().chain(std::iter::once(&mut rejects)) {
        summary.parts.sort_by(|a, b| a.path.cmp(&b.path));
    }
    Manifest {
        sdg_version: env!("CARGO_PKG_VERSION").to_string(),
        status,
        config_hash: plan.config.hash.clone(),
        config_origin: plan.config.origin.display().to_string(),
        config: plan.config.text.clone(),
        started_at_unix,
        elapsed_s: elapsed.as_secs_f64(),
        workers,
        processes,
        graph: plan
            .nodes
            .iter()
            .map(|n| GraphNode {
                id: n.id.clone(),
                kind: n.kind.clone(),
                inputs: n.inputs.iter().map(|&i| plan.nodes[i].id.clone()).collect(),
                columns: n.schema.fields().iter().map(|f| f.name().clone()).collect(),
            })
            .collect(),
        nodes,
        outputs,
        rejects,
        errors,
        models,
        lineage: plan.nodes.iter().map(|n| (n.id.clone(), n.lineage.clone())).collect(),
        resumes: 0,
    }
}
