//! One GPU: its context and stream, and the kernels loaded into it.
//!
//! Opening checks, in order, that the driver library exists (cudarc would
//! panic on a missing one), that it reports a device, and that a context can
//! be made; each failure is its own [`CudaError`] so callers can tell "no
//! GPU here" from a real fault. Kernel files are compiled at first use, to
//! PTX for the device's compute capability, and cached on disk (keyed by the
//! architecture and a hash of the source), so later runs skip NVRTC; a
//! machine without NVRTC can run from a cache filled elsewhere (the GPU
//! script carries one).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
    sys as drv,
};
use cudarc::nvrtc::Ptx;

use super::CudaError;
use super::nvrtc::{self, Arch, Target};
use super::source::KernelSource;

/// An opened device.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    /// Modules by file, loaded once: a file's entries share its module.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Functions by entry point, so a launch after the first makes no
    /// driver call but the launch itself (what CUDA graph capture needs).
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, sm_{})", self.name, self.arch)
    }
}

/// Whether `libcuda.so` can be opened here (no GPU is touched).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { drv::is_culib_present() }
}

impl Gpu {
    /// Opens device `ordinal`, or says why there is none.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice {
            detail: format!("cuInit/cuDeviceGetCount failed: {e}"),
        })?;
        if count <= 0 {
            return Err(CudaError::NoDevice {
                detail: "reports 0 devices".into(),
            });
        }
        if ordinal >= count as usize {
            return Err(CudaError::NoDevice {
                detail: format!("has {count} device(s), none numbered {ordinal}"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            if e.0 == drv::cudaError_enum::CUDA_ERROR_NO_DEVICE {
                CudaError::NoDevice {
                    detail: format!("CUDA_ERROR_NO_DEVICE opening device {ordinal}"),
                }
            } else {
                CudaError::driver(format!("creating a context on device {ordinal}"), e)
            }
        })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::driver("reading the compute capability", e))?;
        let name = ctx
            .name()
            .map_err(|e| CudaError::driver("reading the device name", e))?;
        // A stream of our own, not the legacy default stream: CUDA graphs
        // cannot capture the default stream. Everything runs on this one
        // stream, in order, so cudarc's per-buffer events (which order work
        // across streams) are not needed, and they would break capture.
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver("creating a stream", e))?;
        // SAFETY: every launch, copy and allocation of this Gpu goes through
        // `stream`; no buffer is used from another stream.
        unsafe { ctx.disable_event_tracking() };
        Ok(Gpu {
            ctx,
            stream,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
            },
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Copies `v` to a new device buffer (stream-ordered).
    pub fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream
            .clone_htod(v)
            .map_err(|e| CudaError::driver(format!("uploading {} elements", v.len()), e))
    }

    /// Copies a device buffer back; returns once the copy (and everything
    /// queued before it) is done.
    pub fn download<T: DeviceRepr>(&self, v: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream
            .clone_dtoh(v)
            .map_err(|e| CudaError::driver(format!("downloading {} elements", v.len()), e))
    }

    /// A zeroed device buffer of `n` elements (at least one: a zero-length
    /// allocation is an error in the driver).
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(|e| CudaError::driver(format!("allocating {n} elements"), e))
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("synchronizing the stream", e))
    }

    /// The kernel `entry`, compiling and loading its file on first use.
    pub fn function(&self, entry: &'static str) -> Result<CudaFunction, CudaError> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(entry)
        {
            return Ok(f.clone());
        }
        let src = KernelSource::defining(entry).ok_or_else(|| CudaError::Shape {
            op: "load",
            detail: format!("no kernel file defines {entry}"),
        })?;
        let module = {
            // Held across the compile: two threads wanting one file compile it once.
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(src.file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = ptx_for(src, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_src(ptx))
                        .map_err(|e| CudaError::driver(format!("loading {}", src.file), e))?;
                    modules.insert(src.file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(entry)
            .map_err(|e| CudaError::driver(format!("finding {entry} in {}", src.file), e))?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry, f.clone());
        Ok(f)
    }
}

/// The kernel cache folder: `MLSTACK_CUDA_CACHE`, else `~/.cache/mlstack/cuda`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MLSTACK_CUDA_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/mlstack/cuda")
}

/// The cache file of `src` compiled for `arch`: the source's hash in the name,
/// so an edited kernel is never served from a stale entry.
pub fn cache_path(src: &KernelSource, arch: Arch) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.full_source().hash(&mut h);
    let stem = src.file.trim_end_matches(".cu");
    cache_dir().join(format!("{stem}-compute_{arch}-{:016x}.ptx", h.finish()))
}

/// PTX for `src` on `arch`: from the cache, else compiled with NVRTC and cached.
pub fn ptx_for(src: &KernelSource, arch: Arch) -> Result<String, CudaError> {
    let path = cache_path(src, arch);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text);
    }
    let compiled = nvrtc::compile(src, Target::Ptx(arch))?;
    let text = String::from_utf8_lossy(&compiled.image)
        .trim_end_matches('\0')
        .to_string();
    write_cache(&path, &text)?;
    Ok(text)
}

/// Fills the cache for every kernel file (the GPU script runs this here,
/// where NVRTC is installed, and carries the folder to the GPU machine).
pub fn fill_cache(arch: Arch) -> Result<Vec<PathBuf>, CudaError> {
    super::source::SOURCES
        .iter()
        .map(|s| ptx_for(s, arch).map(|_| cache_path(s, arch)))
        .collect()
}

fn write_cache(path: &std::path::Path, text: &str) -> Result<(), CudaError> {
    let err = |source| CudaError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename: a reader never sees half a file. The temporary
    // name is unique per process and call, so two writers of one entry
    // (two threads, two processes) never share it; the last rename wins,
    // with identical contents.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
