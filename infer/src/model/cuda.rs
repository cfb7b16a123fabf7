//! The forward pass on an NVIDIA GPU: the same Llama block as
//! [`super::forward`], each step one CUDA kernel from `kernels::cuda`, the
//! weights uploaded once in their stored (quantized) types, and the KV cache
//! in device memory, paged as the kernels expect (`block_size` positions per
//! block; one sequence here, so its block table is the identity).
//!
//! ```text
//! tokens (n,) ─ embedding ─ x (n, d_model)
//! per layer:  rmsnorm → h;  q,k,v = proj(h);  rope(q, k);  kv_write(k, v)
//!             att = n == 1 ? paged_attention_decode : flash_attention_prefill
//!             x += proj_o(att);  h = rmsnorm(x);  x += proj_down(silu(proj_gate h) ⊙ proj_up h)
//! logits = head(rmsnorm(x[n-1]))   copied back (vocab,) for the host's sampler
//! ```
//! `proj` is the GEMV (v3) for up to 8 token rows (decode) and the tiled
//! matmul beyond (prefill).
//!
//! Numerics differ from the CPU engine's in two known ways, so greedy tokens
//! agree except at near-ties: activations stay f32 into the weight products
//! (the CPU quantizes them to 8 bits, as llama.cpp does), and the query and
//! softmax weights are not rounded to f16 (the CPU rounds them to match
//! llama.cpp's CPU path).
//!
//! Decode steps run as one CUDA graph: at batch 1 a 135M model is
//! launch-bound (30 layers × 16 kernels, each a few microseconds of work),
//! so the second decode step records the whole step once (stream capture)
//! and every later step replays it with one launch. The graph reads the
//! token, its position and the sequence length from small device buffers
//! that each step overwrites before the replay, which is why every kernel
//! takes positions and lengths from device memory rather than as
//! arguments. `MLSTACK_CUDA_GRAPHS=0` turns replay off (to measure it).
//!
//! Not yet here: batching several sequences (the serving engine's
//! continuous batching runs on the CPU), sampling on the device (greedy
//! could use the `argmax` kernel and copy 4 bytes back instead of the
//! logits).

use std::sync::Arc;

use cudarc::driver::{CudaGraph, CudaSlice, sys as drv};
use kernels::cuda::ops::{
    AttnShape, DeviceMatrix, GEMV_MAX_VECS, GemvVariant, MatmulVariant, PagedAttention,
};
use kernels::cuda::{CudaError, Gpu};
use kernels::quant::GgmlType;

use super::{Matrix, Model, ModelError};

/// Positions per cache block.
pub const BLOCK_SIZE: usize = 16;

struct Layer {
    attn_norm: CudaSlice<f32>,
    wq: DeviceMatrix,
    wk: DeviceMatrix,
    wv: DeviceMatrix,
    wo: DeviceMatrix,
    ffn_norm: CudaSlice<f32>,
    w_gate: DeviceMatrix,
    w_up: DeviceMatrix,
    w_down: DeviceMatrix,
}

/// A model's weights on a GPU.
pub struct CudaModel {
    gpu: Arc<Gpu>,
    config: super::Config,
    embed: DeviceMatrix,
    layers: Vec<Layer>,
    norm: CudaSlice<f32>,
    /// None: tied to the embedding.
    output: Option<DeviceMatrix>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaModel({:?}, {} layers)", self.gpu, self.layers.len())
    }
}

fn upload(gpu: &Gpu, m: &Matrix) -> Result<DeviceMatrix, CudaError> {
    DeviceMatrix::upload(gpu, m.ty, m.rows, m.cols, m.bytes())
}

impl CudaModel {
    /// Uploads `model`'s weights to `gpu`, checking first that the kernels
    /// take its shapes.
    pub fn upload(model: &Model, gpu: Arc<Gpu>) -> Result<CudaModel, ModelError> {
        let c = &model.config;
        attn_shape(c).check("upload")?;
        if model.weight_type() == GgmlType::BF16 {
            return Err(CudaError::Shape {
                op: "upload",
                detail: "BF16 weights".into(),
            }
            .into());
        }
        let g = &*gpu;
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: g.upload(&l.attn_norm)?,
                    wq: upload(g, &l.wq)?,
                    wk: upload(g, &l.wk)?,
                    wv: upload(g, &l.wv)?,
                    wo: upload(g, &l.wo)?,
                    ffn_norm: g.upload(&l.ffn_norm)?,
                    w_gate: upload(g, &l.w_gate)?,
                    w_up: upload(g, &l.w_up)?,
                    w_down: upload(g, &l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(CudaModel {
            embed: upload(g, &model.embed)?,
            norm: g.upload(&model.norm)?,
            output: model.output.as_ref().map(|m| upload(g, m)).transpose()?,
            layers,
            config: c.clone(),
            gpu,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// y = x·Wᵀ for n token rows: the GEMV for a few rows, the tiled matmul
    /// for many.   x: (n, cols)   y: (n, rows)
    fn proj(
        &self,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        let g = &*self.gpu;
        if n <= GEMV_MAX_VECS && w.ty != GgmlType::F16 {
            g.gemv(GemvVariant::V3SubWarpBlocks, w, x, y, n)
        } else if n == 1 {
            g.gemv(GemvVariant::V1Naive, w, x, y, 1)
        } else {
            g.matmul(MatmulVariant::V2Tiled, x, w, y, n)
        }
    }
}

fn attn_shape(c: &super::Config) -> AttnShape {
    AttnShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        block_size: BLOCK_SIZE,
    }
}

/// One forward pass's buffers, for `n` token rows.
struct Bufs {
    n: usize,
    /// tokens, positions (also the cache slots: the block table is the
    /// identity) and decode's sequence length: (n,), (n,), (1,)
    toks: CudaSlice<u32>,
    pos: CudaSlice<i32>,
    seq_len: CudaSlice<i32>,
    /// x, h, proj: (n, d_model)   q, att: (n, q_dim)   k, v: (n, kv_dim)
    /// gate, up, act: (n, d_ff)   last, normed: (d_model,)   logits: (vocab,)
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    att: CudaSlice<f32>,
    proj: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    last: CudaSlice<f32>,
    normed: CudaSlice<f32>,
    logits: CudaSlice<f32>,
}

impl Bufs {
    fn new(g: &Gpu, c: &super::Config, n: usize) -> Result<Bufs, CudaError> {
        let (d, qd, kvd, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        Ok(Bufs {
            n,
            toks: g.zeros(n)?,
            pos: g.zeros(n)?,
            seq_len: g.zeros(1)?,
            x: g.zeros(n * d)?,
            h: g.zeros(n * d)?,
            q: g.zeros(n * qd)?,
            k: g.zeros(n * kvd)?,
            v: g.zeros(n * kvd)?,
            att: g.zeros(n * qd)?,
            proj: g.zeros(n * d)?,
            gate: g.zeros(n * ff)?,
            up: g.zeros(n * ff)?,
            act: g.zeros(n * ff)?,
            last: g.zeros(d)?,
            normed: g.zeros(d)?,
            logits: g.zeros(c.vocab_size)?,
        })
    }

    /// Writes this pass's inputs: tokens at positions start.. .
    fn set_inputs(&mut self, g: &Gpu, tokens: &[u32], start: usize) -> Result<(), CudaError> {
        let drv =
            |what: &'static str| move |e: cudarc::driver::DriverError| CudaError::driver(what, e);
        let pos: Vec<i32> = (start..start + tokens.len()).map(|p| p as i32).collect();
        let s = g.stream();
        s.memcpy_htod(tokens, &mut self.toks)
            .map_err(drv("tokens"))?;
        s.memcpy_htod(&pos, &mut self.pos)
            .map_err(drv("positions"))?;
        s.memcpy_htod(&[(start + 1) as i32], &mut self.seq_len)
            .map_err(drv("seq_len"))?;
        Ok(())
    }
}

/// The kernels of one forward pass over `b.n` tokens at positions start..,
/// enqueued on the GPU's stream (nothing here waits or allocates, so a
/// decode pass can be captured into a graph). Leaves the last token's
/// logits in `b.logits`.
fn enqueue(m: &CudaModel, cache: &mut Cache, b: &mut Bufs, start: usize) -> Result<(), CudaError> {
    let g = &*m.gpu;
    let c = &m.config;
    let n = b.n;
    let (d, kvd, ff) = (c.d_model, c.kv_dim(), c.d_ff);
    let shape = attn_shape(c);
    // The host's copy of decode's length: for the launch's checks only (the
    // kernel reads `b.seq_len`, which a graph replay updates).
    let lens = [start + 1];
    g.embedding(&m.embed, &b.toks, n, &mut b.x)?;
    for (li, l) in m.layers.iter().enumerate() {
        g.rmsnorm(&b.x, &l.attn_norm, &mut b.h, None, n, d, c.rms_eps)?;
        m.proj(&l.wq, &b.h, &mut b.q, n)?;
        m.proj(&l.wk, &b.h, &mut b.k, n)?;
        m.proj(&l.wv, &b.h, &mut b.v, n)?;
        g.rope(
            &mut b.q,
            &b.pos,
            n,
            c.n_heads,
            c.head_dim,
            c.rope_base,
            c.rope_layout,
        )?;
        g.rope(
            &mut b.k,
            &b.pos,
            n,
            c.n_kv_heads,
            c.head_dim,
            c.rope_base,
            c.rope_layout,
        )?;
        g.kv_write(
            &b.k,
            &b.v,
            &b.pos,
            &mut cache.k[li],
            &mut cache.v[li],
            n,
            kvd,
        )?;
        if n == 1 {
            g.paged_attention_decode(PagedAttention {
                shape,
                q: &b.q,
                k_cache: &cache.k[li],
                v_cache: &cache.v[li],
                block_tables: &cache.table,
                max_blocks: cache.n_blocks,
                seq_lens: &lens,
                seq_lens_dev: &b.seq_len,
                out: &mut b.att,
            })?;
        } else {
            g.flash_attention_prefill(
                &shape,
                &b.q,
                &cache.k[li],
                &cache.v[li],
                &cache.table,
                &mut b.att,
                n,
                start,
            )?;
        }
        m.proj(&l.wo, &b.att, &mut b.proj, n)?;
        g.add_inplace(&mut b.x, &b.proj)?;
        g.rmsnorm(&b.x, &l.ffn_norm, &mut b.h, None, n, d, c.rms_eps)?;
        m.proj(&l.w_gate, &b.h, &mut b.gate, n)?;
        m.proj(&l.w_up, &b.h, &mut b.up, n)?;
        g.silu_mul(&b.gate, &b.up, &mut b.act, n * ff)?;
        m.proj(&l.w_down, &b.act, &mut b.proj, n)?;
        g.add_inplace(&mut b.x, &b.proj)?;
    }
    // The last row only: norm it and apply the head.
    if n == 1 {
        g.rmsnorm(&b.x, &m.norm, &mut b.normed, None, 1, d, c.rms_eps)?;
    } else {
        g.stream()
            .memcpy_dtod(&b.x.slice((n - 1) * d..n * d), &mut b.last)
            .map_err(|e| CudaError::driver("copying the last row", e))?;
        g.rmsnorm(&b.last, &m.norm, &mut b.normed, None, 1, d, c.rms_eps)?;
    }
    let head = m.output.as_ref().unwrap_or(&m.embed);
    m.proj(head, &b.normed, &mut b.logits, 1)
}

/// One sequence's paged KV cache on the device.
struct Cache {
    /// Per layer: (n_blocks · BLOCK_SIZE, kv_dim) f16.
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    /// The block table: block b at row b (one sequence owns the whole cache).
    table: CudaSlice<i32>,
    n_blocks: usize,
}

/// One sequence's KV cache on the device and its forward passes.
pub struct CudaSeq<'a> {
    m: &'a CudaModel,
    cache: Cache,
    len: usize,
    /// Decode's buffers, kept: the captured graph points into them.
    decode: Bufs,
    /// The captured decode step, replayed from the third decode on.
    graph: Option<CudaGraph>,
    decode_steps: usize,
    use_graphs: bool,
}

impl std::fmt::Debug for CudaSeq<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaSeq(len {} of {}, graph {})",
            self.len,
            self.capacity(),
            self.graph.is_some()
        )
    }
}

impl<'a> CudaSeq<'a> {
    /// A cache for up to `max_tokens` positions.
    pub fn new(m: &'a CudaModel, max_tokens: usize) -> Result<CudaSeq<'a>, ModelError> {
        let c = &m.config;
        let n_blocks = max_tokens.div_ceil(BLOCK_SIZE).max(1);
        let rows =
            n_blocks
                .checked_mul(BLOCK_SIZE * c.kv_dim())
                .ok_or(ModelError::ContextFull {
                    len: 0,
                    n: max_tokens,
                    max: usize::MAX,
                })?;
        let g = &*m.gpu;
        let mut k = Vec::with_capacity(c.n_layers);
        let mut v = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            k.push(g.zeros::<u16>(rows)?);
            v.push(g.zeros::<u16>(rows)?);
        }
        let ids: Vec<i32> = (0..n_blocks as i32).collect();
        let table = g.upload(&ids)?;
        Ok(CudaSeq {
            m,
            cache: Cache {
                k,
                v,
                table,
                n_blocks,
            },
            len: 0,
            decode: Bufs::new(g, c, 1)?,
            graph: None,
            decode_steps: 0,
            use_graphs: std::env::var("MLSTACK_CUDA_GRAPHS").map_or(true, |v| v != "0"),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cache.n_blocks * BLOCK_SIZE
    }

    /// Runs `tokens` at positions len.., caches their keys and values, and
    /// returns the last token's logits (vocab,).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let c = &self.m.config;
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Empty);
        }
        if self.len + n > self.capacity() {
            return Err(ModelError::ContextFull {
                len: self.len,
                n,
                max: self.capacity(),
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: c.vocab_size,
            });
        }
        let g = &*self.m.gpu;
        // The download waits for the kernels queued before it.
        let out = if n == 1 {
            self.decode_step(tokens[0])?;
            g.download(&self.decode.logits)?
        } else {
            let mut b = Bufs::new(g, c, n)?;
            b.set_inputs(g, tokens, self.len)?;
            enqueue(self.m, &mut self.cache, &mut b, self.len)?;
            g.download(&b.logits)?
        };
        self.len += n;
        Ok(out)
    }

    /// The decode step's kernels on the kept buffers (eager or captured).
    fn enqueue_decode(&mut self, start: usize) -> Result<(), CudaError> {
        enqueue(self.m, &mut self.cache, &mut self.decode, start)
    }

    /// One decode step: eager the first time (which also compiles and loads
    /// every kernel), captured into a graph the second, replayed after.
    fn decode_step(&mut self, tok: u32) -> Result<(), CudaError> {
        let g = &*self.m.gpu;
        self.decode.set_inputs(g, &[tok], self.len)?;
        let start = self.len;
        if let Some(graph) = &self.graph {
            graph
                .launch()
                .map_err(|e| CudaError::driver("replaying the decode graph", e))?;
        } else if self.use_graphs && self.decode_steps >= 1 {
            let stream = g.stream();
            stream
                .begin_capture(drv::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| CudaError::driver("beginning capture", e))?;
            let enqueued = self.enqueue_decode(start);
            // End the capture whatever happened, so the stream is usable.
            let captured = stream.end_capture(drv::CUgraphInstantiate_flags(0));
            enqueued?;
            let graph = captured
                .map_err(|e| CudaError::driver("instantiating the decode graph", e))?
                .ok_or_else(|| CudaError::Driver {
                    what: "capturing the decode step".into(),
                    detail: "an empty graph".into(),
                })?;
            graph
                .launch()
                .map_err(|e| CudaError::driver("launching the decode graph", e))?;
            self.graph = Some(graph);
        } else {
            self.enqueue_decode(start)?;
        }
        self.decode_steps += 1;
        Ok(())
    }
}
