//! # mlstack: the command-line front of a miniature ML systems stack
//!
//! One binary, `mlstack`, whose subcommands call into the component crates
//! (`ARCHITECTURE.md`, "Conventions"). This crate stays thin: argument parsing,
//! process wiring (observability, signals, servers), and the end-to-end demo.
//! The ideas live in the component crates.
//!
//! # Layout
//! - [`cli`]: the clap command tree; every flag also reads `MLSTACK_<FLAG>`.
//! - [`diag`]: the `mlstack.diag.v1.Diag` service every gRPC server mounts, and
//!   `mlstack diag serve|ping`.
//! - [`demo`]: `mlstack demo`, which drives whatever exists of the data path.
//! - [`lsm`]: `mlstack lsm ...`: inspect and benchmark the storage engine.
//! - [`infer`]: `mlstack infer ...`: generate text, benchmark the engine.
//! - [`run`]: dispatch from a parsed command line to the component.

pub mod cli;
pub mod demo;
pub mod diag;
pub mod infer;
pub mod ingest;
pub mod kv;
pub mod lsm;

use cli::{Cli, Command, DiagCommand};

/// Errors the CLI reports; each component's own error is carried with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Observe(#[from] observe::Error),
    #[error(transparent)]
    Proto(#[from] proto::Error),
    /// A gRPC call failed.
    #[error("{what} at {endpoint}: {code:?}: {message}")]
    Rpc {
        what: &'static str,
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    /// A server could not bind or serve.
    #[error("{what} on {addr}: {reason}")]
    Serve {
        what: &'static str,
        addr: String,
        reason: String,
    },
    /// An HTTP request (metrics scrape, readiness probe) failed.
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// A benchmark could not run.
    #[error("benchmark: {0}")]
    Bench(String),
    #[error(transparent)]
    Generate(#[from] ::infer::generate::GenerateError),
    /// The inference command could not start (model not found, bad flags).
    #[error("infer: {0}")]
    Infer(String),
    #[error(transparent)]
    Kv(#[from] consensus::Error),
    #[error(transparent)]
    Stream(#[from] stream::Error),
    /// A chaos drill found a violation (the report says which).
    #[error("chaos drill {drill} failed: {reason}")]
    ChaosFailed { drill: String, reason: String },
    /// A key was not found (`mlstack lsm get`).
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// The demo found a result that contradicts what it demonstrates.
    #[error("demo check failed: {0}")]
    DemoCheck(String),
}

impl Error {
    pub(crate) fn rpc(what: &'static str, endpoint: &str, status: tonic::Status) -> Self {
        Self::Rpc {
            what,
            endpoint: endpoint.to_string(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Writes a benchmark's JSON report, creating its directory.
pub(crate) fn write_bench_json(out: &std::path::Path, json: &str) -> Result<(), Error> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Bench(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(out, json).map_err(|e| Error::Bench(format!("{}: {e}", out.display())))
}

/// Writes a benchmark report as pretty JSON and says where on stderr.
pub(crate) fn write_bench_report(
    out: &std::path::Path,
    json: &serde_json::Value,
) -> Result<(), Error> {
    write_bench_json(out, &serde_json::to_string_pretty(json).unwrap_or_default())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Sets up observability for `service` the way the command line asked.
pub fn init_observe(cli: &Cli, service: &str) -> Result<observe::Telemetry, Error> {
    let mut config = observe::Config::from_env(service);
    config.log_format = cli.log_format;
    Ok(observe::init_with(config)?)
}

/// Runs one parsed command line to completion.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match &cli.command {
        Command::Demo(args) => {
            let telemetry = init_observe(&cli, "demo")?;
            let result = demo::run(args, &telemetry).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Diag(DiagCommand::Serve(args)) => {
            let telemetry = init_observe(&cli, "diag")?;
            let result = diag::serve_until_signal(args, &telemetry).await;
            // Flush even when serving failed: the spans explain the failure.
            telemetry.shutdown().await?;
            result
        }
        Command::Lsm(cmd) => {
            let telemetry = init_observe(&cli, "lsm")?;
            // Blocking file I/O and CPU-bound benchmark loops: off the runtime.
            let cmd = cmd.clone();
            let result = tokio::task::spawn_blocking(move || lsm::run(&cmd))
                .await
                .map_err(|e| Error::Bench(format!("lsm task failed: {e}")))
                .and_then(|r| r);
            telemetry.shutdown().await?;
            result
        }
        Command::Infer(cli::InferCommand::Serve(args)) => {
            let telemetry = init_observe(&cli, "infer")?;
            let result = infer::serve(args).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Infer(cli::InferCommand::BenchServe(args)) => {
            let telemetry = init_observe(&cli, "infer-bench")?;
            let result = infer::bench_serve(args).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Infer(cli::InferCommand::Client(args)) => {
            let telemetry = init_observe(&cli, "infer-client")?;
            let result = infer::client(args).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Infer(cmd) => {
            let telemetry = init_observe(&cli, "infer")?;
            // CPU-bound: off the async runtime's workers.
            let cmd = cmd.clone();
            let result = tokio::task::spawn_blocking(move || infer::run(&cmd))
                .await
                .map_err(|e| Error::Infer(format!("infer task failed: {e}")))
                .and_then(|r| r);
            telemetry.shutdown().await?;
            result
        }
        Command::Kv(cmd) => {
            let service = match cmd {
                cli::KvCommand::Serve(a) => format!("kv-{}", a.id),
                _ => "kv-client".into(),
            };
            let telemetry = init_observe(&cli, &service)?;
            let result = kv::run(cmd).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Ingest(cmd) => {
            let telemetry = init_observe(&cli, "ingest")?;
            let result = ingest::run(cmd).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Produce(args) => {
            let telemetry = init_observe(&cli, "produce")?;
            let result = ingest::produce(args).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Chaos(args) => {
            let telemetry = init_observe(&cli, "chaos")?;
            let result = kv::chaos(args).await;
            telemetry.shutdown().await?;
            result
        }
        Command::Diag(DiagCommand::Ping(args)) => {
            let telemetry = init_observe(&cli, "diag-client")?;
            let result = diag::ping_command(args).await;
            telemetry.shutdown().await?;
            result
        }
    }
}
