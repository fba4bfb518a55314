//! Throughput of the model service against the local OpenAI-compatible test server: a generate graph of
//! 20,000 requests at 100 ms latency with concurrency 64, 256 and 1024. Prints achieved req/s against the
//! limit C/L, and the engine's CPU time per 1,000 requests (user+sys of the `sdg` process, from wait4).
//! Run: `cargo bench --bench model_service` (SDG_BENCH_REQUESTS, SDG_BENCH_LATENCY_MS to change).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Run {
    seconds: f64,
    cpu_seconds: f64,
}

// The child is reaped by wait4 (which also gives its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn run_sdg(binary: &Path, dir: &Path) -> Run {
    let started = Instant::now();
    let child = Command::new(binary)
        .current_dir(dir)
        .args(["run", "graph.yaml", "-o", "out", "--overwrite", "--quiet", "--no-cache", "--workers", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sdg starts");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "sdg failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run { seconds: started.elapsed().as_secs_f64(), cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime) }
}

fn main() {
    let requests = env_u64("SDG_BENCH_REQUESTS", 20_000);
    let latency_ms = env_u64("SDG_BENCH_LATENCY_MS", 100);
    let sdg = PathBuf::from(env!("CARGO_BIN_EXE_sdg"));
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_sdg-test-server"));
    let mut server = Command::new(server_bin)
        .args(["--bind", "127.0.0.1:0", "--latency-ms", &latency_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("test server starts");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("{}/v1", line.trim().trim_start_matches("listening on "));

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
    let rows: String = (0..requests).map(|i| format!("{{\"text\": \"Question number {i}?\"}}\n")).collect();
    std::fs::write(dir.path().join("corpus/q.jsonl"), rows).unwrap();
    println!(
        "{requests} generate requests at {latency_ms} ms latency (sdg: 2 workers; test server in another process)"
    );
    println!("{:>6} {:>10} {:>10} {:>8} {:>16}", "C", "req/s", "C/L", "ratio", "CPU ms / 1k req");
    for concurrency in [64u64, 256, 1024] {
        let graph = format!(
            "run: {{batch_rows: 2048, window: 4, partitions: 2}}\nmodels:\n  teacher: {{base_url: \"{url}\", model: test-model, max_concurrency: {concurrency}}}\nnodes:\n  - {{id: docs, kind: ingest, paths: [corpus]}}\n  - {{id: answers, kind: generate, input: docs, model: teacher, prompt: \"Answer: {{{{ text }}}}\", output: {{text: {{column: answer}}}}}}\n  - {{id: out, kind: sink, input: answers}}\n"
        );
        std::fs::write(dir.path().join("graph.yaml"), graph).unwrap();
        let run = run_sdg(&sdg, dir.path());
        let rate = requests as f64 / run.seconds;
        let limit = concurrency as f64 * 1000.0 / latency_ms as f64;
        println!(
            "{concurrency:>6} {rate:>10.0} {limit:>10.0} {:>7.0}% {:>16.2}",
            rate / limit.min(f64::MAX) * 100.0,
            run.cpu_seconds * 1000.0 / (requests as f64 / 1000.0)
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
