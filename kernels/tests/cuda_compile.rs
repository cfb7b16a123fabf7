//! Every CUDA kernel compiles with NVRTC, with no GPU: to PTX for
//! `compute_90` (what the engine loads on the H200) and to a cubin for
//! `sm_90` with ptxas's report, which must show no register spills and no
//! stack frame (a spill turns register traffic into local-memory traffic,
//! which the bandwidth figures in kernels/README.md assume away).
//!
//! NVRTC comes from PyPI (`nvidia-cuda-nvrtc==13.0.88`); the README's test
//! command installs it and sets `MLSTACK_NVRTC_DIR`. Without it this test
//! fails, naming the install step: a compile check that silently passed
//! without a compiler would check nothing.

use kernels::cuda::nvrtc::{self, Arch, Target};
use kernels::cuda::source::SOURCES;

#[test]
fn every_kernel_compiles_for_sm_90_without_spills() {
    let (major, minor) = nvrtc::version().unwrap_or_else(|e| panic!("{e}"));
    // 13.0: the H200's driver (580) JITs PTX up to ISA 9.0; newer NVRTC
    // writes PTX it rejects.
    assert_eq!((major, minor), (13, 0), "NVRTC {major}.{minor}; pin 13.0");
    let mut report = Vec::new();
    for src in SOURCES {
        let ptx = nvrtc::compile(src, Target::Ptx(Arch::SM_90)).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&ptx.image);
        assert!(
            text.contains(".target sm_90"),
            "{}: PTX without .target sm_90",
            src.file
        );
        for entry in src.entries {
            assert!(
                text.contains(&format!(".entry {entry}(")),
                "{}: PTX has no entry {entry}",
                src.file
            );
        }
        let cubin =
            nvrtc::compile(src, Target::Cubin(Arch::SM_90)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &cubin.image[..4],
            b"\x7fELF",
            "{}: a cubin is an ELF file",
            src.file
        );
        let resources = nvrtc::parse_ptxas_report(&cubin.log);
        let mut entries: Vec<&str> = resources.iter().map(|r| r.function.as_str()).collect();
        entries.sort_unstable();
        let mut want = src.entries.to_vec();
        want.sort_unstable();
        assert_eq!(
            entries, want,
            "{}: ptxas reported other functions:\n{}",
            src.file, cubin.log
        );
        for r in resources {
            assert!(
                r.spill_store_bytes == 0 && r.spill_load_bytes == 0 && r.stack_bytes == 0,
                "{}::{} spills: {r:?}\n{}",
                src.file,
                r.function,
                cubin.log
            );
            assert!(r.registers > 0 && r.registers <= 255, "{r:?}");
            report.push(r);
        }
    }
    for r in &report {
        println!(
            "{:<26} {:>3} registers  {:>6} B shared",
            r.function, r.registers, r.shared_bytes
        );
    }
}

#[test]
fn a_kernel_that_does_not_compile_is_a_typed_error_with_the_log() {
    let bad = kernels::cuda::source::KernelSource {
        file: "broken.cu",
        src: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
        entries: &["broken"],
    };
    let err = nvrtc::compile(&bad, Target::Ptx(Arch::SM_90)).expect_err("must not compile");
    let text = err.to_string();
    assert!(
        text.contains("broken.cu") && text.contains("undefined_name"),
        "{text}"
    );
}

/// The spill check sees local memory: a kernel indexing a local array at a
/// run-time offset gets a stack frame, which the test above would refuse.
#[test]
fn a_kernel_using_local_memory_is_caught_by_the_report() {
    let local = kernels::cuda::source::KernelSource {
        file: "local.cu",
        src: "extern \"C\" __global__ void local(float* x, int k) {\n\
              float a[64];\n\
              for (int i = 0; i < 64; i++) a[i] = x[i];\n\
              for (int j = 0; j < k; j++) a[(j * 7 + k) & 63] += a[(j * 13) & 63];\n\
              x[0] = a[k & 63];\n\
              }",
        entries: &["local"],
    };
    let cubin =
        nvrtc::compile(&local, Target::Cubin(Arch::SM_90)).unwrap_or_else(|e| panic!("{e}"));
    let r = nvrtc::parse_ptxas_report(&cubin.log);
    assert_eq!(r.len(), 1, "{}", cubin.log);
    assert!(r[0].stack_bytes >= 256, "{r:?}\n{}", cubin.log);
}
