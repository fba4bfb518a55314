//! The `sdg` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use sdg::config::NodeSpec;
use sdg::config::resolve;
use sdg::config::{Config, ConfigError};
use sdg::plan::{Plan, render};
use sdg::run::manifest::{Manifest, RunStatus};
use sdg::runtime::metrics::{WorkerCounters, process_totals};
use sdg::runtime::{Engine, RunOptions, default_cache_dir};

/// glibc's malloc contends across the timely, tokio and HTTP threads; mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sdg", version, about = "Synthesizes training data for LLMs from one YAML file")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config and report every problem at once (file, line, key). Exits 1 on errors.
    Validate {
        /// The config file.
        config: PathBuf,
    },
    /// Print the resolved graph: nodes, kinds, edges and columns.
    Plan {
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Write the graph a `task:` recipe expands to into this file, as an editable config.
        #[arg(long, value_name = "FILE")]
        eject: Option<PathBuf>,
    },
    /// Run a graph and write the run directory (data/, rejects/, manifest.json).
    Run {
        /// The config file; without one, the embedded quickstart runs on the bundled sample corpus.
        config: Option<PathBuf>,
        /// The run directory.
        #[arg(short, long, default_value = "sdg-out")]
        out: PathBuf,
        /// Worker threads in this process.
        #[arg(short, long, default_value_t = default_workers())]
        workers: usize,
        /// Processes in the cluster.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// This process's index (0-based).
        #[arg(long, default_value_t = 0)]
        process: usize,
        /// One host:port per line, one line per process.
        #[arg(long)]
        hostfile: Option<PathBuf>,
        /// Replace the outputs of an earlier run in the run directory.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// Go on with the interrupted (or killed) run in the run directory: committed records are kept, model
        /// calls already answered come from the response cache. The config must be the one it started with.
        #[arg(long)]
        resume: bool,
        /// With --resume: accept an edited config; the nodes whose settings changed, and everything
        /// downstream of them, run again, and the rest of the run is kept.
        #[arg(long, requires = "resume")]
        force: bool,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
        /// Folder of the model response cache (default: run.cache_dir, $SDG_CACHE_DIR or ~/.cache/sdg).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not read or write the model response cache.
        #[arg(long, conflicts_with = "cache_dir")]
        no_cache: bool,
        /// Send no model request: run the graph up to its model calls and print the requests, tokens and
        /// cost they would take. Nothing is written to OUT.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the web UI: write a recipe, start runs, watch them live, read and download their data.
    Serve {
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Address to bind; anything but loopback requires the access token printed at start.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Folder of the run folders (each run: config.yaml, inputs/, out/, run.log).
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Folder of the model response cache the runs share (default as for `sdg run`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Require the token in this environment variable, even on loopback (default: a random token,
        /// off loopback only). A variable, so the token is not in the process list.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
    },
    /// Export a run's data for training: verl-rl, verl-sft, messages (TRL, `datasets`), alpaca, sharegpt,
    /// jsonl; deterministic splits by a hash of the record id; a dataset card (README.md).
    Export {
        /// The run directory (of a run that wrote Parquet).
        run_dir: PathBuf,
        /// Where to write (default: RUN_DIR/export).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// A format to write (repeatable; default: all six).
        #[arg(long = "format", value_name = "FORMAT")]
        formats: Vec<String>,
        /// Split shares by a hash of the record id, e.g. train=0.9,validation=0.05,test=0.05.
        #[arg(long, default_value = "train=1")]
        splits: String,
        /// Only records of this category (repeatable), e.g. `--category learnable`.
        #[arg(long = "category", value_name = "CATEGORY")]
        categories: Vec<String>,
        /// A system message put first in every conversation.
        #[arg(long)]
        system: Option<String>,
        /// The column that holds the prompt.
        #[arg(long, default_value = "question")]
        prompt_column: String,
        /// The column that holds the response (default: `response`, else the answer column).
        #[arg(long)]
        response_column: Option<String>,
        /// The column that holds the reference answer (verl's ground_truth).
        #[arg(long, default_value = "answer")]
        answer_column: String,
        /// verl's data_source for records not drawn from a Hub dataset.
        #[arg(long, default_value = "sdg")]
        data_source: String,
        /// verl's ability.
        #[arg(long, default_value = "general")]
        ability: String,
        /// A tokenizer.json for the card's token lengths (default: an estimate).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Upload the export to this Hugging Face dataset repo (uses HF_TOKEN and HF_ENDPOINT).
        #[arg(long, value_name = "OWNER/NAME")]
        push_to_hub: Option<String>,
        /// With --push-to-hub: create the repo private.
        #[arg(long, requires = "push_to_hub")]
        private: bool,
    },
    /// The local model store ($SDG_HOME/models): list what is there, fetch models into it.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Show the catalog and every model in the store: name, kind, size, source, path.
    List,
    /// Fetch catalog models or Hub repos (`owner/name`) into the store; prints each one's path and source.
    Fetch {
        /// Catalog names or Hub repo ids.
        #[arg(required = true)]
        names: Vec<String>,
        /// A file to fetch from the Hub repo NAME (repeatable); without it a repo gets the embedder files.
        #[arg(long = "file", value_name = "FILE")]
        files: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Dot,
    Mermaid,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    // A file-size limit (ulimit -f) then fails the write with EFBIG, reported like a full disk, instead of
    // killing the process.
    // SAFETY: setting a signal's disposition to ignore, before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SDG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { config } => Ok(match Plan::from_file(&config) {
            Ok(plan) => {
                let edges: usize = plan.nodes.iter().map(|n| n.inputs.len()).sum();
                println!(
                    "{}: ok ({} nodes, {} edges, config {})",
                    config.display(),
                    plan.nodes.len(),
                    edges,
                    &plan.config.hash[..12]
                );
                ExitCode::SUCCESS
            }
            Err(error) => report_config_error(&error),
        }),
        Command::Plan { config, format, eject } => Ok(match Plan::from_file(&config) {
            Ok(plan) if eject.is_some() => {
                let target = eject.unwrap_or_default();
                match plan.config.ejected() {
                    None => {
                        eprintln!("{}: has no `task:` section; it is already a graph", config.display());
                        ExitCode::from(2)
                    }
                    Some(text) => match write_atomically(&target, text.as_bytes()) {
                        Ok(()) => {
                            println!("wrote the expanded graph to {}", target.display());
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("cannot write {}: {e}", target.display());
                            ExitCode::FAILURE
                        }
                    },
                }
            }
            Ok(plan) => {
                let text = match format {
                    PlanFormat::Text => render::text(&plan),
                    PlanFormat::Dot => render::dot(&plan),
                    PlanFormat::Mermaid => render::mermaid(&plan),
                };
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => report_config_error(&error),
        }),
        Command::Run {
            config,
            out,
            workers,
            processes,
            process,
            hostfile,
            overwrite,
            resume,
            force,
            quiet,
            cache_dir,
            no_cache,
            dry_run,
        } => {
            let plan = match load_plan(config.as_deref()) {
                Ok(plan) => plan,
                Err(error) => return Ok(report_config_error(&error)),
            };
            let cache_dir = if no_cache {
                None
            } else {
                Some(
                    cache_dir
                        .or_else(|| plan.config.run.cache_dir.as_ref().map(|d| resolve(&plan.config.base_dir, d)))
                        .unwrap_or_else(default_cache_dir),
                )
            };
            // A dry run writes into a scratch folder that is removed afterwards.
            let scratch = if dry_run { Some(tempfile_dir()?) } else { None };
            let out = scratch.as_ref().map_or(out, |dir| dir.clone());
            let options = RunOptions {
                out,
                dry_run,
                workers: workers.max(1),
                processes: processes.max(1),
                process,
                hostfile,
                overwrite,
                resume: resume && !dry_run,
                force,
                cache_dir,
            };
            if options.resume && already_complete(&plan, &options.out) {
                println!("{} already holds the completed run of this config; nothing to do", options.out.display());
                return Ok(ExitCode::SUCCESS);
            }
            if options.resume && options.cache_dir.is_none() {
                eprintln!(
                    "warning: --resume without the response cache sends again every model call not yet committed"
                );
            }
            let result = run(plan, options, quiet);
            if let Some(dir) = scratch {
                let _ = std::fs::remove_dir_all(dir);
            }
            result
        }
        Command::Models { command } => models(command),
        Command::Serve { port, host, runs, cache_dir, token_env } => {
            let token = match token_env {
                Some(var) => Some(std::env::var(&var).with_context(|| format!("--token-env: ${var} is not set"))?),
                None => None,
            };
            serve(port, host, runs, cache_dir, token)
        }
        Command::Export {
            run_dir,
            out,
            formats,
            splits,
            categories,
            system,
            prompt_column,
            response_column,
            answer_column,
            data_source,
            ability,
            tokenizer,
            push_to_hub,
            private,
        } => {
            let formats = if formats.is_empty() {
                sdg::export::ExportFormat::ALL.to_vec()
            } else {
                formats
                    .iter()
                    .map(|f| sdg::export::ExportFormat::parse(f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?
            };
            let settings = sdg::export::ExportSettings {
                formats,
                splits: sdg::export::parse_splits(&splits)?,
                categories,
                system,
                prompt_column,
                response_column,
                answer_column,
                data_source,
                ability,
                tokenizer,
            };
            let out = out.unwrap_or_else(|| run_dir.join("export"));
            let report = sdg::export::export(&run_dir, &out, &settings)?;
            println!("exported {} ({} files) into {}", report.split_summary(), report.files.len(), out.display());
            for file in &report.files {
                println!("  {file}");
            }
            println!("  README.md (dataset card)");
            if report.skipped_incomplete + report.skipped_category > 0 {
                println!(
                    "left out: {} records without a prompt or response, {} of other categories",
                    report.skipped_incomplete, report.skipped_category
                );
            }
            if let Some(repo) = push_to_hub {
                push_export(&out, &repo, private)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Uploads an export folder to a Hub dataset repo (`HF_ENDPOINT`, `HF_TOKEN`), replacing what an earlier push
/// left there.
fn push_export(folder: &Path, repo: &str, private: bool) -> anyhow::Result<()> {
    let options = sdg::io::hub_push::PushOptions {
        message: "Upload dataset exported by sdg".to_string(),
        private,
        prune: true,
        ..Default::default()
    };
    let report = sdg::io::hub_push::push_folder_from_env(repo, folder, &options)?;
    println!(
        "pushed {} files to {} ({}{}): {}",
        report.files.len(),
        report.repo,
        if report.created { "created, " } else { "" },
        report.revision,
        report.commit_url
    );
    Ok(())
}

fn models(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    use sdg::models::store::ModelStore;

    let store = ModelStore::from_env()?;
    match command {
        ModelsCommand::List => {
            let size = |bytes: u64| {
                let units = ["B", "KiB", "MiB", "GiB", "TiB"];
                let exponent = (bytes.max(1).ilog2() / 10).min(4);
                if exponent == 0 {
                    format!("{bytes} B")
                } else {
                    format!("{:.1} {}", bytes as f64 / (1u64 << (10 * exponent)) as f64, units[exponent as usize])
                }
            };
            println!("{:<40} {:<9} {:>10}  {:<12} path", "name", "kind", "size", "source");
            for model in store.list() {
                let kind = model.kind.map_or_else(|| String::from("?"), |kind| kind.to_string());
                let (size, source) = match model.source {
                    Some(source) => (size(model.bytes), source.to_string()),
                    None => (String::from("-"), String::from("not fetched")),
                };
                println!("{:<40} {kind:<9} {size:>10}  {source:<12} {}", model.name, model.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Fetch { names, files } => {
            if !files.is_empty() && names.len() != 1 {
                anyhow::bail!("--file needs exactly one NAME, the Hub repo id the files are in");
            }
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            let mut failed = false;
            for name in &names {
                let fetched = if files.is_empty() { store.fetch(name) } else { store.fetch_repo(name, &files) };
                match fetched {
                    Ok(fetched) if fetched.fresh => {
                        println!("{name}: {} (fetched from {})", fetched.path.display(), fetched.source)
                    }
                    Ok(fetched) => {
                        println!("{name}: {} (already in the store, {})", fetched.path.display(), fetched.source)
                    }
                    Err(error) => {
                        eprintln!("error: {error}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

fn serve(
    port: u16,
    host: std::net::IpAddr,
    runs: PathBuf,
    cache_dir: Option<PathBuf>,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the sdg binary to run runs with")?;
    let runs_dir = std::path::absolute(&runs).with_context(|| format!("bad runs folder {}", runs.display()))?;
    let options = sdg::serve::ServeOptions {
        bind: std::net::SocketAddr::new(host, port),
        runs_dir,
        exe,
        cache_dir: cache_dir.map(std::path::absolute).transpose()?,
        token,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(sdg::serve::serve(options))?;
    Ok(ExitCode::SUCCESS)
}

/// A fresh, private scratch folder.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sdg-dry-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn load_plan(config: Option<&Path>) -> Result<Plan, ConfigError> {
    match config {
        Some(path) => Plan::from_file(path),
        None => {
            let (config, diagnostics) = Config::embedded()?;
            Plan::build(config, diagnostics)
        }
    }
}

fn report_config_error(error: &ConfigError) -> ExitCode {
    eprintln!("{error}");
    let n = error.diagnostics.len();
    eprintln!("{n} error{} found; nothing was run", if n == 1 { "" } else { "s" });
    ExitCode::FAILURE
}

/// Most runs of a `task:` recipe that tops up toward `num_samples`.
const MAX_ATTEMPTS: usize = 4;

fn run(plan: Plan, options: RunOptions, quiet: bool) -> anyhow::Result<ExitCode> {
    // Before any thread starts: candle sizes its matmul pool from the environment at first use.
    let local_threads = plan.config.models.values().filter(|m| m.provider == sdg::models::spec::Provider::Local);
    if let Some(threads) = local_threads.map(|m| m.threads.unwrap_or_else(sdg::models::local::default_threads)).max() {
        sdg::models::local::configure_threads(threads);
    }
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handler(Arc::clone(&stop))?;
    let Some(target) = plan.config.target_samples.filter(|_| !options.dry_run) else {
        return run_once(plan, options, quiet, &stop).map(|(code, _)| code);
    };
    // A recipe must deliver `num_samples` records: when verification drops too many, the sources draw more
    // and the run is repeated. Rows already verified are answered from the response cache, so a repeat costs
    // only the new rows.
    let (text, origin, base_dir) = (plan.config.text.clone(), plan.config.origin.clone(), plan.config.base_dir.clone());
    let plan_can_top_up = plan.config.can_top_up;
    let out = options.out.clone();
    let mut attempts = Vec::new();
    let mut scale = 1.0f64;
    let mut plan = plan;
    let mut options = options;
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
        let (config, diagnostics) =
            Config::parse_scaled(&text, &origin, &base_dir, scale).map_err(|e| anyhow::anyhow!("{e}"))?;
        plan = Plan::build(config, diagnostics).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !options.resume && options.overwrite {
        let _ = std::fs::remove_file(&top_up_state);
    }
    loop {
        // The first attempt needs no record (a resume starts there anyway), and must not touch a folder it
        // may yet be refused.
        if !attempts.is_empty() {
            std::fs::create_dir_all(out.join("state"))?;
            write_atomically(
                &top_up_state,
                &serde_json::to_vec(&serde_json::json!({"scale": scale, "attempts": attempts}))?,
            )?;
        }
        let (code, manifest) = run_once(plan, options.clone(), quiet, &stop)?;
        let Some(manifest) = manifest else { return Ok(code) };
        let rows: u64 = manifest.outputs.values().map(|o| o.rows).sum();
        attempts.push(serde_json::json!({"scale": scale, "records": rows}));
        let done = rows >= target as u64
            || !plan_can_top_up
            || attempts.len() >= MAX_ATTEMPTS
            || manifest.status != RunStatus::Completed
            || stop.load(Ordering::SeqCst);
        if done {
            let met = rows >= target as u64;
            record_attempts(&out, target, &attempts, met)?;
            if !met && !plan_can_top_up {
                eprintln!(
                    "warning: {rows} of the {target} records asked for: the corpus was read whole; add documents, \
                     raise `per_passage` or loosen verification (see `top_up` in the manifest)"
                );
            } else if !met {
                eprintln!(
                    "warning: {rows} of the {target} records asked for after {} attempts; see `top_up` in the manifest",
                    attempts.len()
                );
            }
            return Ok(code);
        }
        // Draw in proportion to the yield so far, with a margin, and at least a quarter more.
        let yield_rate = rows.max(1) as f64 / scale;
        scale = (target as f64 / yield_rate * 1.2).max(scale * 1.25).min(scale * 8.0);
        eprintln!("{rows} of {target} records; drawing {scale:.2}x the first attempt and running again");
        let (config, diagnostics) =
            Config::parse_scaled(&text, &origin, &base_dir, scale).map_err(|e| anyhow::anyhow!("{e}"))?;
        plan = Plan::build(config, diagnostics).map_err(|e| anyhow::anyhow!("{e}"))?;
        options.overwrite = true;
        options.resume = false;
    }
}

/// Whether `out` holds a completed run of this very config (a `--resume` then has nothing to do).
fn already_complete(plan: &Plan, out: &Path) -> bool {
    Manifest::read(&out.join("manifest.json"))
        .is_ok_and(|m| m.status == RunStatus::Completed && m.config_hash == plan.config.hash)
}

/// Adds the top-up attempts to `manifest.json` (atomically), so the record says how `num_samples` was met.
fn record_attempts(out: &Path, target: usize, attempts: &[serde_json::Value], met: bool) -> anyhow::Result<()> {
    let path = out.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    manifest["top_up"] = serde_json::json!({"num_samples": target, "met": met, "attempts": attempts});
    write_atomically(&path, &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(())
}

/// One run of the graph: sources drawn, the engine run, the summary printed.
fn run_once(
    plan: Plan,
    options: RunOptions,
    quiet: bool,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(ExitCode, Option<Manifest>)> {
    let dry_run = options.dry_run;
    let out = options.out.clone();
    // Hub sources are drawn before the run (cached beside the response cache) and then read as files.
    let mut plan = plan;
    let staging = tempfile::tempdir()?;
    let samples = sdg::io::hub_source::samples_root(options.cache_dir.as_deref(), staging.path());
    let models = PreRunModels::new(&plan, options.cache_dir.as_deref());
    for node in &mut plan.nodes {
        let drawn = match &node.spec {
            NodeSpec::Hub(hub) => {
                let ask = |request| models.ask(request).map_err(|e| e.to_string());
                hub.materialize(&samples, &ask).map_err(|e| format!("cannot read the Hub datasets: {e}"))
            }
            NodeSpec::Passages(passages) => {
                let reply = match passages.extraction_request() {
                    None => None,
                    Some(request) => Some(models.ask(request)?),
                };
                passages
                    .all_queries(reply.as_deref())
                    .and_then(|queries| passages.materialize(&node.id, &samples.join("passages"), &queries))
                    .map_err(|e| format!("cannot retrieve passages: {e}"))
            }
            _ => continue,
        };
        match drawn {
            Ok(ingest) => node.spec = NodeSpec::Ingest(ingest),
            Err(error) => {
                eprintln!("node `{}`: {error}", node.id);
                return Ok((ExitCode::FAILURE, None));
            }
        }
    }
    // The engine opens the response cache itself; the pre-run service must let go of it first. Its calls
    // are added to the manifest's accounting below.
    let pre_run = models.stats();
    drop(models);
    let node_ids: Vec<(String, String)> = plan.nodes.iter().map(|n| (n.id.clone(), n.kind.clone())).collect();
    let export = plan.config.export.clone();
    let target_samples = plan.config.target_samples;
    let engine = Engine::new(plan, options);
    let files = engine.files_to_read();
    let live =
        (!dry_run).then(|| live_progress_file(&out, &node_ids, engine.counters(), files.clone(), target_samples));
    let progress =
        (!quiet && std::io::stderr().is_terminal()).then(|| terminal_progress(&node_ids, engine.counters(), files));
    let result = engine.run(Arc::clone(stop));
    if let Some(progress) = progress {
        progress.finish();
    }
    if let Some(live) = live {
        live.finish();
    }
    let mut manifest = result.with_context(|| format!("run into {} failed", out.display()))?;
    if !pre_run.is_empty() && !dry_run {
        for (name, stats) in &pre_run {
            manifest.models.entry(name.clone()).or_default().merge(stats);
        }
        manifest.write(&out.join("manifest.json")).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if dry_run {
        print_estimate(&manifest);
        return Ok((ExitCode::SUCCESS, Some(manifest)));
    }
    print_summary(&manifest, &out);
    if manifest.status == RunStatus::Completed {
        if let Err(error) = sdg::export::write_run_card(&out) {
            eprintln!("warning: no dataset card: {error}");
        }
        // The config's `export:` section: checked when the config was loaded.
        if let Some(export) = export
            && let Ok(settings) = export.settings()
        {
            let report = sdg::export::export(&out, &out.join(&export.dir), &settings)
                .with_context(|| format!("cannot export into {}", out.join(&export.dir).display()))?;
            println!("exported {} into {}", report.split_summary(), out.join(&export.dir).display());
        }
    }
    let code = match manifest.status {
        RunStatus::Completed => ExitCode::SUCCESS,
        RunStatus::Interrupted => ExitCode::from(130),
        RunStatus::Failed | RunStatus::Running => ExitCode::FAILURE,
    };
    Ok((code, Some(manifest)))
}

fn print_estimate(manifest: &Manifest) {
    println!("dry run: no model request was sent; estimates for the inputs as they are now");
    println!(
        "{:<16} {:>10} {:>10} {:>14} {:>14} {:>10}",
        "model", "requests", "cached", "prompt tok", "max compl tok", "cost"
    );
    for (name, stats) in &manifest.models {
        println!(
            "{name:<16} {:>10} {:>10} {:>14} {:>14} {:>10.4}",
            stats.requests, stats.cache_hits, stats.prompt_tokens, stats.completion_tokens, stats.cost
        );
    }
    let downstream: Vec<&str> = manifest
        .graph
        .iter()
        .filter(|n| manifest.nodes.get(&n.id).is_some_and(|s| s.model_calls > 0))
        .map(|n| n.id.as_str())
        .collect();
    if !downstream.is_empty() {
        println!(
            "(model calls of nodes downstream of {} are not included: they need real answers)",
            downstream.join(", ")
        );
    }
}

fn install_signal_handler(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            stop.store(true, Ordering::SeqCst);
            eprintln!("\nstopping: finishing in-flight batches and committing (press Ctrl-C again to exit now)");
        } else {
            // Everything committed so far stays valid: parts are renamed into place only when complete.
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")
}

fn print_summary(manifest: &Manifest, out: &Path) {
    println!(
        "{} in {:.2}s ({} workers x {} processes), config {}",
        serde_json::to_value(manifest.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        manifest.elapsed_s,
        manifest.workers,
        manifest.processes,
        &manifest.config_hash[..12.min(manifest.config_hash.len())]
    );
    println!("{:<16} {:>12} {:>12} {:>10} {:>10}", "node", "in", "out", "rejected", "busy s");
    for node in &manifest.graph {
        if let Some(stats) = manifest.nodes.get(&node.id) {
            println!(
                "{:<16} {:>12} {:>12} {:>10} {:>10.2}",
                format!("{} [{}]", node.id, node.kind),
                stats.rows_in,
                stats.rows_out,
                stats.rejected,
                stats.busy_s
            );
        }
    }
    for (sink, output) in &manifest.outputs {
        println!(
            "{sink}: {} rows in {} parts ({} bytes) under {}",
            output.rows,
            output.parts.len(),
            output.bytes,
            out.join(&output.dir).display()
        );
    }
    println!("rejects: {} rows under {}", manifest.rejects.rows, out.join(&manifest.rejects.dir).display());
    for (name, stats) in &manifest.models {
        println!(
            "model {name}: {} requests ({} retries, {} failed), cache {} hits / {} misses, tokens {} in / {} out, p50 {:.0} ms, p95 {:.0} ms{}",
            stats.requests,
            stats.retries,
            stats.failures,
            stats.cache_hits,
            stats.cache_misses,
            stats.prompt_tokens,
            stats.completion_tokens,
            stats.latency_p50_ms,
            stats.latency_p95_ms,
            if stats.cost > 0.0 { format!(", cost {:.4}", stats.cost) } else { String::new() }
        );
    }
    for error in &manifest.errors {
        println!("error: {error}");
    }
    if manifest.resumes > 0 {
        let skipped: u64 = manifest.nodes.values().map(|n| n.already_committed).sum();
        println!("resumed (resume #{}): {skipped} records were already committed and kept", manifest.resumes);
    }
    if matches!(manifest.status, RunStatus::Interrupted | RunStatus::Failed) {
        println!("everything committed so far is kept; go on with: sdg run <config> -o {} --resume", out.display());
    }
}

/// A thread that calls `tick(elapsed seconds, finished)` every `period` until [`finish`](Self::finish), and
/// once more after it with `finished` set, so the last call sees the final counts.
struct Ticker {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    fn start(period: Duration, mut tick: impl FnMut(f64, bool) + Send + 'static) -> Ticker {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            loop {
                // Read the flag first, so the last call shows the final counts.
                let finished = flag.load(Ordering::Relaxed);
                tick(started.elapsed().as_secs_f64().max(1e-3), finished);
                if finished {
                    break;
                }
                std::thread::sleep(period);
            }
        });
        Ticker { done, thread }
    }

    fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// `OUT/state/progress.json`, rewritten twice a second while the run works: per-node counts, requests in
/// flight, rows/s, and an overall fraction and ETA, for `sdg serve` and anyone watching a run.
fn live_progress_file(
    out: &Path,
    nodes: &[(String, String)],
    counters: Vec<Arc<WorkerCounters>>,
    files: Vec<u64>,
    target_samples: Option<usize>,
) -> Ticker {
    let path = out.join("state").join("progress.json");
    let nodes = nodes.to_vec();
    Ticker::start(Duration::from_millis(500), move |secs, finished| {
        let totals: Vec<_> = (0..nodes.len()).map(|i| process_totals(&counters, i)).collect();
        let fraction = live_fraction(&nodes, &totals, &files, target_samples);
        let mut by_node = serde_json::Map::new();
        for ((id, kind), t) in nodes.iter().zip(&totals) {
            by_node.insert(
                id.clone(),
                serde_json::json!({"kind": kind, "rows_in": t.rows_in, "rows_out": t.rows_out,
                    "rejected": t.rejected, "in_flight": t.in_flight, "model_calls": t.model_calls,
                    "cache_hits": t.cache_hits, "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                    "already_committed": t.already_committed, "rows_per_s": t.rows_in.max(t.rows_out) as f64 / secs}),
            );
        }
        let eta = fraction.filter(|f| *f > 0.0 && !finished).map(|f| secs * (1.0 - f) / f);
        let status = if finished { "finishing" } else { "running" };
        let value = serde_json::json!({"status": status, "elapsed_s": secs, "fraction": fraction,
            "eta_s": eta, "nodes": by_node});
        // Best effort, and the folder is made each time: preparing the run directory may clear it.
        if std::fs::create_dir_all(path.parent().expect("state folder")).is_ok()
            && let Ok(bytes) = serde_json::to_vec(&value)
        {
            let _ = write_atomically(&path, &bytes);
        }
    })
}

/// How far a run is, from 0 to 1: the sinks' rows against `num_samples` for a recipe, else the files the
/// sources have read; held below 1 while requests are in flight. `None` when nothing tells.
fn live_fraction(
    nodes: &[(String, String)],
    totals: &[sdg::runtime::metrics::NodeStats],
    files: &[u64],
    target_samples: Option<usize>,
) -> Option<f64> {
    let in_flight: u64 = totals.iter().map(|t| t.in_flight).sum();
    let sunk: u64 = nodes.iter().zip(totals).filter(|((_, kind), _)| kind == "sink").map(|(_, t)| t.rows_in).sum();
    let read: u64 = totals.iter().map(|t| t.files_done).sum();
    let to_read: u64 = files.iter().sum();
    let fraction = match (target_samples, to_read) {
        (Some(target), _) if target > 0 => sunk as f64 / target as f64,
        (_, 0) => return None,
        (_, to_read) => read as f64 / to_read as f64,
    };
    let cap = if in_flight > 0 { 0.99 } else { 1.0 };
    Some(fraction.clamp(0.0, cap))
}

/// One progress line per node, refreshed from the workers' counters.
fn terminal_progress(nodes: &[(String, String)], counters: Vec<Arc<WorkerCounters>>, files: Vec<u64>) -> Ticker {
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let bars: Vec<indicatif::ProgressBar> = nodes
        .iter()
        .map(|(id, kind)| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("{id} [{kind}]"));
            bar
        })
        .collect();
    Ticker::start(Duration::from_millis(200), move |secs, finished| {
        for (i, bar) in bars.iter().enumerate() {
            let t = process_totals(&counters, i);
            let moved = t.rows_in.max(t.rows_out);
            let total_files = files.get(i).copied().unwrap_or(0);
            let eta = if total_files > 0 {
                let done = t.files_done.min(total_files);
                let left = if done == 0 {
                    String::from("?")
                } else {
                    format!("{:.0}s", secs * (total_files - done) as f64 / done as f64)
                };
                format!("  files {done}/{total_files}  ETA {left}")
            } else {
                String::new()
            };
            let calls = if t.model_calls > 0 {
                format!(
                    "  calls {} ({} cached)  tokens {}/{}",
                    t.model_calls, t.cache_hits, t.prompt_tokens, t.completion_tokens
                )
            } else {
                String::new()
            };
            bar.set_message(format!(
                "in {:>10}  out {:>10}  rejected {:>8}  {:>9.0} rows/s{calls}{eta}",
                t.rows_in,
                t.rows_out,
                t.rejected,
                moved as f64 / secs
            ));
            bar.tick();
        }
        if finished {
            for bar in &bars {
                bar.finish();
            }
        }
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Model calls made before the run (query writing, dataset judging), through the same service, cache and
/// retry rules as the run's own calls. One service serves them all: it is built on first use with only the
/// endpoints those nodes name (a local model is loaded once, not once per call), and dropped before the engine
/// opens the response cache itself.
struct PreRunModels {
    specs: std::collections::BTreeMap<String, sdg::models::ModelSpec>,
    cache: Option<PathBuf>,
    service: std::cell::OnceCell<sdg::models::service::ModelService>,
}

impl PreRunModels {
    fn new(plan: &Plan, cache_dir: Option<&Path>) -> Self {
        let endpoints: Vec<String> = plan
            .nodes
            .iter()
            .flat_map(|node| match &node.spec {
                NodeSpec::Hub(hub) => hub.endpoints(),
                NodeSpec::Passages(passages) => passages.endpoints(),
                _ => Vec::new(),
            })
            .collect();
        let specs = plan
            .config
            .models
            .iter()
            .filter(|(name, _)| endpoints.contains(name))
            .map(|(name, spec)| (name.clone(), spec.clone()))
            .collect();
        PreRunModels {
            specs,
            cache: cache_dir.map(|dir| dir.join("responses.redb")),
            service: std::cell::OnceCell::new(),
        }
    }

    /// What the calls made so far cost, per endpoint (empty when none was made).
    fn stats(&self) -> std::collections::BTreeMap<String, sdg::models::EndpointStats> {
        self.service.get().map(|service| service.stats()).unwrap_or_default()
    }

    fn ask(&self, request: sdg_operators::model::ModelRequest) -> anyhow::Result<String> {
        let service = match self.service.get() {
            Some(service) => service,
            None => {
                let built = sdg::models::service::ModelService::new(&self.specs, self.cache.as_deref())
                    .map_err(anyhow::Error::msg)?;
                self.service.get_or_init(|| built)
            }
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        service.submit(vec![request], move |responses| {
            let _ = sender.send(responses);
        });
        let responses = receiver.recv()?;
        service.flush();
        match responses.into_iter().next() {
            Some(Ok(reply)) => Ok(reply.texts.into_iter().next().unwrap_or_default()),
            Some(Err(error)) => Err(anyhow::anyhow!("the pre-run model call failed: {error}")),
            None => Err(anyhow::anyhow!("the pre-run model call got no reply")),
        }
    }
}
