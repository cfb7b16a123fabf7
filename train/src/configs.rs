//! Named model configurations and the trainer's hyperparameters.

use kernels::ops::RopeLayout;
use model::Config;

use crate::error::{Result, config_err};

/// A named Llama configuration (`tiny`, `small`, `golden`).
/// `smollm2-135m` is not here: it comes from the GGUF's own metadata
/// (see [`crate::init::from_gguf`]).
pub fn model_config(name: &str) -> Result<Config> {
    let base = |n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab_size, context_length| Config {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim: d_model / n_heads,
        d_ff,
        vocab_size,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        context_length,
        // Hugging Face's Q/K order: what checkpoints are written in.
        rope_layout: RopeLayout::HalfSplit,
    };
    let c = match name {
        // ~107k parameters: SmolLM2's tokenizer cut to its first 512 ids.
        "tiny" => base(2, 64, 4, 2, 128, 512, 256),
        // ~17M parameters (12.6M of them the tied embedding over SmolLM2's
        // full 49,152-token vocabulary); 8 query and 4 KV heads divide by 2
        // and 4 for tensor parallelism.
        "small" => base(6, 256, 8, 4, 768, 49_152, 512),
        // ~27k parameters over 256 ids: the JAX golden file's model.
        "golden" => base(2, 32, 4, 2, 64, 256, 64),
        other => {
            return Err(config_err(
                "model",
                format!("unknown config {other:?} (tiny, small, golden, smollm2-135m)"),
            ));
        }
    };
    c.validate()?;
    Ok(c)
}

/// Everything about a run except the model's shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hyper {
    /// Sequences per micro-batch, per rank.
    pub micro_batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step, per rank.
    pub grad_accum: usize,
    pub max_steps: u64,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f32,
    pub seed: u64,
}

impl Default for Hyper {
    fn default() -> Hyper {
        Hyper {
            micro_batch: 4,
            seq_len: 128,
            grad_accum: 1,
            max_steps: 100,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1337,
        }
    }
}
