//! # kernels: hand-written compute kernels
//!
//! The inner loops of `train` and `infer` (quantized matrix products, RMSNorm,
//! RoPE, softmax, SiLU) written by hand: SIMD on the CPU with runtime feature
//! detection and a scalar reference for each, and CUDA (`cudarc`) behind a cargo
//! feature. Background: *Programming Massively Parallel Processors* (PMPP).
//!
//! Status: not built yet; issue #6 specifies the first CPU kernels.
