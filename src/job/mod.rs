//! A job: what `sdg run` does between parsing its arguments and printing. It loads the plan, draws the
//! sources, runs the engine with a live progress file, tops a `task:` recipe up toward `num_samples`, writes
//! the dataset card and the config's export. The command line and `sdg serve` call it; they only print.

pub mod draw;
pub mod progress;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, ConfigError, resolve};
use crate::models::spec::Provider;
use crate::plan::Plan;
use crate::run::manifest::{Manifest, RunStatus};
use crate::runtime::{Engine, RunError, RunOptions, default_cache_dir};

/// Why a job stopped before it had a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("run into {out} failed: {source}")]
    Run { out: PathBuf, source: RunError },
    #[error(transparent)]
    Draw(#[from] draw::DrawError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot export into {dir}: {source}")]
    Export { dir: PathBuf, source: crate::export::ExportError },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io { path: path.to_path_buf(), source }
}

/// What a job tells its caller as it goes; the caller decides how to show it.
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// One run of the graph ended (a recipe may run it again to top up).
    RunEnded { manifest: &'a Manifest, out: &'a Path },
    /// A dry run ended: the manifest holds the estimates.
    Estimated { manifest: &'a Manifest },
    /// The config's `export:` section was written.
    Exported { summary: String, dir: PathBuf },
    /// Something the user should know that does not stop the job.
    Warning(String),
    /// What the job does next.
    Note(String),
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// The run (or the last of a recipe's runs) ended with this status.
    Run(RunStatus),
    /// `--resume` found the completed run of this config: nothing was done.
    AlreadyComplete,
}

/// The config a run starts from: a file, or the embedded quickstart.
pub fn load_plan(config: Option<&Path>) -> Result<Plan, ConfigError> {
    match config {
        Some(path) => Plan::from_file(path),
        None => {
            let (config, diagnostics) = Config::embedded()?;
            Plan::build(config, diagnostics)
        }
    }
}

/// The response cache a run uses: `--cache-dir`, else `run.cache_dir`, else the default; `None` when off.
pub fn cache_dir_for(plan: &Plan, given: Option<PathBuf>, no_cache: bool) -> Option<PathBuf> {
    if no_cache {
        return None;
    }
    Some(
        given
            .or_else(|| plan.config.run.cache_dir.as_ref().map(|d| resolve(&plan.config.base_dir, d)))
            .unwrap_or_else(default_cache_dir),
    )
}

/// Whether `out` holds a completed run of this very config (a `--resume` then has nothing to do).
pub fn already_complete(plan: &Plan, out: &Path) -> bool {
    Manifest::read(&out.join("manifest.json"))
        .is_ok_and(|m| m.status == RunStatus::Completed && m.config_hash == plan.config.hash)
}

/// Most runs of a `task:` recipe that tops up toward `num_samples`.
const MAX_ATTEMPTS: usize = 4;

/// Runs `plan` into `options.out`: once, or, for a recipe, until it delivers `num_samples` records (see the
/// README's recipe section). `show_progress` draws a line per node on the terminal. `stop` ends the run
/// early (Ctrl-C): what is committed stays.
pub fn run(
    plan: Plan,
    options: RunOptions,
    show_progress: bool,
    stop: &Arc<AtomicBool>,
    events: &mut dyn FnMut(JobEvent),
) -> Result<JobStatus, JobError> {
    if options.resume && already_complete(&plan, &options.out) {
        return Ok(JobStatus::AlreadyComplete);
    }
    if options.resume && options.cache_dir.is_none() {
        events(JobEvent::Warning(
            "--resume without the response cache sends again every model call not yet committed".to_string(),
        ));
    }
    // Before any thread starts: candle sizes its matmul pool from the environment at first use.
    let local = plan.config.models.values().filter(|m| m.provider == Provider::Local);
    if let Some(threads) = local.map(|m| m.threads.unwrap_or_else(crate::models::local::default_threads)).max() {
        crate::models::local::configure_threads(threads);
    }
    let Some(target) = plan.config.target_samples.filter(|_| !options.dry_run) else {
        return run_once(plan, options, show_progress, stop, events).map(|m| JobStatus::Run(m.status));
    };
    // A recipe must deliver `num_samples` records: when verification drops too many, the sources draw more
    // and the run is repeated. Rows already verified are answered from the response cache, so a repeat costs
    // only the new rows.
    let (text, origin, base_dir) = (plan.config.text.clone(), plan.config.origin.clone(), plan.config.base_dir.clone());
    let can_top_up = plan.config.can_top_up;
    let out = options.out.clone();
    let mut attempts = Vec::new();
    let mut scale = 1.0f64;
    let mut plan = plan;
    let mut options = options;
    let rebuild = |scale: f64| -> Result<Plan, JobError> {
        let (config, diagnostics) = Config::parse_scaled(&text, &origin, &base_dir, scale)?;
        Ok(Plan::build(config, diagnostics)?)
    };
    // A resumed recipe goes on with the attempt it was killed in, not the first one.
    let top_up_state = out.join("state").join("top_up.json");
    if options.resume
        && let Ok(bytes) = std::fs::read(&top_up_state)
        && let Ok(state) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(saved) = state["scale"].as_f64()
        && saved != scale
    {
        scale = saved;
        attempts = state["attempts"].as_array().cloned().unwrap_or_default();
        plan = rebuild(scale)?;
    }
    if !options.resume && options.overwrite {
        let _ = std::fs::remove_file(&top_up_state);
    }
    loop {
        // The first attempt needs no record (a resume starts there anyway), and must not touch a folder it
        // may yet be refused.
        if !attempts.is_empty() {
            let state = out.join("state");
            std::fs::create_dir_all(&state).map_err(io_at(&state))?;
            let bytes = serde_json::to_vec(&serde_json::json!({"scale": scale, "attempts": attempts}))
                .expect("JSON of numbers");
            crate::io::atomic::write_atomically(&top_up_state, &bytes).map_err(io_at(&top_up_state))?;
        }
        let manifest = run_once(plan, options.clone(), show_progress, stop, events)?;
        let rows: u64 = manifest.outputs.values().map(|o| o.rows).sum();
        attempts.push(serde_json::json!({"scale": scale, "records": rows}));
        let done = rows >= target as u64
            || !can_top_up
            || attempts.len() >= MAX_ATTEMPTS
            || manifest.status != RunStatus::Completed
            || stop.load(Ordering::SeqCst);
        if done {
            let met = rows >= target as u64;
            record_attempts(&out, target, &attempts, met)?;
            if !met && !can_top_up {
                events(JobEvent::Warning(format!(
                    "{rows} of the {target} records asked for: the corpus was read whole; add documents, \
                     raise `per_passage` or loosen verification (see `top_up` in the manifest)"
                )));
            } else if !met {
                events(JobEvent::Warning(format!(
                    "{rows} of the {target} records asked for after {} attempts; see `top_up` in the manifest",
                    attempts.len()
                )));
            }
            return Ok(JobStatus::Run(manifest.status));
        }
        // Draw in proportion to the yield so far, with a margin, and at least a quarter more.
        let yield_rate = rows.max(1) as f64 / scale;
        scale = (target as f64 / yield_rate * 1.2).max(scale * 1.25).min(scale * 8.0);
        events(JobEvent::Note(format!(
            "{rows} of {target} records; drawing {scale:.2}x the first attempt and running again"
        )));
        plan = rebuild(scale)?;
        options.overwrite = true;
        options.resume = false;
    }
}

/// Adds the top-up attempts to `manifest.json` (atomically), so the record says how `num_samples` was met.
fn record_attempts(out: &Path, target: usize, attempts: &[serde_json::Value], met: bool) -> Result<(), JobError> {
    let path = out.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(io_at(&path))?;
    let invalid = |e: serde_json::Error| JobError::Io { path: path.clone(), source: e.into() };
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    manifest["top_up"] = serde_json::json!({"num_samples": target, "met": met, "attempts": attempts});
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(invalid)?;
    crate::io::atomic::write_atomically(&path, &bytes).map_err(io_at(&path))
}

/// One run of the graph: sources drawn, the engine run with its progress, the card and export written.
fn run_once(
    mut plan: Plan,
    options: RunOptions,
    show_progress: bool,
    stop: &Arc<AtomicBool>,
    events: &mut dyn FnMut(JobEvent),
) -> Result<Manifest, JobError> {
    let dry_run = options.dry_run;
    let out = options.out.clone();
    // Hub and passages sources are drawn before the run and then read as files from `_staging`.
    let (drawn, _staging) = draw::draw_sources(&mut plan, options.cache_dir.as_deref())?;
    let node_ids: Vec<(String, String)> = plan.nodes.iter().map(|n| (n.id.clone(), n.kind.clone())).collect();
    let export = plan.config.export.clone();
    let target_samples = plan.config.target_samples;
    let engine = Engine::new(plan, options);
    let files = engine.files_to_read();
    let live = (!dry_run)
        .then(|| progress::live_progress_file(&out, &node_ids, engine.counters(), files.clone(), target_samples));
    let terminal = show_progress.then(|| progress::terminal_progress(&node_ids, engine.counters(), files));
    let result = engine.run(Arc::clone(stop));
    if let Some(terminal) = terminal {
        terminal.finish();
    }
    if let Some(live) = live {
        live.finish();
    }
    let mut manifest = result.map_err(|source| JobError::Run { out: out.clone(), source })?;
    if !drawn.is_empty() && !dry_run {
        for (name, stats) in &drawn {
            manifest.models.entry(name.clone()).or_default().merge(stats);
        }
        let path = out.join("manifest.json");
        manifest.write(&path).map_err(io_at(&path))?;
    }
    if dry_run {
        events(JobEvent::Estimated { manifest: &manifest });
        return Ok(manifest);
    }
    events(JobEvent::RunEnded { manifest: &manifest, out: &out });
    if manifest.status == RunStatus::Completed {
        if let Err(error) = crate::export::write_run_card(&out) {
            events(JobEvent::Warning(format!("no dataset card: {error}")));
        }
        // The config's `export:` section: checked when the config was loaded.
        if let Some(export) = export
            && let Ok(settings) = export.settings()
        {
            let dir = out.join(&export.dir);
            let report = crate::export::export(&out, &dir, &settings)
                .map_err(|source| JobError::Export { dir: dir.clone(), source })?;
            events(JobEvent::Exported { summary: report.split_summary(), dir });
        }
    }
    Ok(manifest)
}
