//! The ingest manifest in the Raft KV cluster at scale and under zombies
//! (issue 15, section 3): one KV record per commit, so commit 20,000 costs
//! what commit 1 did; an owner epoch per partition, so a consumer that
//! stalled between its rename and its commit cannot list a file the new
//! owner removed. Against `mlstack kv serve` (and, for the drill, a tansu
//! broker and two `mlstack ingest run` processes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proto::kv::v1 as pb;
use stream::manifest::{KvManifest, Manifest};
use stream::writer::FileCommit;
use tests::{count_ids, mlstack_bin};

fn file(p: i32, first: i64, last: i64) -> FileCommit {
    FileCommit {
        path: format!("topic=t/date=2026-11-23/part-{p}-{first}-{last}.parquet"),
        partition: p,
        first_offset: first,
        last_offset: last,
        rows: (last - first + 1) as u64,
        bytes: 123_456,
        crc32c: 0xdead_beef,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    }
}

/// A manifest handle, retrying while the fresh single-node cluster elects
/// itself leader.
fn manifest(kv: &str, group: &str, topic: &str) -> KvManifest {
    let t0 = Instant::now();
    loop {
        let mut m = KvManifest::new(vec![kv.to_string()], group, topic).expect("KV client");
        match m.load() {
            Ok(_) => return m,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("KV not ready: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("KV manifest never loaded: {e}"),
        }
    }
}

/// 20,000 commits to one partition: every one is a request of the same
/// size (the old layout's last request held all 20,000 files, about 3.4 MB,
/// past the KV's 1 MiB value limit from about commit 6,000), and a load
/// pages through all of them in order.
#[test]
fn twenty_thousand_commits_to_one_partition_cost_the_same_and_load_in_order() {
    const COMMITS: i64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_kv, kv) = tests::spawn_kv_node(dir.path(), "manifest-scale");
    let mut m = manifest(&kv, "g", "scale");
    m.claim(&[0]).expect("claim");
    let t0 = Instant::now();
    let mut first_bytes = 0;
    for i in 0..COMMITS {
        m.commit(&[file(0, i * 10, i * 10 + 9)])
            .unwrap_or_else(|e| panic!("commit {i}: {e}"));
        if i == 0 {
            first_bytes = m.last_commit_request_bytes();
        }
        if i == 1_000 {
            eprintln!("1,000 commits in {:?}", t0.elapsed());
        }
    }
    let last_bytes = m.last_commit_request_bytes();
    eprintln!(
        "{COMMITS} commits in {:?}; request bytes: first {first_bytes}, last {last_bytes}",
        t0.elapsed()
    );
    // What grows is only the offsets' digits in the file's path, its JSON
    // fields and the head (0..9 → 199990..199999): a few dozen bytes.
    assert!(first_bytes > 0 && first_bytes < 1_024, "{first_bytes}");
    assert!(
        last_bytes <= first_bytes + 64,
        "commit {COMMITS} sent {last_bytes} bytes, commit 1 sent {first_bytes}: the request grows with the partition's history"
    );
    let t1 = Instant::now();
    let state = manifest(&kv, "g", "scale").load().expect("load");
    eprintln!("loaded {} files in {:?}", state.files.len(), t1.elapsed());
    assert_eq!(state.files.len(), COMMITS as usize);
    for (i, f) in state.files.iter().enumerate() {
        assert_eq!(f, &file(0, i as i64 * 10, i as i64 * 10 + 9), "file {i}");
    }
    assert_eq!(state.next_offset[&0], COMMITS * 10);
    // The partition's next commit must start at or after 200,000.
    let e = m.commit(&[file(0, 5, 9)]).expect_err("an overlap");
    assert!(
        matches!(
            e,
            stream::Error::Conflict {
                expected: 200_000,
                ..
            }
        ),
        "{e}"
    );
}

/// The layout before one key per commit (`ingest/<g>/<t>/<p>` holding the
/// partition's whole list) still loads, and new commits continue after it.
#[test]
fn a_manifest_in_the_old_one_key_per_partition_layout_still_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_kv, kv) = tests::spawn_kv_node(dir.path(), "manifest-legacy");
    let mut m = manifest(&kv, "g", "legacy");
    let old = serde_json::to_vec(&vec![file(1, 0, 9), file(1, 10, 19)]).expect("json");
    block_on(async {
        raw_kv(&kv)
            .put(pb::PutRequest {
                key: b"ingest/g/legacy/1".to_vec(),
                value: old,
                request_id: None,
                prev_kv: false,
            })
            .await
            .expect("put")
    });
    let s = m.load().expect("load");
    assert_eq!(s.files.len(), 2);
    assert_eq!(s.next_offset[&1], 20);
    m.claim(&[1]).expect("claim");
    assert!(matches!(
        m.commit(&[file(1, 15, 25)]),
        Err(stream::Error::Conflict { expected: 20, .. })
    ));
    m.commit(&[file(1, 20, 29)])
        .expect("commit after the old list");
    let s = manifest(&kv, "g", "legacy").load().expect("load");
    assert_eq!(s.files.len(), 3);
    assert_eq!(s.next_offset[&1], 30);
}

/// The zombie, in process: owner A claims partition 0 and commits; B claims
/// it (a rebalance gave it to B); A's next commit, renamed before the
/// rebalance and committed after it, is fenced with both epochs named even
/// though the head has not moved (B has not committed yet); B resumes
/// where A's last successful commit ended. A handle that never claimed is
/// fenced by a claim made after its load too.
#[test]
fn a_deposed_owner_cannot_commit_even_before_the_new_owner_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_kv, kv) = tests::spawn_kv_node(dir.path(), "manifest-fence");
    let mut a = manifest(&kv, "g", "fence");
    let mut unclaimed = manifest(&kv, "g", "fence");
    a.claim(&[0]).expect("A claims");
    let epoch_a = a.epoch(0).expect("A's epoch");
    a.load().expect("A loads");
    a.commit(&[file(0, 0, 9)]).expect("A commits");
    let mut b = manifest(&kv, "g", "fence");
    b.claim(&[0]).expect("B claims");
    let epoch_b = b.epoch(0).expect("B's epoch");
    assert!(epoch_b > epoch_a, "{epoch_b} after {epoch_a}");
    assert_eq!(b.load().expect("B loads").next_offset[&0], 10);
    // A, resuming from its stall: its commit of 10..=19 must not land.
    match a.commit(&[file(0, 10, 19)]) {
        Err(stream::Error::Fenced {
            partition: 0,
            epoch,
            current,
            first_offset: 10,
            last_offset: 19,
            ..
        }) => assert_eq!((epoch, current), (epoch_a, epoch_b)),
        other => panic!("A's commit after B's claim: {other:?}"),
    }
    // Neither may a handle that loaded before B's claim without claiming.
    unclaimed.load().expect("load");
    b.claim(&[0]).expect("B claims again");
    assert!(matches!(
        unclaimed.commit(&[file(0, 10, 19)]),
        Err(stream::Error::Fenced { .. })
    ));
    // B, the owner, commits from where the manifest says.
    b.commit(&[file(0, 10, 14)]).expect("B commits");
    let s = manifest(&kv, "g", "fence").load().expect("load");
    assert_eq!(s.files, vec![file(0, 0, 9), file(0, 10, 14)]);
    // Fencing is per partition: A still owns nothing else, but may claim 1.
    a.claim(&[1]).expect("A claims 1");
    a.commit(&[file(1, 0, 4)]).expect("A commits to 1");
}

use tests::spawn_ingest as ingest;

fn produce(brokers: &str, topic: &str, count: u64, prefix: &str) {
    let status = std::process::Command::new(mlstack_bin())
        .args([
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--record-bytes",
            "200",
            "--id-prefix",
            prefix,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mlstack produce");
    assert!(status.success(), "produce failed");
}

/// The process's state letter from /proc (`T`: stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The version of each owner key of `prefix`'s partitions.
fn owner_epochs(kv: &str, prefix: &str) -> BTreeMap<String, u64> {
    let r = block_on(async {
        raw_kv(kv)
            .scan(pb::ScanRequest {
                prefix: prefix.as_bytes().to_vec(),
                limit: 10_000,
                ..Default::default()
            })
            .await
    });
    let Ok(r) = r else {
        return BTreeMap::new();
    };
    r.into_inner()
        .kvs
        .into_iter()
        .filter(|kv| kv.key.ends_with(b"/owner"))
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.version))
        .collect()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The KV's gRPC API, raw (the test reads keys as any client would).
fn raw_kv(kv: &str) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    pb::kv_client::KvClient::new(proto::server::channel(kv).expect("channel"))
}

/// Every id in the files the KV manifest lists, checking that each listed
/// file exists with its CRC and row count.
fn listed_ids(kv: &str, group: &str, topic: &str, out: &Path) -> (BTreeMap<String, u32>, u64) {
    let state = manifest(kv, group, topic).load().expect("load");
    let mut ids = BTreeMap::new();
    for f in &state.files {
        let path = out.join(&f.path);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("the manifest lists {}, which is missing: {e}", f.path));
        assert_eq!(crc32c::crc32c(&bytes), f.crc32c, "{}: CRC", f.path);
        assert_eq!(count_ids(bytes, &mut ids), f.rows, "{}: rows", f.path);
    }
    (ids, state.rows())
}

/// The drill of issue 15: consumer A stops itself (SIGSTOP, through the
/// test failpoint) after renaming a file and before committing it; the
/// group gives its partitions to consumer B, which claims them and removes
/// A's file as an orphan; A is continued (SIGCONT). A's commit is fenced, so
/// no listed file is missing and every id lands exactly once.
#[test]
fn a_consumer_stopped_between_rename_and_commit_is_fenced_after_the_rebalance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = stream::broker::Tansu::start(&dir.path().join("broker"))
        .expect("tansu starts (scripts/test.sh installs it)");
    b.create_topic("zz", 3).expect("topic");
    b.create_topic("zz.dlq", 1).expect("dlq topic");
    let (_kv, kv) = tests::spawn_kv_node(dir.path(), "fence-drill");
    let out = dir.path().join("out");
    let (group, prefix) = ("mlstack-ingest", "ingest/mlstack-ingest/zz/");
    // A stops at its second roll: the first commits normally.
    let mut a = ingest(
        &b.addr,
        "zz",
        &out,
        &["--kv", &kv, "--max-age", "300ms"],
        &[("MLSTACK_INGEST_FAILPOINT_STOP_AFTER_RENAME", "2")],
    );
    let a_pid = a.child.id();
    produce(&b.addr, "zz", 900, "before");
    let t0 = Instant::now();
    while proc_state(a_pid) != Some('T') {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "A never reached the failpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a_epochs = owner_epochs(&kv, prefix);
    eprintln!("A stopped after a rename; epochs {a_epochs:?}");
    // B joins; once A misses its session timeout the group gives B every
    // partition, and B claims them (bumping each owner key) and removes
    // orphans. B's long --max-age keeps it from committing before A
    // resumes: without fencing, A's commit would then succeed.
    let mut bb = ingest(&b.addr, "zz", &out, &["--kv", &kv, "--max-age", "20s"], &[]);
    let t1 = Instant::now();
    loop {
        let now = owner_epochs(&kv, prefix);
        if now.len() == 3
            && now
                .iter()
                .all(|(k, v)| a_epochs.get(k).is_none_or(|a| v > a))
        {
            eprintln!(
                "B claimed every partition after {:?}: {now:?}",
                t1.elapsed()
            );
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(90),
            "the group never gave B A's partitions: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let B finish its assignment (manifest load, orphan removal).
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(a_pid as libc::pid_t, libc::SIGCONT) },
        0
    );
    produce(&b.addr, "zz", 900, "after");
    let t2 = Instant::now();
    loop {
        let (ids, rows) = listed_ids(&kv, group, "zz", &out);
        if rows >= 1_800 {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(120),
            "only {rows} of 1,800 rows committed ({} ids)",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let a_status = a.terminate(Duration::from_secs(30));
    let b_status = bb.terminate(Duration::from_secs(30));
    let (ids, rows) = listed_ids(&kv, group, "zz", &out);
    assert_eq!(rows, 1_800, "rows listed");
    assert_eq!(ids.len(), 1_800, "distinct ids listed");
    assert!(ids.values().all(|n| *n == 1), "an id is listed twice");
    assert!(a_status.success(), "A (the zombie) exited {a_status}");
    assert!(b_status.success(), "B exited {b_status}");
}
