//! Matrix products for the forward pass: weights (rows = output features,
//! each row one contiguous run of blocks) times a batch of activation rows,
//! split across threads by output rows.
//!
//! ```text
//! out[t, r] = Σ_c w[r, c] · x[t, c]        w: (rows, cols)  x: (n_tokens, cols)  out: (n_tokens, rows)
//! ```
//!
//! Quantized weights (Q8_0, Q4_0, Q4_1) meet activations quantized to 8 bits
//! once per call ([`Activations::new`]), as llama.cpp does; f32 weights meet
//! the f32 activations directly.
//!
//! Tokens go 4 at a time through [`qdot::dot_tokens4`] (each weight block
//! unpacked once for 4 tokens), the rest one at a time through
//! [`qdot::dot_rows`] (4 rows share an activation load); both give the same
//! bits per (row, token), so results do not depend on the batch.
//!
//! Threading: rayon splits the output rows into chunks of [`ROW_CHUNK`] (all
//! matrices of one call together, so Q, K and V, or gate and up, share one
//! parallel region and one join). Within a chunk the loop runs token by token
//! over the chunk's rows: the chunk's weights (16 rows of at most 1 KiB here)
//! stay in L1 while the activations stream past them, so each weight byte is
//! read from memory once per call. Decode (one token) is a memory-bound
//! matrix-vector product; prefill reuses each weight row across all tokens.

use rayon::prelude::*;

use crate::qdot::{self, BlockQ8};
use crate::quant::{GgmlType, QK};
use crate::vec;

/// Output rows per parallel task.
pub const ROW_CHUNK: usize = 16;

/// How far ahead (in rows) the quantized kernels prefetch weights.
pub const PREFETCH_ROWS: usize = 8;

/// A weight matrix view: `rows` rows of `cols` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Weights<'a> {
    /// Checks the byte length against the shape and the type's support.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Weights<'a> {
        assert!(
            matches!(
                ty,
                GgmlType::F32 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
            ),
            "matmul: {ty:?} weights are converted to f32 at load time"
        );
        assert!(
            ty == GgmlType::F32 || cols.is_multiple_of(QK),
            "matmul: {cols} columns is not whole {ty:?} blocks"
        );
        let row_bytes = ty.bytes_for(cols).expect("row bytes");
        assert_eq!(
            data.len(),
            rows * row_bytes,
            "matmul: {rows}x{cols} {ty:?} needs {} bytes, got {}",
            rows * row_bytes,
            data.len()
        );
        Weights {
            ty,
            rows,
            cols,
            data,
        }
    }

    fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// A batch of activation rows, with their 8-bit quantization when needed.
#[derive(Debug)]
pub struct Activations<'a> {
    pub n_tokens: usize,
    pub cols: usize,
    /// x: (n_tokens, cols)
    pub f32: &'a [f32],
    /// (n_tokens, cols / 32); empty when no quantized weight will read it.
    pub q8: &'a [BlockQ8],
}

impl<'a> Activations<'a> {
    /// Quantizes `x` into `q8_buf` (resized as needed) when `quantize` is set.
    pub fn new(
        x: &'a [f32],
        n_tokens: usize,
        quantize: bool,
        q8_buf: &'a mut Vec<BlockQ8>,
    ) -> Activations<'a> {
        assert!(
            n_tokens > 0 && x.len().is_multiple_of(n_tokens),
            "activations: {} values for {n_tokens} tokens",
            x.len()
        );
        let cols = x.len() / n_tokens;
        if quantize {
            q8_buf.resize(
                x.len() / QK,
                BlockQ8 {
                    d: 0.0,
                    s: 0.0,
                    q: [0; QK],
                },
            );
            // Rows are independent: quantize them in parallel for prefill.
            let blocks_per_row = cols / QK;
            if n_tokens > 1 {
                q8_buf
                    .par_chunks_mut(blocks_per_row)
                    .zip(x.par_chunks(cols))
                    .for_each(|(q, xr)| qdot::quantize_q8_into(xr, q));
            } else {
                qdot::quantize_q8_into(x, q8_buf);
            }
        }
        Activations {
            n_tokens,
            cols,
            f32: x,
            q8: if quantize { q8_buf } else { &[] },
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, row) elements (each task owns a row
// range of one matrix), and the parent waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Runs `out_j = x · w_jᵀ` for every (w_j, out_j) in one parallel region.
///
/// out_j: (n_tokens, w_j.rows)
pub fn matmul(jobs: &mut [(Weights<'_>, &mut [f32])], x: &Activations<'_>) {
    let mut tasks = Vec::new();
    let mut ptrs = Vec::with_capacity(jobs.len());
    for (j, (w, out)) in jobs.iter_mut().enumerate() {
        assert_eq!(
            w.cols, x.cols,
            "matmul: weights have {} columns, activations {}",
            w.cols, x.cols
        );
        assert_eq!(
            out.len(),
            x.n_tokens * w.rows,
            "matmul: out holds {}, need {} tokens x {} rows",
            out.len(),
            x.n_tokens,
            w.rows
        );
        assert!(
            w.ty == GgmlType::F32 || x.q8.len() * QK == x.f32.len(),
            "matmul: {:?} weights need quantized activations",
            w.ty
        );
        ptrs.push(OutPtr(out.as_mut_ptr()));
        tasks.extend((0..w.rows).step_by(ROW_CHUNK).map(|r0| (j, r0)));
    }
    let jobs = &*jobs;
    let ptrs = &ptrs;
    // Groups of 4 tokens share each unpacked weight block (prefill, batched
    // decode); their activation scales are laid out side by side once here.
    let blocks = x.cols / QK;
    let groups: Vec<qdot::Scales4> = if x.q8.is_empty() {
        Vec::new()
    } else {
        (0..x.n_tokens / 4)
            .map(|g| {
                let t = |k: usize| &x.q8[(4 * g + k) * blocks..(4 * g + k + 1) * blocks];
                qdot::Scales4::new([t(0), t(1), t(2), t(3)])
            })
            .collect()
    };
    let groups = &groups;
    let run = |&(j, r0): &(usize, usize)| {
        let w = &jobs[j].0;
        let out = ptrs[j];
        let r1 = (r0 + ROW_CHUNK).min(w.rows);
        let tiled = if w.ty == GgmlType::F32 {
            0
        } else {
            groups.len()
        };
        for (g, scales) in groups.iter().enumerate().take(tiled) {
            let t0 = 4 * g;
            let xt = |k: usize| &x.q8[(t0 + k) * blocks..(t0 + k + 1) * blocks];
            let ahead = if g == 0 {
                PREFETCH_ROWS * w.row_bytes()
            } else {
                0
            };
            for r in r0..r1 {
                let v =
                    qdot::dot_tokens4(w.ty, w.row(r), [xt(0), xt(1), xt(2), xt(3)], scales, ahead);
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: (t0 + k, r) lies in out_j and only this task
                    // writes rows r0..r1 of it.
                    unsafe { *out.0.add((t0 + k) * w.rows + r) = v };
                }
            }
        }
        for t in 4 * tiled..x.n_tokens {
            // SAFETY (writes): (t, r) lies in out_j (n_tokens x rows, checked
            // above) and only this task writes rows r0..r1 of out_j.
            let put = |r: usize, v: f32| unsafe { *out.0.add(t * w.rows + r) = v };
            if w.ty == GgmlType::F32 {
                let xt = &x.f32[t * x.cols..(t + 1) * x.cols];
                for r in r0..r1 {
                    // SAFETY: f32 rows are whole floats; align_to returns
                    // everything in the middle part for aligned data (GGUF
                    // tensors and owned Vec<f32> buffers are 4-byte aligned).
                    let (pre, row, post) = unsafe { w.row(r).align_to::<f32>() };
                    assert!(
                        pre.is_empty() && post.is_empty(),
                        "f32 weights are not 4-byte aligned"
                    );
                    put(r, vec::dot(row, xt));
                }
                continue;
            }
            let xt = &x.q8[t * blocks..(t + 1) * blocks];
            // Four rows at a time share each activation block load; the rows
            // PREFETCH_ROWS ahead are prefetched meanwhile (first token only:
            // later tokens find the chunk in cache).
            let ahead = if t == 0 {
                PREFETCH_ROWS * w.row_bytes()
            } else {
                0
            };
            let mut r = r0;
            while r + 4 <= r1 {
                let v = qdot::dot_rows_prefetch(
                    w.ty,
                    [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)],
                    xt,
                    ahead,
                );
                for (k, v) in v.into_iter().enumerate() {
                    put(r + k, v);
                }
                r += 4;
            }
            for r in r..r1 {
                put(r, qdot::dot(w.ty, w.row(r), xt));
            }
        }
    };
    if tasks.len() == 1 || rayon::current_num_threads() == 1 {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
}

/// Reference: dequantize every row and take f64 dot products with the
/// unquantized activations. `matmul` differs from it by the activation
/// rounding (see [`qdot::quantize_q8`]) plus f32 summation order.
pub fn matmul_ref(w: &Weights<'_>, x: &[f32], n_tokens: usize) -> Vec<f32> {
    let mut row = vec![0f32; w.cols];
    let mut out = vec![0f32; n_tokens * w.rows];
    for r in 0..w.rows {
        crate::quant::dequantize(w.ty, w.row(r), &mut row).expect("dequantize row");
        for t in 0..n_tokens {
            out[t * w.rows + r] = vec::dot_ref(&row, &x[t * w.cols..(t + 1) * w.cols]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        if ty == GgmlType::F32 {
            return (0..rows * cols)
                .flat_map(|_| ((next() % 2000) as f32 / 1000.0 - 1.0).to_le_bytes())
                .collect();
        }
        let bb = ty.block_bytes();
        let mut data: Vec<u8> = (0..rows * cols / QK * bb).map(|_| next() as u8).collect();
        for b in data.chunks_exact_mut(bb) {
            let d = half::f16::from_f32(0.002 + (next() % 100) as f32 * 1e-4);
            b[0..2].copy_from_slice(&d.to_le_bytes());
            if ty == GgmlType::Q4_1 {
                let m = half::f16::from_f32(-0.01 * (next() % 5) as f32);
                b[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        data
    }

    /// Every type, a ragged last chunk, several tokens and two matrices in one
    /// call: each output is within the activation-rounding bound of the f64
    /// reference (Σ|w|·0.57·d_x per block, plus 1e-5 relative for f32 sums).
    #[test]
    fn matmul_matches_the_dequantized_reference_within_the_rounding_bound() {
        let (cols, n_tokens) = (96, 5);
        let x: Vec<f32> = (0..n_tokens * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        for ty in [
            GgmlType::F32,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let (a_rows, b_rows) = (37, 20);
            let (a, b) = (
                random_matrix(ty, a_rows, cols, 1),
                random_matrix(ty, b_rows, cols, 2),
            );
            let (wa, wb) = (
                Weights::new(ty, a_rows, cols, &a),
                Weights::new(ty, b_rows, cols, &b),
            );
            let mut q8 = Vec::new();
            let acts = Activations::new(&x, n_tokens, ty != GgmlType::F32, &mut q8);
            let (mut oa, mut ob) = (vec![0f32; n_tokens * a_rows], vec![0f32; n_tokens * b_rows]);
            matmul(&mut [(wa, &mut oa[..]), (wb, &mut ob[..])], &acts);
            for (w, out) in [(wa, &oa), (wb, &ob)] {
                let want = matmul_ref(&w, &x, n_tokens);
                let mut row = vec![0f32; cols];
                for t in 0..n_tokens {
                    for r in 0..w.rows {
                        dequantize(ty, w.row(r), &mut row).expect("row");
                        let abs: f32 = row.iter().map(|v| v.abs()).sum();
                        let d_max = if ty == GgmlType::F32 {
                            0.0
                        } else {
                            acts.q8[t * cols / QK..(t + 1) * cols / QK]
                                .iter()
                                .fold(0f32, |m, b| m.max(b.d))
                        };
                        let bound = abs * 0.57 * d_max + 1e-5 * abs * 10.0 + 1e-5;
                        let (got, exp) = (out[t * w.rows + r], want[t * w.rows + r]);
                        assert!(
                            (got - exp).abs() <= bound,
                            "{ty:?} t={t} r={r}: {got} vs {exp} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_single_thread_pool_gives_the_same_bits() {
        let (rows, cols) = (50, 64);
        let w = random_matrix(GgmlType::Q4_1, rows, cols, 9);
        let w = Weights::new(GgmlType::Q4_1, rows, cols, &w);
        let x: Vec<f32> = (0..2 * cols).map(|i| (i as f32).cos()).collect();
        let mut q8 = Vec::new();
        let acts = Activations::new(&x, 2, true, &mut q8);
        let mut many = vec![0f32; 2 * rows];
        matmul(&mut [(w, &mut many[..])], &acts);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let mut one = vec![0f32; 2 * rows];
        pool.install(|| matmul(&mut [(w, &mut one[..])], &acts));
        assert_eq!(many, one);
    }
}
