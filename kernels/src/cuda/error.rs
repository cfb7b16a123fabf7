//! The CUDA layer's errors. "No driver" and "no device" are their own
//! variants so the CLI can say what is missing and the tests can report
//! "skipped, no GPU" instead of passing.

use std::path::PathBuf;

/// Errors from loading CUDA, compiling kernels and launching them.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda.so` (the NVIDIA driver) could not be opened.
    #[error(
        "no CUDA driver: libcuda.so could not be loaded (--device cuda needs an NVIDIA GPU with its driver installed)"
    )]
    NoDriver,
    /// The driver loaded but reports no usable device.
    #[error("no CUDA device: the driver is present but {detail}")]
    NoDevice { detail: String },
    /// `libnvrtc.so` could not be found or loaded.
    #[error(
        "NVRTC not found ({detail}): pip install nvidia-cuda-nvrtc==13.0.88 and set MLSTACK_NVRTC_DIR to its nvidia/cu13/lib folder"
    )]
    NoNvrtc { detail: String },
    /// NVRTC rejected a kernel file; the log has the compiler's messages.
    #[error("NVRTC could not compile {file} for {arch}: {log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    /// A driver call failed.
    #[error("CUDA {what}: {detail}")]
    Driver { what: String, detail: String },
    /// Arguments a kernel cannot take (shapes, limits of its tiling).
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// Reading or writing the on-disk kernel cache.
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CudaError {
    /// True when the machine has no GPU to run on (driver or device missing):
    /// the tests report these as skipped.
    pub fn is_no_gpu(&self) -> bool {
        matches!(self, CudaError::NoDriver | CudaError::NoDevice { .. })
    }

    /// A failed driver call, `what` saying which.
    pub fn driver(what: impl Into<String>, e: cudarc::driver::DriverError) -> CudaError {
        CudaError::Driver {
            what: what.into(),
            detail: e.to_string(),
        }
    }
}
