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
//! [`dot_scalar`] is the reference; [`dot`] dispatches at run time
//! ([`qdot_isa`]) to AVX-512 VNNI or AVX2+FMA when the CPU has them (the
//! VNNI kernels are the AVX2 ones with `vpdpbusd` for the integer products,
//! bit-identical to them). The integer sums are identical in both, so the two
//! differ only in float summation order across blocks: |dot - dot_scalar| <=
//! 1e-6 · Σ_blocks |block term| (tested on random data).

use crate::quant::{GgmlType, QK};

/// 32 activations quantized to i8 with an f32 scale and the scaled sum.
/// `repr(C)`: the AVX2 kernel loads `d` and `s` together as one 64-bit value.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub q: [i8; QK],
}

/// Quantizes activations (len a multiple of 32) the way llama.cpp's
/// `quantize_row_q8_1` does: per block, d = max|x|/127 and q = round(x/d); the
/// stored scale d and the scaled sum s = d·Σq are rounded to f16 (ggml keeps
/// them as f16), so the products match llama.cpp's to the last rounding.
/// The round-off is at most d/2 + 127·|d − f16(d)| <= 0.57·d per element.
pub fn quantize_q8(x: &[f32]) -> Vec<BlockQ8> {
    let mut out = vec![
        BlockQ8 {
            d: 0.0,
            s: 0.0,
            q: [0; QK]
        };
        x.len() / QK
    ];
    quantize_q8_into(x, &mut out);
    out
}

/// [`quantize_q8`] into a caller's buffer (no allocation on the hot path).
///
/// x: (n_blocks * 32,); out: (n_blocks,)
pub fn quantize_q8_into(x: &[f32], out: &mut [BlockQ8]) {
    assert!(
        x.len().is_multiple_of(QK) && x.len() / QK == out.len(),
        "quantize_q8: {} values for {} blocks of {QK}",
        x.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        for (c, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
            // SAFETY: features detected; c is 32 values.
            unsafe { avx2_quantize::quantize_block(c, blk) };
        }
        return;
    }
    quantize_q8_scalar(x, out);
}

/// Reference for [`quantize_q8_into`]; the AVX2 path gives identical blocks.
pub fn quantize_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (c, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // 127/amax (not 1/d) and ties to even, exactly as ggml's AVX2 path.
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (qi, &v) in blk.q.iter_mut().zip(c) {
            *qi = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            sum += i32::from(*qi);
        }
        blk.d = half::f16::from_f32(d).to_f32();
        blk.s = half::f16::from_f32(d * sum as f32).to_f32();
    }
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

/// True when this CPU runs the AVX2 kernels (AVX2, FMA and F16C; detection is
/// cached by std).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The instruction set [`dot`], [`dot_rows`] and [`dot_tokens4`] run on,
/// in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum QdotIsa {
    Scalar = 0,
    /// AVX2 + FMA + F16C: `vpmaddubsw` + `vpmaddwd` per 32 products.
    Avx2 = 1,
    /// The AVX2 kernels with AVX-512 VNNI's `vpdpbusd` (on 256-bit vectors,
    /// AVX512VL) for the integer dot product: bit-identical results.
    Avx512Vnni = 2,
}

const ISA_UNSET: u8 = u8::MAX;
static ISA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(ISA_UNSET);

/// The set in use: the best this CPU has, capped at AVX2 when the
/// environment says `MLSTACK_KERNELS=avx2`, or as [`set_qdot_isa`] last set.
pub fn qdot_isa() -> QdotIsa {
    use std::sync::atomic::Ordering::Relaxed;
    match ISA.load(Relaxed) {
        0 => QdotIsa::Scalar,
        1 => QdotIsa::Avx2,
        2 => QdotIsa::Avx512Vnni,
        _ => {
            let detected = detect_isa();
            let isa = match std::env::var("MLSTACK_KERNELS").as_deref() {
                Ok("avx2") => detected.min(QdotIsa::Avx2),
                Ok("" | "auto") | Err(_) => detected,
                Ok(other) => {
                    eprintln!("MLSTACK_KERNELS={other:?} is not auto or avx2; using {detected:?}");
                    detected
                }
            };
            // Only if still unset: a first call racing a `set_qdot_isa`
            // must not overwrite what was set.
            match ISA.compare_exchange(ISA_UNSET, isa as u8, Relaxed, Relaxed) {
                Ok(_) => isa,
                Err(_) => qdot_isa(),
            }
        }
    }
}

/// Runs the kernels on `isa` from now on (process-wide; the benchmark's
/// `mlstack-avx2` system measures what VNNI gives in the same run). Refused
/// with the best set this CPU has when it lacks `isa`. Returns the set it
/// replaced.
pub fn set_qdot_isa(isa: QdotIsa) -> Result<QdotIsa, QdotIsa> {
    let detected = detect_isa();
    if isa > detected {
        return Err(detected);
    }
    let old = qdot_isa();
    ISA.store(isa as u8, std::sync::atomic::Ordering::Relaxed);
    Ok(old)
}

/// The best set this CPU has (std caches the detection).
pub fn detect_isa() -> QdotIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            let vnni = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            return if vnni {
                QdotIsa::Avx512Vnni
            } else {
                QdotIsa::Avx2
            };
        }
    }
    QdotIsa::Scalar
}

/// One row · activations, on the fastest path this CPU has.
pub fn dot(ty: GgmlType, row: &[u8], x: &[BlockQ8]) -> f32 {
    dot_rows(ty, [row], x)[0]
}

/// `R` rows · the same activations at once: the activation block is loaded
/// once for all rows, and the rows' accumulators are independent chains the
/// CPU overlaps. Each row's arithmetic (and summation order) is exactly that
/// of [`dot`], so `dot_rows(rows)[r] == dot(rows[r])` bit for bit.
pub fn dot_rows<const R: usize>(ty: GgmlType, rows: [&[u8]; R], x: &[BlockQ8]) -> [f32; R] {
    dot_rows_prefetch(ty, rows, x, 0)
}

/// [`dot_rows`] that also prefetches, for each row, the bytes `prefetch_ahead`
/// past what it reads (0: none). Streaming a matrix row group by row group,
/// the hardware prefetcher alone left this loop waiting on DRAM at ~4 GB/s of
/// the core's 14; prefetching the rows a few groups ahead hides that latency.
/// Prefetches never fault, so addresses past the matrix are harmless.
pub fn dot_rows_prefetch<const R: usize>(
    ty: GgmlType,
    rows: [&[u8]; R],
    x: &[BlockQ8],
    prefetch_ahead: usize,
) -> [f32; R] {
    for row in &rows {
        assert_eq!(
            row.len(),
            x.len() * ty.block_bytes(),
            "dot_rows: row of {} bytes for {} blocks of {ty:?}",
            row.len(),
            x.len()
        );
    }
    match qdot_isa() {
        // SAFETY: features detected by qdot_isa; every row's size checked above.
        #[cfg(target_arch = "x86_64")]
        QdotIsa::Avx512Vnni => unsafe { avx512vnni::dot_rows(ty, rows, x, prefetch_ahead) },
        #[cfg(target_arch = "x86_64")]
        QdotIsa::Avx2 => unsafe { avx2::dot_rows(ty, rows, x, prefetch_ahead) },
        _ => rows.map(|row| dot_scalar(ty, row, x)),
    }
}

/// The per-block activation scales of 4 tokens side by side, built once per
/// matmul call for [`dot_tokens4`]: `d[i]` = the 4 tokens' `d` of block i.
#[derive(Clone, Debug, Default)]
pub struct Scales4 {
    pub d: Vec<[f32; 4]>,
    pub s: Vec<[f32; 4]>,
}

impl Scales4 {
    pub fn new(x: [&[BlockQ8]; 4]) -> Scales4 {
        let n = x[0].len();
        Scales4 {
            d: (0..n)
                .map(|i| [x[0][i].d, x[1][i].d, x[2][i].d, x[3][i].d])
                .collect(),
            s: (0..n)
                .map(|i| [x[0][i].s, x[1][i].s, x[2][i].s, x[3][i].s])
                .collect(),
        }
    }
}

/// One row · 4 tokens' activations at once: each weight block is unpacked
/// once for the 4 tokens (prefill and batched decode). Per token the
/// arithmetic and its order are exactly [`dot`]'s, so
/// `dot_tokens4(row, x)[t] == dot(row, x[t])` bit for bit (tested): a
/// sequence's result does not depend on what it is batched with.
pub fn dot_tokens4(
    ty: GgmlType,
    row: &[u8],
    x: [&[BlockQ8]; 4],
    scales: &Scales4,
    prefetch_ahead: usize,
) -> [f32; 4] {
    for xt in &x {
        assert_eq!(
            row.len(),
            xt.len() * ty.block_bytes(),
            "dot_tokens4: row of {} bytes for {} blocks of {ty:?}",
            row.len(),
            xt.len()
        );
    }
    assert_eq!(
        scales.d.len(),
        x[0].len(),
        "dot_tokens4: scales for another row length"
    );
    match qdot_isa() {
        // SAFETY: features detected by qdot_isa; sizes checked above.
        #[cfg(target_arch = "x86_64")]
        QdotIsa::Avx512Vnni => unsafe {
            avx512vnni::dot_tokens4(ty, row, x, scales, prefetch_ahead)
        },
        #[cfg(target_arch = "x86_64")]
        QdotIsa::Avx2 => unsafe { avx2::dot_tokens4(ty, row, x, scales, prefetch_ahead) },
        _ => x.map(|xt| dot_scalar(ty, row, xt)),
    }
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

/// Σ of each 4 adjacent u8 weights × i8 activations, as 8 i32 lanes.
macro_rules! u8_i8_sums {
    (false, $w:ident, $q:ident) => {{
        // maddubs: u8 × i8 pairs summed to i16, then pairs of i16 to i32.
        // No saturation: 4-bit weights give at most 2·15·127; for Q8_0,
        // |w| <= 128 and |q| <= 127 give at most 2·128·127 = 32,512 < 32,767.
        let p16 = _mm256_maddubs_epi16($w, $q);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }};
    (true, $w:ident, $q:ident) => {{
        // vpdpbusd: the 4 products summed straight into i32 (no i16 step):
        // the same integers as the pair above, in one instruction.
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), $w, $q)
    }};
}

/// The x86-64 kernels, stamped out once per instruction set: `$features` is
/// what the functions are compiled for, `$vnni` picks the u8×i8 dot product
/// (`vpmaddubsw` + `vpmaddwd`, or AVX-512 VNNI's single `vpdpbusd`). Every
/// other instruction, and so every float operation and its order, is the
/// same in both: the two give bit-identical results (tested).
macro_rules! x86_kernels {
    ($name:ident, $features:literal, $vnni:tt) => {
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod $name {
            use super::BlockQ8;
            use crate::quant::GgmlType;
            use std::arch::x86_64::*;

            /// Σ over 32 lanes of u8 weights × i8 activations, as f32 lanes.
            #[target_feature(enable = $features)]
            fn dot_u8_i8(w: __m256i, q: __m256i) -> __m256 {
                _mm256_cvtepi32_ps(u8_i8_sums!($vnni, w, q))
            }

            #[target_feature(enable = $features)]
            pub fn hsum(v: __m256) -> f32 {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps(v, 1);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }

            /// # Safety
            /// Requires `$features`; every row is `x.len()` blocks of `ty`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_rows<const R: usize>(
                ty: GgmlType,
                rows: [&[u8]; R],
                x: &[BlockQ8],
                prefetch_ahead: usize,
            ) -> [f32; R] {
                // One monomorphized loop per type: no per-block branch on the type.
                unsafe {
                    match ty {
                        GgmlType::Q8_0 => dot_rows_ty::<R, Q8_0>(rows, x, prefetch_ahead),
                        GgmlType::Q4_0 => dot_rows_ty::<R, Q4_0>(rows, x, prefetch_ahead),
                        GgmlType::Q4_1 => dot_rows_ty::<R, Q4_1>(rows, x, prefetch_ahead),
                        other => panic!("dot: {other:?} is not a block-quantized type"),
                    }
                }
            }

            const Q8_0: u8 = 0;
            const Q4_0: u8 = 1;
            const Q4_1: u8 = 2;

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn dot_rows_ty<const R: usize, const TY: u8>(
                rows: [&[u8]; R],
                x: &[BlockQ8],
                prefetch_ahead: usize,
            ) -> [f32; R] {
                let bb = match TY {
                    Q8_0 => 34,
                    Q4_0 => 18,
                    _ => 20,
                };
                let mut acc = [_mm256_setzero_ps(); R];
                // Lane 1 collects Q4_1's m_w·s_x terms in block order (lane 0 is
                // unused), the same sequential sum as the scalar reference.
                let mut acc_m = [_mm_setzero_ps(); R];
                let low_mask = _mm256_set1_epi8(0x0f);
                let eight = _mm256_set1_epi8(8);
                let ptrs = rows.map(<[u8]>::as_ptr);
                for (i, xb) in x.iter().enumerate() {
                    // SAFETY (loads): blocks i of every row lie inside the row (sizes
                    // checked by the caller); q is 32 bytes; [d, s] are adjacent f32s.
                    let q = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
                    let xds = unsafe { _mm_castpd_ps(_mm_load_sd((&raw const xb.d).cast())) };
                    for r in 0..R {
                        let b = unsafe { ptrs[r].add(i * bb) };
                        if prefetch_ahead > 0 {
                            // wrapping_add: the address may lie past the allocation;
                            // prefetch does not dereference it.
                            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(prefetch_ahead).cast());
                        }
                        // [d_w, m_w] (m_w is garbage for Q8_0/Q4_0 and unused).
                        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
                            b.cast::<i32>().read_unaligned()
                        }));
                        let prod = _mm_mul_ps(dm, xds); // [d_w·d_x, m_w·s_x]
                        let scale = _mm256_broadcastss_ps(prod);
                        let sums = match TY {
                            Q8_0 => {
                                let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
                                // maddubs needs an unsigned left operand: use |w| and
                                // move w's sign onto q.
                                dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w))
                            }
                            Q4_0 => {
                                let packed = unsafe { _mm_loadu_si128(b.add(2).cast()) };
                                let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                                // Signed weights w - 8, then the sign trick as for
                                // Q8_0: the integer sums equal the scalar reference's.
                                let ws = _mm256_sub_epi8(_mm256_and_si256(both, low_mask), eight);
                                dot_u8_i8(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(q, ws))
                            }
                            _ => {
                                let packed = unsafe { _mm_loadu_si128(b.add(4).cast()) };
                                // [low nibbles | high nibbles] = weights 0..16 | 16..32,
                                // the same order as the activation block.
                                let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                                acc_m[r] = _mm_add_ps(acc_m[r], prod);
                                dot_u8_i8(_mm256_and_si256(both, low_mask), q)
                            }
                        };
                        acc[r] = _mm256_fmadd_ps(scale, sums, acc[r]);
                    }
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum(acc[r]);
                    if TY == Q4_1 {
                        out[r] += _mm_cvtss_f32(_mm_shuffle_ps(acc_m[r], acc_m[r], 1));
                    }
                }
                out
            }

            /// # Safety
            /// Requires `$features`; sizes as checked by the safe wrapper.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_tokens4(
                ty: GgmlType,
                row: &[u8],
                x: [&[BlockQ8]; 4],
                scales: &super::Scales4,
                prefetch_ahead: usize,
            ) -> [f32; 4] {
                unsafe {
                    match ty {
                        GgmlType::Q8_0 => dot_tokens4_ty::<Q8_0>(row, x, scales, prefetch_ahead),
                        GgmlType::Q4_0 => dot_tokens4_ty::<Q4_0>(row, x, scales, prefetch_ahead),
                        GgmlType::Q4_1 => dot_tokens4_ty::<Q4_1>(row, x, scales, prefetch_ahead),
                        other => panic!("dot: {other:?} is not a block-quantized type"),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn dot_tokens4_ty<const TY: u8>(
                row: &[u8],
                x: [&[BlockQ8]; 4],
                scales: &super::Scales4,
                prefetch_ahead: usize,
            ) -> [f32; 4] {
                let bb = match TY {
                    Q8_0 => 34,
                    Q4_0 => 18,
                    _ => 20,
                };
                let mut acc = [_mm256_setzero_ps(); 4];
                // Lane t: token t's sequential Σ m_w·s_x (Q4_1), as dot_rows' lane 1.
                let mut acc_m = _mm_setzero_ps();
                let low_mask = _mm256_set1_epi8(0x0f);
                let eight = _mm256_set1_epi8(8);
                let p = row.as_ptr();
                for i in 0..scales.d.len() {
                    // SAFETY (loads): block i lies inside the row; scales hold one
                    // entry per block; activation blocks are 32 bytes.
                    let b = unsafe { p.add(i * bb) };
                    if prefetch_ahead > 0 {
                        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(prefetch_ahead).cast());
                    }
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
                        b.cast::<i32>().read_unaligned()
                    }));
                    let dw = _mm_shuffle_ps(dm, dm, 0x00);
                    // [d_w·d_x,t]: the same f32 products dot_rows forms one at a time.
                    let d4 = _mm_mul_ps(dw, unsafe { _mm_loadu_ps(scales.d[i].as_ptr()) });
                    let mut d4a = [0f32; 4];
                    unsafe { _mm_storeu_ps(d4a.as_mut_ptr(), d4) };
                    // The weights, unpacked once for the 4 tokens.
                    let (w_abs, w_sign) = match TY {
                        Q8_0 => {
                            let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
                            (_mm256_sign_epi8(w, w), w)
                        }
                        Q4_0 => {
                            let packed = unsafe { _mm_loadu_si128(b.add(2).cast()) };
                            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                            let ws = _mm256_sub_epi8(_mm256_and_si256(both, low_mask), eight);
                            (_mm256_sign_epi8(ws, ws), ws)
                        }
                        _ => {
                            let packed = unsafe { _mm_loadu_si128(b.add(4).cast()) };
                            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                            let mw = _mm_shuffle_ps(dm, dm, 0x55);
                            let m4 = _mm_mul_ps(mw, unsafe { _mm_loadu_ps(scales.s[i].as_ptr()) });
                            acc_m = _mm_add_ps(acc_m, m4);
                            (_mm256_and_si256(both, low_mask), _mm256_setzero_si256())
                        }
                    };
                    for t in 0..4 {
                        let q =
                            unsafe { _mm256_loadu_si256(x[t].get_unchecked(i).q.as_ptr().cast()) };
                        let sums = if TY == Q4_1 {
                            dot_u8_i8(w_abs, q)
                        } else {
                            dot_u8_i8(w_abs, _mm256_sign_epi8(q, w_sign))
                        };
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d4a[t]), sums, acc[t]);
                    }
                }
                let mut m = [0f32; 4];
                unsafe { _mm_storeu_ps(m.as_mut_ptr(), acc_m) };
                let mut out = [0f32; 4];
                for t in 0..4 {
                    out[t] = hsum(acc[t]);
                    if TY == Q4_1 {
                        out[t] += m[t];
                    }
                }
                out
            }
        }
    };
}

x86_kernels!(avx2, "avx2,fma,f16c", false);
x86_kernels!(
    avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    true
);

/// The activation quantizer's AVX2 kernel (one for every x86 set: it has no
/// integer dot product for VNNI to speed up).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_quantize {
    use super::BlockQ8;
    use std::arch::x86_64::*;

    /// One block of [`super::quantize_q8_into`], as ggml's AVX2
    /// `quantize_row_q8_1` computes it (127/amax, round to nearest even).
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C; `c.len() == 32`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_block(c: &[f32], blk: &mut BlockQ8) {
        let p = c.as_ptr();
        // SAFETY: c holds 32 floats.
        let v = unsafe {
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        };
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut sum = _mm256_setzero_si256();
        let mut ints = [_mm256_setzero_si256(); 4];
        for (k, vi) in v.iter().enumerate() {
            let r = _mm256_round_ps(
                _mm256_mul_ps(*vi, inv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            ints[k] = _mm256_cvtps_epi32(r);
            sum = _mm256_add_epi32(sum, ints[k]);
        }
        // Pack 32 i32 → 32 i8 in order (packs interleave 128-bit lanes; the
        // permute restores element order).
        let a = _mm256_packs_epi32(ints[0], ints[1]);
        let b = _mm256_packs_epi32(ints[2], ints[3]);
        let packed = _mm256_packs_epi16(a, b);
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: q is 32 bytes.
        unsafe { _mm256_storeu_si256(blk.q.as_mut_ptr().cast(), packed) };
        let s128 = _mm_add_epi32(
            _mm256_extracti128_si256(sum, 1),
            _mm256_castsi256_si128(sum),
        );
        let s128 = _mm_hadd_epi32(s128, s128);
        let s128 = _mm_hadd_epi32(s128, s128);
        let isum = _mm_cvtsi128_si32(s128);
        blk.d = half::f16::from_f32(d).to_f32();
        blk.s = half::f16::from_f32(d * isum as f32).to_f32();
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
        /// The AVX2 quantizer is bit-identical to the scalar reference, and
        /// dot_rows is bit-identical to dot row by row.
        #[test]
        fn simd_quantize_and_dot_rows_are_exact(
            x in prop::collection::vec(-50f32..50.0, 32 * 6),
            seed in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let fast = quantize_q8(&x);
            let mut slow = fast.clone();
            quantize_q8_scalar(&x, &mut slow);
            prop_assert_eq!(&fast, &slow);
            for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
                let rows: Vec<Vec<u8>> = (0..3u8)
                    .map(|k| random_row(ty, 6, &[seed.as_slice(), &[k]].concat()))
                    .collect();
                let got = dot_rows(ty, [&rows[0][..], &rows[1][..], &rows[2][..]], &fast);
                for r in 0..3 {
                    prop_assert_eq!(got[r].to_bits(), dot(ty, &rows[r], &fast).to_bits());
                }
            }
        }

        /// Four tokens at once equal one token at a time, bit for bit.
        #[test]
        fn dot_tokens4_equals_dot_per_token(
            x in prop::collection::vec(-20f32..20.0, 32 * 5 * 4),
            seed in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let q: Vec<Vec<BlockQ8>> = x.chunks(32 * 5).map(quantize_q8).collect();
            let xs = [&q[0][..], &q[1][..], &q[2][..], &q[3][..]];
            let scales = Scales4::new(xs);
            for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
                let row = random_row(ty, 5, &seed);
                let got = dot_tokens4(ty, &row, xs, &scales, 0);
                for t in 0..4 {
                    prop_assert_eq!(got[t].to_bits(), dot(ty, &row, xs[t]).to_bits(), "{:?} token {}", ty, t);
                }
            }
        }

        /// The VNNI kernels equal the AVX2 ones bit for bit (one row, three
        /// rows, four tokens), on a CPU that has AVX-512 VNNI. Elsewhere the
        /// dispatcher must not pick them; the comparison is reported skipped.
        #[test]
        fn vnni_kernels_equal_the_avx2_kernels_bit_for_bit(
            x in prop::collection::vec(-30f32..30.0, 32 * 7 * 4),
            seed in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            if detect_isa() != QdotIsa::Avx512Vnni {
                #[cfg(target_arch = "x86_64")]
                prop_assert!(!std::arch::is_x86_feature_detected!("avx512vnni") || !has_avx2());
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("skipped: this CPU has no AVX-512 VNNI (detected {:?})", detect_isa()));
                return Ok(());
            }
            #[cfg(target_arch = "x86_64")]
            {
                let q: Vec<Vec<BlockQ8>> = x.chunks(32 * 7).map(quantize_q8).collect();
                let xs = [&q[0][..], &q[1][..], &q[2][..], &q[3][..]];
                let scales = Scales4::new(xs);
                for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
                    let rows: Vec<Vec<u8>> = (0..3u8)
                        .map(|k| random_row(ty, 7, &[seed.as_slice(), &[k]].concat()))
                        .collect();
                    let rr = [&rows[0][..], &rows[1][..], &rows[2][..]];
                    // SAFETY: AVX-512 VNNI (and AVX2) detected above; sizes match.
                    let (v, a) = unsafe {
                        (avx512vnni::dot_rows(ty, rr, xs[0], 64), avx2::dot_rows(ty, rr, xs[0], 64))
                    };
                    prop_assert_eq!(v.map(f32::to_bits), a.map(f32::to_bits), "{:?} rows", ty);
                    let (v, a) = unsafe {
                        (
                            avx512vnni::dot_tokens4(ty, rr[1], xs, &scales, 0),
                            avx2::dot_tokens4(ty, rr[1], xs, &scales, 0),
                        )
                    };
                    prop_assert_eq!(v.map(f32::to_bits), a.map(f32::to_bits), "{:?} tokens", ty);
                }
            }
        }

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
        /// at most Σ_i |w_i| · 0.57·d_x over each block (see [`quantize_q8`]).
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
                    wb.iter().map(|v| f64::from(v.abs())).sum::<f64>() * f64::from(xb.d) * 0.57
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
