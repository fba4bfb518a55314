//! Peak RSS of `sdg run` on a 200 MB and a 2 GB generated corpus, side by side in one run.
//!
//! Backpressure bounds memory by batch size x window, so the two peaks should be close (target: within
//! 1.3x). Run: `cargo bench --bench memory` (set SDG_BENCH_SMALL_MB / SDG_BENCH_LARGE_MB to change sizes,
//! SDG_BENCH_DIR to pick the scratch folder).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn env_mb(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `mb` megabytes of distinct pseudo-English text, 1 MB per file.
fn corpus(dir: &Path, mb: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let words = ["engine", "batch", "window", "record", "arrow", "parquet", "timely", "worker", "sink", "chunk"];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for f in 0..mb {
        let path = dir.join(format!("doc-{f:05}.txt"));
        if path.exists() {
            continue;
        }
        let mut text = String::with_capacity(1 << 20);
        let mut n = 0u64;
        while text.len() < (1 << 20) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(words[(state % 10) as usize]);
            n += 1;
            // A unique token per sentence keeps every chunk distinct.
            if n.is_multiple_of(12) {
                text.push_str(&format!(" {f}-{n}.\n"));
                if n.is_multiple_of(96) {
                    text.push('\n');
                }
            } else {
                text.push(' ');
            }
        }
        std::fs::write(path, text).unwrap();
    }
}

struct Measured {
    peak_rss_mb: f64,
    seconds: f64,
}

/// Runs the release binary and reads its peak RSS from wait4's rusage.
// The child is reaped by wait4 (which also gives its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn measure(binary: &Path, config: &Path, out: &Path) -> Measured {
    let _ = std::fs::remove_dir_all(out);
    let started = Instant::now();
    let child = Command::new(binary)
        .args(["run", config.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet", "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sdg starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "sdg failed: status {status}");
    Measured { peak_rss_mb: usage.ru_maxrss as f64 / 1024.0, seconds: started.elapsed().as_secs_f64() }
}

fn main() {
    // `cargo bench` passes flags such as --bench; this harness takes none.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sdg"));
    let scratch = std::env::var_os("SDG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sdg-bench-memory"));
    let small = env_mb("SDG_BENCH_SMALL_MB", 200);
    let large = env_mb("SDG_BENCH_LARGE_MB", 2000);
    println!("peak RSS of `sdg run` (2 workers, ingest -> chunk -> filter -> sink), corpora in {}", scratch.display());
    let mut rows = Vec::new();
    for (name, with_dedup) in [("stream", false), ("stream+dedup", true)] {
        let config = scratch.join(format!("{name}.yaml"));
        let dedup = if with_dedup {
            "  - {id: unique, kind: dedup, input: clean}\n  - {id: out, kind: sink, input: unique}\n"
        } else {
            "  - {id: out, kind: sink, input: clean}\n"
        };
        let mut results = Vec::new();
        for mb in [small, large] {
            let corpus_dir = scratch.join(format!("corpus-{mb}mb"));
            corpus(&corpus_dir, mb);
            let text = format!(
                "run: {{batch_rows: 512, window: 4, partitions: 4}}\nnodes:\n  - {{id: docs, kind: ingest, paths: [{}]}}\n  - {{id: chunks, kind: chunk, input: docs, max_tokens: 1000, overlap: 100}}\n  - {{id: clean, kind: filter, input: chunks, where: {{len: {{column: text, min: 50}}}}}}\n{dedup}",
                corpus_dir.display()
            );
            std::fs::create_dir_all(&scratch).unwrap();
            std::fs::write(&config, text).unwrap();
            let m = measure(&binary, &config, &scratch.join("out"));
            println!(
                "{name:>13} {mb:>6} MB corpus: peak RSS {:>8.1} MB, {:>6.1} s, {:>6.1} MB/s",
                m.peak_rss_mb,
                m.seconds,
                mb as f64 / m.seconds
            );
            results.push(m);
        }
        let ratio = results[1].peak_rss_mb / results[0].peak_rss_mb;
        println!("{name:>13} peak RSS ratio {large} MB / {small} MB = {ratio:.2} (target <= 1.30)");
        rows.push((name, ratio));
    }
    let _ = std::fs::remove_dir_all(scratch.join("out"));
}
