//! Typed launches: each checks its shapes against the buffers (a kernel
//! trusts its arguments), converts sizes to the kernels' `int` with a
//! checked conversion, and picks the launch shape the `.cu` file's comment
//! describes. Shapes are in the argument comments, as in the kernels.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::CudaError;
use super::device::Gpu;
use crate::ops::RopeLayout;
use crate::quant::GgmlType;

/// A weight matrix on the device, in its stored type: (rows, cols).
#[derive(Debug)]
pub struct DeviceMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<u8>,
}

impl DeviceMatrix {
    /// Uploads `bytes`, checking they hold exactly rows × cols of `ty`.
    pub fn upload(
        gpu: &Gpu,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<DeviceMatrix, CudaError> {
        if !cols.is_multiple_of(ty.block_len()) {
            // Whole blocks per row: the kernels address row r at r · row_bytes.
            return Err(shape(
                "upload",
                format!("{cols} columns is not whole {ty:?} blocks"),
            ));
        }
        let want = rows
            .checked_mul(cols)
            .and_then(|n| ty.bytes_for(n))
            .ok_or_else(|| {
                shape(
                    "upload",
                    format!("{rows}x{cols} is not whole {ty:?} blocks"),
                )
            })?;
        if want != bytes.len() {
            return Err(shape(
                "upload",
                format!(
                    "{rows}x{cols} {ty:?} needs {want} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        if ty == GgmlType::BF16 {
            return Err(shape(
                "upload",
                "BF16 matrices are converted to F32 at load".into(),
            ));
        }
        let data = gpu.upload(bytes)?;
        Ok(DeviceMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }
}

/// Which GEMV kernel (gemv.cu explains each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvVariant {
    V1Naive,
    V2WarpPerRow,
    V3SubWarpBlocks,
}

/// Which matmul kernel (matmul.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    V1Naive,
    V2Tiled,
}

/// Most vectors one GEMV launch takes (`GEMV_MAX_VECS` in gemv.cu).
pub const GEMV_MAX_VECS: usize = 8;
/// Attention kernels' limits (paged_attention.cu, flash_attention.cu).
pub const ATTN_MAX_HEAD_DIM: usize = 128;
pub const ATTN_MAX_GROUP: usize = 8;

fn shape(op: &'static str, detail: String) -> CudaError {
    CudaError::Shape { op, detail }
}

fn int(op: &'static str, what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| shape(op, format!("{what} = {v} exceeds the kernels' int range")))
}

fn need(op: &'static str, what: &str, have: usize, want: usize) -> Result<(), CudaError> {
    if have < want {
        return Err(shape(
            op,
            format!("{what} holds {have} elements, needs {want}"),
        ));
    }
    Ok(())
}

/// Grid for a grid-stride loop over `n` elements, 256 threads a block.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launched<T>(
    op: &'static str,
    r: Result<T, cudarc::driver::DriverError>,
) -> Result<(), CudaError> {
    r.map(|_| ())
        .map_err(|e| CudaError::driver(format!("launching {op}"), e))
}

impl Gpu {
    /// y += x.   y, x: (n,)
    pub fn add_inplace(&self, y: &mut CudaSlice<f32>, x: &CudaSlice<f32>) -> Result<(), CudaError> {
        let n = y.len();
        need("add_inplace", "x", x.len(), n)?;
        let f = self.function("add_inplace")?;
        let ni = int("add_inplace", "n", n)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(y).arg(x).arg(&ni);
        // SAFETY: y and x hold n floats (checked); the kernel touches [0, n).
        launched("add_inplace", unsafe { b.launch(elementwise(n)) })
    }

    /// out = silu(gate) ⊙ up.   gate, up, out: (n,)
    pub fn silu_mul(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        need("silu_mul", "gate", gate.len(), n)?;
        need("silu_mul", "up", up.len(), n)?;
        need("silu_mul", "out", out.len(), n)?;
        let f = self.function("silu_mul")?;
        let ni = int("silu_mul", "n", n)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate).arg(up).arg(out).arg(&ni);
        // SAFETY: every buffer holds n floats (checked).
        launched("silu_mul", unsafe { b.launch(elementwise(n)) })
    }

    /// out = rms_norm(x) ⊙ w per row; rstd (rows,) kept when given.
    /// x, out: (rows, dim)   w: (dim,)
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rstd: Option<&mut CudaSlice<f32>>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let n = rows
            .checked_mul(dim)
            .ok_or_else(|| shape("rmsnorm", "rows × dim overflows".into()))?;
        need("rmsnorm", "x", x.len(), n)?;
        need("rmsnorm", "out", out.len(), n)?;
        need("rmsnorm", "w", w.len(), dim)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("rmsnorm_fwd")?;
        let di = int("rmsnorm", "dim", dim)?;
        let cfg = LaunchConfig {
            grid_dim: (int("rmsnorm", "rows", rows)? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(w).arg(out);
        match rstd {
            Some(r) => {
                need("rmsnorm", "rstd", r.len(), rows)?;
                b.arg(r);
            }
            None => {
                b.arg(&null);
            }
        }
        b.arg(&di).arg(&eps);
        // SAFETY: shapes checked above; a null rstd is skipped by the kernel.
        launched("rmsnorm_fwd", unsafe { b.launch(cfg) })
    }

    /// The backward: dx written, dw accumulated.
    /// dx, dy, x: (rows, dim)   dw, w: (dim,)   rstd: (rows,)
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_bwd(
        &self,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        let n = rows
            .checked_mul(dim)
            .ok_or_else(|| shape("rmsnorm_bwd", "rows × dim overflows".into()))?;
        for (what, len) in [("dx", dx.len()), ("dy", dy.len()), ("x", x.len())] {
            need("rmsnorm_bwd", what, len, n)?;
        }
        need("rmsnorm_bwd", "dw", dw.len(), dim)?;
        need("rmsnorm_bwd", "w", w.len(), dim)?;
        need("rmsnorm_bwd", "rstd", rstd.len(), rows)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("rmsnorm_bwd")?;
        let di = int("rmsnorm_bwd", "dim", dim)?;
        let cfg = LaunchConfig {
            grid_dim: (int("rmsnorm_bwd", "rows", rows)? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(dx).arg(dw).arg(dy).arg(x).arg(w).arg(rstd).arg(&di);
        // SAFETY: shapes checked above.
        launched("rmsnorm_bwd", unsafe { b.launch(cfg) })
    }

    /// RoPE in place.   x: (n_tokens, n_heads, head_dim)   pos: (n_tokens,)
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        pos: &CudaSlice<i32>,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        base: f32,
        layout: RopeLayout,
    ) -> Result<(), CudaError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(shape("rope", format!("head_dim {head_dim} must be even")));
        }
        let n = n_tokens
            .checked_mul(n_heads)
            .and_then(|v| v.checked_mul(head_dim))
            .ok_or_else(|| shape("rope", "size overflows".into()))?;
        need("rope", "x", x.len(), n)?;
        need("rope", "pos", pos.len(), n_tokens)?;
        let f = self.function("rope")?;
        let (t, h, d) = (
            int("rope", "n_tokens", n_tokens)?,
            int("rope", "n_heads", n_heads)?,
            int("rope", "head_dim", head_dim)?,
        );
        let inter = i32::from(layout == RopeLayout::Interleaved);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(pos)
            .arg(&t)
            .arg(&h)
            .arg(&d)
            .arg(&base)
            .arg(&inter);
        // SAFETY: shapes checked above.
        launched("rope", unsafe { b.launch(elementwise(n / 2)) })
    }

    /// out[t] = table[tokens[t]].   tokens: (n,)   out: (n, table.cols)
    pub fn embedding(
        &self,
        table: &DeviceMatrix,
        tokens: &CudaSlice<u32>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        need("embedding", "tokens", tokens.len(), n)?;
        need("embedding", "out", out.len(), n.saturating_mul(table.cols))?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("embedding")?;
        let ty = table.ty.id() as i32;
        let (dim, vocab) = (
            int("embedding", "dim", table.cols)?,
            int("embedding", "vocab", table.rows)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (int("embedding", "n", n)? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&table.data)
            .arg(&ty)
            .arg(tokens)
            .arg(out)
            .arg(&dim)
            .arg(&vocab);
        // SAFETY: shapes checked; out-of-range ids are caught in the kernel.
        launched("embedding", unsafe { b.launch(cfg) })
    }

    /// Index of each row's maximum.   logits: (rows, n)   out: (rows,)
    pub fn argmax(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        n: usize,
        out: &mut CudaSlice<u32>,
    ) -> Result<(), CudaError> {
        need("argmax", "logits", logits.len(), rows.saturating_mul(n))?;
        need("argmax", "out", out.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("argmax")?;
        let ni = int("argmax", "n", n)?;
        let cfg = LaunchConfig {
            grid_dim: (int("argmax", "rows", rows)? as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits).arg(&ni).arg(out);
        // SAFETY: shapes checked above.
        launched("argmax", unsafe { b.launch(cfg) })
    }

    /// y = W·x for `n_vecs` vectors.   x: (n_vecs, cols)   y: (n_vecs, rows)
    /// v1 and v2 take one vector; v3 up to [`GEMV_MAX_VECS`].
    pub fn gemv(
        &self,
        variant: GemvVariant,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n_vecs: usize,
    ) -> Result<(), CudaError> {
        // v3 and the F32 kernel (any variant but v1) take several vectors.
        let multi = variant == GemvVariant::V3SubWarpBlocks
            || (w.ty == GgmlType::F32 && variant != GemvVariant::V1Naive);
        let max = if multi { GEMV_MAX_VECS } else { 1 };
        if n_vecs == 0 || n_vecs > max {
            return Err(shape(
                "gemv",
                format!("{n_vecs} vectors; {variant:?} takes 1..={max}"),
            ));
        }
        if w.ty == GgmlType::F16 && variant != GemvVariant::V1Naive {
            return Err(shape("gemv", "F16 weights only have the naive GEMV".into()));
        }
        need("gemv", "x", x.len(), n_vecs.saturating_mul(w.cols))?;
        need("gemv", "y", y.len(), n_vecs.saturating_mul(w.rows))?;
        if w.rows == 0 {
            return Ok(());
        }
        let (rows, cols, nv) = (
            int("gemv", "rows", w.rows)?,
            int("gemv", "cols", w.cols)?,
            n_vecs as i32,
        );
        let ty = w.ty.id() as i32;
        let warp_rows = LaunchConfig {
            grid_dim: (w.rows.div_ceil(4) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        if w.ty == GgmlType::F32 && variant != GemvVariant::V1Naive {
            if !w.cols.is_multiple_of(4) {
                return Err(shape(
                    "gemv",
                    format!("F32 cols {} must be a multiple of 4", w.cols),
                ));
            }
            let f = self.function("gemv_f32")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&w.data).arg(x).arg(y).arg(&rows).arg(&cols).arg(&nv);
            // SAFETY: shapes checked above.
            return launched("gemv_f32", unsafe { b.launch(warp_rows) });
        }
        let (entry, cfg) = match variant {
            GemvVariant::V1Naive => (
                "gemv_v1",
                LaunchConfig {
                    grid_dim: (w.rows.div_ceil(128) as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
            GemvVariant::V2WarpPerRow => ("gemv_v2", warp_rows),
            GemvVariant::V3SubWarpBlocks => ("gemv_v3", warp_rows),
        };
        let f = self.function(entry)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&w.data).arg(&ty).arg(x).arg(y).arg(&rows).arg(&cols);
        if variant == GemvVariant::V3SubWarpBlocks {
            b.arg(&nv);
        }
        // SAFETY: shapes checked above; the matrix was size-checked at upload.
        launched(entry, unsafe { b.launch(cfg) })
    }

    /// Y = X·Wᵀ.   x: (n, cols)   y: (n, rows)
    pub fn matmul(
        &self,
        variant: MatmulVariant,
        x: &CudaSlice<f32>,
        w: &DeviceMatrix,
        y: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        need("matmul", "x", x.len(), n.saturating_mul(w.cols))?;
        need("matmul", "y", y.len(), n.saturating_mul(w.rows))?;
        if n == 0 || w.rows == 0 {
            return Ok(());
        }
        if variant == MatmulVariant::V1Naive && n > 65_535 {
            return Err(shape(
                "matmul",
                format!("v1 launches one grid row per token: {n} > 65535"),
            ));
        }
        if variant == MatmulVariant::V2Tiled && !w.cols.is_multiple_of(32) {
            return Err(shape(
                "matmul",
                format!("cols {} must be a multiple of 32", w.cols),
            ));
        }
        let (ni, rows, cols) = (
            int("matmul", "n", n)?,
            int("matmul", "rows", w.rows)?,
            int("matmul", "cols", w.cols)?,
        );
        let ty = w.ty.id() as i32;
        let (entry, cfg) = match variant {
            MatmulVariant::V1Naive => (
                "matmul_v1",
                LaunchConfig {
                    grid_dim: (w.rows.div_ceil(128) as u32, ni as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
            MatmulVariant::V2Tiled => (
                "matmul_v2",
                LaunchConfig {
                    grid_dim: (w.rows.div_ceil(64) as u32, n.div_ceil(64) as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
        };
        let f = self.function(entry)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(&w.data)
            .arg(&ty)
            .arg(y)
            .arg(&ni)
            .arg(&rows)
            .arg(&cols);
        // SAFETY: shapes checked above.
        launched(entry, unsafe { b.launch(cfg) })
    }

    /// Writes k, v into the cache slots.   k, v: (n, kv_dim)   slots: (n,)
    /// caches: (n_slots, kv_dim) f16
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        slots: &CudaSlice<i32>,
        k_cache: &mut CudaSlice<u16>,
        v_cache: &mut CudaSlice<u16>,
        n: usize,
        kv_dim: usize,
    ) -> Result<(), CudaError> {
        let total = n.saturating_mul(kv_dim);
        need("kv_write", "k", k.len(), total)?;
        need("kv_write", "v", v.len(), total)?;
        need("kv_write", "slots", slots.len(), n)?;
        if k_cache.len() != v_cache.len() || !k_cache.len().is_multiple_of(kv_dim.max(1)) {
            return Err(shape(
                "kv_write",
                "caches differ or are not whole rows".into(),
            ));
        }
        let f = self.function("kv_write")?;
        let (ni, di) = (int("kv_write", "n", n)?, int("kv_write", "kv_dim", kv_dim)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(k)
            .arg(v)
            .arg(slots)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&ni)
            .arg(&di);
        // SAFETY: buffers checked; slot values are the host allocator's, each
        // below n_slots (the engine's block table invariant).
        launched("kv_write", unsafe { b.launch(elementwise(total)) })
    }

    /// Decode attention, one query token per sequence, over the paged cache.
    pub fn paged_attention_decode(&self, a: PagedAttention<'_>) -> Result<(), CudaError> {
        let s = &a.shape;
        s.check("paged_attention_decode")?;
        let n_seqs = a.seq_lens.len();
        need(
            "paged_attention_decode",
            "q",
            a.q.len(),
            n_seqs * s.n_heads * s.head_dim,
        )?;
        need(
            "paged_attention_decode",
            "out",
            a.out.len(),
            n_seqs * s.n_heads * s.head_dim,
        )?;
        need(
            "paged_attention_decode",
            "block_tables",
            a.block_tables.len(),
            n_seqs * a.max_blocks,
        )?;
        need(
            "paged_attention_decode",
            "seq_lens_dev",
            a.seq_lens_dev.len(),
            n_seqs,
        )?;
        if n_seqs == 0 {
            return Ok(());
        }
        let f = self.function("paged_attention_decode")?;
        let (h, kvh, d, bs, mb) = s.ints(a.max_blocks)?;
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (
                s.n_kv_heads as u32,
                int("paged_attention_decode", "n_seqs", n_seqs)? as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(a.q)
            .arg(a.k_cache)
            .arg(a.v_cache)
            .arg(a.block_tables)
            .arg(a.seq_lens_dev)
            .arg(a.out);
        b.arg(&h).arg(&kvh).arg(&d).arg(&bs).arg(&mb).arg(&scale);
        // SAFETY: shapes checked; every seq_len is >= 1 and within its table
        // (PagedAttention::seq_lens is the host copy checked here).
        for &len in a.seq_lens {
            if len == 0 || len > a.max_blocks * s.block_size {
                return Err(shape(
                    "paged_attention_decode",
                    format!("seq_len {len} outside 1..={}", a.max_blocks * s.block_size),
                ));
            }
        }
        launched("paged_attention_decode", unsafe { b.launch(cfg) })
    }

    /// Causal prefill attention of one sequence's `n_q` new tokens at
    /// positions start.., over the paged cache (their keys already written).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_prefill(
        &self,
        shape_: &AttnShape,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        table: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        n_q: usize,
        start: usize,
    ) -> Result<(), CudaError> {
        let s = shape_;
        s.check("flash_attention_prefill")?;
        if n_q == 0 {
            return Ok(());
        }
        let n = n_q.saturating_mul(s.n_heads * s.head_dim);
        need("flash_attention_prefill", "q", q.len(), n)?;
        need("flash_attention_prefill", "out", out.len(), n)?;
        let last = start.saturating_add(n_q);
        need(
            "flash_attention_prefill",
            "table",
            table.len() * s.block_size,
            last,
        )?;
        let f = self.function("flash_attention_prefill")?;
        let (h, kvh, d, bs, _) = s.ints(0)?;
        let (nq, st) = (
            int("flash_attention_prefill", "n_q", n_q)?,
            int("flash_attention_prefill", "start", start)?,
        );
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (n_q.div_ceil(16) as u32, s.n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(table)
            .arg(out)
            .arg(&nq)
            .arg(&st);
        b.arg(&h).arg(&kvh).arg(&d).arg(&bs).arg(&scale);
        // SAFETY: shapes checked above.
        launched("flash_attention_prefill", unsafe { b.launch(cfg) })
    }

    /// Cross-entropy loss and dlogits in place.
    /// logits: (n, vocab) → dlogits   targets, losses: (n,)
    pub fn cross_entropy(
        &self,
        logits: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        losses: &mut CudaSlice<f32>,
        n: usize,
        vocab: usize,
        scale: f32,
    ) -> Result<(), CudaError> {
        need(
            "cross_entropy",
            "logits",
            logits.len(),
            n.saturating_mul(vocab),
        )?;
        need("cross_entropy", "targets", targets.len(), n)?;
        need("cross_entropy", "losses", losses.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("cross_entropy_fwd_bwd")?;
        let v = int("cross_entropy", "vocab", vocab)?;
        let cfg = LaunchConfig {
            grid_dim: (int("cross_entropy", "n", n)? as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits).arg(targets).arg(losses).arg(&v).arg(&scale);
        // SAFETY: shapes checked; targets below vocab is the caller's data
        // invariant (the trainer's token ids), as on the CPU.
        launched("cross_entropy", unsafe { b.launch(cfg) })
    }

    /// One AdamW step over (n,) parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        h: &AdamWStep,
    ) -> Result<(), CudaError> {
        let n = p.len();
        for (what, len) in [("g", g.len()), ("m", m.len()), ("v", v.len())] {
            need("adamw", what, len, n)?;
        }
        let f = self.function("adamw")?;
        let nn = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(p).arg(g).arg(m).arg(v).arg(&nn);
        b.arg(&h.lr)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&h.weight_decay);
        b.arg(&h.bc1).arg(&h.bc2).arg(&h.grad_scale);
        // SAFETY: shapes checked above.
        launched("adamw", unsafe { b.launch(elementwise(n)) })
    }
}

/// The attention shapes and the cache's paging.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per cache block.
    pub block_size: usize,
}

impl AttnShape {
    /// Whether the attention kernels take this shape (an engine checks when
    /// it loads a model; every attention launch checks again).
    pub fn check(&self, op: &'static str) -> Result<(), CudaError> {
        let ok = self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && self.n_heads / self.n_kv_heads <= ATTN_MAX_GROUP
            && self.head_dim.is_multiple_of(32)
            && (32..=ATTN_MAX_HEAD_DIM).contains(&self.head_dim)
            && self.block_size > 0;
        if ok {
            Ok(())
        } else {
            Err(shape(
                op,
                format!(
                    "{self:?}: needs n_heads a multiple of n_kv_heads with a group of at most {ATTN_MAX_GROUP}, head_dim a multiple of 32 up to {ATTN_MAX_HEAD_DIM}, block_size > 0"
                ),
            ))
        }
    }

    fn ints(&self, max_blocks: usize) -> Result<(i32, i32, i32, i32, i32), CudaError> {
        let op = "attention";
        Ok((
            int(op, "n_heads", self.n_heads)?,
            int(op, "n_kv_heads", self.n_kv_heads)?,
            int(op, "head_dim", self.head_dim)?,
            int(op, "block_size", self.block_size)?,
            int(op, "max_blocks", max_blocks)?,
        ))
    }
}

/// Arguments of [`Gpu::paged_attention_decode`].
#[derive(Debug)]
pub struct PagedAttention<'a> {
    pub shape: AttnShape,
    /// q: (n_seqs, n_heads, head_dim)
    pub q: &'a CudaSlice<f32>,
    /// (n_slots, n_kv_heads · head_dim) f16, one layer
    pub k_cache: &'a CudaSlice<u16>,
    pub v_cache: &'a CudaSlice<u16>,
    /// (n_seqs, max_blocks)
    pub block_tables: &'a CudaSlice<i32>,
    pub max_blocks: usize,
    /// (n_seqs,) on the host (checked) and on the device (read by the kernel)
    pub seq_lens: &'a [usize],
    pub seq_lens_dev: &'a CudaSlice<i32>,
    /// out: (n_seqs, n_heads, head_dim)
    pub out: &'a mut CudaSlice<f32>,
}

/// One AdamW step's scalars (bias corrections precomputed on the host).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 − β1^t and 1 − β2^t.
    pub bc1: f32,
    pub bc2: f32,
    pub grad_scale: f32,
}
