//! # kernels: hand-written compute kernels
//!
//! The inner loops of `train` and `infer` written by hand: quantized matrix
//! products, RMSNorm, RoPE, softmax, SiLU. SIMD on the CPU with runtime feature
//! detection and a scalar reference for each; CUDA (`cudarc`) behind a cargo
//! feature later. Background: *Programming Massively Parallel Processors*
//! (Hwu, Kirk, El Hajj), and ggml's quantization formats as llama.cpp defines
//! them.
//!
//! Status: the quantized block formats with their dequantization, and the
//! scalar reference ops and the quantized dot products (scalar + AVX2) exist
//! (the first part of issue #6); threading over rows, matrix-matrix products
//! and SIMD versions of the other ops are not built yet.
//!
//! # Layout
//! - [`quant`]: ggml tensor types (F32, F16, BF16, Q8_0, Q4_0, Q4_1), their block
//!   layouts and scalar dequantization.
//! - [`ops`]: scalar references for RMSNorm, softmax, SiLU·mul and RoPE (both
//!   the GGUF and the Hugging Face layouts).
//! - [`qdot`]: quantized dot products and matvec (Q8_0, Q4_0, Q4_1 weights ·
//!   8-bit activations): scalar reference + AVX2/FMA with runtime detection.

pub mod ops;
pub mod qdot;
pub mod quant;
