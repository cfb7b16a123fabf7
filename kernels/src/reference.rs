//! f64 references for the composite kernels the CUDA side adds: a matrix
//! product over stored (quantized) weights, and attention over a paged f16
//! cache, decode and causal prefill. They are built from the scalar
//! references of [`crate::quant`], [`crate::attention`] and [`crate::ops`],
//! so they define the same numerics the CPU engine is tested against.

use half::f16;

use crate::attention::{scores_ref, weighted_sum_ref};
use crate::ops::softmax;
use crate::quant::{self, GgmlType, QuantError};

/// y = X·Wᵀ with W dequantized and f64 sums, and beside each output the
/// sum of its terms' magnitudes Σ_k |w_rk·x_k| (what an f32 kernel's
/// rounding error scales with: see [`f32_sum_bound`]).
/// w: (rows, cols) of `ty`   x: (n, cols)   returns y, abs: (n, rows)
pub fn matmul_ref(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
) -> Result<(Vec<f32>, Vec<f64>), QuantError> {
    let mut wf = vec![0f32; rows * cols];
    quant::dequantize(ty, w, &mut wf)?;
    let n = x.len() / cols.max(1);
    let mut y = vec![0f32; n * rows];
    let mut abs = vec![0f64; n * rows];
    for t in 0..n {
        let xr = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let (mut s, mut a) = (0f64, 0f64);
            for (&wk, &xk) in wr.iter().zip(xr) {
                let p = f64::from(wk) * f64::from(xk);
                s += p;
                a += p.abs();
            }
            y[t * rows + r] = s as f32;
            abs[t * rows + r] = a;
        }
    }
    Ok((y, abs))
}

/// The bound an f32 sum of `terms` products stays within whatever its
/// order: each of at most `terms` additions (and each product) rounds with
/// unit roundoff u = 2⁻²⁴, so |error| ≤ (terms + 1) · u · Σ|products|
/// (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1). A
/// kernel that drops or misplaces even one of the `terms` products misses
/// by about Σ|products| / terms, which is above this bound for any
/// `terms` < 2¹² (u · terms² < 1).
pub fn f32_sum_bound(abs_sum: f64, terms: usize) -> f64 {
    (terms as f64 + 1.0) * f64::from(f32::EPSILON) / 2.0 * abs_sum + 1e-30
}

/// The paging of an attention cache: rows of `n_kv_heads · head_dim` f16,
/// position p of a sequence at row `table[p / block_size] · block_size + p % block_size`.
#[derive(Clone, Copy, Debug)]
pub struct Paging<'a> {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub table: &'a [i32],
}

impl Paging<'_> {
    fn row(&self, p: usize) -> usize {
        self.table[p / self.block_size] as usize * self.block_size + p % self.block_size
    }

    /// Positions 0..len of KV head `kvh`, gathered contiguous: (len, head_dim).
    fn gather(&self, cache: &[f16], kvh: usize, len: usize) -> Vec<f16> {
        let kv_dim = self.n_kv_heads * self.head_dim;
        let mut out = Vec::with_capacity(len * self.head_dim);
        for p in 0..len {
            let at = self.row(p) * kv_dim + kvh * self.head_dim;
            out.extend_from_slice(&cache[at..at + self.head_dim]);
        }
        out
    }

    /// One query head's attention over keys 0..len: softmax(q·Kᵀ/√d)·V.
    fn head(&self, q: &[f32], k: &[f16], v: &[f16], kvh: usize, len: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let (kg, vg) = (self.gather(k, kvh, len), self.gather(v, kvh, len));
        let mut scores = vec![0f32; len];
        scores_ref(q, &kg, hd, 1.0 / (hd as f32).sqrt(), &mut scores);
        softmax(&mut scores);
        let mut out = vec![0f32; hd];
        weighted_sum_ref(&scores, &vg, hd, &mut out);
        out
    }
}

/// Decode attention of one sequence's query token over its `len` cached
/// positions (the token's own included).
/// q: (n_heads, head_dim)   returns (n_heads, head_dim)
pub fn paged_attention_ref(
    pg: &Paging<'_>,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    len: usize,
) -> Vec<f32> {
    let (hd, group) = (pg.head_dim, pg.n_heads / pg.n_kv_heads);
    (0..pg.n_heads)
        .flat_map(|h| pg.head(&q[h * hd..(h + 1) * hd], k, v, h / group, len))
        .collect()
}

/// Causal prefill attention: query t (position start + t) sees keys 0..=start + t.
/// q: (n_q, n_heads, head_dim)   returns the same shape
pub fn prefill_attention_ref(
    pg: &Paging<'_>,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    start: usize,
) -> Vec<f32> {
    let (hd, group) = (pg.head_dim, pg.n_heads / pg.n_kv_heads);
    let n_q = q.len() / (pg.n_heads * hd);
    let mut out = Vec::with_capacity(q.len());
    for t in 0..n_q {
        for h in 0..pg.n_heads {
            let qh = &q[(t * pg.n_heads + h) * hd..][..hd];
            out.extend(pg.head(qh, k, v, h / group, start + t + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrambled block table gives the same attention as positions laid
    /// out in order: the paging is only an indirection.
    #[test]
    fn paged_attention_is_independent_of_the_block_order() {
        let (n_heads, n_kv, hd, bs, len): (usize, usize, usize, usize, usize) = (6, 2, 32, 4, 13);
        let kv_dim = n_kv * hd;
        let n_blocks = len.div_ceil(bs);
        let val = |i: usize| f16::from_f32(((i as f32) * 0.173).sin());
        // Contiguous: block b at row b. Scrambled: block b at row perm[b].
        let perm: Vec<i32> = vec![3, 0, 2, 1];
        let mut k_scr = vec![f16::ZERO; n_blocks * bs * kv_dim];
        let mut v_scr = k_scr.clone();
        let k_lin: Vec<f16> = (0..n_blocks * bs * kv_dim).map(val).collect();
        let v_lin: Vec<f16> = (0..n_blocks * bs * kv_dim).map(|i| val(i + 7)).collect();
        for p in 0..n_blocks * bs {
            let dst = (perm[p / bs] as usize * bs + p % bs) * kv_dim;
            k_scr[dst..dst + kv_dim].copy_from_slice(&k_lin[p * kv_dim..(p + 1) * kv_dim]);
            v_scr[dst..dst + kv_dim].copy_from_slice(&v_lin[p * kv_dim..(p + 1) * kv_dim]);
        }
        let lin: Vec<i32> = (0..n_blocks as i32).collect();
        let q: Vec<f32> = (0..n_heads * hd).map(|i| (i as f32 * 0.05).cos()).collect();
        let pg = |table| Paging {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            block_size: bs,
            table,
        };
        let a = paged_attention_ref(&pg(&lin), &q, &k_lin, &v_lin, len);
        let b = paged_attention_ref(&pg(&perm), &q, &k_scr, &v_scr, len);
        assert_eq!(a, b);
        // Prefill's last query sees what decode's query sees.
        let qs: Vec<f32> = [q.clone(), q.clone()].concat();
        let p = prefill_attention_ref(&pg(&perm), &qs, &k_scr, &v_scr, len - 2);
        assert_eq!(&p[n_heads * hd..], &a[..]);
        assert_ne!(
            &p[..n_heads * hd],
            &a[..],
            "the earlier query sees one key fewer"
        );
    }

    #[test]
    fn matmul_ref_is_the_dequantized_product() {
        // Two rows of Q8_0: d = 0.5, qs = 1..=32 and all -2.
        let mut w = Vec::new();
        for row in 0..2 {
            w.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
            for j in 0..32i8 {
                w.push(if row == 0 {
                    (j + 1) as u8
                } else {
                    (-2i8) as u8
                });
            }
        }
        let x = vec![1f32; 32];
        let (y, abs) = matmul_ref(GgmlType::Q8_0, &w, 2, 32, &x).expect("whole blocks");
        assert_eq!(y, vec![0.5 * (32.0 * 33.0 / 2.0), 0.5 * -64.0]);
        assert_eq!(abs, vec![0.5 * (32.0 * 33.0 / 2.0), 0.5 * 64.0]);
    }
}
