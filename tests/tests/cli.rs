//! The `mlstack` binary as a user runs it: `--version`, `--help`, bad flags, and
//! the README's main job, `mlstack demo`.

use tests::{Proc, run_mlstack};

fn run(args: &[&str]) -> (bool, String, String) {
    run_mlstack(args, &[])
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
    let (ok, out, err) = run(&["--log-format", "json", "demo", "--tour", "--json"]);
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
    let st = &report["storage"];
    assert_eq!(st["keys_written"], 50_000);
    assert_eq!(st["prefix_matches"], 100);
    assert!(st["reads_verified"].as_u64().expect("count") > 500, "{st}");
    assert!(st["flushes"].as_u64().expect("count") >= 1, "{st}");
    assert!(
        st["write_amplification"].as_f64().expect("wa") > 0.0,
        "{st}"
    );
    // The inference server answered a chat question over gRPC (the test
    // command installs the model, so this step must have run).
    let inf = &report["infer"];
    assert!(
        inf["answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{inf}"
    );
    assert!(
        inf["stream_messages"].as_u64().expect("messages") > 2,
        "{inf}"
    );
    assert!(inf["prompt_tokens"].as_u64().expect("tokens") > 10, "{inf}");
    let kv = &report["kv"];
    assert_eq!(kv["nodes"], 3, "{kv}");
    assert_eq!(kv["cas_first_writer_won"], true, "{kv}");
    assert_eq!(kv["cas_second_writer_refused"], true, "{kv}");
    assert_eq!(kv["read_back"], "step-100", "{kv}");
    assert_eq!(kv["survivors_state_hash_equal"], true, "{kv}");
    assert_ne!(kv["leader_before"], kv["leader_after"], "{kv}");
    let metrics = report["metrics"].to_string();
    assert!(
        metrics.contains(r#"mlstack_diag_pings_total{outcome=\"ok\",service=\"demo\"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlstack_storage_flushes_total"),
        "{metrics}"
    );
}

#[test]
fn lsm_commands_write_read_scan_and_verify_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    for (k, v) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("avocado", "green"),
        ("bin\\x00ary", "\\xff"),
    ] {
        let (ok, _, err) = run(&["lsm", "put", "--dir", d, k, v]);
        assert!(ok, "put {k}: {err}");
    }
    let (ok, out, _) = run(&["lsm", "get", "--dir", d, "banana"]);
    assert!(ok);
    assert_eq!(out.trim(), "yellow");
    let (ok, out, _) = run(&["lsm", "get", "--dir", d, "bin\\x00ary"]);
    assert!(ok);
    assert_eq!(out.trim(), "\\xff");
    let (ok, out, _) = run(&["lsm", "scan", "--dir", d, "--prefix", "a", "--reverse"]);
    assert!(ok);
    assert_eq!(out, "avocado\tgreen\napple\tred\n");
    let (ok, _, _) = run(&["lsm", "delete", "--dir", d, "apple"]);
    assert!(ok);
    let (ok, _, err) = run(&["lsm", "get", "--dir", d, "apple"]);
    assert!(!ok, "deleted key still found");
    assert!(err.contains("not found"), "{err}");
    let (ok, out, err) = run(&["lsm", "compact", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains("compacted"), "{out}");
    let (ok, out, err) = run(&["lsm", "verify", "--dir", d]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok:"), "{out}");
    let (ok, out, _) = run(&["lsm", "stats", "--dir", d]);
    assert!(ok);
    assert!(out.contains(".sst"), "{out}");
}

#[test]
fn lsm_reports_missing_and_corrupt_databases_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let (ok, _, err) = run(&["lsm", "get", "--dir", missing.to_str().expect("utf-8"), "k"]);
    assert!(!ok);
    assert!(err.contains("no database"), "{err}");

    let d = dir.path().join("db");
    let ds = d.to_str().expect("utf-8");
    for i in 0..50 {
        let (ok, _, err) = run(&["lsm", "put", "--dir", ds, &format!("k{i:03}"), "value"]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = run(&["lsm", "compact", "--dir", ds]);
    assert!(ok, "{err}");
    let sst = std::fs::read_dir(&d)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("a table");
    let mut bytes = std::fs::read(&sst).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&sst, bytes).expect("write");
    let (ok, _, err) = run(&["lsm", "verify", "--dir", ds]);
    assert!(!ok, "verify passed a corrupt table");
    assert!(err.contains("corruption") && err.contains(".sst"), "{err}");
}

/// `mlstack health`, the containers' health check: 0 on a ready `/readyz`,
/// 1 naming the status on a 404, and 1 naming the URL when nothing listens.
#[test]
fn the_health_probe_tells_ready_from_missing_and_unreachable() {
    let mut server = Proc::spawn_diag_server(&[]);
    let metrics = server.field("metrics");
    let (ok, out, err) = run(&["health", "--url", &format!("http://{metrics}/readyz")]);
    assert!(ok, "{err}");
    assert!(out.starts_with("200"), "{out}");
    let (ok, _, err) = run(&["health", "--url", &format!("http://{metrics}/nothing")]);
    assert!(!ok && err.contains("404"), "{err}");
    let dead = format!("http://127.0.0.1:{}/readyz", tests::free_port());
    let (ok, _, err) = run(&["health", "--url", &dead, "--timeout", "2s"]);
    assert!(!ok && err.contains(&dead), "{err}");
    assert!(
        server
            .terminate(std::time::Duration::from_secs(10))
            .success()
    );
}

/// `127.0.0.1:PORT` (or a URL of it) as `localhost:PORT`: the certificate
/// names 127.0.0.1 and localhost (`certs generate`'s default hosts); dialling
/// by name makes the host check the name check.
fn by_name(addr: &str) -> String {
    addr.replace("127.0.0.1", "localhost")
}

/// `mlstack diag serve` over TLS (issue 15: TLS on every gRPC server):
/// `diag ping --ca` answers through the server certificate `certs generate
/// --servers diag` writes; without the CA, or over plaintext, it cannot;
/// a relay is refused (it would dial the next hop in plaintext); a key
/// file that holds no key fails the start.
#[test]
fn diag_serves_tls_and_ping_trusts_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = tests::server_certs(dir.path(), "diag");
    let mut server = Proc::spawn_mlstack(&diag_serve_tls(&cert, &key), &[]);
    assert_eq!(server.field("tls"), "on");
    let ep = by_name(&server.field("grpc"));
    let ping = |extra: &[&str]| {
        let mut args = vec![
            "diag",
            "ping",
            "--endpoint",
            &ep,
            "--timeout",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, out, err) = ping(&["--ca", &ca]);
    assert!(ok, "{err}");
    let reply: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(reply["payload"], "ping");
    // No CA: the system trust store does not know the dev CA.
    let (ok, _, err) = ping(&[]);
    assert!(!ok, "a plaintext ping reached a TLS-only port");
    assert!(err.contains(&ep), "{err}");
    // A relay from a TLS server is refused, not dialled in plaintext.
    let (ok, _, err) = ping(&["--ca", &ca, "--via", "127.0.0.1:1"]);
    assert!(!ok && err.contains("does not relay"), "{err}");
    assert!(
        server
            .terminate(std::time::Duration::from_secs(10))
            .success()
    );
    // A key file holding no key (the CA's certificate): the start fails
    // naming the key, before any port is bound.
    let (ok, _, err) = run(&diag_serve_tls(&cert, &ca));
    assert!(!ok && err.contains("server key"), "{err}");
}

/// `diag serve` on ephemeral ports with `--tls-cert cert --tls-key key`.
fn diag_serve_tls<'a>(cert: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "diag",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]
}

/// `mlstack trace serve` over TLS: a process exports its spans to the
/// https:// OTLP port trusting the CA named by OpenTelemetry's
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, and `trace list --query https://...
/// --ca` reads them back from the HTTPS query port. Without the CA the
/// query fails, and an https:// export without a CA is refused at start.
#[test]
fn the_trace_receiver_serves_tls_on_both_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = tests::server_certs(dir.path(), "trace");
    let store = dir.path().join("traces").to_string_lossy().into_owned();
    let mut receiver = Proc::spawn_mlstack(
        &[
            "trace",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--query-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data",
            &store,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    assert_eq!(receiver.field("tls"), "on");
    let otlp = by_name(&receiver.field("otlp"));
    let query = by_name(&receiver.field("query"));
    assert!(otlp.starts_with("https://") && query.starts_with("https://"));
    // A ping of the receiver's own Diag service (every gRPC server mounts
    // it), over TLS, exporting the client span over TLS.
    let grpc = otlp.trim_start_matches("https://").to_string();
    let export = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
    ];
    let (ok, _, err) = tests::run_mlstack_env(
        &["diag", "ping", "--endpoint", &grpc, "--ca", &ca],
        &[],
        &export,
    );
    assert!(ok, "{err}");
    // Spans arrive at the exporter's shutdown flush; the receiver stores them
    // before answering the export.
    let (ok, list, err) = run(&["trace", "list", "--query", &query, "--ca", &ca]);
    assert!(ok, "{err}");
    assert!(list.contains("Diag/Ping"), "no ping trace listed:\n{list}");
    let (ok, _, err) = run(&["trace", "list", "--query", &query]);
    assert!(
        !ok && err.contains(&query),
        "an https query without a CA: {err}"
    );
    let (ok, _, err) = tests::run_mlstack_env(
        &["diag", "ping", "--endpoint", &grpc, "--ca", &ca],
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone())],
    );
    assert!(
        !ok && err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "an https export without a CA: {err}"
    );
    assert!(
        receiver
            .terminate(std::time::Duration::from_secs(10))
            .success()
    );
}

/// `mlstack lsm bench` with both peers at a tiny size, so the peer paths
/// (RocksDB's db_bench, fjall) cannot rot: every system has a figure for
/// every workload, in the JSON convention, and the table names them.
#[test]
fn the_storage_benchmark_runs_its_peers_at_a_tiny_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("lsm.json");
    let scratch = dir.path().join("scratch");
    let (ok, table, err) = run(&[
        "lsm",
        "bench",
        "--keys",
        "5000",
        "--reads",
        "2000",
        "--seeks",
        "500",
        "--sync-writes",
        "50",
        "--mixed-ops",
        "1000",
        "--repeats",
        "1",
        "--systems",
        "mlstack,rocksdb,fjall",
        "--dir",
        scratch.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    assert!(
        table.contains("rocksdb op/s") && table.contains("vs rocksdb"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json");
    let rows = v["results"].as_array().expect("results");
    let has = |sys: &str, w: &str, m: &str| {
        rows.iter().any(|r| {
            r["system"] == sys
                && r["workload"] == w
                && r["metric"] == m
                && r["value"].as_f64().is_some_and(|x| x > 0.0)
        })
    };
    // Every workload but readwhilewriting, which db_bench measures differently.
    let workloads = "fillseq fillrandom fillsync readrandom readmissing seekrandom";
    for w in workloads.split(' ') {
        for sys in ["mlstack", "rocksdb", "fjall"] {
            assert!(
                has(sys, w, "ops_per_sec"),
                "no {sys} {w} ops_per_sec in {v}"
            );
        }
        assert!(has("mlstack", w, "ops_per_sec_ratio_to_rocksdb"), "{w}");
    }
    assert!(has("rocksdb", "fillrandom", "write_amplification"));
    assert!(has(
        "rocksdb",
        "readwhilewriting",
        "reads_per_sec_with_one_writer"
    ));
    assert!(
        v["config"]["rocksdb"]["flags"]
            .as_str()
            .is_some_and(|f| f.contains("--bloom_bits=10"))
    );
}
