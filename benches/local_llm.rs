//! Local LLM throughput: SmolLM2-135M Q4_1 on the CPU, single stream and batched, with llama.cpp measured
//! on the same GGUF, prompt and thread count in the same run when its Python binding is installed
//! (`bash benches/setup-llamacpp.sh`).
//!
//!     cargo bench --bench local_llm                  # threads: SDG_BENCH_THREADS (default: every core)
//!     cargo bench --features cuda --bench local_llm  # with SDG_BENCH_DEVICE=cuda: the candle-ops model on a GPU
//!
//! Figures: time to first token (prefill + first sample), decode tokens/s of one sequence (greedy, exactly
//! 128 new tokens, EOS ignored), and aggregate decode tokens/s with 4, 8 and 16 sequences decoding together;
//! measured in rounds (`SDG_BENCH_ROUNDS`, default 3) of one of each, medians reported. `SDG_BENCH_BATCHES`
//! (a comma list, default `4,8,16`; empty for none) picks the batch sizes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sdg::models::local::{Backend, LlmOptions, LocalLlm, configure_threads};
use sdg::testkit::catalog_model;
use sdg_operators::model::{ChatMessage, Prompt, Sampling};

const NEW_TOKENS: u32 = 128;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let threads = common::threads();
    configure_threads(threads);
    let model = catalog_model("smollm2-135m-instruct");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prompt_file = root.join("benches/prompts/sea.txt");
    let text = std::fs::read_to_string(&prompt_file).expect("benches/prompts/sea.txt");

    // `cpu` (our kernels), `cuda` (candle ops on GPU 0) or `candle-cpu` (candle ops on the CPU).
    let device = std::env::var("SDG_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let backend = match device.as_str() {
        "cpu" => Backend::CpuKernels,
        "cuda" => {
            Backend::Candle(candle_core::Device::new_cuda(0).expect("a CUDA device (build with --features cuda)"))
        }
        "candle-cpu" => Backend::Candle(candle_core::Device::Cpu),
        other => panic!("SDG_BENCH_DEVICE={other}: expected cpu, cuda or candle-cpu"),
    };
    let started = Instant::now();
    let llm = LocalLlm::load(&model, &LlmOptions { threads, max_batch: 16, backend, ..Default::default() }).unwrap();
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ids = llm.prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", text.trim())])).unwrap();
    let greedy = Sampling { max_tokens: Some(NEW_TOKENS), ..Default::default() };
    println!(
        "sdg local LLM: {} (device {device}, {} threads), prompt {} tokens, {NEW_TOKENS} new tokens",
        model.display(),
        threads,
        ids.len()
    );
    println!("load {load_ms:.0} ms, weights {:.0} MiB", llm.weight_bytes as f64 / (1 << 20) as f64);

    // Rounds of one single-stream run then each batch size, so every ratio to the single stream is measured
    // minutes apart at most on a machine whose speed drifts; the figures are medians over the rounds.
    let rounds: usize = std::env::var("SDG_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    // `SDG_BENCH_BATCHES=16` (a comma list; empty for none) measures only those batch sizes.
    let sizes: Vec<usize> = match std::env::var("SDG_BENCH_BATCHES") {
        Ok(list) => {
            list.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().expect("a batch size")).collect()
        }
        Err(_) => vec![4, 8, 16],
    };
    let prompts: Vec<Vec<Vec<u32>>> = sizes
        .iter()
        .map(|&sequences| {
            // Distinct prompts per sequence (a number prefix), all decoding together.
            (0..sequences)
                .map(|i| {
                    let text = format!("{i}. {}", text.trim());
                    llm.prompt_ids(&Prompt::Chat(vec![ChatMessage::new("user", text)])).unwrap()
                })
                .collect()
        })
        .collect();
    llm.generate_exact(ids.clone(), &greedy, 1).unwrap();
    let (mut ttft, mut decode) = (Vec::new(), Vec::new());
    let mut aggregates = vec![Vec::new(); sizes.len()];
    let mut ratios = vec![Vec::new(); sizes.len()];
    for round in 1..=rounds {
        let started = Instant::now();
        let out = llm.generate_exact(ids.clone(), &greedy, 1).unwrap();
        let total = started.elapsed().as_secs_f64();
        assert_eq!(out.tokens[0].len(), NEW_TOKENS as usize);
        let single = (NEW_TOKENS - 1) as f64 / (total - out.first_token_ms / 1000.0);
        ttft.push(out.first_token_ms);
        decode.push(single);
        let mut line = format!("round {round}: single {single:.1} tok/s");
        for (k, prompts) in prompts.iter().enumerate() {
            let aggregate = batched_decode(&llm, prompts, &greedy);
            line += &format!(", batched {} {aggregate:.1} ({:.2}x)", prompts.len(), aggregate / single);
            aggregates[k].push(aggregate);
            ratios[k].push(aggregate / single);
        }
        println!("{line}");
    }
    let (ttft, single) = (median(ttft), median(decode));
    println!("single stream: time to first token {ttft:.0} ms, decode {single:.1} tok/s");
    let mut batched = Vec::new();
    for ((&sequences, aggregate), ratio) in sizes.iter().zip(aggregates).zip(ratios) {
        let aggregate = median(aggregate);
        println!(
            "batched {sequences:>2}: decode {aggregate:.1} tok/s aggregate, {:.2}x single (median of the rounds' ratios)",
            median(ratio)
        );
        batched.push((sequences, aggregate));
    }

    match llama_cpp_python().filter(|_| device == "cpu") {
        None if device != "cpu" => println!("llama.cpp: measured on the CPU device only"),
        None => println!("llama.cpp: not measured (run `bash benches/setup-llamacpp.sh` to install it)"),
        Some(python) => {
            let output = Command::new(&python)
                .arg(root.join("benches/llamacpp_reference.py"))
                .args(["--model", model.to_str().unwrap(), "--threads", &threads.to_string()])
                .args(["--prompt-file", prompt_file.to_str().unwrap(), "--max-tokens", &NEW_TOKENS.to_string()])
                .args(["--batch", &sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(",")])
                .output()
                .expect("llama.cpp reference runs");
            let reference: serde_json::Value = match serde_json::from_slice(&output.stdout) {
                Ok(value) => value,
                Err(_) => {
                    println!("llama.cpp: failed: {}", String::from_utf8_lossy(&output.stderr));
                    return;
                }
            };
            let their_decode = reference["decode_tok_s"].as_f64().unwrap_or(f64::NAN);
            let their_ttft = reference["ttft_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "llama.cpp {}: time to first token {their_ttft:.0} ms, decode {their_decode:.1} tok/s",
                reference["version"].as_str().unwrap_or("?")
            );
            println!(
                "ratio sdg / llama.cpp: single-stream decode {:.2}x, time to first token {:.2}x (lower is better)",
                single / their_decode,
                ttft / their_ttft
            );
            for (sequences, ours) in batched {
                if let Some(theirs) = reference["batched"][sequences.to_string()]["decode_tok_s"].as_f64() {
                    println!(
                        "ratio sdg / llama.cpp: batched {sequences:>2} {:.2}x ({ours:.1} vs {theirs:.1} tok/s)",
                        ours / theirs
                    );
                }
            }
        }
    }
}

/// Aggregate decode tokens/s of `prompts` generating together: tokens after each sequence's first, over the
/// time from the last first token to the end (prefill excluded).
fn batched_decode(llm: &LocalLlm, prompts: &[Vec<u32>], greedy: &Sampling) -> f64 {
    let started = Instant::now();
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|ids| scope.spawn(move || llm.generate_exact(ids.clone(), greedy, 1).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let first = outputs.iter().map(|o| o.first_token_ms).fold(0.0, f64::max) / 1000.0;
    let tokens: usize = outputs.iter().map(|o| o.tokens[0].len()).sum();
    (tokens - prompts.len()) as f64 / (wall - first)
}

/// The interpreter of the llama.cpp venv: `SDG_LLAMACPP_PYTHON`, else `target/llamacpp-venv`.
fn llama_cpp_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SDG_LLAMACPP_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llamacpp-venv/bin/python")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| Command::new(p).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success()))
}
