//! Quantized dot products: a row of quantized weights against activations
//! quantized to 8 bits on the fly, as llama.cpp does. Integer multiply-adds do
//! the bulk of the work; one float multiply per 32-element block applies the
//! scales.
//!
//! ```text
//! activation block (in memory only): d: f32 | s = d·Σq (f32) | q: i8[32]      x_i ≈ d·q_i
//! Q8_0 · Q8:  d_w·d_x · Σ q_w,i·q_x,i
//! Q4_0 · Q8:  d_w·d_x · Σ (q_w,i − 8)·q_x,i
//! Q4_1 · Q8:  d_w·d_x · Σ q_w,i·q_x,i  +  m_w · s_x          (m_w·Σx_i folded into s_x)
//! ```
//!
//! [`dot_scalar`] is the reference; [`dot`] dispatches at run time to AVX2+FMA
//! when the CPU has them. The integer sums are identical in both, so the two
//! differ only in float summation order across blocks: |dot - dot_scalar| <=
//! 1e-6 · Σ_blocks |block term| (tested on random data).

use crate::quant::{GgmlType, QK};

/// 32 activations quantized to i8 with an f32 scale and the scaled sum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub q: [i8; QK],
}

/// Quantizes activations (len a multiple of 32): per block, d = max|x|/127 and
/// q = round(x/d). The round-off is at most d/2 per element.
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8> {
    assert!(
        x.len().is_multiple_of(QK),
        "quantize_q8: {} is not a multiple of {QK}",
        x.len()
    );
    x.chunks_exact(QK)
        .map(|c| {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0i8; QK];
            let mut sum = 0i32;
            for (qi, &v) in q.iter_mut().zip(c) {
                *qi = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(*qi);
            }
            BlockQ8 {
                d,
                s: d * sum as f32,
                q,
            }
        })
        .collect()
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Reference: one weight row (`ty`, `x.len()` blocks) · quantized activations.
pub fn dot_scalar(ty: GgmlType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    assert_eq!(
        row.len(),
        x.len() * bb,
        "dot: row of {} bytes for {} blocks of {ty:?}",
        row.len(),
        x.len()
    );
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(bb).zip(x) {
        let isum: i32 = match ty {
            GgmlType::Q8_0 => b[2..]
                .iter()
                .zip(&xb.q)
                .map(|(&w, &q)| i32::from(w as i8) * i32::from(q))
                .sum(),
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                let bias = if ty == GgmlType::Q4_0 { 8 } else { 0 };
                (0..QK / 2)
                    .map(|i| {
                        let byte = b[off + i];
                        (i32::from(byte & 0x0f) - bias) * i32::from(xb.q[i])
                            + (i32::from(byte >> 4) - bias) * i32::from(xb.q[i + QK / 2])
                    })
                    .sum()
            }
            other => panic!("dot: {other:?} is not a block-quantized type"),
        };
        acc += f16(b, 0) * xb.d * isum as f32;
        if ty == GgmlType::Q4_1 {
            acc += f16(b, 2) * xb.s;
        }
    }
    acc
}

/// One row · activations, on the fastest path this CPU has.
pub fn dot(ty: GgmlType, row: &[u8], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert_eq!(
                row.len(),
                x.len() * ty.block_bytes(),
                "dot: row/activation size mismatch"
            );
            // SAFETY: AVX2 and FMA were detected just above; sizes checked.
            return unsafe { avx2::dot(ty, row, x) };
        }
    }
    dot_scalar(ty, row, x)
}

/// Matrix-vector product: `out[r] = dot(row r, x)`.
///
/// w: (rows, x.len() * 32) in `ty`; out: (rows,)
pub fn matvec(ty: GgmlType, w: &[u8], x: &[BlockQ8], out: &mut [f32]) {
    let row_bytes = x.len() * ty.block_bytes();
    assert_eq!(
        w.len(),
        out.len() * row_bytes,
        "matvec: {} weight bytes for {} rows of {row_bytes}",
        w.len(),
        out.len()
    );
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = dot(ty, row, x);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8, f16};
    use crate::quant::GgmlType;
    use std::arch::x86_64::*;

    /// Σ over 32 lanes of u8 weights × i8 activations, as f32 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn dot_u8_i8(w: __m256i, q: __m256i) -> __m256 {
        // maddubs: u8 × i8 pairs summed to i16, then pairs of i16 to i32.
        // No saturation: 4-bit weights give at most 2·15·127; for Q8_0,
        // |w| <= 128 and |q| <= 127 give at most 2·128·127 = 32,512 < 32,767.
        let p16 = _mm256_maddubs_epi16(w, q);
        let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p32)
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// Requires AVX2 and FMA; `row.len() == x.len() * ty.block_bytes()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(ty: GgmlType, row: &[u8], x: &[BlockQ8]) -> f32 {
        let bb = ty.block_bytes();
        let mut acc = _mm256_setzero_ps();
        let mut extra = 0f32;
        let low_mask = _mm256_set1_epi8(0x0f);
        for (b, xb) in row.chunks_exact(bb).zip(x) {
            // SAFETY (loads): q is 32 bytes; the weight slices below are 16 or
            // 32 bytes inside the block; unaligned loads are used throughout.
            let q = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
            let d = _mm256_set1_ps(f16(b, 0) * xb.d);
            let sums = match ty {
                GgmlType::Q8_0 => {
                    let w = unsafe { _mm256_loadu_si256(b[2..].as_ptr().cast()) };
                    // maddubs needs an unsigned left operand: use |w| and move
                    // w's sign onto q.
                    let aw = _mm256_sign_epi8(w, w);
                    let sq = _mm256_sign_epi8(q, w);
                    dot_u8_i8(aw, sq)
                }
                _ => {
                    let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                    let packed = unsafe { _mm_loadu_si128(b[off..].as_ptr().cast()) };
                    // [low nibbles | high nibbles] = weights 0..16 | 16..32,
                    // the same order as the activation block.
                    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                    let w = _mm256_and_si256(both, low_mask);
                    let s = dot_u8_i8(w, q);
                    if ty == GgmlType::Q4_0 {
                        // Σ (w - 8) q = Σ w q - 8 Σ q
                        let qsum: i32 = xb.q.iter().map(|&v| i32::from(v)).sum();
                        extra -= 8.0 * f16(b, 0) * xb.d * qsum as f32;
                    }
                    s
                }
            };
            acc = _mm256_fmadd_ps(d, sums, acc);
            if ty == GgmlType::Q4_1 {
                extra += f16(b, 2) * xb.s;
            }
        }
        hsum(acc) + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;
    use proptest::prelude::*;

    /// Random blocks of `ty` with sane f16 scales.
    fn random_row(ty: GgmlType, blocks: usize, seed: &[u8]) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut row: Vec<u8> = (0..blocks * bb)
            .map(|i| seed[i % seed.len()].wrapping_mul(i as u8 | 1))
            .collect();
        for (k, b) in row.chunks_exact_mut(bb).enumerate() {
            let d = half::f16::from_f32(0.01 + (k % 7) as f32 * 0.003);
            b[0..2].copy_from_slice(&d.to_le_bytes());
            if ty == GgmlType::Q4_1 {
                let m = half::f16::from_f32(-0.05 + (k % 5) as f32 * 0.02);
                b[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        row
    }

    proptest! {
        /// SIMD vs scalar: same integer sums, different float summation order.
        #[test]
        fn dispatched_dot_matches_the_scalar_reference(
            seed in prop::collection::vec(any::<u8>(), 1..64),
            x in prop::collection::vec(-4f32..4.0, 32 * 18),
        ) {
            let xq = quantize_q8(&x);
            for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
                let row = random_row(ty, xq.len(), &seed);
                let (fast, slow) = (dot(ty, &row, &xq), dot_scalar(ty, &row, &xq));
                // Bound: 1e-6 relative to the sum of absolute block terms.
                let mut w = vec![0f32; x.len()];
                dequantize(ty, &row, &mut w).expect("dequantize");
                let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1.0;
                prop_assert!((fast - slow).abs() <= 1e-5 * scale, "{ty:?}: {fast} vs {slow}");
            }
        }

        /// Against the dense f32 dot: the only error is activation rounding,
        /// at most Σ_i |w_i| · d_x/2 over each block.
        #[test]
        fn quantized_dot_is_within_the_activation_rounding_bound(
            seed in prop::collection::vec(any::<u8>(), 1..64),
            x in prop::collection::vec(-4f32..4.0, 32 * 6),
        ) {
            let xq = quantize_q8(&x);
            for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
                let row = random_row(ty, xq.len(), &seed);
                let mut w = vec![0f32; x.len()];
                dequantize(ty, &row, &mut w).expect("dequantize");
                let dense: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let bound: f64 = w.chunks(32).zip(&xq).map(|(wb, xb)| {
                    wb.iter().map(|v| f64::from(v.abs())).sum::<f64>() * f64::from(xb.d) / 2.0
                }).sum::<f64>() * 1.001 + 1e-4;
                let got = f64::from(dot(ty, &row, &xq));
                prop_assert!((got - dense).abs() <= bound, "{ty:?}: {got} vs dense {dense}, bound {bound}");
            }
        }
    }

    #[test]
    fn matvec_is_a_row_of_dots_and_zero_activations_quantize_cleanly() {
        let xq = quantize_q8(&[0.0; 64]);
        assert!(xq.iter().all(|b| b.d == 0.0 && b.q == [0; 32]));
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
        let xq = quantize_q8(&x);
        let w: Vec<u8> = (0..3)
            .flat_map(|r| random_row(GgmlType::Q4_1, 2, &[r as u8 + 3, 7, 11]))
            .collect();
        let mut out = [0f32; 3];
        matvec(GgmlType::Q4_1, &w, &xq, &mut out);
        for r in 0..3 {
            let row = &w[r * 40..(r + 1) * 40];
            assert_eq!(out[r], dot(GgmlType::Q4_1, row, &xq));
        }
    }
}
