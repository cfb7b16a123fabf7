//! The main job, end to end: `mlstack demo` runs Kafka → Parquet → snapshot
//! → train → registry → serve on a real broker (tansu), a real three-node KV
//! cluster and the real trainer and inference server, and reports what it
//! measured; and the lineage commands fail clearly on what is missing.

use std::collections::HashMap;
use std::process::Command;

use observe::traces::{SpanView, TraceView};
use tests::prometheus::start_prometheus;
use tests::{Proc, free_port, mlstack_bin};

const DEMO_ARGS: [&str; 8] = [
    "demo",
    "--json",
    "--model",
    "tiny",
    "--train-steps",
    "30",
    "--train-seconds",
    "60",
];

fn demo(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(mlstack_bin())
        .args(DEMO_ARGS)
        .args(extra)
        .env("MLSTACK_DEMO_DIR", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run mlstack demo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_runs_the_whole_pipeline_and_a_second_run_reuses_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = demo(dir.path(), &[], &[]);
    assert!(ok, "demo failed:\n{err}\n{out}");
    let r: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("JSON ({e}): {out}"));
    check_summary_schema(&r);
    let records = r["produce"]["records"].as_u64().expect("records");
    assert!(records > 1000, "{r}");
    assert_eq!(
        r["ingest"]["rows"].as_u64(),
        Some(records),
        "every record is in a committed file"
    );
    assert_eq!(r["snapshot"]["rows"].as_u64(), Some(records));
    assert!(
        r["snapshot"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("datasets/corpus/"))
    );
    let offsets = r["snapshot"]["offsets"].as_array().expect("offsets");
    let covered: u64 = offsets
        .iter()
        .map(|o| o["last"].as_u64().expect("last") - o["first"].as_u64().expect("first") + 1)
        .sum();
    assert_eq!(
        covered, records,
        "the offset ranges cover every record once: {offsets:?}"
    );
    let t = &r["train"];
    assert_eq!(t["steps"], 30, "{t}");
    assert!(
        t["final_loss"].as_f64() < t["first_loss"].as_f64(),
        "the loss falls: {t}"
    );
    assert_eq!(t["token_cache_reused"], false);
    let s = &r["serve"];
    assert!(
        s["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("kv://models/demo-") && m.ends_with("/latest"))
    );
    assert!(
        s["path"].as_str().is_some_and(|p| p.ends_with("step-30")),
        "{s}"
    );
    assert!(
        s["grpc_answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{s}"
    );
    assert!(
        s["http_answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{s}"
    );
    // One /metrics served every component's series while the demo ran.
    for c in COMPONENTS {
        assert!(
            r["metrics"]["series"][c].as_u64().is_some_and(|n| n > 0),
            "no {c}_* series: {}",
            r["metrics"]
        );
    }
    // The screen (stderr here) holds no component log lines; they are in the file.
    assert!(!err.contains("ERROR"), "an ERROR on screen:\n{err}");
    let log = std::fs::read_to_string(dir.path().join("demo.log")).expect("the demo's log file");
    assert!(
        log.contains("partitions assigned") || log.contains("manifest loaded"),
        "{log}"
    );

    // The demo kept its trace in its own store: follow one record through it.
    let trace_id = r["trace_id"].as_str().expect("a sampled trace id");
    let store = dir.path().join("traces");
    assert_eq!(
        r["traces"]["store"].as_str(),
        store.to_str(),
        "{}",
        r["traces"]
    );
    let store_arg = store.to_string_lossy().into_owned();
    let (ok, json, err) = run(&["trace", "show", trace_id, "--json", "--data", &store_arg]);
    assert!(ok, "trace show failed: {err}");
    let view: TraceView = serde_json::from_str(&json).expect("trace show --json is a TraceView");
    follow_one_record(&view, records);
    let (ok, text, err) = run(&["trace", "show", trace_id, "--data", &store_arg]);
    assert!(ok, "{err}");
    for want in [
        "demo.pipeline [demo]",
        "more stream.produce.record spans",
        "↳ link to stream.produce.record [demo]",
        "↳ link to dataset.snapshot [demo]",
        "↳ link to train.run [demo]",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }

    // A second run, its spans sent to a standalone `mlstack trace serve`
    // and its /metrics scraped by a real Prometheus while it runs: the
    // corpus and the token cache are reused, and it says so.
    let traces_dir = dir.path().join("served-traces");
    let receiver = Proc::spawn_mlstack(
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
            traces_dir.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let prom = start_prometheus(dir.path(), "demo", std::slice::from_ref(&metrics));
    let child = Command::new(mlstack_bin())
        .args(DEMO_ARGS)
        .args(["--metrics-listen", &metrics, "--linger-seconds", "3"])
        .env("MLSTACK_DEMO_DIR", dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.field("otlp"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second demo");
    let (out, seen) = scrape_while_running(child, &prom);
    for c in COMPONENTS {
        assert!(
            seen.contains(c),
            "Prometheus never scraped a {c}_* series from the demo (saw {seen:?})"
        );
    }
    let r2: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    check_summary_schema(&r2);
    assert_eq!(r2["produce"]["corpus_reused"], true);
    assert_eq!(r2["train"]["token_cache_reused"], true);
    assert_eq!(
        r2["traces"]["exported_to"].as_str(),
        Some(receiver.field("otlp").as_str())
    );
    // Read back through the receiver's query port while it runs.
    let query = receiver.field("query");
    let id2 = r2["trace_id"].as_str().expect("trace id");
    let (ok, json, err) = run(&["trace", "show", id2, "--json", "--query", &query]);
    assert!(ok, "trace show --query failed: {err}");
    let view2: TraceView = serde_json::from_str(&json).expect("TraceView");
    follow_one_record(&view2, records);
    let (ok, list, err) = run(&["trace", "list", "--query", &query]);
    assert!(
        ok && list.contains(id2) && list.contains("demo.pipeline"),
        "{err}{list}"
    );
    // Bad ids are refused with the reason, not a panic.
    let (ok, _, err) = run(&["trace", "show", "xyz", "--query", &query]);
    assert!(!ok && err.contains("not a trace id"), "{err}");
    let (ok, _, err) = run(&["trace", "show", &"ab".repeat(16), "--query", &query]);
    assert!(
        !ok && err.contains("404") && err.contains("no span of trace"),
        "{err}"
    );
}

const COMPONENTS: [&str; 4] = [
    "mlstack_kv",
    "mlstack_ingest",
    "mlstack_train",
    "mlstack_infer",
];

/// `--json` matches the schema the README documents (and the schema is
/// strict enough to refuse a summary missing a part).
fn check_summary_schema(r: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/demo-summary.schema.json"))
            .expect("the schema is JSON");
    let v = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = v
        .iter_errors(r)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the summary breaks its schema: {errors:#?}\n{r}"
    );
    let mut broken = r.clone();
    if let Some(o) = broken.as_object_mut() {
        o.remove("serve");
    }
    assert!(
        !v.is_valid(&broken),
        "the schema accepts a summary without serve"
    );
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(mlstack_bin())
        .args(args)
        .output()
        .expect("run mlstack");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Waits for the demo to finish, asking Prometheus every half second which
/// components' series it has scraped so far; returns the demo's stdout and
/// the components seen.
fn scrape_while_running(
    mut child: std::process::Child,
    prom: &tests::prometheus::Prometheus,
) -> (String, std::collections::BTreeSet<&'static str>) {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo ran over 10 minutes"
        );
        for c in COMPONENTS {
            if seen.contains(c) {
                continue;
            }
            let q = format!("count({{job=\"demo\",__name__=~\"{c}_.+\"}})");
            let n = rt.block_on(async {
                let body: serde_json::Value = http
                    .get(format!("{}/api/v1/query", prom.base))
                    .query(&[("query", q.as_str())])
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                body["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
            });
            if n.is_some_and(|n| n > 0.0) {
                seen.insert(c);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = reader.join().expect("stdout reader");
    assert!(status.success(), "second demo failed:\n{err}\n{out}");
    (out, seen)
}

/// One record followed through the demo's trace: produced (its own span,
/// under the produce step), committed in a Parquet file (the commit span
/// links to it), frozen in the snapshot (which links to the commit), trained
/// on (the run links to the snapshot), registered, loaded by the server
/// (the load links to the run), and served (two request spans under the
/// gRPC and HTTP server spans, all in the demo's one trace).
fn follow_one_record(v: &TraceView, records: u64) {
    let by_id: HashMap<&str, &SpanView> = v.spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let ancestors = |s: &SpanView| -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = s.parent_span_id.as_str();
        while let Some(p) = by_id.get(cur) {
            out.push(p.name.clone());
            cur = p.parent_span_id.as_str();
        }
        out
    };
    let span = |name: &str| {
        v.find(name)
            .unwrap_or_else(|| panic!("no {name} span in the trace"))
    };
    let linked =
        |s: &SpanView, target: &SpanView| s.links.iter().any(|l| l.span_id == target.span_id);
    let root = span("demo.pipeline");
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    let produce = span("stream.produce");
    assert_eq!(produce.parent_span_id, root.span_id);
    let produced: Vec<_> = v.named("stream.produce.record").collect();
    assert_eq!(produced.len() as u64, records, "one span per record");
    assert!(produced.iter().all(|s| s.parent_span_id == produce.span_id));

    // The record: the first link of the first committed file.
    let commits: Vec<_> = v.named("stream.commit").collect();
    assert!(!commits.is_empty(), "no commit spans");
    let commit = commits[0];
    assert!(
        ancestors(commit).contains(&"stream.ingest".to_string()),
        "{:?}",
        ancestors(commit)
    );
    for c in &commits {
        assert!(
            !c.links.is_empty(),
            "commit {} links to no record",
            c.span_id
        );
        for l in &c.links {
            assert_eq!(l.trace_id, v.trace_id);
            let rec = by_id
                .get(l.span_id.as_str())
                .unwrap_or_else(|| panic!("link to unknown span {l:?}"));
            assert_eq!(rec.name, "stream.produce.record");
            assert_eq!(
                l.name.as_deref(),
                Some("stream.produce.record"),
                "the link target is resolved"
            );
            // The record sits in the file: same partition, offset in range.
            let attr = |s: &SpanView, k: &str| -> i64 {
                s.attributes
                    .get(k)
                    .and_then(|x| x.parse().ok())
                    .unwrap_or_else(|| panic!("{} has no {k}: {:?}", s.name, s.attributes))
            };
            assert_eq!(
                attr(rec, "messaging.kafka.destination.partition"),
                attr(c, "partition")
            );
            let off = attr(rec, "messaging.kafka.message.offset");
            assert!(
                (attr(c, "first_offset")..=attr(c, "last_offset")).contains(&off),
                "record at offset {off} linked from commit {:?}",
                c.attributes
            );
        }
    }
    let snapshot = span("dataset.snapshot");
    assert_eq!(snapshot.parent_span_id, root.span_id);
    assert!(
        commits.iter().all(|c| linked(snapshot, c)),
        "the snapshot links to every commit"
    );
    let run = span("train.run");
    assert_eq!(run.parent_span_id, root.span_id);
    assert!(
        linked(run, snapshot),
        "the training run links to the snapshot"
    );
    let register = span("train.register");
    assert!(ancestors(register).contains(&"train.run".to_string()));
    let load = span("infer.load");
    assert!(
        linked(load, run),
        "the model load links to the training run"
    );
    assert!(ancestors(load).contains(&"infer.serve".to_string()));
    let requests: Vec<_> = v.named("infer.request").collect();
    assert_eq!(requests.len(), 2, "one gRPC and one HTTP request");
    let mut servers: Vec<String> = requests
        .iter()
        .map(|r| {
            let a = ancestors(r);
            assert_eq!(a.last().map(String::as_str), Some("demo.pipeline"), "{a:?}");
            // The parent is the server span of the protocol it came in on
            // (named by its otel.name: the RPC method, or METHOD /path).
            let server = by_id[r.parent_span_id.as_str()];
            match (
                server.attributes.get("rpc.system").map(String::as_str),
                server
                    .attributes
                    .get("http.request.method")
                    .map(String::as_str),
            ) {
                (Some("grpc"), _) => format!("grpc {}", server.name),
                (_, Some(m)) => format!("http {m} {}", server.name),
                _ => panic!("infer.request under {server:?}"),
            }
        })
        .collect();
    servers.sort();
    assert_eq!(
        servers,
        [
            "grpc mlstack.infer.v1.Inference/Generate",
            "http POST POST /v1/completions"
        ]
    );
}

#[test]
fn a_missing_broker_stops_the_demo_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = demo(
        dir.path(),
        &[],
        &[("MLSTACK_TANSU_BIN", "/nonexistent/tansu")],
    );
    assert!(!ok, "the demo cannot succeed without a broker");
    assert!(err.contains("broker") && err.contains("tansu"), "{err}");
}

#[test]
fn lineage_commands_fail_clearly_on_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ep = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={ep}");
    let data = dir.path().join("n1").to_string_lossy().into_owned();
    let _node = Proc::spawn_mlstack(
        &[
            "kv",
            "serve",
            "--id",
            "1",
            "--listen",
            &ep,
            "--peers",
            &peers,
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--init",
        ],
        &[],
    );
    // No ingest has run: nothing to snapshot.
    let (ok, _, err) = run(&["datasets", "snapshot", "--kv", &ep, "--name", "s1"]);
    assert!(!ok && err.contains("lists no committed files"), "{err}");
    // A name that would escape its key space.
    let (ok, _, err) = run(&["datasets", "snapshot", "--kv", &ep, "--name", "../x"]);
    assert!(!ok && err.contains("[A-Za-z0-9._-]"), "{err}");
    // No such model; a kv:// model needs its registry.
    let (ok, _, err) = run(&["models", "show", "--kv", &ep, "nope"]);
    assert!(
        !ok && err.contains("models/nope/latest does not exist"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "infer",
        "generate",
        "--model",
        "kv://models/nope/latest",
        "--prompt",
        "x",
    ]);
    assert!(!ok && err.contains("needs --kv"), "{err}");
    // Promote: a registered step moves the alias (compare-and-set against
    // what was read), an unknown step does not.
    let entry = serde_json::json!({"run": "r", "step": 5, "path": "/nowhere"}).to_string();
    let (ok, _, err) = run(&["kv", "put", "--endpoints", &ep, "models/r/step-5", &entry]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["models", "promote", "--kv", &ep, "r", "--step", "5"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("models/r/production → step-5 (was unset)"),
        "{out}"
    );
    let (ok, _, err) = run(&["models", "promote", "--kv", &ep, "r", "--step", "6"]);
    assert!(
        !ok && err.contains("models/r/step-6 does not exist"),
        "{err}"
    );
    let (ok, out, _) = run(&["models", "show", "--kv", &ep, "r", "production"]);
    assert!(ok && out.contains("\"step\": 5"), "{out}");
}

#[test]
fn interrupting_the_demo_leaves_no_process_behind() {
    // Ctrl-C once the broker runs, and again during training.
    for at in ["[2/8]", "[5/8]"] {
        interrupt_at(at);
    }
}

fn interrupt_at(step: &str) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(mlstack_bin())
        .args([
            "demo",
            "--model",
            "tiny",
            "--train-steps",
            "200",
            "--train-seconds",
            "60",
        ])
        .env("MLSTACK_DEMO_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let seen = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with(step));
    assert!(seen, "the demo never reached {step}");
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!kids.is_empty(), "the broker is a child of the demo");
    let started = std::time::Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert!(
        !out.status.success(),
        "{step}: an interrupted demo does not report success"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{step}: the demo took {:?} to stop",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{step}: {err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while kids
        .iter()
        .any(|k| std::path::Path::new(&format!("/proc/{k}")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for k in &kids {
        let state = std::fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default();
        // Gone, or a zombie already dead and waiting to be reaped by init.
        assert!(
            state.is_empty() || state.contains(") Z "),
            "{step}: process {k} outlived the demo: {state}"
        );
    }
}
