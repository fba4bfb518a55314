//! Throughput of the local sentence embedder (all-MiniLM-L6-v2 on the CPU): 512 passages of ~128 tokens,
//! embedded at 1 thread and at all threads. candle and rayon read the thread count from the environment, so
//! each count runs in a child process of this same binary with RAYON_NUM_THREADS set.
//! Run: `cargo bench --bench embed` (SDG_BENCH_PASSAGES, SDG_BENCH_TOKENS, SDG_BENCH_BATCH, SDG_TEST_MINILM to
//! change).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sdg::models::local::embed::Embedder;

const CHILD_ENV: &str = "SDG_EMBED_BENCH_THREADS";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Same lookup as the unit tests in `models::local::embed`.
fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SDG_TEST_MINILM") {
        return PathBuf::from(dir);
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("SDG_HOME") {
        candidates.push(PathBuf::from(home).join("models/all-minilm-l6-v2"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/sdg/models/all-minilm-l6-v2"));
    }
    candidates.push(PathBuf::from("/work/models/all-MiniLM-L6-v2"));
    candidates.iter().find(|p| p.join("config.json").is_file()).cloned().unwrap_or_else(|| {
        panic!("all-MiniLM-L6-v2 not found (looked in {candidates:?}); run `sdg models fetch all-minilm-l6-v2`")
    })
}

/// Deterministic English-like passages; common words are single WordPiece tokens, so words ≈ tokens.
fn passages(n: usize, tokens: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the", "data", "model", "system", "time", "people", "water", "city", "report", "market", "year", "small",
        "large", "new", "old", "first", "last", "good", "great", "high", "river", "school", "music", "history",
        "energy", "power", "light", "house", "road", "world", "language", "number", "group", "state", "night", "game",
        "food", "book", "story", "field", "study", "result", "change", "value", "table", "paper", "team", "and", "of",
        "in", "to", "with", "for", "on", "from", "by", "was", "is", "are", "were", "has", "had",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    // Two tokens go to [CLS] and [SEP]; one in twelve words ends a sentence with a period (one more token).
    let words = (tokens.saturating_sub(2) * 12 / 13).max(1);
    (0..n)
        .map(|_| {
            let mut text = String::with_capacity(words * 8);
            for w in 0..words {
                if w > 0 {
                    text.push(' ');
                }
                text.push_str(WORDS[next() % WORDS.len()]);
                if w % 12 == 11 {
                    text.push('.');
                }
            }
            text.push('.');
            text
        })
        .collect()
}

fn mean_tokens(dir: &Path, texts: &[String]) -> f64 {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer.json loads");
    let total: usize = texts.iter().map(|t| tokenizer.encode(t.as_str(), true).expect("encodes").len()).sum();
    total as f64 / texts.len() as f64
}

/// Child: embeds the passages once to warm up, then times one full pass. Prints `RESULT <secs>`.
fn child() {
    let dir = minilm_dir();
    let texts = passages(env_usize("SDG_BENCH_PASSAGES", 512), env_usize("SDG_BENCH_TOKENS", 128));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embedder = Embedder::load(&dir).expect("model loads").with_batch_size(env_usize("SDG_BENCH_BATCH", 32));
    embedder.embed(&refs[..refs.len().min(32)]).expect("warm-up");
    let started = Instant::now();
    let vectors = embedder.embed(&refs).expect("embeds");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), refs.len());
    println!("RESULT {secs}");
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let dir = minilm_dir();
    let n = env_usize("SDG_BENCH_PASSAGES", 512);
    let tokens = env_usize("SDG_BENCH_TOKENS", 128);
    let texts = passages(n, tokens);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, all];
    counts.dedup();

    let mean = mean_tokens(&dir, &texts);
    println!("embed: {} ({n} passages, {mean:.1} tokens each)", dir.display());
    println!("{:>8} {:>10} {:>14} {:>12}", "threads", "seconds", "embeddings/s", "tokens/s");
    let exe = std::env::current_exe().expect("own path");
    for threads in counts {
        let output = Command::new(&exe)
            .env(CHILD_ENV, threads.to_string())
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("CANDLE_NUM_THREADS", threads.to_string())
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        let secs: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .and_then(|s| s.trim().parse().ok())
            .expect("child prints RESULT");
        let rate = n as f64 / secs;
        println!("{threads:>8} {secs:>10.2} {rate:>14.1} {:>12.0}", rate * mean);
    }
}
