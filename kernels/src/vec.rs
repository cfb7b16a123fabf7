//! f32 vector kernels: dot products and `y += a·x` for attention and f32
//! weights, and SIMD versions of RMSNorm, softmax and SiLU·mul. Each has the
//! scalar reference in [`crate::ops`] (or here, for dot and axpy) and is tested
//! against it with its error bound stated.
//!
//! The AVX2 versions run when the CPU has AVX2, FMA and F16C (checked at run
//! time and cached); otherwise the portable loops run.

/// Reference dot product, accumulated in f64.
pub fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: {} vs {} elements", a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>() as f32
}

/// Dot product of two f32 rows. |dot − dot_ref| <= 1e-6 · Σ|a_i·b_i| (f32
/// accumulation in 32 lanes).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: {} vs {} elements", a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected; lengths equal.
        return unsafe { avx2::dot(a, b) };
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// `y += a · x` (the attention's weighted sum of value rows).
///
/// x, y: (n,)
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "axpy: {} vs {} elements",
        x.len(),
        y.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected; lengths equal.
        return unsafe { avx2::axpy(a, x, y) };
    }
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Dot product of f32 activations with an f16 row (the KV cache), summed in
/// f32: |dot_f16 − dot_ref(a, f32(b))| <= 1e-6 · Σ|a_i·b_i|.
pub fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "dot_f16: {} vs {} elements",
        a.len(),
        b.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected; lengths equal.
        return unsafe { avx2::dot_f16(a, b) };
    }
    a.iter().zip(b).map(|(&x, y)| x * y.to_f32()).sum()
}

/// `y += a · x` for an f16 row `x` (the cache's value rows).
pub fn axpy_f16(a: f32, x: &[half::f16], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "axpy_f16: {} vs {} elements",
        x.len(),
        y.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected; lengths equal.
        return unsafe { avx2::axpy_f16(a, x, y) };
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi.to_f32();
    }
}

/// RMSNorm as ggml computes it (f32 squares, f64 sum, f32 scale); within 1e-5
/// relative of
/// [`crate::ops::rms_norm`] (f64).
///
/// x, weight, out: (dim,)
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: x {}, weight {}, out {}",
        x.len(),
        weight.len(),
        out.len()
    );
    // Squares in f32, summed in f64, as ggml does (the sum is O(dim) work
    // next to the O(dim²) products around it).
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean_sq = (sum / x.len().max(1) as f64) as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Softmax in place with a vectorized `exp` (Cephes polynomial, relative error
/// below 2e-7 per term); within 1e-5 absolute of [`crate::ops::softmax`].
///
/// x: (n,)
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let sum = exp_shifted(x, max);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `x[i] = exp(x[i] - shift)`, returning Σ x[i] (vectorized like
/// [`softmax`]; the trainer's cross-entropy uses it over the vocabulary).
pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected.
        return unsafe { avx2::exp_shifted(x, shift) };
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// SwiGLU gate with a vectorized `exp`; within 1e-6 relative (plus 1e-7
/// absolute) of [`crate::ops::silu_mul`].
///
/// gate, up, out: (ffn_dim,)
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && gate.len() == out.len(),
        "silu_mul: gate {}, up {}, out {}",
        gate.len(),
        up.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() {
        // SAFETY: features detected; lengths equal.
        return unsafe { avx2::silu_mul(gate, up, out) };
    }
    crate::ops::silu_mul(gate, up, out);
}

/// RoPE as llama.cpp computes it: the angle of pair j is built in f32 as
/// `pos · s^j` by repeated multiplication (`s = base^(-2/head_dim)`), and one
/// cos/sin pair serves every head of the token. Against the f64 reference
/// [`crate::ops::rope`] each output is within `|x| · (pos + 1) · 1e-5`
/// (the angle's relative error grows with j, its absolute error with pos).
///
/// x: (n_heads, head_dim)
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, base: f32, layout: crate::ops::RopeLayout) {
    use crate::ops::RopeLayout;
    assert!(
        head_dim.is_multiple_of(2) && head_dim > 0 && x.len().is_multiple_of(head_dim),
        "rope: {} elements, head_dim {head_dim}",
        x.len()
    );
    let half = head_dim / 2;
    // cos/sin per pair, on the stack for head_dim <= 256.
    let mut cs = [(0f32, 0f32); 128];
    assert!(half <= cs.len(), "rope: head_dim {head_dim} > 256");
    let scale = base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    for c in cs.iter_mut().take(half) {
        let (s, co) = theta.sin_cos();
        *c = (co, s);
        theta *= scale;
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (j, &(cos, sin)) in cs.iter().take(half).enumerate() {
            let (a, b) = match layout {
                RopeLayout::Interleaved => (2 * j, 2 * j + 1),
                RopeLayout::HalfSplit => (j, j + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::qdot::avx2::hsum;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA+F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // Four accumulators hide the FMA latency (4 cycles, 2 per cycle).
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n, then i + 8 <= n.
        while i + 32 <= n {
            for (k, a_k) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        _mm256_loadu_ps(pb.add(i + 8 * k)),
                    )
                };
                *a_k = _mm256_fmadd_ps(x, y, *a_k);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut tail = 0f32;
        while i < n {
            tail += a[i] * b[i];
            i += 1;
        }
        hsum(s) + tail
    }

    /// # Safety
    /// AVX2+FMA+F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
        let n = a.len();
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (loads): i + 16 <= n, then i + 8 <= n; f16 is 2 bytes.
        while i + 16 <= n {
            for (k, a_k) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(a.as_ptr().add(i + 8 * k)),
                        _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8 * k).cast())),
                    )
                };
                *a_k = _mm256_fmadd_ps(x, y, *a_k);
            }
            i += 16;
        }
        while i + 8 <= n {
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i).cast())),
                )
            };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let mut tail = 0f32;
        while i < n {
            tail += a[i] * b[i].to_f32();
            i += 1;
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + tail
    }

    /// # Safety
    /// AVX2+FMA+F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(a: f32, x: &[half::f16], y: &mut [f32]) {
        let n = x.len();
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY: i + 8 <= n for every vector access.
        while i + 8 <= n {
            unsafe {
                let px = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
                let py = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(py, _mm256_fmadd_ps(va, px, _mm256_loadu_ps(py)));
            }
            i += 8;
        }
        while i < n {
            y[i] += a * x[i].to_f32();
            i += 1;
        }
    }

    /// # Safety
    /// AVX2+FMA+F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY: i + 8 <= n for every vector access.
        while i + 8 <= n {
            unsafe {
                let px = _mm256_loadu_ps(x.as_ptr().add(i));
                let py = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(py, _mm256_fmadd_ps(va, px, _mm256_loadu_ps(py)));
            }
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }

    /// e^x for 8 lanes: Cephes' `expf` (range reduction by ln 2, degree-5
    /// polynomial), the algorithm of avx_mathfun. Inputs below -87.3 flush to 0.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-88.376_26));
        // n = round(x / ln2); r = x - n·ln2 (in two parts for precision)
        let fx = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent bits.
        let n = _mm256_cvtps_epi32(fx);
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(n, _mm256_set1_epi32(127)),
            23,
        ));
        let out = _mm256_mul_ps(y, pow2);
        // Below ln(2^-126) the exponent trick underflows: flush to zero.
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.336_55), _CMP_LT_OQ);
        _mm256_andnot_ps(tiny, out)
    }

    /// # Safety
    /// AVX2+FMA+F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        let n = x.len();
        let vs = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: i + 8 <= n for every vector access.
        while i + 8 <= n {
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), vs));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
            }
            i += 8;
        }
        let mut sum = hsum(acc);
        while i < n {
            x[i] = (x[i] - shift).exp();
            sum += x[i];
            i += 1;
        }
        sum
    }

    /// # Safety
    /// AVX2+FMA+F16C; equal lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len();
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: i + 8 <= n for every vector access.
        while i + 8 <= n {
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp(_mm256_sub_ps(zero, g));
                let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, u));
            }
            i += 8;
        }
        while i < n {
            let g = gate[i];
            out[i] = g / (1.0 + (-g).exp()) * up[i];
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dot_and_axpy_match_the_references(
            a in prop::collection::vec(-8f32..8.0, 0..300),
            seed in -3f32..3.0,
        ) {
            let b: Vec<f32> = a.iter().enumerate().map(|(i, v)| (v * seed + i as f32 * 0.01).sin()).collect();
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-3;
            let (fast, slow) = (dot(&a, &b), dot_ref(&a, &b));
            prop_assert!((fast - slow).abs() <= 1e-6 * scale, "dot {fast} vs {slow}");
            let bh: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bf: Vec<f32> = bh.iter().map(|v| v.to_f32()).collect();
            let (fast, slow) = (dot_f16(&a, &bh), dot_ref(&a, &bf));
            prop_assert!((fast - slow).abs() <= 1e-6 * scale, "dot_f16 {fast} vs {slow}");
            let mut y = a.clone();
            axpy_f16(seed, &bh, &mut y);
            for i in 0..a.len() {
                prop_assert!((y[i] - (a[i] + seed * bf[i])).abs() <= 1e-6 * (a[i].abs() + (seed * bf[i]).abs()) + 1e-7);
            }
            let mut y = b.clone();
            axpy(seed, &a, &mut y);
            for i in 0..a.len() {
                prop_assert!((y[i] - (b[i] + seed * a[i])).abs() <= 1e-6 * (b[i].abs() + (seed * a[i]).abs()) + 1e-7);
            }
        }

        #[test]
        fn simd_rms_norm_softmax_and_silu_match_the_scalar_references(
            x in prop::collection::vec(-30f32..30.0, 1..200),
        ) {
            let w: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let (mut fast, mut slow) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            rms_norm(&x, &w, 1e-5, &mut fast);
            ops::rms_norm(&x, &w, 1e-5, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                prop_assert!((f - s).abs() <= 1e-5 * s.abs() + 1e-6, "rms_norm {f} vs {s}");
            }
            let (mut fast, mut slow) = (x.clone(), x.clone());
            softmax(&mut fast);
            ops::softmax(&mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                prop_assert!((f - s).abs() <= 1e-5, "softmax {f} vs {s}");
            }
            let up: Vec<f32> = x.iter().map(|v| v * 0.3 - 1.0).collect();
            let (mut fast, mut slow) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            silu_mul(&x, &up, &mut fast);
            ops::silu_mul(&x, &up, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                prop_assert!((f - s).abs() <= 1e-6 * s.abs() + 1e-7, "silu_mul {f} vs {s}");
            }
        }
    }

    proptest! {
        #[test]
        fn fast_rope_matches_the_reference_within_its_bound(
            x in prop::collection::vec(-4f32..4.0, 192),
            pos in 0usize..8192,
        ) {
            for layout in [ops::RopeLayout::Interleaved, ops::RopeLayout::HalfSplit] {
                let (mut fast, mut slow) = (x.clone(), x.clone());
                rope(&mut fast, 64, pos, 100_000.0, layout);
                ops::rope(&mut slow, 64, pos, 100_000.0, layout);
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (f, s) in fast.iter().zip(&slow) {
                    prop_assert!((f - s).abs() <= amax * (pos as f32 + 1.0) * 1e-5, "{f} vs {s} at {pos}");
                }
            }
        }
    }

    #[test]
    fn vector_exp_handles_the_range_ends() {
        let mut x = vec![-200.0, -88.0, -10.0, 0.0, 1.0, 10.0, 80.0, 0.5, -0.5];
        let want: Vec<f32> = x.iter().map(|v: &f32| v.exp()).collect();
        let sum = exp_shifted(&mut x, 0.0);
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() <= 2e-7 * w.abs() + 1e-38, "exp: {g} vs {w}");
        }
        assert!((sum - want.iter().sum::<f32>()).abs() <= 1e-6 * sum);
    }
}
