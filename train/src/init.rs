//! Starting weights: random (see [`crate::llama::Llama::init`]) or the
//! SmolLM2-135M GGUF dequantized to f32, for fine-tuning.

use std::path::Path;

use kernels::ops::RopeLayout;
use model::gguf::GgufFile;
use model::names;
use model::tokenizer::Tokenizer;

use crate::error::Result;
use crate::llama::Llama;

/// The model in a GGUF file as trainable f32 parameters in Hugging Face
/// layout: every tensor dequantized, Wq and Wk rows permuted from llama.cpp's
/// interleaved RoPE order back to Hugging Face's half-split order (so the
/// checkpoint the trainer writes is a plain Hugging Face Llama). Also its
/// tokenizer.
pub fn from_gguf(path: &Path) -> Result<(Llama, Vec<f32>, Tokenizer)> {
    let file = GgufFile::open(path).map_err(model::Error::from)?;
    let mut config = model::Config::from_gguf(&file.header)?;
    let tokenizer = Tokenizer::from_gguf(&file.header)?;
    let tied = file.tensor("output.weight").is_err();
    let was = config.rope_layout;
    config.rope_layout = RopeLayout::HalfSplit;
    let llama = Llama::new(config, tied);
    let c = &llama.config;
    let mut p = vec![0f32; llama.layout.total];
    let deq = |name: &str| file.dequantize(name).map_err(model::Error::from);
    let qk = |v: Vec<f32>, heads: usize| match was {
        RopeLayout::Interleaved => {
            names::interleaved_to_half_split(&v, heads, c.head_dim, c.d_model)
        }
        RopeLayout::HalfSplit => v,
    };
    let mut put = |hf: &str, v: Vec<f32>| -> Result<()> {
        let e = llama
            .layout
            .entry(hf)
            .ok_or_else(|| model::Error::tensor(hf, "not in the layout"))?;
        if v.len() != e.len {
            return Err(model::Error::tensor(
                hf,
                format!("{} elements, expected {}", v.len(), e.len),
            )
            .into());
        }
        p[e.offset..e.offset + e.len].copy_from_slice(&v);
        Ok(())
    };
    put(names::EMBED, deq("token_embd.weight")?)?;
    put(names::NORM, deq("output_norm.weight")?)?;
    if !tied {
        put(names::LM_HEAD, deq("output.weight")?)?;
    }
    for i in 0..c.n_layers {
        let g = |s: &str| format!("blk.{i}.{s}.weight");
        put(&names::layer(i, "input_layernorm"), deq(&g("attn_norm"))?)?;
        put(
            &names::layer(i, "self_attn.q_proj"),
            qk(deq(&g("attn_q"))?, c.n_heads),
        )?;
        put(
            &names::layer(i, "self_attn.k_proj"),
            qk(deq(&g("attn_k"))?, c.n_kv_heads),
        )?;
        put(&names::layer(i, "self_attn.v_proj"), deq(&g("attn_v"))?)?;
        put(
            &names::layer(i, "self_attn.o_proj"),
            deq(&g("attn_output"))?,
        )?;
        put(
            &names::layer(i, "post_attention_layernorm"),
            deq(&g("ffn_norm"))?,
        )?;
        put(&names::layer(i, "mlp.gate_proj"), deq(&g("ffn_gate"))?)?;
        put(&names::layer(i, "mlp.up_proj"), deq(&g("ffn_up"))?)?;
        put(&names::layer(i, "mlp.down_proj"), deq(&g("ffn_down"))?)?;
    }
    Ok((llama, p, tokenizer))
}
