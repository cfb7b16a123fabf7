//! The `mlstack` binary: parse, run, report. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of glibc's malloc: the servers allocate many small,
// short-lived buffers per request (HTTP/2 frames, protobuf and bincode
// messages, LSM keys), and under `perf` glibc's `_int_malloc`, `unlink_chunk`
// and `malloc_consolidate` were the largest single items of a Raft leader's
// profile (about 13% of its cycles at 64 clients).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = mlstack::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(mlstack::run(cli));
    // A blocking task still running (a demo step cut short by Ctrl-C, say)
    // is not waited for: dropping the runtime would block until it returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
