//! RMSNorm (Zhang & Sennrich, 2019): y = x / rms(x) · w, rms(x) = √(mean(x²) + ε).
//!
//! With x̂ = x·r, r = 1/rms(x), the backward is
//!   dw += Σ_rows dy ⊙ x̂
//!   dx  = r · (dy⊙w − x̂ · mean(dy⊙w⊙x̂))

use rayon::prelude::*;

use super::ROW_CHUNKS;

/// y: (n, d)   rstd: (n,) saved for the backward   x: (n, d)   w: (d,)
pub fn rmsnorm_forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    y.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .for_each(|((y, r), x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for ((o, xi), wi) in y.iter_mut().zip(x).zip(w) {
                *o = xi * *r * wi;
            }
        });
}

/// dx (+)= ..., dw += ...
/// dx: (n, d)   dw: (d,)   dy: (n, d)   x: (n, d)   w: (d,)   rstd: (n,)
///
/// dx is written (not accumulated) unless `accumulate_dx`: the residual
/// stream adds the norm's input gradient onto the gradient flowing past it.
/// dw is reduced over a fixed number of row chunks, each summed in order,
/// then the chunks in order: the same result for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    d: usize,
    accumulate_dx: bool,
) {
    let n = rstd.len();
    let rows_per = n.div_ceil(ROW_CHUNKS).max(1);
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows_per * d)
        .zip(dy.par_chunks(rows_per * d))
        .zip(x.par_chunks(rows_per * d))
        .zip(rstd.par_chunks(rows_per))
        .map(|(((dx, dy), x), rstd)| {
            let mut dw_part = vec![0f32; d];
            for (((dx, dy), x), &r) in dx
                .chunks_exact_mut(d)
                .zip(dy.chunks_exact(d))
                .zip(x.chunks_exact(d))
                .zip(rstd)
            {
                // mean over the row of dy⊙w⊙x̂
                let mut dot = 0f32;
                for i in 0..d {
                    let xhat = x[i] * r;
                    dot += dy[i] * w[i] * xhat;
                    dw_part[i] += dy[i] * xhat;
                }
                let mean = dot / d as f32;
                for i in 0..d {
                    let g = r * (dy[i] * w[i] - x[i] * r * mean);
                    if accumulate_dx {
                        dx[i] += g;
                    } else {
                        dx[i] = g;
                    }
                }
            }
            dw_part
        })
        .collect();
    for p in partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
}
