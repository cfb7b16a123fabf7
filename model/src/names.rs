//! Hugging Face Llama tensor names, and the Q/K row order of each format.
//!
//! ```text
//! model.embed_tokens.weight                       (vocab, d_model)
//! model.layers.{i}.input_layernorm.weight         (d_model,)
//! model.layers.{i}.self_attn.q_proj.weight        (n_heads·head_dim, d_model)
//! model.layers.{i}.self_attn.k_proj.weight        (n_kv_heads·head_dim, d_model)
//! model.layers.{i}.self_attn.v_proj.weight        (n_kv_heads·head_dim, d_model)
//! model.layers.{i}.self_attn.o_proj.weight        (d_model, n_heads·head_dim)
//! model.layers.{i}.post_attention_layernorm.weight (d_model,)
//! model.layers.{i}.mlp.gate_proj.weight           (d_ff, d_model)
//! model.layers.{i}.mlp.up_proj.weight             (d_ff, d_model)
//! model.layers.{i}.mlp.down_proj.weight           (d_model, d_ff)
//! model.norm.weight                               (d_model,)
//! lm_head.weight                                  (vocab, d_model), absent when tied
//! ```
//!
//! The Q/K layout: Hugging Face rotates the two halves of each head
//! (`RopeLayout::HalfSplit`); llama.cpp's converter permutes each head's rows
//! of Wq and Wk so that RoPE rotates adjacent pairs (`Interleaved`). Row
//! `2j + a` of a GGUF head is row `a·(head_dim/2) + j` of the Hugging Face
//! head; [`interleaved_to_half_split`] and [`half_split_to_interleaved`] move
//! between the two.

pub const EMBED: &str = "model.embed_tokens.weight";
pub const NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Layer `i`'s tensor `part` (`self_attn.q_proj`, `mlp.down_proj`,
/// `input_layernorm`, ...): `model.layers.{i}.{part}.weight`.
pub fn layer(i: usize, part: &str) -> String {
    format!("model.layers.{i}.{part}.weight")
}

/// Rows of `w` (`n_heads` heads of `head_dim` rows, `cols` columns each)
/// from GGUF's interleaved order to Hugging Face's half-split order.
pub fn interleaved_to_half_split(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    permute(w, n_heads, head_dim, cols, true)
}

/// The inverse of [`interleaved_to_half_split`].
pub fn half_split_to_interleaved(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<f32> {
    permute(w, n_heads, head_dim, cols, false)
}

fn permute(w: &[f32], n_heads: usize, hd: usize, cols: usize, to_half_split: bool) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for j in 0..hd / 2 {
            for a in 0..2 {
                // GGUF row 2j + a of a head is Hugging Face row a·(hd/2) + j.
                let gguf = (h * hd + 2 * j + a) * cols;
                let hf = (h * hd + a * hd / 2 + j) * cols;
                let (src, dst) = if to_half_split {
                    (gguf, hf)
                } else {
                    (hf, gguf)
                };
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_permutations_are_inverse_and_move_rows_as_documented() {
        let (heads, hd, cols) = (2, 4, 3);
        let w: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
        let hf = interleaved_to_half_split(&w, heads, hd, cols);
        assert_eq!(half_split_to_interleaved(&hf, heads, hd, cols), w);
        // GGUF head 1, row 2·1 + 1 = 3 → Hugging Face row 1·2 + 1 = 3; row 1 → 2.
        let row = |v: &[f32], h: usize, r: usize| v[(h * hd + r) * cols];
        assert_eq!(row(&hf, 1, 2), row(&w, 1, 1));
        assert_eq!(row(&hf, 1, 1), row(&w, 1, 2));
        assert_ne!(hf, w);
    }
}
