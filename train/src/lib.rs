//! # train: a small Llama-style trainer
//!
//! The training math written out (forward, backward, AdamW) with data and tensor
//! parallelism as in Megatron-LM and optimizer-state sharding as in ZeRO, writing
//! Hugging Face-compatible safetensors checkpoints that `infer` can serve.
//!
//! Status: not built yet; no issue is filed for it.
