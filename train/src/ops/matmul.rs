//! Matrix products, the trainer's FLOPs: `y = x · Wᵀ` and its two backward
//! products, through the `gemm` crate (packed AVX2/AVX-512 microkernels,
//! threaded over the output with rayon). Row-major everywhere; a weight is
//! stored as in PyTorch's `nn.Linear`, (out, in).
//!
//! gemm computes `dst := alpha·dst + beta·lhs·rhs` over strided operands, so
//! the transposes below are strides, never copies.

use super::threads;

/// How gemm may thread one call (the rayon pool is sized by `--threads`).
fn parallelism() -> gemm::Parallelism {
    match threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst (m, n) [+]= lhs · rhs`, each operand given by (pointer, column
/// stride, row stride). Checks the lengths the strides imply.
#[allow(clippy::too_many_arguments)]
fn gemm_checked(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    (dst_cs, dst_rs): (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
) {
    let span = |rows: usize, cols: usize, cs: usize, rs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        dst.len() >= span(m, n, dst_cs, dst_rs),
        "gemm: dst too short"
    );
    assert!(
        lhs.len() >= span(m, k, lhs_cs, lhs_rs),
        "gemm: lhs too short"
    );
    assert!(
        rhs.len() >= span(k, n, rhs_cs, rhs_rs),
        "gemm: rhs too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.iter_mut().for_each(|x| *x = 0.0);
        }
        return;
    }
    // SAFETY: the asserts above show every index the strides reach lies in
    // its slice; `dst` is borrowed mutably and does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
    }
}

/// y = x · Wᵀ.
/// y: (n, out)   x: (n, inp)   w: (out, inp)
pub fn matmul_forward(y: &mut [f32], x: &[f32], w: &[f32], n: usize, inp: usize, out: usize) {
    // lhs = x (n × inp), rhs = Wᵀ (inp × out): element (k, j) is w[j·inp + k].
    gemm_checked(n, out, inp, y, (1, out), false, x, (1, inp), w, (inp, 1));
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
        gemm_checked(
            n,
            inp,
            out,
            dx,
            (1, inp),
            accumulate_dx,
            dy,
            (1, out),
            w,
            (1, inp),
        );
    }
    // dw += dyᵀ (out × n) · x (n × inp): dyᵀ element (a, k) is dy[k·out + a].
    gemm_checked(out, inp, n, dw, (1, inp), true, dy, (out, 1), x, (1, inp));
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
        let (n, inp, out) = (5, 7, 3);
        let x: Vec<f32> = (0..n * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.11).cos()).collect();
        let dy: Vec<f32> = (0..n * out).map(|i| (i as f32 * 0.23).sin()).collect();
        let mut y = vec![0f32; n * out];
        matmul_forward(&mut y, &x, &w, n, inp, out);
        for (a, b) in y.iter().zip(naive(&x, &w, n, inp, out)) {
            assert!((a - b).abs() < 1e-5);
        }
        let mut dx = vec![1f32; n * inp];
        let mut dw = vec![1f32; out * inp];
        matmul_backward(Some(&mut dx), &mut dw, &dy, &x, &w, n, inp, out, false);
        for i in 0..n {
            for k in 0..inp {
                let want: f32 = (0..out).map(|j| dy[i * out + j] * w[j * inp + k]).sum();
                assert!((dx[i * inp + k] - want).abs() < 1e-5);
            }
        }
        for j in 0..out {
            for k in 0..inp {
                // dw accumulates onto its previous value (1.0).
                let want: f32 = 1.0
                    + (0..n)
                        .map(|i| dy[i * out + j] * x[i * inp + k])
                        .sum::<f32>();
                assert!((dw[j * inp + k] - want).abs() < 1e-5);
            }
        }
    }
}
