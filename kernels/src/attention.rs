//! Attention's two inner loops over cached keys and values stored as f16:
//! the scores `s_p = scale · q·k_p` and the weighted sum `out += Σ_p w_p·v_p`.
//! Callers do the softmax between them; a paged cache calls them once per
//! block of positions.
//!
//! Keys/values are rows of `head_dim` f16 values, `stride` elements apart
//! (a cache row holds every KV head of one position).
//!
//! The AVX2 versions keep the query chunk and the output accumulators in
//! registers and convert f16 with F16C, instead of calling a generic dot/axpy
//! per position: at a 1,024-token context, decode spends half its time here.

use half::f16;

/// Reference: `scores[p] = scale · Σ_i q[i]·k[p·stride + i]` (f64 sums).
///
/// q: (head_dim,); k: (n, stride) with head_dim <= stride; scores: (n,)
pub fn scores_ref(q: &[f32], k: &[f16], stride: usize, scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    for (p, s) in scores.iter_mut().enumerate() {
        let row = &k[p * stride..p * stride + hd];
        let dot: f64 = q
            .iter()
            .zip(row)
            .map(|(&a, b)| f64::from(a) * f64::from(b.to_f32()))
            .sum();
        *s = (dot * f64::from(scale)) as f32;
    }
}

/// Reference: `out[i] += Σ_p w[p]·v[p·stride + i]` (f64 sums).
///
/// w: (n,); v: (n, stride); out: (head_dim,)
pub fn weighted_sum_ref(w: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let s: f64 = w
            .iter()
            .enumerate()
            .map(|(p, &wp)| f64::from(wp) * f64::from(v[p * stride + i].to_f32()))
            .sum();
        *o += s as f32;
    }
}

fn check(hd: usize, n: usize, stride: usize, len: usize, what: &str) {
    assert!(
        hd <= stride && (n == 0 || (n - 1) * stride + hd <= len),
        "{what}: {n} rows of {hd} at stride {stride} need {} elements, have {len}",
        n.saturating_sub(1) * stride + hd
    );
}

/// Scores of one query head against `scores.len()` key rows; within
/// 1e-6 · Σ|q_i·k_i| · scale of [`scores_ref`] (f32 sums).
pub fn scores(q: &[f32], k: &[f16], stride: usize, scale: f32, scores: &mut [f32]) {
    check(q.len(), scores.len(), stride, k.len(), "scores");
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() && q.len().is_multiple_of(8) {
        // SAFETY: features detected; bounds checked above.
        return unsafe { avx2::scores(q, k, stride, scale, scores) };
    }
    for (p, s) in scores.iter_mut().enumerate() {
        *s = crate::vec::dot_f16(q, &k[p * stride..p * stride + q.len()]) * scale;
    }
}

/// Adds the `w`-weighted value rows into `out`; within 1e-6 · Σ|w_p·v_p,i| of
/// [`weighted_sum_ref`] per element. Splitting the rows into consecutive
/// calls gives the same bits as one call (tested): paged and contiguous
/// caches agree exactly.
pub fn weighted_sum(w: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    check(out.len(), w.len(), stride, v.len(), "weighted_sum");
    #[cfg(target_arch = "x86_64")]
    if crate::qdot::has_avx2() && out.len().is_multiple_of(8) {
        // SAFETY: features detected; bounds checked above.
        return unsafe { avx2::weighted_sum(w, v, stride, out) };
    }
    let hd = out.len();
    for (p, &wp) in w.iter().enumerate() {
        crate::vec::axpy_f16(wp, &v[p * stride..p * stride + hd], out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::qdot::avx2::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA+F16C; q.len() % 8 == 0; rows in bounds.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let chunks = hd / 8;
        let kp = k.as_ptr();
        for (p, s) in out.iter_mut().enumerate() {
            // SAFETY: row p spans p·stride .. p·stride + hd (checked).
            let row = unsafe { kp.add(p * stride) };
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 2 <= chunks {
                unsafe {
                    let k0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c).cast()));
                    let k1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c + 8).cast()));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(8 * c)), k0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(8 * c + 8)), k1, a1);
                }
                c += 2;
            }
            if c < chunks {
                unsafe {
                    let k0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c).cast()));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(8 * c)), k0, a0);
                }
            }
            *s = hsum(_mm256_add_ps(a0, a1)) * scale;
        }
    }

    /// # Safety
    /// AVX2+FMA+F16C; out.len() % 8 == 0; rows in bounds.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(w: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
        let hd = out.len();
        let vp = v.as_ptr();
        // Up to 64 outputs (8 registers) per pass over the positions.
        let mut base = 0;
        while base < hd {
            let n = ((hd - base) / 8).min(8);
            // Start from `out`, not zero: the sum is then one sequential chain
            // per element whatever the segmentation, so a paged cache (one call
            // per block) gives the same bits as a contiguous one (one call).
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, a) in acc.iter_mut().enumerate().take(n) {
                // SAFETY: base + 8j + 8 <= hd.
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(base + 8 * j)) };
            }
            for (p, &wp) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wp);
                // SAFETY: row p spans p·stride .. p·stride + hd (checked).
                let row = unsafe { vp.add(p * stride + base) };
                for (j, a) in acc.iter_mut().enumerate().take(n) {
                    let x = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * j).cast())) };
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
            for (j, a) in acc.iter().enumerate().take(n) {
                // SAFETY: base + 8j + 8 <= hd.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(base + 8 * j), *a) };
            }
            base += 8 * n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn attention_loops_match_the_references(
            n in 1usize..40,
            hd_chunks in 1usize..12,
            extra in 0usize..9,
            seed in -2f32..2.0,
        ) {
            // Mostly multiples of 8 (the AVX2 path), sometimes not (the fallback).
            let hd = 8 * hd_chunks + if extra % 3 == 1 { 2 } else { 0 };
            let stride = hd + extra;
            let k: Vec<f16> = (0..n * stride).map(|i| f16::from_f32(((i as f32) * 0.37 + seed).sin())).collect();
            let q: Vec<f32> = (0..hd).map(|i| ((i as f32) * 0.11 - seed).cos()).collect();
            let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
            scores(&q, &k, stride, 0.125, &mut fast);
            scores_ref(&q, &k, stride, 0.125, &mut slow);
            for (p, (f, s)) in fast.iter().zip(&slow).enumerate() {
                let bound: f32 = q.iter().zip(&k[p * stride..]).map(|(a, b)| (a * b.to_f32()).abs()).sum::<f32>() * 0.125 * 1e-6 + 1e-7;
                prop_assert!((f - s).abs() <= bound, "score {p}: {f} vs {s}");
            }
            let w: Vec<f32> = (0..n).map(|p| 1.0 / (p as f32 + 1.0)).collect();
            let (mut fast, mut slow) = (vec![0.5f32; hd], vec![0.5f32; hd]);
            weighted_sum(&w, &k, stride, &mut fast);
            weighted_sum_ref(&w, &k, stride, &mut slow);
            for i in 0..hd {
                let bound: f32 = (0..n).map(|p| (w[p] * k[p * stride + i].to_f32()).abs()).sum::<f32>() * 1e-6 + 1e-6;
                prop_assert!((fast[i] - slow[i]).abs() <= bound, "out {i}: {} vs {}", fast[i], slow[i]);
            }
        }
    }

    #[test]
    fn segmented_weighted_sums_equal_one_call_bit_for_bit() {
        let (n, hd) = (37, 64);
        let v: Vec<f16> = (0..n * hd)
            .map(|i| f16::from_f32((i as f32 * 0.013).sin()))
            .collect();
        let w: Vec<f32> = (0..n).map(|p| 1.0 / (p as f32 + 3.0)).collect();
        let mut whole = vec![0f32; hd];
        weighted_sum(&w, &v, hd, &mut whole);
        let mut parts = vec![0f32; hd];
        for (p0, p1) in [(0, 16), (16, 32), (32, 37)] {
            weighted_sum(&w[p0..p1], &v[p0 * hd..], hd, &mut parts);
        }
        assert_eq!(whole, parts);
    }

    #[test]
    #[should_panic(expected = "need")]
    fn rows_past_the_cache_are_refused() {
        let k = vec![f16::ZERO; 100];
        let mut s = vec![0f32; 2];
        scores(&[0.0; 64], &k, 64, 1.0, &mut s);
    }
}
