//! # mlstack: the command-line front of a miniature ML systems stack
//!
//! One binary, `mlstack`, whose subcommands call into the component crates
//! (`docs/ARCHITECTURE.md`, "Conventions"). This crate stays thin: argument parsing,
//! process wiring (observability, signals, servers), and the end-to-end demo.
//! The ideas live in the component crates.
//!
//! # Layout
//! - [`cli`]: the clap command tree; every flag also reads `MLSTACK_<FLAG>`.
//! - [`component`]: the life of a long-running command (metrics and readiness,
//!   the JSON line of bound ports, SIGINT/SIGTERM, drain order).
//! - [`diag`]: `mlstack diag serve|ping`.
//! - [`kv`]: `mlstack kv ...` and `mlstack chaos ...`.
//! - [`ingest`]: `mlstack ingest ...` and `mlstack produce`.
//! - [`lsm`]: `mlstack lsm ...`: inspect and benchmark the storage engine.
//! - [`infer`]: `mlstack infer ...`: generate, serve, benchmark.
//! - [`train`]: `mlstack train run|launch|plot`.
//! - [`models`]: `mlstack datasets ...` and `mlstack models ...` (snapshots,
//!   the registry).
//! - [`trace`]: `mlstack trace serve|show|list`: the trace store.
//! - [`pipeline`]: `mlstack demo`'s pipeline, Kafka → Parquet → train →
//!   registry → serve.
//! - [`demo`]: `mlstack demo`, which drives whatever exists of the data path.
//! - this file: the crate's [`Error`], and [`run`], which sets up
//!   observability and dispatches a parsed command line.

pub mod cli;
pub mod component;
pub mod demo;
pub mod diag;
pub mod gpu;
pub mod infer;
pub mod ingest;
pub mod kv;
pub mod lsm;
pub mod models;
pub mod pipeline;
pub mod trace;
pub mod train;

use cli::{Cli, Command, DiagCommand, InferCommand, KvCommand, TrainCommand};

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
    /// `mlstack certs generate` failed.
    #[error("certs generate: {0}")]
    Certs(#[from] proto::certs::CertsError),
    #[error(transparent)]
    Generate(#[from] ::infer::generate::GenerateError),
    /// The inference command could not start (model not found, bad flags).
    #[error("infer: {0}")]
    Infer(String),
    #[error(transparent)]
    Kv(#[from] consensus::Error),
    #[error(transparent)]
    Stream(#[from] stream::Error),
    #[error(transparent)]
    Chaos(#[from] chaos::Error),
    #[error(transparent)]
    KvClient(#[from] kvclient::ClientError),
    /// A chaos drill found a violation (the report says which).
    #[error("chaos drill {drill} failed: {reason}")]
    ChaosFailed { drill: String, reason: String },
    /// A command's blocking task panicked or was cancelled.
    #[error("{what} task failed: {reason}")]
    Task { what: &'static str, reason: String },
    /// A key was not found (`mlstack lsm get`).
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// Training failed (the trainer's error, with its context).
    #[error("train: {0}")]
    Train(String),
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

/// Writes a benchmark's report in the JSON convention and says where on stderr.
pub(crate) fn write_bench_report(
    out: &std::path::Path,
    report: &bench::Report,
) -> Result<(), Error> {
    report
        .write(out)
        .map_err(|e| Error::Bench(format!("{}: {e}", out.display())))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// A server's TLS from `--tls-cert` and `--tls-key` (`inference`, `diag`,
/// `trace serve`), if given; checked before any port is bound.
pub fn server_tls(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Result<Option<proto::tls::ServerTls>, Error> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    Ok(Some(
        proto::tls::ServerTls::from_files(cert, key).map_err(proto::Error::from)?,
    ))
}

/// A gRPC client's TLS trusting the CA in `--ca` (`diag ping`, `infer
/// client`), if given.
pub fn client_tls(
    ca: Option<&std::path::Path>,
) -> Result<Option<tonic::transport::ClientTlsConfig>, Error> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let tls = proto::tls::ClientTls {
        ca_pem: proto::tls::read_pem("--ca", ca).map_err(proto::Error::from)?,
        identity: None,
    };
    Ok(Some(tls.config().map_err(proto::Error::from)?))
}

/// Sets up observability for `service` the way the command line asked;
/// `otlp` (the demo's own trace receiver) overrides the environment's endpoint.
pub fn init_observe(
    cli: &Cli,
    service: &str,
    otlp: Option<String>,
) -> Result<observe::Telemetry, Error> {
    let mut config = observe::Config::from_env(service);
    config.log_format = cli.log_format;
    if otlp.is_some() {
        config.otlp_endpoint = otlp;
    }
    // The pipeline demo keeps the screen for its progress: logs to a file.
    if let Command::Demo(a) = &cli.command
        && !a.tour
    {
        let dir = pipeline::cache_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::DemoCheck(format!("{}: {e}", dir.display())))?;
        config.log_file = Some(dir.join("demo.log"));
    }
    Ok(observe::init_with(config)?)
}

/// The service name a command reports its logs, spans and metrics under.
fn service_name(command: &Command) -> String {
    match command {
        Command::Demo(_) => "demo".into(),
        Command::Diag(DiagCommand::Serve(_)) => "diag".into(),
        Command::Diag(DiagCommand::Ping(_)) => "diag-client".into(),
        Command::Lsm(_) => "lsm".into(),
        Command::Infer(InferCommand::BenchServe(_)) => "infer-bench".into(),
        Command::Infer(InferCommand::Client(_)) => "infer-client".into(),
        Command::Infer(_) => "infer".into(),
        Command::Kv(KvCommand::Serve(a)) => format!("kv-{}", a.id),
        Command::Kv(_) => "kv-client".into(),
        Command::Ingest(_) => "ingest".into(),
        Command::Produce(_) => "produce".into(),
        Command::Chaos(_) => "chaos".into(),
        Command::Train(_) => "train".into(),
        Command::Datasets(_) | Command::Models(_) => "registry-client".into(),
        Command::Trace(_) => "trace".into(),
        Command::Health(_) => "health".into(),
        Command::Certs(_) => "certs".into(),
        Command::Kernels(_) => "kernels".into(),
    }
}

/// Runs one parsed command line to completion: observability up, the
/// command, then a flush of its spans even when it failed (they explain why).
pub async fn run(cli: Cli) -> Result<(), Error> {
    let traces = demo_trace_receiver(&cli).await;
    let telemetry = init_observe(
        &cli,
        &service_name(&cli.command),
        traces
            .as_ref()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.endpoint())),
    )?;
    let store = match &traces {
        Ok(Some(r)) => demo::Traces::Kept {
            dir: r.store().dir().to_path_buf(),
            query: r.query_addr().map(|q| format!("http://{q}")),
        },
        Ok(None) => demo::Traces::Exported(telemetry.exporting_to().map(str::to_string)),
        Err(e) => demo::Traces::NotKept(e.to_string()),
    };
    let result = dispatch(&cli.command, &telemetry, &store).await;
    let flushed = telemetry.shutdown().await;
    // After the flush: the receiver takes the last batch, then closes its
    // store (whether or not the flush succeeded).
    if let Ok(Some(r)) = traces {
        r.stop().await;
    }
    // The command's own error first: it is what the user asked about.
    result.and(flushed.map_err(Error::from))
}

/// The pipeline demo keeps its trace in its own receiver (a stand-in for
/// Jaeger) when no `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector, so
/// `mlstack trace show` can print it after the demo. `Err` says why not
/// (another demo holds the store, say); the demo runs on without it.
async fn demo_trace_receiver(
    cli: &Cli,
) -> Result<Option<proto::trace_receiver::TraceReceiver>, Error> {
    let Command::Demo(a) = &cli.command else {
        return Ok(None);
    };
    if a.tour || observe::Config::from_env("demo").otlp_endpoint.is_some() {
        return Ok(None);
    }
    let store = trace::open_store(trace::default_dir(), true).await?;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // A query port too: `mlstack trace show --query` works while it runs.
    Ok(Some(
        proto::trace_receiver::TraceReceiver::start(any, Some(any), store, None).await?,
    ))
}

async fn dispatch(
    command: &Command,
    telemetry: &observe::Telemetry,
    traces: &demo::Traces,
) -> Result<(), Error> {
    match command {
        Command::Demo(a) => demo::run(a, telemetry, traces).await,
        Command::Trace(cmd) => trace::run(cmd).await,
        Command::Health(a) => component::probe(&a.url, a.timeout).await,
        Command::Kernels(cmd) => off_runtime("kernels", cmd.clone(), |c| gpu::run(&c)).await,
        Command::Certs(cli::CertsCommand::Generate(a)) => {
            let written = proto::certs::generate(&proto::certs::CertsSpec {
                out: a.out.clone(),
                hosts: a.hosts.clone(),
                nodes: a.nodes,
                clients: a.clients.clone(),
                servers: a.servers.clone(),
            })?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Diag(DiagCommand::Serve(a)) => diag::serve_until_signal(a, telemetry).await,
        Command::Diag(DiagCommand::Ping(a)) => diag::ping_command(a).await,
        // Blocking file I/O and CPU-bound loops: off the runtime's workers.
        Command::Lsm(cmd) => off_runtime("lsm", cmd.clone(), |c| lsm::run(&c)).await,
        Command::Infer(InferCommand::Serve(a)) => infer::serve(a).await,
        Command::Infer(InferCommand::BenchServe(a)) => infer::bench_serve(a).await,
        Command::Infer(InferCommand::Client(a)) => infer::client(a).await,
        Command::Infer(cmd) => off_runtime("infer", cmd.clone(), |c| infer::run(&c)).await,
        Command::Kv(cmd) => kv::run(cmd).await,
        Command::Ingest(cmd) => ingest::run(cmd).await,
        Command::Produce(a) => ingest::produce(a).await,
        Command::Chaos(a) => kv::chaos(a).await,
        Command::Train(TrainCommand::Run(a)) => train::run(a).await,
        Command::Train(TrainCommand::Launch(a)) => {
            off_runtime("train launch", a.clone(), |a| train::launch(&a)).await
        }
        Command::Datasets(cmd) => {
            off_runtime("datasets", cmd.clone(), |c| models::datasets(&c)).await
        }
        Command::Models(cmd) => off_runtime("models", cmd.clone(), |c| models::models(&c)).await,
        Command::Train(TrainCommand::Bench(a)) => {
            off_runtime("train bench", a.clone(), |a| train::bench(&a)).await
        }
        Command::Train(TrainCommand::Plot(a)) => {
            off_runtime("train plot", a.clone(), |a| train::plot(&a)).await
        }
    }
}

/// Runs a synchronous command on a blocking thread.
async fn off_runtime<T: Send + 'static>(
    what: &'static str,
    arg: T,
    f: fn(T) -> Result<(), Error>,
) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || f(arg))
        .await
        .map_err(|e| Error::Task {
            what,
            reason: e.to_string(),
        })?
}
