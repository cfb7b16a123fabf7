//! # infer: an LLM inference engine and server
//!
//! Loads GGUF and safetensors Llama models, runs the forward pass on the
//! `kernels` crate, and (later) serves many requests at once with a paged KV
//! cache (the vLLM paper) and iteration-level continuous batching (the Orca
//! paper), over gRPC and an OpenAI-compatible HTTP API.
//!
//! Status: the GGUF v3 reader exists (the first part of issue #6); the
//! tokenizer, the forward pass, sampling and the CLI are not built yet, and
//! serving is issue #7.
//!
//! # Layout
//! - [`gguf`]: the GGUF v3 container: header, typed metadata, tensor infos,
//!   alignment, memory-mapped tensor data, dequantization to f32.

pub mod gguf;
