//! The ops of a Llama, each as a `*_forward` / `*_backward` pair with the
//! shape of every buffer in a comment (llm.c's `train_gpt2.c` style).
//! Matrix products go through `gemm`; the rest is written here and threaded
//! with rayon where it pays. Every reduction runs in a fixed order, so a run
//! is bit-for-bit repeatable for a given thread count.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use std::sync::atomic::{AtomicUsize, Ordering};

/// Reductions over rows are split into this many chunks whatever the thread
/// count: partial sums then combine in chunk order, so the result does not
/// depend on how many threads ran.
pub(crate) const ROW_CHUNKS: usize = 16;

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Threads the matrix products may use (the rayon pool's size).
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Sets the thread count for gemm and builds the global rayon pool with it
/// (once per process: later calls only change gemm's share).
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    // Fails when the pool already exists (tests, a second trainer in one
    // process); the pool then keeps its size, which the caller chose first.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}
