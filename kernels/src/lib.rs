//! # kernels: hand-written compute kernels
//!
//! The inner loops of `train` and `infer` written by hand: quantized matrix
//! products, RMSNorm, RoPE, softmax, SiLU. SIMD on the CPU with runtime feature
//! detection and a scalar reference for each; CUDA kernels (`cudarc`, NVRTC)
//! for the same ops. Background: *Programming Massively Parallel Processors*
//! (Hwu, Kirk, El Hajj), and ggml's quantization formats as llama.cpp defines
//! them.
//!
//! Every fast kernel has a scalar reference beside it and a test comparing the
//! two on random inputs, with the error bound stated in its doc comment. The
//! CUDA kernels are checked against the same references on the device
//! (`mlstack kernels bench --device cuda`).
//!
//! # Layout
//! - [`quant`]: ggml tensor types (F32, F16, BF16, Q8_0, Q4_0, Q4_1), their block
//!   layouts and scalar dequantization.
//! - [`ops`]: scalar references for RMSNorm, softmax, SiLU·mul and RoPE (both
//!   the GGUF and the Hugging Face layouts).
//! - [`qdot`]: quantized dot products and matvec (Q8_0, Q4_0, Q4_1 weights ·
//!   8-bit activations): scalar reference + AVX2/FMA and AVX-512 VNNI with
//!   runtime detection.
//! - [`vec`]: f32 dot and axpy (attention), and the AVX2 versions of RMSNorm,
//!   softmax and SiLU·mul (vectorized `exp`).
//! - [`attention`]: scores and weighted sums over an f16 KV cache.
//! - [`matmul`]: weights × a batch of activation rows, multi-threaded over
//!   output rows with rayon (decode's matvec and prefill's matmul).
//! - [`reference`]: f64 references for the composite CUDA kernels (a product
//!   over stored weights, paged decode and causal prefill attention).
//! - [`cuda`]: the CUDA kernels (`kernels/cuda/*.cu`), compiled at run time
//!   with NVRTC, launched with `cudarc`; built and compile-checked without a
//!   GPU.

pub mod attention;
pub mod cuda;
pub mod matmul;
pub mod ops;
pub mod qdot;
pub mod quant;
pub mod reference;
pub mod vec;
