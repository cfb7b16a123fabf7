//! The Llama forward pass (Touvron et al., 2023), f32 activations over
//! quantized or f32 weights.
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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use kernels::attention;
use kernels::matmul::{self, Activations, Weights};
use kernels::ops::RopeLayout;
use kernels::qdot::BlockQ8;
use kernels::quant::{self, GgmlType};
use kernels::vec;
use rayon::prelude::*;

use crate::gguf::{GgufError, GgufFile, Header};

/// Errors from loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("model config {key:?}: {reason}")]
    Config { key: String, reason: String },
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("safetensors {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("context full: {len} cached + {n} new tokens > {max} slots")]
    ContextFull { len: usize, n: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("empty input: a forward pass needs at least one token")]
    Empty,
}

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

fn cfg_err(key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// From GGUF metadata (`llama.*`).
    pub fn from_gguf(h: &Header) -> Result<Config, ModelError> {
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
    pub fn from_hf(v: &serde_json::Value) -> Result<Config, ModelError> {
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
    fn validate(&self) -> Result<(), ModelError> {
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
}

enum Data {
    /// A range of the weight arena (GGUF tensors, as stored).
    Arena {
        arena: Arc<Arena>,
        start: usize,
        len: usize,
    },
    /// Converted at load time (safetensors F16/BF16/F32 → f32).
    F32(Vec<f32>),
}

/// A weight matrix: `rows` output features × `cols` inputs.
pub struct Matrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Data,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matrix({:?}, {}x{})", self.ty, self.rows, self.cols)
    }
}

impl Matrix {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Arena { arena, start, len } => &arena.bytes()[*start..*start + *len],
            // SAFETY: f32 has no invalid bit patterns and u8 alignment is 1.
            Data::F32(v) => unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
            },
        }
    }

    pub fn weights(&self) -> Weights<'_> {
        Weights::new(self.ty, self.rows, self.cols, self.bytes())
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes().len()
    }

    /// Row `r` as f32 (the embedding lookup).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        let rb = self.bytes().len() / self.rows;
        quant::dequantize(self.ty, &self.bytes()[r * rb..(r + 1) * rb], out)
            .expect("row size was checked at load");
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

/// A loaded model: configuration and weights.
pub struct Model {
    pub config: Config,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// None: tied to the embedding.
    output: Option<Matrix>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("weight_bytes", &self.weight_bytes())
            .finish_non_exhaustive()
    }
}

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
    /// Loads a GGUF Llama model.
    ///
    /// The matrices are copied out of the file into one anonymous mapping
    /// advised for transparent huge pages: a decode step streams every weight
    /// once, and with 4 KiB pages that is ~24,000 TLB misses per token for this
    /// 98 MB model, with 2 MiB pages about 50. (The copy costs ~50 ms at load
    /// and also pre-faults the weights, so the first token is not slowed by
    /// page faults.)
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        let config = Config::from_gguf(&file.header)?;
        let c = &config;
        let mut specs: Vec<(String, usize, usize)> = Vec::new();
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            specs.extend([
                (n("attn_q"), c.q_dim(), c.d_model),
                (n("attn_k"), c.kv_dim(), c.d_model),
                (n("attn_v"), c.kv_dim(), c.d_model),
                (n("attn_output"), c.d_model, c.q_dim()),
                (n("ffn_gate"), c.d_ff, c.d_model),
                (n("ffn_up"), c.d_ff, c.d_model),
                (n("ffn_down"), c.d_model, c.d_ff),
            ]);
        }
        specs.push(("token_embd.weight".into(), c.vocab_size, c.d_model));
        let has_output = match file.tensor("output.weight") {
            Ok(_) => true,
            Err(GgufError::NoSuchTensor { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        if has_output {
            specs.push(("output.weight".into(), c.vocab_size, c.d_model));
        }
        // Check every matrix, then lay them out 64-byte aligned in the arena.
        let mut layout = std::collections::HashMap::new();
        let mut total = 0usize;
        for (name, rows, cols) in &specs {
            let t = file.tensor(name)?;
            let want = [*cols as u64, *rows as u64];
            if t.dims != want {
                return Err(ModelError::Tensor {
                    name: name.clone(),
                    reason: format!("dims {:?}, expected {want:?}", t.dims),
                });
            }
            if !matches!(
                t.ty,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::F32
            ) {
                return Err(ModelError::Tensor {
                    name: name.clone(),
                    reason: format!(
                        "{:?} weights are not supported for matrices (Q4_0, Q4_1, Q8_0, F32 are)",
                        t.ty
                    ),
                });
            }
            layout.insert(name.clone(), (total, t.bytes as usize, t.ty, *rows, *cols));
            total += (t.bytes as usize).next_multiple_of(64);
        }
        let arena = Arc::new(build_arena(total, |arena| {
            for (name, &(start, len, ..)) in &layout {
                let src = file.tensor_bytes(name).expect("checked above");
                arena[start..start + len].copy_from_slice(src);
            }
        })?);
        let mat = |name: &str| -> Matrix {
            let &(start, len, ty, rows, cols) = &layout[name];
            Matrix {
                ty,
                rows,
                cols,
                data: Data::Arena {
                    arena: arena.clone(),
                    start,
                    len,
                },
            }
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let v = file.dequantize(name)?;
            if v.len() != n {
                return Err(ModelError::Tensor {
                    name: name.to_string(),
                    reason: format!("{} elements, expected {n}", v.len()),
                });
            }
            Ok(v)
        };
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: vector(&n("attn_norm"), c.d_model)?,
                    wq: mat(&n("attn_q")),
                    wk: mat(&n("attn_k")),
                    wv: mat(&n("attn_v")),
                    wo: mat(&n("attn_output")),
                    ffn_norm: vector(&n("ffn_norm"), c.d_model)?,
                    w_gate: mat(&n("ffn_gate")),
                    w_up: mat(&n("ffn_up")),
                    w_down: mat(&n("ffn_down")),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Model {
            embed: mat("token_embd.weight"),
            norm: vector("output_norm.weight", c.d_model)?,
            layers,
            output: has_output.then(|| mat("output.weight")),
            config,
        })
    }

    /// Loads a Hugging Face Llama checkpoint: `config.json` plus one or more
    /// `*.safetensors` files (F32, F16 or BF16; converted to f32 in memory).
    pub fn from_safetensors_dir(dir: &Path) -> Result<Model, ModelError> {
        let read =
            |p: PathBuf| std::fs::read(&p).map_err(|source| ModelError::Io { path: p, source });
        let cfg_path = dir.join("config.json");
        let cfg: serde_json::Value = serde_json::from_slice(&read(cfg_path.clone())?)
            .map_err(|e| cfg_err("config.json", format!("{}: {e}", cfg_path.display())))?;
        let config = Config::from_hf(&cfg)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Safetensors {
                path: dir.to_path_buf(),
                reason: "no *.safetensors files".into(),
            });
        }
        let mut tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> =
            std::collections::HashMap::new();
        for path in &files {
            let io = |source| ModelError::Io {
                path: path.clone(),
                source,
            };
            let file = std::fs::File::open(path).map_err(io)?;
            // SAFETY: read-only private mapping of a checkpoint nobody writes
            // while it loads; the bytes are converted and the map dropped.
            let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                ModelError::Safetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            for (name, view) in st.tensors() {
                let data = view.data();
                let values: Vec<f32> = match view.dtype() {
                    safetensors::Dtype::F32 => data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    safetensors::Dtype::F16 => data
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    safetensors::Dtype::BF16 => data
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    other => {
                        return Err(ModelError::Tensor {
                            name,
                            reason: format!("dtype {other:?} (F32, F16 and BF16 are supported)"),
                        });
                    }
                };
                tensors.insert(name, (view.shape().to_vec(), values));
            }
        }
        let c = &config;
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let (s, v) = tensors.remove(name).ok_or_else(|| ModelError::Tensor {
                name: name.to_string(),
                reason: "missing from the checkpoint".into(),
            })?;
            if s != shape {
                return Err(ModelError::Tensor {
                    name: name.to_string(),
                    reason: format!("shape {s:?}, expected {shape:?}"),
                });
            }
            Ok(v)
        };
        let f32_mat = |v: Vec<f32>, rows: usize, cols: usize| Matrix {
            ty: GgmlType::F32,
            rows,
            cols,
            data: Data::F32(v),
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            let mut m = |s: &str, rows: usize, cols: usize| -> Result<Matrix, ModelError> {
                Ok(f32_mat(
                    take(&format!("{p}.{s}.weight"), &[rows, cols])?,
                    rows,
                    cols,
                ))
            };
            let wq = m("self_attn.q_proj", c.q_dim(), c.d_model)?;
            let wk = m("self_attn.k_proj", c.kv_dim(), c.d_model)?;
            let wv = m("self_attn.v_proj", c.kv_dim(), c.d_model)?;
            let wo = m("self_attn.o_proj", c.d_model, c.q_dim())?;
            let w_gate = m("mlp.gate_proj", c.d_ff, c.d_model)?;
            let w_up = m("mlp.up_proj", c.d_ff, c.d_model)?;
            let w_down = m("mlp.down_proj", c.d_model, c.d_ff)?;
            layers.push(Layer {
                attn_norm: take(&format!("{p}.input_layernorm.weight"), &[c.d_model])?,
                ffn_norm: take(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[c.d_model],
                )?,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
            });
        }
        let embed = f32_mat(
            take("model.embed_tokens.weight", &[c.vocab_size, c.d_model])?,
            c.vocab_size,
            c.d_model,
        );
        let norm = take("model.norm.weight", &[c.d_model])?;
        let tied = cfg
            .get("tie_word_embeddings")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let output = if tied {
            None
        } else {
            Some(f32_mat(
                take("lm_head.weight", &[c.vocab_size, c.d_model])?,
                c.vocab_size,
                c.d_model,
            ))
        };
        Ok(Model {
            config,
            embed,
            layers,
            norm,
            output,
        })
    }

    /// A copy with every matrix dequantized to f32: the unquantized reference
    /// a quantized model is compared against (activations are then not
    /// quantized either).
    pub fn dequantized(&self) -> Model {
        let f = |m: &Matrix| {
            let mut v = vec![0f32; m.rows * m.cols];
            quant::dequantize(m.ty, m.bytes(), &mut v).expect("sizes checked at load");
            Matrix {
                ty: GgmlType::F32,
                rows: m.rows,
                cols: m.cols,
                data: Data::F32(v),
            }
        };
        Model {
            config: self.config.clone(),
            embed: f(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    attn_norm: l.attn_norm.clone(),
                    wq: f(&l.wq),
                    wk: f(&l.wk),
                    wv: f(&l.wv),
                    wo: f(&l.wo),
                    ffn_norm: l.ffn_norm.clone(),
                    w_gate: f(&l.w_gate),
                    w_up: f(&l.w_up),
                    w_down: f(&l.w_down),
                })
                .collect(),
            norm: self.norm.clone(),
            output: self.output.as_ref().map(f),
        }
    }

    /// Writes the model as a Hugging Face Llama checkpoint (`config.json` and
    /// one F32 `model.safetensors`) with the Q/K rows in Hugging Face's order:
    /// the inverse of llama.cpp's conversion permutation when this model came
    /// from GGUF. (How GGUF weights reach the trainer, and how the tests check
    /// the safetensors path against the GGUF one.)
    pub fn save_safetensors(&self, dir: &Path) -> Result<(), ModelError> {
        let c = &self.config;
        let io = |path: PathBuf| move |source| ModelError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let dense = |m: &Matrix| {
            let mut v = vec![0f32; m.rows * m.cols];
            quant::dequantize(m.ty, m.bytes(), &mut v).expect("sizes checked at load");
            v
        };
        // GGUF row 2j + a of a head is Hugging Face row a·(head_dim/2) + j.
        let unpermute = |m: &Matrix, n_heads: usize| {
            let v = dense(m);
            if c.rope_layout == RopeLayout::HalfSplit {
                return v;
            }
            let (hd, cols) = (c.head_dim, m.cols);
            let mut out = vec![0f32; v.len()];
            for h in 0..n_heads {
                for j in 0..hd / 2 {
                    for a in 0..2 {
                        let src = (h * hd + 2 * j + a) * cols;
                        let dst = (h * hd + a * hd / 2 + j) * cols;
                        out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
                    }
                }
            }
            out
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let mut add = |name: &str, m: &Matrix, v: Vec<f32>| {
                tensors.push((format!("{p}.{name}.weight"), vec![m.rows, m.cols], v));
            };
            add("self_attn.q_proj", &l.wq, unpermute(&l.wq, c.n_heads));
            add("self_attn.k_proj", &l.wk, unpermute(&l.wk, c.n_kv_heads));
            add("self_attn.v_proj", &l.wv, dense(&l.wv));
            add("self_attn.o_proj", &l.wo, dense(&l.wo));
            add("mlp.gate_proj", &l.w_gate, dense(&l.w_gate));
            add("mlp.up_proj", &l.w_up, dense(&l.w_up));
            add("mlp.down_proj", &l.w_down, dense(&l.w_down));
            tensors.push((
                format!("{p}.input_layernorm.weight"),
                vec![c.d_model],
                l.attn_norm.clone(),
            ));
            tensors.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![c.d_model],
                l.ffn_norm.clone(),
            ));
        }
        tensors.push((
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, c.d_model],
            dense(&self.embed),
        ));
        tensors.push((
            "model.norm.weight".into(),
            vec![c.d_model],
            self.norm.clone(),
        ));
        if let Some(o) = &self.output {
            tensors.push((
                "lm_head.weight".into(),
                vec![c.vocab_size, c.d_model],
                dense(o),
            ));
        }
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, shape, v)| (n, shape, v.iter().flat_map(|f| f.to_le_bytes()).collect()))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, shape, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Safetensors {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        let path = dir.join("model.safetensors");
        safetensors::tensor::serialize_to_file(views, None, &path).map_err(|e| {
            ModelError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": c.d_model,
            "intermediate_size": c.d_ff,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "num_hidden_layers": c.n_layers,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "rope_theta": c.rope_base,
            "rms_norm_eps": c.rms_eps,
            "max_position_embeddings": c.context_length,
            "tie_word_embeddings": self.output.is_none(),
            "torch_dtype": "float32",
        });
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).expect("json"))
            .map_err(io(cfg_path.clone()))
    }

    /// Bytes of weights one decode step reads (every matrix once, the output
    /// head included; the embedding lookup reads one row).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.size_bytes())
                    .sum::<usize>()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers + self.output.as_ref().unwrap_or(&self.embed).size_bytes() + 4 * self.norm.len()
    }

    /// Type of the attention and FFN matrices (of the first layer).
    pub fn weight_type(&self) -> GgmlType {
        self.layers[0].wq.ty
    }

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
    pub fn forward_batch<C: KvStore + Sync + ?Sized>(
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
        // (sequence, position) of every token row of the batch.
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
        let mut h = vec![0f32; n * d]; // normed input of each block
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut att = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let mut gate = vec![0f32; n * c.d_ff];
        let mut up = vec![0f32; n * c.d_ff];
        let mut swiglu = vec![0f32; n * c.d_ff];
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
            let mut qh = [0f32; 256];
            let qh = &mut qh[..hd];
            for (a, &b) in qh.iter_mut().zip(&q[i * hd..(i + 1) * hd]) {
                *a = f16::from_f32(b).to_f32();
            }
            let n_keys = pos + 1; // causal: up to and including itself
            let table = seqs[si].table;
            SCORES.with_borrow_mut(|scores| {
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

/// An anonymous read-only mapping of `len` bytes filled by `fill`, its start
/// aligned to 2 MiB and advised for transparent huge pages (a hint: without
/// THP the arena still works, on 4 KiB pages).
fn build_arena(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Arena, ModelError> {
    const HUGE: usize = 2 << 20;
    let io = |source| ModelError::Io {
        path: PathBuf::from("<weight arena>"),
        source,
    };
    let mut map = memmap2::MmapOptions::new()
        .len(len.max(1) + HUGE)
        .map_anon()
        .map_err(io)?;
    let skew = map.as_ptr().align_offset(HUGE);
    #[cfg(target_os = "linux")]
    if let Err(e) = map.advise_range(memmap2::Advice::HugePage, skew, len.max(1)) {
        // Not fatal: the kernel may not support THP.
        eprintln!("note: madvise(MADV_HUGEPAGE) on the weight arena failed: {e}");
    }
    fill(&mut map[skew..skew + len]);
    Ok(Arena {
        map: map.make_read_only().map_err(io)?,
        skew,
    })
}

/// The weight arena: `map[skew..]` is the 2 MiB-aligned window.
struct Arena {
    map: memmap2::Mmap,
    skew: usize,
}

impl Arena {
    fn bytes(&self) -> &[u8] {
        &self.map[self.skew..]
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
