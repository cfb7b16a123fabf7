//! Scalar reference implementations of the transformer's elementwise and
//! row-wise operations. They define the numerics: every SIMD or GPU kernel is
//! tested against these on random inputs, with its error bound stated.
//!
//! Shapes are in the names' comments; rows are contiguous f32.

/// RMSNorm (Zhang & Sennrich, 2019) of one row:
/// `out[i] = x[i] / sqrt(mean(x²) + eps) * weight[i]`.
///
/// x, weight, out: (dim,)
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(
        x.len(),
        weight.len(),
        "rms_norm: x has {} elements, weight {}",
        x.len(),
        weight.len()
    );
    assert_eq!(
        x.len(),
        out.len(),
        "rms_norm: x has {} elements, out {}",
        x.len(),
        out.len()
    );
    // Accumulate in f64: the reference should be the most accurate version.
    let mean_sq =
        x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64;
    let scale = (1.0 / (mean_sq + f64::from(eps)).sqrt()) as f32;
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Numerically stable softmax in place: subtract the max before `exp`.
///
/// x: (n,)
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        // Every score masked: no distribution exists; leave zeros rather than NaN.
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// SwiGLU's gate: `out[i] = silu(gate[i]) * up[i]`, `silu(g) = g / (1 + e^-g)`.
///
/// gate, up, out: (ffn_dim,)
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate {} vs up {}",
        gate.len(),
        up.len()
    );
    assert_eq!(
        gate.len(),
        out.len(),
        "silu_mul: gate {} vs out {}",
        gate.len(),
        out.len()
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// The id of the largest logit, the first on ties; NaN never wins (greedy
/// decoding's choice, and the reference of the CUDA `argmax` kernel).
///
/// logits: (vocab,)
pub fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// Which elements RoPE rotates together within a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's GGUF Llama weights, whose Q/K rows
    /// were permuted at conversion.
    Interleaved,
    /// Halves (i, i + head_dim/2): Hugging Face's `rotate_half`.
    HalfSplit,
}

/// Rotary position embedding (Su et al., RoFormer) of one token's heads in
/// place: pair j rotates by `pos * base^(-2j/head_dim)`.
///
/// x: (n_heads, head_dim)
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, base: f32, layout: RopeLayout) {
    assert!(
        head_dim.is_multiple_of(2) && head_dim > 0,
        "rope: head_dim {head_dim} must be even"
    );
    assert!(
        x.len().is_multiple_of(head_dim),
        "rope: {} elements is not whole heads of {head_dim}",
        x.len()
    );
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for j in 0..half {
            let theta =
                f64::from(pos as u32) * f64::from(base).powf(-2.0 * j as f64 / head_dim as f64);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = match layout {
                RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                RopeLayout::HalfSplit => (j, j + half),
            };
            let (x0, x1) = (f64::from(head[a]), f64::from(head[b]));
            head[a] = (x0 * cos - x1 * sin) as f32;
            head[b] = (x0 * sin + x1 * cos) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vecs(n: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-10f32..10.0, n)
    }

    proptest! {
        #[test]
        fn rms_norm_output_has_unit_rms_with_unit_weight(x in vecs(64)) {
            // eps must be negligible next to mean(x²) for the RMS to be 1.
            prop_assume!(x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 64.0 > 1e-2);
            let mut out = vec![0f32; 64];
            rms_norm(&x, &[1.0; 64], 1e-9, &mut out);
            let rms = (out.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 64.0).sqrt();
            prop_assert!((rms - 1.0).abs() < 1e-5, "rms {rms}");
        }

        #[test]
        fn softmax_is_a_distribution_in_the_input_order(mut x in vecs(33)) {
            let orig = x.clone();
            softmax(&mut x);
            let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
            prop_assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
            prop_assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
            let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b });
            prop_assert_eq!(argmax(&x), argmax(&orig));
        }

        #[test]
        fn rope_preserves_each_pairs_norm_and_is_identity_at_position_0(x in vecs(128), pos in 0usize..4096) {
            for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
                let mut y = x.clone();
                rope(&mut y, 64, pos, 100_000.0, layout);
                let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
                prop_assert!((norm(&y) - norm(&x)).abs() < 1e-3 * norm(&x).max(1.0));
                let mut z = x.clone();
                rope(&mut z, 64, 0, 100_000.0, layout);
                prop_assert_eq!(&z, &x);
            }
        }

        /// The two layouts are the same rotation up to llama.cpp's permutation
        /// of each head's rows (pair j: (2j, 2j+1) <-> (j, j + d/2)).
        #[test]
        fn interleaved_and_half_split_agree_under_the_row_permutation(x in vecs(64), pos in 0usize..2048) {
            let d = 64;
            let perm = |v: &[f32]| -> Vec<f32> {
                let mut p = vec![0f32; d];
                for j in 0..d / 2 {
                    p[2 * j] = v[j];
                    p[2 * j + 1] = v[j + d / 2];
                }
                p
            };
            let mut a = perm(&x);
            rope(&mut a, d, pos, 10_000.0, RopeLayout::Interleaved);
            let mut b = x.clone();
            rope(&mut b, d, pos, 10_000.0, RopeLayout::HalfSplit);
            prop_assert_eq!(a, perm(&b));
        }
    }

    #[test]
    fn rope_rotates_the_first_pair_by_the_position() {
        // Pair 0 has frequency 1: at position p it rotates by p radians.
        let mut x = vec![0f32; 4];
        x[0] = 1.0;
        rope(&mut x, 4, 1, 10_000.0, RopeLayout::Interleaved);
        assert!(
            (x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6,
            "{x:?}"
        );
    }

    #[test]
    fn silu_mul_and_a_fully_masked_softmax() {
        let mut out = [0f32; 3];
        silu_mul(&[0.0, 1.0, -1.0], &[2.0, 2.0, 2.0], &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-7);
        assert!((out[2] + 2.0 / (1.0 + 1f32.exp())).abs() < 1e-7);
        let mut m = [f32::NEG_INFINITY; 4];
        softmax(&mut m);
        assert_eq!(m, [0.0; 4]);
    }
}
