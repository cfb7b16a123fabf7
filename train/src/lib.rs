//! # train: a Llama trainer written out by hand
//!
//! The training half of the model `infer` serves: the forward and backward
//! pass of every op written out as in llm.c's `train_gpt2.c` (Karpathy,
//! 2024), AdamW (Loshchilov & Hutter, 2019) with warmup and cosine decay,
//! gradient clipping and accumulation, data parallelism across processes
//! over a TCP ring all-reduce (Patarasuk & Yuan, 2009) with bucketed
//! gradients overlapped with the backward (PyTorch DDP, Li et al., 2020),
//! optimizer-state sharding (ZeRO stage 1, Rajbhandari et al., 2020),
//! tensor parallelism (Megatron-LM, Shoeybi et al., 2019), and activation
//! recomputation (Chen et al., 2016). It reads the Parquet that
//! `stream` writes and writes Hugging Face checkpoints `infer` loads.
//!
//! # Layout
//! - [`ops`]: each op's `*_forward` / `*_backward` pair (embedding, RMSNorm,
//!   matmul through `gemm`, RoPE, causal GQA attention, SwiGLU, cross-entropy).
//! - [`llama`]: the model's forward and backward over the flat parameters.
//! - [`params`]: where each tensor lives in the flat buffer.
//! - [`optim`]: AdamW, the schedule, gradient-norm clipping.
//! - [`data`]: documents from the ingest manifest / JSONL / text, the token
//!   cache, packing, the shuffled loader.
//! - [`dist`]: the process group (ring collectives over TCP), the launcher,
//!   and the Megatron split of the layers across tensor ranks.
//! - [`trainer`]: the training loop.
//! - [`checkpoint`]: Hugging Face checkpoints plus optimizer and trainer state.
//! - [`registry`]: checkpoints recorded in the KV cluster.
//! - [`init`]: starting weights from the SmolLM2 GGUF.
//! - [`configs`]: the named model configs and the hyperparameters.
//! - [`metrics`], [`plot`], [`mfu`]: metrics.jsonl and Prometheus gauges,
//!   the loss curve PNG, the measured FP32 peak behind MFU.
//! - [`rng`], [`fsio`], [`error`]: SplitMix64, durable writes, the error type.

pub mod checkpoint;
pub mod configs;
pub mod data;
pub mod dist;
pub mod error;
pub mod fsio;
pub mod init;
pub mod llama;
pub mod metrics;
pub mod mfu;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plot;
pub mod registry;
pub mod rng;
pub mod trainer;

pub use error::{Result, TrainError};
