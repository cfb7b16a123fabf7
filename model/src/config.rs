//! The Llama hyperparameters, read from GGUF metadata or a Hugging Face
//! `config.json`, and written back as a `config.json` (`LlamaForCausalLM`).

use kernels::ops::RopeLayout;
use kernels::quant;

use crate::error::Error;
use crate::gguf::Header;

/// Hyperparameters of a Llama-architecture model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// The context length the model was trained for.
    pub context_length: usize,
    #[serde(skip)]
    pub rope_layout: RopeLayout,
}

pub(crate) fn cfg_err(key: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// From GGUF metadata (`llama.*`).
    pub fn from_gguf(h: &Header) -> Result<Config, Error> {
        let arch = h.str("general.architecture")?;
        if arch != "llama" {
            return Err(cfg_err(
                "general.architecture",
                format!("{arch:?} (mlstack runs \"llama\")"),
            ));
        }
        let u = |k: &str| h.u64(&format!("llama.{k}")).map(|v| v as usize);
        let d_model = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = h
            .get("llama.attention.head_count_kv")
            .and_then(|v| v.as_u64())
            .map_or(n_heads, |v| v as usize);
        let vocab_size = match h.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => h
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(<[_]>::len)
                .ok_or_else(|| cfg_err("llama.vocab_size", "absent"))?,
        };
        let c = Config {
            n_layers: u("block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim: d_model / n_heads.max(1),
            d_ff: u("feed_forward_length")?,
            vocab_size,
            rope_base: h
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rms_eps: h.f64("llama.attention.layer_norm_rms_epsilon")? as f32,
            context_length: u("context_length")?,
            rope_layout: RopeLayout::Interleaved,
        };
        c.validate()?;
        Ok(c)
    }

    /// From a Hugging Face `config.json` (`LlamaForCausalLM`).
    pub fn from_hf(v: &serde_json::Value) -> Result<Config, Error> {
        let u = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| cfg_err(k, "absent or not an integer"))
        };
        let f = |k: &str, default: f64| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default) as f32
        };
        let d_model = u("hidden_size")?;
        let n_heads = u("num_attention_heads")?;
        let c = Config {
            n_layers: u("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: u("num_key_value_heads").unwrap_or(n_heads),
            head_dim: u("head_dim").unwrap_or(d_model / n_heads.max(1)),
            d_ff: u("intermediate_size")?,
            vocab_size: u("vocab_size")?,
            rope_base: f("rope_theta", 10_000.0),
            rms_eps: f("rms_norm_eps", 1e-6),
            context_length: u("max_position_embeddings")?,
            rope_layout: RopeLayout::HalfSplit,
        };
        c.validate()?;
        Ok(c)
    }

    /// The checks the forward pass relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let checks = [
            (self.n_layers > 0, "n_layers", "must be positive"),
            (
                self.n_heads > 0
                    && self.n_kv_heads > 0
                    && self.n_heads.is_multiple_of(self.n_kv_heads),
                "n_kv_heads",
                "must divide n_heads",
            ),
            (
                self.head_dim > 0 && self.head_dim.is_multiple_of(2) && self.head_dim <= 256,
                "head_dim",
                "must be even and at most 256",
            ),
            (
                self.d_model.is_multiple_of(quant::QK) && self.d_ff.is_multiple_of(quant::QK),
                "d_model/d_ff",
                "must be multiples of 32",
            ),
            (self.vocab_size > 0, "vocab_size", "must be positive"),
        ];
        for (ok, key, reason) in checks {
            if !ok {
                return Err(cfg_err(key, format!("{reason} ({self:?})")));
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The Hugging Face `config.json` of this configuration; `tied` says
    /// whether the output head is the embedding (`tie_word_embeddings`).
    pub fn to_hf(&self, tied: bool) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "num_hidden_layers": self.n_layers,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_base,
            "rms_norm_eps": self.rms_eps,
            "max_position_embeddings": self.context_length,
            "tie_word_embeddings": tied,
            "torch_dtype": "float32",
        })
    }
}
