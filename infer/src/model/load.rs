//! Loading weights: GGUF matrices copied into a huge-page arena as stored
//! (quantized), Hugging Face checkpoints converted to f32; and writing a
//! model back as a Hugging Face checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::model::gguf::{GgufError, GgufFile};
use ::model::names;
use kernels::ops::RopeLayout;
use kernels::quant::{self, GgmlType};

use super::{Config, Data, Layer, Matrix, Model, ModelError};

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
                return Err(::model::Error::tensor(
                    name,
                    format!("dims {:?}, expected {want:?}", t.dims),
                )
                .into());
            }
            if !matches!(
                t.ty,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::F32
            ) {
                return Err(::model::Error::tensor(
                    name,
                    format!(
                        "{:?} weights are not supported for matrices (Q4_0, Q4_1, Q8_0, F32 are)",
                        t.ty
                    ),
                )
                .into());
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
                return Err(::model::Error::tensor(
                    name,
                    format!("{} elements, expected {n}", v.len()),
                )
                .into());
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
        let mut ck = ::model::safetensors::read_dir(dir)?;
        let config = ck.config.clone();
        let c = &config;
        let f32_mat = |v: Vec<f32>, rows: usize, cols: usize| Matrix {
            ty: GgmlType::F32,
            rows,
            cols,
            data: Data::F32(v),
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let mut m = |s: &str, rows: usize, cols: usize| -> Result<Matrix, ModelError> {
                Ok(f32_mat(
                    ck.take(&names::layer(i, s), &[rows, cols])?,
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
                attn_norm: ck.take(&names::layer(i, "input_layernorm"), &[c.d_model])?,
                ffn_norm: ck.take(&names::layer(i, "post_attention_layernorm"), &[c.d_model])?,
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
            ck.take(names::EMBED, &[c.vocab_size, c.d_model])?,
            c.vocab_size,
            c.d_model,
        );
        let norm = ck.take(names::NORM, &[c.d_model])?;
        let output = if ck.tied() {
            None
        } else {
            Some(f32_mat(
                ck.take(names::LM_HEAD, &[c.vocab_size, c.d_model])?,
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
        let dense = |m: &Matrix| {
            let mut v = vec![0f32; m.rows * m.cols];
            quant::dequantize(m.ty, m.bytes(), &mut v).expect("sizes checked at load");
            v
        };
        // Wq and Wk in Hugging Face's row order (half-split RoPE).
        let qk = |m: &Matrix, n_heads: usize| match c.rope_layout {
            RopeLayout::HalfSplit => dense(m),
            RopeLayout::Interleaved => {
                names::interleaved_to_half_split(&dense(m), n_heads, c.head_dim, m.cols)
            }
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let mut add = |part: &str, m: &Matrix, v: Vec<f32>| {
                tensors.push((names::layer(i, part), vec![m.rows, m.cols], v));
            };
            add("self_attn.q_proj", &l.wq, qk(&l.wq, c.n_heads));
            add("self_attn.k_proj", &l.wk, qk(&l.wk, c.n_kv_heads));
            add("self_attn.v_proj", &l.wv, dense(&l.wv));
            add("self_attn.o_proj", &l.wo, dense(&l.wo));
            add("mlp.gate_proj", &l.w_gate, dense(&l.w_gate));
            add("mlp.up_proj", &l.w_up, dense(&l.w_up));
            add("mlp.down_proj", &l.w_down, dense(&l.w_down));
            for (part, v) in [
                ("input_layernorm", &l.attn_norm),
                ("post_attention_layernorm", &l.ffn_norm),
            ] {
                tensors.push((names::layer(i, part), vec![c.d_model], v.clone()));
            }
        }
        tensors.push((
            names::EMBED.into(),
            vec![c.vocab_size, c.d_model],
            dense(&self.embed),
        ));
        tensors.push((names::NORM.into(), vec![c.d_model], self.norm.clone()));
        if let Some(o) = &self.output {
            tensors.push((
                names::LM_HEAD.into(),
                vec![c.vocab_size, c.d_model],
                dense(o),
            ));
        }
        Ok(::model::safetensors::write_dir(
            dir,
            c,
            self.output.is_none(),
            &tensors,
        )?)
    }
}

/// An anonymous read-only mapping of `len` bytes filled by `fill`, its start
/// aligned to 2 MiB and advised for transparent huge pages (a hint: without
/// THP the arena still works, on 4 KiB pages).
fn build_arena(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Arena, ModelError> {
    const HUGE: usize = 2 << 20;
    let io = |source| {
        ModelError::from(::model::Error::Io {
            path: PathBuf::from("<weight arena>"),
            source,
        })
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
pub(super) struct Arena {
    map: memmap2::Mmap,
    skew: usize,
}

impl Arena {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.map[self.skew..]
    }
}
