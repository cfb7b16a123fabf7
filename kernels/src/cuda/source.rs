//! The CUDA C++ sources, one file per op under `kernels/cuda/`, compiled into
//! the binary with `include_str!` so a copied binary needs no source tree.
//! Each is compiled with `common.cuh` prepended (NVRTC here has no headers).

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// The file name under `kernels/cuda/` (also the NVRTC program name).
    pub file: &'static str,
    pub src: &'static str,
    /// Entry points, as launched.
    pub entries: &'static [&'static str],
}

/// What every file is compiled with: typedefs, f16 conversion by PTX,
/// warp and block reductions, the reference dequantization.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

macro_rules! source {
    ($file:literal, [$($entry:literal),+ $(,)?]) => {
        KernelSource {
            file: $file,
            src: include_str!(concat!("../../cuda/", $file)),
            entries: &[$($entry),+],
        }
    };
}

/// Every kernel file. The compile test builds each for sm_90 and fails on
/// any error or register spill.
pub const SOURCES: &[KernelSource] = &[
    source!("add.cu", ["add_inplace"]),
    source!("copy.cu", ["copy_f32x4"]),
    source!("silu_mul.cu", ["silu_mul"]),
    source!("rmsnorm.cu", ["rmsnorm_fwd", "rmsnorm_bwd"]),
    source!("rope.cu", ["rope"]),
    source!("embedding.cu", ["embedding"]),
    source!("argmax.cu", ["argmax"]),
    source!("gemv.cu", ["gemv_v1", "gemv_v2", "gemv_v3", "gemv_f32"]),
    source!("matmul.cu", ["matmul_v1", "matmul_v2"]),
    source!("kv_write.cu", ["kv_write"]),
    source!("paged_attention.cu", ["paged_attention_decode"]),
    source!("flash_attention.cu", ["flash_attention_prefill"]),
    source!("cross_entropy.cu", ["cross_entropy_fwd_bwd"]),
    source!("adamw.cu", ["adamw"]),
];

impl KernelSource {
    /// The text NVRTC compiles: the common prelude, then the file.
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n// ---- {}\n{}", self.file, self.src)
    }

    /// The source file defining `entry`.
    pub fn defining(entry: &str) -> Option<&'static KernelSource> {
        SOURCES.iter().find(|s| s.entries.contains(&entry))
    }
}
