//! # infer: an LLM inference engine and server
//!
//! Loads GGUF and safetensors Llama models, runs the forward pass on the
//! `kernels` crate, and serves many requests at once with a paged KV cache
//! (the vLLM paper) and iteration-level continuous batching (the Orca paper),
//! over gRPC and an OpenAI-compatible HTTP API.
//!
//! Status: not built yet; issues #6 (the engine) and #7 (serving) specify it.
