//! Run-time compilation with NVRTC: a kernel file → PTX for a virtual
//! architecture (`compute_XY`, which the driver JIT-compiles for the device
//! it runs on) or a cubin for a real one (`sm_XY`, with ptxas's resource
//! report: registers, spills). NVRTC needs no GPU and no driver, so CI
//! compiles every kernel and checks the report.
//!
//! Finding the library: `cudarc` opens `libnvrtc.so.13` by name. The PyPI
//! wheel (`nvidia-cuda-nvrtc==13.0.88`, pinned: the H200's driver 580 JITs PTX
//! up to ISA 9.0, and NVRTC 13.1 writes newer PTX) puts it in
//! `site-packages/nvidia/cu13/lib`, which is on no search path, and
//! `libnvrtc.so` itself dlopens `libnvrtc-builtins.so.13.0` by name. When
//! `MLSTACK_NVRTC_DIR` names that folder, both are loaded by absolute path
//! first; the dynamic linker then answers the later by-name opens with the
//! libraries already loaded (it matches their SONAMEs), so no
//! `LD_LIBRARY_PATH` is needed.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};

use super::CudaError;
use super::source::KernelSource;

/// A compute capability (9.0 for the H200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    pub const SM_90: Arch = Arch { major: 9, minor: 0 };
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.major, self.minor)
    }
}

/// What to compile to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// PTX for `compute_XY`: what the engine loads (the driver finishes it).
    Ptx(Arch),
    /// A cubin for `sm_XY`, with `--ptxas-options=-v`: the resource report.
    Cubin(Arch),
}

impl Target {
    fn arch_flag(self) -> String {
        match self {
            Target::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
            Target::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
        }
    }
}

/// A compiled kernel file.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text (NUL-terminated, as the driver takes it) or cubin bytes.
    pub image: Vec<u8>,
    /// NVRTC's log: warnings, and for a cubin ptxas's report.
    pub log: String,
}

/// ptxas's report for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub function: String,
    pub registers: u32,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
    pub stack_bytes: u64,
    pub shared_bytes: u64,
}

static PRELOAD: OnceLock<Result<Vec<libloading::Library>, String>> = OnceLock::new();

/// Makes NVRTC loadable (see the module doc) and checks that it is.
pub fn ensure_loaded() -> Result<(), CudaError> {
    let pre = PRELOAD.get_or_init(|| {
        let Some(dir) = std::env::var_os("MLSTACK_NVRTC_DIR").map(PathBuf::from) else {
            return Ok(Vec::new());
        };
        let mut libs = Vec::new();
        // The builtins first: libnvrtc opens them during compilation.
        for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
            let path = dir.join(name);
            // SAFETY: NVIDIA's library; its initialisers have no preconditions.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => libs.push(lib),
                Err(e) => return Err(format!("MLSTACK_NVRTC_DIR: {}: {e}", path.display())),
            }
        }
        Ok(libs)
    });
    if let Err(detail) = pre {
        return Err(CudaError::NoNvrtc {
            detail: detail.clone(),
        });
    }
    // SAFETY: only tries to open the library; cudarc would panic later if absent.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoNvrtc {
            detail: "libnvrtc.so.13 is on no library path and MLSTACK_NVRTC_DIR is not set".into(),
        })
    }
}

/// NVRTC's version, (major, minor).
pub fn version() -> Result<(i32, i32), CudaError> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded; both pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::NoNvrtc {
            detail: format!("nvrtcVersion: {e}"),
        })?;
    Ok((major, minor))
}

/// Compiles one kernel file. Full-precision math (no fast math): the
/// kernels are checked against f64 references with tight bounds.
pub fn compile(k: &KernelSource, target: Target) -> Result<Compiled, CudaError> {
    ensure_loaded()?;
    let arch = match target {
        Target::Ptx(a) => format!("compute_{a}"),
        Target::Cubin(a) => format!("sm_{a}"),
    };
    let fail = |log: String| CudaError::Compile {
        file: k.file,
        arch: arch.clone(),
        log,
    };
    let src = CString::new(k.full_source()).map_err(|_| fail("source has a NUL byte".into()))?;
    let name = CString::new(k.file).map_err(|_| fail("file name has a NUL byte".into()))?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail(e.to_string()))?;
    let mut options = vec![
        target.arch_flag(),
        "--std=c++17".to_string(),
        "-lineinfo".into(),
    ];
    if matches!(target, Target::Cubin(_)) {
        options.push("--ptxas-options=-v".into());
    }
    // SAFETY: `prog` was created above and is destroyed once, below.
    let compiled = unsafe { result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    let image = compiled
        .map_err(|e| fail(format!("{e}\n{log}")))
        .and_then(|()| {
            // SAFETY: compiled successfully; `prog` is live.
            unsafe {
                match target {
                    Target::Ptx(_) => result::get_ptx(prog)
                        .map(|p| p.iter().map(|&c| c as u8).collect())
                        .map_err(|e| fail(e.to_string())),
                    Target::Cubin(_) => get_cubin(prog).map_err(|e| fail(e.to_string())),
                }
            }
        });
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { image: image?, log })
}

/// # Safety
/// `prog` is a live, successfully compiled program.
unsafe fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result()?;
    let mut bytes = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()) }.result()?;
    Ok(bytes)
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses ptxas's `-v` report out of an NVRTC log:
///
/// ```text
/// ptxas info    : Compiling entry function 'rope' for 'sm_90'
/// ptxas info    : Function properties for rope
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 18 registers, used 0 barriers, 392 bytes cmem[0]
/// ```
pub fn parse_ptxas_report(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let number_before = |line: &str, marker: &str| -> Option<u64> {
        let at = line.find(marker)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(Resources {
                function: name,
                ..Resources::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("spill stores") {
            cur.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            cur.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            cur.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if let Some(rest) = line.split("Used ").nth(1) {
            cur.registers = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if let Some(smem) = number_before(line, "bytes smem") {
                cur.shared_bytes = smem;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_parsed_per_function() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'a' for 'sm_90'\n\
ptxas info    : Function properties for a\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, used 1 barriers, 16896 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'b' for 'sm_90'\n\
ptxas info    : Function properties for b\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 18 registers, used 0 barriers, 392 bytes cmem[0]\n";
        let r = parse_ptxas_report(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                function: "a".into(),
                registers: 40,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
                stack_bytes: 8,
                shared_bytes: 16896,
            }
        );
        assert_eq!((r[1].registers, r[1].spill_store_bytes), (18, 0));
    }
}
