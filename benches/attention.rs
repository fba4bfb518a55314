//! Attention of a batched decoding step alone, on SmolLM2-135M's shapes (30 layers, 3 key/value heads of 64
//! dims, 9 query heads): every sequence's query heads over its own f16 KV cache, with the caches of all
//! sequences and layers far larger than the CPU caches, as in a real step, and hot (one cache, in L1/L2).
//!
//!     cargo bench --bench attention           # threads: SDG_BENCH_THREADS (default: every core)

mod common;

use sdg::models::local::qmatmul::Kernel;
use sdg::models::local::simd::GroupAttention;
use sdg::models::local::team::Team;

const LAYERS: usize = 30;
const KV_HEADS: usize = 3;
const GROUP: usize = 3;
const HD: usize = 64;

fn main() {
    let threads = common::threads();
    let team = Team::new(threads, "bench").unwrap();
    println!(
        "attention of one decoding step, {threads} threads, {LAYERS} layers x {KV_HEADS} kv heads x {GROUP} query heads of {HD}"
    );
    let queries: Vec<f32> = (0..GROUP * HD).map(|i| (i % 13) as f32 * 0.05 - 0.3).collect();
    for (sequences, positions) in [(1usize, 205usize), (16, 205), (16, 512)] {
        // One key and one value stream per (sequence, layer, kv head), as the KV cache keeps them.
        let streams = sequences * LAYERS * KV_HEADS;
        let stream: Vec<u16> = (0..positions * HD)
            .map(|i| half::f16::from_f32(((i * 7919) % 200) as f32 / 100.0 - 1.0).to_bits())
            .collect();
        let keys: Vec<Vec<u16>> = (0..streams).map(|_| stream.clone()).collect();
        let values: Vec<Vec<u16>> = (0..streams).map(|_| stream.clone()).collect();
        let mut out = vec![0.0f32; streams * GROUP * HD];
        // AVX2 and AVX-512 side by side (the AMX kernel's attention is the AVX-512 one).
        for kernel in Kernel::available().into_iter().filter(|k| matches!(k, Kernel::Avx2 | Kernel::Avx512Vnni)) {
            let attend = |(task, out): (usize, &mut [f32]), keys: &[Vec<u16>], values: &[Vec<u16>]| {
                GroupAttention {
                    queries: &queries,
                    hd: HD,
                    keys: &keys[task],
                    values: &values[task],
                    span: positions,
                    scale: 0.125,
                }
                .run_with(kernel, out)
            };
            let step = common::seconds_per_call(1.0, || {
                team.for_each_chunk_mut(&mut out, GROUP * HD, |task, o| attend((task, o), &keys, &values))
            });
            let hot = common::seconds_per_call(0.5, || {
                team.for_each_chunk_mut(&mut out, GROUP * HD, |_, o| attend((0, o), &keys, &values))
            });
            let bytes = (streams * positions * HD * 2 * 2) as f64;
            println!(
                "{sequences:>2} sequences at {positions} positions, {:<10}: {:>6.2} ms per step from memory ({:.1} GB/s \
             of KV cache, {:.2} us per call); hot {:.2} us per call",
                format!("{kernel:?}"),
                step * 1e3,
                bytes / step / 1e9,
                step * 1e6 * threads as f64 / streams as f64,
                hot * 1e6 * threads as f64 / streams as f64,
            );
        }
    }
}
