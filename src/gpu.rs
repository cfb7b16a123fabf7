//! `mlstack kernels`: the CUDA kernels' compile check (no GPU needed) and
//! their check-and-time bench on a GPU.

use std::io::Write;

use kernels::cuda::nvrtc::{self, Arch, Target};
use kernels::cuda::source::SOURCES;

use crate::Error;
use crate::cli::KernelsCommand;

pub fn run(cmd: &KernelsCommand) -> Result<(), Error> {
    match cmd {
        KernelsCommand::Compile(a) => compile(Arch {
            major: a.arch / 10,
            minor: a.arch % 10,
        }),
        KernelsCommand::Bench(a) => {
            if a.device != ::infer::generate::Device::Cuda {
                return Err(Error::Bench(
                    "kernels bench measures the CUDA kernels: --device cuda (the CPU kernels' bench is `cargo run --release -p kernels --example qbench`)".into(),
                ));
            }
            let run = bench::kernels::run(&bench::kernels::KernelBenchOpts {
                iters: a.iters,
                seed: a.seed,
            })
            .map_err(|e| Error::Bench(e.to_string()))?;
            // Written even when a check failed: that run's rows are the ones
            // a reader needs.
            crate::write_bench_report(&a.out, &run.report)?;
            if run.failed.is_empty() {
                Ok(())
            } else {
                Err(Error::Bench(format!(
                    "{} kernel check(s) left their bound: {}",
                    run.failed.len(),
                    run.failed.join(", ")
                )))
            }
        }
    }
}

/// Every file to PTX (cached) and to a cubin (the ptxas report printed).
fn compile(arch: Arch) -> Result<(), Error> {
    let fail = |e: kernels::cuda::CudaError| Error::Bench(e.to_string());
    let (major, minor) = nvrtc::version().map_err(fail)?;
    // A closed stdout (piped into `head`) ends the report, not the command.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "NVRTC {major}.{minor}; PTX cache {}",
        kernels::cuda::device::cache_dir().display()
    );
    kernels::cuda::device::fill_cache(arch).map_err(fail)?;
    let _ = writeln!(
        out,
        "{:<20} {:<26} {:>9} {:>12} {:>12}",
        "file", "kernel", "registers", "spill bytes", "smem bytes"
    );
    let mut spills = Vec::new();
    for src in SOURCES {
        let cubin = nvrtc::compile(src, Target::Cubin(arch)).map_err(fail)?;
        for r in nvrtc::parse_ptxas_report(&cubin.log) {
            let spill = r.spill_store_bytes + r.spill_load_bytes;
            let _ = writeln!(
                out,
                "{:<20} {:<26} {:>9} {:>12} {:>12}",
                src.file, r.function, r.registers, spill, r.shared_bytes
            );
            if spill > 0 || r.stack_bytes > 0 {
                spills.push(r.function.clone());
            }
        }
    }
    if spills.is_empty() {
        Ok(())
    } else {
        Err(Error::Bench(format!(
            "register spills or stack frames in: {}",
            spills.join(", ")
        )))
    }
}
