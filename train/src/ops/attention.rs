//! Causal grouped-query attention (Ainslie et al., 2023), forward and
//! backward, over head-major buffers.
//!
//! Head-major layout (b, head, t, head_dim) makes the work of one
//! (sequence, KV head) pair one contiguous slice of q, k, v, y and of the
//! probabilities, so the pairs run in parallel with no shared writes: the
//! G = n_heads / n_kv_heads query heads of a group read the same K and V,
//! and their gradients into dK and dV are summed inside the pair, in a fixed
//! order (deterministic for any thread count).
//!
//! Per query head, with s = 1/√head_dim:
//!   S = s·QKᵀ (causal: S[t,u] = −∞ for u > t),  P = softmax_rows(S),  Y = PV
//! backward:
//!   dP = dY·Vᵀ,  dV += Pᵀ·dY,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),
//!   dQ = s·dS·K,  dK += s·dSᵀ·Q

use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// y: (b, n_heads, t, hd)   att: (b, n_heads, t, t) probabilities, saved
/// q: (b, n_heads, t, hd)   k, v: (b, n_kv_heads, t, hd)
pub fn attention_forward(
    y: &mut [f32],
    att: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
) {
    let (t, hd, g) = (s.seq, s.head_dim, s.group());
    let scale = 1.0 / (hd as f32).sqrt();
    y.par_chunks_mut(g * t * hd)
        .zip(att.par_chunks_mut(g * t * t))
        .zip(q.par_chunks(g * t * hd))
        .zip(k.par_chunks(t * hd).zip(v.par_chunks(t * hd)))
        .for_each(|(((y, att), q), (k, v))| {
            for h in 0..g {
                for i in 0..t {
                    let qi = &q[(h * t + i) * hd..][..hd];
                    let p = &mut att[(h * t + i) * t..][..t];
                    let mut max = f32::NEG_INFINITY;
                    for u in 0..=i {
                        p[u] = dot(qi, &k[u * hd..][..hd]) * scale;
                        max = max.max(p[u]);
                    }
                    let mut sum = 0f32;
                    for pu in &mut p[..=i] {
                        *pu = (*pu - max).exp();
                        sum += *pu;
                    }
                    let inv = 1.0 / sum;
                    p[..=i].iter_mut().for_each(|x| *x *= inv);
                    p[i + 1..].iter_mut().for_each(|x| *x = 0.0);
                    let yi = &mut y[(h * t + i) * hd..][..hd];
                    yi.iter_mut().for_each(|x| *x = 0.0);
                    for u in 0..=i {
                        axpy(yi, p[u], &v[u * hd..][..hd]);
                    }
                }
            }
        });
}

/// dq: (b, n_heads, t, hd), written   dk, dv: (b, n_kv_heads, t, hd), written
/// dy: (b, n_heads, t, hd)   att, q, k, v: as saved by the forward
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dy: &[f32],
    att: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
) {
    let (t, hd, g) = (s.seq, s.head_dim, s.group());
    let scale = 1.0 / (hd as f32).sqrt();
    dq.par_chunks_mut(g * t * hd)
        .zip(dk.par_chunks_mut(t * hd).zip(dv.par_chunks_mut(t * hd)))
        .zip(dy.par_chunks(g * t * hd).zip(att.par_chunks(g * t * t)))
        .zip(
            q.par_chunks(g * t * hd)
                .zip(k.par_chunks(t * hd).zip(v.par_chunks(t * hd))),
        )
        .for_each(|(((dq, (dk, dv)), (dy, att)), (q, (k, v)))| {
            dk.iter_mut().for_each(|x| *x = 0.0);
            dv.iter_mut().for_each(|x| *x = 0.0);
            let mut ds = vec![0f32; t];
            for h in 0..g {
                for i in 0..t {
                    let p = &att[(h * t + i) * t..][..t];
                    let dyi = &dy[(h * t + i) * hd..][..hd];
                    let qi = &q[(h * t + i) * hd..][..hd];
                    // dP[u] = dy_i · v_u, and dV[u] += P[i,u] · dy_i
                    let mut row = 0f32;
                    for u in 0..=i {
                        let dp = dot(dyi, &v[u * hd..][..hd]);
                        ds[u] = dp;
                        row += dp * p[u];
                        axpy(&mut dv[u * hd..][..hd], p[u], dyi);
                    }
                    let dqi = &mut dq[(h * t + i) * hd..][..hd];
                    dqi.iter_mut().for_each(|x| *x = 0.0);
                    for u in 0..=i {
                        let dsu = p[u] * (ds[u] - row) * scale;
                        axpy(dqi, dsu, &k[u * hd..][..hd]);
                        axpy(&mut dk[u * hd..][..hd], dsu, qi);
                    }
                }
            }
        });
}

/// (n = b·t, heads, hd) token-major → (b, heads, t, hd) head-major.
pub fn to_head_major(
    dst: &mut [f32],
    src: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
) {
    for b in 0..batch {
        for i in 0..seq {
            for h in 0..heads {
                let from = ((b * seq + i) * heads + h) * hd;
                let to = ((b * heads + h) * seq + i) * hd;
                dst[to..to + hd].copy_from_slice(&src[from..from + hd]);
            }
        }
    }
}

/// The inverse of [`to_head_major`].
pub fn to_token_major(
    dst: &mut [f32],
    src: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
) {
    for b in 0..batch {
        for i in 0..seq {
            for h in 0..heads {
                let to = ((b * seq + i) * heads + h) * hd;
                let from = ((b * heads + h) * seq + i) * hd;
                dst[to..to + hd].copy_from_slice(&src[from..from + hd]);
            }
        }
    }
}
