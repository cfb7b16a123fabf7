//! The Llama forward pass (Touvron et al., 2023), f32 activations over
//! quantized or f32 weights, batched over sequences, over any KV store.
//!
//! ```text
//! tokens: (n,)                          n = tokens in this call (prefill: the prompt; decode: 1)
//! x = embed[tokens]                     x: (n, d_model)
//! for each layer:
//!   h = rms_norm(x) · attn_norm         h: (n, d_model)
//!   q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ       q: (n, n_heads·head_dim)  k, v: (n, n_kv_heads·head_dim)
//!   rope(q, k) at positions start..start+n
//!   cache[k, v] ← k, v                  cache: (max_tokens, n_kv_heads·head_dim) per layer
//!   for token t, head h (kv head h / group):
//!     p = softmax(q_t,h · K[0..=start+t]ᵀ / √head_dim)     causal: keys up to the token itself
//!     a_t,h = p · V[0..=start+t]                            a: (n, n_heads·head_dim)
//!   x += a·Woᵀ
//!   h = rms_norm(x) · ffn_norm
//!   x += (silu(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ                 (n, d_ff) → (n, d_model)
//! logits = rms_norm(x_last) · norm · Wembᵀ   (tied: the embedding is the head)   (vocab,)
//! ```
//!
//! GQA: `n_heads / n_kv_heads` query heads share one K/V head (9/3 in
//! SmolLM2), which shrinks the cache threefold.
//!
//! RoPE layout: llama.cpp's converter permutes each head's rows of Wq and Wk so
//! that RoPE rotates adjacent pairs; Hugging Face checkpoints keep the original
//! order and rotate halves. [`Config::rope_layout`] records which, and the
//! same rotation results either way (tested in `kernels::ops`).

use half::f16;
use kernels::attention;
use kernels::matmul::{self, Activations};
use kernels::qdot::BlockQ8;
use kernels::quant::GgmlType;
use kernels::vec;
use rayon::prelude::*;

use super::{Config, Model, ModelError};

/// Per-sequence attention keys and values, contiguous by position, in f16
/// (half the memory of f32; llama.cpp's default cache type, so the numerics
/// match it).
///
/// k, v: (n_layers, max_tokens, n_kv_heads · head_dim)
#[derive(Debug)]
pub struct KvCache {
    k: Vec<f16>,
    v: Vec<f16>,
    max_tokens: usize,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    pub fn new(config: &Config, max_tokens: usize) -> KvCache {
        let n = config.n_layers * max_tokens * config.kv_dim();
        KvCache {
            k: vec![f16::ZERO; n],
            v: vec![f16::ZERO; n],
            max_tokens,
            kv_dim: config.kv_dim(),
            len: 0,
        }
    }

    /// Tokens cached so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.max_tokens
    }

    /// Forgets everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn row(&self, layer: usize, pos: usize) -> usize {
        (layer * self.max_tokens + pos) * self.kv_dim
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// Only the last token's (generation).
    Last,
    /// Every token's, (n, vocab) (tests and scoring).
    All,
}

impl Model {
    /// Runs `tokens` through the model at positions `cache.len()..`, appends
    /// their keys and values to `cache`, and returns logits: (vocab,) for
    /// [`Logits::Last`], (n, vocab) for [`Logits::All`].
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        if cache.len + tokens.len() > cache.max_tokens {
            return Err(ModelError::ContextFull {
                len: cache.len,
                n: tokens.len(),
                max: cache.max_tokens,
            });
        }
        let input = SeqInput {
            tokens,
            start: cache.len,
            table: &[],
            logits: which,
        };
        let mut out = self.forward_batch(&[input], cache)?;
        cache.len += tokens.len();
        Ok(out.pop().expect("one sequence in, one out"))
    }

    /// One forward pass over several sequences at once: every sequence's new
    /// tokens go through the matrix products together (n_total rows), which
    /// is what makes batched decode cheaper per token than one at a time;
    /// attention stays per sequence, reading its own keys through `cache`.
    /// Returns each sequence's logits as its `logits` asks (empty for
    /// [`Logits::None`]).
    ///
    /// A sequence's result does not depend on what else is in the batch: each
    /// token row goes through the same kernels with the same arithmetic.
    pub fn forward_batch<C: KvStore + Sync + Send + ?Sized>(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut C,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // Run the pass on one of the pool's threads, not the caller's. A
        // caller outside the pool (the engine thread, `generate`) that starts
        // a parallel loop hands the job over and sleeps until the pool is
        // done: a futex wake and a context switch each way, for each of the
        // ~150 parallel regions a token takes (5 per layer). On a pool thread
        // a region is a local fork and join, and the caller sleeps once per
        // pass. rayon::scope runs inline when already on a pool thread.
        rayon::scope(|_| self.forward_batch_on_pool(seqs, cache))
    }

    /// [`Model::forward_batch`]'s body, on a pool thread.
    fn forward_batch_on_pool<C: KvStore + Sync + Send + ?Sized>(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut C,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        if seqs.is_empty() || seqs.iter().any(|s| s.tokens.is_empty()) {
            return Err(ModelError::Empty);
        }
        for s in seqs {
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab: c.vocab_size,
                });
            }
        }
        assert_eq!(cache.kv_dim(), c.kv_dim(), "cache built for another model");
        let (d, qd, kvd, hd) = (c.d_model, c.q_dim(), c.kv_dim(), c.head_dim);
        // rows: (n,) of (sequence index, position): every token row of the batch.
        let rows: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.tokens.len()).map(move |t| (i, s.start + t)))
            .collect();
        let n = rows.len();

        // x: (n, d_model)
        let mut x = vec![0f32; n * d];
        for (row, &tok) in x
            .chunks_exact_mut(d)
            .zip(seqs.iter().flat_map(|s| s.tokens))
        {
            self.embed.row_into(tok as usize, row);
        }
        // h: (n, d_model), the normed input of each block
        let mut h = vec![0f32; n * d];
        // q: (n, n_heads · head_dim)
        let mut q = vec![0f32; n * qd];
        // k, v: (n, n_kv_heads · head_dim), this call's keys and values
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        // att: (n, n_heads · head_dim), the heads' weighted sums of values
        let mut att = vec![0f32; n * qd];
        // proj: (n, d_model), a block's output before the residual add
        let mut proj = vec![0f32; n * d];
        // gate, up, swiglu: (n, d_ff)
        let mut gate = vec![0f32; n * c.d_ff];
        let mut up = vec![0f32; n * c.d_ff];
        let mut swiglu = vec![0f32; n * c.d_ff];
        // q8: the activations quantized to Q8 blocks, (n, d_in / 32), reused
        let mut q8: Vec<BlockQ8> = Vec::new();
        let quantized = self.weight_type() != GgmlType::F32;

        for (li, l) in self.layers.iter().enumerate() {
            // --- attention block ---
            rms_rows(&x, &l.attn_norm, c.rms_eps, &mut h, d);
            {
                let acts = Activations::new(&h, n, quantized, &mut q8);
                matmul::matmul(
                    &mut [
                        (l.wq.weights(), &mut q[..]),
                        (l.wk.weights(), &mut k[..]),
                        (l.wv.weights(), &mut v[..]),
                    ],
                    &acts,
                );
            }
            for (t, &(si, pos)) in rows.iter().enumerate() {
                vec::rope(
                    &mut q[t * qd..(t + 1) * qd],
                    hd,
                    pos,
                    c.rope_base,
                    c.rope_layout,
                );
                vec::rope(
                    &mut k[t * kvd..(t + 1) * kvd],
                    hd,
                    pos,
                    c.rope_base,
                    c.rope_layout,
                );
                cache.write(
                    seqs[si].table,
                    li,
                    pos,
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                );
            }
            self.attention(li, &*cache, seqs, &rows, &q, &mut att);
            {
                let acts = Activations::new(&att, n, quantized, &mut q8);
                matmul::matmul(&mut [(l.wo.weights(), &mut proj[..])], &acts);
            }
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);

            // --- feed-forward block (SwiGLU) ---
            rms_rows(&x, &l.ffn_norm, c.rms_eps, &mut h, d);
            {
                let acts = Activations::new(&h, n, quantized, &mut q8);
                matmul::matmul(
                    &mut [
                        (l.w_gate.weights(), &mut gate[..]),
                        (l.w_up.weights(), &mut up[..]),
                    ],
                    &acts,
                );
            }
            // silu(gate) ⊙ up: elementwise, so one call over all rows
            vec::silu_mul(&gate, &up, &mut swiglu);
            {
                let acts = Activations::new(&swiglu, n, quantized, &mut q8);
                matmul::matmul(&mut [(l.w_down.weights(), &mut proj[..])], &acts);
            }
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }

        // --- output head, for the rows that want logits ---
        let mut want: Vec<usize> = Vec::new(); // row indices
        let mut first_row = 0;
        for s in seqs {
            match s.logits {
                Logits::None => {}
                Logits::Last => want.push(first_row + s.tokens.len() - 1),
                Logits::All => want.extend(first_row..first_row + s.tokens.len()),
            }
            first_row += s.tokens.len();
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        if want.is_empty() {
            return Ok(out);
        }
        // last: (n_want, d_model), the final norm of the rows that want logits
        let mut last = vec![0f32; want.len() * d];
        for (i, &t) in want.iter().enumerate() {
            vec::rms_norm(
                &x[t * d..(t + 1) * d],
                &self.norm,
                c.rms_eps,
                &mut last[i * d..(i + 1) * d],
            );
        }
        let head = self.output.as_ref().unwrap_or(&self.embed);
        // logits: (n_want, vocab)
        let mut logits = vec![0f32; want.len() * c.vocab_size];
        let acts = Activations::new(&last, want.len(), head.ty != GgmlType::F32, &mut q8);
        matmul::matmul(&mut [(head.weights(), &mut logits[..])], &acts);
        // Hand each sequence its rows, in order.
        let mut rows_of = logits.chunks_exact(c.vocab_size);
        for (s, o) in seqs.iter().zip(out.iter_mut()) {
            let k = match s.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => s.tokens.len(),
            };
            for _ in 0..k {
                o.extend_from_slice(rows_of.next().expect("one row per wanted token"));
            }
        }
        Ok(out)
    }

    /// Causal GQA attention for every token row of the batch against its
    /// sequence's keys (positions 0..=pos), one rayon task per (token, head).
    ///
    /// Rounding follows llama.cpp's CPU path so greedy outputs agree: the query
    /// is rounded to f16 before q·k (ggml converts it to the cache's type), and
    /// the softmax weights to f16 before the weighted sum of values.
    ///
    /// q, att: (n, n_heads · head_dim)
    fn attention<C: KvStore + Sync + ?Sized>(
        &self,
        layer: usize,
        cache: &C,
        seqs: &[SeqInput<'_>],
        rows: &[(usize, usize)],
        q: &[f32],
        att: &mut [f32],
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let kv_dim = cache.kv_dim();
        att.par_chunks_mut(hd).enumerate().for_each(|(i, out)| {
            let (t, head) = (i / c.n_heads, i % c.n_heads);
            let (si, pos) = rows[t];
            let kvh = head / group;
            // qh: (head_dim,), this head's query rounded to f16 (head_dim <= 256)
            let mut qh = [0f32; 256];
            let qh = &mut qh[..hd];
            for (a, &b) in qh.iter_mut().zip(&q[i * hd..(i + 1) * hd]) {
                *a = f16::from_f32(b).to_f32();
            }
            let n_keys = pos + 1; // causal: up to and including itself
            let table = seqs[si].table;
            SCORES.with_borrow_mut(|scores| {
                // scores: (n_keys,), then the softmax weights over them
                scores.resize(n_keys, 0.0);
                let mut done = 0;
                cache.segments(table, layer, n_keys, &mut |k, _, n| {
                    attention::scores(
                        qh,
                        &k[kvh * hd..],
                        kv_dim,
                        scale,
                        &mut scores[done..done + n],
                    );
                    done += n;
                });
                vec::softmax(scores);
                for w in scores.iter_mut() {
                    *w = f16::from_f32(*w).to_f32();
                }
                out.iter_mut().for_each(|o| *o = 0.0);
                let mut done = 0;
                cache.segments(table, layer, n_keys, &mut |_, v, n| {
                    attention::weighted_sum(&scores[done..done + n], &v[kvh * hd..], kv_dim, out);
                    done += n;
                });
            });
        });
    }
}

/// One sequence's part of a batched forward pass.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// New tokens (a prefill chunk, or one decode token).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; keys 0..start are already in the cache.
    pub start: usize,
    /// The sequence's block table (paged caches; empty for [`KvCache`]).
    pub table: &'a [u32],
    pub logits: Logits,
}

/// The callback of [`KvStore::segments`]: (key rows, value rows, positions).
pub type SegmentFn<'a> = dyn FnMut(&[f16], &[f16], usize) + 'a;

/// Where a forward pass keeps keys and values: the contiguous per-sequence
/// [`KvCache`] or the paged block pool ([`crate::paged::PagedKvCache`]).
pub trait KvStore {
    /// Stores the key and value of the token at `pos` for `layer`.
    ///
    /// k, v: (n_kv_heads · head_dim,)
    fn write(&mut self, table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]);

    /// Calls `f(k_rows, v_rows, n)` for consecutive runs of positions covering
    /// 0..n_keys in order; rows are `kv_dim()` apart.
    fn segments(&self, table: &[u32], layer: usize, n_keys: usize, f: &mut SegmentFn<'_>);

    fn kv_dim(&self) -> usize;
}

impl KvStore for KvCache {
    fn write(&mut self, _table: &[u32], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let row = self.row(layer, pos);
        to_f16(k, &mut self.k[row..row + self.kv_dim]);
        to_f16(v, &mut self.v[row..row + self.kv_dim]);
    }

    fn segments(&self, _table: &[u32], layer: usize, n_keys: usize, f: &mut SegmentFn<'_>) {
        let (a, b) = (self.row(layer, 0), self.row(layer, n_keys));
        f(&self.k[a..b], &self.v[a..b], n_keys);
    }

    fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

thread_local! {
    /// Per-thread scratch for attention scores (no allocation per head).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn to_f16(src: &[f32], dst: &mut [f16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}

/// RMSNorm of each row of `x` into `out`.
///
/// x, out: (n, dim)
fn rms_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        vec::rms_norm(xr, weight, eps, or);
    }
}
