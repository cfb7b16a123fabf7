//! The machine's FP32 peak, measured, so MFU is against this CPU rather than
//! a data-sheet number: every thread runs independent chains of fused
//! multiply-adds (AVX-512 when present, else AVX2+FMA) for a fixed time.
//! Zen 4 executes 512-bit FMAs on 256-bit units, so both paths peak at 32
//! FLOP per cycle per core there.

use std::time::{Duration, Instant};

/// FLOP/s of `threads` threads of FMA chains (the best of three 200 ms runs).
pub fn peak_flops(threads: usize) -> f64 {
    (0..3).map(|_| probe(threads.max(1))).fold(0.0, f64::max)
}

fn probe(threads: usize) -> f64 {
    let dur = Duration::from_millis(200);
    let start = Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || run_for(dur)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops / start.elapsed().as_secs_f64()
}

/// FLOPs done in about `dur`.
fn run_for(dur: Duration) -> f64 {
    let start = Instant::now();
    let mut flops = 0.0;
    let mut sink = 0f32;
    while start.elapsed() < dur {
        let (f, s) = fma_block(1 << 16);
        flops += f;
        sink += s;
    }
    std::hint::black_box(sink);
    flops
}

/// `iters` rounds of 12 independent FMA chains; returns (FLOPs, a value that
/// keeps the work alive).
fn fma_block(iters: usize) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { fma512(iters) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected at run time.
            return unsafe { fma256(iters) };
        }
    }
    let mut acc = [1f32; 12];
    for _ in 0..iters {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    (2.0 * 12.0 * iters as f64, acc.iter().sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let c = _mm512_set1_ps(1e-7);
    let mut a = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in &mut a {
            *x = _mm512_fmadd_ps(*x, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in a {
        s = _mm512_add_ps(s, x);
    }
    (2.0 * 16.0 * 12.0 * iters as f64, _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    let mut a = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for x in &mut a {
            *x = _mm256_fmadd_ps(*x, m, c);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in a {
        s = _mm256_add_ps(s, x);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats, what one 256-bit store writes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    (2.0 * 8.0 * 12.0 * iters as f64, out.iter().sum())
}
