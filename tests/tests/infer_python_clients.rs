//! `mlstack infer serve` driven by real third-party clients: Python `grpcio`
//! (stubs compiled from `proto/` by grpcio-tools at run time) and the `openai`
//! package against the HTTP API (`tests/python/infer_clients.py`; the test
//! command installs both). Then a clean SIGTERM shutdown.

use std::process::Command;
use std::time::Duration;

use tests::{Proc, run_mlstack};

#[test]
fn grpcio_and_openai_clients_get_llama_cpps_answers() {
    let mut server = Proc::spawn_mlstack(
        &[
            "infer",
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    // The inference server mounts Diag too (proto::server::GrpcServer).
    let (ok, out, err) = run_mlstack(
        &[
            "diag",
            "ping",
            "--endpoint",
            &server.field("grpc"),
            "--json",
        ],
        &[],
    );
    assert!(ok, "diag ping to the inference server failed: {err}");
    assert!(out.contains("\"service\":\"infer\""), "{out}");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/python/infer_clients.py"))
        .args(["--grpc", &server.field("grpc")])
        .args(["--http", &format!("http://{}", server.field("http"))])
        .args(["--proto-dir", &format!("{root}/proto/proto")])
        .output()
        .expect("running python3");
    let status = server.terminate(Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python clients failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("grpcio:") && stdout.contains("openai:"),
        "{stdout}"
    );
    assert!(status.success(), "server exited with {status}");
}
