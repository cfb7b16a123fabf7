//! # tests: cross-component integration tests and drills
//!
//! The tests here run mlstack the way users do: the real `mlstack` binary as
//! child processes, real gRPC clients, a real Prometheus server, an OTLP receiver
//! speaking the collector's gRPC protocol. This library holds the harness they
//! share.
//!
//! # Layout
//! - [`mlstack_bin`]: the path of the `mlstack` binary under test.
//! - [`run_mlstack`]: one command to completion, with its status and output.
//! - [`Proc`]: a child process killed on drop, with its first stdout line parsed.
//! - [`free_port`]: a loopback port for tests that must name one.
//! - [`count_ids`]: the ids of one of ingest's Parquet files, counted.
//! - [`otlp`]: an in-test OTLP `TraceService` receiver that records spans.
//! - [`prometheus`]: a real Prometheus server on a generated scrape config.
//! - Tests (`tests/`): `cli.rs`, `trace_propagation.rs`, `prometheus_scrape.rs`,
//!   `storage_metrics.rs`, `kv_cluster.rs`, `ingest.rs`, `infer_cli.rs`,
//!   `infer_python_clients.rs`, `pipeline.rs`, `compose.rs`, `k8s_manifests.rs`;
//!   the README says what each runs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub mod otlp;
pub mod prometheus;

/// The `mlstack` binary of this build, (re)built once per test process so a test
/// never runs a stale binary (`cargo build` is a no-op when it is fresh).
pub fn mlstack_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // current_exe = target/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile> directory")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "mlstack", "--bin", "mlstack"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build -p mlstack --bin mlstack");
        assert!(
            status.success(),
            "cargo build -p mlstack --bin mlstack failed"
        );
        let bin = profile_dir.join("mlstack");
        assert!(
            bin.exists(),
            "mlstack binary not found at {}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// The infer commands as a user runs them on the default model: JSON logs
/// (so stderr holds only the CLI's own report as text), `MLSTACK_MODEL` and
/// `MLSTACK_DEVICE` removed (the golden texts are SmolLM2's on the CPU
/// unless a test asks for `--device`).
pub fn run_infer_cli(args: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> = ["--log-format", "json"]
        .iter()
        .chain(args)
        .copied()
        .collect();
    run_mlstack(&args, &["MLSTACK_MODEL", "MLSTACK_DEVICE"])
}

/// Runs `mlstack ARGS` to completion with `unset` removed from its
/// environment; returns (success, stdout, stderr).
pub fn run_mlstack(args: &[&str], unset: &[&str]) -> (bool, String, String) {
    run_mlstack_env(args, unset, &[])
}

/// [`run_mlstack`] with environment variables set as well as removed.
pub fn run_mlstack_env(
    args: &[&str],
    unset: &[&str],
    set: &[(&str, String)],
) -> (bool, String, String) {
    let mut cmd = Command::new(mlstack_bin());
    cmd.args(args);
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running mlstack");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mlstack certs generate --servers NAME` into `dir/pki`: (certificate,
/// key, CA) paths.
pub fn server_certs(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let pki = dir.join("pki");
    let pki_s = pki.to_string_lossy().into_owned();
    let (ok, _, err) = run_mlstack(
        &[
            "certs",
            "generate",
            "--out",
            &pki_s,
            "--nodes",
            "1",
            "--servers",
            name,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    (
        p(&format!("server-{name}.pem")),
        p(&format!("server-{name}.key")),
        p("ca.pem"),
    )
}

/// A child process that is SIGKILLed on drop unless it already exited.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    /// The first line the process printed on stdout, parsed as JSON.
    pub hello: serde_json::Value,
}

impl Proc {
    /// Spawns `mlstack ARGS` with extra environment, waits (up to 30 s) for its
    /// first stdout line and parses it as JSON.
    pub fn spawn_mlstack(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(mlstack_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning mlstack");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("mlstack {args:?} printed nothing within 30 s");
            }
        };
        let hello = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                panic!("mlstack {args:?} first line {line:?} is not JSON: {e}");
            }
        };
        Proc { child, hello }
    }

    /// `mlstack infer serve` (the default model) on ephemeral gRPC, HTTP and
    /// metrics ports, with `extra` flags.
    pub fn spawn_infer_server(extra: &[&str]) -> Proc {
        let mut args = vec![
            "infer",
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Proc::spawn_mlstack(&args, &[])
    }

    /// `mlstack diag serve` on ephemeral gRPC and metrics ports.
    pub fn spawn_diag_server(env: &[(&str, &str)]) -> Proc {
        Proc::spawn_mlstack(
            &[
                "diag",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            env,
        )
    }

    /// A string field of the first line.
    pub fn field(&self, key: &str) -> String {
        self.hello[key]
            .as_str()
            .unwrap_or_else(|| panic!("field {key} missing from {}", self.hello))
            .to_string()
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we own; no memory is shared.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed for pid {pid}");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago (for servers that are not ours to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Counts each `id` of one Parquet file (ingest's schema) into `ids`,
/// checking every row has a non-empty `text`; returns the file's rows.
pub fn count_ids(bytes: Vec<u8>, ids: &mut std::collections::BTreeMap<String, u32>) -> u64 {
    use arrow::array::{Array, StringArray};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .expect("parquet")
    .build()
    .expect("reader");
    let mut rows = 0;
    for batch in reader {
        let batch = batch.expect("batch");
        rows += batch.num_rows() as u64;
        let utf8 = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("no {name} column"))
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap_or_else(|| panic!("{name} is not utf8"))
        };
        let (col, text) = (utf8("id"), utf8("text"));
        for i in 0..col.len() {
            assert!(
                !text.is_null(i) && !text.value(i).is_empty(),
                "empty text for {}",
                col.value(i)
            );
            *ids.entry(col.value(i).to_string()).or_insert(0) += 1;
        }
    }
    rows
}

/// A one-node Raft KV cluster (`mlstack kv serve --init`) under `dir`, and
/// its address.
pub fn spawn_kv_node(dir: &std::path::Path, cluster: &str) -> (Proc, String) {
    spawn_kv_node_with(dir, cluster, &[])
}

/// [`spawn_kv_node`] with more `kv serve` flags (TLS, API keys).
pub fn spawn_kv_node_with(dir: &std::path::Path, cluster: &str, extra: &[&str]) -> (Proc, String) {
    let kv_addr = format!("127.0.0.1:{}", free_port());
    let data_s = dir.join("kv").to_string_lossy().into_owned();
    let peers = format!("1={kv_addr}");
    let mut args = vec![
        "kv",
        "serve",
        "--id",
        "1",
        "--init",
        "--listen",
        &kv_addr,
        "--peers",
        &peers,
        "--data-dir",
        &data_s,
        "--metrics-listen",
        "127.0.0.1:0",
        "--cluster",
        cluster,
    ];
    args.extend_from_slice(extra);
    let kv = Proc::spawn_mlstack(&args, &[]);
    (kv, kv_addr)
}

/// `mlstack ingest run` of `topic` from `brokers` into `out`, metrics on an
/// ephemeral port, with `extra` flags and `env`.
pub fn spawn_ingest(
    brokers: &str,
    topic: &str,
    out: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec![
        "ingest",
        "run",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--out",
        &out_s,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Proc::spawn_mlstack(&args, env)
}
