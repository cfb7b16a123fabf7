//! # infer: an LLM inference engine and server
//!
//! Loads GGUF and safetensors Llama models, tokenizes with the model's own
//! vocabulary, runs the forward pass on the `kernels` crate, samples and
//! streams text; it matches llama.cpp's greedy tokens on SmolLM2 except at
//! near-ties (see `README.md`). Background: the Llama paper (Touvron et al.,
//! 2023) for the architecture, llama.cpp for the GGUF format and quantized
//! arithmetic; serving many requests at once follows the vLLM paper (Kwon et
//! al., SOSP '23: the paged KV cache) and the Orca paper (Yu et al., OSDI '22:
//! iteration-level scheduling).
//!
//! # Layout
//! - [`model`]: the weights (`model/mod.rs`), loading them from GGUF or a
//!   Hugging Face checkpoint and writing them back (`model/load.rs`), the
//!   forward pass (batched prefill and decode) over the f16 KV cache
//!   (`model/forward.rs`).
//!
//! The model description this engine shares with the trainer (the config,
//! the GGUF reader, Hugging Face tensor names and the safetensors format, the
//! tokenizer and chat template) is the `model` crate's.
//! - [`sampling`]: greedy, temperature, top-k, top-p, min-p, repetition
//!   penalty, seeded.
//! - [`generate`]: one sequence's prefill + decode loop with stop conditions.
//! - [`paged`]: the paged KV cache: block pool, ref-counted allocator, prefix
//!   caching with LRU eviction.
//! - [`scheduler`]: continuous batching: chunked prefill, admission,
//!   preemption.
//! - [`request`]: the one request type, how a sequence ends, and the
//!   per-token step (sample, EOS, UTF-8 decoder, stop filter) every loop runs.
//! - [`stop`]: stop strings matched as text streams (a KMP automaton per
//!   string: amortised O(1) per byte, whatever their length).
//! - [`engine_loop`]: the engine thread (continuous batching over the
//!   scheduler), request channels, metrics.
//! - [`api`]: the front: gRPC `mlstack.infer.v1.Inference` and
//!   OpenAI-compatible HTTP.
//! - [`http_body`]: an OpenAI request body → the engine request (before
//!   tokenization); `openapi.json` describes the HTTP API.

pub mod api;
/// API keys live in `proto` (the KV nodes read the same files).
pub use proto::auth;
pub mod engine_loop;
pub mod generate;
pub mod http_body;
pub mod model;
pub mod paged;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod stop;

pub use ::model::locate::{DEFAULT_MODEL_FILE, locate_model};
