//! Helpers shared by the benchmarks (each uses some of them).
#![allow(dead_code)]

use std::time::Instant;

/// Threads to run on: `SDG_BENCH_THREADS`, else every core.
pub fn threads() -> usize {
    std::env::var("SDG_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(sdg::models::local::default_threads)
}

/// Seconds per call of `call`, over as many calls as fit in `budget` seconds.
pub fn seconds_per_call<T>(budget: f64, mut call: impl FnMut() -> T) -> f64 {
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed().as_secs_f64() < budget {
        std::hint::black_box(call());
        calls += 1;
    }
    started.elapsed().as_secs_f64() / calls as f64
}
