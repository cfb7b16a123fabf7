//! The KV cluster as users run it: three `mlstack kv serve` processes, the
//! `mlstack kv` CLI, a traced client request, a real Prometheus scraping every
//! node, the benchmark command, and the chaos drills (each about 10 s).

use std::time::{Duration, Instant};

use proto::kv::v1 as pb;
use proto::kv::v1::kv_client::KvClient;
use tests::otlp::{ReceivedSpan, Receiver};
use tests::prometheus::{start_prometheus, wait_for_value};
use tests::{Proc, free_port, mlstack_bin, run_mlstack};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TEST_PARENT_SPAN: &str = "00f067aa0ba902b7";

struct Cluster {
    nodes: Vec<Proc>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

fn start_cluster(env: &[(&str, &str)]) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoints: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    // A unique cluster name: parallel tests that get the same port from the
    // kernel cannot join each other's clusters.
    let name = format!("test-{}-{}", std::process::id(), free_port());
    let nodes = (1..=3)
        .map(|id| {
            let data = dir.path().join(format!("n{id}"));
            let id_s = id.to_string();
            let mut args = vec![
                "kv",
                "serve",
                "--id",
                &id_s,
                "--listen",
                &endpoints[id - 1],
                "--peers",
                &peers,
                "--metrics-listen",
                "127.0.0.1:0",
                "--cluster",
                &name,
                "--data-dir",
            ];
            let data_s = data.to_string_lossy().into_owned();
            args.push(&data_s);
            if id == 1 {
                args.push("--init");
            }
            Proc::spawn_mlstack(&args, env)
        })
        .collect();
    Cluster {
        nodes,
        endpoints,
        _dir: dir,
    }
}

/// Puts through whichever node leads; followers answer UNAVAILABLE at once.
async fn put_on_leader(
    c: &Cluster,
    key: &str,
    traceparent: Option<&str>,
) -> (usize, pb::PutResponse) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, ep) in c.endpoints.iter().enumerate() {
            let mut client = KvClient::new(proto::server::channel(ep).expect("channel"));
            let mut req = tonic::Request::new(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"traced".to_vec(),
                request_id: None,
                prev_kv: false,
            });
            if let Some(tp) = traceparent {
                req.metadata_mut()
                    .insert("traceparent", tp.parse().expect("ascii"));
            }
            match client.put(req).await {
                Ok(r) => return (i, r.into_inner()),
                Err(s) => assert!(
                    matches!(s.code(), tonic::Code::Unavailable),
                    "unexpected error from {ep}: {s:?}"
                ),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader accepted a put within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_metrics_and_a_traced_write_across_three_processes() {
    let receiver = Receiver::start().await;
    let otlp = receiver.endpoint();
    let mut c = start_cluster(&[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str())]);
    let eps = c.endpoints.join(",");
    let instances: Vec<String> = c.nodes.iter().map(|p| p.field("metrics")).collect();

    // The CLI: put, get, scan, status, members.
    let (ok, out, err) = run_mlstack(
        &["kv", "put", "--endpoints", &eps, "greeting", "hello"],
        &[],
    );
    assert!(ok, "kv put failed: {out} {err}");
    assert!(out.starts_with("OK revision"), "{out}");
    let (ok, out, err) = run_mlstack(&["kv", "get", "--endpoints", &eps, "greeting"], &[]);
    assert!(ok, "kv get failed: {err}");
    assert_eq!(out.trim(), "hello");
    assert!(err.contains("version 1"), "{err}");
    let (ok, out, _) = run_mlstack(
        &[
            "kv",
            "get",
            "--endpoints",
            &eps,
            "--serializable",
            "greeting",
        ],
        &[],
    );
    assert!(ok);
    assert_eq!(out.trim(), "hello");
    let (ok, _, err) = run_mlstack(&["kv", "get", "--endpoints", &eps, "missing"], &[]);
    assert!(!ok && err.contains("not found"), "{err}");

    // Every server mounts Diag (proto::server::GrpcServer): a ping relayed
    // from node 1 through node 2 names both nodes, in one trace.
    let (ok, out, err) = run_mlstack(
        &[
            "diag",
            "ping",
            "--endpoint",
            &c.endpoints[0],
            "--via",
            &c.endpoints[1],
            "--json",
        ],
        &[],
    );
    assert!(ok, "diag ping through two KV nodes failed: {err}");
    let ping: serde_json::Value = serde_json::from_str(out.trim()).expect("ping json");
    let hops = ping["hops"].as_array().expect("hops");
    let services: Vec<&str> = hops.iter().filter_map(|h| h["service"].as_str()).collect();
    assert_eq!(services, ["kv-1", "kv-2"], "{ping}");
    assert_eq!(hops[0]["trace_id"], hops[1]["trace_id"], "{ping}");
    let (ok, out, _) = run_mlstack(
        &["kv", "scan", "--endpoints", &eps, "--prefix", "gree"],
        &[],
    );
    assert!(ok);
    assert_eq!(out.trim(), "greeting\thello");
    let (ok, out, err) = run_mlstack(&["kv", "status", "--endpoints", &eps], &[]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let (ok, out, err) = run_mlstack(&["kv", "members", "--endpoints", &eps], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("voter")).count(),
        3,
        "{out}"
    );
    // Bad input: an empty key is refused with the limit named.
    let (ok, _, err) = run_mlstack(&["kv", "put", "--endpoints", &eps, "", "v"], &[]);
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("key is empty"),
        "{err}"
    );
    // A malformed peer list is a startup error.
    let (ok, _, err) = run_mlstack(
        &[
            "kv",
            "serve",
            "--id",
            "1",
            "--data-dir",
            "/tmp/never",
            "--peers",
            "1=nope",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok && err.contains("is not HOST:PORT"), "{err}");

    // A write with the caller's trace context.
    let tp = format!("00-{TRACE_ID}-{TEST_PARENT_SPAN}-01");
    let (leader, resp) = put_on_leader(&c, "traced", Some(&tp)).await;
    let revision = resp.header.expect("header").revision;
    // Every node applies it before we stop them.
    for ep in &c.endpoints {
        let mut client = KvClient::new(proto::server::channel(ep).expect("channel"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = client
                .status(pb::StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            if s.applied_index >= revision {
                break;
            }
            assert!(Instant::now() < deadline, "{ep} did not apply {revision}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Prometheus scrapes all three nodes.
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = start_prometheus(dir.path(), "kv", &instances);
    wait_for_value(&prom, "count(up{job=\"kv\"} == 1)", 3.0).await;
    wait_for_value(&prom, "sum(mlstack_kv_is_leader{job=\"kv\"})", 1.0).await;
    // greeting + traced; the refused empty key never became a proposal.
    wait_for_value(&prom, "sum(mlstack_kv_proposals_total{job=\"kv\"})", 2.0).await;
    wait_for_value(
        &prom,
        &format!("count(mlstack_kv_applied_index{{job=\"kv\"}} >= {revision})"),
        3.0,
    )
    .await;
    wait_for_value(
        &prom,
        "count(mlstack_kv_apply_latency_seconds_count{job=\"kv\"} > 0)",
        3.0,
    )
    .await;

    // SIGTERM flushes each node's span exporter.
    let instances: Vec<String> = c.nodes.iter().map(|p| p.field("metrics")).collect();
    for p in c.nodes.iter_mut() {
        assert!(
            p.terminate(Duration::from_secs(15)).success(),
            "a node exited badly"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans: Vec<ReceivedSpan> = loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id_hex() == TRACE_ID)
            .collect();
        let applies = spans.iter().filter(|s| s.span.name == "kv.apply").count();
        if applies >= 3 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.span.name.as_str(), s.instance_id.as_str()))
        .collect();
    let server = spans
        .iter()
        .find(|s| s.span.name == "mlstack.kv.v1.KV/Put")
        .unwrap_or_else(|| panic!("no server span in the trace: {names:?}"));
    assert_eq!(server.parent_span_id_hex(), TEST_PARENT_SPAN);
    let propose = spans
        .iter()
        .find(|s| s.span.name == "kv.propose")
        .unwrap_or_else(|| panic!("no kv.propose span: {names:?}"));
    assert_eq!(propose.parent_span_id_hex(), server.span_id_hex());
    // The leader's log append joins the trace, and every node's apply does.
    let appends: Vec<_> = spans
        .iter()
        .filter(|s| s.span.name == "kv.append")
        .collect();
    assert!(
        appends.iter().any(|s| s.instance_id == server.instance_id),
        "the leader's kv.append is not in the trace: {names:?}"
    );
    let apply_nodes: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.span.name == "kv.apply")
        .map(|s| s.instance_id.as_str())
        .collect();
    assert_eq!(apply_nodes.len(), 3, "kv.apply from every node: {names:?}");
    for s in spans.iter().filter(|s| s.span.name == "kv.apply") {
        assert_eq!(
            s.parent_span_id_hex(),
            propose.span_id_hex(),
            "apply parents to the proposal"
        );
    }
    let _ = (leader, instances);
}

/// The benchmark's whole path at a tiny size, with its peer: a three-node
/// etcd cluster (Debian's etcd-server, which the test command installs)
/// beside mlstack's, every workload on both, a failover trial on both.
#[test]
fn bench_command_writes_its_table_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("kv.json");
    let out_s = out.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = run_mlstack(
        &[
            "kv",
            "bench",
            "--systems",
            "mlstack,etcd",
            "--clients",
            "1,4",
            "--duration",
            "500ms",
            "--keys",
            "200",
            "--failover-trials",
            "1",
            "--out",
            &out_s,
        ],
        &[],
    );
    assert!(ok, "kv bench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("get_serializable") && stdout.contains("failover etcd"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("json written"))
            .expect("valid json");
    assert_eq!(json["component"], "kv");
    assert!(
        json["config"]["etcd"]["version"]
            .as_str()
            .is_some_and(|v| v.contains("3.")),
        "{}",
        json["config"]
    );
    let rows = json["results"].as_array().expect("results");
    for system in ["mlstack", "etcd"] {
        for (workload, metric) in [
            ("put_c1", "ops_per_sec"),
            ("put_c4", "ops_per_sec"),
            ("get_linearizable_c4", "latency_p99_ms"),
            ("get_serializable_c4", "latency_p999_ms"),
            ("failover", "failover_ms"),
        ] {
            let row = rows
                .iter()
                .find(|r| {
                    r["system"] == system && r["workload"] == workload && r["metric"] == metric
                })
                .unwrap_or_else(|| panic!("no {system} {workload}/{metric} row in {json}"));
            assert!(row["value"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        }
    }
    // At this size on an idle cluster nothing should fail.
    for r in rows.iter().filter(|r| r["metric"] == "errors") {
        assert_eq!(r["value"].as_f64(), Some(0.0), "{r}");
    }
}

/// An unknown system is refused by name before anything starts.
#[test]
fn bench_refuses_an_unknown_system() {
    let (ok, stdout, stderr) = run_mlstack(
        &[
            "kv",
            "bench",
            "--systems",
            "mlstack,zookeeper",
            "--duration",
            "100ms",
        ],
        &[],
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("zookeeper") && stderr.contains("etcd"),
        "{stderr}"
    );
}

/// Every drill for about 10 s: the verdict must be PASS (linearizable history,
/// every acknowledged write readable, all nodes converged).
#[test]
fn chaos_drills_pass() {
    let _ = mlstack_bin();
    for (i, drill) in [
        "kill-leader",
        "partition-leader",
        "partition-random",
        "pause-leader",
        "rolling-restart",
        "slow-network",
        "all",
    ]
    .iter()
    .enumerate()
    {
        let seed = (100 + i).to_string();
        let (ok, stdout, stderr) =
            run_mlstack(&["chaos", drill, "--duration", "10s", "--seed", &seed], &[]);
        let json_start = stdout.find("\n{").map(|i| i + 1).unwrap_or(0);
        let report: serde_json::Value = serde_json::from_str(&stdout[json_start..])
            .unwrap_or_else(|e| panic!("{drill}: no JSON report ({e}):\n{stdout}\n{stderr}"));
        assert!(ok, "{drill} failed:\n{stdout}\n{stderr}");
        assert_eq!(report["passed"], true, "{drill}: {stdout}");
        assert_eq!(report["linearizable"], true);
        assert_eq!(report["converged"], true);
        assert!(
            report["faults"].as_array().is_some_and(|f| !f.is_empty()),
            "{drill} injected no fault: {stdout}"
        );
        let ok_ops: u64 = ["put", "get", "cas"]
            .iter()
            .map(|k| report["ops"][k]["ok"].as_u64().unwrap_or(0))
            .sum();
        assert!(ok_ops > 100, "{drill}: only {ok_ops} successful operations");
    }
}

#[test]
fn chaos_rejects_an_unknown_drill() {
    let (ok, _, stderr) = run_mlstack(&["chaos", "meteor-strike", "--duration", "1s"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown drill") && stderr.contains("kill-leader"),
        "{stderr}"
    );
}
