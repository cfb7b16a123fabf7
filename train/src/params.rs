//! Where every parameter lives in one flat f32 buffer.
//!
//! Parameters, gradients and the two Adam moments are four buffers with one
//! layout, so the optimizer, gradient clipping, the all-reduce and ZeRO's
//! sharding all work on plain ranges. Each layer's tensors are contiguous, in
//! the order the backward pass finishes them last-layer-first, so a layer's
//! gradient can be all-reduced as soon as its backward is done.

use model::{Config, names};

/// One tensor's place in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// AdamW decays matrices and the embedding, not norm gains (nanoGPT).
    pub decay: bool,
}

/// Offsets of one layer's tensors.
#[derive(Clone, Debug)]
pub struct LayerOffsets {
    pub attn_norm: usize,
    pub wq: usize,
    pub wk: usize,
    pub wv: usize,
    pub wo: usize,
    pub ffn_norm: usize,
    pub w_gate: usize,
    pub w_up: usize,
    pub w_down: usize,
    /// The layer's whole range in the flat buffer.
    pub range: std::ops::Range<usize>,
}

/// The layout of a Llama's parameters.
#[derive(Clone, Debug)]
pub struct Layout {
    pub entries: Vec<Entry>,
    pub layers: Vec<LayerOffsets>,
    pub embed: usize,
    pub norm: usize,
    /// Offset of `lm_head.weight`; `None` when the head is the embedding.
    pub head: Option<usize>,
    pub total: usize,
}

impl Layout {
    pub fn new(c: &Config, tied: bool) -> Layout {
        let mut entries = Vec::new();
        let mut total = 0usize;
        let mut add = |name: String, shape: Vec<usize>, decay: bool| {
            let len = shape.iter().product();
            let offset = total;
            entries.push(Entry {
                name,
                shape,
                offset,
                len,
                decay,
            });
            total += len;
            offset
        };
        let (d, q, kv, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let embed = add(names::EMBED.into(), vec![c.vocab_size, d], true);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |p: &str| names::layer(i, p);
            let attn_norm = add(n("input_layernorm"), vec![d], false);
            let start = attn_norm;
            let wq = add(n("self_attn.q_proj"), vec![q, d], true);
            let wk = add(n("self_attn.k_proj"), vec![kv, d], true);
            let wv = add(n("self_attn.v_proj"), vec![kv, d], true);
            let wo = add(n("self_attn.o_proj"), vec![d, q], true);
            let ffn_norm = add(n("post_attention_layernorm"), vec![d], false);
            let w_gate = add(n("mlp.gate_proj"), vec![ff, d], true);
            let w_up = add(n("mlp.up_proj"), vec![ff, d], true);
            let w_down = add(n("mlp.down_proj"), vec![d, ff], true);
            layers.push(LayerOffsets {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
                range: start..w_down + d * ff,
            });
        }
        let norm = add(names::NORM.into(), vec![d], false);
        let head = (!tied).then(|| add(names::LM_HEAD.into(), vec![c.vocab_size, d], true));
        Layout {
            entries,
            layers,
            embed,
            norm,
            head,
            total,
        }
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_tile_the_buffer_and_layers_are_contiguous() {
        let c = crate::configs::model_config("tiny").expect("tiny");
        for tied in [true, false] {
            let l = Layout::new(&c, tied);
            let mut at = 0;
            for e in &l.entries {
                assert_eq!(e.offset, at, "{}", e.name);
                at += e.len;
            }
            assert_eq!(at, l.total);
            for w in l.layers.windows(2) {
                assert_eq!(w[0].range.end, w[1].range.start);
            }
            assert_eq!(l.head.is_none(), tied);
        }
    }
}
