//! Throughput probe of the quantized matmul on one thread: in-cache (a
//! 1536x576 Q4_1 matrix), streamed from DRAM (Q4_1 and the Q8_0 output head's
//! shape). Prints ms per call, GB/s of weights and ns per 32-weight block:
//! `cargo run --release -p kernels --example qbench`.
use kernels::matmul::{Activations, Weights, matmul};
use kernels::quant::GgmlType;
use std::time::Instant;

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    for (ty, rows, cols, iters) in [
        (GgmlType::Q4_1, 1536, 576, 2000),
        (GgmlType::Q4_1, 1536 * 40, 576, 20),
        (GgmlType::Q8_0, 49152, 576, 20),
    ] {
        let bytes = ty.bytes_for(rows * cols).expect("whole blocks");
        let mut w: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        let bb = ty.block_bytes();
        for b in w.chunks_exact_mut(bb) {
            b[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            if ty == GgmlType::Q4_1 {
                b[2..4].copy_from_slice(&half::f16::from_f32(-0.01).to_le_bytes());
            }
        }
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut q8 = Vec::new();
        let acts = Activations::new(&x, 1, true, &mut q8);
        let mut out = vec![0f32; rows];
        let wt = Weights::new(ty, rows, cols, &w);
        pool.install(|| matmul(&mut [(wt, &mut out[..])], &acts));
        let t = Instant::now();
        for _ in 0..iters {
            pool.install(|| matmul(&mut [(wt, &mut out[..])], &acts));
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        let blocks = rows * cols / 32;
        println!(
            "{ty:?} {rows}x{cols}: {:.2} ms, {:.2} GB/s, {:.2} ns/block",
            secs * 1e3,
            bytes as f64 / secs / 1e9,
            secs * 1e9 / blocks as f64
        );
    }
}
