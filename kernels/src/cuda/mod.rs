//! CUDA kernels, compiled at run time with NVRTC and launched through
//! `cudarc`'s driver API. Everything here builds without a GPU or a CUDA
//! toolkit: `cudarc` opens `libcuda` and `libnvrtc` only when asked
//! (`dynamic-loading`), and [`Gpu::open`] turns "no driver" and "no device"
//! into [`CudaError`]s instead of cudarc's panic.
//!
//! The kernels themselves are the `.cu` files under `kernels/cuda/`, one per
//! op, numbered variants side by side where the fast one is not obvious
//! (llm.c's `dev/cuda`); `kernels/README.md` explains each one's memory
//! access pattern and roofline. Their CPU references are this crate's scalar
//! functions ([`crate::ops`], [`crate::attention`], [`crate::reference`]).
//!
//! # Layout
//! - [`source`]: the `.cu` files (`include_str!`) and their entry points.
//! - [`nvrtc`]: compiling a file to PTX or a cubin, ptxas's resource report.
//! - [`device`]: [`Gpu`]: opening a device, the module cache (memory and disk).
//! - [`ops`]: typed, shape-checked launches of every kernel.
//! - [`error`]: the [`CudaError`] type.

pub mod device;
pub mod error;
pub mod nvrtc;
pub mod ops;
pub mod source;

pub use device::Gpu;
pub use error::CudaError;
