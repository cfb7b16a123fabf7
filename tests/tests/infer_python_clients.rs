//! `mlstack infer serve` driven by real third-party clients: Python `grpcio`
//! (stubs compiled from `proto/` by grpcio-tools at run time) and the `openai`
//! package against the HTTP API (`tests/python/infer_clients.py`; the test
//! command installs both). Then a clean SIGTERM shutdown.

use std::process::Command;
use std::time::Duration;

use tests::{Proc, run_mlstack};

#[test]
fn grpcio_and_openai_clients_get_llama_cpps_answers() {
    let mut server = Proc::spawn_infer_server(&[]);
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

/// `mlstack infer serve --tls-cert --tls-key` with an API key: grpcio and
/// openai over TLS get the same answers, and plaintext, an untrusted
/// certificate and a missing or wrong key are refused (checked by the script);
/// `mlstack infer client --ca` speaks TLS, and without `--ca` it cannot.
#[test]
fn tls_with_api_keys_for_grpcio_openai_and_the_cli() {
    const KEY: &str = "sk-infer-tls-test";
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = tests::server_certs(dir.path(), "infer");
    let mut server =
        Proc::spawn_infer_server(&["--tls-cert", &cert, "--tls-key", &key, "--api-keys", KEY]);
    assert_eq!(server.field("tls"), "on");
    let grpc = server.field("grpc");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/python/infer_clients.py"))
        .args(["--grpc", &grpc])
        .args(["--http", &format!("https://{}", server.field("http"))])
        .args(["--proto-dir", &format!("{root}/proto/proto")])
        .args(["--ca", &ca, "--api-key", KEY])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let python_err = String::from_utf8_lossy(&out.stderr).into_owned();

    let client = |extra: &[&str]| {
        let mut args = vec![
            "infer",
            "client",
            "--endpoint",
            &grpc,
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "12",
            "--api-key",
            KEY,
        ];
        args.extend_from_slice(extra);
        run_mlstack(&args, &[])
    };
    let (cli_ok, cli_out, cli_err) = client(&["--ca", &ca]);
    let (plain_ok, _, plain_err) = client(&["--timeout", "5s"]);
    let status = server.terminate(Duration::from_secs(20));

    assert!(
        out.status.success(),
        "python clients over TLS failed:\n{stdout}\n{python_err}"
    );
    assert!(
        stdout.contains("grpcio over TLS") && stdout.contains("openai over HTTPS"),
        "{stdout}"
    );
    assert!(cli_ok, "infer client --ca: {cli_err}");
    assert!(cli_out.starts_with(" Paris."), "{cli_out:?}");
    assert!(!plain_ok, "a plaintext client was answered on the TLS port");
    assert!(plain_err.contains("Inference.Generate"), "{plain_err}");
    assert!(status.success(), "server exited with {status}");
}
