//! Rotary position embedding (Su et al., 2021), in Hugging Face's half-split
//! layout: within a head, element j pairs with j + head_dim/2 and the pair is
//! rotated by pos·θ_j, θ_j = base^(−2j/head_dim).
//!
//! A rotation's inverse is its transpose, so the backward rotates the
//! gradient by −pos·θ_j.

/// cos and sin of pos·θ_j: (seq_len, head_dim/2) each, computed in f64 as
/// the engine's `kernels::ops::rope` computes its angles.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    pub fn new(seq_len: usize, head_dim: usize, base: f32) -> RopeTable {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for j in 0..half {
                let theta = pos as f64 * f64::from(base).powf(-2.0 * j as f64 / head_dim as f64);
                let (s, c) = theta.sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        RopeTable { cos, sin, half }
    }
}

/// Rotates every head of every token in place; token i sits at position
/// i mod seq_len (each row of the batch is its own sequence).
/// x: (n, n_heads, head_dim)
pub fn rope_forward(x: &mut [f32], table: &RopeTable, n_heads: usize, seq_len: usize) {
    rotate(x, table, n_heads, seq_len, 1.0);
}

/// dx = Rᵀ·dy, in place. dx: (n, n_heads, head_dim)
pub fn rope_backward(dx: &mut [f32], table: &RopeTable, n_heads: usize, seq_len: usize) {
    rotate(dx, table, n_heads, seq_len, -1.0);
}

fn rotate(x: &mut [f32], table: &RopeTable, n_heads: usize, seq_len: usize, sign: f32) {
    let half = table.half;
    let hd = 2 * half;
    for (i, tok) in x.chunks_exact_mut(n_heads * hd).enumerate() {
        let pos = i % seq_len;
        let cos = &table.cos[pos * half..(pos + 1) * half];
        let sin = &table.sin[pos * half..(pos + 1) * half];
        for head in tok.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for j in 0..half {
                let (c, s) = (cos[j], sign * sin[j]);
                let (x0, x1) = (a[j], b[j]);
                a[j] = x0 * c - x1 * s;
                b[j] = x0 * s + x1 * c;
            }
        }
    }
}
