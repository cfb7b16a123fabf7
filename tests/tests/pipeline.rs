//! The main job, end to end: `mlstack demo` runs Kafka → Parquet → snapshot
//! → train → registry → serve on a real broker (tansu), a real three-node KV
//! cluster and the real trainer and inference server, and reports what it
//! measured; and the lineage commands fail clearly on what is missing.

use std::process::Command;

use tests::{Proc, free_port, mlstack_bin};

fn demo(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(mlstack_bin())
        .args([
            "demo",
            "--json",
            "--model",
            "tiny",
            "--train-steps",
            "30",
            "--train-seconds",
            "60",
        ])
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
    for c in [
        "mlstack_kv",
        "mlstack_ingest",
        "mlstack_train",
        "mlstack_infer",
    ] {
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

    // A second run: the corpus and the token cache are reused, and it says so.
    let (ok, out, err) = demo(dir.path(), &[], &[]);
    assert!(ok, "second demo failed:\n{err}");
    let r2: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(r2["produce"]["corpus_reused"], true);
    assert_eq!(r2["train"]["token_cache_reused"], true);
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
    let run = |args: &[&str]| {
        let o = Command::new(mlstack_bin())
            .args(args)
            .output()
            .expect("run");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
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
