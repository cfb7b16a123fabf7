//! SwiGLU (Shazeer, 2020): h = silu(g) ⊙ u, silu(g) = g·σ(g).
//!   dg = dh ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g)))
//!   du = dh ⊙ silu(g)

use rayon::prelude::*;

const CHUNK: usize = 16 * 1024;

/// h: (n, d_ff)   g: (n, d_ff)   u: (n, d_ff)
pub fn swiglu_forward(h: &mut [f32], g: &[f32], u: &[f32]) {
    h.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(u.par_chunks(CHUNK))
        .for_each(|((h, g), u)| {
            for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                let sig = 1.0 / (1.0 + (-g).exp());
                *h = g * sig * u;
            }
        });
}

/// dg: (n, d_ff)   du: (n, d_ff)   dh: (n, d_ff)   g, u: the forward's inputs
pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], dh: &[f32], g: &[f32], u: &[f32]) {
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(dh.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dh), (g, u))| {
            for i in 0..dg.len() {
                let sig = 1.0 / (1.0 + (-g[i]).exp());
                let silu = g[i] * sig;
                dg[i] = dh[i] * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
                du[i] = dh[i] * silu;
            }
        });
}
