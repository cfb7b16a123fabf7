//! The `mlstack` binary as a user runs it: `--version`, `--help`, bad flags, and
//! the README's main job, `mlstack demo`.

use std::process::Command;

use tests::mlstack_bin;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(mlstack_bin())
        .args(args)
        .output()
        .expect("running mlstack");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_help_describe_the_command_tree() {
    let (ok, out, _) = run(&["--version"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("mlstack {}", env!("CARGO_PKG_VERSION")));
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for sub in ["demo", "diag", "--log-format"] {
        assert!(out.contains(sub), "--help lacks {sub}:\n{out}");
    }
    let (ok, out, _) = run(&["diag", "serve", "--help"]);
    assert!(ok);
    assert!(
        out.contains("MLSTACK_LISTEN"),
        "env var not documented:\n{out}"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let (ok, _, err) = run(&["--log-format", "yaml", "demo"]);
    assert!(!ok);
    assert!(err.contains("yaml"), "{err}");
    let (ok, _, err) = run(&["diag", "serve", "--listen", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("not-an-address"), "{err}");
    // Nothing listens on port 1: the ping fails with the endpoint in the message.
    let (ok, _, err) = run(&[
        "diag",
        "ping",
        "--endpoint",
        "127.0.0.1:1",
        "--timeout",
        "2",
    ]);
    assert!(!ok);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn demo_drives_the_stack_and_reports_one_trace() {
    let (ok, out, err) = run(&["--log-format", "json", "demo", "--json"]);
    assert!(ok, "demo failed:\n{err}");
    // --log-format json: every log line on stderr is one JSON object.
    let log_lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!log_lines.is_empty(), "no log lines at the default level");
    for line in log_lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("demo prints JSON");
    assert_eq!(report["observe"]["readyz_before"], 503);
    assert_eq!(report["observe"]["readyz_after"], 200);
    assert_eq!(report["grpc"]["health"], "SERVING");
    let services = report["grpc"]["reflection_services"].to_string();
    for s in [
        "mlstack.diag.v1.Diag",
        "grpc.health.v1.Health",
        "mlstack.kv.v1.KV",
    ] {
        assert!(services.contains(s), "reflection lacks {s}: {services}");
    }
    let trace = report["trace"]["trace_id"].as_str().expect("trace id");
    assert_eq!(trace.len(), 32);
    let hops = report["trace"]["hops"].as_array().expect("hops");
    assert_eq!(hops.len(), 2);
    assert!(hops.iter().all(|h| h["trace_id"] == trace), "{hops:?}");
    assert_ne!(hops[0]["span_id"], hops[1]["span_id"]);
    let metrics = report["metrics"].to_string();
    assert!(
        metrics.contains(r#"mlstack_diag_pings_total{outcome=\"ok\",service=\"demo\"} 2"#),
        "{metrics}"
    );
}
