//! The quantized matmul kernels alone, on SmolLM2-135M's weight shapes: how close a decoding step's matmuls
//! come to memory bandwidth (one row) and to arithmetic throughput (tiles of rows).
//!
//!     cargo bench --bench qmatmul             # threads: SDG_BENCH_THREADS (default: every core)
//!     SDG_BENCH_ONLY=gate cargo bench --bench qmatmul   # only the shapes whose name holds `gate`
//!
//! Per shape, row count and SIMD kernel this CPU runs (AVX2; AVX-512 VNNI; AMX), side by side: time per call,
//! weight GB/s (weight bytes / time; the figure that bounds a single decoding stream) and nanoseconds per row and
//! 32-value block (the figure that bounds batched decoding).

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sdg::models::local::qmatmul::{Kernel, QMatrix};
use sdg::models::local::team::Team;

fn weights(outputs: usize, inputs: usize, dtype: GgmlDType) -> QMatrix {
    let values: Vec<f32> = (0..outputs * inputs).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
    let tensor = Tensor::from_vec(values, (outputs, inputs), &Device::Cpu).unwrap();
    QMatrix::from_qtensor(&QTensor::quantize(&tensor, dtype).unwrap()).unwrap().expect("a kernel runs this type")
}

fn activations(rows: usize, inputs: usize) -> Vec<f32> {
    (0..rows * inputs).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect()
}

fn main() {
    let threads = common::threads();
    let team = Team::new(threads, "bench").unwrap();
    println!("quantized matmul, {threads} threads");
    let shapes = [
        ("qkv    Q4_1", 960, 576, GgmlDType::Q4_1),
        ("gate+up Q4_1", 3072, 576, GgmlDType::Q4_1),
        ("down   Q4_1", 576, 1536, GgmlDType::Q4_1),
        ("output Q8_0", 49152, 576, GgmlDType::Q8_0),
    ];
    // `SDG_BENCH_ONLY=gate`: only the shapes whose name holds it.
    let only = std::env::var("SDG_BENCH_ONLY").unwrap_or_default();
    for (name, outputs, inputs, dtype) in shapes.into_iter().filter(|shape| shape.0.contains(only.as_str())) {
        let matrix = weights(outputs, inputs, dtype);
        for rows in [1usize, 2, 4, 8, 16, 64] {
            let x = activations(rows, inputs);
            for kernel in Kernel::available().into_iter().filter(|k| *k != Kernel::Portable) {
                matrix.forward_with(kernel, &x, rows, Some(&team));
                let seconds = common::seconds_per_call(0.3, || matrix.forward_with(kernel, &x, rows, Some(&team)));
                let row_blocks = (rows * outputs * inputs / 32) as f64;
                println!(
                    "{name} [{outputs:>5} x {inputs:>4}] rows {rows:>2} {:<10}: {:>8.1} us/call, weights {:>5.1} GB/s, \
                     {:.3} ns per row-block ({:.3} per thread)",
                    format!("{kernel:?}"),
                    seconds * 1e6,
                    matrix.bytes() as f64 / seconds / 1e9,
                    seconds * 1e9 / row_blocks,
                    seconds * 1e9 * threads as f64 / row_blocks,
                );
            }
        }
    }

    // Weights from memory, as in a model's decoding step: 30 copies of gate+up (one per layer, 33 MB in all,
    // more than the caches hold), each called once in turn; the figures above reuse one matrix from cache.
    let layers: Vec<QMatrix> = (0..30).map(|_| weights(3072, 576, GgmlDType::Q4_1)).collect();
    let kernel = Kernel::detect();
    for rows in [1usize, 16] {
        let x = activations(rows, 576);
        let mut layer = layers.iter().cycle();
        let seconds =
            common::seconds_per_call(0.5, || layer.next().unwrap().forward_with(kernel, &x, rows, Some(&team)));
        println!(
            "gate+up Q4_1 x 30 layers, from memory, rows {rows:>2} {:<10}: {:>8.1} us/call, weights {:>5.1} GB/s, \
             {:.3} ns per row-block",
            format!("{kernel:?}"),
            seconds * 1e6,
            layers[0].bytes() as f64 / seconds / 1e9,
            seconds * 1e9 / (rows * 3072 * 576 / 32) as f64,
        );
    }
}
