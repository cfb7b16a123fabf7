//! Where a `small` training step's time goes, op by op (GFLOP/s per matrix
//! product shape, ms for the rest): `cargo run --release -p train --example
//! ops_profile -- [threads]`.

use std::time::Instant;

use train::ops::matmul::{matmul_backward, matmul_forward};

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    train::ops::set_threads(threads);
    println!(
        "FMA probe peak, {threads} thread(s): {:.1} GFLOP/s",
        train::mfu::peak_flops(threads) / 1e9
    );
    if std::env::args().nth(2).as_deref() == Some("layouts") {
        layouts();
        return;
    }
    let n = 1024;
    for (name, inp, out) in [
        ("square", 1024, 1024),
        ("k1024", 1024, 49152),
        ("head", 256, 49152),
        ("q/o", 256, 256),
        ("k/v", 256, 128),
        ("gate/up", 256, 768),
        ("down", 768, 256),
    ] {
        let x = vec![0.5f32; n * inp];
        let w = vec![0.25f32; out * inp];
        let mut y = vec![0f32; n * out];
        let mut dx = vec![0f32; n * inp];
        let mut dw = vec![0f32; out * inp];
        let flops = 2.0 * (n * inp * out) as f64;
        let f = time(|| matmul_forward(&mut y, &x, &w, n, inp, out));
        let dyt = y.clone();
        let b = time(|| {
            matmul_backward(Some(&mut dx), &mut dw, &dyt, &x, &w, n, inp, out, false);
        });
        println!(
            "{name:8} ({n}x{inp})·({out}x{inp})ᵀ  forward {:7.1} ms {:6.1} GFLOP/s   backward {:7.1} ms {:6.1} GFLOP/s",
            1e3 * f,
            flops / f / 1e9,
            1e3 * b,
            2.0 * flops / b / 1e9
        );
    }
    let vocab = 49152;
    let mut logits = vec![0.1f32; n * vocab];
    let mut losses = vec![0f32; n];
    let targets = vec![7u32; n];
    let ce = time(|| {
        train::ops::cross_entropy::cross_entropy_backward_inplace(
            &mut logits,
            &mut losses,
            &targets,
            vocab,
            1e-3,
        )
    });
    println!(
        "cross-entropy fwd+bwd over ({n}, {vocab}): {:.1} ms",
        1e3 * ce
    );
    let s = train::ops::attention::AttnShape {
        batch: 8,
        seq: 128,
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 32,
    };
    let nq = 8 * 8 * 128 * 32;
    let nkv = nq / 2;
    let (q, k, v) = (vec![0.1f32; nq], vec![0.1f32; nkv], vec![0.1f32; nkv]);
    let mut yv = vec![0f32; nq];
    let mut att = vec![0f32; 8 * 8 * 128 * 128];
    let af = time(|| train::ops::attention::attention_forward(&mut yv, &mut att, &q, &k, &v, s));
    let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nkv], vec![0f32; nkv]);
    let ab = time(|| {
        train::ops::attention::attention_backward(
            &mut dq, &mut dk, &mut dv, &yv, &att, &q, &k, &v, s,
        )
    });
    println!(
        "attention per layer: forward {:.1} ms, backward {:.1} ms",
        1e3 * af,
        1e3 * ab
    );
}

fn layouts() {
    let n = 1024;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    for (name, (lcs, lrs), (rcs, rrs), (dcs, drs)) in [
        ("row-major all", (1, n), (1, n), (1, n)),
        ("rhs transposed", (1, n), (n, 1), (1, n)),
        ("col-major all", (n, 1), (n, 1), (n, 1)),
    ] {
        let t = time(|| unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                dcs as isize,
                drs as isize,
                false,
                a.as_ptr(),
                lcs as isize,
                lrs as isize,
                b.as_ptr(),
                rcs as isize,
                rrs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        });
        println!(
            "gemm 1024³ {name}: {:.1} GFLOP/s",
            2.0 * (n * n * n) as f64 / t / 1e9
        );
        let t = time(|| unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                lrs as isize,
                lcs as isize,
                b.as_ptr(),
                rrs as isize,
                rcs as isize,
                0.0,
                c.as_mut_ptr(),
                drs as isize,
                dcs as isize,
            )
        });
        println!(
            "matrixmultiply 1024³ {name}: {:.1} GFLOP/s",
            2.0 * (n * n * n) as f64 / t / 1e9
        );
    }
}
