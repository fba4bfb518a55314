//! The `sdg` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use sdg::config::ConfigError;
use sdg::job::{JobEvent, JobStatus};
use sdg::plan::{Plan, render};
use sdg::run::manifest::{Manifest, RunStatus};
use sdg::runtime::RunOptions;

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
    /// List the node kinds a graph may use, or print one kind's example config.
    Kinds {
        /// A kind: print its example config (a complete graph; paths relative to configs/).
        name: Option<String>,
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
                    Some(text) => match sdg::io::atomic::write_atomically(&target, text.as_bytes()) {
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
            let plan = match sdg::job::load_plan(config.as_deref()) {
                Ok(plan) => plan,
                Err(error) => return Ok(report_config_error(&error)),
            };
            let cache_dir = sdg::job::cache_dir_for(&plan, cache_dir, no_cache);
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
            let result = run(plan, options, quiet);
            if let Some(dir) = scratch {
                let _ = std::fs::remove_dir_all(dir);
            }
            result
        }
        Command::Models { command } => models(command),
        Command::Kinds { name: None } => {
            println!("{:<14} {:<10} summary", "kind", "role");
            for kind in sdg::kinds::KINDS {
                let role = serde_json::to_value(kind.role).ok().and_then(|v| v.as_str().map(str::to_string));
                println!("{:<14} {:<10} {}", kind.name, role.unwrap_or_default(), kind.summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kinds { name: Some(name) } => match sdg::kinds::find(&name) {
            Some(kind) => {
                print!("{}", kind.example);
                Ok(ExitCode::SUCCESS)
            }
            None => anyhow::bail!("no node kind `{name}`; `sdg kinds` lists them"),
        },
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

fn report_config_error(error: &ConfigError) -> ExitCode {
    eprintln!("{error}");
    let n = error.diagnostics.len();
    eprintln!("{n} error{} found; nothing was run", if n == 1 { "" } else { "s" });
    ExitCode::FAILURE
}

/// Runs the job, printing what it reports; the exit code follows the run's status.
fn run(plan: Plan, options: RunOptions, quiet: bool) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handler(Arc::clone(&stop))?;
    let out = options.out.clone();
    let show_progress = !quiet && std::io::stderr().is_terminal();
    let status = sdg::job::run(plan, options, show_progress, &stop, &mut |event| match event {
        JobEvent::RunEnded { manifest, out } => print_summary(manifest, out),
        JobEvent::Estimated { manifest } => print_estimate(manifest),
        JobEvent::Exported { summary, dir } => println!("exported {summary} into {}", dir.display()),
        JobEvent::Warning(message) => eprintln!("warning: {message}"),
        JobEvent::Note(message) => eprintln!("{message}"),
    })?;
    Ok(match status {
        JobStatus::AlreadyComplete => {
            println!("{} already holds the completed run of this config; nothing to do", out.display());
            ExitCode::SUCCESS
        }
        JobStatus::Run(RunStatus::Completed) => ExitCode::SUCCESS,
        JobStatus::Run(RunStatus::Interrupted) => ExitCode::from(130),
        JobStatus::Run(RunStatus::Failed | RunStatus::Running) => ExitCode::FAILURE,
    })
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
