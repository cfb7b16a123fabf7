//! The whole stack in containers, the way a user runs it: `compose.yaml` with
//! the offline override (`deploy/compose.offline.yaml`), images built here
//! without a registry (`scripts/compose-images.sh`: debootstrap base, this
//! build's `mlstack` binary, tansu, Debian's Prometheus).
//!
//! One test, in order: build the images (reused when their inputs did not
//! change) → `down -v`, `up` → every service healthy and every job exited 0
//! → a question to the inference server from the host with the `openai`
//! client → Prometheus has every long-running target up and series from
//! every component (the train job's while it ran) → every Grafana
//! dashboard's PromQL returns data (Grafana itself has no offline image) →
//! one trace crosses containers (train → KV nodes, linked to the snapshot
//! job's trace) → the KV chaos drills against the containers
//! (`mlstack chaos --docker`: kill, pause, partition, packet loss) → a
//! SIGKILLed `ingest` container mid-stream, every record exactly once →
//! `down -v`.
//!
//! It needs Docker Engine and docker-compose (this project's machines have
//! both; the test fails, naming what is missing, where they are absent).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tests::{count_ids, free_port, mlstack_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A compose project: `down -v` on drop, with the logs printed first when
/// the test is failing.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
}

/// The services that keep running, and the jobs that must exit 0.
const SERVICES: &[&str] = &[
    "kafka",
    "kv1",
    "kv2",
    "kv3",
    "ingest",
    "infer",
    "prometheus",
    "jaeger",
];
const JOBS: &[&str] = &["topics", "produce", "snapshot", "train"];

impl Stack {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo())
            .args(["-p", &self.project])
            .args(["-f", "compose.yaml", "-f", "deploy/compose.offline.yaml"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output(self.compose().args(args))
    }

    fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-a", "-q", service]);
        text(&out.stdout).trim().to_string()
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        let id = self.container(service);
        if id.is_empty() {
            return "no container".into();
        }
        let out = output(Command::new("docker").args(["inspect", "--format", format, &id]));
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.run(&["logs", "--no-color", "--tail", "40"]);
            eprintln!("--- compose logs ---\n{}", text(&logs.stdout));
            let ps = self.run(&["ps", "-a"]);
            eprintln!("--- compose ps ---\n{}", text(&ps.stdout));
        }
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans"])
            .output();
    }
}

fn get_json(url: &str) -> serde_json::Value {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
    })
}

fn prom_query(base: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{base}/api/v1/query?query={}", urlencode(q));
    let v = get_json(&url);
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn prom_range(base: &str, q: &str, start: u64, end: u64) -> Vec<serde_json::Value> {
    let url = format!(
        "{base}/api/v1/query_range?query={}&start={start}&end={end}&step=5",
        urlencode(q)
    );
    let v = get_json(&url);
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn compose_runs_the_pipeline_in_containers() {
    for (tool, args) in [
        ("docker", &["info"][..]),
        ("docker-compose", &["version"][..]),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{tool}` is not usable here: this test needs Docker Engine and docker-compose"
        );
    }
    let t0 = Instant::now();
    let start_unix = unix_now();
    // The file a user with a registry runs parses as the Compose
    // specification (its public images cannot be pulled here).
    let config = output(Command::new("docker-compose").current_dir(repo()).args([
        "-f",
        "compose.yaml",
        "config",
        "-q",
    ]));
    assert!(
        config.status.success(),
        "compose.yaml does not validate: {}",
        text(&config.stderr)
    );

    // 1. The images (reused when unchanged).
    let images = output(
        Command::new("bash")
            .arg(repo().join("scripts/compose-images.sh"))
            .env("MLSTACK_BIN", mlstack_bin())
            .stdin(Stdio::null()),
    );
    eprintln!("{}", text(&images.stderr));
    assert!(images.status.success(), "compose-images.sh failed");
    let t_images = t0.elapsed();

    // 2. A fresh project on free host ports.
    let (http, grpc, prom, traces) = (free_port(), free_port(), free_port(), free_port());
    let stack = Stack {
        project: format!("mlstacktest{}", std::process::id()),
        env: vec![
            ("MLSTACK_BIND".into(), "127.0.0.1".into()),
            ("MLSTACK_INFER_HTTP_PORT".into(), http.to_string()),
            ("MLSTACK_INFER_GRPC_PORT".into(), grpc.to_string()),
            ("MLSTACK_PROMETHEUS_PORT".into(), prom.to_string()),
            ("MLSTACK_TRACES_PORT".into(), traces.to_string()),
            // A quick run: the tiny model for 20 s (the stack's default is
            // `small` for 60 s).
            ("MLSTACK_TRAIN_MODEL".into(), "tiny".into()),
            ("MLSTACK_TRAIN_SECONDS".into(), "20".into()),
        ],
    };
    let _ = stack.run(&["down", "-v", "--remove-orphans"]);
    // `up -d` returns once every service is started, which waits for the
    // jobs the inference server depends on (train: completed successfully).
    let up = stack.run(&["up", "-d", "--no-build"]);
    assert!(
        up.status.success(),
        "docker-compose up failed:\n{}",
        text(&up.stderr)
    );
    let t_up = t0.elapsed();

    // 3. Every service healthy, every job exited 0.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let states: Vec<(String, String)> = SERVICES
            .iter()
            .map(|s| (s.to_string(), stack.inspect(s, "{{.State.Health.Status}}")))
            .collect();
        if states.iter().all(|(_, h)| h == "healthy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "services not healthy after 300 s: {states:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for job in JOBS {
        let state = stack.inspect(job, "{{.State.Status}} {{.State.ExitCode}}");
        assert_eq!(state, "exited 0", "job {job}");
    }
    let t_healthy = t0.elapsed();

    // 4. A question from the host, with the openai client.
    let ask = output(
        Command::new("python3")
            .arg(repo().join("tests/python/compose_client.py"))
            .args(["--http", &format!("http://127.0.0.1:{http}")])
            .args(["--model", "kv://models/compose/latest"]),
    );
    assert!(
        ask.status.success(),
        "openai client against the compose stack failed:\n{}{}",
        text(&ask.stdout),
        text(&ask.stderr)
    );
    eprintln!("openai client: {}", text(&ask.stdout).trim());

    // 5. Prometheus: targets and series. Scrapes run every 2 s; give the
    // answers to the question one scrape to arrive.
    let prom_base = format!("http://127.0.0.1:{prom}");
    let scraped = Instant::now() + Duration::from_secs(60);
    while prom_query(&prom_base, "mlstack_infer_requests_total").is_empty() {
        assert!(
            Instant::now() < scraped,
            "Prometheus never scraped the answered requests"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let targets = get_json(&format!("{prom_base}/api/v1/targets"));
    let active = targets["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut jobs_seen = std::collections::BTreeSet::new();
    for t in &active {
        let job = t["labels"]["job"].as_str().unwrap_or("").to_string();
        let health = t["health"].as_str().unwrap_or("");
        jobs_seen.insert(job.clone());
        // The train job serves /metrics only while it runs.
        if job != "train" {
            assert_eq!(
                health, "up",
                "target {} ({job}) is {health}: {}",
                t["scrapeUrl"], t["lastError"]
            );
        }
    }
    for job in ["prometheus", "kv", "ingest", "train", "infer"] {
        assert!(
            jobs_seen.contains(job),
            "no {job} target in Prometheus: {jobs_seen:?}"
        );
    }
    // Past now: a range query evaluates every `step` from its start, so the
    // last point can fall up to a step before `end`; a later end keeps the
    // newest samples in range (each point looks back 5 minutes).
    let end = unix_now() + 10;
    for (component, q) in [
        ("kv", "count({__name__=~\"mlstack_kv_.+\"})"),
        ("ingest", "count({__name__=~\"mlstack_ingest_.+\"})"),
        ("infer", "count({__name__=~\"mlstack_infer_.+\"})"),
        ("train", "count(count_over_time(mlstack_train_loss[30m]))"),
        ("train target", "max_over_time(up{job=\"train\"}[30m])"),
    ] {
        let r = prom_query(&prom_base, q);
        let v: f64 = r
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(v >= 1.0, "{component}: {q} = {r:?}");
    }

    // 6. The Grafana dashboards: parse, name a provisioned datasource, and
    // every panel's PromQL returns data over this run.
    let provisioning = std::fs::read_to_string(
        repo().join("deploy/grafana/provisioning/datasources/prometheus.yaml"),
    )
    .expect("datasource provisioning");
    let mut exprs = 0;
    for entry in std::fs::read_dir(repo().join("deploy/grafana/dashboards")).expect("dashboards") {
        let path = entry.expect("dashboard entry").path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{}: no panels", path.display());
        for p in panels {
            let uid = p["datasource"]["uid"].as_str().unwrap_or("");
            assert!(
                provisioning.contains(&format!("uid: {uid}")) && !uid.is_empty(),
                "{}: panel {} names datasource uid {uid:?}, which is not provisioned",
                path.display(),
                p["title"]
            );
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let expr = t["expr"].as_str().expect("a PromQL expr");
                // What Grafana substitutes: at least four scrape intervals.
                let q = expr.replace("$__rate_interval", "1m");
                let r = prom_range(&prom_base, &q, start_unix, end);
                assert!(
                    !r.is_empty(),
                    "{}: panel {}: {expr} returned no data",
                    path.display(),
                    p["title"]
                );
                exprs += 1;
            }
        }
    }
    assert!(exprs >= 10, "only {exprs} dashboard expressions");

    // 7. One trace crosses containers: the training run's root span, the
    // KV nodes' server spans for its registry writes, and a link to the
    // snapshot job's span in that job's own trace.
    let trace_base = format!("http://127.0.0.1:{traces}");
    let list = get_json(&format!("{trace_base}/api/traces?limit=1000"));
    let run = list["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["root"] == "train.run")
        .unwrap_or_else(|| panic!("no train.run trace in {list}"))
        .clone();
    let id = run["trace_id"].as_str().expect("trace id");
    let view = get_json(&format!("{trace_base}/api/traces/{id}"));
    let spans = view["spans"].as_array().cloned().unwrap_or_default();
    let services: std::collections::BTreeSet<String> = spans
        .iter()
        .filter_map(|s| s["service"].as_str().map(str::to_string))
        .collect();
    assert!(services.contains("train"), "{services:?}");
    assert!(
        services.iter().any(|s| s.starts_with("kv-")),
        "the train.run trace has no KV node span: {services:?}"
    );
    let linked: Vec<String> = spans
        .iter()
        .flat_map(|s| s["links"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        linked.iter().any(|n| n == "dataset.snapshot"),
        "train.run does not link to the snapshot job's span: {linked:?}"
    );

    let t_checks = t0.elapsed();

    // 8. The KV chaos drills against the containers: container-level
    // faults, the same history checker and acknowledged-write check.
    for drill in [
        "kill-leader",
        "pause-leader",
        "partition-leader",
        "slow-network",
    ] {
        let out = output(
            Command::new(mlstack_bin())
                .args(["chaos", drill, "--docker", &stack.project])
                .args(["--duration", "12s", "--clients", "4", "--seed", "7"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null()),
        );
        let report = text(&out.stdout);
        assert!(
            out.status.success(),
            "chaos --docker {drill} failed:\n{report}{}",
            text(&out.stderr)
        );
        let summary: String = report
            .lines()
            .take_while(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("{summary}");
        assert!(summary.contains("verdict: PASS"), "{summary}");
        let faults = summary
            .lines()
            .filter(|l| l.trim_start().starts_with("fault "))
            .count();
        assert!(
            faults >= 1,
            "chaos --docker {drill} injected no fault:\n{summary}"
        );
        if drill == "slow-network" {
            assert!(summary.contains("lossy-network"), "{summary}");
        }
    }
    let t_chaos = t0.elapsed();

    // 9. SIGKILL the ingest container while records stream in: every record
    // exactly once in the committed Parquet files, every listed file present.
    let producer = stack
        .compose()
        .args(["run", "--rm", "--no-deps", "produce"])
        .args(["produce", "--brokers", "kafka:9092", "--topic", "corpus"])
        .args(["--count", "6000", "--rate", "1500", "--id-prefix", "drill"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker-compose run produce");
    let ingest = stack.container("ingest");
    // Wait until the producer's records are flowing, then kill mid-file
    // (files roll every 2 s).
    std::thread::sleep(Duration::from_secs(4));
    let kill = output(Command::new("docker").args(["kill", "--signal", "KILL", &ingest]));
    assert!(
        kill.status.success(),
        "docker kill ingest: {}",
        text(&kill.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    let start = output(Command::new("docker").args(["start", &ingest]));
    assert!(
        start.status.success(),
        "docker start ingest: {}",
        text(&start.stderr)
    );
    let produced = producer.wait_with_output().expect("producer");
    assert!(
        produced.status.success(),
        "producer: {}",
        text(&produced.stderr)
    );
    let snap = stack.run(&[
        "run",
        "--rm",
        "--no-deps",
        "snapshot",
        "datasets",
        "snapshot",
        "--kv",
        "kv1:7001,kv2:7002,kv3:7003",
        "--topic",
        "corpus",
        "--name",
        "drill",
        "--caught-up-with",
        "kafka:9092",
        "--wait",
        "180s",
    ]);
    assert!(
        snap.status.success(),
        "snapshot after the ingest kill: {}{}",
        text(&snap.stdout),
        text(&snap.stderr)
    );
    let show = stack.run(&[
        "run",
        "--rm",
        "--no-deps",
        "snapshot",
        "datasets",
        "show",
        "--kv",
        "kv1:7001,kv2:7002,kv3:7003",
        "--topic",
        "corpus",
        "drill",
    ]);
    let snapshot: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_else(|e| {
        panic!(
            "datasets show: {e}: {}{}",
            text(&show.stdout),
            text(&show.stderr)
        )
    });
    let volume = format!("{}_parquet", stack.project);
    let mount = output(Command::new("docker").args([
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        &volume,
    ]));
    let mount = PathBuf::from(text(&mount.stdout).trim());
    let mut ids: std::collections::BTreeMap<String, u32> = Default::default();
    let mut rows = 0u64;
    for f in snapshot["files"].as_array().into_iter().flatten() {
        let path = f["path"].as_str().expect("file path");
        let rel = path.strip_prefix("/data/parquet/").unwrap_or(path);
        let host = mount.join(rel);
        let bytes = std::fs::read(&host).unwrap_or_else(|e| {
            panic!(
                "the snapshot lists {path}, missing on the volume ({}): {e}",
                host.display()
            )
        });
        rows += count_ids(bytes, &mut ids);
    }
    let drill_ids = ids.keys().filter(|k| k.starts_with("drill-")).count();
    let dup: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dup.is_empty(), "duplicated after the ingest kill: {dup:?}");
    assert_eq!(drill_ids, 6000, "records of the drill in the Parquet files");
    assert_eq!(rows as usize, ids.len(), "rows vs distinct ids");
    eprintln!(
        "ingest kill: {rows} rows, {drill_ids} drill ids exactly once, {} files",
        snapshot["files"].as_array().map_or(0, Vec::len)
    );

    eprintln!(
        "compose test: images {:.0} s, up (through the train job) {:.0} s, healthy {:.0} s, checks {:.0} s, chaos {:.0} s, all {:.0} s; trace {id} spans {} services {services:?}",
        t_images.as_secs_f64(),
        t_up.as_secs_f64(),
        t_healthy.as_secs_f64(),
        t_checks.as_secs_f64(),
        t_chaos.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        spans.len()
    );
    drop(stack);
}
