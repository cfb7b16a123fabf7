//! The Llama forward and backward passes over the flat parameter buffer.
//!
//! ```text
//! tokens ─ embedding ─► x₀ ─┬─► [layer 0] ─► x₁ ─ ... ─► x_L ─ rmsnorm ─ · Eᵀ ─► logits ─ CE ─► loss
//!   layer:  x ─┬─ rmsnorm ─ Wq,Wk,Wv ─ RoPE ─ attention ─ Wo ─(+)─┬─ rmsnorm ─ Wg,Wu ─ SwiGLU ─ Wd ─(+)─►
//!              └────────────────── residual ──────────────────────┘└──────────── residual ────────────┘
//! ```
//!
//! The backward runs the same path in reverse, each op's `*_backward` beside
//! its `*_forward` in [`crate::ops`]. With `recompute`, only each layer's
//! input is kept; the backward reruns the layer's forward into one scratch
//! set of activations before differentiating it (Chen et al., 2016: compute
//! for memory, about one extra forward pass).

use model::Config;

use crate::ops::attention::{
    AttnShape, attention_backward, attention_forward, to_head_major, to_token_major,
};
use crate::ops::cross_entropy::cross_entropy_backward_inplace;
use crate::ops::embedding::{embedding_backward, embedding_forward};
use crate::ops::matmul::{matmul_backward, matmul_forward};
use crate::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::ops::rope::{RopeTable, rope_backward, rope_forward};
use crate::ops::swiglu::{swiglu_backward, swiglu_forward};
use crate::params::{LayerOffsets, Layout};
use crate::rng::Rng;

/// A Llama: its configuration, whether the head is the embedding, and the
/// layout of its parameters. The parameters themselves are a `&[f32]` the
/// caller owns (the trainer's master weights).
#[derive(Clone, Debug)]
pub struct Llama {
    /// The config this rank runs: under tensor parallelism, its share of
    /// the heads and hidden units (see [`crate::dist::tensor`]).
    pub config: Config,
    pub tied: bool,
    pub layout: Layout,
    /// The tensor-parallel group, when the layers are split across ranks.
    pub tp: Option<std::sync::Arc<crate::dist::tensor::TpGroup>>,
}

/// What one layer's forward keeps for its backward.
#[derive(Debug, Default)]
struct LayerActs {
    xn1: Vec<f32>,   // (n, d) attention input, normed
    rstd1: Vec<f32>, // (n,)
    q: Vec<f32>,     // (b, n_heads, t, hd) after RoPE
    k: Vec<f32>,     // (b, n_kv_heads, t, hd) after RoPE
    v: Vec<f32>,     // (b, n_kv_heads, t, hd)
    att: Vec<f32>,   // (b, n_heads, t, t) softmax probabilities
    y: Vec<f32>,     // (n, n_heads·hd) attention output, token-major
    x_mid: Vec<f32>, // (n, d) residual after attention
    xn2: Vec<f32>,   // (n, d) MLP input, normed
    rstd2: Vec<f32>, // (n,)
    g: Vec<f32>,     // (n, d_ff) gate
    u: Vec<f32>,     // (n, d_ff) up
    h: Vec<f32>,     // (n, d_ff) silu(g)⊙u
}

/// Temporaries shared by every layer (never read across layers).
#[derive(Debug, Default)]
struct Scratch {
    qt: Vec<f32>,   // (n, q_dim) token-major q / dq
    kt: Vec<f32>,   // (n, kv_dim)
    vt: Vec<f32>,   // (n, kv_dim)
    y_hm: Vec<f32>, // (b, n_heads, t, hd) y / dy head-major
    dq: Vec<f32>,   // (b, n_heads, t, hd)
    dk: Vec<f32>,   // (b, n_kv_heads, t, hd)
    dv: Vec<f32>,   // (b, n_kv_heads, t, hd)
    nd: Vec<f32>,   // (n, d) a projection's output / a normed input's gradient
    dh: Vec<f32>,   // (n, d_ff)
    dg: Vec<f32>,   // (n, d_ff)
    du: Vec<f32>,   // (n, d_ff)
    dmid: Vec<f32>, // (n, d)
}

/// Every activation of one micro-batch, allocated once per shape.
#[derive(Debug)]
pub struct Acts {
    pub batch: usize,
    pub seq: usize,
    pub recompute: bool,
    /// x_0 ... x_L: the residual stream entering each layer, and leaving the last. (n, d) each
    resid: Vec<Vec<f32>>,
    /// One per layer, or one scratch set under `recompute`.
    layers: Vec<LayerActs>,
    xf: Vec<f32>,     // (n, d) final norm output
    rstd_f: Vec<f32>, // (n,)
    /// (n, vocab): logits after a forward; dlogits during the backward.
    pub logits: Vec<f32>,
    /// (n,) per-token cross-entropy.
    pub losses: Vec<f32>,
    dx: Vec<f32>, // (n, d) gradient of the residual stream
    scratch: Scratch,
    rope: RopeTable,
}

impl Acts {
    /// Bytes held by the saved activations (what recomputation saves is the
    /// difference between the two settings).
    pub fn bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|a| {
                [
                    &a.xn1, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.y, &a.x_mid, &a.xn2, &a.rstd2,
                    &a.g, &a.u, &a.h,
                ]
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
            })
            .sum();
        let r: usize = self.resid.iter().map(Vec::len).sum();
        4 * (l + r + self.xf.len() + self.rstd_f.len() + self.logits.len() + self.losses.len())
    }
}

impl Llama {
    pub fn new(config: Config, tied: bool) -> Llama {
        let layout = Layout::new(&config, tied);
        Llama {
            config,
            tied,
            layout,
            tp: None,
        }
    }

    /// Sums a partial (n, d) result over the tensor-parallel ranks (a no-op
    /// without tensor parallelism).
    fn tp_all_reduce(&self, buf: &mut [f32]) {
        if let Some(tp) = &self.tp {
            tp.all_reduce(buf);
        }
    }

    pub fn n_params(&self) -> usize {
        self.layout.total
    }

    /// GPT-2 / nanoGPT initialisation: N(0, 0.02) for matrices and the
    /// embedding, the two projections into the residual stream (o_proj,
    /// down_proj) scaled by 1/√(2·n_layers), norm gains 1.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut p = vec![0f32; self.layout.total];
        let resid_std = 0.02 / (2.0 * self.config.n_layers as f64).sqrt();
        for e in &self.layout.entries {
            let dst = &mut p[e.offset..e.offset + e.len];
            if e.shape.len() == 1 {
                dst.fill(1.0);
                continue;
            }
            let std = if e.name.ends_with("o_proj.weight") || e.name.ends_with("down_proj.weight") {
                resid_std
            } else {
                0.02
            };
            dst.iter_mut()
                .for_each(|x| *x = (rng.normal() * std) as f32);
        }
        p
    }

    /// FLOPs of one training token (forward + backward) at sequence length
    /// `seq`: 6 per matrix-product weight (the head included, the embedding
    /// lookup not), plus causal attention as computed: per layer and head,
    /// QKᵀ and PV over (seq+1)/2 keys on average, 2 FLOPs per multiply-add,
    /// forward once and backward twice.
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        let c = &self.config;
        let per_layer = c.d_model * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * c.d_model * c.d_ff;
        let matmul = c.n_layers * per_layer + c.vocab_size * c.d_model;
        let attn =
            c.n_layers as f64 * c.n_heads as f64 * c.head_dim as f64 * (seq as f64 + 1.0) * 6.0;
        6.0 * matmul as f64 + attn
    }

    pub fn acts(&self, batch: usize, seq: usize, recompute: bool) -> Acts {
        let c = &self.config;
        let n = batch * seq;
        let (d, q, kv, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let z = |len: usize| vec![0f32; len];
        let layer = || LayerActs {
            xn1: z(n * d),
            rstd1: z(n),
            q: z(n * q),
            k: z(n * kv),
            v: z(n * kv),
            att: z(batch * c.n_heads * seq * seq),
            y: z(n * q),
            x_mid: z(n * d),
            xn2: z(n * d),
            rstd2: z(n),
            g: z(n * ff),
            u: z(n * ff),
            h: z(n * ff),
        };
        Acts {
            batch,
            seq,
            recompute,
            resid: (0..=c.n_layers).map(|_| z(n * d)).collect(),
            layers: (0..if recompute { 1 } else { c.n_layers })
                .map(|_| layer())
                .collect(),
            xf: z(n * d),
            rstd_f: z(n),
            logits: z(n * c.vocab_size),
            losses: z(n),
            dx: z(n * d),
            scratch: Scratch {
                qt: z(n * q),
                kt: z(n * kv),
                vt: z(n * kv),
                y_hm: z(n * q),
                dq: z(n * q),
                dk: z(n * kv),
                dv: z(n * kv),
                nd: z(n * d),
                dh: z(n * ff),
                dg: z(n * ff),
                du: z(n * ff),
                dmid: z(n * d),
            },
            rope: RopeTable::new(seq, c.head_dim, c.rope_base),
        }
    }

    fn attn_shape(&self, a: &Acts) -> AttnShape {
        AttnShape {
            batch: a.batch,
            seq: a.seq,
            n_heads: self.config.n_heads,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// The forward pass to logits: `acts.logits` (n, vocab) for tokens (n,).
    pub fn forward(&self, p: &[f32], tokens: &[u32], acts: &mut Acts) {
        let c = &self.config;
        let d = c.d_model;
        let n = acts.batch * acts.seq;
        assert_eq!(tokens.len(), n, "tokens: (batch·seq,)");
        assert_eq!(
            p.len(),
            self.layout.total,
            "parameters: the layout's length"
        );
        embedding_forward(&mut acts.resid[0], &p[self.layout.embed..], tokens, d);
        for l in 0..c.n_layers {
            self.layer_forward(p, l, acts);
        }
        let Acts {
            resid,
            xf,
            rstd_f,
            logits,
            ..
        } = acts;
        let norm = &p[self.layout.norm..self.layout.norm + d];
        rmsnorm_forward(xf, rstd_f, &resid[c.n_layers], norm, d, c.rms_eps);
        let head = self.layout.head.unwrap_or(self.layout.embed);
        let w_head = &p[head..head + c.vocab_size * d];
        matmul_forward(logits, xf, w_head, n, d, c.vocab_size);
    }

    /// Layer `l`: reads resid[l], writes resid[l+1] and the layer's saved
    /// activations (the scratch set under recompute).
    fn layer_forward(&self, p: &[f32], l: usize, acts: &mut Acts) {
        let c = &self.config;
        let (d, q, kv, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let (b, t) = (acts.batch, acts.seq);
        let n = b * t;
        let shape = self.attn_shape(acts);
        let o: &LayerOffsets = &self.layout.layers[l];
        let w = |off: usize, len: usize| &p[off..off + len];
        let slot = if acts.recompute { 0 } else { l };
        let (before, after) = acts.resid.split_at_mut(l + 1);
        let (x_in, x_out) = (&before[l], &mut after[0]);
        let a = &mut acts.layers[slot];
        let s = &mut acts.scratch;

        // attention block
        rmsnorm_forward(
            &mut a.xn1,
            &mut a.rstd1,
            x_in,
            w(o.attn_norm, d),
            d,
            c.rms_eps,
        );
        matmul_forward(&mut s.qt, &a.xn1, w(o.wq, q * d), n, d, q);
        matmul_forward(&mut s.kt, &a.xn1, w(o.wk, kv * d), n, d, kv);
        matmul_forward(&mut s.vt, &a.xn1, w(o.wv, kv * d), n, d, kv);
        rope_forward(&mut s.qt, &acts.rope, c.n_heads, t);
        rope_forward(&mut s.kt, &acts.rope, c.n_kv_heads, t);
        to_head_major(&mut a.q, &s.qt, b, t, c.n_heads, c.head_dim);
        to_head_major(&mut a.k, &s.kt, b, t, c.n_kv_heads, c.head_dim);
        to_head_major(&mut a.v, &s.vt, b, t, c.n_kv_heads, c.head_dim);
        attention_forward(&mut s.y_hm, &mut a.att, &a.q, &a.k, &a.v, shape);
        to_token_major(&mut a.y, &s.y_hm, b, t, c.n_heads, c.head_dim);
        matmul_forward(&mut s.nd, &a.y, w(o.wo, d * q), n, q, d);
        // Tensor parallel: each rank's heads give a partial sum (Megatron's g).
        self.tp_all_reduce(&mut s.nd);
        for ((m, x), y) in a.x_mid.iter_mut().zip(x_in).zip(&s.nd) {
            *m = x + y;
        }
        // MLP block
        rmsnorm_forward(
            &mut a.xn2,
            &mut a.rstd2,
            &a.x_mid,
            w(o.ffn_norm, d),
            d,
            c.rms_eps,
        );
        matmul_forward(&mut a.g, &a.xn2, w(o.w_gate, ff * d), n, d, ff);
        matmul_forward(&mut a.u, &a.xn2, w(o.w_up, ff * d), n, d, ff);
        swiglu_forward(&mut a.h, &a.g, &a.u);
        matmul_forward(&mut s.nd, &a.h, w(o.w_down, d * ff), n, ff, d);
        self.tp_all_reduce(&mut s.nd);
        for ((out, m), y) in x_out.iter_mut().zip(&a.x_mid).zip(&s.nd) {
            *out = m + y;
        }
    }

    /// Forward, loss and backward of one micro-batch: [`Self::forward`] then
    /// [`Self::backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &self,
        p: &[f32],
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        acts: &mut Acts,
        scale: f32,
        on_ready: &mut dyn FnMut(std::ops::Range<usize>, &mut [f32]),
    ) -> f64 {
        self.forward(p, tokens, acts);
        self.backward(p, grads, tokens, targets, acts, scale, on_ready)
    }

    /// Loss and backward of one micro-batch whose [`Self::forward`] just ran
    /// on `acts`. Gradients are added
    /// into `grads` (same layout as `p`); `scale` is d(loss)/d(token loss),
    /// 1/(tokens in the whole step, over micro-batches and ranks), so that
    /// accumulating micro-batches gives exactly the full batch's gradient.
    /// `on_ready(range)` is called as each range of `grads` receives its last
    /// contribution from this micro-batch (last layer first), which lets the
    /// caller start all-reducing it while the backward goes on.
    /// Returns the sum of the token losses (f64, summed in order).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        grads: &mut [f32],
        tokens: &[u32],
        targets: &[u32],
        acts: &mut Acts,
        scale: f32,
        on_ready: &mut dyn FnMut(std::ops::Range<usize>, &mut [f32]),
    ) -> f64 {
        let c = &self.config;
        let (d, vocab) = (c.d_model, c.vocab_size);
        let n = acts.batch * acts.seq;
        assert_eq!(targets.len(), n, "targets: (batch·seq,)");
        assert_eq!(
            grads.len(),
            self.layout.total,
            "gradients: the layout's length"
        );
        cross_entropy_backward_inplace(&mut acts.logits, &mut acts.losses, targets, vocab, scale);
        let loss_sum: f64 = acts.losses.iter().map(|&x| f64::from(x)).sum();

        // head: logits = xf · Wᵀ (W = lm_head, or the embedding when tied)
        let head = self.layout.head.unwrap_or(self.layout.embed);
        let hlen = vocab * d;
        {
            let Acts {
                logits,
                xf,
                scratch,
                ..
            } = acts;
            matmul_backward(
                Some(&mut scratch.nd),
                &mut grads[head..head + hlen],
                logits,
                xf,
                &p[head..head + hlen],
                n,
                d,
                vocab,
                false,
            );
        }
        if let Some(h) = self.layout.head {
            on_ready(h..h + hlen, grads);
        }
        // final norm
        {
            let nw = self.layout.norm;
            let Acts {
                resid,
                rstd_f,
                scratch,
                dx,
                ..
            } = acts;
            rmsnorm_backward(
                dx,
                &mut grads[nw..nw + d],
                &scratch.nd,
                &resid[c.n_layers],
                &p[nw..nw + d],
                rstd_f,
                d,
                false,
            );
            on_ready(nw..nw + d, grads);
        }
        for l in (0..c.n_layers).rev() {
            if acts.recompute {
                self.layer_forward(p, l, acts);
            }
            self.layer_backward(p, grads, l, acts);
            let r = self.layout.layers[l].range.clone();
            on_ready(r, grads);
        }
        let e = self.layout.embed;
        embedding_backward(&mut grads[e..e + vocab * d], &acts.dx, tokens, d);
        on_ready(e..e + vocab * d, grads);
        loss_sum
    }

    /// Layer `l`'s backward: acts.dx holds d(loss)/d(resid[l+1]) on entry and
    /// d(loss)/d(resid[l]) on return.
    fn layer_backward(&self, p: &[f32], g: &mut [f32], l: usize, acts: &mut Acts) {
        let c = &self.config;
        let (d, q, kv, ff, hd) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff, c.head_dim);
        let (b, t) = (acts.batch, acts.seq);
        let n = b * t;
        let shape = self.attn_shape(acts);
        let o = &self.layout.layers[l];
        let slot = if acts.recompute { 0 } else { l };
        let x_in = &acts.resid[l];
        let a = &acts.layers[slot];
        let s = &mut acts.scratch;
        let dx = &mut acts.dx;
        let w = |off: usize, len: usize| &p[off..off + len];

        // MLP: x_out = x_mid + h·Wdᵀ; the residual passes dx through unchanged.
        matmul_backward(
            Some(&mut s.dh),
            &mut g[o.w_down..o.w_down + d * ff],
            dx,
            &a.h,
            w(o.w_down, d * ff),
            n,
            ff,
            d,
            false,
        );
        swiglu_backward(&mut s.dg, &mut s.du, &s.dh, &a.g, &a.u);
        matmul_backward(
            Some(&mut s.nd),
            &mut g[o.w_gate..o.w_gate + ff * d],
            &s.dg,
            &a.xn2,
            w(o.w_gate, ff * d),
            n,
            d,
            ff,
            false,
        );
        matmul_backward(
            Some(&mut s.nd),
            &mut g[o.w_up..o.w_up + ff * d],
            &s.du,
            &a.xn2,
            w(o.w_up, ff * d),
            n,
            d,
            ff,
            true,
        );
        // Tensor parallel: each rank's hidden units give a partial dxn2 (Megatron's f).
        self.tp_all_reduce(&mut s.nd);
        s.dmid.copy_from_slice(dx);
        rmsnorm_backward(
            &mut s.dmid,
            &mut g[o.ffn_norm..o.ffn_norm + d],
            &s.nd,
            &a.x_mid,
            w(o.ffn_norm, d),
            &a.rstd2,
            d,
            true,
        );

        // attention: x_mid = x_in + y·Woᵀ
        matmul_backward(
            Some(&mut s.qt),
            &mut g[o.wo..o.wo + d * q],
            &s.dmid,
            &a.y,
            w(o.wo, d * q),
            n,
            q,
            d,
            false,
        );
        to_head_major(&mut s.y_hm, &s.qt, b, t, c.n_heads, hd);
        attention_backward(
            &mut s.dq, &mut s.dk, &mut s.dv, &s.y_hm, &a.att, &a.q, &a.k, &a.v, shape,
        );
        to_token_major(&mut s.qt, &s.dq, b, t, c.n_heads, hd);
        to_token_major(&mut s.kt, &s.dk, b, t, c.n_kv_heads, hd);
        to_token_major(&mut s.vt, &s.dv, b, t, c.n_kv_heads, hd);
        rope_backward(&mut s.qt, &acts.rope, c.n_heads, t);
        rope_backward(&mut s.kt, &acts.rope, c.n_kv_heads, t);
        matmul_backward(
            Some(&mut s.nd),
            &mut g[o.wq..o.wq + q * d],
            &s.qt,
            &a.xn1,
            w(o.wq, q * d),
            n,
            d,
            q,
            false,
        );
        matmul_backward(
            Some(&mut s.nd),
            &mut g[o.wk..o.wk + kv * d],
            &s.kt,
            &a.xn1,
            w(o.wk, kv * d),
            n,
            d,
            kv,
            true,
        );
        matmul_backward(
            Some(&mut s.nd),
            &mut g[o.wv..o.wv + kv * d],
            &s.vt,
            &a.xn1,
            w(o.wv, kv * d),
            n,
            d,
            kv,
            true,
        );
        self.tp_all_reduce(&mut s.nd);
        dx.copy_from_slice(&s.dmid);
        rmsnorm_backward(
            dx,
            &mut g[o.attn_norm..o.attn_norm + d],
            &s.nd,
            x_in,
            w(o.attn_norm, d),
            &a.rstd1,
            d,
            true,
        );
    }

    /// Mean cross-entropy of `targets` under the forward pass (no gradients).
    pub fn loss(&self, p: &[f32], tokens: &[u32], targets: &[u32], acts: &mut Acts) -> f64 {
        self.forward(p, tokens, acts);
        crate::ops::cross_entropy::cross_entropy_forward(
            &mut acts.losses,
            &acts.logits,
            targets,
            self.config.vocab_size,
        );
        acts.losses.iter().map(|&x| f64::from(x)).sum::<f64>() / acts.losses.len() as f64
    }
}
