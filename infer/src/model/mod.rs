//! A loaded Llama model: its weights ([`Model`], [`Matrix`]), how they are
//! loaded from GGUF or a Hugging Face checkpoint and written back ([`load`]),
//! and the forward pass over a KV cache ([`forward`]). The description both
//! `infer` and `train` use (the config, tensor names, file formats) is the
//! `model` crate's.

use std::sync::Arc;

use kernels::matmul::Weights;
use kernels::quant::{self, GgmlType};

pub use ::model::Config;

pub mod cuda;
mod forward;
mod load;

use load::Arena;

pub use forward::{KvCache, KvStore, Logits, SegmentFn, SeqInput};

/// Errors from loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The config, a tensor, a file or its format (GGUF, safetensors).
    #[error(transparent)]
    Model(#[from] ::model::Error),
    #[error("context full: {len} cached + {n} new tokens > {max} slots")]
    ContextFull { len: usize, n: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("empty input: a forward pass needs at least one token")]
    Empty,
    /// The CUDA engine: no GPU, a kernel that would not compile, a driver fault.
    #[error(transparent)]
    Cuda(#[from] kernels::cuda::CudaError),
}

impl From<::model::gguf::GgufError> for ModelError {
    fn from(e: ::model::gguf::GgufError) -> Self {
        ModelError::Model(e.into())
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

impl Model {
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
}
