//! Progress of a run while it works: `OUT/state/progress.json` for `sdg serve` and anyone watching, and a
//! line per node on the terminal.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::runtime::metrics::{NodeStats, WorkerCounters, process_totals};

/// A thread that calls `tick(elapsed seconds, finished)` every `period` until [`finish`](Self::finish), and
/// once more after it with `finished` set, so the last call sees the final counts.
pub struct Ticker {
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
                // Woken early by `finish`, so a run never waits out a period at its end.
                std::thread::park_timeout(period);
            }
        });
        Ticker { done, thread }
    }

    pub fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

/// `OUT/state/progress.json`, rewritten twice a second while the run works: per-node counts, requests in
/// flight, rows/s, and an overall fraction and ETA, for `sdg serve` and anyone watching a run.
pub fn live_progress_file(
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
            let _ = crate::io::atomic::write_atomically(&path, &bytes);
        }
    })
}

/// How far a run is, from 0 to 1: the sinks' rows against `num_samples` for a recipe, else the files the
/// sources have read; held below 1 while requests are in flight. `None` when nothing tells.
fn live_fraction(
    nodes: &[(String, String)],
    totals: &[NodeStats],
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
pub fn terminal_progress(nodes: &[(String, String)], counters: Vec<Arc<WorkerCounters>>, files: Vec<u64>) -> Ticker {
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
