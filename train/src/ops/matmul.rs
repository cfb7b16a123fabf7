//! Matrix products, the trainer's FLOPs: `y = x · Wᵀ` and its two backward
//! products. Row-major everywhere; a weight is stored as in PyTorch's
//! `nn.Linear`, (out, in).
//!
//! The microkernels are the `matrixmultiply` crate's (BLIS-style packing,
//! AVX2+FMA kernels chosen at run time); the threading is ours: the output
//! rows are split into one block per thread and each block is one
//! single-threaded product. Every output element is then computed by one
//! kernel call with the same reduction order over k, whatever the thread
//! count, so results are bit-for-bit repeatable (and independent of
//! `--threads`).
//!
//! Why not `gemm` 0.19 (the first suggestion): on this VM's Zen 4,
//! with its AVX-512 kernels enabled, it ran 1024³ at 30–39 GFLOP/s on one
//! core; matrixmultiply ran it at 50–76 (OpenBLAS: 87; the FMA probe: 114).
//! `cargo run --release -p train --example ops_profile -- 1 layouts` measures it.
//!
//! The transposes below are strides, never copies.

use rayon::prelude::*;

use super::threads;

/// Output rows below which a product is not split across threads.
const MIN_ROWS_PER_THREAD: usize = 32;

/// `dst (m, n) [+]= lhs · rhs`. `dst` is row-major with row stride `n`;
/// `lhs` and `rhs` are given with (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let span = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(dst.len() >= m * n, "sgemm: dst too short");
    assert!(
        lhs.len() >= span(m, k, lhs_rs, lhs_cs),
        "sgemm: lhs too short"
    );
    assert!(
        rhs.len() >= span(k, n, rhs_rs, rhs_cs),
        "sgemm: rhs too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    let blocks = threads().min(m / MIN_ROWS_PER_THREAD).max(1);
    let rows_per = m.div_ceil(blocks);
    dst[..m * n]
        .par_chunks_mut(rows_per * n)
        .enumerate()
        .for_each(|(b, d)| {
            let r0 = b * rows_per;
            let rows = d.len() / n;
            let a = &lhs[r0 * lhs_rs..];
            // SAFETY: the asserts above bound every index the strides reach
            // (rows r0..r0+rows of lhs lie inside its span); `d` is this
            // block's own rows of dst, borrowed mutably and alone.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    lhs_rs as isize,
                    lhs_cs as isize,
                    rhs.as_ptr(),
                    rhs_rs as isize,
                    rhs_cs as isize,
                    beta,
                    d.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
}

/// y = x · Wᵀ.
/// y: (n, out)   x: (n, inp)   w: (out, inp)
pub fn matmul_forward(y: &mut [f32], x: &[f32], w: &[f32], n: usize, inp: usize, out: usize) {
    // rhs = Wᵀ (inp × out): element (k, j) is w[j·inp + k].
    sgemm(n, out, inp, y, false, x, (inp, 1), w, (1, inp));
}

/// The backward of [`matmul_forward`]:
/// dx (n, inp) (+)= dy · W, and dw (out, inp) += dyᵀ · x.
/// `accumulate_dx`: add into dx (several products read the same input, as
/// q, k and v all read the normed x) instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    accumulate_dx: bool,
) {
    if let Some(dx) = dx {
        // dx = dy (n × out) · W (out × inp)
        sgemm(n, inp, out, dx, accumulate_dx, dy, (out, 1), w, (inp, 1));
    }
    // dw += dyᵀ (out × n) · x (n × inp): dyᵀ element (a, k) is dy[k·out + a].
    sgemm(out, inp, n, dw, true, dy, (1, out), x, (inp, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * out];
        for i in 0..n {
            for j in 0..out {
                y[i * out + j] = (0..inp).map(|k| x[i * inp + k] * w[j * inp + k]).sum();
            }
        }
        y
    }

    #[test]
    fn forward_and_backward_match_the_naive_products() {
        for (n, inp, out) in [(5, 7, 3), (70, 9, 66)] {
            let x: Vec<f32> = (0..n * inp).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.11).cos()).collect();
            let dy: Vec<f32> = (0..n * out).map(|i| (i as f32 * 0.23).sin()).collect();
            let mut y = vec![0f32; n * out];
            matmul_forward(&mut y, &x, &w, n, inp, out);
            for (a, b) in y.iter().zip(naive(&x, &w, n, inp, out)) {
                assert!((a - b).abs() < 1e-4);
            }
            let mut dx = vec![1f32; n * inp];
            let mut dw = vec![1f32; out * inp];
            matmul_backward(Some(&mut dx), &mut dw, &dy, &x, &w, n, inp, out, false);
            for i in 0..n {
                for k in 0..inp {
                    let want: f32 = (0..out).map(|j| dy[i * out + j] * w[j * inp + k]).sum();
                    assert!((dx[i * inp + k] - want).abs() < 1e-4);
                }
            }
            for j in 0..out {
                for k in 0..inp {
                    // dw accumulates onto its previous value (1.0).
                    let want: f32 = 1.0
                        + (0..n)
                            .map(|i| dy[i * out + j] * x[i * inp + k])
                            .sum::<f32>();
                    assert!((dw[j * inp + k] - want).abs() < 1e-4);
                }
            }
        }
    }
}
